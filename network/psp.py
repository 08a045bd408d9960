"""Pyramid pooling module (PSPNet) as PFNet's head applies it to the stride-32 features."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from network.adaptive_pool import AdaptiveAvgPool2d


class PSPModule(nn.Module):
    """Pyramid pooling: pooled context at several bin sizes, concatenated with the input, then fused.

    Each ``stages[i]`` is adaptive average pooling to ``bins[i]`` x ``bins[i]``, a 1x1 convolution
    without bias and a norm layer (no ReLU). Their outputs are resized bilinearly (align_corners=True)
    to the input size and concatenated in bin order, the input last; ``bottleneck`` is a 1x1
    convolution, norm, ReLU and Dropout2d(0.1).

    Args:
        in_channels: C_in of the input features.
        out_channels: C_out of every stage and of the output.
        bins: pooled grid sizes.
        norm_layer: normalisation factory.

    Shapes: (N, C_in, H, W) -> (N, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int = 256, bins: tuple[int, ...] = (1, 2, 3, 6),
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(
                AdaptiveAvgPool2d(size),
                nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
                norm_layer(out_channels),
            )
            for size in bins
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_channels + len(bins) * out_channels, out_channels, kernel_size=1, bias=False),
            norm_layer(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.1),
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        size = feats.shape[2:]
        pooled = [F.interpolate(stage(feats), size=size, mode="bilinear", align_corners=True) for stage in self.stages]
        return self.bottleneck(torch.cat(pooled + [feats], dim=1))

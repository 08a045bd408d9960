"""The FPN head shared by UperNet and PFNet: PSP on the coarsest level, lateral 1x1 convolutions, top-down
fusions, per-level 3x3 refinement and a classifier over all levels concatenated.

UperNet's top-down fusion upsamples the running map to the lateral map's size; PFNet replaces exactly
these fusions with point-flow modules. Attribute names mirror the original ``UperNetHead`` /
``UperNetAlignHeadMaxAvgpool`` so that ``state_dict()`` keys, their order and shapes equal the originals'.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from network.psp import PSPModule
from network.resnet_d import NormLayer

# fusion(coarse (N, C, h, w), fine (N, C, H, W)) -> (map added to the fine one (N, C, H, W), edge logits or None)
FusionFactory = Callable[[int], nn.Module]


def conv3x3_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (no bias), BatchNorm2d, ReLU: (N, C_in, H, W) -> (N, C_out, H, W).

    The original always builds this block with plain ``nn.BatchNorm2d``, even when the rest of the
    model uses synchronised batch-norm; kept so the model's modules match its checkpoints.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def resize_to_first(levels: list[torch.Tensor]) -> list[torch.Tensor]:
    """The first map and the others resized bilinearly (align_corners=True) to its size.

    Shapes: ``[(N, C_i, H_i, W_i)]`` -> ``[(N, C_i, H_0, W_0)]``.
    """
    size = levels[0].shape[2:]
    return [levels[0]] + [F.interpolate(level, size=size, mode="bilinear", align_corners=True) for level in levels[1:]]


class ConcatClassifier(nn.Sequential):
    """``nn.Sequential`` applied to the channel concatenation of a list of maps, resized to the first's size.

    Holding the resizing and concatenation in a module of its own lets ``network.optimize_for_inference``
    replace them (``split_concat``) while the state_dict keys stay those of a plain Sequential.

    Shapes: ``[(N, C_i, H_i, W_i)]`` -> the Sequential's output for (N, sum C_i, H_0, W_0).
    """

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return super().forward(torch.cat(resize_to_first(levels), dim=1))


class UpsampleFusion(nn.Module):
    """UperNet's top-down fusion: the coarse map resized bilinearly (align_corners=True) to the fine size.

    Shapes: coarse (N, C, h, w), fine (N, C, H, W) -> ((N, C, H, W), None: no edge logits).
    """

    def forward(self, coarse_feats: torch.Tensor, fine_feats: torch.Tensor) -> tuple[torch.Tensor, None]:
        return F.interpolate(coarse_feats, size=fine_feats.shape[2:], mode="bilinear", align_corners=True), None


class FPNHead(nn.Module):
    """UperNet's decoder (the original ``UperNetHead``), with pluggable top-down fusions.

    From coarse to fine, each level's lateral features (``fpn_in``) are added to the output of that level's
    fusion of the running top-down map into them; the sum continues down, ``fpn_out`` refines it. The
    levels are resized to the finest one (bilinear, align_corners=True), concatenated finest first and
    classified by ``conv_last``.

    Args:
        num_classes: K.
        trunk_channels: C_i of the trunk levels, finest first (``(256, 512, 1024, 2048)`` for ResNet-50).
        fpn_dim: channels of the PSP output, of the lateral maps and of the refined levels.
        norm_layer: normalisation factory for the PSP module and ``fpn_in`` (``fpn_out`` and ``conv_last``
            always use plain BatchNorm2d, as the original).
        fusion: ``fusion(fpn_dim)`` builds one top-down fusion module per lateral level, held as
            ``fpn_out_align`` (between ``fpn_out`` and ``conv_last``, the original PFNet's order);
            None: :class:`UpsampleFusion`, parameter-free, so UperNet's keys are the original's.

    Shapes: ``[res2, ..., res5]`` with ``trunk_channels`` at strides 4, 8, 16, 32 (or any strides, finest
    first) -> (logits (N, K, H/4, W/4), edge logits of the fusions that give them, coarsest first).
    """

    def __init__(self, num_classes: int, trunk_channels: tuple[int, ...], fpn_dim: int,
                 norm_layer: NormLayer = nn.BatchNorm2d, fusion: FusionFactory | None = None):
        super().__init__()
        self.fpn_dim = fpn_dim
        self.ppm = PSPModule(trunk_channels[-1], fpn_dim, norm_layer=norm_layer)
        self.fpn_in = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, fpn_dim, kernel_size=1), norm_layer(fpn_dim), nn.ReLU())
            for channels in trunk_channels[:-1]
        )
        self.fpn_out = nn.ModuleList(nn.Sequential(conv3x3_bn_relu(fpn_dim, fpn_dim)) for _ in trunk_channels[:-1])
        make_fusion = fusion if fusion is not None else (lambda channels: UpsampleFusion())
        self.fpn_out_align = nn.ModuleList(make_fusion(fpn_dim) for _ in trunk_channels[:-1])
        self.conv_last = ConcatClassifier(
            conv3x3_bn_relu(len(trunk_channels) * fpn_dim, fpn_dim),
            nn.Conv2d(fpn_dim, num_classes, kernel_size=1),
        )

    @property
    def num_levels(self) -> int:
        """Number of pyramid levels concatenated before ``conv_last``."""
        return len(self.fpn_in) + 1

    def forward(self, trunk_feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        top_down = self.ppm(trunk_feats[-1])
        pyramid = [top_down]
        edge_logits = []
        for level in reversed(range(len(trunk_feats) - 1)):
            lateral = self.fpn_in[level](trunk_feats[level])
            fused, level_edge_logits = self.fpn_out_align[level](top_down, lateral)
            # UperNet: lateral + upsampled coarse map. PFNet: the original adds the lateral map to the
            # point-flow output, which already is the lateral map outside the flowed points, so untouched
            # positions carry 2 * lateral. Kept for parity.
            top_down = lateral + fused
            if level_edge_logits is not None:
                edge_logits.append(level_edge_logits)
            pyramid.append(self.fpn_out[level](top_down))
        pyramid.reverse()
        return self.conv_last(pyramid), edge_logits

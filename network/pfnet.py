"""PFNet: deep-stem ResNet, PSP module and an FPN-style head whose top-down fusions are point flows.

Attribute names mirror the original ``AlignNetResNetMaxAvgpool`` / ``UperNetAlignHeadMaxAvgpool`` so
that ``state_dict()`` keys, their order and shapes equal the released PFSegNets checkpoints'.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from network.point_flow import PointFlowModule
from network.psp import PSPModule
from network.resnet_d import load_imagenet_weights, make_deep_resnet_layers

NormLayer = Callable[[int], nn.Module]

TRUNK_CHANNELS = (256, 512, 1024, 2048)
FPN_DIM = 256
# PFNet dilates layer3 and layer4 but keeps their stride 2 (the original's "variant D"): the output
# strides stay 4, 8, 16, 32 and only the receptive fields grow. Checkpoints depend on it.
TRUNK_DILATIONS = (1, 1, 2, 4)


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


class ConcatClassifier(nn.Sequential):
    """``nn.Sequential`` applied to the channel concatenation of a list of maps.

    Holding the concatenation in a module of its own lets ``network.optimize_for_inference`` replace it
    with split convolutions (``split_concat``) while the state_dict keys stay those of a plain Sequential.

    Shapes: ``[(N, C_i, H, W)]`` -> the Sequential's output for (N, sum C_i, H, W).
    """

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return super().forward(torch.cat(levels, dim=1))


class PointFlowHead(nn.Module):
    """PFNet's decoder (the original ``UperNetAlignHeadMaxAvgpool``).

    From coarse to fine, each level's lateral features (``fpn_in``) receive the running top-down map
    through a point-flow module (``fpn_out_align``); the sum of the lateral features and the module's
    output continues down, ``fpn_out`` refines it for fusion. The four levels are resized to stride 4,
    concatenated finest first and classified by ``conv_last``.

    Args:
        num_classes: K.
        match_dim, maxpool_size, avgpool_size, edge_points: see :class:`PointFlowModule`.
        norm_layer: normalisation factory for the PSP module, ``fpn_in`` and the edge heads.

    Shapes: ``[res2, res3, res4, res5]`` with 256, 512, 1024, 2048 channels at strides 4, 8, 16, 32 ->
    (logits (N, K, H/4, W/4), edge logits ``[(N, 1, H/32, W/32), (N, 1, H/16, W/16), (N, 1, H/8, W/8)]``,
    coarsest first).
    """

    def __init__(self, num_classes: int, match_dim: int, maxpool_size: int, avgpool_size: int,
                 edge_points: int, norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.ppm = PSPModule(TRUNK_CHANNELS[-1], FPN_DIM, norm_layer=norm_layer)
        self.fpn_in = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, FPN_DIM, kernel_size=1), norm_layer(FPN_DIM), nn.ReLU())
            for channels in TRUNK_CHANNELS[:-1]
        )
        self.fpn_out = nn.ModuleList(
            nn.Sequential(conv3x3_bn_relu(FPN_DIM, FPN_DIM)) for _ in TRUNK_CHANNELS[:-1]
        )
        self.fpn_out_align = nn.ModuleList(
            PointFlowModule(FPN_DIM, dim=match_dim, maxpool_size=maxpool_size, avgpool_size=avgpool_size,
                            edge_points=edge_points, norm_layer=norm_layer)
            for _ in TRUNK_CHANNELS[:-1]
        )
        self.conv_last = ConcatClassifier(
            conv3x3_bn_relu(len(TRUNK_CHANNELS) * FPN_DIM, FPN_DIM),
            nn.Conv2d(FPN_DIM, num_classes, kernel_size=1),
        )

    def forward(self, trunk_feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        top_down = self.ppm(trunk_feats[-1])
        pyramid = [top_down]
        edge_logits = []
        for level in reversed(range(len(trunk_feats) - 1)):
            lateral = self.fpn_in[level](trunk_feats[level])
            flowed, level_edge_logits = self.fpn_out_align[level](top_down, lateral)
            # The original adds the lateral map to the point-flow output, which already is the lateral
            # map outside the flowed points: untouched positions carry 2 * lateral. Kept for parity.
            top_down = lateral + flowed
            edge_logits.append(level_edge_logits)
            pyramid.append(self.fpn_out[level](top_down))
        pyramid.reverse()
        size = pyramid[0].shape[2:]
        fused = [pyramid[0]] + [F.interpolate(p, size=size, mode="bilinear", align_corners=True) for p in pyramid[1:]]
        return self.conv_last(fused), edge_logits


class PFNet(nn.Module):
    """PointFlow network (the original ``AlignNetResNetMaxAvgpool``).

    Args:
        num_classes: K.
        depth: 50 or 101 (deep-stem ResNet trunk).
        match_dim: channels of the point matcher's embeddings (``--match_dim``).
        maxpool_size: salient-point grid (``--maxpool_size``).
        avgpool_size: edge-suppression grid (``--avgpool_size``).
        edge_points: number of edge points (``--edge_points``).
        norm_layer: normalisation factory for every norm except ``head.fpn_out`` and ``head.conv_last``
            (plain BatchNorm2d there, as the original).
        pretrained: path of the original's ImageNet trunk file (``resnet50-deep.pth`` /
            ``resnet101-deep.pth``) or None for random initialisation.

    Forward: x (N, 3, H, W) normalised image ->
        eval mode: logits (N, K, H, W);
        train mode: (logits (N, K, H, W), [edge logits (N, 1, H, W)] * 3, coarsest first).
    All outputs are resized bilinearly (align_corners=True) to the input size. Train mode needs N >= 2
    (the PSP module's 1x1 bin is batch-normalised over the batch).
    """

    def __init__(self, num_classes: int, depth: int = 50, match_dim: int = 64, maxpool_size: int = 14,
                 avgpool_size: int = 9, edge_points: int = 128, norm_layer: NormLayer = nn.BatchNorm2d,
                 pretrained: str | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.layer0, self.layer1, self.layer2, self.layer3, self.layer4 = make_deep_resnet_layers(
            depth, norm_layer, TRUNK_DILATIONS)
        if pretrained is not None:
            load_imagenet_weights(self, pretrained)
        self.head = PointFlowHead(num_classes, match_dim, maxpool_size, avgpool_size, edge_points, norm_layer)

    def forward_trunk(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) -> ``[res2, res3, res4, res5]`` at strides 4, 8, 16, 32."""
        res2 = self.layer1(self.layer0(x))
        res3 = self.layer2(res2)
        res4 = self.layer3(res3)
        res5 = self.layer4(res4)
        return [res2, res3, res4, res5]

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        size = x.shape[2:]
        logits, edge_logits = self.head(self.forward_trunk(x))
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
        if not self.training:
            return logits
        edge_logits = [F.interpolate(e, size=size, mode="bilinear", align_corners=True) for e in edge_logits]
        return logits, edge_logits

"""PFNet: UperNet whose top-down fusions are point-flow modules (the original ``AlignNetResNetMaxAvgpool``).

The head is the original ``UperNetAlignHeadMaxAvgpool``: :class:`network.fpn.FPNHead` with one
:class:`network.point_flow.PointFlowModule` per lateral level as ``fpn_out_align``, so that
``state_dict()`` keys, their order and shapes equal the released PFSegNets checkpoints'.
"""
from __future__ import annotations

import functools
from pathlib import Path

from torch import nn

from network.point_flow import PointFlowModule
from network.registry import register_model
from network.resnet_d import NormLayer
from network.upernet import UperNet


class PFNet(UperNet):
    """PointFlow network (the original ``AlignNetResNetMaxAvgpool``).

    Args:
        num_classes: K.
        depth: 50 or 101 (deep-stem ResNet trunk, dilated as UperNet's).
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
                 pretrained: str | Path | None = None):
        point_flow = functools.partial(PointFlowModule, dim=match_dim, maxpool_size=maxpool_size,
                                       avgpool_size=avgpool_size, edge_points=edge_points, norm_layer=norm_layer)
        super().__init__(num_classes, depth, norm_layer, pretrained, fusion=point_flow)


_ORIGINAL_MODULE = "network.pointflow_resnet_with_max_avg_pool"
# The official scripts' point-flow settings (the recipes in configs/pointflow/ and the test scripts pass them).
PFNET_DEFAULTS = {"maxpool_size": 14, "avgpool_size": 9, "edge_points": 128, "match_dim": 64}
PFNET_CLASSIFIER = "head.conv_last.1.weight"


@register_model("pfnet_r50", f"{_ORIGINAL_MODULE}.DeepR50_PF_maxavg_deeply", "DeepR50_PF_maxavg_deeply",
                defaults=PFNET_DEFAULTS, classifier_key=PFNET_CLASSIFIER, edge_outputs=True)
def pfnet_r50(num_classes: int, **options) -> PFNet:
    """PFNet with a deep-stem ResNet-50 trunk (33.0 M parameters for 16 classes)."""
    return PFNet(num_classes, depth=50, **options)


@register_model("pfnet_r101", f"{_ORIGINAL_MODULE}.DeepR101_PF_maxavg_deeply", "DeepR101_PF_maxavg_deeply",
                defaults=PFNET_DEFAULTS, classifier_key=PFNET_CLASSIFIER, edge_outputs=True)
def pfnet_r101(num_classes: int, **options) -> PFNet:
    """PFNet with a deep-stem ResNet-101 trunk (52.0 M parameters for 16 classes)."""
    return PFNet(num_classes, depth=101, **options)

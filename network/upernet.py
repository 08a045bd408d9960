"""UperNet (the original ``network/uper_resnet.py``, class ``AlignNetResNet``): the ablation baseline of PFNet.

The same dilated trunk, PSP module and FPN head as PFNet, with plain upsample-and-add top-down fusions.
``state_dict()`` keys, order and shapes equal the original's (checked on fixture case U).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from network.fpn import FPNHead, FusionFactory
from network.registry import register_model
from network.resnet_d import NormLayer
from network.trunk import STRIDE32_DILATED, ResNetTrunkModel

# fpn_dim of the head by trunk depth: the original gives ResNet-18 a 128-channel head.
FPN_DIM = {18: 128, 50: 256, 101: 256}


class UperNet(ResNetTrunkModel):
    """UperNet on a dilated ResNet (the original ``AlignNetResNet``, ``variant='D'``, ``fpn_dsn=False``).

    Args:
        num_classes: K.
        depth: 18 (plain-stem ResNet-18, fpn_dim 128), 50 or 101 (deep-stem, fpn_dim 256).
        norm_layer: normalisation factory for every norm except ``head.fpn_out`` and ``head.conv_last``
            (plain BatchNorm2d there, as the original).
        pretrained: the original's ImageNet trunk file, or None.
        fusion: top-down fusion factory of the head (see :class:`network.fpn.FPNHead`); None is UperNet's
            upsample-and-add. PFNet passes point-flow modules.

    Forward: x (N, 3, H, W) normalised image -> logits (N, K, H, W), resized bilinearly (align_corners=True);
    in train mode with edge-producing fusions: (logits, [edge logits (N, 1, H, W)] coarsest first). Train
    mode needs N >= 2 (the PSP module's 1x1 bin is batch-normalised over the batch).
    """

    def __init__(self, num_classes: int, depth: int = 50, norm_layer: NormLayer = nn.BatchNorm2d,
                 pretrained: str | Path | None = None, fusion: FusionFactory | None = None):
        super().__init__(depth, norm_layer, pretrained=pretrained, **STRIDE32_DILATED)
        self.num_classes = num_classes
        self.head = FPNHead(num_classes, self.trunk_channels, FPN_DIM[depth], norm_layer, fusion)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        size = x.shape[2:]
        logits, edge_logits = self.head(self.forward_trunk(x))
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
        if not self.training or not edge_logits:
            return logits
        edge_logits = [F.interpolate(e, size=size, mode="bilinear", align_corners=True) for e in edge_logits]
        return logits, edge_logits


_ORIGINAL_MODULE = "network.uper_resnet"
UPERNET_CLASSIFIER = "head.conv_last.1.weight"


@register_model("upernet_r18", f"{_ORIGINAL_MODULE}.UperNetDeepR18_deeply", "UperNetDeepR18_deeply",
                classifier_key=UPERNET_CLASSIFIER)
def upernet_r18(num_classes: int, **options) -> UperNet:
    """UperNet with the plain-stem ResNet-18 trunk and a 128-channel head (12.7 M parameters for 16 classes)."""
    return UperNet(num_classes, depth=18, **options)


@register_model("upernet_r50", f"{_ORIGINAL_MODULE}.UperNetDeepR50_deeply", "UperNetDeepR50_deeply",
                classifier_key=UPERNET_CLASSIFIER)
def upernet_r50(num_classes: int, **options) -> UperNet:
    """UperNet with a deep-stem ResNet-50 trunk (31.1 M parameters for 16 classes)."""
    return UperNet(num_classes, depth=50, **options)


@register_model("upernet_r101", f"{_ORIGINAL_MODULE}.UperNetDeepR101_deeply", "UperNetDeepR101_deeply",
                classifier_key=UPERNET_CLASSIFIER)
def upernet_r101(num_classes: int, **options) -> UperNet:
    """UperNet with a deep-stem ResNet-101 trunk (50.1 M parameters for 16 classes)."""
    return UperNet(num_classes, depth=101, **options)

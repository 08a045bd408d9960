"""PSPNet (the original ``network/pspnet.py``): dilated deep-stem ResNet, PSP module, one 3x3 + 1x1 classifier.

``state_dict()`` keys, order and shapes equal the original's (checked on fixture case P). The original
module imports a ``network/resnext.py`` its repository does not contain; the ResNet variants registered
here never used it.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from network.psp import PSPModule
from network.registry import register_model
from network.resnet_d import NormLayer
from network.trunk import STRIDE8, STRIDE16, ResNetTrunkModel

PSP_DIM = 512
FINAL_DIM = 256
OUTPUT_STRIDES = {8: STRIDE8, 16: STRIDE16}


class PSPNet(ResNetTrunkModel):
    """PSPNet on a deep-stem ResNet-50/101 (the original ``PSPNet``, variants ``D`` and ``D16``).

    ``ppm`` is :class:`network.psp.PSPModule` (2048 -> 512 channels) on layer4; ``final`` is a 3x3
    convolution to 256 channels, norm, ReLU and a 1x1 classifier without bias.

    Args:
        num_classes: K.
        depth: 50 or 101.
        output_stride: 8 (``variant='D'``: layer3 and layer4 at stride 1, dilated 2 and 4) or 16
            (``variant='D16'``: only layer4 at stride 1, dilated 2).
        norm_layer: normalisation factory of every norm.
        pretrained: the original's ImageNet trunk file, or None.

    Forward: x (N, 3, H, W) normalised image -> logits (N, K, H, W), resized bilinearly (align_corners=True)
    from stride ``output_stride``, in train and eval mode. Train mode needs N >= 2 (the PSP module's 1x1
    bin is batch-normalised over the batch).
    """

    def __init__(self, num_classes: int, depth: int = 50, output_stride: int = 8,
                 norm_layer: NormLayer = nn.BatchNorm2d, pretrained: str | Path | None = None):
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"PSPNet output_stride must be one of {sorted(OUTPUT_STRIDES)}, got {output_stride}")
        super().__init__(depth, norm_layer, pretrained=pretrained, **OUTPUT_STRIDES[output_stride])
        self.num_classes = num_classes
        self.ppm = PSPModule(self.trunk_channels[-1], PSP_DIM, norm_layer=norm_layer)
        self.final = nn.Sequential(
            nn.Conv2d(PSP_DIM, FINAL_DIM, kernel_size=3, padding=1, bias=False),
            norm_layer(FINAL_DIM),
            nn.ReLU(inplace=True),
            nn.Conv2d(FINAL_DIM, num_classes, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.final(self.ppm(self.forward_trunk(x)[-1]))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=True)


_ORIGINAL_MODULE = "network.pspnet"
PSPNET_CLASSIFIER = "final.3.weight"


@register_model("pspnet_r50", f"{_ORIGINAL_MODULE}.PSPNet_v1_r50", "PSPNet_v1_r50", classifier_key=PSPNET_CLASSIFIER)
def pspnet_r50(num_classes: int, **options) -> PSPNet:
    """PSPNet, deep-stem ResNet-50 at output stride 8 (31.1 M parameters for 16 classes)."""
    return PSPNet(num_classes, depth=50, output_stride=8, **options)


@register_model("pspnet_r101", f"{_ORIGINAL_MODULE}.PSPNet_v1_r101", "PSPNet_v1_r101",
                classifier_key=PSPNET_CLASSIFIER)
def pspnet_r101(num_classes: int, **options) -> PSPNet:
    """PSPNet, deep-stem ResNet-101 at output stride 8 (50.1 M parameters for 16 classes)."""
    return PSPNet(num_classes, depth=101, output_stride=8, **options)


@register_model("pspnet_d16_r50", f"{_ORIGINAL_MODULE}.PSPNet_D16_v1_r50", "PSPNet_D16_v1_r50",
                classifier_key=PSPNET_CLASSIFIER)
def pspnet_d16_r50(num_classes: int, **options) -> PSPNet:
    """PSPNet, deep-stem ResNet-50 at output stride 16 (31.1 M parameters for 16 classes)."""
    return PSPNet(num_classes, depth=50, output_stride=16, **options)

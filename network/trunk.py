"""The ResNet trunk every segmentation model here is built on: ``layer0`` (stem) to ``layer4``.

Depth 50 and 101 are the deep-stem ResNets of :mod:`network.resnet_d`, depth 18 the plain-stem ResNet-18
of :mod:`network.resnet`. Each model picks the stages' dilations and strides (its "variant"); ImageNet
weights load into the trunk before the head is built.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from network.resnet import make_resnet18_layers
from network.resnet_d import STAGE_STRIDES, NormLayer, load_imagenet_weights, make_deep_resnet_layers

# Output channels of layer1..layer4 by depth.
TRUNK_CHANNELS = {18: (64, 128, 256, 512), 50: (256, 512, 1024, 2048), 101: (256, 512, 1024, 2048)}
# The original's "variant D" of UperNet and PFNet: layer3 and layer4 dilated 2 and 4 with their stride 2 kept,
# so the output strides stay 4, 8, 16, 32 and only the receptive fields grow. Checkpoints depend on it.
STRIDE32_DILATED = {"dilations": (1, 1, 2, 4), "strides": STAGE_STRIDES}
# PSPNet's "variant D" (and DeepLabV3+): layer3 and layer4 at stride 1, dilated 2 and 4: output stride 8.
STRIDE8 = {"dilations": (1, 1, 2, 4), "strides": (1, 2, 1, 1)}
# PSPNet's "variant D16": only layer4 at stride 1, dilated 2: output stride 16.
STRIDE16 = {"dilations": (1, 1, 1, 2), "strides": (1, 2, 2, 1)}


def make_trunk_layers(depth: int, norm_layer: NormLayer, dilations: tuple[int, int, int, int],
                      strides: tuple[int, int, int, int]) -> list[nn.Module]:
    """``[layer0, ..., layer4]`` of a ResNet-18 (plain stem) or deep-stem ResNet-50/101.

    Raises:
        ValueError: another depth, or strides other than the standard ones for ResNet-18.
    """
    if depth == 18:
        if tuple(strides) != STAGE_STRIDES:
            raise ValueError("the ResNet-18 trunk keeps every stage's stride; output stride 8 or 16 needs depth 50/101")
        return make_resnet18_layers(norm_layer, dilations)
    return make_deep_resnet_layers(depth, norm_layer, dilations, strides)


class ResNetTrunkModel(nn.Module):
    """Base of the segmentation models: holds the trunk as ``layer0..layer4`` (the original's names).

    Args:
        depth: 18, 50 or 101.
        norm_layer: normalisation factory of the trunk.
        dilations, strides: per stage, layer1..layer4 (see the ``STRIDE*`` variants above).
        pretrained: path of the original's ImageNet trunk file (``resnet50-deep.pth``, ``resnet101-deep.pth``,
            ``resnet18.pth``) or None for random initialisation.

    Subclasses build their head after calling this constructor and use :meth:`forward_trunk`.
    """

    def __init__(self, depth: int, norm_layer: NormLayer, dilations: tuple[int, int, int, int],
                 strides: tuple[int, int, int, int], pretrained: str | Path | None):
        super().__init__()
        self.layer0, self.layer1, self.layer2, self.layer3, self.layer4 = make_trunk_layers(
            depth, norm_layer, dilations, strides)
        self.trunk_channels = TRUNK_CHANNELS[depth]
        if pretrained is not None:
            load_imagenet_weights(self, pretrained)

    def forward_trunk(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) -> ``[res2, res3, res4, res5]`` (``trunk_channels``; strides 4, 8 and the variant's)."""
        res2 = self.layer1(self.layer0(x))
        res3 = self.layer2(res2)
        res4 = self.layer3(res3)
        res5 = self.layer4(res4)
        return [res2, res3, res4, res5]

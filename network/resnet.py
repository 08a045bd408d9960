"""Plain-stem ResNet-18 trunk of UperNet-R18 (the original's ``network/resnet.py`` layout).

The stem is one 7x7/2 convolution (3->64), a batch-norm, ReLU and a 3x3/2 max-pool; the four stages hold
two basic blocks each (two 3x3 convolutions, expansion 1). Module names follow the original segmentation
model: ``layer0.0`` is the stem convolution, ``layer0.1`` its batch-norm, ``layer1..layer4`` the stages,
so the original's ImageNet file ``pretrained_models/resnet18.pth`` (torchvision key names) loads through
:func:`network.resnet_d.load_imagenet_weights`.
"""
from __future__ import annotations

import torch
from torch import nn

from network.resnet_d import STAGE_PLANES, STAGE_STRIDES, NormLayer, make_stage, shortcut_projection

BLOCKS_PER_STAGE = (2, 2, 2, 2)
STEM_CHANNELS = 64


class BasicBlock(nn.Module):
    """ResNet basic block: 3x3 (stride) -> 3x3 (dilation), expansion 1.

    Args:
        in_channels: channels of the input.
        planes: channels of both convolutions and of the output.
        stride: stride of the first convolution (and of the shortcut projection).
        dilation: dilation (and padding) of the second convolution only: the original dilates a stage by
            changing every ``conv2`` of it after construction, ``conv1`` keeps dilation 1.
        norm_layer: normalisation factory, called with a channel count.

    Shapes: (N, in_channels, H, W) -> (N, planes, ceil(H / stride), ceil(W / stride)).
    """

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, dilation: int, norm_layer: NormLayer):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut_projection(in_channels, planes, stride, norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


def make_plain_stem(norm_layer: NormLayer) -> nn.Sequential:
    """7x7/2 stem: (N, 3, H, W) -> (N, 64, ceil(H / 4), ceil(W / 4)), named as the original's ``layer0``."""
    return nn.Sequential(
        nn.Conv2d(3, STEM_CHANNELS, kernel_size=7, stride=2, padding=3, bias=False),
        norm_layer(STEM_CHANNELS),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


def make_resnet18_layers(norm_layer: NormLayer,
                         dilations: tuple[int, int, int, int] = (1, 1, 1, 1)) -> list[nn.Module]:
    """Build ``[layer0, layer1, layer2, layer3, layer4]`` of the plain-stem ResNet-18.

    Args:
        norm_layer: normalisation factory.
        dilations: dilation of the second 3x3 convolution of every block in layer1..layer4; every stage
            keeps its stride. UperNet-R18 uses (1, 1, 2, 4).

    Returns:
        Five modules; for an (N, 3, H, W) input they give 64, 64, 128, 256 and 512 channels at strides
        4, 4, 8, 16 and 32 (each size rounded up).
    """
    layers: list[nn.Module] = [make_plain_stem(norm_layer)]
    in_channels = STEM_CHANNELS
    for planes, blocks, stride, dilation in zip(STAGE_PLANES, BLOCKS_PER_STAGE, STAGE_STRIDES, dilations):
        layers.append(make_stage(in_channels, planes, blocks, stride, dilation, norm_layer, block=BasicBlock))
        in_channels = planes * BasicBlock.expansion
    return layers

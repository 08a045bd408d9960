"""DeepLabV3+ (Chen et al., ECCV 2018) on the deep-stem ResNet trunk, as mmsegmentation configures it.

The head follows mmsegmentation's ``DepthwiseSeparableASPPHead`` (``deeplabv3plus_r50-d8`` configs):
ASPP at output stride 8 with image pooling, a 1x1 branch and depthwise-separable 3x3 branches at rates 12,
24 and 36; a 3x3 bottleneck; a decoder that reduces layer1 to 48 channels, concatenates it with the
upsampled ASPP output and refines both with two depthwise-separable 3x3 convolutions; dropout 0.1 and a
1x1 classifier. Resizing is bilinear with ``align_corners=False``, as mmsegmentation's. Two differences
from mmsegmentation's setup: the trunk is the PFSegNets deep-stem ResNet dilated like PSPNet (every block of
layer3/layer4 dilated 2/4; mmsegmentation halves the first block's dilation), and there is no auxiliary
FCN head (the training harness has no auxiliary loss). No reference implementation is matched numerically.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from network.registry import register_model
from network.resnet_d import NormLayer
from network.trunk import STRIDE8, ResNetTrunkModel

HEAD_DIM = 512
LOW_LEVEL_DIM = 48
ASPP_RATES = (12, 24, 36)
DROPOUT = 0.1


def conv_norm_relu(in_channels: int, out_channels: int, kernel_size: int, norm_layer: NormLayer) -> nn.Sequential:
    """Convolution (no bias, 'same' padding), norm, ReLU: (N, C_in, H, W) -> (N, C_out, H, W)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        norm_layer(out_channels),
        nn.ReLU(inplace=True),
    )


def separable_conv(in_channels: int, out_channels: int, dilation: int, norm_layer: NormLayer) -> nn.Sequential:
    """Depthwise 3x3 (dilation, 'same' padding), norm, ReLU, then pointwise 1x1, norm, ReLU.

    Shapes: (N, C_in, H, W) -> (N, C_out, H, W).
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels, bias=False),
        norm_layer(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        norm_layer(out_channels),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with image pooling and depthwise-separable atrous branches.

    Branches, concatenated in this order: image pooling (global average, 1x1 conv-norm-ReLU, resized back),
    a 1x1 conv-norm-ReLU, and one :func:`separable_conv` per rate; ``bottleneck`` is a 3x3 conv-norm-ReLU.

    Shapes: (N, C_in, H, W) -> (N, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, rates: tuple[int, ...], norm_layer: NormLayer):
        super().__init__()
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                        conv_norm_relu(in_channels, out_channels, 1, norm_layer))
        self.branches = nn.ModuleList(
            [conv_norm_relu(in_channels, out_channels, 1, norm_layer)]
            + [separable_conv(in_channels, out_channels, rate, norm_layer) for rate in rates]
        )
        self.bottleneck = conv_norm_relu((len(rates) + 2) * out_channels, out_channels, 3, norm_layer)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.image_pool(feats), size=feats.shape[2:], mode="bilinear", align_corners=False)
        return self.bottleneck(torch.cat([pooled] + [branch(feats) for branch in self.branches], dim=1))


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the stride-8 map and a decoder fed by the stride-4 map.

    Args:
        num_classes: K.
        high_channels: channels of the stride-8 trunk output (2048).
        low_channels: channels of the stride-4 trunk output (layer1: 256).
        norm_layer: normalisation factory.

    Shapes: (res2 (N, 256, H/4, W/4), res5 (N, 2048, H/8, W/8)) -> logits (N, K, H/4, W/4).
    """

    def __init__(self, num_classes: int, high_channels: int, low_channels: int, norm_layer: NormLayer):
        super().__init__()
        self.aspp = ASPP(high_channels, HEAD_DIM, ASPP_RATES, norm_layer)
        self.low_level = conv_norm_relu(low_channels, LOW_LEVEL_DIM, 1, norm_layer)
        self.decoder = nn.Sequential(
            separable_conv(HEAD_DIM + LOW_LEVEL_DIM, HEAD_DIM, 1, norm_layer),
            separable_conv(HEAD_DIM, HEAD_DIM, 1, norm_layer),
        )
        self.classifier = nn.Sequential(nn.Dropout2d(DROPOUT), nn.Conv2d(HEAD_DIM, num_classes, kernel_size=1))

    def forward(self, low_feats: torch.Tensor, high_feats: torch.Tensor) -> torch.Tensor:
        context = F.interpolate(self.aspp(high_feats), size=low_feats.shape[2:], mode="bilinear", align_corners=False)
        decoded = self.decoder(torch.cat([context, self.low_level(low_feats)], dim=1))
        return self.classifier(decoded)


class DeepLabV3Plus(ResNetTrunkModel):
    """DeepLabV3+ on a deep-stem ResNet-50/101 at output stride 8 (layer3/layer4 stride 1, dilated 2/4).

    Args:
        num_classes: K.
        depth: 50 or 101.
        norm_layer: normalisation factory of every norm.
        pretrained: the original's ImageNet trunk file (``resnet50-deep.pth`` / ``resnet101-deep.pth``), or None.

    Forward: x (N, 3, H, W) normalised image -> logits (N, K, H, W) from stride 4, resized bilinearly
    (align_corners=False), in train and eval mode. Train mode needs N >= 2 (the image-pooling branch is
    batch-normalised over the batch).
    """

    def __init__(self, num_classes: int, depth: int = 50, norm_layer: NormLayer = nn.BatchNorm2d,
                 pretrained: str | Path | None = None):
        super().__init__(depth, norm_layer, pretrained=pretrained, **STRIDE8)
        self.num_classes = num_classes
        self.head = DeepLabV3PlusHead(num_classes, self.trunk_channels[-1], self.trunk_channels[0], norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res2, _, _, res5 = self.forward_trunk(x)
        return F.interpolate(self.head(res2, res5), size=x.shape[2:], mode="bilinear", align_corners=False)


DEEPLAB_CLASSIFIER = "head.classifier.1.weight"


@register_model("deeplabv3plus_r50", classifier_key=DEEPLAB_CLASSIFIER)
def deeplabv3plus_r50(num_classes: int, **options) -> DeepLabV3Plus:
    """DeepLabV3+ with a deep-stem ResNet-50 trunk at output stride 8 (40.4 M parameters for 16 classes)."""
    return DeepLabV3Plus(num_classes, depth=50, **options)


@register_model("deeplabv3plus_r101", classifier_key=DEEPLAB_CLASSIFIER)
def deeplabv3plus_r101(num_classes: int, **options) -> DeepLabV3Plus:
    """DeepLabV3+ with a deep-stem ResNet-101 trunk at output stride 8 (59.4 M parameters for 16 classes)."""
    return DeepLabV3Plus(num_classes, depth=101, **options)

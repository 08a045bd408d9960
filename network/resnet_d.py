"""Deep-stem ResNet-50/101 trunk of PFNet (the original's ``network/resnet_d.py`` layout).

The stem is three 3x3 convolutions (3->64->64->128, the first with stride 2) followed by a batch-norm,
ReLU and a 3x3/2 max-pool; bottlenecks carry their stride on the 3x3 convolution ("ResNet v1.5").
Module names follow the original segmentation model so its checkpoints load unchanged:
``layer0.0`` is the stem's convolution stack, ``layer0.1`` its last batch-norm, ``layer1..layer4`` the
residual stages.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from utils.checkpoint import read_checkpoint

NormLayer = Callable[[int], nn.Module]

STAGE_PLANES = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STEM_CHANNELS = 128

IMAGENET_WEIGHTS_HELP = (
    "The ImageNet-pretrained deep-stem ResNet weights ({name}) are published with the original PFSegNets "
    "code: see the 'Pretrained Models' section of github.com/lxtGH/PFSegNets (Google Drive or Baidu Pan). "
    "Download the file and pass its path (train.py: --pretrained PATH; Python: pretrained=PATH), or "
    "build the model without ImageNet initialisation (pretrained=None)."
)


def shortcut_projection(in_channels: int, out_channels: int, stride: int,
                        norm_layer: NormLayer) -> nn.Sequential | None:
    """A residual block's shortcut: None (identity) where the shapes already agree, else 1x1 (stride) conv + norm.

    Shapes: (N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride)).
    """
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                         norm_layer(out_channels))


class Bottleneck(nn.Module):
    """ResNet bottleneck 1x1 -> 3x3 (stride, dilation) -> 1x1 with expansion 4.

    Args:
        in_channels: channels of the input.
        planes: width of the block; the output has ``4 * planes`` channels.
        stride: stride of the 3x3 convolution (and of the shortcut projection).
        dilation: dilation (and padding) of the 3x3 convolution.
        norm_layer: normalisation factory, called with a channel count.

    Shapes: (N, in_channels, H, W) -> (N, 4 * planes, ceil(H / stride), ceil(W / stride)).
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, dilation: int, norm_layer: NormLayer):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = norm_layer(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, kernel_size=1, bias=False)
        self.bn3 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut_projection(in_channels, out_channels, stride, norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def make_stem(norm_layer: NormLayer) -> nn.Sequential:
    """Deep stem: (N, 3, H, W) -> (N, 128, ceil(H / 4), ceil(W / 4)), named as the original's ``layer0``."""
    convs = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False),
        norm_layer(64),
        nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=1, bias=False),
        norm_layer(64),
        nn.ReLU(inplace=True),
        nn.Conv2d(64, STEM_CHANNELS, kernel_size=3, stride=1, padding=1, bias=False),
    )
    return nn.Sequential(convs, norm_layer(STEM_CHANNELS), nn.ReLU(inplace=True),
                         nn.MaxPool2d(kernel_size=3, stride=2, padding=1))


def make_stage(in_channels: int, planes: int, blocks: int, stride: int, dilation: int,
               norm_layer: NormLayer, block: type[nn.Module] = Bottleneck) -> nn.Sequential:
    """One residual stage of ``blocks`` residual blocks (``Bottleneck``, or ResNet-18's ``BasicBlock``);
    only the first one strides."""
    layers = [block(in_channels, planes, stride, dilation, norm_layer)]
    for _ in range(1, blocks):
        layers.append(block(planes * block.expansion, planes, 1, dilation, norm_layer))
    return nn.Sequential(*layers)


def make_deep_resnet_layers(depth: int, norm_layer: NormLayer,
                            dilations: tuple[int, int, int, int] = (1, 1, 1, 1),
                            strides: tuple[int, int, int, int] = STAGE_STRIDES) -> list[nn.Module]:
    """Build ``[layer0, layer1, layer2, layer3, layer4]`` of a deep-stem ResNet.

    Args:
        depth: 50 or 101.
        norm_layer: normalisation factory.
        dilations: dilation of the 3x3 convolutions in layer1..layer4. PFNet and UperNet use (1, 1, 2, 4)
            while keeping every stage's stride, so the output strides stay 4, 8, 16, 32.
        strides: stride of the first block of layer1..layer4. PSPNet and DeepLabV3+ at output stride 8 use
            (1, 2, 1, 1) with dilations (1, 1, 2, 4); at output stride 16, (1, 2, 2, 1) with (1, 1, 1, 2).

    Returns:
        Five modules; for an (N, 3, H, W) input they give 128, 256, 512, 1024 and 2048 channels at
        strides 4, 4 and then 4 times the running product of ``strides[1:]`` (each size rounded up):
        4, 4, 8, 16, 32 by default.
    """
    if depth not in BLOCKS_PER_STAGE:
        raise ValueError(f"deep-stem ResNet depth must be one of {sorted(BLOCKS_PER_STAGE)}, got {depth}")
    layers: list[nn.Module] = [make_stem(norm_layer)]
    in_channels = STEM_CHANNELS
    for planes, blocks, stride, dilation in zip(STAGE_PLANES, BLOCKS_PER_STAGE[depth], strides, dilations):
        layers.append(make_stage(in_channels, planes, blocks, stride, dilation, norm_layer))
        in_channels = planes * Bottleneck.expansion
    return layers


def imagenet_key_to_model_key(key: str) -> str | None:
    """Map a key of the original ImageNet file (``resnet50-deep.pth``) to the segmentation model's name.

    ``conv1.k.*`` -> ``layer0.0.k.*``, ``bn1.*`` -> ``layer0.1.*``, ``layerN.*`` unchanged, ``fc.*`` -> None.
    """
    if key.startswith("fc."):
        return None
    if key.startswith("conv1."):
        return "layer0.0." + key[len("conv1."):]
    if key.startswith("bn1."):
        return "layer0.1." + key[len("bn1."):]
    return key


def load_imagenet_weights(model: nn.Module, path: str | Path) -> None:
    """Initialise ``model.layer0..layer4`` from the original's ImageNet file, strictly (:func:`fill_imagenet_trunk`).

    Raises:
        FileNotFoundError: the file does not exist; the message says where it comes from.
        utils.checkpoint.CheckpointFileError: the file is empty, truncated or not a PyTorch checkpoint.
        RuntimeError: the file's tensors do not cover the trunk or have other shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet weights not found: {path}. " + IMAGENET_WEIGHTS_HELP.format(name=path.name))
    # a broken file: one CheckpointFileError line naming it
    fill_imagenet_trunk(model, read_checkpoint(path)["state_dict"], path)


def fill_imagenet_trunk(model: nn.Module, loaded: dict[str, torch.Tensor], source: str | Path) -> None:
    """Copy the tensors of an ImageNet trunk file's state_dict ``loaded`` (torchvision or the original's key
    names) into ``model.layer0..layer4``, strictly.

    Raises:
        RuntimeError: the tensors do not cover the trunk or have other shapes; the message names ``source``.
    """
    trunk_state = {}
    for key, tensor in loaded.items():
        model_key = imagenet_key_to_model_key(key)
        if model_key is not None:
            trunk_state[model_key] = tensor
    expected = {k: v for k, v in model.state_dict().items() if k.startswith("layer")}
    missing = sorted(set(expected) - set(trunk_state))
    unexpected = sorted(set(trunk_state) - set(expected))
    wrong_shape = [k for k in expected.keys() & trunk_state.keys() if expected[k].shape != trunk_state[k].shape]
    if missing or unexpected or wrong_shape:
        raise RuntimeError(
            f"{source} does not match the deep-stem ResNet trunk: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong_shape)} with other shapes (e.g. {wrong_shape[:3]}). Is it the file for this depth?"
        )
    model.load_state_dict(trunk_state, strict=False)

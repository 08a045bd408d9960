"""Inference-time speed-ups for a model whose weights are loaded, each one a switch.

``optimize_for_inference`` returns a new module (the model passed in is left untouched) that computes
the same function faster:

- ``fold_bn``: every eval-mode batch-norm that directly follows a convolution is folded into that
  convolution's weight and bias (exact up to float32 rounding);
- ``channels_last``: weights and the input image are stored NHWC, the layout oneDNN / cuDNN convolutions
  run fastest in;
- ``split_concat``: the FPN head's (PFNet, UperNet) final 3x3 convolution over the concatenated four pyramid
  levels becomes four convolutions over the levels, summed (same result without the 4 x 256-channel map);
- ``dtype``: bfloat16 / float16 autocast with the convolution weights stored in that dtype (lossy; the
  logits come back as float32);
- ``compile``: ``torch.compile`` of the result.

The optimised module is for inference only: it is in eval mode, its ``state_dict`` is not a checkpoint
(folded norms are gone), and training it is not supported.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from network.fpn import ConcatClassifier, FPNHead
from network.resnet import BasicBlock
from network.resnet_d import Bottleneck

LOW_PRECISION_DTYPES = (torch.bfloat16, torch.float16)


@torch.no_grad()
def fold_batch_norm_(conv: nn.Conv2d, norm: _BatchNorm) -> None:
    """Fold an eval-mode batch-norm into the convolution before it, in place: ``conv(x)`` then equals the
    former ``norm(conv(x))``.

    ``w' = w * s`` and ``b' = (b - m) * s + beta`` with the per-output-channel ``s = g / sqrt(v + eps)``;
    ``s`` and ``b'`` are formed in float64, the weight product in the convolution's dtype.

    Raises:
        ValueError: ``norm`` is in training mode or keeps no running statistics.
    """
    if norm.training:
        raise ValueError(f"cannot fold {norm}: it is in training mode; call model.eval() first")
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError(f"cannot fold {norm}: it keeps no running statistics (track_running_stats=False)")
    scale = (norm.weight.double() if norm.affine else 1.0) / torch.sqrt(norm.running_var.double() + norm.eps)
    shift = norm.bias.double() if norm.affine else 0.0
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    conv.weight.mul_(scale.to(conv.weight.dtype).view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(((bias - norm.running_mean.double()) * scale + shift).to(conv.weight.dtype))


def _output_conv(module: nn.Module) -> nn.Conv2d | None:
    """The convolution whose output is ``module``'s output: ``module`` itself or, through nested
    ``nn.Sequential`` (the stem's convolution stack), their last layer; None otherwise."""
    if isinstance(module, nn.Conv2d):
        return module
    if isinstance(module, nn.Sequential) and len(module) > 0:
        return _output_conv(module[-1])
    return None


def fold_batch_norms(model: nn.Module) -> int:
    """Fold, in place, every batch-norm that directly follows a convolution; returns how many were folded.

    Recognised patterns: a ``Conv2d`` (possibly the last layer of a nested ``nn.Sequential``) followed by a
    batch-norm in an ``nn.Sequential``, and the ``convK -> bnK`` pairs of a ResNet :class:`Bottleneck` or
    :class:`BasicBlock`.
    The folded norms become ``nn.Identity``. Norms after anything else are left as they are.
    """
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, (Bottleneck, BasicBlock)):
            for index in (1, 2, 3) if isinstance(module, Bottleneck) else (1, 2):
                conv, norm = getattr(module, f"conv{index}"), getattr(module, f"bn{index}")
                if isinstance(norm, _BatchNorm):
                    fold_batch_norm_(conv, norm)
                    setattr(module, f"bn{index}", nn.Identity())
                    folded += 1
        elif isinstance(module, nn.Sequential):
            for index in range(1, len(module)):
                conv = _output_conv(module[index - 1])
                if isinstance(module[index], _BatchNorm) and conv is not None:
                    fold_batch_norm_(conv, module[index])
                    module[index] = nn.Identity()
                    folded += 1
    return folded


class SplitConcatClassifier(nn.Module):
    """A :class:`ConcatClassifier` whose first convolution runs on each input map separately.

    ``conv(cat([x_0, ..., x_k]))`` equals ``sum_i conv_i(x_i)`` where ``conv_i`` holds the input-channel
    slice of the weights that meets ``x_i`` (the bias is added once, by ``conv_0``); the concatenated map
    is never built. The layers after the first convolution run unchanged.

    Args:
        classifier: the module to replace; its first layer (possibly nested in an ``nn.Sequential``)
            must be an ungrouped ``Conv2d``.
        level_channels: C_i of each input map, in order; they must sum to the convolution's input.

    Shapes: ``[(N, C_i, H, W)]`` -> as ``classifier``.
    """

    def __init__(self, classifier: ConcatClassifier, level_channels: list[int]):
        super().__init__()
        first_block = classifier[0]
        conv = first_block[0] if isinstance(first_block, nn.Sequential) else first_block
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or sum(level_channels) != conv.in_channels:
            raise ValueError(f"cannot split {conv} over inputs of {level_channels} channels")
        self.level_convs = nn.ModuleList()
        for index, weight in enumerate(conv.weight.detach().split(level_channels, dim=1)):
            level_conv = copy.deepcopy(conv)
            level_conv.in_channels = weight.shape[1]
            level_conv.weight = nn.Parameter(weight.clone())
            if index > 0 or conv.bias is None:
                level_conv.bias = None
            self.level_convs.append(level_conv)
        rest = list(first_block[1:]) if isinstance(first_block, nn.Sequential) else []
        self.rest = nn.Sequential(*rest, *classifier[1:])

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        summed = self.level_convs[0](levels[0])
        for level_conv, level in zip(self.level_convs[1:], levels[1:]):
            summed += level_conv(level)  # in place: no new (N, C, H, W) map per level
        return self.rest(summed)


class InferenceModel(nn.Module):
    """Runs an eval-mode model on inputs in its memory format, under autocast when ``dtype`` is set.

    Args:
        model: the (already transformed) model.
        channels_last: convert the input to ``torch.channels_last``.
        dtype: None (float32) or the autocast dtype (bfloat16 / float16); autocast runs on the input's
            device type.

    Forward: images (N, 3, H, W) float -> the model's output; low-precision logits are returned as float32.
    """

    def __init__(self, model: nn.Module, *, channels_last: bool, dtype: torch.dtype | None):
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.dtype = dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.dtype is None:
            return self.model(images)
        with torch.autocast(images.device.type, dtype=self.dtype):
            logits = self.model(images)
        return logits.float()


def optimize_for_inference(model: nn.Module, *, fold_bn: bool = True, channels_last: bool = True,
                           split_concat: bool = True, dtype: torch.dtype | None = None,
                           compile: bool = False) -> nn.Module:
    """A faster eval-mode copy of ``model`` (weights loaded) for prediction; ``model`` is not modified.

    The defaults are the lossless switches that pay off on the CPUs and GPUs measured in
    ``bench/RESULTS.md``: float32 output stays within the parity bound of the original model's.

    Args:
        model: a model of ``network.get_model`` or any module containing convolutions.
        fold_bn: fold batch-norms into the convolutions before them (see :func:`fold_batch_norms`).
        channels_last: NHWC weights and inputs.
        split_concat: replace the concatenation + 3x3 convolution of every :class:`FPNHead` by
            per-level convolutions (:class:`SplitConcatClassifier`): a little faster and ~100 MB lighter
            at 896 x 896 on the CPU measured; models without that head are left as they are.
        dtype: None for float32, or ``torch.bfloat16`` / ``torch.float16`` to run under autocast with
            convolution weights stored in that dtype (lossy: argmax agreement, not the parity bound;
            bfloat16 for CPUs with AVX512-BF16/AMX, either on GPUs).
        compile: wrap the result in ``torch.compile`` (the first call compiles; needs a C++ compiler on CPU).

    Returns:
        ``InferenceModel`` (or its compiled wrapper): images (N, 3, H, W) float32 -> logits (N, K, H, W)
        float32 on the input's device.

    Raises:
        ValueError: ``dtype`` is not None, bfloat16 or float16.
    """
    if dtype is not None and dtype not in LOW_PRECISION_DTYPES:
        raise ValueError(f"dtype must be None (float32), torch.bfloat16 or torch.float16, got {dtype}")
    optimized = copy.deepcopy(model).eval()
    if fold_bn:
        fold_batch_norms(optimized)
    if split_concat:
        for head in [m for m in optimized.modules() if isinstance(m, FPNHead)]:
            head.conv_last = SplitConcatClassifier(head.conv_last, [head.fpn_dim] * head.num_levels)
    if channels_last:
        optimized = optimized.to(memory_format=torch.channels_last)
    if dtype is not None:
        for module in optimized.modules():
            if isinstance(module, nn.Conv2d):
                module.to(dtype)
    wrapped = InferenceModel(optimized, channels_last=channels_last, dtype=dtype).eval()
    return torch.compile(wrapped) if compile else wrapped

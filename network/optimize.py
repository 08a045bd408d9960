"""Inference-time speed-ups for a model whose weights are loaded, each one a switch.

``optimize_for_inference`` returns a new module (the model passed in is left untouched) that computes
the same function faster:

- ``fold_bn``: every eval-mode batch-norm that directly follows a convolution is folded into that
  convolution's weight and bias (exact up to float32 rounding);
- ``channels_last``: weights and the input image are stored NHWC, the layout oneDNN / cuDNN convolutions
  run fastest in;
- ``split_concat``: the FPN head's (PFNet, UperNet) final 3x3 convolution over the concatenated four pyramid
  levels becomes four convolutions over the levels, summed (same result without the 4 x 256-channel map);
- ``resize_after_conv``: in that split head, the convolution of each coarse level resized to the finest
  size is computed at the level's own size, one matrix product per kernel tap, and resized after
  (the same linear map, a fraction of the work: :class:`ResizedConv3x3`);
- ``fuse``: every convolution followed by a ReLU, and every residual block's last convolution with its
  addition and ReLU, runs as one oneDNN call (:class:`FusedConv2d`; float32 on CPU);
- ``dtype``: bfloat16 / float16 autocast with the convolution weights stored in that dtype (lossy; the
  logits come back as float32);
- ``compile``: ``torch.compile`` of the result.

The optimised module is for inference only: it is in eval mode, its ``state_dict`` is not a checkpoint
(folded norms are gone), and training it is not supported.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
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


def _output_conv_slot(sequential: nn.Sequential, index: int) -> tuple[nn.Sequential, int] | None:
    """(container, position) of the convolution whose output is ``sequential[index]``'s output (through
    nested ``nn.Sequential``, the stem's convolution stack, to their last layer); None where there is none."""
    module = sequential[index]
    if isinstance(module, nn.Sequential) and len(module) > 0:
        return _output_conv_slot(module, len(module) - 1)
    return (sequential, index) if isinstance(module, nn.Conv2d) else None


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
                slot = _output_conv_slot(module, index - 1)
                if isinstance(module[index], _BatchNorm) and slot is not None:
                    fold_batch_norm_(slot[0][slot[1]], module[index])
                    module[index] = nn.Identity()
                    folded += 1
    return folded


def resize_matrices(source: int, target: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The linear resize of ``source`` positions to ``target`` (align_corners=True) as matrices, shifted by
    -1, 0 and +1 target positions: row ``t`` of matrix ``k`` holds the weights of output position
    ``t + k - 1`` (zeros where that falls outside), the taps of a 3-wide kernel run after the resize.

    The weights are torch's own (the resize of an identity matrix), so products with them reproduce
    ``F.interpolate``'s values up to float rounding.

    Returns:
        (3, target, source).
    """
    identity = torch.eye(source, dtype=dtype, device=device).unsqueeze(0)
    resize = F.interpolate(identity, size=target, mode="linear", align_corners=True)[0].T  # (target, source)
    padded = F.pad(resize, (0, 0, 1, 1))
    return torch.stack([padded[shift:shift + target] for shift in range(3)])


class ResizedConv3x3(nn.Module):
    """A 3x3 convolution (stride 1, padding 1, no bias) of a map resized bilinearly (align_corners=True),
    computed before the resize and added into an output.

    Resizing is linear and acts on each channel alike, and the convolution mixes channels per kernel tap, so
    ``conv(resize(x)) = sum over taps of shift_tap(resize(W_tap x))``: nine 1x1 products at the coarse size,
    each resized with the tap's shift built into the resize matrices (:func:`resize_matrices`), the height
    then the width, as matrix products. For a map a quarter of the target's side this is about a fifth of
    the convolution's work at the target size, for an eighth a fifteenth; the result is the same up to float
    rounding. Float32 (the taps are stored in the convolution's dtype at construction).

    Args:
        conv: the convolution; its weights are copied as nine (C_in, C_out) tap matrices.

    Raises:
        ValueError: ``conv`` is not a 3x3, stride 1, padding 1, dilation 1, ungrouped, bias-free convolution.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups) != ((3, 3), (1, 1), (1, 1),
                                                                                       (1, 1), 1) \
                or conv.bias is not None or conv.padding_mode != "zeros":
            raise ValueError(f"cannot compute {conv} before the resize: it must be 3x3, stride 1, padding 1, "
                             "undilated, ungrouped and without bias")
        # (kx * 3 + ky, C_in, C_out); three dimensions, so that channels_last conversions leave it alone
        self.register_buffer("taps", conv.weight.detach().permute(3, 2, 1, 0).reshape(9, conv.in_channels,
                                                                                        conv.out_channels).clone())

    def add_to_(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``out += conv(F.interpolate(x, size=out.shape[2:], mode="bilinear", align_corners=True))``, in place.

        Shapes: out (N, C_out, H, W), x (N, C_in, h, w) -> out.
        """
        (height, width), (rows, columns) = out.shape[2:], x.shape[2:]
        channels = out.shape[1]
        by_height = resize_matrices(rows, height, x.dtype, x.device).permute(1, 0, 2).reshape(height, 3 * rows)
        by_width = resize_matrices(columns, width, x.dtype, x.device)  # (3, W, w)
        taps = x.new_empty(3, rows, columns, channels)  # one kernel column: (ky, y, x, C_out)
        resized = x.new_empty(height, columns, channels)
        for index in range(x.shape[0]):
            pixels = x[index].permute(1, 2, 0).reshape(rows * columns, -1)  # (h * w, C_in); a view if channels_last
            target = out[index].permute(1, 2, 0)  # (H, W, C_out)
            for kx in range(3):
                for ky in range(3):
                    torch.mm(pixels, self.taps[3 * kx + ky], out=taps[ky].view(rows * columns, channels))
                torch.mm(by_height, taps.view(3 * rows, columns * channels), out=resized.view(height, -1))
                target.baddbmm_(by_width[kx].expand(height, width, columns), resized)
        return out


class SplitConcatClassifier(nn.Module):
    """A :class:`ConcatClassifier` whose first convolution runs on each input map separately.

    ``conv(cat([x_0, resize(x_1), ...]))`` equals ``sum_i conv_i(resize(x_i))`` where ``conv_i`` holds the
    input-channel slice of the weights that meets ``x_i`` (the bias is added once, by ``conv_0``); the
    concatenated map is never built. With ``resize_after_conv``, maps at most a third of the first one's
    height and width are convolved before they are resized (:class:`ResizedConv3x3`). The layers after the
    first convolution run unchanged.

    Args:
        classifier: the module to replace; its first layer (possibly nested in an ``nn.Sequential``)
            must be an ungrouped ``Conv2d``.
        level_channels: C_i of each input map, in order; they must sum to the convolution's input.
        resize_after_conv: compute the convolution of coarse maps before resizing them (needs a 3x3
            convolution with padding 1).

    Shapes: ``[(N, C_i, H_i, W_i)]`` -> as ``classifier``.
    """

    def __init__(self, classifier: ConcatClassifier, level_channels: list[int], *, resize_after_conv: bool = False):
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
        self.resized_convs = nn.ModuleList(ResizedConv3x3(level_conv) for level_conv in self.level_convs[1:]) \
            if resize_after_conv else None
        rest = list(first_block[1:]) if isinstance(first_block, nn.Sequential) else []
        self.rest = nn.Sequential(*rest, *classifier[1:])

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        summed = self.level_convs[0](levels[0])
        height, width = size = summed.shape[2:]
        for index, level in enumerate(levels[1:]):
            rows, columns = level.shape[2:]
            if self.resized_convs is not None and 3 * rows <= height and 3 * columns <= width:
                self.resized_convs[index].add_to_(summed, level)
                continue
            if level.shape[2:] != size:
                level = F.interpolate(level, size=size, mode="bilinear", align_corners=True)
            summed += self.level_convs[index + 1](level)  # in place: no new (N, C, H, W) map per level
        return self.rest(summed)


class FusedConv2d(nn.Module):
    """A convolution and the ReLU after it, optionally with a map added before the ReLU, as one oneDNN call
    (``torch.ops.mkldnn._convolution_pointwise``): the result is written once, not read and written again by
    the addition and the ReLU. Float32 on CPU.

    Args:
        conv: the convolution (zero padding given as numbers); its weight and bias are shared.
        relu: apply a ReLU to the result.

    Forward: x (N, C_in, H, W)[, added: (N, C_out, H', W') in the output's shape and memory format] ->
    ``relu(conv(x) [+ added])``, in x's memory format.
    """

    def __init__(self, conv: nn.Conv2d, relu: bool):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.relu = relu

    def forward(self, x: torch.Tensor, added: torch.Tensor | None = None) -> torch.Tensor:
        geometry = (self.padding, self.stride, self.dilation, self.groups)
        if added is None:
            return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, *geometry,
                                                           "relu" if self.relu else "none", [], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(x, added, self.weight, self.bias, *geometry, "add",
                                                              None, "relu" if self.relu else None, [], "")


class FusedResidualBlock(nn.Module):
    """A folded ResNet :class:`Bottleneck` / :class:`BasicBlock` on :class:`FusedConv2d`: each inner convolution
    with its ReLU, the last one with the shortcut's addition and the final ReLU.

    Args:
        block: the block, its batch-norms already folded (``nn.Identity``).

    Shapes: as ``block``.
    """

    def __init__(self, block: Bottleneck | BasicBlock):
        super().__init__()
        convs = [block.conv1, block.conv2] + ([block.conv3] if isinstance(block, Bottleneck) else [])
        self.inner = nn.Sequential(*(FusedConv2d(conv, relu=True) for conv in convs[:-1]))
        self.last = FusedConv2d(convs[-1], relu=True)
        self.downsample = block.downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.last(self.inner(x), shortcut)


def _fusable(conv: nn.Module) -> bool:
    """Whether ``conv`` is a float32 CPU ``nn.Conv2d`` with numeric zero padding (what oneDNN's fused call takes)."""
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and conv.weight.dtype == torch.float32 and conv.weight.device.type == "cpu")


def _is_folded(block: nn.Module) -> bool:
    """Whether every batch-norm of a residual block has been folded away (is ``nn.Identity``)."""
    norms = ("bn1", "bn2", "bn3") if isinstance(block, Bottleneck) else ("bn1", "bn2")
    return all(isinstance(getattr(block, name), nn.Identity) for name in norms)


def fuse_convolutions(model: nn.Module) -> int:
    """Replace, in place, every convolution followed by a ReLU (batch-norms in between already folded away)
    and every folded residual block by their :class:`FusedConv2d` forms; returns how many convolutions fused.

    Recognised patterns: in an ``nn.Sequential``, a ``Conv2d`` (possibly the last layer of a nested
    ``nn.Sequential``), then any ``nn.Identity``, then ``nn.ReLU`` (which becomes ``nn.Identity``); a
    :class:`Bottleneck` / :class:`BasicBlock` whose batch-norms are folded (:class:`FusedResidualBlock`).
    Only convolutions :func:`_fusable` are touched.
    """
    fused = 0
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        for index in range(len(module)):
            block = module[index]
            if isinstance(block, (Bottleneck, BasicBlock)) and _is_folded(block) \
                    and all(_fusable(m) for m in block.modules() if isinstance(m, nn.Conv2d)):
                module[index] = FusedResidualBlock(block)
                fused += 3 if isinstance(block, Bottleneck) else 2
                continue
            slot = _output_conv_slot(module, index)
            after = index + 1
            while after < len(module) and isinstance(module[after], nn.Identity):
                after += 1
            if slot is not None and after < len(module) and isinstance(module[after], nn.ReLU) \
                    and _fusable(slot[0][slot[1]]):
                container, position = slot
                container[position] = FusedConv2d(container[position], relu=True)
                module[after] = nn.Identity()
                fused += 1
    return fused


class InferenceModel(nn.Module):
    """Runs an eval-mode model on inputs in its memory format, without autograd (the fused and matrix-product
    forms of :func:`optimize_for_inference` have no gradients), under autocast when ``dtype`` is set.

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

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.dtype is None:
            return self.model(images)
        with torch.autocast(images.device.type, dtype=self.dtype):
            logits = self.model(images)
        return logits.float()


def optimize_for_inference(model: nn.Module, *, fold_bn: bool = True, channels_last: bool = True,
                           split_concat: bool = True, resize_after_conv: bool | None = None,
                           fuse: bool | None = None, dtype: torch.dtype | None = None,
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
        resize_after_conv: with ``split_concat``, convolve the coarse pyramid levels before resizing them
            (:class:`ResizedConv3x3`: matrix products, same function). None: in float32 on CPU, where it was
            measured faster.
        fuse: run convolutions with their ReLU / residual addition as single oneDNN calls
            (:func:`fuse_convolutions`; needs ``fold_bn``). None: in float32 on CPU when torch has oneDNN and
            ``compile`` is off (compiling fuses on its own).
        dtype: None for float32, or ``torch.bfloat16`` / ``torch.float16`` to run under autocast with
            convolution weights stored in that dtype (lossy: argmax agreement, not the parity bound;
            bfloat16 for CPUs with AVX512-BF16/AMX, either on GPUs).
        compile: wrap the result in ``torch.compile`` (the first call compiles; needs a C++ compiler on CPU).

    Returns:
        ``InferenceModel`` (or its compiled wrapper): images (N, 3, H, W) float32 -> logits (N, K, H, W)
        float32 on the input's device.

    Raises:
        ValueError: ``dtype`` is not None, bfloat16 or float16; or ``resize_after_conv`` is asked for with a
            ``dtype`` (it is float32 only).
    """
    if dtype is not None and dtype not in LOW_PRECISION_DTYPES:
        raise ValueError(f"dtype must be None (float32), torch.bfloat16 or torch.float16, got {dtype}")
    if resize_after_conv and dtype is not None:
        raise ValueError(f"resize_after_conv is float32 only; leave it unset (None) with dtype={dtype}")
    optimized = copy.deepcopy(model).eval()
    on_cpu_float32 = dtype is None and all(p.device.type == "cpu" for p in optimized.parameters())
    if resize_after_conv is None:
        resize_after_conv = on_cpu_float32
    if fuse is None:
        fuse = on_cpu_float32 and fold_bn and not compile and torch.backends.mkldnn.is_available()
    if fold_bn:
        fold_batch_norms(optimized)
    if split_concat:
        for head in [m for m in optimized.modules() if isinstance(m, FPNHead)]:
            head.conv_last = SplitConcatClassifier(head.conv_last, [head.fpn_dim] * head.num_levels,
                                                   resize_after_conv=resize_after_conv)
    if channels_last:
        optimized = optimized.to(memory_format=torch.channels_last)
    if dtype is not None:
        for module in optimized.modules():
            if isinstance(module, nn.Conv2d):
                module.to(dtype)
    if fuse:
        fuse_convolutions(optimized)
    wrapped = InferenceModel(optimized, channels_last=channels_last, dtype=dtype).eval()
    return torch.compile(wrapped) if compile else wrapped

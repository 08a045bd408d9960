"""Adaptive pooling built from elementary tensor ops, so that models export to ONNX with symbolic H and W.

ONNX has no adaptive pooling operator. ``torch.onnx.export(..., dynamo=True)`` has no ONNX function for
``aten.adaptive_max_pool2d``, and its decomposition of ``aten._adaptive_avg_pool2d`` branches in Python on
the example input's size, which bakes that size into the graph (other sizes then fail or give wrong values).

- :func:`adaptive_max_pool2d_with_indices` computes the same values and the same indices as
  ``F.adaptive_max_pool2d(x, size, return_indices=True)`` on every input size (overlapping, uneven and
  larger-than-input windows included), in eager mode and under export alike.
- :func:`adaptive_avg_pool2d` is torch's op in eager mode (bit for bit as before) and, while exporting, the
  window means as two matrix products (the same up to float32 rounding of the sums).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def adaptive_window_positions(length: int, out_size: int, device: torch.device) -> torch.Tensor:
    """The input positions each adaptive-pooling window covers, along one axis, padded to one width.

    Window ``i`` spans ``[floor(i * length / out_size), ceil((i + 1) * length / out_size))``, the windows
    of torch's adaptive pooling; no window is longer than ``ceil(length / out_size) + 1``. Each row lists
    its window's positions in increasing order, the last one repeated to pad it to that width (a repeated
    position changes neither the maximum nor the first position holding it).

    Returns:
        (out_size, ceil(length / out_size) + 1) int64 positions in ``[0, length)``.
    """
    window = torch.arange(out_size, device=device)
    starts = torch.div(window * length, out_size, rounding_mode="floor")
    ends = torch.div((window + 1) * length + out_size - 1, out_size, rounding_mode="floor")
    longest = (length + out_size - 1) // out_size + 1
    offsets = torch.arange(longest, device=device)
    return torch.minimum(starts.unsqueeze(1) + offsets, ends.unsqueeze(1) - 1)


def _max_and_first_position(values: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per window, the largest value along the last axis and the first position that holds it.

    Shapes: values (..., L), positions (M, K) from :func:`adaptive_window_positions` -> maxima and
    positions, both (..., M). A window of ``-inf`` only gives its first position, as torch's kernel does
    (it starts from ``-inf`` at the window's first cell and moves only on a strictly larger value). A window
    holding a NaN gives NaN and the position of its first NaN (torch's kernel takes the last one), so the
    index always lies inside the window.
    """
    windowed = values.index_select(-1, positions.flatten()).unflatten(-1, positions.shape)
    maxima = windowed.amax(dim=-1)
    holds_maximum = (windowed == maxima.unsqueeze(-1)) | windowed.isnan()
    first = torch.where(holds_maximum, positions, values.shape[-1]).amin(dim=-1)
    return maxima, first


def adaptive_max_pool2d_with_indices(x: torch.Tensor, output_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.adaptive_max_pool2d(x, output_size, return_indices=True)`` from exportable ops.

    The window maximum is found separably: first along each row inside every column window, then along
    the rows of every row window. Ties go to the first cell in row-major order, as in torch's kernels: the
    first row holding the maximum, and in it the first column. Identical to torch's op for finite and
    infinite values (``tests/test_adaptive_pool.py``); a NaN propagates to its window's maximum, with
    the index of a NaN in that window (a diverged model's map can hold them).

    Args:
        x: (N, C, H, W) float tensor.
        output_size: m, the square output grid.

    Returns:
        maxima (N, C, m, m) with ``x``'s dtype, and flat indices into ``H * W`` (N, C, m, m) int64.
    """
    height, width = x.shape[-2:]
    # (N, C, H, m): per input row and column window, the maximum and the first column holding it.
    row_maxima, row_argmax = _max_and_first_position(x, adaptive_window_positions(width, output_size, x.device))
    # (N, C, m, m): per column window and row window, the maximum over the rows and the first row holding it.
    row_positions = adaptive_window_positions(height, output_size, x.device)
    maxima, best_row = _max_and_first_position(row_maxima.transpose(-1, -2), row_positions)
    maxima, best_row = maxima.transpose(-1, -2), best_row.transpose(-1, -2)
    best_column = row_argmax.gather(-2, best_row)
    # contiguous, as torch's op returns them (later flattening then needs no stride checks)
    return maxima.contiguous(), (best_row * width + best_column).contiguous()


def adaptive_window_weights(length: int, out_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Averaging matrix of adaptive pooling along one axis: (out_size, length), row ``i`` is ``1 / len_i``
    on the positions of window ``i`` (see :func:`adaptive_window_positions`) and 0 elsewhere.

    Position ``p`` is in window ``i`` when ``(p + 1) * out_size > i * length`` and ``p * out_size <
    (i + 1) * length``, the integer form of ``floor(i * length / out_size) <= p < ceil((i + 1) * length /
    out_size)``.
    """
    window = torch.arange(out_size, device=device).unsqueeze(1)
    position = torch.arange(length, device=device).unsqueeze(0)
    inside = ((position + 1) * out_size > window * length) & (position * out_size < (window + 1) * length)
    inside = inside.to(dtype)
    return inside / inside.sum(dim=1, keepdim=True)


def adaptive_avg_pool2d(x: torch.Tensor, output_size: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, output_size)``, in a form that exports to ONNX with symbolic H and W.

    Eager mode runs torch's op. While exporting (``torch.compiler.is_exporting()``) the means are
    ``A_h @ x @ A_w^T`` with the averaging matrices of :func:`adaptive_window_weights`; their float32
    rounding differs from torch's running sum by a few ulps.

    Shapes: (N, C, H, W) -> (N, C, m, m), m = ``output_size``.
    """
    if not torch.compiler.is_exporting():
        return F.adaptive_avg_pool2d(x, output_size)
    height, width = x.shape[-2:]
    row_weights = adaptive_window_weights(height, output_size, x.dtype, x.device)
    column_weights = adaptive_window_weights(width, output_size, x.dtype, x.device)
    return row_weights @ (x @ column_weights.transpose(0, 1))


class AdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d(output_size)`` for a square grid, exportable (see :func:`adaptive_avg_pool2d`).

    Shapes: (N, C, H, W) -> (N, C, m, m), m = ``output_size``.
    """

    def __init__(self, output_size: int):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"

"""Point-flow module: flows semantics from a coarse feature map into a fine one at selected points.

A point matcher scores every coarse cell; two point sets are chosen on the coarse grid -- *edge points*
(top-k of a small edge head) and *salient points* (adaptive max-pooling of the matching map) -- their
fine features attend over the coarse features of the same set, and the results are written back into
the fine map. Everything else of the fine map passes through unchanged.

This follows the original ``PointFlowModuleWithMaxAvgpool`` step for step, including behaviour that
released checkpoints depend on (see :func:`coarse_to_fine_index` and :meth:`PointFlowModule.forward`).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from network.adaptive_pool import adaptive_avg_pool2d, adaptive_max_pool2d_with_indices


class PointMatcher(nn.Module):
    """Matching ("certainty") map between a coarse and a fine embedding, on the coarse grid.

    The fine embedding is resized bilinearly (align_corners=True) to the coarse size, concatenated
    after the coarse one, and a 3x3 convolution with sigmoid gives one score per coarse cell.

    Shapes: coarse (N, D, h, w), fine (N, D, H, W) -> (N, 1, h, w), values in (0, 1).
    """

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        # Padding stays 1 whatever the kernel size, as in the original.
        self.match_conv = nn.Conv2d(2 * dim, 1, kernel_size, padding=1)

    def forward(self, coarse_embed: torch.Tensor, fine_embed: torch.Tensor) -> torch.Tensor:
        fine_resized = F.interpolate(fine_embed, size=coarse_embed.shape[2:], mode="bilinear", align_corners=True)
        return exportable_sigmoid(self.match_conv(torch.cat([coarse_embed, fine_resized], dim=1)))


def exportable_sigmoid(logits: torch.Tensor) -> torch.Tensor:
    """``torch.sigmoid`` in eager mode; while exporting, ``1 / (1 + exp(-x))`` spelled out in float32.

    The salient points are the arg-max cells of this map, so every value counts, the tiny ones too: a trained
    matcher gives certainties down to 1e-37. onnxruntime's ``Sigmoid`` returns exactly 0 below about 1e-8,
    which turns a window of distinct tiny values into a tie that goes to its first cell, and moves the point.
    Spelled out, the exponential keeps float32's whole range (the result is 0 only where torch's is, below
    x = -88.7), and the float32 rounding of ``1 + exp(-x)`` gives the ties torch's float32 result has (every
    x above 16.6 gives exactly 1.0). The values agree with torch's to a few ulp, so only windows whose two
    largest values are that close could choose differently (tests/test_cross_backend.py measures it on
    trained models). A float16 graph evaluates it in float32 too and rounds the result once.

    Shapes: any -> the same shape and dtype.
    """
    if not torch.compiler.is_exporting():
        return torch.sigmoid(logits)
    return torch.reciprocal(1.0 + torch.exp(-logits.float())).to(logits.dtype)


def column_and_row(flat_index: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(i % width, i // width)`` of flat indices into a grid ``width`` cells wide: (N, P) -> two (N, P).

    The width is made a tensor first: the ONNX exporter cannot take the remainder by a symbolic Python int.
    """
    width = torch.full((), width, dtype=flat_index.dtype, device=flat_index.device)
    return flat_index % width, torch.div(flat_index, width, rounding_mode="floor")


def coarse_to_fine_index(coarse_index: torch.Tensor, coarse_width: int, ratio: float | torch.Tensor,
                         fine_width: int) -> torch.Tensor:
    """Map flat indices on the coarse grid to flat indices on the fine grid, as the original does.

    ``long(x * ratio + y * ratio * fine_width)`` with ``x = i % w``, ``y = i // w`` and ``ratio = H / h``
    (heights only). The sum is formed in float32 and truncated once. For an integer ratio this is the
    top-left fine pixel of the cell; for a non-integer ratio the row term is not a multiple of the
    fine width and points land elsewhere. Released checkpoints were trained with exactly this mapping,
    so it is kept for parity.
    """
    column, row = column_and_row(coarse_index, coarse_width)
    return (column.float() * ratio + row.float() * ratio * fine_width).long()


def cell_centre_grid(coarse_index: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``grid_sample`` coordinates in [-1, 1] of the centres of coarse cells.

    Shapes: (N, P) flat indices -> (N, P, 1, 2) (x, y) grid.
    """
    # The steps are float32 tensors rather than Python floats so that export keeps the sizes symbolic; the
    # values are the same (1 / n rounded once to float32, as a Python scalar is when it meets a float32 tensor).
    step_x = 1.0 / torch.full((), width, dtype=torch.float32, device=coarse_index.device)
    step_y = 1.0 / torch.full((), height, dtype=torch.float32, device=coarse_index.device)
    column, row = column_and_row(coarse_index, width)
    x = step_x / 2.0 + column.float() * step_x
    y = step_y / 2.0 + row.float() * step_y
    return (2.0 * torch.stack([x, y], dim=-1) - 1.0).unsqueeze(2)


def flow_points(coarse_points: torch.Tensor, fine_points: torch.Tensor) -> torch.Tensor:
    """Point-wise affinity: each fine point attends over the coarse points of its set.

    ``out[:, :, j] = sum_i softmax_i(<coarse_i, fine_j>) * coarse_i + fine_j``.

    Shapes: coarse_points (N, C, P), fine_points (N, C, P) -> (N, C, P).
    """
    affinity = torch.softmax(torch.bmm(fine_points.transpose(1, 2), coarse_points), dim=-1)
    flowed = torch.bmm(coarse_points, affinity.transpose(1, 2))
    return flowed + fine_points


class PointFlowModule(nn.Module):
    """PFNet's point-flow fusion of a coarse map into a fine map (the original ``PointFlowModuleWithMaxAvgpool``).

    Args:
        in_channels: C of both feature maps.
        dim: channels of the matching embeddings (``down_h``, ``down_l``).
        maxpool_size: salient points are the argmax of each cell of an adaptive max-pool to
            ``maxpool_size`` x ``maxpool_size`` of the matching map.
        avgpool_size: grid of the adaptive average-pooled matching map that suppresses the
            coarse features fed to the edge head.
        edge_points: number of edge points (top-k edge logits), at most h * w.
        norm_layer: normalisation factory of the edge head.

    Shapes: coarse (N, C, h, w), fine (N, C, H, W) -> (fine-sized output (N, C, H, W),
    edge logits (N, 1, h, w)).
    """

    def __init__(self, in_channels: int, dim: int = 64, maxpool_size: int = 8, avgpool_size: int = 8,
                 edge_points: int = 64, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.maxpool_size = maxpool_size
        self.avgpool_size = avgpool_size
        self.edge_points = edge_points
        self.point_matcher = PointMatcher(dim)
        self.down_h = nn.Conv2d(in_channels, dim, kernel_size=1)
        self.down_l = nn.Conv2d(in_channels, dim, kernel_size=1)
        self.edge_final = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1, bias=False),
            norm_layer(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, 1, kernel_size=3, padding=1, bias=False),
        )

    def select_edge_points(self, edge_logits: torch.Tensor) -> torch.Tensor:
        """Flat coarse indices of the ``min(h * w, edge_points)`` largest edge logits: (N, 1, h, w) -> (N, P)."""
        flat = edge_logits.flatten(1)
        return flat.topk(min(flat.shape[1], self.edge_points), dim=1).indices

    def select_salient_points(self, certainty: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adaptive max-pool of the matching map: (N, 1, h, w) -> values and flat coarse indices, both (N, 1, m, m).

        Equal to ``F.adaptive_max_pool2d(certainty, maxpool_size, return_indices=True)``, ties included, in a
        form that exports to ONNX (see :mod:`network.adaptive_pool`).
        """
        return adaptive_max_pool2d_with_indices(certainty, self.maxpool_size)

    def forward(self, coarse_feats: torch.Tensor, fine_feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, channels, fine_height, fine_width = fine_feats.shape
        coarse_height, coarse_width = coarse_feats.shape[2:]
        # H / h as a float32 tensor rather than a Python float, so that export keeps the sizes symbolic; the value
        # is the same (the quotient rounded once to float32, as the Python float is when it meets float32 tensors).
        ratio = torch.full((), fine_height, dtype=torch.float32, device=fine_feats.device) / coarse_height

        certainty = self.point_matcher(self.down_h(coarse_feats), self.down_l(fine_feats))
        mean_certainty = F.interpolate(adaptive_avg_pool2d(certainty, self.avgpool_size),
                                       size=(coarse_height, coarse_width), mode="bilinear", align_corners=True)
        edge_logits = self.edge_final(coarse_feats - coarse_feats * mean_certainty)

        # Edge points: both maps are sampled at the coarse cell centres (grid_sample, align_corners=False,
        # so the fine value is the mean of the cell's fine pixels), but the result is written to the
        # cell's top-left fine pixel. Kept for parity with released checkpoints.
        edge_index = self.select_edge_points(edge_logits)
        grid = cell_centre_grid(edge_index, coarse_height, coarse_width).to(coarse_feats.dtype)
        edge_coarse = F.grid_sample(coarse_feats, grid, align_corners=False).squeeze(3)
        edge_fine = F.grid_sample(fine_feats, grid.to(fine_feats.dtype), align_corners=False).squeeze(3)
        edge_fused = flow_points(edge_coarse, edge_fine)
        edge_fine_index = coarse_to_fine_index(edge_index, coarse_width, ratio, fine_width)

        # Salient points: the coarse map is boosted by the upsampled max-pool grid before gathering;
        # fine features are read at the top-left pixel of each cell.
        max_certainty, salient_index = self.select_salient_points(certainty)
        boost = F.interpolate(max_certainty, size=(coarse_height, coarse_width), mode="bilinear", align_corners=True)
        boosted_coarse = coarse_feats + boost * coarse_feats
        salient_index = salient_index.flatten(1)
        salient_fine_index = coarse_to_fine_index(salient_index, coarse_width, ratio, fine_width)
        salient_coarse = boosted_coarse.flatten(2).gather(2, salient_index.unsqueeze(1).expand(-1, channels, -1))
        salient_fine = fine_feats.flatten(2).gather(2, salient_fine_index.unsqueeze(1).expand(-1, channels, -1))
        salient_fused = flow_points(salient_coarse, salient_fine)

        # Scatter edge points first, then salient points (salient wins on collisions), as the original.
        # Sources are cast to the map's dtype so the module also runs under autocast. Both scatters write
        # in place into one copy of the fine map, which keeps its memory layout (an out-of-place scatter
        # would turn a channels_last map into a contiguous one, a slow transposing copy).
        out = fine_feats.flatten(2).clone()
        out.scatter_(2, edge_fine_index.unsqueeze(1).expand(-1, channels, -1), edge_fused.to(out.dtype))
        out.scatter_(2, salient_fine_index.unsqueeze(1).expand(-1, channels, -1), salient_fused.to(out.dtype))
        return out.view(batch, channels, fine_height, fine_width), edge_logits

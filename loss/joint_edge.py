"""PFNet's joint loss: segmentation loss plus class-balanced BCE on every point-flow edge map."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def class_balanced_bce(edge_logits: torch.Tensor, edge_target: torch.Tensor) -> torch.Tensor:
    """Class-balanced binary cross-entropy of edge logits against a boundary map.

    With P boundary pixels (target 1) and Q non-boundary pixels (target 0) counted over the whole
    batch, boundary pixels are weighted Q / (P + Q) and non-boundary pixels P / (P + Q); pixels with a
    target above 1 (ignored) get weight 0. The result is the weighted BCE-with-logits averaged over
    all N*H*W pixels, ignored ones included, as the original's ``bce2d`` computes it. A target without
    any 0/1 pixel gives 0 (the original divides by zero there).

    Args:
        edge_logits: (N, 1, H, W) edge scores (before the sigmoid).
        edge_target: (N, 1, H, W) or (N, H, W) boundary map, values in {0, 1} (> 1 ignored).

    Returns:
        Scalar tensor.
    """
    logits = edge_logits.float()
    target = edge_target.reshape(logits.shape).to(device=logits.device, dtype=torch.float32)
    is_edge = target == 1
    is_background = target == 0
    num_edge = is_edge.sum()
    num_counted = num_edge + is_background.sum()
    if int(num_counted) == 0:
        return logits.sum() * 0.0
    weight = torch.zeros_like(target)
    weight = torch.where(is_edge, (num_counted - num_edge) / num_counted, weight)
    weight = torch.where(is_background, num_edge / num_counted, weight)
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="mean")


class JointEdgeSegLoss(nn.Module):
    """Segmentation loss plus ``edge_weight`` times :func:`class_balanced_bce` for each edge map.

    The original's ``JointEdgeSegLightLossPfnet`` (``--joint_edge_loss_pfnet``; shipped with OHEM and
    ``--edge_weight 25``). Every edge map is compared with the same full-resolution boundary target.

    Args:
        seg_loss: criterion ``(logits (N,K,H,W), mask (N,H,W)) -> scalar`` (OHEM or plain CE).
        edge_weight: multiplier of each edge term.
        seg_weight: multiplier of the segmentation term.
    """

    def __init__(self, seg_loss: nn.Module, edge_weight: float = 1.0, seg_weight: float = 1.0):
        super().__init__()
        self.seg_loss = seg_loss
        self.edge_weight = edge_weight
        self.seg_weight = seg_weight

    def forward(
        self,
        outputs: tuple[torch.Tensor, Sequence[torch.Tensor]],
        mask: torch.Tensor,
        edge: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms of one batch.

        Args:
            outputs: the model's train-mode output ``(logits (N,K,H,W), [edge_logits (N,1,H,W)] * L)``,
                edge maps coarsest first.
            mask: (N, H, W) int64 class ids (255 ignored).
            edge: (N, 1, H, W) boundary target.

        Returns:
            ``{"seg_loss": ..., "edge_loss_layer{L}": ..., ..., "edge_loss_layer1": ...}``: the coarsest
            edge map is ``layer{L}`` (``layer3`` for PFNet), as the original names them. Their sum is the
            training loss.
        """
        if edge is None:
            raise ValueError("the joint edge loss needs the boundary target: build the dataset with with_edge=True")
        logits, edge_logits = outputs
        losses = {"seg_loss": self.seg_weight * self.seg_loss(logits.float(), mask)}
        for level, level_logits in enumerate(edge_logits):
            name = f"edge_loss_layer{len(edge_logits) - level}"
            losses[name] = self.edge_weight * class_balanced_bce(level_logits, edge)
        return losses


class SegOnlyLoss(nn.Module):
    """Adapts a plain segmentation criterion to the training loop's interface (a dict of terms).

    Args:
        seg_loss: criterion ``(logits (N,K,H,W), mask (N,H,W)) -> scalar``.
    """

    def __init__(self, seg_loss: nn.Module):
        super().__init__()
        self.seg_loss = seg_loss

    def forward(
        self,
        outputs: torch.Tensor | tuple[torch.Tensor, Sequence[torch.Tensor]],
        mask: torch.Tensor,
        edge: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"seg_loss": scalar}``; ``outputs`` is the logits or the train-mode ``(logits, edges)`` pair."""
        logits = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        return {"seg_loss": self.seg_loss(logits.float(), mask)}

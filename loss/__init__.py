"""Training criteria: OHEM cross-entropy, PFNet's joint edge loss and plain cross-entropy.

Every training criterion is called as ``criterion(outputs, mask, edge)`` and returns a dict of named
loss terms whose sum is the loss to minimise (see :class:`JointEdgeSegLoss`).
"""
from __future__ import annotations

from torch import nn

from loss.joint_edge import JointEdgeSegLoss, SegOnlyLoss, class_balanced_bce
from loss.ohem import OhemCrossEntropy

__all__ = ["JointEdgeSegLoss", "OhemCrossEntropy", "SegOnlyLoss", "class_balanced_bce", "get_loss"]


def get_loss(
    *,
    joint_edge_loss_pfnet: bool,
    ohem: bool,
    edge_weight: float = 1.0,
    seg_weight: float = 1.0,
    ignore_index: int = 255,
) -> tuple[nn.Module, nn.Module]:
    """Pick the training and validation criteria the way the original's flags do.

    ``--joint_edge_loss_pfnet`` -> :class:`JointEdgeSegLoss` around OHEM (``--ohem``) or plain CE;
    otherwise OHEM (``--ohem``) or plain CE on the logits alone. (The original's ``--aux`` only acts
    without the joint loss and needs an auxiliary head, which PFNet does not have.)

    Returns:
        ``(train_criterion, val_criterion)``: the first maps ``(outputs, mask, edge)`` to a dict of terms;
        the second is plain cross-entropy ``(logits, mask) -> scalar`` with ``reduction="sum"`` (the
        caller divides by the number of labelled pixels).
    """
    if ohem:
        seg_loss: nn.Module = OhemCrossEntropy(ignore_index=ignore_index)
    else:
        seg_loss = nn.CrossEntropyLoss(ignore_index=ignore_index)
    if joint_edge_loss_pfnet:
        train_criterion: nn.Module = JointEdgeSegLoss(seg_loss, edge_weight=edge_weight, seg_weight=seg_weight)
    else:
        train_criterion = SegOnlyLoss(seg_loss)
    val_criterion = nn.CrossEntropyLoss(ignore_index=ignore_index, reduction="sum")
    return train_criterion, val_criterion

"""Online hard example mining (OHEM) cross-entropy, as PFNet's training recipe uses it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class OhemCrossEntropy(nn.Module):
    """Cross-entropy averaged over the hard pixels only.

    A pixel is hard when the softmax probability of its true class is at most a threshold
    ``tau = max(thresh, q_k)``, where ``q_k`` is the ``min_kept``-th smallest true-class probability in
    the batch (ignored pixels count as probability 1, so they sort last). At least ``min_kept`` pixels
    are therefore kept, and all pixels below ``thresh``. When fewer than ``min_kept`` pixels are
    labelled, every labelled pixel is used. The loss is the mean cross-entropy over the kept pixels.

    Same rule as the original's ``OhemCrossEntropy2dTensor`` (thresh 0.7, min_kept 10000). One
    difference: a batch with no labelled pixel gives a zero loss (still connected to the graph) instead
    of NaN.

    Args:
        ignore_index: label of pixels that never count (255).
        thresh: probability threshold.
        min_kept: minimum number of pixels kept per batch (per process under DDP, as in the original).
    """

    def __init__(self, ignore_index: int = 255, thresh: float = 0.7, min_kept: int = 10000):
        super().__init__()
        self.ignore_index = ignore_index
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)

    def hard_pixel_mask(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Boolean (N, H, W) mask of the pixels the loss keeps.

        Args:
            logits: (N, K, H, W) class scores.
            target: (N, H, W) int64 class ids, ``ignore_index`` where unlabelled.
        """
        labelled = target != self.ignore_index
        num_labelled = int(labelled.sum())
        if self.min_kept > num_labelled or num_labelled == 0:
            return labelled
        probs = F.softmax(logits.detach().float(), dim=1)
        safe_target = torch.where(labelled, target, torch.zeros_like(target))
        true_class_prob = probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)
        true_class_prob = true_class_prob.masked_fill(~labelled, 1.0)
        threshold = self.thresh
        if self.min_kept > 0:
            kth_smallest = true_class_prob.flatten().kthvalue(min(true_class_prob.numel(), self.min_kept)).values
            threshold = max(threshold, float(kth_smallest))
        return labelled & (true_class_prob <= threshold)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss from (N, K, H, W) logits and an (N, H, W) int64 target."""
        kept = self.hard_pixel_mask(logits, target)
        if not bool(kept.any()):
            return logits.sum() * 0.0
        mined_target = target.masked_fill(~kept, self.ignore_index)
        return F.cross_entropy(logits.float(), mined_target, ignore_index=self.ignore_index)

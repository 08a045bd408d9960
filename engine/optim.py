"""SGD and the original's per-epoch polynomial LR schedules (``poly`` and ``scl-poly``).

The schedule is a ``LambdaLR`` stepped once per epoch, at the top of the epoch, before training, as
the original's train.py does: ``LambdaLR`` applies factor(0) at construction, so epoch ``e`` (0-based)
trains at ``base_lr * factor(e + 1)`` and the last epoch at factor(max_epoch) = 0. See
:func:`lr_of_epoch` and :func:`zero_lr_epochs`.

The factor is a function of the current ``--max_epoch`` only: a resumed run's scheduler restores its
step count but never the factor of the run it came from (:class:`EpochLR`), so a run continued with a
larger ``--max_epoch`` follows the schedule of the new length. Factors lie in [0, 1]; asking for one
past the schedule's end raises instead of extrapolating to negative (or complex) rates.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


def build_sgd(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4) -> torch.optim.SGD:
    """SGD over all parameters in one group (weight decay on BN and biases too), no Nesterov."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=False)


def _check_in_schedule(epoch: int, max_epoch: int) -> None:
    if not 0 <= epoch <= max_epoch:
        raise ValueError(f"LR schedule asked for step {epoch}, outside its length 0..{max_epoch} (--max_epoch)")


@dataclass(frozen=True)
class PolyFactor:
    """``(1 - epoch / max_epoch) ** poly_exp``: the ``poly`` schedule's LR factor."""

    max_epoch: int
    poly_exp: float

    def __call__(self, epoch: int) -> float:
        """The factor at ``epoch`` (the scheduler's step count): 1 at 0, 0 at ``max_epoch``."""
        _check_in_schedule(epoch, self.max_epoch)
        return (1.0 - epoch / self.max_epoch) ** self.poly_exp


@dataclass(frozen=True)
class RescaledPolyFactor:
    """The ``scl-poly`` factor: ``poly`` before ``rescale_epoch``, then a restarted poly.

    ``(1 - e / max_epoch) ** poly_exp`` for ``e < rescale_epoch``, else
    ``rescale * (1 - (e - rescale_epoch) / (max_epoch - rescale_epoch)) ** repoly``.
    """

    max_epoch: int
    poly_exp: float
    rescale_epoch: int
    rescale: float
    repoly: float

    def __call__(self, epoch: int) -> float:
        """The factor at ``epoch`` (the scheduler's step count), by the formula in the class docstring."""
        _check_in_schedule(epoch, self.max_epoch)
        if epoch < self.rescale_epoch:
            return (1.0 - epoch / self.max_epoch) ** self.poly_exp
        remaining = 1.0 - (epoch - self.rescale_epoch) / (self.max_epoch - self.rescale_epoch)
        return self.rescale * remaining**self.repoly


def lr_factor(
    schedule: str,
    *,
    max_epoch: int,
    poly_exp: float,
    rescale_epoch: int = -1,
    rescale: float = 1.0,
    repoly: float = 1.5,
) -> PolyFactor | RescaledPolyFactor:
    """The factor function of ``--lr_schedule`` (``poly`` or ``scl-poly``).

    ``rescale_epoch`` is the original's ``--rlx_off_epoch``: ``scl-poly`` needs it (>= 0), and
    ``--rescale`` / ``--repoly`` act only there.

    Raises:
        ValueError: unknown schedule, or ``scl-poly`` without a rescale epoch inside [0, max_epoch).
    """
    if schedule == "poly":
        return PolyFactor(max_epoch, poly_exp)
    if max_epoch < 1:
        raise ValueError(f"--max_epoch must be at least 1, got {max_epoch}")
    if schedule == "scl-poly":
        if not 0.0 < rescale <= 1.0:
            raise ValueError(f"--rescale is the LR factor at the scl-poly restart and must be in (0, 1], got {rescale}")
        if not 0 <= rescale_epoch < max_epoch:
            raise ValueError(
                f"--lr_schedule scl-poly restarts the poly at --rlx_off_epoch, which must be in [0, {max_epoch}); "
                f"got {rescale_epoch}"
            )
        return RescaledPolyFactor(max_epoch, poly_exp, rescale_epoch, rescale, repoly)
    raise ValueError(f"unknown --lr_schedule {schedule!r}; choose poly or scl-poly")


class EpochLR(LambdaLR):
    """``LambdaLR`` whose saved state carries the step count and rates but never replaces the factor.

    ``LambdaLR.load_state_dict`` copies the saved factor object's attributes (here ``max_epoch``) into the
    current one, so a run resumed with another ``--max_epoch`` would continue on the old schedule past its
    end. The saved state keeps the factor's fields, for reading only.
    """

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the step count and rates; keep this scheduler's own factor."""
        super().load_state_dict({**state_dict, "lr_lambdas": [None] * len(self.lr_lambdas)})


def build_scheduler(optimizer: torch.optim.Optimizer, factor: PolyFactor | RescaledPolyFactor) -> EpochLR:
    """:class:`EpochLR` with ``factor``; call ``.step()`` at the top of every epoch (see the module docstring)."""
    return EpochLR(optimizer, lr_lambda=factor)


def lr_of_epoch(base_lr: float, factor: PolyFactor | RescaledPolyFactor, epoch: int) -> float:
    """LR that epoch ``epoch`` (0-based) trains at under the step-at-the-top-of-the-epoch convention."""
    return base_lr * factor(epoch + 1)


def zero_lr_epochs(factor: PolyFactor | RescaledPolyFactor, first_epoch: int) -> list[int]:
    """The epochs from ``first_epoch`` to the end that train at LR 0 (for ``poly``: the last one)."""
    return [epoch for epoch in range(first_epoch, factor.max_epoch) if factor(epoch + 1) == 0.0]

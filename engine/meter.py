"""Running means of named scalar terms (losses), averaged over all processes with one all-reduce."""
from __future__ import annotations

import math

import torch

from engine.distributed import all_reduce_sum


class ScalarMeter:
    """Weighted running sums of named scalar terms: ``update`` adds, :meth:`means` gives sum / weight per name,
    summed over all processes (one all-reduce of float64 values; no-op in a world of one).

    Training logs the terms of each step through a fresh meter (weight 1 per process: the mean over processes);
    validation adds each batch's summed cross-entropy with its labelled-pixel count as the weight (the loss per
    labelled pixel over all processes).
    """

    def __init__(self, device: torch.device | str = "cpu", names: tuple[str, ...] = ()):
        """``names``: terms known from the start (at weight 0), so that a process without batches (a validation
        shard left empty) still joins :meth:`means` with the same terms as the others."""
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.weights: dict[str, torch.Tensor] = {}
        self.update(dict.fromkeys(names, 0.0), weight=0.0)

    def update(self, terms: dict[str, torch.Tensor | float], weight: torch.Tensor | float = 1.0) -> None:
        """Add each scalar of ``terms`` (0-d tensors or floats, any device) with ``weight``."""
        weight_value = torch.as_tensor(weight, device=self.device).double().reshape(())
        for name, value in terms.items():
            value = torch.as_tensor(value, device=self.device).detach().double().reshape(())
            self.sums[name] = self.sums.get(name, 0) + value
            self.weights[name] = self.weights.get(name, 0) + weight_value

    def means(self) -> dict[str, float]:
        """``{name: sum over processes / weight over processes}`` as Python floats (nan where the weight is 0).

        Every process must call it, with the same names in the same order (it is a collective).
        """
        if not self.sums:
            return {}
        stacked = torch.stack([*self.sums.values(), *self.weights.values()])
        all_reduce_sum(stacked)
        values = stacked.tolist()
        sums, weights = values[:len(self.sums)], values[len(self.sums):]
        return {name: total / weight if weight > 0 else math.nan
                for name, total, weight in zip(self.sums, sums, weights)}

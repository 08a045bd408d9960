"""Class names and palettes of the benchmark datasets, looked up by dataset name."""
from __future__ import annotations

import numpy as np


def dataset_table(name: str) -> tuple[list[str], np.ndarray]:
    """(class names, (K, 3) uint8 RGB palette) of ``iSAID``, ``Posdam``/``potsdam`` or ``Vaihingen``."""
    raise NotImplementedError("wired to datasets once the data branch lands")

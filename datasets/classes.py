"""The label id every dataset leaves out of training and evaluation (a plain constant, no torch).

The class names and colours of each benchmark are declared on its dataset class (``datasets/isaid.py``,
``datasets/isprs.py``, ``datasets/loveda.py``).
"""

from typing import Final

IGNORE_LABEL: Final[int] = 255
"""Label id of pixels that are neither trained nor evaluated (padding, unknown colours, eroded borders)."""

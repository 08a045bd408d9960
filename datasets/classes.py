"""Class tables of the three benchmarks: names, label ids and colours.

This module holds plain constants only (no torch), so the preparation tools in ``tools/`` can share
them with the dataset classes.  Label id ``k`` is row ``k`` of each table.  Colours are RGB, as they
appear in the official colour-coded ground truth.
"""

from typing import Final

IGNORE_LABEL: Final[int] = 255
"""Label id of pixels that are neither trained nor evaluated (padding, unknown colours, eroded borders)."""

ISAID_CLASS_NAMES: Final[tuple[str, ...]] = (
    "background",
    "ship",
    "store_tank",
    "baseball_diamond",
    "tennis_court",
    "basketball_court",
    "Ground_Track_Field",
    "Bridge",
    "Large_Vehicle",
    "Small_Vehicle",
    "Helicopter",
    "Swimming_pool",
    "Roundabout",
    "Soccer_ball_field",
    "plane",
    "Harbor",
)
"""iSAID class names in label-id order, spelled as in the original code (id 0 is background)."""

ISAID_PALETTE: Final[tuple[tuple[int, int, int], ...]] = (
    (0, 0, 0),
    (0, 0, 63),
    (0, 63, 63),
    (0, 63, 0),
    (0, 63, 127),
    (0, 63, 191),
    (0, 63, 255),
    (0, 127, 63),
    (0, 127, 127),
    (0, 0, 127),
    (0, 0, 191),
    (0, 0, 255),
    (0, 191, 127),
    (0, 127, 191),
    (0, 127, 255),
    (0, 100, 155),
)
"""RGB colour of each iSAID class in the official ``*_instance_color_RGB.png`` masks."""

ISPRS_CLASS_NAMES: Final[tuple[str, ...]] = (
    "impervious_surfaces",
    "building",
    "low_vegetation",
    "tree",
    "car",
    "clutter",
)
"""ISPRS Potsdam / Vaihingen class names in label-id order (clutter is a normal, evaluated class)."""

ISPRS_PALETTE: Final[tuple[tuple[int, int, int], ...]] = (
    (255, 255, 255),
    (0, 0, 255),
    (0, 255, 255),
    (0, 255, 0),
    (255, 255, 0),
    (255, 0, 0),
)
"""RGB colour of each ISPRS class in the official ``*_label.tif`` ground truth."""

ISPRS_ERODED_BORDER_COLOR: Final[tuple[int, int, int]] = (0, 0, 0)
"""RGB colour of the eroded class borders in the ISPRS ``*_noBoundary`` ground truth (not a class)."""

ISAID_MASK_SUFFIX: Final[str] = "_instance_color_RGB"
"""Mask file stem suffix of iSAID: ``P0000_instance_color_RGB.png`` is the mask of ``P0000.png``.

The prepared masks keep the original's name although they hold label ids, not colours.
"""

ISPRS_MASK_SUFFIX: Final[str] = "_gray_mask"
"""Mask file stem suffix of Potsdam / Vaihingen: ``X_gray_mask.png`` holds the label ids of ``X.png``."""

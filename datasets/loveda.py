"""LoveDA land-cover segmentation (images prepared by ``tools/prepare_dataset.py loveda``)."""

from typing import ClassVar

import numpy as np

from datasets.base import SegmentationFolder


class LoveDADataset(SegmentationFolder):
    """LoveDA: land-cover domain-adaptive semantic segmentation, 7 classes, urban and rural scenes.

    Wang et al., "LoveDA: A Remote Sensing Land-Cover Dataset for Domain Adaptive Semantic
    Segmentation", NeurIPS 2021 datasets track, https://github.com/Junjue-Wang/LoveDA.  5987 images of
    1024 x 1024 px at 0.3 m from Nanjing, Changzhou and Wuhan: 2522 train, 1669 val, 1796 test (test
    labels are held by the evaluation server).

    Classes (label id: name, RGB colour of the official colour maps): 0 background (255,255,255),
    1 building (255,0,0), 2 road (255,255,0), 3 water (0,0,255), 4 barren (159,129,183),
    5 forest (0,255,0), 6 agriculture (255,195,128).  The raw masks hold 0 for no-data and 1..7 for
    the classes; the preparation writes no-data as 255 (ignored) and class k as k - 1, as
    mmsegmentation's ``reduce_zero_label``.

    On disk (after ``tools/prepare_dataset.py loveda``: whole 1024 x 1024 images unless
    ``--patch-size`` is given; the file names carry the domain)::

        {root}/{train,val}/images/urban_1366.png, rural_0.png
        {root}/{train,val}/masks/urban_1366_gray_mask.png

    Training validates on ``val``.
    """

    name: ClassVar[str] = "LoveDA"
    aliases: ClassVar[tuple[str, ...]] = ("LoveDA",)
    root_key: ClassVar[str] = "LOVEDA_DIR"
    default_root: ClassVar[str] = "./data/LoveDA"
    splits: ClassVar[tuple[str, ...]] = ("train", "val")
    val_split: ClassVar[str] = "val"
    prepare_name: ClassVar[str] = "loveda"
    class_names: ClassVar[tuple[str, ...]] = (
        "background", "building", "road", "water", "barren", "forest", "agriculture",
    )
    palette: ClassVar[np.ndarray] = np.asarray([
        (255, 255, 255), (255, 0, 0), (255, 255, 0), (0, 0, 255), (159, 129, 183), (0, 255, 0), (255, 195, 128),
    ], np.uint8)
    raw_no_data: ClassVar[int] = 0
    """Value of the no-data pixels in the raw masks (written as 255 = ignore); class k is raw value k + 1."""
    mask_suffix: ClassVar[str] = "_gray_mask"
    # Whole images by default; ``--patch-size`` without ``--stride`` cuts windows side by side.
    patch_size: ClassVar[int | None] = None
    patch_stride: ClassVar[int | None] = None
    train_pipeline: ClassVar[str] = "isprs"

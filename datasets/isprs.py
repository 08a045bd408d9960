"""ISPRS Potsdam and Vaihingen (patches prepared by ``tools/prepare_dataset.py potsdam|vaihingen``)."""

from typing import ClassVar

import numpy as np

from datasets.base import SegmentationFolder


class _ISPRSDataset(SegmentationFolder):
    """Shared definition of the two ISPRS 2D semantic labelling benchmarks (6 classes, 255 = ignore)."""

    # Clutter is a normal, trained and evaluated class.
    class_names: ClassVar[tuple[str, ...]] = (
        "impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter",
    )
    # RGB colour of each class in the official ``*_label.tif`` ground truth.
    palette: ClassVar[np.ndarray] = np.asarray([
        (255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0),
    ], np.uint8)
    eroded_border_color: ClassVar[tuple[int, int, int]] = (0, 0, 0)
    """RGB colour of the eroded class borders in the ``*_noBoundary`` ground truth (not a class; becomes 255)."""
    # ``X_gray_mask.png`` holds the label ids of ``X.png``.
    mask_suffix: ClassVar[str] = "_gray_mask"
    # The original has no separate validation tiles: it validates on the official test tiles.
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    val_split: ClassVar[str] = "test"
    # Stride 512: the original does not state its stride.
    patch_stride: ClassVar[int] = 512
    train_pipeline: ClassVar[str] = "isprs"


class PotsdamDataset(_ISPRSDataset):
    """ISPRS Potsdam: 38 true orthophoto tiles of 6000 x 6000 px at 5 cm, RGB (IR and DSM unused).

    ISPRS 2D Semantic Labeling Contest, https://www.isprs.org/education/benchmarks/UrbanSemLab/.
    Classes (label id: name, RGB colour of the official labels): 0 impervious surfaces (255,255,255),
    1 building (0,0,255), 2 low vegetation (0,255,255), 3 tree (0,255,0), 4 car (255,255,0),
    5 clutter (255,0,0).  Clutter is trained and evaluated, as in the original code.

    On disk (after ``tools/prepare_dataset.py potsdam``: 896 x 896 patches, stride 512; 24 train and
    14 test tiles of the official split)::

        {root}/{train,test}/images/top_potsdam_2_10_RGB_0_896_0_896.png
        {root}/{train,test}/masks/top_potsdam_2_10_RGB_0_896_0_896_gray_mask.png

    The original validates on ``test`` (it has no separate validation tiles).  Registry names:
    ``"Posdam"`` (the original's spelling), ``"Potsdam"`` and ``"potsdam"``.
    """

    name: ClassVar[str] = "Potsdam"
    aliases: ClassVar[tuple[str, ...]] = ("Posdam", "Potsdam", "potsdam")
    root_key: ClassVar[str] = "POSDAM_DIR"
    default_root: ClassVar[str] = "./data/posdam896"
    prepare_name: ClassVar[str] = "potsdam"
    patch_size: ClassVar[int | None] = 896


class VaihingenDataset(_ISPRSDataset):
    """ISPRS Vaihingen: 33 true orthophoto tiles (~2000 x 2500 px, 9 cm) in IR-R-G false colour.

    ISPRS 2D Semantic Labeling Contest, https://www.isprs.org/education/benchmarks/UrbanSemLab/.
    Same six classes and colours as Potsdam.  The IR-R-G channels flow through the network as if
    they were RGB (as in the original, with the ImageNet normalisation).

    On disk (after ``tools/prepare_dataset.py vaihingen``: 768 x 768 patches, stride 512; 16 train and
    17 test tiles of the official split)::

        {root}/{train,test}/images/top_mosaic_09cm_area1_0_768_0_768.png
        {root}/{train,test}/masks/top_mosaic_09cm_area1_0_768_0_768_gray_mask.png
    """

    name: ClassVar[str] = "Vaihingen"
    aliases: ClassVar[tuple[str, ...]] = ("Vaihingen",)
    root_key: ClassVar[str] = "VAIHINGEN_DIR"
    default_root: ClassVar[str] = "./data/vaihingen768"
    prepare_name: ClassVar[str] = "vaihingen"
    patch_size: ClassVar[int | None] = 768

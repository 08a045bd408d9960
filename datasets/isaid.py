"""iSAID semantic segmentation (patches prepared by ``tools/prepare_dataset.py isaid``)."""

from typing import ClassVar

import numpy as np

from datasets.base import SegmentationFolder


class ISAIDDataset(SegmentationFolder):
    """iSAID: instance segmentation in aerial images, used here for 16-class semantic segmentation.

    Zamir et al., "iSAID: A Large-scale Dataset for Instance Segmentation in Aerial Images", CVPRW 2019,
    built on the DOTA images (Xia et al., CVPR 2018).  2806 large images (800 to ~13000 px per side),
    1411 train / 458 val / 937 test (test labels are not public).

    Classes (label id: name): 0 background, 1 ship, 2 store_tank, 3 baseball_diamond, 4 tennis_court,
    5 basketball_court, 6 Ground_Track_Field, 7 Bridge, 8 Large_Vehicle, 9 Small_Vehicle, 10 Helicopter,
    11 Swimming_pool, 12 Roundabout, 13 Soccer_ball_field, 14 plane, 15 Harbor.  Background is an
    ordinary trained and evaluated class, as in the original code.  255 = ignore.

    On disk (after ``tools/prepare_dataset.py isaid``: 896 x 896 patches, stride 512)::

        {root}/{train,val}/images/P0000_0_896_0_896.png
        {root}/{train,val}/masks/P0000_0_896_0_896_instance_color_RGB.png   (label ids, 8-bit gray)

    The mask files keep the original's ``_instance_color_RGB`` name although they hold label ids.
    The original trains on ``train`` and validates on ``val`` patches.
    """

    name: ClassVar[str] = "iSAID"
    aliases: ClassVar[tuple[str, ...]] = ("iSAID",)
    root_key: ClassVar[str] = "ISAID_DIR"
    default_root: ClassVar[str] = "./data/iSAID"
    splits: ClassVar[tuple[str, ...]] = ("train", "val")
    val_split: ClassVar[str] = "val"
    prepare_name: ClassVar[str] = "isaid"
    # Spelled as in the original code; id 0 is background.
    class_names: ClassVar[tuple[str, ...]] = (
        "background", "ship", "store_tank", "baseball_diamond", "tennis_court", "basketball_court",
        "Ground_Track_Field", "Bridge", "Large_Vehicle", "Small_Vehicle", "Helicopter", "Swimming_pool",
        "Roundabout", "Soccer_ball_field", "plane", "Harbor",
    )
    # RGB colour of each class in the official ``*_instance_color_RGB.png`` masks.
    palette: ClassVar[np.ndarray] = np.asarray([
        (0, 0, 0), (0, 0, 63), (0, 63, 63), (0, 63, 0), (0, 63, 127), (0, 63, 191), (0, 63, 255), (0, 127, 63),
        (0, 127, 127), (0, 0, 127), (0, 0, 191), (0, 0, 255), (0, 191, 127), (0, 127, 191), (0, 127, 255),
        (0, 100, 155),
    ], np.uint8)
    # ``P0000_instance_color_RGB.png`` is the mask of ``P0000.png`` (the original's name, kept for label ids).
    mask_suffix: ClassVar[str] = "_instance_color_RGB"
    # The paper's setting: 896 x 896 windows, stride 512 (lxtGH/PFSegNets issue #5).
    patch_size: ClassVar[int | None] = 896
    patch_stride: ClassVar[int] = 512
    train_pipeline: ClassVar[str] = "isaid"

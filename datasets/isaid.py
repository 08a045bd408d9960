"""iSAID semantic segmentation (patches prepared by ``tools/prepare_dataset.py isaid``)."""

from typing import ClassVar

import numpy as np

from datasets.base import SegmentationFolder
from datasets.classes import ISAID_CLASS_NAMES, ISAID_MASK_SUFFIX, ISAID_PALETTE


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
    prepare_name: ClassVar[str] = "isaid"
    num_classes: ClassVar[int] = 16
    class_names: ClassVar[tuple[str, ...]] = ISAID_CLASS_NAMES
    palette: ClassVar[np.ndarray] = np.asarray(ISAID_PALETTE, np.uint8)
    mask_suffix: ClassVar[str] = ISAID_MASK_SUFFIX

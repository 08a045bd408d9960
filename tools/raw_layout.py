"""Layout of the official downloads after unpacking, and the ISPRS train/test tile split.

iSAID (devkit layout)::

    {raw}/{train,val}/images/P0000.png                      image (DOTA)
    {raw}/{train,val}/images/P0000_instance_color_RGB.png   semantic colour mask (iSAID)
    {raw}/test/images/P0006.png                             test images, no masks

The semantic masks may instead sit in ``{raw}/{split}/Semantic_masks/images/`` as unpacked from the
iSAID download; both are accepted.

Potsdam (images of one of three products: ``--product RGB``, the default, ``RGBIR`` or ``IRRG``)::

    {raw}/2_Ortho_RGB/top_potsdam_2_10_RGB.tif          3 bands R, G, B
    {raw}/4_Ortho_RGBIR/top_potsdam_2_10_RGBIR.tif      4 bands R, G, B, IR (torchgeo's Potsdam loader uses these)
    {raw}/3_Ortho_IRRG/top_potsdam_2_10_IRRG.tif        3 bands IR, R, G
    {raw}/5_Labels_all/top_potsdam_2_10_label.tif
    {raw}/5_Labels_all_noBoundary/top_potsdam_2_10_label_noBoundary.tif

Vaihingen (IR-R-G images)::

    {raw}/ISPRS_semantic_labeling_Vaihingen/top/top_mosaic_09cm_area1.tif
    {raw}/ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE/top_mosaic_09cm_area1.tif
    {raw}/ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE/top_mosaic_09cm_area1_noBoundary.tif

LoveDA (the three zips unpacked side by side; zips left in {raw} are unpacked there by the preparation)::

    {raw}/Train/Urban/images_png/1366.png     image, 1024 x 1024 RGB
    {raw}/Train/Urban/masks_png/1366.png      label values: 0 = no-data, 1..7 = classes
    {raw}/Train/Rural/images_png/0.png, {raw}/Val/{Urban,Rural}/..., {raw}/Test/{Urban,Rural}/images_png/...

The original repository ships no tile lists (its issue #7 points to the paper's supplement); these are
the official ISPRS benchmark split, as also used by mmsegmentation's converters.  Potsdam tiles are
named by ``"{row}_{col}"`` (``top_potsdam_2_10_RGB.tif``), Vaihingen tiles by their area number
(``top_mosaic_09cm_area1.tif``).
"""

import re
from typing import Final

from datasets.isaid import ISAIDDataset

POTSDAM_TRAIN_TILES: Final[tuple[str, ...]] = (
    "2_10", "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12", "5_10", "5_11", "5_12",
    "6_7", "6_8", "6_9", "6_10", "6_11", "6_12", "7_7", "7_8", "7_9", "7_10", "7_11", "7_12",
)
POTSDAM_TEST_TILES: Final[tuple[str, ...]] = (
    "2_13", "2_14", "3_13", "3_14", "4_13", "4_14", "4_15", "5_13", "5_14", "5_15", "6_13", "6_14",
    "6_15", "7_13",
)
VAIHINGEN_TRAIN_TILES: Final[tuple[str, ...]] = (
    "1", "3", "5", "7", "11", "13", "15", "17", "21", "23", "26", "28", "30", "32", "34", "37",
)
VAIHINGEN_TEST_TILES: Final[tuple[str, ...]] = (
    "2", "4", "6", "8", "10", "12", "14", "16", "20", "22", "24", "27", "29", "31", "33", "35", "38",
)

POTSDAM_PRODUCTS: Final[dict[str, tuple[str, str]]] = {
    "RGB": ("2_Ortho_RGB", "RGB"),
    "RGBIR": ("4_Ortho_RGBIR", "RGBIR"),
    "IRRG": ("3_Ortho_IRRG", "IRRG"),
}
"""Potsdam image product -> (folder, file-name tag): ``top_potsdam_{tile}_{tag}.tif``."""
POTSDAM_IRRG_BANDS: Final[dict[str, tuple[int, int, int]]] = {"RGB": (1, 2, 3), "RGBIR": (4, 1, 2), "IRRG": (1, 2, 3)}
"""Bands of each Potsdam product giving the Vaihingen convention IR-R-G (none for the RGB product: it has no IR)."""

ISAID_MASK_FOLDERS: Final[tuple[str, ...]] = ("images", "Semantic_masks/images")
"""Folders under ``{raw}/{split}/`` searched, in order, for the iSAID colour masks."""
ISAID_EXCLUDED_IMAGES: Final[tuple[str, ...]] = ("P1527", "P1530")
"""iSAID images the original split tool skips."""
ISAID_COMPANION_SUFFIXES: Final[tuple[str, ...]] = (ISAIDDataset.mask_suffix, "_instance_id_RGB")
"""What may follow an iSAID image's stem in the names of the files beside it (semantic and instance masks)."""

ISPRS_FOLDERS: Final[dict[str, dict[str, str]]] = {
    "potsdam": {"image": "2_Ortho_RGB", "label": "5_Labels_all", "eroded": "5_Labels_all_noBoundary"},
    "vaihingen": {
        "image": "ISPRS_semantic_labeling_Vaihingen/top",
        "label": "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE",
        "eroded": "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE",
    },
}
"""Folders (relative to the raw root) holding the images, the full labels and the eroded labels."""

SPLIT_TILES: Final[dict[str, dict[str, tuple[str, ...]]]] = {
    "potsdam": {"train": POTSDAM_TRAIN_TILES, "test": POTSDAM_TEST_TILES},
    "vaihingen": {"train": VAIHINGEN_TRAIN_TILES, "test": VAIHINGEN_TEST_TILES},
}
"""Tile ids per split for each ISPRS dataset; ``test`` is also the validation split, as in the original."""

ISPRS_TILE_PATTERNS: Final[dict[str, dict[str, re.Pattern]]] = {
    "potsdam": {product: re.compile(rf"^top_potsdam_(\d+_\d+)_{tag}\.tif$")
                for product, (_, tag) in POTSDAM_PRODUCTS.items()},
    "vaihingen": {"RGB": re.compile(r"^top_mosaic_09cm_area(\d+)\.tif$")},
}
"""ISPRS dataset -> image product -> pattern of its image file names; group 1 is the tile id."""


def isprs_file_names(dataset: str, tile: str) -> dict[str, str]:
    """File names of one ISPRS tile, keyed like ``ISPRS_FOLDERS`` ("image", "label", "eroded").

    Example: ``isprs_file_names("potsdam", "2_10")["image"] == "top_potsdam_2_10_RGB.tif"``.  Vaihingen
    images and full labels share one file name and differ only by folder.
    """
    if dataset == "potsdam":
        stem = f"top_potsdam_{tile}"
        return {"image": f"{stem}_RGB.tif", "label": f"{stem}_label.tif",
                "eroded": f"{stem}_label_noBoundary.tif"}
    if dataset == "vaihingen":
        stem = f"top_mosaic_09cm_area{tile}"
        return {"image": f"{stem}.tif", "label": f"{stem}.tif", "eroded": f"{stem}_noBoundary.tif"}
    raise ValueError(f"unknown ISPRS dataset {dataset!r}; expected 'potsdam' or 'vaihingen'")


LOVEDA_SPLIT_FOLDERS: Final[dict[str, str]] = {"train": "Train", "val": "Val", "test": "Test"}
"""LoveDA: prepared split -> folder of the unpacked ``Train.zip`` / ``Val.zip`` / ``Test.zip``."""
LOVEDA_DOMAIN_FOLDERS: Final[dict[str, str]] = {"urban": "Urban", "rural": "Rural"}
"""LoveDA: domain -> sub-folder of each split."""
LOVEDA_IMAGE_FOLDER: Final[str] = "images_png"
LOVEDA_MASK_FOLDER: Final[str] = "masks_png"
"""LoveDA: ``{raw}/Train/Urban/images_png/1366.png`` has its mask at ``{raw}/Train/Urban/masks_png/1366.png``
(uint8, 0 = no-data, 1..7 = classes); ``Test/`` has no ``masks_png``."""


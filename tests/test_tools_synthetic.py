"""Synthetic raw data generator: layout, determinism, colour codes and class content."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from file_trees import tree_digest

from tools.make_synthetic_data import make_synthetic

# Colour tables copied from the benchmark definitions (RGB), independent of the code under test.
ISAID_RGB = [(0, 0, 0), (0, 0, 63), (0, 63, 63), (0, 63, 0), (0, 63, 127), (0, 63, 191), (0, 63, 255),
             (0, 127, 63), (0, 127, 127), (0, 0, 127), (0, 0, 191), (0, 0, 255), (0, 191, 127),
             (0, 127, 191), (0, 127, 255), (0, 100, 155)]
ISPRS_RGB = [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)]


def _rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert bgr is not None and bgr.dtype == np.uint8 and bgr.ndim == 3 and bgr.shape[2] == 3, path
    return bgr[..., ::-1]


def _class_ids(rgb: np.ndarray, table: list[tuple[int, int, int]]) -> np.ndarray:
    ids = np.full(rgb.shape[:2], -1, np.int64)
    for class_id, colour in enumerate(table):
        ids[(rgb == colour).all(axis=-1)] = class_id
    return ids


@pytest.mark.parametrize("dataset", ["isaid", "potsdam", "vaihingen"])
def test_same_seed_same_bytes_other_seed_other_content(tmp_path, dataset):
    first = tree_digest(make_synthetic(dataset, tmp_path / "a", seed=3, num_images=2, size=128))
    second = tree_digest(make_synthetic(dataset, tmp_path / "b", seed=3, num_images=2, size=128))
    other = tree_digest(make_synthetic(dataset, tmp_path / "c", seed=4, num_images=2, size=128))
    assert first == second
    assert first.keys() == other.keys()
    assert first != other


def test_isaid_layout_and_palette(tmp_path):
    root = make_synthetic("isaid", tmp_path, seed=0, num_images=4, size=320)
    train = sorted(p.name for p in (root / "train" / "images").iterdir())
    val = sorted(p.name for p in (root / "val" / "images").iterdir())
    assert train == [f"P000{i}{suffix}.png" for i in range(3)
                     for suffix in ("", "_instance_color_RGB", "_instance_id_RGB")]
    assert val == ["P0003.png", "P0003_instance_color_RGB.png", "P0003_instance_id_RGB.png"]
    seen = set()
    for image_path in sorted(root.glob("*/images/P????.png")):
        image = _rgb(image_path)
        colours = _rgb(image_path.with_name(image_path.stem + "_instance_color_RGB.png"))
        assert image.shape == colours.shape
        assert 0.6 * 320 <= image.shape[0] <= 1.2 * 320 and 0.6 * 320 <= image.shape[1] <= 1.2 * 320
        ids = _class_ids(colours, ISAID_RGB)
        assert (ids >= 0).all(), "every mask colour is an iSAID class colour"
        seen |= set(np.unique(ids).tolist())
    assert len(seen) >= 8, f"scenes should show many classes, saw {sorted(seen)}"


@pytest.mark.parametrize("dataset,image_rel,label_rel,eroded_rel", [
    ("potsdam", "2_Ortho_RGB/top_potsdam_{t}_RGB.tif", "5_Labels_all/top_potsdam_{t}_label.tif",
     "5_Labels_all_noBoundary/top_potsdam_{t}_label_noBoundary.tif"),
    ("vaihingen", "ISPRS_semantic_labeling_Vaihingen/top/top_mosaic_09cm_area{t}.tif",
     "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE/top_mosaic_09cm_area{t}.tif",
     "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE/top_mosaic_09cm_area{t}_noBoundary.tif"),
])
def test_isprs_layout_palette_and_eroded_variant(tmp_path, dataset, image_rel, label_rel, eroded_rel):
    root = make_synthetic(dataset, tmp_path, seed=1, num_images=4, size=256)
    tiles = {"potsdam": ["2_10", "2_11", "2_12", "2_13"], "vaihingen": ["1", "3", "5", "2"]}[dataset]
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*.tif"))
    expected = sorted(rel.format(t=t) for t in tiles for rel in (image_rel, label_rel, eroded_rel))
    assert written == expected
    for tile in tiles:
        image = _rgb(root / image_rel.format(t=tile))
        label = _rgb(root / label_rel.format(t=tile))
        eroded = _rgb(root / eroded_rel.format(t=tile))
        assert image.shape == label.shape == eroded.shape
        if dataset == "potsdam":
            assert image.shape[:2] == (256, 256)
        ids = _class_ids(label, ISPRS_RGB)
        assert (ids >= 0).all()
        assert len(np.unique(ids)) == 6
        black = (eroded == 0).all(axis=-1)
        assert 0 < black.mean() < 0.5
        assert (eroded[~black] == label[~black]).all(), "eroded GT only blanks pixels"
        # Every blanked pixel lies within 3 px of a class change in the full label.
        kernel = np.ones((7, 7), np.uint8)
        near_border = cv2.dilate(ids.astype(np.uint8), kernel) != cv2.erode(ids.astype(np.uint8), kernel)
        assert (near_border == black).all()


def test_vaihingen_is_infrared_false_colour(tmp_path):
    root = make_synthetic("vaihingen", tmp_path, seed=2, num_images=2, size=256)
    image = _rgb(root / "ISPRS_semantic_labeling_Vaihingen/top/top_mosaic_09cm_area1.tif")
    ids = _class_ids(_rgb(root / "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE/"
                                 "top_mosaic_09cm_area1.tif"), ISPRS_RGB)
    vegetation = np.isin(ids, (2, 3))
    # IR-R-G: vegetation reflects near infrared strongly, so channel 0 dominates there.
    assert image[vegetation][:, 0].mean() > image[vegetation][:, 1].mean() + 40
    assert image[ids == 0][:, 0].mean() < image[vegetation][:, 0].mean()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        make_synthetic("cityscapes", tmp_path)
    with pytest.raises(ValueError, match="num_images"):
        make_synthetic("isaid", tmp_path, num_images=1)
    with pytest.raises(ValueError, match="test tiles"):
        make_synthetic("vaihingen", tmp_path, num_images=200)


@pytest.mark.parametrize("dataset,pattern", [("isaid", "*/images/P????.png"), ("vaihingen", "*/top/*.tif")])
def test_fixed_size_makes_every_image_exactly_size_square(tmp_path, dataset, pattern):
    root = make_synthetic(dataset, tmp_path / "fixed", seed=0, num_images=5, size=96, fixed_size=True)
    shapes = {cv2.imread(str(path)).shape for path in root.glob(pattern)}
    assert shapes == {(96, 96, 3)}
    varied = make_synthetic(dataset, tmp_path / "varied", seed=0, num_images=5, size=96)
    assert len({cv2.imread(str(path)).shape for path in varied.glob(pattern)}) > 1

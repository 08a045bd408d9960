"""Datasets on prepared synthetic data: registry, class tables, sample dicts, edge targets, clear errors."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import datasets
from datasets import DatasetNotFoundError, boundary_target, get_dataset
from tools.make_synthetic_data import make_synthetic
from tools.prepare_dataset import PrepareOptions, prepare
from transforms import Compose, RandomHorizontalFlip, build_train_transform

ISAID_RGB = [(0, 0, 0), (0, 0, 63), (0, 63, 63), (0, 63, 0), (0, 63, 127), (0, 63, 191), (0, 63, 255),
             (0, 127, 63), (0, 127, 127), (0, 0, 127), (0, 0, 191), (0, 0, 255), (0, 191, 127),
             (0, 127, 191), (0, 127, 255), (0, 100, 155)]
ISPRS_RGB = [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("prepared")
    roots = {}
    for name in ("isaid", "potsdam", "vaihingen"):
        raw = make_synthetic(name, base / f"raw_{name}", seed=3, num_images=3, size=256)
        prepare(name, raw, base / name, PrepareOptions(patch_size=160, stride=128, workers=1, progress=False))
        roots[name] = base / name
    return roots


def test_constants_and_class_tables():
    assert datasets.IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert datasets.IMAGENET_STD == (0.229, 0.224, 0.225)
    isaid = datasets.dataset_class("iSAID")
    assert isaid.num_classes == 16 and isaid.ignore_label == 255
    assert isaid.class_names[0] == "background" and isaid.class_names[15] == "Harbor"
    assert isaid.palette.dtype == np.uint8 and isaid.palette.tolist() == [list(c) for c in ISAID_RGB]
    for name in ("Posdam", "potsdam", "Vaihingen"):
        isprs = datasets.dataset_class(name)
        assert isprs.num_classes == 6 and len(isprs.class_names) == 6
        assert isprs.palette.shape == (6, 3) and isprs.palette.tolist() == [list(c) for c in ISPRS_RGB]
    with pytest.raises(KeyError, match="cityscapes"):
        datasets.dataset_class("cityscapes")


@pytest.mark.parametrize("name,key,split,suffix", [
    ("iSAID", "isaid", "val", "_instance_color_RGB"),
    ("Posdam", "potsdam", "test", "_gray_mask"),
    ("potsdam", "potsdam", "train", "_gray_mask"),
    ("Vaihingen", "vaihingen", "train", "_gray_mask"),
])
def test_items_and_sample_dict(prepared, name, key, split, suffix):
    dataset = get_dataset(name, split, prepared[key])
    image_files = sorted((prepared[key] / split / "images").glob("*.png"))
    assert len(dataset) == len(image_files) > 0
    assert dataset.items == [(p, prepared[key] / split / "masks" / f"{p.stem}{suffix}.png") for p in image_files]
    sample = dataset[len(dataset) - 1]
    assert set(sample) == {"image", "mask", "name"}
    image_path, mask_path = dataset.items[-1]
    assert sample["name"] == image_path.stem
    rgb = cv2.imread(str(image_path))[..., ::-1].astype(np.float32) / 255
    expected = (rgb - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, *rgb.shape[:2])
    np.testing.assert_allclose(sample["image"].numpy(), expected.transpose(2, 0, 1), atol=1e-5)
    assert sample["mask"].dtype == torch.int64
    np.testing.assert_array_equal(sample["mask"].numpy(), cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED))


def test_training_pipeline_and_loader(prepared):
    dataset = get_dataset("Vaihingen", "train", prepared["vaihingen"], with_edge=True,
                          joint_transform=build_train_transform("Vaihingen", 96, 0.5, 2.0, with_aug=True))
    batch = next(iter(DataLoader(dataset, batch_size=2, shuffle=False)))
    assert batch["image"].shape == (2, 3, 96, 96)
    assert batch["mask"].shape == (2, 96, 96)
    assert batch["edge"].shape == (2, 1, 96, 96) and batch["edge"].dtype == torch.float32
    values = set(torch.unique(batch["mask"]).tolist())
    assert values <= set(range(6)) | {255}
    assert set(torch.unique(batch["edge"]).tolist()) <= {0.0, 1.0}


def _distance_to(points: np.ndarray, shape) -> np.ndarray:
    rows, cols = np.indices(shape)
    return np.min(np.hypot(rows[..., None] - points[:, 0], cols[..., None] - points[:, 1]), axis=-1)


def test_edge_target_is_an_8px_band_around_the_non_zero_region():
    mask = np.zeros((64, 64), np.uint8)
    mask[20:44, 16:48] = 3
    mask[20:44, 32:48] = 7          # a border between two non-zero classes is not an edge
    edge = boundary_target(mask, thickness=8)
    assert edge.dtype == np.float32 and set(np.unique(edge).tolist()) == {0.0, 1.0}
    region = mask > 0
    outline = np.argwhere(region & ~np.pad(region, 1)[2:, 1:-1] | region & ~np.pad(region, 1)[:-2, 1:-1]
                          | region & ~np.pad(region, 1)[1:-1, 2:] | region & ~np.pad(region, 1)[1:-1, :-2])
    distance = _distance_to(outline, mask.shape)
    assert (edge[distance <= 3] == 1).all()
    assert (edge[distance >= 5] == 0).all()
    assert edge[32, 32] == 0, "the 3/7 class border inside the region is not an edge"


def test_edge_target_counts_ignore_as_foreground():
    mask = np.zeros((40, 40), np.uint8)
    mask[:, 30:] = 255
    edge = boundary_target(mask, thickness=8)
    assert edge[:, 27:34].min() == 1 and edge[:, :24].max() == 0


def test_dataset_edge_is_the_outline_of_the_transformed_mask(tmp_path):
    """get_boundary by hand on a 8 x 10 mask, thickness 1: the outline of every non-zero region."""
    mask = np.zeros((8, 10), np.uint8)
    mask[2:6, 2:5] = 1
    mask[2:6, 5:8] = 4              # touches class 1: one region, no edge between them
    mask[:, 9] = 255                # ignore counts as foreground: a one-pixel-wide region
    expected = np.zeros((8, 10), np.float32)
    expected[2, 2:8] = expected[5, 2:8] = 1
    expected[2:6, 2] = expected[2:6, 7] = 1
    expected[:, 9] = 1
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "train" / "images" / "a.png"), np.zeros((8, 10, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "train" / "masks" / "a_gray_mask.png"), mask)
    sample = get_dataset("Vaihingen", "train", tmp_path, with_edge=True, edge_thickness=1)[0]
    assert sample["edge"].shape == (1, 8, 10) and sample["edge"].dtype == torch.float32
    np.testing.assert_array_equal(sample["edge"][0].numpy(), expected)
    flipped = get_dataset("Vaihingen", "train", tmp_path, with_edge=True, edge_thickness=1,
                          joint_transform=Compose([RandomHorizontalFlip(p=1.0)]))[0]
    np.testing.assert_array_equal(flipped["mask"].numpy(), mask[:, ::-1])
    np.testing.assert_array_equal(flipped["edge"][0].numpy(), expected[:, ::-1])


def test_missing_and_empty_folders_are_explained(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"train/images does not exist.*prepare_dataset.py isaid"):
        get_dataset("iSAID", "train", tmp_path)
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "masks").mkdir()
    with pytest.raises(DatasetNotFoundError, match="holds no .png images"):
        get_dataset("Vaihingen", "train", tmp_path)
    cv2.imwrite(str(tmp_path / "train" / "images" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetNotFoundError, match="1 of 1 images .* have no mask .*a_gray_mask.png"):
        get_dataset("Posdam", "train", tmp_path)


def test_bad_mask_contents_are_named(tmp_path):
    (tmp_path / "val" / "images").mkdir(parents=True)
    (tmp_path / "val" / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "val" / "images" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    mask_path = tmp_path / "val" / "masks" / "a_gray_mask.png"
    cv2.imwrite(str(mask_path), np.zeros((8, 8, 3), np.uint8))
    dataset = get_dataset("Vaihingen", "val", tmp_path)
    with pytest.raises(ValueError, match="a_gray_mask.png: expected a single-channel"):
        dataset[0]
    labels = np.zeros((8, 8), np.uint8)
    labels[0, 0] = 9
    cv2.imwrite(str(mask_path), labels)
    with pytest.raises(ValueError, match=r"label ids \[9\] are not classes"):
        dataset[0]
    cv2.imwrite(str(mask_path), np.zeros((7, 8), np.uint8))
    with pytest.raises(ValueError, match="differs from its image"):
        dataset[0]


def test_colorize_uses_the_palette():
    mask = np.array([[0, 1], [5, 255]], np.uint8)
    colours = datasets.dataset_class("Vaihingen").colorize(mask)
    assert colours.tolist() == [[[255, 255, 255], [0, 0, 255]], [[255, 0, 0], [0, 0, 0]]]

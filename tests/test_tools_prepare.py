"""prepare_dataset.py: raw download layout -> {out}/{split}/images|masks, checked pixel by pixel."""

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from file_trees import tree_digest

from tools import ToolError
from tools._tiling import GEOMETRY_FILE
from tools.make_synthetic_data import make_synthetic
from tools.prepare_dataset import PrepareOptions, build_parser, main, options_from_flags, prepare
from utils.source_policy import SourcePolicy

REPO = Path(__file__).resolve().parents[1]
ISAID_RGB = [(0, 0, 0), (0, 0, 63), (0, 63, 63), (0, 63, 0), (0, 63, 127), (0, 63, 191), (0, 63, 255),
             (0, 127, 63), (0, 127, 127), (0, 0, 127), (0, 0, 191), (0, 0, 255), (0, 191, 127),
             (0, 127, 191), (0, 127, 255), (0, 100, 155)]
ISPRS_RGB = [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)]


def ids_from_colours(path: Path, table, black_id=None) -> np.ndarray:
    rgb = cv2.imread(str(path))[..., ::-1]
    ids = np.full(rgb.shape[:2], 254, np.uint8)
    for class_id, colour in enumerate(table):
        ids[(rgb == colour).all(axis=-1)] = class_id
    if black_id is not None:
        ids[(rgb == 0).all(axis=-1)] = black_id
    assert (ids != 254).all()
    return ids


def windows(height, width, patch, stride):
    """Window starts 0, stride, ... with the last window moved back to end at the border."""
    def starts(length):
        values = sorted({min(s, length - patch) for s in range(0, length, stride)})
        return values
    return [(y, y + patch, x, x + patch) for y in starts(height) for x in starts(width)]


def check_pair_folder(out_split: Path, stem: str, image: np.ndarray, ids: np.ndarray, mask_suffix: str,
                      patch: int, stride: int) -> set[str]:
    """Assert every expected patch of one source image; returns the expected image file names."""
    height, width = ids.shape
    if height > patch and width > patch:
        expected = {f"{stem}_{y0}_{y1}_{x0}_{x1}": (slice(y0, y1), slice(x0, x1))
                    for y0, y1, x0, x1 in windows(height, width, patch, stride)}
    else:
        expected = {stem: (slice(None), slice(None))}
    for name, crop in expected.items():
        np.testing.assert_array_equal(cv2.imread(str(out_split / "images" / f"{name}.png")), image[crop])
        mask = cv2.imread(str(out_split / "masks" / f"{name}{mask_suffix}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.ndim == 2 and mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, ids[crop])
    return {f"{name}.png" for name in expected}


def test_isaid_prepare_names_and_pixels(tmp_path):
    raw = make_synthetic("isaid", tmp_path / "raw", seed=11, num_images=4, size=400)
    patch, stride = 280, 200
    summary = prepare("isaid", raw, tmp_path / "out",
                      PrepareOptions(patch_size=patch, stride=stride, workers=1, whole_held_out=True, progress=False))
    assert summary.skipped == [] and summary.warnings == []
    for split in ("train", "val"):
        expected = set()
        for image_path in sorted((raw / split / "images").glob("P????.png")):
            ids = ids_from_colours(image_path.with_name(f"{image_path.stem}_instance_color_RGB.png"), ISAID_RGB)
            image = cv2.imread(str(image_path))
            expected |= check_pair_folder(tmp_path / "out" / split, image_path.stem, image, ids,
                                          "_instance_color_RGB", patch, stride)
            if split == "val":
                check_pair_folder(tmp_path / "out" / "val_ori", image_path.stem, image, ids,
                                  "_instance_color_RGB", 10**6, 1)
        assert {p.name for p in (tmp_path / "out" / split / "images").iterdir()} == expected
        assert len(list((tmp_path / "out" / split / "masks").iterdir())) == len(expected)


def test_isaid_default_geometry_is_the_papers_896_stride_512(tmp_path):
    raw = tmp_path / "raw"
    for split in ("train", "val"):
        (raw / split / "images").mkdir(parents=True)
        cv2.imwrite(str(raw / split / "images" / "P0001.png"), np.zeros((1000, 1500, 3), np.uint8))
        # iSAID masks may also sit in Semantic_masks/images as unpacked from the download.
        (raw / split / "Semantic_masks" / "images").mkdir(parents=True)
        cv2.imwrite(str(raw / split / "Semantic_masks" / "images" / "P0001_instance_color_RGB.png"),
                    np.zeros((1000, 1500, 3), np.uint8))
    (raw / "test" / "images").mkdir(parents=True)
    cv2.imwrite(str(raw / "test" / "images" / "P0002.png"), np.zeros((900, 700, 3), np.uint8))
    prepare("isaid", raw, tmp_path / "out", PrepareOptions(workers=1, progress=False))
    names = {p.stem for p in (tmp_path / "out" / "train" / "images").iterdir()}
    assert names == {f"P0001_{y}_{y + 896}_{x}_{x + 896}" for y in (0, 104) for x in (0, 512, 604)}
    # Test images have no masks; one narrower than a window is written whole.
    assert [p.name for p in (tmp_path / "out" / "test" / "images").iterdir()] == ["P0002.png"]
    assert not (tmp_path / "out" / "test" / "masks").exists()


@pytest.mark.parametrize("dataset", ["potsdam", "vaihingen"])
@pytest.mark.parametrize("variant", ["full", "eroded"])
def test_isprs_prepare_split_names_and_pixels(tmp_path, dataset, variant):
    raw = make_synthetic(dataset, tmp_path / "raw", seed=5, num_images=4, size=300)
    patch, stride = 256, 160
    prepare(dataset, raw, tmp_path / "out",
            PrepareOptions(patch_size=patch, stride=stride, label_variant=variant, workers=1, progress=False))
    if dataset == "potsdam":
        tiles = {"train": ["2_10", "2_11", "2_12"], "test": ["2_13"]}
        image_of = lambda t: raw / "2_Ortho_RGB" / f"top_potsdam_{t}_RGB.tif"  # noqa: E731
        label_of = {"full": lambda t: raw / "5_Labels_all" / f"top_potsdam_{t}_label.tif",
                    "eroded": lambda t: raw / "5_Labels_all_noBoundary" / f"top_potsdam_{t}_label_noBoundary.tif"}
    else:
        tiles = {"train": ["1", "3", "5"], "test": ["2"]}
        top = raw / "ISPRS_semantic_labeling_Vaihingen" / "top"
        image_of = lambda t: top / f"top_mosaic_09cm_area{t}.tif"  # noqa: E731
        label_of = {
            "full": lambda t: (raw / "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE"
                               / f"top_mosaic_09cm_area{t}.tif"),
            "eroded": lambda t: (raw / "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE"
                                 / f"top_mosaic_09cm_area{t}_noBoundary.tif")}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [GEOMETRY_FILE, "test", "train"]
    saw_ignore = False
    for split, split_tiles in tiles.items():
        expected = set()
        for tile in split_tiles:
            ids = ids_from_colours(label_of[variant](tile), ISPRS_RGB, black_id=255 if variant == "eroded" else None)
            saw_ignore |= bool((ids == 255).any())
            stem = image_of(tile).stem
            expected |= check_pair_folder(tmp_path / "out" / split, stem, cv2.imread(str(image_of(tile))), ids,
                                          "_gray_mask", patch, stride)
        assert {p.name for p in (tmp_path / "out" / split / "images").iterdir()} == expected
    assert saw_ignore == (variant == "eroded")


def test_prepare_workers_1_and_2_identical(tmp_path):
    raw = make_synthetic("vaihingen", tmp_path / "raw", seed=2, num_images=3, size=300)
    digests = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        prepare("vaihingen", raw, out, PrepareOptions(patch_size=128, stride=100, workers=workers, progress=False))
        digests.append(tree_digest(out))
    assert digests[0] == digests[1] and len(digests[0]) > 20


def test_prepare_refuses_bad_layouts_and_outputs(tmp_path):
    raw = make_synthetic("potsdam", tmp_path / "raw", seed=0, num_images=2, size=128)
    with pytest.raises(ToolError, match="inside the input"):
        prepare("potsdam", raw, raw / "out", PrepareOptions(progress=False))
    with pytest.raises(ToolError, match="does not look like iSAID"):
        prepare("isaid", raw, tmp_path / "out", PrepareOptions(progress=False))
    with pytest.raises(ToolError, match="ISPRS_semantic_labeling_Vaihingen/top does not exist"):
        prepare("vaihingen", raw, tmp_path / "out", PrepareOptions(progress=False))
    shutil.rmtree(raw / "5_Labels_all")
    with pytest.raises(ToolError, match="5_Labels_all does not exist"):
        prepare("potsdam", raw, tmp_path / "out", PrepareOptions(progress=False))


def test_prepare_refuses_output_in_custom_image_or_label_folders(tmp_path):
    raw = make_synthetic("potsdam", tmp_path / "raw", seed=0, num_images=2, size=128)
    images = shutil.copytree(raw / "2_Ortho_RGB", tmp_path / "my_images")
    labels = shutil.copytree(raw / "5_Labels_all", tmp_path / "my_labels")
    for out in (images, images / "patches", labels, labels / "patches"):
        with pytest.raises(ToolError, match=f"output folder {out} is inside the input folder"):
            prepare("potsdam", raw, out, PrepareOptions(image_dir=images, label_dir=labels, workers=1, progress=False))
        assert not (out / "train").exists()
    assert sorted(p.name for p in images.iterdir()) == ["top_potsdam_2_10_RGB.tif", "top_potsdam_2_13_RGB.tif"]
    summary = prepare("potsdam", raw, tmp_path / "out",
                      PrepareOptions(patch_size=64, stride=64, image_dir=images, label_dir=labels, workers=1,
                                     progress=False))
    assert summary.skipped == [] and summary.patches == 2 * 4


def test_prepare_stops_at_an_image_mask_size_mismatch(tmp_path):
    raw = make_synthetic("vaihingen", tmp_path / "raw", seed=4, num_images=2, size=128)
    label = raw / "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE" / "top_mosaic_09cm_area1.tif"
    colours = cv2.imread(str(label))
    cv2.imwrite(str(label), colours[:, :-5])
    kwargs = dict(patch_size=64, stride=64, workers=1, progress=False)
    width, height = colours.shape[1], colours.shape[0]
    with pytest.raises(ToolError, match=rf"area1.tif: mask is {width - 5}x{height} \(WxH\) .* is {width}x{height}"):
        prepare("vaihingen", raw, tmp_path / "a", PrepareOptions(**kwargs))
    summary = prepare("vaihingen", raw, tmp_path / "b", PrepareOptions(on_error="skip", **kwargs))
    assert len(summary.skipped) == 1 and "top_mosaic_09cm_area1.tif" in summary.skipped[0]
    assert not list((tmp_path / "b" / "train" / "images").glob("top_mosaic_09cm_area1_*"))
    assert list((tmp_path / "b" / "test" / "images").glob("top_mosaic_09cm_area2_*"))


def test_prepare_rerun_over_finished_tif_tiles_decodes_nothing(tmp_path, request):
    raw = make_synthetic("potsdam", tmp_path / "raw", seed=1, num_images=2, size=200)
    kwargs = dict(patch_size=128, stride=100, workers=1, progress=False)
    first = prepare("potsdam", raw, tmp_path / "out", PrepareOptions(**kwargs))
    # 200 px tiles, windows at 0 and 72 on both axes: 4 patches per tile, image and mask each.
    assert (first.inputs, first.patches, first.written) == (2, 8, 16)
    request.getfixturevalue("no_image_decoding")
    again = prepare("potsdam", raw, tmp_path / "out", PrepareOptions(**kwargs))
    assert (again.written, again.existing, again.patches, again.skipped) == (0, 16, 8, [])


def test_prepare_reports_unknown_label_colours(tmp_path):
    raw = make_synthetic("potsdam", tmp_path / "raw", seed=0, num_images=2, size=128)
    label = raw / "5_Labels_all" / "top_potsdam_2_10_label.tif"
    bgr = cv2.imread(str(label))
    bgr[:2, :5] = (1, 2, 3)
    cv2.imwrite(str(label), bgr)
    with pytest.raises(ToolError, match=r"top_potsdam_2_10_label.tif: 10 of .*RGB\(3, 2, 1\) x 10"):
        prepare("potsdam", raw, tmp_path / "a", PrepareOptions(patch_size=64, stride=64, workers=1, progress=False))
    summary = prepare("potsdam", raw, tmp_path / "b",
                      PrepareOptions(patch_size=64, stride=64, workers=1, unknown_color="ignore", progress=False))
    assert len(summary.warnings) == 1
    first = cv2.imread(str(tmp_path / "b" / "train" / "masks" / "top_potsdam_2_10_RGB_0_64_0_64_gray_mask.png"),
                       cv2.IMREAD_UNCHANGED)
    assert (first[:2, :5] == 255).all()


def test_prepare_cli_end_to_end(tmp_path):
    raw = make_synthetic("isaid", tmp_path / "raw", seed=1, num_images=2, size=200)
    result = subprocess.run([sys.executable, "tools/prepare_dataset.py", "isaid", "--raw", str(raw), "--out",
                             str(tmp_path / "out"), "--patch-size", "128", "--stride", "100", "--workers", "2"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "prepare isaid: 2 inputs" in result.stdout
    assert any((tmp_path / "out" / "train" / "images").iterdir())


def test_every_prepare_flag_reaches_its_option(tmp_path):
    args = build_parser().parse_args([
        "Potsdam", "--raw", "r", "--out", "o", "--patch-size", "64", "--stride", "32", "--label-variant", "eroded",
        "--product", "RGBIR", "--bands", "irrg", "--domain", "urban", "--whole-held-out", "--image-dir", "i",
        "--label-dir", "l", "--train-tiles", "2_10, 2_11", "--test-tiles", "2_12", "--workers", "3", "--overwrite",
        "--on-error", "skip", "--unknown-color", "ignore", "--allow-source-root", str(tmp_path),
        "--allow-network-sources"])
    assert args.dataset == "potsdam"
    assert options_from_flags(args) == PrepareOptions(
        patch_size=64, stride=32, label_variant="eroded", domain="urban", spec=None, product="RGBIR", bands="irrg",
        workers=3, overwrite=True, on_error="skip", unknown_color="ignore", whole_held_out=True, image_dir="i",
        label_dir="l", split_tiles={"train": ("2_10", "2_11"), "test": ("2_12",)}, progress=True,
        policy=SourcePolicy(roots=(str(tmp_path),), network=True))
    # No flags: the options' own defaults are the command line's.
    assert options_from_flags(build_parser().parse_args(["isaid", "--out", "o"])) == PrepareOptions()


def test_train_tiles_without_test_tiles_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["potsdam", "--raw", str(tmp_path), "--out", str(tmp_path / "out"), "--train-tiles", "2_10"])
    assert stop.value.code == 2
    assert "--train-tiles and --test-tiles go together" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

"""split_iSAID.py and split_isprs.py: names and pixels against the original's rules, safety features."""

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
from tools.split_iSAID import main as split_isaid_main
from tools.split_iSAID import split_isaid
from tools.split_isprs import split_isprs

REPO = Path(__file__).resolve().parents[1]


def original_windows(height, width, patch_h, patch_w, overlap):
    """The original tools' loops, transcribed: x outer, y inner, windows past the border shifted back."""
    windows = set()
    for x in range(0, width, patch_w - overlap):
        for y in range(0, height, patch_h - overlap):
            x_start, x_end = x, x + patch_w
            if x_end > width:
                x_start, x_end = x_start - (x_end - width), width
            y_start, y_end = y, y + patch_h
            if y_end > height:
                y_start, y_end = y_start - (y_end - height), height
            windows.add((y_start, y_end, x_start, x_end))
    return windows


@pytest.fixture(scope="module")
def isaid_raw(tmp_path_factory) -> Path:
    """Synthetic iSAID devkit tree: 4 train/val images (sides 240..480 px) plus a test set and P1527."""
    root = make_synthetic("isaid", tmp_path_factory.mktemp("isaid_raw"), seed=7, num_images=4, size=400)
    test_dir = root / "test" / "images"
    test_dir.mkdir(parents=True)
    shutil.copy(root / "val" / "images" / "P0003.png", test_dir / "P0010.png")
    for name in ("P1527.png", "P1527_instance_color_RGB.png"):
        shutil.copy(root / "train" / "images" / name.replace("P1527", "P0000"), root / "train" / "images" / name)
    return root


def test_isaid_names_and_pixels_follow_the_original(isaid_raw, tmp_path):
    patch, overlap = 300, 100
    summary = split_isaid(isaid_raw, tmp_path, patch_width=patch, patch_height=patch, overlap_area=overlap,
                          workers=1, progress=False)
    assert summary.skipped == []
    cut_any = copied_any = False
    for set_name in ("train", "val"):
        source_dir = isaid_raw / set_name / "images"
        out_dir = tmp_path / set_name / "images"
        expected_images, expected_masks = set(), set()
        for image_path in sorted(source_dir.glob("P????.png")):
            if image_path.stem == "P1527":
                continue
            image = cv2.imread(str(image_path))
            mask_path = source_dir / f"{image_path.stem}_instance_color_RGB.png"
            colour_mask = cv2.imread(str(mask_path))
            height, width = image.shape[:2]
            if height > patch and width > patch:
                cut_any = True
                for y0, y1, x0, x1 in original_windows(height, width, patch, patch, overlap):
                    stem = f"{image_path.stem}_{y0}_{y1}_{x0}_{x1}"
                    expected_images.add(f"{stem}.png")
                    expected_masks.add(f"{stem}_instance_color_RGB.png")
                    np.testing.assert_array_equal(cv2.imread(str(out_dir / "images" / f"{stem}.png")),
                                                  image[y0:y1, x0:x1])
                    np.testing.assert_array_equal(
                        cv2.imread(str(out_dir / "masks" / f"{stem}_instance_color_RGB.png")),
                        colour_mask[y0:y1, x0:x1])
            else:
                copied_any = True
                expected_images.add(image_path.name)
                expected_masks.add(mask_path.name)
                assert (out_dir / "images" / image_path.name).read_bytes() == image_path.read_bytes()
                assert (out_dir / "masks" / mask_path.name).read_bytes() == mask_path.read_bytes()
        assert {p.name for p in (out_dir / "images").iterdir()} == expected_images
        assert {p.name for p in (out_dir / "masks").iterdir()} == expected_masks
    assert cut_any and copied_any, "the fixture must exercise both the cutting and the whole-copy rule"
    assert not (tmp_path / "test" / "images" / "masks").exists(), "test sets have no masks"
    height, width = cv2.imread(str(isaid_raw / "test" / "images" / "P0010.png")).shape[:2]
    test_windows = original_windows(height, width, patch, patch, overlap)
    expected_test = ({f"P0010_{y0}_{y1}_{x0}_{x1}.png" for y0, y1, x0, x1 in test_windows}
                     if height > patch and width > patch else {"P0010.png"})
    assert {p.name for p in (tmp_path / "test" / "images" / "images").iterdir()} == expected_test
    assert any("P1527" in note for note in summary.notes)


def test_isaid_default_sets_cut_masks_unlike_the_original(isaid_raw, tmp_path):
    # The original chose the file list from the last --set entry ("test"), cutting no masks at all.
    split_isaid_main(["--src", str(isaid_raw), "--tar", str(tmp_path), "--workers", "1"])
    assert any((tmp_path / "train" / "images" / "masks").iterdir())
    assert any((tmp_path / "val" / "images" / "masks").iterdir())


def test_isaid_workers_1_and_2_write_identical_files(isaid_raw, tmp_path):
    for workers in (1, 2):
        split_isaid(isaid_raw, tmp_path / f"w{workers}", sets=("train", "val"), patch_width=256,
                    patch_height=256, overlap_area=64, workers=workers, progress=False)
    assert tree_digest(tmp_path / "w1") == tree_digest(tmp_path / "w2")
    assert len(tree_digest(tmp_path / "w1")) > 20


def test_interrupted_run_leaves_no_partial_file_and_rerun_completes(isaid_raw, tmp_path, monkeypatch):
    import utils.atomic as atomic

    reference = tmp_path / "reference"
    split_isaid(isaid_raw, reference, sets=("train",), patch_width=256, patch_height=256, overlap_area=64,
                workers=1, progress=False)
    out = tmp_path / "out"
    real_replace = atomic.os.replace
    calls = {"n": 0}

    def replace_then_interrupt(source, target):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        split_isaid(isaid_raw, out, sets=("train",), patch_width=256, patch_height=256, overlap_area=64,
                    workers=1, progress=False)
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    written = [p for p in out.rglob("*") if p.is_file() and p.name != GEOMETRY_FILE]
    assert len(written) == 4, "the geometry record and four patches were renamed into place before the interruption"
    assert not [p for p in written if ".partial-" in p.name], "the temporary file was removed"
    for path in written:
        assert cv2.imread(str(path)) is not None
    # A hard kill would leave a temporary file behind: the re-run removes it.
    stale = written[0].parent / f".{written[0].name}.partial-99999"
    stale.write_bytes(b"half")
    summary = split_isaid(isaid_raw, out, sets=("train",), patch_width=256, patch_height=256, overlap_area=64,
                          workers=1, progress=False)
    assert summary.existing == 4
    assert tree_digest(out) == tree_digest(reference)


def test_rerun_keeps_finished_outputs_rewrites_damaged_ones_unless_overwrite(isaid_raw, tmp_path):
    kwargs = dict(sets=("val",), patch_width=256, patch_height=256, overlap_area=64, workers=1, progress=False)
    first = split_isaid(isaid_raw, tmp_path, **kwargs)
    edited, zeroed, truncated = sorted((tmp_path / "val" / "images" / "images").iterdir())[:3]
    cv2.imwrite(str(edited), np.full((256, 256, 3), 7, np.uint8))  # a valid patch of the right size: kept
    edited_bytes = edited.read_bytes()
    zeroed.write_bytes(bytes(zeroed.stat().st_size))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    again = split_isaid(isaid_raw, tmp_path, **kwargs)
    assert again.written == 2 and again.existing == first.written - 2
    assert edited.read_bytes() == edited_bytes
    assert cv2.imread(str(zeroed)) is not None and cv2.imread(str(truncated)) is not None
    assert sorted(w.split(":")[0] for w in again.warnings) == sorted([str(zeroed), str(truncated)])
    forced = split_isaid(isaid_raw, tmp_path, overwrite=True, **kwargs)
    assert forced.written == first.written
    assert cv2.imread(str(edited)).max() > 7


def test_output_inside_input_is_refused(isaid_raw):
    with pytest.raises(ToolError, match="inside the input"):
        split_isaid(isaid_raw, isaid_raw / "patches", progress=False)
    with pytest.raises(ToolError, match="inside the input"):
        split_isaid(isaid_raw, isaid_raw, progress=False)


def _copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_corrupt_image_stops_with_its_name_or_is_skipped(isaid_raw, tmp_path):
    raw = _copy_tree(isaid_raw, tmp_path / "raw")
    broken = raw / "train" / "images" / "P0001.png"
    broken.write_bytes(broken.read_bytes()[:200])
    kwargs = dict(sets=("train",), patch_width=256, patch_height=256, overlap_area=64, workers=2, progress=False)
    with pytest.raises(ToolError, match="P0001.png"):
        split_isaid(raw, tmp_path / "stop", **kwargs)
    summary = split_isaid(raw, tmp_path / "skip", on_error="skip", **kwargs)
    assert len(summary.skipped) == 1 and "P0001.png" in summary.skipped[0]
    names = {p.name for p in (tmp_path / "skip" / "train" / "images" / "images").iterdir()}
    assert not any(name.startswith("P0001") for name in names)
    assert any(name.startswith("P0000") for name in names) and any(name.startswith("P0002") for name in names)


def test_size_mismatch_and_missing_mask_are_errors(isaid_raw, tmp_path):
    raw = _copy_tree(isaid_raw, tmp_path / "raw")
    mask_path = raw / "train" / "images" / "P0000_instance_color_RGB.png"
    mask = cv2.imread(str(mask_path))
    cv2.imwrite(str(mask_path), mask[:-3])
    (raw / "train" / "images" / "P0002_instance_color_RGB.png").unlink()
    kwargs = dict(sets=("train",), patch_width=256, patch_height=256, overlap_area=64, workers=1, progress=False)
    with pytest.raises(ToolError, match="P0000_instance_color_RGB.png.*must match"):
        split_isaid(raw, tmp_path / "a", **kwargs)
    summary = split_isaid(raw, tmp_path / "b", on_error="skip", **kwargs)
    assert len(summary.skipped) == 2
    assert any("does not exist" in message and "P0002" in message for message in summary.skipped)


def test_isprs_names_pixels_and_small_tiles(tmp_path):
    rng = np.random.default_rng(0)
    source = tmp_path / "posdam" / "train" / "images"
    source.mkdir(parents=True)
    tiles = {"top_potsdam_2_10_RGB": (420, 500), "top_potsdam_2_11_RGB": (300, 280)}
    for base, (height, width) in tiles.items():
        cv2.imwrite(str(source / f"{base}.tif"), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        cv2.imwrite(str(source / f"{base}_gray_mask.png"), rng.integers(0, 6, (height, width), dtype=np.uint8))
    out = tmp_path / "patches"
    split_isprs(tmp_path / "posdam", out, sets=("train",), patch_width=320, patch_height=320, overlap_area=120,
                workers=1, progress=False)
    images_out, masks_out = out / "train" / "images" / "images", out / "train" / "images" / "masks"
    big = cv2.imread(str(source / "top_potsdam_2_10_RGB.tif"))
    big_mask = cv2.imread(str(source / "top_potsdam_2_10_RGB_gray_mask.png"), cv2.IMREAD_UNCHANGED)
    windows = original_windows(420, 500, 320, 320, 120)
    expected = {f"top_potsdam_2_10_RGB_{y0}_{y1}_{x0}_{x1}" for y0, y1, x0, x1 in windows}
    assert {p.stem for p in images_out.iterdir()} == expected | {"top_potsdam_2_11_RGB"}
    assert {p.name for p in masks_out.iterdir()} == {f"{s}_gray_mask.png" for s in expected | {"top_potsdam_2_11_RGB"}}
    for y0, y1, x0, x1 in windows:
        stem = f"top_potsdam_2_10_RGB_{y0}_{y1}_{x0}_{x1}"
        np.testing.assert_array_equal(cv2.imread(str(images_out / f"{stem}.png")), big[y0:y1, x0:x1])
        written_mask = cv2.imread(str(masks_out / f"{stem}_gray_mask.png"), cv2.IMREAD_UNCHANGED)
        assert written_mask.ndim == 2
        np.testing.assert_array_equal(written_mask, big_mask[y0:y1, x0:x1])
    # A tile not larger than a patch is written whole, as a PNG that pairs with its mask.
    np.testing.assert_array_equal(cv2.imread(str(images_out / "top_potsdam_2_11_RGB.png")),
                                  cv2.imread(str(source / "top_potsdam_2_11_RGB.tif")))
    small_mask = cv2.imread(str(masks_out / "top_potsdam_2_11_RGB_gray_mask.png"), cv2.IMREAD_UNCHANGED)
    assert small_mask.ndim == 2
    np.testing.assert_array_equal(small_mask, cv2.imread(str(source / "top_potsdam_2_11_RGB_gray_mask.png"),
                                                         cv2.IMREAD_UNCHANGED))


def test_isprs_rerun_over_finished_outputs_decodes_nothing(tmp_path, request):
    rng = np.random.default_rng(1)
    source = tmp_path / "src" / "train" / "images"
    source.mkdir(parents=True)
    for base, (height, width) in {"top_mosaic_09cm_area1": (300, 340), "top_mosaic_09cm_area3": (100, 90)}.items():
        cv2.imwrite(str(source / f"{base}.tif"), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        cv2.imwrite(str(source / f"{base}_gray_mask.png"), rng.integers(0, 6, (height, width), dtype=np.uint8))
    kwargs = dict(sets=("train",), patch_width=128, patch_height=128, overlap_area=28, workers=1, progress=False)
    first = split_isprs(tmp_path / "src", tmp_path / "out", **kwargs)
    # Windows: rows 0, 100, 172 and columns 0, 100, 200, 212 of the 300 x 340 tile, plus the small tile whole.
    assert first.patches == 3 * 4 + 1 and first.written == 2 * first.patches
    request.getfixturevalue("no_image_decoding")
    again = split_isprs(tmp_path / "src", tmp_path / "out", **kwargs)
    assert (again.written, again.existing, again.patches, again.skipped) == (0, first.written, first.patches, [])


def test_isprs_colour_mask_is_refused(tmp_path):
    source = tmp_path / "src" / "train" / "images"
    source.mkdir(parents=True)
    cv2.imwrite(str(source / "a.tif"), np.zeros((40, 40, 3), np.uint8))
    colour = np.zeros((40, 40, 3), np.uint8)
    colour[..., 0] = 255
    cv2.imwrite(str(source / "a_gray_mask.png"), colour)
    with pytest.raises(ToolError, match="channels differ"):
        split_isprs(tmp_path / "src", tmp_path / "out", sets=("train",), workers=1, progress=False)


def test_cli_help_lists_every_flag():
    result = subprocess.run([sys.executable, "tools/split_iSAID.py", "--help"], cwd=REPO, capture_output=True,
                            text=True, check=True)
    for flag in ("--src", "--tar", "--image_sub_folder", "--set", "--patch_width", "--patch_height",
                 "--overlap_area", "--workers", "--overwrite", "--on-error"):
        assert flag in result.stdout

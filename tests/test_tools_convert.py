"""convert_iSAID_mask2graymask.py and convert_isprs_mask2graymask.py: ids, names, unknown colours."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from tools import ToolError
from tools.convert_iSAID_mask2graymask import convert_isaid_masks
from tools.convert_iSAID_mask2graymask import main as convert_isaid_main
from tools.convert_isprs_mask2graymask import convert_isprs_masks
from tools.convert_isprs_mask2graymask import main as convert_isprs_main

# The original tools' tables, BGR -> id, as printed in their source.
ISAID_BGR = {(0, 0, 0): 0, (63, 0, 0): 1, (63, 63, 0): 2, (0, 63, 0): 3, (127, 63, 0): 4, (191, 63, 0): 5,
             (255, 63, 0): 6, (63, 127, 0): 7, (127, 127, 0): 8, (127, 0, 0): 9, (191, 0, 0): 10,
             (255, 0, 0): 11, (127, 191, 0): 12, (191, 127, 0): 13, (255, 127, 0): 14, (155, 100, 0): 15}
ISPRS_BGR = {(255, 255, 255): 0, (255, 0, 0): 1, (255, 255, 0): 2, (0, 255, 0): 3, (0, 255, 255): 4,
             (0, 0, 255): 5}


def random_colour_mask(table: dict, height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """BGR mask with random blocks of every table colour, and the ids the test expects."""
    rng = np.random.default_rng(seed)
    colours = np.array(list(table.keys()), np.uint8)
    ids = np.array(list(table.values()), np.uint8)
    choice = rng.integers(0, len(colours), (height // 4, width // 4)).repeat(4, 0).repeat(4, 1)
    return colours[choice], ids[choice]


def test_isaid_colours_become_the_original_ids_with_same_names(tmp_path):
    masks = tmp_path / "train" / "masks"
    masks.mkdir(parents=True)
    expected = {}
    for index in range(3):
        bgr, ids = random_colour_mask(ISAID_BGR, 64, 96, index)
        name = f"P000{index}_0_64_0_96_instance_color_RGB.png"
        cv2.imwrite(str(masks / name), bgr)
        expected[name] = ids
    (masks / "notes.txt").write_text("not a mask")
    summary = convert_isaid_masks(tmp_path, "gray", "train", workers=2, progress=False)
    assert summary.written == 3
    out = tmp_path / "train" / "gray"
    assert {p.name for p in out.iterdir()} == set(expected)
    for name, ids in expected.items():
        written = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert written.dtype == np.uint8 and written.ndim == 2
        np.testing.assert_array_equal(written, ids)


def test_isprs_tif_becomes_png_ids(tmp_path):
    masks = tmp_path / "test" / "masks"
    masks.mkdir(parents=True)
    bgr, ids = random_colour_mask(ISPRS_BGR, 80, 72, 5)
    cv2.imwrite(str(masks / "top_potsdam_2_13_label.tif"), bgr)
    convert_isprs_masks(tmp_path, "gray", "test", workers=1, progress=False)
    written = cv2.imread(str(tmp_path / "test" / "gray" / "top_potsdam_2_13_label.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(written, ids)


def write_with_unknown(folder: Path, name: str) -> np.ndarray:
    """Building mask (blue) with 7 pixels of an off-palette colour RGB(10, 20, 30); returns expected ids."""
    folder.mkdir(parents=True, exist_ok=True)
    bgr = np.zeros((30, 30, 3), np.uint8)
    bgr[..., 0] = 255
    bgr[0, :7] = (30, 20, 10)
    cv2.imwrite(str(folder / name), bgr)
    ids = np.ones((30, 30), np.uint8)
    return ids


@pytest.mark.parametrize("policy,fill", [("ignore", 255), ("background", 0)])
def test_unknown_colours_follow_the_policy_and_are_reported(tmp_path, policy, fill):
    ids = write_with_unknown(tmp_path / "train" / "masks", "a.tif")
    summary = convert_isprs_masks(tmp_path, "gray", "train", workers=1, unknown_color=policy, progress=False)
    ids[0, :7] = fill
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "train" / "gray" / "a.png"), cv2.IMREAD_UNCHANGED), ids)
    assert len(summary.warnings) == 1
    assert "a.tif" in summary.warnings[0] and "RGB(10, 20, 30) x 7" in summary.warnings[0]


def test_unknown_colours_are_an_error_by_default(tmp_path):
    write_with_unknown(tmp_path / "train" / "masks", "a.tif")
    with pytest.raises(ToolError, match=r"a\.tif: 7 of 900 pixels .*RGB\(10, 20, 30\) x 7"):
        convert_isprs_masks(tmp_path, "gray", "train", workers=1, progress=False)
    assert not (tmp_path / "train" / "gray" / "a.png").exists()


def test_eroded_black_border_becomes_ignore(tmp_path):
    masks = tmp_path / "train" / "masks"
    masks.mkdir(parents=True)
    bgr = np.full((20, 20, 3), 255, np.uint8)
    bgr[5:8] = 0
    cv2.imwrite(str(masks / "x_noBoundary.tif"), bgr)
    convert_isprs_masks(tmp_path, "gray", "train", workers=1, eroded=True, progress=False)
    written = cv2.imread(str(tmp_path / "train" / "gray" / "x_noBoundary.png"), cv2.IMREAD_UNCHANGED)
    expected = np.zeros((20, 20), np.uint8)
    expected[5:8] = 255
    np.testing.assert_array_equal(written, expected)


def test_in_place_conversion_is_refused(tmp_path):
    (tmp_path / "train" / "masks").mkdir(parents=True)
    with pytest.raises(ToolError, match="inside the input"):
        convert_isaid_masks(tmp_path, "masks", "train", progress=False)
    with pytest.raises(SystemExit, match="inside the input"):
        convert_isaid_main(["--root_path", str(tmp_path), "--save_file_name", "masks/gray", "--phase", "train"])


def test_unreadable_mask_is_named(tmp_path):
    masks = tmp_path / "val" / "masks"
    masks.mkdir(parents=True)
    (masks / "P0001_instance_color_RGB.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ToolError, match="P0001_instance_color_RGB.png: cannot be decoded"):
        convert_isaid_masks(tmp_path, "gray", "val", workers=1, progress=False)


@pytest.mark.parametrize("main", [convert_isaid_main, convert_isprs_main])
def test_help_describes_the_converters_own_errors(main, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "size mismatch" not in text and "iSAID scenes" not in text
    assert "colours outside the palette: stop with an error naming the file" in text

"""Fault injection for the data tools: bad flags, damaged or missing inputs, names that do not parse, a full
disk, a killed run. Each case runs a tool as a subprocess and must fail cleanly (see tests/faults.py)."""
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from faults import (
    REPO,
    Case,
    assert_clean_failure,
    bomb_png,
    case_table,
    copy_tree,
    folder_digest,
    full_disk_available,
    id_mask_dataset,
    run_cases,
    run_on_full_disk,
    subprocess_env,
    truncate,
)

from tools._tiling import GEOMETRY_FILE
from tools.make_synthetic_data import make_synthetic
from tools.prepare_dataset import PrepareOptions, prepare
from utils.atomic import PARTIAL_MARK
from utils.image_io import MAX_IMAGE_PIXELS, SCALING_FILE

# end-to-end runs of the entry points: `make test` runs them, `make test-fast` leaves them out
pytestmark = pytest.mark.workflow

PREPARE = "tools/prepare_dataset.py"
POTSDAM_IMAGE = "2_Ortho_RGB/top_potsdam_{}_RGB.tif"
POTSDAM_LABEL = "5_Labels_all/top_potsdam_{}_label.tif"


def isprs_split_source(root: Path, mask_ids: np.ndarray | None = None, tile: str = "a") -> Path:
    """``root/train/images`` for split_isprs.py: tile ``{tile}.tif`` (64 x 64) and the gray mask a_gray_mask.png
    (ids ``mask_ids``, default all 0)."""
    folder = root / "train" / "images"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / f"{tile}.tif"), np.full((64, 64, 3), 90, np.uint8))
    ids = np.zeros((64, 64), np.uint8) if mask_ids is None else mask_ids
    cv2.imwrite(str(folder / "a_gray_mask.png"), ids)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Clean raw trees, one damaged copy per fault, and a prepared output folder."""
    base = tmp_path_factory.mktemp("tool_faults")
    potsdam = make_synthetic("potsdam", base / "potsdam_raw", seed=1, num_images=3, size=128)
    isaid = make_synthetic("isaid", base / "isaid_raw", seed=1, num_images=3, size=128)
    prepared = base / "prepared"
    prepare("potsdam", potsdam, prepared, PrepareOptions(patch_size=64, stride=64, workers=1, progress=False))

    orphan_label = copy_tree(potsdam, base / "orphan_label")
    (orphan_label / POTSDAM_IMAGE.format("2_11")).unlink()
    unparsable_tile = copy_tree(potsdam, base / "unparsable_tile")
    (unparsable_tile / "2_Ortho_RGB" / "top_potsdam_2_10_RGB_copy.tif").write_bytes(
        (potsdam / POTSDAM_IMAGE.format("2_10")).read_bytes())
    truncated_tile = copy_tree(potsdam, base / "truncated_tile")
    truncate(truncated_tile / POTSDAM_IMAGE.format("2_10"))
    bomb = copy_tree(isaid, base / "bomb")
    bomb_png(bomb / "train" / "images" / "P0001.png")
    underscore = copy_tree(isaid, base / "underscore")
    shutil.copy(isaid / "train" / "images" / "P0001.png", underscore / "train" / "images" / "P0001_b.png")
    orphan_mask = copy_tree(isaid, base / "orphan_mask")
    (orphan_mask / "val" / "images" / "P0002.png").rename(orphan_mask / "val" / "images" / "P0003.png")
    transparent, opaque = copy_tree(isaid, base / "transparent"), copy_tree(isaid, base / "opaque")
    for root, alpha in ((transparent, 0), (opaque, 255)):
        mask_path = root / "train" / "images" / "P0000_instance_color_RGB.png"
        colours = cv2.imread(str(mask_path))
        rgba = np.dstack([colours, np.full(colours.shape[:2], 255, np.uint8)])
        rgba[:5, :5, 3] = alpha
        cv2.imwrite(str(mask_path), rgba)
    zeroed = copy_tree(prepared, base / "zeroed")
    damaged_patch = sorted((zeroed / "train" / "images").iterdir())[0]
    damaged_patch.write_bytes(bytes(damaged_patch.stat().st_size))

    bad_ids = np.zeros((64, 64), np.uint8)
    bad_ids[:4, :4] = 9
    (base / "empty_set" / "train" / "images").mkdir(parents=True)
    (base / "empty_masks" / "train" / "masks").mkdir(parents=True)
    unlabelled_loveda = base / "unlabelled_loveda"  # as torchgeo's fixtures: 2 x 2 px, every label no-data (0)
    for split in ("Train", "Val"):
        for folder, pixels in (("images_png", np.full((2, 2, 3), 90, np.uint8)),
                               ("masks_png", np.zeros((2, 2), np.uint8))):
            (unlabelled_loveda / split / "Urban" / folder).mkdir(parents=True)
            cv2.imwrite(str(unlabelled_loveda / split / "Urban" / folder / "1.png"), pixels)
    garbage_masks = base / "garbage_masks" / "train" / "masks"
    garbage_masks.mkdir(parents=True)
    (garbage_masks / "top_potsdam_2_10_label.tif").write_bytes(b"not a tiff")
    loveda = make_synthetic("loveda", base / "loveda_raw", seed=1, num_images=4, size=64)
    loveda_jpg = copy_tree(loveda, base / "loveda_jpg")
    png = loveda_jpg / "Train" / "Urban" / "images_png" / "2.png"
    cv2.imwrite(str(png.with_suffix(".jpg")), cv2.imread(str(png)))
    png.unlink()
    loveda_zips = base / "loveda_zips"
    for split in ("Train", "Val"):
        zip_folder(loveda, split, loveda_zips / f"{split}.zip")
    unsafe_zip = copy_tree(loveda_zips, base / "unsafe_zip")
    with zipfile.ZipFile(unsafe_zip / "Train.zip", "a") as archive:
        archive.writestr("../escaped.png", b"outside the folder")
    plain = np.full((64, 64, 3), 90, np.uint8)
    custom_orphan = id_mask_dataset(base / "custom_orphan", {"a.png": write_png(plain), "b.png": write_png(plain)})
    cv2.imwrite(str(custom_orphan.parent / "masks" / "c.png"), np.zeros((64, 64), np.uint8))
    return {
        "loveda": loveda, "loveda_jpg": loveda_jpg, "loveda_zips": loveda_zips, "unsafe_zip": unsafe_zip,
        "custom_orphan": custom_orphan,
        "base": base, "potsdam": potsdam, "isaid": isaid, "prepared": prepared, "orphan_label": orphan_label,
        "unparsable_tile": unparsable_tile, "truncated_tile": truncated_tile, "bomb": bomb, "underscore": underscore,
        "orphan_mask": orphan_mask, "transparent": transparent, "opaque": opaque, "zeroed": zeroed,
        "damaged_patch": damaged_patch, "bad_ids": isprs_split_source(base / "bad_ids", bad_ids),
        "orphan_gray": isprs_split_source(base / "orphan_gray", tile="b"), "empty_set": base / "empty_set",
        "empty_masks": base / "empty_masks", "garbage_masks": base / "garbage_masks",
        "unlabelled_loveda": unlabelled_loveda,
    }


def zip_folder(raw: Path, split: str, archive: Path) -> Path:
    """``archive`` holding ``raw/split`` as ``split/...`` (the layout of LoveDA's own zips)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as opened:
        for path in sorted((raw / split).rglob("*")):
            opened.write(path, str(path.relative_to(raw)))
    return archive


def write_png(pixels: np.ndarray):
    return lambda path: cv2.imwrite(str(path), pixels)


def custom_case(spec: Path, out: Path, *flags: str, code: int, names: tuple[str, ...]) -> Case:
    """A prepare_dataset.py custom run of ``spec`` into ``out``; the spec's folder must stay as it was."""
    argv = [PREPARE, "custom", "--spec", str(spec), "--out", str(out), "--workers", "1", *flags]
    return Case(argv, code, names, unchanged=(spec.parent,))


def prepare_case(dataset: str, raw: Path, out: Path, *flags: str, code: int, names: tuple[str, ...],
                 unchanged: tuple[Path, ...] = ()) -> Case:
    """A prepare_dataset.py run with 64 px patches into ``out`` (which must not be left behind on a failure)."""
    argv = [PREPARE, dataset, "--raw", str(raw), "--out", str(out), "--workers", "1", *flags]
    if "--patch-size" not in flags:
        argv += ["--patch-size", "64", "--stride", "64"]
    return Case(argv, code, names, unchanged=(raw, *unchanged))


def out(d: dict, name: str) -> Path:
    return d["base"] / "out" / name


CASES = {
    "workers_0": lambda d: Case([PREPARE, "potsdam", "--raw", str(d["potsdam"]), "--out", str(out(d, "w0")),
                                 "--workers", "0"], 2, ("--workers", "at least 1"), absent=(out(d, "w0"),)),
    "stride_0": lambda d: Case([PREPARE, "potsdam", "--raw", str(d["potsdam"]), "--out", str(out(d, "s0")),
                                "--stride", "0"], 2, ("--stride",), absent=(out(d, "s0"),)),
    "patch_size_negative": lambda d: Case([PREPARE, "potsdam", "--raw", str(d["potsdam"]), "--out",
                                           str(out(d, "p")), "--patch-size", "-64"], 2, ("--patch-size",),
                                          absent=(out(d, "p"),)),
    "stride_above_patch": lambda d: Case([PREPARE, "potsdam", "--raw", str(d["potsdam"]), "--out",
                                          str(out(d, "sp")), "--patch-size", "64", "--stride", "100"], 1,
                                         ("--stride 100",), absent=(out(d, "sp"),)),
    "synthetic_size_0": lambda d: Case(["tools/make_synthetic_data.py", "potsdam", "--out", str(out(d, "syn0")),
                                        "--size", "0"], 2, ("--size",), absent=(out(d, "syn0"),)),
    "synthetic_one_image": lambda d: Case(["tools/make_synthetic_data.py", "isaid", "--out", str(out(d, "syn1")),
                                           "--num-images", "1"], 2, ("--num-images",), absent=(out(d, "syn1"),)),
    "prepare_window_larger_than_every_image": lambda d: Case(
        [PREPARE, "Potsdam", "--raw", str(d["potsdam"]), "--out", str(out(d, "large")), "--patch-size", "256",
         "--stride", "256", "--workers", "1"], 1,
        ("every potsdam image is smaller than the 256 x 256 window", "--patch-size 128"),
        unchanged=(d["potsdam"],), absent=(out(d, "large"),)),
    "prepare_loveda_without_labelled_pixels": lambda d: Case(
        [PREPARE, "loveda", "--raw", str(d["unlabelled_loveda"]), "--out", str(out(d, "loveda")), "--workers", "1"],
        1, (str(out(d, "loveda") / "train" / "masks"), "none of its 1 masks has a labelled pixel"),
        unchanged=(d["unlabelled_loveda"],)),
    "missing_raw": lambda d: Case([PREPARE, "isaid", "--raw", str(d["base"] / "nothing"), "--out",
                                   str(out(d, "m"))], 1, (str(d["base"] / "nothing"),), absent=(out(d, "m"),)),
    "out_inside_raw": lambda d: Case([PREPARE, "isaid", "--raw", str(d["isaid"]), "--out",
                                      str(d["isaid"] / "patches")], 1, (str(d["isaid"] / "patches"), "inside"),
                                     unchanged=(d["isaid"],)),
    "orphan_label": lambda d: prepare_case("potsdam", d["orphan_label"], out(d, "ol"), code=1,
                                           names=("1 label tile(s) without their image", "top_potsdam_2_11_label.tif",
                                                  "--on-error skip")),
    "orphan_label_skipped": lambda d: prepare_case("potsdam", d["orphan_label"], out(d, "ols"), "--on-error", "skip",
                                                   code=0, names=("top_potsdam_2_11_label.tif", "left out")),
    "unparsable_tile_name": lambda d: prepare_case("potsdam", d["unparsable_tile"], out(d, "ut"), code=1,
                                                   names=("top_potsdam_2_10_RGB_copy.tif", "not potsdam tile names")),
    "truncated_tile": lambda d: prepare_case("potsdam", d["truncated_tile"], out(d, "tt"), code=1,
                                             names=("top_potsdam_2_10_RGB.tif", "cannot be read")),
    "decompression_bomb": lambda d: prepare_case("isaid", d["bomb"], out(d, "bomb"), code=1,
                                                 names=("P0001.png", "70000 x 70000", str(MAX_IMAGE_PIXELS))),
    "isaid_name_with_underscore": lambda d: prepare_case("isaid", d["underscore"], out(d, "us"), code=1,
                                                         names=("P0001_b.png", "not iSAID names")),
    "isaid_mask_without_image": lambda d: prepare_case("isaid", d["orphan_mask"], out(d, "om"), code=1,
                                                       names=("P0002_instance_color_RGB.png", "without their image")),
    "transparent_mask_alpha": lambda d: prepare_case("isaid", d["transparent"], out(d, "ta"), code=1,
                                                     names=("P0000_instance_color_RGB.png", "25 pixels transparent")),
    "opaque_mask_alpha_reported": lambda d: prepare_case("isaid", d["opaque"], out(d, "oa"), code=0,
                                                         names=("1 mask(s) (", "opaque alpha channel, ignored")),
    "other_geometry_refused": lambda d: prepare_case("potsdam", d["potsdam"], d["prepared"], "--patch-size", "64",
                                                     "--stride", "32", code=1,
                                                     names=(GEOMETRY_FILE, "'stride': 64", "'stride': 32"),
                                                     unchanged=(d["prepared"],)),
    "zeroed_patch_rewritten": lambda d: prepare_case("potsdam", d["potsdam"], d["zeroed"], code=0,
                                                     names=(str(d["damaged_patch"]), "written again")),
    "loveda_image_saved_as_jpg": lambda d: prepare_case("loveda", d["loveda_jpg"], out(d, "lj"), code=1,
                                                        names=("1 LoveDA image(s) not saved as .png", "2.jpg",
                                                               "--on-error skip")),
    "loveda_image_saved_as_jpg_skipped": lambda d: prepare_case("loveda", d["loveda_jpg"], out(d, "ljs"), "--on-error",
                                                                "skip", code=0,
                                                                names=("2.jpg", "masks_png/2.png", "left out")),
    "loveda_zips_unpacked": lambda d: Case([PREPARE, "loveda", "--raw", str(d["loveda_zips"]), "--out",
                                            str(out(d, "lz")), "--workers", "1"], 0,
                                           ("Train.zip: unpacked into", "Val.zip: unpacked into", "4 inputs")),
    "loveda_zip_member_outside": lambda d: Case([PREPARE, "loveda", "--raw", str(d["unsafe_zip"]), "--out",
                                                 str(out(d, "uz")), "--workers", "1"], 1,
                                                ("Train.zip", "'../escaped.png'", "outside"),
                                                absent=(d["unsafe_zip"] / "Train", d["base"] / "escaped.png",
                                                        out(d, "uz"))),
    "raw_is_a_zip": lambda d: Case([PREPARE, "loveda", "--raw", str(d["loveda_zips"] / "Val.zip"), "--out",
                                    str(out(d, "rz"))], 1, ("is a zip file", f"--raw {d['loveda_zips']}"),
                                   absent=(out(d, "rz"),)),
    "custom_mask_without_image": lambda d: custom_case(d["custom_orphan"], out(d, "co"), code=1,
                                                       names=("1 mask(s) without their image", "masks/c.png",
                                                              "--on-error skip")),
    "custom_mask_without_image_skipped": lambda d: custom_case(d["custom_orphan"], out(d, "cos"), "--on-error", "skip",
                                                               code=0, names=("masks/c.png", "left out")),
    "split_isprs_ids_outside_classes": lambda d: Case(
        ["tools/split_isprs.py", "--src", str(d["bad_ids"]), "--tar", str(out(d, "ids")), "--set", "train",
         "--patch_width", "32", "--patch_height", "32", "--overlap_area", "0", "--workers", "1"], 1,
        ("a_gray_mask.png", "9 x 16"), unchanged=(d["bad_ids"],)),
    "split_isprs_empty_set": lambda d: Case(
        ["tools/split_isprs.py", "--src", str(d["empty_set"]), "--tar", str(out(d, "es")), "--set", "train"], 1,
        (str(d["empty_set"] / "train" / "images"), "empty set"), absent=(out(d, "es"),)),
    "split_isprs_mask_without_tile": lambda d: Case(
        ["tools/split_isprs.py", "--src", str(d["orphan_gray"]), "--tar", str(out(d, "og")), "--set", "train"], 1,
        ("a_gray_mask.png", "without their .tif tile"), absent=(out(d, "og"),)),
    "split_isaid_workers_0": lambda d: Case(["tools/split_iSAID.py", "--src", str(d["isaid"]), "--workers", "0"], 2,
                                            ("--workers",)),
    "split_isaid_negative_overlap": lambda d: Case(["tools/split_iSAID.py", "--src", str(d["isaid"]),
                                                    "--overlap_area", "-1"], 2, ("--overlap_area",)),
    "split_isaid_patch_width_0": lambda d: Case(["tools/split_iSAID.py", "--src", str(d["isaid"]),
                                                 "--patch_width", "0"], 2, ("--patch_width",)),
    "convert_empty_folder": lambda d: Case(["tools/convert_isprs_mask2graymask.py", "--root_path",
                                            str(d["empty_masks"]), "--save_file_name", "gray", "--phase", "train"],
                                           1, (str(d["empty_masks"] / "train" / "masks"), "no colour masks")),
    "convert_unreadable_mask": lambda d: Case(["tools/convert_isprs_mask2graymask.py", "--root_path",
                                               str(d["garbage_masks"]), "--save_file_name", "gray", "--phase",
                                               "train", "--workers", "1"], 1,
                                              ("top_potsdam_2_10_label.tif", "cannot be decoded")),
}


@pytest.fixture(scope="module")
def outcomes(data):
    return run_cases(case_table(CASES, data))


@pytest.mark.parametrize("name", sorted(CASES))
def test_tool_fault_is_reported_cleanly(outcomes, name):
    assert_clean_failure(outcomes[name])


def test_failed_runs_leave_no_temporary_file(outcomes, data):
    assert not [path for path in data["base"].rglob(f"*{PARTIAL_MARK}*")]


def test_zeroed_patch_is_written_again(outcomes, data):
    assert cv2.imread(str(data["damaged_patch"])).shape == (64, 64, 3)


@pytest.mark.skipif(not full_disk_available(), reason="no private mount namespace with tmpfs here (unshare)")
def test_full_disk_fails_with_the_path_and_the_reason(data):
    keep = data["base"] / "full_disk_after"
    target = data["base"] / "full_disk"
    result = run_on_full_disk(target, [PREPARE, "potsdam", "--raw", str(data["potsdam"]), "--out",
                                       str(target / "out"), "--workers", "1", "--patch-size", "64", "--stride", "64"],
                              keep)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: could not write {target / 'out'}") and "No space left on device" in last_line
    assert not [name for name in folder_digest(keep) if PARTIAL_MARK in name]


def child_pids(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_tool_is_killed(data):
    raw = make_synthetic("potsdam", data["base"] / "large_raw", seed=2, num_images=3, size=768)
    target = data["base"] / "killed"
    tool = subprocess.Popen([sys.executable, PREPARE, "potsdam", "--raw", str(raw), "--out", str(target),
                             "--workers", "2", "--patch-size", "64", "--stride", "16"], cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    workers = []
    while time.monotonic() < deadline and not (len(workers) >= 2 and any(target.rglob("*.png"))):
        time.sleep(0.2)
        workers = child_pids(tool.pid)
    assert len(workers) >= 2, "the pool started"
    os.kill(tool.pid, signal.SIGKILL)
    tool.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(running(pid) for pid in workers):
        time.sleep(0.1)
    assert not [pid for pid in workers if running(pid)], "worker processes outlived the killed tool"


def sixteen_bit(pixels: np.ndarray):
    return lambda path: cv2.imwrite(str(path), pixels.astype(np.uint16))


def test_sixteen_bit_png_within_8_bits_is_prepared_unchanged(data):
    """16-bit images holding 0..255 keep their values (mean 127 stays 127), for a custom dataset and LoveDA."""
    pixels = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pixels[0, 0] = 255
    spec = id_mask_dataset(data["base"] / "sixteen", {"a.png": sixteen_bit(pixels), "b.png": sixteen_bit(pixels)})
    summary = prepare("custom", None, data["base"] / "sixteen_out",
                      PrepareOptions(spec=spec, workers=1, progress=False))
    for written in (data["base"] / "sixteen_out").glob("*/images/*.png"):
        np.testing.assert_array_equal(cv2.imread(str(written)), pixels)
    assert "values all lie in 0..255 and are used as they are" in str(summary)
    loveda = copy_tree(data["loveda"], data["base"] / "loveda_sixteen")
    for image in loveda.rglob("images_png/*.png"):
        cv2.imwrite(str(image), pixels.astype(np.uint16))
    prepare("loveda", loveda, data["base"] / "loveda_sixteen_out", PrepareOptions(workers=1, progress=False))
    written = list((data["base"] / "loveda_sixteen_out").glob("*/images/*.png"))
    assert len(written) == 4
    for path in written:
        np.testing.assert_array_equal(cv2.imread(str(path)), pixels)


def test_wider_sixteen_bit_images_share_one_dataset_scaling(data):
    """LoveDA images in 16 bits, one twice as bright: one range for all (recorded, reported), no per-image stretch."""
    dark = np.tile(np.arange(64, dtype=np.uint16) * 20, (64, 1))[..., None].repeat(3, axis=2)
    loveda = copy_tree(data["loveda"], data["base"] / "loveda_wide")
    for image in loveda.rglob("images_png/*.png"):
        cv2.imwrite(str(image), dark * (2 if image.name == "2.png" else 1))
    out = data["base"] / "loveda_wide_out"
    summary = str(prepare("loveda", loveda, out, PrepareOptions(workers=1, progress=False)))
    assert "scaled per band" in summary and str(out / SCALING_FILE) in summary
    assert '"low"' in (out / SCALING_FILE).read_text()
    darker, brighter = (cv2.imread(str(out / "train" / "images" / f"urban_{stem}.png")).astype(int) for stem in "02")
    assert brighter.mean() > darker.mean() + 40, "the brighter image stays brighter (stretched per image: equal)"

"""predict.py end to end with the real PFNet-R50 and a checkpoint written by save_checkpoint."""
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from eval_fixtures import assert_clear_decisions_match, blocky_image, calibrated_checkpoint
from faults import subprocess_env
from PIL import Image
from script_run import REPO

import predict
from datasets import normalize_image
from evaluation.cli import parse_scales, window_stride
from evaluation.inference import sliding_window_logits
from utils.image_io import parse_bands
from utils.run_lock import LOCK_FILE, lock_folder

NUM_CLASSES = 6


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_and_checkpoint(tmp_path_factory):
    return calibrated_checkpoint(tmp_path_factory.mktemp("ckpt"), NUM_CLASSES)


def expected_logits(model, pixels, window, stride=None, blend="gaussian"):
    """(K, H, W) logits of the plain model: one forward, or sliding windows (predict.py's default Gaussian
    blend) when ``stride`` is given."""
    with torch.no_grad():
        if stride is None:
            return model(normalize_image(pixels)[None])[0]
        return sliding_window_logits(model, normalize_image(pixels)[None], window, stride, blend=blend)[0]


def test_png_whole_image_matches_direct_forward(tmp_path, model_and_checkpoint):
    model, checkpoint = model_and_checkpoint
    pixels = blocky_image(np.random.default_rng(0), 40, 56)
    Image.fromarray(pixels).save(tmp_path / "scene.png")
    predict.main([str(tmp_path / "scene.png"), "--snapshot", str(checkpoint), "--out_dir", str(tmp_path / "out"),
                  "--window", "64", "--device", "cpu"])
    mask = Image.open(tmp_path / "out" / "scene_pred.png")
    assert mask.mode == "P" and mask.size == (56, 40)
    assert_clear_decisions_match(np.asarray(mask), expected_logits(model, pixels, 64))


def test_folder_of_images_with_overlapping_windows(tmp_path, model_and_checkpoint):
    model, checkpoint = model_and_checkpoint
    rng = np.random.default_rng(1)
    folder = tmp_path / "images"
    folder.mkdir()
    tall = blocky_image(rng, 90, 70)
    Image.fromarray(tall).save(folder / "a.png")
    Image.fromarray(tall[:50]).save(folder / "b.jpg", quality=100)
    (folder / "notes.txt").write_text("not an image")
    predict.main([str(folder), "--snapshot", str(checkpoint), "--out_dir", str(tmp_path / "out"),
                  "--window", "64", "--stride", "40", "--batch_size", "3", "--device", "cpu"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_pred.png", "a_pred.qml", "b_pred.png", "b_pred.qml", "predict_summary.json"]
    assert_clear_decisions_match(np.asarray(Image.open(tmp_path / "out" / "a_pred.png")),
                                 expected_logits(model, tall, 64, 40))


def test_refuses_to_overwrite(tmp_path, model_and_checkpoint, capsys):
    _, checkpoint = model_and_checkpoint
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x_pred.png").write_bytes(b"keep me")
    argv = [str(tmp_path / "x.png"), "--snapshot", str(checkpoint), "--out_dir", str(tmp_path / "out"),
            "--window", "32", "--device", "cpu"]
    with pytest.raises(SystemExit):
        predict.main(argv)
    assert "pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "out" / "x_pred.png").read_bytes() == b"keep me"
    predict.main(argv + ["--overwrite"])
    assert Image.open(tmp_path / "out" / "x_pred.png").size == (32, 32)


def test_geotiff_keeps_georeference(tmp_path, model_and_checkpoint):
    rasterio = pytest.importorskip("rasterio", reason="rasterio (optional) not installed")
    from rasterio.transform import Affine

    model, checkpoint = model_and_checkpoint
    pixels = blocky_image(np.random.default_rng(2), 70, 130)  # wider than tall
    transform = Affine(0.05, 0.0, 367000.0, 0.0, -0.05, 5810000.0)  # 5 cm pixels, UTM 33N
    with rasterio.open(tmp_path / "tile.tif", "w", driver="GTiff", height=70, width=130, count=4, dtype="uint8",
                       crs="EPSG:32633", transform=transform) as dst:
        dst.write(pixels.transpose(2, 0, 1), indexes=[1, 2, 3])
        dst.write(np.full((70, 130), 255, dtype=np.uint8), indexes=4)
    predict.main([str(tmp_path / "tile.tif"), "--snapshot", str(checkpoint), "--out_dir", str(tmp_path / "out"),
                  "--window", "64", "--stride", "48", "--device", "cpu"])
    with rasterio.open(tmp_path / "out" / "tile_pred.tif") as result:
        assert result.count == 1 and result.dtypes == ("uint8",)
        assert (result.height, result.width) == (70, 130)
        assert result.crs.to_epsg() == 32633
        assert result.transform == transform
        assert result.colormap(1)[1][:3] == (128, 0, 0)
        assert_clear_decisions_match(result.read(1), expected_logits(model, pixels, 64, 48))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "predict_summary.json", "tile_pred.qml", "tile_pred.tif", "tile_pred.tif.aux.xml"]


@pytest.mark.filterwarnings("ignore:Dataset has no geotransform")
def test_geotiff_png_output_and_band_selection(tmp_path, model_and_checkpoint):
    rasterio = pytest.importorskip("rasterio", reason="rasterio (optional) not installed")
    model, checkpoint = model_and_checkpoint
    pixels = blocky_image(np.random.default_rng(3), 48, 40)
    with rasterio.open(tmp_path / "irrg.tif", "w", driver="GTiff", height=48, width=40, count=3,
                       dtype="uint8") as dst:
        dst.write(pixels[..., ::-1].transpose(2, 0, 1))  # stored in reverse band order
    predict.main([str(tmp_path / "irrg.tif"), "--snapshot", str(checkpoint), "--out_dir", str(tmp_path / "out"),
                  "--window", "64", "--bands", "3,2,1", "--format", "png", "--device", "cpu"])
    assert_clear_decisions_match(np.asarray(Image.open(tmp_path / "out" / "irrg_pred.png")),
                                 expected_logits(model, pixels, 64))


@pytest.mark.filterwarnings("ignore:Dataset has no geotransform")
def test_sixteen_bit_geotiff_follows_the_scaling_rule(tmp_path, model_and_checkpoint):
    rasterio = pytest.importorskip("rasterio", reason="rasterio (optional) not installed")
    model, checkpoint = model_and_checkpoint
    pixels = blocky_image(np.random.default_rng(5), 40, 48)
    # v x 257 spans 0..65535: --scaling 0,65535 maps it back to v exactly (the rule: round(v x 257 / 65535 x 255))
    with rasterio.open(tmp_path / "deep.tif", "w", driver="GTiff", height=40, width=48, count=3,
                       dtype="uint16") as dst:
        dst.write(pixels.transpose(2, 0, 1).astype(np.uint16) * 257)
    predict.main([str(tmp_path / "deep.tif"), "--snapshot", str(checkpoint), "--out_dir", str(tmp_path / "o"),
                  "--window", "64", "--scaling", "0,65535", "--device", "cpu"])
    with rasterio.open(tmp_path / "o" / "deep_pred.tif") as result:
        assert_clear_decisions_match(result.read(1), expected_logits(model, pixels, 64))


def test_missing_rasterio_gives_install_hint(tmp_path, model_and_checkpoint, monkeypatch, capsys):
    _, checkpoint = model_and_checkpoint
    (tmp_path / "t.tif").write_bytes(b"II*\x00")
    monkeypatch.setitem(sys.modules, "rasterio", None)
    with pytest.raises(SystemExit):
        predict.main([str(tmp_path / "t.tif"), "--snapshot", str(checkpoint), "--out_dir", str(tmp_path / "o"),
                      "--device", "cpu"])
    assert "pip install rasterio" in capsys.readouterr().err


def test_dataset_palette_and_class_count_mismatch(tmp_path, model_and_checkpoint, capsys):
    model, checkpoint = model_and_checkpoint
    pixels = blocky_image(np.random.default_rng(4), 32, 48)
    Image.fromarray(pixels).save(tmp_path / "v.png")
    predict.main([str(tmp_path / "v.png"), "--snapshot", str(checkpoint), "--dataset", "Vaihingen",
                  "--out_dir", str(tmp_path / "out"), "--window", "64", "--device", "cpu"])
    mask = Image.open(tmp_path / "out" / "v_pred.png")
    assert mask.getpalette()[:6] == [255, 255, 255, 0, 0, 255]  # impervious surfaces, building
    with pytest.raises(SystemExit):
        predict.main([str(tmp_path / "v.png"), "--snapshot", str(checkpoint), "--dataset", "iSAID",
                      "--out_dir", str(tmp_path / "out16"), "--device", "cpu"])
    assert "trained for 6 classes but 16 are expected" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--scales", "1,a"], "--scales needs comma-separated positive numbers"),
    (["--scales", "0.5,-1"], "--scales needs comma-separated positive numbers"),
    (["--stride", "0"], "--stride must be between 1 and --window (64)"),
    (["--stride", "65"], "--stride must be between 1 and --window (64)"),
    (["--overlap", "1"], "--overlap 1.0 leaves a window step of 0 px"),
    (["--window", "0"], "--window must be a positive number"),
    (["--bands", "1,x,3"], "--bands needs three 1-based band numbers"),
    (["--bands", "1,2"], "--bands needs three 1-based band numbers"),
    (["--batch_size", "0"], "--batch_size must be at least 1"),
], ids=["scales-text", "scales-negative", "stride-0", "stride-over-window", "overlap-1", "window-0",
        "bands-text", "bands-two", "batch-0"])
def test_bad_flags_are_usage_errors_before_anything_is_read(tmp_path, capsys, flags, message):
    # neither the input nor the checkpoint exists: the flag is reported first, nothing is loaded or written
    argv = [str(tmp_path / "missing.png"), "--snapshot", str(tmp_path / "missing.pth"), "--out_dir",
            str(tmp_path / "out"), "--window", "64", "--device", "cpu", *flags]
    with pytest.raises(SystemExit) as raised:
        predict.main(argv)
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert "usage:" in error and message in error
    assert not (tmp_path / "out").exists()


def test_flag_helpers_by_hand():
    assert parse_scales("0.5,1,1.75") == (0.5, 1.0, 1.75)
    assert parse_bands("4,3,2") == (4, 3, 2)
    assert window_stride(896, None, 1 / 3) == 598  # ceil(896 * 2 / 3) = ceil(597.33)
    assert window_stride(64, None, 0) == 64
    assert window_stride(64, None, 16) == 48  # an overlap above 1 is in pixels, as the original eval.py
    assert window_stride(64, 40, 0.9) == 40  # --stride wins over --overlap
    with pytest.raises(ValueError, match="--scales"):
        parse_scales("nan")


def write_images(folder, names, seed=7):
    """64 x 64 blocky PNGs ``folder/{name}.png``; returns their paths."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = [folder / f"{name}.png" for name in names]
    for path in paths:
        Image.fromarray(blocky_image(rng, 64, 64)).save(path)
    return paths


@pytest.mark.workflow
def test_two_runs_into_one_folder_take_turns_and_share_the_summary(tmp_path, model_and_checkpoint):
    _, checkpoint = model_and_checkpoint
    a, b, c = write_images(tmp_path / "images", ["a", "b", "c"])
    out = tmp_path / "out"
    flags = ["--snapshot", str(checkpoint), "--out_dir", str(out), "--window", "64", "--device", "cpu",
             "--lock_timeout", "120"]
    runs = [subprocess.Popen([sys.executable, "predict.py", *map(str, inputs), *flags], cwd=REPO, env=subprocess_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for inputs in ((a, b), (b, c))]  # started together; b is in both
    outputs = [run.communicate(timeout=300) for run in runs]
    for run, (stdout, stderr) in zip(runs, outputs):
        assert run.returncode == 0, stderr
    printed = "".join(stdout for stdout, _ in outputs)
    for image in (a, b, c):  # each input segmented once: the second run found b finished
        assert printed.count(f"{image} -> ") == 1, printed
    summary = json.loads((out / "predict_summary.json").read_text())
    assert sorted(summary["written"] + summary["kept"]) == sorted(map(str, (a, b, c)))
    assert len(summary["runs"]) == 2 and summary["failed"] == []
    assert sorted(path.name for path in out.iterdir()) == ["a_pred.png", "a_pred.qml", "b_pred.png", "b_pred.qml",
                                                            "c_pred.png", "c_pred.qml", "predict_summary.json"]


def test_summary_merges_runs_newest_result_wins(tmp_path, model_and_checkpoint, capsys):
    _, checkpoint = model_and_checkpoint
    a, b = write_images(tmp_path / "images", ["a", "b"])
    out = tmp_path / "out"
    flags = ["--snapshot", str(checkpoint), "--out_dir", str(out), "--window", "64", "--device", "cpu"]
    broken = tmp_path / "images" / "broken.png"
    broken.write_bytes(a.read_bytes()[:200])
    assert predict.main([str(a), str(broken), *flags, "--on-error", "skip"]) == 0
    broken.write_bytes(b.read_bytes())  # repaired
    assert predict.main([str(b), str(broken), *flags]) == 0
    assert "summary of 3 input(s) from 2 run(s)" in capsys.readouterr().out
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["written"] == sorted(map(str, (a, b, broken))) and summary["failed"] == []
    assert [(run["written"], run["failed"]) for run in summary["runs"]] == [(1, 1), (2, 0)]


def test_a_run_waits_for_the_folder_and_goes_on_when_it_is_free(tmp_path, model_and_checkpoint, capsys):
    _, checkpoint = model_and_checkpoint
    (a,) = write_images(tmp_path / "images", ["a"])
    out = tmp_path / "out"
    out.mkdir()
    held = lock_folder(out, "another run", 0, hint="")
    threading.Timer(2.0, held.release).start()
    assert predict.main([str(a), "--snapshot", str(checkpoint), "--out_dir", str(out), "--window", "64",
                         "--device", "cpu", "--lock_timeout", "60"]) == 0
    captured = capsys.readouterr()
    assert f"waiting up to 60 s for another run (pid {os.getpid()}" in captured.err
    assert sorted(path.name for path in out.iterdir()) == ["a_pred.png", "a_pred.qml", "predict_summary.json"]
    assert not (out / LOCK_FILE).exists()


def test_png_mask_gets_a_style_polygons_in_pixels_and_areas_in_pixels(tmp_path, model_and_checkpoint):
    """A non-georeferenced PNG: the style beside the mask, a GeoPackage without CRS in pixel coordinates whose
    areas add up to the image, and an area summary in pixels; a re-run keeps every one of them."""
    import pyogrio

    _, checkpoint = model_and_checkpoint
    Image.fromarray(blocky_image(np.random.default_rng(5), 40, 56)).save(tmp_path / "plain.png")
    flags = [str(tmp_path / "plain.png"), "--snapshot", str(checkpoint), "--out_dir", str(tmp_path / "out"),
             "--window", "64", "--device", "cpu", "--polygons", "--areas"]
    assert predict.main(flags) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "area_summary.csv", "area_summary.json", "plain_areas.csv", "plain_areas.json", "plain_pred.gpkg",
        "plain_pred.png", "plain_pred.qml", "predict_summary.json"]
    mask = np.asarray(Image.open(out / "plain_pred.png"))
    info = pyogrio.read_info(out / "plain_pred.gpkg")
    assert info["crs"] is None and info["features"] > 0
    _, _, _, (class_ids, _, areas) = pyogrio.raw.read(out / "plain_pred.gpkg")
    assert areas.sum() == mask.size and set(class_ids.tolist()) == set(np.unique(mask).tolist())
    summary = json.loads((out / "plain_areas.json").read_text())
    assert summary["unit"] == "px" and [row["pixels"] for row in summary["classes"]] == \
        np.bincount(mask.ravel(), minlength=NUM_CLASSES).tolist()
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir() if path.name.startswith("plain_")}
    assert predict.main(flags) == 0  # finished: every output present, nothing redone
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before

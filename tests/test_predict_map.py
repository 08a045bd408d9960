"""predict.py at map scale as users run it: COG output, resume, --on-error skip, torchrun, georeference, bad input."""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from eval_fixtures import assert_clear_decisions_match, blocky_image, calibrated_checkpoint
from PIL import Image

import predict
from datasets import normalize_image
from evaluation.inference import sliding_window_logits

rasterio = pytest.importorskip("rasterio")
from rasterio.control import GroundControlPoint  # noqa: E402
from rasterio.shutil import copy as copy_raster  # noqa: E402
from rasterio.transform import Affine  # noqa: E402
from rasterio.warp import transform_bounds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 6
# end-to-end runs of the entry points: `make test` runs them, `make test-fast` leaves them out
pytestmark = [pytest.mark.workflow, pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")]


@pytest.fixture(scope="module")
def model_and_checkpoint(tmp_path_factory):
    return calibrated_checkpoint(tmp_path_factory.mktemp("ckpt"), NUM_CLASSES)


def write_geotiff(path: Path, bands_first: np.ndarray, **profile) -> None:
    count, height, width = bands_first.shape
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=count, dtype=bands_first.dtype,
                       **profile) as dataset:
        dataset.write(bands_first)


def run_predict(*arguments: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """predict.py in a fresh interpreter, one thread per process (the same arithmetic in every process)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *launcher, str(REPO / "predict.py"), *arguments], cwd=REPO,
                          capture_output=True, text=True, env=environment, timeout=300)


def tiff_ifds(path: Path) -> list[dict]:
    """Walk a little-endian classic TIFF: per IFD its offset, width, height, tile size, compression, tile offsets."""
    data = path.read_bytes()
    assert data[:4] == b"II*\x00"
    (offset,) = struct.unpack_from("<I", data, 4)
    sizes = {3: ("H", 2), 4: ("I", 4)}
    ifds = []
    while offset:
        (count,) = struct.unpack_from("<H", data, offset)
        tags = {}
        for index in range(count):
            tag, kind, number, value = struct.unpack_from("<HHII", data, offset + 2 + 12 * index)
            if kind in sizes:
                code, size = sizes[kind]
                start = offset + 2 + 12 * index + 8 if number * size <= 4 else value
                tags[tag] = list(struct.unpack_from(f"<{number}{code}", data, start))
        ifds.append({"offset": offset, "width": tags[256][0], "height": tags[257][0],
                     "tile": (tags[322][0], tags[323][0]), "compression": tags[259][0],
                     "tile_offsets": [tile for tile in tags[324] if tile]})
        (offset,) = struct.unpack_from("<I", data, offset + 2 + 12 * count)
    return ifds


def test_geotiff_to_valid_cog_with_probabilities_and_polygons(tmp_path, model_and_checkpoint):
    model, checkpoint = model_and_checkpoint
    pixels = blocky_image(np.random.default_rng(0), 256, 384)
    transform = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4100000.0)
    write_geotiff(tmp_path / "scene.tif", pixels.transpose(2, 0, 1), crs="EPSG:32632", transform=transform)
    assert predict.main([str(tmp_path / "scene.tif"), "--snapshot", str(checkpoint), "--out_dir", str(tmp_path / "out"),
                         "--window", "128", "--stride", "128", "--probabilities", "--polygons", "geojson", "--device",
                         "cpu"]) == 0
    mask_path = tmp_path / "out" / "scene_pred.tif"
    with rasterio.open(mask_path) as result:
        mask = result.read(1)
        assert result.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert result.crs.to_epsg() == 32632 and result.transform == transform and result.nodata == 255
        assert result.colormap(1)[1][:3] == (128, 0, 0) and result.block_shapes == [(256, 256)]
        assert result.overviews(1) == [2]
        overview = result.read(1, out_shape=(128, 192))
    np.testing.assert_array_equal(overview, mask[::2, ::2])  # nearest: overview pixels are class ids
    with torch_no_grad():
        logits = sliding_window_logits(model, normalize_image(pixels)[None], 128, 128)[0]
    assert_clear_decisions_match(mask, logits)
    # the layout a COG reader relies on: ghost header, every IFD before the tile data, overviews smallest
    # first in the file, full resolution last, all tiled 256 x 256 and DEFLATE-compressed
    assert b"LAYOUT=IFDS_BEFORE_DATA" in mask_path.read_bytes()[:400]
    ifds = tiff_ifds(mask_path)
    assert [(ifd["width"], ifd["height"]) for ifd in ifds] == [(384, 256), (192, 128)]
    assert all(ifd["tile"] == (256, 256) and ifd["compression"] == 8 for ifd in ifds)
    assert max(ifd["offset"] for ifd in ifds) < min(min(ifd["tile_offsets"]) for ifd in ifds)
    assert max(ifds[1]["tile_offsets"]) < min(ifds[0]["tile_offsets"])
    # probabilities: one band per class, argmax = mask, each pixel's bands sum to about 255
    with rasterio.open(tmp_path / "out" / "scene_prob.tif") as probabilities:
        assert probabilities.count == NUM_CLASSES and probabilities.crs.to_epsg() == 32632
        values = probabilities.read().astype(int)
    assert abs(values.sum(0) - 255).max() <= NUM_CLASSES
    agree = values.argmax(0) == mask
    assert agree.mean() > 0.99
    # polygons per class, RFC 7946: WGS 84 longitude/latitude (no crs member), covering the mask's extent
    collection = json.loads((tmp_path / "out" / "scene_pred.geojson").read_text())
    assert "crs" not in collection
    assert {feature["properties"]["class_id"] for feature in collection["features"]} == set(np.unique(mask).tolist())
    xs = [point[0] for feature in collection["features"] for ring in feature["geometry"]["coordinates"]
          for point in ring]
    west, _, east, _ = transform_bounds("EPSG:32632", "EPSG:4326", 500000.0, 4100000.0 - 128,
                                                      500000.0 + 0.5 * 384, 4100000.0)
    assert min(xs) == pytest.approx(west, abs=1e-6) and max(xs) == pytest.approx(east, abs=1e-6)
    summary = json.loads((tmp_path / "out" / "predict_summary.json").read_text())
    assert summary["written"] == [str(tmp_path / "scene.tif")] and summary["failed"] == []


def torch_no_grad():
    import torch

    return torch.no_grad()


def test_folder_survives_a_bad_file_and_resumes(tmp_path, model_and_checkpoint, capsys):
    _, checkpoint = model_and_checkpoint
    rng = np.random.default_rng(1)
    folder = tmp_path / "tiles"
    folder.mkdir()
    Image.fromarray(blocky_image(rng, 48, 40)).save(folder / "a.png")
    write_geotiff(folder / "b.tif", blocky_image(rng, 40, 56).transpose(2, 0, 1))
    (folder / "c.tif").write_bytes((folder / "b.tif").read_bytes()[:100])  # truncated
    out = tmp_path / "out"
    flags = ["--snapshot", str(checkpoint), "--out_dir", str(out), "--window", "64", "--device", "cpu"]
    # default: the bad header is found before any mask is written
    first = run_predict(str(folder), *flags)
    assert first.returncode == 2 and "c.tif" in first.stderr and "Traceback" not in first.stderr
    assert not list(out.glob("*_pred.*"))
    # --on-error skip (in this process from here on, to save interpreter starts): the others are written,
    # the bad one is listed at the end
    assert predict.main([str(folder), *flags, "--on-error", "skip"]) == 0
    skipped = capsys.readouterr().out
    assert "1 input(s) failed" in skipped and "c.tif" in skipped
    assert sorted(path.name for path in out.glob("*_pred.*")) == [
        "a_pred.png", "a_pred.qml", "b_pred.qml", "b_pred.tif", "b_pred.tif.aux.xml"]
    before = {path.name: path.stat().st_mtime_ns for path in out.glob("*_pred.*")}
    # the file repaired, a re-run resumes: only c is segmented, a and b are kept untouched
    (folder / "c.tif").unlink()
    write_geotiff(folder / "c.tif", blocky_image(rng, 30, 30).transpose(2, 0, 1))
    assert predict.main([str(folder), *flags]) == 0
    assert "1 written, 2 finished before (kept), 0 failed" in capsys.readouterr().out
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["written"] == [str(folder / "c.tif")] and len(summary["kept"]) == 2
    # a file in the way that is no finished output is refused, named, and left alone
    (out / "a_pred.png").write_bytes(b"not a mask")
    with pytest.raises(SystemExit) as refused:
        predict.main([str(folder), *flags])
    assert refused.value.code == 2 and "a_pred.png exists but is not a finished output" in capsys.readouterr().err
    assert (out / "a_pred.png").read_bytes() == b"not a mask"


def test_two_processes_match_one_byte_for_byte(tmp_path, model_and_checkpoint):
    _, checkpoint = model_and_checkpoint
    rng = np.random.default_rng(2)
    folder = tmp_path / "tiles"
    folder.mkdir()
    for index in range(3):
        Image.fromarray(blocky_image(rng, 40, 48)).save(folder / f"p{index}.png")
    write_geotiff(folder / "g.tif", blocky_image(rng, 48, 40).transpose(2, 0, 1), crs="EPSG:32633",
                  transform=Affine(1, 0, 0, 0, -1, 100))
    flags = ["--snapshot", str(checkpoint), "--window", "32", "--stride", "24", "--device", "cpu"]
    assert predict.main([str(folder), *flags, "--out_dir", str(tmp_path / "one")]) == 0  # one thread, as below
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    double = run_predict(str(folder), *flags, "--out_dir", str(tmp_path / "two"), launcher=launcher)
    assert double.returncode == 0, double.stderr
    names = sorted(path.name for path in (tmp_path / "one").glob("*_pred.*"))
    assert names == ["g_pred.qml", "g_pred.tif", "g_pred.tif.aux.xml", "p0_pred.png", "p0_pred.qml", "p1_pred.png",
                     "p1_pred.qml", "p2_pred.png", "p2_pred.qml"]
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    summary = json.loads((tmp_path / "two" / "predict_summary.json").read_text())
    assert summary["runs"][-1]["processes"] == 2 and len(summary["written"]) == 4


def test_gcps_vrt_png_warning_and_nodata(tmp_path, model_and_checkpoint, capsys):
    _, checkpoint = model_and_checkpoint
    pixels = np.maximum(blocky_image(np.random.default_rng(3), 40, 40), 1).transpose(2, 0, 1)
    gcps = [GroundControlPoint(0, 0, 10.0, 50.0), GroundControlPoint(0, 40, 10.1, 50.0),
            GroundControlPoint(40, 0, 10.0, 49.9)]
    with rasterio.open(tmp_path / "gcp.tif", "w", driver="GTiff", height=40, width=40, count=3, dtype="uint8",
                       nodata=0) as dataset:
        pixels[:, :, :8] = 0  # a nodata border
        dataset.write(pixels)
        dataset.gcps = (gcps, "EPSG:4326")
    copy_raster(tmp_path / "gcp.tif", tmp_path / "mosaic.vrt", driver="VRT")
    flags = ["--snapshot", str(checkpoint), "--window", "64", "--device", "cpu"]
    predict.main([str(tmp_path / "gcp.tif"), str(tmp_path / "mosaic.vrt"), *flags, "--out_dir", str(tmp_path / "o")])
    for name in ("gcp_pred.tif", "mosaic_pred.tif"):
        with rasterio.open(tmp_path / "o" / name) as result:
            assert len(result.gcps[0]) == 3 and result.gcps[1].to_epsg() == 4326
            mask = result.read(1)
        assert (mask[:, :8] == 255).all() and (mask[:, 8:] < NUM_CLASSES).all()
    predict.main([str(tmp_path / "gcp.tif"), *flags, "--format", "png", "--out_dir", str(tmp_path / "p")])
    assert "georeference is dropped" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("bands", "has 3 band(s); --bands 4,1,2 asks for band 4"),
    ("empty", "has no valid pixels"),
    ("out-is-a-file", "cannot create the output folder"),
    ("truncated", "cannot be read"),
])
def test_bad_input_names_the_file_and_writes_nothing(tmp_path, model_and_checkpoint, capsys, case, message):
    _, checkpoint = model_and_checkpoint
    pixels = np.full((3, 16, 16), 7, np.uint8)
    write_geotiff(tmp_path / "t.tif", np.zeros_like(pixels) if case == "empty" else pixels, nodata=0)
    if case == "truncated":
        (tmp_path / "t.tif").write_bytes((tmp_path / "t.tif").read_bytes()[:60])
    out = tmp_path / "out"
    out.mkdir()
    out_dir = out / "masks"
    if case == "out-is-a-file":
        out_dir.write_bytes(b"a file where the output folder should be")
    flags = ["--bands", "4,1,2"] if case == "bands" else []
    with pytest.raises(SystemExit) as raised:
        predict.main([str(tmp_path / "t.tif"), "--snapshot", str(checkpoint), "--out_dir", str(out_dir),
                      "--window", "64", "--device", "cpu", *flags])
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert message in error and ("masks" if case == "out-is-a-file" else "t.tif") in error
    assert "Traceback" not in error
    assert [path.name for path in out.iterdir()] == ([] if case != "out-is-a-file" else ["masks"])

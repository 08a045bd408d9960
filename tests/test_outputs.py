"""Outputs GIS users pick up, as predict.py writes them for a model trained by train.py: class names in the mask
(GDAL category names, QGIS style) and probabilities, GeoPackage / RFC 7946 GeoJSON polygons streamed by strips,
per-class area summaries, a Deepness-profile ONNX file run the way the QGIS plugin runs it, and bad input. The
outputs are written by the entry points' ``main`` in this process; the bad-input cases run predict.py as a
subprocess (what the user sees: the exit status and the last line of stderr)."""
import csv
import ctypes
import glob
import json
import os
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
from script_run import run_script

rasterio = pytest.importorskip("rasterio")
pyogrio = pytest.importorskip("pyogrio")
from rasterio.crs import CRS  # noqa: E402
from rasterio.features import rasterize, shapes  # noqa: E402
from rasterio.io import MemoryFile  # noqa: E402
from rasterio.transform import Affine  # noqa: E402

from utils.vector_io import iter_class_polygons, signed_area  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
UTM = Affine(0.05, 0.0, 366000.0, 0.0, -0.05, 5810000.0)  # 5 cm pixels, UTM zone 33N
NODATA_CLASS = 255


def georeferenced_tile(source, path, crs="EPSG:32633", hole=True):
    """A copy of a raw tile with a CRS and transform and (``hole``) a corner marked invalid by an internal mask."""
    with rasterio.open(source) as tile:
        pixels = tile.read()
    valid = np.full(pixels.shape[1:], 255, np.uint8)
    if hole:
        valid[:40, :72] = 0
    with rasterio.open(path, "w", driver="GTiff", height=pixels.shape[1], width=pixels.shape[2], count=3,
                       dtype="uint8", crs=crs, transform=UTM) as out:
        out.write(pixels)
        out.write_mask(valid)
    return path


def predict_argv(model, out, *inputs, flags=()):
    return ["predict.py", *map(str, inputs), "--snapshot", str(model.checkpoint), "--out_dir", str(out),
            "--window", "128", "--device", "cpu", "--format", "tif", *flags]


def run_main(argv):
    """The command line ``argv`` (``predict.py`` or ``tools/export_onnx.py`` and its flags) through the entry point's
    ``main`` in this process, one intra-op thread as in the subprocesses: its exit status."""
    import torch

    import predict
    from tools import export_onnx

    main = {"predict.py": predict.main, "tools/export_onnx.py": export_onnx.main}[argv[0]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(argv[1:])
    finally:
        torch.set_num_threads(threads)


def gdalinfo(path):
    """``gdalinfo``'s report of a raster (no gdalinfo binary needed: GDALInfo() of the libgdal rasterio bundles)."""
    libraries = glob.glob(os.path.join(os.path.dirname(rasterio.__file__), os.pardir, "rasterio.libs", "libgdal*"))
    if not libraries:
        pytest.skip("no bundled libgdal to run GDALInfo with")
    gdal = ctypes.CDLL(libraries[0])
    gdal.GDALOpen.restype = ctypes.c_void_p
    gdal.GDALOpen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    gdal.GDALInfo.restype = ctypes.c_char_p
    gdal.GDALInfo.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    gdal.GDALClose.argtypes = [ctypes.c_void_p]
    gdal.GDALAllRegister()
    dataset = gdal.GDALOpen(str(path).encode(), 0)
    assert dataset
    report = gdal.GDALInfo(dataset, None).decode()
    gdal.GDALClose(dataset)
    return report


def gdal_category_names(path):
    """Band 1's category names as GDAL reads them (the "Categories:" lines of gdalinfo)."""
    lines = gdalinfo(path).splitlines()
    start = lines.index("  Categories:") + 1
    names = []
    for line in lines[start:]:
        number, _, name = line.strip().partition(": ")
        if not line.startswith("      ") or int(number) != len(names):
            break
        names.append(name)
    return names


@pytest.mark.parametrize("seed", range(12))
def test_strips_merge_to_the_polygons_of_the_whole_mask(seed):
    rng = np.random.default_rng(seed)
    height, width = rng.integers(20, 70, size=2)
    low = rng.integers(0, 4, (height // 5 + 1, width // 4 + 1)).astype(np.uint8)
    mask = np.kron(low, np.ones((5, 4), np.uint8))[:height, :width]
    noise = rng.random(mask.shape) < 0.1  # single pixels: corner-touching outlines
    mask[noise] = rng.integers(0, 4, noise.sum())
    mask[rng.random(mask.shape) < 0.03] = NODATA_CLASS
    whole = sum(1 for _ in shapes(mask, mask=mask != NODATA_CLASS, connectivity=4))
    with MemoryFile() as memory:
        with memory.open(driver="GTiff", height=height, width=width, count=1, dtype="uint8") as dataset:
            dataset.write(mask, 1)
        for strip_rows in (1, 3, 8, 1000):
            with memory.open() as dataset:
                polygons = list(iter_class_polygons(dataset, NODATA_CLASS, strip_rows=strip_rows))
            assert len(polygons) == whole  # merged at every seam: as many polygons as connected regions
            burnt = np.full(mask.shape, NODATA_CLASS, np.uint8)
            for class_id, rings in polygons:
                assert signed_area(rings[0]) > 0 and all(signed_area(hole) < 0 for hole in rings[1:])
                inside = rasterize([({"type": "Polygon", "coordinates": [ring.tolist() for ring in rings]}, 1)],
                                   out_shape=mask.shape, dtype=np.uint8)
                assert (burnt[inside == 1] == NODATA_CLASS).all()  # no overlaps
                burnt[inside == 1] = class_id
            np.testing.assert_array_equal(burnt, mask)


@pytest.mark.workflow
def test_geopackage_area_summary_names_and_style(tmp_path, trained_upernet):
    model = trained_upernet
    tiles = [georeferenced_tile(model.tiles[0], tmp_path / "scene_a.tif"),
             georeferenced_tile(model.tiles[1], tmp_path / "scene_b.tif", hole=False)]
    out = tmp_path / "out"
    assert run_main(predict_argv(model, out, *tiles, flags=("--polygons", "gpkg", "--areas", "--probabilities"))) == 0
    names = list(model.class_names)
    folder_counts = np.zeros(256, np.int64)
    for tile in ("scene_a", "scene_b"):
        with rasterio.open(out / f"{tile}_pred.tif") as mask_file:
            mask, crs, transform = mask_file.read(1), mask_file.crs, mask_file.transform
            colours = mask_file.colormap(1)
        assert crs.to_epsg() == 32633 and transform == UTM
        folder_counts += np.bincount(mask.ravel(), minlength=256)
        valid = mask != NODATA_CLASS
        assert valid.sum() == mask.size - (40 * 72 if tile == "scene_a" else 0)
        # named classes: GDAL category names, the probability bands' descriptions and nodata mask
        assert gdal_category_names(out / f"{tile}_pred.tif") == names
        with rasterio.open(out / f"{tile}_prob.tif") as probabilities:
            assert list(probabilities.descriptions) == names
            np.testing.assert_array_equal(probabilities.dataset_mask() > 0, valid)
        # the QGIS style: a paletted renderer with the mask's colours and the class names
        style = ElementTree.parse(out / f"{tile}_pred.qml").getroot()
        assert style.tag == "qgis"
        renderer = style.find("pipe/rasterrenderer")
        assert renderer.get("type") == "paletted" and renderer.get("band") == "1"
        entries = renderer.findall("colorPalette/paletteEntry")
        assert [(int(e.get("value")), e.get("label")) for e in entries] == list(enumerate(names))
        assert [e.get("color") for e in entries] == ["#{:02x}{:02x}{:02x}".format(*colours[i][:3])
                                                    for i in range(len(names))]
        assert renderer.find("rasterTransparency/singleValuePixelList/pixelListEntry").get("min") == "255"
        # the GeoPackage: source CRS, class id and name, areas adding up to the valid pixels' area
        gpkg = out / f"{tile}_pred.gpkg"
        info = pyogrio.read_info(gpkg)
        assert CRS.from_user_input(info["crs"]) == crs and info["geometry_type"] == "Polygon"
        meta, _, geometry, fields = pyogrio.raw.read(gpkg)
        class_ids, class_names, areas = fields
        assert meta["fields"].tolist() == ["class_id", "class_name", "area"]
        assert set(class_ids.tolist()) == set(np.unique(mask[valid]).tolist())
        assert all(class_names[i] == names[class_ids[i]] for i in range(len(class_ids)))
        assert len(geometry) == sum(1 for _ in shapes(mask, mask=valid, connectivity=4))
        pixel_area = 0.05 * 0.05
        assert areas.sum() == pytest.approx(valid.sum() * pixel_area, rel=1e-9)
        for class_id in set(class_ids.tolist()):
            assert areas[class_ids == class_id].sum() == pytest.approx((mask == class_id).sum() * pixel_area)
        # the tile's area summary: counts computed here from the mask itself
        counts = np.bincount(mask[valid].ravel(), minlength=len(names))
        summary = json.loads((out / f"{tile}_areas.json").read_text())
        assert summary["unit"] == "m2" and summary["valid_pixels"] == valid.sum()
        assert [row["pixels"] for row in summary["classes"]] == counts.tolist()
        assert [row["area"] for row in summary["classes"]] == pytest.approx((counts * pixel_area).tolist())
        assert [row["share"] for row in summary["classes"]] == pytest.approx((counts / valid.sum()).tolist())
        with open(out / f"{tile}_areas.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [(row["class_name"], int(row["pixels"]), row["unit"]) for row in rows] == \
            [(name, int(count), "m2") for name, count in zip(names, counts)]
    folder = json.loads((out / "area_summary.json").read_text())
    assert [row["pixels"] for row in folder["classes"]] == folder_counts[: len(names)].tolist()
    assert folder["valid_area"] == pytest.approx(folder_counts[: len(names)].sum() * 0.05 * 0.05)
    assert (out / "area_summary.csv").read_text().splitlines()[0] == "class_id,class_name,pixels,area,unit,share"


@pytest.mark.workflow
def test_geojson_is_rfc7946(tmp_path, trained_upernet):
    model = trained_upernet
    tile = georeferenced_tile(model.tiles[0], tmp_path / "scene.tif")
    out = tmp_path / "out"
    assert run_main(predict_argv(model, out, tile, flags=("--polygons", "geojson", "--min_area", "0.01"))) == 0
    collection = json.loads((out / "scene_pred.geojson").read_text())
    assert "crs" not in collection and collection["type"] == "FeatureCollection"
    with rasterio.open(out / "scene_pred.tif") as mask_file:
        bounds = rasterio.warp.transform_bounds(mask_file.crs, "EPSG:4326", *mask_file.bounds)
        mask = mask_file.read(1)
    points = np.array([point for feature in collection["features"]
                       for ring in feature["geometry"]["coordinates"] for point in ring])
    assert 13.0 < bounds[0] < bounds[2] < 13.1 and 52.4 < bounds[1] < bounds[3] < 52.5  # UTM 33N near Berlin
    assert (points >= np.array(bounds[:2]) - 1e-6).all() and (points <= np.array(bounds[2:]) + 1e-6).all()  # lon, lat
    for feature in collection["features"]:
        rings = [np.array(ring) for ring in feature["geometry"]["coordinates"]]
        assert signed_area(rings[0]) > 0 and all(signed_area(ring) < 0 for ring in rings[1:])  # right-hand rule
        assert feature["properties"]["area"] >= 0.01
    kept = sum(1 for _, value in shapes(mask, mask=mask != NODATA_CLASS, connectivity=4))
    assert 0 < len(collection["features"]) <= kept


@pytest.mark.workflow
@pytest.mark.parametrize("case", ["unknown-format", "vector-path-is-a-folder", "local-crs", "no-valid-pixels"])
def test_bad_vector_input_one_line_nothing_published(tmp_path, trained_upernet, case):
    model = trained_upernet
    out = tmp_path / "out"
    out.mkdir()
    tile = georeferenced_tile(model.tiles[0], tmp_path / "scene.tif",
                              crs=CRS.from_wkt('LOCAL_CS["site grid",UNIT["metre",1]]') if case == "local-crs"
                              else "EPSG:32633")
    flags = ["--polygons", "gpkg"]
    if case == "unknown-format":
        flags = ["--polygons", "shp"]
    elif case == "vector-path-is-a-folder":
        (out / "scene_pred.gpkg").mkdir()
    elif case == "local-crs":
        flags = ["--polygons", "geojson"]
    elif case == "no-valid-pixels":
        with rasterio.open(tile, "r+") as dataset:
            dataset.write_mask(np.zeros((dataset.height, dataset.width), np.uint8))
    before = sorted(path.name for path in out.iterdir())
    result = run_script(*predict_argv(model, out, tile, flags=flags))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    expected = {"unknown-format": "argument --polygons: invalid choice: 'shp'",
                "vector-path-is-a-folder": "scene_pred.gpkg is a folder",
                "local-crs": "cannot be reprojected to WGS 84 for RFC 7946 GeoJSON; use --polygons gpkg",
                "no-valid-pixels": "has no valid pixels"}[case]
    assert expected in line, result.stderr
    assert sorted(path.name for path in out.iterdir()) == before  # nothing written, nothing partial


def run_like_deepness(path, tiles_nhwc):
    """The plugin's own steps (model_base.py, map_processor_segmentation.py): read the metadata as it does,
    uint8 (N, H, W, C) tiles -> first C channels -> / 255 -> standardise (metadata or mean 0, std 1) -> NCHW,
    zero the outputs under ``seg_thresh``, argmax over the classes."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    metadata = session.get_modelmeta().custom_metadata_map
    assert str(json.loads(metadata["model_type"])).capitalize() == "Segmentor"
    names = json.loads(metadata["class_names"])
    ordered = sorted(names.items(), key=lambda item: int(item[0]))
    assert [int(key) for key, _ in ordered] == list(range(len(ordered)))  # the plugin refuses gaps
    batch, channels, height, width = model_input.shape
    assert isinstance(batch, str) and channels == 3  # dynamic batch, 3 channels
    assert json.loads(metadata["tile_size"]) == width == height and isinstance(width, int)
    mean = np.array(json.loads(metadata.get("standardization_mean", "[0, 0, 0]")), np.float32)
    std = np.array(json.loads(metadata.get("standardization_std", "[1, 1, 1]")), np.float32)
    tiles = np.float32(tiles_nhwc[:, :, :, :channels] * 1.0 / 255.0)
    tiles = np.transpose((tiles - mean) / std, (0, 3, 1, 2))
    (output,) = session.run(None, {model_input.name: tiles})
    assert output.shape[1] == len(ordered)
    output[output < float(json.loads(metadata.get("seg_thresh", "0.5")))] = 0.0
    return np.argmax(output, axis=1), [name for _, name in ordered], output


@pytest.mark.workflow
def test_deepness_profile_runs_as_the_plugin_runs_it(tmp_path, trained_upernet):
    model = trained_upernet
    onnx_path = tmp_path / "qgis.onnx"
    assert run_main(["tools/export_onnx.py", "--snapshot", str(model.checkpoint), "--deepness", "--tile_size", "256",
                     "--resolution_cm", "5", "--out", str(onnx_path)]) == 0
    out = tmp_path / "out"
    tiles = model.tiles[:2]
    assert run_main(["predict.py", *map(str, tiles), "--snapshot", str(model.checkpoint), "--out_dir", str(out),
                     "--window", "256", "--device", "cpu", "--format", "tif", "--probabilities"]) == 0
    pixels = []
    for tile in tiles:
        with rasterio.open(tile) as dataset:
            pixels.append(dataset.read().transpose(1, 2, 0))
    masks, names, probabilities = run_like_deepness(onnx_path, np.stack(pixels))
    assert names == list(model.class_names)
    import onnx

    metadata = {entry.key: entry.value for entry in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(metadata["resolution"]) == 5.0 and json.loads(metadata["tiles_overlap"]) == 15
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)  # softmax probabilities
    for tile, mask in zip(tiles, masks):
        with rasterio.open(out / f"{tile.stem}_pred.tif") as predicted:
            np.testing.assert_array_equal(mask, predicted.read(1))

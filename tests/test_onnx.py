"""ONNX deployment: tools/export_onnx.py, onnxruntime parity for every registered model, predict.py's backend.

Exporting is the cost here (minutes on 2 cores per model), so the PFNet-R50 file is exported once, by the
command line a user types (the tool's ``main``), and every PFNet test reads it; each other registered model is
exported once by the exporter itself.
"""
import contextlib
import io
import json

import numpy as np
import pytest
import torch
from eval_fixtures import assert_clear_decisions_match, blocky_image, calibrated_pfnet
from parity_weights import parity_state_dict
from PIL import Image

import network
import predict
from datasets import normalize_image
from evaluation.dataset_split import dataset_table
from evaluation.inference import sliding_window_logits

onnx = pytest.importorskip("onnx", reason="onnx is in requirements.txt")
pytest.importorskip("onnxruntime", reason="onnxruntime is in requirements.txt")
from evaluation.onnx_backend import OnnxModel  # noqa: E402
from evaluation.onnx_export import export_onnx, onnx_metadata  # noqa: E402
from tools import export_onnx as export_tool  # noqa: E402

NUM_CLASSES = 6
TINY_OPTIONS = {"maxpool_size": 4, "avgpool_size": 4, "edge_points": 16}
# Two input sizes for one exported file: neither a multiple of the other, windows of the pools uneven.
PARITY_SHAPES = ((2, 3, 64, 96), (1, 3, 96, 128))

# end-to-end runs of the entry points: `make test` runs them, `make test-fast` leaves them out
pytestmark = [pytest.mark.workflow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def pfnet_export(tmp_path_factory, one_thread):
    """A Vaihingen PFNet-R50 checkpoint in the original PFSegNets format and its export by the documented command
    (``tools/export_onnx.py --snapshot ... --dataset Vaihingen --out ...``, through the tool's ``main`` in this
    process): (model, checkpoint, ONNX path, what the tool printed).

    The original format: DataParallel ``module.`` prefixes, ``mean_iu`` a numpy float64, no saved config (so the
    model options are the registry's, as for an official snapshot).
    """
    folder = tmp_path_factory.mktemp("onnx")
    model = calibrated_pfnet(NUM_CLASSES)
    checkpoint = folder / "vaihingen_r50.pth"
    torch.save({"state_dict": {f"module.{key}": value for key, value in model.state_dict().items()},
                "optimizer": {}, "epoch": 199, "mean_iu": np.float64(0.704), "command": "python train.py ..."},
               checkpoint)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert export_tool.main(["--snapshot", str(checkpoint), "--dataset", "Vaihingen", "--out",
                                 str(folder / "model.onnx")]) == 0
    return model, checkpoint, folder / "model.onnx", stdout.getvalue()


def assert_parity(model: torch.nn.Module, onnx_model: OnnxModel, seed: int = 0) -> None:
    """onnxruntime logits within 1e-4 x max|logit| of PyTorch, and >= 99.9 % equal argmax, at both sizes."""
    generator = torch.Generator().manual_seed(seed)
    for shape in PARITY_SHAPES:
        images = torch.randn(shape, generator=generator)
        with torch.no_grad():
            expected = model(images)
        logits = onnx_model(images)
        assert logits.shape == expected.shape and logits.dtype == torch.float32
        bound = 1e-4 * float(expected.abs().max())
        assert float((logits - expected).abs().max()) <= bound
        assert (logits.argmax(1) == expected.argmax(1)).float().mean() >= 0.999


def test_export_tool_writes_a_dynamic_float32_file_with_the_checkpoints_facts(pfnet_export):
    _, _, path, stdout = pfnet_export
    assert f"wrote {path}" in stdout
    assert "maxpool_size 14 (registry default)" in stdout  # resolved as eval.py / predict.py resolve them
    proto = onnx.load(path)
    assert max(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")) >= 18
    (graph_input,), (graph_output,) = proto.graph.input, proto.graph.output
    assert (graph_input.name, graph_output.name) == ("images", "logits")
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[1].dim_value == 3 and all(dims[axis].dim_param for axis in (0, 2, 3))  # N, H, W symbolic
    assert all(init.data_type == onnx.TensorProto.FLOAT for init in proto.graph.initializer
               if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    names, palette = dataset_table("Vaihingen")
    assert metadata["num_classes"] == "6" and metadata["arch"] == "pfnet_r50"
    assert json.loads(metadata["class_names"]) == names
    assert json.loads(metadata["palette"]) == palette.tolist()
    assert json.loads(metadata["model_options"]) == network.model_defaults("pfnet_r50")
    assert json.loads(metadata["input_mean"]) == [0.485, 0.456, 0.406]
    assert json.loads(metadata["input_std"]) == [0.229, 0.224, 0.225]


def test_saved_classes_come_from_the_checkpoint_else_its_saved_dataset():
    from evaluation.restore import saved_class_table

    names, palette = saved_class_table({"config": {"dataset": "Vaihingen"}})
    # the ISPRS classes and colours (ISPRS 2D semantic labeling benchmark), written out independently
    assert names == ["impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter"]
    assert palette.tolist() == [[255, 255, 255], [0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]]
    names, palette = saved_class_table({"class_names": ["road", "roof"], "palette": [[1, 2, 3], [4, 5, 6]],
                                        "config": {"dataset": "custom"}})
    assert names == ["road", "roof"] and palette.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert saved_class_table({"config": {"dataset": "custom"}}) is None  # a spec's classes live in the spec
    assert saved_class_table({}) is None


def test_pfnet_onnxruntime_parity_at_two_sizes(pfnet_export):
    model, _, path, _ = pfnet_export
    onnx_model = OnnxModel(path, threads=1)
    assert onnx_model.num_classes == NUM_CLASSES and onnx_model.palette.shape == (NUM_CLASSES, 3)
    assert_parity(model, onnx_model)


# One model per baseline family runs by default (an export costs 30-100 s on 2 cores); the other depths and
# strides of the same code are the `slow` variants (make test-all). The UperNet family's export is checked by
# default in test_cross_backend.py (UperNet-R18 trained by train.py, exported by the tool, the same bounds on
# windows of two sizes and a batch of 3), so its parity-weights case here is `slow` too.
FAMILY_REPRESENTATIVES = ("pspnet_d16_r50", "deeplabv3plus_r50")


@pytest.mark.parametrize("arch", [
    name if name in FAMILY_REPRESENTATIVES else pytest.param(name, marks=pytest.mark.slow)
    for name in network.list_models() if name != "pfnet_r50"])
def test_every_other_registered_model_exports_with_parity(tmp_path, arch):
    entry = network.model_entry(arch)
    options = {name: value for name, value in TINY_OPTIONS.items() if name in entry.defaults}
    model = network.get_model(arch, NUM_CLASSES, pretrained=None, **options).eval()
    model.load_state_dict(parity_state_dict(model.state_dict()))
    metadata = onnx_metadata(num_classes=NUM_CLASSES, arch=arch, options=options, snapshot="none.pth")
    export_onnx(model, tmp_path / f"{arch}.onnx", metadata)
    assert_parity(model, OnnxModel(tmp_path / f"{arch}.onnx", threads=1))


def test_predict_onnxruntime_backend_matches_pytorch(tmp_path, pfnet_export):
    model, _, path, _ = pfnet_export
    rasterio = pytest.importorskip("rasterio", reason="rasterio (optional) not installed")
    from rasterio.transform import Affine

    rng = np.random.default_rng(5)
    folder = tmp_path / "images"
    folder.mkdir()
    scene = blocky_image(rng, 90, 70)  # windows of 64 every 40 px overlap, the last one shifted back
    Image.fromarray(scene).save(folder / "scene.png")
    tile = blocky_image(rng, 70, 130)
    transform = Affine(0.09, 0.0, 496000.0, 0.0, -0.09, 5420000.0)
    with rasterio.open(folder / "tile.tif", "w", driver="GTiff", height=70, width=130, count=3, dtype="uint8",
                       crs="EPSG:32632", transform=transform) as dst:
        dst.write(tile.transpose(2, 0, 1))
    assert predict.main([str(folder), "--backend", "onnxruntime", "--onnx", str(path), "--out_dir",
                         str(tmp_path / "out"), "--window", "64", "--stride", "40", "--batch_size", "2"]) == 0
    with torch.no_grad():
        # predict.py's default Gaussian blend of the windows, computed with the PyTorch model
        scene_logits = sliding_window_logits(model, normalize_image(scene)[None], 64, 40, blend="gaussian")[0]
        tile_logits = sliding_window_logits(model, normalize_image(tile)[None], 64, 40, blend="gaussian")[0]
    mask = Image.open(tmp_path / "out" / "scene_pred.png")
    assert mask.getpalette()[:6] == [255, 255, 255, 0, 0, 255]  # the Vaihingen palette from the file's metadata
    assert_clear_decisions_match(np.asarray(mask), scene_logits)
    with rasterio.open(tmp_path / "out" / "tile_pred.tif") as written:
        assert written.crs.to_epsg() == 32632 and written.transform == transform
        assert_clear_decisions_match(written.read(1), tile_logits)


def test_export_tool_refuses_bad_flags_before_reading_the_checkpoint(tmp_path, pfnet_export, capsys):
    _, checkpoint, _, _ = pfnet_export
    existing = tmp_path / "kept.onnx"
    existing.write_bytes(b"keep me")
    cases = [
        (["--snapshot", str(checkpoint), "--out", str(existing)], "exists; pass --overwrite"),
        (["--snapshot", str(checkpoint), "--out", str(tmp_path / "m.pt")], "--out must name a .onnx file"),
        (["--snapshot", str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--opset", "17"], "--opset must be 18"),
        (["--snapshot", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "m.onnx")], "checkpoint not found"),
        (["--snapshot", str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--dataset", "iSAID"],
         "trained for 6 classes but 16 are expected"),
    ]
    for flags, message in cases:
        with pytest.raises(SystemExit) as raised:
            export_tool.main(flags)
        assert raised.value.code == 2
        assert message in capsys.readouterr().err
    assert existing.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.onnx"]


def test_predict_backend_flags_are_checked_first(tmp_path, pfnet_export, capsys):
    _, checkpoint, path, _ = pfnet_export
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    cases = [
        (["--backend", "onnxruntime"], "--backend onnxruntime needs --onnx FILE"),
        (["--backend", "onnxruntime", "--onnx", str(path), "--snapshot", str(checkpoint)], "drop one of them"),
        (["--onnx", str(path)], "add --backend onnxruntime"),
        ([], "--snapshot is required"),
        (["--backend", "onnxruntime", "--onnx", str(checkpoint)], "is not a model onnxruntime can load"),
        (["--backend", "onnxruntime", "--onnx", str(path), "--dataset", "iSAID"], "class-count mismatch"),
    ]
    for flags, message in cases:
        with pytest.raises(SystemExit) as raised:
            predict.main([str(image), "--out_dir", str(tmp_path / "out"), *flags])
        assert raised.value.code == 2
        assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("out/*_pred.*"))  # no mask written


def test_fp16_export_keeps_a_float32_interface(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, NUM_CLASSES, 1)).eval()
    metadata = onnx_metadata(num_classes=NUM_CLASSES, arch="tiny", options={}, snapshot="tiny.pth")
    export_onnx(model, tmp_path / "half.onnx", metadata, fp16=True)
    proto = onnx.load(tmp_path / "half.onnx")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {init.data_type for init in proto.graph.initializer if len(init.dims) == 4} == {onnx.TensorProto.FLOAT16}
    images = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        expected = model(images)
    logits = OnnxModel(tmp_path / "half.onnx", threads=1)(images)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected, rtol=0, atol=2e-2 * float(expected.abs().max()))

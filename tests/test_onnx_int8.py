"""int8 ONNX for CPUs: ``tools/export_onnx.py --int8 --calibration``, on PFNet-R50 trained by train.py.

The file is written by the command line a user types (the tool's ``main``), calibrated on 8 windows of the
prepared training patches; its masks are compared with the float32 model's (the eager checkpoint, which the
float32 ONNX file matches within 1e-4: tests/test_cross_backend.py) on windows of the held-out tile, and
predict.py runs it unchanged. The bad-flag cases run the tool as a subprocess: its usage line names the script.
The agreement bound is stated once, in docs/deployment.md ("int8"), with the figures it was set from.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from script_run import run_script
from trained_models import WINDOWS, agreement, read_raster, restore, windows

onnx = pytest.importorskip("onnx", reason="onnx is in requirements.txt")
pytest.importorskip("onnxruntime", reason="onnxruntime is in requirements.txt")
import predict  # noqa: E402
from evaluation.onnx_backend import OnnxModel  # noqa: E402
from tools import export_onnx as export_tool  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Ops of the point-flow selection path (top-k, index arithmetic, gathers and scatters, sigmoid, softmax) that
# must see float32 inputs, never a dequantised int8 tensor.
SELECTION_OPS = {"TopK", "GatherElements", "ScatterElements", "Exp", "Neg", "Reciprocal", "Softmax", "Floor", "Mod"}

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.workflow]


def documented_int8_agreement() -> float:
    """The smallest share of equal mask pixels int8 must reach, from docs/deployment.md's int8 section."""
    text = (REPO / "docs" / "deployment.md").read_text()
    section = text.split("## int8 for CPUs", 1)[1].split("\n## ", 1)[0]
    return float(re.search(r"test bound: ≥ *([0-9.]+) *%", section).group(1)) / 100


@pytest.fixture(scope="module")
def int8_export(trained_pfnet, reference_data, tmp_path_factory, one_thread):
    """(TrainedModel, the int8 file, the tool's stdout), exported by the command line a user types (the tool's
    ``main``, in this process) with 8 calibration windows."""
    _, _, root = reference_data
    path = tmp_path_factory.mktemp("int8") / "pfnet_int8.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert export_tool.main(["--snapshot", str(trained_pfnet.checkpoint), "--out", str(path), "--int8",
                                 "--calibration", str(root / "train" / "images"), "--calibration_windows", "8"]) == 0
    return trained_pfnet, path, stdout.getvalue()


def test_int8_file_records_its_precision_and_calibration_and_keeps_the_selection_in_float(int8_export):
    _, path, stdout = int8_export
    assert f"wrote {path}" in stdout and "calibrating on 8 windows" in stdout
    proto = onnx.load(path)
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert metadata["precision"] == "int8" and metadata["arch"] == "pfnet_r50" and metadata["num_classes"] == "6"
    calibration = json.loads(metadata["calibration"])
    assert calibration["windows"] == 8 and calibration["seed"] == 0 and calibration["images"] == 12
    producers = {output: node.op_type for node in proto.graph.node for output in node.output}
    quantized = [node for node in proto.graph.node if node.op_type == "Conv"
                 and producers.get(node.input[0]) == "DequantizeLinear"]
    assert len(quantized) >= 50  # the trunk's and heads' convolutions run in int8
    dequantized_into_selection = [node.name for node in proto.graph.node if node.op_type in SELECTION_OPS
                                  and any(producers.get(name) == "DequantizeLinear" for name in node.input)]
    assert not dequantized_into_selection
    # The convolutions computing the edge logits (top-k) and the point matcher's logits (sigmoid) run in float32:
    # float weights, no quantised output.
    consumers = {name: node.op_type for node in proto.graph.node for name in node.input}
    initializers = {tensor.name for tensor in proto.graph.initializer}
    scoring = []
    for node in proto.graph.node:
        if node.op_type in ("TopK", "Exp"):
            producer = next(other for other in proto.graph.node if node.input[0] in other.output)
            conv = next(other for other in proto.graph.node if producer.input[0] in other.output)
            scoring.append(conv)
    assert len(scoring) == 6 and all(conv.op_type == "Conv" for conv in scoring)
    assert all(conv.input[1] in initializers and consumers.get(conv.output[0]) != "QuantizeLinear" for conv in scoring)
    assert sorted(conv.name for conv in scoring) == calibration["float_nodes"]
    assert {"TopK", "GatherElements", "ScatterElements"} <= {node.op_type for node in proto.graph.node}


def test_int8_masks_agree_with_float32_on_windows_of_the_held_out_tile(int8_export):
    reference, path, _ = int8_export
    model, _ = restore(reference.checkpoint)
    int8 = OnnxModel(path)
    bound = documented_int8_agreement()
    measured = []
    with torch.no_grad():
        for size in WINDOWS:
            for window in windows(reference.tiles[0], size):
                measured.append(agreement(model(window), int8(window))[1])
    print("int8 mask agreement per window: " + ", ".join(f"{value:.4f}" for value in measured))
    assert len(measured) >= 10 and min(measured) >= bound, measured


def test_predict_runs_the_int8_file_unchanged(int8_export, tmp_path):
    reference, path, _ = int8_export
    masks = {}
    for backend, model_flags in (("pytorch", ["--snapshot", str(reference.checkpoint)]),
                                 ("onnxruntime", ["--onnx", str(path)])):
        out = tmp_path / backend
        assert predict.main([str(reference.tiles[0]), "--backend", backend, *model_flags, "--window", "128",
                             "--out_dir", str(out)]) == 0
        masks[backend] = read_raster(out / f"{reference.tiles[0].stem}_pred.tif")
    assert masks["onnxruntime"].shape == (1, 256, 256)
    assert np.mean(masks["pytorch"] == masks["onnxruntime"]) >= documented_int8_agreement()


@pytest.mark.parametrize("flags, message", [
    (["--int8"], "--int8 needs --calibration DIR"),
    (["--int8", "--calibration", "{empty}"], "--calibration: no images"),
    (["--calibration", "{empty}"], "--calibration is read only with --int8"),
])
def test_bad_int8_flags_are_one_usage_error_before_anything_is_read(flags, message, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "model.onnx"
    flags = [flag.format(empty=empty) for flag in flags]
    result = run_script("tools/export_onnx.py", "--snapshot", str(tmp_path / "missing.pth"), "--out", str(out),
                        *flags, timeout=120)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("export_onnx.py: error: --")
    assert not out.exists() and not list(tmp_path.glob(".model.onnx*"))

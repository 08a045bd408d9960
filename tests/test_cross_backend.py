"""One trained model, every backend: the eager model against ``optimize_for_inference``, ``torch.compile``, ONNX
float32 and ONNX float16, on models trained by train.py (tests/trained_models.py), at several window offsets of
a real-format tile, two window sizes and batches of 1 and 3; then predict.py's two backends on whole tiles.

The agreement bounds are read from the table in docs/deployment.md ("Agreement between backends"), where they
are stated once; the figures measured on them are in bench/RESULTS.md.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from trained_models import WINDOWS, agreement, read_raster, restore, windows

import network
import predict
from network.point_flow import PointFlowModule

pytest.importorskip("onnxruntime", reason="onnxruntime is in requirements.txt")
from evaluation.onnx_backend import OnnxModel  # noqa: E402
from evaluation.onnx_export import export_onnx, onnx_metadata  # noqa: E402
from tools import export_onnx as export_tool  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("optimize_for_inference", "torch.compile", "ONNX fp32", "ONNX fp16")

# end-to-end runs of the entry points: `make test` runs them, `make test-fast` leaves them out
pytestmark = [pytest.mark.workflow, pytest.mark.usefixtures("one_thread")]


def documented_bounds() -> dict[tuple[str, str], tuple[float, float]]:
    """``{(backend, arch): (max |Δlogit| / max |logit|, smallest argmax agreement)}`` from docs/deployment.md."""
    text = (REPO / "docs" / "deployment.md").read_text()
    section = text.split("## Agreement between backends", 1)[1].split("\n## ", 1)[0]
    bounds = {}
    for row in re.findall(r"^\| *`?([^|`]+?)`? *\| *`([a-z0-9_]+)` *\| *([^|]+?) *\| *≥ *([0-9.]+) *% *\|",
                          section, flags=re.M):
        backend, arch, relative, agreement = row
        bounds[backend, arch] = (float(relative.replace("×", "").replace(" ", "")), round(float(agreement) / 100, 6))
    return bounds


def batches(tiles: tuple[Path, ...]) -> list[torch.Tensor]:
    """Every window of the test tile at both sizes (batch 1), and a batch of 3 windows from two tiles."""
    singles = [window for size in WINDOWS for window in windows(tiles[0], size)]
    mixed = torch.cat([windows(tiles[1], 128)[0], *windows(tiles[0], 128)[2:4]])
    return singles + [mixed]


def edge_point_ties(model: torch.nn.Module, batch: torch.Tensor) -> bool:
    """Whether the eager model's edge points of ``batch`` include a near-tie at the top-k boundary.

    The edge points are the top-k cells of an edge-logit map. Where the k-th and the (k+1)-th largest logits are
    equal (a saturated matching map makes the edge head's input exactly 0, and its output constant inside the
    map) or within rounding of each other (relative 1e-5), which of them is chosen is up to the top-k
    implementation and the last bits of the arithmetic: torch's CPU top-k, onnxruntime's TopK, another CPU
    or a folded batch norm may each take another one of the tied cells (docs/deployment.md).
    """
    ties = []

    def check(module, _, edge_logits):
        flat = edge_logits.flatten(1).double()
        if flat.shape[1] > module.edge_points:
            ranked = flat.sort(dim=1, descending=True).values
            kth, next_one = ranked[:, module.edge_points - 1], ranked[:, module.edge_points]
            ties.append(bool(((kth - next_one) <= 1e-5 * kth.abs().clamp_min(1e-30)).any()))

    hooks = [module.edge_final.register_forward_hook(lambda _, inputs, out, module=module: check(module, inputs, out))
             for module in model.modules() if isinstance(module, PointFlowModule)]
    with torch.no_grad():
        model(batch)
    for hook in hooks:
        hook.remove()
    return any(ties)


def export_fp32(reference, folder: Path) -> Path:
    """``tools/export_onnx.py --snapshot CHECKPOINT --out FILE``, the command a user runs (no dataset flag), through
    the tool's ``main`` in this process."""
    path = folder / "fp32.onnx"
    assert export_tool.main(["--snapshot", str(reference.checkpoint), "--out", str(path)]) == 0
    return path


@pytest.fixture(scope="module", params=["trained_pfnet", "trained_upernet"])
def trained(request, tmp_path_factory):
    """(TrainedModel, eager model, {backend: callable}, float32 ONNX file) for each trained reference model.

    ONNX float32 is exported by the command line a user types (the tool's main); float16 by the exporter itself
    (``fp16=True``).
    """
    reference = request.getfixturevalue(request.param)
    model, restored = restore(reference.checkpoint)
    folder = tmp_path_factory.mktemp(f"onnx_{reference.arch}")
    fp32 = export_fp32(reference, folder)
    metadata = onnx_metadata(num_classes=restored.num_classes, arch=restored.resolved.arch,
                             options=restored.resolved.options, snapshot=reference.checkpoint)
    export_onnx(model, folder / "fp16.onnx", metadata, fp16=True)
    backends = {"optimize_for_inference": network.optimize_for_inference(copy.deepcopy(model)),
                "ONNX fp32": OnnxModel(fp32), "ONNX fp16": OnnxModel(folder / "fp16.onnx")}
    return reference, model, backends, fp32


def test_the_bounds_table_names_every_backend_and_model():
    bounds = documented_bounds()
    for backend in BACKENDS:
        assert any(key[0] == backend for key in bounds), f"docs/deployment.md states no bound for {backend}"
    for arch in ("pfnet_r50", "upernet_r18"):
        assert ("ONNX fp32", arch) in bounds and bounds["ONNX fp32", arch][0] <= 1e-4


def test_trained_pfnet_has_certainties_below_onnxruntimes_sigmoid_floor(trained_pfnet):
    """The condition that hid the ONNX divergence from random weights: without it the parity tests lose their bite."""
    model, _ = restore(trained_pfnet.checkpoint)
    smallest = []
    for module in model.modules():
        if isinstance(module, PointFlowModule):
            module.point_matcher.register_forward_hook(lambda _, __, out: smallest.append(float(out.min())))
    with torch.no_grad():
        for window in windows(trained_pfnet.tiles[0], 128):
            model(window)
    assert min(smallest) < 1e-8


@pytest.mark.parametrize("backend", ["optimize_for_inference", "ONNX fp32", "ONNX fp16"])
def test_backend_agrees_with_the_eager_model_at_every_offset_size_and_batch(trained, backend):
    """Every batch within the documented bounds; a batch whose edge points hold a top-k tie (see
    :func:`edge_point_ties`) only within the argmax bound, and at least 5 offsets at each size must be tie-free."""
    reference, model, backends, _ = trained
    relative_bound, agreement_bound = documented_bounds()[backend, reference.arch]
    measured = []
    with torch.no_grad():
        for batch in batches(reference.tiles):
            tied = edge_point_ties(model, batch)
            measured.append((tuple(batch.shape), tied, *agreement(model(batch), backends[backend](batch))))
    print(f"{backend} {reference.arch}: " + ", ".join(f"{shape[0]}x{shape[-1]}{' tie' if tied else ''}: "
                                                      f"{rel:.2g} {agree:.4f}" for shape, tied, rel, agree in measured))
    for shape, tied, relative, agree in measured:
        assert tied or relative <= relative_bound, (shape, relative, measured)
        assert agree >= agreement_bound, (shape, agree, measured)
    for size in WINDOWS:
        assert sum(not tied for shape, tied, _, _ in measured if shape[-1] == size) >= 5, measured


def test_torch_compile_agrees_with_the_eager_model_at_every_offset(trained_upernet):
    """One model (compiling costs tens of seconds per input shape): batch 1 at every offset of one window size."""
    model, _ = restore(trained_upernet.checkpoint)
    compiled = torch.compile(copy.deepcopy(model), dynamic=False)
    relative_bound, agreement_bound = documented_bounds()["torch.compile", "upernet_r18"]
    with torch.no_grad():
        for window in windows(trained_upernet.tiles[0], 128):
            relative, agree = agreement(model(window), compiled(window))
            assert relative <= relative_bound and agree >= agreement_bound, (relative, agree)


def test_predict_onnxruntime_backend_equals_pytorch_on_whole_tiles(trained, tmp_path):
    """predict.py's command line as a user types it (its main, in this process), 128 px windows blended: the two
    backends' masks and uint8 class probabilities on every whole tile."""
    reference, _, _, onnx_path = trained
    tiles = reference.tiles[0].parent
    outputs = {}
    for backend, model_flags in (("pytorch", ["--snapshot", str(reference.checkpoint)]),
                                 ("onnxruntime", ["--onnx", str(onnx_path)])):
        out = tmp_path / backend
        assert predict.main([str(tiles), "--backend", backend, *model_flags, "--window", "128", "--probabilities",
                             "--out_dir", str(out)]) == 0
        outputs[backend] = {tile.name: (read_raster(out / f"{tile.stem}_pred.tif"),
                                        read_raster(out / f"{tile.stem}_prob.tif")) for tile in reference.tiles}
    for name, (mask, probabilities) in outputs["pytorch"].items():
        other_mask, other_probabilities = outputs["onnxruntime"][name]
        assert mask.shape == other_mask.shape == (1, 256, 256)
        assert (mask == other_mask).mean() >= 0.999, (name, (mask == other_mask).mean())
        close = np.abs(probabilities.astype(int) - other_probabilities.astype(int)) <= 1  # uint8 rounding
        assert close.mean() >= 0.999, (name, close.mean())


# A third training run and a third PFNet export (2 minutes on 2 cores): `slow`. Each of its checks runs by default
# elsewhere: the agreement of PFNet-R50's float32 export with the eager model at every offset in
# test_backend_agrees_with_the_eager_model_at_every_offset_size_and_batch[trained_pfnet-ONNX fp32] (the dataset
# changes only the class table), and a custom-dataset checkpoint exported with no dataset flag carrying its own
# class names in test_custom_dataset.py::test_export_of_a_custom_dataset_checkpoint_needs_no_dataset_flag.
@pytest.mark.slow
def test_custom_dataset_checkpoint_exports_without_a_dataset_flag_and_agrees(trained_custom, tmp_path):
    """A checkpoint of a custom dataset: exported with no dataset flag, it carries the custom class names and
    agrees with the eager model at every offset."""
    onnx_model = OnnxModel(export_fp32(trained_custom, tmp_path))
    assert tuple(onnx_model.class_names) == trained_custom.class_names
    model, _ = restore(trained_custom.checkpoint)
    relative_bound, agreement_bound = documented_bounds()["ONNX fp32", "pfnet_r50"]
    with torch.no_grad():
        for window in windows(trained_custom.tiles[0], 128):
            relative, agree = agreement(model(window), onnx_model(window))
            assert agree >= agreement_bound
            assert relative <= relative_bound or edge_point_ties(model, window), relative

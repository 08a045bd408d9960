"""UperNet, PSPNet and DeepLabV3+: parity with the original on fixtures U and P, the variants' structure
(checked against the original's code: key counts and parameter counts), and the shared harness pieces."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from parity_case import BASELINE_CASES, load_baseline_case, parity_bound, read_key_table
from parity_weights import imagenet_file_state, parity_state_dict
from torch.nn.modules.batchnorm import _BatchNorm

import network
from network.activation_checkpoint import CheckpointedSequential
from network.deeplabv3plus import DeepLabV3Plus
from network.options import resolve_model_options
from network.pspnet import PSPNet
from network.upernet import UperNet

pytestmark = pytest.mark.usefixtures("one_thread")


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module", params=sorted(BASELINE_CASES))
def baseline_case(request):
    model, images, reference, config = load_baseline_case(request.param)
    with torch.no_grad():
        logits = model(images)
    return {"name": request.param, "model": model, "logits": logits, "reference": reference, "config": config}


def test_keys_order_shapes_and_counts_equal_original(baseline_case):
    state = baseline_case["model"].state_dict()
    ours = [(key, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for key, t in state.items()]
    assert ours == read_key_table(f"{baseline_case['name']}_keys.tsv")
    assert len(state) == baseline_case["config"]["num_keys"]
    assert count_parameters(baseline_case["model"]) == baseline_case["config"]["num_params"]


def test_parity_logits_and_argmax(baseline_case):
    reference, logits = baseline_case["reference"], baseline_case["logits"]
    # The README's tolerance: 1e-4 x max|logits| of the full reference (the sub-sampled grid's is a little less).
    bound = 1e-4 * baseline_case["config"]["max_abs_logit"]
    assert parity_bound(reference) <= bound
    assert float(logits.abs().max()) == pytest.approx(baseline_case["config"]["max_abs_logit"], rel=1e-4)
    every4 = logits[:, :, ::4, ::4].numpy()
    assert every4.shape == reference["logits_every4"].shape
    assert np.abs(every4 - reference["logits_every4"]).max() <= bound
    top2 = np.sort(reference["logits_every4"], axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > 2 * bound
    assert decided.mean() > 0.99
    assert np.array_equal(every4.argmax(1)[decided], reference["argmax"][:, ::4, ::4][decided])
    top2_full = logits.topk(2, dim=1).values
    decided_full = ((top2_full[:, 0] - top2_full[:, 1]) > 4 * bound).numpy()
    assert decided_full.mean() > 0.99
    assert np.array_equal(logits.argmax(1).numpy()[decided_full], reference["argmax"][decided_full])


# Variants without a fixture: key and parameter counts of the original's models for 16 classes (built from
# the original's code with the resnext import stubbed), and the trunk strides of their variant.
VARIANTS = {
    "upernet_r18": (197, 12_664_784, (4, 8, 16, 32)),
    "upernet_r101": (713, 50_106_064, (4, 8, 16, 32)),
    "pspnet_r101": (673, 50_104_768, (4, 8, 8, 8)),
    "pspnet_d16_r50": (367, 31_112_640, (4, 8, 16, 16)),
}


def trunk_strides(model: torch.nn.Module, size: int = 64) -> tuple[int, ...]:
    with torch.no_grad():
        feats = model.forward_trunk(torch.zeros(1, 3, size, size))
    return tuple(size // f.shape[-1] for f in feats)


@pytest.mark.parametrize("arch", sorted(VARIANTS))
def test_variants_match_the_original_structure(arch):
    num_keys, num_params, strides = VARIANTS[arch]
    model = network.get_model(arch, 16).eval()
    assert (len(model.state_dict()), count_parameters(model)) == (num_keys, num_params)
    assert trunk_strides(model) == strides


def test_upernet_r18_is_the_plain_stem_resnet18_with_a_128_channel_head():
    model = network.get_model("network.uper_resnet.UperNetDeepR18_deeply", 6)
    assert isinstance(model, UperNet)
    assert model.layer0[0].kernel_size == (7, 7) and model.layer0[0].out_channels == 64
    # Dilation only on each block's second convolution, as the original's conv2 rewrite.
    assert (model.layer3[0].conv1.dilation, model.layer3[1].conv2.dilation, model.layer4[0].conv2.dilation) == (
        (1, 1), (2, 2), (4, 4))
    assert model.head.fpn_dim == 128 and model.head.ppm.bottleneck[0].out_channels == 128
    assert [m[0].in_channels for m in model.head.fpn_in] == [64, 128, 256]


def test_aliases_and_families_in_the_registry():
    names = set(network.list_models())
    assert {"pfnet_r50", "upernet_r18", "upernet_r50", "upernet_r101", "pspnet_r50", "pspnet_r101",
            "pspnet_d16_r50", "deeplabv3plus_r50", "deeplabv3plus_r101"} <= names
    for alias, name in [("network.uper_resnet.UperNetDeepR50_deeply", "upernet_r50"),
                        ("network.uper_resnet.UperNetDeepR101_deeply", "upernet_r101"),
                        ("network.pspnet.PSPNet_v1_r50", "pspnet_r50"),
                        ("network.pspnet.PSPNet_v1_r101", "pspnet_r101"),
                        ("network.pspnet.PSPNet_D16_v1_r50", "pspnet_d16_r50")]:
        assert network.model_entry(alias).name == name
    for name in names - {"pfnet_r50", "pfnet_r101"}:
        entry = network.model_entry(name)
        assert not entry.edge_outputs and entry.defaults == {}
    with pytest.raises(ValueError, match="output_stride"):
        PSPNet(6, output_stride=32)


def test_deeplabv3plus_structure():
    model = network.get_model("deeplabv3plus_r50", 16)
    assert isinstance(model, DeepLabV3Plus)
    # 41.3 M parameters for 16 classes, as its docstring says; R101 adds the 17 extra layer3 bottlenecks.
    assert count_parameters(model) == 41_328_192
    assert trunk_strides(model) == (4, 8, 8, 8)
    aspp = model.head.aspp
    assert [branch[0].dilation for branch in aspp.branches] == [(1, 1), (12, 12), (24, 24), (36, 36)]
    assert [branch[0].groups for branch in aspp.branches[1:]] == [2048] * 3  # depthwise separable
    assert aspp.bottleneck[0].in_channels == 5 * 512  # image pooling + 1x1 + three rates
    assert model.head.low_level[0].in_channels == 256 and model.head.low_level[0].out_channels == 48
    assert model.head.decoder[0][0].in_channels == 512 + 48
    assert network.model_entry("deeplabv3plus_r50").classifier_key in model.state_dict()
    logits = {}
    model.eval()
    with torch.no_grad():
        logits["eval"] = model(torch.randn(1, 3, 72, 88))
        captured = {}
        model.head.decoder.register_forward_hook(lambda m, i, out: captured.update(decoded=out))
        model(torch.randn(1, 3, 64, 96))
    assert logits["eval"].shape == (1, 16, 72, 88)
    assert captured["decoded"].shape == (1, 512, 16, 24)  # the decoder runs at stride 4


def test_training_forward_gives_logits_only_and_backpropagates():
    # As PSPNet's and DeepLabV3+'s (their training runs in tests/test_baselines_workflow.py).
    model = network.get_model("upernet_r18", 5).train()
    logits = model(torch.randn(2, 3, 64, 80))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 5, 64, 80)
    logits.mean().backward()
    assert model.layer1[0].conv1.weight.grad.abs().sum() > 0


def test_point_flow_flags_are_ignored_for_other_models_and_unknown_options_refused():
    flags = argparse.Namespace(arch="upernet_r50", maxpool_size=4, avgpool_size=None, edge_points=16, match_dim=None)
    resolved = resolve_model_options(flags, None)
    assert resolved.options == {} and "has no option --maxpool_size, --edge_points: ignored" in resolved.warnings[0]
    with pytest.raises(TypeError):
        network.get_model("upernet_r18", 4, fpn_dim=64)  # not an option of the model: refused, not dropped


# --- the shared harness: ImageNet files, optimize_for_inference, activation checkpointing, torch.compile ---

@pytest.mark.parametrize("source, targets", [
    ("pfnet_r50", ["upernet_r50", "pspnet_r50", "pspnet_d16_r50", "deeplabv3plus_r50"]),
    ("upernet_r18", ["upernet_r18"]),
])
def test_one_imagenet_file_initialises_every_model_of_its_depth(tmp_path, source, targets):
    torch.manual_seed(0)
    path = tmp_path / "imagenet.pth"
    trunk = imagenet_file_state(network.get_model(source, 6))
    torch.save(trunk, path)
    for arch in targets:
        model = network.get_model(arch, 6, pretrained=str(path))
        state = model.state_dict()
        assert torch.equal(state["layer0.0.weight" if arch == "upernet_r18" else "layer0.0.0.weight"],
                           trunk["conv1.weight" if arch == "upernet_r18" else "conv1.0.weight"])
        assert torch.equal(state["layer4.2.conv3.weight" if arch != "upernet_r18" else "layer4.1.conv2.weight"],
                           trunk["layer4.2.conv3.weight" if arch != "upernet_r18" else "layer4.1.conv2.weight"])


def test_r101_trunks_share_one_layout():
    layouts = set()
    for arch in ["pfnet_r101", "upernet_r101", "pspnet_r101", "deeplabv3plus_r101"]:
        state = network.get_model(arch, 6).state_dict()
        layouts.add(tuple((k, tuple(v.shape)) for k, v in state.items() if k.startswith("layer")))
    assert len(layouts) == 1


@pytest.fixture(scope="module", params=["upernet_r18", "pspnet_d16_r50", "deeplabv3plus_r50"])
def parity_weighted(request):
    """(arch, eval-mode model with the parity weights, images (1, 3, 64, 96), its logits)."""
    model = network.get_model(request.param, 6).eval()
    model.load_state_dict(parity_state_dict(model.state_dict()))
    images = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 3, 64, 96)).astype(np.float32))
    with torch.no_grad():
        logits = model(images)
    return request.param, model, images, logits


def test_optimize_for_inference_folds_every_norm_within_parity_bound(parity_weighted):
    arch, model, images, logits = parity_weighted
    optimized = network.optimize_for_inference(model)
    assert not any(isinstance(m, _BatchNorm) for m in optimized.modules()), arch
    with torch.no_grad():
        fast = optimized(images)
    assert (fast - logits).abs().max() <= 1e-4 * logits.abs().max()


# Tracing costs ~20 s a model on this machine; UperNet-R18 runs the shared trunk and FPN head code.
@pytest.mark.parametrize("parity_weighted", ["upernet_r18"], indirect=True)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch's own
def test_torch_compile_captures_one_graph(parity_weighted):
    _, model, images, logits = parity_weighted
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: a graph break is an error
    with torch.no_grad():
        assert torch.allclose(compiled(images), logits, atol=1e-5)


def test_activation_checkpointing_gives_the_plain_step():
    images = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32))
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = network.get_model("upernet_r18", 4).train()
        if checkpointed:
            network.enable_activation_checkpointing(model)
            assert isinstance(model.layer2, CheckpointedSequential)
        model(images).square().mean().backward()
        grads.append(model.layer1[0].conv1.weight.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)

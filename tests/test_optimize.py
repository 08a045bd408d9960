"""optimize_for_inference: batch-norm folding, split concatenation, channels_last and bf16 keep the results."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from parity_case import load_case_a, parity_bound
from torch import nn

import network
from network.fpn import ConcatClassifier
from network.optimize import (
    FusedConv2d,
    FusedResidualBlock,
    ResizedConv3x3,
    SplitConcatClassifier,
    fold_batch_norm_,
    fold_batch_norms,
    fuse_convolutions,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def random_batch_norm(channels: int, affine: bool, seed: int) -> nn.BatchNorm2d:
    """An eval-mode batch-norm with non-trivial running statistics (and affine parameters)."""
    generator = torch.Generator().manual_seed(seed)
    norm = nn.BatchNorm2d(channels, affine=affine, eps=1e-3).eval()
    norm.running_mean.copy_(torch.randn(channels, generator=generator))
    norm.running_var.copy_(torch.rand(channels, generator=generator) * 2 + 0.1)
    if affine:
        norm.weight.data.copy_(torch.randn(channels, generator=generator))
        norm.bias.data.copy_(torch.randn(channels, generator=generator))
    return norm


@pytest.mark.parametrize("conv_bias,affine", [(False, True), (True, True), (True, False)])
def test_fold_batch_norm_matches_float64_reference(conv_bias, affine):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, kernel_size=3, stride=2, padding=1, bias=conv_bias)
    norm = random_batch_norm(7, affine, seed=1)
    images = torch.randn(2, 5, 11, 13)
    # Reference: convolution then the batch-norm formula, all in float64.
    conv_out = F.conv2d(images.double(), conv.weight.double(),
                        conv.bias.double() if conv_bias else None, stride=2, padding=1)
    mean, var = norm.running_mean.double().view(1, -1, 1, 1), norm.running_var.double().view(1, -1, 1, 1)
    expected = (conv_out - mean) / torch.sqrt(var + norm.eps)
    if affine:
        expected = expected * norm.weight.double().view(1, -1, 1, 1) + norm.bias.double().view(1, -1, 1, 1)

    fold_batch_norm_(conv, norm)
    with torch.no_grad():
        folded = conv(images)
    assert conv.bias is not None
    assert torch.allclose(folded.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_fold_batch_norm_refuses_training_mode_and_missing_statistics():
    with pytest.raises(ValueError, match="eval"):
        fold_batch_norm_(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4).train())
    with pytest.raises(ValueError, match="running statistics"):
        fold_batch_norm_(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False).eval())


def test_fold_batch_norms_folds_every_norm_of_pfnet():
    model = network.get_model("pfnet_r50", 6).eval()
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert norms == 70  # 55 in the trunk, 15 in the head: each one directly follows a convolution
    assert fold_batch_norms(model) == norms
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_split_concat_classifier_equals_concatenation():
    torch.manual_seed(0)
    classifier = ConcatClassifier(
        nn.Sequential(nn.Conv2d(12, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()), nn.Conv2d(8, 3, 1)).eval()
    levels = [torch.randn(2, c, 9, 10) for c in (4, 5, 3)]
    split = SplitConcatClassifier(classifier, [4, 5, 3])
    with torch.no_grad():
        assert torch.allclose(split(levels), classifier(levels), atol=1e-6)
    assert [conv.bias is not None for conv in split.level_convs] == [True, False, False]
    with pytest.raises(ValueError, match="cannot split"):
        SplitConcatClassifier(classifier, [4, 4])


@pytest.mark.parametrize("batch,source,target", [(1, (8, 8), (32, 32)), (2, (5, 7), (17, 23)), (1, (1, 3), (4, 9))])
@pytest.mark.parametrize("channels_last", [True, False])
def test_resized_conv_equals_convolution_of_the_resized_map(batch, source, target, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, kernel_size=3, padding=1, bias=False)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    coarse = torch.randn(batch, 6, *source).contiguous(memory_format=layout)
    start = torch.randn(batch, 5, *target).contiguous(memory_format=layout)
    with torch.no_grad():
        expected = start + conv(F.interpolate(coarse, size=target, mode="bilinear", align_corners=True))
        result = ResizedConv3x3(conv).add_to_(start.clone(), coarse)
    assert torch.allclose(result, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    with pytest.raises(ValueError, match="cannot compute"):
        ResizedConv3x3(nn.Conv2d(6, 5, kernel_size=3, padding=1))  # with a bias


def test_fused_convolutions_equal_the_folded_model():
    torch.manual_seed(0)
    model = network.get_model("upernet_r18", 4).eval()
    for norm in [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]:
        norm.running_var.uniform_(0.5, 1.5)
        norm.running_mean.normal_(0, 0.1)
    fold_batch_norms(model)
    images = torch.randn(2, 3, 64, 96).contiguous(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = model(images)
        fused = fuse_convolutions(model)
        result = model(images)
    # ResNet-18: 8 blocks of 2 convolutions and the stem's; the PSP bottleneck, 3 fpn_in, 3 fpn_out, conv_last's first
    assert fused == 16 + 1 + 1 + 3 + 3 + 1
    assert sum(isinstance(m, FusedResidualBlock) for m in model.modules()) == 8
    assert not any(isinstance(m, nn.ReLU) for m in model.layer0.modules())
    assert torch.allclose(result, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_other_models_and_bad_dtype():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), random_batch_norm(4, affine=True, seed=0), nn.ReLU()).eval()
    images = torch.randn(2, 3, 8, 8)
    optimized = network.optimize_for_inference(model)  # no PFNet head: nothing to split
    with torch.no_grad():
        assert torch.allclose(optimized(images), model(images), atol=1e-5)
    assert isinstance(optimized.model[1], nn.Identity)
    assert isinstance(optimized.model[0], FusedConv2d)  # with its ReLU (float32 on CPU)
    assert not optimized(images).requires_grad  # called outside no_grad too: inference only
    with pytest.raises(ValueError, match="dtype"):
        network.optimize_for_inference(model, dtype=torch.float64)
    with pytest.raises(ValueError, match="resize_after_conv is float32 only"):
        network.optimize_for_inference(model, resize_after_conv=True, dtype=torch.bfloat16)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch's own
def test_compile_switch_returns_compiled_module():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    optimized = network.optimize_for_inference(model, compile=True)
    assert isinstance(optimized, torch._dynamo.eval_frame.OptimizedModule)


# --- case A of the parity fixtures: results of the optimised model against the unoptimised one -----------

@pytest.fixture(scope="module")
def case_a():
    model, images, reference = load_case_a()
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits = model(images)
    return {"model": model, "images": images, "logits": logits, "bound": parity_bound(reference),
            "state_before": state_before}


@pytest.mark.parametrize("options", [{}, {"split_concat": False, "channels_last": False}],
                         ids=["defaults", "fold_bn_only"])
def test_float32_paths_within_parity_bound(case_a, options):
    optimized = network.optimize_for_inference(case_a["model"], **options)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in optimized.modules())
    split = isinstance(optimized.model.head.conv_last, SplitConcatClassifier)
    assert split == options.get("split_concat", True)
    # On CPU in float32 both defaults take their fast forms: fused blocks, coarse levels convolved before resizing
    assert isinstance(optimized.model.layer1[0], FusedResidualBlock)
    assert not split or optimized.model.head.conv_last.resized_convs is not None
    with torch.no_grad():
        logits = optimized(case_a["images"])
    assert logits.dtype == torch.float32 and logits.shape == case_a["logits"].shape
    assert float((logits - case_a["logits"]).abs().max()) <= case_a["bound"]
    # The model passed in is untouched: same modules, same values, still with its batch-norms.
    assert isinstance(case_a["model"].layer1[0].bn1, nn.BatchNorm2d)
    for key, value in case_a["model"].state_dict().items():
        assert torch.equal(value, case_a["state_before"][key]), key


def test_bf16_argmax_agrees_with_float32(case_a):
    optimized = network.optimize_for_inference(case_a["model"], dtype=torch.bfloat16)
    assert optimized.model.head.conv_last.rest[-1].weight.dtype == torch.bfloat16
    assert not any(isinstance(m, (FusedConv2d, ResizedConv3x3)) for m in optimized.modules())  # float32 only
    with torch.no_grad():
        logits = optimized(case_a["images"])
    assert logits.dtype == torch.float32
    agreement = (logits.argmax(1) == case_a["logits"].argmax(1)).float().mean().item()
    assert agreement >= 0.995
    # Low precision did change the logits: this is not the float32 path.
    assert float((logits - case_a["logits"]).abs().max()) > case_a["bound"]
    assert np.isfinite(logits.numpy()).all()

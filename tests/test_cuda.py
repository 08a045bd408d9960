"""CUDA paths: forward parity with the CPU, mixed-precision training, point-flow scatter under autocast,
optimised and compiled inference, and exact resume. Every test needs a GPU and is skipped without one;
``make gpu-check OUT=dir`` runs them on a GPU machine (docs/gpu.md).

Float32 comparisons run with TF32 off (cuDNN convolutions use TF32 by default on Ampere and later, which
alone exceeds the parity bound); each test restores the flags it changes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from parity_case import load_case_a, parity_bound
from parity_weights import parity_state_dict
from torch.nn.modules.batchnorm import _BatchNorm
from train_data import make_tiny_potsdam, tiny_run_flags

import network
import train
from bench.gpu_check import NONDETERMINISTIC_KERNEL
from engine.distributed import DistContext
from loss import get_loss
from network.point_flow import PointFlowModule

REPO = Path(__file__).resolve().parents[1]
NO_GPU_REASON = "needs a CUDA GPU (torch.cuda.is_available() is False); run `make gpu-check OUT=dir` on a GPU machine"
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU_REASON)]

# Relative L2 error of all parameter gradients of one mixed-precision train step against float32,
# ||g_amp - g_fp32|| / ||g_fp32||, batch-norms on their running statistics (see gradients_of_one_step).
# float16 keeps 11 significant bits, bfloat16 8; through the 50-layer trunk the roundings add up: the CPU
# autocast of the same step gives 0.8 % (fp16) and 6.2 % (bf16), so the bounds leave room for cuDNN's
# other kernels. The loss terms must agree to the same relative tolerance.
GRADIENT_TOLERANCE = {"fp16": 0.05, "bf16": 0.15}
# Argmax agreement of low-precision inference with float32 on the parity input (CPU bf16: 99.87 %).
LOW_PRECISION_AGREEMENT = 0.99


@pytest.fixture(autouse=True)
def ieee_float32():
    """TF32 off in cuDNN convolutions and cuBLAS matrix products for the test; the previous flags after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def case_a():
    """Parity case A on the CPU: the model, its input (1, 3, 256, 384) and the reference arrays."""
    model, images, reference = load_case_a()
    return {"model": model, "images": images, "reference": reference, "bound": parity_bound(reference)}


def logits_of(output) -> torch.Tensor:
    """The segmentation logits (N, K, H, W) of a model's output (a tensor, or a tuple led by the logits)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def test_pfnet_cuda_forward_matches_parity_reference(case_a):
    model = case_a["model"].cuda()
    try:
        with torch.no_grad():
            logits = model(case_a["images"].cuda()).cpu()
    finally:
        model.cpu()
    every4 = logits[:, :, ::4, ::4].numpy()
    assert float(np.abs(every4 - case_a["reference"]["logits_every4"]).max()) <= case_a["bound"]


@pytest.mark.parametrize("arch", network.list_models())
def test_every_model_cuda_forward_matches_cpu(arch, case_a):
    """Each registered model with the parity rule's weights: CUDA float32 equals CPU float32 within
    1e-4 x max |CPU logits| (the parity bound's rule) on case A's input."""
    torch.manual_seed(0)
    model = network.get_model(arch, 16).eval()
    model.load_state_dict(parity_state_dict(model.state_dict()))
    with torch.no_grad():
        expected = logits_of(model(case_a["images"]))
        got = logits_of(model.cuda()(case_a["images"].cuda())).cpu()
    bound = 1e-4 * float(expected.abs().max())
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= bound, arch


def gradients_of_one_step(amp: str, device: torch.device) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One training step of PFNet-R50 (parity weights, batch 2 x 3 x 128 x 128, the joint edge + OHEM
    loss) under train.py's ``--amp`` setting and gradient scaler: the loss terms and the unscaled parameter
    gradients (on the CPU).

    The batch-norms use their running statistics: in training mode the PSP module's 1x1 bin normalises
    two values per channel at batch 2, which turns any rounding difference into a different gradient
    (the CPU's bf16 gradients then differ from float32 by 145 %), so that comparison would measure
    ill-conditioning, not precision. Training-mode steps run in train.py below (--amp fp16) and in
    make gpu-check's training step (--amp bf16).

    With ``fp16`` the scaler must be active; a scaled step that overflows is skipped and retried at the
    lower scale, as during training (at most 8 times).
    """
    torch.manual_seed(0)
    model = network.get_model("pfnet_r50", 6, maxpool_size=4, avgpool_size=4, edge_points=16)
    model.load_state_dict(parity_state_dict(model.state_dict()))
    model = model.to(device).train()
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.eval()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 128, 128, generator=generator).to(device)
    masks = torch.randint(0, 6, (2, 128, 128), generator=generator).to(device)
    edges = (torch.rand(2, 1, 128, 128, generator=generator) > 0.9).float().to(device)
    args, _, _ = train.parse_args(["--amp", amp, "--lr", "0.01"])
    context = DistContext(rank=0, local_rank=0, world_size=1, device=device)
    optimizer, _, scaler = train.build_optimisation(args, context, model, snapshot=None)
    assert scaler.is_enabled() == (amp == "fp16")
    criterion, _ = get_loss(joint_edge_loss_pfnet=True, ohem=True, edge_weight=25.0)
    amp_dtype = train.AMP_DTYPES[amp]
    for _ in range(8):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(images)
        terms = criterion(outputs, masks, edges)
        scaler.scale(sum(terms.values())).backward()
        scaler.unscale_(optimizer)
        if all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None):
            break
        scaler.step(optimizer)  # skipped: the scaled gradients overflowed
        scaler.update()
    gradients = {name: parameter.grad.detach().float().cpu() for name, parameter in model.named_parameters()
                 if parameter.grad is not None}
    return {name: value.item() for name, value in terms.items()}, gradients


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_mixed_precision_train_step_close_to_fp32(amp):
    device = torch.device("cuda")
    losses, gradients = gradients_of_one_step(amp, device)
    reference_losses, reference = gradients_of_one_step("off", device)
    assert all(np.isfinite(value) for value in losses.values()), losses
    assert gradients.keys() == reference.keys()
    assert all(torch.isfinite(gradient).all() for gradient in gradients.values())
    for name, value in losses.items():
        assert value == pytest.approx(reference_losses[name], rel=GRADIENT_TOLERANCE[amp]), name
    flat = torch.cat([gradients[name].flatten() for name in reference])
    flat_reference = torch.cat([reference[name].flatten() for name in reference])
    relative_error = float((flat - flat_reference).norm() / flat_reference.norm())
    assert relative_error <= GRADIENT_TOLERANCE[amp], f"{amp}: relative gradient error {relative_error:.4f}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_point_flow_scatter_under_autocast(dtype, channels_last):
    """The module's scatter writes low-precision point features into the float32 fine map on CUDA: the
    output stays float32 (and in the input's layout), untouched pixels keep the input bit for bit, at most
    edge_points + maxpool_size^2 pixels change per image, and gradients reach both inputs."""
    torch.manual_seed(0)
    module = PointFlowModule(64, dim=16, maxpool_size=4, avgpool_size=4, edge_points=8).cuda().eval()
    coarse = torch.randn(2, 64, 8, 8, device="cuda", requires_grad=True)
    fine = torch.randn(2, 64, 16, 16, device="cuda")
    if channels_last:
        fine = fine.contiguous(memory_format=torch.channels_last)
    fine.requires_grad_(True)
    with torch.autocast("cuda", dtype=dtype):
        out, edge_logits = module(coarse, fine)
    assert out.dtype == torch.float32 and out.shape == fine.shape
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.isfinite(out).all() and torch.isfinite(edge_logits).all()
    changed = (out != fine).any(dim=1)  # (N, H, W): pixels the scatter wrote
    assert 0 < int(changed.sum(dim=(1, 2)).max()) <= 8 + 4 * 4
    assert torch.equal(out.detach()[~changed.unsqueeze(1).expand_as(out)],
                       fine.detach()[~changed.unsqueeze(1).expand_as(fine)])
    out.float().sum().backward()
    assert torch.isfinite(coarse.grad).all() and coarse.grad.abs().sum() > 0
    assert torch.isfinite(fine.grad).all()


def test_point_flow_scatter_cuda_matches_cpu():
    torch.manual_seed(0)
    module = PointFlowModule(64, dim=16, maxpool_size=4, avgpool_size=4, edge_points=8).eval()
    coarse, fine = torch.randn(2, 64, 8, 8), torch.randn(2, 64, 16, 16)
    with torch.no_grad():
        expected, expected_edges = module(coarse, fine)
        got, got_edges = module.cuda()(coarse.cuda(), fine.cuda())
    assert torch.allclose(got_edges.cpu(), expected_edges, rtol=1e-5, atol=1e-5)
    assert torch.allclose(got.cpu(), expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def cuda_eager(case_a):
    """Case A's model and input on the GPU with its eager float32 logits (N, K, H, W)."""
    model = load_case_a()[0].cuda()
    images = case_a["images"].cuda()
    with torch.no_grad():
        logits = model(images)
    return {"model": model, "images": images, "logits": logits}


@pytest.mark.parametrize("options", [{}, {"compile": True}], ids=["optimized", "compiled"])
def test_optimized_and_compiled_inference_agree_with_eager(cuda_eager, case_a, options):
    optimized = network.optimize_for_inference(cuda_eager["model"], **options)
    with torch.no_grad():
        logits = optimized(cuda_eager["images"])
    assert logits.dtype == torch.float32 and logits.shape == cuda_eager["logits"].shape
    assert float((logits - cuda_eager["logits"]).abs().max()) <= case_a["bound"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_inference_argmax_agrees(cuda_eager, dtype):
    optimized = network.optimize_for_inference(cuda_eager["model"], dtype=dtype)
    with torch.no_grad():
        logits = optimized(cuda_eager["images"])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    agreement = (logits.argmax(1) == cuda_eager["logits"].argmax(1)).float().mean().item()
    assert agreement >= LOW_PRECISION_AGREEMENT


# --- train.py on the GPU, as a user runs it ----------------------------------------------------------------

# 8 patches, batch 4: 2 iterations per epoch, one data-loading worker (its seeding is resumed too).
RUN_FLAGS = ["--max_epoch", "3", "--bs_mult", "4", "--num_workers", "1", "--device", "cuda"]


def run_train(flags: list[str]) -> str:
    """train.py in a subprocess; returns stdout + stderr (fails the test on a non-zero exit)."""
    result = subprocess.run([sys.executable, "train.py", *flags], cwd=REPO, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope="module")
def potsdam_flags(tmp_path_factory):
    """(tiny_run_flags, whose --deterministic they keep and whose --device cpu RUN_FLAGS overrides, output
    folder)."""
    base = tmp_path_factory.mktemp("cuda_train")
    return tiny_run_flags(make_tiny_potsdam(base), base) + RUN_FLAGS, base


def test_resume_on_cuda_is_bit_exact_with_deterministic(potsdam_flags):
    flags, base = potsdam_flags
    logs = run_train(flags + ["--exp", "straight", "--stop_after", "2"])
    logs += run_train(flags + ["--exp", "split", "--stop_after", "1"])
    split_last = base / "ckpt" / "split" / "Posdam-pfnet_r50" / "last.pth"
    logs += run_train(flags + ["--exp", "split", "--resume", str(split_last), "--stop_after", "1"])
    assert "1 process(es) on cuda" in logs
    straight = torch.load(base / "ckpt" / "straight" / "Posdam-pfnet_r50" / "last.pth", weights_only=True)
    resumed = torch.load(split_last, weights_only=True)
    assert straight["epoch"] == resumed["epoch"] == 1 and straight["global_step"] == resumed["global_step"] == 4
    differing = [key for key, value in straight["state_dict"].items()
                 if not torch.equal(value, resumed["state_dict"][key])]
    kernels = sorted(set(NONDETERMINISTIC_KERNEL.findall(logs)))
    assert differing == [], (f"{len(differing)} tensors differ after the resume (first: {differing[:3]}); "
                             f"kernels without a deterministic CUDA implementation used: {kernels}")


def test_train_py_fp16_run_has_an_active_scaler(potsdam_flags):
    """train.py --amp fp16 on the GPU (bf16 runs in make gpu-check's training step): finite losses, and
    the checkpoint holds the gradient scaler's state."""
    flags, base = potsdam_flags
    run_train(flags + ["--exp", "amp_fp16", "--stop_after", "1", "--amp", "fp16"])
    run_dir = base / "ckpt" / "amp_fp16" / "Posdam-pfnet_r50"
    records = [json.loads(line) for line in (run_dir / "log.jsonl").open()]
    losses = [record["loss"] for record in records if record["kind"] == "train"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert torch.load(run_dir / "last.pth", weights_only=True)["scaler"]["scale"] > 0

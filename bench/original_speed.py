"""PFNet-R50's eval forward against the original PFSegNets code, both in one process, timed side by side.

The original model (``DeepR50_PF_maxavg_deeply`` of ``network/pointflow_resnet_with_max_avg_pool.py``) is
built from a user's checkout of github lxtGH/PFSegNets (``--original PATH``) with the official point-flow
settings, and filled with the same weights as ours: a checkpoint (``--checkpoint``) or random weights with
non-trivial batch-norm statistics. Both outputs are compared before any timing (the eager model within the
parity bound, each optimised configuration within the agreement bound of docs/deployment.md); then the
calls alternate between the models, the order flipping every round, so load from other processes hits both
alike. Figures are medians; the ratio is ours / original, as the ratio of the medians and as the median of
each round's ratio (the two calls of a round ran seconds apart, so on a machine whose load swings that one is
the steadier).

Nothing of the original is copied: its files are imported from ``--original`` as they are, with three run-time
stand-ins for what a CPU inference does not need (NVIDIA apex's ``amp.float_function`` decorator, the
``config.cfg`` that names the batch-norm class, and the ImageNet file its ResNet-50 constructor loads, whose
values the filled weights replace anyway).

    python -m bench.original_speed --original /path/to/PFSegNets --size 896 --threads 2
    python -m bench.original_speed --original /path/to/PFSegNets --emulate avx2   # AVX2 kernels on any x86 CPU
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import statistics
import subprocess
import sys
import types
import warnings
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

import network
from bench.measure import NUM_CLASSES, timed
from bench.run import EVAL_OPTIONS
from engine.cpu_precision import cpu_capability
from utils.atomic import atomic_write_bytes
from utils.checkpoint import load_checkpoint

ORIGINAL_MODULE = "network.pointflow_resnet_with_max_avg_pool"
"""The original's PFNet module, inside its checkout."""
ORIGINAL_SOURCE = ORIGINAL_MODULE.replace(".", "/") + ".py"
"""Its file, relative to the checkout's root."""
ORIGINAL_PACKAGES = ("network", "config", "apex")
"""Top-level module names the original's model imports; ours are set aside while its files are imported."""
EAGER_BOUND = 1e-4
"""max |Δlogit| / max |logit| allowed between our eager model and the original (the parity tests' bound)."""
OPTIMIZED_BOUND = 1e-3
"""The same for ``optimize_for_inference`` (docs/deployment.md, "Agreement between backends", pfnet_r50)."""
EMULATION = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
"""``--emulate`` kernel sets: the environment that limits torch's, oneDNN's and MKL's kernels to them."""


@contextlib.contextmanager
def original_imports(checkout: Path) -> Iterator[None]:
    """Import from the original's ``checkout`` inside the block: our ``network`` and ``config`` modules are set
    aside (and restored after), and ``apex`` and ``config`` are run-time stand-ins.

    ``apex.amp.float_function`` (the original's float32 guard on its bilinear resize) is the identity: the runs
    here are float32 already; ``config.cfg.MODEL.BNFUNC`` is ``nn.BatchNorm2d``, what the original's
    ``assert_and_infer_cfg`` sets without ``--syncbn``.
    """
    ours = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] in ORIGINAL_PACKAGES}
    amp = types.ModuleType("apex.amp")
    amp.float_function = lambda function: function
    apex = types.ModuleType("apex")
    apex.amp = amp
    config = types.ModuleType("config")
    config.cfg = types.SimpleNamespace(MODEL=types.SimpleNamespace(BNFUNC=nn.BatchNorm2d))
    sys.modules.update({"apex": apex, "apex.amp": amp, "config": config})
    sys.path.insert(0, str(checkout))
    try:
        yield
    finally:
        sys.path.remove(str(checkout))
        for name in [name for name in sys.modules if name.split(".")[0] in ORIGINAL_PACKAGES]:
            del sys.modules[name]
        sys.modules.update(ours)


def build_original(checkout: Path, num_classes: int, options: dict) -> nn.Module:
    """The original ``DeepR50_PF_maxavg_deeply`` from ``checkout`` with our point-flow ``options`` (registry names),
    randomly initialised.

    Raises:
        FileNotFoundError: ``checkout`` has no ``network/pointflow_resnet_with_max_avg_pool.py``.
    """
    if not (checkout / ORIGINAL_SOURCE).is_file():
        raise FileNotFoundError(f"--original {checkout}: no {ORIGINAL_SOURCE} there; pass the root of a PFSegNets "
                                "checkout")
    with original_imports(checkout):
        module = importlib.import_module(ORIGINAL_MODULE)
        resnet_d = module.Resnet_Deep
        # Its resnet50() loads ./pretrained_models/resnet50-deep.pth; the same network without that file:
        resnet_d.resnet50 = lambda pretrained=True, **kwargs: resnet_d.ResNet(resnet_d.Bottleneck, [3, 4, 6, 3],
                                                                              **kwargs)
        return module.DeepR50_PF_maxavg_deeply(
            num_classes, criterion=None, reduce_dim=options["match_dim"], max_pool_size=options["maxpool_size"],
            avgpool_size=options["avgpool_size"], edge_points=options["edge_points"])


def random_weights_(model: nn.Module, seed: int) -> None:
    """Random weights (as the model's initialisation) with batch-norm statistics and affine parameters drawn
    away from 0 / 1, so that folding them changes the convolutions: mean 0.1 N(0, 1), variance U(0.5, 1.5),
    weight 1 + 0.1 N(0, 1), bias 0.1 N(0, 1)."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
        elif isinstance(module, nn.BatchNorm2d):
            count = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(count))
            module.running_var.copy_(0.5 + torch.rand(count))
            module.weight.data.copy_(1 + 0.1 * torch.randn(count))
            module.bias.data.copy_(0.1 * torch.randn(count))


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    """max |result - reference| / max |reference|."""
    return ((result - reference).abs().max() / reference.abs().max()).item()


def runner(model: nn.Module, images: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A no-argument eval call of ``model`` on ``images`` without autograd."""
    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model(images)
    return run


def oneDNN_isa() -> str:
    """The oneDNN kernel limit set in the environment (``DNNL_MAX_CPU_ISA`` / ``ONEDNN_MAX_CPU_ISA``), or
    ``native``."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "native"


def compare(args: argparse.Namespace) -> dict:
    """Build both models, check their agreement, time them alternately; the results as a dict."""
    torch.set_num_threads(args.threads)
    # The original calls F.upsample and grid_sample without align_corners: torch warns on every call.
    warnings.filterwarnings("ignore", message=r"(`nn.functional.upsample` is deprecated|Default grid_sample)")
    options = network.model_defaults("pfnet_r50")
    ours = network.get_model("pfnet_r50", args.classes, **options).eval()
    if args.checkpoint:
        load_checkpoint(args.checkpoint, ours, classifier_key=network.model_entry("pfnet_r50").classifier_key)
    else:
        random_weights_(ours, seed=0)
    original = build_original(args.original, args.classes, options).eval()
    original.load_state_dict(ours.state_dict(), strict=True)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    candidates = {"original": runner(original, images)}
    errors = {}
    with torch.inference_mode():
        reference = candidates["original"]()
        errors["eager"] = relative_error(ours(images), reference)
        for config in args.configs:
            candidates[config] = runner(network.optimize_for_inference(ours, **EVAL_OPTIONS[config]), images)
            errors[config] = relative_error(candidates[config](), reference)
    del ours
    for name, error in errors.items():
        bound = EAGER_BOUND if name == "eager" else OPTIMIZED_BOUND
        print(f"[original_speed] {name} vs original: max|Δlogit|/max|logit| = {error:.2e} (bound {bound:.0e})",
              file=sys.stderr, flush=True)
        if error > bound:
            raise SystemExit(f"bench.original_speed: {name} differs from the original by {error:.2e} > {bound:.0e}; "
                             "not timing")
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    order = list(candidates)
    for round_index in range(args.warmup + args.repeats):
        for name in order:
            elapsed = timed(candidates[name], torch.device("cpu"))
            if round_index >= args.warmup:
                seconds[name].append(elapsed)
        order.reverse()
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    return {"size": args.size, "batch": args.batch, "classes": args.classes, "cpu": cpu_capability(),
            "onednn_isa": oneDNN_isa(), "threads": torch.get_num_threads(), "errors": errors,
            "seconds": seconds, "medians": medians,
            "ratios": {name: medians[name] / medians["original"] for name in args.configs},
            "round_ratios": {name: statistics.median(ours / original for ours, original
                                                     in zip(seconds[name], seconds["original"]))
                             for name in args.configs}}


def format_rows(result: dict) -> str:
    """Markdown rows: input, configuration, original ms, ours ms, the two ratios, relative error (max |Δlogit| /
    max |logit| against the original), CPU capability, oneDNN's kernel limit, threads."""
    lines = ["| input | ours | original ms | ours ms | ours / original | median of round ratios | relative error | CPU "
             "| oneDNN ISA | threads |", "|---|---|---:|---:|---:|---:|---:|---|---|---:|"]
    original_ms = 1e3 * result["medians"]["original"]
    for config, ratio in result["ratios"].items():
        lines.append(f"| {result['batch']}x{result['size']}² | {config} | {original_ms:.0f} | "
                     f"{1e3 * result['medians'][config]:.0f} | {ratio:.3f} | {result['round_ratios'][config]:.3f} | "
                     f"{result['errors'][config]:.1e} | {result['cpu']} | {result['onednn_isa']} | "
                     f"{result['threads']} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.original_speed", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--original", type=Path, required=True, help="root of a checkout of lxtGH/PFSegNets")
    parser.add_argument("--checkpoint", default=None,
                        help="weights for both models (a pfnet_r50 checkpoint, ours or the original's); default: "
                             "random weights")
    parser.add_argument("--classes", type=int, default=NUM_CLASSES, help="K (iSAID's 16; a checkpoint's must match)")
    parser.add_argument("--size", type=int, default=896, help="square input side in pixels")
    parser.add_argument("--batch", type=int, default=1, help="images per forward")
    parser.add_argument("--configs", nargs="+", choices=[c for c in EVAL_OPTIONS if "bf16" not in c
                                                         and "fp16" not in c], default=["optimized"],
                        help="our optimize_for_inference configurations to time against the original (float32)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    parser.add_argument("--emulate", choices=sorted(EMULATION), default=None,
                        help="rerun in a child process with torch, oneDNN and MKL limited to these kernels")
    parser.add_argument("--json", default=None, help="also write the raw results to this JSON file")
    args = parser.parse_args(argv)
    if not (args.original / ORIGINAL_SOURCE).is_file():
        parser.error(f"--original {args.original}: no {ORIGINAL_SOURCE} there; pass the root of a PFSegNets checkout")
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        parser.error(f"--checkpoint: no such file: {args.checkpoint}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the comparison (in a child process under ``--emulate``) and print the table; the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.emulate:
        rest = [a for i, a in enumerate(argv) if a != "--emulate" and (i == 0 or argv[i - 1] != "--emulate")]
        rest = [a for a in rest if not a.startswith("--emulate=")]
        repository = str(Path(__file__).resolve().parents[1])
        search_path = os.pathsep.join(filter(None, [repository, os.environ.get("PYTHONPATH")]))
        environment = os.environ | EMULATION[args.emulate] | {"PYTHONPATH": search_path}
        return subprocess.run([sys.executable, "-m", "bench.original_speed", *rest], env=environment).returncode
    result = compare(args)
    print(format_rows(result))
    if args.json:
        atomic_write_bytes(args.json, json.dumps(result | {"argv": argv}, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())

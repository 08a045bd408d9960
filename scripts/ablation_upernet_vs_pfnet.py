"""The paper's ablation as one command: UperNet-R50 against PFNet-R50, same iSAID recipe, same protocol, one table.

Both models are trained by train.py with the recipe ``configs/pointflow/isaid_r50.yaml`` (UperNet
has no edge maps, so train.py drops the joint edge loss for it and trains on the segmentation loss alone,
OHEM included), then evaluated by eval.py with the official iSAID protocol
``configs/pointflow/test/isaid_r50.yaml`` (whole image at 896, single scale, no flip, val split).
The table holds each model's mIoU and per-class IoU, its parameters, GFLOPs of one forward at the eval size
and its eval throughput (images/s, one image per forward, ``bench/models.py``).

    python scripts/ablation_upernet_vs_pfnet.py --out ./ablation --data ./data/iSAID --gpus 8
    python scripts/ablation_upernet_vs_pfnet.py --out /tmp/ablation --smoke   # CPU check: synthetic iSAID, 1 epoch

Outputs under ``--out``: ``ckpt/`` and ``tb/`` (the runs), ``eval/<arch>/`` (eval.py's results) and
``ablation.md`` / ``ablation.json`` (the table). Extra train.py flags go after ``--``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.models import measure_models  # noqa: E402  (needs the repository on sys.path)
from tools.make_synthetic_data import make_synthetic  # noqa: E402
from tools.prepare_dataset import PrepareOptions, prepare  # noqa: E402
from utils.atomic import atomic_write_bytes  # noqa: E402

ARCHS = ("upernet_r50", "pfnet_r50")
EXP = "ablation"
# The iSAID recipe; the command line names --arch, --exp and the output folders.
TRAIN_RECIPE = REPO / "configs" / "pointflow" / "isaid_r50.yaml"
# The official iSAID protocol; the command line names --arch, --snapshot and the output folder.
EVAL_PROTOCOL = REPO / "configs" / "pointflow" / "test" / "isaid_r50.yaml"
EVAL_SIZE = 896  # the protocol's resize_scale, for the GFLOPs and images/s columns
# --smoke: the same recipe on 64 px synthetic iSAID patches, one epoch on the CPU, no ImageNet file.
SMOKE_TRAIN = {"--max_epoch": "1", "--crop_size": "64", "--bs_mult": "4", "--device": "cpu",
               "--num_workers": "0", "--print_freq": "1"}
SMOKE_SETTINGS = ["pretrained=null"]  # no ImageNet file: random initialisation
SMOKE_EVAL = {"--resize_scale": "64", "--device": "cpu", "--num_workers": "0", "--report_samples": "0"}
SMOKE_SIZE = 64


def flag_list(flags: dict[str, str | None]) -> list[str]:
    """``{"--lr": "0.007", "--ohem": None}`` -> ``["--lr", "0.007", "--ohem"]``."""
    return [item for flag, value in flags.items() for item in ((flag,) if value is None else (flag, value))]


def train_command(args: argparse.Namespace, arch: str) -> list[str]:
    """train.py command line of ``arch``: one process, or ``--gpus`` processes under torchrun."""
    recipe: dict[str, str | None] = {"--config": str(TRAIN_RECIPE)}
    settings = []
    if args.smoke:
        recipe.update(SMOKE_TRAIN)
        settings += SMOKE_SETTINGS
    if args.data:
        settings.append(f"DATASET.ISAID_DIR={args.data}")
    launcher = [sys.executable]
    if args.gpus > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.gpus}"]
    outputs = ["--exp", EXP, "--ckpt", str(args.out / "ckpt"), "--tb_path", str(args.out / "tb"), "--arch", arch]
    overrides = ["--set", *settings] if settings else []
    return launcher + [str(REPO / "train.py"), *flag_list(recipe), *overrides, *outputs, *args.train_flags]


def best_checkpoint(args: argparse.Namespace, arch: str) -> Path:
    """The run's best snapshot (``best_epoch_E_mean-iu_M.pth``; train.py keeps one)."""
    run_dir = args.out / "ckpt" / EXP / f"iSAID-{arch}"
    found = sorted(run_dir.glob("best_epoch_*.pth"))
    if len(found) != 1:
        raise SystemExit(f"expected one best_epoch_*.pth in {run_dir}, found {len(found)}: did training finish?")
    return found[0]


def eval_command(args: argparse.Namespace, arch: str, snapshot: Path) -> list[str]:
    """eval.py command line of ``arch``'s best snapshot with the official protocol."""
    protocol: dict[str, str | None] = {"--config": str(EVAL_PROTOCOL), **(SMOKE_EVAL if args.smoke else {})}
    if args.data:
        protocol["--dataset_dir"] = str(args.data)
    return [sys.executable, str(REPO / "eval.py"), *flag_list(protocol), "--arch", arch, "--snapshot", str(snapshot),
            "--out_dir", str(args.out / "eval" / arch), "--overwrite"]


def run(command: list[str]) -> None:
    """Run one step; stop the ablation with its exit status if it fails."""
    print("[ablation] " + " ".join(command), flush=True)
    completed = subprocess.run(command, cwd=REPO)
    if completed.returncode != 0:
        raise SystemExit(f"[ablation] step failed (exit status {completed.returncode}): {' '.join(command)}")


def make_smoke_data(out: Path) -> Path:
    """Synthetic iSAID (3 scenes of ~96 px) prepared into 64 px patches under ``out``; returns its root."""
    raw = make_synthetic("isaid", out / "raw", seed=0, num_images=3, size=96)
    prepare("isaid", raw, out / "iSAID",
            PrepareOptions(patch_size=SMOKE_SIZE, stride=SMOKE_SIZE, workers=1, progress=False, overwrite=True))
    return out / "iSAID"


def format_table(results: dict[str, dict], size: int, device: str) -> str:
    """Markdown table: one column per model; mIoU, per-class IoU (%), parameters, GFLOPs, images/s."""
    archs = list(results)
    lines = ["| | " + " | ".join(archs) + " |", "|---|" + "---:|" * len(archs)]

    def row(name: str, values: list[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(values) + " |")

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    row("mIoU", [percent(results[a]["metrics"]["miou"]) for a in archs])
    for index, cls in enumerate(results[archs[0]]["metrics"]["classes"]):
        row(f"IoU {cls['name']}", [percent(results[a]["metrics"]["classes"][index]["iou"]) for a in archs])
    row("parameters (M)", [f"{results[a]['parameters'] / 1e6:.1f}" for a in archs])
    row(f"GFLOPs ({size}²)", [f"{results[a]['flops'] / 1e9:.1f}" for a in archs])
    row(f"images/s ({device}, fp32)", [f"{1 / results[a]['fp32_seconds']:.2f}" for a in archs])
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The script's flags, checked (``--smoke`` excludes ``--data``; ``--data`` must be a folder)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs, evaluations and the table")
    parser.add_argument("--data", type=Path, default=None,
                        help="prepared iSAID root (default: the config's DATASET.ISAID_DIR; --smoke makes its own)")
    parser.add_argument("--gpus", type=int, default=1, help="training processes (torchrun above 1)")
    parser.add_argument("--bench_device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device of the throughput measurement")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU check of the whole pipeline: synthetic iSAID, 64 px crops, 1 epoch (figures "
                             "not meaningful)")
    parser.add_argument("train_flags", nargs="*", help="extra train.py flags, after --")
    args = parser.parse_args(argv)
    if args.smoke and args.data:
        parser.error("--smoke makes its own synthetic data; leave out --data")
    if args.data and not args.data.is_dir():
        parser.error(f"--data {args.data}: not a folder; prepare iSAID with tools/prepare_dataset.py first")
    return args


def main(argv: list[str] | None = None) -> str:
    """Train and evaluate both models, print the table, write ``ablation.md`` and ``ablation.json``."""
    args = parse_args(argv)
    if args.smoke:
        args.data = make_smoke_data(args.out / "data")
    size = SMOKE_SIZE if args.smoke else EVAL_SIZE
    for arch in ARCHS:
        run(train_command(args, arch))
        run(eval_command(args, arch, best_checkpoint(args, arch)))
    figures = measure_models(list(ARCHS), size, torch.device(args.bench_device), warmup=0 if args.smoke else 2,
                             repeats=2 if args.smoke else 5)
    results = {}
    for arch, measured in zip(ARCHS, figures):
        metrics = json.loads((args.out / "eval" / arch / "metrics.json").read_text())
        results[arch] = {"metrics": metrics, "parameters": measured.parameters, "flops": measured.flops,
                         "fp32_seconds": measured.fp32_seconds}
    table = format_table(results, size, args.bench_device)
    print(table)
    atomic_write_bytes(args.out / "ablation.md", (table + "\n").encode())
    atomic_write_bytes(args.out / "ablation.json", json.dumps(results, indent=1).encode())
    return table


if __name__ == "__main__":
    main()

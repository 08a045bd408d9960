"""End-to-end demo on generated data, on the CPU (``make demo``; a few minutes on 2 cores).

1. generate a small synthetic Potsdam download (``tools/make_synthetic_data.py``: 8 RGB tiles with
   their colour-coded labels, in the official folder layout);
2. prepare it into patches with ``tools/prepare_dataset.py`` (128 x 128, the official train/test split);
3. train PFNet-R50 from random initialisation with ``train.py`` (the paper's loss: OHEM + joint edge
   loss; SGD, poly LR), validating with the shared metric code;
4. evaluate the best checkpoint with ``eval.py`` on the test patches, writing colour predictions;
5. print the mIoU next to that of a constant prediction of the most frequent class.

Everything goes to ``demo_out/`` (replaced on every run); TensorBoard: ``tensorboard --logdir demo_out/tb``.
"""
from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a small machine shared with other work, spinning
# threads can slow training several-fold. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import eval as eval_script  # noqa: E402
import train  # noqa: E402
from config import parse_with_config  # noqa: E402
from datasets import get_dataset  # noqa: E402
from evaluation.metrics import ConfusionMatrix, metrics_summary  # noqa: E402
from tools.make_synthetic_data import make_synthetic  # noqa: E402
from tools.prepare_dataset import PrepareOptions, prepare  # noqa: E402
from utils.atomic import exit_on_write_error  # noqa: E402

MARKER = ".pfnet_demo"  # written into the output folder so a rerun only ever deletes a demo's folder
PATCH = 128
# Model options scaled to 128 px inputs (the paper's 14 / 9 / 128 are for 896 px patches).
MODEL_FLAGS = ["--arch", "pfnet_r50", "--maxpool_size", "4", "--avgpool_size", "4", "--edge_points", "16",
               "--match_dim", "64"]


def fresh_output_dir(out: Path) -> None:
    """Empty ``out`` if an earlier demo made it; refuse to touch any other non-empty folder."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise SystemExit(f"{out} exists and was not made by the demo; pass --out with a new folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).touch()


def majority_class_miou(root: Path, split: str) -> float:
    """mIoU of predicting the most frequent truth class everywhere, scored by :mod:`evaluation.metrics`."""
    dataset = get_dataset("Posdam", split, root)
    masks = [torch.from_numpy(dataset.read_pair(index)[1]).long() for index in range(len(dataset))]
    labelled = torch.cat([mask[mask < dataset.num_classes] for mask in masks])
    majority = int(torch.bincount(labelled, minlength=dataset.num_classes).argmax())
    confusion = ConfusionMatrix(dataset.num_classes)
    for mask in masks:
        confusion.update(torch.full_like(mask, majority), mask)
    return metrics_summary(confusion.matrix, dataset.class_names)["miou"]


def main(argv: list[str] | None = None) -> float:
    """Run the demo; returns the test mIoU."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (replaced if a demo made it)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (24 iterations of 4 patches each)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = args.out
    fresh_output_dir(out)

    print("1/4 generating synthetic raw Potsdam data", flush=True)
    raw = make_synthetic("potsdam", out / "raw", seed=0, num_images=8, size=4 * PATCH)
    print("2/4 preparing patches", flush=True)
    data = out / "data"
    prepare("potsdam", raw, data, PrepareOptions(patch_size=PATCH, stride=PATCH, workers=1))

    print("3/4 training PFNet-R50 on the CPU", flush=True)
    result = train.main([
        "--dataset", "Posdam", "--set", f"DATASET.POSDAM_DIR={data}", *MODEL_FLAGS,
        "--crop_size", str(PATCH), "--bs_mult", "4", "--num_workers", "0",
        "--lr", "0.02", "--lr_schedule", "poly", "--poly_exp", "0.9", "--max_epoch", str(args.epochs),
        "--joint_edge_loss_pfnet", "--edge_weight", "25", "--ohem",
        "--val_freq", "2", "--print_freq", "8", "--device", "cpu",
        "--exp", "demo", "--ckpt", str(out / "ckpt"), "--tb_path", str(out / "tb"),
    ])
    best = Path(result["run_dir"]) / result["best"]["file_name"]

    print(f"4/4 evaluating {best.name} with eval.py", flush=True)
    # the model options come from the checkpoint, which saved the run's configuration
    eval_args, eval_config = parse_with_config(eval_script.build_parser(), [
        "--dataset", "Posdam", "--dataset_dir", str(data), "--split", "test", "--snapshot", str(best),
        "--inference_mode", "whole", "--single_scale", "--no_flip", "--device", "cpu", "--num_workers", "0",
        "--out_dir", str(out / "eval"), "--dump_images", "--dump_side_by_side",
    ])
    summary = eval_script.evaluate(eval_args, eval_config)

    baseline = majority_class_miou(data, "test")
    minutes = (time.perf_counter() - start) / 60
    print(f"\nTest mIoU of PFNet-R50 trained for {args.epochs} epochs on the CPU: {100 * summary['miou']:.2f}% "
          f"(predicting the most frequent class everywhere: {100 * baseline:.2f}%)")
    print(f"colour predictions: {out / 'eval' / 'side_by_side'}; report: {out / 'eval' / 'report.html'}; "
          f"total {minutes:.1f} min")
    return summary["miou"]


if __name__ == "__main__":
    with exit_on_write_error():
        main()

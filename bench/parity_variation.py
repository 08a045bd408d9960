#!/usr/bin/env python3
"""How far this CPU's float32 results move from the stored parity fixtures, per kernel set and thread count.

Runs the parity cases of ``tests/data/parity`` (A: PFNet-R50, U: UperNet-R50, P: PSPNet-R50) twice in one child
process per configuration: a thread count (``OMP_NUM_THREADS``) and a kernel set forced by environment
variables (torch's ATen kernels by ``ATEN_CPU_CAPABILITY``, oneDNN's by ``ONEDNN_MAX_CPU_ISA``, MKL's by
``MKL_ENABLE_INSTRUCTIONS``; a kernel set the CPU lacks falls back to what it has). Prints the Markdown
table of docs/model.md ("What exact means across CPUs"): the largest deviation of each tensor from the stored
one as a fraction of that tensor's largest value, run-to-run differences, moved points and changed argmax
pixels. The tests' bound is 1e-4 of the same figure (tests/parity_case.py).

    python bench/parity_variation.py                       # every configuration below, 1 and 2 threads
    python bench/parity_variation.py --kernels default --threads 1 --json variation.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from parity_case import BASELINE_CASES, PARITY_DIR, load_baseline_case, load_case_a  # noqa: E402

from engine.cpu_precision import cpu_capability  # noqa: E402
from utils.atomic import atomic_write_bytes  # noqa: E402

KERNELS = {
    "default": {},
    "aten_avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avx_no_fma": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX", "MKL_ENABLE_INSTRUCTIONS": "AVX"},
}
"""Kernel sets: name -> the environment variables that force them."""
COLUMNS = ("a_logits", "u_logits", "p_logits", "a_edge_logits", "a_certainty", "a_point_flow", "a_trunk")


def record(module: torch.nn.Module, method_name: str, sink: list) -> None:
    """Make ``module.method_name`` append each of its results to ``sink``."""
    method = getattr(module, method_name)

    def recorded(*args):
        sink.append(method(*args))
        return sink[-1]
    setattr(module, method_name, recorded)


def capture(path: Path) -> None:
    """Run every parity case twice in this process; save its tensors to ``path`` (.npz)."""
    model, images, _ = load_case_a()
    seen: dict[str, list] = {"certainty": [], "edge": [], "salient": [], "point_flow": [], "edge_logits": []}
    for module in model.head.fpn_out_align:
        module.point_matcher.register_forward_hook(lambda m, i, out: seen["certainty"].append(out))
        module.register_forward_hook(lambda m, i, out: seen["point_flow"].append(out[0][:, :16]))
        record(module, "select_edge_points", seen["edge"])
        record(module, "select_salient_points", seen["salient"])
    model.head.register_forward_hook(lambda m, i, out: seen["edge_logits"].extend(out[1]))
    for index in range(5):
        getattr(model, f"layer{index}").register_forward_hook(
            lambda m, i, out, index=index: seen.update({f"layer{index}": out}))
    arrays = {}
    for repeat in range(2):
        for values in seen.values():
            if isinstance(values, list):
                values.clear()
        with torch.no_grad():
            arrays[f"a_logits_{repeat}"] = model(images).numpy()
    for j in range(3):
        arrays[f"certainty_{j}"] = seen["certainty"][j].numpy()
        arrays[f"edge_pred_{j}"] = seen["edge_logits"][j].numpy()
        arrays[f"point_flow_{j}"] = seen["point_flow"][j].numpy()
        arrays[f"edge_index_{j}"] = seen["edge"][j].numpy()
        arrays[f"salient_index_{j}"] = seen["salient"][j][1][:, 0].numpy()
    for index in range(5):
        arrays[f"layer{index}_first16"] = seen[f"layer{index}"][:, :16].numpy()
        arrays[f"layer{index}_chmean"] = seen[f"layer{index}"].mean(dim=(0, 2, 3)).numpy()
    for case in sorted(BASELINE_CASES):
        model, images, _, _ = load_baseline_case(case)
        for repeat in range(2):
            with torch.no_grad():
                arrays[f"{case[5]}_logits_{repeat}"] = model(images).numpy()
    np.savez(path, capability=cpu_capability(), threads=torch.get_num_threads(), **arrays)


def relative(ours: np.ndarray, stored: np.ndarray) -> float:
    """max|ours - stored| / max|stored|."""
    return float(np.abs(ours - stored).max() / np.abs(stored).max())


def compare(run: dict[str, np.ndarray]) -> dict:
    """One table row: the deviations of a captured run from the stored fixtures."""
    stored = {case: dict(np.load(PARITY_DIR / f"{name}_compact.npz"))
              for case, name in (("a", "case_a_isaid16"), *((case[5], case) for case in sorted(BASELINE_CASES)))}
    steps = dict(np.load(PARITY_DIR / "case_a_isaid16_intermediates.npz"))
    row = {"kernels": str(run["capability"]), "threads": int(run["threads"])}
    for case in "aup":
        row[f"{case}_logits"] = relative(run[f"{case}_logits_0"][:, :, ::4, ::4], stored[case]["logits_every4"])
    row["a_edge_logits"] = max(relative(run[f"edge_pred_{j}"], stored["a"][f"edge_pred_{j}"]) for j in range(3))
    row["a_certainty"] = max(relative(run[f"certainty_{j}"], steps[f"certainty_{j}"]) for j in range(3))
    row["a_point_flow"] = max(relative(run[f"point_flow_{j}"], steps[f"pf_out_{j}_first16"]) for j in range(3))
    row["a_trunk"] = max(float(np.abs(run[f"layer{i}_{part}"] - steps[f"layer{i}_{part}"]).max()
                               / np.abs(steps[f"layer{i}_first16"]).max())
                         for i in range(5) for part in ("first16", "chmean"))
    row["run_to_run"] = max(float(np.abs(run[f"{case}_logits_0"] - run[f"{case}_logits_1"]).max()) for case in "aup")
    row["points_moved"] = sum(
        len(np.setxor1d(run[f"edge_index_{j}"], steps[f"edge_topk_idx_{j}"]))
        + int((run[f"salient_index_{j}"] != steps[f"maxpool_idx_{j}"]).sum()) for j in range(3))
    row["argmax_changed"] = sum(int((run[f"{case}_logits_0"].argmax(1) != stored[case]["argmax"]).sum())
                                for case in "aup")
    return row


def measure(kernels: str, threads: int) -> dict:
    """The row of one configuration, measured in a child process with its environment."""
    env = {**os.environ, **KERNELS[kernels], "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.npz"
        subprocess.run([sys.executable, __file__, "--capture", str(path)], env=env, check=True)
        return {"configuration": f"{kernels}, OMP_NUM_THREADS={threads}", **compare(dict(np.load(path)))}


def format_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (deviations as fractions of each tensor's largest value)."""
    lines = ["| configuration | kernels | threads | " + " | ".join(COLUMNS) + " | run to run | points moved "
             "| argmax changed |", "|---|---|---:|" + "---:|" * (len(COLUMNS) + 3)]
    for row in rows:
        lines.append(f"| {row['configuration']} | {row['kernels']} | {row['threads']} | "
                     + " | ".join(f"{row[column]:.1e}" for column in COLUMNS)
                     + f" | {row['run_to_run']:.0e} | {row['points_moved']} | {row['argmax_changed']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """Measure the asked configurations, print the table and return it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", nargs="+", choices=sorted(KERNELS), default=list(KERNELS),
                        help="kernel sets to force (default: all)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="thread counts (default: 1 2)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--capture", default=None, help=argparse.SUPPRESS)  # the child process's job
    args = parser.parse_args(argv)
    if args.capture:
        capture(Path(args.capture))
        return ""
    rows = [measure(kernels, threads) for kernels in args.kernels for threads in args.threads]
    table = format_table(rows)
    print(table)
    if args.json:
        atomic_write_bytes(args.json, json.dumps(rows, indent=1).encode())
    return table


if __name__ == "__main__":
    main()

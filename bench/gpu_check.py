"""GPU check: one command that proves or refutes the CUDA paths and leaves figures behind (docs/gpu.md).

On a GPU machine (``make gpu-check OUT=dir``, or ``python3 bench/gpu_check.py --out dir``), in order:

1. ``install``: the packages of requirements.txt that the machine's own interpreter lacks (easydict,
   rasterio and its dependencies) from the wheels in ``.gpu_wheels/``, offline (``pip install --no-index
   --find-links``); a binary wheel built for another Python version is reported and left out.
2. ``cuda-tests``: ``pytest -m cuda tests/test_cuda.py``.
3. ``train-1gpu`` (and ``train-Ngpu`` under torchrun when there are several GPUs): train.py on synthetic
   Potsdam data with ``--syncbn --amp bf16 --deterministic`` (float32 in the rehearsal): two epochs
   straight, then one epoch, a stop and a resume; the two final checkpoints must be equal bit for bit.
4. ``bench-*``: ``python -m bench --device cuda`` rows (eval 896² batch 1 and 8: fp32, optimised, bf16,
   fp16, compile; train 896² batch 2 and 8: fp32, channels_last, amp, checkpoint) and the data-loader row
   (``bench/bench_data.py``) on this machine's CPU.

Each step's output goes to ``OUT/logs/STEP.log``; ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` hold the
results and a summary is printed. A failed step does not stop the later ones (except a failed install);
the exit status is 1 if any step failed. Without a GPU it says so and exits 2 at once.

Here, with network, before a GPU session: ``python bench/gpu_check.py --download-wheels`` fills
``.gpu_wheels/`` (cp311 manylinux builds; ``--python-version`` for another interpreter).

CPU rehearsal of everything but the CUDA work (same interpreter rules: a venv that has only what the GPU
machine's python3 has, installing from the wheels with no index)::

    python3 -m venv /tmp/gpu_rehearsal/venv
    /tmp/gpu_rehearsal/venv/bin/pip install torch==2.13.0 numpy opencv-python-headless pillow pyyaml \\
        tensorboard tqdm matplotlib onnxruntime pytest          # what the GPU machine already has
    /tmp/gpu_rehearsal/venv/bin/python bench/gpu_check.py --rehearse --out /tmp/gpu_rehearsal/out

``--rehearse`` runs the same steps on the CPU at toy sizes: the offline install, the collection of the
CUDA tests (all skipped), the training with a stop and an exact resume, and smoke-sized bench rows.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from utils.atomic import atomic_write_bytes  # noqa: E402

WHEELS_DIR = REPO / ".gpu_wheels"
WHEEL_PYTHON = "3.11"
# requirements.txt's packages that the lent GPU machine's python3 lacks, with their dependencies.
WHEEL_PACKAGES = ("easydict", "rasterio", "affine", "attrs", "certifi", "click", "cligj", "click-plugins", "pyparsing")
# import name -> wheel name of what the check needs; rasterio is optional (its tests skip without it).
NEEDED_MODULES = {"easydict": "easydict"}
OPTIONAL_MODULES = {"rasterio": "rasterio"}
TIME_BUDGET_S = 8 * 60
# torch's warning for a kernel without a deterministic implementation (train.py --deterministic uses warn_only).
NONDETERMINISTIC_KERNEL = re.compile(r"(\w+) does not have a deterministic implementation")
NO_GPU_MESSAGE = ("gpu-check: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing was run. "
                  "Run it on a GPU machine, or rehearse the non-CUDA steps with --rehearse")


@dataclass
class Step:
    """One step's outcome: ``status`` is passed, failed or skipped; ``figures`` holds its numbers."""
    name: str
    status: str = "skipped"
    seconds: float = 0.0
    detail: str = ""
    figures: dict = field(default_factory=dict)


@dataclass
class Plan:
    """Sizes and flags of the steps: the GPU's, or the CPU rehearsal's toy ones."""
    device: str
    train_crop: int
    synthetic_size: int
    bench_args: list[str]
    bench_groups: dict[str, list[str]]
    data_args: list[str]
    train_args: list[str]
    budget_s: float = TIME_BUDGET_S


def gpu_plan() -> Plan:
    eval_configs = ["--eval-configs", "original", "optimized", "bf16", "fp16", "compile", "--train-configs"]
    train_configs = ["--eval-sizes", "--train-size", "896", "--train-configs", "fp32", "channels_last", "amp",
                     "checkpoint"]
    return Plan(device="cuda", train_crop=256, synthetic_size=512,
                bench_args=["--device", "cuda", "--matmul-size", "8192", "--warmup", "2", "--repeats", "3"],
                bench_groups={"bench-eval-b1": ["--eval-sizes", "896", "--eval-batch", "1", *eval_configs],
                              "bench-eval-b8": ["--eval-sizes", "896", "--eval-batch", "8", *eval_configs],
                              "bench-train-b2": [*train_configs, "--train-batch", "2"],
                              "bench-train-b8": [*train_configs, "--train-batch", "8"]},
                data_args=["--images", "24", "--workers", "1", "2"],
                train_args=["--bs_mult", "2", "--num_workers", "2", "--amp", "bf16"])


def rehearsal_plan() -> Plan:
    return Plan(device="cpu", train_crop=64, synthetic_size=128, budget_s=4 * TIME_BUDGET_S,
                bench_args=["--device", "cpu", "--smoke", "--threads", "1"],
                bench_groups={"bench-smoke": []},  # --smoke: eval original and optimized, train fp32
                data_args=["--smoke"],
                # float32: CPUs without AVX512-BF16 run bf16 autocast in slow reference kernels
                train_args=["--bs_mult", "4", "--num_workers", "1", "--maxpool_size", "2", "--avgpool_size", "2",
                            "--edge_points", "8", "--amp", "off"])


def run_logged(name: str, command: list[str], out: Path, timeout: float, env: dict | None = None) -> tuple[int, str]:
    """Run ``command`` in the repository root with its output in ``OUT/logs/NAME.log``; (exit status, output).

    A command still running after ``timeout`` seconds is ended and reported with status 124.
    """
    print(f"[gpu-check] {name}: {' '.join(command)}", file=sys.stderr, flush=True)
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    try:
        result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout)
        code, output = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired as expired:  # its captured output comes as bytes, even with text=True
        code = 124
        output = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part
                         for part in (expired.stdout or "", expired.stderr or ""))
        output += f"\n[gpu-check] timed out: ended after {timeout:.0f} s"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "logs" / f"{name}.log").write_text(output)
    return code, output


def wheel_python_tag(name: str) -> str | None:
    """The CPython tag of a binary wheel file name (``cp311``), None for a pure-Python wheel."""
    python_tag = name.removesuffix(".whl").split("-")[-3]
    return python_tag if python_tag.startswith("cp") else None


def install_step(step: Step, out: Path, wheels: Path) -> None:
    """Install the missing wheels offline into this interpreter (see the module docstring, step 1)."""
    wanted = {**NEEDED_MODULES, **OPTIONAL_MODULES}
    missing = [module for module in wanted if importlib.util.find_spec(module) is None]
    step.figures["already_installed"] = sorted(set(wanted) - set(missing))
    if not missing:
        step.status, step.detail = "passed", "nothing to install"
        return
    files = sorted(wheels.glob("*.whl"))
    this_python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    foreign = [path.name for path in files if wheel_python_tag(path.name) not in (None, this_python)]
    notes = []
    if foreign:
        notes.append(f"this interpreter is {this_python} but {', '.join(foreign)} are built for another Python; "
                     f"left out (make them with `python bench/gpu_check.py --download-wheels --python-version "
                     f"{sys.version_info.major}.{sys.version_info.minor}`)")
    installable = [path for path in files if path.name not in foreign]
    names = {path.name.split("-")[0].lower().replace("_", "-") for path in installable}
    targets = [wanted[module] for module in missing if wanted[module] in names]
    if targets:
        code, output = run_logged("install", [sys.executable, "-m", "pip", "install", "--no-index", "--find-links",
                                              str(wheels), *targets], out, timeout=300)
        if code != 0:
            step.status, step.detail = "failed", f"pip install --no-index failed (logs/install.log): {output[-300:]}"
            return
    importlib.invalidate_caches()
    still_missing = [module for module in missing if importlib.util.find_spec(module) is None]
    step.figures["installed"] = sorted(set(missing) - set(still_missing))
    needed_missing = [module for module in still_missing if module in NEEDED_MODULES]
    if needed_missing:
        notes.append(f"{', '.join(needed_missing)} missing and not in {wheels}: run `python bench/gpu_check.py "
                     f"--download-wheels` on a machine with network and bring {wheels.name}/ along")
    elif still_missing:
        notes.append(f"{', '.join(still_missing)} not installed: the tests that need it skip")
    step.status = "failed" if needed_missing else "passed"
    step.detail = "; ".join(notes)


def cuda_tests_step(step: Step, out: Path, rehearse: bool) -> None:
    """pytest -m cuda on tests/test_cuda.py; on the rehearsal every test must be collected and skipped."""
    report = out / "cuda_tests.xml"
    code, output = run_logged("cuda-tests", [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py",
                                             "-q", "-p", "no:cacheprovider", f"--junitxml={report}"], out, timeout=300)
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    step.detail = summary
    step.figures = junit_counts(report)
    if rehearse:
        counts = step.figures
        ok = code == 0 and counts.get("tests", 0) > 0 and counts.get("skipped") == counts.get("tests")
    else:
        ok = code == 0
    step.status = "passed" if ok else "failed"


def junit_counts(report: Path) -> dict:
    """tests / failures / errors / skipped counts of a pytest JUnit XML report ({} if it is missing)."""
    import xml.etree.ElementTree as ElementTree
    if not report.is_file():
        return {}
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}


def training_data_step(step: Step, out: Path, plan: Plan) -> None:
    """Synthetic Potsdam, prepared into ``train_crop`` patches by the project's own CLIs; the prepared root
    goes to ``step.figures["root"]``."""
    data = out / "data"
    for name, command in (
        ("data-synthetic", [sys.executable, "tools/make_synthetic_data.py", "potsdam", "--out", str(data / "raw"),
                            "--num-images", "3", "--size", str(plan.synthetic_size), "--seed", "5"]),
        ("data-prepare", [sys.executable, "tools/prepare_dataset.py", "potsdam", "--raw", str(data / "raw"),
                          "--out", str(data / "potsdam"), "--patch-size", str(plan.train_crop),
                          "--stride", str(plan.train_crop)]),
    ):
        code, output = run_logged(name, command, out, timeout=300)
        if code != 0:
            step.status, step.detail = "failed", f"{name} failed (logs/{name}.log): {output[-300:]}"
            return
    step.status, step.figures = "passed", {"root": str(data / "potsdam")}


def train_step(step: Step, out: Path, plan: Plan, root: Path, processes: int) -> None:
    """Straight run of 2 epochs against 1 epoch + stop + resume + 1 epoch: equal final checkpoints?"""
    import torch
    launcher = [sys.executable, "train.py"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "train.py"]
    ckpt = out / "train" / step.name
    flags = ["--dataset", "Posdam", "--set", f"DATASET.POSDAM_DIR={root}", "--crop_size", str(plan.train_crop),
             "--arch", "pfnet_r50", "--joint_edge_loss_pfnet", "--ohem", "--edge_weight", "25", "--lr", "0.01",
             "--max_epoch", "3", *plan.train_args, "--syncbn",
             "--deterministic", "--device", plan.device, "--print_freq", "1",
             "--ckpt", str(ckpt / "ckpt"), "--tb_path", str(ckpt / "tb")]
    runs = (("straight", ["--exp", "straight", "--stop_after", "2"]),
            ("first", ["--exp", "split", "--stop_after", "1"]),
            ("resumed", ["--exp", "split", "--stop_after", "1", "--resume",
                         str(ckpt / "ckpt" / "split" / "Posdam-pfnet_r50" / "last.pth")]))
    logs = ""
    for label, extra in runs:
        code, output = run_logged(f"{step.name}-{label}", launcher + flags + extra, out, timeout=300)
        logs += output
        if code != 0:
            step.status, step.detail = "failed", f"{label} run failed (logs/{step.name}-{label}.log): {output[-300:]}"
            return
    straight = torch.load(ckpt / "ckpt" / "straight" / "Posdam-pfnet_r50" / "last.pth", weights_only=True)
    resumed = torch.load(ckpt / "ckpt" / "split" / "Posdam-pfnet_r50" / "last.pth", weights_only=True)
    final = resumed["state_dict"]
    differences = {key: float((value.double() - final[key].double()).abs().max())
                   for key, value in straight["state_dict"].items() if not torch.equal(value, final[key])}
    kernels = sorted(set(NONDETERMINISTIC_KERNEL.findall(logs)))
    synchronised = "synchronised BatchNorm (torch.nn.SyncBatchNorm)" in logs
    step.figures = {"processes": processes, "tensors": len(final), "differing_tensors": len(differences),
                    "max_abs_difference": max(differences.values(), default=0.0),
                    "nondeterministic_kernels": kernels, "synchronised_batchnorm": synchronised}
    sync_expected = processes > 1 and plan.device == "cuda"
    exact = not differences and straight["global_step"] == resumed["global_step"]
    step.status = "passed" if exact and synchronised == sync_expected else "failed"
    notes = [] if synchronised == sync_expected else [f"SyncBatchNorm: {synchronised}, expected {sync_expected}"]
    notes.append("resume bit-exact" if exact else
                 f"{len(differences)} of {len(final)} tensors differ after the resume "
                 f"(max {step.figures['max_abs_difference']:.3g}); kernels without a deterministic CUDA "
                 f"implementation: {', '.join(kernels) or 'none reported'}")
    step.detail = "; ".join(notes)


def bench_step(step: Step, out: Path, plan: Plan, extra: list[str]) -> None:
    """One ``python -m bench`` invocation; its rows go to OUT/NAME.json and the step's figures."""
    report = out / f"{step.name}.json"
    code, output = run_logged(step.name, [sys.executable, "-m", "bench", *plan.bench_args, *extra,
                                          "--json", str(report)], out, timeout=420)
    if code != 0 or not report.is_file():
        step.status, step.detail = "failed", f"python -m bench failed (logs/{step.name}.log): {output[-300:]}"
        return
    payload = json.loads(report.read_text())
    step.status = "passed"
    step.figures = {"machine": payload["machine"], "matmul_gflops": payload["matmul_gflops"],
                    "rows": [bench_row(row, payload["matmul_gflops"]) for row in payload["results"]]}


def bench_row(row: dict, matmul_gflops: dict[str, float]) -> dict:
    """A bench JSON row with images/s, GFLOP/s, % of the float32 matmul rate and peak MiB."""
    rate = row["flops"] / row["median"] / 1e9
    return {"task": row["task"], "config": row["config"], "batch": row["batch"], "size": row["size"],
            "median_ms": 1e3 * row["median"], "images_per_s": row["batch"] / row["median"], "gflops": rate,
            "percent_fp32_matmul": 100 * rate / matmul_gflops["float32"], "peak_mib": row["peak_bytes"] / 2**20}


def data_step(step: Step, out: Path, plan: Plan) -> None:
    """bench/bench_data.py: training DataLoader images/s per worker on this machine's CPU."""
    report = out / "bench-data.json"
    code, output = run_logged(step.name, [sys.executable, "bench/bench_data.py", *plan.data_args,
                                          "--json", str(report)], out, timeout=300)
    if code != 0 or not report.is_file():
        step.status, step.detail = "failed", f"bench/bench_data.py failed (logs/{step.name}.log): {output[-300:]}"
        return
    step.status, step.figures = "passed", json.loads(report.read_text())


def summary_markdown(steps: list[Step], machine: str, started: str, total_s: float) -> str:
    """The Markdown report: steps with status and time, then every bench row and the data-loader rows."""
    lines = [f"# GPU check, {started}", "", f"Machine: {machine}", f"Total: {total_s:.0f} s", "",
             "| step | status | seconds | detail |", "|---|---|---:|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.0f} | {s.detail.replace('|', '/')[:300]} |" for s in steps]
    rows = [row for s in steps if "matmul_gflops" in s.figures for row in s.figures["rows"]]
    if rows:
        lines += ["", "| task | input | config | median ms | images/s | GFLOP/s | % fp32 matmul | peak MiB |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['task']} | {r['batch']}x{r['size']}² | {r['config']} | {r['median_ms']:.1f} | "
                  f"{r['images_per_s']:.2f} | {r['gflops']:.0f} | {r['percent_fp32_matmul']:.0f}% | "
                  f"{r['peak_mib']:.0f} |" for r in rows]
        rates = {f"{s.name}": s.figures["matmul_gflops"] for s in steps if s.figures.get("matmul_gflops")}
        lines += ["", "Matmul GFLOP/s per bench step: " + "; ".join(
            f"{name}: " + ", ".join(f"{dtype} {rate:.0f}" for dtype, rate in values.items())
            for name, values in rates.items())]
    data = next((s.figures for s in steps if s.name == "bench-data" and s.figures), None)
    if data:
        lines += ["", "| data loader | workers | images/s | images/s per worker |", "|---|---:|---:|---:|"]
        lines += [f"| {r['pipeline']} {r['size']}² | {r['workers']} | {r['images_per_s']:.2f} | "
                  f"{r['images_per_s_per_worker']:.2f} |" for r in data["rows"]]
        train_rows = [r for r in rows if r["task"] == "train"]
        if train_rows:
            fastest = max(train_rows, key=lambda r: r["images_per_s"])
            per_worker = min(r["images_per_s_per_worker"] for r in data["rows"] if r["workers"] == 1)
            lines += ["", f"Fastest training row: {fastest['config']} {fastest['batch']}x{fastest['size']}², "
                          f"{fastest['images_per_s']:.1f} images/s; the slowest pipeline gives {per_worker:.2f} "
                          f"images/s per worker: {fastest['images_per_s'] / per_worker:.1f} workers per GPU needed"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/gpu_check.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="output folder for the JSON, Markdown and logs")
    parser.add_argument("--wheels", type=Path, default=WHEELS_DIR, help="folder of the wheels to install offline")
    parser.add_argument("--rehearse", action="store_true",
                        help="CPU rehearsal: the same steps at toy sizes without CUDA (see the module docstring)")
    parser.add_argument("--overwrite", action="store_true", help="write into an --out folder that holds a report")
    parser.add_argument("--download-wheels", action="store_true",
                        help="fill --wheels with pip download (needs network; run before the GPU session)")
    parser.add_argument("--python-version", default=WHEEL_PYTHON,
                        help="with --download-wheels: Python version of the GPU machine's interpreter")
    args = parser.parse_args(argv)
    if not args.download_wheels and args.out is None:
        parser.error("--out DIR is required (make gpu-check OUT=DIR)")
    if args.out is not None and (args.out / "gpu_check.json").exists() and not args.overwrite:
        parser.error(f"{args.out / 'gpu_check.json'} exists: choose another --out or add --overwrite")
    return args


def download_wheels(wheels: Path, python_version: str) -> int:
    """pip download of WHEEL_PACKAGES as manylinux x86-64 wheels for ``python_version`` into ``wheels``."""
    abi = "cp" + python_version.replace(".", "")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(wheels),
               "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
               "--python-version", python_version, "--implementation", "cp", "--abi", abi, "--abi", "none",
               "--abi", "abi3", *WHEEL_PACKAGES]
    code = subprocess.run(command).returncode
    size = sum(path.stat().st_size for path in wheels.glob("*.whl")) / 2**20 if wheels.is_dir() else 0.0
    print(f"{wheels}: {size:.1f} MiB of wheels (the device run carries at most 64 MiB in all)")
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the check (see the module docstring); returns the exit status."""
    args = parse_args(argv)
    if args.download_wheels:
        return download_wheels(args.wheels, args.python_version)
    try:
        import torch
    except ImportError:
        print(f"gpu-check: {sys.executable} has no torch; use the machine's CUDA build of torch", file=sys.stderr)
        return 2
    if not args.rehearse and not torch.cuda.is_available():
        print(NO_GPU_MESSAGE, file=sys.stderr)
        return 2
    plan = rehearsal_plan() if args.rehearse else gpu_plan()
    args.out.mkdir(parents=True, exist_ok=True)
    started, clock = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), time.perf_counter()
    gpus = torch.cuda.device_count() if plan.device == "cuda" else 0
    machine = (f"{torch.cuda.get_device_name(0)} x {gpus}, " if gpus else "CPU rehearsal, ") + \
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    steps: list[Step] = []

    def run(name: str, action, *action_args) -> Step:
        step = Step(name)
        steps.append(step)
        if time.perf_counter() - clock > plan.budget_s:
            step.detail = f"skipped: the check's {plan.budget_s:.0f} s budget is spent"
            return step
        begin = time.perf_counter()
        try:
            action(step, *action_args)
        except Exception as error:  # one step's failure is recorded; the others still run
            step.status, step.detail = "failed", f"{type(error).__name__}: {error}"
        step.seconds = time.perf_counter() - begin
        print(f"[gpu-check] {name}: {step.status} ({step.seconds:.0f} s) {step.detail}", file=sys.stderr, flush=True)
        return step

    if run("install", install_step, args.out, args.wheels).status == "passed":
        run("cuda-tests", cuda_tests_step, args.out, args.rehearse)
        data = run("train-data", training_data_step, args.out, plan)
        if data.status == "passed":
            root = Path(data.figures["root"])
            run("train-1gpu" if gpus else "train-1proc", train_step, args.out, plan, root, 1)
            if gpus > 1:
                run(f"train-{min(gpus, 8)}gpu", train_step, args.out, plan, root, min(gpus, 8))
        for name, extra in plan.bench_groups.items():
            run(name, bench_step, args.out, plan, extra)
        run("bench-data", data_step, args.out, plan)
    total = time.perf_counter() - clock
    report = {"machine": machine, "started": started, "total_seconds": total, "rehearsal": args.rehearse,
              "steps": [asdict(step) for step in steps]}
    markdown = summary_markdown(steps, machine, started, total)
    atomic_write_bytes(args.out / "gpu_check.json", json.dumps(report, indent=1).encode())
    atomic_write_bytes(args.out / "gpu_check.md", markdown.encode())
    print(markdown)
    failed = [step.name for step in steps if step.status == "failed"]
    print(f"gpu-check: {'FAILED: ' + ', '.join(failed) if failed else 'all steps passed'} "
          f"({total:.0f} s; report in {args.out / 'gpu_check.md'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

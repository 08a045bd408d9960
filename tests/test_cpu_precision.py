"""A bf16 / fp16 request on a CPU that only emulates it: one warning line at the start of train.py, eval.py and
predict.py, and the run goes on. The CPU flags are injected (a /proc/cpuinfo of another CPU), since the
machine running the tests may have any of them."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from script_run import REPO
from train_data import tiny_run_flags

import eval as eval_script
import network
import train
from engine import cpu_precision
from utils.checkpoint import save_checkpoint

# The flags lines of three CPUs' /proc/cpuinfo, shortened to the features that matter here.
AVX2_CPU = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2"
AVX512_BF16_CPU = AVX2_CPU + " avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16"
SAPPHIRE_RAPIDS_CPU = AVX512_BF16_CPU + " avx512_fp16 amx_bf16 amx_tile amx_int8"
AVX2_BF16_NOTE = ("precision: bf16 on this CPU (AVX2, no AVX512-BF16/AMX-BF16) is emulated and several times "
                  "slower than fp32; fp32 is the fast path here")


def cpuinfo(folder: Path, flags: str) -> Path:
    """A /proc/cpuinfo file of one CPU with ``flags`` (as Linux writes it)."""
    path = folder / f"cpuinfo_{len(flags)}"
    path.write_text(f"processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: a test CPU\nflags\t\t: {flags}\n"
                    f"bugs\t\t: spectre_v1\n\n")
    return path


@pytest.fixture
def cpu(tmp_path, monkeypatch):
    """``use(flags)`` makes this process's CPU look like one with those /proc/cpuinfo flags."""
    def use(flags: str | None) -> None:
        monkeypatch.setattr(cpu_precision, "CPU_INFO", tmp_path / "absent" if flags is None else
                            cpuinfo(tmp_path, flags))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    return use


def test_emulated_half_precision_is_named_with_the_fast_path(cpu):
    cpu(AVX2_CPU)
    assert cpu_precision.emulated_precision_note("bf16", "cpu") == AVX2_BF16_NOTE
    assert cpu_precision.emulated_precision_note("fp16", torch.device("cpu")) == (
        "precision: fp16 on this CPU (AVX2, no AVX512-FP16/AMX-FP16) is emulated and several times slower than "
        "fp32; fp32 is the fast path here")
    assert cpu_precision.cpu_capability() == "AVX2"


def test_no_note_for_native_support_float32_other_devices_or_unknown_cpus(cpu):
    cpu(AVX512_BF16_CPU)
    assert cpu_precision.emulated_precision_note("bf16", "cpu") is None
    assert "no AVX512-FP16/AMX-FP16" in cpu_precision.emulated_precision_note("fp16", "cpu")
    assert cpu_precision.cpu_capability() == "AVX2+AVX512-BF16"
    cpu(SAPPHIRE_RAPIDS_CPU)
    assert cpu_precision.emulated_precision_note("bf16", "cpu") is None
    assert cpu_precision.emulated_precision_note("fp16", "cpu") is None
    assert cpu_precision.cpu_capability() == "AVX2+AVX512-BF16+AMX-BF16+AVX512-FP16"
    cpu(AVX2_CPU)
    for precision, device in (("fp32", "cpu"), ("off", "cpu"), ("bf16", "cuda"), ("fp16", "cuda:1")):
        assert cpu_precision.emulated_precision_note(precision, device) is None
    cpu(None)  # no /proc/cpuinfo (macOS, Windows): nothing is known, nothing is said
    assert cpu_precision.emulated_precision_note("bf16", "cpu") is None


def test_train_and_eval_warn_at_the_start(cpu, tmp_path, capsys):
    cpu(AVX2_CPU)
    # no dataset: both stop at the data, after the one line
    with pytest.raises(SystemExit) as raised:
        train.main([*tiny_run_flags(tmp_path / "missing", tmp_path / "out"), "--amp", "bf16", "--bs_mult", "2"])
    assert raised.value.code == 2
    assert capsys.readouterr().out.count(AVX2_BF16_NOTE) == 1  # in the run's log, printed on stdout
    with pytest.raises(SystemExit) as raised:
        eval_script.main(["--dataset", "Vaihingen", "--dataset_dir", str(tmp_path / "missing"), "--snapshot",
                          str(tmp_path / "missing.pth"), "--device", "cpu", "--precision", "bf16"])
    assert raised.value.code == 2
    assert capsys.readouterr().err.count(f"warning: {AVX2_BF16_NOTE}") == 1
    with pytest.raises(SystemExit):
        train.main([*tiny_run_flags(tmp_path / "missing", tmp_path / "fp32"), "--bs_mult", "2"])
    assert "precision:" not in str(capsys.readouterr())


def run_predict_on_cpu(flags_file: Path, *flags: str) -> subprocess.CompletedProcess:
    """predict.py run as a user runs it, in a process whose CPU flags are read from ``flags_file``."""
    launcher = ("import runpy, sys; from pathlib import Path; import engine.cpu_precision as cpu; "
                "cpu.CPU_INFO = Path(sys.argv.pop(1)); sys.argv[0] = 'predict.py'; "
                "runpy.run_path('predict.py', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", launcher, str(flags_file), *flags], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.workflow
def test_predict_warns_once_and_goes_on(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "model.pth"
    save_checkpoint(checkpoint, {"state_dict": network.get_model("upernet_r18", 3, pretrained=None).state_dict(),
                                 "config": {"arch": "upernet_r18"}})
    image = tmp_path / "tile.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image)
    flags = [str(image), "--snapshot", str(checkpoint), "--device", "cpu", "--window", "64", "--precision", "bf16"]
    emulated = run_predict_on_cpu(cpuinfo(tmp_path, AVX2_CPU), *flags, "--out_dir", str(tmp_path / "avx2"))
    assert emulated.returncode == 0, emulated.stderr[-2000:]
    lines = [line for line in emulated.stderr.splitlines() if "precision:" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: precision: bf16 on this CPU (")
    assert lines[0].endswith(", no AVX512-BF16/AMX-BF16) is emulated and several times slower than fp32; fp32 "
                             "is the fast path here")
    assert (tmp_path / "avx2" / "tile_pred.png").is_file()
    native = run_predict_on_cpu(cpuinfo(tmp_path, AVX512_BF16_CPU), *flags, "--out_dir", str(tmp_path / "native"))
    assert native.returncode == 0, native.stderr[-2000:]
    assert "precision:" not in native.stderr and (tmp_path / "native" / "tile_pred.png").is_file()

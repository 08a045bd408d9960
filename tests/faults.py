"""Shared by the fault-injection tests: run the entry points as a user does and check that each fails cleanly.

A case is one command line with the exit code it must end with, the texts its message must contain (the
file or flag at fault) and the folders it must leave exactly as they were. A module builds its bad inputs
once, runs its cases as subprocesses (two at a time: the machine has two cores and most of the time is
Python and torch starting up), then checks every case in its own parametrized test. Variants of a fault
already run as a subprocess are run in-process through the script's ``main`` (same checks, no torch
start-up per case).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import yaml

from utils.atomic import PARTIAL_MARK

REPO = Path(__file__).resolve().parents[1]
PARALLEL_RUNS = 2
RUN_TIMEOUT_S = 300


@dataclass
class Case:
    """One bad command line.

    Attributes:
        argv: arguments after ``python`` (script path relative to the repository root first).
        code: the exit status it must end with.
        names: texts the output must contain, e.g. the file or the flag at fault.
        unchanged: folders whose files (hidden ones included) must be exactly as before the run.
        absent: paths that must not exist afterwards (e.g. a run folder a failed start must not leave).
        forbidden: texts the error message must not contain (e.g. a suggestion that does not apply).
    """

    argv: list[str]
    code: int
    names: tuple[str, ...]
    unchanged: tuple[Path, ...] = ()
    absent: tuple[Path, ...] = ()
    forbidden: tuple[str, ...] = ()


@dataclass
class Outcome:
    """What a case did: the finished process and the digests of its watched folders before and after."""

    case: Case
    result: subprocess.CompletedProcess
    before: dict[str, dict[str, str]] = field(default_factory=dict)
    after: dict[str, dict[str, str]] = field(default_factory=dict)


def folder_digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file below ``root`` (hidden files included), keyed by relative path."""
    if not root.exists():
        return {}
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def subprocess_env() -> dict[str, str]:
    """The environment of a user's shell, with one OpenMP thread (the machine is shared)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_command(argv: list[str], timeout: int = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``python argv...`` from the repository root, output captured as text."""
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


def run_cases(cases: dict[str, Case]) -> dict[str, Outcome]:
    """Run every case (PARALLEL_RUNS at a time) and record its watched folders before and after."""
    outcomes = {name: Outcome(case, None, {str(p): folder_digest(p) for p in case.unchanged})
                for name, case in cases.items()}
    with ThreadPoolExecutor(max_workers=PARALLEL_RUNS) as pool:
        results = dict(zip(cases, pool.map(lambda case: run_command(case.argv), cases.values())))
    for name, outcome in outcomes.items():
        outcome.result = results[name]
        outcome.after = {str(p): folder_digest(p) for p in outcome.case.unchanged}
    return outcomes


def run_in_process(main: Callable[[list[str]], object], case: Case, capsys) -> Outcome:
    """Run ``main(case.argv[1:])`` in this process as the command line would (for cases whose subprocess
    would spend its time importing torch): SystemExit's status and message, the captured output."""
    before = {str(p): folder_digest(p) for p in case.unchanged}
    code, message = 0, ""
    try:
        main(case.argv[1:])
    except SystemExit as stop:
        code, message = (1, f"{stop.code}\n") if isinstance(stop.code, str) else (stop.code or 0, "")
    captured = capsys.readouterr()
    result = subprocess.CompletedProcess(case.argv, code, captured.out, captured.err + message)
    return Outcome(case, result, before, {str(p): folder_digest(p) for p in case.unchanged})


def assert_clean_failure(outcome: Outcome) -> None:
    """Exit code as expected, the names in the output, no traceback, watched folders unchanged, no
    temporary file of utils.atomic left in them, absent paths absent."""
    case, result = outcome.case, outcome.result
    output = result.stdout + result.stderr
    assert result.returncode == case.code, f"exit {result.returncode}, expected {case.code}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    for name in case.names:
        assert name in output, f"{name!r} not in the output:\n{output[-3000:]}"
    messages = "\n".join(line for line in output.splitlines() if "error" in line)  # not the usage summary
    for text in case.forbidden:
        assert text not in messages, f"{text!r} in the message:\n{messages}"
    for folder, digest in outcome.before.items():
        assert outcome.after[folder] == digest, f"{folder} changed"
        assert not [name for name in outcome.after[folder] if PARTIAL_MARK in name]
    for path in case.absent:
        assert not path.exists(), f"{path} exists"


def copy_tree(source: Path, target: Path) -> Path:
    """A copy of ``source`` at ``target`` (for a case that damages its inputs)."""
    shutil.copytree(source, target)
    return target


def bomb_png(path: Path, width: int = 70_000, height: int = 70_000) -> Path:
    """A small PNG whose header claims ``width`` x ``height`` RGB pixels (a decompression bomb header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut ``path`` to ``keep`` of its bytes (a partly downloaded or partly written file)."""
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
    return path


def full_disk_available() -> bool:
    """Whether a private mount namespace with a tmpfs can be made here (unshare; root or user namespaces)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-r", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


_FULL_DISK_SCRIPT = r"""
set -e
cp -a "$FULL_DISK_DIR/." "$FULL_DISK_STAGE/"
mount -t tmpfs -o size=8m tmpfs "$FULL_DISK_DIR"
cp -a "$FULL_DISK_STAGE/." "$FULL_DISK_DIR/"
dd if=/dev/zero of="$FULL_DISK_DIR/.filler" bs=64k 2>/dev/null || true
set +e
"$@"
code=$?
rm -f "$FULL_DISK_DIR/.filler"
cp -a "$FULL_DISK_DIR/." "$FULL_DISK_KEEP/"
exit $code
"""


def run_on_full_disk(folder: Path, argv: list[str], keep: Path) -> subprocess.CompletedProcess:
    """Run ``python argv`` while ``folder`` is a full tmpfs holding a copy of its files.

    In a private mount namespace, ``folder``'s files are copied onto an 8 MB tmpfs mounted over it, the rest is
    filled with zeros, and the command runs; afterwards the tmpfs contents are copied to ``keep`` for checks
    (the mount disappears with the namespace; ``folder`` itself is never written).
    """
    stage = keep.with_name(keep.name + "-stage")
    for path in (stage, keep, folder):
        path.mkdir(parents=True, exist_ok=True)
    env = {**subprocess_env(), "FULL_DISK_DIR": str(folder), "FULL_DISK_STAGE": str(stage),
           "FULL_DISK_KEEP": str(keep)}
    command = ["unshare", "-r", "-m", "sh", "-c", _FULL_DISK_SCRIPT, "sh", sys.executable, *argv]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def case_table(builders: dict[str, Callable[[dict], Case]], data: dict) -> dict[str, Case]:
    """Build every case from the shared bad inputs ``data``."""
    return {name: build(data) for name, build in builders.items()}


def vrt_text(source: str, size: int = 64, relative: bool = True, raw: bool = False) -> str:
    """A GDAL VRT of ``size`` x ``size`` pixels reading ``source``: its three bands (a simple source), or its
    bytes as one 8-bit band (``raw``: a raw raster band, which reads any file)."""
    flag = int(relative)
    if raw:
        return (f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><VRTRasterBand dataType="Byte" band="1" '
                f'subClass="VRTRawRasterBand"><SourceFilename relativeToVRT="{flag}">{source}</SourceFilename>'
                f'<ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>{size}</LineOffset>'
                '</VRTRasterBand></VRTDataset>\n')
    window = f'xOff="0" yOff="0" xSize="{size}" ySize="{size}"'
    bands = "".join(f'<VRTRasterBand dataType="Byte" band="{band}"><SimpleSource><SourceFilename '
                    f'relativeToVRT="{flag}">{source}</SourceFilename><SourceBand>{band}</SourceBand>'
                    f'<SrcRect {window}/><DstRect {window}/></SimpleSource></VRTRasterBand>' for band in (1, 2, 3))
    return f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}">{bands}</VRTDataset>\n'


def id_mask_dataset(root: Path, images: dict[str, Callable[[Path], None]]) -> Path:
    """A custom dataset at ``root``: ``images/{name}`` written by ``images[name](path)``, ``masks/{stem}.png``
    (64 x 64, ids 0 and 1) for each, and ``spec.yaml`` (id masks, classes 0 and 1, half for train and half for
    val); returns the spec's path."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, write in images.items():
        write(root / "images" / name)
        ids = np.zeros((64, 64), np.uint8)
        ids[32:] = 1
        cv2.imwrite(str(root / "masks" / f"{Path(name).stem}.png"), ids)
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "toy", "images": "images", "masks": "masks", "mask_format": "ids",
                                    "classes": [{"name": "ground", "id": 0}, {"name": "roof", "id": 1}],
                                    "split_by": "fraction", "seed": 0, "splits": {"train": 0.5, "val": 0.5}}))
    return spec

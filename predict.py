"""Segment your own imagery with a PFNet checkpoint: image files, folders, file lists, whole GeoTIFF mosaics.

Every image, whatever its size, is segmented with overlapping sliding windows blended with Gaussian
weights (``--blend mean``: the uniform average); memory is bounded by the window, not the image (see
``evaluation.segmenter.Segmenter.predict_raster``; PNG/JPEG inputs are decoded whole, GeoTIFFs and VRTs are
read window by window). Inputs are read by ``utils.image_io``: ``--bands`` picks three bands of a
multi-band raster, 16-bit and float imagery is scaled by its stated rule (``--scaling``), nodata and
alpha are respected (no prediction there: the mask holds 255).

Outputs per input, in ``--out_dir``: ``{stem}_pred.png`` (palette PNG, pixel values = class ids) or
``{stem}_pred.tif`` (a Cloud-Optimized GeoTIFF of class ids with the input's CRS and transform or GCPs, a
colour table, nodata 255 and overviews; GDAL category names in ``{stem}_pred.tif.aux.xml``) and its QGIS
style ``{stem}_pred.qml`` (class colours and names); with ``--probabilities`` ``{stem}_prob.tif`` (one uint8
band per class, softmax x 255, described by class name, nodata in an internal mask); with ``--polygons``
``{stem}_pred.gpkg`` (GeoPackage in the input's CRS) or, with ``--polygons geojson``, ``{stem}_pred.geojson``
(RFC 7946: WGS 84 longitude/latitude), polygons per class streamed by ``utils.vector_io``; with ``--areas``
``{stem}_areas.csv``/``.json`` (pixels, area and share per class) and ``area_summary.csv``/``.json`` for the
folder. Then
``predict_summary.json``: what was written, kept and failed, merged with the summaries of earlier runs
into the folder (an input's newest result wins; one record per run).

One run at a time per output folder: a run holds ``{out_dir}/.run.lock`` (``utils.run_lock``) from
after its input checks until its summary is written; a second run refuses naming the holder, or waits
``--lock_timeout`` seconds and then skips what the first one finished.

Runs resume: a finished input (all its outputs present, the mask of the input's size: outputs are
published atomically, so a file under its name is complete) is skipped; any other file in the way is
refused unless ``--overwrite``. Before the model is loaded, every flag, input header and output path
is checked; an image whose pixels turn out unreadable later stops the run naming it (``--on-error
skip``: it is listed at the end and the run goes on). Several processes share the inputs:
``torchrun --nproc_per_node=N predict.py DIR ...`` (multi-node too), each on its own device.

Example::

    python predict.py --snapshot potsdam_r50.pth --dataset Posdam --out_dir preds top_potsdam_2_13_RGB.tif
    python predict.py --weights pfnet_r50.potsdam --out_dir preds top_potsdam_2_13_RGB.tif
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from config import add_config_flags, parse_with_config
from datasets.registry import names_text
from engine.cpu_precision import emulated_precision_note
from evaluation.cli import (
    add_band_arguments,
    add_run_arguments,
    add_tta_arguments,
    add_weights_argument,
    add_window_arguments,
    band_options,
    resolve_device,
)
from evaluation.dataset_split import dataset_table
from evaluation.inference import NODATA_CLASS
from evaluation.onnx_backend import add_backend_flags, check_backend_flags
from evaluation.restore import add_speed_flags
from evaluation.segmenter import DEFAULT_PROTOCOL, Protocol, Segmenter, require_valid_pixels
from network.options import add_model_flags
from network.zoo import apply_weights_flag
from utils.area_summary import folder_summary, tile_summary
from utils.atomic import atomic_write_bytes, exit_on_write_error, remove_stale_partial_files
from utils.checkpoint import CheckpointMismatchError
from utils.image_io import IMAGE_SUFFIXES, RASTER_SUFFIXES, ImageReadError, image_size, open_raster
from utils.qgis_style import aux_path, style_path, write_category_names, write_qml
from utils.run_lock import FolderBusyError, FolderLock, lock_folder, utc_timestamp
from utils.vector_io import VECTOR_FORMATS, VectorOptions, check_reprojectable, write_polygons

SUMMARY_FILE = "predict_summary.json"
AREA_SUMMARY = "area_summary"
"""Stem of the folder's area summary (``area_summary.csv`` and ``.json``, with ``--areas``)."""
LOCK_HINT = "wait for it to finish, pass --lock_timeout SECONDS to wait, or choose another --out_dir"
USAGE_ERRORS = (FileNotFoundError, FileExistsError, ValueError, KeyError, ImportError, OSError,
                CheckpointMismatchError)
ON_ERROR_CHOICES = ("error", "skip")


def build_parser() -> argparse.ArgumentParser:
    """predict.py's flags (values are checked in :func:`main`, before the model is loaded)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+",
                        help="image files, folders of images (not searched recursively) and/or .txt files listing "
                             "one image path per line")
    parser.add_argument("--snapshot", default=None,
                        help="checkpoint (.pth) to load, e.g. an official PFSegNets one (not with --backend "
                             "onnxruntime)")
    add_weights_argument(parser, instead_of="--snapshot")
    parser.add_argument("--dataset", default=None,
                        help=f"{names_text()}: gives the class count and the colour palette; without it both "
                             "are read from the checkpoint (train.py saves the class names and palette; for other "
                             "checkpoints a generic palette is used)")
    parser.add_argument("--dataset_spec", default=None,
                        help="with --dataset custom: its YAML description (not needed: the checkpoint carries "
                             "the classes)")
    output = parser.add_argument_group("output")
    output.add_argument("--out_dir", required=True, help="folder for the outputs (created if missing)")
    output.add_argument("--format", choices=("auto", "png", "tif"), default="auto",
                        help="mask format: palette PNG or Cloud-Optimized GeoTIFF; auto = GeoTIFF for TIFF/VRT "
                             "inputs, PNG otherwise (default auto). PNG drops a GeoTIFF's georeference (warned)")
    output.add_argument("--probabilities", action="store_true",
                        help="also write {stem}_prob.tif: one uint8 band per class, softmax of the blended logits "
                             "x 255")
    output.add_argument("--polygons", nargs="?", const="gpkg", default=None, choices=VECTOR_FORMATS,
                        help="also write the mask's polygons per class (fields class_id, class_name, area): gpkg "
                             "(the default) = {stem}_pred.gpkg in the input's CRS; geojson = {stem}_pred.geojson, "
                             "RFC 7946 (WGS 84 longitude/latitude; pixel coordinates for inputs without a CRS); "
                             "name the format when inputs follow the flag")
    output.add_argument("--simplify", type=float, default=0.0, metavar="TOLERANCE",
                        help="with --polygons: simplify outlines (Douglas-Peucker) by TOLERANCE in the input CRS's "
                             "units (default 0: exact pixel outlines)")
    output.add_argument("--min_area", type=float, default=0.0, metavar="AREA",
                        help="with --polygons: leave out polygons smaller than AREA (CRS units squared, m² when "
                             "projected in metres; default 0)")
    output.add_argument("--areas", action="store_true",
                        help="also write {stem}_areas.csv/.json (per class: pixels, area in CRS units, share of the "
                             "valid area) and area_summary.csv/.json for all inputs of --out_dir")
    output.add_argument("--overwrite", action="store_true",
                        help="redo finished inputs and replace files in the way (default: skip finished inputs, "
                             "refuse other existing files)")
    output.add_argument("--lock_timeout", type=float, default=0.0, metavar="SECONDS",
                        help="another run writing into --out_dir holds its lock: wait up to SECONDS for it to "
                             "finish (then go on with the inputs it left), or refuse at once naming it (default 0)")
    output.add_argument("--on-error", "--on_error", dest="on_error", choices=ON_ERROR_CHOICES, default="error",
                        help="on an image that cannot be read or segmented: stop naming it (default), or skip it, "
                             "go on and list it at the end (a re-run retries it)")
    inference = parser.add_argument_group("inference")
    add_window_arguments(inference, window=DEFAULT_PROTOCOL.window, blend=DEFAULT_PROTOCOL.blend)
    add_tta_arguments(inference, scales="1.0", flip=False)
    add_band_arguments(inference)
    add_run_arguments(parser)
    add_model_flags(parser)
    add_speed_flags(parser)
    add_config_flags(parser, "predict.py")
    add_backend_flags(parser)
    return parser


@dataclass(frozen=True)
class Job:
    """One input and the outputs it gets."""

    image: Path
    mask: Path
    probabilities: Path | None
    polygons: Path | None
    sidecars: tuple[Path, ...] = ()
    """The mask's QGIS style and category names, and the area summary with ``--areas``."""

    def outputs(self) -> list[Path]:
        """Every output path of this input."""
        return [path for path in (self.mask, self.probabilities, self.polygons, *self.sidecars) if path is not None]


def collect_inputs(entries: list[str]) -> list[Path]:
    """Image files named directly, the images (by suffix) directly inside named folders, and the paths listed
    in ``.txt`` files (one per line, relative to the list's folder); in order, duplicates dropped."""
    found = []
    for entry in map(Path, entries):
        if entry.is_dir():
            found += sorted(p for p in entry.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif entry.is_file() and entry.suffix.lower() == ".txt":
            lines = [line.strip() for line in entry.read_text().splitlines()]
            listed = [entry.parent / line for line in lines if line and not line.startswith("#")]
            missing = [path for path in listed if not path.is_file()]
            if missing:
                raise FileNotFoundError(f"{entry} lists {len(missing)} missing file(s), e.g. {missing[0]}")
            found += listed
        elif entry.is_file():
            found.append(entry)
        else:
            raise FileNotFoundError(f"input not found: {entry}")
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(entries)}")
    return list(dict.fromkeys(found))


def plan_jobs(inputs: list[Path], out_dir: Path, fmt: str, probabilities: bool, polygons: str | None,
              areas: bool = False) -> list[Job]:
    """One job per input (``{out_dir}/{stem}_pred.{png|tif}`` ...); refuse two inputs sharing an output name.
    ``polygons``: None or a format of ``utils.vector_io.VECTOR_FORMATS``."""
    jobs, seen = [], {}
    for image_path in inputs:
        mask_format = fmt if fmt != "auto" else ("tif" if image_path.suffix.lower() in RASTER_SUFFIXES else "png")
        mask = out_dir / f"{image_path.stem}_pred.{mask_format}"
        sidecars = [Path(style_path(mask))] + ([Path(aux_path(mask))] if mask_format == "tif" else [])
        if areas:
            sidecars += [out_dir / f"{image_path.stem}_areas.csv", out_dir / f"{image_path.stem}_areas.json"]
        job = Job(image=image_path, mask=mask,
                  probabilities=out_dir / f"{image_path.stem}_prob.tif" if probabilities else None,
                  polygons=out_dir / f"{image_path.stem}_pred.{polygons}" if polygons else None,
                  sidecars=tuple(sidecars))
        if job.mask in seen:
            raise ValueError(f"{image_path} and {seen[job.mask]} would both be written to {job.mask}; "
                             "predict them into different --out_dir folders")
        seen[job.mask] = image_path
        jobs.append(job)
    return jobs


def is_own_output(path: Path, size: tuple[int, int]) -> bool:
    """Whether ``path`` is an output this input gets: a raster (mask, probabilities) whose header has the
    input's size, or a vector or sidecar file. Outputs are published atomically, so such a file is complete."""
    if path.suffix in (".geojson", ".gpkg", ".qml", ".xml", ".csv", ".json"):
        return path.is_file()
    try:
        return image_size(path) == size
    except ImageReadError:
        return False


def check_input(path: Path, read_options: dict) -> tuple[int, int]:
    """(H, W) of an input from its header; a raster (TIFF/VRT) is also opened as it will be read (bands, a
    sample of its pixels), so its problems show before any output is written. PNG/JPEG are decoded later.

    Raises:
        ImageReadError: unreadable header, ``--bands`` beyond the band count, no valid pixel; names the file.
    """
    if path.suffix.lower() not in RASTER_SUFFIXES:
        return image_size(path)
    with open_raster(path, **read_options) as source:
        require_valid_pixels(path, source)
        return source.height, source.width


def check_job(job: Job, read_options: dict, overwrite: bool) -> bool:
    """Check the input (:func:`check_input`) and its outputs; True if the job is already finished (to skip).

    Raises:
        ImageReadError: see :func:`check_input`. FileExistsError: an output path holds something other than
            an output of this input (:func:`is_own_output`) and ``overwrite`` is not set.
    """
    size = check_input(job.image, read_options)
    for path in job.outputs():
        if path.is_dir():
            raise FileExistsError(f"{path} is a folder, so {job.image}'s output cannot be written there: remove it "
                                  "or choose another --out_dir")
    if job.polygons is not None and job.polygons.suffix == ".geojson" and \
            job.image.suffix.lower() in RASTER_SUFFIXES:
        with open_raster(job.image, **read_options) as source:
            check_reprojectable((source.geo_profile or {}).get("crs"), job.image)
    if overwrite:
        return False
    existing = [path for path in job.outputs() if path.exists()]
    for path in existing:
        if not is_own_output(path, size):
            raise FileExistsError(f"{path} exists but is not a finished output of {job.image} "
                                  f"({size[1]}x{size[0]}); pass --overwrite to replace it")
    return len(existing) == len(job.outputs())  # some missing (a run stopped between them): redo the job


def check_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` and check it is writable; remove partial files of ended runs.

    Raises:
        OSError: not creatable or not writable; the message names the folder.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(f"cannot create the output folder {out_dir}: {error.strerror}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OSError(f"cannot write to the output folder {out_dir} (permission denied): choose another --out_dir")
    remove_stale_partial_files(out_dir)


def predict_file(segmenter: Segmenter, job: Job, read_options: dict, vector_options: VectorOptions,
                 show_progress: bool = True) -> None:
    """Segment one image into its outputs (each published atomically; partial files removed on failure), then
    write the mask's sidecars (:func:`write_mask_sidecars`).

    Raises:
        ImageReadError: unreadable pixels, bands out of range or no valid pixel; utils.atomic.WriteError:
            an output could not be written.
    """
    segmenter.predict_raster(job.image, job.mask, job.probabilities, read_options=read_options,
                             show_progress=show_progress)
    write_mask_sidecars(job, segmenter.class_names, segmenter.palette, vector_options)


def write_mask_sidecars(job: Job, class_names: list[str], palette: np.ndarray, vector_options: VectorOptions) -> None:
    """The files derived from a published mask: its QGIS style and category names, polygons, area summary."""
    write_qml(job.mask, class_names, palette, NODATA_CLASS)
    if job.mask.suffix == ".tif":
        write_category_names(job.mask, class_names)
    if job.polygons is not None:
        write_polygons(job.mask, job.polygons, class_names, NODATA_CLASS, vector_options)
    areas = [path for path in job.sidecars if path.name.endswith("_areas.json")]
    if areas:
        tile_summary(job.mask, areas[0].with_suffix(""), class_names, NODATA_CLASS)


def write_area_summary(jobs: list[Job], out_dir: Path, class_names: list[str]) -> None:
    """The folder's area summary (``area_summary.csv``/``.json``) from the per-tile summaries present."""
    tiles = [json.loads(path.read_text(encoding="utf-8")) for job in jobs for path in job.sidecars
             if path.name.endswith("_areas.json") and path.is_file()]
    if tiles:  # a run that only kept finished tiles loaded no model: the names are in the tiles' summaries
        names = class_names or [row["class_name"] for row in tiles[0]["classes"]]
        folder_summary(tiles, out_dir / AREA_SUMMARY, names)


def distributed_context(device: str) -> tuple[int, int, str]:
    """(rank, world size, this process's device); joins the ``torchrun`` process group when there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), world, device


def gather_results(results: dict, world: int) -> list[dict]:
    """Every process's results (all processes take part), in rank order."""
    if world == 1:
        return [results]
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    return gathered


def summary_entries(summary: dict) -> dict[str, dict]:
    """Per-input entries of a summary, keyed by input path: ``{"status": "written"|"kept"|"failed"}``, plus
    ``"error"`` for a failure."""
    entries = {}
    for status in ("written", "kept"):
        entries.update({path: {"status": status} for path in summary.get(status, [])})
    entries.update({failure["input"]: {"status": "failed", "error": failure["error"]}
                    for failure in summary.get("failed", [])})
    return entries


def read_previous_summary(path: Path) -> tuple[dict[str, dict], list[dict]]:
    """The per-input entries and run records of an earlier run's summary in the folder (none if absent).

    An unreadable summary is reported on stderr and treated as absent (it is replaced).
    """
    if not path.exists():
        return {}, []
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        return summary_entries(summary), list(summary.get("runs", []))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        print(f"warning: {path} is not a readable predict summary ({error}): it is replaced by this run's",
              file=sys.stderr)
        return {}, []


def write_summary(out_dir: Path, per_process: list[dict], seconds: float, started: str) -> str:
    """Merge this run's results into ``{out_dir}/predict_summary.json`` and return the printed summary.

    The file lists every input of every run into the folder (``written``, ``kept``, ``failed`` with the
    reason; an input's newest result wins) and one record per run (``runs``: start time, host, process id,
    process count, seconds, counts). Written atomically; callers hold the folder's lock (``utils.run_lock``).
    """
    this_run = {key: sum((results[key] for results in per_process), []) for key in ("written", "kept", "failed")}
    entries, runs = read_previous_summary(out_dir / SUMMARY_FILE)
    entries.update(summary_entries(this_run))
    runs.append({"started": started, "host": socket.gethostname(), "pid": os.getpid(), "processes": len(per_process),
                 "seconds": round(seconds, 1), **{key: len(values) for key, values in this_run.items()}})
    summary = {status: sorted(path for path, entry in entries.items() if entry["status"] == status)
               for status in ("written", "kept")}
    summary["failed"] = [{"input": path, "error": entries[path]["error"]}
                         for path in sorted(entries) if entries[path]["status"] == "failed"]
    summary["runs"] = runs
    atomic_write_bytes(out_dir / SUMMARY_FILE, (json.dumps(summary, indent=2) + "\n").encode())
    lines = [f"predict: {len(this_run['written'])} written, {len(this_run['kept'])} finished before (kept), "
             f"{len(this_run['failed'])} failed; {len(per_process)} process(es), {seconds:.1f} s; summary of "
             f"{len(entries)} input(s) from {len(runs)} run(s) in {out_dir / SUMMARY_FILE}"]
    if this_run["failed"]:
        lines.append(f"{len(this_run['failed'])} input(s) failed (re-run the same command to retry them):")
        lines.extend(f"  {failure['input']}: {failure['error']}" for failure in this_run["failed"])
    return "\n".join(lines)


def sort_out_jobs(jobs: list[Job], read_options: dict, args: argparse.Namespace, results: dict) -> list[Job]:
    """The jobs still to do; finished ones are added to ``results["kept"]`` and, with ``--on-error skip``,
    unreadable inputs to ``results["failed"]`` (see :func:`check_job`).

    Raises:
        ImageReadError: an unreadable input without ``--on-error skip``. FileExistsError: see :func:`check_job`.
    """
    todo = []
    for job in jobs:
        try:
            finished = check_job(job, read_options, args.overwrite)
        except ImageReadError as error:
            if args.on_error == "error":
                raise
            results["failed"].append({"input": str(job.image), "error": str(error)})
            continue
        if finished:
            results["kept"].append(str(job.image))
        else:
            todo.append(job)
    return todo


def lock_out_dir(out_dir: Path, lock_timeout: float, rank: int, world: int) -> FolderLock | None:
    """Take the output folder's lock for every process of this run (rank 0 holds it; see ``utils.run_lock``).

    Returns:
        The lock on rank 0, None on the other ranks.

    Raises:
        FolderBusyError: on every rank, when another run still holds the folder after ``lock_timeout`` seconds.
    """
    lock, refusal = None, None
    if rank == 0:
        try:
            lock = lock_folder(out_dir, "predict.py", lock_timeout, LOCK_HINT)
        except FolderBusyError as error:
            refusal = str(error)
    if world > 1:
        shared = [refusal]
        dist.broadcast_object_list(shared, src=0)
        refusal = shared[0]
    if refusal is not None:
        raise FolderBusyError(refusal)
    return lock


def load_segmenter(args: argparse.Namespace, protocol: Protocol, todo: list[Job]) -> Segmenter | None:
    """The :class:`Segmenter` of the checkpoint or ONNX file (None when there is nothing to do), ``--dataset``
    giving the classes when set (else the checkpoint's saved ones or the file's, else generic ones)."""
    classes = dataset_table(args.dataset, args.dataset_spec) if args.dataset else None
    if not todo:  # nothing to do (all finished): no model to load
        return None
    segmenter = Segmenter.from_args(args, classes=classes, protocol=protocol)
    if segmenter.resolved is not None:
        for warning in segmenter.resolved.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"model: {segmenter.resolved.describe()}")
    return segmenter


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: check every flag, input and output, lock the output folder, load the model
    once, run the jobs, merge the summary.

    Flag, input header, output and checkpoint problems end in a usage error (exit status 2) before any
    output is written; so does an output folder that another run holds (after ``--lock_timeout``). An image
    that fails later stops the run with its name (exit status 2; earlier outputs are kept and a re-run
    resumes) unless ``--on-error skip``.
    """
    parser = build_parser()
    args, _ = parse_with_config(parser, argv)
    start = time.perf_counter()
    started = utc_timestamp()
    try:
        check_backend_flags(args)
        protocol = Protocol.from_args(args)
        read_options = band_options(args)
        if not args.lock_timeout >= 0:
            raise ValueError(f"--lock_timeout must be 0 or more seconds, got {args.lock_timeout}")
        out_dir = Path(args.out_dir)
        if args.simplify < 0 or args.min_area < 0:
            raise ValueError("--simplify and --min_area must be 0 or more")
        if args.polygons == "gpkg" and importlib.util.find_spec("pyogrio") is None:
            raise ImportError("--polygons gpkg writes GeoPackages with pyogrio: pip install pyogrio (or use "
                              "--polygons geojson)")
        jobs = plan_jobs(collect_inputs(args.inputs), out_dir, args.format, args.probabilities, args.polygons,
                         args.areas)
        rank, world, args.device = distributed_context(resolve_device(args.device))
        note = emulated_precision_note(args.precision, args.device) if args.backend == "pytorch" else None
        if note and rank == 0:
            print(f"warning: {note}", file=sys.stderr)
        results = {"written": [], "kept": [], "failed": []}
        todo = sort_out_jobs(jobs[rank::world], read_options, args, results)
        check_out_dir(out_dir)
        apply_weights_flag(args)
    except USAGE_ERRORS as error:
        parser.error(str(error))
    try:
        lock = lock_out_dir(out_dir, args.lock_timeout, rank, world)
    except OSError as error:  # FolderBusyError: another run holds the folder; or no lock file can be made
        parser.exit(2, f"error: {error}\n")
    try:
        try:
            todo = sort_out_jobs(todo, read_options, args, results)  # another run may have finished some meanwhile
            segmenter = load_segmenter(args, protocol, todo)
        except USAGE_ERRORS as error:
            parser.error(str(error))
        vector_options = VectorOptions(simplify=args.simplify, min_area=args.min_area)
        with tqdm(todo, desc="images", unit="img", disable=len(todo) < 2) as progress:  # closed before an error
            for job in progress:
                try:
                    predict_file(segmenter, job, read_options, vector_options)
                except (ValueError, ImportError, OSError) as error:
                    if args.on_error == "error":
                        progress.close()
                        parser.exit(2, f"error: {job.image}: {error}\n")
                    results["failed"].append({"input": str(job.image), "error": str(error).splitlines()[0]})
                    continue
                results["written"].append(str(job.image))
                print(f"{job.image} -> {', '.join(map(str, job.outputs()))}")
        per_process = gather_results(results, world)
        if rank == 0:
            if args.areas:
                write_area_summary(jobs, out_dir, segmenter.class_names if segmenter is not None else [])
            print(write_summary(out_dir, per_process, time.perf_counter() - start, started))
    finally:
        if lock is not None:
            lock.release()
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    with exit_on_write_error():
        sys.exit(main())

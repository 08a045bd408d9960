"""Named weights: the released PFSegNets checkpoints and the deep-stem ImageNet trunks, by name.

``ZOO`` holds one :class:`ZooEntry` per file; :func:`weights_path` turns a name into a local, verified copy:

1. the cache, ``$PFSEG_HOME`` (default ``~/.cache/pfsegnets``), holds each file as ``<name>.pth``;
2. on first use the file is downloaded into ``<name>.pth.partial`` (an interrupted download is resumed from
   there): from ``$PFSEG_WEIGHTS_MIRROR`` when it is set (a folder, ``file://`` or ``http(s)://`` prefix
   holding ``<name>.pth``; then the only source, for offline sites), else from Google Drive with ``gdown``;
3. the download is checked before it is renamed onto ``<name>.pth`` (``utils.atomic.publish``): not an HTML
   page, the table's sha256 (or, where the table has none, the sha256 recorded at the first complete download
   in ``$PFSEG_HOME/sha256_first_download.json``), loadable strictly into its model, the classes of its entry;
4. a cached file is hashed again at every use and refused if it no longer matches.

Every failure is one :class:`WeightsError` line; nothing half-written is left under a final name, and a full
disk leaves no ``.partial`` file either.

``PFSEG_ZOO_TEST_ENTRIES`` may name a JSON file holding a list of extra entries (the fields of
:class:`ZooEntry`): for tests, which must not download anything. Those entries resolve by name like the
official ones but are never listed.

Command line: ``python -m network.zoo list`` (the table and what is cached) and
``python -m network.zoo download NAME...``.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

import numpy as np
from torch import nn
from tqdm import tqdm

from datasets.base import IMAGENET_MEAN, IMAGENET_STD
from datasets.registry import dataset_class
from network.registry import ModelEntry, get_model, model_defaults, model_entry
from network.trunk import STRIDE32_DILATED, ResNetTrunkModel
from utils.atomic import atomic_write_bytes, publish
from utils.checkpoint import fill_model, load_checkpoint, read_checkpoint, read_class_table

HOME_ENV = "PFSEG_HOME"
MIRROR_ENV = "PFSEG_WEIGHTS_MIRROR"
TEST_ENTRIES_ENV = "PFSEG_ZOO_TEST_ENTRIES"
DEFAULT_HOME = "~/.cache/pfsegnets"
RECORD_FILE = "sha256_first_download.json"
PARTIAL_SUFFIX = ".partial"
CHUNK_BYTES = 1 << 20

CHECKPOINT, IMAGENET = "checkpoint", "imagenet"
# Where the links were read: the README of the original at this commit (2023-07-06).
README_SOURCE = "github lxtGH/PFSegNets README.md @ e613a5998eb5a3228df248f543694c55347611c1"
# The README's "Pretrained Models" Drive folder (the deep-stem ImageNet ResNets; no per-file links are given).
IMAGENET_FOLDER_ID = "1C7YESlSnqeoJiR8DWpmD4EVWvwf9rreB"
IMAGENET_BAIDU = "https://pan.baidu.com/s/1MWzpkI3PwtnEl1LSOyLrLw (code 4lwf)"


class WeightsError(ValueError):
    """Named weights that cannot be provided; ``str()`` is one line saying why and what to do."""


class UnknownWeightsError(WeightsError):
    """A name that is not in the zoo; the message lists the names."""


@dataclass(frozen=True)
class ZooEntry:
    """One downloadable weights file.

    Attributes:
        name: the name users type (``pfnet_r50.isaid``); the cache file is ``<name>.pth``.
        kind: ``checkpoint`` (a whole segmentation model) or ``imagenet`` (a trunk for ``--pretrained``).
        arch: checkpoints: the registry arch (``network.get_model``); ImageNet trunks: what they initialise.
        dataset: checkpoints: the registry dataset whose classes, palette and split they were trained on.
        trunk_depth: ImageNet trunks: 50 or 101 (the deep-stem ResNet's depth).
        window: recommended inference window / evaluation size in pixels (the official ``--resize_scale``).
        published_miou: the mIoU (%) the original's README reports, on ``protocol``.
        protocol: how ``published_miou`` was scored, in words.
        eval_flags: the ``eval.py`` flags of that protocol.
        measured_miou: the mIoU (%) this code measured with ``eval_flags`` (None until measured).
        drive_file_id: Google Drive file id of the file.
        drive_folder_id: Google Drive folder holding the file as ``file_name`` (where no file link exists).
        file_name: the file's name in that folder.
        baidu: the Baidu Pan link and its extraction code (manual download only).
        link_source: where the links were read.
        size: bytes (None: unknown until a download).
        sha256: hex digest (None: unknown until a download; the first download's is recorded and enforced).
    """

    name: str
    kind: str
    arch: str
    dataset: str | None = None
    trunk_depth: int | None = None
    window: int | None = None
    published_miou: float | None = None
    protocol: str = ""
    eval_flags: str = ""
    measured_miou: float | None = None
    drive_file_id: str | None = None
    drive_folder_id: str | None = None
    file_name: str | None = None
    baidu: str | None = None
    link_source: str = ""
    size: int | None = None
    sha256: str | None = None

    @property
    def options(self) -> dict:
        """Model options of a checkpoint (the registry's recommended ones: the official training scripts')."""
        return model_defaults(self.arch) if self.kind == CHECKPOINT else {}

    @property
    def class_names(self) -> list[str]:
        """Class names of a checkpoint (its dataset's, in label-id order); [] for an ImageNet trunk."""
        return list(dataset_class(self.dataset).class_names) if self.dataset else []

    @property
    def palette(self) -> np.ndarray | None:
        """(K, 3) uint8 RGB colours of a checkpoint's classes (its dataset's); None for an ImageNet trunk."""
        return np.asarray(dataset_class(self.dataset).palette, np.uint8) if self.dataset else None

    @property
    def normalisation(self) -> dict:
        """Input normalisation: RGB scaled to [0, 1], minus ``mean``, over ``std`` (the ImageNet statistics)."""
        return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}

    @property
    def manual_link(self) -> str:
        """Where a person downloads the file by hand."""
        if self.drive_file_id:
            return f"https://drive.google.com/file/d/{self.drive_file_id}/view"
        if self.drive_folder_id:
            return f"https://drive.google.com/drive/folders/{self.drive_folder_id} (file {self.file_name})"
        return "(no public link)"


def _pfnet_r50(dataset: str, window: int, published: float, split: str, drive_id: str, baidu: str,
               extra_flags: str = "", note: str = "") -> ZooEntry:
    """An official PFNet-R50 checkpoint, scored as the original's test script for ``dataset`` scores it."""
    flags = (f"--dataset {dataset} --split {split} --inference_mode whole --single_scale --no_flip "
             f"--resize_scale {window}{extra_flags}")
    protocol = f"{split} patches resized to {window}x{window}, whole image, one scale, no flip, all classes{note}"
    return ZooEntry(name=f"pfnet_r50.{dataset.lower()}", kind=CHECKPOINT, arch="pfnet_r50", dataset=dataset,
                    window=window, published_miou=published, protocol=protocol, eval_flags=flags,
                    drive_file_id=drive_id, baidu=baidu, link_source=README_SOURCE)


def _imagenet_trunk(depth: int) -> ZooEntry:
    """The original's ImageNet deep-stem ResNet file ``resnet{depth}-deep.pth`` (in the README's Drive folder)."""
    return ZooEntry(name=f"resnet{depth}_deep.imagenet", kind=IMAGENET, arch=f"deep-stem ResNet-{depth} trunk",
                    trunk_depth=depth, drive_folder_id=IMAGENET_FOLDER_ID, file_name=f"resnet{depth}-deep.pth",
                    baidu=IMAGENET_BAIDU, link_source=README_SOURCE)


ZOO: dict[str, ZooEntry] = {entry.name: entry for entry in (
    _pfnet_r50("iSAID", 896, 66.9, "val", "1igB0y-5IybcIxf0cALFoqh0Pg36OxWR-",
               "https://pan.baidu.com/s/1xX2DXdQ5SdpKA3w2EAdZUA (code v3oj)"),
    # The original's Potsdam test script omits --maxpool_size, so its number was scored with 9, not the 14 the
    # model was trained with; the flags repeat that to reproduce the published protocol.
    _pfnet_r50("potsdam", 896, 75.4, "test", "1tVvPLaMLBp55HfyDhRgmRcMOW44CSc6s",
               "https://pan.baidu.com/s/1NX1k80NBIrA_G03AsmzZ1w (code lhlf)", extra_flags=" --maxpool_size 9",
               note=", max-pool grid 9"),
    _pfnet_r50("Vaihingen", 768, 70.4, "test", "1C3FrXPo8-LuBGUJcC6PCcMP-FP8zVXXb",
               "https://pan.baidu.com/s/1LSOViE817pS2XpzMPCBbwA (code 54qm)"),
    _imagenet_trunk(50),
    _imagenet_trunk(101),
)}
"""The official entries (the only ones listed)."""


def _test_entries() -> dict[str, ZooEntry]:
    """Entries of the JSON file named by ``PFSEG_ZOO_TEST_ENTRIES`` (none when unset).

    Raises:
        WeightsError: the file cannot be read or holds something other than a list of entries.
    """
    path = os.environ.get(TEST_ENTRIES_ENV)
    if not path:
        return {}
    known = {field.name for field in fields(ZooEntry)}
    try:
        items = json.loads(Path(path).read_text())
        return {item["name"]: ZooEntry(**{k: v for k, v in item.items() if k in known}) for item in items}
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise WeightsError(f"{TEST_ENTRIES_ENV}={path}: not a JSON list of zoo entries ({error})") from None


def zoo_entry(name: str) -> ZooEntry:
    """The entry named ``name`` (official, or from ``PFSEG_ZOO_TEST_ENTRIES``).

    Raises:
        UnknownWeightsError: no such name; the message lists the official names.
    """
    entry = ZOO.get(name) or _test_entries().get(name)
    if entry is None:
        raise UnknownWeightsError(f"unknown weights {name!r}; known: {', '.join(ZOO)} (python -m network.zoo list)")
    return entry


def cache_dir() -> Path:
    """``$PFSEG_HOME``, else ``~/.cache/pfsegnets`` (not created here)."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser()


def cached_file(name: str) -> Path:
    """Where the weights ``name`` are (or will be) cached: ``<cache>/<name>.pth``."""
    return cache_dir() / f"{name}.pth"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded() -> dict:
    """The first-download hashes recorded in the cache (``{name: {"sha256", "bytes", "source"}}``)."""
    path = cache_dir() / RECORD_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise WeightsError(f"{path} is damaged (not JSON): delete it and the files it lists to download them "
                           "again") from None


def _expected_sha256(entry: ZooEntry) -> tuple[str | None, str]:
    """The sha256 a file of ``entry`` must have and whose it is (the table's, or the first download's)."""
    if entry.sha256:
        return entry.sha256, "the zoo table's"
    recorded = _recorded().get(entry.name, {}).get("sha256")
    return recorded, f"the first download's (recorded in {cache_dir() / RECORD_FILE})"


def _record_sha256(entry: ZooEntry, digest: str, size: int, source: str) -> None:
    """Remember the hash of the first complete, checked file of an entry whose table has none."""
    records = _recorded()
    records[entry.name] = {"sha256": digest, "bytes": size, "source": source}
    atomic_write_bytes(cache_dir() / RECORD_FILE, (json.dumps(records, indent=2, sort_keys=True) + "\n").encode())


def _source(entry: ZooEntry) -> str:
    """The URL (or mirror path) the file of ``entry`` is downloaded from."""
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        return f"{mirror.rstrip('/')}/{entry.name}.pth"
    if entry.drive_file_id:
        return f"https://drive.google.com/uc?id={entry.drive_file_id}"
    if entry.drive_folder_id:
        return f"https://drive.google.com/drive/folders/{entry.drive_folder_id} ({entry.file_name})"
    return ""


def _by_hand(entry: ZooEntry, target: Path) -> str:
    """The manual route, for messages."""
    baidu = f" or Baidu Pan {entry.baidu}" if entry.baidu else ""
    return f"download it by hand from {entry.manual_link}{baidu} and save it as {target}"


def _copy_local(path: Path, partial: Path) -> None:
    """A mirror folder or ``file://`` source: copy it whole (a local copy restarts rather than resumes)."""
    with open(path, "rb") as source, open(partial, "wb") as out:
        shutil.copyfileobj(source, out, CHUNK_BYTES)


def _download_http(url: str, partial: Path, label: str) -> None:
    """Download ``url`` into ``partial``, resuming from its current size with an HTTP Range request."""
    start = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # the partial file already holds everything
            return
        raise
    with response:
        if start and response.status != 206:  # the server ignored the range: start over
            start = 0
        remaining = response.headers.get("Content-Length")
        total = start + int(remaining) if remaining is not None else None
        with open(partial, "ab" if start else "wb") as out, \
                tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=label) as bar:
            for block in iter(lambda: response.read(CHUNK_BYTES), b""):
                out.write(block)
                bar.update(len(block))
    if total is not None and partial.stat().st_size != total:
        raise ConnectionError(f"the connection ended after {partial.stat().st_size} of {total} bytes")


def _download_drive(entry: ZooEntry, partial: Path) -> None:
    """Download from Google Drive with gdown (it resumes its own ``.part`` files beside ``partial``)."""
    try:
        import gdown
    except ImportError:
        raise WeightsError(f"downloading {entry.name} from Google Drive needs gdown (pip install gdown); or "
                           f"{_by_hand(entry, cached_file(entry.name))}") from None
    file_id = entry.drive_file_id
    if file_id is None:
        listed = gdown.download_folder(id=entry.drive_folder_id, skip_download=True, quiet=True)
        matches = [item.id for item in listed if Path(item.path).name == entry.file_name]
        if not matches:
            raise WeightsError(f"the Google Drive folder {entry.drive_folder_id} lists no {entry.file_name} "
                               f"(it has {', '.join(Path(item.path).name for item in listed) or 'nothing'}); "
                               f"{_by_hand(entry, cached_file(entry.name))}")
        file_id = matches[0]
    gdown.download(id=file_id, output=str(partial), quiet=False, resume=True)


def _short_reason(error: BaseException, limit: int = 160) -> str:
    """The innermost cause of a download error (a DNS failure under requests' retry wrappers), on one short line."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _download(entry: ZooEntry, partial: Path, target: Path) -> None:
    """Fill ``partial`` from the mirror or Google Drive.

    Raises:
        WeightsError: no source, the source is unreachable or lacks the file (``partial`` kept for a resume),
            or the disk is full (``partial`` removed).
    """
    source = _source(entry)
    if not source:
        raise WeightsError(f"{entry.name} has no download link; put the file at {target}")
    print(f"downloading {entry.name} from {source} to {target}", file=sys.stderr)
    mirror = os.environ.get(MIRROR_ENV)
    try:
        if mirror and source.startswith(("http://", "https://")):
            _download_http(source, partial, entry.name)
        elif mirror:
            _copy_local(Path(source.removeprefix("file://")), partial)
        else:
            _download_drive(entry, partial)
    except WeightsError:
        raise
    except Exception as error:  # urllib, gdown and requests report an unreachable source in many types
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            for leftover in partial.parent.glob(partial.name + "*"):  # gdown's own .part files too
                leftover.unlink(missing_ok=True)
            raise WeightsError(f"no space left on the disk of {target.parent} while downloading {entry.name} "
                               f"({entry.size or 'size unknown'} bytes): free some space or set {HOME_ENV} to "
                               "another folder; nothing was kept") from None
        if isinstance(error, FileNotFoundError):
            raise WeightsError(f"{MIRROR_ENV} has no {entry.name}.pth ({source}); copy the file there, or "
                               f"{_by_hand(entry, target)}") from None
        kept = " (the partial download is kept and resumed next time)" if partial.exists() else ""
        raise WeightsError(f"could not download {entry.name} from {source} ({_short_reason(error)}); "
                           f"{_by_hand(entry, target)}{kept}") from None


def _refuse_html(entry: ZooEntry, path: Path, source: str, target: Path) -> None:
    """Raises WeightsError when ``path`` holds a web page (Google Drive's quota or sign-in page, a proxy's
    error page) instead of a checkpoint."""
    with open(path, "rb") as handle:
        head = handle.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        raise WeightsError(f"{source} sent an HTML page, not the {entry.name} checkpoint (Google Drive does when "
                           f"the file's download quota is exceeded or access is refused); {_by_hand(entry, target)}")


def _check_contents(entry: ZooEntry, path: Path, trusted_pickle: bool) -> None:
    """Load ``path`` strictly into the model of ``entry`` and check its classes (an ImageNet trunk: into the
    deep-stem trunk of its depth).

    Raises:
        WeightsError: unreadable file, other tensors, or other classes than the entry's; one line.
    """
    try:
        if entry.kind == IMAGENET:
            ResNetTrunkModel(entry.trunk_depth, nn.BatchNorm2d, pretrained=path, **STRIDE32_DILATED)
            return
        checkpoint = read_checkpoint(path, trusted_pickle=trusted_pickle)
        classifier_key = model_entry(entry.arch).classifier_key
        classifier = checkpoint["state_dict"].get(classifier_key)
        found = None if classifier is None else int(classifier.shape[0])
        if found != len(entry.class_names):
            raise WeightsError(f"holds {found or 'no'} classes in {classifier_key}, but {entry.name} is {entry.arch} "
                               f"for the {len(entry.class_names)} classes of {entry.dataset}")
        saved = read_class_table(checkpoint)
        if saved is not None and saved[0] != entry.class_names:
            raise WeightsError(f"was trained for the classes {saved[0]}, not {entry.dataset}'s {entry.class_names}")
        model = get_model(entry.arch, found, pretrained=None, **entry.options)
        fill_model(model, checkpoint, path, strict_shapes=True, classifier_key=classifier_key)
    except Exception as error:  # read, shape and trunk errors all become one line naming the entry
        first_line = str(error).strip().splitlines()[0]
        raise WeightsError(f"{path} does not fit {entry.name}: {first_line}") from None


def _check_sha256(entry: ZooEntry, path: Path) -> str | None:
    """Hash ``path``; refuse it if it differs from the hash it must have. Returns the digest if none is known
    yet (the caller records it once the file is accepted), else None.

    Raises:
        WeightsError: naming both hashes.
    """
    digest = file_sha256(path)
    expected, whose = _expected_sha256(entry)
    if expected is None:
        return digest
    if digest != expected:
        raise WeightsError(f"{path}: sha256 {digest} differs from {whose} {expected} for {entry.name}: the file "
                           f"is damaged or another one; delete {cached_file(entry.name)} (if present) to download "
                           "it again")
    return None


@contextlib.contextmanager
def _download_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<target>.lock`` (processes of one torchrun job fetch one file once)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = open(target.with_name(target.name + ".lock"), "a")
    except OSError as error:
        raise WeightsError(f"cannot use the weights cache {target.parent} ({error.strerror}): set {HOME_ENV} to a "
                           "writable folder") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _fetch(entry: ZooEntry, target: Path, trusted_pickle: bool) -> None:
    """Download ``entry`` into ``<target>.partial``, check it, rename it onto ``target``, record its hash."""
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    _download(entry, partial, target)
    source = _source(entry)
    try:
        _refuse_html(entry, partial, source, target)
        new_digest = _check_sha256(entry, partial)
        _check_contents(entry, partial, trusted_pickle)
    except BaseException:
        partial.unlink(missing_ok=True)  # a wrong file is never resumed
        raise
    publish(partial, target)
    if new_digest is not None:
        _record_sha256(entry, new_digest, target.stat().st_size, source)
    print(f"{entry.name}: {target} ({target.stat().st_size} bytes, sha256 {file_sha256(target)})", file=sys.stderr)


def weights_path(name: str, *, trusted_pickle: bool = False) -> Path:
    """The local, verified file of the weights ``name``, downloaded on first use (see the module docstring).

    Args:
        name: a zoo name (``pfnet_r50.isaid``, ``resnet50_deep.imagenet``, ...).
        trusted_pickle: let the strict-load check unpickle arbitrary objects (only for files you trust).

    Returns:
        ``<cache>/<name>.pth``.

    Raises:
        UnknownWeightsError: no such name (the message lists the names).
        WeightsError: the file cannot be downloaded, is a web page, has another sha256 than the table's or the
            first download's (both named), does not load strictly, or holds other classes; one line.
        utils.atomic.WriteError: the checked download could not be renamed or its hash recorded.
    """
    entry = zoo_entry(name)
    target = cached_file(entry.name)
    with _download_lock(target):
        if not target.is_file():
            _fetch(entry, target, trusted_pickle)
            return target
        new_digest = _check_sha256(entry, target)
        if new_digest is not None:  # put there by hand: check it once, then hold it to its hash
            _check_contents(entry, target, trusted_pickle)
            _record_sha256(entry, new_digest, target.stat().st_size, "placed by hand")
    return target


def apply_weights_flag(args: argparse.Namespace) -> ZooEntry | None:
    """Resolve ``--weights NAME`` of an entry point, once: a checkpoint entry becomes ``args.snapshot``, an
    ImageNet trunk ``args.pretrained`` (train.py); ``--arch`` and an optional ``--dataset`` (predict.py,
    export_onnx.py) that were not given take the entry's values.

    Returns:
        The entry, or None without ``--weights``.

    Raises:
        WeightsError: unknown name, a conflicting ``--snapshot`` / ``--pretrained``, an entry this entry point
            cannot use, or see :func:`weights_path`.
    """
    name = getattr(args, "weights", None)
    if not name:
        return None
    entry = zoo_entry(name)
    flag = "snapshot" if entry.kind == CHECKPOINT else "pretrained"
    if not hasattr(args, flag):
        raise WeightsError(f"--weights {name} is an ImageNet trunk: it initialises training (train.py --weights "
                           f"{name}), it cannot be evaluated or exported")
    if getattr(args, flag):
        raise WeightsError(f"--weights {name} gives the --{flag} file: leave out --{flag} {getattr(args, flag)}")
    if entry.kind == CHECKPOINT:
        args.arch = args.arch or entry.arch
        if getattr(args, "dataset", "") is None:
            args.dataset = entry.dataset
    path = weights_path(name, trusted_pickle=getattr(args, "trusted_pickle", False))
    setattr(args, flag, str(path))
    print(f"--weights {name}: {path} (as --{flag})", file=sys.stderr)
    return entry


def model_with_weights(model: ModelEntry, num_classes: int | None, name: str, options: dict) -> nn.Module:
    """``network.get_model(arch, num_classes, weights=name, **options)``: the model of registry entry ``model``
    filled with the zoo weights ``name``.

    A checkpoint entry must be for the same arch; ``num_classes`` (None: the entry's) must be its class count;
    ``options`` override the entry's. An ImageNet trunk entry initialises the trunk (``pretrained``).

    Raises:
        WeightsError: another arch or class count (one line), or see :func:`weights_path`.
    """
    entry = zoo_entry(name)
    if entry.kind == IMAGENET:
        if num_classes is None:
            raise WeightsError(f"{name} is an ImageNet trunk: get_model needs num_classes with it")
        return model.builder(num_classes, **{**model.defaults, **options, "pretrained": weights_path(name)})
    if model_entry(entry.arch).name != model.name:
        raise WeightsError(f"{name} holds {entry.arch} weights, not {model.name}")
    count = len(entry.class_names)
    if num_classes not in (None, count):
        raise WeightsError(f"{name} predicts the {count} classes of {entry.dataset}, not {num_classes}; to fine-tune "
                           f"on other classes: train.py --weights {name} --snapshot_partial")
    built = model.builder(count, **{**entry.options, **options, "pretrained": None})
    load_checkpoint(weights_path(name), built, strict_shapes=True, classifier_key=model.classifier_key)
    return built


def cache_state(name: str) -> str:
    """``yes`` (cached), ``partial`` (an interrupted download to resume) or ``no``."""
    target = cached_file(name)
    if target.is_file():
        return "yes"
    if target.parent.is_dir() and any(p.name.startswith(target.name + PARTIAL_SUFFIX) for p in target.parent.iterdir()):
        return "partial"
    return "no"


def zoo_table() -> list[dict]:
    """One row per official entry: name, arch, dataset, classes, protocol, published / measured mIoU, cached."""
    def percent(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    return [{"name": entry.name, "arch": entry.arch,
             "dataset": dataset_class(entry.dataset).name if entry.dataset else "ImageNet",
             "classes": str(len(entry.class_names)) if entry.kind == CHECKPOINT else "1000 (trunk only)",
             "published": percent(entry.published_miou), "measured": percent(entry.measured_miou),
             "cached": cache_state(entry.name), "protocol": entry.protocol or "-"}
            for entry in ZOO.values()]


def format_table(rows: list[dict]) -> str:
    """Rows as aligned text columns with a header."""
    columns = list(rows[0])
    widths = {column: max(len(column), *(len(row[column]) for row in rows)) for column in columns}
    lines = ["  ".join(column.ljust(widths[column]) for column in columns)]
    lines += ["  ".join(row[column].ljust(widths[column]) for column in columns) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m network.zoo list`` | ``download NAME...``; errors: one line, status 2 (unknown name) or 1."""
    parser = argparse.ArgumentParser(prog="python -m network.zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the official weights, their scores and whether they are cached")
    download = commands.add_parser("download", help="download and verify weights into the cache")
    download.add_argument("names", nargs="+", help="zoo names (see list)")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(format_table(zoo_table()))
        print(f"cache: {cache_dir()}")
        return 0
    for name in args.names:
        try:
            print(weights_path(name))
        except UnknownWeightsError as error:
            parser.error(str(error))
        except WeightsError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

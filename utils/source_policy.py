"""What a GDAL input may make GDAL read: the policy the one image reader (``utils.image_io``) applies.

A TIFF is one file, but GDAL also opens formats that name other files or URLs: a VRT (GDAL's XML
format) lists source files, raw byte files and network paths, and GDAL reads them when it opens and
reads the VRT. A VRT handed in as an input (or renamed ``.tif``; GDAL recognises it by its content) could
therefore make the reader return the bytes of any file the process can read, or send requests to any
host. The rule:

* A VRT is inspected before GDAL opens it: its XML is parsed here (``xml.etree``) and every
  ``SourceFilename`` / ``SourceDataset`` is resolved (``relativeToVRT``; symbolic links followed). Each
  must be a plain file inside the input's own folder or under a folder the user names
  (``--allow-source-root DIR``), and be a TIFF, PNG, JPEG, or a VRT obeying the same rule (raw byte
  sources only need to lie inside); nested VRTs are followed to ``MAX_VRT_DEPTH`` levels.
* Network paths (``/vsicurl/``, ``/vsis3/``, ``/vsigs/``, ``/vsiaz/``, ... or ``http(s)://``, ``ftp://``), as
  the input or as a source, are refused unless the user opts in (``--allow-network-sources``). Other GDAL
  virtual paths and connection strings (``/vsizip/``, ``/vsisubfile/``, ``MEM:::``, ``vrt://``) cannot be
  checked and are refused.
* After GDAL has opened the input (header only), its driver must be one of ``ALLOWED_DRIVERS`` and every
  file GDAL lists for the dataset must lie inside those folders.
* GDAL runs with ``gdal_options``: without the network opt-in, ``/vsicurl/`` and the cloud file systems
  built on it refuse every name (``CPL_VSIL_CURL_ALLOWED_EXTENSIONS``), so no request is made even if a
  path slipped through; inline Python pixel functions are off in any case.

The default policy (``STRICT_SOURCES``) allows no extra folder and no network.
"""
from __future__ import annotations

import argparse
import os
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

ALLOWED_DRIVERS = ("GTiff", "VRT")
"""GDAL drivers the reader opens inputs with (``.tif``, ``.tiff``, ``.vrt``); others are never tried."""
MAX_VRT_DEPTH = 8
"""Nested VRT levels followed before a VRT is refused."""
VRT_MARK = b"<VRTDataset"
"""GDAL recognises a VRT by this text in the file's first bytes, whatever its name."""
HEADER_BYTES = 1024
"""Bytes GDAL looks at to recognise a format."""
SOURCE_TAGS = ("SourceFilename", "SourceDataset")
"""VRT elements naming another file or dataset."""
_NETWORK = re.compile(r"/vsi(curl|s3|gs|az|adls|oss|swift|webhdfs|hdfs)|(https?|ftps?)://", re.IGNORECASE)
_VIRTUAL = re.compile(r"^(/vsi|[A-Za-z][A-Za-z0-9_]*:)")
_NO_NETWORK_EXTENSION = ".network-reads-disabled"
_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
"""First bytes of TIFF, BigTIFF, PNG and JPEG files: formats that name no other file."""


@dataclass(frozen=True)
class SourcePolicy:
    """Which files and network paths a GDAL input may make GDAL read, besides the files in its own folder.

    Attributes:
        roots: further folders under which a VRT's sources may lie (``--allow-source-root``, repeatable).
        network: whether network paths may be read, as the input or as a source (``--allow-network-sources``).
    """

    roots: tuple[str, ...] = ()
    network: bool = False

    def gdal_options(self) -> dict[str, str]:
        """GDAL configuration options (for ``rasterio.Env``) that enforce the network rule inside GDAL too."""
        options = {"GDAL_VRT_ENABLE_PYTHON": "NO"}
        if not self.network:
            options["CPL_VSIL_CURL_ALLOWED_EXTENSIONS"] = _NO_NETWORK_EXTENSION
        return options


STRICT_SOURCES = SourcePolicy()
"""The default: only files in the input's own folder, no network."""


def add_source_arguments(parser: argparse._ActionsContainer) -> None:
    """``--allow-source-root DIR`` (repeatable) and ``--allow-network-sources``: the reader's GDAL source policy
    (this module), shared by predict.py and eval.py (through ``evaluation.cli``) and tools/prepare_dataset.py; here
    so that the data tools need not import torch."""
    parser.add_argument("--allow-source-root", "--allow_source_root", dest="allow_source_root", action="append",
                        default=[], metavar="DIR",
                        help="a folder a VRT input may read source files from, besides the VRT's own folder "
                             "(repeatable; default: none)")
    parser.add_argument("--allow-network-sources", "--allow_network_sources", dest="allow_network_sources",
                        action="store_true",
                        help="let GDAL read network paths (/vsicurl/, /vsis3/, http(s)://, ...) named as inputs or "
                             "VRT sources (default: refused, and GDAL makes no request)")


def source_policy(args: argparse.Namespace) -> SourcePolicy:
    """The reader's source policy from ``--allow-source-root`` and ``--allow-network-sources``.

    Raises:
        ValueError: an ``--allow-source-root`` that is not a folder; the message names the flag.
    """
    for root in args.allow_source_root:
        if not Path(root).is_dir():
            raise ValueError(f"--allow-source-root {root}: not a folder; name an existing folder")
    return SourcePolicy(roots=tuple(args.allow_source_root), network=args.allow_network_sources)


def is_network_path(name: str) -> bool:
    """Whether GDAL would read ``name`` over the network (``/vsicurl/``, ``/vsis3/``, ``https://``, ...)."""
    return bool(_NETWORK.search(name))


def input_problem(path: str | os.PathLike, policy: SourcePolicy) -> str | None:
    """Why GDAL must not open ``path`` under ``policy`` (one line naming the file and the flag), or None.

    Only the file's first bytes are read here and, for a VRT, its XML (recursively for nested VRTs);
    GDAL is not involved, so nothing a VRT names is read or requested.
    """
    name = os.fspath(path)
    if is_network_path(name):
        return None if policy.network else (f"{name} is a network path: pass --allow-network-sources to let GDAL "
                                            "read it")
    if _VIRTUAL.match(name):
        return f"{name} is a GDAL virtual path or connection string, which the reader does not open; give a file"
    if not os.path.isfile(name):
        return None  # the reader reports a missing file itself
    return _vrt_problem(Path(name), Path(name), _roots(Path(name), policy), policy, 0)


def gdal_driver(path: str | os.PathLike) -> str | None:
    """The only GDAL driver ``path`` may be opened with: VRT for a file holding ``VRT_MARK``, else GTiff; None
    (any, checked after opening) for a network path, which cannot be looked at without GDAL."""
    name = os.fspath(path)
    if is_network_path(name) or not os.path.isfile(name):
        return None
    return "VRT" if _is_vrt(Path(name)) else "GTiff"


def opened_problem(path: str | os.PathLike, driver: str, files: list[str], policy: SourcePolicy) -> str | None:
    """Why a dataset GDAL has opened (header only) must not be read: a driver outside ``ALLOWED_DRIVERS`` or a
    file it uses outside the allowed folders; None if it may be read."""
    if driver not in ALLOWED_DRIVERS:
        return f"{path}: GDAL opens it with its {driver} driver; only {', '.join(ALLOWED_DRIVERS)} inputs are read"
    if is_network_path(os.fspath(path)):
        return None
    roots = _roots(Path(path), policy)
    for name in files:
        if is_network_path(name):
            if not policy.network:
                return f"{path}: GDAL would read {name} with it: pass --allow-network-sources to allow network reads"
        elif not _inside(Path(name), roots):
            return f"{path}: GDAL would read {name} with it, {_outside_text(Path(path), Path(name), roots)}"
    return None


def _roots(path: Path, policy: SourcePolicy) -> list[Path]:
    return [Path(os.path.realpath(path.parent)), *(Path(os.path.realpath(root)) for root in policy.roots)]


def _inside(name: Path, roots: list[Path]) -> bool:
    real = Path(os.path.realpath(name))
    return any(real == root or root in real.parents for root in roots)


def _outside_text(top: Path, source: str | Path, roots: list[Path]) -> str:
    extra = " or the --allow-source-root folders" if len(roots) > 1 else ""
    return (f"outside the input's folder {top.parent}{extra}: pass --allow-source-root "
            f"{Path(os.path.realpath(source)).parent} if that folder may be read")


def _is_vrt(path: Path) -> bool:
    with open(path, "rb") as handle:
        return VRT_MARK in handle.read(HEADER_BYTES)


def _vrt_problem(top: Path, vrt: Path, roots: list[Path], policy: SourcePolicy, depth: int) -> str | None:
    """The first source of ``vrt`` (a file inside the roots) that breaks the policy, as a message; None if
    it is no VRT or all its sources are fine."""
    if not _is_vrt(vrt):
        return None
    via = "" if vrt == top else f" (through {vrt})"
    if depth >= MAX_VRT_DEPTH:
        return f"{top}: VRTs nested more than {MAX_VRT_DEPTH} deep{via}; flatten it with gdal_translate"
    try:
        tree = ElementTree.parse(vrt)
    except (ElementTree.ParseError, OSError) as error:
        return f"{top}: a VRT (GDAL XML) that cannot be parsed{via}: {error}"
    for element in tree.iter():
        if element.tag not in SOURCE_TAGS:
            continue
        source = (element.text or "").strip()
        where = f"{top}: its source {source}{via}"
        if is_network_path(source):
            if not policy.network:
                return f"{where} is a network path: pass --allow-network-sources to let GDAL read it"
            continue
        if not source or _VIRTUAL.match(source):
            return f"{where} is not a plain file the reader can check; point the VRT at files, or convert it"
        relative = element.get("relativeToVRT", "0") == "1"
        resolved = vrt.parent / source if relative else Path(source)
        if not _inside(resolved, roots):
            return f"{where} is {_outside_text(top, resolved, roots)}"
        if not resolved.is_file():
            return f"{where} does not exist"
        if _raw_band(tree, element):
            continue
        problem = _vrt_problem(top, resolved, roots, policy, depth + 1)
        if problem is not None:
            return problem
        if not _is_vrt(resolved) and not _known_format(resolved):
            return f"{where} is not a TIFF, PNG, JPEG or VRT file; convert it to a GeoTIFF"
    return None


def _raw_band(tree: ElementTree.ElementTree, element: ElementTree.Element) -> bool:
    """Whether ``element`` is the ``SourceFilename`` of a raw raster band (its bytes are read as pixels)."""
    for band in tree.iter("VRTRasterBand"):
        if band.get("subClass") == "VRTRawRasterBand" and any(child is element for child in band):
            return True
    return False


def _known_format(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(8)
    return any(head.startswith(magic) for magic in _MAGIC)

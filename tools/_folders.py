"""The data tools' source and output folders: the order files are listed in, the rule that the tools never write
into the source tree, and unpacking a downloaded zip safely."""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

from tools._errors import ToolError


def natural_key(name: str) -> list:
    """Sort key ordering embedded numbers by value ("P2" before "P10"), like natsort."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def check_output_outside_input(source: Path, output: Path) -> None:
    """Refuse an output folder equal to, or inside, the input folder (raw data is never written to).

    Raises:
        ToolError: naming both folders.
    """
    source_real, output_real = Path(source).resolve(), Path(output).resolve()
    if output_real == source_real or source_real in output_real.parents:
        raise ToolError(f"output folder {output} is inside the input folder {source}; the tools never write "
                        "into the source tree. Choose an output folder outside it.")


def unpack_zip(archive: Path, folder: Path) -> None:
    """Unpack ``archive`` into ``folder`` (created; must not exist), refusing any member that would land outside
    it (an absolute path, ``..``, a drive or a symbolic link). Members go to a hidden folder beside ``folder``
    first, renamed to ``folder`` when complete, so an interrupted unpack leaves no half folder under its name.

    Raises:
        ToolError: not a zip file, or an unsafe member; the message names the archive and the member.
    """
    staging = folder.with_name(f".{folder.name}.unpacking")
    try:
        with zipfile.ZipFile(archive) as opened:
            for member in opened.infolist():
                name = member.filename.replace("\\", "/")
                is_link = (member.external_attr >> 16) & 0o170000 == 0o120000
                if name.startswith("/") or ":" in name or ".." in name.split("/") or is_link:
                    raise ToolError(f"{archive}: member {member.filename!r} would be written outside {folder}; "
                                    "unpack the archive yourself after checking where its files go")
            shutil.rmtree(staging, ignore_errors=True)
            opened.extractall(staging)
    except (zipfile.BadZipFile, OSError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ToolError(f"{archive}: cannot be unpacked ({error}); re-download it") from None
    staging.rename(folder)

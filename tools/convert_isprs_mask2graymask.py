#!/usr/bin/env python3
"""Turn ISPRS Potsdam / Vaihingen colour labels into label-id ("gray") masks (the original tool's interface).

Reads every ``*.tif`` in ``{root_path}/{phase}/masks/`` and writes ``{stem}.png`` (8-bit, single channel)
to ``{root_path}/{phase}/{save_file_name}/``: impervious surfaces 0 (white), building 1 (blue), low
vegetation 2 (cyan), tree 3 (green), car 4 (yellow), clutter 5 (red).  Unlike the original, which
silently turned any unknown colour into 0 (impervious surfaces), unknown colours are reported and
handled by ``--unknown-color``; ``--eroded`` maps the black borders of the ``*_noBoundary`` labels to 255.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools._cli import (  # noqa: E402
    add_common_arguments,
    add_convert_arguments,
    add_unknown_color_argument,
    convert_options,
    run_tool,
)
from tools._jobs import RunSummary  # noqa: E402
from tools._masks import convert_folder, isprs_coding  # noqa: E402


def convert_isprs_masks(root_path: str | Path, save_file_name: str, phase: str, workers: int | None = None,
                        overwrite: bool = False, on_error: str = "error", unknown_color: str = "error",
                        eroded: bool = False, progress: bool = True) -> RunSummary:
    """Convert ``{root_path}/{phase}/masks/*.tif`` into ``{root_path}/{phase}/{save_file_name}/*.png``.

    Returns:
        Totals of the run; warnings list files with unknown colours (policies ignore/background).
    """
    phase_dir = Path(root_path) / phase
    return convert_folder("convert_isprs_mask2graymask", phase_dir / "masks", phase_dir / save_file_name,
                          ".tif", isprs_coding(unknown_color, eroded), workers, overwrite, on_error, progress)


def main(argv: list[str] | None = None) -> None:
    """Command line: parse the original flags and run ``convert_isprs_masks``; prints the run summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_convert_arguments(parser, root_help="root holding {phase}/masks/*.tif (colour labels)",
                          phases=("train", "val", "test"))
    parser.add_argument("--eroded", action="store_true",
                        help="labels are the eroded '_noBoundary' variant: black borders become 255 (ignore)")
    add_common_arguments(parser, memory="one colour label, ~350 MB for a 6000 x 6000 Potsdam label",
                         problems="an unreadable or corrupt label, or (with --unknown-color error) a label with "
                                  "colours outside the palette")
    add_unknown_color_argument(parser)
    args = parser.parse_args(argv)
    run_tool(lambda: convert_isprs_masks(**convert_options(args), eroded=args.eroded))


if __name__ == "__main__":
    main()

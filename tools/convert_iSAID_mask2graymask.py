#!/usr/bin/env python3
"""Turn iSAID colour masks into label-id ("gray") masks (the original tool's interface).

Reads every ``*.png`` in ``{root_path}/{phase}/masks/`` (BGR colours, 16 classes: background 0 ... Harbor
15) and writes an 8-bit single-channel PNG with the same file name to
``{root_path}/{phase}/{save_file_name}/``.  Unlike the original, which silently turned any unknown
colour into background, unknown colours are reported with file, colour and pixel count and handled by
``--unknown-color``; ``--save_file_name masks`` (converting in place over the colour masks) is refused.
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
from tools._masks import convert_folder, isaid_coding  # noqa: E402


def convert_isaid_masks(root_path: str | Path, save_file_name: str, phase: str, workers: int | None = None,
                        overwrite: bool = False, on_error: str = "error", unknown_color: str = "error",
                        progress: bool = True) -> RunSummary:
    """Convert ``{root_path}/{phase}/masks/*.png`` into ``{root_path}/{phase}/{save_file_name}/*.png``.

    Returns:
        Totals of the run; warnings list files with unknown colours (policies ignore/background).
    """
    phase_dir = Path(root_path) / phase
    return convert_folder("convert_iSAID_mask2graymask", phase_dir / "masks", phase_dir / save_file_name,
                          ".png", isaid_coding(unknown_color), workers, overwrite, on_error, progress)


def main(argv: list[str] | None = None) -> None:
    """Command line: parse the original flags and run ``convert_isaid_masks``; prints the run summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_convert_arguments(parser, root_help="root holding {phase}/masks/ (colour masks)", phases=("train", "val"))
    add_common_arguments(parser, memory="one colour mask, under 100 MB for a patch",
                         problems="an unreadable or corrupt mask, or (with --unknown-color error) a mask with "
                                  "colours outside the palette")
    add_unknown_color_argument(parser)
    args = parser.parse_args(argv)
    run_tool(lambda: convert_isaid_masks(**convert_options(args)))


if __name__ == "__main__":
    main()

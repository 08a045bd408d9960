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

from tools._common import RunSummary, add_common_arguments, run_tool  # noqa: E402
from tools._masks import add_unknown_color_argument, convert_folder, isaid_coding  # noqa: E402


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
    parser.add_argument("--root_path", required=True, help="root holding {phase}/masks/ (colour masks)")
    parser.add_argument("--save_file_name", required=True,
                        help="name of the output folder created beside masks/ in {root_path}/{phase}/")
    parser.add_argument("--phase", choices=["train", "val"], required=True, help="which split to convert")
    add_common_arguments(parser, memory="one colour mask, under 100 MB for a patch",
                         problems="an unreadable or corrupt mask, or (with --unknown-color error) a mask with "
                                  "colours outside the palette")
    add_unknown_color_argument(parser)
    args = parser.parse_args(argv)
    run_tool(lambda: convert_isaid_masks(args.root_path, args.save_file_name, args.phase, args.workers,
                                         args.overwrite, args.on_error, args.unknown_color))


if __name__ == "__main__":
    main()

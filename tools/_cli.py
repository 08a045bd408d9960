"""The data tools' command-line layer: the argument sets several tools share, one helper each, and
:func:`run_tool`, which runs a tool and turns its errors into one-line messages.

=====================  =========================================================  ==================================
set                    flags                                                      tools
=====================  =========================================================  ==================================
run                    ``--workers``, ``--overwrite``, ``--on-error``             all data tools
unknown colours        ``--unknown-color``                                        prepare_dataset, convert_*
original split         ``--src``, ``--tar``, ``--image_sub_folder``, ``--set``,   split_iSAID, split_isprs
                       ``--patch_width``, ``--patch_height``, ``--overlap_area``
original convert       ``--root_path``, ``--save_file_name``, ``--phase``         convert_iSAID_mask2graymask,
                                                                                  convert_isprs_mask2graymask
=====================  =========================================================  ==================================

The original tools' flags keep their underscore names; ``prepare_dataset.py``'s own flags use hyphens.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from tools._errors import ToolError
from tools._jobs import RunSummary, default_workers
from tools._masks import UNKNOWN_COLOR_CHOICES
from utils.atomic import WriteError
from utils.on_error import ON_ERROR_CHOICES


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type for counts, sizes and offsets: a whole number >= ``minimum`` (argparse names the flag
    in its error message)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def add_common_arguments(parser: argparse.ArgumentParser, memory: str, problems: str) -> None:
    """Add ``--workers``, ``--overwrite`` and ``--on-error`` (the job pool's settings, ``tools._jobs.run_jobs``).

    Args:
        parser: the tool's ``argparse.ArgumentParser``.
        memory: what one worker holds in memory, for the ``--workers`` help.
        problems: the bad inputs this tool detects, for the ``--on-error`` help.
    """
    parser.add_argument("--workers", type=positive_int, default=None,
                        help=f"worker processes (default: all {default_workers()} cores; 1 = no pool); each "
                             f"holds {memory}")
    parser.add_argument("--overwrite", action="store_true",
                        help="rewrite outputs that already exist (default: keep finished outputs, so an "
                             "interrupted run resumes where it stopped)")
    parser.add_argument("--on-error", choices=ON_ERROR_CHOICES, default="error",
                        help=f"on {problems}: stop with an error naming the file (default), or skip that "
                             "input and list it at the end")


def add_unknown_color_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--unknown-color``: the policy for mask colours or values outside the palette (``tools._masks``)."""
    parser.add_argument("--unknown-color", choices=UNKNOWN_COLOR_CHOICES, default="error",
                        help="mask colours outside the palette: stop and report file, colour and pixel count "
                             "(default), write 255 = ignore ('ignore'), or write 0 as the original tools did "
                             "('background')")


def add_split_arguments(parser: argparse.ArgumentParser, *, src: str, src_help: str, tar: str,
                        sub_folder_holds: str, set_help: str) -> None:
    """Add the original split tools' input, output and window flags (``--src``, ``--tar``, ``--image_sub_folder``,
    ``--set``, ``--patch_width``, ``--patch_height``, ``--overlap_area``; sizes in pixels).

    Args:
        parser: the tool's ``argparse.ArgumentParser``.
        src, tar: the original's default input and output roots.
        src_help: the ``--src`` help (what the root holds).
        sub_folder_holds: what each set's sub-folder holds, for the ``--image_sub_folder`` help.
        set_help: the ``--set`` help.
    """
    parser.add_argument("--src", default=src, help=src_help)
    parser.add_argument("--tar", default=tar,
                        help="output root (must not be inside --src); patches go to {tar}/{set}/{image_sub_folder}/")
    parser.add_argument("--image_sub_folder", default="images",
                        help=f"sub-folder of each set holding {sub_folder_holds} ('' for none)")
    parser.add_argument("--set", default="train,val,test", help=set_help)
    parser.add_argument("--patch_width", type=positive_int, default=800, help="patch width in pixels")
    parser.add_argument("--patch_height", type=positive_int, default=800, help="patch height in pixels")
    parser.add_argument("--overlap_area", type=non_negative_int, default=200,
                        help="overlap of neighbouring patches in pixels (stride = patch - overlap)")


def split_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``split_isaid`` / ``split_isprs`` from the flags of :func:`add_split_arguments`
    and :func:`add_common_arguments`."""
    return {"src": args.src, "tar": args.tar, "image_sub_folder": args.image_sub_folder,
            "sets": tuple(args.set.split(",")), "patch_width": args.patch_width, "patch_height": args.patch_height,
            "overlap_area": args.overlap_area, "workers": args.workers, "overwrite": args.overwrite,
            "on_error": args.on_error}


def add_convert_arguments(parser: argparse.ArgumentParser, *, root_help: str, phases: Sequence[str]) -> None:
    """Add the original convert tools' ``--root_path``, ``--save_file_name`` and ``--phase`` (all required).

    Args:
        parser: the tool's ``argparse.ArgumentParser``.
        root_help: the ``--root_path`` help (where the colour masks are).
        phases: the splits ``--phase`` accepts.
    """
    parser.add_argument("--root_path", required=True, help=root_help)
    parser.add_argument("--save_file_name", required=True,
                        help="name of the output folder created beside masks/ in {root_path}/{phase}/")
    parser.add_argument("--phase", choices=list(phases), required=True, help="which split to convert")


def convert_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``convert_isaid_masks`` / ``convert_isprs_masks`` from the flags of
    :func:`add_convert_arguments`, :func:`add_common_arguments` and :func:`add_unknown_color_argument`."""
    return {"root_path": args.root_path, "save_file_name": args.save_file_name, "phase": args.phase,
            "workers": args.workers, "overwrite": args.overwrite, "on_error": args.on_error,
            "unknown_color": args.unknown_color}


def run_tool(action: Callable[[], RunSummary]) -> None:
    """Run a tool from its command line: print the summary; bad input or Ctrl-C end with a short message
    (``sys.exit`` with the message: exit status 1)."""
    try:
        summary = action()
    except (ToolError, WriteError) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted: the outputs written so far are complete (atomic writes); run the same command "
                 "again to finish")
    print(summary)

#!/usr/bin/env python3
"""Cut ISPRS Potsdam / Vaihingen tiles and their gray masks into overlapping patches (original interface).

Reads every ``*.tif`` in ``{src}/{set}/{image_sub_folder}/`` as an image, with its label-id mask
``{base}_gray_mask.png`` beside it (convert the colour labels with convert_isprs_mask2graymask.py and
name them after the image; ``tools/prepare_dataset.py`` does all of this in one command).  Writes
``{tar}/{set}/{image_sub_folder}/images/{base}_{y0}_{y1}_{x0}_{x1}.png`` and
``.../masks/{base}_{y0}_{y1}_{x0}_{x1}_gray_mask.png``.  Windows follow the original (last window shifted
back inside the image, no padding); defaults are the original's 800 x 800 with overlap 200.

Differences from the original: a tile not larger than a patch is written whole as ``{base}.png`` (the
original copied the ``.tif``, which the datasets cannot pair with its ``.png`` mask); a mask whose
channels differ is refused instead of being turned into luminance; ``--patch_width`` is the width;
outputs are written atomically and finished ones are kept on a re-run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.isprs import PotsdamDataset  # noqa: E402
from tools._cli import add_common_arguments, add_split_arguments, run_tool, split_options  # noqa: E402
from tools._errors import ToolError  # noqa: E402
from tools._folders import check_output_outside_input, natural_key  # noqa: E402
from tools._jobs import RunSummary, report_input_problems, run_jobs  # noqa: E402
from tools._tiling import SplitJob, check_geometry, largest_first, record_geometry, split_one  # noqa: E402
from utils.atomic import remove_partial_files  # noqa: E402


def split_isprs(src: str | Path, tar: str | Path, image_sub_folder: str = "images",
                sets: tuple[str, ...] = ("train", "val", "test"), patch_width: int = 800,
                patch_height: int = 800, overlap_area: int = 200, workers: int | None = None,
                overwrite: bool = False, on_error: str = "error", progress: bool = True) -> RunSummary:
    """Cut every set of an ISPRS tree into patches; see the module docstring for names.

    Returns:
        Totals of the run.

    Raises:
        ToolError: output inside the input, a missing set folder, a set without tiles, masks without their
            tile (these two unless ``on_error="skip"``), a patch geometry other than the one ``tar`` was cut
            with, or bad input with ``on_error="error"``.
    """
    src, tar = Path(src), Path(tar)
    check_output_outside_input(src, tar)
    check_geometry(patch_height, patch_width, overlap_area)
    jobs, notes = [], []
    for set_name in sets:
        source = src / set_name / image_sub_folder
        if not source.is_dir():
            raise ToolError(f"{source} does not exist; expected the {set_name} tiles there "
                            "(see --src, --set and --image_sub_folder)")
        images = sorted(source.glob("*.tif"), key=lambda path: natural_key(path.name))
        report_input_problems(notes, "empty set folder(s)", [] if images else [str(source)],
                              "put the .tif tiles there or leave the set out of --set", on_error)
        orphans = [str(mask) for mask in sorted(source.glob(f"*{PotsdamDataset.mask_suffix}.png"))
                   if not mask.with_name(mask.name[: -len(f"{PotsdamDataset.mask_suffix}.png")] + ".tif").is_file()]
        report_input_problems(notes, "mask(s) without their .tif tile", orphans,
                              "add the tiles, or rename the masks after them", on_error)
        target = tar / set_name / image_sub_folder
        for folder in (target / "images", target / "masks"):
            remove_partial_files(folder)
        for image_path in images:
            jobs.append(SplitJob(
                name=str(image_path), base=image_path.stem, image_path=image_path, image_out=target / "images",
                mask_path=image_path.with_name(f"{image_path.stem}{PotsdamDataset.mask_suffix}.png"),
                mask_out=target / "masks", mask_suffix=PotsdamDataset.mask_suffix, mask_mode="gray", coding=None,
                patch_height=patch_height, patch_width=patch_width, overlap=overlap_area, overwrite=overwrite,
                num_classes=PotsdamDataset.num_classes))
    record_geometry(tar, {"patch_height": patch_height, "patch_width": patch_width, "overlap": overlap_area})
    summary = run_jobs("split_isprs", split_one, largest_first(jobs), workers, on_error, progress)
    summary.notes.extend(notes)
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line: parse the original flags and run ``split_isprs``; prints the run summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_arguments(parser, src="./dataset/posdam", src_help="root holding {set}/{image_sub_folder}/*.tif",
                        tar="./dataset/posdam_patches", sub_folder_holds="the .tif tiles and their _gray_mask.png",
                        set_help="comma-separated sets to cut")
    add_common_arguments(parser, memory="one tile and its gray mask, ~250 MB for a 6000 x 6000 Potsdam tile",
                         problems="an unreadable or corrupt tile or mask, a missing mask, a mask without its tile, "
                                  "an empty set, a mask whose channels differ, with transparent pixels or with ids "
                                  "outside the 6 classes and 255, or a tile/mask size mismatch")
    args = parser.parse_args(argv)
    run_tool(lambda: split_isprs(**split_options(args)))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Cut iSAID images and their colour masks into overlapping patches (the original tool's interface).

Reads ``{src}/{set}/{image_sub_folder}/P*.png`` (files without an underscore are images) and, for every
set but ``test``, the colour mask ``P*_instance_color_RGB.png`` beside each image.  Writes
``{tar}/{set}/{image_sub_folder}/images/{base}_{y0}_{y1}_{x0}_{x1}.png`` and
``.../masks/{base}_{y0}_{y1}_{x0}_{x1}_instance_color_RGB.png`` (colours kept, convert them afterwards
with convert_iSAID_mask2graymask.py); images not larger than a patch are copied whole.  P1527 and P1530
are skipped, as in the original.  Defaults are the original's (800 x 800, overlap 200); the paper used
896 x 896 with overlap 384 (stride 512), which ``tools/prepare_dataset.py isaid`` uses by default.

Differences from the original: the masks are cut for every train/val set (the original picked the
file list from the *last* ``--set`` entry, so its default ``train,val,test`` cut no masks at all);
``--patch_width`` is the patch width (the original swapped the two names; identical for square
patches); outputs are written atomically and finished ones are kept on a re-run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.isaid import ISAIDDataset  # noqa: E402
from tools._cli import add_common_arguments, add_split_arguments, run_tool, split_options  # noqa: E402
from tools._errors import ToolError  # noqa: E402
from tools._folders import check_output_outside_input  # noqa: E402
from tools._jobs import RunSummary, report_input_problems, run_jobs  # noqa: E402
from tools._tiling import SplitJob, check_geometry, largest_first, record_geometry, split_one  # noqa: E402
from tools.official_layout import isaid_base_images, report_isaid_name_problems  # noqa: E402
from tools.raw_layout import ISAID_EXCLUDED_IMAGES  # noqa: E402
from utils.atomic import remove_partial_files  # noqa: E402


def split_isaid(src: str | Path, tar: str | Path, image_sub_folder: str = "images",
                sets: tuple[str, ...] = ("train", "val", "test"), patch_width: int = 800,
                patch_height: int = 800, overlap_area: int = 200, workers: int | None = None,
                overwrite: bool = False, on_error: str = "error", progress: bool = True) -> RunSummary:
    """Cut every set of an iSAID devkit tree into patches; see the module docstring for names.

    Returns:
        Totals of the run (inputs, files written, finished outputs kept, patches, skipped inputs).

    Raises:
        ToolError: output inside the input, a missing set folder, a set without images, masks without their
            image or names that do not parse (these three unless ``on_error="skip"``), a patch geometry other
            than the one ``tar`` was cut with, or bad input with ``on_error="error"``.
    """
    src, tar = Path(src), Path(tar)
    check_output_outside_input(src, tar)
    check_geometry(patch_height, patch_width, overlap_area)
    jobs, excluded = [], []
    for set_name in sets:
        source = src / set_name / image_sub_folder
        if not source.is_dir():
            raise ToolError(f"{source} does not exist; expected the iSAID {set_name} images there "
                            "(see --src, --set and --image_sub_folder)")
        report_input_problems(excluded, "empty set folder(s)", [] if isaid_base_images(source) else [str(source)],
                              "put the P*.png images there or leave the set out of --set", on_error)
        report_isaid_name_problems(excluded, source, source, on_error)
        target = tar / set_name / image_sub_folder
        for folder in (target / "images", target / "masks"):
            remove_partial_files(folder)
        for image_path in isaid_base_images(source):
            if image_path.stem in ISAID_EXCLUDED_IMAGES:
                excluded.append(f"{image_path}: excluded by the original tool")
                continue
            with_mask = set_name != "test"
            jobs.append(SplitJob(
                name=str(image_path), base=image_path.stem, image_path=image_path,
                image_out=target / "images",
                mask_path=(image_path.with_name(f"{image_path.stem}{ISAIDDataset.mask_suffix}.png") if with_mask
                           else None),
                mask_out=target / "masks", mask_suffix=ISAIDDataset.mask_suffix, mask_mode="colour", coding=None,
                patch_height=patch_height, patch_width=patch_width, overlap=overlap_area,
                whole_copy=True, overwrite=overwrite))
    record_geometry(tar, {"patch_height": patch_height, "patch_width": patch_width, "overlap": overlap_area})
    summary = run_jobs("split_iSAID", split_one, largest_first(jobs), workers, on_error, progress)
    summary.notes.extend(excluded)
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line: parse the original flags and run ``split_isaid``; prints the run summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_arguments(parser, src="./dataset/iSAID", src_help="iSAID root holding {set}/{image_sub_folder}/",
                        tar="./dataset/iSAID_patches", sub_folder_holds="images and colour masks",
                        set_help="comma-separated sets to cut; 'test' has images only, others images and masks")
    add_common_arguments(parser, memory="one iSAID image and its colour mask, up to ~1.5 GB for the largest scenes",
                         problems="an unreadable or corrupt image or mask, a missing mask, a mask without its "
                                  "image, a name that is not an iSAID name, an empty set, a mask with transparent "
                                  "pixels or an image/mask size mismatch")
    args = parser.parse_args(argv)
    run_tool(lambda: split_isaid(**split_options(args)))


if __name__ == "__main__":
    main()

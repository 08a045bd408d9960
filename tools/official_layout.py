"""The official downloads' raw layouts (iSAID, Potsdam, Vaihingen, LoveDA) -> the preparation jobs of
``tools/prepare_dataset.py``, with the checks that name files a preparation would drop in silence.

The layouts themselves (folders, file names, tile splits) are in ``tools/raw_layout.py``; a custom dataset's
jobs come from ``tools/custom_layout.py``. Every job cuts one image (and its mask) with ``tools._tiling.split_one``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from datasets.isaid import ISAIDDataset
from datasets.isprs import PotsdamDataset
from datasets.loveda import LoveDADataset
from tools._errors import ToolError
from tools._folders import natural_key, unpack_zip
from tools._jobs import report_input_problems
from tools._masks import ColourCoding, IdCoding
from tools._tiling import SplitJob
from tools.raw_layout import (
    ISAID_COMPANION_SUFFIXES,
    ISAID_EXCLUDED_IMAGES,
    ISAID_MASK_FOLDERS,
    ISPRS_FOLDERS,
    ISPRS_TILE_PATTERNS,
    LOVEDA_DOMAIN_FOLDERS,
    LOVEDA_IMAGE_FOLDER,
    LOVEDA_MASK_FOLDER,
    LOVEDA_SPLIT_FOLDERS,
    POTSDAM_PRODUCTS,
    isprs_file_names,
)


def isaid_base_images(folder: Path) -> list[Path]:
    """The iSAID images in ``folder``: ``*.png`` without an underscore in the name, natural order."""
    images = [path for path in folder.glob("*.png") if "_" not in path.name]
    return sorted(images, key=lambda path: natural_key(path.name))


def isaid_name_problems(image_folder: Path, companion_folder: Path) -> tuple[list[str], list[str]]:
    """Files of an iSAID set that would be dropped in silence: ``(orphans, unparsable)``.

    Orphans are masks in ``companion_folder`` (``{stem}_instance_color_RGB.png`` / ``_instance_id_RGB.png``)
    whose image ``{stem}.png`` is not in ``image_folder``; unparsable are PNGs in ``companion_folder`` with an
    underscore that is not one of those suffixes (an image must be named without one, e.g. ``P0001.png``).
    """
    stems = {path.stem for path in isaid_base_images(image_folder)}
    orphans, unparsable = [], []
    for path in sorted(companion_folder.glob("*_*.png"), key=lambda item: natural_key(item.name)):
        stem, _, rest = path.stem.partition("_")
        if f"_{rest}" not in ISAID_COMPANION_SUFFIXES:
            unparsable.append(str(path))
        elif stem not in stems:
            orphans.append(str(path))
    return orphans, unparsable


def report_isaid_name_problems(notes: list[str], image_folder: Path, companion_folder: Path, on_error: str) -> None:
    """Stop at (or, with ``on_error="skip"``, note) the orphans and unparsable names of one iSAID folder.

    Raises:
        ToolError: with ``on_error="error"`` and any such file, giving the count and examples.
    """
    orphans, unparsable = isaid_name_problems(image_folder, companion_folder)
    report_input_problems(notes, "file name(s) that are not iSAID names (P0001.png, P0001_instance_color_RGB.png)",
                          unparsable, "rename them (an image name has no underscore)", on_error)
    report_input_problems(notes, "mask(s) without their image", orphans,
                          "add the images, or remove the masks", on_error)


def _job(image_path: Path, mask_path: Path | None, out_split: Path, base: str, mask_suffix: str,
         coding: ColourCoding | IdCoding, patch: int, overlap: int, whole_only: bool, overwrite: bool,
         bands: tuple[int, ...] | None = None) -> SplitJob:
    mask_mode = "remap" if isinstance(coding, IdCoding) else "convert"
    return SplitJob(name=str(image_path), base=base, image_path=image_path, image_out=out_split / "images",
                    mask_path=mask_path, mask_out=out_split / "masks", mask_suffix=mask_suffix,
                    mask_mode=mask_mode, coding=coding, patch_height=patch, patch_width=patch, overlap=overlap,
                    whole_only=whole_only, overwrite=overwrite, bands=bands)


def isaid_jobs(raw: Path, out: Path, coding: ColourCoding, patch: int, overlap: int, whole_held_out: bool,
               overwrite: bool) -> tuple[list[SplitJob], list[str]]:
    """The jobs of an iSAID devkit tree (``train``, ``val``, and ``test`` when present; P1527 and P1530 left out, as
    by the original), and notes for the summary. With ``whole_held_out``, ``val`` is also written whole to
    ``{out}/val_ori``. Window sizes in pixels.

    Raises:
        ToolError: ``train`` or ``val`` missing, or a split without images.
    """
    jobs, notes = [], []
    splits = [split for split in ("train", "val", "test") if (raw / split / "images").is_dir()]
    if not {"train", "val"} <= set(splits):
        raise ToolError(f"{raw} does not look like iSAID: expected {raw}/train/images and {raw}/val/images "
                        "holding P*.png and P*_instance_color_RGB.png (see tools/raw_layout.py)")
    for split in splits:
        split_dir = raw / split
        images = isaid_base_images(split_dir / "images")
        if not images:
            raise ToolError(f"{split_dir / 'images'} holds no iSAID images (P*.png)")
        for image_path in images:
            if image_path.stem in ISAID_EXCLUDED_IMAGES:
                notes.append(f"{image_path}: excluded, as by the original split tool")
                continue
            mask_path = None
            if split != "test":
                candidates = [split_dir / folder / f"{image_path.stem}{ISAIDDataset.mask_suffix}.png"
                              for folder in ISAID_MASK_FOLDERS]
                mask_path = next((path for path in candidates if path.is_file()), candidates[0])
            targets = [(out / split, False)]
            if whole_held_out and split == "val":
                targets.append((out / f"{split}_ori", True))
            for out_split, whole in targets:
                jobs.append(_job(image_path, mask_path, out_split, image_path.stem, ISAIDDataset.mask_suffix, coding,
                                 patch, overlap, whole, overwrite))
    return jobs, notes


def _isprs_tiles(dataset: str, image_dir: Path, product: str) -> dict[str, Path]:
    """Tile id -> image path for the tiles of ``product`` present in ``image_dir``."""
    tiles = {}
    for path in sorted(image_dir.glob("*.tif"), key=lambda item: natural_key(item.name)):
        match = ISPRS_TILE_PATTERNS[dataset][product].match(path.name)
        if match:
            tiles[match.group(1)] = path
    return tiles


def _isprs_folders(dataset: str, raw: Path, image_dir: Path | None, label_dir: Path | None, label_variant: str,
                   product: str) -> tuple[Path, Path, str]:
    """(image folder, label folder, ``isprs_file_names`` label key): the given folders, else the official layout's."""
    folders = ISPRS_FOLDERS[dataset]
    image_dir = image_dir or raw / (POTSDAM_PRODUCTS[product][0] if dataset == "potsdam" else folders["image"])
    label_key = "label" if label_variant == "full" else "eroded"
    return image_dir, label_dir or raw / folders[label_key], label_key


def isprs_jobs(dataset: str, raw: Path, out: Path, coding: ColourCoding, patch: int, overlap: int,
               label_variant: str, image_dir: Path | None, label_dir: Path | None,
               split_tiles: dict[str, tuple[str, ...]], whole_held_out: bool, overwrite: bool, product: str,
               bands: tuple[int, ...] | None) -> tuple[list[SplitJob], list[str]]:
    """The jobs of the tiles of ``split_tiles`` present in an ISPRS download (``dataset``: ``"potsdam"`` or
    ``"vaihingen"``), and notes for the summary (tiles present per split, tiles in no split). With
    ``whole_held_out``, the held-out splits are also written whole to ``{out}/{split}_ori``. Window sizes in pixels.

    Raises:
        ToolError: the image or label folder missing, or no image tile of ``product`` in it.
    """
    image_dir, label_dir, label_key = _isprs_folders(dataset, raw, image_dir, label_dir, label_variant, product)
    for folder, what in ((image_dir, "images"), (label_dir, f"{label_variant} labels")):
        if not folder.is_dir():
            raise ToolError(f"{folder} does not exist; expected the {dataset} {what} there (official layout, "
                            "see tools/raw_layout.py), or pass --image-dir / --label-dir")
    tiles = _isprs_tiles(dataset, image_dir, product)
    if not tiles:
        pattern = ISPRS_TILE_PATTERNS[dataset][product].pattern
        raise ToolError(f"{image_dir} holds no {dataset} image tiles ({pattern}); "
                        "for another Potsdam product pass --product")
    jobs, notes = [], []
    assigned = set()
    for split, split_ids in split_tiles.items():
        present = [tile for tile in split_ids if tile in tiles]
        notes.append(f"{dataset} {split}: {len(present)} of {len(split_ids)} listed tiles present")
        for tile in present:
            assigned.add(tile)
            image_path = tiles[tile]
            mask_path = label_dir / isprs_file_names(dataset, tile)[label_key]
            targets = [(out / split, False)]
            if whole_held_out and split != "train":
                targets.append((out / f"{split}_ori", True))
            for out_split, whole in targets:
                jobs.append(_job(image_path, mask_path, out_split, image_path.stem, PotsdamDataset.mask_suffix, coding,
                                 patch, overlap, whole, overwrite, bands))
    notes.extend(f"{tiles[tile]}: in no split list, left out" for tile in tiles if tile not in assigned)
    return jobs, notes


def _unpack_loveda_zips(raw: Path, notes: list[str]) -> None:
    """Unpack ``Train.zip`` / ``Val.zip`` / ``Test.zip`` found in ``raw`` in place of their folders, beside them.

    A zip holding ``Train/...`` (as distributed) or ``Urban/``, ``Rural/`` directly gives ``raw/Train``.

    Raises:
        ToolError: an unsafe member, or a zip that holds neither layout (naming docs/data_custom.md).
    """
    for split_folder in LOVEDA_SPLIT_FOLDERS.values():
        archive, target = raw / f"{split_folder}.zip", raw / split_folder
        if target.exists() or not archive.is_file():
            continue
        unpacked = raw / f".{split_folder}.zip.contents"
        shutil.rmtree(unpacked, ignore_errors=True)
        unpack_zip(archive, unpacked)
        inner = unpacked / split_folder
        source = inner if inner.is_dir() else unpacked
        if not any((source / folder).is_dir() for folder in LOVEDA_DOMAIN_FOLDERS.values()):
            shutil.rmtree(unpacked)
            raise ToolError(f"{archive} holds neither {split_folder}/Urban, {split_folder}/Rural nor Urban, Rural; "
                            "it is not a LoveDA zip (layout in docs/data_custom.md, LoveDA)")
        source.rename(target)
        shutil.rmtree(unpacked, ignore_errors=True)
        notes.append(f"{archive}: unpacked into {target}")


def _loveda_problems(image_dir: Path, images: list[Path], mask_dir: Path | None, on_error: str,
                     notes: list[str]) -> None:
    """Stop at (or note, with ``on_error="skip"``) files the LoveDA jobs would drop: images not saved as PNG and
    masks without their image."""
    others = [str(path) for path in sorted(image_dir.iterdir())
              if path.is_file() and not path.name.startswith(".") and path.suffix != ".png"]
    report_input_problems(notes, "LoveDA image(s) not saved as .png", others,
                          "convert them to PNG (LoveDA images and masks are PNG files)", on_error)
    if mask_dir is None or not mask_dir.is_dir():
        return
    names = {path.name for path in images}
    orphans = [str(path) for path in sorted(mask_dir.iterdir())
               if path.is_file() and not path.name.startswith(".") and path.name not in names]
    report_input_problems(notes, f"LoveDA mask(s) without their image in {image_dir}", orphans,
                          "add the images as PNG, or remove the masks", on_error)


def loveda_jobs(raw: Path, out: Path, coding: IdCoding, patch: int, overlap: int, whole_only: bool, domain: str,
                overwrite: bool, on_error: str) -> tuple[list[SplitJob], list[str]]:
    """The jobs of a LoveDA download (zips left in ``raw`` are unpacked first), file names prefixed with the
    domain (``urban_1366``), and notes for the summary. Window sizes in pixels.

    Raises:
        ToolError: a split folder with masks missing, a domain folder without images, an unsafe or foreign zip, or
            (with ``on_error="error"``) images not saved as PNG or masks without their image.
    """
    domains = LOVEDA_DOMAIN_FOLDERS if domain == "all" else {domain: LOVEDA_DOMAIN_FOLDERS[domain]}
    jobs, notes = [], []
    _unpack_loveda_zips(raw, notes)
    for split, split_folder in LOVEDA_SPLIT_FOLDERS.items():
        with_masks = split in LoveDADataset.splits
        image_dirs = {name: raw / split_folder / folder / LOVEDA_IMAGE_FOLDER for name, folder in domains.items()}
        present = {name: folder for name, folder in image_dirs.items() if folder.is_dir()}
        if not present and with_masks:
            expected = " or ".join(str(folder) for folder in image_dirs.values())
            raise ToolError(f"{expected} does not exist; expected LoveDA's {split_folder}.zip or its unpacked "
                            f"{split_folder} folder in {raw} (layout in docs/data_custom.md, LoveDA)")
        for domain_name, image_dir in present.items():
            images = sorted(image_dir.glob("*.png"), key=lambda path: natural_key(path.name))
            mask_dir = image_dir.parent / LOVEDA_MASK_FOLDER
            _loveda_problems(image_dir, images, mask_dir if with_masks else None, on_error, notes)
            if not images:
                raise ToolError(f"{image_dir} holds no LoveDA images (*.png)")
            notes.append(f"loveda {split}/{domain_name}: {len(images)} images")
            for image_path in images:
                mask_path = mask_dir / image_path.name if with_masks else None
                jobs.append(_job(image_path, mask_path, out / split, f"{domain_name}_{image_path.stem}",
                                 LoveDADataset.mask_suffix, coding, patch, overlap, whole_only, overwrite))
    return jobs, notes


def report_name_problems(dataset: str, raw: Path, image_dir: Path | None, label_dir: Path | None,
                         label_variant: str, product: str, on_error: str, notes: list[str]) -> None:
    """Stop at (or note, with ``on_error="skip"``) raw files the jobs of an iSAID or ISPRS download would drop in
    silence: masks without their image and names that do not parse.

    Raises:
        ToolError: with ``on_error="error"`` and any such file, giving the count and examples.
    """
    if dataset == "isaid":
        for split in ("train", "val", "test"):
            images = raw / split / "images"
            for folder in ISAID_MASK_FOLDERS:
                if (raw / split / folder).is_dir():
                    report_isaid_name_problems(notes, images, raw / split / folder, on_error)
        return
    image_dir, label_dir, label_key = _isprs_folders(dataset, raw, image_dir, label_dir, label_variant, product)
    tiles = _isprs_tiles(dataset, image_dir, product)
    pattern = ISPRS_TILE_PATTERNS[dataset][product]
    unparsable = [str(path) for path in sorted(image_dir.glob("*.tif")) if not pattern.match(path.name)]
    report_input_problems(notes, f"image file name(s) that are not {dataset} tile names ({pattern.pattern})",
                          unparsable, "rename them", on_error)
    label_names = {isprs_file_names(dataset, tile)[label_key] for tile in tiles}
    orphans = [str(path) for path in sorted(label_dir.glob("*.tif")) if path.name not in label_names]
    report_input_problems(notes, f"label tile(s) without their image in {image_dir}", orphans,
                          "add the image tiles, or remove the labels", on_error)

"""Per-class area of class-id masks: pixel count, area in the CRS's units and share of the valid area.

A tile's summary is computed from its mask file, read in strips of rows (bounded memory); a folder's
summary adds the tiles' counts. Each is written as CSV (one row per class) and JSON (the same rows plus
the totals), atomically. Areas are pixel counts times the pixel area ``|det(transform)|``; their unit
is the CRS's linear unit squared (``m2`` for metres), ``deg2`` for a geographic CRS (not an equal-area
measure: reproject first for real areas), ``px`` without a CRS. ``share`` is the class's fraction of
the valid (non-nodata) pixels.
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence

import numpy as np

from utils.atomic import atomic_write_bytes
from utils.vector_io import open_mask

STRIP_ROWS = 1024
COLUMNS = ("class_id", "class_name", "pixels", "area", "unit", "share")
UNIT_NAMES = {"metre": "m2", "meter": "m2", "m": "m2", "foot": "ft2", "us survey foot": "ftUS2"}


def area_unit(crs) -> str:
    """Unit of the areas of a raster in ``crs``: ``m2``, ``ft2``, ``deg2`` (geographic), ``px`` (no CRS)."""
    if crs is None:
        return "px"
    if crs.is_geographic:
        return "deg2"
    units = (crs.linear_units or "unknown").lower()
    return UNIT_NAMES.get(units, f"{units}2")


def class_pixel_counts(mask_path: str | os.PathLike, nodata: int | None) -> tuple[np.ndarray, float, str]:
    """(pixel count per class id 0..255 (256,) int64 with ``nodata`` zeroed, pixel area, unit) of a mask file."""
    from rasterio.windows import Window

    counts = np.zeros(256, dtype=np.int64)
    with open_mask(mask_path) as dataset:
        for top in range(0, dataset.height, STRIP_ROWS):
            rows = min(STRIP_ROWS, dataset.height - top)
            strip = dataset.read(1, window=Window(0, top, dataset.width, rows))
            counts += np.bincount(strip.ravel(), minlength=256)[:256]
        transform, crs = dataset.transform, dataset.crs
    if nodata is not None:
        counts[nodata] = 0
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d) if crs is not None else 1.0
    return counts, pixel_area, area_unit(crs)


def summary_rows(counts: np.ndarray, areas: np.ndarray | None, unit: str | None,
                 class_names: Sequence[str]) -> list[dict]:
    """One row per class (every named class, then any other id found): pixels, area, unit, share of valid."""
    valid = int(counts.sum())
    ids = list(range(len(class_names))) + [int(i) for i in np.flatnonzero(counts) if i >= len(class_names)]
    names = list(class_names)
    return [{"class_id": class_id, "class_name": names[class_id] if class_id < len(names) else str(class_id),
             "pixels": int(counts[class_id]), "area": None if areas is None else float(areas[class_id]), "unit": unit,
             "share": counts[class_id] / valid if valid else 0.0} for class_id in ids]


def write_summary(stem: str | os.PathLike, rows: list[dict], totals: dict) -> tuple[str, str]:
    """Write ``{stem}.csv`` and ``{stem}.json`` (``{"classes": rows, **totals}``); returns both paths."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({**row, "area": "" if row["area"] is None else row["area"]} for row in rows)
    csv_path, json_path = f"{os.fspath(stem)}.csv", f"{os.fspath(stem)}.json"
    atomic_write_bytes(csv_path, text.getvalue().encode("utf-8"))
    atomic_write_bytes(json_path, (json.dumps({**totals, "classes": rows}, indent=2) + "\n").encode("utf-8"))
    return csv_path, json_path


def tile_summary(mask_path: str | os.PathLike, stem: str | os.PathLike, class_names: Sequence[str],
                 nodata: int | None) -> dict:
    """Per-class areas of one mask, written to ``{stem}.csv`` / ``{stem}.json``; returns the JSON content."""
    counts, pixel_area, unit = class_pixel_counts(mask_path, nodata)
    rows = summary_rows(counts, counts * pixel_area, unit, class_names)
    totals = {"mask": os.fspath(mask_path), "valid_pixels": int(counts.sum()), "pixel_area": pixel_area,
              "unit": unit, "valid_area": float(counts.sum() * pixel_area)}
    write_summary(stem, rows, totals)
    return {**totals, "classes": rows}


def folder_summary(tile_summaries: list[dict], stem: str | os.PathLike, class_names: Sequence[str]) -> dict:
    """Add the tiles' counts and areas (areas only when every tile has the same unit) into ``{stem}.csv`` /
    ``{stem}.json``; returns the JSON content."""
    counts = np.zeros(256, dtype=np.int64)
    areas = np.zeros(256, dtype=np.float64)
    for summary in tile_summaries:
        for row in summary["classes"]:
            counts[row["class_id"]] += row["pixels"]
            areas[row["class_id"]] += row["area"] or 0.0
    units = {summary["unit"] for summary in tile_summaries}
    unit = units.pop() if len(units) == 1 else None
    rows = summary_rows(counts, areas if unit else None, unit, class_names)
    totals = {"tiles": [summary["mask"] for summary in tile_summaries], "valid_pixels": int(counts.sum()),
              "unit": unit, "valid_area": float(areas.sum()) if unit else None}
    write_summary(stem, rows, totals)
    return {**totals, "classes": rows}

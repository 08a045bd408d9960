"""A small visual evaluation report: per-class IoU bar chart, sample panels and an HTML page.

``write_report`` writes, beside the metrics JSON/CSV:
``report_iou.png`` (bar per class, excluded classes grey, dashed mIoU line),
``report_samples.png`` (rows of image | ground truth | prediction) and ``report.html`` (both
figures, the metric table and the colour legend; open it in a browser).
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from utils.atomic import atomic_path  # noqa: E402
from utils.palette import colorize, side_by_side  # noqa: E402


@dataclass
class Sample:
    """One evaluated image, shrunk for the report: uint8 (h, w, 3) image and (h, w) class ids."""

    name: str
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray


def make_sample(name: str, image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, max_side: int = 256) -> Sample:
    """Shrink an (H, W, 3) image and its (H, W) truth / prediction so the longer side is ``max_side``."""
    height, width = truth.shape
    factor = min(1.0, max_side / max(height, width))
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    shrink_image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    shrink_truth = np.asarray(Image.fromarray(truth.astype(np.uint8)).resize(size, Image.Resampling.NEAREST))
    shrink_pred = np.asarray(Image.fromarray(prediction.astype(np.uint8)).resize(size, Image.Resampling.NEAREST))
    return Sample(name, shrink_image, shrink_truth, shrink_pred)


def plot_class_iou(summary: dict, palette: np.ndarray) -> plt.Figure:
    """Horizontal bar chart of per-class IoU (%) from ``metrics_summary``, bars in class colours."""
    rows = summary["classes"]
    figure, axes = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    values = [100 * (row["iou"] or 0.0) for row in rows]
    colours = [
        (0.8, 0.8, 0.8) if row["excluded"] else tuple(np.asarray(palette[row["id"]]) / 255) for row in rows
    ]
    positions = np.arange(len(rows))
    axes.barh(positions, values, color=colours, edgecolor="black", linewidth=0.5)
    for position, row, value in zip(positions, rows, values):
        label = "n/a" if row["iou"] is None else f"{value:.1f}"
        axes.text(min(value + 1, 92), position, label, va="center", fontsize=8)
    if summary["miou"] is not None:
        axes.axvline(100 * summary["miou"], color="black", linestyle="--", linewidth=1)
        axes.set_title(f"per-class IoU, mIoU {100 * summary['miou']:.2f}%", fontsize=10)
    axes.set_yticks(positions, [row["name"] + (" *" if row["excluded"] else "") for row in rows], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, 100)
    axes.set_xlabel("IoU (%)")
    figure.tight_layout()
    return figure


def samples_panel(samples: list[Sample], palette: np.ndarray) -> np.ndarray:
    """Stack samples as rows of image | ground truth | prediction (uint8 RGB), padded to one width."""
    rows = [side_by_side([s.image, colorize(s.truth, palette), colorize(s.prediction, palette)]) for s in samples]
    width = max(row.shape[1] for row in rows)
    padded = [np.pad(row, ((0, 6), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
    return np.concatenate(padded, axis=0)


def write_report(
    out_dir: str | os.PathLike,
    summary: dict,
    palette: np.ndarray,
    samples: list[Sample],
    title: str,
) -> Path:
    """Write ``report_iou.png``, ``report_samples.png`` (if samples) and ``report.html``; return the HTML path."""
    out_dir = Path(out_dir)
    figure = plot_class_iou(summary, palette)
    with atomic_path(out_dir / "report_iou.png") as temp_path:
        figure.savefig(temp_path, dpi=100)
    plt.close(figure)
    if samples:
        with atomic_path(out_dir / "report_samples.png") as temp_path:
            Image.fromarray(samples_panel(samples, palette)).save(temp_path)
    with atomic_path(out_dir / "report.html") as temp_path:
        Path(temp_path).write_text(_html_page(summary, palette, samples, title), encoding="utf-8")
    return out_dir / "report.html"


def _html_page(summary: dict, palette: np.ndarray, samples: list[Sample], title: str) -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}"

    table_rows = "".join(
        "<tr><td>{id}</td><td><span class='swatch' style='background:rgb({r},{g},{b})'></span>{name}{mark}</td>"
        "<td>{iou}</td><td>{f1}</td><td>{precision}</td><td>{recall}</td></tr>".format(
            id=row["id"], r=palette[row["id"]][0], g=palette[row["id"]][1], b=palette[row["id"]][2],
            name=html.escape(row["name"]), mark=" *" if row["excluded"] else "",
            iou=pct(row["iou"]), f1=pct(row["f1"]), precision=pct(row["precision"]), recall=pct(row["recall"]),
        )
        for row in summary["classes"]
    )
    excluded = ", ".join(summary["excluded_classes"]) or "none"
    sample_block = (
        f"<h2>Samples</h2><p>image | ground truth | prediction: {html.escape(', '.join(s.name for s in samples))}</p>"
        "<img src='report_samples.png' alt='samples'>"
        if samples
        else ""
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:2px 10px;text-align:right}}
td:nth-child(2){{text-align:left}} .swatch{{display:inline-block;width:12px;height:12px;margin-right:6px;
border:1px solid #444}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>mIoU <b>{pct(summary['miou'])}</b> &middot; mean F1 {pct(summary['mean_f1'])} &middot;
OA {pct(summary['overall_accuracy'])} &middot; FWIoU {pct(summary['fwiou'])} &middot;
{summary['pixels']} labelled pixels &middot; excluded from the means: {html.escape(excluded)}</p>
<img src="report_iou.png" alt="per-class IoU">
<table><tr><th>id</th><th>class</th><th>IoU %</th><th>F1 %</th><th>precision %</th><th>recall %</th></tr>
{table_rows}</table>
{sample_block}
</body></html>
"""

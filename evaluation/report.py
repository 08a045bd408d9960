"""The visual evaluation report: the run's facts, per-class scores, a confusion matrix and sample panels.

``write_report`` writes, beside the metrics JSON/CSV:

- ``report_iou.png``: a bar per class (excluded classes grey), the mIoU as a dashed line;
- ``report_confusion.png``: the confusion matrix, each row (true class) normalised to 100 %;
- ``report_samples.png``: rows of image | ground truth | prediction with column titles, a caption per row
  (the image's name and pixel accuracy) and the class legend;
- ``report.html``: a header with the run's facts (checkpoint, model options and their sources, protocol,
  split, date), the scores, the table and the figures with captions, laid out across the page.

The titled sample figure is also what training sends to TensorBoard (:func:`titled_panels`).
"""
from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402

from utils.atomic import atomic_path  # noqa: E402
from utils.palette import colorize  # noqa: E402

COLUMN_TITLES = ("image", "ground truth", "prediction")
IGNORED_COLOUR = (0, 0, 0)
"""How pixels with the ignore label (255) are drawn in the truth panels (``utils.palette.colorize``)."""


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


def pixel_accuracy(truth: np.ndarray, prediction: np.ndarray) -> float | None:
    """Share of the labelled pixels (truth not 255) predicted right, in [0, 1]; None when none is labelled."""
    labelled = truth != 255
    return float((truth[labelled] == prediction[labelled]).mean()) if labelled.any() else None


def titled_panels(samples: Sequence[Sample], palette: np.ndarray, class_names: Sequence[str]) -> plt.Figure:
    """Rows of image | ground truth | prediction with column titles, a caption per row and the class legend.

    Args:
        samples: the images, (h, w, 3) uint8 with (h, w) truth and prediction ids.
        palette: (K, 3) uint8 RGB class colours.
        class_names: K names, in the legend with their colours (and "ignored" in black).
    """
    figure, axes = plt.subplots(len(samples), 3, figsize=(12, 3.9 * len(samples) + 0.8), squeeze=False,
                                layout="constrained")
    for column, title in enumerate(COLUMN_TITLES):
        axes[0, column].set_title(title, fontsize=11)
    for row, sample in enumerate(samples):
        panels = (sample.image, colorize(sample.truth, palette), colorize(sample.prediction, palette))
        for axis, panel in zip(axes[row], panels):
            axis.imshow(panel, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
        accuracy = pixel_accuracy(sample.truth, sample.prediction)
        caption = sample.name if accuracy is None else f"{sample.name}: pixel accuracy {100 * accuracy:.1f} %"
        axes[row, 1].set_xlabel(caption, fontsize=8)
    handles = [Patch(facecolor=np.asarray(colour) / 255, edgecolor="black", label=name)
               for name, colour in zip(class_names, palette)]
    handles.append(Patch(facecolor=np.asarray(IGNORED_COLOUR) / 255, edgecolor="black", label="ignored (255)"))
    figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=9, frameon=False)
    return figure


def figure_pixels(figure: plt.Figure) -> np.ndarray:
    """A drawn matplotlib figure as uint8 (H, W, 3) RGB (the figure is closed)."""
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return pixels


def plot_confusion(summary: dict) -> plt.Figure:
    """The confusion matrix of ``metrics_summary`` as a heatmap, each row (true class) normalised to 100 %.

    Cells show the percentage of the true class's labelled pixels given each predicted class; rows of classes
    absent from the ground truth are left empty.
    """
    counts = np.asarray(summary["confusion_matrix"], dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(100 * counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)
    names = [row["name"] for row in summary["classes"]]
    side = 0.55 * len(names) + 2.4
    figure, axes = plt.subplots(figsize=(side + 1.2, side))
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=100)
    if len(names) <= 20:
        for (truth, predicted), share in np.ndenumerate(shares):
            if not np.isnan(share):
                axes.text(predicted, truth, f"{share:.0f}", ha="center", va="center", fontsize=7,
                          color="white" if share > 60 else "black")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(len(names)), names, fontsize=8)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title("confusion matrix (% of each true class)", fontsize=10)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    return figure


def write_report(
    out_dir: str | os.PathLike,
    summary: dict,
    palette: np.ndarray,
    samples: list[Sample],
    title: str,
    facts: dict[str, str] | None = None,
) -> Path:
    """Write the report's figures and ``report.html``; return the HTML path.

    Args:
        out_dir: the evaluation's output folder.
        summary: ``evaluation.metrics.metrics_summary`` of the run.
        palette: (K, 3) uint8 RGB class colours.
        samples: the images shown (none: no sample figure).
        title: the page's title.
        facts: the run's facts for the header, label -> text (checkpoint, model, protocol, split, date, ...).
    """
    out_dir = Path(out_dir)
    figures = {"report_iou.png": plot_class_iou(summary, palette), "report_confusion.png": plot_confusion(summary)}
    if samples:
        figures["report_samples.png"] = titled_panels(samples, palette, [row["name"] for row in summary["classes"]])
    for name, figure in figures.items():
        with atomic_path(out_dir / name) as temp_path:
            figure.savefig(temp_path, dpi=100, format="png")
        plt.close(figure)
    with atomic_path(out_dir / "report.html") as temp_path:
        Path(temp_path).write_text(_html_page(summary, palette, samples, title, facts or {}), encoding="utf-8")
    return out_dir / "report.html"


STYLE = """body{font-family:system-ui,sans-serif;margin:1.2em 2em;color:#222}
header{border-bottom:1px solid #ccc;margin-bottom:1em}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:0.9em}
dl.facts dt{font-weight:600;color:#555} dl.facts dd{margin:0;word-break:break-all}
.headline{font-size:1.15em} .grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:1.5em;
align-items:start} figure{margin:0} figure img{max-width:100%} figcaption{font-size:0.85em;color:#555}
table{border-collapse:collapse} td,th{padding:2px 10px;text-align:right;border-bottom:1px solid #eee}
td:nth-child(2),th:nth-child(2){text-align:left}
.swatch{display:inline-block;width:12px;height:12px;margin-right:6px;border:1px solid #444}"""


def _html_page(summary: dict, palette: np.ndarray, samples: list[Sample], title: str, facts: dict[str, str]) -> str:
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
    fact_rows = "".join(f"<dt>{html.escape(label)}</dt><dd>{html.escape(str(text))}</dd>"
                        for label, text in facts.items())
    sample_block = (
        "<section><h2>Samples</h2><figure><img src='report_samples.png' alt='image, ground truth and prediction'>"
        f"<figcaption>{len(samples)} images, each as image | ground truth | prediction in the class colours of "
        "the legend (ignored pixels black); the caption under each row gives the image's name and the share of its "
        "labelled pixels predicted right.</figcaption></figure></section>"
        if samples
        else ""
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>
<header><h1>{html.escape(title)}</h1><dl class="facts">{fact_rows}</dl></header>
<p class="headline">mIoU <b>{pct(summary['miou'])}</b> &middot; mean F1 {pct(summary['mean_f1'])} &middot;
OA {pct(summary['overall_accuracy'])} &middot; FWIoU {pct(summary['fwiou'])} &middot;
{summary['pixels']} labelled pixels &middot; excluded from the means: {html.escape(excluded)}</p>
<div class="grid">
<section><h2>Per class</h2><figure><img src="report_iou.png" alt="per-class IoU">
<figcaption>IoU per class in its colour; the dashed line is the mIoU; * and grey: excluded from the
means.</figcaption></figure>
<table><tr><th>id</th><th>class</th><th>IoU %</th><th>F1 %</th><th>precision %</th><th>recall %</th></tr>
{table_rows}</table></section>
<section><h2>Confusion</h2><figure><img src="report_confusion.png" alt="confusion matrix">
<figcaption>Rows: true class, columns: predicted class; each row sums to 100 % of that class's labelled
pixels, so the diagonal is each class's recall.</figcaption></figure></section>
</div>
{sample_block}
</body></html>
"""

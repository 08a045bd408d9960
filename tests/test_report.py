"""The eval report: titled sample panels with captions and a legend, a normalised confusion heatmap, the run's
facts in a header, and a page that uses its width (rendered in headless Chromium where one is installed)."""
from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation.report import COLUMN_TITLES, Sample, plot_confusion, titled_panels

PALETTE = np.array([[255, 0, 0], [0, 128, 0], [0, 0, 255]], np.uint8)
NAMES = ("road", "tree", "water")


def test_sample_panels_have_column_titles_captions_with_the_accuracy_and_a_legend():
    truth = np.array([[0, 0, 1, 255]] * 4, np.uint8)          # 12 labelled pixels, 4 ignored
    prediction = np.array([[0, 1, 1, 2]] * 4, np.uint8)      # right on 8 of the 12 labelled: 66.7 %
    image = np.zeros((4, 4, 3), np.uint8)
    figure = titled_panels([Sample("tile_a", image, truth, prediction), Sample("tile_b", image, truth, truth)],
                           PALETTE, NAMES)
    axes = np.asarray(figure.axes).reshape(2, 3)
    assert tuple(axis.get_title() for axis in axes[0]) == COLUMN_TITLES == ("image", "ground truth", "prediction")
    assert axes[0, 1].get_xlabel() == "tile_a: pixel accuracy 66.7 %"
    assert axes[1, 1].get_xlabel() == "tile_b: pixel accuracy 100.0 %"
    np.testing.assert_array_equal(axes[0, 2].images[0].get_array()[0, 3], PALETTE[2])  # prediction in colour
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == [*NAMES, "ignored (255)"]


def test_confusion_heatmap_normalises_each_true_class():
    counts = [[6, 2, 0], [1, 3, 0], [0, 0, 0]]  # the third class never occurs in the truth
    summary = {"confusion_matrix": counts, "classes": [{"name": name} for name in NAMES]}
    shares = np.asarray(plot_confusion(summary).axes[0].images[0].get_array().filled(np.nan))
    np.testing.assert_allclose(shares[:2], [[75, 25, 0], [25, 75, 0]])
    assert np.isnan(shares[2]).all()


class PageStructure(HTMLParser):
    """The parts of report.html a reader relies on: facts (dt -> dd), section titles, images, captions."""

    def __init__(self):
        super().__init__()
        self.facts, self.titles, self.images, self.captions = {}, [], [], []
        self._tag, self._term = None, None

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        if self._tag == "dt":
            self._term = data
        elif self._tag == "dd" and self._term:
            self.facts[self._term] = data
        elif self._tag == "h2":
            self.titles.append(data)
        elif self._tag == "figcaption":
            self.captions.append(data)

    def handle_endtag(self, tag):
        self._tag = None


@pytest.fixture(scope="module")
def report(trained_pfnet, reference_data, tmp_path_factory, one_thread) -> Path:
    """eval.py on the trained PFNet's prepared test split, the command line a user types (its main, in this
    process): its output folder."""
    import eval as evaluation

    _, _, root = reference_data
    out = tmp_path_factory.mktemp("report") / "eval"
    assert evaluation.main(["--dataset", "Posdam", "--dataset_dir", str(root), "--split", "test", "--snapshot",
                            str(trained_pfnet.checkpoint), "--inference_mode", "whole", "--single_scale", "--no_flip",
                            "--num_workers", "0", "--device", "cpu", "--report_samples", "2", "--out_dir",
                            str(out)]) == 0
    return out


@pytest.mark.workflow
def test_report_page_states_the_run_and_captions_every_figure(report, trained_pfnet):
    page = PageStructure()
    page.feed((report / "report.html").read_text())
    assert set(page.facts) == {"checkpoint", "data", "model", "protocol", "date", "command"}
    assert str(trained_pfnet.checkpoint) in page.facts["checkpoint"] and "(epoch 1)" in page.facts["checkpoint"]
    assert page.facts["data"] == "Posdam, split test: 4 images"
    assert "maxpool_size 4 (checkpoint)" in page.facts["model"]
    assert page.facts["protocol"].startswith("whole, scales [1.0], test-time transforms none")
    assert page.titles == ["Per class", "Confusion", "Samples"]
    assert page.images == ["report_iou.png", "report_confusion.png", "report_samples.png"]
    assert len(page.captions) == 3 and all(len(caption) > 40 for caption in page.captions)
    for image in page.images:
        assert Image.open(report / image).size[0] > 300


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no headless Chromium here (apt install chromium)")
@pytest.mark.workflow
def test_report_renders_across_the_page_in_a_browser(report, tmp_path):
    screenshot = tmp_path / "page.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={screenshot}", "--window-size=1600,1400", (report / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(screenshot).convert("L"))
    drawn_columns = (pixels < 240).any(axis=0)
    assert drawn_columns[800:].mean() > 0.5, "the right half of a 1600 px page holds figures too"


def test_training_sends_the_titled_panel_to_tensorboard():
    """train.py's validation panels are the report's titled figure (one row, 100 dpi), not bare images."""
    import torch

    from engine.train_log import prediction_panel

    truth = torch.zeros(32, 32, dtype=torch.long)
    panel = prediction_panel(torch.zeros(3, 32, 32), truth, truth, PALETTE, NAMES, (0.5,) * 3, (0.25,) * 3)
    assert panel.dtype == np.uint8 and panel.shape == (470, 1200, 3)
    assert (panel[:20] < 128).any(), "the column titles are drawn above the panels"

"""predict_large_image's read-ahead and write-behind threads: the writers get the same calls, in the same order and
with the same bytes, as in a serial run (on a trained model and a real GeoTIFF tile), errors surface in the
caller, and no thread outlives the call."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from trained_models import restore

from evaluation.inference import predict_large_image
from evaluation.pipeline import WriteBehind, read_ahead
from utils.image_io import read_image

pytestmark = pytest.mark.usefixtures("one_thread")


def recorded_run(model, pixels: np.ndarray, valid: np.ndarray, pipelined: bool, **options) -> list:
    """Every writer call of one predict_large_image run: (writer, top, left, block bytes, shape), in order."""
    calls = []

    def writer(name):
        return lambda top, left, block: calls.append((name, top, left, block.tobytes(), block.shape))

    predict_large_image(model, lambda top, left, h, w: pixels[top:top + h, left:left + w], pixels.shape[:2],
                        writer("mask"), valid_region=lambda top, left, h, w: valid[top:top + h, left:left + w],
                        write_probabilities=writer("probabilities"), show_progress=False, pipelined=pipelined,
                        **options)
    return calls


@pytest.mark.workflow
@pytest.mark.parametrize("wide", [False, True], ids=["tall", "wide"])
def test_pipelined_writers_receive_the_serial_calls_byte_for_byte(trained_upernet, wide):
    tile = read_image(trained_upernet.tiles[0])                      # a 256 x 256 RGB GeoTIFF
    pixels = np.ascontiguousarray(tile[:200, :] if wide else tile[:, :200])  # 200 x 256 or 256 x 200
    valid = np.ones(pixels.shape[:2], bool)
    valid[:70] = False                                               # leading nodata strips (zero probabilities)
    valid[:, -30:] = False
    model, _ = restore(trained_upernet.checkpoint)
    options = dict(window=64, stride=40, batch_size=3, band_windows=2, blend="gaussian")
    serial = recorded_run(model, pixels, valid, pipelined=False, **options)
    pipelined = recorded_run(model, pixels, valid, pipelined=True, **options)
    assert len(serial) > 20 and {name for name, *_ in serial} == {"mask", "probabilities"}
    assert pipelined == serial


def test_a_writer_error_is_raised_in_the_caller_and_no_thread_outlives_the_call():
    threads_before = set(threading.enumerate())
    pixels = np.zeros((160, 96, 3), np.uint8)
    written = []

    def failing_writer(top, left, block):
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        written.append(top)

    def model(images):
        return torch.zeros(images.shape[0], 2, *images.shape[2:])

    with pytest.raises(OSError, match="No space left on device"):
        predict_large_image(model, lambda top, left, h, w: pixels[top:top + h, left:left + w], pixels.shape[:2],
                            failing_writer, window=32, stride=32, show_progress=False)
    assert written == [0, 32]
    time.sleep(0.3)
    assert set(threading.enumerate()) <= threads_before


def test_a_read_error_is_raised_in_the_caller():
    def unreadable(top, left, height, width):
        if top >= 64:
            raise OSError("tile.tif: read failed at row 64")
        return np.zeros((height, width, 3), np.uint8)

    def model(images):
        return torch.zeros(images.shape[0], 2, *images.shape[2:])

    blocks = []
    with pytest.raises(OSError, match="row 64"):
        predict_large_image(model, unreadable, (160, 96), lambda top, left, block: blocks.append(top), window=32,
                            stride=32, show_progress=False)
    # strips finished before the error may or may not have reached the writer (the caller aborts its outputs on
    # an error), but none after it
    assert blocks in ([], [0], [0, 32])


def test_read_ahead_keeps_order_and_stays_within_its_depth():
    produced = []

    def items():
        for index in range(20):
            produced.append(index)
            yield index

    consumed = []
    for item in read_ahead(items(), depth=2):
        time.sleep(0.005)
        assert len(produced) - len(consumed) <= 2 + 2  # queued, the one in hand, the one being computed
        consumed.append(item)
    assert consumed == list(range(20))


def test_write_behind_runs_in_order_and_skips_calls_after_a_failure():
    ran = []
    with pytest.raises(ValueError, match="third"):
        with WriteBehind(depth=1) as writer:
            for index in range(3):
                writer.submit(lambda index=index: ran.append(index))
            writer.submit(lambda: (_ for _ in ()).throw(ValueError("third")))
            writer.submit(lambda: ran.append("after"))
    assert ran == [0, 1, 2]

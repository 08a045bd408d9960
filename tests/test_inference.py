"""Inference mechanics on small stand-in models (the real model is tested in test_eval/test_predict)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datasets import normalize_image
from evaluation.inference import (
    infer_logits,
    predict_large_image,
    sliding_window_logits,
    window_starts,
)


class CropMean(torch.nn.Module):
    """Fills each crop's output with the crop's mean value: reveals which windows covered a pixel."""

    def forward(self, images):
        return images.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 1, *images.shape[-2:]).clone()


def conv_model(kernel_size: int, num_classes: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Conv2d(3, num_classes, kernel_size, padding=kernel_size // 2).eval()


def test_window_starts_shift_last_window_inside():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(7, 4, 3) == [0, 3]
    assert window_starts(9, 3, 3) == [0, 3, 6]
    # 11 - 4 = 7 is no multiple of 3: the last window starts at 7, one pixel after the window at 6
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(8, 4, 3) == [0, 3, 4]
    assert window_starts(50, 16, 11) == [0, 11, 22, 33, 34]
    assert window_starts(3, 8, 4) == [0]
    with pytest.raises(ValueError, match="uncovered"):
        window_starts(10, 4, 5)


def test_sliding_equals_whole_when_one_window_covers_image():
    model = conv_model(3)
    images = torch.randn(1, 3, 20, 28)
    whole = infer_logits(model, images)
    sliding = infer_logits(model, images, window=32, stride=20)
    torch.testing.assert_close(sliding, whole, rtol=0, atol=0)
    batch = torch.randn(2, 3, 20, 28)  # windows run per image, the whole pass as one batch
    torch.testing.assert_close(infer_logits(model, batch, window=28, stride=28), infer_logits(model, batch))


def test_sliding_overlap_average_on_non_multiple_size():
    # 11 x 8 image, window 4, stride 3: rows start at 0, 3, 6 and 7 (the last shifted back inside), columns
    # at 0, 3 and 4 (shifted), so rows 7-9 and columns 4-6 lie in two windows along that axis.
    values = np.arange(88, dtype=np.float64).reshape(11, 8)
    image = torch.from_numpy(values).float().expand(1, 3, 11, 8).contiguous()
    window_sum = np.zeros((11, 8))
    covered = np.zeros((11, 8))
    for top in (0, 3, 6, 7):
        for left in (0, 3, 4):
            window_sum[top : top + 4, left : left + 4] += values[top : top + 4, left : left + 4].mean()
            covered[top : top + 4, left : left + 4] += 1
    windows_per_row = [1, 1, 1, 2, 1, 1, 2, 2, 2, 2, 1]
    windows_per_column = [1, 1, 1, 2, 2, 2, 2, 1]
    np.testing.assert_array_equal(covered, np.outer(windows_per_row, windows_per_column))
    # pixel (10, 7) lies only in the shifted last window (7, 4); pixel (8, 5) in (6, 3), (6, 4), (7, 3), (7, 4)
    assert window_sum[10, 7] == values[7:11, 4:8].mean()
    assert window_sum[8, 5] / covered[8, 5] == pytest.approx(
        (values[6:10, 3:7].mean() + values[6:10, 4:8].mean() + values[7:11, 3:7].mean() + values[7:11, 4:8].mean()) / 4)
    for batch_size in (1, 4):
        result = sliding_window_logits(CropMean(), image, window=4, stride=3, batch_size=batch_size)
        np.testing.assert_allclose(result[0, 0].numpy(), window_sum / covered, rtol=1e-6)


def test_sliding_with_pointwise_model_equals_whole():
    model = conv_model(1)
    images = torch.randn(1, 3, 37, 53)
    torch.testing.assert_close(sliding_window_logits(model, images, 16, 11, batch_size=3), model(images))


def test_flip_averages_flipped_back_logits():
    model = conv_model(3)
    images = torch.randn(1, 3, 12, 15)
    with torch.no_grad():
        expected = (model(images) + model(images.flip(-1)).flip(-1)) / 2
    torch.testing.assert_close(infer_logits(model, images, flip=True), expected)
    sliding = infer_logits(model, images, flip=True, window=16, stride=8)
    torch.testing.assert_close(sliding, expected)


def test_multi_scale_resizes_back_and_averages():
    model = conv_model(3)
    images = torch.randn(1, 3, 16, 24)
    with torch.no_grad():
        half = model(F.interpolate(images, size=(8, 12), mode="bilinear", antialias=True))
        half = F.interpolate(half, size=(16, 24), mode="bilinear", align_corners=True)
        expected = (half + model(images)) / 2
    torch.testing.assert_close(infer_logits(model, images, scales=(0.5, 1.0)), expected)


class ShiftRight(torch.nn.Module):
    """Logit (N, 1, h, w) at column j = channel 0 of the input at column j - 1 (0 in column 0): depends on
    position and is not mirror-symmetric, so a missing or un-reverted flip changes it."""

    def forward(self, images):
        return F.pad(images[:, :1, :, :-1], (1, 0))


class InputSize(torch.nn.Module):
    """Logits (N, 2, h, w) filled with the height h and the width w of the input it was given."""

    def forward(self, images):
        height, width = images.shape[-2:]
        sizes = torch.tensor([height, width], dtype=torch.float32).view(1, 2, 1, 1)
        return sizes.expand(images.shape[0], 2, height, width).clone()


def test_flip_average_of_position_dependent_model():
    ramp = torch.arange(10, dtype=torch.float32).expand(1, 3, 4, 10).contiguous()  # value = column index
    # unflipped pass: column j reads column j - 1; flipped pass, flipped back: column j reads column j + 1;
    # both read 0 beyond the border
    right = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 8], dtype=np.float32)
    left = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 0], dtype=np.float32)
    np.testing.assert_array_equal(infer_logits(ShiftRight(), ramp)[0, 0].numpy(), np.tile(right, (4, 1)))
    averaged = infer_logits(ShiftRight(), ramp, flip=True)[0, 0].numpy()
    np.testing.assert_array_equal(averaged, np.tile((right + left) / 2, (4, 1)))


def test_multi_scale_average_reaches_the_model_at_every_scale():
    images = torch.zeros(2, 3, 18, 30)
    logits = infer_logits(InputSize(), images, scales=(0.5, 0.75, 1.5), flip=True)
    # the model saw 9 x 15, 13 x 22 (int(13.5), int(22.5)) and 27 x 45 inputs, each also flipped
    assert logits.shape == (2, 2, 18, 30)
    torch.testing.assert_close(logits[:, 0], torch.full((2, 18, 30), (9 + 13 + 27) / 3))
    torch.testing.assert_close(logits[:, 1], torch.full((2, 18, 30), (15 + 22 + 45) / 3))


def test_multi_scale_flip_of_position_dependent_model_by_hand():
    images = torch.randn(1, 3, 12, 20)
    passes = []
    for size in ((6, 10), (18, 30)):
        scaled = F.interpolate(images, size=size, mode="bilinear", antialias=True)
        for logits in (ShiftRight()(scaled), ShiftRight()(scaled.flip(-1)).flip(-1)):
            passes.append(F.interpolate(logits, size=(12, 20), mode="bilinear", align_corners=True))
    expected = sum(passes) / 4
    result = infer_logits(ShiftRight(), images, scales=(0.5, 1.5), flip=True)
    torch.testing.assert_close(result, expected)
    # each ingredient matters: dropping a scale or the flip gives another answer
    assert (result - (passes[0] + passes[1]) / 2).abs().max() > 0.1
    assert (result - (passes[0] + passes[2]) / 2).abs().max() > 0.1


def test_train_mode_output_is_refused():
    class TupleModel(torch.nn.Module):
        def forward(self, images):
            return images, [images]

    with pytest.raises(TypeError, match="eval mode"):
        infer_logits(TupleModel(), torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize("height, width", [(50, 37), (37, 50)])
def test_strips_match_in_memory_sliding_and_stay_bounded(height, width):
    model = conv_model(3, num_classes=5)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    reads = []

    def read_region(top, left, region_height, region_width):
        reads.append((region_height, region_width))
        return pixels[top : top + region_height, left : left + region_width]

    output = np.full((height, width), 255, dtype=np.uint8)

    def write_block(top, left, class_ids):
        assert (output[top : top + class_ids.shape[0], left : left + class_ids.shape[1]] == 255).all()
        output[top : top + class_ids.shape[0], left : left + class_ids.shape[1]] = class_ids

    buffer_shape = predict_large_image(
        model, read_region, (height, width), write_block, window=16, stride=11, batch_size=2, show_progress=False
    )
    images = normalize_image(pixels)[None]
    with torch.no_grad():
        expected = sliding_window_logits(model, images, 16, 11).argmax(1)[0].numpy()
    np.testing.assert_array_equal(output, expected)
    # the buffer spans one window across the shorter side; reads are strips of the same extent
    assert buffer_shape == (5, 16, 37)
    assert max(h * w for h, w in reads) == 16 * 37


@pytest.mark.parametrize("height, width", [(37, 50), (50, 37)])
def test_strips_with_flip_and_scales_run_per_window(height, width):
    model = conv_model(3, num_classes=3)
    pixels = np.random.default_rng(1).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    output = np.full((height, width), 255, dtype=np.uint8)

    def write_block(top, left, class_ids):
        output[top : top + class_ids.shape[0], left : left + class_ids.shape[1]] = class_ids

    predict_large_image(
        model, lambda top, left, h, w: pixels[top : top + h, left : left + w], (height, width), write_block,
        window=16, stride=11, batch_size=2, scales=(0.5, 1.0), flip=True, show_progress=False,
    )
    # reference: every 16 x 16 window (starts 0, 11, 21 on the 37 side; 0, 11, 22, 33, 34 on the 50 side)
    # gets its own scale/flip average, then the overlaps are averaged
    starts = {37: (0, 11, 21), 50: (0, 11, 22, 33, 34)}
    logit_sum = torch.zeros(3, height, width)
    covered = torch.zeros(height, width)
    for top in starts[height]:
        for left in starts[width]:
            crop = normalize_image(pixels[top : top + 16, left : left + 16])[None]
            logit_sum[:, top : top + 16, left : left + 16] += infer_logits(model, crop, scales=(0.5, 1.0), flip=True)[0]
            covered[top : top + 16, left : left + 16] += 1
    expected = (logit_sum / covered).argmax(0).numpy()
    assert len(np.unique(expected)) == 3
    np.testing.assert_array_equal(output, expected)
    # TTA of the whole image is not what runs here: the windows see other context at scale 0.5
    whole = infer_logits(model, normalize_image(pixels)[None], scales=(0.5, 1.0), flip=True).argmax(1)[0].numpy()
    assert (whole != expected).any()

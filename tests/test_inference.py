"""Inference mechanics on small stand-in models (the real model is tested in test_eval/test_predict)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datasets import normalize_image
from utils.inference import (
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
    # 10 x 7 image, window 4, stride 3: rows start at 0, 3, 6 and columns at 0, 3 (worked out above).
    image = torch.arange(70, dtype=torch.float32).reshape(1, 1, 10, 7).expand(1, 3, 10, 7).contiguous()
    expected = np.zeros((10, 7))
    covered = np.zeros((10, 7))
    for top in (0, 3, 6):
        for left in (0, 3):
            crop_mean = image[0, 0, top : top + 4, left : left + 4].mean().item()
            expected[top : top + 4, left : left + 4] += crop_mean
            covered[top : top + 4, left : left + 4] += 1
    expected /= covered
    for batch_size in (1, 4):
        result = sliding_window_logits(CropMean(), image, window=4, stride=3, batch_size=batch_size)
        np.testing.assert_allclose(result[0, 0].numpy(), expected, rtol=1e-6)


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


def test_multi_scale_of_constant_image_is_scale_invariant():
    model = conv_model(1)
    images = torch.full((1, 3, 18, 30), 0.7)
    single = infer_logits(model, images)
    multi = infer_logits(model, images, scales=(0.5, 0.75, 1.5), flip=True, window=16, stride=12)
    torch.testing.assert_close(multi, single)


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


def test_strips_with_flip_and_scales_run_per_window():
    model = conv_model(3, num_classes=3)
    pixels = np.random.default_rng(1).integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    output = np.zeros((20, 20), dtype=np.uint8)

    def write_block(top, left, class_ids):
        output[top : top + class_ids.shape[0], left : left + class_ids.shape[1]] = class_ids

    predict_large_image(
        model, lambda t, l, h, w: pixels[t : t + h, l : l + w], (20, 20), write_block,
        window=32, stride=16, scales=(0.5, 1.0), flip=True, show_progress=False,
    )
    expected = infer_logits(model, normalize_image(pixels)[None], scales=(0.5, 1.0), flip=True).argmax(1)[0]
    np.testing.assert_array_equal(output, expected.numpy())

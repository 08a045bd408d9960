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


class RowColumn(torch.nn.Module):
    """Logits (N, 2, h, w): 1 + row index and 1 + column index x 10 of each pixel in the input it was given
    (position-dependent and asymmetric: any transform not undone, or undone wrongly, shows)."""

    def forward(self, images):
        height, width = images.shape[-2:]
        rows = torch.arange(height, dtype=torch.float32).view(height, 1).expand(height, width) + 1
        columns = torch.arange(width, dtype=torch.float32).view(1, width).expand(height, width) * 10 + 1
        return torch.stack([rows, columns]).expand(images.shape[0], 2, height, width) + images[:, :1] * 0


def test_dihedral_transforms_by_hand():
    from evaluation.inference import apply_transform, dihedral_transforms, undo_transform

    grid = torch.arange(6.0).view(1, 1, 2, 3)  # [[0, 1, 2], [3, 4, 5]]
    assert dihedral_transforms() == ((False, 0),)
    assert len(dihedral_transforms(hflip=True, vflip=True)) == 4 and len(dihedral_transforms(rot90=True)) == 4
    d4 = dihedral_transforms(hflip=True, rot90=True)
    assert len({tuple(apply_transform(grid, t).flatten().tolist()) + tuple(apply_transform(grid, t).shape)
                for t in d4}) == 8
    assert apply_transform(grid, (True, 2)).tolist() == [[[[3, 4, 5], [0, 1, 2]]]]  # the vertical flip
    assert apply_transform(grid, (False, 1)).tolist() == [[[[2, 5], [1, 4], [0, 3]]]]  # a quarter turn
    for transform in d4:
        assert torch.equal(undo_transform(apply_transform(grid, transform), transform), grid)


def test_tta_averages_undone_logits_of_position_dependent_model():
    images = torch.zeros(1, 3, 3, 4)
    rows = np.arange(3, dtype=np.float32)[:, None] + np.zeros((1, 4), np.float32)
    columns = np.zeros((3, 1), np.float32) + np.arange(4, dtype=np.float32)[None]
    # identity: channel 0 = 1 + r, channel 1 = 1 + 10 c. Vertical flip undone: 1 + (2 - r), 1 + 10 c.
    vflip = infer_logits(RowColumn(), images, vflip=True)[0].numpy()
    np.testing.assert_array_equal(vflip[0], ((1 + rows) + (1 + 2 - rows)) / 2)
    np.testing.assert_array_equal(vflip[1], 1 + 10 * columns)
    # the four rotations: the model sees a 4 x 3 image at odd turns; its "row" there is a column here.
    # turn k (counter-clockwise) maps pixel (r, c) of the 3 x 4 image to (model row, model column):
    # k=0: (r, c); k=1: (3 - c, r); k=2: (2 - r, 3 - c); k=3: (c, 2 - r)
    model_rows = [rows, 3 - columns, 2 - rows, columns]
    model_columns = [columns, rows, 3 - columns, 2 - rows]
    rotations = infer_logits(RowColumn(), images, rot90=True)[0].numpy()
    np.testing.assert_allclose(rotations[0], sum(1 + r for r in model_rows) / 4)
    np.testing.assert_allclose(rotations[1], sum(1 + 10 * c for c in model_columns) / 4)


@pytest.mark.parametrize("height, width", [(70, 45), (45, 70)])
def test_bands_are_bit_identical_to_one_band_and_bounded(height, width):
    model = conv_model(3, num_classes=4)
    pixels = np.random.default_rng(2).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    outputs, shapes = [], []
    for band_windows in (1, 2, 100):
        output = np.full((height, width), 77, dtype=np.uint8)

        def write_block(top, left, class_ids, output=output):
            block = output[top : top + class_ids.shape[0], left : left + class_ids.shape[1]]
            assert (block == 77).all()  # every pixel written exactly once
            block[:] = class_ids

        shapes.append(predict_large_image(
            model, lambda top, left, h, w: pixels[top : top + h, left : left + w], (height, width), write_block,
            window=16, stride=11, band_windows=band_windows, show_progress=False))
        outputs.append(output)
    for output in outputs[:2]:
        np.testing.assert_array_equal(output, outputs[2])
    # the buffer spans a band's windows plus the one reaching in from the band before (45 px side, starts
    # 0, 11, 22, 29: the last band of one window also needs the window at 22), not the whole side
    assert [shape[2] for shape in shapes] == [23, 34, 45]


class ColumnRamp(torch.nn.Module):
    """Two-class logits (N, 2, h, w): 0, and 0.05 x the column index within the input it was given."""

    def forward(self, images):
        ramp = torch.arange(images.shape[-1], dtype=torch.float32) * 0.05
        return torch.stack([torch.zeros_like(images[:, 0]), ramp.expand_as(images[:, 0])], dim=1)


def test_gaussian_blend_has_no_seams_with_position_dependent_model():
    # ColumnRamp's logit restarts at every window border: window 32, stride 16, the uniform mean of the two
    # windows over a column is 0.05 x (8 + column mod 16), a saw with a step of 0.75 at each window border;
    # with Gaussian weights the window whose centre is nearer dominates and the blend changes smoothly.
    pixels = np.zeros((1, 96, 3), dtype=np.uint8)
    probabilities = {}
    for blend in ("mean", "gaussian"):
        store = np.zeros((2, 1, 96), dtype=np.uint8)

        def write_probabilities(top, left, values, store=store):
            store[:, top : top + values.shape[1], left : left + values.shape[2]] = values

        predict_large_image(ColumnRamp(), lambda top, left, h, w: pixels[top : top + h, left : left + w], (1, 96),
                            lambda *block: None, window=32, stride=16, blend=blend,
                            write_probabilities=write_probabilities, show_progress=False)
        probabilities[blend] = store[1, 0].astype(np.int64)
    # the class-1 probability (x 255) of the interior columns: sigmoid of the blended logit
    steps = {blend: np.abs(np.diff(values[16:-16])).max() for blend, values in probabilities.items()}
    expected_mean_step = round(255 / (1 + np.exp(-0.05 * 23))) - round(255 / (1 + np.exp(-0.05 * 8)))
    assert steps["mean"] == expected_mean_step
    # Gaussian: a smooth wave whose steps stay within a few times the ramp's own slope (3 per column)
    assert steps["gaussian"] * 4 < steps["mean"], steps


def test_nodata_pixels_get_nodata_and_empty_windows_are_skipped():
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, images):
            calls.append(images.shape[0])
            return torch.stack([images[:, 0], -images[:, 0]], dim=1)

    pixels = np.random.default_rng(3).integers(0, 256, size=(20, 40, 3), dtype=np.uint8)
    valid = np.ones((20, 40), bool)
    valid[:, 20:] = False  # right half nodata: the windows starting at 20 and 24 see no valid pixel
    output = np.zeros((20, 40), np.uint8)

    def write_block(top, left, class_ids):
        output[top : top + class_ids.shape[0], left : left + class_ids.shape[1]] = class_ids

    def region(array):
        return lambda top, left, h, w: array[top : top + h, left : left + w]

    predict_large_image(Counting(), region(pixels), (20, 40), write_block, window=20, stride=10,
                        valid_region=region(valid), show_progress=False)
    assert (output[:, 20:] == 255).all() and (output[:, :20] < 2).all()
    assert len(calls) == 2  # windows at columns 0 and 10 of 0, 10, 20


@pytest.mark.parametrize("height, width", [(60, 20), (20, 60)])
def test_probabilities_cover_strips_without_valid_pixels_before_the_first_window(height, width):
    """Orthomosaics often start with nodata: those blocks too get (zero) probabilities, once each."""
    pixels = np.random.default_rng(4).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    valid = np.zeros((height, width), bool)
    valid[-15:, -15:] = True  # only the last strips of the last band see data
    probabilities = np.full((2, height, width), 7, np.uint8)
    writes = np.zeros((height, width), int)

    def write_probabilities(top, left, values):
        probabilities[:, top : top + values.shape[1], left : left + values.shape[2]] = values
        writes[top : top + values.shape[1], left : left + values.shape[2]] += 1

    def region(array):
        return lambda top, left, h, w: array[top : top + h, left : left + w]

    predict_large_image(lambda images: torch.stack([images[:, 0], -images[:, 0]], dim=1), region(pixels),
                        (height, width), lambda *block: None, window=10, stride=10, band_windows=1,
                        valid_region=region(valid), write_probabilities=write_probabilities, show_progress=False)
    assert (writes == 1).all()
    assert (probabilities[:, ~valid] == 0).all()
    assert (probabilities[:, valid].astype(int).sum(0) >= 250).all()

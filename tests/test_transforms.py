"""Joint transforms: image and mask stay aligned, mask values stay valid, the original's parameters hold."""

import random

import numpy as np
import pytest

from transforms import (
    ColorJitter,
    Compose,
    RandomGaussianBlur,
    RandomHorizontalFlip,
    RandomRotate90,
    RandomScaleCrop,
    RandomVerticalFlip,
    Resize,
    build_eval_transform,
    build_train_transform,
)

NUM_CLASSES = 6
COLOURS = np.array([[10, 200, 30], [200, 20, 40], [40, 60, 220], [230, 230, 20], [120, 20, 200],
                    [20, 180, 180]], np.uint8)


def blocky_pair(height: int, width: int, seed: int, block: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Random class blocks; the image is derived from the mask (one colour per class)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, (height // block + 1, width // block + 1), dtype=np.uint8)
    mask = labels.repeat(block, 0).repeat(block, 1)[:height, :width]
    return COLOURS[mask], mask


def assert_aligned(image: np.ndarray, mask: np.ndarray, tolerance: int, radius: int = 2) -> None:
    """Every pixel whose mask is uniform within ``radius`` (the interpolation's reach) shows its class
    colour; uniform ignore (255) areas are black padding."""
    padded = np.pad(mask.astype(np.int16), radius, constant_values=-1)  # unknown beyond the border
    uniform = np.ones(mask.shape, bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            uniform &= padded[dy:dy + mask.shape[0], dx:dx + mask.shape[1]] == mask
    valid = uniform & (mask != 255)
    assert valid.mean() > 0.1
    difference = np.abs(image[valid].astype(int) - COLOURS[mask[valid]].astype(int))
    assert difference.max() <= tolerance
    ignored = uniform & (mask == 255)
    assert (image[ignored] == 0).all()


def test_flips_and_rotations_are_exact_and_aligned():
    image, mask = blocky_pair(48, 80, 0)
    random.seed(0)
    seen_shapes = set()
    for transform in (RandomHorizontalFlip(), RandomVerticalFlip(), RandomRotate90()):
        for _ in range(12):
            out_image, out_mask = transform(image, mask)
            np.testing.assert_array_equal(out_image, COLOURS[out_mask])
            seen_shapes.add(out_mask.shape)
    assert seen_shapes == {(48, 80), (80, 48)}


def test_rotation_draws_every_quarter_turn_counter_clockwise():
    mask = np.arange(4, dtype=np.uint8).reshape(2, 2)
    image = COLOURS[mask]
    random.seed(3)
    top_left_values = set()
    for _ in range(40):
        _, out = RandomRotate90()(image, mask)
        top_left_values.add(int(out[0, 0]))
    assert top_left_values == {0, 1, 2, 3}
    random.seed(0)
    turns = random.randint(0, 3)
    random.seed(0)
    _, out = RandomRotate90()(image, mask)
    assert out.tolist() == np.rot90(mask, turns).tolist()
    assert np.rot90(mask, 1).tolist() == [[1, 3], [0, 2]], "k = 1 turns counter-clockwise"


def test_alignment_check_detects_a_shift():
    image, mask = blocky_pair(96, 96, 6, block=32)
    assert_aligned(image, mask, tolerance=0)
    with pytest.raises(AssertionError):
        assert_aligned(image[:, 4:], mask[:, :-4], tolerance=3)


def test_resize_keeps_alignment_and_labels():
    image, mask = blocky_pair(90, 130, 1, block=32)
    for size in (64, 200):
        out_image, out_mask = Resize(size)(image, mask)
        assert out_image.shape == (size, size, 3) and out_mask.shape == (size, size)
        assert set(np.unique(out_mask)) <= set(range(NUM_CLASSES))
        assert_aligned(out_image, out_mask, tolerance=3, radius=5)


def test_random_scale_crop_pads_with_ignore_and_keeps_alignment():
    image, mask = blocky_pair(100, 100, 2, block=32)
    random.seed(0)
    exact = RandomScaleCrop(128, scale_min=1.0, scale_max=1.0)
    out_image, out_mask = exact(image, mask)
    # Padding (128 - 100) // 2 + 1 = 15 per side gives 130 px; any 128 crop keeps the whole image.
    assert out_mask.shape == (128, 128) and (out_mask != 255).sum() == 100 * 100
    assert_aligned(out_image, out_mask, tolerance=0)
    transform = RandomScaleCrop(64, scale_min=0.5, scale_max=2.0)
    for seed in range(20):
        random.seed(seed)
        out_image, out_mask = transform(image, mask)
        assert out_image.shape == (64, 64, 3) and out_mask.shape == (64, 64)
        assert set(np.unique(out_mask)) <= set(range(NUM_CLASSES)) | {255}
        assert_aligned(out_image, out_mask, tolerance=3, radius=5)


def test_random_scale_crop_keeps_the_centroid_inside():
    mask = np.zeros((200, 300), np.uint8)
    transform = RandomScaleCrop(48, scale_min=0.75, scale_max=1.5)
    rng = np.random.default_rng(0)
    for seed in range(30):
        x, y = int(rng.integers(3, 297)), int(rng.integers(3, 197))
        marked = mask.copy()
        marked[y - 3:y + 4, x - 3:x + 4] = 5
        random.seed(seed)
        _, out_mask, (out_x, out_y) = Compose([transform]).with_centroid(COLOURS[marked], marked, (x, y))
        assert out_mask[out_y, out_x] == 5


def test_crop_window_contains_a_centroid_at_its_far_edge():
    # NVIDIA drew the window start from [c - size, c]: start c - size leaves c one pixel outside.
    mask = np.zeros((10, 60), np.uint8)
    mask[:, 30] = 1
    transform = RandomScaleCrop(10, scale_min=1.0, scale_max=1.0)
    for seed in range(40):
        random.seed(seed)
        _, out_mask = transform(COLOURS[mask], mask, centroid=(30, 5))
        assert (out_mask == 1).any(), seed


@pytest.mark.parametrize("transform", [RandomHorizontalFlip(p=1.0), RandomVerticalFlip(p=1.0), RandomRotate90(),
                                       Resize(90), RandomScaleCrop(20, scale_min=1.0, scale_max=1.0)])
def test_every_geometric_transform_maps_the_centroid_to_its_pixel(transform):
    for seed in range(12):
        rng = np.random.default_rng(seed)
        mask = np.zeros((30, 45), np.uint8)
        x, y = int(rng.integers(0, 45)), int(rng.integers(0, 30))
        mask[y, x] = 3
        random.seed(seed)
        _, out_mask, (out_x, out_y) = transform.with_centroid(COLOURS[mask], mask, (x, y))
        assert out_mask[out_y, out_x] == 3, (seed, x, y)


def test_compose_refuses_a_transform_that_would_lose_the_centroid():
    def shift(image, mask):
        return image[1:], mask[1:]

    mask = np.zeros((8, 8), np.uint8)
    with pytest.raises(TypeError, match="cannot map a class-uniform centroid"):
        Compose([Resize(16), shift])(COLOURS[mask], mask, centroid=(2, 2))
    assert Compose([shift])(COLOURS[mask], mask)[1].shape == (7, 8), "without a centroid any transform runs"


TRAIN_PIPELINES = [("iSAID", False), ("Posdam", False), ("Posdam", True), ("Vaihingen", True)]


@pytest.mark.parametrize("name,with_aug", TRAIN_PIPELINES)
def test_train_pipeline_output_contains_the_centroid_class(name, with_aug):
    """Class 5 exists only in a 9 x 9 block around the centroid, far from the image centre."""
    pipeline = build_train_transform(name, 64, 1.0, 1.5, with_aug=with_aug, color_aug=0.2)
    missed_without_centroid = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        image, mask = blocky_pair(240, 300, seed)
        mask[mask == 5] = 0
        x, y = int(rng.integers(10, 60)), int(rng.integers(10, 50))
        mask[y - 4:y + 5, x - 4:x + 5] = 5
        image = COLOURS[mask]
        random.seed(seed)
        _, out_mask, (out_x, out_y) = pipeline.with_centroid(image, mask, (x, y))
        assert (out_mask == 5).any(), seed
        assert out_mask[out_y, out_x] == 5, seed
        random.seed(seed)
        missed_without_centroid += not (pipeline(image, mask)[1] == 5).any()
    # Only the random crop can miss the block; the resizing pipelines keep the whole patch.
    assert (missed_without_centroid > 0) == with_aug


@pytest.mark.parametrize("name,with_aug", TRAIN_PIPELINES)
def test_full_train_pipeline_keeps_image_and_mask_aligned(name, with_aug):
    image, mask = blocky_pair(150, 170, 7, block=24)
    pipeline = build_train_transform(name, 96, 0.5, 2.0, with_aug=with_aug, color_aug=0.0, gaussian_blur=False)
    outputs = set()
    for seed in range(8):
        random.seed(seed)
        out_image, out_mask = pipeline(image, mask)
        assert_aligned(out_image, out_mask, tolerance=3, radius=5)
        outputs.add(out_mask.tobytes())
    assert len(outputs) >= 4, "flips, rotations (and crops) must have produced different outputs"


def test_train_pipelines_output_crop_size_and_valid_labels():
    image, mask = blocky_pair(150, 170, 4)
    for name, with_aug in (("iSAID", True), ("Posdam", False), ("potsdam", True), ("Vaihingen", True)):
        pipeline = build_train_transform(name, 96, 0.5, 2.0, with_aug=with_aug, color_aug=0.25)
        for seed in range(6):
            random.seed(seed)
            out_image, out_mask = pipeline(image, mask)
            assert out_image.shape == (96, 96, 3) and out_image.dtype == np.uint8
            assert out_mask.shape == (96, 96) and out_mask.dtype == np.uint8
            assert set(np.unique(out_mask)) <= set(range(NUM_CLASSES)) | {255}


def test_pipeline_composition_follows_the_original():
    isaid = build_train_transform("iSAID", 896, with_aug=True)
    assert [type(t).__name__ for t in isaid.transforms] == [
        "Resize", "RandomHorizontalFlip", "RandomVerticalFlip", "RandomRotate90", "RandomGaussianBlur"]
    potsdam = build_train_transform("Posdam", 896, 0.5, 2.0, with_aug=True)
    assert [type(t).__name__ for t in potsdam.transforms] == [
        "RandomScaleCrop", "RandomHorizontalFlip", "RandomRotate90", "RandomGaussianBlur"]
    assert potsdam.transforms[0].ignore_index == 255
    vaihingen = build_train_transform("Vaihingen", 768, with_aug=False)
    assert [type(t).__name__ for t in vaihingen.transforms] == [
        "Resize", "RandomHorizontalFlip", "RandomRotate90", "RandomGaussianBlur"]
    assert [type(t).__name__ for t in build_eval_transform("iSAID", 896).transforms] == ["Resize"]
    assert build_eval_transform("Vaihingen", None).transforms == []


def _reference_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    radius = int(4 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    values = np.pad(image.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    rows = sum(weight * values[radius + off:radius + off + image.shape[0]] for off, weight in zip(offsets, kernel))
    return sum(weight * rows[:, radius + off:radius + off + image.shape[1]] for off, weight in zip(offsets, kernel))


def test_gaussian_blur_sigma_range_and_values():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = rng.integers(0, NUM_CLASSES, (40, 50), dtype=np.uint8)
    for seed in (0, 1, 2):
        random.seed(seed)
        sigma = 0.15 + 1.15 * random.random()
        random.seed(seed)
        out_image, out_mask = RandomGaussianBlur()(image, mask)
        assert out_mask is mask
        assert np.abs(out_image.astype(float) - _reference_blur(image, sigma)).max() <= 1.0
    flat = np.full((20, 20, 3), 77, np.uint8)
    assert (RandomGaussianBlur()(flat, mask[:20, :20])[0] == 77).all()


def test_color_jitter_changes_only_the_image():
    image, mask = blocky_pair(32, 32, 5)
    random.seed(1)
    out_image, out_mask = ColorJitter(0.4, 0.4, 0.4, 0.1)(image, mask)
    assert out_mask is mask and out_image.dtype == np.uint8 and out_image.shape == image.shape
    assert not np.array_equal(out_image, image)
    random.seed(0)
    factor = random.uniform(0.6, 1.4)
    random.seed(0)
    brightened, _ = ColorJitter(brightness=0.4)(image, mask)
    np.testing.assert_array_equal(brightened, np.clip(np.rint(image * np.float32(factor)), 0, 255).astype(np.uint8))


def test_compose_rejects_misaligned_inputs():
    with pytest.raises(ValueError, match="sizes differ"):
        Compose([])(np.zeros((4, 5, 3), np.uint8), np.zeros((4, 4), np.uint8))

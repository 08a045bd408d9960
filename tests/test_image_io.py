"""utils.image_io: the one image reader (bands, bit depth, alpha, nodata, scaling rule, windows)."""
import warnings

import cv2
import numpy as np
import pytest
from faults import bomb_png
from PIL import Image

from datasets.file_check import check_masks
from utils.image_io import (
    ImageReadError,
    ImageScaling,
    open_raster,
    parse_bands,
    parse_scaling,
    read_as_stored,
    read_image,
)

rasterio = pytest.importorskip("rasterio")
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def write_tiff(path, bands_first: np.ndarray, **profile) -> None:
    """Write (C, H, W) pixels as a plain TIFF with rasterio (RGB+alpha tagging as rasterio does by default)."""
    count, height, width = bands_first.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=count,
                           dtype=bands_first.dtype, **profile) as dataset:
            dataset.write(bands_first)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".bmp"])
def test_three_band_8bit_is_bit_identical_to_opencv_colour_read(tmp_path, suffix):
    pixels = np.random.default_rng(0).integers(0, 256, (21, 34, 3), dtype=np.uint8)
    path = tmp_path / f"image{suffix}"
    cv2.imwrite(str(path), pixels)
    expected = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (21, 34, 3)
    np.testing.assert_array_equal(image, expected)


def test_gray_png_is_replicated_and_palette_png_expanded(tmp_path):
    gray = np.arange(24 * 10, dtype=np.uint8).reshape(24, 10)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(gray[..., None], 3, axis=2))
    palette = Image.fromarray(np.array([[0, 1], [1, 2]], np.uint8), "P")
    palette.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90])
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png")[1, 1], [70, 80, 90])


def test_four_band_tiff_tagged_alpha_is_not_premultiplied_and_ir_is_usable(tmp_path):
    bands = np.random.default_rng(1).integers(1, 256, (4, 12, 16), dtype=np.uint8)
    bands[3, 0, :] = 0  # alpha 0 on the first row
    write_tiff(tmp_path / "rgbi.tif", bands)
    with rasterio.open(tmp_path / "rgbi.tif") as dataset:
        assert dataset.colorinterp[3] == rasterio.enums.ColorInterp.alpha  # the trap OpenCV falls into
    np.testing.assert_array_equal(read_image(tmp_path / "rgbi.tif"), bands[:3].transpose(1, 2, 0))
    np.testing.assert_array_equal(read_image(tmp_path / "rgbi.tif", bands=(4, 1, 2)),
                                  bands[[3, 0, 1]].transpose(1, 2, 0))
    with open_raster(tmp_path / "rgbi.tif") as source:
        valid = source.valid_mask(0, 0, 12, 16)
    assert not valid[0].any() and valid[1:].all()


def test_rgba_png_alpha_is_band_four_and_the_mask(tmp_path):
    rgba = np.random.default_rng(2).integers(1, 256, (8, 9, 4), dtype=np.uint8)
    rgba[2, 3, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba[..., :3])
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", bands=(4, 4, 4))[..., 0], rgba[..., 3])
    with open_raster(tmp_path / "a.png") as source:
        assert source.valid_mask(0, 0, 8, 9).sum() == 8 * 9 - 1 and not source.valid_mask(2, 3, 1, 1)[0, 0]


def test_sixteen_bit_png_follows_the_percentile_rule_never_the_high_byte(tmp_path):
    rng = np.random.default_rng(3)
    deep = rng.integers(0, 4096, (40, 50, 3), dtype=np.uint16)  # 12-bit data: its high byte is 0..15
    cv2.imwrite(str(tmp_path / "deep.png"), deep[..., ::-1])
    image = read_image(tmp_path / "deep.png")
    low, high = np.percentile(deep.reshape(-1, 3).astype(np.float64), (2, 98), axis=0)
    expected = np.rint(np.clip((deep - low) / (high - low), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(image, expected)
    assert image.max() == 255 and image.min() == 0


def test_sixteen_bit_within_8_bits_is_read_as_stored_and_8_bit_ignores_a_scaling(tmp_path):
    pixels = np.random.default_rng(5).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "sixteen.png"), pixels[..., ::-1].astype(np.uint16))
    write_tiff(tmp_path / "sixteen.tif", pixels.transpose(2, 0, 1).astype(np.uint16))
    for name in ("sixteen.png", "sixteen.tif"):
        np.testing.assert_array_equal(read_image(tmp_path / name), pixels)
    cv2.imwrite(str(tmp_path / "eight.png"), pixels[..., ::-1])
    np.testing.assert_array_equal(read_image(tmp_path / "eight.png", scaling=parse_scaling("0,10000")), pixels)


def test_header_claiming_too_many_pixels_names_the_file_before_decoding(tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png", 40_000, 40_000)
    with pytest.raises(ImageReadError, match=r"bomb.png: its header claims 40000 x 40000 = 1600000000 pixels"):
        read_image(bomb)
    with pytest.raises(ImageReadError, match=r"bomb.png: its header claims 40000 x 40000"):
        read_as_stored(bomb)  # masks: the datasets and the mask check read them so
    (problem,) = check_masks([bomb], num_classes=6, workers=1).problems
    assert problem.startswith(f"{bomb}: its header claims 40000 x 40000")


def test_explicit_scaling_and_float_tiff_with_nan_as_invalid(tmp_path):
    values = np.array([[[0.0, 0.25], [0.5, np.nan]]] * 3, np.float32)
    write_tiff(tmp_path / "f.tif", values)
    scaling = parse_scaling("0,1")
    with open_raster(tmp_path / "f.tif", scaling=scaling) as source:
        np.testing.assert_array_equal(source.read(0, 0, 2, 2)[..., 0], [[0, 64], [128, 0]])
        np.testing.assert_array_equal(source.valid_mask(0, 0, 2, 2), [[True, True], [True, False]])
    saved = tmp_path / "scaling.json"
    ImageScaling(low=(0.0, 1.0, 2.0), high=(10.0, 11.0, 12.0)).save(saved)
    assert parse_scaling(str(saved)) == ImageScaling(low=(0.0, 1.0, 2.0), high=(10.0, 11.0, 12.0))


def test_nodata_geotiff_windowed_reads(tmp_path):
    bands = np.random.default_rng(4).integers(1, 200, (3, 30, 40), dtype=np.uint8)
    bands[:, :, :5] = 0
    write_tiff(tmp_path / "n.tif", bands, nodata=0, tiled=True, blockxsize=16, blockysize=16)
    with open_raster(tmp_path / "n.tif") as source:
        np.testing.assert_array_equal(source.read(7, 3, 10, 20), bands[:, 7:17, 3:23].transpose(1, 2, 0))
        valid = source.valid_mask(0, 0, 30, 40)
    assert not valid[:, :5].any() and valid[:, 5:].all()


def test_bad_inputs_name_the_file(tmp_path):
    write_tiff(tmp_path / "two.tif", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ImageReadError, match=r"two.tif has 2 band\(s\)"):
        read_image(tmp_path / "two.tif", bands=(1, 2, 3))
    (tmp_path / "broken.tif").write_bytes((tmp_path / "two.tif").read_bytes()[:20])
    with pytest.raises(ImageReadError, match="broken.tif"):
        read_image(tmp_path / "broken.tif")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageReadError, match="broken.png: cannot be decoded"):
        read_image(tmp_path / "broken.png")
    with pytest.raises(ImageReadError, match="missing.png: does not exist"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="--bands"):
        parse_bands("1,2")
    with pytest.raises(ValueError, match="--scaling"):
        parse_scaling("5,1")

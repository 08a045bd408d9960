"""prepare_dataset.py potsdam with the 4_Ortho_RGBIR and 3_Ortho_IRRG products: bands read explicitly."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tools import ToolError
from tools.make_synthetic_data import make_synthetic
from tools.prepare_dataset import PrepareOptions, prepare

SIZE = 64


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Synthetic Potsdam with an RGBIR product whose IR band is tagged as alpha (zeros included), as a renamed
    or re-saved tile may be: OpenCV's TIFF reader would premultiply the colours by it."""
    root = make_synthetic("potsdam", tmp_path_factory.mktemp("products") / "raw", seed=4, num_images=2, size=SIZE)
    (root / "4_Ortho_RGBIR").mkdir()
    (root / "3_Ortho_IRRG").mkdir()
    for rgb_path in (root / "2_Ortho_RGB").glob("*_RGB.tif"):
        rgb = cv2.imread(str(rgb_path))[..., ::-1]
        infrared = np.tile(np.arange(SIZE, dtype=np.uint8) * 4, (SIZE, 1))    # 0 in the first column
        tile = rgb_path.name.replace("_RGB.tif", "")
        Image.fromarray(np.dstack([rgb, infrared]), "RGBA").save(root / "4_Ortho_RGBIR" / f"{tile}_RGBIR.tif")
        irrg = np.dstack([infrared, rgb[..., 0], rgb[..., 1]])
        Image.fromarray(irrg).save(root / "3_Ortho_IRRG" / f"{tile}_IRRG.tif")
    return root


def _patch(out: Path, split: str, name: str) -> np.ndarray:
    return cv2.imread(str(out / split / "images" / name))[..., ::-1]


def test_rgbir_gives_rgb_by_default_and_irrg_on_request_never_premultiplied(raw, tmp_path):
    rgb = cv2.imread(str(raw / "2_Ortho_RGB" / "top_potsdam_2_10_RGB.tif"))[..., ::-1]
    prepare("potsdam", raw, tmp_path / "rgb",
            PrepareOptions(product="RGBIR", patch_size=32, stride=32, workers=1, progress=False))
    np.testing.assert_array_equal(_patch(tmp_path / "rgb", "train", "top_potsdam_2_10_RGBIR_0_32_0_32.png"),
                                  rgb[:32, :32])
    prepare("potsdam", raw, tmp_path / "irrg",
            PrepareOptions(product="RGBIR", bands="irrg", patch_size=32, stride=32, workers=1, progress=False))
    for split, tile in (("train", "2_10"), ("test", "2_13")):
        np.testing.assert_array_equal(_patch(tmp_path / "irrg", split, f"top_potsdam_{tile}_RGBIR_32_64_0_32.png"),
                                      _irrg(raw, tile)[32:64, :32])
    mask = cv2.imread(str(tmp_path / "irrg" / "train" / "masks" / "top_potsdam_2_10_RGBIR_0_32_32_64_gray_mask.png"),
                      cv2.IMREAD_UNCHANGED)
    assert mask.shape == (32, 32) and mask.max() < 6


def _irrg(raw: Path, tile: str) -> np.ndarray:
    rgb = cv2.imread(str(raw / "2_Ortho_RGB" / f"top_potsdam_{tile}_RGB.tif"))[..., ::-1]
    return np.dstack([np.tile(np.arange(SIZE, dtype=np.uint8) * 4, (SIZE, 1)), rgb[..., 0], rgb[..., 1]])


def test_irrg_product_and_bad_band_choices(raw, tmp_path):
    prepare("potsdam", raw, tmp_path / "out",
            PrepareOptions(product="IRRG", patch_size=32, stride=32, workers=1, progress=False))
    np.testing.assert_array_equal(_patch(tmp_path / "out", "train", "top_potsdam_2_10_IRRG_32_64_0_32.png"),
                                  _irrg(raw, "2_10")[32:64, :32])
    with pytest.raises(ToolError, match="--bands irrg needs an infrared band"):
        prepare("potsdam", raw, tmp_path / "x",
                PrepareOptions(bands="irrg", patch_size=32, stride=32, workers=1, progress=False))
    with pytest.raises(ToolError, match="--bands needs three 1-based band numbers"):
        prepare("potsdam", raw, tmp_path / "x",
                PrepareOptions(product="RGBIR", bands="4,1", patch_size=32, stride=32, workers=1, progress=False))
    with pytest.raises(ToolError, match="band"):
        prepare("potsdam", raw, tmp_path / "x",
                PrepareOptions(product="IRRG", bands="4,1,2", patch_size=32, stride=32, workers=1, progress=False))
    with pytest.raises(ToolError, match="--bands is for Potsdam's products and custom datasets"):
        prepare("vaihingen", raw, tmp_path / "x", PrepareOptions(bands="3,2,1", workers=1, progress=False))

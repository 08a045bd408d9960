"""Reading user imagery region by region and writing class-id masks block by block.

GeoTIFFs (``.tif``/``.tiff``) go through rasterio, an optional dependency: they are read one window
at a time, and a GeoTIFF mask is written one block at a time with the source's CRS and geotransform,
so neither the image nor the mask is ever held whole. Other formats (PNG, JPEG, BMP, ...) have no
random access: they are decoded whole with Pillow (3 bytes per pixel), and a PNG mask is kept in
memory (1 byte per pixel) until it is saved as a palette PNG whose pixel values are the class ids.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from utils.atomic import atomic_path, publish, temporary_path_beside
from utils.palette import full_palette, palette_image

GEOTIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp") + GEOTIFF_SUFFIXES
GDAL_CACHE_BYTES = 64 * 2**20


def import_rasterio():
    """Import rasterio or explain how to get it."""
    try:
        import rasterio
    except ImportError as error:
        raise ImportError(
            "reading or writing GeoTIFFs needs rasterio, an optional dependency: pip install rasterio"
        ) from error
    return rasterio


class ImageSource(Protocol):
    """An RGB image readable by region."""

    height: int
    width: int
    geo_profile: dict | None

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """uint8 (height, width, 3) RGB pixels of the region."""

    def close(self) -> None:
        """Release the file."""


class PillowSource:
    """A whole image decoded with Pillow and converted to RGB (no georeference)."""

    geo_profile = None

    def __init__(self, path: str | os.PathLike):
        with Image.open(path) as image:
            self.pixels = np.asarray(image.convert("RGB"))
        self.height, self.width = self.pixels.shape[:2]

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        return self.pixels[top : top + height, left : left + width]

    def close(self) -> None:
        self.pixels = None


class RasterioSource:
    """A raster (GeoTIFF) read window by window; ``bands`` (1-based) picks the R, G, B bands.

    Raises:
        ValueError: the raster is not 8-bit or lacks the requested bands; the message says what to do.
    """

    def __init__(self, path: str | os.PathLike, bands: tuple[int, int, int] = (1, 2, 3)):
        rasterio = import_rasterio()
        # GDAL's block cache defaults to 5 % of the RAM and would grow with the tile; each strip is read once
        self.gdal_env = rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)
        self.gdal_env.__enter__()
        with warnings.catch_warnings():  # a plain (non-geo) TIFF is fine to read
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            self.dataset = rasterio.open(path)
        try:
            self._check_bands(path, tuple(bands))
        except ValueError:
            self.close()
            raise
        self.bands = tuple(bands)
        self.height, self.width = self.dataset.height, self.dataset.width
        georeferenced = self.dataset.crs is not None or not self.dataset.transform.is_identity
        self.geo_profile = {"crs": self.dataset.crs, "transform": self.dataset.transform} if georeferenced else None

    def _check_bands(self, path: str | os.PathLike, bands: tuple[int, ...]) -> None:
        if max(bands) > self.dataset.count:
            raise ValueError(
                f"{path} has {self.dataset.count} band(s); --bands {','.join(map(str, bands))} asks for more. "
                "The model needs three 8-bit bands in the order it was trained on (RGB; IR-R-G for Vaihingen)."
            )
        dtypes = {self.dataset.dtypes[band - 1] for band in bands}
        if dtypes != {"uint8"}:
            raise ValueError(
                f"{path} holds {'/'.join(sorted(dtypes))} pixels; the model expects 8-bit bands (0-255). "
                "Rescale first, e.g. gdal_translate -ot Byte -scale <in> <out>."
            )

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        from rasterio.windows import Window

        bands = self.dataset.read(self.bands, window=Window(left, top, width, height))
        return np.ascontiguousarray(bands.transpose(1, 2, 0))

    def close(self) -> None:
        self.dataset.close()
        self.gdal_env.__exit__(None, None, None)


def open_image(path: str | os.PathLike, bands: tuple[int, int, int] = (1, 2, 3)) -> ImageSource:
    """Open a GeoTIFF with rasterio (windowed) or any other image with Pillow (whole)."""
    if Path(path).suffix.lower() in GEOTIFF_SUFFIXES:
        return RasterioSource(path, bands)
    return PillowSource(path)


class MaskSink(Protocol):
    """Receives finished blocks of class ids; ``close`` publishes the file atomically."""

    def write(self, top: int, left: int, class_ids: np.ndarray) -> None:
        """Store a uint8 (h, w) block at (top, left)."""

    def close(self) -> None:
        """Finish the file."""

    def abort(self) -> None:
        """Give up without leaving a partial file."""


class PaletteMaskSink:
    """Collects the mask in memory and saves it as a palette PNG (values = class ids)."""

    def __init__(self, path: str | os.PathLike, height: int, width: int, palette: np.ndarray):
        self.path = Path(path)
        self.palette = palette
        self.class_ids = np.zeros((height, width), dtype=np.uint8)

    def write(self, top: int, left: int, class_ids: np.ndarray) -> None:
        self.class_ids[top : top + class_ids.shape[0], left : left + class_ids.shape[1]] = class_ids

    def close(self) -> None:
        with atomic_path(self.path) as temp_path:
            palette_image(self.class_ids, self.palette).save(temp_path, optimize=False)

    def abort(self) -> None:
        """Nothing was written yet."""
        self.class_ids = None


class GeoTiffMaskSink:
    """Streams the mask into a single-band uint8 GeoTIFF (tiled, deflate) with the source's georeference
    and the palette as its colour table; the file appears under its name only when complete."""

    def __init__(self, path: str | os.PathLike, height: int, width: int, palette: np.ndarray,
                 geo_profile: dict | None):
        rasterio = import_rasterio()
        self.path = Path(path)
        self.temp_path = temporary_path_beside(self.path)
        profile = {
            "driver": "GTiff", "height": height, "width": width, "count": 1, "dtype": "uint8",
            "compress": "deflate", "tiled": True, "blockxsize": 256, "blockysize": 256,
            **(geo_profile or {}),
        }
        self.dataset = rasterio.open(self.temp_path, "w", **profile)
        table = full_palette(palette)
        self.dataset.write_colormap(1, {index: (*map(int, table[index]), 255) for index in range(256)})

    def write(self, top: int, left: int, class_ids: np.ndarray) -> None:
        from rasterio.windows import Window

        window = Window(left, top, class_ids.shape[1], class_ids.shape[0])
        self.dataset.write(class_ids[np.newaxis], window=window)

    def close(self) -> None:
        self.dataset.close()
        publish(self.temp_path, self.path)

    def abort(self) -> None:
        """Drop the unfinished file."""
        self.dataset.close()
        os.remove(self.temp_path)

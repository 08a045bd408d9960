"""The one image reader of the project: tools, datasets, ``eval.py`` and ``predict.py`` all read imagery here.

It knows each file's band count, bit depth, photometric interpretation and alpha, and always hands out
three 8-bit bands, RGB order, shape (H, W, 3) uint8, for the model's three input channels.

API (what other modules code against)::

    read_image(path, bands=None, scaling=None, policy=STRICT_SOURCES) -> np.ndarray    # (H, W, 3) uint8, whole
    open_raster(path, bands=None, scaling=None, policy=STRICT_SOURCES) -> RasterSource  # windowed, a context manager
        source.height, source.width, source.band_count, source.dtype, source.sample_valid_fraction
        source.read(top, left, height, width) -> (height, width, 3) uint8
        source.valid_mask(top, left, height, width) -> (height, width) bool (False = nodata in every chosen
            band, alpha 0, or a non-finite value)
        source.geo_profile -> {"crs", "transform"} or {"gcps", "gcps_crs"} or None (not georeferenced)
    image_size(path, policy=STRICT_SOURCES) -> (H, W) from the header, without decoding the pixels
    parse_bands("4,1,2") -> (4, 1, 2);  parse_scaling("auto" | "LOW,HIGH" | "scaling.json") -> ImageScaling | None
    ImageScaling(low, high)  .apply(pixels)  .from_sample(pixels, valid)  .save(path)  ImageScaling.load(path)
    ImageReadError (a ValueError): the message names the file and says what to do;
    SourcePolicyError (an ImageReadError): a GDAL input refused by the source policy (``utils.source_policy``).

Formats. TIFF / GeoTIFF / GDAL VRT files go through rasterio (GDAL), under the source policy of
``utils.source_policy`` (a VRT may only name files in its own folder or under ``--allow-source-root``
folders, no network path without ``--allow-network-sources``; checked before GDAL opens it, and the driver
and its files after): any band count and data type, read window by window, nodata, alpha bands and
internal masks turned into the valid mask, palette TIFFs expanded through their colour table. Alpha is
never premultiplied into the colours (OpenCV's TIFF decoder does that; it is not used for TIFFs). PNG
files are decoded whole by OpenCV exactly as stored (8 or 16 bit, gray, gray+alpha, RGB, RGBA; palettes
expanded); an alpha channel is band 4 and its zeros are the invalid pixels. JPEG, BMP and WebP are 8-bit
formats and are decoded with OpenCV's colour reader, as the data tools always did (EXIF orientation
applied). For a 3-band 8-bit image the pixels are bit-identical to ``cv2.imread(path, cv2.IMREAD_COLOR)``
converted to RGB. An image whose header claims more than ``MAX_IMAGE_PIXELS`` pixels is refused before
decoding.

Bands. ``bands`` are 1-based numbers of the file's bands in its own order (R, G, B, A for PNGs; the
stored order for TIFFs), fed to the model as its channels 1, 2, 3: ``(4, 1, 2)`` makes IR-R-G from an
RGB+IR tile. Default: ``(1, 2, 3)``, or ``(1, 1, 1)`` for a single-band (gray) image.

Scaling rule (one rule for tools, training data, eval and predict). 8-bit bands are used as they are
(an explicit scaling does not apply to them). Any other data type (16-bit, 32-bit, float) is mapped
linearly and per band from ``[low, high]`` to ``0..255``: ``round(clip((value - low) / (high - low), 0,
1) * 255)``. ``low``/``high`` are given explicitly (``ImageScaling``, the ``--scaling LOW,HIGH`` flag or a
``scaling.json`` saved beside a prepared dataset), or, by default: ``0``/``255`` (the values as they are)
for integer data whose valid values all lie in 0..255, else the 2nd and 98th percentiles of each band's
valid pixels in the image. Both are decided on a regular sample of at most ``SAMPLE_SIDE`` x
``SAMPLE_SIDE`` pixels (the whole image for PNG, JPEG, ...). The data tools never use the per-image
percentiles: they give one dataset-wide scaling (``dataset_scaling``). A high-byte
read of 16-bit data never happens. Non-finite values (NaN, inf) count as invalid pixels.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils.atomic import atomic_write_bytes
from utils.source_policy import STRICT_SOURCES, SourcePolicy, gdal_driver, input_problem, opened_problem

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")
"""Read through rasterio (GDAL), window by window."""
PNG_SUFFIXES = (".png",)
"""Decoded whole by OpenCV as stored (any bit depth, alpha kept)."""
EIGHT_BIT_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".webp")
"""8-bit formats decoded by OpenCV's colour reader."""
IMAGE_SUFFIXES = PNG_SUFFIXES + EIGHT_BIT_SUFFIXES + RASTER_SUFFIXES
SAMPLE_SIDE = 1024
"""The default scaling's percentiles are estimated on at most this many pixels along each side."""
PERCENTILES = (2.0, 98.0)
"""The default scaling's lower and upper percentile per band."""
SCALING_FILE = "scaling.json"
"""Name of the scaling parameters saved beside a prepared dataset."""
GDAL_CACHE_BYTES = 64 * 2**20
"""GDAL block cache limit; its default (5 % of the RAM) would grow with the tile. A ``GDAL_CACHEMAX``
environment variable (GDAL's syntax: megabytes below 100000, bytes above, or a percentage of the RAM) wins."""
MAX_IMAGE_PIXELS = 2**30
"""Largest image (pixels) decoded whole: OpenCV's own limit (CV_IO_MAX_IMAGE_PIXELS); iSAID's largest scenes
have ~0.06e9 pixels. A header claiming more is a decompression bomb or a corrupt file."""
IDENTITY = (0.0, 255.0)
"""``low``/``high`` that leave integer values 0..255 as they are."""


class ImageReadError(ValueError):
    """An image that cannot be read as asked (missing, corrupt, bands out of range, no scaling rule)."""


class SourcePolicyError(ImageReadError):
    """A GDAL input that would read files outside the allowed folders or the network (``utils.source_policy``)."""


def import_rasterio():
    """Import rasterio or explain how to get it."""
    try:
        import rasterio
    except ImportError as error:
        raise ImportError("reading TIFF/GeoTIFF/VRT images or writing GeoTIFFs needs rasterio: pip install rasterio"
                          ) from error
    return rasterio


def gdal_errors() -> tuple[type[Exception], ...]:
    """The exception types rasterio raises for GDAL failures (its own errors and GDAL's CPLE errors)."""
    rasterio = import_rasterio()
    from rasterio._err import CPLE_BaseError

    return rasterio.errors.RasterioError, CPLE_BaseError


@dataclass(frozen=True)
class ImageScaling:
    """Linear per-band map of ``[low[i], high[i]]`` to ``0..255`` (clipped, rounded), for the chosen bands."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, C) numbers -> (H, W, C) uint8; C equals the length of ``low``; NaN becomes 0."""
        low = np.asarray(self.low, np.float64)
        span = np.maximum(np.asarray(self.high, np.float64) - low, np.finfo(np.float64).tiny)
        scaled = np.clip((pixels.astype(np.float64) - low) / span, 0.0, 1.0) * 255.0
        return np.rint(np.nan_to_num(scaled, nan=0.0)).astype(np.uint8)

    @classmethod
    def from_sample(cls, pixels: np.ndarray, valid: np.ndarray | None = None) -> ImageScaling:
        """The default rule's parameters: per-band ``PERCENTILES`` of a (h, w, C) sample's valid finite pixels."""
        values = pixels.reshape(-1, pixels.shape[-1]).astype(np.float64)
        keep = np.isfinite(values).all(axis=1)
        if valid is not None:
            keep &= valid.reshape(-1)
        values = values[keep]
        if not len(values):
            return cls(low=(0.0,) * pixels.shape[-1], high=(1.0,) * pixels.shape[-1])
        low, high = np.percentile(values, PERCENTILES, axis=0)
        return cls(low=tuple(map(float, low)), high=tuple(map(float, high)))

    def save(self, path: str | os.PathLike) -> None:
        """Write the parameters as JSON (atomically), e.g. ``{prepared_root}/scaling.json``."""
        text = json.dumps({"rule": "linear", "low": list(self.low), "high": list(self.high)}, indent=2)
        atomic_write_bytes(path, (text + "\n").encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ImageScaling:
        """Read parameters written by :meth:`save`.

        Raises:
            ImageReadError: the file is missing or not such a file.
        """
        try:
            data = json.loads(Path(path).read_text())
            scaling = cls(low=tuple(map(float, data["low"])), high=tuple(map(float, data["high"])))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ImageReadError(f"{path}: not a scaling file with 'low' and 'high' lists ({error})") from None
        if len(scaling.low) != len(scaling.high) or not scaling.low:
            raise ImageReadError(f"{path}: 'low' and 'high' must be lists of the same non-zero length")
        return scaling


def fits_in_eight_bits(pixels: np.ndarray, valid: np.ndarray | None = None) -> bool:
    """Whether (h, w, C) pixels are integers whose valid values all lie in 0..255 (used as they are)."""
    if pixels.dtype.kind not in "ui":
        return False
    values = pixels if valid is None else pixels[valid]
    return not values.size or (int(values.min()) >= 0 and int(values.max()) <= 255)


def default_scaling(pixels: np.ndarray, valid: np.ndarray | None = None) -> ImageScaling:
    """The default rule for non-8-bit (h, w, C) pixels: values as they are (0..255) for integers that fit in
    8 bits, else :meth:`ImageScaling.from_sample`'s per-band percentiles."""
    if fits_in_eight_bits(pixels, valid):
        channels = pixels.shape[-1]
        return ImageScaling(low=(IDENTITY[0],) * channels, high=(IDENTITY[1],) * channels)
    return ImageScaling.from_sample(pixels, valid)


def parse_bands(text: str) -> tuple[int, ...]:
    """``--bands`` text such as ``"4,1,2"`` -> three 1-based band numbers.

    Raises:
        ValueError: not three positive integers; the message names ``--bands``.
    """
    try:
        bands = tuple(int(value) for value in text.split(","))
    except ValueError:
        bands = ()
    if len(bands) != 3 or min(bands) < 1:
        raise ValueError(f"--bands needs three 1-based band numbers such as 1,2,3 (or 4,1,2 for IR-R-G), got {text!r}")
    return bands


def parse_scaling(text: str) -> ImageScaling | None:
    """``--scaling`` text: ``auto`` (None: the default rule), ``LOW,HIGH`` (same range for all three bands) or
    the path of a ``scaling.json``.

    Raises:
        ValueError: neither; the message names ``--scaling``.
    """
    if text == "auto":
        return None
    parts = text.split(",")
    if len(parts) == 2:
        try:
            low, high = (float(part) for part in parts)
        except ValueError:
            low = high = math.nan
        if not low < high:
            raise ValueError(f"--scaling LOW,HIGH needs two numbers with LOW < HIGH, got {text!r}")
        return ImageScaling(low=(low,) * 3, high=(high,) * 3)
    if Path(text).is_file():
        return ImageScaling.load(text)
    raise ValueError(f"--scaling must be auto, LOW,HIGH (e.g. 0,10000) or an existing scaling.json, got {text!r}")


def _default_bands(path: str | os.PathLike, count: int, colour_bands: int) -> tuple[int, ...]:
    if colour_bands >= 3:
        return (1, 2, 3)
    if colour_bands == 1:
        return (1, 1, 1)
    raise ImageReadError(f"{path}: cannot tell which of its {count} bands are colours; pass --bands, e.g. 1,2,3")


def _check_bands(path: str | os.PathLike, bands: tuple[int, ...], count: int) -> None:
    if min(bands) < 1 or max(bands) > count:
        raise ImageReadError(f"{path} has {count} band(s); --bands {','.join(map(str, bands))} asks for band "
                             f"{max(bands)}. Choose 1-based bands between 1 and {count}.")


class RasterSource:
    """An image readable region by region as (h, w, 3) uint8, with its valid-pixel mask and georeference.

    Built by :func:`open_raster`; ``read`` and ``valid_mask`` take pixel offsets ``(top, left, height,
    width)``. Close it (or use ``with``) to release the file.
    """

    height: int
    width: int
    band_count: int
    dtype: str
    bands: tuple[int, ...]
    scaling: ImageScaling | None
    geo_profile: dict | None
    sample_valid_fraction: float
    """Fraction of valid pixels in the regular sample the default scaling is estimated on (0: no data)."""

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """(height, width, 3) uint8 pixels of the chosen bands, scaled by the rule."""
        return self._to_uint8(self._read_bands(top, left, height, width))

    def valid_mask(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """(height, width) bool: False where the file says nodata / alpha 0 or a chosen band is not finite."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _read_bands(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        raise NotImplementedError

    def _to_uint8(self, pixels: np.ndarray) -> np.ndarray:
        if self.scaling is not None:
            return self.scaling.apply(pixels)
        return np.ascontiguousarray(pixels)

    def _choose_scaling(self, scaling: ImageScaling | None, sample: np.ndarray, valid: np.ndarray) -> None:
        if scaling is not None and len(scaling.low) != len(self.bands):
            raise ImageReadError(f"{self.path}: the scaling has {len(scaling.low)} band(s), --bands chooses "
                                 f"{len(self.bands)}")
        if self.dtype == "uint8":
            scaling = None
        elif scaling is None:
            scaling = default_scaling(sample, valid)
        self.scaling = scaling
        self.sample_valid_fraction = float(valid.mean()) if valid.size else 0.0


class ArraySource(RasterSource):
    """A whole decoded image (PNG, JPEG, ...) held as an (H, W, C) array in the file's band order."""

    def __init__(self, path: str | os.PathLike, pixels: np.ndarray, alpha_band: int | None,
                 bands: tuple[int, ...] | None, scaling: ImageScaling | None):
        self.path = path
        self.pixels = pixels if pixels.ndim == 3 else pixels[..., np.newaxis]
        self.height, self.width, self.band_count = self.pixels.shape
        self.dtype = str(self.pixels.dtype)
        self.alpha_band = alpha_band
        colour_bands = self.band_count - (alpha_band is not None)
        self.bands = tuple(bands) if bands is not None else _default_bands(path, self.band_count, colour_bands)
        _check_bands(path, self.bands, self.band_count)
        self.geo_profile = None
        step = max(1, math.ceil(max(self.height, self.width) / SAMPLE_SIDE))
        self._choose_scaling(scaling, self._read_bands(0, 0, self.height, self.width)[::step, ::step],
                             self.valid_mask(0, 0, self.height, self.width)[::step, ::step])

    def _read_bands(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        region = self.pixels[top : top + height, left : left + width]
        if self.bands == (1, 2, 3) and region.shape[2] == 3:
            return region
        return region[..., [band - 1 for band in self.bands]]

    def valid_mask(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        region = self.pixels[top : top + height, left : left + width]
        valid = np.ones(region.shape[:2], bool)
        if self.alpha_band is not None:
            valid &= region[..., self.alpha_band - 1] != 0
        if region.dtype.kind == "f":
            valid &= np.isfinite(region[..., [band - 1 for band in self.bands]]).all(axis=2)
        return valid

    def close(self) -> None:
        self.pixels = None


class GdalSource(RasterSource):
    """A TIFF / GeoTIFF / VRT read through rasterio, window by window, never whole."""

    def __init__(self, path: str | os.PathLike, bands: tuple[int, ...] | None, scaling: ImageScaling | None,
                 policy: SourcePolicy):
        self.path = path
        self.gdal_env = gdal_env(policy)
        self.gdal_env.__enter__()
        try:
            self.dataset = open_raster_header(path, policy)  # a plain (non-geo) TIFF is fine to read
        except ImageReadError:
            self.gdal_env.__exit__(None, None, None)
            raise
        try:
            self._describe(path, bands)
            step = max(1, math.ceil(max(self.height, self.width) / SAMPLE_SIDE))
            sample_shape = (math.ceil(self.height / step), math.ceil(self.width / step))
            sample = self.dataset.read(self.bands, out_shape=(len(self.bands), *sample_shape)).transpose(1, 2, 0)
            valid = self._masks(None, sample_shape)
            self._choose_scaling(scaling, self._expand(sample), valid)
        except gdal_errors() as error:
            self.close()
            raise ImageReadError(f"{path}: cannot be read (truncated or corrupt?): {error}") from None
        except BaseException:
            self.close()
            raise

    def _describe(self, path: str | os.PathLike, bands: tuple[int, ...] | None) -> None:
        from rasterio.enums import ColorInterp

        dataset = self.dataset
        self.height, self.width, self.band_count = dataset.height, dataset.width, dataset.count
        interpretations = dataset.colorinterp
        self.colormap = None
        if dataset.count == 1 and interpretations[0] == ColorInterp.palette:
            table = np.zeros((256, 3), np.uint8)
            for index, colour in dataset.colormap(1).items():
                table[index] = colour[:3]
            self.colormap = table
        colour_bands = sum(interpretation != ColorInterp.alpha for interpretation in interpretations)
        self.bands = tuple(bands) if bands is not None else _default_bands(path, dataset.count, colour_bands)
        _check_bands(path, self.bands, dataset.count)
        dtypes = {dataset.dtypes[band - 1] for band in self.bands}
        if len(dtypes) > 1:
            raise ImageReadError(f"{path}: the chosen bands mix data types {sorted(dtypes)}; choose bands of one type")
        self.dtype = "uint8" if self.colormap is not None else dtypes.pop()
        georeferenced = dataset.crs is not None or not dataset.transform.is_identity
        if georeferenced:
            self.geo_profile = {"crs": dataset.crs, "transform": dataset.transform}
        elif dataset.gcps[0]:
            self.geo_profile = {"gcps": dataset.gcps[0], "gcps_crs": dataset.gcps[1]}
        else:
            self.geo_profile = None

    def _expand(self, pixels: np.ndarray) -> np.ndarray:
        if self.colormap is None:
            return pixels
        return self.colormap[pixels[..., 0]]

    def _window(self, top: int, left: int, height: int, width: int):
        from rasterio.windows import Window

        return Window(left, top, width, height)

    def _read_bands(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        try:
            bands = self.dataset.read(self.bands, window=self._window(top, left, height, width))
        except gdal_errors() as error:
            raise ImageReadError(f"{self.path}: cannot be read (truncated or corrupt?): {error}") from None
        return self._expand(bands.transpose(1, 2, 0))

    def _masks(self, window, out_shape: tuple[int, int] | None = None) -> np.ndarray:
        kwargs = {"window": window} if out_shape is None else {"out_shape": (len(self.bands), *out_shape)}
        masks = self.dataset.read_masks(self.bands, **kwargs)
        valid = (masks != 0).any(axis=0)  # nodata only where every chosen band is (a 0 in one band is data)
        if np.dtype(self.dtype).kind == "f":
            values = self.dataset.read(self.bands, **kwargs)
            valid &= np.isfinite(values).all(axis=0)
        return valid

    def valid_mask(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        try:
            return self._masks(self._window(top, left, height, width))
        except gdal_errors() as error:
            raise ImageReadError(f"{self.path}: cannot be read (truncated or corrupt?): {error}") from None

    def close(self) -> None:
        self.dataset.close()
        self.gdal_env.__exit__(None, None, None)


def _opencv_read(path: str | os.PathLike, flags: int) -> np.ndarray | None:
    """``cv2.imread(path, flags)`` after checking the header's pixel count; None if OpenCV cannot decode it.

    Raises:
        ImageReadError: the header claims more than ``MAX_IMAGE_PIXELS`` pixels, or OpenCV fails; names the file.
    """
    try:
        height, width = image_size(path)
    except ImageReadError:  # OpenCV says what is wrong with the file
        height = width = 0
    if height * width > MAX_IMAGE_PIXELS:
        raise ImageReadError(f"{path}: its header claims {width} x {height} = {height * width} pixels, more than "
                             f"the limit of {MAX_IMAGE_PIXELS} (a decompression bomb or a corrupt header); "
                             "re-download it, or cut it into tiles")
    try:
        return cv2.imread(str(path), flags)
    except cv2.error as error:
        raise ImageReadError(f"{path}: cannot be decoded ({str(error).strip().splitlines()[-1]})") from None


def read_as_stored(path: str | os.PathLike) -> np.ndarray | None:
    """A file's pixels exactly as stored (``cv2.IMREAD_UNCHANGED``: any bit depth and channel count; label
    masks), or None if it cannot be decoded.

    Raises:
        ImageReadError: the header claims more than ``MAX_IMAGE_PIXELS`` pixels; the message names the file.
    """
    return _opencv_read(path, cv2.IMREAD_UNCHANGED)


def _decode_with_opencv(path: str | os.PathLike) -> tuple[np.ndarray, int | None]:
    """(H, W, C) pixels in the file's band order (RGB(A)) and the alpha band's number, or None."""
    suffix = Path(path).suffix.lower()
    decoded = _opencv_read(path, cv2.IMREAD_UNCHANGED if suffix in PNG_SUFFIXES else cv2.IMREAD_COLOR)
    if decoded is None:
        state = "cannot be decoded (truncated, corrupt or not an image)" if Path(path).exists() else "does not exist"
        raise ImageReadError(f"{path}: {state}")
    if decoded.ndim == 2:
        return decoded, None
    channels = decoded.shape[2]
    if channels == 3:
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), None
    if channels == 4:
        return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGBA), 4
    raise ImageReadError(f"{path}: unexpected {channels}-channel image")


def open_raster(path: str | os.PathLike, bands: tuple[int, ...] | None = None,
                scaling: ImageScaling | None = None, policy: SourcePolicy = STRICT_SOURCES) -> RasterSource:
    """Open an image for region reads: TIFF/GeoTIFF/VRT windowed through rasterio, other formats decoded whole.

    Args:
        path: image file.
        bands: 1-based bands fed as the model's three channels (default: 1,2,3, or 1,1,1 for gray).
        scaling: the linear range per chosen band for non-8-bit data; None = the default rule (see the module).
        policy: what a GDAL input may make GDAL read (``utils.source_policy``; default: its own folder only).

    Raises:
        ImageReadError: missing, unreadable or corrupt file, ``bands`` beyond its band count, or a header
            claiming more than ``MAX_IMAGE_PIXELS``; SourcePolicyError: refused by ``policy``. The message
            names the file.
    """
    if Path(path).suffix.lower() in RASTER_SUFFIXES:
        return GdalSource(path, bands, scaling, policy)
    pixels, alpha_band = _decode_with_opencv(path)
    return ArraySource(path, pixels, alpha_band, bands, scaling)


def read_image(path: str | os.PathLike, bands: tuple[int, ...] | None = None,
               scaling: ImageScaling | None = None, policy: SourcePolicy = STRICT_SOURCES) -> np.ndarray:
    """The whole image as (H, W, 3) uint8 RGB (see :func:`open_raster` for the arguments and errors)."""
    with open_raster(path, bands, scaling, policy) as source:
        return source.read(0, 0, source.height, source.width)


def image_size(path: str | os.PathLike, policy: SourcePolicy = STRICT_SOURCES) -> tuple[int, int]:
    """(height, width) of an image from its header (rasterio for rasters, under ``policy``; Pillow otherwise),
    as decoded by :func:`read_image` (EXIF-rotated JPEGs swapped); Pillow's decompression-bomb limit does not
    apply.

    Raises:
        ImageReadError: the header cannot be read; SourcePolicyError: refused by ``policy``. The message
            names the file.
    """
    if Path(path).suffix.lower() in RASTER_SUFFIXES:
        with gdal_env(policy), open_raster_header(path, policy) as dataset:
            return dataset.height, dataset.width
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as image:
            width, height = image.size
            turned = Path(path).suffix.lower() in EIGHT_BIT_SUFFIXES and image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except (OSError, ValueError) as error:
        raise ImageReadError(f"{path}: cannot be read ({error})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return (width, height) if turned else (height, width)


def is_eight_bit(path: str | os.PathLike, bands: tuple[int, ...] | None = None,
                 policy: SourcePolicy = STRICT_SOURCES) -> bool:
    """Whether an image stores 8-bit samples in the chosen ``bands`` (all bands when None), from its header
    only: PNG bit depth, JPEG/BMP/WebP always, a raster's band data types (a palette counts as 8-bit).
    A header that cannot be read counts as 8-bit (reading the image reports it).

    Raises:
        SourcePolicyError: a raster refused by ``policy``.
    """
    suffix = Path(path).suffix.lower()
    if suffix in PNG_SUFFIXES:
        try:
            with open(path, "rb") as handle:
                header = handle.read(25)
        except OSError:
            return True
        return len(header) < 25 or header[24] <= 8  # IHDR bit depth per sample
    if suffix not in RASTER_SUFFIXES:
        return True
    try:
        with gdal_env(policy), open_raster_header(path, policy) as dataset:
            chosen = [band for band in (bands or range(1, dataset.count + 1)) if band <= dataset.count]
            return all(dataset.dtypes[band - 1] == "uint8" for band in chosen)
    except SourcePolicyError:
        raise
    except ImageReadError:
        return True


def dataset_scaling(paths: list[str | os.PathLike], bands: tuple[int, ...] | None = None,
                    policy: SourcePolicy = STRICT_SOURCES) -> ImageScaling | None:
    """One scaling for every non-8-bit image of a dataset (the data tools never stretch image by image).

    None when every image is 8-bit. Else, per band, the lowest ``low`` and the highest ``high`` of the
    default rule over the non-8-bit images: ``0..255`` (values as they are) when all their values fit in
    8 bits, otherwise the lowest 2nd and the highest 98th percentile (each image estimated on its sample).

    Raises:
        ImageReadError: an image cannot be opened or lacks a chosen band (SourcePolicyError: refused).
    """
    ranges = []
    for path in paths:
        if is_eight_bit(path, bands, policy):
            continue
        with open_raster(path, bands, None, policy) as source:
            ranges.append((source.scaling.low, source.scaling.high))
    if not ranges:
        return None
    lows, highs = zip(*ranges)
    return ImageScaling(low=tuple(map(float, np.min(lows, axis=0))), high=tuple(map(float, np.max(highs, axis=0))))


def gdal_cache_max(default: int | None = None) -> int:
    """GDAL's block cache limit for this process in bytes: the ``GDAL_CACHEMAX`` environment variable when set,
    read as GDAL reads it (megabytes below 100000, else bytes; ``N%``: that share of the physical RAM), else
    ``default`` (None: :data:`GDAL_CACHE_BYTES`). rasterio sets the limit from an integer only, hence the
    conversion here.

    Raises:
        ValueError: ``GDAL_CACHEMAX`` is neither a number nor a percentage (the message names the variable).
    """
    text = os.environ.get("GDAL_CACHEMAX", "").strip()
    if not text:
        return GDAL_CACHE_BYTES if default is None else default
    try:
        if text.endswith("%"):
            return int(float(text[:-1]) / 100 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        value = int(text)
    except ValueError:
        raise ValueError(f"GDAL_CACHEMAX={text!r}: give megabytes (64), bytes (67108864) or a share of the RAM "
                         "(5%)") from None
    return value * 2**20 if value < 100000 else value


def gdal_env(policy: SourcePolicy = STRICT_SOURCES):
    """The ``rasterio.Env`` GDAL files are opened, read and written in: bounded block cache
    (:func:`gdal_cache_max`), ``policy``'s GDAL options."""
    return import_rasterio().Env(GDAL_CACHEMAX=gdal_cache_max(), **policy.gdal_options())


def open_raster_header(path: str | os.PathLike, policy: SourcePolicy = STRICT_SOURCES):
    """The rasterio dataset of a TIFF/GeoTIFF/VRT (header only until read; use as a context manager), opened
    only if ``policy`` allows what it names (checked before GDAL sees the file, then the driver and its files).
    Open it inside :func:`gdal_env`.

    Raises:
        ImageReadError: missing or unreadable file; SourcePolicyError: refused by ``policy``. The message
            names the file.
    """
    rasterio = import_rasterio()
    problem = input_problem(path, policy)
    if problem is not None:
        raise SourcePolicyError(problem)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            dataset = rasterio.open(path, driver=gdal_driver(path))
    except gdal_errors() as error:
        state = "does not exist" if not Path(path).exists() else f"cannot be read (truncated or corrupt?): {error}"
        raise ImageReadError(f"{path} {state}") from None
    problem = opened_problem(path, dataset.driver, list(dataset.files), policy)
    if problem is not None:
        dataset.close()
        raise SourcePolicyError(problem)
    return dataset

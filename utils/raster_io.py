"""Writing predictions block by block: palette PNG masks, Cloud-Optimized GeoTIFFs, polygons.

Images are read by ``utils.image_io`` (the one reader); this module only writes. A writer receives
finished blocks (``write(top, left, block)``) and publishes its file atomically on ``close``
(``utils.atomic.publish``: nothing appears under the name unless complete; ``abort`` leaves nothing).

* :class:`PaletteMaskSink`: the class-id mask kept in memory (1 byte per pixel) and saved as a palette
  PNG whose pixel values are the class ids.
* :class:`CogSink`: a uint8 raster streamed into a tiled temporary GeoTIFF, then copied by GDAL's COG
  driver into a Cloud-Optimized GeoTIFF (256 px tiles, DEFLATE, overviews by nearest resampling, so
  overview pixels are class ids too) with the input's CRS and transform, or its GCPs, the nodata value
  and, for masks, the palette as colour table. GDAL reports many write errors (a full disk) only on
  stderr and rasterio's ``write``/``close`` do not raise, so the published file is re-opened and read
  back completely, and a position-weighted checksum of every pixel must equal the one of the blocks
  written; otherwise :class:`utils.atomic.WriteError` names the file and nothing is published. What GDAL
  and libtiff print meanwhile is held back (:func:`gdal_write_guard`): a full disk is reported once, as
  "No space left on device" naming the target, at the first block that fails, and nothing follows it.
  Bands may carry descriptions (the class names of a probability raster) and an internal mask marking pixels
  whose bands are all 0 as nodata (a probability raster's nodata: a valid pixel's softmax x 255 never sums
  to 0).

Polygons are written by ``utils.vector_io``, the class names and styles beside a mask by ``utils.qgis_style``.
"""
from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from utils.atomic import WriteError, atomic_path, publish, temporary_path_beside
from utils.image_io import gdal_env, gdal_errors, import_rasterio
from utils.palette import full_palette, palette_image

COG_BLOCK = 256
"""Tile size of the written GeoTIFFs in pixels."""
DISK_FULL = os.strerror(errno.ENOSPC)
"""The OS reason a full disk is reported with ("No space left on device")."""


class _StderrCapture:
    """Redirects this process's file descriptor 2 (where GDAL and libtiff print) into memory until ``stop``."""

    def __init__(self):
        sys.stderr.flush()
        self.buffer = os.memfd_create("gdal-messages") if hasattr(os, "memfd_create") else tempfile.TemporaryFile()
        self.fd = self.buffer if isinstance(self.buffer, int) else self.buffer.fileno()
        try:
            self.saved = os.dup(2)
        except OSError:  # no stderr at all (a daemon): nothing to hold back
            self.saved = None
            return
        os.dup2(self.fd, 2)

    def stop(self) -> str:
        """Restore descriptor 2 and return what was printed meanwhile."""
        if self.saved is None:
            self._close_buffer()
            return ""
        os.dup2(self.saved, 2)
        os.close(self.saved)
        os.lseek(self.fd, 0, os.SEEK_SET)
        chunks = iter(lambda: os.read(self.fd, 1 << 16), b"")
        text = b"".join(chunks).decode(errors="replace")
        self._close_buffer()
        return text

    def _close_buffer(self) -> None:
        if isinstance(self.buffer, int):
            os.close(self.buffer)
        else:
            self.buffer.close()


def _disk_full(folder: Path, gdal_text: str, error: BaseException | None) -> bool:
    """Whether a GDAL write into ``folder`` failed, or printed errors, because the disk is full: GDAL's text
    or the exception says so, or the file system has no byte left for this user."""
    if DISK_FULL in gdal_text or (error is not None and (DISK_FULL in str(error)
                                                         or getattr(error, "errno", None) == errno.ENOSPC)):
        return True
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


@contextlib.contextmanager
def gdal_write_guard(path: Path) -> Iterator[None]:
    """Run GDAL calls that write ``path`` with their printed messages held back; fail with one line.

    GDAL and libtiff print write errors to the process's stderr (libtiff's "_tiffWriteProc: No space left
    on device" never reaches Python) and rasterio may not raise at all. Here their output is captured: when
    the block succeeds and printed nothing alarming, it is passed on to stderr unchanged; when the block
    raises, or GDAL reported a full disk, it is dropped and :class:`utils.atomic.WriteError` names ``path``
    and the reason: "No space left on device" for a full disk, else the exception's first line.

    Raises:
        WriteError: as above; other exceptions pass through (GDAL's output is then dropped).
    """
    capture = _StderrCapture()
    try:
        yield
    except (OSError, *gdal_errors()) as error:
        gdal_text = capture.stop()
        if _disk_full(path.parent, gdal_text, error):
            raise WriteError(path, DISK_FULL) from None
        if isinstance(error, WriteError):
            raise
        raise WriteError(path, str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                         ) from None
    except BaseException:
        capture.stop()
        raise
    gdal_text = capture.stop()
    if gdal_text and _disk_full(path.parent, gdal_text, None):
        raise WriteError(path, DISK_FULL)
    sys.stderr.write(gdal_text)


@contextlib.contextmanager
def _gdal_silenced() -> Iterator[None]:
    """Drop whatever GDAL prints in the block (cleaning up after a write that has already been reported)."""
    capture = _StderrCapture()
    try:
        yield
    finally:
        capture.stop()


class MaskSink(Protocol):
    """Receives finished blocks; ``close`` publishes the file atomically."""

    def write(self, top: int, left: int, block: np.ndarray) -> None:
        """Store a uint8 block, (h, w) or (C, h, w), at (top, left)."""

    def close(self) -> None:
        """Finish the file."""

    def abort(self) -> None:
        """Give up without leaving a partial file."""


class PaletteMaskSink:
    """Collects the class-id mask in memory, (H, W) uint8, and saves it as a palette PNG (values = class ids)."""

    def __init__(self, path: str | os.PathLike, height: int, width: int, palette: np.ndarray):
        self.path = Path(path)
        self.palette = palette
        self.class_ids = np.zeros((height, width), dtype=np.uint8)

    def write(self, top: int, left: int, block: np.ndarray) -> None:
        self.class_ids[top : top + block.shape[0], left : left + block.shape[1]] = block

    def close(self) -> None:
        with atomic_path(self.path) as temp_path:
            palette_image(self.class_ids, self.palette).save(temp_path, optimize=False)

    def abort(self) -> None:
        """Nothing was written yet."""
        self.class_ids = None


def _checksum(top: int, left: int, block: np.ndarray) -> int:
    """Position-weighted sum of a (C, h, w) uint8 block placed at (top, left): moved, lost or changed
    pixels change it (zeros too: each value counts as value + 1)."""
    rows = np.arange(top, top + block.shape[1], dtype=np.uint64)[:, None]
    columns = np.arange(left, left + block.shape[2], dtype=np.uint64)[None]
    weights = (rows * np.uint64(7919) + columns * np.uint64(104729)) % np.uint64(65521) + np.uint64(1)
    return int(((block.astype(np.uint64) + np.uint64(1)) * weights).sum())


class CogSink:
    """Streams a uint8 raster of ``count`` bands into a verified Cloud-Optimized GeoTIFF (see the module doc).

    Args:
        path: the target ``.tif``.
        height, width, count: raster size and band count.
        geo_profile: ``{"crs", "transform"}`` or ``{"gcps", "gcps_crs"}`` of the input, or None.
        nodata: the nodata value stored in the file (None: none).
        palette: (K, 3) uint8 class colours for a single-band class-id mask's colour table (None: no table).
        band_descriptions: one description per band (GDAL band descriptions, e.g. class names), or None.
        mask_all_zero: store an internal mask (GDAL's per-dataset mask) that marks pixels whose bands are all 0
            as nodata.
    """

    def __init__(self, path: str | os.PathLike, height: int, width: int, count: int = 1,
                 geo_profile: dict | None = None, nodata: int | None = None, palette: np.ndarray | None = None,
                 band_descriptions: list[str] | None = None, mask_all_zero: bool = False):
        rasterio = import_rasterio()
        self.path = Path(path)
        self.shape = (count, height, width)
        self.checksum = 0
        self.mask_all_zero = mask_all_zero
        self.stream_path = temporary_path_beside(self.path)
        geo = dict(geo_profile or {})
        gcps = geo.pop("gcps", None), geo.pop("gcps_crs", None)
        profile = {"driver": "GTiff", "height": height, "width": width, "count": count, "dtype": "uint8",
                   "compress": "deflate", "tiled": True, "blockxsize": COG_BLOCK, "blockysize": COG_BLOCK,
                   "nodata": nodata, **geo}
        # The stream, the COG copy and the read-back share GDAL's block cache: bounded (utils.image_io.gdal_env)
        # from here to close / abort, whatever the reader of the input does.
        self.gdal_env = gdal_env()
        self.gdal_env.__enter__()
        try:
            with gdal_write_guard(self.path):
                self.dataset = rasterio.open(self.stream_path, "w", **profile)
                if gcps[0]:
                    self.dataset.gcps = gcps
                if palette is not None:
                    table = full_palette(palette)
                    self.dataset.write_colormap(1, {index: (*map(int, table[index]), 255) for index in range(256)})
                for band, description in enumerate(band_descriptions or [], start=1):
                    self.dataset.set_band_description(band, str(description))
        except BaseException:  # a WriteError, or anything else: leave neither the GDAL environment nor a file
            self.abort()
            raise

    def write(self, top: int, left: int, block: np.ndarray) -> None:
        from rasterio.windows import Window

        bands = block if block.ndim == 3 else block[np.newaxis]
        with gdal_write_guard(self.path):
            window = Window(left, top, bands.shape[2], bands.shape[1])
            self.dataset.write(bands, window=window)
            if self.mask_all_zero:
                self.dataset.write_mask(np.where(bands.any(axis=0), 255, 0).astype(np.uint8), window=window)
        self.checksum += _checksum(top, left, bands)

    def close(self) -> None:
        """Copy the stream into the COG, read it back, publish it; on failure raise ``WriteError``."""
        from rasterio.shutil import copy as copy_raster

        with self._leaving_env(), gdal_write_guard(self.path):
            try:
                self.dataset.close()
                cog_path = temporary_path_beside(self.path)
                try:
                    copy_raster(self.stream_path, cog_path, driver="COG", compress="deflate", blocksize=COG_BLOCK,
                                resampling="nearest", overview_resampling="nearest")
                except BaseException:
                    self._remove(cog_path)
                    raise
            finally:
                self._remove(self.stream_path)
            publish(cog_path, self.path, verify=self._verify)

    def _verify(self, name: str) -> None:
        """Re-open ``name`` and read every pixel; raise if its size or checksum differ from what was written."""
        rasterio = import_rasterio()
        from rasterio.windows import Window

        count, height, width = self.shape
        checksum = 0
        with rasterio.open(name) as dataset:
            if (dataset.count, dataset.height, dataset.width) != self.shape:
                raise ValueError(f"size {dataset.count}x{dataset.height}x{dataset.width}, expected "
                                 f"{count}x{height}x{width}")
            # Tile by tile, not row strips: a strip's checksum temporaries (8-byte integers) grow with the width.
            for top in range(0, height, COG_BLOCK):
                for left in range(0, width, COG_BLOCK):
                    window = Window(left, top, min(COG_BLOCK, width - left), min(COG_BLOCK, height - top))
                    checksum += _checksum(top, left, dataset.read(window=window))
        if checksum != self.checksum:
            raise ValueError("its pixels differ from those written (is the disk full?)")

    def abort(self) -> None:
        """Drop the unfinished file."""
        with self._leaving_env():
            with _gdal_silenced(), contextlib.suppress(Exception):
                dataset = getattr(self, "dataset", None)
                if dataset is not None:
                    dataset.close()
            self._remove(self.stream_path)

    @contextlib.contextmanager
    def _leaving_env(self) -> Iterator[None]:
        """Run the block, then leave the GDAL environment entered in ``__init__`` (once, even if called again)."""
        try:
            yield
        finally:
            env, self.gdal_env = self.gdal_env, None
            if env is not None:
                env.__exit__(None, None, None)

    @staticmethod
    def _remove(name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)

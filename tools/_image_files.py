"""What the data tools read and write, as images: the adapter between the tools and ``utils.image_io`` (the one
reader) and ``utils.atomic`` (the one atomic writer).

The tools work in OpenCV's channel order: images are (H, W, 3) uint8 **BGR**, label-id masks (H, W) uint8.
What is the tools' own here: that channel order, the :class:`~tools._errors.InputError` a job raises for a bad
file (the job pool's on-error rule), reading masks as stored (8-bit, no transparent pixels), the pixel-count
check from the header before anything is decoded, and deciding from the header whether an output of an earlier
run is finished (a resume decodes no pixels).
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from tools._errors import InputError
from utils import image_io
from utils.atomic import atomic_write_bytes
from utils.image_io import MAX_IMAGE_PIXELS
from utils.source_policy import STRICT_SOURCES, SourcePolicy

_EXIF_ORIENTATION = 0x0112


def png_size(path: Path) -> tuple[int, int] | None:
    """(height, width) in pixels of a PNG from its header without decoding it; None if ``path`` is not a PNG."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(24)
    except OSError:
        return None
    if len(header) < 24 or header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", header[16:24])
    return height, width


def header_size(path: Path) -> tuple[int, int] | None:
    """(height, width) in pixels of an image from its header, without decoding the pixels; None if unknown.

    PNG headers are parsed directly; other formats (the ISPRS ``.tif`` tiles) through Pillow, whose
    ``Image.open`` reads only the header.  Pillow's decompression-bomb limit is lifted for this read
    only (no pixels are decoded; the process is single-threaded).  None for files Pillow cannot open
    and for images with an EXIF orientation other than 1, whose decoded size OpenCV may rotate.
    """
    size = png_size(path)
    if size is not None:
        return size
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as image:
            if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                return None
            width, height = image.size
    except (OSError, ValueError):
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return height, width


def check_pixel_count(path: Path) -> tuple[int, int] | None:
    """Refuse an image whose header claims more than MAX_IMAGE_PIXELS pixels, before decoding it.

    Returns:
        The header's (height, width) in pixels, as :func:`header_size` gives it (None if unknown).

    Raises:
        InputError: naming the file, the size in its header and the limit.
    """
    size = header_size(path)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise InputError(f"{path}: its header claims {size[1]} x {size[0]} = {size[0] * size[1]} pixels, more than "
                         f"the limit of {MAX_IMAGE_PIXELS} (a decompression bomb or a corrupt header); "
                         "re-download it, or run with --on-error skip")
    return size


def read_image_bgr(path: Path, bands: tuple[int, ...] | None = None, scaling: image_io.ImageScaling | None = None,
                   policy: SourcePolicy = STRICT_SOURCES) -> np.ndarray:
    """Read a source image for cutting as (H, W, 3) uint8 in **BGR** order, through ``utils.image_io.read_image``
    (which gives RGB); only the channel order and the error type are the tools' own.

    Args:
        path: the image file.
        bands: 1-based band choice, e.g. ``(4, 1, 2)`` (None: the reader's default 1, 2, 3).
        scaling: the rule for non-8-bit data (None: the reader's default).
        policy: what a GDAL input (a VRT) may make GDAL read.

    Raises:
        InputError: if the file is missing, truncated, corrupt or not an image, lacks a chosen band, is
            larger than MAX_IMAGE_PIXELS, or is refused by ``policy``.
    """
    check_pixel_count(path)
    try:
        return np.ascontiguousarray(image_io.read_image(path, bands, scaling, policy)[..., ::-1])
    except image_io.SourcePolicyError as error:
        raise InputError(str(error)) from None
    except image_io.ImageReadError as error:
        raise InputError(f"{error}; re-download or re-extract it, or run with --on-error skip") from None


def _read_mask_as_stored(path: Path) -> np.ndarray:
    """A mask's pixels as stored (``cv2.IMREAD_UNCHANGED``: any channel count and bit depth).

    Raises:
        InputError: if the file is missing, truncated, corrupt or not an image, or is larger than MAX_IMAGE_PIXELS.
    """
    check_pixel_count(path)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        state = ("cannot be decoded (truncated, corrupt or not an image)" if Path(path).exists()
                 else "does not exist")
        raise InputError(f"{path}: {state}; re-download or re-extract it, or run with --on-error skip")
    return image


def drop_opaque_alpha(path: Path, image: np.ndarray) -> tuple[np.ndarray, bool]:
    """A mask read unchanged, (H, W) or (H, W, C), without its alpha channel; whether it had one.

    Raises:
        InputError: the mask is not 8-bit, or its alpha channel makes pixels transparent (the tools would
            ignore that, so the labels would not be what the file shows).
    """
    if image.dtype != np.uint8:
        raise InputError(f"{path}: masks must be 8-bit, found {image.dtype}; save the labels as 8-bit images")
    if image.ndim != 3 or image.shape[2] != 4:
        return image, False
    transparent = int((image[..., 3] != 255).sum())
    if transparent:
        raise InputError(f"{path}: the mask's alpha channel makes {transparent} pixels transparent or translucent, "
                         "which the tools would ignore; save the mask without alpha (flattened), or run with "
                         "--on-error skip")
    return np.ascontiguousarray(image[..., :3]), True


def read_colour_mask(path: Path) -> tuple[np.ndarray, bool]:
    """Read an 8-bit colour mask as (H, W, 3) BGR, and whether an opaque alpha channel was dropped.

    Raises:
        InputError: unreadable, not 8-bit, or with transparent pixels (see :func:`drop_opaque_alpha`).
    """
    image, had_alpha = drop_opaque_alpha(path, _read_mask_as_stored(path))
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return image, had_alpha


def read_label_image(path: Path) -> tuple[np.ndarray, bool]:
    """Read a single-channel uint8 label-id image (H, W), and whether an opaque alpha channel was dropped;
    a 3-channel file with equal channels is accepted.

    Raises:
        InputError: if unreadable, not a gray 8-bit image, or with transparent pixels.
    """
    image, had_alpha = drop_opaque_alpha(path, _read_mask_as_stored(path))
    if image.ndim == 3:
        if not ((image == image[..., :1]).all()):
            raise InputError(f"{path}: expected a gray label-id image but its channels differ; "
                             "convert colour labels first (tools/convert_isprs_mask2graymask.py)")
        image = np.ascontiguousarray(image[..., 0])
    return image, had_alpha


def output_is_complete(path: Path, height: int | None, width: int | None) -> bool:
    """Whether a finished output of a previous run can be kept: it exists, its header gives (height, width)
    in pixels (None: any size) and, for a PNG, every chunk passes its CRC check (a truncated or zeroed file fails).

    Pixels are not decompressed, so a resume over many finished patches stays fast.
    """
    if not path.is_file():
        return False
    png = png_size(path)
    size = png if png is not None else header_size(path)
    if size is None or (height is not None and size != (height, width)):
        return False
    if png is None:
        return True
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception:  # Pillow raises many types (SyntaxError, OSError, struct.error) for a damaged PNG
        return False
    return True


def atomic_write_image(path: Path, image: np.ndarray) -> None:
    """Encode ``image``, (H, W) or (H, W, 3) uint8 in BGR order, in the format of ``path``'s suffix and write it
    atomically (``utils.atomic``).

    Raises:
        OSError: OpenCV cannot encode the array in that format.
        utils.atomic.WriteError: the file cannot be written completely.
    """
    ok, encoded = cv2.imencode(path.suffix, image)
    if not ok:
        raise OSError(f"OpenCV could not encode {path} (array {image.shape} {image.dtype})")
    atomic_write_bytes(path, encoded.tobytes())


def atomic_copy(source: Path, target: Path) -> None:
    """Copy a file's bytes to ``target`` atomically (``utils.atomic``).

    Raises:
        utils.atomic.WriteError: the file cannot be written completely.
    """
    atomic_write_bytes(target, Path(source).read_bytes())

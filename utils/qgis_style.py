"""Sidecar files that name the classes of a class-id raster for GIS software.

* :func:`qml_text` / :func:`write_qml`: a QGIS layer style (``.qml``, a paletted raster renderer: one
  ``paletteEntry`` per class with its colour and name). QGIS loads ``{name}.qml`` automatically when it
  opens ``{name}.tif`` or ``{name}.png``.
* :func:`pam_category_names` / :func:`write_category_names`: GDAL's category names for band 1, in the PAM
  sidecar ``{name}.tif.aux.xml`` that GDAL (QGIS, ArcGIS, ``gdalinfo``) reads with the GeoTIFF; GeoTIFF has no
  tag of its own for them and rasterio no call that sets them.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence

import numpy as np

from utils.atomic import atomic_write_bytes

QML_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"
QGIS_VERSION = "3.34.0"
"""The QGIS version the style declares (any QGIS 3 reads it)."""


def _hex(colour: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(value) for value in colour))


def qml_text(class_names: Sequence[str], palette: np.ndarray, nodata: int | None) -> str:
    """A QGIS style for band 1 of a class-id raster: paletted renderer, class ``i`` drawn in ``palette[i]`` and
    labelled ``class_names[i]``; ``nodata`` (if any) is transparent.

    Args:
        class_names: K names.
        palette: (K, 3) uint8 RGB.
        nodata: the raster's nodata value, or None.
    """
    qgis = ElementTree.Element("qgis", version=QGIS_VERSION, styleCategories="AllStyleCategories")
    pipe = ElementTree.SubElement(qgis, "pipe")
    renderer = ElementTree.SubElement(pipe, "rasterrenderer", type="paletted", band="1", opacity="1",
                                      alphaBand="-1", nodataColor="")
    transparency = ElementTree.SubElement(renderer, "rasterTransparency")
    if nodata is not None:
        pixels = ElementTree.SubElement(transparency, "singleValuePixelList")
        ElementTree.SubElement(pixels, "pixelListEntry", min=str(nodata), max=str(nodata), percentTransparent="100")
    entries = ElementTree.SubElement(renderer, "colorPalette")
    for class_id, name in enumerate(class_names):
        ElementTree.SubElement(entries, "paletteEntry", value=str(class_id), color=_hex(palette[class_id]),
                               alpha="255", label=str(name))
    ElementTree.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ElementTree.SubElement(qgis, "blendMode").text = "0"
    ElementTree.indent(qgis)
    return QML_DOCTYPE + "\n" + ElementTree.tostring(qgis, encoding="unicode") + "\n"


def style_path(mask_path: str | os.PathLike) -> str:
    """Where QGIS looks for a raster's default style: the raster's name with ``.qml`` instead of its suffix."""
    return os.path.splitext(os.fspath(mask_path))[0] + ".qml"


def write_qml(mask_path: str | os.PathLike, class_names: Sequence[str], palette: np.ndarray,
              nodata: int | None) -> str:
    """Write :func:`qml_text` beside ``mask_path`` (atomically) and return its path."""
    path = style_path(mask_path)
    atomic_write_bytes(path, qml_text(class_names, palette, nodata).encode("utf-8"))
    return path


def pam_category_names(class_names: Sequence[str]) -> str:
    """GDAL PAM XML giving band 1 the category names ``class_names`` (value ``i`` -> ``class_names[i]``)."""
    dataset = ElementTree.Element("PAMDataset")
    band = ElementTree.SubElement(dataset, "PAMRasterBand", band="1")
    categories = ElementTree.SubElement(band, "CategoryNames")
    for name in class_names:
        ElementTree.SubElement(categories, "Category").text = str(name)
    ElementTree.indent(dataset)
    return ElementTree.tostring(dataset, encoding="unicode") + "\n"


def aux_path(raster_path: str | os.PathLike) -> str:
    """GDAL's PAM sidecar of a raster: ``{raster}.aux.xml``."""
    return os.fspath(raster_path) + ".aux.xml"


def write_category_names(raster_path: str | os.PathLike, class_names: Sequence[str]) -> str:
    """Write the PAM sidecar naming band 1's categories (atomically) and return its path."""
    path = aux_path(raster_path)
    atomic_write_bytes(path, pam_category_names(class_names).encode("utf-8"))
    return path

"""Polygons of a class-id raster, streamed in row strips, written as a GeoPackage or RFC 7946 GeoJSON.

The mask is read in strips of full-width rows (``STRIP_PIXELS`` pixels, 8 to 256 rows); each strip is polygonised by
``rasterio.features.shapes`` (4-connectivity) in pixel coordinates. A polygon that touches no strip
border is final at once. Polygons cut at a seam between two strips are merged by class: their outlines
are directed edges with the inside on the left (outer rings counter-clockwise, holes clockwise), so the
edges two pieces share along the seam run in opposite directions; both are dropped and the remaining
edges are linked into rings again (at a vertex where the outline touches itself, the left turn is taken,
which gives a shell and a hole touching at a point, as the simple-features rules want). Memory therefore
holds one strip plus the polygons still open at the current seam, never the whole mask.

Outputs (each published atomically by ``utils.atomic``; nothing appears under the name unless complete):

* GeoPackage (``.gpkg``, written by pyogrio): layer ``polygons`` in the raster's CRS, fields ``class_id``,
  ``class_name`` and ``area`` (in the CRS's units squared: m² when projected in metres);
* GeoJSON (``.geojson``): RFC 7946, coordinates reprojected to WGS 84 longitude/latitude, no ``crs``
  member; a raster without a CRS keeps pixel coordinates (column, row) instead.

Rings follow the right-hand rule of RFC 7946 in the output coordinates (outer counter-clockwise).
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from utils.atomic import WriteError, atomic_path, publish, temporary_path_beside
from utils.image_io import gdal_cache_max, import_rasterio

STRIP_PIXELS = 2**19
"""Pixels of the mask polygonised at a time (rows: this over the width, 8 to 256): GDAL's polygoniser holds
every polygon of a strip in an in-memory layer, so a strip's memory grows with its area."""
VECTOR_FORMATS = ("gpkg", "geojson")
"""Values of predict.py's ``--polygons``: the GeoPackage or the GeoJSON file."""
GPKG_LAYER = "polygons"
GPKG_BATCH = 2048
"""Features written to the GeoPackage per call."""
WGS84 = "EPSG:4326"

Point = tuple[int, int]
Edge = tuple[Point, Point]


class ReprojectionError(ValueError):
    """The raster's CRS has no transformation to WGS 84 (an engineering or local CRS)."""


def signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a ring (n, 2), closed or not: positive when counter-clockwise (x right, y up)."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _ring_edges(ring: list, seams: tuple[int, ...], outer: bool) -> list[Edge]:
    """Directed edges of a ring (inside on the left: outer rings counter-clockwise, holes clockwise), in
    integer pixel corners; edges lying on a seam row are cut into unit steps so that both sides match."""
    points = np.rint(np.asarray(ring, dtype=np.float64)).astype(np.int64)
    if (signed_area(points) > 0) != outer:
        points = points[::-1]
    edges = []
    for (x0, y0), (x1, y1) in zip(points[:-1].tolist(), points[1:].tolist()):
        if y0 == y1 and y0 in seams and abs(x1 - x0) > 1:
            step = 1 if x1 > x0 else -1
            edges.extend(((x, y0), (x + step, y0)) for x in range(x0, x1, step))
        elif (x0, y0) != (x1, y1):
            edges.append(((x0, y0), (x1, y1)))
    return edges


def _drop_collinear(points: list[Point]) -> np.ndarray:
    """A closed ring (n + 1, 2) from its corner sequence without repeated or collinear points."""
    kept = []
    count = len(points)
    for index, (x, y) in enumerate(points):
        (px, py), (nx, ny) = points[index - 1], points[(index + 1) % count]
        if (px == x == nx) or (py == y == ny):
            continue
        kept.append((x, y))
    kept.append(kept[0])
    return np.asarray(kept, dtype=np.float64)


def _take(outgoing: dict[Point, list[Point]], at: Point, index: int) -> Point:
    """Remove and return the ``index``-th outgoing end point of vertex ``at``."""
    ends = outgoing[at]
    end = ends.pop(index)
    if not ends:
        del outgoing[at]
    return end


def _link_rings(edges: list[Edge]) -> list[np.ndarray]:
    """Closed rings (n + 1, 2) from directed edges that form closed loops. At a vertex with several outgoing
    edges (an outline touching itself) the leftmost turn is followed, so rings that touch stay apart; rings
    start at vertices with one outgoing edge where there is one."""
    outgoing: dict[Point, list[Point]] = {}
    for start, end in edges:
        outgoing.setdefault(start, []).append(end)
    starts = sorted(outgoing, key=lambda point: len(outgoing[point]))
    rings = []
    for start in starts:
        while start in outgoing:
            points = [start]
            previous, current = start, _take(outgoing, start, 0)
            while current != start:
                incoming = (current[0] - previous[0], current[1] - previous[1])
                candidates = outgoing[current]
                choice = max(range(len(candidates)), key=lambda i: _turn(incoming, current, candidates[i]))
                points.append(current)
                previous, current = current, _take(outgoing, current, choice)
            rings.append(_drop_collinear(points))
    return rings


def _turn(incoming: tuple[int, int], at: Point, to: Point) -> float:
    """How far left the step ``at -> to`` turns after moving along ``incoming`` (cross product; y up)."""
    dx, dy = to[0] - at[0], to[1] - at[1]
    return float(np.sign(incoming[0] * dy - incoming[1] * dx))


def _contains(ring: np.ndarray, x: float, y: float) -> bool:
    """Even-odd test of a point that lies on no edge or vertex line of ``ring`` (n + 1, 2)."""
    x0, y0, x1, y1 = ring[:-1, 0], ring[:-1, 1], ring[1:, 0], ring[1:, 1]
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return bool(np.count_nonzero(crosses & (at > x)) % 2)


def _polygons_from_edges(edges: list[Edge]) -> list[list[np.ndarray]]:
    """Polygons ``[shell, *holes]`` from the edges of one merged region (outer rings have positive area)."""
    rings = _link_rings(edges)
    shells = [ring for ring in rings if signed_area(ring) > 0]
    holes = [ring for ring in rings if signed_area(ring) < 0]
    if len(shells) == 1:
        return [[shells[0], *holes]]
    polygons = [[shell] for shell in shells]
    for hole in holes:  # a point just right of the hole's first edge (inside the hole), off every corner line
        (x0, y0), (x1, y1) = hole[0], hole[1]
        dx, dy = np.sign(x1 - x0), np.sign(y1 - y0)
        probe = (x0 + 0.5 * dx + 0.25 * dy, y0 + 0.5 * dy - 0.25 * dx)
        owners = [index for index, shell in enumerate(shells) if _contains(shell, *probe)]
        owner = min(owners, key=lambda index: signed_area(shells[index])) if owners else 0
        polygons[owner].append(hole)
    return polygons


@dataclass
class _Region:
    """Pieces of one class merged so far, still open at the current seam."""

    class_id: int
    edges: list[Edge] = field(default_factory=list)


def _find(parents: list[int], index: int) -> int:
    while parents[index] != index:
        parents[index] = parents[parents[index]]
        index = parents[index]
    return index


def strip_rows_for(width: int) -> int:
    """Rows per strip for a mask ``width`` pixels wide: ``STRIP_PIXELS / width``, from 8 to 256."""
    return max(8, min(256, STRIP_PIXELS // max(width, 1)))


def iter_class_polygons(dataset, nodata: int | None, strip_rows: int | None = None
                        ) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Polygons of each class of band 1 of an open rasterio dataset, read ``strip_rows`` rows at a time.

    Args:
        dataset: an open rasterio dataset of class ids (uint8).
        nodata: pixels with this value get no polygon (None: every pixel counts).
        strip_rows: rows per strip (None: :func:`strip_rows_for` the width); memory holds a strip and its
            polygons plus the polygons open at the seam.

    Yields:
        ``(class_id, [shell, *holes])``: rings (n + 1, 2) float64 closed, in pixel corner coordinates (x = column,
        y = row), shell with positive shoelace area.
    """
    from rasterio.features import shapes
    from rasterio.transform import Affine
    from rasterio.windows import Window

    height, width = dataset.height, dataset.width
    strip_rows = strip_rows or strip_rows_for(width)
    open_regions: dict[Edge, tuple[int, _Region]] = {}  # bottom-seam edge -> (class id, region)
    for top in range(0, height, strip_rows):
        bottom = min(top + strip_rows, height)
        strip = dataset.read(1, window=Window(0, top, width, bottom - top))
        valid = strip != nodata if nodata is not None else None
        seams = tuple(row for row, inner in ((top, top > 0), (bottom, bottom < height)) if inner)
        regions: list[_Region] = []
        previous: dict[int, int] = {}  # id() of an open region from above -> its node
        pieces_touching_bottom: set[int] = set()
        parents: list[int] = []
        links: list[tuple[int, int]] = []
        for geometry, value in shapes(strip, mask=valid, connectivity=4, transform=Affine(1, 0, 0, 0, 1, top)):
            class_id = int(value)
            outer = geometry["coordinates"][0]
            rows = {point[1] for point in outer}
            on_top, on_bottom = top > 0 and top in rows, bottom < height and bottom in rows
            if not (on_top or on_bottom):
                yield class_id, _oriented([np.asarray(ring, dtype=np.float64) for ring in geometry["coordinates"]])
                continue
            node = len(regions)
            edges = []
            for index, ring in enumerate(geometry["coordinates"]):
                edges.extend(_ring_edges(ring, seams, outer=index == 0))
            regions.append(_Region(class_id, edges))
            parents.append(node)
            if on_bottom:
                pieces_touching_bottom.add(node)
            if on_top:
                for start, end in edges:
                    if start[1] == end[1] == top:
                        match = open_regions.get((end, start))
                        if match is not None and match[0] == class_id:
                            region = match[1]
                            if id(region) not in previous:
                                previous[id(region)] = len(regions)
                                regions.append(region)
                                parents.append(len(parents))
                            links.append((node, previous[id(region)]))
        # regions open above that meet nothing below of their class are finished
        matched = {id(region) for region in regions}
        for region in {id(region): region for _, region in open_regions.values()}.values():
            if id(region) not in matched:
                for polygon in _polygons_from_edges(region.edges):
                    yield region.class_id, polygon
        for first, second in links:
            parents[_find(parents, first)] = _find(parents, second)
        groups: dict[int, list[int]] = {}
        for node in range(len(regions)):
            groups.setdefault(_find(parents, node), []).append(node)
        open_regions = {}
        for members in groups.values():
            edges = [edge for node in members for edge in regions[node].edges]
            seam_edges = {edge for edge in edges if edge[0][1] == edge[1][1] == top}
            merged = _Region(regions[members[0]].class_id,
                             [edge for edge in edges if edge not in seam_edges or (edge[1], edge[0]) not in seam_edges])
            if any(node in pieces_touching_bottom for node in members):
                for edge in merged.edges:
                    if edge[0][1] == edge[1][1] == bottom:
                        open_regions[edge] = (merged.class_id, merged)
            else:
                for polygon in _polygons_from_edges(merged.edges):
                    yield merged.class_id, polygon


@dataclass(frozen=True)
class VectorOptions:
    """How polygons are written.

    Attributes:
        simplify: Douglas-Peucker tolerance in the CRS's units (0: none; neighbouring polygons may then no
            longer share their borders exactly).
        min_area: polygons smaller than this (CRS units squared) are left out (0: none).
    """

    simplify: float = 0.0
    min_area: float = 0.0


def _simplify_ring(ring: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker simplification of a closed ring (n + 1, 2); keeps at least 4 points (a triangle)."""
    if tolerance <= 0 or len(ring) <= 4:
        return ring
    keep = np.zeros(len(ring), dtype=bool)
    keep[[0, len(ring) // 2, len(ring) - 1]] = True
    stack = [(0, len(ring) // 2), (len(ring) // 2, len(ring) - 1)]
    while stack:
        first, last = stack.pop()
        if last - first < 2:
            continue
        start, end = ring[first], ring[last]
        segment = end - start
        points = ring[first + 1 : last] - start
        length = float(np.hypot(*segment))
        distances = (np.abs(segment[0] * points[:, 1] - segment[1] * points[:, 0]) / length if length
                     else np.hypot(points[:, 0], points[:, 1]))
        farthest = int(np.argmax(distances))
        if distances[farthest] > tolerance:
            middle = first + 1 + farthest
            keep[middle] = True
            stack += [(first, middle), (middle, last)]
    return ring[keep]


def _to_map(ring: np.ndarray, transform) -> np.ndarray:
    """Pixel-corner ring (n, 2) to map coordinates through an affine transform."""
    x, y = ring[:, 0], ring[:, 1]
    return np.stack([transform.a * x + transform.b * y + transform.c, transform.d * x + transform.e * y + transform.f],
                    axis=1)


def _oriented(rings: list[np.ndarray]) -> list[np.ndarray]:
    """Right-hand rule: the shell counter-clockwise, holes clockwise (in the output's own axes)."""
    return [ring if (signed_area(ring) > 0) == (index == 0) else ring[::-1] for index, ring in enumerate(rings)]


def _polygon_wkb(rings: list[np.ndarray]) -> bytes:
    """ISO WKB of a 2D polygon (little endian)."""
    parts = [struct.pack("<BII", 1, 3, len(rings))]
    for ring in rings:
        parts.append(struct.pack("<I", len(ring)))
        parts.append(np.ascontiguousarray(ring, dtype="<f8").tobytes())
    return b"".join(parts)


READ_CACHE_BYTES = 16 * 2**20
"""GDAL's block cache while a mask is read strip by strip (its default, 5% of the RAM, would keep the
whole decoded mask: 61 MiB for 8000²)."""


@contextlib.contextmanager
def open_mask(path: str | os.PathLike) -> Iterator:
    """Open a class-id mask with rasterio for one pass of strip reads: GDAL's block cache is held to
    ``READ_CACHE_BYTES`` meanwhile (a ``GDAL_CACHEMAX`` variable wins, as everywhere), and a mask without
    georeference (a PNG) is read in pixel coordinates without rasterio's NotGeoreferencedWarning."""
    rasterio = import_rasterio()
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings(), rasterio.Env(GDAL_CACHEMAX=gdal_cache_max(READ_CACHE_BYTES)):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as dataset:
            yield dataset


def _features(dataset, class_names: list[str], nodata: int | None, options: VectorOptions
              ) -> Iterator[tuple[int, str, float, list[np.ndarray]]]:
    """(class id, class name, area in CRS units², rings in map coordinates) of every polygon kept."""
    transform = dataset.transform
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    for class_id, rings in iter_class_polygons(dataset, nodata):
        area = (signed_area(rings[0]) + sum(signed_area(hole) for hole in rings[1:])) * pixel_area
        if area < options.min_area:
            continue
        mapped = [_simplify_ring(_to_map(ring, transform), options.simplify) for ring in rings]
        name = class_names[class_id] if class_id < len(class_names) else str(class_id)
        yield class_id, name, abs(area), mapped


def check_reprojectable(crs, path: str | os.PathLike) -> None:
    """Raise :class:`ReprojectionError` naming ``path`` when ``crs`` cannot be transformed to WGS 84."""
    from rasterio.warp import transform

    if crs is None:
        return
    try:
        transform(crs, WGS84, [0.0], [0.0])
    except Exception as error:  # rasterio raises CPLE_* errors of its own for "no operation found"
        raise ReprojectionError(
            f"{path}: its CRS ({crs.to_string() or 'a local CRS'}) cannot be reprojected to WGS 84 for RFC 7946 "
            "GeoJSON; use --polygons gpkg, which keeps the source CRS") from error


def _remove_sqlite_files(name: str) -> None:
    """Remove a GeoPackage file and the journal files SQLite may leave beside it."""
    for path in (name, name + "-journal", name + "-wal", name + "-shm"):
        if os.path.exists(path):
            os.remove(path)


def write_geopackage(mask_path: str | os.PathLike, out_path: str | os.PathLike, class_names: list[str],
                     nodata: int | None, options: VectorOptions = VectorOptions()) -> int:
    """Write the polygons of a class-id raster to a GeoPackage (layer ``polygons``, the raster's CRS); returns
    the feature count. Features are written in batches of ``GPKG_BATCH`` while the mask is read strip by strip,
    into a temporary file that is published once it reads back with every feature.

    Raises:
        WriteError: the file could not be written (nothing is left under ``out_path``).
    """
    import pyogrio.raw

    out_path = Path(out_path)
    temp_name = temporary_path_beside(out_path)
    os.remove(temp_name)  # GDAL's GeoPackage driver creates the file itself
    fields = ["class_id", "class_name", "area"]
    batch: list[tuple] = []
    written = 0

    def flush(crs: str | None) -> None:
        ids, names, areas, geometries = zip(*batch) if batch else ((), (), (), ())
        try:
            with warnings.catch_warnings():  # a mask without CRS is written without one, as documented
                warnings.filterwarnings("ignore", message="'crs' was not provided")
                pyogrio.raw.write(
                    temp_name, np.array(geometries, dtype=object),
                    [np.array(ids, dtype=np.int32), np.array(names, dtype=object), np.array(areas, dtype=np.float64)],
                    fields, layer=GPKG_LAYER, driver="GPKG", geometry_type="Polygon", crs=crs, append=written > 0)
        except Exception as error:  # pyogrio's DataSourceError & co.: one line naming the target
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise WriteError(out_path, reason) from None
        batch.clear()

    try:
        with open_mask(mask_path) as dataset:
            crs = dataset.crs.to_wkt() if dataset.crs else None
            for class_id, name, area, rings in _features(dataset, class_names, nodata, options):
                batch.append((class_id, name, area, _polygon_wkb(_oriented(rings))))
                if len(batch) == GPKG_BATCH:
                    count = len(batch)
                    flush(crs)
                    written += count
            count = len(batch)
            if batch or written == 0:
                flush(crs)
            written += count
        for suffix in ("-journal", "-wal", "-shm"):
            if os.path.exists(temp_name + suffix):
                os.remove(temp_name + suffix)
        publish(temp_name, out_path, verify=lambda name: _verify_gpkg(name, written))
    except BaseException:
        _remove_sqlite_files(temp_name)
        raise
    return written


def _verify_gpkg(name: str, count: int) -> None:
    """Raise unless the GeoPackage ``name`` reads back with ``count`` features."""
    import pyogrio

    found = pyogrio.read_info(name, layer=GPKG_LAYER)["features"]
    if found != count:
        raise ValueError(f"{found} of {count} features read back")


def write_geojson(mask_path: str | os.PathLike, out_path: str | os.PathLike, class_names: list[str],
                  nodata: int | None, options: VectorOptions = VectorOptions()) -> int:
    """Write the polygons of a class-id raster as an RFC 7946 GeoJSON FeatureCollection, streamed feature by
    feature; returns the feature count. Coordinates are WGS 84 longitude/latitude (7 decimals), or pixel
    coordinates when the raster has no CRS. ``simplify`` and ``min_area`` apply in the raster's CRS.

    Raises:
        ReprojectionError: the raster's CRS cannot be transformed to WGS 84.
        WriteError: the file could not be written (nothing is left under ``out_path``).
    """
    from rasterio.warp import transform as reproject

    count = 0
    with open_mask(mask_path) as dataset, atomic_path(out_path) as temp_name, \
            open(temp_name, "w", encoding="utf-8") as handle:
        check_reprojectable(dataset.crs, mask_path)
        handle.write('{"type": "FeatureCollection", "features": [')
        for class_id, name, area, rings in _features(dataset, class_names, nodata, options):
            if dataset.crs is not None:
                rings = [np.stack(reproject(dataset.crs, WGS84, ring[:, 0].tolist(), ring[:, 1].tolist()), axis=1)
                         for ring in rings]
                rings = [np.round(ring, 7) for ring in rings]
            feature = {"type": "Feature", "properties": {"class_id": class_id, "class_name": name, "area": area},
                       "geometry": {"type": "Polygon", "coordinates": [ring.tolist() for ring in _oriented(rings)]}}
            handle.write(("" if count == 0 else ",") + "\n" + json.dumps(feature))
            count += 1
        handle.write("\n]}\n")
    return count


def write_polygons(mask_path: str | os.PathLike, out_path: str | os.PathLike, class_names: list[str],
                   nodata: int | None, options: VectorOptions = VectorOptions()) -> int:
    """Polygons of a class-id raster in the format its suffix names (``.gpkg`` or ``.geojson``); returns the
    feature count. See :func:`write_geopackage` and :func:`write_geojson`."""
    writer = write_geopackage if Path(out_path).suffix == ".gpkg" else write_geojson
    return writer(mask_path, out_path, class_names, nodata, options)

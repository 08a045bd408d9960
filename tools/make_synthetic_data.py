#!/usr/bin/env python3
"""Generate small synthetic raw datasets in the exact on-disk layout of the official downloads.

The scenes look like aerial images and can be learnt: every class is drawn as shapes with its own
colour and texture (buildings with shadows, roads with cars, tree clusters, courts with lines, ships
on a river, planes, storage tanks, ...), and the ground truth is written in the official colour code.
Output is deterministic for a given ``--seed`` (each image depends only on the seed, the dataset and
its index).  See ``tools/raw_layout.py`` for the layouts written:

* iSAID: ``train|val/images/P0000.png`` + ``P0000_instance_color_RGB.png`` + ``P0000_instance_id_RGB.png``
* Potsdam: ``2_Ortho_RGB/top_potsdam_2_10_RGB.tif`` + ``5_Labels_all/top_potsdam_2_10_label.tif`` +
  ``5_Labels_all_noBoundary/top_potsdam_2_10_label_noBoundary.tif``
* Vaihingen: IR-R-G ``.../top/top_mosaic_09cm_area1.tif`` + full and eroded labels.
* LoveDA: ``Train|Val/{Rural,Urban}/images_png/0.png`` + ``masks_png/0.png`` (values 0 = no-data, 1..7 =
  classes; every other image has a no-data strip along its bottom, black in the image).

Example::

    python tools/make_synthetic_data.py all --out data/raw_synthetic --num-images 8 --size 512
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.isaid import ISAIDDataset  # noqa: E402
from datasets.isprs import PotsdamDataset  # noqa: E402
from datasets.loveda import LoveDADataset  # noqa: E402
from tools._image_files import atomic_write_image  # noqa: E402
from tools.raw_layout import (  # noqa: E402
    ISPRS_FOLDERS,
    LOVEDA_DOMAIN_FOLDERS,
    LOVEDA_IMAGE_FOLDER,
    LOVEDA_MASK_FOLDER,
    LOVEDA_SPLIT_FOLDERS,
    SPLIT_TILES,
    isprs_file_names,
)
from utils.atomic import exit_on_write_error  # noqa: E402

DATASETS = ("isaid", "potsdam", "vaihingen", "loveda")
"""Raw layouts this tool writes (the order also seeds each dataset's images: append new ones at the end)."""
ERODED_BORDER_RADIUS = 3
"""Half-width in pixels of the class borders blanked in the eroded ("noBoundary") ISPRS labels."""


@dataclass(frozen=True)
class Look:
    """Appearance of a class: mean RGB colour, near-infrared level (0-255), texture strengths (0-255)."""

    rgb: tuple[int, int, int]
    nir: int
    blotch: float
    grain: float


# Appearance of every ISPRS class, by label id.
ISPRS_LOOKS = (
    Look((128, 126, 122), 70, 10, 6),    # impervious surfaces: grey asphalt
    Look((168, 92, 78), 90, 14, 8),      # building: red-brown roofs
    Look((132, 160, 88), 190, 16, 7),    # low vegetation: light green grass
    Look((46, 82, 40), 215, 22, 16),     # tree: dark green, coarse canopy
    Look((40, 60, 190), 60, 4, 4),       # car: saturated paint
    Look((150, 120, 60), 110, 25, 14),   # clutter: ochre heaps
)

# Appearance of every iSAID class, by label id (background gets a terrain mosaic instead).
ISAID_LOOKS = (
    Look((118, 112, 96), 0, 12, 8),      # background (terrain mosaic, see _isaid_background)
    Look((236, 236, 230), 0, 6, 5),      # ship: white hulls
    Look((206, 208, 212), 0, 8, 4),      # store tank: light roofs
    Look((176, 122, 78), 0, 12, 6),      # baseball diamond: clay
    Look((56, 128, 118), 0, 4, 3),       # tennis court: teal
    Look((196, 132, 70), 0, 5, 3),       # basketball court: orange wood
    Look((168, 62, 52), 0, 6, 4),        # ground track field: red track
    Look((150, 150, 142), 0, 6, 4),      # bridge: concrete
    Look((222, 210, 110), 0, 6, 5),      # large vehicle: yellow trucks
    Look((30, 34, 200), 0, 10, 8),       # small vehicle: saturated paint
    Look((90, 100, 60), 0, 5, 4),        # helicopter: olive
    Look((40, 190, 230), 0, 6, 3),       # swimming pool: cyan water
    Look((96, 150, 70), 0, 8, 5),        # roundabout: green island
    Look((60, 150, 60), 0, 10, 5),       # soccer ball field: bright grass
    Look((245, 245, 250), 0, 4, 3),      # plane: white
    Look((112, 104, 98), 0, 8, 7),       # harbor: dark piers
)


# Appearance of every LoveDA class, by label id (raw mask value - 1).
LOVEDA_LOOKS = (
    Look((142, 134, 120), 0, 14, 8),     # background: mixed ground
    Look((186, 176, 168), 0, 10, 6),     # building: light roofs
    Look((104, 104, 108), 0, 6, 5),      # road: asphalt
    Look((40, 72, 104), 0, 6, 3),        # water
    Look((176, 154, 118), 0, 18, 10),    # barren: bare soil
    Look((44, 84, 46), 0, 22, 14),       # forest: dark canopy
    Look((126, 156, 74), 0, 16, 6),      # agriculture: fields
)


def _noise_field(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Smooth random field of shape (H, W), float32 roughly in [-1, 1], varying over ``cell`` pixels."""
    coarse = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _rotated_box(center: tuple[float, float], size: tuple[float, float], angle: float) -> np.ndarray:
    """Integer corner points (4, 2) of a rectangle of (width, height) rotated by ``angle`` degrees."""
    return np.round(cv2.boxPoints((center, size, angle))).astype(np.int32)


class _Canvas:
    """Label map (H, W) uint8 plus an instance map (H, W) int32 that shapes are drawn into."""

    def __init__(self, height: int, width: int, fill: int) -> None:
        self.labels = np.full((height, width), fill, np.uint8)
        self.instances = np.zeros((height, width), np.int32)
        self.next_instance = 1

    @property
    def height(self) -> int:
        """Canvas height in pixels (rows of ``labels``)."""
        return self.labels.shape[0]

    @property
    def width(self) -> int:
        """Canvas width in pixels (columns of ``labels``)."""
        return self.labels.shape[1]

    def polygon(self, points: np.ndarray, label: int, new_instance: bool = True) -> None:
        """Fill the polygon of (N, 2) integer (x, y) points with ``label``.

        With ``new_instance=False`` the shape extends the previously drawn instance (a plane's wings).
        """
        self.next_instance += int(new_instance)
        cv2.fillPoly(self.labels, [points], int(label))
        cv2.fillPoly(self.instances, [points], self.next_instance - 1)

    def circle(self, center: tuple[int, int], radius: int, label: int, new_instance: bool = True) -> None:
        """Fill a disc of ``radius`` pixels with ``label`` (see ``polygon`` for ``new_instance``)."""
        self.next_instance += int(new_instance)
        cv2.circle(self.labels, center, radius, int(label), -1)
        cv2.circle(self.instances, center, radius, self.next_instance - 1, -1)


def _render(rng: np.random.Generator, labels: np.ndarray, looks: tuple[Look, ...],
            base: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Texture a label map: returns (RGB float32 (H, W, 3), NIR float32 (H, W)), values ~0..255.

    ``base`` (H, W, 3), when given, replaces the flat colour of class 0 (used for iSAID terrain).
    """
    height, width = labels.shape
    rgb_table = np.array([look.rgb for look in looks], np.float32)
    blotch = np.array([look.blotch for look in looks], np.float32)[labels]
    grain = np.array([look.grain for look in looks], np.float32)[labels]
    image = rgb_table[labels]
    if base is not None:
        image = np.where((labels == 0)[..., None], base, image)
    blotches = _noise_field(rng, height, width, max(8, min(height, width) // 24))
    grains = rng.standard_normal((height, width)).astype(np.float32)
    shade = blotch * blotches + grain * grains
    image += shade[..., None]
    nir = np.array([look.nir for look in looks], np.float32)[labels] + shade
    return image, nir


def _cast_shadows(image: np.ndarray, casters: np.ndarray, offset: int) -> None:
    """Darken, in place, the pixels of ``image`` (H, W, 3) a few pixels below-right of ``casters`` (H, W) bool."""
    shifted = np.zeros_like(casters)
    shifted[offset:, offset:] = casters[:-offset, :-offset]
    shadow = shifted & ~casters
    image[shadow] *= 0.55


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and clip a float image to uint8, with a slight blur as from a real camera."""
    blurred = cv2.GaussianBlur(image, (3, 3), 0.6)
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)


def _draw_isprs_scene(rng: np.random.Generator, height: int, width: int) -> _Canvas:
    """Urban scene in ISPRS ids: grass, a road grid with cars, buildings, tree clumps and clutter."""
    canvas = _Canvas(height, width, fill=2)
    scale = min(height, width) / 512.0
    area_factor = height * width / 512.0**2
    road_width = max(6, int(26 * scale))
    roads: list[tuple[str, int]] = []
    for axis, length in (("h", height), ("v", width)):
        for _ in range(int(rng.integers(1, 3))):
            roads.append((axis, int(rng.integers(road_width, length - road_width))))
    for _ in range(int(rng.integers(1, 3) * area_factor) + 1):
        lot_w, lot_h = rng.uniform(40, 110, size=2) * scale
        center = rng.uniform(0, 1, size=2) * (width, height)
        canvas.polygon(_rotated_box(tuple(center), (lot_w, lot_h), 0.0), 0)
    for axis, offset in roads:
        if axis == "h":
            points = np.array([[0, offset - road_width // 2], [width - 1, offset - road_width // 2],
                               [width - 1, offset + road_width // 2], [0, offset + road_width // 2]])
        else:
            points = np.array([[offset - road_width // 2, 0], [offset + road_width // 2, 0],
                               [offset + road_width // 2, height - 1], [offset - road_width // 2, height - 1]])
        canvas.polygon(points.astype(np.int32), 0)
    for _ in range(int(rng.integers(6, 10) * area_factor) + 1):
        size = rng.uniform(36, 90, size=2) * scale
        center = rng.uniform(0.05, 0.95, size=2) * (width, height)
        canvas.polygon(_rotated_box(tuple(center), tuple(size), float(rng.choice([0.0, 90.0, rng.uniform(0, 90)]))), 1)
    for _ in range(int(rng.integers(5, 9) * area_factor) + 1):
        cluster_center = rng.uniform(0, 1, size=2) * (width, height)
        for _ in range(int(rng.integers(2, 7))):
            center = cluster_center + rng.normal(0, 18 * scale, size=2)
            canvas.circle((int(center[0]), int(center[1])), max(3, int(rng.uniform(7, 16) * scale)), 3)
    for _ in range(int(rng.integers(2, 5) * area_factor) + 1):
        center = rng.uniform(0, 1, size=2) * (width, height)
        radius = rng.uniform(6, 18) * scale
        angles = np.sort(rng.uniform(0, 2 * math.pi, size=7))
        radii = radius * rng.uniform(0.5, 1.2, size=7)
        points = np.stack([center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], axis=1)
        canvas.polygon(np.round(points).astype(np.int32), 5)
    car_size = (max(4.0, 15 * scale), max(2.0, 7 * scale))
    for axis, offset in roads:
        length = width if axis == "h" else height
        for along in rng.uniform(0, length, size=int(rng.integers(3, 8) * max(1.0, length / 512))):
            lane = offset + rng.choice([-1, 1]) * road_width * 0.25
            center = (float(along), float(lane)) if axis == "h" else (float(lane), float(along))
            angle = 0.0 if axis == "h" else 90.0
            canvas.polygon(_rotated_box(center, car_size, angle), 4)
    return canvas


def _isprs_image(rng: np.random.Generator, canvas: _Canvas, infrared: bool) -> np.ndarray:
    """Render an ISPRS scene: RGB (H, W, 3) uint8, or IR-R-G when ``infrared`` (Vaihingen)."""
    image, nir = _render(rng, canvas.labels, ISPRS_LOOKS)
    car_colours = rng.uniform(30, 230, size=(canvas.next_instance, 3)).astype(np.float32)
    is_car = canvas.labels == 4
    image[is_car] = 0.3 * image[is_car] + 0.7 * car_colours[canvas.instances[is_car]]
    _cast_shadows(image, canvas.labels == 1, max(2, canvas.height // 100))
    _cast_shadows(image, canvas.labels == 3, max(1, canvas.height // 200))
    if infrared:
        image = np.stack([nir, image[..., 0], image[..., 1]], axis=-1)
    return _to_uint8(image)


def _class_borders(labels: np.ndarray, radius: int) -> np.ndarray:
    """Bool (H, W): pixels within ``radius`` of a border between two classes (blanked in noBoundary GT)."""
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(labels, kernel) != cv2.erode(labels, kernel)


def _draw_isaid_scene(rng: np.random.Generator, height: int, width: int) -> tuple[_Canvas, np.ndarray]:
    """Sparse-object scene in iSAID ids; returns the canvas and the terrain RGB (H, W, 3) for background."""
    canvas = _Canvas(height, width, fill=0)
    scale = min(height, width) / 512.0
    area_factor = height * width / 512.0**2
    terrain = _terrain(rng, height, width)

    river_y = int(rng.uniform(0.15, 0.85) * height)
    river_half = max(8, int(rng.uniform(28, 45) * scale))
    water = np.zeros((height, width), bool)
    water[max(0, river_y - river_half):river_y + river_half] = True
    terrain[water] = (38, 70, 96)
    bridge_x = float(rng.uniform(0.2, 0.8) * width)
    canvas.polygon(_rotated_box((bridge_x, river_y), (max(6, 20 * scale), 2.6 * river_half), 0.0), 7)
    for _ in range(int(rng.integers(2, 4) * max(1.0, width / 512))):
        pier_x = float(rng.uniform(0, width))
        bank = river_y - river_half if rng.random() < 0.5 else river_y + river_half
        canvas.polygon(_rotated_box((pier_x, bank), (max(6, rng.uniform(20, 50) * scale), max(6, 24 * scale)), 0.0), 15)
    for _ in range(int(rng.integers(3, 7) * max(1.0, width / 512))):
        center = (float(rng.uniform(0, width)), float(river_y + rng.uniform(-0.6, 0.6) * river_half))
        canvas.polygon(_rotated_box(center, (max(5, rng.uniform(16, 34) * scale), max(3, 8 * scale)),
                                    float(rng.uniform(-20, 20))), 1)

    road_x = int(rng.uniform(0.1, 0.9) * width)
    road_half = max(4, int(10 * scale))
    terrain[:, max(0, road_x - road_half):road_x + road_half] = (96, 96, 92)
    for along in rng.uniform(0, height, size=int(rng.integers(3, 7) * max(1.0, height / 512))):
        if abs(along - river_y) < river_half + 5:
            continue
        large = rng.random() < 0.3
        size = (max(3, 8 * scale), max(5, (30 if large else 13) * scale))
        lane = road_x + rng.choice([-1, 1]) * road_half * 0.5
        canvas.polygon(_rotated_box((float(lane), float(along)), size, 0.0), 8 if large else 9)

    land = ~water
    placers = (
        (2, _draw_tank_cluster), (3, _draw_diamond), (4, _draw_court), (5, _draw_court),
        (6, _draw_track_field), (10, _draw_helicopter), (11, _draw_court), (12, _draw_roundabout),
        (13, _draw_court), (14, _draw_plane),
    )
    for label, draw in placers:
        for _ in range(int(rng.poisson(0.9 * area_factor))):
            for _attempt in range(10):
                center = (float(rng.uniform(0.08, 0.92) * width), float(rng.uniform(0.08, 0.92) * height))
                if land[int(center[1]), int(center[0])]:
                    draw(rng, canvas, center, scale, label)
                    break
    return canvas, terrain


def _terrain(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Background terrain RGB float32 (H, W, 3): a mosaic of fields and bare soil."""
    fields = _noise_field(rng, height, width, max(16, min(height, width) // 6))
    palette = np.array([(128, 118, 94), (108, 124, 82), (146, 136, 108), (96, 108, 78)], np.float32)
    bins = np.digitize(fields, [-0.6, 0.0, 0.6])
    return palette[bins]


# Object painters for iSAID: each draws one object of ``label`` around ``center`` (x, y) pixels,
# with sizes multiplied by ``scale`` (image side / 512).

def _draw_tank_cluster(rng, canvas: _Canvas, center, scale: float, label: int) -> None:
    """A 1-2 x 1-3 grid of round storage tanks."""
    radius = max(3, int(rng.uniform(8, 16) * scale))
    for row in range(int(rng.integers(1, 3))):
        for col in range(int(rng.integers(1, 4))):
            canvas.circle((int(center[0] + col * 2.4 * radius), int(center[1] + row * 2.4 * radius)), radius, label)


def _draw_diamond(rng, canvas: _Canvas, center, scale: float, label: int) -> None:
    """A quarter-disc baseball diamond."""
    radius = max(8, rng.uniform(30, 50) * scale)
    start = float(rng.uniform(0, 360))
    apex = (int(center[0]), int(center[1]))
    arc = cv2.ellipse2Poly(apex, (int(radius), int(radius)), 0, int(start), int(start + 90), 10)
    canvas.polygon(np.vstack([apex, arc]).astype(np.int32), label)


def _draw_court(rng, canvas: _Canvas, center, scale: float, label: int) -> None:
    """A rotated rectangle: tennis / basketball court, pool or soccer field by ``label``."""
    sizes = {4: (24, 12), 5: (28, 15), 11: (22, 12), 13: (90, 58)}
    court_w, court_h = sizes[label]
    size = (max(6, court_w * scale), max(4, court_h * scale))
    canvas.polygon(_rotated_box(center, size, float(rng.uniform(0, 180))), label)


def _draw_track_field(rng, canvas: _Canvas, center, scale: float, label: int) -> None:
    """A stadium-shaped ground track field."""
    half_len, radius = max(10, 40 * scale), max(6, 28 * scale)
    angle = float(rng.uniform(0, 180))
    box = cv2.boxPoints((center, (2 * half_len, 2 * radius), angle))
    direction = np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle))]) * half_len
    ends = [np.asarray(center) + direction, np.asarray(center) - direction]
    canvas.polygon(np.round(box).astype(np.int32), label)
    for end in ends:
        canvas.circle((int(end[0]), int(end[1])), int(radius), label, new_instance=False)


def _draw_helicopter(rng, canvas: _Canvas, center, scale: float, label: int) -> None:
    """A fuselage with a crossing rotor."""
    length = max(6, 16 * scale)
    angle = float(rng.uniform(0, 180))
    body = _rotated_box(center, (length, length * 0.3), angle)
    rotor = _rotated_box(center, (length * 0.2, length * 1.1), angle)
    canvas.polygon(body, label)
    canvas.polygon(rotor, label, new_instance=False)


def _draw_roundabout(rng, canvas: _Canvas, center, scale: float, label: int) -> None:
    """A disc roundabout."""
    canvas.circle((int(center[0]), int(center[1])), max(6, int(rng.uniform(22, 34) * scale)), label)


def _draw_plane(rng, canvas: _Canvas, center, scale: float, label: int) -> None:
    """A fuselage with wings and a tail."""
    length = max(10, rng.uniform(30, 50) * scale)
    angle = float(rng.uniform(0, 180))
    fuselage = _rotated_box(center, (length, length * 0.14), angle)
    canvas.polygon(fuselage, label)
    for part in (_rotated_box(center, (length * 0.16, length * 0.9), angle),
                 _rotated_box(tuple(np.asarray(center) - 0.42 * length * np.array(
                     [math.cos(math.radians(angle)), math.sin(math.radians(angle))])),
                     (length * 0.08, length * 0.35), angle)):
        canvas.polygon(part, label, new_instance=False)


def _isaid_image(rng: np.random.Generator, canvas: _Canvas, terrain: np.ndarray) -> np.ndarray:
    """Render an iSAID scene as RGB (H, W, 3) uint8, with court lines and object shadows."""
    image, _ = _render(rng, canvas.labels, ISAID_LOOKS, base=terrain)
    car_colours = rng.uniform(30, 230, size=(canvas.next_instance, 3)).astype(np.float32)
    is_car = canvas.labels == 9
    image[is_car] = 0.4 * image[is_car] + 0.6 * car_colours[canvas.instances[is_car]]
    lines = np.zeros(canvas.labels.shape, np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    for label in (4, 5, 13, 6):
        region = (canvas.labels == label).astype(np.uint8)
        lines |= region - cv2.erode(region, kernel, iterations=2)
    image[lines.astype(bool)] = (235, 235, 235)
    _cast_shadows(image, np.isin(canvas.labels, (2, 8, 14, 10)), max(1, canvas.height // 160))
    return _to_uint8(image)


def _colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Label ids (H, W) -> RGB colour mask (H, W, 3) uint8 with a dataset class's (K, 3) palette."""
    return np.asarray(palette, np.uint8)[labels]


def _instance_colors(instances: np.ndarray) -> np.ndarray:
    """Instance ids (H, W) -> RGB (H, W, 3) uint8 encoding the id in base 256 (like iSAID's id masks)."""
    return np.stack([instances % 256, (instances // 256) % 256, instances // 65536], axis=-1).astype(np.uint8)


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB (H, W, 3) uint8 array atomically; OpenCV stores BGR, so channels are reversed first."""
    atomic_write_image(path, np.ascontiguousarray(rgb[..., ::-1]))


def _image_rng(seed: int, dataset: str, index: int) -> np.random.Generator:
    """Random generator of one image: depends only on the seed, the dataset and the image index."""
    return np.random.default_rng([seed, DATASETS.index(dataset), index])


def _split_counts(num_images: int) -> tuple[int, int]:
    """(train, held-out) image counts: a quarter of the images (at least one) are held out."""
    if num_images < 2:
        raise ValueError(f"num_images (--num-images) must be >= 2 (one train and one held-out image), "
                         f"got {num_images}")
    held_out = max(1, num_images // 4)
    return num_images - held_out, held_out


def _image_size(rng: np.random.Generator, size: int, low: float, high: float, fixed_size: bool) -> tuple[int, int]:
    """(height, width): ``size`` x ``size`` when ``fixed_size``, else sides uniform in [low, high] x size."""
    if fixed_size:
        return size, size
    height, width = (int(v) for v in rng.integers(int(size * low), int(size * high) + 1, size=2))
    return height, width


def _make_isaid(out_dir: Path, seed: int, num_images: int, size: int, fixed_size: bool) -> None:
    num_train, num_val = _split_counts(num_images)
    for index in range(num_images):
        split = "train" if index < num_train else "val"
        rng = _image_rng(seed, "isaid", index)
        height, width = _image_size(rng, size, 0.6, 1.2, fixed_size)
        canvas, terrain = _draw_isaid_scene(rng, height, width)
        folder = out_dir / split / "images"
        stem = f"P{index:04d}"
        _write_rgb(folder / f"{stem}.png", _isaid_image(rng, canvas, terrain))
        _write_rgb(folder / f"{stem}{ISAIDDataset.mask_suffix}.png", _colorize(canvas.labels, ISAIDDataset.palette))
        _write_rgb(folder / f"{stem}_instance_id_RGB.png", _instance_colors(canvas.instances))


def _make_isprs(dataset: str, out_dir: Path, seed: int, num_images: int, size: int, fixed_size: bool) -> None:
    num_train, num_test = _split_counts(num_images)
    tiles = SPLIT_TILES[dataset]
    if num_train > len(tiles["train"]) or num_test > len(tiles["test"]):
        raise ValueError(f"{dataset} has {len(tiles['train'])} train and {len(tiles['test'])} test tiles; "
                         f"num_images={num_images} needs {num_train} and {num_test}")
    chosen = list(tiles["train"][:num_train]) + list(tiles["test"][:num_test])
    folders = ISPRS_FOLDERS[dataset]
    eroded_colour = np.asarray(PotsdamDataset.eroded_border_color, np.uint8)
    for index, tile in enumerate(chosen):
        rng = _image_rng(seed, dataset, index)
        height, width = _image_size(rng, size, 0.8, 1.2, fixed_size or dataset == "potsdam")
        canvas = _draw_isprs_scene(rng, height, width)
        names = isprs_file_names(dataset, tile)
        image = _isprs_image(rng, canvas, infrared=dataset == "vaihingen")
        colours = _colorize(canvas.labels, PotsdamDataset.palette)
        eroded = colours.copy()
        eroded[_class_borders(canvas.labels, ERODED_BORDER_RADIUS)] = eroded_colour
        _write_rgb(out_dir / folders["image"] / names["image"], image)
        _write_rgb(out_dir / folders["label"] / names["label"], colours)
        _write_rgb(out_dir / folders["eroded"] / names["eroded"], eroded)


def _draw_loveda_scene(rng: np.random.Generator, size: int, urban: bool) -> np.ndarray:
    """Land-cover scene in LoveDA label ids (H, W) uint8: urban blocks and roads, or rural fields and forest."""
    canvas = _Canvas(size, size, fill=0 if urban else 6)
    scale = size / 512.0
    for _ in range(int(rng.integers(2, 4))):
        center = tuple(rng.uniform(0, 1, size=2) * size)
        canvas.polygon(_rotated_box(center, tuple(rng.uniform(60, 160, size=2) * scale), float(rng.uniform(0, 90))),
                       5 if not urban else 4)
    if rng.random() < 0.7:
        top = int(rng.uniform(0.1, 0.8) * size)
        canvas.polygon(np.array([[0, top], [size - 1, top], [size - 1, top + int(30 * scale)],
                                 [0, top + int(30 * scale)]], np.int32), 3)
    road = max(4, int(14 * scale))
    for _ in range(int(rng.integers(1, 4 if urban else 2))):
        offset = int(rng.uniform(0.1, 0.9) * size)
        canvas.polygon(np.array([[offset - road, 0], [offset + road, 0], [offset + road, size - 1],
                                 [offset - road, size - 1]], np.int32), 2)
    for _ in range(int(rng.integers(8, 14) if urban else rng.integers(1, 4))):
        center = tuple(rng.uniform(0.05, 0.95, size=2) * size)
        canvas.polygon(_rotated_box(center, tuple(rng.uniform(20, 60, size=2) * scale), float(rng.choice([0.0, 90.0]))),
                       1)
    return canvas.labels


def _make_loveda(out_dir: Path, seed: int, num_images: int, size: int) -> None:
    num_train, _ = _split_counts(num_images)
    domains = list(LOVEDA_DOMAIN_FOLDERS.values())
    for index in range(num_images):
        split = LOVEDA_SPLIT_FOLDERS["train" if index < num_train else "val"]
        domain = domains[(index if index < num_train else index - num_train) % len(domains)]
        rng = _image_rng(seed, "loveda", index)
        labels = _draw_loveda_scene(rng, size, urban=domain == LOVEDA_DOMAIN_FOLDERS["urban"])
        image, _ = _render(rng, labels, LOVEDA_LOOKS)
        raw_mask = labels + 1
        if index % 2 == 0:
            no_data = slice(size - max(1, size // 16), size)
            raw_mask[no_data] = LoveDADataset.raw_no_data
            image[no_data] = 0
        folder = out_dir / split / domain
        _write_rgb(folder / LOVEDA_IMAGE_FOLDER / f"{index}.png", _to_uint8(image))
        (folder / LOVEDA_MASK_FOLDER).mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(folder / LOVEDA_MASK_FOLDER / f"{index}.png"), raw_mask):
            raise OSError(f"could not write {folder / LOVEDA_MASK_FOLDER / f'{index}.png'}")


def make_synthetic(dataset: str, out_dir: str | Path, seed: int = 0, num_images: int = 4,
                   size: int = 512, fixed_size: bool = False) -> Path:
    """Write a small synthetic raw dataset in the official download layout.

    Args:
        dataset: ``"isaid"``, ``"potsdam"`` or ``"vaihingen"``.
        out_dir: raw root to write into (created); the layout is the one documented in
            ``tools/raw_layout.py``, i.e. what ``tools/prepare_dataset.py --raw`` expects.
        seed: random seed; the same seed, dataset, index and size give byte-identical files.
        num_images: images to write (>= 2); a quarter (at least one) go to iSAID ``val`` or to the
            ISPRS test tiles, the rest to train.  ISPRS tiles take the first ids of the official split.
        size: nominal side in pixels: iSAID images have random sides in [0.6, 1.2] x size, Potsdam
            tiles are size x size, Vaihingen tiles have sides in [0.8, 1.2] x size, LoveDA images are
            size x size (1024 in the real data); within each LoveDA split they alternate between Urban and Rural.
        fixed_size: make every image exactly size x size (e.g. for benchmarks).

    Returns:
        ``Path(out_dir)``.
    """
    dataset = dataset.lower()
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    if size < 64:
        raise ValueError(f"size (--size) must be >= 64 pixels, got {size}")
    out_path = Path(out_dir)
    if dataset == "isaid":
        _make_isaid(out_path, seed, num_images, size, fixed_size)
    elif dataset == "loveda":
        _make_loveda(out_path, seed, num_images, size)
    else:
        _make_isprs(dataset, out_path, seed, num_images, size, fixed_size)
    return out_path


def main(argv: list[str] | None = None) -> None:
    """Command line: write one synthetic raw dataset (or all three) into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=str.lower, choices=(*DATASETS, "all"),
                        help="which raw layout to write; 'all' writes each into OUT/<dataset>")
    parser.add_argument("--out", required=True, help="raw root folder to write into (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same files")
    parser.add_argument("--num-images", type=int, default=4,
                        help="images (ISPRS: tiles) per dataset, >= 2; a quarter are held out (default 4)")
    parser.add_argument("--size", type=int, default=512,
                        help="nominal image side in pixels (default 512); see make_synthetic() for the ranges")
    args = parser.parse_args(argv)
    names = DATASETS if args.dataset == "all" else (args.dataset,)
    for name in names:
        target = Path(args.out) / name if args.dataset == "all" else Path(args.out)
        try:
            with exit_on_write_error():
                make_synthetic(name, target, seed=args.seed, num_images=args.num_images, size=args.size)
        except ValueError as error:
            parser.error(str(error))
        print(f"wrote synthetic {name} raw data to {target}")


if __name__ == "__main__":
    main()

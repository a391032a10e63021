"""Where to look: each galaxy's focus box, the part of the image that decides its class, as [x1, y1, x2, y2]
fractions of the image from its top-left corner (the zoom tool's box).

- A surrogate file knows it (`focus_box`, written by `surrogate.synthesize`: the bar, the inner arms, the bulge,
  both nuclei, ...).
- Any other source (the real Galaxy10 file, a Hub copy) does not: the box is the galaxy's light, measured on its
  full-size image (`light_box`): the light-weighted centre and spread of what stands above the sky, near the centre
  of the cutout, where Galaxy10 puts the galaxy.
"""

from __future__ import annotations

import math

import h5py
import numpy as np

from .splits import Manifest, load_split, source_path

FOCUS_KEY = "focus_box"
LIGHT_SIGMAS = 2.0  # the light box spans the centre +- this many light-weighted standard deviations
LIGHT_RADIUS = 0.35  # light is measured within this fraction of the side from the image centre (off the field)


def pixel_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixels (left, top, right, bottom) a normalised box covers on a width x height source: every pixel the box
    touches (floor of the start, ceiling of the end), at least one."""
    x1, y1, x2, y2 = box
    left, top = math.floor(x1 * width + 1e-9), math.floor(y1 * height + 1e-9)
    right, bottom = math.ceil(x2 * width - 1e-9), math.ceil(y2 * height - 1e-9)
    return left, top, max(right, left + 1), max(bottom, top + 1)


def light_box(image) -> tuple[float, float, float, float]:
    """The galaxy's light as a box: the light-weighted centre +- `LIGHT_SIGMAS` standard deviations per axis, of the
    pixels above the sky (the median) within `LIGHT_RADIUS` of the image centre."""
    gray = np.asarray(image.convert("L"), np.float64)
    h, w = gray.shape
    weight = np.clip(gray - np.median(gray), 0.0, None)
    y, x = np.mgrid[0:h, 0:w]
    weight[np.hypot((x + 0.5) / w - 0.5, (y + 0.5) / h - 0.5) > LIGHT_RADIUS] = 0.0
    total = weight.sum()
    if total <= 0:  # a blank image: the central half
        return (0.25, 0.25, 0.75, 0.75)
    box = []
    for axis, side in ((x, w), (y, h)):
        mean = (weight * (axis + 0.5)).sum() / total
        std = np.sqrt((weight * (axis + 0.5 - mean) ** 2).sum() / total)
        box.append(((mean - LIGHT_SIGMAS * std) / side, (mean + LIGHT_SIGMAS * std) / side))
    (x1, x2), (y1, y2) = box
    return tuple(float(np.clip(v, 0.0, 1.0)) for v in (x1, y1, x2, y2))


def focus_boxes(prepared_dir, split: str, positions, *, manifest: Manifest) -> tuple[np.ndarray, str]:
    """(boxes [n, 4], where they came from: `surrogate` or `light`) of the galaxies at `positions` of `split`."""
    positions = np.asarray(positions, np.int64)
    path = source_path(manifest, prepared_dir)
    if path.is_file() and h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            if FOCUS_KEY in f:
                rows = np.asarray(manifest.rows[split], np.int64)[positions]
                order = np.argsort(rows)  # h5py reads increasing indices
                boxes = np.empty((len(rows), 4), np.float32)
                boxes[order] = f[FOCUS_KEY][rows[order]]
                return boxes, "surrogate"
    view = load_split(prepared_dir, split, manifest=manifest)
    return np.asarray([light_box(view[int(p)]["image"]) for p in positions], np.float32), "light"

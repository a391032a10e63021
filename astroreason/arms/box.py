"""The zoom tool's box: `bbox_2d = [x1, y1, x2, y2]` in normalised [0, 1] coordinates of the galaxy's source, checked
before anything is cropped. A bad box is a `BoxError` whose message the tool hands back to the model as its result."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass


class BoxError(ValueError):
    """A box the tool refuses; its message is what the model reads."""


@dataclass(frozen=True)
class BoxLimits:
    """What a box may be.

    Args:
        min_side: Smallest side of a box, as a fraction of the source's side (e.g. one merged patch of the first
            view: the family's pixel multiple over `image_size`).
        max_aspect: Largest ratio of a box's long side to its short side.
    """

    min_side: float
    max_aspect: float

    def __post_init__(self):
        if not 0 < self.min_side <= 1:
            raise ValueError(f"min_side: expected a fraction in (0, 1], got {self.min_side!r}")
        if not self.max_aspect >= 1:
            raise ValueError(f"max_aspect: expected a ratio of at least 1, got {self.max_aspect!r}")


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BoxError(f"bbox_2d must hold 4 numbers [x1, y1, x2, y2], got {value!r} among them")
    return float(value)


def parse_box(bbox_2d, limits: BoxLimits) -> tuple[float, float, float, float]:
    """The box (x1, y1, x2, y2) as floats, or `BoxError` naming what is wrong: not 4 numbers (a JSON string of them
    is read too: models often quote their arguments), outside [0, 1], inverted, smaller than `limits.min_side`,
    or longer than `limits.max_aspect` times its width."""
    if isinstance(bbox_2d, str):
        try:
            bbox_2d = json.loads(bbox_2d)
        except json.JSONDecodeError:
            raise BoxError(f"bbox_2d must be a list of 4 numbers [x1, y1, x2, y2], got the text {bbox_2d!r}") from None
    if not isinstance(bbox_2d, (list, tuple)) or len(bbox_2d) != 4:
        raise BoxError(f"bbox_2d must be a list of 4 numbers [x1, y1, x2, y2], got {bbox_2d!r}")
    x1, y1, x2, y2 = (_number(v) for v in bbox_2d)
    if min(x1, y1, x2, y2) < 0 or max(x1, y1, x2, y2) > 1:
        raise BoxError(f"bbox_2d {[x1, y1, x2, y2]} is outside the image: coordinates are fractions in [0, 1]")
    if x2 <= x1 or y2 <= y1:
        raise BoxError(f"bbox_2d {[x1, y1, x2, y2]} is inverted or empty: it needs x1 < x2 and y1 < y2")
    width, height = x2 - x1, y2 - y1
    if min(width, height) < limits.min_side - 1e-9:
        raise BoxError(
            f"bbox_2d {[x1, y1, x2, y2]} is too small: each side must be at least {limits.min_side:.4g} of the image"
        )
    if max(width, height) > limits.max_aspect * min(width, height) + 1e-9:
        raise BoxError(
            f"bbox_2d {[x1, y1, x2, y2]} is too elongated: its long side may be at most {limits.max_aspect:g} "
            "times its short side"
        )
    return x1, y1, x2, y2


def fit_box(box, limits: BoxLimits, *, decimals: int = 2) -> list[float]:
    """The smallest box around `box` that `parse_box` accepts, rounded as a model would write it: each side grown
    about the box's centre to `limits.min_side` and to within `limits.max_aspect` of the other, shifted inside
    [0, 1] (a box is never larger than the image). A warm start's target call (`zoom.trajectories`)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    step = 10.0**-decimals
    width, height = max(x2 - x1, limits.min_side), max(y2 - y1, limits.min_side)
    width, height = max(width, height / limits.max_aspect), max(height, width / limits.max_aspect)
    edges = []
    for centre, side in (((x1 + x2) / 2, width), ((y1 + y2) / 2, height)):
        side = min(1.0, math.ceil(side / step - 1e-9) * step)  # rounded up: never below the limits once rounded
        low = min(max(centre - side / 2, 0.0), 1.0 - side)
        low = math.floor(low / step + 1e-9) * step
        edges.append((round(low, decimals), round(min(low + side, 1.0), decimals)))
    (x1, x2), (y1, y2) = edges
    return [x1, y1, x2, y2]

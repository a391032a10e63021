"""Thinking with zoom: a tool the model calls to look again at part of the galaxy before it answers.

`zoom(bbox_2d)` takes a box [x1, y1, x2, y2] in normalised [0, 1] coordinates and returns that part of the galaxy
cropped from its full-resolution source, in the arm's modality: an image at the arm's `image_size` (`ImageZoom`), or
the crop re-encoded by the arm's codec and rendered as text (`TokenZoom`). Each arm builds its own tool
(`Arm.zoom_tool`, in `astroreason.arms`, with the box rules and the tools' shared base; re-exported here). A bad box
gets an error message the model reads, never an exception (`arms.box`). This package holds the episode around the
tool: `ZoomEnvironment` is one rollout's tool and record for TRL's `environment_factory`; `with_zoom_columns` makes
an arm's dataset carry what it needs; the chat templates, the tool-turn lint and the warm start's trajectories. See
docs/zoom.md.
"""

from ..arms import DEFAULT_MAX_ASPECT, BoxError, BoxLimits, ImageZoom, TokenZoom, ZoomCall, ZoomTool, parse_box
from ..data.focus import pixel_box
from .environment import (
    POSITION_COLUMN,
    SPLIT_COLUMN,
    ZoomEnvironment,
    environment_factory,
    with_zoom_columns,
    zoom_schema,
)

__all__ = [
    "DEFAULT_MAX_ASPECT",
    "POSITION_COLUMN",
    "SPLIT_COLUMN",
    "BoxError",
    "BoxLimits",
    "ImageZoom",
    "TokenZoom",
    "ZoomCall",
    "ZoomEnvironment",
    "ZoomTool",
    "environment_factory",
    "parse_box",
    "pixel_box",
    "with_zoom_columns",
    "zoom_schema",
]

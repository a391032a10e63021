"""The zoom tool every arm builds (`Arm.zoom_tool`): a normalised box -> a crop of the galaxy's full-resolution
source, in the arm's modality. `ZoomTool` is what the tools share; each arm's module holds its own:

- Image arm (`arms.image.ImageZoom`): the source is the split view's own image (stored at the source's size:
  Galaxy10's 256 px, the surrogate's native render), not the resized first view. The crop is resized (bicubic, as
  the arm resizes) to the arm's `image_size` x `image_size` and returned as an image block, which TRL adds to the
  sample's images.
- Token arm (`arms.tokens.TokenZoom`): the source is the codec's input for that galaxy as the token cache read it,
  over the field the first view showed; the crop is resized to the codec's input size, encoded by the arm's codec
  (`tokens.crops.CodecInputs`) and returned as its codes in the arm's rendering, as text.

A box is refused (`box.parse_box`) with a message the model reads; the tool never raises. The image arm's refusal also
returns the first view again (the whole source at the first view's size: nothing the model has not seen), so that
every image-arm call adds an image: TRL 1.16's tool loop fails on a round whose calls returned no image in a batch
whose prompts hold images (its list-valued prompt fields reach `split_pixel_values_by_grid`). Every call returns a
`ZoomCall`: the box as given, whether it was valid, the error, the source pixels cropped, the tokens the result
costs the model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from ..data.focus import pixel_box
from ..data.splits import load_manifest
from .base import Arm, ArmSettings
from .box import BoxError, BoxLimits, parse_box

DEFAULT_MAX_ASPECT = 4.0


@dataclass
class ZoomCall:
    """One call of the tool.

    Args:
        box: The box as the model gave it.
        valid: Whether the box was accepted and a crop returned.
        error: The message returned instead of a crop (None when valid).
        pixels: The source pixels cropped, (left, top, right, bottom), when valid.
        tokens: Tokens the returned content costs in the next turn (visual tokens of the crop, or the text's tokens;
            an error's text included); None when the tool has no token counter.
    """

    box: object
    valid: bool
    error: str | None = None
    pixels: tuple[int, int, int, int] | None = None
    tokens: int | None = None
    result: object = field(default=None, repr=False)

    def to_json(self) -> dict:
        return {"box": self.box, "valid": self.valid, "error": self.error, "pixels": self.pixels, "tokens": self.tokens}


class ZoomTool(ABC):
    """The zoom of one arm.

    Args:
        settings: The arm's settings (its data, image size, codec, rendering).
        min_side: Smallest box side, a fraction of the source's side; default `default_min_side`.
        max_aspect: Largest long-to-short side ratio of a box.
        pixel_multiple: The model family's pixels per visual token (the image arm's default `min_side`).
        count_tokens: `count_tokens(content)` -> tokens a result costs the model (optional).
        manifest: The prepared directory's manifest, when the caller (an arm) has loaded it already.
    """

    arm: ClassVar[type[Arm]]  # the arm whose galaxies it crops

    def __init__(
        self,
        settings: ArmSettings,
        *,
        min_side: float | None = None,
        max_aspect: float = DEFAULT_MAX_ASPECT,
        pixel_multiple: int | None = None,
        count_tokens: Callable | None = None,
        manifest=None,
    ):
        self.settings, self.count_tokens = settings, count_tokens
        self.manifest = load_manifest(settings.data_dir) if manifest is None else manifest
        self.setup()
        self.limits = BoxLimits(min_side or self.default_min_side(pixel_multiple), max_aspect)

    @abstractmethod
    def setup(self) -> None:
        """What the arm's tool opens once (views, codec)."""

    @abstractmethod
    def default_min_side(self, pixel_multiple: int | None) -> float:
        """The smallest box by default: one unit of what the first view resolves."""

    @abstractmethod
    def source(self, split: str, position: int):
        """The full-resolution source of the galaxy at `position` in `split`."""

    @abstractmethod
    def crop(self, source, pixels: tuple[int, int, int, int]):
        """The crop of `source` at `pixels`, in the arm's representation (an image, or codes [H', W'])."""

    @abstractmethod
    def content(self, crop):
        """What the model reads: TRL's tool result (image blocks, or text)."""

    @abstractmethod
    def source_size(self, source) -> tuple[int, int]:
        """(width, height) of a source in pixels."""

    def __call__(self, split: str, position: int, bbox_2d) -> ZoomCall:
        """Zoom into `bbox_2d` of the galaxy at `position` of `split`; never raises for a bad box."""
        try:
            box = parse_box(bbox_2d, self.limits)
        except BoxError as err:
            message = f"error: {err}"
            result = self.refusal(message, split, int(position))
            return ZoomCall(bbox_2d, False, error=message, tokens=self._tokens(result), result=result)
        source = self.source(split, int(position))
        pixels = pixel_box(box, *self.source_size(source))
        content = self.content(self.crop(source, pixels))
        return ZoomCall(bbox_2d, True, pixels=pixels, tokens=self._tokens(content), result=content)

    def refusal(self, message: str, split: str, position: int):
        """What a refused call returns: the error text."""
        return message

    def _tokens(self, content) -> int | None:
        return None if self.count_tokens is None else int(self.count_tokens(content))

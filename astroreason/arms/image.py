"""The image arm: the galaxy as pixels, resized to `image_size` (TRL inserts the image block into the prompt); its
zoom tool crops the split view's own full-resolution image (`ImageZoom`)."""

from __future__ import annotations

from itertools import islice

import numpy as np

from ..data.splits import load_split
from ..errors import UserError
from ..models import check_image_size
from ..prompts import IMAGE_TEMPLATE, IMAGE_ZOOM_INSTRUCTION, image_template
from ..tokens.crops import BICUBIC
from .base import Arm, ArmSettings
from .zoom_tool import ZoomTool


def resize_image(image, size: int):
    """An RGB `size` x `size` copy (bicubic), as every consumer of the image arm sees it."""
    image = image.convert("RGB")
    return image if image.size == (size, size) else image.resize((size, size), resample=3)  # PIL.Image.BICUBIC


class PixelArm(Arm):
    """What every arm whose rows carry an `image_size` square image shares (the image arm, the spectrum plot arm):
    the model's processor takes it as pixels, so the family's grid decides the valid sides and its visual tokens."""

    representation_fields = ()
    carries_image = True

    @classmethod
    def check_settings(cls, settings: ArmSettings) -> None:
        if settings.token_crop is not None:
            raise UserError(f"token_crop: only the tokens arm has a codec to encode a crop (modality {cls.modality})")

    @classmethod
    def check_model(cls, settings: ArmSettings, model: str | None) -> None:
        """The image size against the family's grid (a model whose family is unknown is left to its processor)."""
        if model:
            check_image_size(model, settings.image_size)

    @classmethod
    def visual_tokens(cls, family, processor, settings: ArmSettings) -> int:
        return family.visual_tokens(processor, settings.image_size)

    @classmethod
    def answer_settings(cls, settings: ArmSettings) -> dict:
        return {"image_size": settings.image_size}


class ImageArm(PixelArm):
    modality = "image"
    columns = ("label", "image")
    template_for = staticmethod(image_template)
    default_template = IMAGE_TEMPLATE
    zoom_instruction = IMAGE_ZOOM_INSTRUCTION
    blank_input = "a blank image"
    zoom_needs_family = True
    marker = "o"

    @classmethod
    def zoom_tool(cls, settings: ArmSettings, **kwargs) -> ImageZoom:
        return ImageZoom(settings, **kwargs)

    @classmethod
    def control_zoom_tool(cls, settings: ArmSettings, **kwargs) -> BlankImageZoom:
        return BlankImageZoom(settings, **kwargs)

    def load_view(self):
        return load_split(self.settings.data_dir, self.split, manifest=self.manifest)

    def split_positions(self) -> np.ndarray:
        return np.arange(len(self.manifest.rows[self.split]))

    def galaxy(self, example) -> dict:
        return {"image": resize_image(example["image"], self.settings.image_size)}

    def without_galaxy(self, seed: int = 0) -> list[dict]:
        """A black image in place of each galaxy (the prompts are unchanged)."""
        from PIL import Image

        size = self.settings.image_size
        black = Image.new("RGB", (size, size), (0, 0, 0))
        labels = self.view.select_columns(["label"])
        return [
            {"label": example["label"], "prompt": self.prompt(example, i), "image": black}
            for i, example in enumerate(islice(labels, self.n))
        ]


class ImageZoom(ZoomTool):
    """The image arm's zoom: a crop of the split view's own image, resized to `image_size` (`arms.zoom_tool`)."""

    arm = ImageArm

    def setup(self) -> None:
        self._views = {}

    def default_min_side(self, pixel_multiple: int | None) -> float:
        """One merged patch of the first view: the family's pixel multiple over `image_size`."""
        if not pixel_multiple:
            raise ValueError("ImageZoom: the default min_side needs the model family's pixel_multiple")
        return min(1.0, pixel_multiple / self.settings.image_size)

    def source(self, split: str, position: int):
        if split not in self._views:
            self._views[split] = load_split(self.settings.data_dir, split, manifest=self.manifest)
        return self._views[split][position]["image"].convert("RGB")

    def source_size(self, source) -> tuple[int, int]:
        return source.size

    def crop(self, source, pixels):
        size = self.settings.image_size
        return source.crop(pixels).resize((size, size), resample=BICUBIC)

    def content(self, crop) -> list[dict]:
        return [{"type": "image", "image": crop}]

    def refusal(self, message: str, split: str, position: int) -> list[dict]:
        """The first view again (the whole source at `image_size`), then the error text (see the module's note)."""
        first_view = resize_image(self.source(split, position), self.settings.image_size)
        return [*self.content(first_view), {"type": "text", "text": message}]


class BlankImageZoom(ImageZoom):
    """The image arm's zoom over a black source of the galaxy's size: the blank-input control of a zoom run, whose
    crops must not bring the galaxy back."""

    def source(self, split: str, position: int):
        from PIL import Image  # lazy: as the arm's blank image

        return Image.new("RGB", super().source(split, position).size)

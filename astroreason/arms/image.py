"""The image arm: the galaxy as pixels, resized to `image_size` (TRL inserts the image block into the prompt)."""

from __future__ import annotations

from itertools import islice

import numpy as np

from ..data.splits import load_split
from .base import Arm


def resize_image(image, size: int):
    """An RGB `size` x `size` copy (bicubic), as every consumer of the image arm sees it."""
    image = image.convert("RGB")
    return image if image.size == (size, size) else image.resize((size, size), resample=3)  # PIL.Image.BICUBIC


class ImageArm(Arm):
    modality = "image"
    columns = ("label", "image")

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

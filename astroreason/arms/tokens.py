"""The token arm: the galaxy as its codec ids, rendered as text into the prompt (`astroreason.tokens`)."""

from __future__ import annotations

from itertools import islice

import numpy as np

from ..tokens import load_codec, render, token_split
from ..tokens.cache import load_codes
from ..tokens.cache import split_positions as token_positions
from ..tokens.crops import CodecInputs
from .base import Arm

# Between the field's codes and the centre crop's (`ArmSettings.token_crop`): what the second grid shows.
CENTRE_CROP_CAPTION = "The field's centre, a box {side:g} of its side, encoded again:"


class TokenArm(Arm):
    modality = "tokens"
    columns = ("label",)

    def load_view(self):
        s = self.settings
        # The codec and its cache are opened once, with the arm's one manifest, for the view and its positions.
        self.codec = load_codec(s.codec)
        self.cache = load_codes(s.data_dir, self.codec, manifest=self.manifest)
        view = token_split(s.data_dir, self.split, self.codec, s.rendering, cache=self.cache, manifest=self.manifest)
        return view if s.token_crop is None else self.with_centre_crop(view)

    def with_centre_crop(self, view):
        """The view whose text also holds the codes of each galaxy's centre box (`ArmSettings.token_crop`), after
        the whole field's, as a zoom call on that box would return them."""
        side = self.settings.token_crop
        rows = np.asarray(self.manifest.rows[self.split], np.int64)[self.split_positions()]
        inputs = CodecInputs(self.settings.data_dir, self.codec, self.cache, self.manifest)
        crops = [render(grid, self.settings.rendering) for grid in inputs.centre_codes(rows, side)]
        texts = [
            f"{field}\n{CENTRE_CROP_CAPTION.format(side=side)}\n{crop}"
            for field, crop in zip(view["tokens_text"], crops)
        ]
        return view.remove_columns("tokens_text").add_column("tokens_text", texts)

    def split_positions(self) -> np.ndarray:
        # An AION cache holds only the rows with flux: the view's rows are a subset of the split.
        s = self.settings
        return token_positions(s.data_dir, self.split, self.codec, cache=self.cache, manifest=self.manifest)

    def representation(self, example) -> str:
        return example["tokens_text"]

    def control_order(self, seed: int = 0) -> np.ndarray:
        """Whose codes each used row gets in `without_galaxy`: a seeded permutation of the used rows."""
        return np.random.default_rng(seed).permutation(self.n)

    def without_galaxy(self, seed: int = 0) -> list[dict]:
        """Another galaxy's codes in each prompt (a seeded permutation of the used rows' codes, `control_order`)."""
        examples = list(islice(self.view, self.n))
        order = self.control_order(seed)
        return [
            {"label": example["label"], "prompt": self.prompt(example, i, examples[j]["tokens_text"])}
            for i, (example, j) in enumerate(zip(examples, order))
        ]

"""The token arm: the galaxy as its codec ids, rendered as text into the prompt (`astroreason.tokens`)."""

from __future__ import annotations

from itertools import islice

import numpy as np

from ..tokens import load_codec, token_split
from ..tokens.cache import load_codes
from ..tokens.cache import split_positions as token_positions
from .base import Arm


class TokenArm(Arm):
    modality = "tokens"
    columns = ("label",)

    def load_view(self):
        s = self.settings
        # The codec and its cache are opened once, with the arm's one manifest, for the view and its positions.
        self.codec = load_codec(s.codec)
        self.cache = load_codes(s.data_dir, self.codec, manifest=self.manifest)
        return token_split(s.data_dir, self.split, self.codec, s.rendering, cache=self.cache, manifest=self.manifest)

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

"""The token arm: the galaxy as its codec ids, rendered as text into the prompt (`astroreason.tokens`); its zoom
tool re-encodes a crop of the codec's full-resolution input (`TokenZoom`)."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..models import check_code_tokens
from ..prompts import TOKENS_TEMPLATE, TOKENS_ZOOM_INSTRUCTION, tokens_template
from ..tokens import load_codec, render, token_split
from ..tokens.cache import load_codes
from ..tokens.cache import split_positions as token_positions
from ..tokens.crops import CodecInputs
from ..tokens.render import check_fits
from .base import Arm, ArmSettings
from .zoom_tool import ZoomTool

# Between the field's codes and the centre crop's (`ArmSettings.token_crop`): what the second grid shows.
CENTRE_CROP_CAPTION = "The field's centre, a box {side:g} of its side, encoded again:"


class TokenArm(Arm):
    modality = "tokens"
    columns = ("label",)
    template_for = staticmethod(tokens_template)
    default_template = TOKENS_TEMPLATE
    representation_fields = ("tokens",)
    zoom_instruction = TOKENS_ZOOM_INSTRUCTION
    blank_input = "another galaxy's codes"
    uses_codec = True
    marker = "s"

    @classmethod
    def check_settings(cls, settings: ArmSettings) -> None:
        if not settings.codec:
            raise UserError(
                "codec: modality=tokens needs --codec DIR (a trained codec, see `astroreason tokens train`)"
            )
        crop = settings.token_crop
        if crop is not None and (isinstance(crop, bool) or not 0 < crop < 1):
            raise UserError(f"token_crop: a fraction of the field in (0, 1), got {crop!r}")

    @classmethod
    def check_model(cls, settings: ArmSettings, model: str | None) -> None:
        """With the special rendering, a codec too large for one added token per code."""
        if cls.needs_code_tokens(settings):
            check_fits(settings.rendering, load_codec(settings.codec).vocab_size)

    @classmethod
    def check_checkpoint(cls, settings: ArmSettings, model: str) -> None:
        """A codec the rendering cannot carry and, for `special`, a local checkpoint whose own tokenizer (an
        adapter's when it saved one) lacks a code token: codes would be split into BPE pieces. A served model
        without a local directory is the server's to tokenize."""
        codec = load_codec(settings.codec)
        if Path(model).is_dir():
            check_code_tokens(model, settings.rendering, codec.vocab_size)
        else:
            check_fits(settings.rendering, codec.vocab_size)

    @classmethod
    def needs_code_tokens(cls, settings: ArmSettings) -> bool:
        return settings.rendering == "special"

    @classmethod
    def answer_settings(cls, settings: ArmSettings) -> dict:
        parts = {"rendering": settings.rendering, "codec": load_codec(settings.codec).codec_hash}
        if settings.token_crop is not None:  # keyed only when set: a run without it keys its samples as before
            parts["token_crop"] = settings.token_crop
        return parts

    @classmethod
    def zoom_tool(cls, settings: ArmSettings, **kwargs) -> TokenZoom:
        return TokenZoom(settings, **kwargs)

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

    def control_positions(self, seed: int = 0) -> list[int]:
        return [int(self.positions[j]) for j in self.control_order(seed)]


class TokenZoom(ZoomTool):
    """The token arm's zoom: the crop re-encoded by the arm's codec, in its rendering (`arms.zoom_tool`)."""

    arm = TokenArm

    def setup(self) -> None:
        s = self.settings
        self.codec = load_codec(s.codec)
        cache = load_codes(s.data_dir, self.codec, prepared_dir=s.data_dir, manifest=self.manifest)
        self.inputs = CodecInputs(s.data_dir, self.codec, cache, self.manifest)

    def default_min_side(self, pixel_multiple: int | None) -> float:
        """One cell of the codec's grid: the smallest part of the first view a code describes."""
        return 1.0 / max(self.codec.grid_shape)

    def source(self, split: str, position: int) -> np.ndarray:
        """The codec's input for the galaxy, as the token cache read it (`CodecInputs.source`)."""
        return self.inputs.source(int(self.manifest.rows[split][position]))

    def source_size(self, source) -> tuple[int, int]:
        return self.inputs.source_size(source)

    def crop(self, source, pixels) -> np.ndarray:
        return self.inputs.encode_crop(source, pixels)

    def content(self, crop) -> str:
        return render(crop, self.settings.rendering)

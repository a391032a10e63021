"""What a galaxy's codes cost in the prompt: LM tokens of each rendering.

Counts are exact: the model's own tokenizer on the rendered text. The image arm's cost (visual tokens per image) is
the model family's to say (`astroreason.models.ModelFamily.visual_tokens`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import UserError
from .render import RENDERINGS, add_code_token_strings, check_fits, check_rendering, missing_code_tokens, render


@dataclass
class RenderingCost:
    """Prompt cost of one rendering over a set of galaxies.

    Args:
        rendering: `ints`, `rows` or `special`.
        codes_per_galaxy: Codec ids per galaxy (H' x W').
        lm_tokens_mean: Mean LM tokens per galaxy for the rendered codes alone (no instruction, no chat template).
        lm_tokens_min: Fewest LM tokens over the galaxies.
        lm_tokens_max: Most LM tokens over the galaxies.
        tokens_per_code: `lm_tokens_mean / codes_per_galaxy`.
        n_galaxies: Galaxies measured.
        note: How the count was taken, when not with the model's tokenizer as saved.
    """

    rendering: str
    codes_per_galaxy: int
    lm_tokens_mean: float
    lm_tokens_min: int
    lm_tokens_max: int
    tokens_per_code: float
    n_galaxies: int
    note: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def lm_tokens(text: str, tokenizer) -> int:
    """Exact LM tokens of `text` under `tokenizer`, without BOS/EOS or a chat template."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    return len(tok(text, add_special_tokens=False)["input_ids"])


def rendering_cost(codes: np.ndarray, rendering: str, tokenizer, *, vocab_size: int, model_dir=None) -> RenderingCost:
    """LM tokens per galaxy for `codes` [N, H', W'] rendered as `rendering`.

    For `special` on a tokenizer without the code tokens, they are added to a copy in memory (the cost the
    rendering would have once the code tokens are added), and the note says so.
    """
    import copy

    check_rendering(rendering)
    codes = np.asarray(codes)
    if codes.ndim != 3 or not len(codes):
        raise UserError(f"codes: expected [N, H, W] with N >= 1, got shape {codes.shape}")
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    note = ""
    if rendering == "special":
        missing = missing_code_tokens(tok, vocab_size)
        if missing == vocab_size:
            tok = copy.deepcopy(tok)
            add_code_token_strings(tok, vocab_size)
            note = "code tokens added to a copy of the tokenizer in memory"
        check_fits(rendering, vocab_size, tok, model_dir=model_dir)  # a partial or oversized set is a mismatch
    counts = np.array([lm_tokens(render(grid, rendering), tok) for grid in codes])
    per_galaxy = int(codes.shape[1] * codes.shape[2])
    return RenderingCost(
        rendering=rendering,
        codes_per_galaxy=per_galaxy,
        lm_tokens_mean=float(counts.mean()),
        lm_tokens_min=int(counts.min()),
        lm_tokens_max=int(counts.max()),
        tokens_per_code=float(counts.mean() / per_galaxy),
        n_galaxies=int(len(codes)),
        note=note,
    )


def prompt_costs(
    codes: np.ndarray, tokenizer, *, vocab_size: int, renderings=RENDERINGS, model_dir=None
) -> list[RenderingCost]:
    return [rendering_cost(codes, r, tokenizer, vocab_size=vocab_size, model_dir=model_dir) for r in renderings]

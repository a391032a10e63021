"""Codec grids as prompt text, selectable by name.

- `ints`: the AION prompt form, one flat list: `[3513, 3555, ...]`.
- `rows`: one line per grid row, ids separated by spaces.
- `special`: one added special token per code, `<|g_3513|><|g_3555|>...`, one LM token per code once
  `astroreason.models.add_code_tokens` has put them in the tokenizer and grown the model's embeddings to match.

The text holds the codes and nothing else: no index, id or coordinate of the galaxy.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import UserError

RENDERINGS = ("ints", "rows", "special")
CODE_TOKEN = "<|g_{}|>"
# One added token per code grows the embedding matrix by that many rows: past this it is a misconfigured codec.
MAX_SPECIAL_CODES = 65536
_CODE_TOKEN_RE = re.compile(r"<\|g_(\d+)\|>")


def code_token(code: int) -> str:
    return CODE_TOKEN.format(int(code))


def code_tokens(vocab_size: int) -> list[str]:
    return [code_token(i) for i in range(vocab_size)]


def check_rendering(rendering: str) -> str:
    if rendering not in RENDERINGS:
        raise UserError(f"rendering: expected one of {', '.join(RENDERINGS)}, got {rendering!r}")
    return rendering


def render(codes, rendering: str) -> str:
    """One galaxy's grid [H', W'] as prompt text."""
    check_rendering(rendering)
    grid = np.asarray(codes)
    if grid.ndim != 2:
        raise UserError(f"codes: expected one galaxy's grid [H, W], got shape {grid.shape}")
    if rendering == "ints":
        return "[" + ", ".join(map(str, grid.ravel().tolist())) + "]"
    if rendering == "rows":
        return "\n".join(" ".join(map(str, row)) for row in grid.tolist())
    return "".join(map(code_token, grid.ravel().tolist()))


def parse(text: str, rendering: str, grid_shape: tuple[int, int]) -> np.ndarray:
    """The inverse of `render`: prompt text -> grid [H', W']; refuses text that is not a whole grid."""
    check_rendering(rendering)
    if rendering == "special":
        ids = [int(m) for m in _CODE_TOKEN_RE.findall(text)]
        leftover = _CODE_TOKEN_RE.sub("", text)
    else:
        ids = [int(m) for m in re.findall(r"\d+", text)]
        leftover = re.sub(r"[\d\s,\[\]]", "", text)
    if leftover or len(ids) != grid_shape[0] * grid_shape[1]:
        raise UserError(f"tokens text: not a {rendering} rendering of a {grid_shape[0]}x{grid_shape[1]} grid")
    return np.asarray(ids, dtype=np.int64).reshape(grid_shape)


def _tokenizer_of(processor_or_tokenizer):
    return getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)


def missing_code_tokens(tokenizer, vocab_size: int) -> int:
    """How many of the codec's special code tokens the tokenizer does not hold as single tokens."""
    vocab = _tokenizer_of(tokenizer).get_vocab()
    return sum(1 for t in code_tokens(vocab_size) if t not in vocab)


def check_fits(rendering: str, vocab_size: int, tokenizer=None, *, model_dir: str | Path | None = None) -> None:
    """Refuse a codec whose vocabulary the rendering or the model cannot carry (one line)."""
    check_rendering(rendering)
    if vocab_size < 1:
        raise UserError(f"codec vocabulary: must be at least 1, got {vocab_size}")
    if rendering == "special" and vocab_size > MAX_SPECIAL_CODES:
        raise UserError(
            f"codec vocabulary: {vocab_size} codes would add {vocab_size} tokens to the model; the special rendering "
            f"takes at most {MAX_SPECIAL_CODES} (choose ints or rows, or a codec with fewer levels)"
        )
    if rendering == "special" and tokenizer is not None:
        tok = _tokenizer_of(tokenizer)
        missing = missing_code_tokens(tok, vocab_size)
        where = model_dir or "the model"
        if missing:
            have = vocab_size - missing
            raise UserError(
                f"{where}: tokenizer holds {have} of the codec's {vocab_size} code tokens {code_token(0)}.. "
                "(add them with astroreason.models.save_with_code_tokens, or choose the ints or rows rendering)"
            )
        # Code tokens beyond the largest the codec can emit would never be trained: a codec/model mismatch.
        if code_token(vocab_size) in tok.get_vocab():
            raise UserError(f"{where}: tokenizer holds more code tokens than the codec's vocabulary {vocab_size}: built for another codec")


def add_code_token_strings(tokenizer, vocab_size: int) -> int:
    """Add one special token per code id to the tokenizer (a processor's inner one); returns how many were added
    (0 when they are all there). Growing a model's embeddings to match is the model family's part
    (`astroreason.models.add_code_tokens`)."""
    check_fits("special", vocab_size)
    tok = _tokenizer_of(tokenizer)
    present = tok.get_vocab()
    new = [t for t in code_tokens(vocab_size) if t not in present]
    return tok.add_tokens(new, special_tokens=True) if new else 0

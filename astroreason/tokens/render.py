"""Codec grids as prompt text, selectable by name (`RENDERINGS`) or, for user code, by dotted path.

- `ints`: the AION prompt form, one flat list: `[3513, 3555, ...]`.
- `rows`: one line per grid row, ids separated by spaces.
- `special`: one added special token per code, `<|g_3513|><|g_3555|>...`, one LM token per code once
  `astroreason.models.add_code_tokens` has put them in the tokenizer and grown the model's embeddings to match.
- `my_module.my_rendering`: a `Rendering`, or a plain function of one grid [H', W'] returning its text.

The text holds the codes and nothing else: no index, id or coordinate of the galaxy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..dotted import import_dotted
from ..errors import UserError

CODE_TOKEN = "<|g_{}|>"
# One added token per code grows the embedding matrix by that many rows: past this it is a misconfigured codec.
MAX_SPECIAL_CODES = 65536
_CODE_TOKEN_RE = re.compile(r"<\|g_(\d+)\|>")


def code_token(code: int) -> str:
    return CODE_TOKEN.format(int(code))


def code_tokens(vocab_size: int) -> list[str]:
    return [code_token(i) for i in range(vocab_size)]


@dataclass(frozen=True)
class Rendering:
    """How one galaxy's grid [H', W'] is written as prompt text, and read back (`parse(text, grid_shape)`, None when
    the text cannot be read back)."""

    render: Callable[[np.ndarray], str]
    parse: Callable[[str, tuple[int, int]], np.ndarray] | None = None


def _parse_numbers(text: str, grid_shape: tuple[int, int]) -> np.ndarray | None:
    if re.sub(r"[\d\s,\[\]]", "", text):
        return None  # anything besides the codes
    return _grid([int(m) for m in re.findall(r"\d+", text)], grid_shape)


def _parse_special(text: str, grid_shape: tuple[int, int]) -> np.ndarray | None:
    if _CODE_TOKEN_RE.sub("", text):
        return None
    return _grid([int(m) for m in _CODE_TOKEN_RE.findall(text)], grid_shape)


def _grid(ids: list[int], grid_shape: tuple[int, int]) -> np.ndarray | None:
    if len(ids) != grid_shape[0] * grid_shape[1]:
        return None
    return np.asarray(ids, dtype=np.int64).reshape(grid_shape)


RENDERINGS: dict[str, Rendering] = {
    "ints": Rendering(lambda grid: "[" + ", ".join(map(str, grid.ravel().tolist())) + "]", _parse_numbers),
    "rows": Rendering(lambda grid: "\n".join(" ".join(map(str, row)) for row in grid.tolist()), _parse_numbers),
    "special": Rendering(lambda grid: "".join(map(code_token, grid.ravel().tolist())), _parse_special),
}


def get_rendering(rendering: str) -> Rendering:
    """The rendering a name stands for: one of `RENDERINGS`, or a dotted path to a `Rendering` or a function of a grid
    (user code importable from the working directory or `PYTHONPATH`); anything else is one clear error."""
    if rendering in RENDERINGS:
        return RENDERINGS[rendering]
    if "." not in str(rendering):
        raise UserError(
            f"rendering: expected one of {', '.join(RENDERINGS)} or a dotted path module.function, got {rendering!r}"
        )
    found = import_dotted(rendering, "rendering")
    if isinstance(found, Rendering):
        return found
    if callable(found):
        return Rendering(found)
    raise UserError(f"rendering: {rendering!r} is a {type(found).__name__}, not a Rendering nor a function of a grid")


def check_rendering(rendering: str) -> str:
    get_rendering(rendering)
    return rendering


def render(codes, rendering: str) -> str:
    """One galaxy's grid [H', W'] as prompt text."""
    chosen = get_rendering(rendering)
    grid = np.asarray(codes)
    if grid.ndim != 2:
        raise UserError(f"codes: expected one galaxy's grid [H, W], got shape {grid.shape}")
    text = chosen.render(grid)
    if not isinstance(text, str):
        raise UserError(f"rendering: {rendering!r} returned a {type(text).__name__}, not the prompt text")
    return text


def parse(text: str, rendering: str, grid_shape: tuple[int, int]) -> np.ndarray:
    """The inverse of `render`: prompt text -> grid [H', W']; refuses text that is not a whole grid."""
    chosen = get_rendering(rendering)
    if chosen.parse is None:
        raise UserError(f"rendering: {rendering!r} has no parse (its text cannot be read back)")
    grid = chosen.parse(text, grid_shape)
    if grid is None:
        raise UserError(f"tokens text: not a {rendering} rendering of a {grid_shape[0]}x{grid_shape[1]} grid")
    return grid


def _tokenizer_of(processor_or_tokenizer):
    return getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)


def code_token_ids(tokenizer, vocab_size: int) -> list[int]:
    """The ids of the code tokens <|g_0|>..<|g_{vocab_size-1}|> in a tokenizer (or a processor's), by code id."""
    return _tokenizer_of(tokenizer).convert_tokens_to_ids(code_tokens(vocab_size))


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
                f"rendering special: the tokenizer of {where} holds {have} of the codec's {vocab_size} code tokens "
                f"{code_token(0)}.., so codes would be split into several tokens (train it with --rendering special, "
                "which adds them, or add them with astroreason.models.save_with_code_tokens; or choose ints or rows)"
            )
        # Code tokens beyond the largest the codec can emit would never be trained: a codec/model mismatch.
        if code_token(vocab_size) in tok.get_vocab():
            raise UserError(
                f"rendering special: the tokenizer of {where} holds more code tokens than the codec's vocabulary "
                f"{vocab_size}: built for another codec (use that codec, or a model without code tokens)"
            )


def add_code_token_strings(tokenizer, vocab_size: int) -> int:
    """Add one special token per code id to the tokenizer (a processor's inner one); returns how many were added
    (0 when they are all there). Growing a model's embeddings to match is the model family's part
    (`astroreason.models.add_code_tokens`)."""
    check_fits("special", vocab_size)
    tok = _tokenizer_of(tokenizer)
    present = tok.get_vocab()
    new = [t for t in code_tokens(vocab_size) if t not in present]
    return tok.add_tokens(new, special_tokens=True) if new else 0

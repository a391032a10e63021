"""What a galaxy's codes cost in the prompt: LM tokens of each rendering, alone and in the whole prompt.

Counts are exact: the model's own tokenizer on the rendered text. The whole prompt is counted by `prompt_tokens`,
the same function the evaluation's transformers backend builds its prompts with (`chat_prompt_text`), so
`astroreason tokens cost` and `result.json` give the same figure for the same tokenizer, template and rendering. The
image arm's cost (visual tokens per image) is the model family's to say
(`astroreason.models.ModelFamily.visual_tokens`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import UserError
from ..prompts import TOKENS_TEMPLATE
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
        prompt_tokens_mean: Mean LM tokens of the whole prompt per galaxy: the default token-arm template with
            the rendered codes, through the chat template with the assistant's turn opened (`prompt_tokens`), as
            the evaluation counts it (`result.json`'s `prompt_tokens_per_galaxy`).
        template_tokens: LM tokens of that prompt without the codes (for `special`, prompt = codes + template).
        note: How the count was taken, when not with the model's tokenizer as saved.
    """

    rendering: str
    codes_per_galaxy: int
    lm_tokens_mean: float
    lm_tokens_min: int
    lm_tokens_max: int
    tokens_per_code: float
    n_galaxies: int
    prompt_tokens_mean: float = 0.0
    template_tokens: int = 0
    note: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def lm_tokens(text: str, tokenizer) -> int:
    """Exact LM tokens of `text` under `tokenizer`, without BOS/EOS or a chat template."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    return len(tok(text, add_special_tokens=False)["input_ids"])


def chat_prompt_text(processor, messages: list[dict]) -> str:
    """A conversational prompt as the model reads it: the chat template, with the assistant's turn opened."""
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_tokens(messages: list[dict], processor) -> int:
    """LM tokens of a text-only conversational prompt as the evaluation sends it: `chat_prompt_text`, tokenized as
    `processor(text=...)` tokenizes it (the tokenizer's own special tokens included, none for Qwen)."""
    text = chat_prompt_text(processor, messages)
    return len(getattr(processor, "tokenizer", processor)(text)["input_ids"])


def token_prompt(tokens_text: str, template: str | None = None) -> list[dict]:
    """The token arm's prompt of one galaxy (the default template unless given); an empty `tokens_text` gives the
    template alone."""
    template = TOKENS_TEMPLATE if template is None else template
    return [{"role": "user", "content": template.format(tokens=tokens_text)}]


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
    texts = [render(grid, rendering) for grid in codes]
    counts = np.array([lm_tokens(text, tok) for text in texts])
    prompts = np.array([prompt_tokens(token_prompt(text), tok) for text in texts])
    per_galaxy = int(codes.shape[1] * codes.shape[2])
    return RenderingCost(
        rendering=rendering,
        codes_per_galaxy=per_galaxy,
        lm_tokens_mean=float(counts.mean()),
        lm_tokens_min=int(counts.min()),
        lm_tokens_max=int(counts.max()),
        tokens_per_code=float(counts.mean() / per_galaxy),
        n_galaxies=int(len(codes)),
        prompt_tokens_mean=float(prompts.mean()),
        template_tokens=prompt_tokens(token_prompt(""), tok),
        note=note,
    )


def prompt_costs(
    codes: np.ndarray, tokenizer, *, vocab_size: int, renderings=RENDERINGS, model_dir=None
) -> list[RenderingCost]:
    return [rendering_cost(codes, r, tokenizer, vocab_size=vocab_size, model_dir=model_dir) for r in renderings]

"""What differs between vision-language model families, in one place, chosen from the model's config.

A `ModelFamily` holds everything the rest of the package must not assume about a model: which parameters are its
vision tower, how many visual tokens an image costs (asked of the processor), which image sizes fit its patch grid,
a chat template that renders tool calls, how to grow its vocabulary for the `special` rendering's code tokens, and
how to build a tiny random one offline. Each family is one module of this package that registers one instance;
`family_for(config or model)` picks it by `model_type`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from ..errors import UserError
from ..tokens.render import add_code_token_strings, check_fits, code_token
from .code_tokens import check_init, init_code_rows

_FAMILIES: dict[str, ModelFamily] = {}


class ModelFamily(ABC):
    """One family of vision-language models (its `model_type`). Subclasses set the class attributes and implement
    the abstract methods.

    Attributes:
        model_type: The `model_type` of the family's transformers config (`qwen2_5_vl`).
        name: How the family is named in messages (`Qwen2.5-VL`).
        pixel_multiple: Image sides (px) that fit the vision grid without the processor resizing them: one visual
            token per `pixel_multiple` x `pixel_multiple` pixels.
        vision_prefixes: Dotted name prefixes of the vision tower's parameters in `model.named_parameters()`
            (matched at a name boundary, so a peft wrapper's `base_model.model.` in front still matches).
        merger_prefixes: The part of the vision tower that projects visual tokens into the language model's width.
        chat_template: A chat template that renders tool calls and tool results (TRL's `supports_tool_calling`).
    """

    model_type: str = ""
    name: str = ""
    pixel_multiple: int = 0
    vision_prefixes: tuple[str, ...] = ()
    merger_prefixes: tuple[str, ...] = ()
    chat_template: str = ""

    # --- parameters -------------------------------------------------------------------------------------------------

    def is_vision(self, name: str) -> bool:
        """Whether a parameter name belongs to the vision tower (merger included)."""
        return _has_prefix(name, self.vision_prefixes)

    def part_of(self, name: str) -> str:
        """`vision`, `merger` or `language` for a parameter name (`astroreason.optim`'s parts)."""
        if _has_prefix(name, self.merger_prefixes):
            return "merger"
        return "vision" if self.is_vision(name) else "language"

    def vision_parameters(self, model) -> list:
        """The vision tower's parameters (merger included), in `named_parameters` order."""
        return [p for n, p in model.named_parameters() if self.is_vision(n)]

    @abstractmethod
    def image_features(self, model, pixel_inputs) -> list:
        """The merged visual tokens of each image, one [tokens, hidden] tensor per image, from the image
        processor's output (`pixel_inputs`)."""

    # --- images -----------------------------------------------------------------------------------------------------

    def valid_sizes(self, up_to: int = 512) -> list[int]:
        return list(range(self.pixel_multiple, up_to + 1, self.pixel_multiple))

    def check_image_size(self, size: int, where: str = "image_size") -> int:
        """Refuse (one line) a side the vision grid does not fit: the processor would resize it and spend another
        number of visual tokens than the size promises."""
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % self.pixel_multiple:
            sizes = ", ".join(map(str, self.valid_sizes(8 * self.pixel_multiple)))
            raise UserError(
                f"{where}: {size!r} px does not fit {self.name}'s {self.pixel_multiple}-px grid; valid "
                f"sizes are multiples of {self.pixel_multiple} ({sizes}, ...)"
            )
        return size

    @abstractmethod
    def visual_tokens(self, processor, height: int, width: int | None = None) -> int:
        """Visual tokens the model's own image processor spends on one height x width image (asked of the
        processor on a blank image of that size, not computed from a constant)."""

    # --- vocabulary -------------------------------------------------------------------------------------------------

    def add_code_tokens(
        self, processor, model, vocab_size: int, *, init: str = "mean", vectors=None, seed: int = 0
    ) -> int:
        """Add the `special` rendering's code tokens to the tokenizer and give each its own embedding row.

        Returns the tokens added (0 when all are there: then nothing is touched, so rows trained or warm-started
        before are kept). The embedding matrix grows only when the tokenizer outgrows it (a checkpoint may carry
        spare rows); the rows of the added tokens start as `init` says (`astroreason.models.code_tokens`: `mean`, or
        `codebook` from the codec's `vectors` [vocab_size, D]), in the output embeddings too when they are not tied
        to the input ones (tied ones stay one tensor).
        """
        check_fits("special", vocab_size)
        check_init(init)
        tok = getattr(processor, "tokenizer", processor)
        n_old = len(tok)
        vocab = tok.get_vocab()
        missing = [i for i in range(vocab_size) if code_token(i) not in vocab]
        added = add_code_token_strings(processor, vocab_size)
        if added:
            if len(tok) > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(len(tok), mean_resizing=False)  # rows written below
            ids = tok.convert_tokens_to_ids([code_token(i) for i in missing])
            chosen = None if vectors is None else vectors[missing]
            init_code_rows(model, ids, n_old, init, vectors=chosen, seed=seed)
        top = tok.convert_tokens_to_ids(code_token(vocab_size - 1))
        rows = model.get_input_embeddings().weight.shape[0]
        if top >= rows:
            raise UserError(f"model embeddings: {rows} rows cannot hold token id {top}")
        return added

    def code_token_modules(self, model, ids: list[int]) -> dict[str, list[int]]:
        """peft's `trainable_token_indices` for the code tokens `ids`: the input embeddings, by module name.

        Not the LM head: TRL's fused LM head reads `lm_head.weight` and `lm_head.bias`, and peft's token wrapper
        exposes only `weight`. An untied head's code rows stay at their init (they only score a code token as the
        next token, which no target holds); a tied head is the embedding itself and follows it.
        """
        inp = model.get_input_embeddings()
        name = next(n for n, m in model.named_modules() if m is inp)
        return {name.rsplit(".", 1)[-1]: list(ids)}

    # --- loading and building ---------------------------------------------------------------------------------------

    def image_only_processor_class(self):
        """The family's processor class without video (transformers builds video processors only with
        torchvision), or None when the stock processor loads without torchvision."""
        return None

    @abstractmethod
    def build_tiny(self, out_dir, spec, seed: int, task):
        """(model, processor) of a tiny random member of the family, built offline from `spec`
        (`astroreason.models.tiny.TinyModelSpec`), its tokenizer trained on `task`'s prompts and answers
        (`tokenizer_corpus`)."""


def _has_prefix(name: str, prefixes: tuple[str, ...]) -> bool:
    dotted = f".{name}"
    return any(f".{prefix}" in dotted for prefix in prefixes)


def register(family: ModelFamily) -> ModelFamily:
    """Make a family known to `family_for` under its `model_type`."""
    if not family.model_type or family.pixel_multiple <= 0:
        raise ValueError(f"{type(family).__name__}: a family needs a model_type and a pixel_multiple")
    _FAMILIES[family.model_type] = family
    return family


def families() -> dict[str, ModelFamily]:
    """The registered families by `model_type`."""
    return dict(_FAMILIES)


def _model_type(config_or_model) -> str:
    if isinstance(config_or_model, str):
        return config_or_model
    config = getattr(config_or_model, "config", config_or_model)  # a model (peft forwards `config` to its base)
    return getattr(config, "model_type", "") or ""


def find_family(config_or_model) -> ModelFamily | None:
    """The family of a config, a model (peft-wrapped or not) or a `model_type` string; None when unknown."""
    return _FAMILIES.get(_model_type(config_or_model))


def family_for(config_or_model) -> ModelFamily:
    """The family of a config, a model or a `model_type`; an unknown one is one line naming the known families."""
    family = find_family(config_or_model)
    if family is None:
        model_type = _model_type(config_or_model) or "(none)"
        raise UserError(
            f"model_type: {model_type} is not a model family astroreason knows (known: "
            f"{', '.join(sorted(_FAMILIES))}); add one in astroreason/models/ (docs/models.md)"
        )
    return family

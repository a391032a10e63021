"""Which parts of a vision-language model train, and how fast, under a Hugging Face / TRL trainer.

A pretrained vision tower should move slowly (or not at all) while the randomly initialised language model learns to
read it; one learning rate cannot serve both. The recipes' part options (`training.PartArguments`) reach the trainer
through `use_part_options`: frozen parts stop taking gradients, and when a part has its own learning rate the trainer
builds its optimizer (`args.optim`'s class) over one parameter group per part; the trainer's scheduler then scales
every group alike, and a resumed run reloads its state. Which parameters are the vision tower and its merger is the
model family's to say (`ModelFamily.part_of`, which also reads peft's LoRA names).

The token arm's counterpart of a pretrained tower is a set of pretrained rows inside the token embedding matrix (the
`special` rendering's code tokens, `astroreason.pretrain.pretrain_code_embeddings`). Rows of one tensor cannot have
their own learning rate, so `freeze_code_rows` holds them fixed instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import UserError
from .models import family_for

PARTS = ("vision", "merger", "language")
FREEZE_OPTIONS = {"vision": "freeze_vision_tower", "merger": "freeze_merger", "language": "freeze_language_model"}


@dataclass
class PartLearningRates:
    """Learning rate of each part of a vision-language model; 0 freezes that part.

    Args:
        vision: Patch embedding and vision blocks.
        merger: The merger that projects merged visual tokens into the language model's width.
        language: Token embeddings, decoder layers and the output head.
    """

    vision: float = 1e-4
    merger: float = 1e-3
    language: float = 3e-3


def part_param_groups(
    model, rates: PartLearningRates, weight_decay: float = 0.0, decay_names: Iterable[str] | None = None
) -> list[dict]:
    """Optimizer parameter groups, one per part with a non-zero rate (named by `name`); parts with rate 0 are
    frozen. With `decay_names` (the trainer's `get_decay_parameter_names`), each part is split as the Trainer splits
    its one group: weight decay only on those names, none on biases and norms."""
    family = family_for(model)
    decay = set(decay_names) if decay_names is not None else None
    groups: dict[tuple[str, bool], list] = {(part, d): [] for part in PARTS for d in (True, False)}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = family.part_of(name)
        if getattr(rates, part) == 0:
            param.requires_grad_(False)
        else:
            groups[part, decay is None or name in decay].append(param)
    return [
        {"params": params, "lr": getattr(rates, part), "weight_decay": weight_decay if d else 0.0, "name": part}
        for (part, d), params in groups.items()
        if params
    ]


def freeze_parts(model, parts: Iterable[str]) -> None:
    """Stop the gradient of every parameter of `parts` (`vision`, `merger`, `language`); LoRA's parameters are named
    after the module they adapt, so an adapter on a frozen part is frozen too."""
    family, parts = family_for(model), set(parts)
    for name, param in model.named_parameters():
        if family.part_of(name) in parts:
            param.requires_grad_(False)


def use_part_optimizer(trainer, rates: PartLearningRates, option: str = "vision_lr") -> None:
    """Have the trainer build its optimizer over one parameter group per part, each at its part's rate.

    The optimizer is built when the trainer would build its own (`Trainer.create_optimizer`, through its
    optimizer-factory hook `optimizer_cls_and_kwargs`, after any FSDP wrapping), of `args.optim`'s class with its
    settings, so a resumed run loads its saved state into it as into the trainer's own. `option` names the setting
    that asked for it, in a refusal."""
    from transformers.trainer_optimizer import is_optimizer_factory

    cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
    if is_optimizer_factory(cls) or {"params", "model", "optimizer_dict"} & set(kwargs):
        raise UserError(
            f"{option}: optim {trainer.args.optim} builds its own parameter groups, so it cannot take a learning "
            "rate per part; use an optimizer over parameter groups (adamw_torch, adamw_torch_fused, adamw_8bit, ...)"
        )

    def build(model, **_):
        decay = trainer.get_decay_parameter_names(model)
        return cls(part_param_groups(model, rates, trainer.args.weight_decay, decay), **kwargs)

    trainer.optimizer_cls_and_kwargs = (lambda: build, {})  # a factory: called with the model to optimize


def use_part_options(trainer, options, code_ids: list[int] | None = None, *, lora: bool = False) -> None:
    """Apply a recipe's part options (`training.PartArguments`) to a built, not yet trained, trainer: freeze the
    parts they name, hold the code rows (`code_ids`) fixed, and, when the vision tower or the merger has its own
    learning rate, give each part its rate (the language model's is `args.learning_rate`). With LoRA the base
    embeddings are frozen already and the code rows are simply not trained (`peft_config` leaves them out of the
    adapter). With no option set, the trainer is left as it is (its own optimizer)."""
    model = trainer.model
    frozen = [part for part, option in FREEZE_OPTIONS.items() if getattr(options, option)]
    if frozen:
        freeze_parts(model, frozen)
        if not any(p.requires_grad for p in model.parameters()):
            option = FREEZE_OPTIONS[frozen[-1]]
            names = ", ".join(FREEZE_OPTIONS[p] for p in frozen)
            why = " (LoRA adapts only the frozen parts)" if lora else ""
            raise UserError(f"{option}: with {names} nothing is left to train{why}")
    if options.freeze_code_rows and not lora and model.get_input_embeddings().weight.requires_grad:
        hold_rows(trainer, code_ids or [])
    if options.vision_lr is not None or options.merger_lr is not None:
        lr = trainer.args.learning_rate
        vision = options.vision_lr if options.vision_lr is not None else lr
        merger = options.merger_lr if options.merger_lr is not None else lr
        option = "vision_lr" if options.vision_lr is not None else "merger_lr"
        use_part_optimizer(trainer, PartLearningRates(vision, merger, lr), option)


def hold_rows(trainer, ids: list[int]):
    """Hold the input-embedding rows `ids` fixed while the rest of the model trains: their gradient is zeroed by a
    hook, so the optimizer never moves them; decoupled weight decay would still shrink them, so a trainer with weight
    decay is refused. Returns the hook's handle (`.remove()` lets them train again)."""
    import torch

    if trainer.args.weight_decay:
        raise UserError(f"freeze_code_rows: weight_decay {trainer.args.weight_decay} would shrink the frozen rows")
    weight = trainer.model.get_input_embeddings().weight
    if not ids or any(i is None or i >= len(weight) for i in ids):
        raise UserError("freeze_code_rows: the model has no code tokens (add them first: models.add_code_tokens)")
    keep = torch.ones(len(weight), 1, dtype=weight.dtype)
    keep[ids] = 0
    return weight.register_hook(lambda grad: grad * keep.to(grad.device))

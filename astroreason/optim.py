"""Per-part learning rates for a vision-language model under a Hugging Face / TRL trainer.

A pretrained vision tower should move slowly while the randomly initialised language model learns to read it; one
learning rate cannot serve both. `use_part_learning_rates` gives the trainer an AdamW whose parameter groups carry a
learning rate per part; the trainer's scheduler then scales every group alike, and a resumed run reloads its state.
Which parameters are the vision tower and its merger is the model family's to say (`ModelFamily.part_of`).

The token arm's counterpart of a pretrained tower is a set of pretrained rows inside the token embedding matrix (the
`special` rendering's code tokens, `astroreason.pretrain.pretrain_code_embeddings`). Rows of one tensor cannot have
their own learning rate, so `freeze_code_rows` holds them fixed instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import family_for
from .tokens.render import code_token_ids

PARTS = ("vision", "merger", "language")


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


def part_param_groups(model, rates: PartLearningRates, weight_decay: float = 0.0) -> list[dict]:
    """AdamW parameter groups, one per part with a non-zero rate; parts with rate 0 are frozen."""
    family = family_for(model)
    groups: dict[str, list] = {part: [] for part in PARTS}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = family.part_of(name)
        if getattr(rates, part) == 0:
            param.requires_grad_(False)
        else:
            groups[part].append(param)
    return [
        {"params": params, "lr": getattr(rates, part), "weight_decay": weight_decay, "name": part}
        for part, params in groups.items()
        if params
    ]


def use_part_learning_rates(trainer, rates: PartLearningRates) -> None:
    """Give a (not yet trained) HF/TRL trainer an AdamW with one learning rate per part."""
    import torch

    args = trainer.args
    groups = part_param_groups(trainer.model, rates, weight_decay=args.weight_decay)
    trainer.optimizer = torch.optim.AdamW(groups, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)


def freeze_code_rows(trainer, vocab_size: int):
    """Hold the embedding rows of the `special` rendering's code tokens fixed while the rest of the model trains (the
    rows were pretrained; the language model learns to read them). Their gradient is zeroed by a hook, so AdamW never
    moves them; decoupled weight decay would still shrink them, so a trainer with weight decay is refused. Returns the
    hook's handle (`.remove()` lets them train again)."""
    import torch

    if trainer.args.weight_decay:
        raise ValueError(f"freeze_code_rows: weight_decay {trainer.args.weight_decay} would shrink the frozen rows")
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    ids = code_token_ids(tokenizer, vocab_size)
    weight = trainer.model.get_input_embeddings().weight
    if any(i is None or i == tokenizer.unk_token_id or i >= len(weight) for i in ids):
        raise ValueError("freeze_code_rows: the model has no code tokens (add them first: models.add_code_tokens)")
    keep = torch.ones(len(weight), 1, dtype=weight.dtype)
    keep[ids] = 0
    return weight.register_hook(lambda grad: grad * keep.to(grad.device))

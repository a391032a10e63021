"""Per-part learning rates for a vision-language model under a Hugging Face / TRL trainer.

A pretrained vision tower should move slowly while the randomly initialised language model learns to read it; one
learning rate cannot serve both. `use_part_learning_rates` gives the trainer an AdamW whose parameter groups carry a
learning rate per part; the trainer's scheduler then scales every group alike, and a resumed run reloads its state.
Which parameters are the vision tower and its merger is the model family's to say (`ModelFamily.part_of`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import family_for

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

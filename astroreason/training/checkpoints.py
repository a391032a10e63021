"""A run's checkpoints: which one to resume from, the refusal to start fresh over them, and the weights' reload."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from .arguments import GalaxyScriptArguments


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete `checkpoint-N` in `output_dir`, or None.

    The Trainer writes a checkpoint in place and `trainer_state.json` last, so a job killed while saving leaves a
    checkpoint without it; resuming from that one would fail, so it is skipped (with a line saying so).
    """
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    steps = sorted(
        (int(p.name.rsplit("-", 1)[1]), p)
        for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit()
    )
    for _, path in reversed(steps):
        if (path / TRAINER_STATE_NAME).is_file():
            return str(path)
        print(f"astroreason: skipping {path}: incomplete (no {TRAINER_STATE_NAME}; the job died while saving it)")
    return None


def has_checkpoints(output_dir: str | os.PathLike) -> str | None:
    """The name of some `checkpoint-N` directory in `output_dir` (complete or not), or None."""
    output_dir = Path(output_dir)
    found = sorted(p.name for p in output_dir.glob("checkpoint-*") if p.is_dir()) if output_dir.is_dir() else []
    return found[-1] if found else None


def check_output_dir(args: GalaxyScriptArguments, output_dir: str) -> None:
    """Refuse, before anything is built, to start a fresh run over a run's own checkpoints."""
    if not args.resume and (found := has_checkpoints(output_dir)):
        raise UserError(
            f"output_dir: {output_dir} already holds {found}; pass --resume true to continue it "
            "or choose another --output_dir"
        )


def resume_point(args: GalaxyScriptArguments, output_dir: str) -> str | None:
    """The checkpoint to resume from, or None for a fresh run; refuses to train over a run's own checkpoints."""
    check_output_dir(args, output_dir)
    # --resume with nothing saved yet is a fresh start: a requeued job that died before its first checkpoint.
    return last_checkpoint(output_dir) if args.resume else None


def load_checkpoint_weights(trainer, checkpoint: str) -> bool:
    """Load a full-model checkpoint's weights into the trainer's model the `from_pretrained` way.

    transformers 5.23's Trainer resumes a full model with a raw `load_state_dict(strict=False)` of the checkpoint
    file, which skips the key conversion `save_pretrained` applied (Qwen-VL checkpoints hold `visual.*` and
    `model.layers.*`): every key is reported missing and the run silently continues from its initial weights.
    Optimizer, scheduler, RNG and step are still restored by the Trainer. PEFT adapters, DeepSpeed and FSDP resume
    through their own loaders and are left to them.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    if getattr(model, "peft_config", None) or trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        return False
    reloaded = type(model).from_pretrained(checkpoint, dtype=next(model.parameters()).dtype)
    model.load_state_dict(reloaded.state_dict(), strict=True)
    return True

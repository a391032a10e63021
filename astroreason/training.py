"""Everything the SFT and GRPO recipes share: their script arguments, the datasets of each arm, the model, resume.

The recipes (recipes/sft.py, recipes/grpo.py) only parse, call `build_*_trainer` and `run_training`. Both arms read the
same split manifest and use the same instruction and answer format; only the galaxy's representation differs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import UserError

logger = logging.getLogger(__name__)

MODALITIES = ("image", "tokens")


@dataclass
class GalaxyScriptArguments:
    """How the galaxies reach the model; parsed beside TRL's training config and `ModelConfig`.

    Args:
        data_dir: A prepared split directory (`astroreason data prepare`), read by both arms.
        modality: `image` shows the galaxy as pixels; `tokens` writes its codec ids into the prompt as text.
        codec: The codec directory (`astroreason tokens train`, or an AION-1 codec); required for `tokens`.
        rendering: How codec ids are written as text (`ints`, `rows`, `special`); see `astroreason.tokens.render`.
        image_size: Side in pixels that images are resized to before the processor; Qwen-VL spends one visual token
            per 28x28 pixels, so 112 px is 16 tokens and 224 px is 64 (a 69 px image would give only 4).
        train_split: Split used for training.
        eval_split: Split used for evaluation during training (when `eval_strategy` is not `no`).
        max_train_samples: Keep only the first N training rows (rows are already a seeded shuffle).
        max_eval_samples: Keep only the first N evaluation rows.
        reward_funcs: GRPO reward functions by name (`astroreason.rewards.REWARD_FUNCS`).
        resume: Continue from the last checkpoint in `output_dir`. Without it, a run refuses an `output_dir` that
            already holds checkpoints, so an overnight job never silently restarts from scratch over its own work.
    """

    data_dir: str = field(default="runs/demo/prepared", metadata={"help": "Prepared split directory."})
    modality: Literal["image", "tokens"] = field(default="image", metadata={"help": "image or tokens."})
    codec: str | None = field(default=None, metadata={"help": "Codec directory, for modality=tokens."})
    rendering: str = field(default="ints", metadata={"help": "Token rendering: ints, rows or special."})
    image_size: int = field(default=112, metadata={"help": "Resize images to this side (multiple of 28)."})
    train_split: str = field(default="train", metadata={"help": "Training split."})
    eval_split: str = field(default="val", metadata={"help": "Evaluation split."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Cap on training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cap on evaluation rows."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["format", "accuracy"], metadata={"help": "GRPO reward functions by name."}
    )
    resume: bool = field(default=False, metadata={"help": "Resume from the last checkpoint in output_dir."})

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise UserError(f"modality: expected one of {', '.join(MODALITIES)}, got {self.modality!r}")
        if self.modality == "tokens" and not self.codec:
            raise UserError("codec: modality=tokens needs --codec DIR (a trained codec, see `astroreason tokens train`)")
        if self.image_size <= 0 or self.image_size % 28:
            raise UserError(f"image_size: must be a positive multiple of 28 (Qwen-VL merges 28x28 px), got {self.image_size}")


def _resize(image, size: int):
    image = image.convert("RGB")
    return image if image.size == (size, size) else image.resize((size, size), resample=3)  # PIL.Image.BICUBIC


def galaxy_dataset(args: GalaxyScriptArguments, split: str, *, with_completion: bool, max_samples: int | None = None):
    """The conversational dataset of one split for one arm.

    Columns: `prompt` (one user turn), `label` (for the rewards), `completion` (SFT targets, when asked) and, for the
    image arm, `image` (TRL inserts the image block into the prompt itself).
    """
    from .prompts import answer_text, build_prompt

    if args.modality == "image":
        from .data.splits import load_split

        dataset = load_split(args.data_dir, split)
    else:
        from .tokens import token_split

        dataset = token_split(args.data_dir, split, args.codec, args.rendering)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))

    def to_conversation(example):
        if args.modality == "image":
            row = {"prompt": build_prompt("image"), "image": _resize(example["image"], args.image_size)}
        else:
            row = {"prompt": build_prompt("tokens", tokens_text=example["tokens_text"])}
        if with_completion:
            row["completion"] = [{"role": "assistant", "content": answer_text(example["label"])}]
        return row

    keep = {"label", "image"} if args.modality == "image" else {"label"}
    drop = [c for c in dataset.column_names if c not in keep]
    return dataset.map(to_conversation, remove_columns=drop, desc=f"{args.modality} {split} prompts")


def load_model(model_args, training_args):
    """The policy and its processor, from a local path or a Hub name; `trust_remote_code` only when asked."""
    from .models import load_model_and_processor

    return load_model_and_processor(
        model_args.model_name_or_path,
        dtype=model_args.dtype,
        trust_remote_code=getattr(model_args, "trust_remote_code", False),  # trl 1.16 ModelConfig has no such field
    )


def peft_config(model_args):
    from trl import get_peft_config

    return get_peft_config(model_args)


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None


def resume_point(args: GalaxyScriptArguments, output_dir: str) -> str | None:
    """The checkpoint to resume from, or None for a fresh run; refuses to train over a run's own checkpoints."""
    checkpoint = last_checkpoint(output_dir)
    if args.resume:
        return checkpoint  # --resume with nothing saved yet is a fresh start: a requeued job that died early
    if checkpoint is not None:
        raise UserError(
            f"output_dir: {output_dir} already holds {Path(checkpoint).name}; pass --resume to continue it "
            "or choose another --output_dir"
        )
    return None


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


def run_training(trainer, args: GalaxyScriptArguments) -> None:
    """Train (resuming if asked), then save the final model and processor in `output_dir`."""
    output_dir = trainer.args.output_dir
    checkpoint = resume_point(args, output_dir)
    if checkpoint:
        step = int(Path(checkpoint).name.split("-")[-1])
        trainer.accelerator.print(f"Resuming from {checkpoint} (global step {step})")
        if load_checkpoint_weights(trainer, checkpoint):
            trainer.accelerator.print(f"Weights loaded from {Path(checkpoint).name} with from_pretrained (the "
                                      "Trainer's own raw load may still report every key missing: it loads nothing)")
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(output_dir)
    if trainer.accelerator.is_main_process and trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(output_dir)
    trainer.accelerator.print(f"Model saved to {output_dir} after {trainer.state.global_step} steps")


def build_sft_trainer(args: GalaxyScriptArguments, training_args, model_args):
    from trl import SFTTrainer

    model, processor = load_model(model_args, training_args)
    train = galaxy_dataset(args, args.train_split, with_completion=True, max_samples=args.max_train_samples)
    evaluation = None
    if training_args.eval_strategy != "no":
        evaluation = galaxy_dataset(args, args.eval_split, with_completion=True, max_samples=args.max_eval_samples)
    return SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=processor,
        peft_config=peft_config(model_args),
    )


def build_grpo_trainer(args: GalaxyScriptArguments, training_args, model_args):
    from trl import GRPOTrainer

    from .rewards import get_reward_funcs

    model, processor = load_model(model_args, training_args)
    train = galaxy_dataset(args, args.train_split, with_completion=False, max_samples=args.max_train_samples)
    evaluation = None
    if training_args.eval_strategy != "no":
        evaluation = galaxy_dataset(args, args.eval_split, with_completion=False, max_samples=args.max_eval_samples)
    return GRPOTrainer(
        model=model,
        reward_funcs=get_reward_funcs(args.reward_funcs),
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=processor,
        peft_config=peft_config(model_args),
    )

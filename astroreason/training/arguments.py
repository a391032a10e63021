"""The recipes' script arguments and the checks of a recipe's merged settings, all made before any data or model
is loaded: every mistake is one `UserError` line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..arguments import parse_config_args
from ..arms import ArmSettings
from ..errors import UserError
from ..io import check_writable
from ..models import (
    check_init,
)
from ..optim import FREEZE_OPTIONS
from ..options import BudgetArguments, ZoomArguments
from ..rewards import get_reward_funcs
from .memory import check_gpu_memory, check_processes, check_strategy


@dataclass
class PartArguments:
    """Which parts of the model train, and how fast (`astroreason.optim`; the parts are the model family's:
    `ModelFamily.part_of`). A pretrained vision tower should move slowly or not at all while the language model
    learns to read it. Frozen parts take no gradient (with LoRA, neither do their adapters); a part's own learning
    rate is scaled by the trainer's scheduler like `learning_rate`, which is the language model's. With no option
    set, the trainer builds its own optimizer as TRL does.

    Args:
        freeze_vision_tower: Freeze the vision tower (patch embedding and vision blocks; the merger is
            `freeze_merger`'s).
        freeze_merger: Freeze the merger that projects visual tokens into the language model's width.
        freeze_language_model: Freeze the language model (token embeddings, decoder layers, output head).
        freeze_code_rows: Hold the `special` rendering's code-token embedding rows fixed (tokens arm with rendering
            special only: rows of one tensor cannot have a learning rate of their own). Needs weight_decay 0
            (decoupled decay would still shrink them); with LoRA the rows stay out of the adapter.
        vision_lr: Learning rate of the vision tower (None: `learning_rate`).
        merger_lr: Learning rate of the merger (None: `learning_rate`).
    """

    freeze_vision_tower: bool = field(
        default=False, metadata={"help": "Freeze the vision tower (patch embedding and vision blocks, not the merger)."}
    )
    freeze_merger: bool = field(
        default=False, metadata={"help": "Freeze the merger projecting visual tokens into the language model."}
    )
    freeze_language_model: bool = field(
        default=False, metadata={"help": "Freeze the language model (embeddings, decoder layers, output head)."}
    )
    freeze_code_rows: bool = field(
        default=False,
        metadata={
            "help": "Tokens arm, rendering special: hold the code tokens' embedding rows fixed (needs "
            "weight_decay 0; with LoRA they stay out of the adapter)."
        },
    )
    vision_lr: float | None = field(
        default=None, metadata={"help": "Learning rate of the vision tower (default: learning_rate)."}
    )
    merger_lr: float | None = field(
        default=None, metadata={"help": "Learning rate of the merger (default: learning_rate)."}
    )

    def check_parts(self) -> None:
        """Refuse part options no run can have (one line each)."""
        frozen = FREEZE_OPTIONS
        for name in (*frozen.values(), "freeze_code_rows"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        if all(getattr(self, name) for name in frozen.values()):
            raise UserError(
                "freeze_language_model: with freeze_vision_tower and freeze_merger nothing is left to train"
            )
        for name, part in (("vision_lr", "vision"), ("merger_lr", "merger")):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise UserError(f"{name}: expected a positive learning rate, got {value!r} (to freeze: {frozen[part]})")
            if getattr(self, frozen[part]):
                raise UserError(f"{name}: {frozen[part]} freezes that part, so it has no learning rate")
        if self.freeze_code_rows and not (isinstance(self, ArmSettings) and self.arm_class().needs_code_tokens(self)):
            raise UserError(
                "freeze_code_rows: only the tokens arm with rendering special has code-token rows (here modality "
                f"{getattr(self, 'modality', None)}, rendering {getattr(self, 'rendering', None)})"
            )


@dataclass
class MemoryPlanArguments:
    """The memory plan `estimate_only` prints (`training.memory`, docs/gpu.md): per GPU, under the launch's
    strategy and process count unless another layout is asked for here.

    Args:
        gpu_memory_gib: One GPU's memory in GiB that the plan must fit in (80 for an 80 GB H100 or A100).
        plan_strategy: Plan for this layout instead of the launch's (ddp, zero1, zero2, zero3, fsdp), without
            launching it.
        plan_processes: Plan for this many processes (GPUs) instead of the launch's.
    """

    gpu_memory_gib: float = field(
        default=80.0,
        metadata={
            "help": "estimate_only: one GPU's memory in GiB that the memory plan (MEMORY {json}) must fit in "
            "(default 80: an 80 GB H100 or A100)."
        },
    )
    plan_strategy: str | None = field(
        default=None,
        metadata={
            "help": "estimate_only: plan memory for this layout (ddp, zero1, zero2, zero3, fsdp) instead of the "
            "launch's accelerate config, without launching it."
        },
    )
    plan_processes: int | None = field(
        default=None,
        metadata={"help": "estimate_only: plan memory for this many processes (GPUs) instead of the launch's."},
    )

    def check_memory_plan(self) -> None:
        """Refuse a plan no GPU can have (one line each)."""
        check_gpu_memory(self.gpu_memory_gib)
        if self.plan_strategy is not None:
            check_strategy(self.plan_strategy)
        if self.plan_processes is not None:
            check_processes(self.plan_processes)


@dataclass
class GalaxyScriptArguments(PartArguments, MemoryPlanArguments, ZoomArguments, BudgetArguments, ArmSettings):
    """How the galaxies reach the model; parsed beside TRL's training config and `ModelConfig`. The arm and budget
    options are the evaluation's too (`astroreason.options`); the zoom options (`ZoomArguments`) are GRPO's, and
    SFT's warm start on zoom trajectories; the part options (`PartArguments`: freezing, a learning rate per part)
    and the memory plan's (`MemoryPlanArguments`) are the recipes'.

    Args:
        train_split: Split used for training.
        eval_split: Split used for evaluation during training (when `eval_strategy` is not `no`).
        max_train_samples: Keep only the first N training rows (rows are already a seeded shuffle).
        max_eval_samples: Keep only the first N evaluation rows.
        reward_funcs: GRPO reward functions by name (`astroreason.rewards.REWARD_FUNCS`).
        resume: Continue from the last checkpoint in `output_dir`. Without it, a run refuses an `output_dir` that
            already holds checkpoints, so an overnight job never silently restarts from scratch over its own work.
        callbacks: Extra `transformers.TrainerCallback` classes by dotted path (`my_module.MyCallback`), each built
            with no arguments and added to the trainer after the project's own callbacks.
        alarm_no_signal_logs: GRPO training alarm: consecutive logs in which every group's completions score the
            same (`frac_reward_zero_std` = 1: no gradient) before the run is marked suspect as learning nothing
            (default: `AlarmConfig.no_signal_logs`, 10; 0 turns the rule off). See docs/integrity.md.
        alarm_constant_reward_logs: GRPO training alarm: consecutive logs in which one reward function gives every
            completion the same value (its logged std 0, its mean unchanged: e.g. an accuracy of 0 on everything
            while the format reward varies) before the run is marked suspect, once per reward function (default:
            `AlarmConfig.constant_reward_logs`, 10; 0 turns the rule off). See docs/integrity.md.
        code_token_init: With `rendering: special`, how the rows of the added code tokens start
            (`astroreason.models.code_tokens`): `mean` (the existing rows' mean plus small seeded noise) or
            `codebook` (each code's codec vector through a seeded random projection, so similar codes start close).
            Tokens the model already holds keep their rows.
    """

    train_split: str = field(default="train", metadata={"help": "Training split."})
    eval_split: str = field(default="val", metadata={"help": "Evaluation split."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Cap on training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cap on evaluation rows."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["format", "accuracy"], metadata={"help": "GRPO reward functions by name."}
    )
    resume: bool = field(default=False, metadata={"help": "Resume from the last checkpoint in output_dir."})
    callbacks: list[str] = field(
        default_factory=list, metadata={"help": "Extra TrainerCallback classes by dotted path (module.Class)."}
    )
    alarm_no_signal_logs: int | None = field(
        default=None,
        metadata={
            "help": "GRPO alarm: consecutive logs with every group's rewards equal (no gradient) before the run "
            "is marked suspect (default 10; 0: off)."
        },
    )
    alarm_constant_reward_logs: int | None = field(
        default=None,
        metadata={
            "help": "GRPO alarm: consecutive logs in which one reward function scores every completion alike (e.g. "
            "accuracy 0 on all) before the run is marked suspect (default 10; 0: off)."
        },
    )

    pilot_steps: int = field(
        default=0,
        metadata={
            "help": "Estimate the whole run's cost from its first N steps (max_steps x their seconds per step x "
            "GPUs x price) and print one ESTIMATE {json} line; a run whose estimate does not fit under max_dollars "
            "stops there, checkpoint saved, exit 1 (0: no estimate; with estimate_only: 2)."
        },
    )

    code_token_init: Literal["mean", "codebook"] = field(
        default="mean",
        metadata={
            "help": "rendering special: how the added code tokens' embedding rows start: mean (the existing rows' "
            "mean plus small seeded noise) or codebook (each code's codec vector through a seeded random "
            "projection, so similar codes start close). Rows a model already holds are kept. See docs/models.md."
        },
    )

    def __post_init__(self):
        self.check_arm()  # the arm's own checks: modality, codec, image size
        self.check_zoom()
        self.check_parts()
        self.check_memory_plan()
        check_init(self.code_token_init)
        for name in ("alarm_no_signal_logs", "alarm_constant_reward_logs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise UserError(f"{name}: expected a non-negative integer, got {value!r}")
        if isinstance(self.pilot_steps, bool) or not isinstance(self.pilot_steps, int) or self.pilot_steps < 0:
            raise UserError(f"pilot_steps: expected a non-negative integer, got {self.pilot_steps!r}")
        if self.estimate_only and not self.pilot_steps:
            self.pilot_steps = 2  # the first is warm-up: one timed step after it
        for name in ("max_dollars", "price_gpu_hour"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise UserError(f"{name}: expected a non-negative number, got {value!r}")
        self.lint_override()  # an override without a reason (or a reason without an override) is refused up front


def parse_recipe_args(config_class, argv: list[str] | None = None, *, check_device: bool = True) -> tuple:
    """A recipe's (script arguments, `config_class` (SFTConfig/GRPOConfig), ModelConfig) from `--config FILE` plus
    `--key value` overrides, TRL's way; every mistake is one `UserError` line before any data or model is loaded.

    `check_device=False` leaves out the mixed-precision check (`sweep plan` checks on a login node what runs on GPUs).
    """
    from trl import ModelConfig

    def check(values):
        check_recipe_values(values, check_device=check_device)

    return parse_config_args((GalaxyScriptArguments, config_class, ModelConfig), argv, check=check)


POSITIVE = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "max_train_samples",
    "max_eval_samples",
    "logging_steps",
    "save_steps",
    "eval_steps",
    "max_completion_length",
    "steps_per_generation",
    "generation_batch_size",
)


NON_NEGATIVE = ("learning_rate", "weight_decay", "warmup_steps", "max_grad_norm", "num_train_epochs")


def check_recipe_values(values: dict, *, check_device: bool = True) -> None:
    """Refuse what a recipe cannot run, from the merged settings and before any dataclass is built: numbers no run
    can have (TRL would divide by zero, or fail only once the model is loaded), mixed precision this machine lacks,
    and an `output_dir` (or spend ledger) that cannot be written."""

    get = values.get
    max_steps = get("max_steps")
    if max_steps is not None and max_steps != -1 and max_steps < 1:
        raise UserError(
            f"max_steps: must be a positive number of steps, or -1 to train for num_train_epochs; got {max_steps}"
        )
    for name in POSITIVE:
        if get(name) is not None and get(name) <= 0:
            raise UserError(f"{name}: must be positive, got {get(name)}")
    for name in NON_NEGATIVE:
        if get(name) is not None and get(name) < 0:
            raise UserError(f"{name}: must be >= 0, got {get(name)}")
    for name in ("seed", "data_seed"):  # transformers' set_seed hands them to numpy, which refuses negative seeds
        if get(name) is not None and get(name) < 0:
            raise UserError(f"{name}: must be a non-negative integer, got {get(name)}")
    if max_steps == -1 and get("num_train_epochs") == 0:
        raise UserError(
            "num_train_epochs: 0 with max_steps -1 trains nothing; give a positive number of epochs or --max_steps N"
        )
    if "num_generations" in values:  # GRPO
        if get("num_generations") is None or get("num_generations") < 2:
            raise UserError(
                f"num_generations: GRPO compares completions of one prompt, so it needs at least 2; "
                f"got {get('num_generations')}"
            )
        if get("temperature") is not None and get("temperature") <= 0:
            raise UserError(f"temperature: must be positive (sampling), got {get('temperature')}")

        get_reward_funcs(get("reward_funcs") or [])  # an unknown reward is refused before any data or model
        cap, turns = get("max_tool_calling_iterations"), get("zoom_max_turns", ZoomArguments.zoom_max_turns)
        if get("zoom") and cap is not None and cap != turns:
            raise UserError(
                f"max_tool_calling_iterations: {cap} disagrees with zoom_max_turns {turns}; "
                "a zoom run sets the turn cap with zoom_max_turns only"
            )
    if get("freeze_code_rows") and get("weight_decay"):
        raise UserError(
            f"freeze_code_rows: weight_decay {get('weight_decay')} would shrink the frozen rows (decoupled decay "
            "is no gradient); pass --weight_decay 0"
        )
    if get("use_peft"):
        check_lora(values)
    if check_device:
        check_precision(values)
    if get("output_dir"):
        check_writable(get("output_dir"), "output_dir", directory=True)
    if get("ledger"):
        check_writable(get("ledger"), "ledger")


def check_lora(values: dict) -> None:
    """LoRA settings peft would refuse only once the model is loaded: a rank or alpha below 1, and no target
    modules for a model type peft has no default for (every Qwen-VL model)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULT_TARGETS

    for name in ("lora_r", "lora_alpha"):
        if values.get(name) is not None and values[name] < 1:
            raise UserError(f"{name}: must be at least 1 with use_peft, got {values[name]}")
    if values.get("lora_target_modules") or values.get("lora_target_parameters"):
        return
    config = Path(values.get("model_name_or_path") or "") / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    if model_type not in DEFAULT_TARGETS:
        raise UserError(
            f"lora_target_modules: use_peft needs the modules LoRA adapts for model type "
            f"{model_type or 'unknown'!s} (e.g. --lora_target_modules all-linear, or q_proj v_proj)"
        )


def check_precision(values: dict) -> None:
    """bf16/fp16 that this machine cannot run, as one line saying how to fix it.

    bf16 is refused where `TrainingArguments` refuses it (no GPU with bf16 and no `use_cpu`; torch runs bf16 on the
    CPU, slowly, with `use_cpu`); fp16 mixed precision (its loss scaler) needs an accelerator, so it is refused
    without one or with `use_cpu`.
    """
    import torch
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    if (
        values.get("bf16")
        and not values.get("use_cpu")
        and not (is_torch_bf16_gpu_available() or is_torch_xla_available())
    ):
        raise UserError(
            "bf16: this machine has no GPU with bf16 support; pass --bf16 false (or --use_cpu true to "
            "train in bf16 on the CPU, slowly)"
        )
    if values.get("fp16") and (values.get("use_cpu") or not torch.accelerator.is_available()):
        raise UserError(
            "fp16: fp16 mixed precision needs a GPU, and "
            + ("use_cpu is set" if values.get("use_cpu") else "this machine has none")
            + "; pass --fp16 false"
        )

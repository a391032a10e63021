"""Everything the SFT and GRPO recipes share: their script arguments, the datasets of each arm, the model, resume.

The recipes (recipes/sft.py, recipes/grpo.py) only parse, call `build_*_trainer` and `run_training`. Both arms read the
same split manifest and use the same instruction and answer format; only the galaxy's representation differs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .arguments import parse_config_args
from .arms import Arm, build_arm
from .budget import BudgetExhausted
from .callbacks import budget_callbacks, budget_stop, integrity_callbacks, user_callbacks
from .defaults import ensure_tiny_defaults
from .errors import UserError
from .integrity.lint import write_lint_record
from .io import check_writable
from .models import (
    add_code_tokens,
    check_image_size,
    check_init,
    codec_vectors,
    family_for,
    load_model_and_processor,
    tied_embeddings,
)
from .options import ArmArguments, BudgetArguments
from .rewards import get_reward_funcs
from .tokens import load_codec
from .tokens.render import check_fits, code_token_ids

logger = logging.getLogger(__name__)


@dataclass
class GalaxyScriptArguments(BudgetArguments, ArmArguments):
    """How the galaxies reach the model; parsed beside TRL's training config and `ModelConfig`. The arm and budget
    options are the evaluation's too (`astroreason.options`).

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

    code_token_init: Literal["mean", "codebook"] = field(
        default="mean",
        metadata={
            "help": "rendering special: how the added code tokens' embedding rows start: mean (the existing rows' "
            "mean plus small seeded noise) or codebook (each code's codec vector through a seeded random "
            "projection, so similar codes start close). Rows a model already holds are kept. See docs/models.md."
        },
    )

    def __post_init__(self):
        self.arm_settings()  # the arm's own checks: modality, codec, image size
        check_init(self.code_token_init)
        if self.alarm_no_signal_logs is not None and (
            isinstance(self.alarm_no_signal_logs, bool)
            or not isinstance(self.alarm_no_signal_logs, int)
            or self.alarm_no_signal_logs < 0
        ):
            raise UserError(f"alarm_no_signal_logs: expected a non-negative integer, got {self.alarm_no_signal_logs!r}")
        for name in ("max_dollars", "price_gpu_hour"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise UserError(f"{name}: expected a non-negative number, got {value!r}")
        self.lint_override()  # an override without a reason (or a reason without an override) is refused up front

    def lint_override(self):
        """The explicit prompt-lint override these arguments ask for, or None."""
        return self.arm_settings().lint_override()


def galaxy_dataset(
    args: GalaxyScriptArguments,
    split: str,
    *,
    with_completion: bool,
    max_samples: int | None = None,
    permute_labels_seed: int | None = None,
):
    """The conversational dataset of one split for one arm (`Arm.dataset`): `prompt`, `label`, `completion` (SFT
    targets, when asked) and the image arm's `image`; `permute_labels_seed` is the label-permutation control's."""
    return build_arm(args.arm_settings(), split, max_samples=max_samples).dataset(
        with_completion=with_completion, permute_labels_seed=permute_labels_seed
    )


def galaxy_rows(args: GalaxyScriptArguments, split: str, *, max_samples: int | None = None) -> list[dict]:
    """`galaxy_dataset`'s rows (prompt, label, image), built in memory (`Arm.rows`)."""
    return build_arm(args.arm_settings(), split, max_samples=max_samples).rows()


def lint_datasets(args: GalaxyScriptArguments, training_args, arms: list[tuple[Arm, object]]):
    """The prompt lint of the training (and evaluation) prompts before anything is trained: `CheckFailed` (exit 1)
    on a column the override does not allow; the main process records `prompt_lint.json` in `output_dir`. `arms`
    holds each (arm, its dataset)."""

    reports = [arm.lint(dataset["prompt"]) for arm, dataset in arms]
    if training_args.process_index == 0:
        report = reports[0]
        seen = {(f.kind, f.name) for f in report.overridden}
        report.overridden += [f for r in reports[1:] for f in r.overridden if (f.kind, f.name) not in seen]
        write_lint_record(
            training_args.output_dir, report, data_dir=args.data_dir, split=",".join(arm.split for arm, _ in arms)
        )
    return reports


def training_datasets(
    args: GalaxyScriptArguments, training_args, *, with_completion: bool, permute_labels_seed: int | None = None
):
    """The (train, evaluation or None) datasets of a recipe, each split's arm built once, and their prompts linted.

    The evaluation split is built only when the trainer evaluates (`eval_strategy` is not `no`)."""
    settings = args.arm_settings()
    train_arm = build_arm(settings, args.train_split, max_samples=args.max_train_samples)
    arms = [(train_arm, train_arm.dataset(with_completion=with_completion, permute_labels_seed=permute_labels_seed))]
    if training_args.eval_strategy != "no":
        eval_arm = build_arm(settings, args.eval_split, max_samples=args.max_eval_samples, manifest=train_arm.manifest)
        arms.append((eval_arm, eval_arm.dataset(with_completion=with_completion)))
    lint_datasets(args, training_args, arms)
    return arms[0][1], (arms[1][1] if len(arms) > 1 else None)


def _json_safe(values: dict) -> dict:
    import json

    return json.loads(json.dumps(values, default=str))


TOKENIZER_TOKEN_ARGS = ("eos_token", "pad_token", "bos_token")  # TRL config fields named *_token that are no secret


def training_args_record(training_args) -> dict:
    """The training arguments as `to_dict()` gives them (JSON-safe), with TRL's tokenizer tokens (`eos_token`,
    `pad_token`) restored: `to_dict()` masks every field named `*_token` as `<NAME>`, secrets (`hub_token`) and
    tokenizer tokens alike."""
    values = training_args.to_dict()
    for key in values:
        real = getattr(training_args, key, None)
        if key.endswith("_token") and (real is None or key in TOKENIZER_TOKEN_ARGS):
            values[key] = real
    return _json_safe(values)


def base_record(recipe: str, args: GalaxyScriptArguments, training_args, model_args) -> dict:
    """What a run started from and how it was trained, for `fingerprint.json` (`RunFingerprint` adds the hash of
    the base's weight files): enough for the audit's label-permutation control to rerun the recipe from the base
    with permuted labels. `recipe` is `sft` or `grpo`."""
    from dataclasses import asdict

    path = model_args.model_name_or_path
    lora = bool(getattr(model_args, "use_peft", False))
    peft = {k: v for k, v in asdict(model_args).items() if k.startswith("lora_") or k in ("use_rslora", "use_dora")}
    return {
        "model_name_or_path": path,
        "resolved_path": str(Path(path).resolve()) if path and Path(path).is_dir() else None,
        "lora": lora,
        "peft": _json_safe(peft) if lora else None,
        "recipe": {
            "kind": recipe,
            "script_args": _json_safe(asdict(args)),
            "training_args": training_args_record(training_args),
            "model_args": _json_safe(asdict(model_args)),
        },
    }


VLLM_MODES = ("colocate", "server")
VLLM_RANGE = (
    ">=0.30.0,<=0.31.0"  # pyproject's `vllm` extra: inside TRL 1.16's 0.22-0.31, 0.30+ for multimodal server mode
)


def check_vllm(training_args) -> None:
    """With `use_vllm`, refuse up front (one line) a vLLM that is missing or outside TRL's range, or a bad mode.

    TRL would otherwise fail deep inside the trainer after the model is loaded, or only warn on a version it does
    not support.
    """
    if not getattr(training_args, "use_vllm", False):
        return
    from importlib.metadata import PackageNotFoundError, version

    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    if training_args.vllm_mode not in VLLM_MODES:
        raise UserError(f"vllm_mode: expected one of {', '.join(VLLM_MODES)}, got {training_args.vllm_mode!r}")
    try:
        installed = version("vllm")
    except PackageNotFoundError:
        raise UserError(
            f"use_vllm: vLLM is not installed; install the extra (`pip install 'astroreason[vllm]'`, vllm{VLLM_RANGE}, "
            "needs a GPU) or pass --use_vllm false"
        ) from None
    if Version(Version(installed).base_version) not in SpecifierSet(VLLM_RANGE):
        raise UserError(
            f"use_vllm: vLLM {installed} is outside the supported range vllm{VLLM_RANGE} (pyproject's vllm extra)"
        )
    try:
        import vllm  # noqa: F401  (an installed but broken vLLM, e.g. on a CPU-only machine)
    except Exception as err:  # noqa: BLE001  any import failure is the same user-facing problem
        raise UserError(
            f"use_vllm: vLLM {installed} is installed but cannot be imported ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from None


def check_launch() -> None:
    """Refuse the one launch that silently trains on fewer processes than asked.

    `accelerate launch --cpu --num_processes N` (N > 1) starts a single process in accelerate 1.15 (its multi-CPU
    path needs an MPI hostfile); it sets MASTER_ADDR/MASTER_PORT for N processes but no WORLD_SIZE. That run would
    look like data-parallel training and be one process.
    """
    env = os.environ
    single = "WORLD_SIZE" not in env and not any(k in env for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"))
    if env.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_PORT" in env and single:
        raise UserError(
            "accelerate launch: --cpu with --num_processes > 1 starts only ONE process (accelerate needs an MPI "
            "hostfile for multi-CPU); for N CPU processes run `accelerate launch --multi_gpu --num_processes N ...` "
            "(no --cpu: on a machine without GPUs it runs N processes over gloo) or `--config_file "
            "recipes/accelerate/cpu.yaml`"
        )


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


def prepare_inputs(args: GalaxyScriptArguments, model_args) -> None:
    """Build the tiny defaults a run names but lacks (runs/tiny/*, see `astroreason.defaults`), then refuse an image
    size the model's family does not fit (read from its config, before any image is resized) and, for the special
    rendering, a codec whose vocabulary is too large to add one token per code."""

    ensure_tiny_defaults(
        args.data_dir, model_args.model_name_or_path, args.codec if args.modality == "tokens" else None
    )
    if args.modality == "image" and model_args.model_name_or_path:
        check_image_size(model_args.model_name_or_path, args.image_size)
    if args.modality == "tokens" and args.rendering == "special":  # a codec too large for one token per code
        check_fits(args.rendering, load_codec(args.codec).vocab_size)


def load_model(model_args, training_args):
    """The policy and its processor, from a local path or a Hub name; `trust_remote_code` (a field of TRL's
    SFTConfig/GRPOConfig) only when asked."""

    if not model_args.model_name_or_path:
        raise UserError("model_name_or_path: no model given (a local directory or a Hub name)")
    return load_model_and_processor(
        model_args.model_name_or_path,
        dtype=model_args.dtype,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
    )


def code_tokens_for(args: GalaxyScriptArguments, model, processor, *, seed: int, model_dir: str) -> list[int] | None:
    """With `rendering: special`, give the model one token per code id (the family's surgery, rows initialised as
    `code_token_init` says) and return their ids; None for any other rendering. Tokens already there (a checkpoint
    trained with special, rows warm-started elsewhere) are kept as they are. Refuses a codec that does not fit, and
    a tokenizer that still would not read each code as one token (one built for another codec)."""
    if args.modality != "tokens" or args.rendering != "special":
        return None
    codec = load_codec(args.codec)
    check_fits("special", codec.vocab_size)
    vectors = codec_vectors(codec) if args.code_token_init == "codebook" else None
    add_code_tokens(processor, model, codec.vocab_size, init=args.code_token_init, vectors=vectors, seed=seed)
    check_fits("special", codec.vocab_size, processor, model_dir=model_dir)
    return code_token_ids(processor, codec.vocab_size)


def peft_config(model_args, model=None, code_ids: list[int] | None = None):
    """TRL's LoRA config from `ModelConfig` (None without `use_peft`); with code tokens, their rows train and are
    saved in the adapter too (docs/models.md):

    - untied embeddings: peft's `trainable_token_indices` on the input embeddings (the family's
      `code_token_modules`), so only the code rows train and are saved, the old vocabulary stays frozen; cheaper
      than `modules_to_save`, which would train and save every row of the embedding and the head;
    - tied embeddings: peft's token wrapper would also wrap the tied LM head, whose `bias` TRL's fused LM head reads
      and the wrapper lacks, so the embedding goes to `modules_to_save` with `ensure_weight_tying` (the head follows).

    A user's own `lora_modules_to_save` naming the embeddings already trains and saves them, and is left as it is."""
    from trl import get_peft_config

    config = get_peft_config(model_args)
    if config is None or not code_ids:
        return config
    modules = family_for(model).code_token_modules(model, code_ids)
    if set(modules) & set(config.modules_to_save or []):
        return config
    if tied_embeddings(model):
        config.modules_to_save = [*(config.modules_to_save or []), *modules]
        config.ensure_weight_tying = True
    else:
        config.trainable_token_indices = modules
    return config


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


def run_training(trainer, args: GalaxyScriptArguments) -> None:
    """Train (resuming if asked), then save the final model and processor in `output_dir`."""
    output_dir = trainer.args.output_dir
    checkpoint = resume_point(args, output_dir)
    if checkpoint:
        step = int(Path(checkpoint).name.rsplit("-", 1)[1])
        trainer.accelerator.print(f"Resuming from {checkpoint} (global step {step})")
        if load_checkpoint_weights(trainer, checkpoint):
            trainer.accelerator.print(
                f"Weights loaded from {Path(checkpoint).name} with from_pretrained (the "
                "Trainer's own raw load may still report every key missing: it loads nothing)"
            )
    elif args.resume:
        trainer.accelerator.print(f"Nothing to resume in {output_dir}: starting from step 0")
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(output_dir)
    if trainer.accelerator.is_main_process and trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(output_dir)
    trainer.accelerator.print(
        f"Model saved to {output_dir} after {trainer.state.global_step} steps "
        f"({trainer.accelerator.num_processes} process{'es' if trainer.accelerator.num_processes > 1 else ''})"
    )
    if reason := budget_stop(trainer):
        step = trainer.state.global_step
        raise BudgetExhausted(
            f"budget: {reason}; training stopped at step {step} of {trainer.state.max_steps} with "
            f"checkpoint-{step} saved (raise --max_dollars and pass --resume true to continue)"
        )


def build_sft_trainer(
    args: GalaxyScriptArguments, training_args, model_args, *, permute_labels_seed: int | None = None
):
    from trl import SFTTrainer

    check_launch()
    check_output_dir(args, training_args.output_dir)
    callbacks, extra = budget_callbacks(args, training_args), user_callbacks(args)
    prepare_inputs(args, model_args)
    train, evaluation = training_datasets(
        args, training_args, with_completion=True, permute_labels_seed=permute_labels_seed
    )
    model, processor = load_model(model_args, training_args)
    code_ids = code_tokens_for(args, model, processor, seed=training_args.seed, model_dir=model_args.model_name_or_path)
    base = base_record("sft", args, training_args, model_args)
    return SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=processor,
        peft_config=peft_config(model_args, model, code_ids),
        callbacks=callbacks + integrity_callbacks(args, base=base) + extra,
    )


def build_grpo_trainer(
    args: GalaxyScriptArguments, training_args, model_args, *, permute_labels_seed: int | None = None
):
    from trl import GRPOTrainer

    check_launch()
    check_output_dir(args, training_args.output_dir)
    check_vllm(training_args)
    callbacks, extra = budget_callbacks(args, training_args), user_callbacks(args)
    prepare_inputs(args, model_args)
    train, evaluation = training_datasets(
        args, training_args, with_completion=False, permute_labels_seed=permute_labels_seed
    )
    model, processor = load_model(model_args, training_args)
    code_ids = code_tokens_for(args, model, processor, seed=training_args.seed, model_dir=model_args.model_name_or_path)
    base = base_record("grpo", args, training_args, model_args)
    return GRPOTrainer(
        model=model,
        reward_funcs=get_reward_funcs(args.reward_funcs),
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=processor,
        peft_config=peft_config(model_args, model, code_ids),
        callbacks=callbacks + integrity_callbacks(args, grpo=True, base=base) + extra,
    )

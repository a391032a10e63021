"""The SFT and GRPO trainers of a recipe, built from its arguments: the arm's datasets (linted), the model with its
code tokens and LoRA config, the callbacks; and the run loop that trains, saves and resumes."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..arms import Arm, build_arm
from ..budget import BudgetExhausted
from ..callbacks import budget_callbacks, budget_estimate, budget_stop, integrity_callbacks, user_callbacks
from ..data.splits import load_manifest
from ..defaults import ensure_tiny_defaults
from ..errors import UserError
from ..integrity.lint import write_lint_record
from ..models import (
    add_code_tokens,
    codec_vectors,
    family_for,
    load_model_and_processor,
    tied_embeddings,
)
from ..optim import use_part_options
from ..rewards import get_reward_funcs
from ..tokens import load_codec
from ..tokens.render import check_fits, code_token_ids
from ..zoom import with_zoom_columns
from .arguments import GalaxyScriptArguments
from .checkpoints import check_output_dir, load_checkpoint_weights, resume_point
from .launch import check_launch, check_vllm
from .memory import print_memory_plan
from .records import base_record
from .zoom import apply_turn_cap, zoom_parts, zoom_sft_parts


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
    return build_arm(args, split, max_samples=max_samples).dataset(
        with_completion=with_completion, permute_labels_seed=permute_labels_seed
    )


def galaxy_rows(args: GalaxyScriptArguments, split: str, *, max_samples: int | None = None) -> list[dict]:
    """`galaxy_dataset`'s rows (prompt, label, image), built in memory (`Arm.rows`)."""
    return build_arm(args, split, max_samples=max_samples).rows()


def lint_datasets(args: GalaxyScriptArguments, training_args, arms: list[tuple[Arm, object]]):
    """The prompt lint of the training (and evaluation) prompts before anything is trained: `CheckFailed` (exit 1)
    on a column the override does not allow; the main process records `prompt_lint.json` in `output_dir`. `arms`
    holds each (arm, its dataset)."""

    reports = [arm.lint(dataset["prompt"]) for arm, dataset in arms]
    if training_args.process_index == 0 and not args.estimate_only:  # an estimate writes nothing
        report = reports[0]
        seen = {(f.kind, f.name) for f in report.overridden}
        report.overridden += [f for r in reports[1:] for f in r.overridden if (f.kind, f.name) not in seen]
        write_lint_record(
            training_args.output_dir, report, data_dir=args.data_dir, split=",".join(arm.split for arm, _ in arms)
        )
    return reports


def training_datasets(
    args: GalaxyScriptArguments,
    training_args,
    *,
    with_completion: bool,
    permute_labels_seed: int | None = None,
    zoom: bool = False,
):
    """The (train, evaluation or None) datasets of a recipe, each split's arm built once, and their prompts linted.

    The evaluation split is built only when the trainer evaluates (`eval_strategy` is not `no`). With `zoom`, the
    datasets are made for zoom episodes (`zoom.with_zoom_columns`) before the lint reads their prompts."""
    train_arm = build_arm(args, args.train_split, max_samples=args.max_train_samples)
    arms = [(train_arm, train_arm.dataset(with_completion=with_completion, permute_labels_seed=permute_labels_seed))]
    if training_args.eval_strategy != "no":
        eval_arm = build_arm(args, args.eval_split, max_samples=args.max_eval_samples, manifest=train_arm.manifest)
        arms.append((eval_arm, eval_arm.dataset(with_completion=with_completion)))
    if zoom:
        arms = [(arm, with_zoom_columns(dataset, arm)) for arm, dataset in arms]
    lint_datasets(args, training_args, arms)
    return arms[0][1], (arms[1][1] if len(arms) > 1 else None)


def prepare_inputs(args: GalaxyScriptArguments, model_args) -> None:
    """Build the tiny defaults a run names but lacks (runs/tiny/*, see `astroreason.defaults`), then refuse an image
    size the model's family does not fit (read from its config, before any image is resized) and, for the special
    rendering, a codec whose vocabulary is too large to add one token per code."""

    arm = args.arm_class()
    ensure_tiny_defaults(args.data_dir, model_args.model_name_or_path, args.codec if arm.uses_codec else None)
    arm.check_model(args, model_args.model_name_or_path)


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


def code_tokens_for(
    args: GalaxyScriptArguments, model, processor, *, seed: int, model_dir: str, lora: bool = False
) -> list[int] | None:
    """With `rendering: special`, give the model one token per code id (the family's surgery, rows initialised as
    `code_token_init` says) and return their ids; None for any other rendering. Tokens already there (a checkpoint
    trained with special, rows warm-started elsewhere) are kept as they are. Refuses a codec that does not fit, and
    a tokenizer that still would not read each code as one token (one built for another codec). With `lora` and
    `freeze_code_rows`, the rows stay out of the adapter, so they must be the base model's own."""
    if not args.arm_class().needs_code_tokens(args):
        return None
    codec = load_codec(args.codec)
    check_fits("special", codec.vocab_size)
    vectors = codec_vectors(codec) if args.code_token_init == "codebook" else None
    added = add_code_tokens(processor, model, codec.vocab_size, init=args.code_token_init, vectors=vectors, seed=seed)
    if added and lora and args.freeze_code_rows:
        raise UserError(
            f"freeze_code_rows: {model_dir} lacks the code tokens, and with use_peft frozen rows are not saved in "
            "the adapter; start from a model that holds them (models.save_with_code_tokens) or let them train"
        )
    check_fits("special", codec.vocab_size, processor, model_dir=model_dir)
    return code_token_ids(processor, codec.vocab_size)


def peft_config(model_args, model=None, code_ids: list[int] | None = None, *, freeze_code_rows: bool = False):
    """TRL's LoRA config from `ModelConfig` (None without `use_peft`); with code tokens, their rows train and are
    saved in the adapter too (docs/models.md):

    - untied embeddings: peft's `trainable_token_indices` on the input embeddings (the family's
      `code_token_modules`), so only the code rows train and are saved, the old vocabulary stays frozen; cheaper
      than `modules_to_save`, which would train and save every row of the embedding and the head;
    - tied embeddings: peft's token wrapper would also wrap the tied LM head, whose `bias` TRL's fused LM head reads
      and the wrapper lacks, so the embedding goes to `modules_to_save` with `ensure_weight_tying` (the head follows).

    A user's own `lora_modules_to_save` naming the embeddings already trains and saves them, and is left as it is.
    With `freeze_code_rows` the code rows stay out of the adapter: LoRA's base is frozen, so they keep their rows."""
    from trl import get_peft_config

    config = get_peft_config(model_args)
    if config is None or not code_ids or freeze_code_rows:
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


def run_training(trainer, args: GalaxyScriptArguments) -> None:
    """Train (resuming if asked), then save the final model and processor in `output_dir`.

    With `estimate_only`: first the memory plan per GPU (`MEMORY {json}`, `training.memory`), then only the pilot
    steps, neither charged nor saved; the estimate is printed (by the budget callback) and a run that would not fit
    the dollar cap is refused (`BudgetExhausted`, exit 1)."""
    output_dir = trainer.args.output_dir
    if args.estimate_only:
        print_memory_plan(trainer, args)  # before the pilot: it is read even when the pilot runs out of memory
        estimate_training(trainer)
        release_processes(trainer.accelerator)
        return
    checkpoint = resume_point(args, output_dir)
    finished = False
    if checkpoint:
        step = int(Path(checkpoint).name.rsplit("-", 1)[1])
        trainer.accelerator.print(f"Resuming from {checkpoint} (global step {step})")
        if load_checkpoint_weights(trainer, checkpoint):
            trainer.accelerator.print(
                f"Weights loaded from {Path(checkpoint).name} with from_pretrained (the "
                "Trainer's own raw load may still report every key missing: it loads nothing)"
            )
            # The last step's checkpoint (a run killed before its final save): `Trainer.train` would train one step
            # more (its loop looks at max_steps only after a step), so its state is taken as it is.
            finished = 0 < trainer.args.max_steps <= step
    elif args.resume:
        trainer.accelerator.print(f"Nothing to resume in {output_dir}: starting from step 0")
    if finished:
        from transformers.trainer import TRAINER_STATE_NAME, TrainerState

        trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
    else:
        trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(output_dir)
    if trainer.accelerator.is_main_process and trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(output_dir)
    trainer.accelerator.print(
        f"Model saved to {output_dir} after {trainer.state.global_step} steps "
        f"({trainer.accelerator.num_processes} process{'es' if trainer.accelerator.num_processes > 1 else ''})"
    )
    release_processes(trainer.accelerator)
    if reason := budget_stop(trainer):
        step = trainer.state.global_step
        raise BudgetExhausted(
            f"budget: {reason}; training stopped at step {step} of {trainer.state.max_steps} with "
            f"checkpoint-{step} saved (raise --max_dollars and pass --resume true to continue)"
        )


def release_processes(accelerator) -> None:
    """Once every process is done, destroy the process group while the interpreter is still whole. Left to the
    interpreter's exit, Gloo's worker threads can still hold finished work whose tensors are freed after Python is
    gone, and a process that trained and saved aborts (SIGABRT) at exit. The barrier first, so that no process tears
    its group down while another is still in a collective."""
    if accelerator.num_processes > 1:
        accelerator.wait_for_everyone()
        accelerator.end_training()


def estimate_training(trainer, *, refuse_over_cap: bool = True) -> dict:
    """The pilot of `estimate_only`: a few steps, then the budget callback's estimate; nothing saved or charged.
    `refuse_over_cap=False` leaves the verdict to the caller (`astroreason noise` prices several runs)."""
    try:
        trainer.train()
    finally:
        shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
    estimate = budget_estimate(trainer)
    if refuse_over_cap and trainer.accelerator.is_main_process and estimate and not estimate["fits"]:
        left = estimate["cap_left_dollars"]
        raise BudgetExhausted(
            f"budget: the estimate for the whole run (${estimate['estimated_total_dollars']:.6g}, "
            f"{estimate['max_steps']} steps) exceeds what the dollar cap has left (${left:.6g}); nothing was "
            "charged or saved"
        )
    return estimate


def _trainer_parts(
    recipe: str, args: GalaxyScriptArguments, training_args, model_args, *, permute_labels_seed: int | None
) -> dict:
    """What both trainers are built from, in the order that refuses early: launch and `output_dir` checks, then the
    tiny defaults and the size checks, the linted datasets, and only then the model (with its code tokens)."""
    check_launch()
    check_output_dir(args, training_args.output_dir)
    if recipe == "grpo":
        check_vllm(training_args)
    callbacks, extra = budget_callbacks(args, training_args), user_callbacks(args)
    if args.estimate_only:  # the Trainer makes its output_dir: an estimate's pilot gets a scratch one, removed after
        training_args.output_dir = tempfile.mkdtemp(prefix="astroreason-estimate-")
    prepare_inputs(args, model_args)
    train, evaluation = training_datasets(
        args,
        training_args,
        with_completion=recipe == "sft",
        permute_labels_seed=permute_labels_seed,
        zoom=args.zoom,
    )
    model, processor = load_model(model_args, training_args)
    lora = bool(getattr(model_args, "use_peft", False))
    code_ids = code_tokens_for(
        args, model, processor, seed=training_args.seed, model_dir=model_args.model_name_or_path, lora=lora
    )
    base = base_record(recipe, args, training_args, model_args)
    parts = dict(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=processor,
        peft_config=peft_config(model_args, model, code_ids, freeze_code_rows=args.freeze_code_rows),
        # An estimate's pilot keeps nothing, so it has no fingerprint or alarms to record.
        callbacks=callbacks
        + ([] if args.estimate_only else integrity_callbacks(args, grpo=recipe == "grpo", base=base))
        + extra,
    )
    return parts, code_ids


def with_part_options(trainer, args: GalaxyScriptArguments, model_args, code_ids: list[int] | None):
    """The built trainer with the recipe's part options applied (`optim.use_part_options`): frozen parts, code
    rows held fixed, a learning rate per part. Without any, the trainer is left as TRL built it."""
    use_part_options(trainer, args, code_ids, lora=bool(getattr(model_args, "use_peft", False)))
    return trainer


def build_sft_trainer(
    args: GalaxyScriptArguments, training_args, model_args, *, permute_labels_seed: int | None = None
):
    """TRL's `SFTTrainer` for a recipe: the arm's prompts with their answers as completions; with `zoom`, the warm
    start's zoom trajectories (`training.zoom.zoom_sft_parts`)."""
    from trl import SFTTrainer

    parts, code_ids = _trainer_parts("sft", args, training_args, model_args, permute_labels_seed=permute_labels_seed)
    if args.zoom:
        datasets = {name: parts.pop(name) for name in ("train_dataset", "eval_dataset")}
        parts.update(zoom_sft_parts(args, training_args, parts["model"], parts["processing_class"], datasets))
    return with_part_options(SFTTrainer(**parts), args, model_args, code_ids)


def build_grpo_trainer(
    args: GalaxyScriptArguments,
    training_args,
    model_args,
    *,
    permute_labels_seed: int | None = None,
    reward_funcs: list | None = None,
):
    """TRL's `GRPOTrainer` for a recipe: the arm's prompts, scored by `reward_funcs`; with `zoom`, multi-turn
    episodes with the zoom tool (`training.zoom`). `reward_funcs` (callables) replaces the recipe's named ones: the
    audit's random-reward control passes its own."""
    from trl import GRPOTrainer

    if args.zoom:
        apply_turn_cap(args, training_args)
    parts, code_ids = _trainer_parts("grpo", args, training_args, model_args, permute_labels_seed=permute_labels_seed)
    classes = load_manifest(args.data_dir).classes  # the rewards score answers against the split's class names
    reward_funcs = get_reward_funcs(args.reward_funcs, classes) if reward_funcs is None else list(reward_funcs)
    if args.zoom:
        zoom = zoom_parts(
            args,
            training_args,
            parts["model"],
            parts["processing_class"],
            reward_funcs,
            parts["train_dataset"],
            classes=classes,
        )
        trainer = GRPOTrainer(**zoom, **parts)
    else:
        trainer = GRPOTrainer(reward_funcs=reward_funcs, **parts)
    return with_part_options(trainer, args, model_args, code_ids)

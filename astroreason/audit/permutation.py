"""The label-permutation control's start and its training: rerun the run's recipe from its base on permuted labels.

A model trained on permuted labels has no way to learn which galaxy is which class, so on the true test labels it can
only reach about the majority-class rate, unless the labels reach it by another route: a base model that already
saw them, test galaxies in its training data, an evaluation that leaks them. The control must therefore start from
where the run started, never from the trained checkpoint (which knows the labels by design: every honest run
would fail).

Where a run started is read from the `base` record of its `fingerprint.json` (`astroreason.training.base_record`).
When the base is itself a run of this project trained on the same split (the demo's GRPO starts from its SFT
output), the chain is followed back to its root: the first model that is not a run trained on this split's labels.
The stage trained from that root is the chain's first labelled stage; the control reruns *its* recipe (kind, script,
training and model arguments), from the root, with the training labels permuted, for at most a given number of its
steps. For the demo's SFT -> GRPO chain that is an SFT on permuted labels: the labels enter the chain first through
the SFT targets, and an SFT on permuted targets is the most direct way to give a model every chance to learn from
them. A chain whose first labelled stage is GRPO is controlled with GRPO (the accuracy reward reads the permuted
labels). A LoRA stage is rerun with a fresh adapter on the base.

The control is refused (a `skip` with the reason, never a `fail`) when the run's records cannot say where it
started: no fingerprint, a fingerprint written before the base was recorded, a chain that cannot be followed, or a
base whose weight files no longer hash to the recorded hash.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..data.splits import load_manifest
from ..errors import UserError
from ..integrity.fingerprint import base_weights_sha256, read_fingerprint
from ..training import GalaxyScriptArguments, build_grpo_trainer, build_sft_trainer

# Training arguments of the recorded recipe that the control sets itself: where it writes, what it logs, what it
# saves, how it is launched. `generation_batch_size` is derived by GRPOConfig from the batch and
# `steps_per_generation` (both recorded), and refused when given together with them.
CONTROL_OVERRIDES = dict(
    save_strategy="no",
    eval_strategy="no",
    report_to=[],
    push_to_hub=False,
    hub_token=None,
    disable_tqdm=True,
    resume_from_checkpoint=None,
    load_best_model_at_end=False,
    deepspeed=None,
    fsdp="",
    use_vllm=False,
)
DERIVED_ARGS = ("generation_batch_size",)


@dataclass
class ControlStart:
    """Where the control starts: the chain's root base and the first labelled stage's recorded recipe.

    Args:
        root: The root base model (path or Hub name), as the first labelled stage recorded it.
        stage: The run directory of the chain's first labelled stage (trained from `root`).
        record: That stage's `base` record (recipe, LoRA, weights hash).
        chain: The run directories from the audited model back to `stage`.
    """

    root: str
    stage: Path
    record: dict
    chain: list[Path] = field(default_factory=list)

    @property
    def recipe(self) -> dict:
        return self.record["recipe"]

    @property
    def model_path(self) -> str:
        """The root as a local directory where it is one (the recorded absolute path when the given one does not
        resolve from here), else as recorded (a Hub name)."""
        return str(_model_dir(self.root, self.record.get("resolved_path")) or self.root)

    def describe(self) -> str:
        names = " <- ".join(_short(p) for p in self.chain) + f" <- {_short(self.root)}"
        return (
            f"{names} (root {self.root}: the first model in the chain not recorded as trained on this split's labels)"
        )


def _short(path) -> str:
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else str(path)


def _model_dir(name: str, resolved: str | None) -> Path | None:
    for candidate in (name, resolved):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def _same_split(fingerprint: dict, data_dir: str) -> bool:
    """Whether a run was trained on the split of `data_dir` (same manifest content, or the same path). A run that
    does not say, or whose data cannot be read, counts as the same split: the chain is then followed further back,
    which can only take the control further from the labels."""

    recipe = (fingerprint.get("base") or {}).get("recipe") or {}
    theirs = (recipe.get("script_args") or {}).get("data_dir") or fingerprint.get("extra", {}).get("data_dir")
    if not theirs or Path(theirs).resolve() == Path(data_dir).resolve():
        return True
    try:
        return load_manifest(theirs).split_sha256 == load_manifest(data_dir).split_sha256
    except UserError:
        return True


def control_start(model: str, data_dir: str) -> ControlStart | str:
    """The control's start for the model of a run trained on `data_dir`'s split, or why there is none."""
    stage = Path(model) if model else None
    fingerprint = read_fingerprint(stage) if stage is not None and stage.is_dir() else None
    if fingerprint is None:
        return (
            f"{model or 'the run'}: no fingerprint.json, so where its training started is unknown (not a "
            "training run of astroreason's recipes)"
        )
    chain: list[Path] = []
    while True:
        base = fingerprint.get("base")
        if not base or not base.get("recipe"):
            return (
                f"{stage}/fingerprint.json has no base record (a run recorded before the recipes recorded their "
                "base model): the control cannot retrain from where the run started"
            )
        chain.append(stage)
        parent = _model_dir(base["model_name_or_path"], base.get("resolved_path"))
        parent_fp = read_fingerprint(parent) if parent is not None else None
        if parent_fp is None or not _same_split(parent_fp, data_dir):
            return ControlStart(base["model_name_or_path"], stage, base, chain)
        if parent.resolve() in {p.resolve() for p in chain}:
            return f"{parent}: the base chain of {model} loops back on itself"
        stage, fingerprint = parent, parent_fp


def check_base(start: ControlStart) -> str | None:
    """Why the root base cannot be used (missing, changed since the run, no hash recorded), or None."""
    recorded = start.record.get("weights_sha256")
    if not recorded:
        return (
            f"{start.stage}/fingerprint.json records no hash of its base {start.root}'s weights: the control "
            "cannot check it starts from the same base"
        )
    root = _model_dir(start.root, start.record.get("resolved_path")) or start.root
    current = base_weights_sha256(str(root))
    if current is None:
        return f"base model {start.root} not found (or it holds no weight files): nothing to retrain from"
    if current != recorded:
        return (
            f"base model {start.root} changed since {start.stage} was trained from it (its weights hash "
            f"{current[:12]} is not the recorded {recorded[:12]}): the control would not start where the run did"
        )
    return None


def _config(cls, recorded: dict, **overrides):
    """`cls` (a config dataclass) from a recorded `to_dict()`/`asdict()`, with `overrides`; fields `cls` does not
    have are left out (SFTConfig has no `use_vllm`), and so are secrets `to_dict()` masked (`hub_token`)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values = {
        k: v
        for k, v in {**recorded, **overrides}.items()
        if k in names and k not in DERIVED_ARGS and v != f"<{k.upper()}>"
    }  # a masked secret is not a value
    return cls(**values)


def control_steps(start: ControlStart, max_steps: int) -> tuple[int, int | None]:
    """(steps the control trains, steps the recorded recipe trained, None when it set epochs instead)."""
    recorded = start.recipe["training_args"].get("max_steps")
    recorded = int(recorded) if recorded is not None and int(recorded) > 0 else None
    return (min(max_steps, recorded) if recorded else max_steps), recorded


def control_trainer(start: ControlStart, output_dir: str, *, steps: int, seed: int = 0):
    """The first labelled stage's trainer, rebuilt by the recipe's own builder from the root base (a fresh LoRA
    adapter when the stage used LoRA) with the training labels permuted, for `steps` steps (`rerun_trainer`)."""
    return rerun_trainer(start, output_dir, steps=steps, permute_labels_seed=seed)


def rerun_trainer(start: ControlStart, output_dir: str, *, steps: int, script_overrides=None, **build_kwargs):
    """The recorded recipe of `start.stage`, rebuilt by its own builder from `start.root` (a fresh LoRA adapter when
    the stage used LoRA) for `steps` steps, with the builder's keywords `build_kwargs` (`permute_labels_seed`,
    `reward_funcs`) and script arguments changed by `script_overrides`. Nothing is charged to the spend ledger (the
    audit is not the experiment) and nothing is printed on stdout."""
    import torch
    from transformers import PrinterCallback
    from trl import GRPOConfig, ModelConfig, SFTConfig

    recipe = start.recipe
    grpo = recipe["kind"] == "grpo"
    script_args = _config(
        GalaxyScriptArguments,
        recipe["script_args"],
        resume=False,
        max_dollars=None,
        ledger=None,
        pilot_steps=0,
        estimate_only=False,
        callbacks=[],
        **(script_overrides or {}),
    )  # no pilot, no ledger: nothing charged; the user's own callbacks belong to the experiment, not its control
    model_args = _config(ModelConfig, recipe["model_args"], model_name_or_path=start.model_path)
    use_cpu = bool(recipe["training_args"].get("use_cpu")) or not torch.cuda.is_available()
    device = dict(use_cpu=True, bf16=False, fp16=False) if use_cpu else {}
    training_args = _config(
        GRPOConfig if grpo else SFTConfig,
        recipe["training_args"],
        output_dir=output_dir,
        logging_dir=output_dir,
        max_steps=steps,
        **CONTROL_OVERRIDES,
        **device,
    )
    build = build_grpo_trainer if grpo else build_sft_trainer
    trainer = build(script_args, training_args, model_args, **build_kwargs)
    trainer.remove_callback(PrinterCallback)  # its log lines on stdout would break `astroreason audit --json`
    return trainer


def train_on_permuted_labels(start: ControlStart, *, steps: int, seed: int = 0):
    """Train `control_trainer` in a temporary directory (nothing is saved); returns the model and its processor."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = control_trainer(start, tmp, steps=steps, seed=seed)
        trainer.train()
        return trainer.accelerator.unwrap_model(trainer.model), trainer.processing_class

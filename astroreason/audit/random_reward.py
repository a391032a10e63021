"""The random-reward control of a GRPO run: rerun its GRPO stage with the labels taken out of the rewards.

GRPO with random rewards raised Qwen2.5-Math-7B by 21 points on MATH-500 ("Spurious Rewards", arXiv 2506.10947:
through the clipping term, which sharpens what the model already prefers; not on Llama or OLMo). A GRPO gain is
therefore evidence that the rewards taught the model only beside a rerun whose rewards carry no label, at the same
steps from the same start. The control reruns the run's own GRPO stage, from its own recorded start (its `base`
record: the demo's GRPO starts from its SFT checkpoint; not the chain root of the label-permutation control, which
asks another question) with its recorded recipe, every label-reading reward (`rewards.LABEL_REWARDS`: `accuracy`,
`partial`, `zoom_bonus`) replaced by a seeded `rewards.random_reward` of the mean the run logged for it (its
`training_log.json`, `integrity.history`). The other rewards (`format`, `zoom_cost`, a user's reward that does not
take the label) stay as they are.

The control is refused (a `skip` with the reason, never a `fail`) for a run that is not a GRPO run of the recipes, a
run whose records cannot say where it started or what it logged, a start whose weights changed since, and a user's
reward that takes the label (its values are unknown, so no random reward of the same distribution can stand in).
"""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path

from ..arms import ArmSettings
from ..data.splits import load_manifest
from ..errors import UserError
from ..integrity.fingerprint import read_fingerprint
from ..integrity.history import TRAINING_LOG_FILE, logged_mean, read_training_log
from ..rewards import LABEL_REWARDS, REWARD_FUNCS, get_reward_funcs, random_reward
from .permutation import ControlStart, rerun_trainer

DEFAULT_RANDOM_REWARD_STEPS = 500  # cap on the rerun's steps (it reruns the run's own steps, at most this many)
DEFAULT_RANDOM_REWARD_SAMPLES = 512  # galaxies the three models are scored on: a paired test needs n


def grpo_start(model: str) -> ControlStart | str:
    """The run's own start (its `base` record) when the model is a GRPO run of the recipes, or why not."""
    run = Path(model) if model else None
    fingerprint = read_fingerprint(run) if run is not None and run.is_dir() else None
    if fingerprint is None:
        return f"{model or 'the run'}: no fingerprint.json, so it is no training run of the recipes (nothing to rerun)"
    base = fingerprint.get("base")
    if not base or not base.get("recipe"):
        return (
            f"{run}/fingerprint.json has no base record (a run recorded before the recipes recorded their base "
            "model): the control cannot rerun from where the run started"
        )
    if base["recipe"].get("kind") != "grpo":
        return f"{run} is a {base['recipe'].get('kind')} run, not a GRPO run: the random-reward control is GRPO's"
    return ControlStart(base["model_name_or_path"], run, base, [run])


def reward_names(script_args: dict) -> list[str]:
    """The run's reward functions by name, as `GalaxyScriptArguments.reward_funcs` recorded them (a list or one
    comma-separated string); a zoom run with a `zoom_bonus` also had `zoom_cost` then `zoom_bonus`
    (`training.zoom.zoom_parts`), named here in that order so that `reward_weights` still line up."""
    names = script_args.get("reward_funcs") or []
    names = [n.strip() for n in names.split(",") if n.strip()] if isinstance(names, str) else list(names)
    if script_args.get("zoom") and float(script_args.get("zoom_bonus") or 0) > 0:
        names += [n for n in ("zoom_cost", "zoom_bonus") if n not in names]
    return names


def random_rewards(start: ControlStart, log: dict, *, seed: int = 0) -> tuple[list, dict, dict] | str:
    """(the rerun's reward functions, its script-argument overrides, what was replaced: name -> {mean, high,
    random}) for the run at `start`, whose training log is `log`; or why the rewards cannot be replaced."""
    script = start.recipe["script_args"]
    names = reward_names(script)
    try:  # the rewards kept as they are score answers against the run's class names, as in the run
        classes = load_manifest(script.get("data_dir") or ArmSettings.data_dir).classes
        funcs = get_reward_funcs(names, classes)
    except UserError as err:
        return f"the run's rewards cannot be rebuilt here: {err}"
    out, replaced = [], {}
    for i, (name, func) in enumerate(zip(names, funcs)):
        high = float(script.get("zoom_bonus") or 0) if name == "zoom_bonus" else 1.0
        if name not in LABEL_REWARDS or high <= 0:  # a zoom_bonus of 0 pays nothing, whatever the label
            if name not in REWARD_FUNCS and "label" in inspect.signature(func).parameters:
                return (
                    f"reward {name} takes the label, and its values are unknown: no random reward of the same "
                    "distribution can stand in for it"
                )
            out.append(func)
            continue
        key = f"rewards/{func.__name__}/mean"
        mean = logged_mean(log, key)
        if mean is None:
            return f"{start.stage}: its training log holds no {key}: the mean to match is unknown"
        out.append(random_reward(mean, seed=[seed, i], high=high, name=f"random_{name}"))
        replaced[name] = {"mean": mean, "high": high, "random": f"random_{name}"}
    # A zoom run's zoom_bonus is in the list: keep `zoom_parts` from adding the real one (it reads the label).
    overrides = {"zoom_bonus": 0.0} if "zoom_bonus" in replaced else {}
    return out, overrides, replaced


def run_log(start: ControlStart) -> dict | str:
    """The run's training log (`integrity.history.read_training_log`), or why there is none."""
    log = read_training_log(start.stage)
    if log is None:
        return (
            f"{start.stage}: no {TRAINING_LOG_FILE} or trainer_state.json, so the means its rewards logged are unknown "
            "(a run recorded before the recipes kept their training log)"
        )
    return log


def rerun_steps(start: ControlStart, log: dict, cap: int) -> tuple[int, int | None]:
    """(steps the rerun trains, steps the run trained): the run's own steps as its log says (a run stopped early
    trained fewer than its `max_steps`), else its recorded `max_steps`; at most `cap`."""
    trained = log.get("global_step") or start.recipe["training_args"].get("max_steps")
    trained = int(trained) if trained is not None and int(trained) > 0 else None
    return (min(cap, trained) if trained else cap), trained


def train_with_random_rewards(start: ControlStart, funcs: list, overrides: dict, *, steps: int):
    """The run's GRPO stage rerun from its start with `funcs` for `steps` steps in a temporary directory (nothing is
    saved or charged); returns the model and its processor."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = rerun_trainer(start, tmp, steps=steps, script_overrides=overrides, reward_funcs=funcs)
        trainer.train()
        return trainer.accelerator.unwrap_model(trainer.model), trainer.processing_class

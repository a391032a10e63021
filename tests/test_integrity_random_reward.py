"""The random-reward control of a GRPO run: rerun its GRPO stage from its own start with every label-reading reward
replaced by a seeded random reward of the mean the run logged, and the run's gain must beat the rerun's.

Real runs on the tiny offline Qwen2.5-VL and the GalSim surrogate, through the recipes' builders: a short SFT that
teaches the answer format (the start), then a planted GRPO run from it whose rewards say nothing about the galaxy
(`format`, plus a fair coin, `coin_reward.coin_reward`; `accuracy` is logged at weight 0, so the control has a
label-reading reward to replace). The control fails it. An SFT run, a run whose start changed, a run without a
training log and a user's reward that takes the label are skipped with the reason.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from cli_helpers import cli

from astroreason.audit.permutation import ControlStart
from astroreason.audit.probes import RunSpec, probe_random_reward
from astroreason.audit.random_reward import grpo_start, random_rewards, rerun_steps, run_log
from astroreason.data.splits import load_manifest, load_split
from astroreason.integrity.fingerprint import FINGERPRINT_FILE
from astroreason.integrity.history import TRAINING_LOG_FILE, logged_mean
from astroreason.rewards import random_reward

SFT_STEPS = 60
GRPO_STEPS = 6
REWARDS = ["format", "accuracy", "coin_reward.coin_reward"]


def script(prepared_dir, **kwargs):
    from astroreason.training import GalaxyScriptArguments

    return GalaxyScriptArguments(data_dir=str(prepared_dir), image_size=56, max_train_samples=64, **kwargs)


@pytest.fixture(scope="module")
def start(prepared_dir, tiny_model_dir, tmp_path_factory):
    """A short SFT from the tiny model: it learns to answer in the format, so the GRPO run's answers parse."""
    from trl import ModelConfig, SFTConfig

    from astroreason.training import build_sft_trainer, run_training

    out = tmp_path_factory.mktemp("rr") / "sft"
    args = SFTConfig(
        output_dir=str(out),
        max_steps=SFT_STEPS,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        max_length=None,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    args_ = script(prepared_dir)
    run_training(build_sft_trainer(args_, args, ModelConfig(str(tiny_model_dir), dtype="float32")), args_)
    return out


@pytest.fixture(scope="module")
def planted(prepared_dir, start):
    """GRPO from the SFT start on rewards that carry no label: the format and a coin (`accuracy` logged, weight 0)."""
    from trl import GRPOConfig, ModelConfig

    from astroreason.training import build_grpo_trainer, run_training

    out = start.parent / "grpo"
    args = GRPOConfig(
        output_dir=str(out),
        max_steps=GRPO_STEPS,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=24,
        temperature=1.0,
        beta=0.0,
        learning_rate=2e-4,
        lr_scheduler_type="constant",
        reward_weights=[1.0, 0.0, 1.0],
        logging_steps=1,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        report_to="none",
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    args_ = script(prepared_dir, reward_funcs=REWARDS)
    run_training(build_grpo_trainer(args_, args, ModelConfig(str(start), dtype="float32")), args_)
    return out


def spec_of(prepared_dir, model) -> RunSpec:
    return RunSpec(model=str(model), data_dir=str(prepared_dir), image_size=56)


def test_random_reward_is_seeded_and_has_its_mean():
    completions = ["x"] * 20_000
    a, b = random_reward(0.3, seed=7), random_reward(0.3, seed=7)
    first = a(completions)
    assert first == b(completions) and set(first) == {0.0, 1.0}  # same seed, same values; a 0/1 reward
    assert first != random_reward(0.3, seed=8)(completions)
    assert abs(np.mean(first) - 0.3) < 0.02 and a.__name__ == "random_reward"
    assert a(completions[:5]) == b(completions[:5])  # the generators advance together, call after call
    bonus = random_reward(0.05, seed=0, high=0.2, name="random_zoom_bonus")(completions)
    assert set(bonus) == {0.0, 0.2} and abs(np.mean(bonus) - 0.05) < 0.01
    assert set(random_reward(1.0000001, seed=0)(completions[:50])) == {1.0}  # a rounding error above 1 is 1
    with pytest.raises(ValueError, match="high"):
        random_reward(0.5, seed=0, high=0)


def test_the_run_records_its_log_and_the_control_replaces_the_label_rewards(planted):
    log = json.loads((planted / TRAINING_LOG_FILE).read_text())
    assert log["global_step"] == log["max_steps"] == GRPO_STEPS
    assert len([r for r in log["log_history"] if "rewards/accuracy_reward/mean" in r]) == GRPO_STEPS
    recorded = logged_mean(log, "rewards/accuracy_reward/mean")
    assert recorded is not None and 0.0 <= recorded <= 1.0

    start = grpo_start(str(planted))
    assert isinstance(start, ControlStart) and start.stage == planted and start.chain == [planted]
    assert rerun_steps(start, run_log(start), 500) == (GRPO_STEPS, GRPO_STEPS)
    assert rerun_steps(start, run_log(start), 4) == (4, GRPO_STEPS)
    funcs, overrides, replaced = random_rewards(start, run_log(start), seed=0)
    assert [f.__name__ for f in funcs] == ["format_reward", "random_accuracy", "coin_reward"] and overrides == {}
    assert replaced == {"accuracy": {"mean": recorded, "high": 1.0, "random": "random_accuracy"}}
    draws = funcs[1](["x"] * 20_000)  # Bernoulli(the run's logged mean), seeded
    assert abs(np.mean(draws) - recorded) < 0.02
    assert draws == random_rewards(start, run_log(start), seed=0)[0][1](["x"] * 20_000)


def test_a_grpo_run_on_random_rewards_fails_the_control(planted, prepared_dir, capsys):
    status, out, _ = cli(capsys, "audit", planted, "--json", "--max-samples", 8, "--permutation-steps", 1)
    probes = {p["name"]: p for p in json.loads(out)["probes"]}
    control = probes["random_reward"]
    print(control["summary"])
    assert status == 1 and control["status"] == "fail", control
    details = control["details"]
    assert details["start"] == str(planted.parent / "sft") and details["steps"] == GRPO_STEPS
    assert details["rewards"] == ["format_reward", "random_accuracy", "coin_reward"]
    test_rows = len(load_manifest(prepared_dir).rows["test"])
    assert details["n"] == details["comparison"]["n"] == test_rows  # the whole split (under the 512 cap)
    assert details["rates"]["start"]["parsed"] > 0.5  # the start answers: the gains are about answers, not format
    assert not (details["comparison"]["mcnemar_p_value"] < 0.05 and details["gains"]["run"]["gain_points"] > 0)
    assert "points (run) vs" in control["summary"] and "McNemar p=" in control["summary"]
    assert "not larger than random rewards give" in control["summary"]


def test_an_sft_run_is_skipped(start, prepared_dir):
    result = probe_random_reward(spec_of(prepared_dir, start))
    assert result.status == "skip" and "is a sft run, not a GRPO run" in result.summary


def test_a_run_whose_start_changed_is_skipped(planted, prepared_dir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    moved = tmp_path / "moved_start"
    shutil.copytree(planted.parent / "sft", moved)
    run = tmp_path / "run"
    shutil.copytree(planted, run)
    record = json.loads((run / FINGERPRINT_FILE).read_text())
    record["base"].update(model_name_or_path=str(moved), resolved_path=str(moved))
    (run / FINGERPRINT_FILE).write_text(json.dumps(record))
    weights = load_file(moved / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + torch.ones_like(weights[name])
    save_file(weights, moved / "model.safetensors", metadata={"format": "pt"})
    result = probe_random_reward(spec_of(prepared_dir, run))
    assert result.status == "skip" and "changed since" in result.summary and result.details["start"] == str(moved)


def test_a_run_without_its_training_log_is_skipped(planted, prepared_dir, tmp_path):
    run = tmp_path / "old_run"
    shutil.copytree(planted, run)
    (run / TRAINING_LOG_FILE).unlink()
    result = probe_random_reward(spec_of(prepared_dir, run))
    assert result.status == "skip" and "the means its rewards logged are unknown" in result.summary


def test_a_user_reward_that_takes_the_label_is_not_replaced_blindly(planted):
    start = grpo_start(str(planted))
    start.record["recipe"]["script_args"]["reward_funcs"] = ["format", "coin_reward.labelled_reward"]
    reason = random_rewards(start, run_log(start))
    assert isinstance(reason, str) and "coin_reward.labelled_reward takes the label" in reason


def test_a_zoom_runs_rerun_replaces_its_zoom_bonus_and_is_scored_in_episodes(planted, prepared_dir, tmp_path):
    """A zoom run's rewards (the recipe's, then `zoom_cost` and `zoom_bonus`, added by `training.zoom.zoom_parts`):
    the rerun keeps `zoom_cost` and pays a random `zoom_bonus` x Bernoulli in place of the real one, in the same
    order; the three models are asked as zoom episodes with the run's tool."""
    from astroreason.audit.permutation import rerun_trainer
    from astroreason.audit.probes import _answers
    from astroreason.evaluation.backends import SamplingSettings, TransformersBackend
    from astroreason.evaluation.episodes import ZOOM_TURN_TOKENS

    start = grpo_start(str(planted))
    start.record["recipe"]["script_args"].update(
        reward_funcs=["format", "accuracy"], zoom=True, zoom_max_turns=1, zoom_bonus=0.3
    )
    start.record["recipe"]["training_args"]["reward_weights"] = None
    log = {"log_history": [{"rewards/accuracy_reward/mean": 0.25, "rewards/zoom_bonus_reward/mean": 0.06}]}
    funcs, overrides, replaced = random_rewards(start, log, seed=0)
    names = ["format_reward", "random_accuracy", "zoom_cost_reward", "random_zoom_bonus"]
    assert [f.__name__ for f in funcs] == names and overrides == {"zoom_bonus": 0.0}
    assert replaced["zoom_bonus"] == {"mean": 0.06, "high": 0.3, "random": "random_zoom_bonus"}
    bonus = funcs[3](["x"] * 20_000)
    assert set(bonus) == {0.0, 0.3} and abs(np.mean(bonus) - 0.06) < 0.01

    trainer = rerun_trainer(start, str(tmp_path / "rerun"), steps=1, script_overrides=overrides, reward_funcs=funcs)
    assert trainer.reward_func_names == names  # the real zoom_bonus (it reads the label) is not added back

    spec = RunSpec(model=str(planted), data_dir=str(prepared_dir), image_size=56, zoom=True, zoom_max_turns=1)
    backend = TransformersBackend.from_pretrained(
        str(planted), SamplingSettings(max_new_tokens=ZOOM_TURN_TOKENS), batch_size=16
    )
    predictions, labels = _answers(spec, backend, max_samples=4)
    assert len(predictions) == len(labels) == 4
    assert list(labels) == load_split(prepared_dir, "test")["label"][:4]  # the run's split, in its order

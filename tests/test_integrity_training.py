"""Training alarms and seed fingerprints, on real trainers: TRL's SFTTrainer with the tiny Qwen2.5-VL, and
`transformers.Trainer` with a tiny classifier; plus the alarm rules on log sequences (GRPO's keys)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import Dataset
from integrity_helpers import BINS, PromptNumberModel
from transformers import Trainer, TrainingArguments

from astroreason.cli import main as cli
from astroreason.integrity import SUSPECT_FILE
from astroreason.integrity.alarms import AlarmConfig, TrainingAlarms, pipeline_alarms
from astroreason.integrity.fingerprint import RunFingerprint, compare_fingerprints, read_fingerprint


def test_sft_on_a_trivial_task_raises_alarms(tiny_model_dir, tmp_path):
    """Every prompt has the same answer: TRL's logged loss falls toward zero and its entropy collapses."""
    from trl import SFTConfig, SFTTrainer

    from astroreason.data.galaxy10 import DECALS_CLASSES
    from astroreason.models import load_model_and_processor
    from astroreason.prompts import answer_text

    model, processor = load_model_and_processor(tiny_model_dir)
    rows = {
        "prompt": [[{"role": "user", "content": f"Galaxy {i}."}] for i in range(32)],
        "completion": [[{"role": "assistant", "content": answer_text(2, DECALS_CLASSES)}]] * 32,
    }
    alarms, fingerprint = TrainingAlarms(), RunFingerprint(extra={"task": "trivial"})
    config = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=40,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        logging_steps=4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        max_length=None,
        gradient_checkpointing=False,
        disable_tqdm=True,
        lr_scheduler_type="constant",
        seed=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_dict(rows),
        processing_class=processor,
        callbacks=[alarms, fingerprint],
    )
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged[-1]["loss"] < 0.02 and "entropy" in logged[-1]  # real TRL logs, driven to zero
    rules = {a["rule"] for a in alarms.alarms}
    assert {"loss_near_zero", "entropy_collapse"} <= rules
    suspect = json.loads((tmp_path / SUSPECT_FILE).read_text())
    assert suspect["suspect"] and {r["rule"] for r in suspect["reasons"]} == rules
    record = read_fingerprint(tmp_path)
    assert record["weights_sha256"] and record["first_batch_sha256"] and record["n_forwards"] == 4


def feed(alarms: TrainingAlarms, key: str, values) -> list[str]:
    return [a["rule"] for i, v in enumerate(values) for a in alarms.check({key: v}, step=i + 1)]


def test_alarm_rules_on_log_sequences():
    # GRPO: every group's rewards become identical after having varied.
    assert feed(TrainingAlarms(), "frac_reward_zero_std", [0.2, 0.3, 0.1, 0.96, 1.0, 1.0, 1.0]) == [
        "reward_variance_collapse"
    ]
    # An untrained policy that never varied (all completions wrong from the start) is not a collapse; after
    # `no_signal_logs` (10) such logs it is a run that cannot learn (tests/test_grpo_learning.py).
    assert feed(TrainingAlarms(), "frac_reward_zero_std", [1.0] * 10) == ["no_reward_signal"]
    assert feed(TrainingAlarms(AlarmConfig(no_signal_logs=0)), "frac_reward_zero_std", [1.0] * 10) == []
    assert feed(TrainingAlarms(), "rewards/accuracy_reward/mean", [0.1, 0.12, 0.15, 0.14, 0.16, 0.9]) == ["jump"]
    assert feed(TrainingAlarms(), "entropy", [1.2, 1.1, 0.9, 0.08]) == ["entropy_collapse"]
    assert feed(TrainingAlarms(), "loss", [2.3, 2.0, 1.9, 1.8, 0.2]) == ["loss_abrupt_fall"]
    # A healthy run: slow, partial progress raises nothing; each rule fires once.
    healthy = TrainingAlarms()
    for i in range(30):
        fired = healthy.check(
            {"loss": 2.3 - 0.03 * i, "reward": 0.15 + 0.01 * i, "entropy": 1.5 - 0.02 * i, "frac_reward_zero_std": 0.3},
            step=i,
        )
        assert fired == []
    repeated = TrainingAlarms()
    assert feed(repeated, "loss", [0.01, 0.005, 0.001]) == ["loss_near_zero"]
    # GRPO's loss is a policy-gradient surrogate, exactly 0 when a group's rewards are all equal (an untrained
    # policy, as TRL 1.16 logs it): no loss alarm in a log that carries rewards, nor with the loss rules off.
    grpo_log = {"loss": 0.0, "reward": 0.0, "reward_std": 0.0, "frac_reward_zero_std": 1.0, "entropy": 6.4}
    assert TrainingAlarms().check(grpo_log, step=1) == []
    assert feed(TrainingAlarms(AlarmConfig(watch_loss=False)), "loss", [0.0, 0.0]) == []


def reward_log(**rewards) -> dict:
    """A GRPO log of per-reward (mean, std), as TRL 1.16 names them: `rewards/<func name>/mean` and `/std`."""
    return {f"rewards/{n}/{k}": v for n, (mean, std) in rewards.items() for k, v in (("mean", mean), ("std", std))}


def constant_alarms(alarms: TrainingAlarms, logs: list[dict], completions=80) -> list[tuple[int, str, str]]:
    return [
        (a["step"], a["key"], a["reason"])
        for i, log in enumerate(logs)
        for a in alarms.check(log, step=i + 1, completions=completions)
        if a["rule"] == "constant_reward"
    ]


def test_constant_reward_alarm_on_log_sequences():
    """One reward function that gives every completion the same value for `constant_reward_logs` logs (default 10):
    its own alarm, naming the reward and the completions it scored, once per reward function."""
    # The accuracy reward 0 on everything, the format reward varying a little: frac_reward_zero_std stays < 1.
    logs = [
        {**reward_log(accuracy_reward=(0.0, 0.0), format_reward=(0.01 * (i % 3), 0.05)), "frac_reward_zero_std": 0.8}
        for i in range(12)
    ]
    alarms = TrainingAlarms()
    assert constant_alarms(alarms, logs, completions=120) == [
        (
            10,
            "rewards/accuracy_reward/mean",
            "step 10: accuracy reward was 0 on all 1,200 completions (10 logs in a row): no right answer to learn from",
        )
    ]
    assert all(a["rule"] != "no_reward_signal" for i, log in enumerate(logs) for a in TrainingAlarms().check(log, i))
    # Every answer right: its own wording; any other value: the generic one. Each reward function fires once.
    ones = [reward_log(accuracy_reward=(1.0, 0.0), format_reward=(0.5, 0.0))] * 13
    fired = constant_alarms(TrainingAlarms(), ones, completions=8)
    assert [(step, key) for step, key, _ in fired] == [
        (10, "rewards/accuracy_reward/mean"),
        (10, "rewards/format_reward/mean"),
    ]
    assert fired[0][2].endswith(
        "accuracy reward was 1 on all 80 completions (10 logs in a row): every answer already "
        "right, nothing left to learn"
    )
    assert "format reward was 0.5 on all 80 completions" in fired[1][2] and "right" not in fired[1][2]
    # Without a count (a bare check), the reason says every completion.
    assert "0 on every completion (10 logs" in constant_alarms(TrainingAlarms(), logs, completions=None)[0][2]
    # Not constant: one log whose std > 0, or whose mean differs (each log constant, the value not), restarts it.
    varied_std = logs[:9] + [reward_log(accuracy_reward=(0.0, 0.1))] + logs[:9]
    assert constant_alarms(TrainingAlarms(), varied_std) == []
    assert [s for s, _, _ in constant_alarms(TrainingAlarms(), varied_std + logs[:1])] == [20]
    moving = [reward_log(accuracy_reward=(0.1 * (i % 2), 0.0)) for i in range(20)]
    assert constant_alarms(TrainingAlarms(), moving) == []
    # A log without the reward's metrics (an eval log, the run's summary) neither counts nor breaks a run.
    with_evals = [x for log in logs[:10] for x in (log, {"eval_loss": 1.0, "eval_rewards/accuracy_reward/mean": 0.0})]
    assert [s for s, _, _ in constant_alarms(TrainingAlarms(), with_evals)] == [19]
    # The patience is a setting; 0 turns the rule off.
    assert [s for s, _, _ in constant_alarms(TrainingAlarms(AlarmConfig(constant_reward_logs=3)), logs)] == [3]
    assert constant_alarms(TrainingAlarms(AlarmConfig(constant_reward_logs=0)), logs + ones) == []


def test_constant_reward_counts_the_completions_each_log_covers(tmp_path):
    """`on_log`: GRPO's per_device_train_batch_size counts completions; a log covers the steps since the last one."""
    from transformers import TrainerControl, TrainerState
    from trl import GRPOConfig

    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        gradient_accumulation_steps=3,
        activation_checkpointing=False,
        use_cpu=True,
        report_to="none",
    )
    alarms, state = TrainingAlarms(AlarmConfig(constant_reward_logs=3)), TrainerState()
    state.global_step = 5  # resumed at step 5: the first log covers steps 6 and 7
    alarms.on_train_begin(args, state, TrainerControl())
    constant = reward_log(accuracy_reward=(0.0, 0.0))
    # logs every 2 steps; the eval log at step 9 carries no training rewards
    for step, log in ((7, constant), (9, constant), (9, {"eval_loss": 1.0}), (11, constant)):
        state.global_step = step
        alarms.on_log(args, state, TrainerControl(), logs=log)
    (alarm,) = alarms.alarms
    assert alarm["step"] == 11 and "on all 72 completions (3 logs in a row)" in alarm["reason"]  # 6 steps x 4 x 3
    suspect = json.loads((tmp_path / SUSPECT_FILE).read_text())
    assert [(r["rule"], r["key"]) for r in suspect["reasons"]] == [("constant_reward", "rewards/accuracy_reward/mean")]


def test_zoom_rate_alarms():
    """A zoom run's alarms on TRL's `tools/call_frequency` (calls per rollout), with a turn cap of 2."""
    zoom = AlarmConfig(zoom_cap=2)
    key = "tools/call_frequency"
    # The tool driven out: rollouts zoomed, then none did for 3 logs.
    assert feed(TrainingAlarms(zoom), key, [0.5, 0.25, 0.0, 0.0, 0.0, 0.0]) == ["zoom_rate_collapse"]
    assert feed(TrainingAlarms(zoom), key, [0.5, 0.0, 0.0, 0.25, 0.0, 0.0]) == []  # it came back in between
    # Every episode zooms until it is cut off, 3 logs running.
    assert feed(TrainingAlarms(zoom), key, [1.0, 2.0, 2.0, 2.5, 0.5]) == ["zoom_always_cap"]
    # A healthy zoom run: the rate moves between 0 and the cap; and a run without the tool has no zoom rules.
    assert feed(TrainingAlarms(zoom), key, [0.0, 0.5, 1.0, 1.5, 0.75, 1.25, 0.5] * 3) == []
    assert feed(TrainingAlarms(), key, [0.5, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0]) == []


def test_a_zoom_recipe_watches_its_zoom_rate_against_its_turn_cap(tmp_path):
    from astroreason.callbacks import integrity_callbacks
    from astroreason.training import GalaxyScriptArguments

    def alarms(**kwargs):
        args = GalaxyScriptArguments(data_dir=str(tmp_path), **kwargs)
        return next(c for c in integrity_callbacks(args, grpo=True) if isinstance(c, TrainingAlarms))

    assert alarms(zoom=True, zoom_max_turns=3).config.zoom_cap == 3
    assert alarms().config.zoom_cap == 0  # no tool: no zoom rules
    assert feed(alarms(zoom=True, zoom_max_turns=3), "tools/call_frequency", [3.0] * 3) == ["zoom_always_cap"]
    # Its shaping rewards are constant by design (zoom_cost 0 by default; no bonus until a zoom answers right): the
    # constant_reward rule leaves them to the zoom rules, and still watches the recipe's own rewards.
    zoom_logs = [reward_log(zoom_cost_reward=(0.0, 0.0), zoom_bonus_reward=(0.0, 0.0), accuracy_reward=(0.0, 0.0))] * 10
    assert [key for _, key, _ in constant_alarms(alarms(zoom=True), zoom_logs)] == ["rewards/accuracy_reward/mean"]
    assert len(constant_alarms(alarms(), zoom_logs)) == 3  # a run without the tool has no such rewards to skip


def test_pipeline_alarms_ignore_format_learning_but_not_a_collapse():
    """The recipes' SFT alarms: learning the answer format (loss 2.3 -> 0.27, entropy 6.4 -> 0.52, token accuracy
    0.3 -> 0.8, the shape of the demo's image-arm SFT) is no alarm; a loss or entropy toward zero still is."""
    sft = TrainingAlarms(pipeline_alarms("sft"))
    for step, (loss, entropy, accuracy) in enumerate(
        [(2.3, 6.4, 0.3), (2.0, 5.1, 0.35), (1.7, 3.0, 0.4), (1.6, 2.2, 0.45), (0.27, 0.52, 0.8)]
    ):
        assert sft.check({"loss": loss, "entropy": entropy, "mean_token_accuracy": accuracy}, step) == []
    assert [a["rule"] for a in sft.check({"loss": 0.01, "entropy": 0.01}, 6)] == ["loss_near_zero", "entropy_collapse"]
    grpo = TrainingAlarms(pipeline_alarms("grpo"))
    assert feed(grpo, "loss", [0.0, 0.0, 0.0]) == []
    assert feed(grpo, "frac_reward_zero_std", [0.2, 0.3, 0.1, 0.96, 1.0, 1.0]) == ["reward_variance_collapse"]
    assert feed(TrainingAlarms(AlarmConfig(loss_floor=0.001)), "loss", [0.01]) == []


def train_tiny(out_dir, *, seed, data_seed=None, save_steps=None, resume=None):
    """A real Trainer run of a tiny classifier whose weights start at zero whatever the seed (forced identical)."""
    rng = np.random.default_rng(0)
    data = Dataset.from_dict(
        {"x": rng.random((64, BINS + 1), dtype=np.float32).tolist(), "labels": rng.integers(0, 10, 64).tolist()}
    )
    args = TrainingArguments(
        output_dir=str(out_dir),
        max_steps=3,
        per_device_train_batch_size=8,
        learning_rate=0.1,
        report_to=[],
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        use_cpu=True,
        disable_tqdm=True,
        seed=seed,
        data_seed=data_seed,
    )
    trainer = Trainer(model=PromptNumberModel(), args=args, train_dataset=data, callbacks=[RunFingerprint()])
    trainer.train(resume_from_checkpoint=resume)
    return read_fingerprint(out_dir)


def test_fingerprints_flag_seeds_that_are_not_different(tmp_path, capsys):
    same = tmp_path / "sweep_forced"
    a = train_tiny(same / "seed1", seed=1, data_seed=0)
    b = train_tiny(same / "seed2", seed=2, data_seed=0)  # the data order forced too: one run under two seeds
    assert a["seed"] != b["seed"] and a["weights_sha256"] == b["weights_sha256"]
    assert a["first_batch_sha256"] == b["first_batch_sha256"]
    assert [p["kind"] for p in compare_fingerprints({"seed1": a, "seed2": b})] == ["same_fingerprint"]
    capsys.readouterr()  # drop the trainings' own output: only the audit's JSON is read below
    assert cli(["audit", str(same), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [p["status"] for p in report["probes"] if p["name"] == "seeds"] == ["fail"]

    honest = tmp_path / "sweep_honest"
    c = train_tiny(honest / "seed3", seed=3)
    d = train_tiny(honest / "seed4", seed=4)  # same zero init, but the seed reaches the data order
    assert c["weights_sha256"] == d["weights_sha256"] and c["first_batch_sha256"] != d["first_batch_sha256"]
    assert compare_fingerprints({"seed3": c, "seed4": d}) == []
    assert cli(["audit", str(honest)]) == 0

    # The same configuration and seed twice in one sweep is one result counted twice.
    e = train_tiny(same / "seed1_again", seed=1, data_seed=0)
    kinds = {p["kind"] for p in compare_fingerprints({"seed1": a, "seed1_again": e})}
    assert kinds == {"same_config_and_seed"}


def test_resumed_run_keeps_its_first_fingerprint(tmp_path):
    first = train_tiny(tmp_path, seed=5, save_steps=2)
    assert (tmp_path / "checkpoint-2").is_dir()
    resumed = train_tiny(tmp_path, seed=6, resume=str(tmp_path / "checkpoint-2"))
    assert resumed == first and resumed["seed"] == 5
    fresh = train_tiny(tmp_path / "fresh", seed=6)
    assert fresh["seed"] == 6 and fresh["first_batch_sha256"] != first["first_batch_sha256"]


@pytest.mark.parametrize("value", [0.951, 0.99])
def test_gate_cli_refuses_above_ceiling(tmp_path, value, capsys):
    result = {
        "config": {"modality": "image", "seed": 0},
        "provenance": {},
        "metrics": {"accuracy": value, "interval": {"accuracy": [value - 0.01, value + 0.01]}},
    }
    (tmp_path / "result.json").write_text(json.dumps(result))
    assert cli(["gate", str(tmp_path)]) == 1
    assert "above the ceiling" in capsys.readouterr().err
    assert cli(["gate", str(tmp_path / "result.json"), "--ceiling", "0.995"]) == 0

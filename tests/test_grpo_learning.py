"""GRPO that learns, and GRPO that cannot: real TRL GRPOTrainer runs on the tiny offline Qwen2.5-VL and the GalSim
surrogate, built with the recipes' own pieces (`astroreason.training`).

A random tiny model never names a galaxy class, so the recipes' own rewards (format, accuracy) are 0 for every
completion: every group's rewards are equal, every advantage is 0 and nothing is learned. That run must raise the
`no_reward_signal` alarm, and `constant_reward` for each of its rewards. A run whose accuracy reward is 0 on every
completion while another reward varies gets no `no_reward_signal` (some groups differ) but must raise
`constant_reward` for the accuracy reward, and an evaluation of its model must say so. The run that must learn uses
a reward that varies inside a group from the first step: the
share of a completion's tokens that belong to the answer vocabulary (the tokens of `<answer>Class name</answer>`),
a dense step toward the answer format that a 2-layer model picks up in a few dozen steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

import pytest
import torch

from astroreason.callbacks import integrity_callbacks
from astroreason.errors import UserError
from astroreason.integrity import SUSPECT_FILE
from astroreason.integrity.alarms import AlarmConfig, TrainingAlarms, pipeline_alarms
from astroreason.training import (
    GalaxyScriptArguments,
    build_grpo_trainer,
    galaxy_dataset,
    load_model,
    run_training,
)

REPO = Path(__file__).resolve().parents[1]
LEARNING_STEPS = 30
SHORT_STEPS = 12  # more logs than the alarm's default patience (10)
QUIET_STEP = 4  # the one step of the single-step run whose rewards are all equal
CONSTANT_ACCURACY_STEPS = 8  # 4 logs of 2 steps: one more than the constant_accuracy_run's patience (3)


def grpo_config(output_dir, steps: int, **overrides):
    """Small groups (2 prompts x 4 completions a step), short completions, a high learning rate: seconds a step."""
    from trl import GRPOConfig

    settings = dict(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=16,
        temperature=1.0,
        beta=0.0,
        loss_type="dapo",
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        logging_steps=1,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    return GRPOConfig(**{**settings, **overrides})


def script_args(prepared_dir, **kwargs) -> GalaxyScriptArguments:
    # 56 px: 4 visual tokens per galaxy, enough for a run about rewards, not about galaxies.
    return GalaxyScriptArguments(
        data_dir=str(prepared_dir), modality="image", image_size=56, max_train_samples=64, **kwargs
    )


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def answer_vocab_reward_for(tokenizer):
    """The share of each completion's tokens that are tokens of some `<answer>Class name</answer>`."""
    from astroreason.data.galaxy10 import DECALS_CLASSES
    from astroreason.prompts import answer_text

    vocabulary = {
        t
        for i in range(len(DECALS_CLASSES))
        for t in tokenizer(answer_text(i, DECALS_CLASSES), add_special_tokens=False)["input_ids"]
    }

    def answer_vocab_reward(completions, completion_ids, **kwargs) -> list[float]:
        return [sum(t in vocabulary for t in ids) / max(len(ids), 1) for ids in completion_ids]

    return answer_vocab_reward


def train_with_reward(prepared_dir, model_dir, out, steps, make_reward, callbacks=()):
    """A GRPOTrainer on the recipes' dataset and model, with a reward of the test's own; returns it trained and the
    trainable parameters it started from."""
    from trl import GRPOTrainer, ModelConfig

    args, config = script_args(prepared_dir), grpo_config(out, steps)
    train = galaxy_dataset(args, args.train_split, with_completion=False, max_samples=args.max_train_samples)
    model, processor = load_model(ModelConfig(str(model_dir), dtype="float32"), config)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[make_reward(processor.tokenizer)],
        args=config,
        train_dataset=train,
        processing_class=processor,
        callbacks=list(callbacks),
    )
    before = trainable(trainer.model)
    trainer.train()
    return trainer, before


def logged(trainer, key: str) -> list[float]:
    return [h[key] for h in trainer.state.log_history if key in h]


def alarms_of(trainer) -> TrainingAlarms:
    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, TrainingAlarms))


@pytest.fixture(scope="module")
def learning_run(prepared_dir, tiny_model_dir, tmp_path_factory):
    return train_with_reward(
        prepared_dir, tiny_model_dir, tmp_path_factory.mktemp("grpo_learns"), LEARNING_STEPS, answer_vocab_reward_for
    )


@pytest.fixture(scope="module")
def constant_run(prepared_dir, tiny_model_dir, tmp_path_factory):
    """The recipe's own path (`build_grpo_trainer`, `run_training`) with its default rewards, format + accuracy,
    which a random model never earns."""
    from trl import ModelConfig

    out = tmp_path_factory.mktemp("grpo_constant")
    args = script_args(prepared_dir)
    trainer = build_grpo_trainer(args, grpo_config(out, SHORT_STEPS), ModelConfig(str(tiny_model_dir), dtype="float32"))
    before = trainable(trainer.model)
    run_training(trainer, args)
    return trainer, before, out


@pytest.fixture(scope="module")
def one_quiet_step_run(prepared_dir, tiny_model_dir, tmp_path_factory):
    """The learning reward, except that at step `QUIET_STEP` every completion gets 0; the pipeline's alarms
    attached, as the recipes attach them."""
    out = tmp_path_factory.mktemp("grpo_one_quiet_step")

    def make_reward(tokenizer):
        reward, calls = answer_vocab_reward_for(tokenizer), []

        def answer_vocab_reward(completions, completion_ids, **kwargs):
            calls.append(1)  # one call per generation batch: one per step here (steps_per_generation = 1)
            return [0.0] * len(completions) if len(calls) == QUIET_STEP else reward(completions, completion_ids)

        return answer_vocab_reward

    trainer, _ = train_with_reward(
        prepared_dir,
        tiny_model_dir,
        out,
        SHORT_STEPS,
        make_reward,
        callbacks=integrity_callbacks(script_args(prepared_dir), grpo=True),
    )
    return trainer, out


@pytest.fixture(scope="module")
def constant_accuracy_run(prepared_dir, tiny_model_dir, tmp_path_factory):
    """The recipe's path with `accuracy` (which a random model never earns) beside a reward that varies from the first
    step, `letter_share`; 4 completions a micro-batch x 2 accumulated = 8 a step, a log every 2 steps, the recipe's
    `alarm_constant_reward_logs` 3: the alarm is due at step 6, after 3 logs x 2 steps x 8 = 48 completions."""
    import integrity_helpers
    from trl import ModelConfig

    integrity_helpers.SCORED.clear()
    out = tmp_path_factory.mktemp("grpo_constant_accuracy")
    args = script_args(
        prepared_dir, reward_funcs=["accuracy", "integrity_helpers.letter_share_reward"], alarm_constant_reward_logs=3
    )
    config = grpo_config(
        out, CONSTANT_ACCURACY_STEPS, per_device_train_batch_size=4, gradient_accumulation_steps=2, logging_steps=2
    )
    trainer = build_grpo_trainer(args, config, ModelConfig(str(tiny_model_dir), dtype="float32"))
    run_training(trainer, args)
    return trainer, out, list(integrity_helpers.SCORED)


def test_grpo_learns_a_reward_that_varies_inside_groups(learning_run):
    trainer, before = learning_run
    rewards, zero_std = logged(trainer, "reward"), logged(trainer, "frac_reward_zero_std")
    assert len(rewards) == len(zero_std) == LEARNING_STEPS
    assert mean(zero_std[:5]) < 0.5  # the premise: the rewards differ inside most groups from the start
    # TRL's own invariant (trl tests/test_grpo_trainer.py): every trainable parameter moved.
    unchanged = [n for n, p in before.items() if torch.equal(p, trainer.model.get_parameter(n))]
    assert not unchanged, f"parameters unchanged after GRPO: {unchanged[:5]}"
    # The mean reward rose: ~0.04 over the first five steps, 0.8-1.0 over the last five (seeds 0-3).
    first, last = mean(rewards[:5]), mean(rewards[-5:])
    assert last - first > 0.4, (first, last, rewards)


def test_a_run_whose_rewards_never_vary_raises_the_alarm(constant_run):
    trainer, before, out = constant_run
    assert logged(trainer, "reward") == [0.0] * SHORT_STEPS  # format + accuracy: a random model earns neither
    assert logged(trainer, "frac_reward_zero_std") == [1.0] * SHORT_STEPS
    # Every advantage is 0: not one parameter moved. This is what the alarm is about.
    assert all(torch.equal(p, trainer.model.get_parameter(n)) for n, p in before.items())
    # Both reward functions were 0 on every completion too: each raises its own `constant_reward`, 10 logs x 8.
    fired = alarms_of(trainer).alarms
    assert [(a["rule"], a["key"], a["step"]) for a in fired] == [
        ("constant_reward", "rewards/format_reward/mean", 10),
        ("constant_reward", "rewards/accuracy_reward/mean", 10),
        ("no_reward_signal", "frac_reward_zero_std", 10),
    ]
    suspect = json.loads((out / SUSPECT_FILE).read_text())
    assert suspect["suspect"] and [r["rule"] for r in suspect["reasons"]] == [a["rule"] for a in fired]
    reasons = [r["reason"] for r in suspect["reasons"]]
    assert reasons[1] == (
        "step 10: accuracy reward was 0 on all 80 completions (10 logs in a row): no right answer to learn from"
    )
    assert reasons[0].startswith("step 10: format reward was 0 on all 80 completions") and "cannot learn" in reasons[2]


def test_one_step_with_equal_rewards_raises_no_alarm(one_quiet_step_run):
    trainer, out = one_quiet_step_run
    zero_std = logged(trainer, "frac_reward_zero_std")
    assert len(zero_std) == SHORT_STEPS and zero_std[QUIET_STEP - 1] == 1.0
    assert logged(trainer, "reward")[QUIET_STEP - 1] == 0.0
    assert alarms_of(trainer).alarms == []
    assert not (out / SUSPECT_FILE).exists()


def feed_logs(alarms: TrainingAlarms, records: list[dict]) -> list[tuple[str, int]]:
    return [(a["rule"], a["step"]) for r in records for a in alarms.check(r, r["step"])]


def test_the_alarm_decision_on_real_log_records(constant_run, one_quiet_step_run, learning_run):
    constant = [h for h in constant_run[0].state.log_history if "reward" in h]
    quiet = [h for h in one_quiet_step_run[0].state.log_history if "reward" in h]
    learning = [h for h in learning_run[0].state.log_history if "reward" in h]

    # It fires once, at the N-th consecutive log of equal rewards, for any N the run reaches; 0 turns it off. (This
    # rule alone: `constant_reward`, which these rewards also raise, is off here and checked below.)
    def no_signal(n):
        return TrainingAlarms(AlarmConfig(watch_loss=False, no_signal_logs=n, constant_reward_logs=0))

    for n in (1, 3, SHORT_STEPS):
        assert feed_logs(no_signal(n), constant) == [("no_reward_signal", n)]
    assert feed_logs(no_signal(SHORT_STEPS + 1), constant) == []
    assert feed_logs(no_signal(0), constant) == []
    # Runs whose groups vary: no such alarm at the default patience.
    for records in (quiet, learning):
        assert "no_reward_signal" not in {
            rule for rule, _ in feed_logs(TrainingAlarms(pipeline_alarms("grpo")), records)
        }
    # One log in which some group varied (the format reward told its completions apart) starts the count again; the
    # accuracy reward, 0 on every completion throughout, raises `constant_reward` at its 10th log all the same, and the
    # format reward, 0 again after the varied log, at the 10th log after it (with `no_reward_signal`).
    varied = {
        **constant[0],
        "frac_reward_zero_std": 0.5,
        "rewards/format_reward/mean": 0.25,
        "rewards/format_reward/std": 0.46,
    }
    records = [{**r, "step": i + 1} for i, r in enumerate(constant[:9] + [varied] + constant[:9] + constant[9:10])]
    assert feed_logs(TrainingAlarms(pipeline_alarms("grpo")), records[:-1]) == [("constant_reward", 10)]
    alarms = TrainingAlarms(pipeline_alarms("grpo"))
    assert [(a["rule"], a["key"], a["step"]) for r in records for a in alarms.check(r, r["step"])] == [
        ("constant_reward", "rewards/accuracy_reward/mean", 10),
        ("constant_reward", "rewards/format_reward/mean", 20),
        ("no_reward_signal", "frac_reward_zero_std", 20),
    ]


def test_the_recipes_patience_is_a_script_argument(prepared_dir):
    def patience(args):
        return next(c for c in integrity_callbacks(args, grpo=True) if isinstance(c, TrainingAlarms)).config

    assert patience(script_args(prepared_dir)).no_signal_logs == AlarmConfig().no_signal_logs == 10
    assert patience(script_args(prepared_dir, alarm_no_signal_logs=3)).no_signal_logs == 3
    assert patience(script_args(prepared_dir, alarm_no_signal_logs=0)).no_signal_logs == 0
    assert patience(script_args(prepared_dir)).constant_reward_logs == AlarmConfig().constant_reward_logs == 10
    assert patience(script_args(prepared_dir, alarm_constant_reward_logs=4)).constant_reward_logs == 4
    assert patience(script_args(prepared_dir, alarm_constant_reward_logs=0)).constant_reward_logs == 0
    for name in ("alarm_no_signal_logs", "alarm_constant_reward_logs"):
        for bad in (-1, 2.5, True):
            with pytest.raises(UserError, match=name):
                script_args(prepared_dir, **{name: bad})


def test_a_constant_accuracy_reward_marks_the_run_and_its_evaluation(constant_accuracy_run, prepared_dir, capsys):
    """The accuracy reward 0 on every completion, the other reward varying: `no_reward_signal` cannot see it (groups
    differ), `constant_reward` does, and the evaluation of the model says suspect, with the reason."""
    from astroreason.evaluation.harness import EvalConfig, evaluate, print_result_line

    trainer, out, scored = constant_accuracy_run
    assert logged(trainer, "rewards/accuracy_reward/mean") == [0.0] * 4  # the premise: never right
    assert logged(trainer, "rewards/accuracy_reward/std") == [0.0] * 4
    assert all(v < 1.0 for v in logged(trainer, "frac_reward_zero_std"))  # ... but some groups' rewards differ
    assert all(v > 0.0 for v in logged(trainer, "rewards/letter_share_reward/std"))
    # One reward call per step (a step's generation batch); by step 6 the accuracy reward scored them all with 0.
    assert scored == [8] * CONSTANT_ACCURACY_STEPS and sum(scored[:6]) == 48
    reason = "step 6: accuracy reward was 0 on all 48 completions (3 logs in a row): no right answer to learn from"
    (alarm,) = alarms_of(trainer).alarms  # once, though the 4th log is constant too
    assert (alarm["rule"], alarm["key"], alarm["reason"]) == ("constant_reward", "rewards/accuracy_reward/mean", reason)
    suspect = json.loads((out / SUSPECT_FILE).read_text())
    assert [(r["rule"], r["reason"]) for r in suspect["reasons"]] == [("constant_reward", reason)]

    # The evaluation of that model: recorded suspect, and result.json and the RESULT line say why.
    eval_dir = out.parent / f"{out.name}_eval"
    config = EvalConfig(
        model=str(out),
        data_dir=str(prepared_dir),
        output_dir=str(eval_dir),
        ledger=str(eval_dir.parent / f"{out.name}_ledger" / "spend.jsonl"),
        prices=str(REPO / "eval" / "prices.yaml"),
        max_samples=3,
        batch_size=3,
        max_new_tokens=4,
        n_boot=50,
        image_size=56,
    )
    capsys.readouterr()
    result = evaluate(config, progress=False)
    print_result_line(result)
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("RESULT ")]
    summary = json.loads(line[len("RESULT ") :])
    assert summary["integrity"] == result["integrity"]["status"] == "suspect"
    assert summary["suspect_reasons"] == result["integrity"]["suspect_reasons"] == [f"constant_reward: {reason}"]
    assert result["integrity"]["reasons"] == [reason]
    assert json.loads((eval_dir / "result.json").read_text())["integrity"]["suspect_reasons"] == [
        f"constant_reward: {reason}"
    ]

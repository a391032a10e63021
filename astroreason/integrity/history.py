"""A run's training log, kept in its directory: what the trainer logged, step by step, for the audit to read back.

The recipes save with `save_strategy: no`, so a finished run may hold no `trainer_state.json`, and its log history
(the losses, and a GRPO run's reward means, `rewards/NAME/mean`) would leave with the process. `TrainingLog` (a
TrainerCallback, attached by the recipes with the fingerprint) writes it to `training_log.json` in `output_dir` at
train end: `global_step`, `max_steps` and `log_history` (the trainer's `state.log_history`, resumed runs included).
The audit's random-reward control reads the mean the run logged for each label-reading reward from it
(`astroreason.audit.random_reward`).
"""

from __future__ import annotations

import math
from pathlib import Path

from transformers import TrainerCallback

from ..io import read_json_record, write_json_atomic

TRAINING_LOG_FILE = "training_log.json"
TRAINER_STATE_FILE = "trainer_state.json"  # the Trainer's own, in a checkpoint (or a run that saved one)


class TrainingLog(TrainerCallback):
    """Write `training_log.json` (`global_step`, `max_steps`, `log_history`) into `output_dir` at train end, from the
    main process."""

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            record = {"global_step": state.global_step, "max_steps": state.max_steps, "log_history": state.log_history}
            write_json_atomic(Path(args.output_dir) / TRAINING_LOG_FILE, record)


def training_log_path(run_dir) -> Path | None:
    """Where a run's training log is: its `training_log.json`, else its own `trainer_state.json`, else its last
    checkpoint's (which holds the history up to that checkpoint); None when it has none."""
    run_dir = Path(run_dir)
    steps = {int(p.name.rsplit("-", 1)[1]): p for p in run_dir.glob("checkpoint-*") if p.name[11:].isdigit()}
    candidates = [run_dir / TRAINING_LOG_FILE, run_dir / TRAINER_STATE_FILE]
    candidates += [steps[s] / TRAINER_STATE_FILE for s in sorted(steps, reverse=True)]
    return next((path for path in candidates if path.is_file()), None)


def read_training_log(run_dir) -> dict | None:
    """A run's training log (`training_log_path`), as `global_step`, `max_steps` and `log_history`, or None."""
    path = training_log_path(run_dir)
    if path is None:
        return None
    record = read_json_record(path, "training log" if path.name == TRAINING_LOG_FILE else "trainer state")
    return {k: record.get(k) for k in ("global_step", "max_steps", "log_history")}


def logged_mean(log: dict, key: str) -> float | None:
    """The mean over the logged records of `key` (e.g. `rewards/accuracy_reward/mean`), NaN records left out;
    None when no record has a finite value."""
    values = [r[key] for r in log.get("log_history") or [] if isinstance(r.get(key), (int, float))]
    values = [float(v) for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else None

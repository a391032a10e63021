"""One sweep task: read its manifest row, train (resuming from the last checkpoint), evaluate, write its result.

    python -m astroreason.sweeps.task MANIFEST INDEX        (what slurm/array_sweep.slurm and the local runner run)

On SIGUSR1 (SLURM's `--signal=B:USR1@lead`, forwarded by the batch script), SIGTERM or SIGINT the task saves a
checkpoint at the end of the current step, records its wall-clock and exits with `REQUEUE_EXIT`; the batch script then
requeues this array task only, and the next attempt resumes from that checkpoint (`resume: true` in every task config:
transformers' `get_last_checkpoint` in the task's `train/` directory). Evaluation resumes from its per-sample cache.

`state.json` in the task directory carries what must survive requeues: attempts, wall-clock spent, dollars charged and
the outcome of each attempt. Each task charges the spend ledger as it runs (at most every `CHARGE_EVERY_S` seconds and
at every checkpoint), so a killed task has paid for all but its last few seconds.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import fields
from pathlib import Path

from filelock import FileLock, Timeout

from ..arms import ArmSettings
from ..errors import CheckFailed, UserError, exit_status
from ..io import read_json_file, write_json_atomic
from .config import METERED, parse_time, refuse_second_meter
from .plan import load_manifest, parse_task_config
from .spend import open_ledger, remaining, task_budget

REQUEUE_EXIT = 75  # EX_TEMPFAIL: checkpointed after a signal; run me again
CHARGE_EVERY_S = 30.0
STATE = "state.json"
DONE, RUNNING, REQUEUED, FAILED = "done", "running", "requeued", "failed"


class Interrupted(Exception):
    """A stop signal arrived while evaluating (between batches the per-sample cache is already on disk)."""


class _Stop:
    """The stop request from a signal; training polls it after each step, evaluation is interrupted at once."""

    requested: str | None = None
    phase: str = "setup"

    def handler(self, signum, frame):
        self.requested = signal.Signals(signum).name
        print(f"[sweep] {self.requested} received during {self.phase}: stopping at the next safe point", flush=True)
        if self.phase == "eval":
            raise Interrupted(self.requested)


def install_handlers() -> _Stop:
    stop = _Stop()
    for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop.handler)
    return stop


# --- the per-task state file ------------------------------------------------------------------------------------


def read_state(task_dir: str | Path) -> dict:
    path = Path(task_dir) / STATE
    if not path.exists():
        return {"status": "pending", "attempts": 0, "elapsed_s": 0.0, "dollars": 0.0, "history": []}
    return read_json_file(path, "task state", keys=("status", "attempts", "elapsed_s", "dollars", "history"))


def write_state(task_dir: str | Path, state: dict) -> None:

    write_json_atomic(Path(task_dir) / STATE, state)


class Meter:
    """Wall-clock of this attempt added to what earlier attempts spent; charges the ledger for the difference."""

    def __init__(self, task_dir: Path, state: dict, budget):
        self.task_dir, self.state, self.budget = task_dir, state, budget  # budget: `astroreason.budget.Budget`
        self.base_elapsed = float(state["elapsed_s"])
        self.started = time.monotonic()
        self.charged_s = 0.0  # seconds of this attempt already charged
        self.last_flush = self.started

    def attempt_seconds(self) -> float:
        return time.monotonic() - self.started

    def flush(self, **fields) -> None:
        seconds = self.attempt_seconds()
        delta = seconds - self.charged_s
        if delta > 0 and self.budget.price.gpu_hour > 0:
            dollars = self.budget.charge(None, requests=0, seconds=delta, task_attempt=self.state["attempts"])
            self.state["dollars"] += dollars  # unrounded: it must add up to the ledger's charges
        self.charged_s = seconds
        self.state["elapsed_s"] = round(self.base_elapsed + seconds, 3)
        self.state["history"][-1].update(seconds=round(seconds, 3), **fields)
        self.state.update(updated=time.time())
        write_state(self.task_dir, self.state)
        self.last_flush = time.monotonic()

    def maybe_flush(self, **fields) -> None:
        if time.monotonic() - self.last_flush >= CHARGE_EVERY_S:
            self.flush(**fields)


def _callback(stop: _Stop, meter: Meter):
    from transformers import TrainerCallback

    class SweepCallback(TrainerCallback):
        """Checkpoint-and-stop on a signal; keep the state file and the ledger current."""

        def on_step_end(self, args, state, control, **kwargs):
            meter.maybe_flush(step=state.global_step)
            if stop.requested:
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_save(self, args, state, control, **kwargs):
            meter.flush(step=state.global_step, checkpoint=f"checkpoint-{state.global_step}")
            return control

    return SweepCallback()


# --- one task ---------------------------------------------------------------------------------------------------


def _lock(task_dir: Path) -> FileLock:
    """An exclusive lock on the task directory: the same task never runs twice at once (SLURM + local, two arrays).

    `filelock.FileLock` (flock on `.lock`): the kernel drops it when the task dies. Across machines on NFS it holds
    only where the server supports locks and the mount lacks `nolock`/`local_lock` (see `astroreason.budget.ledger`).
    """

    lock = FileLock(task_dir / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise CheckFailed(f"{task_dir}: this task is already running elsewhere") from None
    return lock


def _train(task, sweep, stop: _Stop, meter: Meter) -> bool:
    """Train to the end (or until a stop signal); True if training finished."""
    # lazy: `sweep status` loads this module; training and evaluation pull torch and transformers
    from ..training import build_grpo_trainer, build_sft_trainer, last_checkpoint, run_training

    script_args, training_args, model_args = parse_task_config(task.config, sweep.trainer)
    refuse_second_meter({k: getattr(script_args, k) for k in METERED}, task.config)  # a hand-edited task config
    checkpoint = last_checkpoint(training_args.output_dir)
    meter.flush(resumed_from=Path(checkpoint).name if checkpoint else None)
    build = build_grpo_trainer if sweep.trainer == "grpo" else build_sft_trainer
    trainer = build(script_args, training_args, model_args)
    callback = _callback(stop, meter)
    trainer.add_callback(callback)
    stop.phase = "train"
    run_training(trainer, script_args)
    stop.phase = "setup"
    meter.flush(step=trainer.state.global_step)
    return trainer.state.global_step >= trainer.state.max_steps


def _evaluate(task, sweep, stop: _Stop):
    # lazy: `sweep status` loads this module; training and evaluation pull torch and transformers
    from ..evaluation.harness import EvalConfig, evaluate, print_result_line

    script_args, _, _ = parse_task_config(task.config, sweep.trainer)
    e = sweep.evaluation
    config = EvalConfig(
        model=str(task.train_dir),
        # The arm options are one dataclass shared by the recipe and the evaluation: the task evaluates its model on
        # the arm it trained on, whatever options the arm gains.
        **{f.name: getattr(script_args, f.name) for f in fields(ArmSettings)},
        split=e.split,
        output_dir=task.dir,
        max_samples=e.max_samples,
        batch_size=e.batch_size,
        max_new_tokens=e.max_new_tokens,
        seed=task.seed,
        n_boot=e.n_boot,
        # The task's meter already charges the sweep's ledger for its whole wall-clock, evaluation included: the
        # evaluation's own spend and results rows stay in the task's folder, and `sweep collect` writes the sweep's
        # results.tsv from the task results.
        price_gpu_hour=0.0,
        ledger=str(Path(task.dir) / "eval_spend.jsonl"),
        results_dir=str(task.dir),
        description=f"sweep task {task.name}",
    )
    stop.phase = "eval"
    if stop.requested:
        raise Interrupted(stop.requested)
    result = evaluate(config, progress=False)
    stop.phase = "setup"
    print_result_line(result)
    return result


def run_task(manifest_path: str | Path, index: int) -> int:
    """Run (or resume, or confirm done) task `index` of a manifest; returns the exit status."""

    stop = install_handlers()  # before the heavy imports: a signal during start-up must not kill the task
    manifest = load_manifest(manifest_path)
    task, sweep = manifest.task(index), manifest.sweep
    task_dir = Path(task.dir)
    task_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(task_dir)  # noqa: F841  held until the process exits
    os.chdir(manifest.data["workdir"])  # recipe paths are relative to where the sweep was planned

    state = read_state(task_dir)
    if state["status"] == DONE and (task_dir / "result.json").exists():
        print(f"[sweep] task {index} ({task.name}) is already done", flush=True)
        return 0
    limit = parse_time(sweep.resources.time) * (1 + sweep.resources.max_requeues)
    if state["elapsed_s"] >= limit or state["attempts"] > sweep.resources.max_requeues:
        state["status"] = FAILED
        write_state(task_dir, state)
        raise CheckFailed(
            f"task {index} ({task.name}): {state['attempts']} attempts and {state['elapsed_s']:.0f} s "
            f"spent, the most its resources allow ({limit} s); not run again"
        )
    if remaining(open_ledger(sweep.budget.spend_ledger()), sweep.budget.max_dollars) <= 0:
        state["status"] = FAILED
        write_state(task_dir, state)
        raise CheckFailed(
            f"budget: the ${sweep.budget.max_dollars:g} cap in {sweep.budget.spend_ledger()} is spent; "
            f"task {index} ({task.name}) not started"
        )

    state["attempts"] += 1
    state["status"] = RUNNING
    job = {
        k: os.environ[k]
        for k in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID", "SLURM_RESTART_COUNT")
        if k in os.environ
    }
    state["history"].append({"attempt": state["attempts"], "started": time.time(), "job": job})
    meter = Meter(task_dir, state, task_budget(sweep, run=f"sweep:{sweep.name}:{task.name}"))
    print(
        f"[sweep] task {index} ({task.name}) attempt {state['attempts']}, {state['elapsed_s']:.1f} s spent before",
        flush=True,
    )
    try:
        if not state.get("trained"):
            if not _train(task, sweep, stop, meter):
                return _requeue(state, meter, sweep)
            state["trained"] = True
            meter.flush()  # on disk before evaluating: a task killed while evaluating is never trained again
        _evaluate(task, sweep, stop)
    except Interrupted:
        return _requeue(state, meter, sweep)
    except BaseException as err:
        state["status"] = FAILED
        meter.flush(outcome=f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        raise
    state["status"] = DONE
    meter.flush(outcome="done")
    print(
        f"[sweep] task {index} ({task.name}) done: {state['elapsed_s']:.1f} s over {state['attempts']} attempt(s)",
        flush=True,
    )
    return 0


def _requeue(state: dict, meter: Meter, sweep) -> int:
    if state["attempts"] > sweep.resources.max_requeues:
        state["status"] = FAILED
        meter.flush(outcome=f"stopped after {state['attempts']} attempts (max_requeues {sweep.resources.max_requeues})")
        print("[sweep] checkpoint saved; no requeue left", flush=True)
        return 1
    state["status"] = REQUEUED
    meter.flush(outcome="checkpointed for requeue")
    print(
        f"[sweep] checkpoint saved; {state['elapsed_s']:.1f} s spent so far; exit {REQUEUE_EXIT} (requeue)", flush=True
    )
    return REQUEUE_EXIT


def main(argv: list[str] | None = None) -> int:

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m astroreason.sweeps.task MANIFEST INDEX", file=sys.stderr)
        return 2

    def run():
        try:
            return run_task(argv[0], int(argv[1]))
        except Interrupted:  # a signal between phases, outside the try above
            raise UserError("interrupted before the task started") from None

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())

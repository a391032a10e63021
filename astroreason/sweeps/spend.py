"""The project's spend ledger as sweeps use it: what a sweep may cost at most, what remains, and charging as tasks run.

The ledger is the project's one spend ledger (`astroreason.budget.Ledger`: append-only JSONL under an
exclusive file lock, fsync'd row by row), shared with every evaluation and training run, so concurrent array tasks
on one node or one shared filesystem draw on one cap. A task is charged by device-hours at the sweep's device price
(`budget.price_gpu_hour` or the price table's entry) through `budget.Budget`, like any local run; open reservations count as spent.
"""

from __future__ import annotations

import os

from ..budget import Budget, Caps, Ledger
from ..errors import CheckFailed
from .config import SweepConfig, parse_time


def open_ledger(path: str | os.PathLike):
    """The project's spend ledger (the same file evaluation and training runs charge)."""

    return Ledger(path)


def remaining(ledger, cap: float | None) -> float:
    """Dollars left under `cap` once charges and open reservations are counted (infinite without a cap)."""
    return float("inf") if cap is None else cap - ledger.totals().committed_dollars


def task_budget(config: SweepConfig, run: str):
    """What one task charges (a `budget.Budget`): wall-clock x its devices x the sweep's price per device-hour."""

    return Budget(
        open_ledger(config.budget.spend_ledger()),
        config.budget.device_price(config.resources.gpus_per_task),
        Caps(max_dollars=config.budget.max_dollars),
        run=run,
        gpus=devices(config),
    )


def devices(config: SweepConfig) -> int:
    """Devices one task holds for pricing: its GPUs, or one for a CPU-only task."""
    return max(1, config.resources.gpus_per_task)


def task_rate(config: SweepConfig) -> float:
    """Dollars per wall-clock second of one task."""
    return config.budget.device_price(config.resources.gpus_per_task).gpu_hour * devices(config) / 3600.0


def task_estimate(config: SweepConfig) -> float:
    """The most one task can cost: every allowed attempt running to its time limit."""
    return task_rate(config) * parse_time(config.resources.time) * (1 + config.resources.max_requeues)


def check_affordable(config: SweepConfig, n_tasks: int) -> dict:
    """Refuse (exit 1) a submission whose worst case exceeds what remains under the cap; returns the figures."""
    estimate = task_estimate(config) * n_tasks
    left = remaining(open_ledger(config.budget.spend_ledger()), config.budget.max_dollars)
    figures = {
        "tasks": n_tasks,
        "estimate_dollars": round(estimate, 6),
        "remaining_dollars": None if left == float("inf") else round(left, 6),
    }
    if estimate > left:
        raise CheckFailed(
            f"budget: {n_tasks} tasks may cost up to ${estimate:.2f} (time {config.resources.time} x "
            f"{1 + config.resources.max_requeues} attempts x ${task_rate(config) * 3600 / devices(config):g}/device-hour x "
            f"{devices(config)}) but only ${max(left, 0):.2f} remains under the ${config.budget.max_dollars:g} "
            f"cap in {config.budget.spend_ledger()}; not submitted"
        )
    return figures

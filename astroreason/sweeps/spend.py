"""The project's spend ledger as sweeps use it: what a sweep may cost at most, what remains, and charging as tasks run.

The ledger is an append-only JSONL file shared by every run of a project, appended under an exclusive file lock and
fsync'd row by row, so concurrent array tasks on one node or one shared filesystem draw on one cap. Rows follow the
project ledger format (`astroreason.evaluation.budget`): `{"kind": "charge", "id", "run", "time", "dollars",
"gpu_seconds", ...}`; open `reserve` rows count as spent. `open_ledger` is the only place that decides which ledger
implementation is used.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from pathlib import Path

from ..errors import CheckFailed, UserError
from .config import SweepConfig, parse_time


class SweepLedger:
    """The minimal interface a sweep needs: `committed()` dollars, `remaining(cap)` and `charge(...)`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        with open(self.path, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)
            data = f.read()
        for line in data.splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a row torn by a killed writer was never committed
        return rows

    def committed(self) -> float:
        """Dollars charged plus dollars still reserved (an open reservation may already have been spent)."""
        spent, open_reserved = 0.0, {}
        for row in self._rows():
            kind = row.get("kind")
            if kind == "reserve":
                open_reserved[row.get("id")] = float(row.get("dollars", 0.0))
            elif kind in ("charge", "release"):
                open_reserved.pop(row.get("id"), None)
            if kind == "charge":
                try:
                    spent += float(row["dollars"])
                except (KeyError, TypeError, ValueError):
                    raise UserError(f"ledger: {self.path} holds a charge row without dollars; fix or move it") from None
        return spent + sum(open_reserved.values())

    def remaining(self, cap: float | None) -> float:
        return float("inf") if cap is None else cap - self.committed()

    def charge(self, dollars: float, *, run: str, seconds: float, gpus: int, **extra) -> None:
        row = {"kind": "charge", "id": uuid.uuid4().hex, "run": run, "time": round(time.time(), 3),
               "dollars": dollars, "gpu_seconds": round(seconds * gpus, 6), "requests": 0, **extra}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            f.seek(0, os.SEEK_END)
            if f.tell():  # a torn last line from a killed writer: start a fresh line
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write((json.dumps(row, sort_keys=True) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())


def open_ledger(path: str | os.PathLike) -> SweepLedger:
    """The one place the sweeps open the spend ledger (swap in `astroreason.evaluation.budget.Ledger` here)."""
    return SweepLedger(path)


def devices(config: SweepConfig) -> int:
    """Devices one task holds for pricing: its GPUs, or one for a CPU-only task."""
    return max(1, config.resources.gpus_per_task)


def task_rate(config: SweepConfig) -> float:
    """Dollars per wall-clock second of one task."""
    return config.budget.gpu_hour * devices(config) / 3600.0


def task_estimate(config: SweepConfig) -> float:
    """The most one task can cost: every allowed attempt running to its time limit."""
    return task_rate(config) * parse_time(config.resources.time) * (1 + config.resources.max_requeues)


def check_affordable(config: SweepConfig, n_tasks: int) -> dict:
    """Refuse (exit 1) a submission whose worst case exceeds what remains under the cap; returns the figures."""
    estimate = task_estimate(config) * n_tasks
    remaining = open_ledger(config.budget.ledger).remaining(config.budget.max_dollars)
    figures = {"tasks": n_tasks, "estimate_dollars": round(estimate, 6),
               "remaining_dollars": None if remaining == float("inf") else round(remaining, 6)}
    if estimate > remaining:
        raise CheckFailed(
            f"budget: {n_tasks} tasks may cost up to ${estimate:.2f} (time {config.resources.time} x "
            f"{1 + config.resources.max_requeues} attempts x ${config.budget.gpu_hour:g}/device-hour x "
            f"{devices(config)}) but only ${max(remaining, 0):.2f} remains under the ${config.budget.max_dollars:g} "
            f"cap in {config.budget.ledger}; not submitted"
        )
    return figures

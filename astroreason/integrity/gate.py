"""The ceiling gate: a result above what is plausible is recorded as suspect, never as a success.

On Galaxy10 DECaLS the best published purpose-built CNN reaches 95.5 % and one careful person by eye about 90 %
(docs/facts.md); a vision-language model above 95 % most likely reads a shortcut (the run that once scored 99 %
read the row index of the class-sorted file). The gate marks such a result suspect, with the reason, in its run's
`SUSPECT.json` and in the ledger's status.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..io import read_json_file, write_json_atomic
from . import SUSPECT_FILE

DEFAULT_CEILING = 0.95  # Galaxy10 DECaLS: best published CNN 95.5 %, a careful person by eye ~90 %


@dataclass
class GateVerdict:
    """Whether a metric passed the ceiling, and why not."""

    metric: str
    value: float
    ceiling: float
    suspect: bool
    reason: str


def check_ceiling(value: float, *, ceiling: float = DEFAULT_CEILING, metric: str = "accuracy") -> GateVerdict:
    """A value above `ceiling` is suspect."""
    if not 0 < ceiling <= 1:
        raise UserError(f"ceiling: expected a number in (0, 1], got {ceiling}")
    value = float(value)
    if value > ceiling:
        reason = (
            f"{metric} {value:.4f} is above the ceiling {ceiling:.4f} (best published Galaxy10 DECaLS CNN 0.955, "
            "a careful person ~0.90): most likely a shortcut (row index, duplicate, leaked column); audit the run"
        )
        return GateVerdict(metric, value, ceiling, True, reason)
    return GateVerdict(metric, value, ceiling, False, f"{metric} {value:.4f} <= ceiling {ceiling:.4f}")


def read_result(path) -> dict:
    """An evaluation `result.json` (a file, or the directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "result.json"
    if not path.is_file():
        raise UserError(f"{path}: no result file")
    return read_json_file(path, "evaluation result", keys=("metrics.accuracy",))


def gate_result(result_path, *, ceiling: float = DEFAULT_CEILING, metric: str = "accuracy") -> GateVerdict:
    """Gate an evaluation result; a suspect one is marked in `SUSPECT.json` beside its `result.json`."""
    result_path = Path(result_path)
    result = read_result(result_path)
    if metric not in result["metrics"]:
        raise UserError(f"{result_path}: no metric {metric!r} (has {', '.join(sorted(result['metrics']))})")
    verdict = check_ceiling(result["metrics"][metric], ceiling=ceiling, metric=metric)
    if verdict.suspect:
        run_dir = result_path if result_path.is_dir() else result_path.parent
        mark_suspect(run_dir, "ceiling", verdict.reason, value=verdict.value, ceiling=ceiling)
    return verdict


def mark_suspect(run_dir, rule: str, reason: str, **details) -> Path:
    """Add one reason to the run's `SUSPECT.json` (created if absent; earlier reasons are kept)."""
    path = Path(run_dir) / SUSPECT_FILE
    record = read_suspect(run_dir) or {"suspect": True, "reasons": []}
    entry = {"rule": rule, "reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **details}
    if not any(r["rule"] == rule and r["reason"] == reason for r in record["reasons"]):
        record["reasons"].append(entry)
    write_json_atomic(path, record)
    return path


def read_suspect(run_dir) -> dict | None:
    """The run's `SUSPECT.json`, or None when nothing marked it."""
    path = Path(run_dir) / SUSPECT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        # A mark that cannot be read is still a mark: never let a broken file turn a suspect run into a success.
        return {"suspect": True, "reasons": [{"rule": "unreadable", "reason": f"{path} is malformed"}]}

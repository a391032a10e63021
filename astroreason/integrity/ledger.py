"""The ledger: an append-only `results.tsv`, hash-chained, and the `experiment_log.md` generated from it.

Only the pipeline writes it (`append_result`). Each row carries the hash of the row before it (`prev_sha256`) and
its own hash (`row_sha256`, over its fields and the previous hash), so a row edited, removed, reordered or cut short
by hand breaks the chain. Every append first verifies the whole ledger and refuses (`CheckFailed`, exit 1) to extend
one that is malformed or edited: a tampered history is reported, never silently continued. The chain detects edits,
it does not authenticate: someone who recomputes every hash can rewrite history, which is what git is for.

An append rewrites the file atomically (the verified old bytes plus one line, temp file + rename) under a lock, so
parallel runs of a sweep never lose or interleave rows, and a crash leaves the old ledger whole.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from filelock import FileLock

from ..errors import CheckFailed, UserError
from ..io import sha256_bytes, write_text_atomic

LEDGER_FILE = "results.tsv"
LOG_FILE = "experiment_log.md"
STATUSES = ("keep", "discard", "crash", "suspect")
GENESIS = sha256_bytes("astroreason results.tsv v1")


@dataclass
class LedgerRow:
    """One result in the ledger.

    Args:
        time: UTC time of the append (ISO 8601); filled in by `append_result` when empty.
        commit: Git commit of the code that produced the result.
        dirty: Whether the working tree had uncommitted changes (`true`/`false`/`unknown`).
        config_sha256: Hash of the run's configuration.
        modality: `image` or `tokens` (or another arm's name).
        seed: The run's seed.
        metric: Name of the headline metric (e.g. `accuracy`).
        value: Its value.
        interval: Its 95 % interval, `lo,hi` (empty when none).
        cost: What it cost (e.g. `tokens=123456`, `usd=1.20`, `gpu_h=3.5`).
        status: `keep`, `discard`, `crash` or `suspect`.
        description: One line: what was tried, and why a suspect row is suspect.
    """

    time: str = ""
    commit: str = ""
    dirty: str = "unknown"
    config_sha256: str = ""
    modality: str = ""
    seed: str = ""
    metric: str = "accuracy"
    value: str = ""
    interval: str = ""
    cost: str = ""
    status: str = "keep"
    description: str = ""


FIELDS = tuple(f.name for f in fields(LedgerRow))
COLUMNS = FIELDS + ("prev_sha256", "row_sha256")
HEADER = "\t".join(COLUMNS)


def _clean(value) -> str:
    """One TSV cell: no tab or newline can break the row."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_clean(v) for v in value)
    return " ".join(str(value).replace("\t", " ").split())


def row_hash(cells: list[str], prev: str) -> str:
    return sha256_bytes(prev, *cells)


def verify(project_dir) -> list[dict]:
    """The ledger's rows (as dicts), after checking its header, every row's shape, status and hash chain.

    Raises `CheckFailed` naming the first bad line. A missing ledger is an empty one.
    """
    path = Path(project_dir) / LEDGER_FILE
    if not path.exists():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        raise CheckFailed(
            f"{path}: last line is cut short (no newline): the ledger was edited or a write was torn; "
            "restore it from git, it is never extended as it is"
        )
    lines = text.splitlines()
    if not lines or lines[0] != HEADER:
        raise CheckFailed(f"{path}: line 1 is not the ledger header; not a results ledger written by astroreason")
    rows, prev = [], GENESIS
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        if len(cells) != len(COLUMNS):
            raise CheckFailed(
                f"{path}: line {number} has {len(cells)} columns, expected {len(COLUMNS)} (edited by hand?)"
            )
        row = dict(zip(COLUMNS, cells))
        if row["status"] not in STATUSES:
            raise CheckFailed(f"{path}: line {number} has status {row['status']!r} (expected {', '.join(STATUSES)})")
        if row["prev_sha256"] != prev:
            raise CheckFailed(
                f"{path}: line {number} does not chain to the line before it (a row was removed, "
                "reordered or edited by hand)"
            )
        if row["row_sha256"] != row_hash(cells[: len(FIELDS)], prev):
            raise CheckFailed(f"{path}: line {number} does not match its hash (edited by hand)")
        rows.append(row)
        prev = row["row_sha256"]
    return rows


@contextlib.contextmanager
def _locked(project_dir):
    project_dir = Path(project_dir)
    project_dir.mkdir(parents=True, exist_ok=True)
    # flock on a lock file beside the ledger; on NFS it excludes other machines only where the server supports locks
    # (see `astroreason.budget.ledger` for what the lock promises on each kind of filesystem).
    with FileLock(project_dir / f".{LEDGER_FILE}.lock"):
        yield


def append_result(project_dir, row: LedgerRow | dict) -> dict:
    """Verify the ledger, append one row, regenerate `experiment_log.md`; returns the row written (with hashes)."""
    if isinstance(row, dict):
        unknown = sorted(set(row) - set(FIELDS))
        if unknown:
            raise UserError(f"ledger row: unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})")
        row = LedgerRow(**row)
    if row.status not in STATUSES:
        raise UserError(f"ledger row: status must be one of {', '.join(STATUSES)}, got {row.status!r}")
    if not row.time:
        row.time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = Path(project_dir) / LEDGER_FILE
    with _locked(project_dir):
        rows = verify(project_dir)
        old = path.read_text() if path.exists() else HEADER + "\n"
        prev = rows[-1]["row_sha256"] if rows else GENESIS
        cells = [_clean(v) for v in asdict(row).values()]
        written = dict(zip(COLUMNS, cells + [prev, row_hash(cells, prev)]))
        write_text_atomic(path, old + "\t".join(written.values()) + "\n")
        write_log(project_dir, rows + [written])
    return written


def render_log(rows: list[dict]) -> str:
    """`experiment_log.md`: every row, newest last, suspect ones called out."""
    lines = [
        "# Experiment log",
        "",
        f"Generated from `{LEDGER_FILE}` by astroreason on every append; do not edit (edits are overwritten, and the",
        "ledger itself is hash-chained).",
        "",
        f"{len(rows)} results: " + ", ".join(f"{sum(r['status'] == s for r in rows)} {s}" for s in STATUSES) + ".",
        "",
        "| # | time | commit | modality | seed | metric | value | interval | cost | status | description |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, start=1):
        commit = (r["commit"][:10] + ("+dirty" if r["dirty"] == "true" else "")) if r["commit"] else "?"
        status = f"**{r['status'].upper()}**" if r["status"] == "suspect" else r["status"]
        cells = [
            str(i),
            r["time"],
            commit,
            r["modality"],
            r["seed"],
            r["metric"],
            r["value"],
            r["interval"],
            r["cost"],
            status,
            r["description"].replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_log(project_dir, rows: list[dict] | None = None) -> Path:
    rows = verify(project_dir) if rows is None else rows
    path = Path(project_dir) / LOG_FILE
    write_text_atomic(path, render_log(rows))
    return path


def row_from_result(
    result: dict,
    *,
    run_dir=None,
    status: str = "keep",
    description: str = "",
    metric: str = "accuracy",
    ceiling: float | None = None,
    cost: str | None = None,
) -> LedgerRow:
    """A ledger row from an evaluation result (`evaluation.harness.evaluate`'s dict).

    The status is forced to `suspect` when the ceiling gate trips or the run (`run_dir`) carries `SUSPECT.json`
    (training alarms, a failed audit), and the reasons go into the description; a lint override is named there too.
    """
    # lazy: `ledger verify` loads this module; the gate and the lint only when a row is made
    from .gate import DEFAULT_CEILING, check_ceiling, mark_suspect, read_suspect
    from .lint import read_lint_record

    metrics = result["metrics"]
    if metric not in metrics:
        raise UserError(f"result: no metric {metric!r}")
    prov = result.get("provenance", {})
    config = result.get("config", {})
    reasons = []
    verdict = check_ceiling(metrics[metric], ceiling=DEFAULT_CEILING if ceiling is None else ceiling, metric=metric)
    if verdict.suspect:
        reasons.append(verdict.reason)
        if run_dir is not None:
            mark_suspect(run_dir, "ceiling", verdict.reason, value=verdict.value, ceiling=verdict.ceiling)
    notes = []
    for directory in dict.fromkeys(Path(d) for d in (run_dir, config.get("output_dir"), config.get("model")) if d):
        marked = read_suspect(directory)
        if marked:
            reasons += [r["reason"] for r in marked.get("reasons", []) if r["reason"] not in reasons]
        lint = read_lint_record(directory) if directory.is_dir() else None
        if lint and lint.get("overridden"):
            names = ", ".join(sorted({f["name"] for f in lint["overridden"]}))
            note = f"LINT OVERRIDE ({names}): {(lint.get('override') or {}).get('reason', '')}"
            notes += [note] if note not in notes else []  # the eval's record and its model's name the same one
    interval = metrics.get("interval", {}).get(metric)
    if cost is None:
        tokens = (result.get("prompt_tokens") or 0) + (result.get("completion_tokens") or 0)
        cost = f"tokens={tokens}" if tokens else ""
    text = " ".join([description] + notes + ([f"SUSPECT: {'; '.join(reasons)}"] if reasons else []))
    return LedgerRow(
        commit=prov.get("commit") or "",
        dirty=_clean(prov.get("dirty")) if prov.get("dirty") is not None else "unknown",
        config_sha256=prov.get("config_sha256") or "",
        modality=config.get("modality", ""),
        seed=_clean(prov.get("seed", config.get("seed"))),
        metric=metric,
        value=_clean(float(metrics[metric])),
        interval=_clean(interval) if interval else "",
        cost=cost,
        status="suspect" if reasons else status,
        description=text.strip(),
    )


def record_result(project_dir, result: dict, **kwargs) -> dict:
    """`row_from_result` then `append_result`: the one call an evaluation makes after writing `result.json`."""
    return append_result(project_dir, row_from_result(result, **kwargs))

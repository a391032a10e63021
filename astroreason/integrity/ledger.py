"""The ledger: an append-only `results.tsv`, hash-chained, and the `experiment_log.md` generated from it.

Only the pipeline writes it (`append_result`). Each row carries the hash of the row before it (`prev_sha256`) and
its own hash (`row_sha256`, over its fields and the previous hash), so a row edited, removed, reordered or cut short
by hand breaks the chain. Every append first verifies the whole ledger and refuses (`CheckFailed`, exit 1) to extend
one that is malformed or edited: a tampered history is reported, never silently continued. The chain detects edits,
it does not authenticate: someone who recomputes every hash can rewrite history, which is what git is for.

A result recorded under an experiment name is judged against the best kept result of that experiment on the same
galaxies (same split manifest, split and ordered sample indices, checked by hash): `keep` only when the paired
bootstrap interval of the accuracy difference lies above 0 and the difference exceeds the experiment's noise floor,
`discard` otherwise; the first result of an experiment is its baseline (`keep`). The ceiling gate and the probes'
`suspect` wins over both. The row records the baseline, the difference, its interval and the McNemar p
(docs/integrity.md, "Verdicts").

An append rewrites the file atomically (the verified old bytes plus one line, temp file + rename) under a lock, so
parallel runs of a sweep never lose or interleave rows, and a crash leaves the old ledger whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from filelock import FileLock

from ..errors import CheckFailed, UserError
from ..io import sha256_bytes, sha256_file, write_json_atomic, write_text_atomic
from .summary import experiment_summaries, plot_experiments

LEDGER_FILE = "results.tsv"
LOG_FILE = "experiment_log.md"
PLOT_FILE = "experiment_log.png"  # the metric over time per experiment, beside the log and linked from it
NOISE_FILE = "noise_floors.json"  # per experiment: the smallest accuracy difference that counts as a change
PREDICTIONS_FILE = "predictions.jsonl"  # an evaluation's per-galaxy records (`evaluation.harness` writes it)
STATUSES = ("keep", "discard", "crash", "suspect")
VERSION = 2  # the header names the version: v1 had no verdict columns
GENESIS = sha256_bytes(f"astroreason results.tsv v{VERSION}")
V1_GENESIS = sha256_bytes("astroreason results.tsv v1")


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
        cost: What it cost (e.g. `tokens=123456`, `usd=1.20`, `gpu_h=3.5`); an evaluation's also names the estimate
            it started from (`estimated_usd=1.10`).
        status: `keep`, `discard`, `crash` or `suspect`.
        description: One line: what was tried, and why a suspect row is suspect.
        experiment: The experiment the result belongs to; only results of one experiment are compared (empty: no
            comparison, the status is the caller's).
        run_dir: The evaluation's directory (relative to the ledger's directory when inside it).
        manifest_sha256: Hash of the split manifest the galaxies came from.
        split: The split evaluated.
        n: How many galaxies were evaluated.
        galaxies_sha256: Hash of the manifest, the split and the ordered sample indices: two rows compare only when
            theirs are equal.
        predictions_sha256: Hash of the run's `predictions.jsonl` when recorded (a baseline changed since is refused).
        baseline: The row it was compared with (`row N <run_dir>`), empty when none.
        difference: Accuracy difference, this result minus the baseline.
        difference_interval: Paired bootstrap 95 % interval of the difference, `lo,hi`.
        p_value: Exact McNemar p of the difference.
        comparison: One line: the verdict and why (first result, other galaxies, below the noise floor, ...).
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
    experiment: str = ""
    run_dir: str = ""
    manifest_sha256: str = ""
    split: str = ""
    n: str = ""
    galaxies_sha256: str = ""
    predictions_sha256: str = ""
    baseline: str = ""
    difference: str = ""
    difference_interval: str = ""
    p_value: str = ""
    comparison: str = ""


FIELDS = tuple(f.name for f in fields(LedgerRow))
COLUMNS = FIELDS + ("prev_sha256", "row_sha256")
HEADER = "\t".join(COLUMNS)
V1_FIELDS = FIELDS[: FIELDS.index("description") + 1]  # a v1 ledger's columns: read, never extended
V1_HEADER = "\t".join(V1_FIELDS + ("prev_sha256", "row_sha256"))


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

    Raises `CheckFailed` naming the first bad line. A missing ledger is an empty one. A v1 ledger (before the
    verdict columns) is read too, its rows given the new columns empty.
    """
    return _read(project_dir)[1]


def _read(project_dir) -> tuple[int, list[dict]]:
    """The ledger's version and verified rows (`verify`)."""
    path = Path(project_dir) / LEDGER_FILE
    if not path.exists():
        return VERSION, []
    text = path.read_text()
    if text and not text.endswith("\n"):
        raise CheckFailed(
            f"{path}: last line is cut short (no newline): the ledger was edited or a write was torn; "
            "restore it from git, it is never extended as it is"
        )
    lines = text.splitlines()
    headers = {HEADER: (VERSION, FIELDS, GENESIS), V1_HEADER: (1, V1_FIELDS, V1_GENESIS)}
    if not lines or lines[0] not in headers:
        raise CheckFailed(f"{path}: line 1 is not the ledger header; not a results ledger written by astroreason")
    version, names, prev = headers[lines[0]]
    columns = names + ("prev_sha256", "row_sha256")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        if len(cells) != len(columns):
            raise CheckFailed(
                f"{path}: line {number} has {len(cells)} columns, expected {len(columns)} (edited by hand?)"
            )
        row = dict.fromkeys(FIELDS, "") | dict(zip(columns, cells))
        if row["status"] not in STATUSES:
            raise CheckFailed(f"{path}: line {number} has status {row['status']!r} (expected {', '.join(STATUSES)})")
        if row["prev_sha256"] != prev:
            raise CheckFailed(
                f"{path}: line {number} does not chain to the line before it (a row was removed, "
                "reordered or edited by hand)"
            )
        if row["row_sha256"] != row_hash(cells[: len(names)], prev):
            raise CheckFailed(f"{path}: line {number} does not match its hash (edited by hand)")
        rows.append(row)
        prev = row["row_sha256"]
    return version, rows


@contextlib.contextmanager
def _locked(project_dir):
    project_dir = Path(project_dir)
    project_dir.mkdir(parents=True, exist_ok=True)
    # flock on a lock file beside the ledger; on NFS it excludes other machines only where the server supports locks
    # (see `astroreason.budget.ledger` for what the lock promises on each kind of filesystem).
    with FileLock(project_dir / f".{LEDGER_FILE}.lock"):
        yield


def append_result(project_dir, row: LedgerRow | dict, *, judge: bool = False) -> dict:
    """Verify the ledger, append one row, regenerate `experiment_log.md`; returns the row written (with hashes).

    With `judge`, the row (of an experiment, with its run's predictions) is first compared with the experiment's best
    kept result on the same galaxies, under the lock, and its status set (`judge_row`)."""
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
        version, rows = _read(project_dir)
        if version != VERSION:
            raise UserError(
                f"{path}: a v{version} results ledger (before the keep/discard verdict columns): it is still read "
                f"(`ledger verify`, `ledger log`) but never extended; move it aside (e.g. to results.v{version}.tsv) "
                "and a v2 ledger starts here"
            )
        if judge:
            judge_row(project_dir, rows, row)
        floors = noise_floors(project_dir)  # read (and refused when malformed) before anything is written
        old = path.read_text() if path.exists() else HEADER + "\n"
        prev = rows[-1]["row_sha256"] if rows else GENESIS
        cells = [_clean(v) for v in asdict(row).values()]
        written = dict(zip(COLUMNS, cells + [prev, row_hash(cells, prev)]))
        write_text_atomic(path, old + "\t".join(written.values()) + "\n")
        write_log(project_dir, rows + [written], floors)
    return written


def render_log(rows: list[dict], floors: dict[str, float] | None = None, plot: str | None = None) -> str:
    """`experiment_log.md`: a summary per experiment (best so far, verdict counts, dollars, noise floor), the figure
    `plot` when drawn, then every row, newest last, suspect ones called out, each verdict with its baseline (`#N`),
    the accuracy difference [95 % interval] and the McNemar p. `floors`: each experiment's noise floor."""
    lines = [
        "# Experiment log",
        "",
        f"Generated from `{LEDGER_FILE}` by astroreason on every append; do not edit (edits are overwritten, and the",
        "ledger itself is hash-chained).",
        "",
        f"{len(rows)} results: " + ", ".join(f"{sum(r['status'] == s for r in rows)} {s}" for s in STATUSES) + ".",
        "",
    ]
    summaries = experiment_summaries(rows, floors or {})
    if summaries:
        lines += _summary_lines(summaries)
    if plot:
        lines += [f"![the metric over time per experiment, best so far and its noise band]({plot})", ""]
    lines += [
        "## Results",
        "",
        "| # | time | commit | experiment | modality | seed | metric | value | interval | vs | difference [95 %] | p "
        "| cost | status | verdict | description |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, start=1):
        commit = (r["commit"][:10] + ("+dirty" if r["dirty"] == "true" else "")) if r["commit"] else "?"
        status = f"**{r['status'].upper()}**" if r["status"] in ("suspect", "crash") else r["status"]
        baseline = "#" + r["baseline"].split()[1] if r["baseline"] else ""
        difference = f"{r['difference']} [{r['difference_interval']}]" if r["difference"] else ""
        cells = [
            str(i),
            r["time"],
            commit,
            r["experiment"],
            r["modality"],
            r["seed"],
            r["metric"],
            r["value"],
            r["interval"],
            baseline,
            difference,
            r["p_value"],
            r["cost"],
            status,
            r["comparison"],
            r["description"],
        ]
        lines.append(_table_row(cells))
    return "\n".join(lines) + "\n"


def _table_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def _summary_lines(summaries: list[dict]) -> list[str]:
    """The per-experiment table: the best kept result (value, row, run), how many rows got each verdict, the dollars
    the rows' cost cells name and the noise floor the verdicts use."""
    lines = [
        "## Experiments",
        "",
        "| experiment | results | best so far | kept | discarded | suspect | crashed | dollars spent | noise floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        if s["best"]:
            number, row = s["best"]
            best = f"{row['value']} ({row['metric']}, #{number}" + (f" {row['run_dir']})" if row["run_dir"] else ")")
            if s["galaxy_sets"] > 1:
                best += f"; kept rows on {s['galaxy_sets']} sets of galaxies, never compared across them"
        else:
            best = "none kept"
        spent = f"{s['dollars']:.4f}"
        if s["rows_without_dollars"]:
            k = s["rows_without_dollars"]
            spent += f" ({k} row{'s' if k != 1 else ''} name no usd)"
        c = s["counts"]
        cells = [s["experiment"], str(len(s["rows"])), best, str(c["keep"]), str(c["discard"]), str(c["suspect"])]
        lines.append(_table_row(cells + [str(c["crash"]), spent, f"{s['noise_floor']:g}"]))
    return lines + [""]


def write_log(project_dir, rows: list[dict] | None = None, floors: dict[str, float] | None = None) -> Path:
    """Regenerate `experiment_log.md` and, when a row has a value, its figure `experiment_log.png` beside it."""
    rows = verify(project_dir) if rows is None else rows
    floors = noise_floors(project_dir) if floors is None else floors
    summaries = experiment_summaries(rows, floors)
    plot = None
    if any(r["value"] for r in rows):
        plot_experiments(summaries, Path(project_dir) / PLOT_FILE)
        plot = PLOT_FILE
    path = Path(project_dir) / LOG_FILE
    write_text_atomic(path, render_log(rows, floors, plot))
    return path


def noise_floors(project_dir) -> dict[str, float]:
    """Every experiment's recorded noise floor (`noise_floor`'s values)."""
    return {name: float(record["value"]) for name, record in _noise_floors(project_dir).items()}


def noise_floor(project_dir, experiment: str) -> tuple[float, str]:
    """The experiment's recorded noise floor and its source; (0.0, "default") when none was recorded."""
    record = _noise_floors(project_dir).get(experiment)
    return (float(record["value"]), record["source"]) if record else (0.0, "default")


def _noise_floors(project_dir) -> dict:
    path = Path(project_dir) / NOISE_FILE
    if not path.is_file():
        return {}
    try:
        floors = json.loads(path.read_text())
        for record in floors.values():
            float(record["value"]), record["source"]
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        raise UserError(f"{path}: not a noise-floor file (expected {{experiment: {{value, source}}}})") from None
    return floors


def set_noise_floor(project_dir, experiment: str, value: float, source: str) -> dict:
    """Record the experiment's noise floor: an accuracy difference at most this large is `discard`, however
    significant. Later results are judged with it; rows already written keep the floor they name."""
    if not experiment:
        raise UserError("noise floor: give the experiment's name")
    if not 0 <= value < 1:
        raise UserError(f"noise floor: expected an accuracy difference in [0, 1), got {value}")
    if not source.strip():
        raise UserError("noise floor: give its source (how it was measured), e.g. --source 'seeds 0-4, std of acc'")
    with _locked(project_dir):
        floors = _noise_floors(project_dir)
        floors[experiment] = {
            "value": float(value),
            "source": " ".join(source.split()),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json_atomic(Path(project_dir) / NOISE_FILE, floors)
    return floors[experiment]


def read_predictions(run_dir) -> list[dict]:
    """A run's per-galaxy records (`predictions.jsonl`: index, label, prediction), in the order evaluated."""
    path = Path(run_dir) / PREDICTIONS_FILE
    try:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        for r in records:
            int(r["index"]), int(r["label"]), r["prediction"]
    except FileNotFoundError:
        raise UserError(
            f"{path}: no per-galaxy predictions; a result of an experiment is compared galaxy by galaxy"
        ) from None
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path}: unreadable per-galaxy predictions ({err})") from None
    if not records:
        raise UserError(f"{path}: no per-galaxy predictions in it")
    return records


def galaxies_hash(manifest_sha256: str, split: str, records: list[dict]) -> str:
    """What makes two evaluations comparable: the same manifest, split and ordered sample indices."""
    return sha256_bytes(manifest_sha256 or "", split or "", json.dumps([int(r["index"]) for r in records]))


def _short(sha: str) -> str:
    return sha[:12] if sha else "none"


def _run_path(project_dir, run_dir: str) -> Path:
    path = Path(run_dir)
    return path if path.is_absolute() else Path(project_dir) / path


def judge_row(project_dir, rows: list[dict], row: LedgerRow) -> None:
    """Compare `row` with the best kept result of its experiment on the same galaxies and set its verdict.

    `keep` when the paired bootstrap interval of the accuracy difference lies above 0 and the difference exceeds the
    noise floor, else `discard`; a suspect row stays suspect (the comparison is still recorded). The first result of
    an experiment, or the first on galaxies where the experiment has no kept result, is `keep`: the baseline there.
    """
    name = row.experiment
    kept = [(i, r) for i, r in enumerate(rows, start=1) if r["experiment"] == name and r["status"] == "keep"]
    kept = [(i, r) for i, r in kept if r["metric"] == row.metric]
    same = [(i, r) for i, r in kept if r["galaxies_sha256"] == row.galaxies_sha256]
    if not same:
        if kept:
            i, other = kept[-1]
            row.comparison = (
                f"baseline on other galaxies (row {i}: manifest {_short(other['manifest_sha256'])} "
                f"{other['split']} n={other['n']} vs manifest {_short(row.manifest_sha256)} {row.split} n={row.n}): "
                "not compared; the first result of this experiment on these galaxies, its baseline here"
            )
        else:
            row.comparison = f"first result of experiment {name!r}: the baseline"
        if row.status == "suspect":
            row.comparison += " (but suspect: no baseline)"
        return
    # The best: the highest kept value on these galaxies (the latest of equals).
    i, best = max(same, key=lambda pair: (float(pair[1]["value"]), pair[0]))
    row.baseline = f"row {i} {best['run_dir']}"
    base_dir = _run_path(project_dir, best["run_dir"])
    ours = read_predictions(_run_path(project_dir, row.run_dir))
    if (
        not (base_dir / PREDICTIONS_FILE).is_file()
        or sha256_file(base_dir / PREDICTIONS_FILE) != best["predictions_sha256"]
    ):
        _verdict(
            row,
            "discard",
            f"baseline row {i}'s {base_dir / PREDICTIONS_FILE} is gone or changed since it was "
            "recorded: not compared, so no improvement is shown",
        )
        return
    theirs = read_predictions(base_dir)
    labels = [int(r["label"]) for r in ours]
    if labels != [int(r["label"]) for r in theirs]:
        _verdict(row, "discard", f"baseline row {i} disagrees on the labels of the same galaxies: not compared")
        return
    # lazy: `ledger verify` loads this module; scipy only when a row is judged
    from ..stats import paired_comparison

    c = paired_comparison(labels, [r["prediction"] for r in ours], [r["prediction"] for r in theirs])
    floor, source = noise_floor(project_dir, name)
    diff, (lo, hi), p = c["accuracy_difference"], c["difference_interval"], c["mcnemar_p_value"]
    row.difference, row.difference_interval, row.p_value = f"{diff:+.4f}", f"{lo:+.4f},{hi:+.4f}", f"{p:.3g}"
    stats = f"vs row {i}: {diff:+.4f} [{lo:+.4f}, {hi:+.4f}] p={p:.3g}, noise floor {floor:g} ({source})"
    if lo <= 0:
        _verdict(row, "discard", f"{stats}: the interval does not exclude 0")
    elif diff <= floor:
        _verdict(row, "discard", f"{stats}: the gain is within the noise floor")
    else:
        _verdict(row, "keep", f"{stats}: better than the best; the new best")


def _verdict(row: LedgerRow, status: str, why: str) -> None:
    """Set the verdict, unless the ceiling gate or a probe already made the row suspect (suspect wins)."""
    if row.status == "suspect":
        row.comparison = f"{why} (but suspect)"
        return
    row.status, row.comparison = status, f"{status}: {why}"


def row_from_result(
    result: dict,
    *,
    run_dir=None,
    status: str = "keep",
    description: str = "",
    metric: str = "accuracy",
    ceiling: float | None = None,
    cost: str | None = None,
    experiment: str = "",
    project_dir=None,
) -> LedgerRow:
    """A ledger row from an evaluation result (`evaluation.harness.evaluate`'s dict).

    Under an `experiment` name the row also names the galaxies (manifest, split, ordered indices, hashed) and the
    hash of the run's `predictions.jsonl` (read from `run_dir`, else the result's `output_dir`), for `judge_row`;
    `run_dir` is written relative to `project_dir` when inside it.

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
        cost = result_cost(result)
    text = " ".join([description] + notes + ([f"SUSPECT: {'; '.join(reasons)}"] if reasons else []))
    row = LedgerRow(
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
        experiment=experiment,
    )
    run = run_dir or config.get("output_dir")
    if run:
        row.run_dir = _relative(run, project_dir)
    if experiment:
        if not run:
            raise UserError("result: no run directory (its per-galaxy predictions are what a verdict compares)")
        records = read_predictions(run)
        row.manifest_sha256, row.split = prov.get("manifest_sha256") or "", config.get("split", "")
        row.n = str(len(records))
        row.galaxies_sha256 = galaxies_hash(row.manifest_sha256, row.split, records)
    if run and (Path(run) / PREDICTIONS_FILE).is_file():  # the verdict's baseline check; `recorded_row`'s key
        row.predictions_sha256 = sha256_file(Path(run) / PREDICTIONS_FILE)
    return row


def recorded_row(project_dir, run_dir) -> dict | None:
    """The last row of `run_dir` recorded with its `predictions.jsonl` as it is now, if any: what an evaluation killed
    after appending its row, before its `result.json` named it, recorded (its rerun adopts the row, never adds a
    second one)."""
    predictions = Path(run_dir) / PREDICTIONS_FILE
    if not predictions.is_file():
        return None
    where, digest = _relative(run_dir, project_dir), sha256_file(predictions)
    rows = [r for r in verify(project_dir) if r["run_dir"] == where and r["predictions_sha256"] == digest]
    return rows[-1] if rows else None


def result_cost(result: dict) -> str:
    """The cost cell of an evaluation, `usd=X,estimated_usd=Y,tokens=N`: what this run paid (`usd`: answers from the
    cache cost it nothing, so an experiment's rows add up to what it spent), the estimate it started from when it made
    one (`estimated_usd`, the whole run's), and its tokens."""
    tokens = (result.get("prompt_tokens") or 0) + (result.get("completion_tokens") or 0)
    paid = ((result.get("spend") or {}).get("this_run") or {}).get("dollars", result.get("dollars"))
    parts = [f"usd={_clean(float(paid))}"] if paid is not None else []
    if (result.get("estimate") or {}).get("estimated_total_dollars") is not None:
        parts.append(f"estimated_usd={_clean(float(result['estimate']['estimated_total_dollars']))}")
    return ",".join(parts + ([f"tokens={tokens}"] if tokens else []))


def _relative(run_dir, project_dir) -> str:
    """`run_dir` relative to the ledger's directory when inside it (the project can move), else absolute."""
    run, project = Path(run_dir).resolve(), Path(project_dir).resolve() if project_dir is not None else None
    if project is not None and run.is_relative_to(project):
        return os.path.relpath(run, project)
    return str(run)


def record_result(project_dir, result: dict, **kwargs) -> dict:
    """`row_from_result` then `append_result`: the one call an evaluation makes after writing `result.json`.

    Under an `experiment` name the row is judged against the experiment's best (`judge_row`)."""
    row = row_from_result(result, project_dir=project_dir, **kwargs)
    return append_result(project_dir, row, judge=bool(row.experiment))


def record_crash(project_dir, *, experiment: str = "", run_dir=None, description: str = "", **fields) -> dict:
    """A run that died before its result: one `crash` row (no value), so the ledger shows what was tried."""
    if not description.strip():
        raise UserError("crash: give a description (what was tried and how it died)")
    row = LedgerRow(status="crash", experiment=experiment, description=description, **fields)
    if run_dir is not None:
        row.run_dir = _relative(run_dir, project_dir)
    return append_result(project_dir, row)

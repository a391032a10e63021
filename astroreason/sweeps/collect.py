"""Task states, the results table and the sweep's comparison report, all read from the tasks' files.

- `task_table`: one row per task: its state file (attempts, wall-clock, dollars, last checkpoint), its SLURM state
  while queued, and its accuracy once done.
- `collect`: `results.jsonl` (one row per finished task, with its seed and the hashes of its result files), one row
  per finished task in the sweep's results ledger (`results.tsv`, `astroreason.integrity.ledger`: hash-chained, with
  `experiment_log.md`; a task whose result is already there is not added again), the evaluation report of every
  task (`astroreason.evaluation.report.write_report`) and `sweep.md` / `sweep.json`:
  per arm the mean and 95 % t-interval over seeds, and between arms paired tests on the same galaxies
  (`paired_comparison`: per seed, and pooled over seeds where the pairs are (galaxy, seed)).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from itertools import combinations
from pathlib import Path

from ..errors import CheckFailed, UserError
from ..integrity.ledger import append_result, row_from_result, verify
from ..io import read_json_file, sha256_file, write_json_atomic, write_text_atomic
from .plan import Manifest
from .task import DONE, read_state

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
MAX_REPORT_RUNS = 12  # the per-run figures get unreadable beyond this; sweep.md covers any size


def _result(task_dir: str | Path) -> dict | None:
    path = Path(task_dir) / "result.json"
    return read_json_file(path, "evaluation result", keys=("metrics.accuracy", "provenance")) if path.exists() else None


def task_table(manifest: Manifest, slurm_states: dict[int, str] | None = None) -> list[dict]:
    rows = []
    for t in manifest.tasks:
        state = read_state(t.dir)
        last = state["history"][-1] if state["history"] else {}
        result = _result(t.dir) if state["status"] == DONE else None
        rows.append(
            {
                "index": t.index,
                "name": t.name,
                "arm": t.arm,
                "seed": t.seed,
                "status": state["status"],
                "slurm": (slurm_states or {}).get(t.index),
                "attempts": state["attempts"],
                "elapsed_s": state["elapsed_s"],
                "dollars": state["dollars"],
                "checkpoint": last.get("checkpoint") or last.get("resumed_from"),
                "step": last.get("step"),
                "accuracy": result["metrics"]["accuracy"] if result else None,
            }
        )
    return rows


def print_table(rows: list[dict], columns: list[str], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for row in rows:
        table.add_row(
            *(
                "-" if row.get(c) is None else f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c])
                for c in columns
            )
        )
    Console(width=160).print(table)


def seed_interval(values: list[float], level: float = 0.95) -> list[float] | None:
    """Student-t interval of the mean over seeds (None with fewer than two seeds)."""
    import numpy as np
    from scipy import stats

    if len(values) < 2:
        return None
    a = np.asarray(values, dtype=float)
    sem = a.std(ddof=1) / math.sqrt(len(a))
    if sem == 0:
        return [float(a.mean()), float(a.mean())]
    lo, hi = stats.t.interval(level, len(a) - 1, loc=a.mean(), scale=sem)
    return [float(lo), float(hi)]


def arm_summary(results: dict[str, list[dict]]) -> dict:
    import numpy as np

    summary = {}
    for arm, rows in results.items():
        summary[arm] = {"seeds": [r["seed"] for r in rows], "n_tasks": len(rows)}
        for m in METRICS:
            values = [r[m] for r in rows]
            summary[arm][m] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                "interval": seed_interval(values),
                "values": values,
            }
    return summary


def arm_comparisons(manifest: Manifest, by_arm: dict[str, list[dict]]) -> dict:
    """Paired tests between every two arms, matching their tasks by seed (the same seeds run in every arm)."""
    # lazy: `sweep status` loads this module; the evaluation reports only when collecting
    from ..evaluation.metrics import paired_comparison
    from ..evaluation.report import compare_runs, load_run

    runs = {}
    comparisons = {}
    for a, b in combinations(sorted(by_arm), 2):
        seeds_a = {r["seed"]: r for r in by_arm[a]}
        seeds_b = {r["seed"]: r for r in by_arm[b]}
        common = sorted(set(seeds_a) & set(seeds_b))
        if not common:
            continue
        per_seed, labels, pa, pb = {}, [], [], []
        try:
            for seed in common:
                ra = runs.setdefault(seeds_a[seed]["dir"], load_run(seeds_a[seed]["dir"]))
                rb = runs.setdefault(seeds_b[seed]["dir"], load_run(seeds_b[seed]["dir"]))
                per_seed[str(seed)] = compare_runs(ra, rb, seed=seed)  # refuses runs on different galaxies
                labels += [r["label"] for r in ra["records"]]
                pa += [r["prediction"] for r in ra["records"]]
                pb += [r["prediction"] for r in rb["records"]]
        except UserError as err:  # e.g. arms over different data: no paired test, and the report says why
            comparisons[f"{a} vs {b}"] = {"a": a, "b": b, "seeds": common, "not_paired": str(err)}
            continue
        comparisons[f"{a} vs {b}"] = {
            "a": a,
            "b": b,
            "seeds": common,
            "per_seed": per_seed,
            "pooled": paired_comparison(labels, pa, pb, seed=0),
        }
    return comparisons


def render_sweep(manifest: Manifest, summary: dict, comparisons: dict, rows: list[dict]) -> str:
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    lines = [
        f"# Sweep {manifest.sweep.name}",
        "",
        f"{len(rows)} finished tasks of {len(manifest.tasks)}; every number is read from the tasks' result.json "
        "and samples.jsonl (listed in results.jsonl with their SHA-256).",
        "",
        "## Arms (mean over seeds, 95 % t-interval)",
        "",
        "| arm | seeds | accuracy | balanced acc. | macro-F1 |",
        "|---|---|---|---|---|",
    ]
    for arm, s in summary.items():
        cells = []
        for m in METRICS:
            iv = s[m]["interval"]
            cells.append(f"{pct(s[m]['mean'])}" + (f" [{pct(iv[0])}, {pct(iv[1])}]" if iv else " (one seed)"))
        lines.append(f"| {arm} | {len(s['seeds'])} | " + " | ".join(cells) + " |")
    if comparisons:
        lines += [
            "",
            "## Paired comparisons between arms (same galaxies, matched seeds)",
            "",
            "Pooled: the pairs are (galaxy, seed), so one galaxy counts once per seed.",
            "",
            "| a vs b | seeds | pooled acc. a - b [95 % CI] | exact McNemar p (pooled) | p per seed |",
            "|---|---|---|---|---|",
        ]
        for name, c in comparisons.items():
            if "not_paired" in c:
                lines.append(f"| {name} | {len(c['seeds'])} | not paired: {c['not_paired']} | - | - |")
                continue
            p = c["pooled"]
            lo, hi = p["difference_interval"]
            per_seed = ", ".join(f"{s}: {v['mcnemar_p_value']:.3g}" for s, v in c["per_seed"].items())
            lines.append(
                f"| {name} | {len(c['seeds'])} | {pct(p['accuracy_difference'])} [{pct(lo)}, {pct(hi)}] "
                f"| {p['mcnemar_p_value']:.3g} | {per_seed} |"
            )
    lines += [
        "",
        "## Tasks",
        "",
        "| task | arm | seed | accuracy | attempts | wall-clock s | $ |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['arm']} | {r['seed']} | {pct(r['accuracy'])} | {r['attempts']} "
            f"| {r['elapsed_s']:.1f} | {r['dollars']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def record_in_ledger(manifest: Manifest, rows: list[dict]) -> list[dict]:
    """Append one results-ledger row per collected task whose result is not in `results.tsv` yet; returns those added.

    A task's row is known by its `result_sha256=` in the description, so collecting twice adds nothing and a task
    whose result changed (evaluated again) gets a new row. The ceiling gate and the run's SUSPECT marks apply as for
    any evaluation (`integrity.ledger.row_from_result`).
    """

    project = manifest.out_dir
    known = {m for r in verify(project) for m in re.findall(r"result_sha256=([0-9a-f]{64})", r["description"])}
    added = []
    for r in rows:
        if r["result_sha256"] in known:
            continue
        description = f"sweep {manifest.sweep.name} arm {r['arm']} task {r['task']} result_sha256={r['result_sha256']}"
        cost = f"usd={r['dollars']:.6g},wall_s={r['elapsed_s']:.1f},attempts={r['attempts']}"
        experiment = manifest.sweep.experiment
        row = row_from_result(
            _result(r["dir"]),
            run_dir=r["dir"],
            description=description,
            cost=cost,
            experiment=experiment,
            project_dir=project,
        )
        added.append(append_result(project, row, judge=bool(experiment)))
        known.add(r["result_sha256"])
    return added


def collect(manifest: Manifest, *, partial: bool = False) -> dict:
    """Gather finished tasks into results.jsonl and the reports; refuses (exit 1) while tasks are unfinished unless
    `partial`."""
    # lazy: `sweep status` loads this module; the evaluation reports only when collecting
    from ..evaluation.report import write_report

    tasks = manifest.tasks
    done = [t for t in tasks if read_state(t.dir)["status"] == DONE and (Path(t.dir) / "result.json").exists()]
    missing = [t.index for t in tasks if t not in done]
    if missing and not partial:
        raise CheckFailed(
            f"sweep {manifest.sweep.name}: tasks {missing} are not done (`sweep status`); "
            "pass --partial to collect the finished ones"
        )
    if not done:
        raise CheckFailed(f"sweep {manifest.sweep.name}: no finished task to collect")
    rows = []
    for t in done:
        result, state = _result(t.dir), read_state(t.dir)
        m = result["metrics"]
        rows.append(
            {
                "sweep": manifest.sweep.name,
                "task": t.name,
                "index": t.index,
                "arm": t.arm,
                "values": t.values,
                "seed": t.seed,
                "dir": t.dir,
                "n": m["n"],
                **{k: m[k] for k in METRICS},
                "accuracy_interval": m["interval"]["accuracy"],
                "parse_failure_rate": m["parse_failure_rate"],
                "attempts": state["attempts"],
                "elapsed_s": state["elapsed_s"],
                "dollars": state["dollars"],
                "commit": result["provenance"].get("commit"),
                "manifest_sha256": result["provenance"].get("manifest_sha256"),
                "result_sha256": sha256_file(Path(t.dir) / "result.json"),
                "samples_sha256": sha256_file(Path(t.dir) / "samples.jsonl"),
            }
        )
    out = manifest.out_dir
    write_text_atomic(out / "results.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    added = record_in_ledger(manifest, rows)
    by_arm: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_arm[r["arm"]].append(r)
    summary = arm_summary(by_arm)
    comparisons = arm_comparisons(manifest, by_arm)
    report_dir = out / "report"
    if len(done) <= MAX_REPORT_RUNS:
        write_report([t.dir for t in done], report_dir)
    else:
        report_dir.mkdir(exist_ok=True)
    write_text_atomic(report_dir / "sweep.md", render_sweep(manifest, summary, comparisons, rows))
    write_json_atomic(report_dir / "sweep.json", {"arms": summary, "comparisons": comparisons, "missing": missing})
    return {
        "rows": rows,
        "arms": summary,
        "comparisons": comparisons,
        "missing": missing,
        "report": str(report_dir),
        "ledger_added": added,
    }

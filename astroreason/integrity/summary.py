"""What `experiment_log.md` says above its rows: one summary per experiment (best so far, verdict counts, dollars
spent) and `experiment_log.png`, the metric over time per experiment with the best-so-far line and its noise band.

Everything is computed from the ledger's rows (as `ledger.verify` returns them) and the recorded noise floors; the
figure needs matplotlib, imported only when it is drawn, so `ledger verify` stays light.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..io import atomic_path

NO_EXPERIMENT = "(no experiment)"  # the group of rows recorded without an experiment name
PLOT_DPI = 100
PLOT_PANEL_INCHES = (8.0, 3.0)  # width and height of one experiment's panel; panels are stacked
BAND_COLOR = "#cfe0f2"  # the noise band, drawn opaque so that a test can find it in the pixels
_USD = re.compile(r"(?:^|,)usd=([0-9.eE+-]+)")


def dollars(cost: str) -> float | None:
    """The dollars a row's `cost` cell names (`usd=1.20,...`), None when it names none."""
    match = _USD.search(cost or "")
    return float(match.group(1)) if match else None


def experiment_summaries(rows: list[dict], floors: dict[str, float]) -> list[dict]:
    """Per experiment, in the order each first appears: its rows (numbered as in the ledger, from 1), the count of
    each status, the best kept result, the dollars its rows name and its noise floor."""
    groups: dict[str, list[tuple[int, dict]]] = {}
    for number, row in enumerate(rows, start=1):
        groups.setdefault(row["experiment"] or NO_EXPERIMENT, []).append((number, row))
    summaries = []
    for name, members in groups.items():
        kept = [(number, r) for number, r in members if r["status"] == "keep" and r["value"]]
        best = max(kept, key=lambda pair: (float(pair[1]["value"]), pair[0])) if kept else None
        spent = [dollars(r["cost"]) for _, r in members]
        summaries.append(
            {
                "experiment": name,
                "rows": members,
                "counts": {
                    s: sum(r["status"] == s for _, r in members) for s in ("keep", "discard", "suspect", "crash")
                },
                "best": best,
                "dollars": sum(d for d in spent if d is not None),
                "rows_without_dollars": sum(d is None for d in spent),
                "noise_floor": floors.get(name, 0.0),
                "galaxy_sets": len({r["galaxies_sha256"] for _, r in kept}),
            }
        )
    return summaries


def best_so_far(members: list[tuple[int, dict]]) -> list[tuple[int, float]]:
    """(row number, the best kept value up to and including it), from the first kept row on."""
    line, best = [], None
    for number, r in members:
        if r["status"] == "keep" and r["value"]:
            best = float(r["value"]) if best is None else max(best, float(r["value"]))
        if best is not None:
            line.append((number, best))
    return line


def plot_experiments(summaries: list[dict], path: Path) -> Path:
    """Draw `path` (PNG): one panel per experiment, each result's value (with its interval) against its row number
    (the ledger's time order), coloured by status, crashes as dotted lines, and the best-so-far line with the band of
    plus or minus the experiment's noise floor around it."""
    # lazy: `ledger verify` imports the ledger; matplotlib only when the log's figure is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    colors = {"keep": "tab:green", "discard": "tab:grey", "suspect": "tab:red"}
    width, height = PLOT_PANEL_INCHES
    fig, axes = plt.subplots(len(summaries), 1, figsize=(width, height * len(summaries)), squeeze=False)
    for ax, s in zip(axes[:, 0], summaries):
        line = best_so_far(s["rows"])
        if line:
            xs, best = [x for x, _ in line], [y for _, y in line]
            floor = s["noise_floor"]
            if floor > 0:
                lower, upper = [b - floor for b in best], [b + floor for b in best]
                ax.fill_between(xs, lower, upper, step="post", color=BAND_COLOR, lw=0, label=f"± noise floor {floor:g}")
            label = "best so far (kept)" + ("" if floor > 0 else "; no noise floor recorded")
            ax.step(xs, best, where="post", color="tab:blue", lw=1.5, label=label)
        for status, color in colors.items():
            points = [(n, r) for n, r in s["rows"] if r["status"] == status and r["value"]]
            if not points:
                continue
            values = [float(r["value"]) for _, r in points]
            errors = [_interval_error(r) for _, r in points]
            ax.errorbar(
                [n for n, _ in points],
                values,
                yerr=[[e[0] for e in errors], [e[1] for e in errors]],
                fmt="o",
                color=color,
                capsize=3,
                label=status,
            )
        crashes = [n for n, r in s["rows"] if r["status"] == "crash"]
        for k, n in enumerate(crashes):
            ax.axvline(n, color="tab:red", ls=":", lw=1, label="crash" if k == 0 else None)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        metrics = sorted({r["metric"] for _, r in s["rows"] if r["value"]}) or ["accuracy"]
        ax.set_title(s["experiment"], fontsize=10)
        ax.set_xlabel("ledger row # (time order)")
        ax.set_ylabel(", ".join(metrics))
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=PLOT_DPI, format="png")
    plt.close(fig)
    return path


def _interval_error(row: dict) -> tuple[float, float]:
    """The distance from a row's value down and up to its interval's ends (0, 0 when it has none)."""
    if not row["interval"]:
        return 0.0, 0.0
    value = float(row["value"])
    lo, hi = (float(x) for x in row["interval"].split(","))
    return max(value - lo, 0.0), max(hi - value, 0.0)

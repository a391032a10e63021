"""Reports generated from results files only: a Markdown page and PNG figures where every number is read from a run's
`result.json` / `predictions.jsonl` and carries that run's provenance. Regenerating from the same files gives the same page.
"""

from __future__ import annotations

import json
import os
import textwrap
from itertools import combinations
from pathlib import Path

from ..arms import ARMS
from ..data.galaxy10 import DECALS_CLASSES
from ..errors import UserError
from ..integrity.fingerprint import read_fingerprint
from ..integrity.history import training_log_path
from ..io import (
    atomic_path,
    read_json_file,
    read_json_lines,
    read_json_record,
    require_keys,
    sha256_file,
    write_text_atomic,
)
from ..pretrain import CODE_PRETRAIN_RECORD, PRETRAIN_RECORD
from .figure_provenance import figure_metadata
from .harness import PREDICTIONS_NAME, RESULT_NAME
from .macros import MARKDOWN_NAME, TEX_NAME, render_markdown, render_tex
from .metrics import paired_comparison, tokens_per_galaxy
from .report_html import render_html
from .values import relative_to, report_values

# Every figure of the report, named, with its source files and their sha256 (`values.report_values`).
VALUES_NAME = "values.json"

# What a report reads of a finished run's result.json and of each line of its predictions.jsonl.
RESULT_KEYS = ("metrics.n", "config", "prompt_tokens", "completion_tokens")
PREDICTION_KEYS = ("index", "label", "prediction")


def load_run(run_dir: str | Path) -> dict:
    """A finished evaluation: its result and its per-galaxy predictions in split order."""

    run_dir = Path(run_dir)
    result_path, predictions_path = run_dir / RESULT_NAME, run_dir / PREDICTIONS_NAME
    if not result_path.exists():
        raise UserError(f"{run_dir}: no result.json (run `astroreason eval` into it first)")
    result = read_json_file(result_path, "evaluation result", keys=("status",))
    if result.get("status") != "complete":
        raise UserError(
            f"{run_dir}: the run is not complete (status {result.get('status')}: "
            f"{result.get('n_done')} of {result.get('n_total')} samples); resume it before reporting"
        )
    require_keys(result, RESULT_KEYS, str(result_path), "evaluation result")
    records = read_json_lines(predictions_path, "per-galaxy predictions file", keys=PREDICTION_KEYS)
    n = result["metrics"]["n"]
    if [r["index"] for r in records] != list(range(n)):
        raise UserError(f"{predictions_path}: per-sample records do not cover the {n} samples of result.json")
    log, log_path = training_log(run_dir, result["config"].get("model", ""))
    files = {RESULT_NAME: sha256_file(result_path), PREDICTIONS_NAME: sha256_file(predictions_path)}
    if log_path:
        files[Path(log_path).name] = sha256_file(log_path)
    return {
        "name": run_dir.name,
        "dir": str(run_dir),
        "result": result,
        "records": records,
        "training_log": log,
        "files_sha256": files,
        "warm_starts": warm_starts(result["config"].get("model", "")),
    }


def warm_starts(model: str) -> list[dict]:
    """The pretraining records (`astroreason.pretrain`) along an evaluated model's lineage: the model's folder, then
    the base each training run recorded in its fingerprint, back to the first model. A warm start one arm got is
    thereby disclosed beside its result, read from the file that pretraining wrote."""
    found, seen, path = {}, set(), Path(model) if model else None
    while path is not None and path.is_dir() and path.resolve() not in seen:
        seen.add(path.resolve())
        for name in (PRETRAIN_RECORD, CODE_PRETRAIN_RECORD):
            if name not in found and (path / name).is_file():
                found[name] = {**json.loads((path / name).read_text()), "record": str(path / name)}
        base = ((read_fingerprint(path) or {}).get("base") or {}).get("model_name_or_path")
        path = Path(base) if base else None
    return list(found.values())


def compare_runs(a: dict, b: dict, *, seed: int = 0) -> dict:
    """Paired comparison of two runs that scored the same galaxies of the same split manifest."""
    pa, pb = a["result"]["provenance"], b["result"]["provenance"]
    if (
        pa.get("manifest_sha256") != pb.get("manifest_sha256")
        or a["result"]["config"]["split"] != b["result"]["config"]["split"]
    ):
        raise UserError(f"{a['name']} and {b['name']} were not evaluated on the same split of the same manifest")
    labels_a = [r["label"] for r in a["records"]]
    if labels_a != [r["label"] for r in b["records"]]:
        raise UserError(f"{a['name']} and {b['name']} disagree on the labels of their samples: not the same galaxies")
    return paired_comparison(
        labels_a, [r["prediction"] for r in a["records"]], [r["prediction"] for r in b["records"]], seed=seed
    )


def class_names(result: dict) -> tuple[str, ...]:
    """A result's class names, by label (`classes`; a result written before it was recorded is Galaxy10 DECaLS's)."""
    return tuple(result.get("classes") or DECALS_CLASSES)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def arm_of(run: dict) -> str:
    """The run's modality and whether it zoomed, e.g. `image, zoom`: what a pair of runs compares."""
    zoom = "zoom" if run["result"].get("zoom") else "no zoom"
    return f"{run['result']['config']['modality']}, {zoom}"


def pair_kind(a: dict, b: dict) -> str:
    """How two runs differ, named for the table: zoom against no zoom of one modality is the zoom question."""
    (ma, za), (mb, zb) = (arm_of(r).split(", ") for r in (a, b))
    if ma == mb and za != zb:
        return f"{za} vs {zb} ({ma})"
    return f"{arm_of(a)} vs {arm_of(b)}"


def parsed_accuracy(run: dict) -> float | None:
    """Accuracy among the parsed answers: a gain that is only a better parse rate leaves it unchanged."""
    parsed = [r for r in run["records"] if r["prediction"] is not None]
    return sum(r["prediction"] == r["label"] for r in parsed) / len(parsed) if parsed else None


def stage_table(stages: dict[str, list[tuple[str, dict]]]) -> dict[str, list[dict]]:
    """What each training stage of an arm adds: per arm, its stages in order (name, loaded run), each with its
    accuracy, its accuracy among parsed answers and, from the second on, the paired comparison with the stage before
    it on the same galaxies (the gain, its 95 % interval, the exact McNemar p)."""
    table = {}
    for arm, runs in stages.items():
        rows, previous = [], None
        for stage, run in runs:
            m = run["result"]["metrics"]
            row = {
                "stage": stage,
                "run": run["dir"],
                "accuracy": m["accuracy"],
                "accuracy_interval": m["interval"]["accuracy"],
                "parse_failure_rate": m["parse_failure_rate"],
                "parsed_accuracy": parsed_accuracy(run),
            }
            if signal := grpo_signal(run.get("training_log") or []):
                row["grpo_signal"] = signal
            if zoom := zoom_decisions(run["result"]):
                row["zoom"] = zoom
            if previous is not None:
                c = compare_runs(run, previous)
                row |= {
                    "gain": c["accuracy_difference"],
                    "gain_interval": c["difference_interval"],
                    "only_this_right": c["only_a_correct"],
                    "only_previous_right": c["only_b_correct"],
                    "mcnemar_p_value": c["mcnemar_p_value"],
                }
            rows.append(row)
            previous = run
        table[arm] = rows
    return table


def _maybe_pct(x: float | None) -> str:
    return "-" if x is None else _pct(x)


def _with_n(accuracy: float | None, n: int) -> str:
    return f"{_pct(accuracy)} ({n})" if accuracy is not None else f"- ({n})"


def plain_log_x(ax) -> None:
    """A log x axis with plain tick labels (130, 200, 500): by default matplotlib labels the minor ticks of a narrow
    range 1.3x10^2, 1.4x10^2, ..., which overlap. Call it once the data are drawn: it reads the axis' limits."""
    import matplotlib.ticker as ticker

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    ticks = lambda locator: sum(lo <= t <= hi for t in locator.tick_values(lo, hi))  # noqa: E731  (in view)
    # Ticks at 1, 2 and 5 of each decade, or 1 and 3, or the decades: the densest of them with at most 7 labels in
    # view (more would crowd). A range holding fewer than three 1-2-5 ticks gets a few evenly spaced ones instead.
    dense, sparse, decades = (ticker.LogLocator(subs=subs) for subs in ((1.0, 2.0, 5.0), (1.0, 3.0), (1.0,)))
    if ticks(dense) < 3:
        major = ticker.MaxNLocator(nbins=4)
    else:
        major = next((locator for locator in (dense, sparse) if ticks(locator) <= 7), decades)
    ax.xaxis.set_major_locator(major)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def draw_figures(runs: list[dict]):
    """The report's figures, one at a time: (file name, the runs drawn in it, the matplotlib figure). The caller
    saves and closes each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    # Confusion matrices, one panel per run (rows normalised to recall), at most three to a row: one long row of six
    # squeezed the panels' titles and labels off the figure.
    cols = min(len(runs), 3)
    rows = -(-len(runs) // cols)
    # Constrained layout: it makes room for the colour bar, which tight_layout would let the panels run into.
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols + 0.8, 4.6 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(runs) :]:
        ax.set_axis_off()
    for ax, run in zip(axes.flat, runs):
        m = np.array(run["result"]["metrics"]["confusion_matrix"], dtype=float)
        m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
        ax.set_title(f"{run['name']}: confusion (recall)")
        ax.set_xticks(range(m.shape[1]), [str(i) for i in range(m.shape[1] - 1)] + ["?"])
        ax.set_yticks(range(m.shape[0]))
        ax.set_xlabel("predicted (? = unparseable)")
        ax.set_ylabel("true class")
    # One scale for every panel (they share vmin and vmax): without it the shades are not numbers.
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.85, label="share of the true class")
    yield "confusion.png", runs, fig

    # Per-class recall, runs side by side.
    fig, ax = plt.subplots(figsize=(11.5, 4))
    width = 0.8 / len(runs)
    for k, run in enumerate(runs):
        recall = [r if r is not None else 0 for r in run["result"]["metrics"]["per_class_recall"]]
        ax.bar(np.arange(len(recall)) + k * width, recall, width, label=run["name"])
    # Whole class names, wrapped (cut to 14 letters, "Edge-on withou" and "Edge-on with B" were riddles), with the
    # class number the confusion matrices use.
    names = class_names(runs[0]["result"])  # the runs of one report share their split's classes
    ax.set_xticks(
        np.arange(len(names)) + 0.4 - width / 2,
        [textwrap.fill(f"{k} {c}", 13, break_on_hyphens=False) for k, c in enumerate(names)],
        fontsize=8,
    )
    ax.set_ylim(0, 1)
    ax.set_ylabel("recall")
    ax.legend()
    fig.tight_layout()
    yield "per_class_recall.png", runs, fig

    # Accuracy against prompt cost (tokens per galaxy), with the interval.
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        m = run["result"]["metrics"]
        cost = run["result"]["prompt_tokens"] / m["n"]
        lo, hi = m["interval"]["accuracy"]
        ax.errorbar(
            [cost],
            [m["accuracy"]],
            yerr=[[m["accuracy"] - lo], [hi - m["accuracy"]]],
            fmt="o",
            capsize=4,
            label=run["name"],
        )
    majority = runs[0]["result"]["metrics"]["majority_rate"]
    ax.axhline(majority, color="grey", ls="--", lw=1, label="majority class")
    plain_log_x(ax)
    ax.set_xlabel("prompt tokens per galaxy")
    ax.set_ylabel("accuracy")
    # Beside the axes, not in them: with six runs the legend covered a point.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    yield "accuracy_vs_cost.png", runs, fig

    # Accuracy against every token an answer cost (prompt + completion, all turns of a zoom episode), by arm.
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours, seen = {False: "C0", True: "C3"}, {}
    # Names above and below by turns along the cost axis, so runs of about the same cost stay legible.
    rank = {id(r): k for k, r in enumerate(sorted(runs, key=lambda r: tokens_per_galaxy(r["result"])))}
    for run in runs:
        m, modality = run["result"]["metrics"], run["result"]["config"]["modality"]
        zoom = bool(run["result"].get("zoom"))
        x, (lo, hi) = tokens_per_galaxy(run["result"]), m["interval"]["accuracy"]
        handle = ax.errorbar(
            [x],
            [m["accuracy"]],
            yerr=[[m["accuracy"] - lo], [hi - m["accuracy"]]],
            fmt=ARMS[modality].marker if modality in ARMS else "^",
            color=colours[zoom],
            capsize=4,
        )
        seen.setdefault(arm_of(run), handle)
        offset = (6, 4) if rank[id(run)] % 2 == 0 else (6, -11)
        ax.annotate(run["name"], (x, m["accuracy"]), textcoords="offset points", xytext=offset, fontsize=8)
    seen["majority class"] = ax.axhline(majority, color="grey", ls="--", lw=1)
    plain_log_x(ax)
    ax.set_xlabel("tokens per galaxy (prompt + completion, all turns)")
    ax.set_ylabel("accuracy (95 % interval)")
    # Beside the axes, not in them: inside, it covered part of an interval.
    ax.legend(
        list(seen.values()),
        list(seen),
        fontsize=8,
        title="modality, zoom",
        title_fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.02, 1),
    )
    fig.tight_layout()
    yield "accuracy_vs_tokens.png", runs, fig

    # Training curves, where a run's training log can be found (`training_log`): the loss, and a GRPO run's reward.
    curves = [run for run in runs if run.get("training_log")]
    panels = [
        (key, label)
        for key, label in (("loss", "training loss"), ("reward", "training reward (GRPO)"))
        if any(key in e for run in curves for e in run["training_log"])
    ]
    if curves and panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
        for ax, (key, label) in zip(axes[0], panels):
            for run in curves:
                points = [(e["step"], e[key]) for e in run["training_log"] if key in e and "step" in e]
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=run["name"])
            ax.set_xlabel("step")
            ax.set_ylabel(label)
            ax.legend(fontsize=8)
        fig.tight_layout()
        # Only the runs whose logs are drawn: the figure's provenance names what it shows.
        yield "training_curves.png", curves, fig


def _figures(runs: list[dict], tmp: Path, out_dir: Path) -> list[str]:
    """Save the report's figures as PNGs into `tmp` (to become `out_dir`), each carrying the runs drawn and their
    files' sha256 (`figure_provenance`)."""
    import matplotlib.pyplot as plt

    names = []
    for name, drawn, fig in draw_figures(runs):
        fig.savefig(tmp / name, dpi=110, metadata=figure_metadata(drawn, out_dir))
        plt.close(fig)
        names.append(name)
    return names


def training_log(run_dir: Path, model: str) -> tuple[list[dict], str | None]:
    """The log history of the training that made the evaluated checkpoint, if it is nearby: a trainer_state.json
    beside the evaluation, else the model's own training log (`integrity.history.training_log_path`)."""
    path = run_dir / "trainer_state.json"
    if not path.is_file():
        path = training_log_path(model) if model and Path(model).is_dir() else None
    if path is None:
        return [], None
    return read_json_record(path, "training log").get("log_history", []), str(path)


# What a GRPO stage had to learn from, first log against last: the reward, the share of groups whose completions all
# earned the same reward (no advantage, nothing to learn from) and the policy's per-token entropy.
SIGNAL_KEYS = ("reward", "frac_reward_zero_std", "entropy")


def grpo_signal(log_history: list[dict]) -> dict | None:
    """First and last logged value of each of `SIGNAL_KEYS` in a GRPO run's log history, and the number of logs;
    None for a run that logged no reward (SFT)."""
    logs = [r for r in log_history if all(isinstance(r.get(k), (int, float)) for k in SIGNAL_KEYS)]
    if not logs:
        return None
    return {"logs": len(logs), "last_step": logs[-1].get("step")} | {k: [logs[0][k], logs[-1][k]] for k in SIGNAL_KEYS}


def zoom_decisions(result: dict) -> dict | None:
    """When a zoom run zoomed: its zoom rate, homogenisation and zoom rate per true class (None without zoom)."""
    zoom = result.get("zoom") or {}
    if not zoom.get("n"):
        return None
    return {k: zoom.get(k) for k in ("zoom_rate", "homogenisation", "zoom_rate_per_class")}


def _zoom_decision_lines(runs: list[dict], stages: dict[str, list[dict]]) -> list[str]:
    """Per zoom evaluation (each stage of a zoom arm when there are stages, else each run): the zoom rate per true
    class and the homogenisation, so a zoom habit copied from the warm start shows beside what GRPO made of it."""
    entries = [(arm, row["stage"], row["zoom"]) for arm, rows in stages.items() for row in rows if "zoom" in row]
    if not entries:
        entries = [(run["name"], "-", z) for run in runs if (z := zoom_decisions(run["result"]))]
    if not entries:
        return []
    classes = sorted({int(c) for _, _, z in entries for c in z.get("zoom_rate_per_class") or {}})
    names = class_names(runs[0]["result"]) if runs else DECALS_CLASSES
    lines = [
        "",
        "## When the model zoomed (zoom rate per true class)",
        "",
        "Homogenisation is the share of galaxies whose decision (zoom or not) is the run's majority decision: 1.0 is "
        "the same decision for every galaxy, a habit rather than a choice.",
        "",
        "| run | stage | zoom rate | homogenisation | " + " | ".join(names[c] for c in classes) + " |",
        "|---|---|---|---|" + "---|" * len(classes),
    ]
    for name, stage, z in entries:
        per_class = z.get("zoom_rate_per_class") or {}
        cells = [_maybe_pct(per_class.get(str(c))) for c in classes]
        lines.append(
            f"| {name} | {stage} | {_pct(z['zoom_rate'])} | {_maybe_pct(z.get('homogenisation'))} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def zooming_gap(first: dict, full: dict) -> dict:
    """The zooming gap of a model: its accuracy shown the full-resolution view at once (`full`) minus its accuracy on
    the first view (`first`), both without zoom, on the same galaxies: the ceiling of what zooming can add to it."""
    if first["result"]["config"]["model"] != full["result"]["config"]["model"]:
        raise UserError(f"{first['name']} and {full['name']}: a zooming gap compares one model's two views")
    c = compare_runs(full, first)
    return {
        "model": first["result"]["config"]["model"],
        "views": {
            name: {
                "run": run["dir"],
                "image_size": run["result"]["config"]["image_size"],
                "accuracy": run["result"]["metrics"]["accuracy"],
                "tokens_per_galaxy": tokens_per_galaxy(run["result"]),
            }
            for name, run in (("first", first), ("full", full))
        },
        "gap": c["accuracy_difference"],
        "gap_interval": c["difference_interval"],
        "only_full_right": c["only_a_correct"],
        "only_first_right": c["only_b_correct"],
        "mcnemar_p_value": c["mcnemar_p_value"],
    }


def _gap_lines(gaps: dict[str, dict]) -> list[str]:
    if not gaps:
        return []
    lines = [
        "",
        "## The zooming gap (the same model without zoom: the full-resolution view at once vs the first view)",
        "",
        "The ceiling of what zooming can add to a model: its accuracy when shown the whole source at full resolution "
        "minus its accuracy on the downsampled first view, on the same galaxies (paired bootstrap 95 % interval, "
        "exact McNemar p). For a model never trained on views of the full view's size it measures how the model "
        "copes with that size as much as what the detail is worth.",
        "",
        "| arm | first view: px, tokens / galaxy, accuracy | full view: px, tokens / galaxy, accuracy "
        "| gap [95 % CI] | only full / only first right | exact McNemar p |",
        "|---|---|---|---|---|---|",
    ]
    for arm, g in gaps.items():
        first, full = (g["views"][k] for k in ("first", "full"))
        lo, hi = g["gap_interval"]
        lines.append(
            f"| {arm} | {first['image_size']}, {first['tokens_per_galaxy']:.0f}, {_pct(first['accuracy'])} "
            f"| {full['image_size']}, {full['tokens_per_galaxy']:.0f}, {_pct(full['accuracy'])} "
            f"| {100 * g['gap']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | {g['only_full_right']} / "
            f"{g['only_first_right']} | {g['mcnemar_p_value']:.3g} |"
        )
    return lines


def _stage_lines(stages: dict[str, list[dict]]) -> list[str]:
    lines = [
        "",
        "## What each stage adds (same galaxies)",
        "",
        "Each stage is compared with the stage before it on the same galaxies: the gain in accuracy (points), its "
        "paired bootstrap 95 % interval and the exact McNemar p. Accuracy among parsed answers shows whether a gain "
        "is only a better parse rate.",
        "",
        "| arm | stage | accuracy [95 % CI] | unparseable | acc. among parsed | gain over previous stage [95 % CI] "
        "| only this / only previous right | exact McNemar p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, rows in stages.items():
        for row in rows:
            lo, hi = row["accuracy_interval"]
            gain = "- | - | -"
            if "gain" in row:
                glo, ghi = row["gain_interval"]
                gain = (
                    f"{100 * row['gain']:+.1f} [{100 * glo:+.1f}, {100 * ghi:+.1f}] "
                    f"| {row['only_this_right']} / {row['only_previous_right']} | {row['mcnemar_p_value']:.3g}"
                )
            lines.append(
                f"| {arm} | {row['stage']} | {_pct(row['accuracy'])} [{_pct(lo)}, {_pct(hi)}] "
                f"| {_pct(row['parse_failure_rate'])} | {_maybe_pct(row['parsed_accuracy'])} | {gain} |"
            )
    unclear = [
        f"- {arm}, {row['stage']}: {100 * row['gain']:+.1f} points, p {row['mcnemar_p_value']:.3g}"
        for arm, rows in stages.items()
        for row in rows
        if "gain" in row and row["mcnemar_p_value"] >= 0.05
    ]
    if unclear:
        lines += ["", "Not distinguishable from no change at p < 0.05 (exact McNemar, two-sided):", "", *unclear]
    signals = [(arm, row) for arm, rows in stages.items() for row in rows if "grpo_signal" in row]
    if signals:
        lines += [
            "",
            "What each GRPO stage had to learn from, from its training log (first log, then last): the mean reward, "
            "the share of groups whose completions all earned the same reward (their advantages are zero: nothing "
            "to learn from), and the policy's entropy per completion token. A GRPO gain is evidence of learning "
            "from the reward only beside a random-reward control (`astroreason audit RUN`).",
            "",
            "| arm | stage | logs (last step) | reward | groups without reward spread | entropy (nats/token) |",
            "|---|---|---|---|---|---|",
        ]
        for arm, row in signals:
            g = row["grpo_signal"]
            reward, zero, entropy = (g[k] for k in SIGNAL_KEYS)
            lines.append(
                f"| {arm} | {row['stage']} | {g['logs']} ({g['last_step']}) | {reward[0]:.3f} -> {reward[1]:.3f} "
                f"| {_pct(zero[0])} -> {_pct(zero[1])} | {entropy[0]:.3f} -> {entropy[1]:.3f} |"
            )
    return lines


def render_report(
    runs: list[dict],
    comparisons: dict,
    figures: list[str],
    stages: dict | None = None,
    gaps: dict | None = None,
    *,
    out_dir: str | Path = ".",
) -> str:
    """report.md's text; `out_dir` is where it will be, which the paths it prints are relative to."""
    lines = [
        "# astroreason comparison report",
        "",
        "Every number below is read from the results files listed under Provenance.",
        "",
        "| run | modality | n | accuracy [95 % CI] | balanced acc. | macro-F1 | unparseable | majority rate | prompt tokens / galaxy | cost $ |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        r, m = run["result"], run["result"]["metrics"]
        lo, hi = m["interval"]["accuracy"]
        lines.append(
            f"| {run['name']} | {r['config']['modality']} | {m['n']} | {_pct(m['accuracy'])} [{_pct(lo)}, {_pct(hi)}] "
            f"| {_pct(m['balanced_accuracy'])} | {_pct(m['macro_f1'])} | {_pct(m['parse_failure_rate'])} "
            f"| {_pct(m['majority_rate'])} | {r['prompt_tokens'] / m['n']:.0f} | {r.get('dollars', 0.0):.4f} |"
        )
    lines += [
        "",
        "## Accuracy against tokens per galaxy",
        "",
        "Tokens per galaxy are prompt + completion tokens, every turn of a zoom episode counted "
        "(figure `accuracy_vs_tokens.png`).",
        "",
        "| run | modality | zoom | zoom rate | zooms / galaxy | tokens / galaxy | accuracy [95 % CI] "
        "| acc. with zoom (n) | acc. without zoom (n) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        r, m, z = run["result"], run["result"]["metrics"], run["result"].get("zoom")
        lo, hi = m["interval"]["accuracy"]
        zoom_cells = f"yes | {_pct(z['zoom_rate'])} | {z['zooms_per_galaxy']:.2f}" if z else "no | - | -"
        split_cells = (
            f"{_with_n(z['accuracy_with_zoom'], z['n_with_zoom'])} | "
            f"{_with_n(z['accuracy_without_zoom'], z['n_without_zoom'])}"
            if z
            else "- | -"
        )
        lines.append(
            f"| {run['name']} | {r['config']['modality']} | {zoom_cells} | {tokens_per_galaxy(r):.1f} "
            f"| {_pct(m['accuracy'])} [{_pct(lo)}, {_pct(hi)}] | {split_cells} |"
        )
    if comparisons:
        lines += [
            "",
            "## Paired comparisons (same galaxies)",
            "",
            "| a vs b | arms compared | acc. a - b [95 % CI] | only a right | only b right | exact McNemar p |",
            "|---|---|---|---|---|---|",
        ]
        for (a, b), c in comparisons.items():
            lo, hi = c["difference_interval"]
            lines.append(
                f"| {a} vs {b} | {c['arms']} | {_pct(c['accuracy_difference'])} [{_pct(lo)}, {_pct(hi)}] "
                f"| {c['only_a_correct']} | {c['only_b_correct']} | {c['mcnemar_p_value']:.3g} |"
            )
    if stages:
        lines += _stage_lines(stages)
    lines += _zoom_decision_lines(runs, stages or {})
    lines += _gap_lines(gaps or {})
    if any(run["warm_starts"] for run in runs):
        lines += [
            "",
            "## Warm starts (read from each model's pretraining record)",
            "",
            "| run | what | galaxies | steps | held-out accuracy (majority) | record |",
            "|---|---|---|---|---|---|",
        ]
        for run in runs:
            for w in run["warm_starts"]:
                # Relative to the report: the page moves with the runs, and names no home directory of this machine.
                record = os.path.relpath(w["record"], out_dir)
                lines.append(
                    f"| {run['name']} | {w['what']} | {w['n_train']} | {w['config']['steps']} "
                    f"| {_pct(w['held_out_accuracy'])} ({_pct(w['held_out_majority_rate'])}) | {record} |"
                )
    lines += ["", "## Figures", ""]
    for name in figures:
        lines += [f"![{name[:-4]}]({name})", ""]
    lines += [
        "## Provenance",
        "",
        "| run | commit | dirty | config sha256 | manifest sha256 | data sha256 | seed | result.json sha256 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        p = run["result"]["provenance"]
        short = lambda h: (h or "-")[:12]  # noqa: E731
        lines.append(
            f"| {run['name']} | {short(p['commit'])} | {p['dirty']} | {short(p['config_sha256'])} "
            f"| {short(p['manifest_sha256'])} | {short(p['data_sha256'])} | {p['seed']} "
            f"| {short(run['files_sha256']['result.json'])} |"
        )
    return "\n".join(lines) + "\n"


def paired_comparisons(runs: list[dict]) -> dict[tuple[str, str], dict]:
    """Every pair of runs on the same galaxies (the same split manifest), zoom against no zoom of one modality
    included: the paired comparison, named by its runs and by the arms it compares."""
    comparisons = {}
    for a, b in combinations(runs, 2):
        if a["result"]["provenance"].get("manifest_sha256") == b["result"]["provenance"].get("manifest_sha256"):
            comparisons[(a["name"], b["name"])] = {**compare_runs(a, b), "arms": pair_kind(a, b)}
    return comparisons


def write_report(
    run_dirs: list[str | Path],
    out_dir: str | Path,
    *,
    stages: dict[str, list[tuple[str, str | Path]]] | None = None,
    gaps: dict[str, tuple[str | Path, str | Path]] | None = None,
    tex: bool = False,
    macros: bool = False,
) -> Path:
    """Write `report.md`, `report.json`, the figures and `report.html` (self-contained: the tables, the figures and
    galleries of the galaxies) for these runs into `out_dir` (atomically). `stages` names, per arm, the evaluations
    of its training stages in order (stage name, run directory), e.g. warm start, SFT, GRPO: the report then says
    what each stage adds over the one before it. `gaps` names, per arm, the evaluations of one model without zoom
    on the first view and on the full-resolution view (`zooming_gap`). Every figure of it is also in `values.json`,
    named; `tex` adds them as LaTeX macros (`macros.tex`), `macros` as a Markdown table (`macros.md`)."""
    runs = [load_run(d) for d in run_dirs]
    gap_runs = {arm: (load_run(first), load_run(full)) for arm, (first, full) in (gaps or {}).items()}
    gap_table = {arm: zooming_gap(first, full) for arm, (first, full) in gap_runs.items()}
    by_dir = {Path(r["dir"]).resolve(): r for r in runs}
    stage_runs = {
        arm: [(name, by_dir.get(Path(d).resolve()) or load_run(d)) for name, d in arm_stages]
        for arm, arm_stages in (stages or {}).items()
    }
    staged = stage_table(stage_runs)
    comparisons = paired_comparisons(runs)
    # Before anything is drawn: two runs that would share a macro name are refused in one line.
    values = report_values(
        runs,
        comparisons,
        {arm: list(zip(staged[arm], (run for _, run in stage_runs[arm]))) for arm in staged},
        {arm: (gap_table[arm], *gap_runs[arm]) for arm in gap_table},
    )
    out_dir = Path(out_dir)
    values = relative_to(values, out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        figures = _figures(runs, tmp, out_dir)
        markdown = render_report(runs, comparisons, figures, staged, gap_table, out_dir=out_dir)
        write_text_atomic(tmp / "report.md", markdown)
        page, galleries = render_html(markdown, tmp, runs, list(comparisons))
        write_text_atomic(tmp / "report.html", page)
        summary = {
            "runs": {
                r["name"]: {
                    "dir": r["dir"],
                    "metrics": r["result"]["metrics"],
                    "modality": r["result"]["config"]["modality"],
                    "zoom": r["result"].get("zoom"),
                    "tokens_per_galaxy": tokens_per_galaxy(r["result"]),
                    "files_sha256": r["files_sha256"],
                    "warm_starts": r["warm_starts"],
                }
                for r in runs
            },
            "comparisons": {f"{a} vs {b}": c for (a, b), c in comparisons.items()},
            "stages": staged,
            "zooming_gaps": gap_table,
            "galleries": galleries,
        }
        write_text_atomic(tmp / "report.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
        write_text_atomic(tmp / VALUES_NAME, json.dumps([v.to_json() for v in values], indent=1) + "\n")
        if tex:
            write_text_atomic(tmp / TEX_NAME, render_tex(values))
        if macros:
            write_text_atomic(tmp / MARKDOWN_NAME, render_markdown(values))
    return out_dir / "report.md"

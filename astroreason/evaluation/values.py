"""Every figure of a report as a named value with its source: what `report --tex` / `--macros` write as macros and
what `astroreason claims` checks a draft against.

A value's name is a LaTeX macro name (letters only): the run's name in CamelCase, digits spelled out, then what the
value is, e.g. `ImageAccuracy`, `ImageAccuracyLow`, `ImageVsTokensDiff`, `ImageVsTokensP`, `ImageGrpoAccuracy` (the
GRPO stage of the image arm), `NTest`. Its text is the number as the report prints it (percentages in points with
one decimal, p-values to three significant digits) and its sources are the results files it was read from, each with
its sha256, so a macro can say where it came from and a check can tell when the file changed since.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import UserError
from .harness import PREDICTIONS_NAME, RESULT_NAME
from .metrics import tokens_per_galaxy

# What the names below end with after their run's (or pair's, stage's) prefix; `claims` reads a `\Name` ending in one
# of these that is no value as one of ours misspelt, or of a run not given. A new kind of value adds its suffix here.
SUFFIXES = (
    "Accuracy",
    "AccuracyLow",
    "AccuracyHigh",
    "BalancedAccuracy",
    "MacroFOne",
    "Unparseable",
    "MajorityRate",
    "N",
    "PromptTokens",
    "TokensPerGalaxy",
    "Cost",
    "ZoomRate",
    "ZoomsPerGalaxy",
    "Diff",
    "DiffLow",
    "DiffHigh",
    "P",
    "OnlyFirstRight",
    "OnlySecondRight",
    "Gain",
    "GainLow",
    "GainHigh",
    "GainP",
    "ZoomingGap",
    "ZoomingGapLow",
    "ZoomingGapHigh",
    "ZoomingGapP",
)
DIGITS = ("Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine")


@dataclass(frozen=True)
class Source:
    run: str = field(metadata={"help": "The run's name (its directory's name)."})
    file: str = field(metadata={"help": "The results file the value was read from."})
    sha256: str = field(metadata={"help": "That file's sha256 when the value was read."})


@dataclass(frozen=True)
class ReportValue:
    name: str = field(metadata={"help": "LaTeX macro name, letters only, e.g. ImageAccuracy."})
    kind: str = field(
        metadata={
            "help": "What it is: accuracy, rate, interval_low, interval_high, difference, p_value, n, tokens, count "
            "or dollars."
        }
    )
    value: float = field(metadata={"help": "The value as stored: rates as fractions, counts, p, dollars."})
    text: str = field(metadata={"help": "The value as the report prints it (percentages in points)."})
    percent: bool = field(metadata={"help": "Whether `text` is the value in percent (points)."})
    sources: tuple[Source, ...] = field(metadata={"help": "The results files the value reads, with their sha256."})

    @property
    def runs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.run for s in self.sources))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ReportValue:
        return cls(**{**d, "sources": tuple(Source(**s) for s in d["sources"])})


def camel(name: str) -> str:
    """A run or stage name as the letters of a macro name: `image_grpo` -> `ImageGrpo`, `qwen2` -> `QwenTwo`."""
    words = re.findall(r"[A-Za-z]+|\d", name)
    out = "".join(DIGITS[int(w)] if w.isdigit() else w[:1].upper() + w[1:].lower() for w in words)
    if not out:
        raise UserError(f"{name!r}: a run or stage name needs a letter or digit to name its macros")
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _run_sources(run: dict, *files: str) -> tuple[Source, ...]:
    return tuple(Source(run["name"], str(Path(run["dir"]) / f), run["files_sha256"][f]) for f in files)


def _pair_sources(a: dict, b: dict) -> tuple[Source, ...]:
    """What a paired comparison of two runs reads: each run's result and per-galaxy predictions."""
    return _run_sources(a, RESULT_NAME, PREDICTIONS_NAME) + _run_sources(b, RESULT_NAME, PREDICTIONS_NAME)


def _interval(prefix: str, kind: str, point: float, interval, sources) -> list[ReportValue]:
    lo, hi = interval
    return [
        ReportValue(prefix, kind, point, _pct(point), True, sources),
        ReportValue(prefix + "Low", "interval_low", lo, _pct(lo), True, sources),
        ReportValue(prefix + "High", "interval_high", hi, _pct(hi), True, sources),
    ]


def _paired(name: str, p_name: str, difference: float, interval, p: float, sources) -> list[ReportValue]:
    """A paired difference in points with its interval (`name`, `nameLow`, `nameHigh`) and its exact McNemar p."""
    return [
        *_interval(name, "difference", difference, interval, sources),
        ReportValue(p_name, "p_value", p, f"{p:.3g}", False, sources),
    ]


def _comparison(prefix: str, c: dict, sources) -> list[ReportValue]:
    """A paired comparison's values: the difference in points with its interval, the exact McNemar p and the counts
    of galaxies only one side got right. `c` is `metrics.paired_comparison`'s dict."""
    return [
        *_paired(
            prefix + "Diff",
            prefix + "P",
            c["accuracy_difference"],
            c["difference_interval"],
            c["mcnemar_p_value"],
            sources,
        ),
        ReportValue(prefix + "OnlyFirstRight", "n", c["only_a_correct"], str(c["only_a_correct"]), False, sources),
        ReportValue(prefix + "OnlySecondRight", "n", c["only_b_correct"], str(c["only_b_correct"]), False, sources),
    ]


def run_values(run: dict) -> list[ReportValue]:
    """One run's figures, as the report's tables print them."""
    r, m, R = run["result"], run["result"]["metrics"], camel(run["name"])
    src = _run_sources(run, RESULT_NAME)
    values = _interval(R + "Accuracy", "accuracy", m["accuracy"], m["interval"]["accuracy"], src)
    values += [
        ReportValue(
            R + "BalancedAccuracy", "accuracy", m["balanced_accuracy"], _pct(m["balanced_accuracy"]), True, src
        ),
        ReportValue(R + "MacroFOne", "accuracy", m["macro_f1"], _pct(m["macro_f1"]), True, src),
        ReportValue(R + "Unparseable", "rate", m["parse_failure_rate"], _pct(m["parse_failure_rate"]), True, src),
        ReportValue(R + "MajorityRate", "rate", m["majority_rate"], _pct(m["majority_rate"]), True, src),
        ReportValue(R + "N", "n", m["n"], str(m["n"]), False, src),
        ReportValue(
            R + "PromptTokens", "tokens", r["prompt_tokens"] / m["n"], f"{r['prompt_tokens'] / m['n']:.0f}", False, src
        ),
        ReportValue(R + "TokensPerGalaxy", "tokens", tokens_per_galaxy(r), f"{tokens_per_galaxy(r):.1f}", False, src),
        ReportValue(R + "Cost", "dollars", r.get("dollars", 0.0), f"{r.get('dollars', 0.0):.4f}", False, src),
    ]
    if z := r.get("zoom"):
        values += [
            ReportValue(R + "ZoomRate", "rate", z["zoom_rate"], _pct(z["zoom_rate"]), True, src),
            ReportValue(
                R + "ZoomsPerGalaxy", "count", z["zooms_per_galaxy"], f"{z['zooms_per_galaxy']:.2f}", False, src
            ),
        ]
    return values


def report_values(
    runs: list[dict],
    comparisons: dict[tuple[str, str], dict],
    stages: dict[str, list[tuple[dict, dict]]] | None = None,
    gaps: dict[str, tuple[dict, dict, dict]] | None = None,
) -> list[ReportValue]:
    """Every figure of a report, named: each run's (`run_values`), each paired comparison's (`AVsB...`), each
    training stage's accuracy and gain over the stage before (`ArmStage...`, the stage named by its first word), each
    zooming gap (`ArmZoomingGap...`) and `N<Split>` when every run scored the same number of galaxies of one split.
    `runs` are `report.load_run` dicts, `comparisons` as `report.paired_comparisons` gives them, `stages` per arm
    (its `report.stage_table` row, the loaded run) in order, `gaps` per arm (its `report.zooming_gap`, the first
    view's and the full view's loaded runs): the figures the report printed, with the files they were read from."""
    by_name = {run["name"]: run for run in runs}
    values = [v for run in runs for v in run_values(run)]
    for (a, b), c in comparisons.items():
        values += _comparison(f"{camel(a)}Vs{camel(b)}", c, _pair_sources(by_name[a], by_name[b]))
    for arm, arm_stages in (stages or {}).items():
        previous = None
        for row, run in arm_stages:
            prefix = camel(arm) + camel(row["stage"].split()[0])
            src = _run_sources(run, RESULT_NAME)
            values += _interval(prefix + "Accuracy", "accuracy", row["accuracy"], row["accuracy_interval"], src)
            if previous is not None:
                gain = row["gain"], row["gain_interval"], row["mcnemar_p_value"]
                values += _paired(prefix + "Gain", prefix + "GainP", *gain, _pair_sources(run, previous))
            previous = run
    for arm, (gap, first, full) in (gaps or {}).items():
        name = camel(arm) + "ZoomingGap"
        values += _paired(
            name, name + "P", gap["gap"], gap["gap_interval"], gap["mcnemar_p_value"], _pair_sources(full, first)
        )
    splits = {(run["result"]["config"]["split"], run["result"]["metrics"]["n"]) for run in runs}
    if len(splits) == 1:
        (split, n), src = next(iter(splits)), tuple(s for run in runs for s in _run_sources(run, RESULT_NAME))
        values.append(ReportValue("N" + camel(split), "n", n, str(n), False, src))
    return unique(values)


def relative_to(values: list[ReportValue], folder: str | Path) -> list[ReportValue]:
    """The values with each source file written relative to `folder` (a report's directory): the report and the runs
    can then move together, and `claims` reads the files from wherever the report now is."""
    folder = Path(folder).resolve()

    def rel(s: Source) -> Source:
        return replace(s, file=os.path.relpath(Path(s.file).resolve(), folder))

    return [replace(v, sources=tuple(rel(s) for s in v.sources)) for v in values]


def unique(values: list[ReportValue]) -> list[ReportValue]:
    """The values once each: the same name twice with the same text is one value (a stage run that is also a report
    run); with different texts, two runs whose names give the same macro name (`image-a`, `image_a`)."""
    seen: dict[str, ReportValue] = {}
    for v in values:
        if v.name in seen and seen[v.name].text != v.text:
            raise UserError(f"two figures would be named \\{v.name} ({seen[v.name].text} and {v.text}): rename a run")
        seen.setdefault(v.name, v)
    return list(seen.values())

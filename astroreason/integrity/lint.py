"""The prompt lint: nothing but the galaxy's representation may enter a prompt.

Galaxy10 DECaLS is sorted by class, so a row index in a prompt is the label (docs/facts.md); an id, a sky position,
a redshift or any other dataset column can leak it as well. The lint runs before any training or evaluation and
checks two things:

1. the template's fields: only the arm's representation (`{tokens}` for the token arm, none for the image arm); the
   functions take the arm (or its class), which knows its representation and default template;
2. the rendered prompt texts of a split against that split's metadata: for each column (row index, position in the
   split, ra, dec, redshift, pixel scale, label, label name) the share of prompts that contain *their own row's*
   value is compared with the share that contain *another row's* value. A column that appears in its own prompt far
   more often than chance is in the prompt. The comparison makes the check safe for token text, whose many integers
   match any small number by chance.

A finding raises `CheckFailed` (exit 1). A deliberate experiment (e.g. the planted-leak test) passes an explicit
`LintOverride` naming the columns it allows and why; the findings are then recorded (`prompt_lint.json` in the run's
directory, and in the ledger's description) instead of refused.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data.sources import open_source
from ..data.splits import load_manifest
from ..errors import CheckFailed, UserError
from ..io import read_json_record, sha256_bytes, write_json_atomic
from ..prompts import template_fields as fields

LINT_RECORD = "prompt_lint.json"

# Metadata a template may name (only under an override): what `split_metadata` provides.
INT_COLUMNS = ("row_index", "position", "label")
FLOAT_COLUMNS = ("ra", "dec", "redshift", "pxscale")
STRING_COLUMNS = ("label_name",)
METADATA_COLUMNS = INT_COLUMNS + FLOAT_COLUMNS + STRING_COLUMNS

# A prompt carries a column if its own value appears this much more often than another row's, and at least this often,
# and the excess is no chance: an exact one-sided test on the rows where only one of the two values appears (a few
# rows whose codes are small integers hold their own position by chance as often as another's).
MIN_EXCESS = 0.2
MIN_OWN_RATE = 0.3
MAX_P_VALUE = 0.01

_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")


@dataclass
class LintOverride:
    """An explicit permission to let named columns or fields into prompts, for a deliberate experiment.

    Args:
        allow: Column or template-field names allowed (e.g. `row_index`); `*` allows every finding.
        reason: Why: recorded with the run and in the ledger. Required.
    """

    allow: tuple[str, ...]
    reason: str

    def __post_init__(self):
        self.allow = tuple(self.allow)
        if not self.allow:
            raise UserError("lint override: name the columns it allows (e.g. row_index), or * for all")
        if not str(self.reason or "").strip():
            raise UserError("lint override: give a reason; it is recorded with the run and in the ledger")

    def allows(self, name: str) -> bool:
        return "*" in self.allow or name in self.allow


@dataclass
class Finding:
    """One thing a prompt carries besides the galaxy."""

    kind: str  # "template_field" or "text"
    name: str  # the field or column
    detail: str
    own_rate: float | None = None
    chance_rate: float | None = None


@dataclass
class LintReport:
    """What the lint checked and found; `overridden` findings were allowed by an override."""

    modality: str
    template: str | None
    n_prompts: int
    findings: list[Finding] = field(default_factory=list)
    overridden: list[Finding] = field(default_factory=list)
    override: LintOverride | None = None

    @property
    def template_sha256(self) -> str | None:
        return None if self.template is None else sha256_bytes(self.template)

    def to_json(self) -> dict:
        return {
            "modality": self.modality,
            "template": self.template,
            "template_sha256": self.template_sha256,
            "n_prompts": self.n_prompts,
            "findings": [asdict(f) for f in self.findings],
            "overridden": [asdict(f) for f in self.overridden],
            "override": None if self.override is None else asdict(self.override),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def summary(self) -> str:
        """One line for the ledger's description ("" when nothing was overridden)."""
        if not self.overridden:
            return ""
        names = ", ".join(sorted({f.name for f in self.overridden}))
        return f"LINT OVERRIDE ({names}): {self.override.reason}"


# --- templates -----------------------------------------------------------------------------------------------------


def template_fields(template: str) -> tuple[str, ...]:

    return fields(template)


def lint_template(arm, template: str) -> list[Finding]:
    """Findings for every field of `template` that is not the arm's representation (`Arm.representation_fields`;
    `arm` is the arm or its class)."""

    allowed = arm.representation_fields
    out = []
    for name in template_fields(template):
        if name in allowed:
            continue
        what = "a dataset column" if name in METADATA_COLUMNS else "not the galaxy's representation"
        out.append(Finding("template_field", name or "{}", f"template field {{{name}}} is {what}"))
    missing = [f for f in allowed if f not in template_fields(template)]
    if missing:
        raise UserError(
            f"template: the {arm.modality} template must carry {{{missing[0]}}} (the galaxy's representation)"
        )
    return out


def render_text(template: str, arm, meta_row: dict, representation: str = "") -> str:
    """A template rendered with the galaxy's representation and any metadata fields it names (for deliberate
    experiments and for the audit's metadata probe, which renders it with the representation left empty)."""

    values = {name: _format_value(v) for name, v in meta_row.items()}
    for name in arm.representation_fields:
        values[name] = representation
    missing = [f for f in template_fields(template) if f not in values]
    if missing:
        raise UserError(
            f"template: field {{{missing[0]}}} is neither the representation nor a known column "
            f"({', '.join(METADATA_COLUMNS)})"
        )
    return template.format(**values)


def _format_value(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "nan" if not np.isfinite(v) else f"{float(v):.6g}"
    if isinstance(v, np.integer):
        return str(int(v))
    return str(v)


# --- rendered texts ------------------------------------------------------------------------------------------------


def prompt_text(prompt) -> str:
    """The text of a prompt: a string, or a conversation whose contents are strings or blocks."""
    if isinstance(prompt, str):
        return prompt
    parts = []
    for message in prompt:
        content = message.get("content", "")
        if isinstance(content, str):
            parts.append(content)
        else:
            parts += [block.get("text", "") for block in content if isinstance(block, dict)]
    return "\n".join(p for p in parts if p)


def _numbers(text: str) -> tuple[np.ndarray, np.ndarray]:
    """The numbers written in a text and the half-width of the interval each one's printed precision covers."""
    values, tol = [], []
    for token in _NUMBER.findall(text):
        try:
            value = float(token)
        except ValueError:
            continue
        mantissa = token.lower().split("e")[0]
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        exponent = int(token.lower().split("e")[1]) if "e" in token.lower() else 0
        values.append(value)
        tol.append(0.5 * 10.0 ** (exponent - decimals) * (1 + 1e-9))
    return np.asarray(values, float), np.asarray(tol, float)


def _contained(column: str, values, by_text: dict[str, np.ndarray], numbers: dict[str, tuple]) -> np.ndarray:
    """Whether each text carries its value: a string column as a whole word (any case), a number as a printed number
    (an integer column only as an integer, a float within the printed precision). `by_text` maps each distinct text
    to the rows that have it: repeated texts (the image arm asks one prompt for every galaxy) are checked at once."""
    out = np.zeros(len(values), bool)
    for text, rows in by_text.items():
        if column in STRING_COLUMNS:
            found = {
                v: bool(v) and re.search(rf"(?<!\w){re.escape(v)}(?!\w)", text, re.IGNORECASE) is not None
                for v in {str(values[i]) for i in rows}
            }
            out[rows] = [found[str(values[i])] for i in rows]
            continue
        printed, tol = numbers[text]
        if not len(printed):
            continue
        wanted = np.asarray([float(values[i]) for i in rows])[:, None]
        if column in INT_COLUMNS:
            hit = (printed[None] == wanted) & (tol[None] <= 0.5 + 1e-9)
        else:
            hit = np.abs(printed[None] - wanted) <= tol[None]
        out[rows] = hit.any(axis=1) & np.isfinite(wanted[:, 0])
    return out


def carried_columns(texts: list[str], meta: dict[str, np.ndarray], *, seed: int = 0) -> list[Finding]:
    """Columns of `meta` whose own row's value appears in its prompt far more often than another row's."""
    n = len(texts)
    if n < 2:
        return []
    grouped: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        grouped.setdefault(text, []).append(i)
    by_text = {text: np.asarray(rows) for text, rows in grouped.items()}
    numbers = {text: _numbers(text) for text in by_text}
    # Another row's value: a seeded derangement (a random cyclic shift of a random order).
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    other = np.empty(n, np.int64)
    other[order] = order[np.roll(np.arange(n), int(rng.integers(1, n)))]
    out = []
    for column, values in meta.items():
        values = list(values)[:n]
        if len(values) < n:
            raise UserError(f"metadata: column {column} has {len(values)} rows for {n} prompts")
        own_hits = _contained(column, values, by_text, numbers)
        other_hits = _contained(column, [values[j] for j in other], by_text, numbers)
        own, chance = float(np.mean(own_hits)), float(np.mean(other_hits))
        if own >= MIN_OWN_RATE and own - chance >= MIN_EXCESS and _excess_p(own_hits, other_hits) < MAX_P_VALUE:
            out.append(
                Finding(
                    "text",
                    column,
                    f"{100 * own:.0f} % of prompts contain their own row's {column} (another row's: {100 * chance:.0f} %)",
                    own,
                    chance,
                )
            )
    return out


def _excess_p(own: np.ndarray, other: np.ndarray) -> float:
    """One-sided exact p of "a row's own value appears more often than another row's", from the rows where only one
    of the two appears (under no leak, each such row favours either with probability 1/2)."""
    from scipy.stats import binomtest

    only_own, only_other = int(np.sum(own & ~other)), int(np.sum(~own & other))
    if not only_own + only_other:
        return 1.0
    return float(binomtest(only_own, only_own + only_other, 0.5, alternative="greater").pvalue)


def split_metadata(
    data_dir, split: str, n: int | None = None, *, positions=None, manifest=None
) -> dict[str, np.ndarray]:
    """Per-row metadata of a prepared split, in the manifest's order: source row, position, sky position, redshift,
    pixel scale, label and label name (the columns a prompt must not carry). `positions` selects rows of the split
    (e.g. the token arm's rows that have codes); otherwise the first `n` rows (all by default). `manifest`: the
    directory's manifest, when the caller has loaded it already."""

    manifest = load_manifest(data_dir) if manifest is None else manifest
    if split not in manifest.rows:
        raise UserError(f"split: {data_dir} has no split {split!r} (has {', '.join(manifest.rows)})")
    split_rows = np.asarray(manifest.rows[split], np.int64)
    position = (
        np.arange(len(split_rows))[: n if n is not None else None] if positions is None else np.asarray(positions)
    )
    rows = split_rows[position]
    with open_source(manifest.source_path) as g10:
        meta = {"row_index": rows, "position": position, "label": g10.labels[rows]}
        for key in FLOAT_COLUMNS:
            column = g10.column(key)
            if column is not None:
                meta[key] = column[rows]
    meta["label_name"] = np.asarray([manifest.classes[c] for c in meta["label"]])
    return meta


# --- the lint ------------------------------------------------------------------------------------------------------


def lint_prompts(
    arm,
    prompts,
    meta: dict[str, np.ndarray] | None = None,
    *,
    template: str | None = None,
    override: LintOverride | None = None,
) -> LintReport:
    """Lint a template and/or rendered prompts of `arm` (the arm or its class); raise `CheckFailed` on any finding the
    override does not allow."""
    texts = [prompt_text(p) for p in prompts]
    findings = lint_template(arm, template) if template is not None else []
    if meta is not None:
        findings += carried_columns(texts, meta)
    report = LintReport(arm.modality, template, len(texts), override=override)
    for f in findings:
        (report.overridden if override is not None and override.allows(f.name) else report.findings).append(f)
    if report.findings:
        reasons = "; ".join(f.detail for f in report.findings)
        raise CheckFailed(
            f"prompt lint: the prompts carry more than the galaxy ({reasons}); a row index, id, position or other "
            "column can leak the label (Galaxy10 is sorted by class). Remove it, or for a deliberate experiment "
            "pass an explicit override naming it and the reason"
        )
    return report


def check_template(arm, template: str, *, override: LintOverride | None = None) -> LintReport:
    """Lint a template of `arm` alone (before any data is rendered); `CheckFailed` on a field the override does not
    allow."""
    return lint_prompts(arm, [], None, template=template, override=override)


def check_dataset(
    dataset,
    *,
    data_dir,
    split: str,
    arm,
    template: str | None = None,
    override: LintOverride | None = None,
    record_dir=None,
    positions=None,
    manifest=None,
) -> LintReport:
    """The lint of one training or evaluation dataset of `arm` (the arm or its class) before it is used: its template
    (default: the arm's) and its prompts against the split's metadata. Rows are the split's first rows in the
    manifest's order (as `astroreason.arms` makes them) unless `positions` gives each row's position in the split.
    Writes `prompt_lint.json` into `record_dir` when given (the run's record; the ledger reads an override from it)."""

    template = arm.default_template if template is None else template
    prompts = dataset["prompt"]
    meta = split_metadata(data_dir, split, n=len(prompts), positions=positions, manifest=manifest)
    if len(meta["row_index"]) != len(prompts):
        raise UserError(
            f"dataset: {len(prompts)} prompts, but split {split!r} of {data_dir} has {len(meta['row_index'])} rows"
        )
    report = lint_prompts(arm, prompts, meta, template=template, override=override)
    if record_dir is not None:
        write_lint_record(record_dir, report, data_dir=data_dir, split=split)
    return report


def write_lint_record(record_dir, report: LintReport, **extra) -> Path:
    path = Path(record_dir) / LINT_RECORD
    write_json_atomic(path, {**report.to_json(), **{k: str(v) for k, v in extra.items()}})
    return path


def read_lint_record(run_dir) -> dict | None:
    return read_json_record(Path(run_dir) / LINT_RECORD, "lint record")


__all__ = [
    "Finding",
    "LintOverride",
    "LintReport",
    "carried_columns",
    "check_dataset",
    "check_template",
    "lint_prompts",
    "lint_template",
    "prompt_text",
    "read_lint_record",
    "render_text",
    "split_metadata",
    "write_lint_record",
]

"""`astroreason claims DRAFT SOURCE...`: every number a draft (LaTeX or Markdown) quotes as a result is checked
against the values of the runs it reports, so that a number typed by hand, copied from an older run or rounded the
wrong way is found before anyone reads it.

Sources. A SOURCE is an evaluation run directory (its `result.json`: the values are computed as `astroreason
report` computes them, `values.report_values`, the run directories given together compared pairwise) or a report
directory (its `values.json`, as written then; a value whose results file is gone or changed since is stale).

What is checked, per unit (a sentence of prose or a caption, a table row, a heading):
- numbers that look like results: followed by `%` / `points` / `pp` (a percentage: matched against values in
  points), after `p =` / `p <` (a p-value), after `n =` (a count), after `$` (dollars), before `tokens`, any decimal
  number in a table row or in a sentence that speaks of results (`accuracy`, `F1`, `gain`, `difference`, `cost`,
  `tokens`, ...), and a table cell that is only a number (an integer too);
- intervals `[a, b]` with a decimal or a `%` in them;
- claim words (`significant(ly)`, `outperforms`, `better than`, `beats`), unless negated (`not`, `no`, ...);
- figures: `\\includegraphics{x}` and `![...](x)`, read relative to the draft;
- macros: `\\ImageAccuracy` (LaTeX) and `{{ImageAccuracy}}` (Markdown) are replaced by the value's printed text.

What is not: numbers in code spans, fenced code and verbatim, comments, `\\label/\\ref/\\cite/\\input/\\url`
arguments, link targets, the number of a `Figure 2` / `Table 1` / `Section 3.2` / `Eq. 4`, the `95` of `95 % CI`,
years, numbers glued to letters (`Qwen2.5`, `3B`), numbers with units (`256 px`, `3 epochs`, `2 GPUs`, `0.5 s`),
integers in prose without one of the forms above (citations, equation numbers), and any line holding the comment
`claims: ignore`.

Outcomes of a number: `ok`, it matches a value within the rounding shown (45.2 matches 0.4521 as a percentage, 45
matches 44.5 to 45.5, 0.452 matches it as a fraction), of a run the unit names if it names any; `mismatch`, the unit
names a run (its name, or a macro of it) and the number is none of its values (it may be another run's); `no
source`, it matches no value at all (an unknown macro that looks like one of ours, e.g. `\\ImagAccuracy`, too);
`stale`, it matches only values whose results files changed since the report was written. An interval is flagged
(`interval`) unless its ends are the Low and High of one value: of the number just before it when there is one, else
of a run the unit names. A claim word is flagged (`significance`) when the unit's p (typed or a macro), or the
comparison of the two runs it names, is >= 0.05, or when it has no p at all; `p < x` is flagged when the p it stands
for is not below x. A figure is flagged (`figure`) when it is missing, carries no provenance, names a run that is not
a given one, or a results file whose sha256 differs from the file now.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path

from ..errors import UserError
from ..io import sha256_file
from .figure_provenance import read_figure_provenance
from .harness import PREDICTIONS_NAME, RESULT_NAME
from .report import VALUES_NAME, load_run, paired_comparisons
from .values import SUFFIXES, ReportValue, camel, report_values

DRAFT_FORMATS = {".tex": "tex", ".md": "md", ".markdown": "md"}
FLAG_KINDS = ("no source", "mismatch", "interval", "significance", "figure", "stale")

OURS = re.compile(r"(?:[A-Z][a-z]*){2,}")

NUMBER = re.compile(r"(?<![\w.\-/−+])([+\-−]?\d+(?:\.\d+)?(?:[eE][+\-]?\d+)?)(?!\w|\.\d)")
INTERVAL = re.compile(r"\[\s*([^\[\],]{1,24}?)\s*,\s*([^\[\],]{1,24}?)\s*\]")
RESULT_WORDS = re.compile(
    r"\b(accura\w*|F1|f1|gain\w*|differ\w*|improve\w*|cost\w*|tokens?|rate|recall|points|p-value|mcnemar)\b", re.I
)
# One claim each: "significantly better than" is one.
CLAIM = re.compile(
    r"\b(significant(?:ly)?(?:\s+(?:better|worse|higher|lower|more|less)(?:\s+than)?)?|outperform(?:s|ed|ing)?"
    r"|better than|beats?)\b",
    re.I,
)
NEGATION = re.compile(r"(?:\b(?:not|no|never|nor|neither|without|non)|n't)\W+(?:\w+\W+){0,2}$", re.I)
# Numbers that name things rather than results, blanked before numbers are read.
NOT_RESULTS = re.compile(
    r"\b(?:Figure|Fig\.|Table|Tab\.|Section|Sec\.|Appendix|Chapter|Equation|Eq\.|Eqs\.|Algorithm|Line)\s*\(?[\d.]+\)?"
    r"|§\s*[\d.]+|\b95\s*%(?=\s*(?:CI|confidence|credible|interval|bootstrap|percentile|\]|\)))",
    re.I,
)
UNIT = re.compile(
    r"\s*(?:px|pixels?|B|M|K|k|GB|GiB|MB|MiB|epochs?|steps?|layers?|GPUs?|CPUs?|cores?|s|sec|seconds?|minutes?|"
    r"min|hours?|h|ms|days?|bits?|bytes?|dims?|heads?)\b"
)
PERCENT_AFTER = re.compile(r"\s*(?:%|percent\b|per cent\b|points?\b|pp\b|percentage points?\b)", re.I)
P_BEFORE = re.compile(r"\bp(?:[- ]value)?\s*(?:of\s+|is\s+)?(=|<=|>=|<|>|≤|≥)?\s*$", re.I)


@dataclass(frozen=True)
class Known:
    """A value of a source, and why it is stale (None when its files are as they were)."""

    value: ReportValue
    stale: str | None = None


@dataclass
class Finding:
    file: str
    line: int
    kind: str
    message: str
    source: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.message}" + (f" ({self.source})" if self.source else "")


@dataclass
class Sources:
    """The values to check against, by name, and each given run's directory."""

    values: list[Known]
    runs: dict[str, Path] = field(default_factory=dict)

    def named(self, name: str) -> Known | None:
        found = [k for k in self.values if k.value.name == name]
        return next((k for k in found if not k.stale), found[0] if found else None)


# ---------------------------------------------------------------------------------------------------- sources


def load_sources(paths: list[str | Path]) -> Sources:
    """The values of every SOURCE: run directories together (compared pairwise), report directories as written."""
    run_dirs, values, runs, digests = [], [], {}, {}
    for path in map(Path, paths):
        if (path / RESULT_NAME).is_file():
            run_dirs.append(path)
        elif (path / VALUES_NAME).is_file():
            for v in read_values(path / VALUES_NAME):
                # A report writes its files relative to itself (`values.relative_to`).
                v = replace(v, sources=tuple(replace(s, file=os.path.normpath(path / s.file)) for s in v.sources))
                values.append(Known(v, stale_reason(v, digests)))
                for s in v.sources:
                    runs.setdefault(s.run, Path(s.file).parent)
        else:
            raise UserError(f"{path}: neither an evaluation run (no {RESULT_NAME}) nor a report ({VALUES_NAME})")
    if run_dirs:  # computed now: fresh, and checked first
        loaded = [load_run(d) for d in run_dirs]
        computed = report_values(loaded, paired_comparisons(loaded))
        values = [Known(v) for v in computed] + values
        runs |= {r["name"]: Path(r["dir"]) for r in loaded}
    return Sources(values, runs)


def read_values(path: Path) -> list[ReportValue]:
    try:
        return [ReportValue.from_json(v) for v in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"{path}: not a values file written by `astroreason report` ({e})") from None


def stale_reason(value: ReportValue, digests: dict[str, str | None]) -> str | None:
    """Why a value of a report no longer says what its files say, or None."""
    for s in value.sources:
        if s.file not in digests:
            digests[s.file] = sha256_file(s.file) if Path(s.file).is_file() else None
        if digests[s.file] is None:
            return f"{s.file} is gone"
        if digests[s.file] != s.sha256:
            return f"{s.file} changed since the report was written"
    return None


# ---------------------------------------------------------------------------------------------------- the draft


@dataclass
class Unit:
    """A sentence, table row or heading of the draft, macros expanded: its text, the line of each of its characters
    and the values its macros stand for (start, end, Known)."""

    kind: str
    text: str
    lines: list[int]
    macros: list[tuple[int, int, Known]]

    def line(self, offset: int) -> int:
        return self.lines[min(offset, len(self.lines) - 1)]


@dataclass
class Line:
    number: int
    text: str
    macros: list[tuple[int, int, Known]]
    kind: str  # prose, row, heading, break


def read_draft(path: Path, sources: Sources, findings: list[Finding]) -> tuple[list[Line], list[tuple[int, str]]]:
    """The draft's lines, cleaned and with macros expanded, and the figures it embeds (line, path)."""
    fmt = DRAFT_FORMATS[path.suffix.lower()]
    try:
        raw = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the draft ({e})") from None
    lines, figures, verbatim = [], [], False
    for number, text in enumerate(raw.splitlines(), 1):
        if fmt == "md":
            if re.match(r"\s*(```|~~~)", text):
                verbatim = not verbatim
                text = ""
        else:
            if re.search(r"\\begin\{(verbatim|lstlisting|minted|comment)\}", text):
                verbatim = True
            if re.search(r"\\end\{(verbatim|lstlisting|minted|comment)\}", text):
                verbatim, text = False, ""
        if verbatim or "claims: ignore" in text:
            lines.append(Line(number, "", [], "break"))
            continue
        clean = clean_md(text, figures, number) if fmt == "md" else clean_tex(text, figures, number)
        expanded, macros = expand(clean, fmt, sources, findings, str(path), number)
        lines.append(Line(number, expanded, macros, line_kind(text, expanded, fmt)))
    return lines, figures


def clean_md(text: str, figures: list, number: int) -> str:
    for m in re.finditer(r"!\[[^\]]*\]\(([^)\s]+)[^)]*\)", text):
        figures.append((number, m.group(1)))
    text = re.sub(r"<!--.*?-->", " ", text)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's or image's text, not its target
    return text


def clean_tex(text: str, figures: list, number: int) -> str:
    text = re.sub(r"(?<!\\)%.*", "", text)  # a comment
    for m in re.finditer(r"\\includegraphics\s*(?:\[[^\]]*\])?\s*\{([^}]*)\}", text):
        figures.append((number, m.group(1).strip()))
    text = re.sub(r"\\includegraphics\s*(?:\[[^\]]*\])?\s*\{[^}]*\}", " ", text)
    text = re.sub(
        r"\\(?:label|ref|eqref|autoref|cref|Cref|pageref|cite\w*|input|include|url|href|texttt|"
        r"begin|end|usepackage|documentclass|bibliography\w*)\s*(?:\[[^\]]*\])?\s*\{[^}]*\}",
        " ",
        text,
    )
    text = re.sub(r"\\verb(.).*?\1", " ", text)
    text = text.replace("\\$", "\x00").replace("$", " ").replace("\x00", "$")
    text = text.replace("\\%", "%").replace("\\_", "_").replace("~", " ")
    text = re.sub(r"\\[,;:! ]", " ", text)
    for macro, plain in (("leq", "<="), ("le", "<="), ("geq", ">="), ("ge", ">="), ("pm", "±"), ("textless", "<")):
        text = re.sub(rf"\\{macro}(?![A-Za-z])", f" {plain} ", text)
    return text.replace("{", " ").replace("}", " ")


def expand(text: str, fmt: str, sources: Sources, findings: list, file: str, number: int):
    """The line with each macro of ours replaced by its value's printed text (and where), an unknown one of ours
    flagged; LaTeX's other commands become spaces."""
    pattern = r"\{\{\s*([A-Za-z]+)\s*\}\}" if fmt == "md" else r"\\([A-Za-z]+)"
    out, macros, last = [], [], 0
    for m in re.finditer(pattern, text):
        out.append(text[last : m.start()])
        last, name = m.end(), m.group(1)
        known = sources.named(name)
        start = sum(map(len, out))
        if known is not None:
            out.append(known.value.text)
            macros.append((start, start + len(known.value.text), known))
        elif fmt == "md" or looks_ours(name):
            shown = f"{{{{{name}}}}}" if fmt == "md" else f"\\{name}"
            findings.append(Finding(file, number, "no source", f"{shown} is not a value of the given runs"))
            out.append(" ")
        else:
            out.append("%" if name == "percent" else " ")
    out.append(text[last:])
    return "".join(out), macros


def looks_ours(name: str) -> bool:
    """CamelCase ending in one of our suffixes after at least one word (`ImagAccuracy`), or `N` and a split."""
    if re.fullmatch(r"N[A-Z][a-z]+", name):
        return True
    return bool(OURS.fullmatch(name)) and any(name.endswith(s) and len(name) > len(s) for s in SUFFIXES)


def line_kind(raw: str, text: str, fmt: str) -> str:
    if not text.strip():
        return "break"
    if fmt == "md":
        if re.match(r"\s*\|", raw):
            return "break" if re.fullmatch(r"[\s|:\-]*", raw) else "row"
        if re.match(r"\s*#", raw):
            return "heading"
        return "prose"
    if "&" in raw:
        return "row"
    if re.match(r"\s*\\(section|subsection|subsubsection|paragraph|chapter|title)\b", raw):
        return "heading"
    return "prose"


def units(lines: list[Line]) -> list[Unit]:
    """Table rows and headings one unit each; prose joined into paragraphs and split into sentences."""
    out, paragraph = [], []

    def flush():
        if paragraph:
            out.extend(sentences(paragraph))
            paragraph.clear()

    for line in lines:
        if line.kind == "prose":
            paragraph.append(line)
            continue
        flush()
        if line.kind == "heading":
            text = re.sub(r"^(\s*#*\s*)[\d.]+\s", lambda m: " " * len(m.group(0)), line.text)  # its number
            out.append(Unit("heading", text, [line.number] * (len(text) + 1), line.macros))
        elif line.kind == "row":
            out.append(Unit("row", line.text, [line.number] * (len(line.text) + 1), line.macros))
    flush()
    return out


def sentences(paragraph: list[Line]) -> list[Unit]:
    """A paragraph's sentences (split at `. ` before a capital, a command or a bracket), each character's line kept."""
    text, lines, macros = "", [], []
    for line in paragraph:
        macros += [(s + len(text), e + len(text), k) for s, e, k in line.macros]
        text += line.text + " "
        lines += [line.number] * (len(line.text) + 1)
    out, start = [], 0
    for m in list(re.finditer(r"(?<=[.!?])\s+(?=[A-Z\\(\[*_])", text)) + [None]:
        end = m.start() if m else len(text)
        out.append(
            Unit(
                "prose",
                text[start:end],
                lines[start:end] + [lines[min(end, len(lines) - 1)]],
                [(s - start, e - start, k) for s, e, k in macros if start <= s < end],
            )
        )
        start = m.end() if m else end
    return out


# ---------------------------------------------------------------------------------------------------- matching


def decimals(text: str) -> int:
    """Digits after the point a number shows; for 3.2e-05, those of its mantissa less its exponent."""
    mantissa, _, exponent = text.lower().partition("e")
    shown = len(mantissa.partition(".")[2])
    return shown - int(exponent or 0)


def matches(text: str, value: ReportValue, form: str) -> bool:
    """Whether the number as shown is the value within its rounding: in points for a percentage (or as a fraction
    when written without `%` and below 1), a difference also by its size."""
    x, tolerance = to_float(text), 0.5 * 10.0 ** -decimals(text) * (1 + 1e-9) + 1e-12
    targets = [100 * value.value] if value.percent else [value.value]
    if value.percent and form == "bare" and abs(x) <= 1 and decimals(text) >= 2:
        targets.append(value.value)
    if value.kind == "difference":
        targets += [abs(t) for t in targets]
    return any(math.isfinite(t) and abs(x - t) <= tolerance for t in targets)


def to_float(text: str) -> float:
    return float(text.replace("−", "-"))


FORM_KINDS = {
    "percent": lambda v: v.percent,
    "p": lambda v: v.kind == "p_value",
    "n": lambda v: v.kind in ("n", "count"),
    "dollars": lambda v: v.kind == "dollars",
    "tokens": lambda v: v.kind == "tokens",
    "bare": lambda v: True,
}


@dataclass
class Number:
    text: str
    start: int
    end: int
    form: str
    op: str = "="
    known: Known | None = None  # the value of the macro it was expanded from
    checked: bool = True
    ok: bool = False
    candidates: list[Known] = field(default_factory=list)


def masked(unit: Unit) -> str:
    """The unit's text with the numbers that name things (`Figure 2`, `95 % CI`) blanked, offsets kept."""
    return NOT_RESULTS.sub(lambda m: " " * len(m.group(0)), unit.text)


def numbers(unit: Unit) -> list[Number]:
    """The unit's numbers, each with its form (percent, p, n, dollars, tokens, bare) and whether it is checked."""
    text = masked(unit)
    result_words = bool(RESULT_WORDS.search(text))
    found = []
    for m in NUMBER.finditer(text):
        before, after, shown = text[: m.start()], text[m.end() :], m.group(1)
        known = next((k for s, e, k in unit.macros if s <= m.start() < e), None)
        number = Number(shown, m.start(), m.end(), "bare", known=known)
        if p := P_BEFORE.search(before):
            number.form, number.op = "p", p.group(1) or "="
        elif re.search(r"\bn\s*=\s*$", before):
            number.form = "n"
        elif before.endswith("$"):
            number.form = "dollars"
        elif PERCENT_AFTER.match(after):
            number.form = "percent"
        elif re.match(r"\s*tokens?\b", after):
            number.form = "tokens"
        else:
            is_decimal, whole_cell = "." in shown, unit.kind == "row" and cell_is_number(text, m)
            number.checked = known is not None or (
                not UNIT.match(after)
                and not (shown.isdigit() and 1900 <= int(shown) <= 2100)
                and ((is_decimal and (unit.kind == "row" or result_words)) or whole_cell)
            )
        found.append(number)
    return found


def intervals(unit: Unit, found: list[Number]) -> list[tuple[int, list[Number]]]:
    """Each `[a, b]` of the unit (where it starts, its two ends); one of integers only is a citation `[3, 4]`."""
    out = []
    for m in INTERVAL.finditer(masked(unit)):
        ends = [n for n in found if m.start() < n.start < m.end()]
        if len(ends) == 2 and ("." in ends[0].text + ends[1].text or "%" in m.group(0)):
            out.append((m.start(), ends))
    return out


def cell_is_number(text: str, m: re.Match) -> bool:
    """Whether the number is alone in its table cell (a sign, `%`, an interval after it allowed)."""
    left = re.split(r"[|&]", text[: m.start()])[-1]
    right = re.split(r"[|&]", text[m.end() :])[0]
    return not re.search(r"[A-Za-z]", left + right.split("[")[0].replace("%", ""))


def runs_named(unit: Unit, sources: Sources) -> set[str]:
    """The given runs a unit names: by name (as a word), or by using one of their values' macros."""
    named = {k.value.runs for _, _, k in unit.macros}
    runs = {r for rs in named for r in rs if len(rs) == 1}  # a comparison's macro names a pair, not one run
    for run in sources.runs:
        words = [re.escape(w) for w in re.split(r"[\s_-]", run)]
        if len(words[-1]) > 3 and words[-1].endswith("s"):
            words[-1] += "?"  # `the token arm` names the run `tokens`
        pattern = r"(?<![\w-])" + r"[\s_-]".join(words) + r"(?![\w-])"
        if re.search(pattern, unit.text, re.I):
            runs.add(run)
    return runs


def belongs(value: ReportValue, named: set[str]) -> bool:
    """A value is of a named run when it reads that run's files, or when its name is the run's, as an arm's: `SFT adds
    44.2 points to the image arm` quotes \\ImageSftGain, read from the runs of the image arm's stages."""
    if set(value.runs) & named:
        return True
    return any(re.match(camel(run) + r"[A-Z]", value.name) for run in named)


def describe(k: Known) -> str:
    return f"\\{k.value.name} = {k.value.text}{' %' if k.value.percent else ''}"


def where(k: Known) -> str:
    return ", ".join(dict.fromkeys(s.file for s in k.value.sources))


class Checker:
    """The checks of one draft against its sources; `findings` are the flags, `ok` the numbers that matched."""

    def __init__(self, path: Path, sources: Sources):
        self.path, self.sources = path, sources
        self.findings: list[Finding] = []
        self.ok: list[Finding] = []
        self.checked = 0

    def flag(self, unit: Unit, offset: int, kind: str, message: str, source: str = "") -> None:
        self.findings.append(Finding(str(self.path), unit.line(offset), kind, message, source))

    def passed(self, unit: Unit, offset: int, message: str, k: Known) -> None:
        self.ok.append(Finding(str(self.path), unit.line(offset), "ok", message, where(k)))

    def fresh(self) -> list[Known]:
        return [k for k in self.sources.values if not k.stale]

    def check_unit(self, unit: Unit) -> None:
        named = runs_named(unit, self.sources)
        found = numbers(unit)
        spans = intervals(unit, found)
        ends = {id(n) for _, pair in spans for n in pair}
        for number in found:
            if number.checked and id(number) not in ends:
                self.check_number(unit, number, named)
        for start, pair in spans:
            self.check_interval(unit, start, pair, found, named)
        self.check_claims(unit, found, named)

    def check_number(self, unit: Unit, number: Number, named: set[str]) -> None:
        self.checked += 1
        if number.known is not None:  # a macro: the value itself, unless its files changed since
            number.candidates = [number.known]
            if number.known.stale:
                self.flag(unit, number.start, "stale", f"\\{number.known.value.name}: {number.known.stale}")
            else:
                number.ok = True
                self.passed(unit, number.start, f"{number.text} is {describe(number.known)}", number.known)
            return
        if number.form == "p" and number.op != "=":
            return self.check_threshold(unit, number, named)
        kinds = FORM_KINDS[number.form]
        every = [k for k in self.sources.values if kinds(k.value) and matches(number.text, k.value, number.form)]
        number.candidates = [k for k in every if not k.stale]
        ours = [k for k in number.candidates if not named or belongs(k.value, named)]
        shown = number.text + (" %" if number.form == "percent" else "")
        theirs = [k for k in self.fresh() if kinds(k.value) and belongs(k.value, named)]
        if ours or (number.candidates and not theirs):
            number.candidates, number.ok = ours or number.candidates, True
            self.passed(unit, number.start, f"{shown} is {describe(number.candidates[0])}", number.candidates[0])
        elif theirs:
            nearest = min(theirs, key=lambda k: distance(number.text, k.value))
            also = f"; it is {describe(number.candidates[0])}" if number.candidates else ""
            runs = ", ".join(sorted(named))
            message = f"{shown} next to {runs}, whose nearest value is {describe(nearest)}{also}"
            self.flag(unit, number.start, "mismatch", message, where(nearest))
        elif stale := [k for k in every if k.stale]:
            self.flag(unit, number.start, "stale", f"{shown} is {describe(stale[0])}, but {stale[0].stale}")
        else:
            self.flag(unit, number.start, "no source", f"{shown} matches no value of the given runs")

    def check_threshold(self, unit: Unit, number: Number, named: set[str]) -> None:
        """`p < x` (or `p > x`): the p of the comparison of the runs the unit names is on that side of x; naming
        none, some p of the given runs is."""
        x, below = to_float(number.text), number.op in ("<", "<=", "≤")

        def holds(k: Known) -> bool:
            return k.value.value < x if below else k.value.value > x

        claim = f"p {number.op} {number.text}"
        if ps := comparison_ps(self.fresh(), named):
            if wrong := [k for k in ps if not holds(k)]:
                message = f"{claim}, but {'; '.join(describe(k) for k in wrong)}"
                return self.flag(unit, number.start, "significance", message, where(wrong[0]))
        elif not (ps := [k for k in self.fresh() if k.value.kind == "p_value" and holds(k)]):
            return self.flag(unit, number.start, "significance", f"{claim}, but no p-value of the given runs is")
        number.ok = True
        self.passed(unit, number.start, f"{claim}: {describe(ps[0])}", ps[0])

    def check_interval(self, unit: Unit, start: int, ends: list[Number], found: list[Number], named: set[str]):
        """An `[a, b]` is the Low and High of one value: of the number just before it, else of a run the unit
        names, else of any value of the given runs."""
        self.checked += 1
        text = masked(unit)
        point = next((n for n in reversed(found) if n.end <= start), None)
        if point is not None and not (
            point.ok and re.fullmatch(r"[\s%(:,]*(?:points?|pp)?[\s(:,]*", text[point.end : start])
        ):
            point = None
        pairs = self.pairs(ends, self.fresh())
        if point is not None:
            wanted, what = [k.value.name for k in point.candidates], f"the interval of the {point.text} before it"
        elif named:
            wanted = [p for p in pairs if belongs(self.sources.named(p + "Low").value, named)]
            what = f"an interval of {', '.join(sorted(named))}"
        else:
            wanted, what = pairs, "an interval of the given runs"
        shown = f"[{ends[0].text}, {ends[1].text}]"
        if good := [p for p in pairs if p in wanted]:
            low = self.sources.named(good[0] + "Low")
            return self.passed(unit, start, f"{shown} is the interval of \\{good[0]}", low)
        if stale := self.pairs(ends, [k for k in self.sources.values if k.stale]):
            low = self.sources.named(stale[0] + "Low")
            return self.flag(unit, start, "stale", f"{shown} is the interval of \\{stale[0]}, but {low.stale}")
        expected = [
            f"\\{w}: [{lo.value.text}, {hi.value.text}]"
            for w in wanted
            if (lo := self.sources.named(w + "Low")) and (hi := self.sources.named(w + "High"))
        ]
        message = f"{shown} is not {what}" + (f" ({'; '.join(expected)})" if expected else "")
        message += f"; it is the interval of \\{pairs[0]}" if pairs else "; it is no interval of the given runs"
        self.flag(unit, start, "interval", message)

    def pairs(self, ends: list[Number], values: list[Known]) -> list[str]:
        """The values (of `values`) whose Low and High the two ends are (macros by name, typed numbers within their
        rounding)."""
        by_name, out = {k.value.name: k for k in values}, []
        for k in values:
            prefix = k.value.name.removesuffix("Low")
            if k.value.kind == "interval_low" and (high := by_name.get(prefix + "High")):
                if self.is_value(ends[0], k) and self.is_value(ends[1], high):
                    out.append(prefix)
        return out

    @staticmethod
    def is_value(number: Number, k: Known) -> bool:
        if number.known is not None:
            return number.known.value.name == k.value.name
        return matches(number.text, k.value, "percent")

    def check_claims(self, unit: Unit, found: list[Number], named: set[str]) -> None:
        """A claim word stands only on a p below 0.05: the unit's own, else that of the runs it names."""
        for m in CLAIM.finditer(unit.text):
            if NEGATION.search(unit.text[: m.start()]):
                continue
            self.checked += 1
            ps = [n.candidates[0] for n in found if n.form == "p" and n.op == "=" and n.ok]
            ps = ps or comparison_ps(self.fresh(), named)
            thresholds = [n for n in found if n.form == "p" and n.op in ("<", "<=", "≤")]
            claim = m.group(0)
            if not ps and thresholds:
                continue  # `p < 0.05` is checked against the runs on its own
            if not ps:
                self.flag(unit, m.start(), "significance", f"'{claim}' with no p-value in the sentence")
            elif weak := [k for k in ps if k.value.value >= 0.05]:
                message = f"'{claim}' but {describe(weak[0])} (>= 0.05)"
                self.flag(unit, m.start(), "significance", message, where(weak[0]))
            else:
                self.passed(unit, m.start(), f"'{claim}': {describe(ps[0])}", ps[0])


def comparison_ps(values: list[Known], named: set[str]) -> list[Known]:
    """The p-values of the paired comparisons between runs the unit names."""
    pairs = {frozenset(p) for p in combinations(sorted(named), 2)}
    return [k for k in values if k.value.kind == "p_value" and frozenset(k.value.runs) in pairs]


def distance(text: str, value: ReportValue) -> float:
    x = to_float(text)
    return min(abs(x - t) for t in ([100 * value.value, value.value] if value.percent else [value.value]))


def check_figures(path: Path, figures: list[tuple[int, str]], sources: Sources) -> list[Finding]:
    """Each embedded figure carries the provenance of the given runs, drawn from their files as they are now."""
    return [
        Finding(str(path), line, "figure", f"{name}: {problem}")
        for line, name in figures
        for problem in figure_problems(path.parent / name, sources)
    ]


def figure_problems(figure: Path, sources: Sources) -> list[str]:
    """What is wrong with where a figure came from (nothing for a report PNG of the given runs as they are)."""
    if not figure.suffix and figure.with_suffix(".png").is_file():
        figure = figure.with_suffix(".png")  # \includegraphics{x} of x.png
    if not figure.is_file():
        return ["no such file"]
    try:
        record = read_figure_provenance(figure)
    except UserError:
        record = None
    if record is None:
        return ["carries no provenance (not a report PNG): cannot say which runs it shows"]
    # A drawn run is a given one by its name and its results file's bytes, wherever either lies now (a report and its
    # runs move together; a figure is copied beside the draft).
    given = {name: (d, _sha256_or_none(d / RESULT_NAME)) for name, d in sources.runs.items()}
    problems = []
    for run in record["runs"]:
        name, files = run.get("run"), run.get("files_sha256", {})
        if name not in given:
            problems.append(f"drawn from run {name} ({run.get('dir')}), not one of the given runs")
            continue
        run_dir = given[name][0]
        # The run's own files (a training log it lists may live beside the model instead).
        for file in (RESULT_NAME, PREDICTIONS_NAME):
            if file in files and _sha256_or_none(run_dir / file) != files[file]:
                problems.append(
                    f"drawn from other results than {run_dir / file} holds now (the file changed since, or it is "
                    "another run of that name)"
                )
    return problems


def _sha256_or_none(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def check_claims(draft: str | Path, source_paths: list[str | Path]) -> tuple[list[Finding], list[Finding], dict]:
    """Check a draft against its sources: the findings (flags), the numbers that matched, and the counts."""
    path = Path(draft)
    if path.suffix.lower() not in DRAFT_FORMATS:
        raise UserError(f"{path}: a draft is .tex or .md, not {path.suffix or 'a file without an extension'}")
    if not path.is_file():
        raise UserError(f"{path}: no such draft")
    sources = load_sources(source_paths)
    checker = Checker(path, sources)
    lines, figures = read_draft(path, sources, checker.findings)
    checker.checked += len(checker.findings)  # unknown macros
    for unit in units(lines):
        checker.check_unit(unit)
    drawn = check_figures(path, figures, sources)
    checker.findings += drawn
    checker.checked += len(figures)
    flagged = {f.line for f in drawn}
    checker.ok += [
        Finding(str(path), line, "ok", f"{name}: drawn from the given runs")
        for line, name in figures
        if line not in flagged
    ]
    findings = sorted(checker.findings, key=lambda f: f.line)
    counts = {"checked": checker.checked, "matched": len(checker.ok)}
    counts |= {kind.replace(" ", "_"): sum(f.kind == kind for f in findings) for kind in FLAG_KINDS}
    return findings, sorted(checker.ok, key=lambda f: f.line), counts

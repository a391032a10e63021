"""A report's named values (`values.report_values`) as files a paper is written from: `macros.tex`, one
`\\newcommand` per value, each under a comment naming the results files it was read from and their sha256, and
`macros.md`, the same as a Markdown table. Both are written from the values alone (no date, no host), so the same
runs give the same bytes.
"""

from __future__ import annotations

import re

from .values import ReportValue

TEX_NAME = "macros.tex"
MARKDOWN_NAME = "macros.md"

TEX_HEADER = """\
% Every figure of an astroreason report as a macro: \\input{macros} in the preamble, then e.g. \\ImageAccuracy.
% Written by `astroreason report RUN... --tex` from the runs' results files; each macro's comment names the run,
% the file it was read from and that file's sha256 (`astroreason claims` checks a draft against them).
% Percentages are the number in points without a % sign: write \\ImageAccuracy\\,\\% in the text.
% Differences carry a true minus sign and p-values below 0.001 are written as a power of ten (math mode).
"""

# What LaTeX reads as commands or math in text mode; a value's text is digits, but a run's text could hold any.
_TEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_text(value: ReportValue) -> str:
    """The value's printed text, safe as the body of a macro in text or math mode: `-3.3` as a true minus, a p below
    0.001 as `1.2\\times10^{-5}` (the report's `1.2e-05`)."""
    text = value.text
    if value.kind == "p_value" and 0 < value.value < 1e-3:
        mantissa, exponent = f"{value.value:.2e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return rf"\ensuremath{{{mantissa}\times10^{{{int(exponent)}}}}}"
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        # A hyphen in text mode is not a minus sign; \ensuremath gives one in text and math alike.
        return rf"\ensuremath{{{text}}}" if text.startswith("-") else text
    return "".join(_TEX_SPECIAL.get(c, "\\textbackslash{}" if c == "\\" else c) for c in text)


def _comment(text: str) -> str:
    # A line break would end the comment and let the rest be read as LaTeX.
    return " ".join(text.split())


def render_tex(values: list[ReportValue]) -> str:
    """macros.tex: the header, then per value its source comments and its `\\newcommand`."""
    lines = [TEX_HEADER]
    for v in values:
        lines += [_comment(f"% {v.name}: {s.run}, {s.file} sha256 {s.sha256}") for s in v.sources]
        lines += [f"\\newcommand{{\\{v.name}}}{{{tex_text(v)}}}", ""]
    return "\n".join(lines)


def _cell(text: str) -> str:
    # A pipe would split the cell; a line break would end the row.
    return " ".join(text.replace("|", r"\|").split())


def render_markdown(values: list[ReportValue]) -> str:
    """macros.md: one row per value, its text as the report prints it (with % for percentages) and its sources."""
    lines = [
        "# Report values",
        "",
        "Every figure of the report, named as in `macros.tex` (`\\input{macros}`, then `\\ImageAccuracy\\,\\%`), "
        "with the results files it was read from and their sha256 when the report was written.",
        "",
        "| macro | value | run(s) | file | sha256 |",
        "|---|---|---|---|---|",
    ]
    for v in values:
        files = "<br>".join(_cell(s.file) for s in v.sources)
        hashes = "<br>".join(f"`{s.sha256}`" for s in v.sources)
        text = f"{v.text} %" if v.percent else v.text
        lines.append(f"| `\\{v.name}` | {_cell(text)} | {_cell(', '.join(v.runs))} | {files} | {hashes} |")
    return "\n".join(lines) + "\n"

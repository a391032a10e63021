"""`astroreason report RUN... --tex --macros`: every figure of values.json as a LaTeX macro under comments naming its
source files (macros.tex, compiled here by pdflatex) and as a Markdown table (macros.md), from the two real runs of
tests/test_report.py; run names that give no macro name, or the same one, are one error line.

Without pdflatex the LaTeX test is skipped, except under ASTROREASON_REQUIRE_LATEX=1 (CI, `.ci/run`), where its
absence is a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest
from test_report import two_runs  # noqa: F401  (the module's fixture: two real evaluation runs)

from astroreason.cli import main
from astroreason.evaluation.macros import render_tex, tex_text
from astroreason.evaluation.values import ReportValue, Source

PDFLATEX = shutil.which("pdflatex")
REQUIRED = os.environ.get("ASTROREASON_REQUIRE_LATEX") == "1"


@pytest.fixture(scope="module")
def report(two_runs):  # noqa: F811
    root, runs = two_runs
    out = root / "macros-report"
    assert main(["report", str(runs["image"]), str(runs["tokens"]), "--out", str(out), "--tex", "--macros"]) == 0
    values = json.loads((out / "values.json").read_text())
    return out, [ReportValue.from_json(v) for v in values]


def test_macros_tex_defines_every_value_under_its_sources(report):
    out, values = report
    tex = (out / "macros.tex").read_text()
    assert "without a % sign" in tex  # the header says how percentages are written
    lines = tex.splitlines()
    for v in values:
        define = f"\\newcommand{{\\{v.name}}}{{{tex_text(v)}}}"
        assert lines.count(define) == 1
        # Just above it, one comment per source: the run, the file and its sha256, equal to the file's now.
        comments = lines[lines.index(define) - len(v.sources) : lines.index(define)]
        for comment, s in zip(comments, v.sources):
            assert comment == f"% {v.name}: {s.run}, {s.file} sha256 {s.sha256}"
            assert s.sha256 == hashlib.sha256((out / s.file).read_bytes()).hexdigest()
    assert sum(line.startswith("\\newcommand") for line in lines) == len(values)
    # The value is the report's text: ImageAccuracy in points, one decimal, as report.md prints it.
    accuracy = next(v for v in values if v.name == "ImageAccuracy")
    assert f"\\newcommand{{\\ImageAccuracy}}{{{100 * accuracy.value:.1f}}}" in tex
    assert f" {100 * accuracy.value:.1f} [" in (out / "report.md").read_text()


def test_macros_md_lists_every_value_with_its_sources(report):
    out, values = report
    rows = [line for line in (out / "macros.md").read_text().splitlines() if line.startswith("| `\\")]
    assert len(rows) == len(values)
    for row, v in zip(rows, values):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == f"`\\{v.name}`"
        assert cells[1] == (f"{v.text} %" if v.percent else v.text)
        assert cells[2] == ", ".join(v.runs)
        assert cells[3].split("<br>") == [s.file for s in v.sources]
        assert cells[4].split("<br>") == [f"`{s.sha256}`" for s in v.sources]


def test_tex_text_writes_a_minus_sign_and_a_power_of_ten():
    def value(kind, x, text):
        return ReportValue("X", kind, x, text, False, ())

    assert tex_text(value("difference", -0.0333, "-3.3")) == r"\ensuremath{-3.3}"
    assert tex_text(value("p_value", 1.234e-5, f"{1.234e-5:.3g}")) == r"\ensuremath{1.23\times10^{-5}}"
    assert tex_text(value("p_value", 5e-4, f"{5e-4:.3g}")) == r"\ensuremath{5\times10^{-4}}"
    assert tex_text(value("p_value", 0.0312, "0.0312")) == "0.0312"
    assert tex_text(value("n", 12, "12")) == "12"
    assert tex_text(value("n", 0, "a_b %")) == r"a\_b \%"


needs_latex = pytest.mark.skipif(
    PDFLATEX is None and not REQUIRED,
    reason="pdflatex not installed (apt-get install texlive-latex-base, or .ci/latex_setup.sh)",
)


@needs_latex
def test_macros_tex_compiles_with_every_macro_used(report, tmp_path):
    """A document that inputs macros.tex and uses each macro once compiles; so do values of the kinds the two runs
    may not have (a negative difference, a p below 0.001, text with LaTeX's special characters)."""
    assert PDFLATEX, "ASTROREASON_REQUIRE_LATEX=1 but pdflatex is not installed: run .ci/latex_setup.sh"
    out, values = report
    shutil.copy(out / "macros.tex", tmp_path / "macros.tex")
    source = Source("edge_run", "/runs/edge run/result.json", "0" * 64)
    edge = [
        ReportValue("EdgeDiff", "difference", -0.0333, "-3.3", True, (source,)),
        ReportValue("EdgeP", "p_value", 1.2e-5, f"{1.2e-5:.3g}", False, (source,)),
        ReportValue("EdgeText", "n", 0, "a_b & 50% #1 {x} ~^ \\", False, (source,)),
    ]
    (tmp_path / "edge.tex").write_text(render_tex(edge))
    percent = "\\,\\%"
    body = [f"{v.name}: \\{v.name}{percent if v.percent else ''}\\par" for v in values + edge]
    body.append("In math: $\\EdgeDiff + \\EdgeP$\\par")
    document = "\\documentclass{article}\n\\input{macros}\n\\input{edge}\n\\begin{document}\n"
    (tmp_path / "paper.tex").write_text(document + "\n".join(body) + "\n\\end{document}\n")
    done = subprocess.run(
        [PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "paper.tex"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,  # nonstopmode and no input: an error ends the run, it cannot wait
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "paper.pdf").read_bytes().startswith(b"%PDF")


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err
    return err


def test_run_names_without_a_macro_name_or_sharing_one_are_refused(two_runs, tmp_path, capsys):  # noqa: F811
    _, runs = two_runs
    nameless = tmp_path / "__"
    shutil.copytree(runs["image"], nameless)
    assert main(["report", str(nameless), "--out", str(tmp_path / "r"), "--tex"]) == 2
    assert "'__': a run or stage name needs a letter or digit to name its macros" in _one_error_line(capsys)
    # Two different runs whose names both give \ImageA...: which one a macro means would be a guess.
    shutil.copytree(runs["image"], tmp_path / "image-a")
    shutil.copytree(runs["tokens"], tmp_path / "image_a")
    assert main(["report", str(tmp_path / "image-a"), str(tmp_path / "image_a"), "--out", str(tmp_path / "r")]) == 2
    err = _one_error_line(capsys)
    assert "two figures would be named \\ImageA" in err and "rename a run" in err
    assert not (tmp_path / "r").exists()  # refused before anything was written
    # An out directory that cannot be written is refused up front, --tex or not.
    (tmp_path / "file").write_text("")
    assert main(["report", str(runs["image"]), "--out", str(tmp_path / "file" / "r"), "--tex", "--macros"]) == 2
    assert "is a file" in _one_error_line(capsys)

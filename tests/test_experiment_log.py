"""The log a person reads in the morning: `experiment_log.md` summarises each experiment (best so far, verdict
counts, dollars spent, noise floor) from the ledger's rows, and links `experiment_log.png`, the metric over time per
experiment with the best-so-far line and its noise band.

The rows are real: run directories in the harness's format recorded through `record_result` (verdicts by the
ledger's own paired test), a crash and a run marked suspect; every expected figure is computed here from the rows the
ledger returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from test_ledger_verdict import correct, flip, write_run

from astroreason.cli import main as cli
from astroreason.integrity.gate import mark_suspect
from astroreason.integrity.ledger import (
    LOG_FILE,
    PLOT_FILE,
    record_crash,
    record_result,
    set_noise_floor,
    verify,
)
from astroreason.integrity.summary import BAND_COLOR, PLOT_DPI, PLOT_PANEL_INCHES

REPO = Path(__file__).resolve().parents[1]


def record(project: Path, name: str, right: np.ndarray, experiment: str, dollars: float, suspect: bool = False):
    """One evaluation recorded as the harness does, its `result.json` naming what this run paid."""
    run = write_run(project / "runs" / name, right)
    result = json.loads((run / "result.json").read_text())
    result["spend"] = {"this_run": {"dollars": dollars}}
    if suspect:
        mark_suspect(run, "entropy_collapse", "step 40: entropy collapsed")
    return record_result(project, result, run_dir=run, experiment=experiment)


def ledger(project: Path) -> None:
    set_noise_floor(project, "sft-lr", 0.03, "seeds 0-4, std of accuracy")
    record(project, "a", correct(100), "sft-lr", 0.25)  # the baseline
    record(project, "b", flip(correct(100), 4, 5), "sft-lr", 0.5)  # within the noise: discard
    record(project, "c", correct(140), "sft-lr", 0.125)  # +20 points: the new best
    record_crash(project, experiment="sft-lr", run_dir=project / "runs" / "d", description="OOM at step 3")
    record(project, "e", correct(190), "sft-lr", 1.0, suspect=True)  # the best value, but suspect: never the best
    record(project, "f", correct(60), "grpo", 2.0)  # another experiment, no noise floor recorded


def summary_cells(log: str, experiment: str) -> list[str]:
    section = log.split("## Experiments", 1)[1].split("## Results", 1)[0]
    line = next(line for line in section.splitlines() if line.startswith(f"| {experiment} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_summary_per_experiment_is_computed_from_the_rows(tmp_path):
    ledger(tmp_path)
    rows = verify(tmp_path)
    assert [r["status"] for r in rows] == ["keep", "discard", "keep", "crash", "suspect", "keep"]
    log = (tmp_path / LOG_FILE).read_text()
    for experiment, floor in (("sft-lr", 0.03), ("grpo", 0.0)):
        mine = [(i, r) for i, r in enumerate(rows, start=1) if r["experiment"] == experiment]
        kept = [(i, r) for i, r in mine if r["status"] == "keep"]
        best_number, best = max(kept, key=lambda pair: float(pair[1]["value"]))
        spent = sum(float(c.split("=")[1]) for _, r in mine for c in r["cost"].split(",") if c.startswith("usd="))
        without = sum("usd=" not in r["cost"] for _, r in mine)
        counts = [sum(r["status"] == s for _, r in mine) for s in ("keep", "discard", "suspect", "crash")]
        cells = summary_cells(log, experiment)
        assert cells[:2] == [experiment, str(len(mine))]
        assert cells[2] == f"{best['value']} (accuracy, #{best_number} {best['run_dir']})"
        assert cells[3:7] == [str(c) for c in counts]
        assert cells[7] == f"{spent:.4f}" + (f" ({without} row name no usd)" if without == 1 else "")
        assert cells[8] == f"{floor:g}"
    # The figures themselves, against what was recorded: the suspect 0.95 is not the best, the crash paid nothing.
    assert summary_cells(log, "sft-lr")[2] == "0.7 (accuracy, #3 runs/c)"
    assert summary_cells(log, "sft-lr")[3:] == ["2", "1", "1", "1", "1.8750 (1 row name no usd)", "0.03"]
    assert summary_cells(log, "grpo")[2:] == ["0.3 (accuracy, #6 runs/f)", "1", "0", "0", "0", "2.0000", "0"]
    # Each row still carries its baseline and difference; the log links the figure beside it.
    row3 = next(line for line in log.splitlines() if line.startswith("| 3 |"))
    assert "| #1 | +0.2000 [" in row3 and "usd=0.125" in row3
    assert f"]({PLOT_FILE})" in log and (tmp_path / PLOT_FILE).is_file()


def test_the_figure_shows_each_experiment_with_its_noise_band(tmp_path):
    ledger(tmp_path)
    image = Image.open(tmp_path / PLOT_FILE)
    image.load()  # decodes the whole file
    width, height = PLOT_PANEL_INCHES
    experiments = {r["experiment"] for r in verify(tmp_path)}
    assert image.format == "PNG"
    assert image.size == (round(width * PLOT_DPI), round(height * PLOT_DPI * len(experiments)))
    pixels = np.asarray(image.convert("RGB"))
    band = np.all(pixels == tuple(int(BAND_COLOR[k : k + 2], 16) for k in (1, 3, 5)), axis=-1)
    panel = pixels.shape[0] // len(experiments)
    assert band[:panel].sum() > 1000  # sft-lr (first panel): a 0.03 band around its best-so-far line
    assert band[panel:].sum() == 0  # grpo: no floor recorded, a band of zero width
    # Not a blank canvas: the panels hold the points and lines drawn in colour.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50

    # `ledger log` regenerates the same figure from the ledger alone.
    first = (tmp_path / PLOT_FILE).read_bytes()
    (tmp_path / PLOT_FILE).unlink()
    assert cli(["ledger", "log", str(tmp_path)]) == 0
    assert (tmp_path / PLOT_FILE).read_bytes() == first


def test_ledger_verify_stays_free_of_matplotlib(tmp_path):
    ledger(tmp_path)
    probe = (
        "import sys\nfrom astroreason.cli import main\nstatus = main(sys.argv[1:])\n"
        "print('LOADED', sorted(m for m in ('matplotlib', 'torch') if m in sys.modules))\nsys.exit(status)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", probe, "ledger", "verify", str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout


def test_a_log_without_values_draws_no_figure(tmp_path):
    record_crash(tmp_path, experiment="sft-lr", description="died before its first result")
    log = (tmp_path / LOG_FILE).read_text()
    assert not (tmp_path / PLOT_FILE).exists() and PLOT_FILE not in log
    assert summary_cells(log, "sft-lr")[2:] == ["none kept", "0", "0", "0", "1", "0.0000 (1 row name no usd)", "0"]

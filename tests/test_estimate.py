"""Cost before launch: `--estimate_only` prints the estimate and stops, spending and writing nothing; a run whose
estimate does not fit in what the cap has left is refused; the estimate and the actual spend are both recorded.

Real runs of the tiny model: an evaluation after a stratified pilot (`astroreason budget estimate`), and the SFT
recipe (`python recipes/sft.py`). At $1 per GPU-second a cap of a billionth of a dollar is below any estimate and a
cap of a million dollars above any, so no verdict depends on the machine's speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, cli
from evalkit import ledger_rows, sample_lines

from astroreason.integrity.ledger import LEDGER_FILE, verify

ROOT = Path(__file__).resolve().parents[1]
PRICE = "3600"  # dollars per GPU-hour: $1 per second


def eval_args(model, data, out, ledger, **overrides) -> list[str]:
    args = {
        "model": model,
        "data_dir": data,
        "output_dir": out,
        "ledger": ledger,
        "prices": ROOT / "eval" / "prices.yaml",
        "price_gpu_hour": PRICE,
        "max_samples": 8,
        "batch_size": 2,
        "max_new_tokens": 4,
        "n_boot": 100,
        "image_size": 56,
    } | overrides
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


def json_line(out: str, word: str) -> dict:
    lines = [line for line in out.splitlines() if line.startswith(word + " ")]
    assert len(lines) == 1, out
    return json.loads(lines[0][len(word) + 1 :])


def test_eval_estimate_only_spends_nothing_and_the_run_records_both(tiny_model_dir, prepared_dir, tmp_path, capsys):
    project = tmp_path / "project"
    ledger, out = project / "spend.jsonl", tmp_path / "eval"
    args = eval_args(tiny_model_dir, prepared_dir, out, ledger)

    # A fresh output_dir has no answers to extrapolate from: refused, nothing created.
    status, _, err = cli(capsys, "eval", *args, "--estimate_only", "true")
    assert_one_line_error(status, err, "estimate_only: no answers in", "budget estimate")
    assert not out.exists() and not ledger.exists()
    status, _, err = cli(capsys, "budget", "estimate", *args, "--estimate_only", "true")
    assert_one_line_error(status, err, "`budget estimate` runs a pilot")
    assert not out.exists() and not ledger.exists()

    # The pilot (paid, cached), then the estimate from its answers: nothing asked, charged or written.
    status, pilot_out, _ = cli(capsys, "budget", "estimate", *args, "--pilot_samples", "4")
    assert status == 0
    pilot = json_line(pilot_out, "ESTIMATE")
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    spent = ledger.read_bytes()
    for spelling in ("--estimate_only", "--estimate-only"):
        status, stdout, _ = cli(capsys, "eval", *args, spelling, "true", "--max_dollars", "1e6")
        assert status == 0
        estimate = json_line(stdout, "ESTIMATE")
        assert "RESULT " not in stdout
        assert estimate["fits"] and estimate["pilot_samples"] == 4 and estimate["remaining_samples"] == 4
        assert estimate["estimated_dollars"] == pytest.approx(pilot["estimated_dollars"])
        assert estimate["cap_left_dollars"] == pytest.approx(1e6 - pilot["ledger_committed_dollars"])
        assert ledger.read_bytes() == spent  # spends nothing
        assert {p.name: p.read_bytes() for p in out.iterdir()} == files  # writes nothing
    assert not (project / LEDGER_FILE).exists()

    # A cap the estimate crosses: refused (exit 1) before anything is sent, by the estimate and by the run itself.
    capped = [*args, "--max_dollars", "1e-9"]
    status, stdout, err = cli(capsys, "eval", *capped, "--estimate_only", "true")
    assert status == 1 and len(err) == 1 and "exceeds the dollars cap" in err[0] and "nothing was asked" in err[0]
    assert not json_line(stdout, "ESTIMATE")["fits"] and ledger.read_bytes() == spent
    status, stdout, err = cli(capsys, "eval", *capped)
    assert status == 1 and json_line(stdout, "RESULT")["status"] == "estimate_over_cap"
    assert len(sample_lines(out)) == 4 and not (project / LEDGER_FILE).exists()

    # estimate_only asks nothing: with a pilot size it is refused (the pilot is `budget estimate`'s).
    status, _, err = cli(capsys, "eval", *args, "--estimate_only", "true", "--pilot_samples", "2")
    assert_one_line_error(status, err, "estimate_only: asks nothing")

    # The run starts from the estimate (in the spend ledger) and its results row names both figures.
    status, stdout, _ = cli(capsys, "eval", *args, "--max_dollars", "1e6", "--experiment", "cost")
    assert status == 0
    started = json_line(stdout, "ESTIMATE")
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "complete" and result["n_from_cache"] == 4 and result["estimate"] == started
    notes = [r for r in ledger_rows(ledger) if r["kind"] == "estimate"]  # the refused run's, then this one's
    assert len(notes) == 2 and notes[1]["estimated_dollars"] == pytest.approx(started["estimated_total_dollars"])
    (row,) = verify(project)
    cost = dict(part.split("=") for part in row["cost"].split(","))
    paid = result["spend"]["this_run"]["dollars"]  # what this run paid: the pilot's 4 answers came from the cache
    assert float(cost["usd"]) == pytest.approx(paid, rel=1e-5) and 0 < paid < result["dollars"]
    assert float(cost["estimated_usd"]) == pytest.approx(started["estimated_total_dollars"], rel=1e-5)
    assert int(cost["tokens"]) == result["prompt_tokens"] + result["completion_tokens"]
    assert cli(capsys, "ledger", "verify", project)[0] == 0


def recipe(tmp_path: Path, *overrides) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "sft.py"),
        "--config",
        str(ROOT / "recipes" / "configs" / "tiny" / "sft_image.yaml"),
        "--image_size",
        "56",
        "--max_train_samples",
        "16",
        "--max_steps",
        "6",
        "--save_steps",
        "1000",
        "--disable_tqdm",
        "true",
        "--price_gpu_hour",
        PRICE,
        *map(str, overrides),
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_training_estimate_only_and_pilot_steps(tiny_model_dir, prepared_dir, tmp_path):
    ledger = tmp_path / "ledger" / "spend.jsonl"
    ledger.parent.mkdir()
    ledger.write_text(json.dumps({"kind": "charge", "id": "x", "run": "earlier", "dollars": 0.5}) + "\n")
    spent = ledger.read_bytes()
    common = ["--model_name_or_path", tiny_model_dir, "--data_dir", prepared_dir, "--ledger", ledger]

    # Estimate only: the pilot's steps are timed, neither charged nor kept; the run's output_dir is never made.
    only = recipe(
        tmp_path, *common, "--output_dir", tmp_path / "run", "--max_dollars", "1e6", "--estimate_only", "true"
    )
    assert only.returncode == 0, only.stderr[-3000:]
    estimate = json_line(only.stdout, "ESTIMATE")
    assert estimate["fits"] and estimate["pilot_steps"] == 2 and estimate["max_steps"] == 6
    assert estimate["estimated_total_dollars"] == pytest.approx(estimate["seconds_per_step"] * 6 * float(PRICE) / 3600)
    assert estimate["ledger_committed_dollars"] == pytest.approx(0.5)
    assert estimate["cap_left_dollars"] == pytest.approx(1e6 - 0.5)
    assert only.stdout.count("'loss'") + only.stderr.count("'loss'") == 2  # two steps, not six
    assert ledger.read_bytes() == spent and not (tmp_path / "run").exists()

    # Over what the cap has left: refused, one line, still nothing charged or written.
    over = recipe(
        tmp_path, *common, "--output_dir", tmp_path / "run", "--max_dollars", "0.5000001", "--estimate-only", "true"
    )
    assert over.returncode == 1, over.stderr[-3000:]
    errors = [line for line in over.stderr.splitlines() if line.startswith("astroreason: error: ")]
    assert errors == [over.stderr.strip().splitlines()[-1]] and "exceeds what the dollar cap has left" in errors[0]
    assert ledger.read_bytes() == spent and not (tmp_path / "run").exists()

    # A real run with a pilot: the estimate made after two steps is in the spend ledger beside every step's charge.
    run = recipe(tmp_path, *common, "--output_dir", tmp_path / "run", "--max_dollars", "1e6", "--pilot_steps", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    started = json_line(run.stdout, "ESTIMATE")
    rows = [r for r in ledger_rows(ledger) if r.get("run") == f"train:{tmp_path / 'run'}"]
    notes = [r for r in rows if r["kind"] == "estimate"]
    charges = [r for r in rows if r["kind"] == "charge"]
    assert len(notes) == 1 and notes[0]["estimated_dollars"] == pytest.approx(started["estimated_total_dollars"])
    assert [r["step"] for r in charges] == [1, 2, 3, 4, 5, 6] and sum(r["dollars"] for r in charges) > 0
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_pilot_steps_must_be_a_count(tmp_path):
    bad = recipe(tmp_path, "--output_dir", tmp_path / "run", "--pilot_steps", "-1")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("astroreason: error: pilot_steps")
    assert not (tmp_path / "run").exists()

"""The ledger's keep/discard verdict: a result of an experiment is compared, galaxy by galaxy, with the best kept
result of that experiment on the same galaxies (exact McNemar, paired bootstrap interval, noise floor).

Most cases write real run directories (`result.json` with metrics from the project's own `classification_metrics`,
`predictions.jsonl` in the harness's format) with chosen per-galaxy correctness and record them through the public
API; one case runs two real evaluations of the tiny model through `astroreason eval --experiment`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from astroreason.cli import main as cli
from astroreason.errors import UserError
from astroreason.evaluation.metrics import classification_metrics
from astroreason.integrity.gate import mark_suspect
from astroreason.integrity.ledger import (
    LEDGER_FILE,
    LOG_FILE,
    V1_GENESIS,
    V1_HEADER,
    noise_floor,
    record_crash,
    record_result,
    row_hash,
    set_noise_floor,
    verify,
)

N = 200
LABELS = np.random.default_rng(0).integers(0, 10, size=N)


def correct(k: int, n: int = N) -> np.ndarray:
    """A correctness vector: the first k galaxies right."""
    return np.arange(n) < k


def write_run(run_dir: Path, right: np.ndarray, *, manifest: str = "m" * 64, split: str = "test") -> Path:
    """A finished evaluation's files: right galaxies answered with their label, the others with the next class."""
    labels = LABELS[: len(right)]
    predictions = [int(y) if ok else int((y + 1) % 10) for y, ok in zip(labels, right)]
    run_dir.mkdir(parents=True)
    with open(run_dir / "predictions.jsonl", "w") as f:
        for i, (y, p) in enumerate(zip(labels, predictions)):
            f.write(json.dumps({"index": i, "key": f"k{i}", "label": int(y), "prediction": p}) + "\n")
    result = {
        "status": "complete",
        "config": {"modality": "image", "seed": 0, "split": split, "output_dir": str(run_dir)},
        "provenance": {"commit": "a" * 40, "dirty": False, "config_sha256": "c" * 64, "manifest_sha256": manifest},
        "metrics": classification_metrics(labels.tolist(), predictions, 10, n_boot=100),
    }
    (run_dir / "result.json").write_text(json.dumps(result))
    return run_dir


def record(project: Path, name: str, right: np.ndarray, experiment: str = "sft-lr", **kwargs) -> dict:
    run = write_run(project / "runs" / name, right, **kwargs)
    return record_result(project, json.loads((run / "result.json").read_text()), run_dir=run, experiment=experiment)


def flip(right: np.ndarray, to_wrong: int, to_right: int) -> np.ndarray:
    """`right` with its first `to_wrong` right galaxies made wrong and its first `to_right` wrong ones made right."""
    out = right.copy()
    out[np.flatnonzero(right)[:to_wrong]] = False
    out[np.flatnonzero(~right)[:to_right]] = True
    return out


def test_discard_keep_and_the_new_best(tmp_path):
    first = record(tmp_path, "a", correct(100))
    assert first["status"] == "keep" and first["baseline"] == ""
    assert first["comparison"] == "first result of experiment 'sft-lr': the baseline"

    same = record(tmp_path, "b", flip(correct(100), 4, 5))  # a few flips both ways: +0.005
    assert same["status"] == "discard"
    assert same["baseline"] == "row 1 runs/a"
    assert same["difference"] == "+0.0050" and float(same["p_value"]) == pytest.approx(1.0)
    lo, hi = (float(x) for x in same["difference_interval"].split(","))
    assert lo < 0 < hi and "does not exclude 0" in same["comparison"]

    better = record(tmp_path, "c", correct(140))  # +20 points on 200 galaxies
    assert better["status"] == "keep" and better["baseline"] == "row 1 runs/a"
    assert better["difference"] == "+0.2000" and float(better["p_value"]) < 1e-9
    assert float(better["difference_interval"].split(",")[0]) > 0 and "the new best" in better["comparison"]

    later = record(tmp_path, "d", flip(correct(140), 0, 2))  # +1 point over the new best, far above the first
    assert later["baseline"] == "row 3 runs/c" and later["difference"] == "+0.0100"
    assert later["status"] == "discard"

    rows = verify(tmp_path)
    assert [r["status"] for r in rows] == ["keep", "discard", "keep", "discard"]
    assert cli(["ledger", "verify", str(tmp_path)]) == 0
    log = (tmp_path / LOG_FILE).read_text()
    assert "4 results: 2 keep, 2 discard, 0 crash, 0 suspect." in log
    row4 = next(line for line in log.splitlines() if line.startswith("| 4 |"))
    assert "| #3 | +0.0100 [" in row4 and f"| {later['p_value']} |" in row4


def test_other_galaxies_are_not_compared(tmp_path):
    record(tmp_path, "a", correct(150))
    other = record(tmp_path, "b", correct(50), manifest="f" * 64)  # much worse, but on other galaxies
    assert other["status"] == "keep" and other["baseline"] == "" and other["difference"] == ""
    assert other["comparison"].startswith(
        f"baseline on other galaxies (row 1: manifest {'m' * 12} test n=200 vs manifest {'f' * 12} test n=200): "
        "not compared"
    )
    fewer = record(tmp_path, "c", correct(120, n=150))  # the same manifest, but not the same ordered samples
    assert fewer["status"] == "keep" and "not compared" in fewer["comparison"]
    # A later result on the first galaxies is compared with the best there, not with the rows on other galaxies.
    worse = record(tmp_path, "d", correct(100))
    assert worse["baseline"] == "row 1 runs/a" and worse["status"] == "discard" and worse["difference"] == "-0.2500"
    # Another experiment's rows are never a baseline.
    assert record(tmp_path, "e", correct(10), experiment="grpo")["status"] == "keep"


def test_noise_floor_turns_a_small_significant_gain_into_discard(tmp_path):
    assert noise_floor(tmp_path, "sft-lr") == (0.0, "default")
    record(tmp_path, "a", correct(100))
    gain = flip(correct(100), 0, 12)  # +6 points, 12 discordant pairs all one way: significant
    assert record(tmp_path, "b", gain)["status"] == "keep"
    assert cli(["ledger", "noise-floor", str(tmp_path), "sft-lr", "0.08", "--source", "5 seeds, 2 std"]) == 0
    assert noise_floor(tmp_path, "sft-lr") == (0.08, "5 seeds, 2 std")
    small = record(tmp_path, "c", flip(gain, 0, 12))
    assert small["status"] == "discard" and small["difference"] == "+0.0600"
    assert float(small["difference_interval"].split(",")[0]) > 0
    assert small["comparison"].startswith("discard: vs row 2") and "within the noise floor" in small["comparison"]
    assert "noise floor 0.08 (5 seeds, 2 std)" in small["comparison"]
    with pytest.raises(UserError, match="noise floor"):
        set_noise_floor(tmp_path, "sft-lr", 1.5, "oops")
    assert cli(["ledger", "verify", str(tmp_path)]) == 0


def test_suspect_wins_and_crash_is_recorded(tmp_path):
    first = record(tmp_path, "z", correct(195))  # above the ceiling: suspect, and no baseline
    assert first["status"] == "suspect" and first["comparison"].endswith("(but suspect: no baseline)")
    record(tmp_path, "a", correct(100))
    run = write_run(tmp_path / "runs" / "b", correct(160))
    mark_suspect(run, "row_order", "the row-order probe scored 0.80")
    row = record_result(tmp_path, json.loads((run / "result.json").read_text()), run_dir=run, experiment="sft-lr")
    assert row["status"] == "suspect" and row["difference"] == "+0.3000" and "(but suspect)" in row["comparison"]
    # The suspect row is no baseline: the next result is still compared with the first.
    assert record(tmp_path, "c", correct(101))["baseline"] == "row 2 runs/a"
    crash = record_crash(tmp_path, experiment="sft-lr", run_dir=tmp_path / "runs" / "d", description="OOM at step 3")
    assert crash["status"] == "crash" and crash["run_dir"] == "runs/d" and crash["value"] == ""
    assert cli(["ledger", "crash", str(tmp_path), "--experiment", "sft-lr", "--description", "killed"]) == 0
    assert [r["status"] for r in verify(tmp_path)] == ["suspect", "keep", "suspect", "discard", "crash", "crash"]


def test_a_changed_baseline_is_never_compared(tmp_path):
    record(tmp_path, "a", correct(100))
    path = tmp_path / "runs" / "a" / "predictions.jsonl"
    path.write_text(path.read_text().replace('"prediction": ', '"prediction":  '))  # any byte changed
    row = record(tmp_path, "b", correct(180))
    assert row["status"] == "discard" and "gone or changed" in row["comparison"]


def test_old_format_ledger_is_read_but_not_extended(tmp_path):
    """A v1 ledger (before the verdict columns) still verifies and renders; appending to it is one clear line."""
    cells = ["2026-01-01T00:00:00Z", "a" * 40, "false", "c" * 64, "image", "0", "accuracy", "0.4", "", "", "keep", "v1"]
    line = "\t".join(cells + [V1_GENESIS, row_hash(cells, V1_GENESIS)])
    path = tmp_path / LEDGER_FILE
    path.write_text(V1_HEADER + "\n" + line + "\n")
    old = path.read_text()
    rows = verify(tmp_path)
    assert len(rows) == 1 and rows[0]["value"] == "0.4" and rows[0]["experiment"] == ""
    assert cli(["ledger", "verify", str(tmp_path)]) == 0 and cli(["ledger", "log", str(tmp_path)]) == 0
    with pytest.raises(UserError, match="a v1 results ledger .* never extended; move it aside"):
        record(tmp_path, "a", correct(100))
    assert path.read_text() == old


def test_two_real_evaluations_of_the_tiny_model(tiny_model_dir, prepared_dir, tmp_path, capsys):
    """The same tiny model evaluated twice on the same galaxies under one experiment: the second answers exactly as
    the first (difference 0), so it is discarded against the first; on fewer galaxies it is not compared."""
    project = tmp_path / "project"

    def evaluate(name, max_samples=6):
        args = {
            "model": tiny_model_dir,
            "data_dir": prepared_dir,
            "output_dir": project / name,
            "ledger": project / "spend.jsonl",
            "prices": Path(__file__).resolve().parents[1] / "eval" / "prices.yaml",
            "max_samples": max_samples,
            "batch_size": 2,
            "max_new_tokens": 4,
            "n_boot": 100,
            "image_size": 56,
            "experiment": "tiny",
        }
        assert cli(["eval", *[x for k, v in args.items() for x in (f"--{k}", str(v))]]) == 0
        return json.loads((project / name / "result.json").read_text())["integrity"]

    assert evaluate("first")["status"] == "keep"
    second = evaluate("second")
    assert second["status"] == "discard" and second["baseline"] == "row 1 first"
    row = verify(project)[1]
    assert row["difference"] == "+0.0000" and row["p_value"] == "1" and row["n"] == "6"
    third = evaluate("third", max_samples=4)
    assert third["status"] == "keep" and "not compared" in third["comparison"]
    capsys.readouterr()


def test_noise_floor_mistakes_are_one_line(tmp_path, capsys):
    assert cli(["ledger", "noise-floor", str(tmp_path), "sft-lr", "2", "--source", "x"]) == 2
    assert cli(["ledger", "noise-floor", str(tmp_path), "sft-lr", "0.01", "--source", " "]) == 2
    assert not (tmp_path / "noise_floors.json").exists()
    (tmp_path / "noise_floors.json").write_text('{"sft-lr": 0.02}')
    assert cli(["ledger", "noise-floor", str(tmp_path), "sft-lr", "0.01", "--source", "seeds"]) == 2
    assert (tmp_path / "noise_floors.json").read_text() == '{"sft-lr": 0.02}'  # a malformed file is left alone
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("astroreason: error: ") for line in err)
    assert "[0, 1)" in err[0] and "source" in err[1] and "noise_floors.json: not a noise-floor file" in err[2]

"""`astroreason noise`: the experiment's noise floor, measured from one recipe trained under several seeds.

Real runs: the tiny Qwen2.5-VL fine-tuned (SFT, a few steps) under two seeds on the surrogate, each evaluated on the
same galaxies; the floor is the spread of their accuracies and the ledger's verdicts use it. Seeds that are one run
under two names (the data order pinned by `data_seed`, no LoRA, no dropout) are refused before any floor is written.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from cli_helpers import assert_one_line_error
from cli_helpers import cli as run_cli
from safetensors.torch import load_file
from test_ledger_verdict import correct, flip, record

from astroreason.budget import Ledger
from astroreason.cli import main as cli
from astroreason.integrity.fingerprint import read_fingerprint
from astroreason.integrity.ledger import NOISE_FILE, noise_floor, verify
from astroreason.sweeps.noise import record_floor

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def recipe(tiny_model_dir, prepared_dir, tmp_path) -> Path:
    """The tiny SFT image recipe, on the test's model and data, three steps, nothing saved on the way."""
    config = yaml.safe_load((ROOT / "recipes/configs/tiny/sft_image.yaml").read_text())
    config |= {
        "model_name_or_path": str(tiny_model_dir),
        "data_dir": str(prepared_dir),
        "max_steps": 3,
        "save_strategy": "no",
        "max_train_samples": 24,
    }
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def noise_argv(recipe: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "noise",
        str(recipe),
        "--experiment",
        "sft-lr",
        "--seeds",
        "2",
        "--out",
        str(tmp_path / "noise"),
        "--ledger",
        str(tmp_path / "project" / "spend.jsonl"),
        "--price-gpu-hour",
        "2.0",
        "--max-samples",
        "8",
        "--max-new-tokens",
        "16",
        *extra,
    ]


def test_noise_records_the_seed_spread_as_the_floor(recipe, tiny_model_dir, tmp_path, capsys):
    assert cli(noise_argv(recipe, tmp_path)) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("NOISE "))
    printed = json.loads(line[len("NOISE ") :])
    out, project = tmp_path / "noise", tmp_path / "project"
    assert json.loads((out / "noise.json").read_text()) == printed

    # The floor is the spread of the accuracies the evaluations themselves wrote.
    accuracies = [json.loads((out / f"seed-{s}/eval/result.json").read_text())["metrics"]["accuracy"] for s in (0, 1)]
    assert printed["noise_floor"] == pytest.approx(statistics.stdev(accuracies))
    assert [r["seed"] for r in printed["seeds"]] == [0, 1] and [r["n"] for r in printed["seeds"]] == [8, 8]
    value, source = noise_floor(project, "sft-lr")
    assert value == pytest.approx(printed["noise_floor"]) and source.startswith("std of accuracy over seeds 0,1")
    assert (project / NOISE_FILE).is_file() and printed["floors_file"] == str(project / NOISE_FILE)
    # The seeds' evaluations are not results of the experiment: the project's results ledger holds none of them.
    assert verify(project) == []

    # Two real runs that differ: each trained (weights moved from the base), differently, from its own first batch.
    base = load_file(tiny_model_dir / "model.safetensors")
    trained = [load_file(out / f"seed-{s}" / "model.safetensors") for s in (0, 1)]
    moved = [name for name in base if not (trained[0][name] == base[name]).all()]
    assert moved, "seed 0's training changed no parameter"
    assert any(not (trained[0][name] == trained[1][name]).all() for name in moved)
    prints = [read_fingerprint(out / f"seed-{s}") for s in (0, 1)]
    assert [p["seed"] for p in prints] == [0, 1]
    assert prints[0]["first_batch_sha256"] != prints[1]["first_batch_sha256"]
    assert cli(["audit", str(out)]) == 0  # the audit's seed probe passes the same runs

    # Training and evaluation both charged the project's spend ledger.
    runs = Ledger(project / "spend.jsonl").by_run()
    assert {f"train:{out / 'seed-0'}", f"train:{out / 'seed-1'}"} <= set(runs)
    assert sum(t.dollars for t in runs.values()) > 0 and sum(t.requests for t in runs.values()) >= 16

    # A rerun reuses the trained models and the paid answers: the same floor, nothing more spent.
    spent = Ledger(project / "spend.jsonl").totals().dollars
    assert cli(noise_argv(recipe, tmp_path)) == 0
    assert "seed 0: trained model in" in capsys.readouterr().out
    assert Ledger(project / "spend.jsonl").totals().dollars == pytest.approx(spent)
    assert noise_floor(project, "sft-lr")[0] == pytest.approx(printed["noise_floor"])


def test_estimate_only_prices_every_seed_and_spends_nothing(recipe, tmp_path, capsys):
    """One pilot of the recipe (uncharged, unsaved) times the seeds; nothing trained, evaluated or recorded; over
    what the cap has left it is exit 1."""
    assert cli(noise_argv(recipe, tmp_path, "--seeds", "3", "--estimate-only")) == 0
    lines = [json.loads(ln[9:]) for ln in capsys.readouterr().out.splitlines() if ln.startswith("ESTIMATE ")]
    seed, total = lines[0], lines[-1]  # the recipe's own line for its pilot, then the command's
    assert total["seeds"] == 3 and total["fits"] and total["cap_left_dollars"] is None
    assert seed["estimated_total_dollars"] > 0
    assert total["training_dollars_per_seed"] == pytest.approx(seed["estimated_total_dollars"])
    assert total["estimated_training_dollars"] == pytest.approx(3 * seed["estimated_total_dollars"])
    assert not (tmp_path / "noise").exists()
    ledger = tmp_path / "project" / "spend.jsonl"
    assert not ledger.exists() or Ledger(ledger).totals().committed_dollars == 0
    # Over what the cap has left the whole measurement is refused, in one line ($1e-12: less than any real step).
    argv = noise_argv(recipe, tmp_path, "--seeds", "3", "--estimate-only", "--max-dollars", "1e-12")
    assert cli(argv) == 1
    assert "budget: training 3 seeds would cost about" in capsys.readouterr().err
    assert not (tmp_path / "noise").exists()


def test_seeds_that_are_one_run_are_refused(recipe, tmp_path, capsys):
    """With the data order pinned (`data_seed`), full fine-tuning of the same base makes the seed change nothing:
    the fingerprints are equal, so the command refuses (exit 1) before evaluating or recording a floor."""
    assert cli(noise_argv(recipe, tmp_path, "--set", "data_seed=0")) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the trainers' progress bars: the one error line
    assert (
        err.startswith("astroreason: error: noise: ")
        and "seed-0 and seed-1 have different seeds (0 vs 1) but the same initial weights" in err
    )
    assert not (tmp_path / "project" / NOISE_FILE).exists()
    assert not (tmp_path / "noise" / "seed-0" / "eval").exists()
    assert cli(["audit", str(tmp_path / "noise")]) == 1  # and the audit's seed probe fails them


def test_a_gain_inside_the_measured_floor_is_discarded(tmp_path):
    """The floor the seeds give (std 0.05 of 0.55, 0.60, 0.65) turns a significant +4 points into discard."""
    seeds = [{"seed": s, "accuracy": a, "n": 200} for s, a in ((0, 0.55), (1, 0.60), (2, 0.65))]
    floor = record_floor(tmp_path, "sft-lr", seeds, "sft tiny on test")
    assert floor["noise_floor"] == pytest.approx(0.05)
    record(tmp_path, "a", correct(100))
    small = record(tmp_path, "b", flip(correct(100), 0, 8))  # +4 points, all 8 discordant pairs one way
    assert float(small["p_value"]) < 0.01 and float(small["difference_interval"].split(",")[0]) > 0
    assert small["status"] == "discard" and "within the noise floor" in small["comparison"]
    assert "std of accuracy over seeds 0,1,2 of sft tiny on test (n=200)" in small["comparison"]
    clear = record(tmp_path, "c", flip(correct(100), 0, 16))  # +8 points: above the floor
    assert clear["status"] == "keep" and clear["baseline"] == "row 1 runs/a"


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--seeds", "1"), "--seeds: a spread needs at least two seeds"),
        (("--seeds", "3,3"), "--seeds: need at least two distinct seeds"),
        (("--seeds", "two"), "--seeds: expected a count"),
        (("--set", "seed=4"), "--set seed: the noise command sets seed"),
        (("--set", "max_steps"), "--set: expected KEY=VALUE"),
        (("--set", "estimate_only=true"), "--set estimate_only: use the command's own --estimate-only"),
        (("--set", "learning_rate=-1"), "learning_rate"),
    ],
)
def test_noise_mistakes_are_one_line(recipe, tmp_path, capsys, extra, message):
    status, _, err = run_cli(capsys, *noise_argv(recipe, tmp_path, *extra))
    assert_one_line_error(status, err, message)
    assert not (tmp_path / "noise").exists() and not (tmp_path / "project").exists()

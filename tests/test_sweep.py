"""Sweep files, manifests, the budget gate and the local runner (no SLURM needed).

Every task trains the shared tiny Qwen2.5-VL for a few steps on the shared prepared surrogate and evaluates it on a
handful of test galaxies; the data and model are built once per session (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from holdpoint import wait_for_hold

REPO = Path(__file__).resolve().parents[1]
DROP = object()  # write_sweep(..., key=DROP) leaves the key out


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `astroreason ARGS...` in this process (the real entry point: parsing, exit statuses, messages)."""
    from astroreason.cli import main

    def run(*args: str, cwd: Path) -> Outcome:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return Outcome(code, out.out, out.err)

    return run


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def write_base_config(path: Path, prepared_dir, tiny_model_dir, *, max_steps: int, save_steps: int, **extra) -> Path:
    """The tiny SFT recipe config every sweep task starts from (image arm, 56 px = 4 visual tokens)."""
    path.write_text(
        yaml.safe_dump(
            {
                **extra,
                "model_name_or_path": str(tiny_model_dir),
                "dtype": "float32",
                "data_dir": str(prepared_dir),
                "modality": "image",
                "image_size": 56,
                "use_cpu": True,
                "bf16": False,
                "learning_rate": 1.0e-3,
                "lr_scheduler_type": "constant",
                "per_device_train_batch_size": 2,
                "max_steps": max_steps,
                "max_length": None,
                "logging_steps": 1,
                "save_strategy": "steps",
                "save_steps": save_steps,
                "dataloader_num_workers": 0,
                "report_to": "none",
                "disable_tqdm": True,
            }
        )
    )
    return path


def write_sweep(path: Path, base: Path, **fields) -> Path:
    sweep = {
        "name": path.stem,
        "base_config": str(base),
        "out_dir": str(path.parent / f"{path.stem}-out"),
        "grid": {"learning_rate": [1.0e-3, 1.0e-2]},
        "seeds": 2,
        "array_throttle": 2,
        "evaluation": {"split": "test", "max_samples": 8, "batch_size": 8, "max_new_tokens": 8, "n_boot": 100},
        "resources": {"time": "00:10:00", "cpus_per_task": 1, "signal_lead_s": 60, "max_requeues": 2},
        "budget": {"ledger": str(path.parent / "ledger.jsonl"), "max_dollars": 5.0, "price_gpu_hour": 1.0},
    }
    for key, value in fields.items():
        if value is DROP:
            del sweep[key]
        elif key in ("resources", "evaluation", "budget"):  # sections: change only the keys given
            sweep[key] = {**sweep[key], **value}
        else:
            sweep[key] = value
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.fixture(scope="module")
def base_config(prepared_dir, tiny_model_dir, tmp_path_factory):
    return write_base_config(
        tmp_path_factory.mktemp("base") / "sft_tiny.yaml", prepared_dir, tiny_model_dir, max_steps=4, save_steps=2
    )


def test_plan_writes_manifest_with_distinct_seeds_and_fixed_dirs(cli, base_config, tmp_path):
    sweep = write_sweep(tmp_path / "grid.yaml", base_config)
    first = cli("sweep", "plan", str(sweep), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    manifest = json.loads((tmp_path / "grid-out" / "manifest.json").read_text())
    tasks = manifest["tasks"]
    assert [t["index"] for t in tasks] == [0, 1, 2, 3]
    assert sorted({t["arm"] for t in tasks}) == ["learning_rate=0.001", "learning_rate=0.01"]
    seeds = [t["seed"] for t in tasks]
    assert len(set(seeds)) == 2 and seeds[:2] == seeds[2:]  # two derived seeds, the same in both arms
    assert len({t["dir"] for t in tasks}) == 4
    for t in tasks:
        config = yaml.safe_load(Path(t["config"]).read_text())
        assert config["seed"] == t["seed"] and config["resume"] is True
        assert config["output_dir"] == str(Path(t["dir"]) / "train")
        assert config["learning_rate"] == t["values"]["learning_rate"]
    # Planning again gives the same manifest; a changed grid into the same directory is refused.
    again = cli("sweep", "plan", str(sweep), cwd=tmp_path)
    assert again.returncode == 0 and json.loads((tmp_path / "grid-out" / "manifest.json").read_text())["tasks"] == tasks
    write_sweep(sweep, base_config, grid={"learning_rate": [1.0e-3, 3.0e-3]})
    changed = cli("sweep", "plan", str(sweep), cwd=tmp_path)
    assert changed.returncode == 2 and "different plan" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1 and "Traceback" not in changed.stderr


def test_plan_refuses_duplicate_config_and_seed(cli, base_config, tmp_path):
    # 0.001 and 1e-3 are the same learning rate once parsed: the two arms would be the same experiment.
    sweep = write_sweep(tmp_path / "dup.yaml", base_config, grid={"learning_rate": [0.001, "1e-3"]})
    out = cli("sweep", "plan", str(sweep), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "same config with the same seed" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    # An explicit seed list with a repeat is refused the same way.
    sweep = write_sweep(tmp_path / "dupseed.yaml", base_config, grid={"seed": [7, 7]}, seeds=DROP)
    out = cli("sweep", "plan", str(sweep), cwd=tmp_path)
    assert out.returncode == 2 and "same config with the same seed" in out.stderr


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"grid": {"output_dir": ["a", "b"]}}, "grid.output_dir: set by the sweep"),
        ({"resources": {"time": "ten minutes"}}, "resources.time: not a SLURM time"),
        ({"resources": {"signal_lead_s": 900}}, "resources.signal_lead_s"),
        ({"array_throttle": 0}, "array_throttle: must be an integer >= 1"),
        ({"budget": {"surprise": 1}}, "budget.surprise: unknown key"),
        ({"overrides": {"no_such_setting": 1}}, "unknown key `no_such_setting`"),
    ],
)
def test_bad_sweep_files_are_one_line_exit_2(cli, base_config, tmp_path, fields, message):
    sweep = write_sweep(tmp_path / "bad.yaml", base_config, **fields)
    out = cli("sweep", "plan", str(sweep), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_submit_refused_when_estimate_exceeds_what_remains(cli, base_config, tmp_path):
    # 4 tasks x 10 min x 3 attempts x $1/h = $2 worst case; $0.90 of the $2.50 cap is already spent.
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text(json.dumps({"kind": "charge", "id": "x", "run": "earlier", "time": 0, "dollars": 0.9}) + "\n")
    sweep = write_sweep(tmp_path / "costly.yaml", base_config, budget={"max_dollars": 2.5})
    out = cli("sweep", "submit", str(sweep), cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "may cost up to $2.00" in out.stderr and "only $1.60 remains" in out.stderr
    assert not (tmp_path / "costly-out" / "submissions.jsonl").exists()
    assert ledger.read_text().count("\n") == 1  # nothing charged


def test_the_budget_section_is_the_runs_budget_options(base_config, tmp_path):
    """The sweep's `budget:` holds the same options as every run's (`BudgetArguments`): the device price comes from
    `price_gpu_hour` or the price table's `price_key`, `gpu_hour` is read as its older name, and a GPU task whose
    price nobody gave is refused before anything is planned."""
    from astroreason.errors import CheckFailed, UserError
    from astroreason.options import BudgetArguments
    from astroreason.sweeps.config import load_sweep
    from astroreason.sweeps.spend import task_rate

    prices = tmp_path / "prices.yaml"
    prices.write_text("gpu_hour:\n  cpu: 0.36\n  NVIDIA H200: 3.6\n")
    ledger = str(tmp_path / "ledger.jsonl")

    def load(name, budget, **fields):
        path = write_sweep(tmp_path / f"{name}.yaml", base_config, **fields)
        data = yaml.safe_load(path.read_text())
        data["budget"] = {"ledger": ledger, **budget}
        path.write_text(yaml.safe_dump(data))
        return load_sweep(path)

    assert isinstance(load("given", {"price_gpu_hour": 1.8}).budget, BudgetArguments)
    assert task_rate(load("given", {"price_gpu_hour": 1.8})) == pytest.approx(1.8 / 3600)
    assert task_rate(load("old", {"gpu_hour": 1.8})) == pytest.approx(1.8 / 3600)  # the older spelling
    assert task_rate(load("cpu", {"prices": str(prices)})) == pytest.approx(0.36 / 3600)  # CPU task: the `cpu` entry
    gpu = {"time": "00:10:00", "signal_lead_s": 60, "gpus_per_task": 2}
    h200 = load("h200", {"prices": str(prices), "price_key": "NVIDIA H200"}, resources=gpu)
    assert task_rate(h200) == pytest.approx(2 * 3.6 / 3600)  # two devices per task
    with pytest.raises(UserError, match="price_key: a task with GPUs"):
        load("unpriced", {"prices": str(prices)}, resources=gpu)
    with pytest.raises(CheckFailed, match="has no GPU-hour price"):  # fail closed, as for every run
        load("unknown", {"prices": str(prices), "price_key": "NVIDIA B200"}, resources=gpu)
    with pytest.raises(UserError, match="give one"):
        load("both", {"gpu_hour": 1.0, "price_gpu_hour": 1.0})


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def hold_env(monkeypatch, marker: Path, step: int) -> None:
    """Tasks started from now on hold after saving checkpoint-`step` (tests/holdpoint.py) until `marker` is removed."""
    monkeypatch.setenv("HOLD_MARKER", str(marker))
    monkeypatch.setenv("HOLD_AT_STEP", str(step))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    )


def test_local_runner_resumes_after_interruption(cli, prepared_dir, tiny_model_dir, tmp_path, monkeypatch):
    base = write_base_config(
        tmp_path / "long.yaml",
        prepared_dir,
        tiny_model_dir,
        max_steps=24,
        save_steps=3,
        callbacks=["holdpoint.HoldAtSave"],
    )
    sweep = write_sweep(tmp_path / "local.yaml", base, grid={}, seeds=1)
    marker = tmp_path / "held"
    hold_env(monkeypatch, marker, 3)
    runner = subprocess.Popen(
        [sys.executable, "-m", "astroreason.cli", "sweep", "run", "--local", str(sweep)],
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # The task holds after checkpoint-3 and is signalled there: it cannot have finished, whatever the speed.
        wait_for_hold(marker, runner, 300)
        train_dir = next((tmp_path / "local-out" / "tasks").glob("*/train"))
        runner.send_signal(signal.SIGTERM)
        log = tmp_path / "local-out" / "logs" / "0.log"
        _wait_for(lambda: "SIGTERM received during train" in log.read_text(), 60, "the task to get the signal")
        marker.unlink()
        out, _ = runner.communicate(timeout=120)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 130, out
    task_dir = train_dir.parent
    state = json.loads((task_dir / "state.json").read_text())
    assert state["status"] == "requeued" and state["attempts"] == 1, state
    stopped_at = int(state["history"][0]["checkpoint"].split("-")[1])
    assert stopped_at == 4  # the step after the hold, where training looks at the stop request
    first_elapsed = state["elapsed_s"]

    again = cli("sweep", "run", "--local", str(sweep), cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    state = json.loads((task_dir / "state.json").read_text())
    assert state["status"] == "done" and state["attempts"] == 2
    assert state["history"][1]["resumed_from"] == f"checkpoint-{stopped_at}"
    assert state["elapsed_s"] > first_elapsed  # wall-clock carried over the interruption
    log = (tmp_path / "local-out" / "logs" / "0.log").read_text()
    assert f"Resuming from {task_dir / 'train' / f'checkpoint-{stopped_at}'} (global step {stopped_at})" in log
    second = log.split("Resuming from")[1]
    assert second.count("'loss'") == 24 - stopped_at  # only the remaining steps were trained
    assert (task_dir / "result.json").exists()


def check_charges(ledger: Path, name: str, tasks: list[dict]) -> None:
    """Each task charged the project's one spend ledger (`budget.Ledger`) for its wall-clock at $1/device-hour, and
    the ledger agrees with the dollars in its state file."""
    from astroreason.budget import Ledger

    by_run = Ledger(ledger).by_run()
    assert set(by_run) == {f"sweep:{name}:{t['name']}" for t in tasks}
    for t in tasks:
        charged, state = by_run[f"sweep:{name}:{t['name']}"], json.loads((Path(t["dir"]) / "state.json").read_text())
        assert charged.dollars == pytest.approx(state["dollars"], rel=1e-6) and charged.dollars > 0
        assert charged.dollars == pytest.approx(charged.gpu_seconds / 3600, rel=1e-4)


def check_collect(cli, sweep: Path, cwd: Path, out_dir: Path, experiment: str = "") -> None:
    """`sweep collect` of a finished 2 arms x 2 seeds sweep (learning_rate 1e-3 vs 1e-2, 8 test galaxies): four rows
    in results.tsv (each (arm, seed) once, with its interval and cost), a verified hash chain, nothing added by a
    second collect, and the report: per arm mean and t-interval over seeds, the paired test between the arms.

    Under an `experiment`, the first row is the baseline (`keep`) and every later one is judged against the best
    kept row before it, on the same galaxies."""
    from astroreason.integrity.ledger import LEDGER_FILE, LOG_FILE, verify

    tasks = json.loads((out_dir / "manifest.json").read_text())["tasks"]
    collected = cli("sweep", "collect", str(sweep), cwd=cwd)
    assert collected.returncode == 0, collected.stderr
    assert "4 row(s) added, 0 already there" in collected.stdout
    results = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert len(results) == 4 and {r["n"] for r in results} == {8}
    rows = verify(out_dir)
    assert len(rows) == 4
    keys = set()
    for row in rows:
        task = next(t for t in tasks if f" task {t['name']} " in row["description"])
        result = json.loads((Path(task["dir"]) / "result.json").read_text())
        state = json.loads((Path(task["dir"]) / "state.json").read_text())
        assert f"arm {task['arm']} " in row["description"]
        assert row["seed"] == str(task["seed"]) and row["modality"] == "image"
        assert row["experiment"] == experiment
        if not experiment:
            assert row["status"] == "keep" and not row["baseline"]
        assert row["metric"] == "accuracy" and float(row["value"]) == pytest.approx(result["metrics"]["accuracy"])
        lo, hi = map(float, row["interval"].split(","))
        assert [lo, hi] == pytest.approx(result["metrics"]["interval"]["accuracy"], abs=1e-6)
        assert row["cost"].startswith(f"usd={state['dollars']:.6g},")
        assert row["commit"] == (result["provenance"].get("commit") or "")
        keys.add((task["arm"], row["seed"]))
    assert len(keys) == 4  # four rows: every (arm, seed) once
    for arm in {t["arm"] for t in tasks}:  # within an arm, the two rows have distinct seeds
        assert len({seed for a, seed in keys if a == arm}) == 2
    verified = cli("ledger", "verify", str(out_dir), cwd=cwd)
    assert verified.returncode == 0 and "4 rows, hash chain intact" in verified.stdout
    if experiment:  # judged in the order collected: the first is the baseline, the others against the best so far
        assert rows[0]["status"] == "keep" and not rows[0]["baseline"]
        for i, row in enumerate(rows[1:], start=2):
            kept = [j for j, r in enumerate(rows[: i - 1], start=1) if r["status"] == "keep"]
            assert row["status"] in ("keep", "discard") and row["baseline"].split()[1] == str(kept[-1])
            assert row["difference"] and row["p_value"], row
        assert (out_dir / LOG_FILE).read_text().count(" | keep | ") == sum(r["status"] == "keep" for r in rows)
    else:
        assert (out_dir / LOG_FILE).read_text().count(" | keep | ") == 4

    # Collecting again adds nothing: the ledger is byte for byte the same.
    before = (out_dir / LEDGER_FILE).read_bytes()
    again = cli("sweep", "collect", str(sweep), cwd=cwd)
    assert again.returncode == 0 and "0 row(s) added, 4 already there" in again.stdout
    assert (out_dir / LEDGER_FILE).read_bytes() == before

    # The comparison report: per arm mean and t-interval over seeds, and the paired test between the arms.
    summary = json.loads((out_dir / "report" / "sweep.json").read_text())
    assert sorted(summary["arms"]) == ["learning_rate=0.001", "learning_rate=0.01"]
    for arm, s in summary["arms"].items():
        values = s["accuracy"]["values"]
        assert len(values) == 2 and s["accuracy"]["mean"] == pytest.approx(sum(values) / 2)
        lo, hi = s["accuracy"]["interval"]
        assert lo <= s["accuracy"]["mean"] <= hi
        assert f"{arm}: accuracy mean {s['accuracy']['mean']:.3f} [{lo:.3f}, {hi:.3f}]" in again.stdout
    pair = summary["comparisons"]["learning_rate=0.001 vs learning_rate=0.01"]
    assert pair["pooled"]["n"] == 16 and 0 <= pair["pooled"]["mcnemar_p_value"] <= 1  # 8 galaxies x 2 seeds
    assert len(pair["per_seed"]) == 2
    report = (out_dir / "report" / "sweep.md").read_text()
    assert "| learning_rate=0.001 | 2 |" in report and "| learning_rate=0.01 | 2 |" in report
    assert "learning_rate=0.001 vs learning_rate=0.01" in report and "McNemar p" in again.stdout
    assert (out_dir / "report" / "report.md").exists()


def test_local_sweep_charges_one_ledger_and_collects_four_results_rows(cli, base_config, tmp_path):
    """2 arms x 2 seeds run here; each task charged the project's spend ledger; `collect` adds one results.tsv row
    per task, once, and writes the per-arm and paired comparison report."""
    sweep = write_sweep(tmp_path / "four.yaml", base_config, experiment="lr")
    ran = cli("sweep", "run", "--local", "--jobs", "2", str(sweep), cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    out_dir = tmp_path / "four-out"
    tasks = json.loads((out_dir / "manifest.json").read_text())["tasks"]
    assert all(json.loads((Path(t["dir"]) / "state.json").read_text())["status"] == "done" for t in tasks)
    check_charges(tmp_path / "ledger.jsonl", "four", tasks)
    check_collect(cli, sweep, tmp_path, out_dir, experiment="lr")


@pytest.mark.parametrize(
    "where, key",
    [
        ("base", "max_dollars"),
        ("base", "ledger"),
        ("overrides", "max_dollars"),
        ("grid", "ledger"),
        ("base", "pilot_steps"),
        ("overrides", "estimate_only"),
    ],
)
def test_a_second_training_meter_is_refused(cli, prepared_dir, tiny_model_dir, tmp_path, where, key):
    """Each task's meter charges the sweep's ledger for its whole wall-clock, training included: a recipe
    `max_dollars`/`ledger` (its BudgetCallback) would charge training a second time, and the recipe's own estimate
    (`pilot_steps`, `estimate_only`) would add that callback, so planning refuses them."""
    value = {"max_dollars": 1.0, "pilot_steps": 2, "estimate_only": True}.get(key, str(tmp_path / "other.jsonl"))
    base = write_base_config(tmp_path / "base.yaml", prepared_dir, tiny_model_dir, max_steps=2, save_steps=2)
    fields = {}
    if where == "base":
        base.write_text(yaml.safe_dump({**yaml.safe_load(base.read_text()), key: value}))
    elif where == "overrides":
        fields["overrides"] = {key: value}
    else:
        fields["grid"] = {key: [value]}
    sweep = write_sweep(tmp_path / "metered.yaml", base, **fields)
    out = cli("sweep", "plan", str(sweep), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    named = f"{base}: {key}" if where == "base" else f"{sweep}: {where}.{key}"
    assert len(out.stderr.strip().splitlines()) == 1 and named in out.stderr and "second time" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "metered-out" / "manifest.json").exists()


def test_a_task_config_edited_to_meter_training_is_refused_before_training(cli, base_config, tmp_path, capsys):
    from astroreason.sweeps.task import main as task_main

    sweep = write_sweep(tmp_path / "edited.yaml", base_config, grid={}, seeds=1)
    assert cli("sweep", "plan", str(sweep), cwd=tmp_path).returncode == 0
    task = json.loads((tmp_path / "edited-out" / "manifest.json").read_text())["tasks"][0]
    config = Path(task["config"])
    config.write_text(config.read_text() + "max_dollars: 3.0\n")
    capsys.readouterr()
    assert task_main([str(tmp_path / "edited-out"), "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{config}: max_dollars" in err[0] and "second time" in err[0]
    assert not (Path(task["dir"]) / "train").exists()  # nothing trained
    # The only charges are the task meter's (the seconds the task ran), none from a recipe's training callback.
    runs = {json.loads(line)["run"] for line in (tmp_path / "ledger.jsonl").read_text().splitlines()}
    assert runs == {f"sweep:edited:{task['name']}"}
    assert not (tmp_path / "runs" / "ledger").exists()  # no second ledger either

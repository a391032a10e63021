"""Training charges the project's spend ledger through the real recipe entry point (`python recipes/sft.py`).

At $1 per GPU-second, a cap of a billionth of a dollar bites after the first step on any machine (a step takes more
than a nanosecond), so where the run stops never depends on the machine's speed: it saves a checkpoint and stops
(exit 1, one line), the ledger's charges stay within one step of the cap, `astroreason budget status` reads
them, a run on the spent project refuses to start, and `--resume true` with a raised cap continues from the
checkpoint. A device with no price is refused before anything is loaded.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import cli

ROOT = Path(__file__).resolve().parents[1]
PRICE = "3600"  # dollars per GPU-hour: $1 per second of training
CAP = 1e-9  # crossed by the first step
MAX_STEPS = 200  # far more than the cap allows


def _env() -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }


def recipe(name: str, cwd: Path, *overrides) -> subprocess.CompletedProcess:
    config = ROOT / "recipes" / "configs" / "tiny" / f"{name}_image.yaml"
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / f"{name}.py"),
        "--config",
        str(config),
        "--image_size",
        "56",
        "--max_train_samples",
        "16",
        "--save_steps",
        "1000",
        "--disable_tqdm",
        "true",
        *map(str, overrides),
    ]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


def charges(ledger: Path) -> list[dict]:
    return [r for r in map(json.loads, ledger.read_text().splitlines()) if r["kind"] == "charge"]


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("astroreason: error: ")]


@pytest.mark.parametrize("name", ["sft", "grpo"])
def test_device_without_a_price_is_refused_before_training(name, tmp_path):
    prices = tmp_path / "prices.yaml"
    prices.write_text("gpu_hour:\n  NVIDIA H100 80GB HBM3: 2.5\n")  # no `cpu` entry: this machine has no price
    out = recipe(
        name,
        tmp_path,
        "--output_dir",
        tmp_path / "run",
        "--max_dollars",
        "1",
        "--prices",
        prices,
        "--ledger",
        tmp_path / "spend.jsonl",
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert error_lines(out) == [out.stderr.strip().splitlines()[-1]]
    assert "device 'cpu' has no GPU-hour price" in out.stderr and "--price_gpu_hour" in out.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "spend.jsonl").exists()
    assert not (tmp_path / "runs").exists()  # refused before the tiny defaults were built


def test_cap_stops_training_with_a_checkpoint_and_resume_continues(prepared_dir, tiny_model_dir, tmp_path, capsys):
    ledger, run_dir = tmp_path / "ledger" / "spend.jsonl", tmp_path / "run"
    common = [
        "--model_name_or_path",
        tiny_model_dir,
        "--data_dir",
        prepared_dir,
        "--ledger",
        ledger,
        "--price_gpu_hour",
        PRICE,
    ]

    # 1. The cap bites: a checkpoint at the step it stopped, and a one-line budget error (exit 1).
    first = recipe("sft", tmp_path, *common, "--output_dir", run_dir, "--max_steps", MAX_STEPS, "--max_dollars", CAP)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "Traceback" not in first.stderr and len(error_lines(first)) == 1
    rows = charges(ledger)
    stopped = len(rows)
    assert stopped == 1
    assert [r["step"] for r in rows] == list(range(1, stopped + 1))
    assert {r["run"] for r in rows} == {f"train:{run_dir}"} and all(r["requests"] == 0 for r in rows)
    assert all(r["dollars"] == pytest.approx(r["gpu_seconds"] * float(PRICE) / 3600, abs=1e-5) for r in rows)
    assert f"training stopped at step {stopped} of {MAX_STEPS} with checkpoint-{stopped} saved" in error_lines(first)[0]
    state = json.loads((run_dir / f"checkpoint-{stopped}" / "trainer_state.json").read_text())
    assert state["global_step"] == stopped
    total, one_step = sum(r["dollars"] for r in rows), max(r["dollars"] for r in rows)
    assert CAP - one_step <= total <= CAP + one_step  # overshoot (or undershoot) of at most one step

    # 2. `astroreason budget status` reads the same ledger.
    status, out, _ = cli(capsys, "budget", "status", "--ledger", ledger, "--max-dollars", CAP)
    assert status == 0
    figures = json.loads(out.split("STATUS ", 1)[1])
    assert figures["dollars"] == pytest.approx(total) and figures["remaining_dollars"] == pytest.approx(CAP - total)
    assert figures["gpu_seconds"] == pytest.approx(sum(r["gpu_seconds"] for r in rows), abs=1e-5)

    # 3. Another run of the project, capped at what is already spent, refuses to start: no step, no charge.
    spent = math.floor(total * 1e6) / 1e6  # at or below what is spent
    again = recipe(
        "sft", tmp_path, *common, "--output_dir", tmp_path / "other", "--max_steps", MAX_STEPS, "--max_dollars", spent
    )
    assert again.returncode == 1, again.stderr[-3000:]
    assert len(error_lines(again)) == 1 and "already reached" in error_lines(again)[0]
    assert "training not started" in error_lines(again)[0] and "Traceback" not in again.stderr
    assert not list((tmp_path / "other").glob("checkpoint-*"))
    assert len(charges(ledger)) == stopped

    # 4. A raised cap and --resume true continue from the checkpoint, two more steps, charged to the same run.
    resumed = recipe(
        "sft",
        tmp_path,
        *common,
        "--output_dir",
        run_dir,
        "--max_steps",
        stopped + 2,
        "--max_dollars",
        1e6,
        "--resume",
        "true",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f"Resuming from {run_dir / f'checkpoint-{stopped}'} (global step {stopped})" in log
    assert f"Model saved to {run_dir} after {stopped + 2} steps" in log
    assert log.split("Resuming from")[1].count("'loss'") == 2  # only the remaining steps were trained
    after = charges(ledger)
    assert [r["step"] for r in after[stopped:]] == [stopped + 1, stopped + 2]
    assert {r["run"] for r in after} == {f"train:{run_dir}"}

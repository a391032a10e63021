"""Kill -9 at points chosen by count (after the k-th output record or file: tests/faultpoint.py), then rerun: the rerun
completes, its output is byte-identical to an uninterrupted run's, and what the killed run left is never read as a
finished output."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from evalkit import ScriptedServer, build_codec, ledger_rows, sample_lines
from test_sweep import check_charges, write_base_config, write_sweep

from astroreason.budget import Ledger
from astroreason.cli import main
from astroreason.data.splits import load_manifest
from astroreason.errors import UserError
from astroreason.evaluation.report import load_run
from astroreason.integrity.ledger import LEDGER_FILE, LOG_FILE, verify, write_log
from astroreason.sweeps.task import read_state
from astroreason.tokens import load_codes

ROOT = Path(__file__).resolve().parents[1]
FAULTPOINT = ROOT / "tests" / "faultpoint.py"
BATCH = "datasets.arrow_writer:ArrowWriter.write_table"  # one record batch of a split view written
VIEW = "datasets.arrow_writer:ArrowWriter.finalize"  # one split view's file finished
CODES = "astroreason.tokens.codec:Codec._encode_fitted"  # one batch of codes encoded
ANSWERS = "astroreason.evaluation.harness:append_records"  # one batch of answers saved
ANSWER_FILES = ("predictions.jsonl", "samples.jsonl")
SAVED = "transformers.trainer:Trainer._save_checkpoint"  # one checkpoint saved


def killed(target: str, k: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, str(FAULTPOINT), target, str(k), *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == -signal.SIGKILL, f"not killed at call {k} of {target}: {proc.stderr[-2000:]}"
    return proc


def contents(root: Path) -> dict[str, str]:
    """Every file under `root` by relative path, with its SHA-256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("target,k", [(BATCH, 1), (BATCH, 3), (VIEW, 1), (VIEW, 2)])
def test_data_prepare_killed_then_rerun(surrogate_h5, tmp_path, target, k):
    args = ["data", "prepare", str(surrogate_h5), "--seed", "0", "--out"]
    assert main([*args, str(tmp_path / "whole")]) == 0
    out = tmp_path / "prepared"
    killed(target, k, *args, str(out))
    # The killed run's split views are only in a temporary folder: the output it was writing does not exist.
    assert not out.exists()
    with pytest.raises(UserError, match="no manifest.json"):
        load_manifest(out)
    assert [p.name for p in tmp_path.glob(".prepared.*.tmp")]  # what the killed run left
    assert main([*args, str(out)]) == 0
    assert contents(out) == contents(tmp_path / "whole")
    assert not list(tmp_path.glob(".prepared.*.tmp"))  # removed by the rerun: its writer is gone


@pytest.fixture(scope="module")
def codec(prepared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    shutil.copytree(prepared_dir, root / "trained_on")
    return build_codec(root / "trained_on", root / "codec")


@pytest.mark.parametrize("k", [1, 4])
def test_tokens_encode_killed_then_rerun(prepared_dir, codec, tmp_path, k):
    data = tmp_path / "prepared"
    shutil.copytree(prepared_dir, data, ignore=shutil.ignore_patterns("tokens"))
    args = ["tokens", "encode", "--data", str(data), "--codec", str(codec), "--batch-size", "16"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    killed(CODES, k, *args)
    # No cache is there to be read: a later step is told to encode, never served the codes of the batches done.
    with pytest.raises(UserError, match="no token cache"):
        load_codes(data, codec)
    assert main(args) == 0
    cache = load_codes(data, codec).path
    assert contents(cache) == contents(tmp_path / "whole")
    assert not list(cache.parent.glob(".*.tmp"))  # the killed run's folder, removed by the rerun


@pytest.mark.parametrize("k", [1, 2])
def test_evaluation_killed_then_rerun(prepared_dir, tiny_model_dir, tmp_path, k):
    """Killed after its k-th batch of answers was saved, an evaluation resumes with the rest: the same per-galaxy
    answers, byte for byte, as a run never killed; the killed run's partial answers are never reported as a result."""
    args = ["eval", "--model", str(tiny_model_dir), "--data_dir", str(prepared_dir), "--split", "test"]
    args += ["--max_samples", "12", "--batch_size", "4", "--image_size", "56", "--max_new_tokens", "4"]
    args += ["--n_boot", "50", "--price_gpu_hour", "0", "--ledger", str(tmp_path / "spend.jsonl"), "--output_dir"]
    assert main([*args, str(tmp_path / "whole")]) == 0
    out = tmp_path / "run"
    killed(ANSWERS, k, *args, str(out))
    with pytest.raises(UserError, match="no result.json|not complete"):
        load_run(out)
    assert main([*args, str(out)]) == 0
    whole = contents(tmp_path / "whole")
    assert {name: whole[name] for name in ANSWER_FILES} == {name: contents(out)[name] for name in ANSWER_FILES}


def recipe_config(path: Path, recipe: str, prepared_dir, tiny_model_dir) -> Path:
    """The sweep tests' tiny recipe (image arm, 56 px = 4 visual tokens): 4 steps, a checkpoint every 2."""
    write_base_config(path, prepared_dir, tiny_model_dir, max_steps=4, save_steps=2)
    config = yaml.safe_load(path.read_text()) | {"per_device_train_batch_size": 4, "seed": 0}
    if recipe == "grpo":
        del config["max_length"]  # SFT's; GRPO bounds its completions instead
        config.update(
            num_generations=2, max_completion_length=8, temperature=1.0, beta=0.0, activation_checkpointing=False
        )
    path.write_text(yaml.safe_dump(config))
    return path


def weights(run: Path) -> dict[str, str]:
    from safetensors.numpy import load_file

    return {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in load_file(str(run / "model.safetensors")).items()}


@pytest.mark.parametrize("recipe,k", [("sft", 1), ("grpo", 1), ("sft", 2)])
def test_recipe_killed_after_a_checkpoint_then_resumed(recipe, k, prepared_dir, tiny_model_dir, tmp_path):
    """Killed right after saving checkpoint-2 (or checkpoint-4, the last), a recipe resumed with `--resume true` ends
    at step 4, no step beyond, with the same weights as the same checkpoint resumed by a run that was never killed (a
    copy of it)."""
    config = recipe_config(tmp_path / f"{recipe}.yaml", recipe, prepared_dir, tiny_model_dir)
    script = str(ROOT / "recipes" / f"{recipe}.py")
    out = tmp_path / "run"
    killed(SAVED, k, script, "--config", str(config), "--output_dir", str(out))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{2 * i}" for i in range(1, k + 1)]
    assert not (out / "model.safetensors").exists()  # no final model for a later step to take as the result
    shutil.copytree(out, tmp_path / "copy")
    for run in (out, tmp_path / "copy"):
        resumed = subprocess.run(
            [sys.executable, script, "--config", str(config), "--output_dir", str(run), "--resume", "true"],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"checkpoint-{2 * k} (global step {2 * k})" in resumed.stdout + resumed.stderr
        assert "after 4 steps" in resumed.stdout
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert weights(out) == weights(tmp_path / "copy")


# --- a sweep task -----------------------------------------------------------------------------------------------

STATE = "astroreason.sweeps.task:write_state"  # the task's state file written (the 1st: at the start, before training)


def plan_task(root: Path, base: Path) -> tuple[Path, dict]:
    """A one-task sweep (`task.yaml`, its own spend ledger) of `base`, planned under `root`: its folder and its task."""
    root.mkdir(parents=True)
    sweep = write_sweep(root / "task.yaml", base, grid={}, seeds=1, evaluation={"batch_size": 4})
    assert main(["sweep", "plan", str(sweep)]) == 0
    out = root / "task-out"
    return out, json.loads((out / "manifest.json").read_text())["tasks"][0]


def run_task(out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    ran = subprocess.run(
        [sys.executable, "-m", "astroreason.sweeps.task", str(out), "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]


@pytest.fixture(scope="module")
def sweep_base(prepared_dir, tiny_model_dir, tmp_path_factory):
    """The sweep tests' tiny recipe: 4 steps, a checkpoint every 2."""
    path = tmp_path_factory.mktemp("sweep") / "base.yaml"
    return write_base_config(path, prepared_dir, tiny_model_dir, max_steps=4, save_steps=2)


@pytest.fixture(scope="module")
def whole_task(sweep_base, tmp_path_factory):
    """The task never killed: its folder."""
    out, task = plan_task(tmp_path_factory.mktemp("whole") / "sweep", sweep_base)
    run_task(out)
    return Path(task["dir"])


def check_ledger(ledger: Path, task: dict) -> None:
    """Every row of the spend ledger is whole, and its charges for the task are the dollars in its state file."""
    assert all(json.loads(line) for line in ledger.read_text().splitlines())
    check_charges(ledger, "task", [task])


@pytest.mark.parametrize(
    "target,k",
    [(STATE, 1), (SAVED, 1), (SAVED, 2), (ANSWERS, 1)],
    ids=["state", "checkpoint-2", "checkpoint-4", "answers"],
)
def test_sweep_task_killed_then_rerun(target, k, sweep_base, whole_task, tmp_path):
    """A sweep task killed after writing its state at the start, after checkpoint-2 or checkpoint-4 of 4 steps, or
    after a saved batch of answers: its state file is whole whenever read, it has no result until the rerun, the spend
    ledger's charges for it are the dollars its state names, and the rerun (attempt 2) ends as the task never killed:
    the same weights and answers. After checkpoint-2, also the same weights as a copy of that checkpoint resumed by a
    task never killed; after checkpoint-4, the rerun trains no step more; after answers, it does not train again."""
    out, task = plan_task(tmp_path / "killed", sweep_base)
    task_dir, ledger = Path(task["dir"]), tmp_path / "killed" / "ledger.jsonl"
    train = task_dir / "train"
    killed(target, k, "-m", "astroreason.sweeps.task", str(out), "0")
    state = read_state(task_dir)  # whole: written atomically
    assert (state["status"], state["attempts"], state.get("trained", False)) == ("running", 1, target == ANSWERS)
    assert not (task_dir / "result.json").exists()
    check_ledger(ledger, task)
    saved = [f"checkpoint-{2 * i}" for i in range(1, k + 1)] if target == SAVED else None
    if target == SAVED:
        assert sorted(p.name for p in train.glob("checkpoint-*")) == saved
        assert not (train / "model.safetensors").exists()  # no final model for the evaluation to take
    if (target, k) == (SAVED, 1):
        # The same checkpoint, resumed by a task never killed: a second sweep of the same config.
        copy_out, copy = plan_task(tmp_path / "copy", sweep_base)
        shutil.copytree(train / "checkpoint-2", Path(copy["dir"]) / "train" / "checkpoint-2")
        run_task(copy_out)
    run_task(out)
    state = read_state(task_dir)
    assert (state["status"], state["attempts"], state["trained"]) == ("done", 2, True)
    assert (task_dir / "result.json").exists()
    check_ledger(ledger, task)
    rerun = state["history"][1]
    if target == SAVED:
        assert (rerun["resumed_from"], rerun["step"]) == (saved[-1], 4)
        assert sorted(p.name for p in train.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    elif target == ANSWERS:
        assert "resumed_from" not in rerun  # trained once: the rerun only evaluates the rest
    else:
        assert rerun["resumed_from"] is None  # nothing saved yet: trained from the start
    if (target, k) == (SAVED, 1):
        assert weights(train) == weights(Path(copy["dir"]) / "train")
    assert weights(train) == weights(whole_task / "train")
    # Byte for byte, cache keys included: the last checkpoint's case saves the tokenizer as loaded where the task
    # never killed saved it after padding batches; the keys hash tokenizer.json without that runtime state.
    ours, theirs = (task_dir / "predictions.jsonl").read_bytes(), (whole_task / "predictions.jsonl").read_bytes()
    assert ours == theirs


# --- the spend ledger and the results ledger ----------------------------------------------------------------------

ROW = "astroreason.budget.ledger:Ledger.transaction"  # one locked append (a reservation or a charge) to the ledger
RECORDED = "astroreason.integrity.ledger:write_text_atomic"  # results.tsv, then experiment_log.md, rewritten
N_SERVED = 6


def served_eval_args(url: str, data_dir: Path, out: Path, ledger: Path) -> list[str]:
    """An evaluation of the scripted server over HTTP, one request at a time: a reservation row, then its charge."""
    args = {
        "model": "scripted-vlm",
        "backend": "openai",
        "base_url": url,
        "data_dir": data_dir,
        "split": "test",
        "modality": "image",
        "image_size": 56,
        "output_dir": str(out),
        "max_samples": N_SERVED,
        "max_new_tokens": 16,
        "concurrency": 1,
        "max_retries": 0,
        "request_timeout": 30,
        "n_boot": 50,
        "price_input_per_million": 1.0,
        "price_output_per_million": 2.0,
        "image_tokens_bound": 64,
        "ledger": str(ledger),
        "max_dollars": 1.0,
    }
    return ["eval", *(x for k, v in args.items() for x in (f"--{k}", str(v)))]


@pytest.fixture(scope="module")
def whole_served(prepared_dir, tmp_path_factory):
    """The served evaluation never killed: its folder."""
    root = tmp_path_factory.mktemp("served")
    server = ScriptedServer()
    try:
        assert main(served_eval_args(server.url, prepared_dir, root / "run", root / "spend.jsonl")) == 0
    finally:
        server.stop()
    return root / "run"


@pytest.mark.parametrize("k", [1, 3, 4])
def test_spend_ledger_killed_then_rerun(prepared_dir, whole_served, tmp_path, k):
    """Killed right after the k-th ledger row (1: the first reservation, the request not sent; 3: the second
    reservation; 4: the second charge, its answer lost before it was saved), an evaluation rerun asks only what is
    missing. Every ledger row is whole; each request the server saw is charged once, the one whose answer the kill
    lost included (asked and charged again); a reservation the kill left open stays committed (its request may have
    been billed), never counted as spent; and the answers equal an uninterrupted run's byte for byte."""
    out, ledger = tmp_path / "run", tmp_path / "spend.jsonl"
    server = ScriptedServer()
    try:
        args = served_eval_args(server.url, prepared_dir, out, ledger)
        killed(ROW, k, *args)
        rows = ledger_rows(ledger)  # each line parses whole
        assert [r["kind"] for r in rows] == ["reserve", "charge"] * (k // 2) + ["reserve"] * (k % 2)
        assert server.count == k // 2 and len(sample_lines(out)) == (k - 1) // 2
        with pytest.raises(UserError, match="no result.json|not complete"):
            load_run(out)
        assert main(args) == 0
    finally:
        server.stop()
    distinct = json.loads((out / "result.json").read_text())["n_distinct_inputs"]
    rows = ledger_rows(ledger)
    charges = [r for r in rows if r["kind"] == "charge"]
    assert server.count == len(charges) == sum(r["requests"] for r in charges) == distinct + (k % 2 == 0)
    assert len({r["id"] for r in charges}) == len(charges)  # none charged twice
    totals = Ledger(ledger).totals()
    assert totals.requests == server.count and totals.open_reservations == k % 2
    assert totals.committed_requests == server.count + k % 2
    assert (out / "predictions.jsonl").read_bytes() == (whole_served / "predictions.jsonl").read_bytes()


@pytest.mark.parametrize("k", [1, 2])
def test_results_ledger_killed_then_rerun(prepared_dir, tmp_path, k):
    """Killed after results.tsv (k=1) or also experiment_log.md (k=2) was rewritten for a finished evaluation, before
    its result.json named its row: the ledger verifies, the rerun leaves exactly one row for the run, and the log is
    the one results.tsv generates."""
    out, project = tmp_path / "run", tmp_path / "project"
    server = ScriptedServer()
    try:
        args = served_eval_args(server.url, prepared_dir, out, tmp_path / "spend.jsonl")
        args += ["--results_dir", str(project), "--description", "killed while recording"]
        killed(RECORDED, k, *args)
        assert len(verify(project)) == 1  # the row written whole
        assert "integrity" not in json.loads((out / "result.json").read_text())
        asked = server.count
        assert main(args) == 0
        assert server.count == asked  # every answer from the cache
    finally:
        server.stop()
    (row,) = verify(project)
    assert json.loads((out / "result.json").read_text())["integrity"]["row_sha256"] == row["row_sha256"]
    assert main(["ledger", "verify", str(project)]) == 0
    shutil.copy(project / LEDGER_FILE, tmp_path / LEDGER_FILE)
    write_log(tmp_path)
    assert (tmp_path / LOG_FILE).read_text() == (project / LOG_FILE).read_text()

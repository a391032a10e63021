"""Kill -9 at points chosen by count (after the k-th output record or file: tests/faultpoint.py), then rerun: the rerun
completes, its output is byte-identical to an uninterrupted run's, and what the killed run left is never read as a
finished output."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from evalkit import build_codec
from test_sweep import write_base_config

from astroreason.cli import main
from astroreason.data.splits import load_manifest
from astroreason.errors import UserError
from astroreason.evaluation.report import load_run
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


@pytest.mark.parametrize("recipe", ["sft", "grpo"])
def test_recipe_killed_after_a_checkpoint_then_resumed(recipe, prepared_dir, tiny_model_dir, tmp_path):
    """Killed right after saving checkpoint-2, a recipe resumed with `--resume true` ends at the same step with the
    same weights as the same checkpoint resumed by a run that was never killed (a copy of it)."""
    config = recipe_config(tmp_path / f"{recipe}.yaml", recipe, prepared_dir, tiny_model_dir)
    script = str(ROOT / "recipes" / f"{recipe}.py")
    out = tmp_path / "run"
    killed(SAVED, 1, script, "--config", str(config), "--output_dir", str(out))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
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
        assert "Resuming from" in resumed.stdout + resumed.stderr and "after 4 steps" in resumed.stdout
    assert weights(out) == weights(tmp_path / "copy")

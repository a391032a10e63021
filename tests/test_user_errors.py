"""Typical user mistakes on every command and both recipes: exit status 2, one line `astroreason: error: ...`, no
traceback, and nothing already written touched.

Each case runs in a working directory holding copies of the source HDF5 and the prepared directory, an earlier
run's output, a regular file `afile` where the mistaken paths expect a directory, and a few broken inputs; the whole
tree (and the session's own source and prepared files) is hashed before and after the case and must be the same, byte
for byte, with no file or directory added. The CLI runs in-process (`main([...])`); the recipes as subprocesses
`python recipes/R.py ...`, the way users start them, and each must fail on its arguments before any data or model is
loaded (which is what keeps these fast).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import assert_one_line_error, cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "configs" / "tiny"

# (argv, a text the one error line must contain). Paths are relative to the working directory: `src.h5` and
# `prepared/` are the copies, `old_run/` an earlier output, `afile` a regular file.
CLI_CASES = {
    "no command": ([], "required: COMMAND"),
    "unknown command": (["trian"], "invalid choice: 'trian'"),
    "data: no action": (["data"], "data: the following arguments are required"),
    "data prepare: no --out": (
        ["data", "prepare", "src.h5"],
        "data prepare: the following arguments are required: --out",
    ),
    "data prepare: unknown flag": (
        ["data", "prepare", "src.h5", "--out", "p2", "--bogus"],
        "unrecognized arguments: --bogus",
    ),
    "data prepare: parent is a file": (["data", "prepare", "src.h5", "--out", "afile/p"], "afile is a file"),
    "data prepare: out is a file": (["data", "prepare", "src.h5", "--out", "afile"], "afile"),
    "data prepare: bad fractions over a prepared dir": (
        ["data", "prepare", "src.h5", "--out", "prepared", "--fractions", "1,2"],
        "fractions",
    ),
    "data prepare: negative seed": (["data", "prepare", "src.h5", "--out", "p2", "--seed", "-1"], "--seed"),
    "data synth: parent is a file": (
        ["data", "synth", "--out", "afile/g.h5", "--n", "4", "--size", "16"],
        "afile is a file",
    ),
    "data synth: not an integer": (["data", "synth", "--out", "g.h5", "--n", "abc"], "invalid int value: 'abc'"),
    "data synth: out is a directory": (["data", "synth", "--out", "prepared", "--n", "4", "--size", "16"], "directory"),
    "data inspect: missing file": (["data", "inspect", "missing.h5"], "no such file"),
    "data download: unknown release": (["data", "download", "--release", "dr10"], "invalid choice: 'dr10'"),
    "tokens train: parent is a file": (
        ["tokens", "train", "--data", "prepared", "--out", "afile/codec"],
        "afile is a file",
    ),
    "tokens train: negative lr": (["tokens", "train", "--data", "prepared", "--out", "codec", "--lr", "-1"], "--lr"),
    "tokens train: bad levels": (
        ["tokens", "train", "--data", "prepared", "--out", "codec", "--levels", "a,b"],
        "--levels",
    ),
    "tokens train: missing config": (
        ["tokens", "train", "--data", "prepared", "--out", "codec", "--config", "missing.json"],
        "missing.json",
    ),
    "tokens encode: missing codec": (
        ["tokens", "encode", "--data", "prepared", "--codec", "no-codec"],
        "codec directory not found",
    ),
    "tokens cost: zero galaxies": (["tokens", "cost", "--codec", "no-codec", "--model", "no-model", "--n", "0"], "--n"),
    "model tiny: parent is a file": (["model", "tiny", "--out", "afile/m"], "afile is a file"),
    "model tiny: unknown arch": (["model", "tiny", "--out", "m", "--arch", "llama"], "invalid choice: 'llama'"),
    "model tiny: not empty": (["model", "tiny", "--out", "old_run"], "not empty"),
    "eval: invalid YAML": (["eval", "--config", "bad.yaml"], "not valid YAML"),
    "eval: missing config": (["eval", "--config", "missing.yaml"], "cannot read missing.yaml"),
    "eval: unknown flag": (["eval", "--no_such_flag", "1"], "unknown --no_such_flag"),
    "eval: output_dir parent is a file": (
        ["eval", "--model", "no-model", "--data_dir", "prepared", "--output_dir", "afile/e"],
        "afile is a file",
    ),
    "eval: zero batch": (["eval", "--batch_size", "0"], "batch_size"),
    "eval: negative seed": (["eval", "--seed", "-3"], "seed"),
    "eval: mistyped config value": (["eval", "--config", "eval_typed.yaml"], "max_new_tokens: expected an integer"),
    "report: no results": (["report", "no-run", "--out", "report"], "no result.json"),
    "report: out parent is a file": (["report", "old_run", "--out", "afile/report"], "afile is a file"),
    "report --tex --macros: out parent is a file": (
        ["report", "old_run", "--out", "afile/report", "--tex", "--macros"],
        "afile is a file",
    ),
    "budget status: negative cap": (["budget", "status", "--max-dollars", "-1"], "--max-dollars"),
    "budget status: not a number": (["budget", "status", "--max-dollars", "ten"], "invalid float value: 'ten'"),
    "budget status: not a ledger": (["budget", "status", "--ledger", "afile"], "afile is not a spend ledger"),
    "budget estimate: missing config": (["budget", "estimate", "--config", "missing.yaml"], "cannot read"),
    "audit: missing target": (["audit", "missing"], "no such file"),
    "audit: zero samples": (["audit", "prepared", "--max-samples", "0"], "--max-samples"),
    "audit: zero random-reward steps": (["audit", "prepared", "--random-reward-steps", "0"], "--random-reward-steps"),
    "audit: zero random-reward samples": (
        ["audit", "prepared", "--random-reward-samples", "0"],
        "--random-reward-samples",
    ),
    "gate: missing result": (["gate", "missing.json"], "no result file"),
    "gate: malformed result": (["gate", "bad.json"], "not a valid evaluation result"),
    "gate: ledger parent is a file": (["gate", "bad.json", "--ledger", "afile/ledger"], "afile is a file"),
    "ledger verify: no ledger": (["ledger", "verify", "old_run"], "no results.tsv"),
    "ledger log: not a ledger": (["ledger", "log", "afile"], "no results.tsv"),
    "sweep plan: missing file": (["sweep", "plan", "missing.yaml"], "sweep file not found"),
    "sweep plan: out_dir parent is a file": (["sweep", "plan", "sweep.yaml"], "afile is a file"),
    "sweep run: zero jobs": (["sweep", "run", "--local", "--jobs", "0", "sweep.yaml"], "--jobs"),
    "demo: out is a file": (["demo", "--out", "afile"], "afile is a file"),
    "demo: out parent is a file": (["demo", "--out", "afile/demo", "--quick"], "afile is a file"),
}

# (recipe, arguments after the recipe, the text). `sft_image.yaml` etc. are the shipped tiny configs.
RECIPE_CASES = {
    "invalid YAML": ("sft", ["--config", "bad.yaml"], "not valid YAML"),
    "missing config": ("grpo", ["--config", "missing.yaml"], "cannot read missing.yaml"),
    "unknown flag": ("sft", ["--config", "@sft_image.yaml", "--bogus", "1"], "unknown --bogus"),
    "unknown config key": ("sft", ["--config", "typo.yaml"], "unknown key `lerning_rate`"),
    "mistyped config value": ("sft", ["--config", "mistyped.yaml"], "max_steps: expected an integer"),
    "not an integer": ("sft", ["--config", "@sft_image.yaml", "--max_steps", "abc"], "invalid int value: 'abc'"),
    "bf16 without a GPU": (
        "sft",
        ["--config", "@sft_image.yaml", "--use_cpu", "false", "--bf16", "true"],
        "--bf16 false",
    ),
    "fp16 without a GPU": ("grpo", ["--config", "@grpo_image.yaml", "--fp16", "true"], "--fp16 false"),
    "max_steps -2, no generations": (
        "grpo",
        ["--config", "@grpo_image.yaml", "--max_steps", "-2", "--num_generations", "0"],
        "max_steps",
    ),
    "one generation": ("grpo", ["--config", "@grpo_image.yaml", "--num_generations", "1"], "num_generations"),
    "negative learning rate over a run": (
        "sft",
        ["--config", "@sft_image.yaml", "--output_dir", "old_run", "--learning_rate", "-1"],
        "learning_rate",
    ),
    "zero batch": (
        "grpo",
        ["--config", "@grpo_image.yaml", "--per_device_train_batch_size", "0"],
        "per_device_train_batch_size",
    ),
    "output_dir parent is a file": (
        "sft",
        ["--config", "@sft_lora_image.yaml", "--output_dir", "afile/out"],
        "afile is a file",
    ),
    "LoRA rank 0": ("sft", ["--config", "@sft_lora_image.yaml", "--lora_r", "0"], "lora_r"),
    "LoRA without target modules": (
        "grpo",
        ["--config", "@grpo_image.yaml", "--use_peft", "true"],
        "lora_target_modules",
    ),
    "unknown reward": ("grpo", ["--config", "@grpo_image.yaml", "--reward_funcs", "bogus"], "reward_funcs"),
    "every part frozen": (
        "sft",
        ["--config", "@sft_image.yaml", "--freeze_vision_tower", "true", "--freeze_merger", "true"]
        + ["--freeze_language_model", "true"],
        "freeze_language_model: with freeze_vision_tower and freeze_merger nothing is left to train",
    ),
    "code rows on the image arm": (
        "grpo",
        ["--config", "@grpo_image.yaml", "--freeze_code_rows", "true"],
        "freeze_code_rows: only the tokens arm with rendering special",
    ),
}


def snapshot(*roots: Path) -> dict[str, str]:
    """Every path under `roots` (directories too) and each file's SHA-256."""
    found = {}
    for root in roots:
        for path in sorted([root, *root.rglob("*")]):
            found[str(path)] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def workdir(surrogate_h5, prepared_dir, tmp_path, monkeypatch):
    """A working directory with copies of the data, an earlier output and the broken inputs; cwd during the case."""
    shutil.copy(surrogate_h5, tmp_path / "src.h5")
    shutil.copytree(prepared_dir, tmp_path / "prepared")
    (tmp_path / "old_run" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "old_run" / "checkpoint-2" / "model.safetensors").write_bytes(b"weights of an earlier run")
    (tmp_path / "old_run" / "notes.txt").write_text("mine\n")
    (tmp_path / "afile").write_text("a regular file where a directory is expected\n")
    (tmp_path / "bad.yaml").write_text("learning_rate: [1.0e-3\n")
    (tmp_path / "bad.json").write_text("{not json\n")
    (tmp_path / "eval_typed.yaml").write_text("max_new_tokens: 8.5\n")
    sft = yaml.safe_load((TINY / "sft_image.yaml").read_text())
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({**sft, "lerning_rate": 0.1}))
    (tmp_path / "mistyped.yaml").write_text(yaml.safe_dump({**sft, "max_steps": 2.5}))
    (tmp_path / "sweep.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "mistake",
                "base_config": str(TINY / "sft_image.yaml"),
                "out_dir": "afile/sweep",
                "grid": {"learning_rate": [1.0e-3]},
            }
        )
    )
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path, Path(surrogate_h5), Path(prepared_dir))
    yield tmp_path
    assert snapshot(tmp_path, Path(surrogate_h5), Path(prepared_dir)) == before, "a failed command changed files"


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_mistake_is_one_line_exit_2(case, workdir, capsys):
    argv, needle = CLI_CASES[case]
    status, _, err = cli(capsys, *argv)
    assert not any("Traceback" in line for line in err), err
    assert_one_line_error(status, err, needle)


def recipe_env() -> dict:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        CUDA_VISIBLE_DEVICES="",  # "without a GPU" on any machine
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    return env


@pytest.mark.parametrize("case", list(RECIPE_CASES))
def test_recipe_mistake_is_one_line_exit_2(case, workdir):
    recipe, args, needle = RECIPE_CASES[case]
    args = [str(TINY / a[1:]) if a.startswith("@") else a for a in args]
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / f"{recipe}.py"), *args],
        cwd=workdir,
        env=recipe_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert_one_line_error(result.returncode, result.stderr.strip().splitlines(), needle)
    assert not (workdir / "runs").exists()  # failed before building the tiny defaults, data or model


def test_read_only_directory_is_one_line_exit_2(tmp_path):
    """An output under a directory this user cannot write is refused before any work (run as another user would:
    root's permission override is dropped for the command)."""
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    preexec = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: a read-only directory stays writable")
        preexec = [
            setpriv,
            "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search",
        ]
        probe = subprocess.run([*preexec, "touch", str(read_only / "probe")], capture_output=True)
        if probe.returncode == 0:
            pytest.skip("cannot drop root's file-permission override here")
    result = subprocess.run(
        [*preexec, sys.executable, "-m", "astroreason.cli", "model", "tiny", "--out", str(read_only / "m")],
        capture_output=True,
        text=True,
        timeout=120,
        env=recipe_env(),
    )
    assert_one_line_error(result.returncode, result.stderr.strip().splitlines(), "not writable (permission denied)")
    assert list(read_only.iterdir()) == []

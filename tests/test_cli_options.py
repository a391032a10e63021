"""The command line's options: every one has help text, both spellings (`--max-dollars`, `--max_dollars`) are the
same option everywhere, and the commands that need no model never import torch or transformers (checked in fresh
interpreters through `sys.modules`, not by timing)."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import cli
from test_sweep import write_base_config, write_sweep
from trl import GRPOConfig, ModelConfig, SFTConfig

from astroreason.arguments import ConfigParser, parse_config_args
from astroreason.budget import Budget, Caps, Ledger, Price
from astroreason.cli import build_parser
from astroreason.evaluation.commands import parse_eval_config
from astroreason.evaluation.harness import EvalConfig
from astroreason.integrity.ledger import append_result
from astroreason.training import GalaxyScriptArguments

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers")
HELP_HEAVY = (*HEAVY, "peft", "galsim", "scipy", "datasets", "pyarrow", "matplotlib", "astropy")


def command_parsers(parser, path=()):
    """(command path, parser) of every command and sub-command."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_parsers(sub, (*path, name))


def undocumented(parser) -> list[str]:
    return [
        action.option_strings[0] if action.option_strings else action.dest
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help
    ]


def test_every_command_option_has_help():
    missing = {" ".join(path): names for path, p in command_parsers(build_parser()) if (names := undocumented(p))}
    assert not missing, f"options without help text: {missing}"


@pytest.mark.parametrize(
    "types",
    [(GalaxyScriptArguments, SFTConfig, ModelConfig), (GalaxyScriptArguments, GRPOConfig, ModelConfig), (EvalConfig,)],
    ids=["sft", "grpo", "eval"],
)
def test_every_recipe_and_eval_field_has_help(types):
    """Through the parser the recipes and `astroreason eval` really use, so a field TRL documents counts too."""
    missing = undocumented(ConfigParser(types))
    assert not missing, f"fields without help text: {missing}"


def test_shared_options_are_one_definition():
    """The arm and budget options are the same fields (name, type, default) in training and evaluation."""
    from dataclasses import fields

    from astroreason.arms import ArmSettings
    from astroreason.options import BudgetArguments

    for shared in (ArmSettings, BudgetArguments):
        for f in fields(shared):
            train = GalaxyScriptArguments.__dataclass_fields__[f.name]
            evaluate = EvalConfig.__dataclass_fields__[f.name]
            assert (train.type, train.default) == (evaluate.type, evaluate.default) == (f.type, f.default), f.name
    assert EvalConfig().ledger == "runs/ledger/spend.jsonl"  # evaluation always charges the default ledger
    assert GalaxyScriptArguments().ledger is None  # training charges only when asked


def test_command_options_take_both_spellings(tmp_path, capsys):
    ledger = tmp_path / "spend.jsonl"
    Budget(Ledger(ledger), Price("m", 1e6, 0), Caps(), run="r").charge(None, requests=1, prompt_tokens=2)
    statuses = []
    for flag in ("--max-dollars", "--max_dollars"):
        status, out, _ = cli(capsys, "budget", "status", "--ledger", ledger, flag, "5")
        assert status == 0
        statuses.append(json.loads(out.split("STATUS ", 1)[1]))
    assert statuses[0] == statuses[1] and statuses[0]["remaining_dollars"] == pytest.approx(3.0)
    prog = build_parser()
    one = prog.parse_args(["data", "prepare", "f.h5", "--out", "o", "--include-rows", "rows.npy"])
    other = prog.parse_args(["data", "prepare", "f.h5", "--out", "o", "--include_rows", "rows.npy"])
    assert one.include_rows == other.include_rows == "rows.npy"


def test_recipe_and_eval_options_take_both_spellings(tmp_path):
    dash = parse_eval_config(["--data-dir", "d", "--max-new-tokens", "7", "--output-dir", str(tmp_path / "a")])
    snake = parse_eval_config(["--data_dir", "d", "--max_new_tokens", "7", "--output_dir", str(tmp_path / "a")])
    assert (dash.data_dir, dash.max_new_tokens) == (snake.data_dir, snake.max_new_tokens) == ("d", 7)
    types = (GalaxyScriptArguments, SFTConfig, ModelConfig)
    common = ["--output_dir", str(tmp_path / "run"), "--report_to", "none", "--bf16", "false", "--use_cpu", "true"]
    dash_args, dash_training, _ = parse_config_args(
        types, [*common, "--max-train-samples", "3", "--learning-rate", "0.5"]
    )
    snake_args, snake_training, _ = parse_config_args(
        types, [*common, "--max_train_samples", "3", "--learning_rate", "0.5"]
    )
    assert dash_args.max_train_samples == snake_args.max_train_samples == 3
    assert dash_training.learning_rate == snake_training.learning_rate == 0.5


def heavy_modules_after(argv: list[str], cwd: Path, heavy: tuple[str, ...] = HEAVY) -> tuple[int, list[str]]:
    """Run `astroreason ARGV` in a fresh interpreter; its exit status and which of the `heavy` modules it
    imported."""
    probe = (
        "import sys\nfrom astroreason.cli import main\n"
        "try:\n    status = main(sys.argv[1:])\nexcept SystemExit as done:  # --help\n    status = done.code\n"
        f"print('HEAVY', [m for m in {heavy!r} if m in sys.modules], file=sys.stderr)\nsys.exit(status)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", probe, *map(str, argv)], cwd=cwd, env=env, capture_output=True, text=True
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("HEAVY ")]
    assert lines, done.stderr
    return done.returncode, eval(lines[-1][len("HEAVY ") :])


def test_commands_that_need_no_model_import_no_torch(surrogate_h5, prepared_dir, tiny_model_dir, tmp_path):
    ledger = tmp_path / "spend.jsonl"
    Budget(Ledger(ledger), Price("m", 1e6, 0), Caps(), run="r").charge(None, requests=1, prompt_tokens=2)
    append_result(
        tmp_path / "project",
        {"modality": "image", "seed": 0, "metric": "accuracy", "value": 0.4, "status": "keep", "description": "a row"},
    )
    base = write_base_config(tmp_path / "base.yaml", prepared_dir, tiny_model_dir, max_steps=2, save_steps=2)
    sweep = write_sweep(tmp_path / "grid.yaml", base)
    planned = subprocess.run(
        [sys.executable, "-m", "astroreason.cli", "sweep", "plan", str(sweep)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert planned.returncode == 0, planned.stderr
    commands = {
        "data inspect": ["data", "inspect", surrogate_h5],
        "ledger verify": ["ledger", "verify", tmp_path / "project"],
        "budget status": ["budget", "status", "--ledger", ledger],
        "sweep status": ["sweep", "status", sweep],
    }
    for name, argv in commands.items():
        status, heavy = heavy_modules_after(argv, tmp_path)
        assert status == 0, name
        assert heavy == [], f"`astroreason {name}` imported {heavy}"


@pytest.mark.parametrize(
    "command",
    [
        "",
        "data",
        "data synth",
        "data inspect",
        "tokens",
        "ledger verify",
        "budget status",
        "sweep status",
        "sweep plan",
        "eval",
        "audit",
        "gate",
        "demo",
    ],
)
def test_help_imports_no_torch(command, tmp_path):
    # --help loads nothing heavy (TRL's parser module aside, itself lazy): not the model stack, nor GalSim, scipy or the dataset and plotting libraries
    # (bench/cli_bench.py times it; a data command's help once took a second importing GalSim for one constant).
    status, heavy = heavy_modules_after([*command.split(), "--help"], tmp_path, HELP_HEAVY)
    assert heavy == [], f"`astroreason {command} --help` imported {heavy}"

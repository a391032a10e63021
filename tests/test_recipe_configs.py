"""Every shipped recipe config parses with TRL's own parser (through the recipes' checks, which refuse none), and the vLLM pin sits inside TRL's supported range."""

from __future__ import annotations

import tomllib
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from trl import GRPOConfig, SFTConfig

from astroreason.training import parse_recipe_args

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*/*.yaml"))


def parse(config: Path, *overrides: str):
    trl_config = GRPOConfig if config.name.startswith("grpo") else SFTConfig
    return parse_recipe_args(trl_config, ["--config", str(config), *overrides])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_parses(config):
    # The GPU configs ask for bf16, which TrainingArguments refuses on a CPU-only machine: override just that.
    overrides = ("--bf16", "false", "--use_cpu", "true") if config.parent.name != "tiny" else ()
    script_args, training_args, model_args = parse(config, *overrides)
    assert script_args.modality in ("image", "tokens")
    assert training_args.output_dir.startswith("runs/")
    if config.name.startswith("grpo") and training_args.use_vllm:
        assert training_args.vllm_mode in ("colocate", "server")
        assert 0 < training_args.vllm_gpu_memory_utilization <= 0.9


def test_vllm_extra_inside_trl_range():
    ours = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm"]
    ours = next(Requirement(r) for r in ours if Requirement(r).name == "vllm").specifier
    trls = next(Requirement(r) for r in requires("trl") if r.startswith("vllm")).specifier
    # Every vLLM release ours admits must be one TRL admits: check the edges and the releases in between.
    for version in ["0.21.0", "0.22.0", "0.25.1", "0.31.0", "0.31.1", "0.32.0", "0.33.0"]:
        if version in ours:
            assert version in trls, version


def test_vllm_server_template_matches_trl():
    """The dedicated vLLM node serves with exactly the flags TRL's trainers rely on (weight sync, logprobs)."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    command = build_command(ScriptArguments(model="M"))
    template = (ROOT / "slurm" / "grpo_vllm_server.slurm").read_text()
    imposed = command[command.index("--weight-transfer-config") :]
    for flag, value in zip(imposed[::2], imposed[1::2]):
        assert flag in template, flag
        assert (value if flag != "--weight-transfer-config" else "'" + value + "'") in template, (flag, value)
    assert "VLLM_SERVER_DEV_MODE=1" in template and "--vllm_mode server" in template


def test_vllm_guard_uses_the_pinned_range():
    """The run-time check refuses exactly what the `vllm` extra does not admit."""
    from astroreason.training import VLLM_RANGE

    ours = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm"]
    assert str(Requirement(ours[0]).specifier) == str(Requirement("vllm" + VLLM_RANGE).specifier)

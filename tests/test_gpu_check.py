"""bench/gpu_check.py cannot rot: its dry run (every phase once, tiny model, CPU) reports a number for every phase,
and the hand-written Qwen2.5-VL-3B shape it builds on a GPU is the real model's shape (its parameter count)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"

pytestmark = pytest.mark.slow


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_dry(tmp_path, *extra_path: Path) -> dict:
    """`python bench/gpu_check.py --dry-run --out FILE` in a fresh directory; the JSON it wrote."""
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    paths = [*map(str, extra_path), str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(paths).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_dry_run_reports_every_phase(tmp_path):
    result = run_dry(tmp_path)
    assert all("error" not in part for part in result["setup"].values()), result["setup"]
    phases = result["phases"]
    assert set(phases) == {"model", "grpo", "sft", "eval"}
    for name, phase in phases.items():
        assert "error" not in phase, f"{name}: {phase['error']}"

    bare = phases["model"]
    assert bare["parameters"] == result["setup"]["model"]["parameters"]  # the same shape, built twice
    assert _number(bare["generated_tokens_per_s"]) and _number(bare["train_tokens_per_s"])

    grpo = phases["grpo"]
    for trainer in ("recipe", "bare_trl"):
        assert _number(grpo[trainer]["steps_per_s"]), grpo[trainer]
        assert grpo[trainer]["steps_timed"] >= 1
        # A random model rarely stops early: completions run to max_completion_length, batch_size of them a step.
        settings = result["settings"]
        assert (
            0 < grpo[trainer]["generated_tokens_per_step"] <= settings["batch_size"] * settings["max_completion_length"]
        )
        assert grpo[trainer]["tokens_per_step"] > grpo[trainer]["generated_tokens_per_step"]  # prompts count too
    assert _number(grpo["ratio_recipe_over_bare_step_time"])
    assert _number(grpo["generated_tokens_per_s"])
    assert _number(phases["sft"]["steps_per_s"]) and _number(phases["sft"]["tokens_per_s"])
    evaluation = phases["eval"]
    assert _number(evaluation["harness_samples_per_s"]) and _number(evaluation["ratio_harness_over_bare_time"])
    assert _number(evaluation["samples_per_s"]["bare_generate"])

    # On a CPU there is no peak to divide by: MFU is null and the file says why; versions and gaps are recorded.
    assert (
        grpo["mfu"] is None
        and bare["train_mfu"] is None
        and result["peak_bf16_flops"] is None
        and "cpu" in result["peak_bf16_flops_note"]
    )
    assert result["machine"]["versions"]["torch"] and result["machine"]["versions"]["transformers"]
    assert "vllm_rollouts" in result["not_measured"]
    assert result["reference"]["tokens_per_s_per_gpu"] == 1800 and result["reference"]["mfu"] == 0.081


def test_3b_shape_matches_qwen2_5_vl_3b(tmp_path):
    """Built on the meta device (no memory): Qwen2.5-VL-3B-Instruct has 3,754,622,976 parameters, embeddings tied."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from astroreason.models import build_tiny_model

    gpu_check = _load_script()
    tiny = build_tiny_model(tmp_path / "tiny")
    config = gpu_check.shaped_config(
        tiny, gpu_check.QWEN2_5_VL_3B_TEXT, gpu_check.QWEN2_5_VL_3B_VISION, gpu_check.QWEN2_5_VL_3B_TIED
    )
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    assert sum(p.numel() for p in model.parameters()) == 3_754_622_976
    assert model.lm_head.weight is model.get_input_embeddings().weight
    # The tokenizer's special ids, not the 3B's own: the tiny tokenizer's image token is what the processor writes.
    assert config.image_token_id == json.loads((tiny / "config.json").read_text())["image_token_id"]


def test_peak_flops_by_device_name():
    gpu_check = _load_script()
    assert gpu_check.peak_flops("NVIDIA H200") == gpu_check.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_check.peak_flops("cpu") is None


def test_a_missing_library_loses_only_the_phases_that_need_it(tmp_path):
    """As on a GPU machine without `datasets` (nor TRL, which imports it): the data setup and every phase built on it
    record why they did not run, the model phase (torch and transformers only) still reports, the file is written."""
    missing = tmp_path / "no_datasets"
    (missing / "datasets").mkdir(parents=True)
    (missing / "datasets" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'datasets'\")\n")
    result = run_dry(tmp_path, missing)
    assert "datasets" in result["setup"]["data"]["error"]
    for name in ("grpo", "sft", "eval"):
        assert result["phases"][name]["error"].startswith("not run: setup failed"), result["phases"][name]
        assert "datasets" in result["phases"][name]["error"]
    assert _number(result["phases"]["model"]["generated_tokens_per_s"]), result["phases"]["model"]

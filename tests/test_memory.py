"""The memory plan (`astroreason.training.memory`, docs/gpu.md): its parameter, gradient and optimizer bytes equal
what a real model on the CPU holds after a real AdamW step (full fine-tuning and LoRA); its sharding arithmetic
under ZeRO and FSDP; the strategy read from accelerate's launch; and the recipe's `--estimate_only` MEMORY line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from astroreason.errors import UserError
from astroreason.models import load_model_and_processor
from astroreason.training.memory import (
    GIB,
    ModelShape,
    ParameterCounts,
    RunShape,
    accelerate_config_strategy,
    count_parameters,
    launched_strategy,
    memory_plan,
    model_shape,
)

ROOT = Path(__file__).resolve().parents[1]


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages under `tensors` (a tied or viewed tensor counted once)."""
    seen = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def one_adamw_step(model, processor) -> torch.optim.Optimizer:
    """One real AdamW step of the model's trainable parameters on a language-modelling loss over an image and its
    text, so that every part (vision tower included) takes a gradient."""
    from PIL import Image

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which class?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[Image.new("RGB", (56, 56), "white")], return_tensors="pt")
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    optimizer.step()
    return optimizer


def plan_of(model, strategy="ddp", processes=1) -> dict:
    run = RunShape(batch=1, sequence_tokens=8, logit_tokens=8)
    return memory_plan(count_parameters(model), model_shape(model.config), run, strategy=strategy, processes=processes)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_weight_gradient_and_optimizer_bytes_equal_what_a_real_step_holds(tiny_model_dir, lora):
    torch.manual_seed(0)
    model, processor = load_model_and_processor(tiny_model_dir, dtype=torch.bfloat16)
    if lora:  # as TRL builds it: peft keeps the adapters in float32 over the bf16 base
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    plan = plan_of(model)["parts_bytes"]

    assert plan["weights"] == storage_bytes(model.parameters())
    optimizer = one_adamw_step(model, processor)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert plan["gradients"] == storage_bytes(p.grad for p in trainable)
    assert plan["optimizer"] == storage_bytes(t for state in optimizer.state.values() for t in state.values())
    dtypes = {t.dtype for state in optimizer.state.values() for k, t in state.items() if k != "step"}
    assert dtypes == ({torch.float32} if lora else {torch.bfloat16})  # m and v take the parameter's dtype
    if lora:
        assert 0 < plan["gradients"] < plan["weights"] / 10


def test_sharding_divides_what_each_strategy_shards():
    # 1,000 bf16 parameters in 10 tensors, all trainable; and the same with 900 frozen (LoRA-like, fp32 adapters).
    full = ParameterCounts(params=1000, weight_bytes=2000, trainable=1000, trainable_bytes=2000, trainable_tensors=10)
    lora = ParameterCounts(params=1000, weight_bytes=2200, trainable=100, trainable_bytes=400, trainable_tensors=4)
    shape = ModelShape(layers=1, hidden=4, intermediate=8, vocab=10, kv_heads=1, head_dim=4)
    run = RunShape(batch=1, sequence_tokens=1, logit_tokens=1)

    def parts(counts, strategy, n):
        p = memory_plan(counts, shape, run, strategy=strategy, processes=n)["parts_bytes"]
        return p["weights"], p["gradients"], p["optimizer"]

    assert parts(full, "ddp", 1) == (2000, 2000, 2 * 2000 + 4 * 10)
    assert parts(full, "ddp", 4) == (2000, 2 * 2000, 2 * 2000 + 4 * 10)  # the reducer's buckets: a second copy
    # DeepSpeed bf16: 2-byte weights and gradients, 12 bytes of fp32 master, m and v per trainable parameter.
    assert parts(full, "zero1", 4) == (2000, 2000, 12000 // 4)
    assert parts(full, "zero2", 4) == (2000, 2000 // 4, 12000 // 4)
    assert parts(full, "zero3", 4) == (2000 // 4, 2000 // 4, 12000 // 4)
    assert parts(full, "zero3", 3) == (667, 667, 4000)  # a shard is padded: ceil division
    # FSDP2 with mixed precision: trainable parameters upcast to fp32, frozen ones as loaded; all sharded.
    assert parts(full, "fsdp", 4) == (4000 // 4, 4000 // 4, (8000 + 40) // 4)
    assert parts(lora, "fsdp", 2) == ((1800 + 400) // 2, 400 // 2, (800 + 16) // 2)
    assert parts(lora, "zero2", 2) == (2000, 200 // 2, 1200 // 2)
    assert parts(lora, "ddp", 1) == (2200, 400, 800 + 16)


def test_activation_estimate_follows_its_formula():
    shape = ModelShape(layers=10, hidden=100, intermediate=300, vocab=1000, kv_heads=2, head_dim=50)
    run = RunShape(batch=2, sequence_tokens=50, logit_tokens=5, generation_batch=4)
    plan = memory_plan(ParameterCounts(1, 2, 1, 2, 1), shape, run)["parts_bytes"]
    tokens = 2 * 50
    layer = tokens * (16 * 100 + 8 * 300)
    assert plan["activations"] == 10 * tokens * 100 * 2 + layer + 2 * 5 * 1000 * 10
    assert plan["generation_cache"] == 4 * 50 * 10 * 2 * 2 * 50 * 2
    off = memory_plan(ParameterCounts(1, 2, 1, 2, 1), shape, RunShape(2, 50, 5, checkpointing=False))
    assert off["parts_bytes"]["activations"] == 10 * layer + 2 * 5 * 1000 * 10
    colocated = memory_plan(ParameterCounts(1, 2, 1, 2, 1), shape, RunShape(2, 50, 5, vllm_fraction=0.25))
    assert colocated["parts_bytes"]["vllm"] == 20 * GIB and colocated["gpu_memory_gib"] == 80


def test_strategy_from_the_launch_and_from_accelerate_configs():
    assert launched_strategy({}) == ("ddp", 1)
    assert launched_strategy({"WORLD_SIZE": "8"}) == ("ddp", 8)
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "WORLD_SIZE": "4"}
    assert launched_strategy(env) == ("zero3", 4)
    assert launched_strategy({"ACCELERATE_USE_FSDP": "true", "WORLD_SIZE": "2"}) == ("fsdp", 2)
    shipped = {
        name: accelerate_config_strategy(yaml.safe_load((ROOT / "recipes" / "accelerate" / f"{name}.yaml").read_text()))
        for name in ("ddp", "zero2", "zero3", "fsdp")
    }
    assert shipped == {"ddp": ("ddp", 8), "zero2": ("zero2", 8), "zero3": ("zero3", 8), "fsdp": ("fsdp", 8)}
    for bad in (0, -1, float("nan"), "80"):
        with pytest.raises(UserError, match="gpu_memory_gib"):
            memory_plan(
                ParameterCounts(1, 2, 1, 2, 1), ModelShape(1, 1, 1, 1, 1, 1), RunShape(1, 1, 1), gpu_memory_gib=bad
            )
    with pytest.raises(UserError, match="plan_strategy"):
        memory_plan(ParameterCounts(1, 2, 1, 2, 1), ModelShape(1, 1, 1, 1, 1, 1), RunShape(1, 1, 1), strategy="zero4")


def recipe(tmp_path: Path, *overrides, name="sft", config="sft_image") -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / f"{name}.py"),
        "--config",
        str(ROOT / "recipes" / "configs" / "tiny" / f"{config}.yaml"),
        "--image_size",
        "56",
        "--max_train_samples",
        "8",
        "--max_steps",
        "4",
        "--disable_tqdm",
        "true",
        "--price_gpu_hour",
        "1",
        "--output_dir",
        str(tmp_path / "run"),
        "--ledger",
        str(tmp_path / "spend.jsonl"),
        *map(str, overrides),
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def first_step_tokens(out: str) -> int:
    """The trainer's `num_tokens` at its first logged step (the tokens of that step's batch)."""
    return int(float(re.search(r"'num_tokens': '([\d.e+]+)'", out).group(1)))


def memory_line(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.startswith("MEMORY ")]
    assert len(lines) == 1, out
    return json.loads(lines[0][len("MEMORY ") :])


def test_recipe_estimate_only_prints_whether_the_plan_fits(tiny_model_dir, prepared_dir, tmp_path):
    common = ["--model_name_or_path", tiny_model_dir, "--data_dir", prepared_dir, "--estimate_only", "true"]
    large = recipe(tmp_path, *common, "--gpu_memory_gib", "1000")
    assert large.returncode == 0, large.stderr[-3000:]
    plan = memory_line(large.stdout)
    assert plan["fits"] and plan["gpu_memory_gib"] == 1000 and plan["strategy"] == "ddp" and plan["processes"] == 1
    assert plan["source"] == "launch" and plan["batch"] == 4 and plan["visual_tokens"] == 4  # 56 px: 2x2 tokens
    model, _ = load_model_and_processor(tiny_model_dir, dtype=torch.float32)
    assert plan["parts_bytes"]["weights"] == storage_bytes(model.parameters())  # the config's float32
    assert plan["total_bytes"] == sum(plan["parts_bytes"].values()) and "memory plan per GPU" in large.stdout
    # The longest of the rows bounds what the collator really built (four rows, answers of unequal length).
    assert (
        0.9 * 4 * plan["sequence_tokens"]
        <= first_step_tokens(large.stdout + large.stderr)
        <= 4 * plan["sequence_tokens"]
    )
    assert not (tmp_path / "run").exists()

    tiny = recipe(tmp_path, *common, "--gpu_memory_gib", "0.001", "--plan_strategy", "zero3", "--plan_processes", 4)
    assert tiny.returncode == 0, tiny.stderr[-3000:]  # a plan that does not fit is reported, not refused
    small = memory_line(tiny.stdout)
    assert not small["fits"] and small["source"] == "plan_strategy"
    assert (small["strategy"], small["processes"]) == ("zero3", 4) and "DOES NOT FIT" in tiny.stdout
    assert small["sequence_tokens"] == plan["sequence_tokens"] > plan["visual_tokens"]


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--gpu_memory_gib", "-1", "gpu_memory_gib: expected a positive number of GiB"),
        ("--gpu_memory_gib", "lots", "invalid float value: 'lots'"),
        ("--plan_strategy", "zero4", "plan_strategy: expected one of ddp, zero1, zero2, zero3, fsdp"),
        ("--plan_processes", "0", "plan_processes: expected a positive number"),
    ],
)
def test_bad_plan_options_are_one_line(tmp_path, option, value, message):
    bad = recipe(tmp_path, "--estimate_only", "true", option, value)
    err = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(err) == 1 and err[0].startswith("astroreason: error: ") and message in err[0]
    assert not (tmp_path / "run").exists()


def test_grpo_sequence_is_the_prompt_the_model_reads_plus_the_completion(tiny_model_dir, prepared_dir, tmp_path):
    # The tiny random policy never stops early, so every completion is max_completion_length long and a step's
    # tokens are exactly batch x (prompt + completion): the plan's sequence, image tokens included.
    common = ["--model_name_or_path", tiny_model_dir, "--data_dir", prepared_dir, "--estimate_only", "true"]
    run = recipe(tmp_path, *common, "--max_completion_length", "8", name="grpo", config="grpo_image")
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout + run.stderr
    assert "'completions/clipped_ratio': '1'" in out
    plan = memory_line(run.stdout)
    assert (plan["logit_tokens"], plan["visual_tokens"], plan["parts_bytes"]["vllm"]) == (9, 4, 0)
    assert first_step_tokens(out) == plan["batch"] * plan["sequence_tokens"]
    assert plan["parts_bytes"]["generation_cache"] > 0  # generated with transformers, no vLLM


def test_the_published_shapes_build_the_real_models_on_the_meta_device():
    """The shapes the plan (and bench/real_shapes.py) build models from give the published parameter counts."""
    from astroreason.models.shapes import SHAPES, meta_model

    for name, shape in SHAPES.items():
        counts = count_parameters(meta_model(shape, dtype=torch.bfloat16))
        assert counts.params == shape.parameters and counts.weight_bytes == 2 * shape.parameters, name
    lora = {"r": 64, "lora_alpha": 128, "target_modules": ["q_proj"]}
    counts = count_parameters(meta_model(SHAPES["Qwen/Qwen2.5-VL-3B-Instruct"], dtype=torch.bfloat16, lora=lora))
    # q_proj of 36 decoder layers, 2048 -> 2048: A (64 x 2048) and B (2048 x 64) each, in float32.
    assert counts.trainable == 36 * 2 * 64 * 2048 and counts.trainable_bytes == 4 * counts.trainable

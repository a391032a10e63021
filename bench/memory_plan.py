"""The memory plan of every shipped Qwen config, without weights, downloads or a GPU (docs/gpu.md, "Memory plan").

    python bench/memory_plan.py                       # one 80 GiB GPU, and 8 GPUs under each shipped accelerate config
    python bench/memory_plan.py --gpu-memory-gib 141  # an H200
    python bench/memory_plan.py --out FILE            # default bench/results/memory_plan.json

Each model is built on the meta device from its published shape (`astroreason/models/shapes.py`), with
LoRA applied by peft when the config asks for it, so the parameter counts are the real model's (checked against
the published totals: Qwen2.5-VL-3B 3.75B, 7B 8.29B, Qwen3-VL-4B 4.44B, 8B 8.77B). A sequence's length is counted
with the tiny model's tokenizer of the same family (trained offline on these prompts; Qwen's own tokenizer may
differ by a few tokens) on the recipe's real prompt, its longest answer (SFT) or `max_completion_length` (GRPO),
and the family's visual tokens for `image_size`. The plan is `astroreason.training.memory.memory_plan`: weights,
gradients and optimizer states follow from the counts; activations, vLLM's share and the overhead are estimates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "memory_plan.json"
sys.path.insert(0, str(ROOT))

LAYOUTS = ("ddp", "zero2", "zero3", "fsdp")  # recipes/accelerate/<name>.yaml, each at its num_processes (8)
LARGEST_CODE = 9999  # tokens arm: codes rendered as ints, assumed at most 4 digits (aion-base's codebook not read)


def meta_model(name: str, settings: dict):
    """The Hub model `name` on the meta device in the config's dtype, with the config's LoRA when it asks."""
    import torch

    from astroreason.models.shapes import checkpoint_shape, meta_model

    lora = None
    if settings.get("use_peft"):
        lora = dict(
            r=settings["lora_r"], lora_alpha=settings["lora_alpha"], target_modules=settings["lora_target_modules"]
        )
    return meta_model(checkpoint_shape(name), dtype=getattr(torch, settings.get("dtype") or "float32"), lora=lora)


def tiny_processors(work: Path) -> dict:
    """The tiny model's processor of each family (tokenizer, chat template, the family's image geometry)."""
    from astroreason.models import build_tiny_model, load_model_and_processor

    return {
        arch: load_model_and_processor(build_tiny_model(work / arch, arch=arch, seed=0))[1]
        for arch in ("qwen2_5_vl", "qwen3_vl")
    }


def longest_row_tokens(settings: dict, processor, family) -> tuple[int, int, str]:
    """(tokens, visual tokens, note) of the config's longest training row: its prompt (zoom instruction included),
    for SFT the longest answer, and its images' visual tokens."""
    import numpy as np

    from astroreason.arms import ARMS
    from astroreason.data.galaxy10 import DECALS_CLASSES
    from astroreason.prompts import answer_text, build_prompt, zoom_prompt
    from astroreason.tokens.render import render
    from astroreason.training.memory import row_tokens

    arm, note = ARMS[settings.get("modality", "image")], "prompt counted with the tiny tokenizer"
    if arm.uses_codec:
        grid = np.full((24, 24), LARGEST_CODE)  # aion-base: 24x24 codes a view
        prompt = build_prompt(arm, render(grid, settings.get("rendering", "ints")))
        note += f"; tokens arm: 24x24 codes of {len(str(LARGEST_CODE))} digits assumed"
    else:
        prompt = build_prompt(arm)
    if settings.get("zoom"):
        prompt = zoom_prompt(prompt, arm)
    per_image = family.visual_tokens(processor, settings["image_size"]) if arm.carries_image else 0
    images = int(arm.carries_image)
    rows = [{"prompt": prompt, "image": True if images else None}]
    if "num_generations" not in settings:  # SFT: every answer, the longest kept
        rows = [
            dict(rows[0], completion=[{"role": "assistant", "content": answer_text(label, DECALS_CLASSES)}])
            for label in range(len(DECALS_CLASSES))
        ]
        if settings.get("zoom"):  # a zoom trajectory adds its crop (as large as the view); its call text is left out
            rows = [dict(row, images=[None]) for row in rows]
            note += "; zoom SFT: one crop's visual tokens added, the call and tool turn text left out"
    lengths = [row_tokens(row, processor, per_image) for row in rows]
    tokens, visual = max(t for t, _ in lengths), max(v for _, v in lengths)
    return tokens, visual, note


def config_plans(path: Path, processors: dict, gpu_memory_gib: float, layouts: dict) -> dict:
    """The plans of one shipped config: one GPU (as `python recipes/...` runs it) and each accelerate layout."""
    import yaml

    from astroreason.models import family_for
    from astroreason.models.shapes import checkpoint_shape
    from astroreason.training.memory import RunShape, count_parameters, memory_plan, model_shape

    settings = yaml.safe_load(path.read_text())
    name = settings["model_name_or_path"]
    model = meta_model(name, settings)
    family = family_for(checkpoint_shape(name).arch)
    tokens, visual, note = longest_row_tokens(settings, processors[family.model_type], family)
    batch = settings["per_device_train_batch_size"]
    checkpointing = bool(settings.get("activation_checkpointing") or settings.get("gradient_checkpointing"))
    if "num_generations" in settings:
        completion = settings["max_completion_length"]
        colocated = settings.get("use_vllm") and settings.get("vllm_mode", "server") == "colocate"
        run = RunShape(
            batch,
            tokens + completion,
            completion + 1,
            visual,
            checkpointing,
            generation_batch=0 if settings.get("use_vllm") else batch * settings["gradient_accumulation_steps"],
            vllm_fraction=settings.get("vllm_gpu_memory_utilization", 0.3) if colocated else 0.0,
        )
    else:
        tokens = min(tokens, settings["max_length"]) if settings.get("max_length") else tokens
        run = RunShape(batch, tokens, tokens, visual, checkpointing)
    counts, shape = count_parameters(model), model_shape(model.config)
    mixed = bool(settings.get("bf16") or settings.get("fp16"))

    def plan(strategy, processes):
        return memory_plan(
            counts,
            shape,
            run,
            strategy=strategy,
            processes=processes,
            gpu_memory_gib=gpu_memory_gib,
            mixed_precision=mixed,
        )

    base = counts.params - (counts.trainable if settings.get("use_peft") else 0)
    return {
        "config": str(path.relative_to(ROOT)),
        "model": name,
        "params": counts.params,
        "published_params": checkpoint_shape(name).parameters,
        "params_match_published": base == checkpoint_shape(name).parameters,
        "trainable_params": counts.trainable,
        "note": note,
        "one_gpu": plan("ddp", 1),
        "layouts": {f"recipes/accelerate/{k}.yaml": plan(*v) for k, v in layouts.items()},
    }


def shipped_layouts() -> dict:
    import yaml

    from astroreason.training.memory import accelerate_config_strategy

    return {
        name: accelerate_config_strategy(yaml.safe_load((ROOT / "recipes" / "accelerate" / f"{name}.yaml").read_text()))
        for name in LAYOUTS
    }


def table(results: list[dict], gpu_memory_gib: float) -> str:
    """One line per config on one GPU, and each layout's total (GiB)."""
    parts = ("weights", "gradients", "optimizer", "activations", "vllm", "overhead")
    head = (
        f"| config | {' | '.join(parts)} | total (1 GPU) | fits {gpu_memory_gib:g} GiB | "
        + " | ".join(f"{k} x{results[0]['layouts'][f'recipes/accelerate/{k}.yaml']['processes']}" for k in LAYOUTS)
        + " |"
    )
    lines = [head, "|" + "---|" * (len(parts) + 3 + len(LAYOUTS))]
    for r in results:
        one = r["one_gpu"]
        cells = [f"{one['parts_gib'][p]:.1f}" for p in parts]
        layouts = [
            f"{p['total_gib']:.1f}{'' if p['fits'] else ' (no)'}"
            for p in (r["layouts"][f"recipes/accelerate/{k}.yaml"] for k in LAYOUTS)
        ]
        name = r["config"].removeprefix("recipes/configs/")
        lines.append(
            f"| {name} | {' | '.join(cells)} | {one['total_gib']:.1f} | {'yes' if one['fits'] else 'no'} | "
            + " | ".join(layouts)
            + " |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0, help="one GPU's memory (default 80)")
    parser.add_argument("--out", type=Path, default=RESULT, help=f"the JSON written (default {RESULT})")
    args = parser.parse_args(argv)
    layouts = shipped_layouts()
    with tempfile.TemporaryDirectory() as work:
        processors = tiny_processors(Path(work))
        results = [
            config_plans(path, processors, args.gpu_memory_gib, layouts)
            for path in sorted((ROOT / "recipes" / "configs").glob("qwen*/*.yaml"))
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"gpu_memory_gib": args.gpu_memory_gib, "plans": results}
    args.out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(table(results, args.gpu_memory_gib))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

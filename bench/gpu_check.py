"""One GPU check: a Qwen2.5-VL-3B-shaped model (random weights, bf16) through the project's own paths, one JSON file.

    python bench/gpu_check.py                 # one H100/H200-class GPU, under 8 minutes, no network
    python bench/gpu_check.py --dry-run       # every phase once on a tiny model on the CPU (seconds to a minute)

Phases, each in its own try/except (one failing records its error string and the others still run) and each under a
time budget (training stops at the budget, the evaluation runs fewer repeats):

- grpo: optimizer steps per second of the recipe path (`build_grpo_trainer` + `run_training`, what recipes/grpo.py
  runs) against a bare TRL `GRPOTrainer` on the same model files, data and GRPOConfig (ratio recipe/bare, target
  <= 1.05); generated tokens per second and model FLOPs utilisation during GRPO.
- sft: optimizer steps per second of `build_sft_trainer` + `run_training` (what recipes/sft.py runs), tokens/s, MFU.
- eval: samples per second of the evaluation harness (`evaluate` with a `TransformersBackend`, batch 32) against a
  bare `model.generate` loop over the same prompts and images (ratio of wall times, target <= 1.10).

FLOPs are estimated, not counted: N = all parameters (language model, vision tower, embeddings), T = tokens (prompt +
completion, from the trainer's `num_tokens`). Generation or a forward pass costs 2*N*T, a training step (forward +
backward) 6*N*T; a GRPO step is generation + training, 8*N*T (the old-log-prob pass, when TRL makes one, is left
out). MFU = FLOPs / step time / peak, with the peak dense bf16 FLOPs of the GPU found by `torch.cuda.get_device_name`
(H100 SXM and H200: 989 TFLOPs); on an unknown device MFU is null and says why.

The model is built from the config fields of Qwen2.5-VL-3B-Instruct written out below (no download) with the tiny
model's tokenizer (`build_tiny_model`): the model's vocabulary (151936 rows) is larger than the tokenizer's, which
changes no step's cost. Data is the GalSim surrogate (`synthesize` + `prepare`), so the recipe path is the real one.
What cannot be measured with what is installed (vLLM rollouts without vLLM; a phase whose library is missing) is
recorded as such, with the installed versions. Writes bench/results/gpu_check.json (`--out`), after every phase.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "gpu_check.json"
sys.path.insert(0, str(ROOT))
from astroreason.models.shapes import SHAPES  # noqa: E402  (after the path: the script runs from a checkout)

# Qwen2.5-VL-3B-Instruct's published shape (astroreason/models/shapes.py; token ids come from the tokenizer used).
QWEN2_5_VL_3B = SHAPES["Qwen/Qwen2.5-VL-3B-Instruct"]
QWEN2_5_VL_3B_TEXT, QWEN2_5_VL_3B_VISION = QWEN2_5_VL_3B.text, QWEN2_5_VL_3B.vision
QWEN2_5_VL_3B_TIED = QWEN2_5_VL_3B.tied  # tie_word_embeddings: the 3B shares its embedding with the LM head

# The dry run builds the same way, at a size a CPU steps through in well under a second.
DRY_TEXT = dict(
    QWEN2_5_VL_3B_TEXT,
    vocab_size=2048,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
)
DRY_VISION = dict(QWEN2_5_VL_3B_VISION, depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
DRY_VISION["fullatt_block_indexes"] = [1]

# Dense bf16 peak (no sparsity) by the name torch reports: H100 SXM 989 TFLOPs, H200 the same silicon.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}
REFERENCE = {
    "source": "EasyR1 (published figure), GRPO of Qwen2.5-VL on 8 x H100 with vLLM rollouts",
    "tokens_per_s_per_gpu": 1800,
    "mfu": 0.081,
    "note": "a reference point, not the same setup: EasyR1 generates with vLLM; this check generates with "
    "transformers' generate (vLLM rollouts are not measured here)",
}
PACKAGES = ("torch", "transformers", "trl", "accelerate", "datasets", "peft", "vllm", "flash-attn", "openai")


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def machine() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda": torch.version.cuda,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions(),
    }


def peak_flops(device_name: str) -> float | None:
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in device_name.upper()), None)


def error_string(err: BaseException) -> str:
    """The error and the line of this script it came through: enough to act on from the JSON alone."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == __file__]
    where = f" (gpu_check.py:{frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}{where}"


# --- setup: data and model ------------------------------------------------------------------------------------------


def build_data(work: Path, n: int) -> Path:
    from astroreason.data.splits import prepare
    from astroreason.data.surrogate import synthesize

    source = synthesize(work / "surrogate.h5", n=n, size=64, seed=0, flux=False)
    return prepare(source, work / "prepared", seed=0)


def shaped_config(tokenizer_dir: Path, text: dict, vision: dict, tied: bool):
    """A Qwen2.5-VL config of the given shape whose special token ids are the tokenizer's."""
    from transformers import AutoConfig, Qwen2_5_VLConfig

    tiny = AutoConfig.from_pretrained(tokenizer_dir)
    ids = {k: tiny.text_config.to_dict()[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return Qwen2_5_VLConfig(
        text_config={**text, **ids},
        vision_config=vision,
        image_token_id=tiny.image_token_id,
        video_token_id=tiny.video_token_id,
        vision_start_token_id=tiny.vision_start_token_id,
        vision_end_token_id=tiny.vision_end_token_id,
        tie_word_embeddings=tied,
    )


def build_model(work: Path, *, dry_run: bool, device: str, dtype) -> Path:
    """A model directory: the tiny model's tokenizer, processor and generation config, the shaped model's weights
    (random, built on `device` in `dtype`)."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    from astroreason.models import build_tiny_model

    tiny_dir = build_tiny_model(work / "tiny", arch="qwen2_5_vl", seed=0)
    text, vision = (DRY_TEXT, DRY_VISION) if dry_run else (QWEN2_5_VL_3B_TEXT, QWEN2_5_VL_3B_VISION)
    config = shaped_config(tiny_dir, text, vision, QWEN2_5_VL_3B_TIED)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig.from_pretrained(tiny_dir)
    out = work / "model"
    model.save_pretrained(out)
    for f in tiny_dir.iterdir():  # tokenizer, processor, chat template: everything but the tiny weights and config
        if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json", "generation_config.json"):
            shutil.copy(f, out / f.name)
    return out


# --- the bare model: torch and transformers only ---------------------------------------------------------------------


def phase_model(ctx: dict, budget_s: float) -> dict:
    """The shaped model on its own, text-only random token ids (no data, no TRL): greedy generation tokens/s at the
    GRPO batch, and AdamW training steps (forward + backward + step) tokens/s, each with its MFU. What the GPU gives
    before any library of the project or TRL's is involved; the floor the phases below are judged against."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    s, device, dtype, peak = ctx["settings"], ctx["device"], ctx["dtype"], ctx["peak_flops"]
    deadline = time.monotonic() + budget_s
    text, vision = (DRY_TEXT, DRY_VISION) if s["dry_run"] else (QWEN2_5_VL_3B_TEXT, QWEN2_5_VL_3B_VISION)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=QWEN2_5_VL_3B_TIED)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    n = sum(p.numel() for p in model.parameters())
    batch, prompt, new = s["batch_size"], s["model_prompt_tokens"], s["max_completion_length"]
    # Ordinary text ids, below every special token (Qwen's start at 151643; the dry run's vocabulary is small).
    ids = torch.randint(0, min(text["vocab_size"], 151643), (batch, prompt), device=device)

    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def generate():
        sync()
        start = time.perf_counter()
        with torch.no_grad():  # min_new_tokens: every row generates exactly `new` tokens
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
            )
        sync()
        return time.perf_counter() - start

    model.eval()
    generate()  # warm-up: kernels, allocator
    gen_s = [generate() for _ in range(2 if time.monotonic() < deadline else 1)]
    gen_time = statistics.median(gen_s)
    gen_flops = 2 * n * batch * (prompt + new)

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    sequence = torch.randint(0, min(text["vocab_size"], 151643), (batch, prompt + new), device=device)
    train_s = []
    for step in range(s["warmup_steps"] + 3):
        sync()
        start = time.perf_counter()
        model(input_ids=sequence, labels=sequence).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if step >= s["warmup_steps"]:
            train_s.append(time.perf_counter() - start)
            if time.monotonic() > deadline:
                break
    train_time = statistics.median(train_s)
    train_flops = 6 * n * batch * (prompt + new)
    memory = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {
        "parameters": n,
        "batch": batch,
        "prompt_tokens": prompt,
        "new_tokens": new,
        "generate_seconds": gen_s,
        "generated_tokens_per_s": batch * new / gen_time,
        "generate_mfu": gen_flops / gen_time / peak if peak else None,
        "train_step_seconds": train_s,
        "train_tokens_per_s": batch * (prompt + new) / train_time,
        "train_mfu": train_flops / train_time / peak if peak else None,
        "peak_memory_gib": memory,
        "flops_formula": "generation 2 * N * B * (prompt + new); training step 6 * N * B * (prompt + new)",
    }


# --- training phases ------------------------------------------------------------------------------------------------


def step_clock(deadline: float):
    """A TrainerCallback timing each optimizer step (wall seconds, the GPU synchronised) and stopping training once
    `deadline` (time.monotonic) has passed."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.steps: list[float] = []

        def _sync(self):
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def on_step_begin(self, args, state, control, **kwargs):
            self._sync()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self._sync()
            self.steps.append(time.perf_counter() - self.start)
            if time.monotonic() > deadline:
                control.should_training_stop = True

    return StepClock()


class GenerateClock:
    """Seconds spent inside the model's `generate` (TRL's GRPO rollouts call it on the unwrapped model)."""

    def __init__(self, model):
        self.seconds, self._generate = 0.0, model.generate
        model.generate = self

    def __call__(self, *args, **kwargs):
        import torch

        start = time.perf_counter()
        try:
            return self._generate(*args, **kwargs)
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds += time.perf_counter() - start


def recipe_argv(s: dict, model_dir: Path, data_dir: Path, output_dir: Path, steps: int) -> list[str]:
    """The command line of a recipe run: a fresh output_dir, no checkpoints, a log every step."""
    argv = {
        "model_name_or_path": model_dir,
        "dtype": s["dtype"],
        "data_dir": data_dir,
        "modality": "image",
        "image_size": s["image_size"],
        "output_dir": output_dir,
        "use_cpu": s["use_cpu"],
        "bf16": s["bf16"],
        "learning_rate": 1e-6,
        "lr_scheduler_type": "constant",
        "per_device_train_batch_size": s["batch_size"],
        "gradient_accumulation_steps": 1,
        "max_steps": steps,
        "logging_steps": 1,
        "save_strategy": "no",
        "dataloader_num_workers": 0,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 42,
    }
    return [str(x) for k, v in argv.items() for x in (f"--{k}", v)]


def grpo_argv(s: dict, model_dir, data_dir, output_dir, steps: int) -> list[str]:
    extra = {
        "num_generations": s["num_generations"],
        "max_completion_length": s["max_completion_length"],
        "temperature": 1.0,
        "beta": 0.0,
        "loss_type": "dapo",
        "activation_checkpointing": False,
    }
    argv = recipe_argv(s, model_dir, data_dir, output_dir, steps)
    return argv + [str(x) for k, v in extra.items() for x in (f"--{k}", v)] + ["--reward_funcs", "format", "accuracy"]


def bare_grpo_trainer(script_args, training_args, model_args, dtype):
    """What a user writes with TRL alone: read the prepared split, prompt + image, GRPOTrainer on the same files."""
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModelForImageTextToText
    from trl import GRPOTrainer

    from astroreason.models import load_processor
    from astroreason.prompts import IMAGE_TEMPLATE
    from astroreason.rewards import get_reward_funcs

    size = script_args.image_size

    def to_prompt(example):
        image = example["image"].convert("RGB").resize((size, size), resample=Image.BICUBIC)
        return {"prompt": [{"role": "user", "content": IMAGE_TEMPLATE}], "image": image}

    split = Dataset.from_file(str(Path(script_args.data_dir) / "splits" / f"{script_args.train_split}.arrow"))
    split = split.map(to_prompt, remove_columns=[c for c in split.column_names if c not in ("label", "image")])
    model = AutoModelForImageTextToText.from_pretrained(model_args.model_name_or_path, dtype=dtype)
    return GRPOTrainer(
        model=model,
        reward_funcs=get_reward_funcs(script_args.reward_funcs),
        args=training_args,
        train_dataset=split,
        processing_class=load_processor(model_args.model_name_or_path),
    )


def step_logs(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h and "step" in h]


def train_figures(trainer, clock, warmup: int, n_params: int, flops_per_token: int, peak: float | None) -> dict:
    """Steps/s and tokens from the steps after `warmup` (their wall times, the trainer's per-step logs)."""
    kept = clock.steps[warmup:]
    if not kept:
        raise RuntimeError(f"no step after the {warmup} warm-up step(s) fit in the phase budget")
    logs = step_logs(trainer)
    tokens = [b["num_tokens"] - a["num_tokens"] for a, b in zip(logs, logs[1:])]
    tokens = tokens[warmup - 1 :] if warmup else [logs[0]["num_tokens"], *tokens]
    step_s = statistics.median(kept)
    tokens_per_step = statistics.median(tokens) if tokens else None
    flops = flops_per_token * n_params * tokens_per_step if tokens_per_step else None
    return {
        "steps_timed": len(kept),
        "warmup_steps_dropped": warmup,
        "step_seconds": kept,
        "median_step_s": step_s,
        "steps_per_s": 1 / step_s,
        "tokens_per_step": tokens_per_step,
        "tokens_per_s": tokens_per_step / step_s if tokens_per_step else None,
        "flops_per_step": flops,
        "mfu": flops / step_s / peak if flops and peak else None,
    }


def n_params(model_dir: Path) -> int:
    import torch
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


def phase_grpo(ctx: dict, budget_s: float) -> dict:
    from trl import GRPOConfig

    from astroreason.training import build_grpo_trainer, parse_recipe_args, run_training

    s, warmup = ctx["settings"], ctx["settings"]["warmup_steps"]
    steps = s["grpo_steps"]
    out = {}
    start = time.monotonic()
    for i, name in enumerate(("recipe", "bare_trl")):
        deadline = start + budget_s * (i + 1) / 2  # half the budget each
        argv = grpo_argv(s, ctx["model_dir"], ctx["data_dir"], ctx["work"] / f"grpo_{name}", steps)
        script_args, training_args, model_args = parse_recipe_args(GRPOConfig, argv)
        if name == "recipe":
            trainer = build_grpo_trainer(script_args, training_args, model_args)
        else:
            trainer = bare_grpo_trainer(script_args, training_args, model_args, ctx["dtype"])
        clock, generate = step_clock(deadline), GenerateClock(trainer.accelerator.unwrap_model(trainer.model))
        trainer.add_callback(clock)
        run_training(trainer, script_args) if name == "recipe" else trainer.train()
        figures = train_figures(trainer, clock, warmup, ctx["n_params"], 8, ctx["peak_flops"])
        logs = step_logs(trainer)[warmup:]
        lengths = [h["completions/mean_length"] for h in logs if "completions/mean_length" in h]
        completions = s["batch_size"] * trainer.accelerator.num_processes
        generated = statistics.median(lengths) * completions if lengths else None
        figures.update(
            generated_tokens_per_step=generated,
            generated_tokens_per_s=generated / figures["median_step_s"] if generated else None,
            generate_seconds_total=generate.seconds,
            generate_share_of_step_time=generate.seconds / sum(clock.steps) if clock.steps else None,
        )
        out[name] = figures
        del trainer
        release_memory()
        shutil.rmtree(training_args.output_dir, ignore_errors=True)  # a saved 3B model is 7.5 GB of disk
    ratio = out["recipe"]["median_step_s"] / out["bare_trl"]["median_step_s"]
    return {
        **out,
        "ratio_recipe_over_bare_step_time": ratio,
        "target_ratio_max": 1.05,
        "meets_target": ratio <= 1.05,
        "generated_tokens_per_s": out["recipe"]["generated_tokens_per_s"],
        "mfu": out["recipe"]["mfu"],
        "flops_formula": "8 * N * T per step (generation 2*N*T + training 6*N*T), T = prompt + completion tokens",
    }


def phase_sft(ctx: dict, budget_s: float) -> dict:
    from trl import SFTConfig

    from astroreason.training import build_sft_trainer, parse_recipe_args, run_training

    s = ctx["settings"]
    argv = recipe_argv(s, ctx["model_dir"], ctx["data_dir"], ctx["work"] / "sft", s["sft_steps"])
    script_args, training_args, model_args = parse_recipe_args(SFTConfig, argv)
    trainer = build_sft_trainer(script_args, training_args, model_args)
    clock = step_clock(time.monotonic() + budget_s)
    trainer.add_callback(clock)
    run_training(trainer, script_args)
    figures = train_figures(trainer, clock, s["warmup_steps"], ctx["n_params"], 6, ctx["peak_flops"])
    del trainer
    release_memory()
    shutil.rmtree(training_args.output_dir, ignore_errors=True)
    return {**figures, "flops_formula": "6 * N * T per step, T = prompt + completion tokens"}


# --- evaluation phase -----------------------------------------------------------------------------------------------


def bare_rows(config) -> list[dict]:
    """What a bare script reads before it can generate: the split's Arrow file, each image resized, the prompt."""
    from datasets import Dataset
    from PIL import Image

    from astroreason.arms import ImageArm
    from astroreason.data.splits import split_path
    from astroreason.prompts import build_prompt

    split = Dataset.from_file(str(split_path(config.data_dir, config.split)))
    size = (config.image_size, config.image_size)
    return [
        {"prompt": build_prompt(ImageArm), "image": split[i]["image"].convert("RGB").resize(size, Image.BICUBIC)}
        for i in range(min(config.max_samples, len(split)))
    ]


def bare_generate_loop(model, processor, config) -> None:
    """The reference: read the split, then chat template + processor + greedy generate + decode, nothing else."""
    import torch

    from astroreason.evaluation.backends import chat_messages

    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    rows = bare_rows(config)
    for i in range(0, len(rows), config.batch_size):
        batch = rows[i : i + config.batch_size]
        texts = [
            processor.apply_chat_template(
                chat_messages(r["prompt"], r["image"]), tokenize=False, add_generation_prompt=True
            )
            for r in batch
        ]
        inputs = processor(text=texts, images=[r["image"] for r in batch], padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(
                **inputs.to(model.device),
                max_new_tokens=config.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def phase_eval(ctx: dict, budget_s: float) -> dict:
    import torch

    from astroreason.evaluation.backends import TransformersBackend
    from astroreason.evaluation.harness import EvalConfig, evaluate
    from astroreason.models import load_model_and_processor

    s, work = ctx["settings"], ctx["work"]
    deadline = time.monotonic() + budget_s
    config = EvalConfig(
        model=str(ctx["model_dir"]),
        data_dir=str(ctx["data_dir"]),
        split="train",
        modality="image",
        image_size=s["image_size"],
        max_samples=s["eval_samples"],
        batch_size=s["eval_batch_size"],
        max_new_tokens=s["eval_max_new_tokens"],
        n_boot=200,
        ledger=str(work / "eval_ledger" / "spend.jsonl"),
        price_gpu_hour=0.0,  # a bench spends nothing real: no lookup of this GPU's name in the price table
    )
    model, processor = load_model_and_processor(ctx["model_dir"], dtype=s["dtype"], device_map=ctx["device"])
    backend = TransformersBackend(model, processor, config.sampling(), batch_size=config.batch_size)

    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    runs = {
        "bare_generate": lambda r: bare_generate_loop(model, processor, config),
        "harness": lambda r: evaluate(replace(config, output_dir=str(work / f"eval-{r}")), backend, progress=False),
    }
    times = {name: [] for name in runs}
    for r in range(-1, s["eval_repeats"]):  # r = -1: warm-up of each, left out
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for name in order:
            sync()
            start = time.perf_counter()
            runs[name](r)
            sync()
            if r >= 0:
                times[name].append(time.perf_counter() - start)
        if time.monotonic() > deadline and r >= 0:
            break
    if not times["harness"]:
        raise RuntimeError("no timed repeat fit in the phase budget")
    median = {name: statistics.median(v) for name, v in times.items()}
    ratio = median["harness"] / median["bare_generate"]
    return {
        "samples": s["eval_samples"],
        "batch_size": config.batch_size,
        "max_new_tokens": config.max_new_tokens,
        "repeats_timed": len(times["harness"]),
        "repeat_seconds": times,
        "median_seconds": median,
        "samples_per_s": {name: s["eval_samples"] / t for name, t in median.items()},
        "harness_samples_per_s": s["eval_samples"] / median["harness"],
        "ratio_harness_over_bare_time": ratio,
        "target_ratio_max": 1.10,
        "meets_target": ratio <= 1.10,
        "note": "the harness also hashes the checkpoint's weights once per process (cached after the warm-up run)",
    }


def release_memory():
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


PHASES = {"model": phase_model, "grpo": phase_grpo, "sft": phase_sft, "eval": phase_eval}
NEEDS = {"model": (), "grpo": ("data", "model"), "sft": ("data", "model"), "eval": ("data", "model")}
# Share of the time left for each phase (grpo runs two trainers); the last phase gets all that is left.
BUDGET_SHARE = {"model": 0.15, "grpo": 0.5, "sft": 0.5, "eval": 1.0}


def settings(dry_run: bool, cuda: bool) -> dict:
    if dry_run:
        return dict(
            dry_run=True,
            model_prompt_tokens=16,
            dtype="float32",
            bf16=False,
            use_cpu=True,
            image_size=56,
            batch_size=4,
            num_generations=4,
            max_completion_length=8,
            grpo_steps=3,
            sft_steps=3,
            warmup_steps=1,
            eval_samples=8,
            eval_batch_size=4,
            eval_max_new_tokens=8,
            eval_repeats=1,
            surrogate_rows=120,
        )
    return dict(
        dry_run=False,
        model_prompt_tokens=128,  # about a GRPO prompt: template, 16 visual tokens
        dtype="bfloat16",
        bf16=cuda,
        use_cpu=not cuda,
        image_size=112,  # 16 visual tokens per galaxy, as in the tiny configs
        batch_size=16,  # 16 completions per step: 2 prompts x 8 generations
        num_generations=8,
        max_completion_length=128,
        grpo_steps=8,
        sft_steps=12,
        warmup_steps=2,
        eval_samples=128,
        eval_batch_size=32,
        eval_max_new_tokens=32,
        eval_repeats=3,
        surrogate_rows=400,
    )


def not_measured(found: dict) -> dict:
    missing = {}
    if found["vllm"] is None:
        missing["vllm_rollouts"] = "vLLM is not installed: GRPO generation is measured on transformers' generate only"
    else:
        missing["vllm_rollouts"] = f"vLLM {found['vllm']} is installed but this check runs transformers' generate only"
    missing["multi_gpu"] = "one GPU only: no data-parallel or ZeRO figures"
    return missing


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every phase once on a tiny model on the CPU")
    parser.add_argument(
        "--out",
        help="the JSON file (default bench/results/gpu_check.json; with --dry-run, gpu_check_dry_run.json in the "
        "system's temporary directory, so a dry run never overwrites a GPU record)",
    )
    parser.add_argument("--budget-s", type=float, default=420.0, help="seconds for the whole check (default 420)")
    parser.add_argument("--phases", nargs="+", choices=list(PHASES), default=list(PHASES))
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "gpu_check_dry_run.json" if args.dry_run else RESULT

    import torch

    from astroreason.io import write_json_atomic

    begin = time.monotonic()
    cuda = torch.cuda.is_available() and not args.dry_run
    if args.dry_run:
        torch.set_num_threads(1)
    s = settings(args.dry_run, cuda)
    info = machine()
    peak = peak_flops(info["device"]) if cuda else None
    result = {
        "benchmark": "GPU check: GRPO and SFT recipe throughput, evaluation harness throughput",
        "dry_run": args.dry_run,
        "model": "tiny Qwen2.5-VL shape (dry run)" if args.dry_run else "Qwen2.5-VL-3B-Instruct shape, random weights",
        "machine": info,
        "peak_bf16_flops": peak,
        "peak_bf16_flops_note": None
        if peak
        else f"peak FLOPs unknown for {info['device']!r}: MFU not computed (known: {', '.join(PEAK_BF16_FLOPS)})",
        "flops_estimate": "N = all parameters; forward/generation 2*N*T, training 6*N*T; MFU = FLOPs/step/s/peak",
        "reference": REFERENCE,
        "settings": s,
        "not_measured": not_measured(info["versions"]),
        "phases": {},
    }
    print(
        f"gpu_check: {info['device']}, torch {info['versions']['torch']}, transformers "
        f"{info['versions']['transformers']}, trl {info['versions']['trl']}",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="gpu_check."))
    ctx = {"work": work, "settings": s, "device": "cuda" if cuda else "cpu", "peak_flops": peak}
    try:
        ctx["dtype"] = getattr(torch, s["dtype"])
        # The model phase needs torch and transformers only; the others the prepared data and the model directory.
        result["setup"] = {}
        for part, build in (
            ("data", lambda: build_data(work, s["surrogate_rows"])),
            ("model", lambda: build_model(work, dry_run=args.dry_run, device=ctx["device"], dtype=ctx["dtype"])),
        ):
            start = time.monotonic()
            try:
                ctx[f"{part}_dir"] = build()
                result["setup"][part] = {"seconds": time.monotonic() - start}
            except Exception as err:  # noqa: BLE001  recorded: the phases that need it then say so
                result["setup"][part] = {"error": error_string(err)}
            print(f"setup {part}: {result['setup'][part]}", flush=True)
        if "model_dir" in ctx:
            ctx["n_params"] = result["setup"]["model"]["parameters"] = n_params(ctx["model_dir"])
        write_json_atomic(args.out, result)
        for i, name in enumerate(args.phases):
            failed = [part for part in NEEDS[name] if "error" in result["setup"][part]]
            if failed:
                result["phases"][name] = {
                    "error": "not run: setup failed: "
                    + "; ".join(f"{p}: {result['setup'][p]['error']}" for p in failed)
                }
                print(f"{name}: {summary(name, result['phases'][name])}", flush=True)
                continue
            left = args.budget_s - (time.monotonic() - begin)
            budget = max(5.0, left * BUDGET_SHARE[name] if i < len(args.phases) - 1 else left)
            start = time.monotonic()
            try:
                result["phases"][name] = PHASES[name](ctx, budget)
            except Exception as err:  # noqa: BLE001  one phase failing must not lose the others
                result["phases"][name] = {"error": error_string(err)}
            release_memory()  # the phase's models are gone with its frame: free their GPU memory for the next
            result["phases"][name]["seconds"] = time.monotonic() - start
            result["phases"][name]["budget_s"] = budget
            write_json_atomic(args.out, result)
            print(f"{name}: {summary(name, result['phases'][name])}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["total_seconds"] = time.monotonic() - begin
    write_json_atomic(args.out, result)
    print(f"total {result['total_seconds']:.0f} s; wrote {args.out}")
    return 0


def summary(name: str, phase: dict) -> str:
    if "error" in phase:
        return f"FAILED {phase['error']}"

    def pct(x):
        return f"{100 * x:.1f} %" if x is not None else "n/a"

    if name == "model":
        return (
            f"generate {phase['generated_tokens_per_s']:.0f} tokens/s (MFU {pct(phase['generate_mfu'])}), train "
            f"{phase['train_tokens_per_s']:.0f} tokens/s (MFU {pct(phase['train_mfu'])})"
        )
    if name == "grpo":
        return (
            f"recipe {phase['recipe']['steps_per_s']:.3f} steps/s, bare TRL {phase['bare_trl']['steps_per_s']:.3f} "
            f"steps/s, ratio {phase['ratio_recipe_over_bare_step_time']:.3f} (target <= 1.05); generated "
            f"{phase['generated_tokens_per_s'] or 0:.0f} tokens/s, MFU {pct(phase['mfu'])}"
        )
    if name == "sft":
        return f"{phase['steps_per_s']:.3f} steps/s, {phase['tokens_per_s'] or 0:.0f} tokens/s, MFU {pct(phase['mfu'])}"
    return (
        f"harness {phase['harness_samples_per_s']:.2f} samples/s, ratio harness/bare "
        f"{phase['ratio_harness_over_bare_time']:.3f} (target <= 1.10)"
    )


if __name__ == "__main__":
    sys.exit(main())

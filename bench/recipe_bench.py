"""GRPO step time of our recipe (`build_grpo_trainer`) against a bare TRL GRPOTrainer script, side by side.

Same tiny model, same prepared data, same GRPOConfig (parsed from one tiny config), same rewards; the two are
trained alternately in one process (recipe, bare, recipe, bare, ...), each round a fresh trainer from the files on
disk. A step's time is the wall time between the Trainer's `on_step_begin` and `on_step_end` (generation, rewards,
loss, backward, optimizer), as CPU time of this process and as wall time; the first steps of each round are warm-up
and dropped. Prints the medians and the ratios (target <= 1.05, judged on CPU time: on a shared machine the wall
time of a step swings by +-30 % with other people's jobs) and writes bench/results/recipe_bench.json.

    python bench/recipe_bench.py                      # tiny image config, 6 rounds x 16 steps
    python bench/recipe_bench.py --config recipes/configs/tiny/grpo_tokens.yaml --rounds 5

CPU only here: the GPU part (a Qwen2.5-VL-3B-shaped model in bf16: step time, tokens/s, peak memory, MFU) needs a
GPU and is not measured by this script.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse(config: str, output_dir: str, steps: int):
    from trl import GRPOConfig, ModelConfig, TrlParser

    from astroreason.training import GalaxyScriptArguments

    parser = TrlParser((GalaxyScriptArguments, GRPOConfig, ModelConfig))
    return parser.parse_args_and_config(
        args=[
            "--config",
            config,
            "--output_dir",
            output_dir,
            "--max_steps",
            str(steps),
            "--save_strategy",
            "no",
            "--logging_steps",
            str(steps),
            "--disable_tqdm",
            "true",
        ]
    )


def recipe_trainer(script_args, training_args, model_args):
    """What `recipes/grpo.py` builds."""
    from astroreason.training import build_grpo_trainer

    return build_grpo_trainer(script_args, training_args, model_args)


def bare_trainer(script_args, training_args, model_args):
    """What a user would write with TRL alone: load, map the split to prompt + image, GRPOTrainer."""
    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModelForImageTextToText
    from trl import GRPOTrainer

    from astroreason.models import load_processor  # AutoProcessor needs torchvision for Qwen's video half
    from astroreason.prompts import IMAGE_TEMPLATE
    from astroreason.rewards import get_reward_funcs

    size = script_args.image_size

    def to_prompt(example):
        image = example["image"].convert("RGB").resize((size, size), resample=Image.BICUBIC)
        return {"prompt": [{"role": "user", "content": IMAGE_TEMPLATE}], "image": image}

    # The prepared split is one Arrow file (astroreason.data.splits.split_path): read it with datasets directly.
    split = Dataset.from_file(str(Path(script_args.data_dir) / "splits" / f"{script_args.train_split}.arrow"))
    split = split.map(to_prompt, remove_columns=[c for c in split.column_names if c not in ("label", "image")])
    model = AutoModelForImageTextToText.from_pretrained(model_args.model_name_or_path, dtype=torch.float32)
    return GRPOTrainer(
        model=model,
        reward_funcs=get_reward_funcs(script_args.reward_funcs),
        args=training_args,
        train_dataset=split,
        processing_class=load_processor(model_args.model_name_or_path),
    )


def step_times(trainer) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds of this process) of every optimizer step."""
    from transformers import TrainerCallback

    wall: list[float] = []
    cpu: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            wall.append(time.perf_counter() - self.start[0])
            cpu.append(time.process_time() - self.start[1])

    trainer.add_callback(Clock())
    trainer.train()
    return wall, cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "recipes/configs/tiny/grpo_image.yaml"))
    parser.add_argument("--rounds", type=int, default=6, help="rounds per trainer, alternating (default 6)")
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per round (default 16)")
    parser.add_argument("--warmup", type=int, default=4, help="first steps of each round left out (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadiest on a shared CPU)")
    parser.add_argument("--out", default=str(ROOT / "bench/results/recipe_bench.json"))
    args = parser.parse_args(argv)

    import torch
    import transformers
    import trl

    from astroreason.defaults import ensure_tiny_defaults
    from astroreason.io import write_json_atomic

    torch.set_num_threads(args.threads)
    os.chdir(ROOT)  # the tiny configs name runs/tiny/* relative to the repository
    with tempfile.TemporaryDirectory() as tmp:
        script_args, _, model_args = parse(args.config, tmp, args.steps)
        if script_args.modality != "image":
            raise SystemExit("recipe_bench: the bare TRL script mirrors the image arm; give an image config")
        ensure_tiny_defaults(script_args.data_dir, model_args.model_name_or_path)
        builders = {"recipe": recipe_trainer, "bare_trl": bare_trainer}
        clocks = ("cpu", "wall")
        steps = {clock: {name: [] for name in builders} for clock in clocks}
        per_round = {clock: {name: [] for name in builders} for clock in clocks}
        for r in range(args.rounds):
            for name, build in builders.items():
                script_args, training_args, model_args = parse(args.config, f"{tmp}/{name}{r}", args.steps)
                measured = dict(zip(("wall", "cpu"), step_times(build(script_args, training_args, model_args))))
                for clock in clocks:
                    kept = measured[clock][args.warmup :]
                    steps[clock][name] += kept
                    per_round[clock][name].append(statistics.median(kept))
                print(
                    f"round {r + 1}/{args.rounds}  {name:8s}  median step: CPU {per_round['cpu'][name][-1] * 1000:7.1f} ms"
                    f"  wall {per_round['wall'][name][-1] * 1000:7.1f} ms  ({args.steps - args.warmup} steps)",
                    flush=True,
                )

    median = {clock: {name: statistics.median(v) for name, v in steps[clock].items()} for clock in clocks}
    ratio = {clock: median[clock]["recipe"] / median[clock]["bare_trl"] for clock in clocks}
    round_ratios = {
        clock: [a / b for a, b in zip(per_round[clock]["recipe"], per_round[clock]["bare_trl"])] for clock in clocks
    }
    result = {
        "benchmark": "GRPO step time, astroreason recipe vs bare TRL GRPOTrainer",
        "config": os.path.relpath(args.config, ROOT),
        "model": model_args.model_name_or_path,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "warmup_steps_dropped": args.warmup,
        # CPU seconds of this process per step: the work done, steady on a shared machine; wall seconds: what a user
        # waits, which other processes on the machine inflate at random.
        "median_step_s": median,
        "per_round_median_step_s": per_round,
        "ratio_recipe_over_bare": ratio,
        "per_round_ratio": round_ratios,
        "target_ratio_max": 1.05,
        "target_judged_on": "cpu",
        "meets_target": ratio["cpu"] <= 1.05,
        "machine": {
            "device": "cpu",
            "torch_threads": args.threads,
            "cpu_count": os.cpu_count(),
            "load_average_1m_at_end": os.getloadavg()[0],
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        "gpu_part": "not measured: needs a GPU (this benchmark ran on CPU)",
    }
    write_json_atomic(args.out, result)
    for clock in clocks:
        print(
            f"{clock:4s} median step: recipe {median[clock]['recipe'] * 1000:.1f} ms, bare TRL "
            f"{median[clock]['bare_trl'] * 1000:.1f} ms; ratio {ratio[clock]:.3f}; per round "
            + ", ".join(f"{x:.3f}" for x in round_ratios[clock])
        )
    print(f"ratio (CPU time per step) {ratio['cpu']:.3f}: target <= 1.05 {'met' if ratio['cpu'] <= 1.05 else 'MISSED'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

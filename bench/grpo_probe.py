"""GRPO's dynamics from a start model: TRL's logged metrics and the greedy held-out accuracy every N steps.

The measurement behind docs/recipes.md ("Why GRPO did not raise held-out accuracy"): it trains the recipe's GRPO
(`build_grpo_trainer`; format + accuracy rewards unless `--rewards` says otherwise; the vision tower frozen unless
`--vision_lr` is given) from `--start` on a demo's prepared data, prints one `LOG` line per logging step (reward mean
and spread per reward, `frac_reward_zero_std`, entropy, clip ratios) and one `EVAL` line every `--every` steps: the
greedy accuracy on the first `--n_eval` galaxies of `--split` (the validation split by default: settings are chosen
there), the share of parsed answers and the three classes answered most often. Nothing is saved.

    astroreason demo --out runs/demo                        # the start models and the prepared data
    python bench/grpo_probe.py --start runs/demo/image/sft --demo runs/demo --lr 3e-4 --galaxies 8 --generations 8
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--start", required=True, help="the model GRPO starts from (e.g. a demo's image/sft)")
    p.add_argument("--demo", default="runs/demo", help="the demo directory whose prepared data and codec are used")
    p.add_argument("--arm", default="image", choices=["image", "tokens"])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=3e-4, help="learning rate of the language model and the merger")
    p.add_argument(
        "--vision_lr", type=float, default=None, help="train the vision tower at this rate (default: frozen)"
    )
    p.add_argument("--galaxies", type=int, default=4, help="galaxies (prompts) per step")
    p.add_argument("--generations", type=int, default=8, help="completions per galaxy")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--scale_rewards", default="group", choices=["group", "batch", "none"])
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument(
        "--top_entropy_quantile",
        type=float,
        default=1.0,
        help="TRL's: the policy gradient only on this top fraction of completion tokens by entropy",
    )
    p.add_argument(
        "--entropy_coef", type=float, default=0.0, help="TRL's: a bonus of this times the mean per-token entropy"
    )
    p.add_argument("--rewards", nargs="+", default=["format", "accuracy"], help="reward functions, by name")
    p.add_argument("--every", type=int, default=25, help="evaluate every N steps")
    p.add_argument("--split", default="val")
    p.add_argument("--n_eval", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/grpo_probe", help="scratch output directory (nothing is saved there)")
    a = p.parse_args()

    import torch
    from transformers import TrainerCallback
    from trl import GRPOConfig, ModelConfig

    from astroreason.arms import build_arm
    from astroreason.evaluation.backends import SamplingSettings, TransformersBackend
    from astroreason.models import load_model_and_processor
    from astroreason.rewards import parse_answer
    from astroreason.training import GalaxyScriptArguments, build_grpo_trainer

    torch.set_num_threads(1)
    tokens = a.arm == "tokens"
    script = GalaxyScriptArguments(
        data_dir=f"{a.demo}/prepared",
        modality=a.arm,
        codec=f"{a.demo}/codec" if tokens else None,
        rendering="special",
        freeze_vision_tower=a.vision_lr is None,
        vision_lr=a.vision_lr,
        freeze_code_rows=tokens,
        reward_funcs=a.rewards,
    )
    args = GRPOConfig(
        output_dir=a.out,
        max_steps=a.steps,
        per_device_train_batch_size=a.galaxies * a.generations,
        num_generations=a.generations,
        max_completion_length=24,
        temperature=a.temperature,
        beta=a.beta,
        scale_rewards=a.scale_rewards,
        learning_rate=a.lr,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=a.warmup,
        top_entropy_quantile=a.top_entropy_quantile,
        entropy_coef=a.entropy_coef,
        optim="adamw_torch",
        activation_checkpointing=False,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=5,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=a.seed,
    )
    trainer = build_grpo_trainer(script, args, ModelConfig(a.start, dtype="float32"))
    arm = build_arm(script, a.split, max_samples=a.n_eval)
    rows = arm.rows()
    _, processor = load_model_and_processor(a.start)  # its own: the backend sets left padding on its tokenizer

    def evaluate(model, step: int) -> None:
        was_training = model.training
        backend = TransformersBackend(model, processor, SamplingSettings(max_new_tokens=24), batch_size=50)
        texts = [g.text for g in backend.generate([r["prompt"] for r in rows], [r.get("image") for r in rows])]
        model.train(was_training)
        answers = [parse_answer(t, arm.task.classes) for t in texts]
        accuracy = sum(p == r["label"] for p, r in zip(answers, rows)) / len(rows)
        parsed = sum(p is not None for p in answers) / len(rows)
        print(f"EVAL step {step} accuracy {accuracy:.3f} parsed {parsed:.2f} top {Counter(answers).most_common(3)}")

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % a.every == 0:
                evaluate(model, state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            keys = ("reward", "zero_std", "entropy", "clip", "mean_length")
            kept = {k: round(v, 3) for k, v in logs.items() if isinstance(v, float) and any(s in k for s in keys)}
            if kept:
                print(f"LOG step {state.global_step} {json.dumps(kept)}", flush=True)

    evaluate(trainer.model, 0)
    trainer.add_callback(Probe())
    started = time.monotonic()
    trainer.train()
    print(f"TRAIN seconds {time.monotonic() - started:.0f}")


if __name__ == "__main__":
    main()

"""What longer zoom GRPO learns about when to zoom: from a zoom demo's warm starts, on its validation split.

    astroreason demo --zoom --out runs/demo_zoom
    python bench/zoom_grpo_steps.py --demo runs/demo_zoom            # steps 8 and 80, zoom_cost 0.02 and 0

For each zoom arm of the demo (`image_zoom`, `tokens_zoom`), each `zoom_cost` and each number of steps, GRPO runs
from the arm's warm start (its SFT model) with the demo's own recipe (`configs/<arm>_grpo.yaml`, through the
recipe's parser and builder, `--max_steps`, `--zoom_cost` and `--output_dir` overridden), then the model is evaluated
as zoom episodes on the validation split (greedy), as is the warm start itself (0 steps). Per run it records the
validation accuracy, zoom rate, homogenisation (the share of galaxies given the majority zoom decision) and zoom rate
per true class, and from the training log the sampled zoom rate (temperature 1), overall and per true class, and the
refused-call share over the first and the last quarter of its steps. The test split is left alone: this is where the demo's step count is chosen.
Writes bench/results/zoom_grpo_steps.json (`--out`) after every run; runs already in `--work` are reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from trl import GRPOConfig

from astroreason.evaluation.episodes import ZOOM_TURN_TOKENS
from astroreason.evaluation.harness import EvalConfig, evaluate
from astroreason.io import write_json_atomic
from astroreason.training import build_grpo_trainer, parse_recipe_args, run_training

ARMS = ("image_zoom", "tokens_zoom")
CLASS_RATE = "zoom/rate_class_"  # the training log's per-class zoom rate (`rewards.zoom_cost_reward`)


def grpo(config: Path, out: Path, steps: int, cost: float) -> None:
    """The demo's GRPO recipe for `steps` steps at `cost` per call, into `out` (skipped when it is there)."""
    if (out / "config.json").exists():
        return
    argv = ["--config", str(config), "--max_steps", str(steps), "--zoom_cost", str(cost), "--output_dir", str(out)]
    script, args, model = parse_recipe_args(GRPOConfig, argv)
    run_training(build_grpo_trainer(script, args, model), script)


def evaluate_on_val(recipe: dict, model: Path, out: Path, ledger: Path) -> dict:
    """The model's zoom episodes on the validation split, with the recipe's arm (resumes from its cache)."""
    config = EvalConfig(
        model=str(model),
        data_dir=recipe["data_dir"],
        split="val",
        modality=recipe["modality"],
        codec=recipe.get("codec"),
        rendering=recipe["rendering"],
        image_size=recipe["image_size"],
        output_dir=str(out),
        batch_size=32,
        max_new_tokens=ZOOM_TURN_TOKENS,
        seed=recipe["seed"],
        zoom=True,
        zoom_max_turns=recipe["zoom_max_turns"],
        price_gpu_hour=0.0,
        ledger=str(ledger),
    )
    return evaluate(config, progress=False)


def log_quarters(log: list[dict], key: str) -> tuple[float | None, float | None]:
    """The mean of a logged value over the first and the last quarter of a run's steps."""
    values = [float(x[key]) for x in log if key in x]
    if not values:
        return None, None
    quarter = max(1, len(values) // 4)
    return round(statistics.mean(values[:quarter]), 4), round(statistics.mean(values[-quarter:]), 4)


def row(arm: str, steps: int, cost: float | None, result: dict, model: Path) -> dict:
    zoom, metrics = result["zoom"], result["metrics"]
    out = {
        "arm": arm,
        "steps": steps,
        "zoom_cost": cost,
        "model": str(model),
        "n": metrics["n"],
        "accuracy": metrics["accuracy"],
        "accuracy_interval": metrics["interval"]["accuracy"],
        "zoom_rate": zoom["zoom_rate"],
        "homogenisation": zoom.get("homogenisation"),
        "zoom_rate_per_class": zoom.get("zoom_rate_per_class"),
    }
    log_file = model / "training_log.json"
    if steps and log_file.is_file():
        log = json.loads(log_file.read_text())["log_history"]
        for key, name in (("zoom/rate", "sampled_zoom_rate"), ("zoom/invalid_share", "refused_share")):
            out[f"{name}_first_quarter"], out[f"{name}_last_quarter"] = log_quarters(log, key)
        # zoom_cost's per-class rate, logged for the classes a step drew: each over its own logged steps
        classes = sorted(
            {k for x in log for k in x if k.startswith(CLASS_RATE)}, key=lambda k: int(k[len(CLASS_RATE) :])
        )
        for when, index in (("first", 0), ("last", 1)):
            out[f"sampled_zoom_rate_per_class_{when}_quarter"] = {
                k[len(CLASS_RATE) :]: log_quarters(log, k)[index] for k in classes
            }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demo", required=True, help="a finished `astroreason demo --zoom` output directory")
    p.add_argument("--steps", type=int, nargs="+", default=[8, 80], help="GRPO steps of each run")
    p.add_argument("--costs", type=float, nargs="+", default=[0.02, 0.0], help="zoom_cost of each run")
    p.add_argument("--work", default=None, help="where the GRPO runs and evaluations go (default DEMO/zoom_steps)")
    p.add_argument("--out", default="bench/results/zoom_grpo_steps.json")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the demo's default)")
    args = p.parse_args(argv)
    demo = Path(args.demo)
    work = Path(args.work) if args.work else demo / "zoom_steps"
    torch.set_num_threads(args.threads)
    rows, started = [], time.monotonic()
    for arm in ARMS:
        config = demo / "configs" / f"{arm}_grpo.yaml"
        if not config.is_file():
            print(f"{config}: not found; run `astroreason demo --zoom --out {demo}` first", file=sys.stderr)
            return 2
        recipe = yaml.safe_load(config.read_text())
        warm = Path(recipe["model_name_or_path"])
        result = evaluate_on_val(recipe, warm, work / "eval" / f"{arm}_warm_start", work / "spend.jsonl")
        rows.append(row(arm, 0, None, result, warm))
        for cost in args.costs:
            for steps in args.steps:
                model = work / f"{arm}_cost{cost:g}_steps{steps}"
                grpo(config, model, steps, cost)
                result = evaluate_on_val(recipe, model, work / "eval" / model.name, work / "spend.jsonl")
                rows.append(row(arm, steps, cost, result, model))
                print(json.dumps(rows[-1]), flush=True)
                write_json_atomic(Path(args.out), {"demo": str(demo), "split": "val", "runs": rows})
    write_json_atomic(
        Path(args.out),
        {"demo": str(demo), "split": "val", "wall_seconds": round(time.monotonic() - started, 1), "runs": rows},
    )
    print(
        f"\n{'arm':<12} {'steps':>5} {'cost':>5} {'acc':>6} {'zoom':>6} {'homog':>6}  sampled zoom, first -> last quarter"
    )
    for r in rows:
        cost = "-" if r["zoom_cost"] is None else f"{r['zoom_cost']:g}"
        sampled = (
            f"{r['sampled_zoom_rate_first_quarter']:.2f} -> {r['sampled_zoom_rate_last_quarter']:.2f}"
            if r.get("sampled_zoom_rate_first_quarter") is not None
            else ""
        )
        print(
            f"{r['arm']:<12} {r['steps']:>5} {cost:>5} {r['accuracy']:>6.3f} {r['zoom_rate']:>6.3f} "
            f"{r['homogenisation'] if r['homogenisation'] is not None else float('nan'):>6.3f}  {sampled}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

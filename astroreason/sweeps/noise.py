"""The noise floor, measured: one recipe trained under N seeds on the same data, each evaluated on the same galaxies;
the seed-to-seed spread of the accuracy is recorded as the experiment's noise floor (`integrity.ledger`), so a
later gain no larger than it is `discard` however small its p.

`astroreason noise RECIPE.yaml --experiment NAME --seeds N` writes `OUT/seed-S/` (the trained model and its
`fingerprint.json`) and `OUT/seed-S/eval/` (its evaluation) per seed, and `OUT/noise.json` (every seed's result and
the spread). Seeds that differ only in name (the same initial weights, first batch and first forward passes: the
seed fingerprints of `integrity.fingerprint`) are refused before any floor is recorded: their spread is not noise.
A rerun into the same `OUT` reuses the models already trained and the answers already paid for.
"""

from __future__ import annotations

import json
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..budget import DEFAULT_LEDGER
from ..errors import CheckFailed, UserError
from ..integrity.fingerprint import compare_fingerprints, read_fingerprint
from ..integrity.ledger import NOISE_FILE, set_noise_floor
from ..io import write_json_atomic
from .plan import trainer_classes

NOISE_RECORD = "noise.json"
# The command sets these per seed; a recipe override of them would make the seeds not what they say.
RESERVED = ("seed", "output_dir", "resume")


@dataclass
class NoiseConfig:
    """One noise-floor measurement.

    Args:
        config: The recipe config (YAML), as `recipes/sft.py --config` takes it.
        experiment: The experiment whose noise floor this is (its evaluations use the same `--experiment`).
        seeds: The seeds to train under (at least two distinct).
        trainer: `sft` or `grpo`: the recipe the config is for.
        out: Directory of the runs (`seed-S/` each) and `noise.json`.
        overrides: Recipe settings on top of the config, `key=value` each (not seed, output_dir or resume).
        split: The split each run is evaluated on (use the experiment's).
        max_samples: Evaluate the first N galaxies of the split (use the experiment's).
        batch_size: Prompts per generate call of the evaluation.
        max_new_tokens: Completion budget per galaxy in the evaluation.
        ledger: The project's spend ledger: training and evaluation charge it, and the floor is recorded beside it.
        results_dir: Where the floor is recorded (`noise_floors.json` beside `results.tsv`); default: the spend
            ledger's directory, as `astroreason eval` records its results.
        max_dollars: Cap on the project's total spend (training and evaluation).
        prices: Price table.
        price_gpu_hour: Set the device price yourself (dollars per GPU-hour).
        estimate_only: Print the training estimate of all the seeds (the recipe's own pilot, once: its steps are
            neither charged nor saved, times the number of seeds) and stop; refused (exit 1) when it does not fit
            what the dollar cap has left. The evaluations are not in it: their models do not exist yet.
    """

    config: str
    experiment: str
    seeds: list[int]
    trainer: str = "sft"
    out: str = "runs/noise"
    overrides: list[str] = field(default_factory=list)
    split: str = "test"
    max_samples: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 32
    ledger: str | None = None
    results_dir: str | None = None
    max_dollars: float | None = None
    prices: str | None = None
    price_gpu_hour: float | None = None
    estimate_only: bool = False

    def __post_init__(self):
        if not self.experiment:
            raise UserError("noise: give the experiment's name (--experiment NAME)")
        if self.trainer not in ("sft", "grpo"):
            raise UserError(f"--trainer: expected sft or grpo, got {self.trainer!r}")
        if len(set(self.seeds)) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"--seeds: need at least two distinct seeds, got {self.seeds}")
        if any(s < 0 for s in self.seeds):
            raise UserError(f"--seeds: seeds are non-negative integers, got {self.seeds}")
        if not Path(self.config).is_file():
            raise UserError(f"{self.config}: no such recipe config")
        for item in self.overrides:
            key = item.partition("=")[0]
            if "=" not in item or not key:
                raise UserError(f"--set: expected KEY=VALUE, got {item!r}")
            if key in RESERVED:
                raise UserError(f"--set {key}: the noise command sets {', '.join(RESERVED)} itself, per seed")
            if key == "estimate_only":
                raise UserError("--set estimate_only: use the command's own --estimate-only (all the seeds' cost)")
        for name in ("max_samples", "batch_size", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')}: must be at least 1, got {value}")

    def project_dir(self) -> Path:
        """Where the floor is recorded: `results_dir`, else beside the spend ledger (as `astroreason eval`)."""
        return Path(self.results_dir) if self.results_dir else Path(self.ledger or DEFAULT_LEDGER).parent

    def budget_argv(self) -> list[str]:
        """The budget settings, as recipe overrides: the training runs charge the same ledger at the same price."""
        argv = []
        for name in ("ledger", "max_dollars", "prices", "price_gpu_hour"):
            if getattr(self, name) is not None:
                argv += [f"--{name}", str(getattr(self, name))]
        return argv

    def recipe_argv(self, seed: int) -> list[str]:
        argv = ["--config", self.config]
        for item in self.overrides:
            key, _, value = item.partition("=")
            argv += [f"--{key}", value]
        return argv + self.budget_argv() + ["--seed", str(seed), "--output_dir", str(self.seed_dir(seed))]

    def seed_dir(self, seed: int) -> Path:
        return Path(self.out) / f"seed-{seed}"


def parse_seeds(text: str, base_seed: int = 0) -> list[int]:
    """`--seeds 3` is seeds base..base+2; `--seeds 0,7,11` names them."""
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        count = int(text)
    except ValueError:
        raise UserError(f"--seeds: expected a count (3) or a list (0,7,11), got {text!r}") from None
    if count < 2:
        raise UserError(f"--seeds: a spread needs at least two seeds, got {count}")
    return list(range(base_seed, base_seed + count))


def parse_recipe(config: NoiseConfig, seed: int) -> tuple:
    """(script_args, training_args, model_args) of one seed's run; every mistake is one line before anything runs."""
    # lazy: `astroreason --help` loads the command module; training pulls torch, transformers and trl
    from ..training import parse_recipe_args

    with warnings.catch_warnings():  # TrainingArguments' deprecation notes, once per seed, are noise here
        warnings.simplefilter("ignore", FutureWarning)
        return parse_recipe_args(trainer_classes(config.trainer)[1], config.recipe_argv(seed))


def train_seed(config: NoiseConfig, seed: int) -> Path:
    """Train the recipe under `seed` into `seed-S/` (kept when a rerun finds its final model there)."""
    # lazy: training pulls torch, transformers and trl
    from ..training import build_grpo_trainer, build_sft_trainer, run_training

    script_args, training_args, model_args = parse_recipe(config, seed)
    out = Path(training_args.output_dir)
    if (out / "config.json").is_file() or (out / "adapter_config.json").is_file():
        print(f"noise: seed {seed}: trained model in {out}, reused", flush=True)
        return out
    build = build_grpo_trainer if config.trainer == "grpo" else build_sft_trainer
    run_training(build(script_args, training_args, model_args), script_args)
    return out


def evaluate_seed(config: NoiseConfig, seed: int) -> dict:
    """Evaluate seed S's model on the experiment's galaxies, into `seed-S/eval/` (its own results ledger there:
    the project's ledger records the floor, not the seeds as results)."""
    # lazy: evaluation pulls torch and transformers
    from ..evaluation.harness import EvalConfig, evaluate, print_result_line

    script_args, _, _ = parse_recipe(config, seed)
    out = config.seed_dir(seed)
    budget = {
        k: getattr(config, k) for k in ("ledger", "max_dollars", "price_gpu_hour") if getattr(config, k) is not None
    }
    if config.prices is not None:
        budget["prices"] = config.prices
    eval_config = EvalConfig(
        model=str(out),
        data_dir=script_args.data_dir,
        split=config.split,
        modality=script_args.modality,
        codec=script_args.codec,
        rendering=script_args.rendering,
        image_size=script_args.image_size,
        prompt_template=script_args.prompt_template,
        allow_prompt_fields=script_args.allow_prompt_fields,
        override_reason=script_args.override_reason,
        output_dir=str(out / "eval"),
        max_samples=config.max_samples,
        batch_size=config.batch_size,
        max_new_tokens=config.max_new_tokens,
        seed=seed,
        results_dir=str(out / "eval"),
        description=f"noise floor of {config.experiment}: seed {seed}",
        **budget,
    )
    result = evaluate(eval_config, progress=False)
    print_result_line(result)
    return result


def check_fingerprints(config: NoiseConfig) -> None:
    """Refuse seeds that are one run under several names: their spread would read as no noise at all."""
    runs = {}
    for seed in config.seeds:
        record = read_fingerprint(config.seed_dir(seed))
        if record is None:
            raise CheckFailed(f"noise: {config.seed_dir(seed)} has no fingerprint.json; cannot check the seeds differ")
        runs[f"seed-{seed}"] = record
    problems = [p for p in compare_fingerprints(runs) if p["kind"] == "same_fingerprint"]
    if problems:
        raise CheckFailed(f"noise: {problems[0]['reason']}; no noise floor recorded")


def spread(accuracies: list[float]) -> float:
    """The seed-to-seed spread: the sample standard deviation of the accuracy (n - 1 in the denominator)."""
    return statistics.stdev(accuracies)


def record_floor(project_dir, experiment: str, results: list[dict], measured: str) -> dict:
    """Record the spread of the seeds' accuracies (`results`: seed, accuracy, n each) as the experiment's noise floor;
    its source names the seeds, what was `measured` and every accuracy. Returns the `noise.json` record."""
    accuracies = [float(r["accuracy"]) for r in results]
    if len(accuracies) < 2:
        raise UserError("noise: a spread needs at least two seeds' results")
    floor = spread(accuracies)
    source = (
        f"std of accuracy over seeds {','.join(str(r['seed']) for r in results)} of {measured} "
        f"(n={results[0]['n']}): " + ", ".join(f"{a:.4f}" for a in accuracies)
    )
    recorded = set_noise_floor(project_dir, experiment, floor, source)
    return {
        "experiment": experiment,
        "noise_floor": floor,
        "source": recorded["source"],
        "floors_file": str(Path(project_dir) / NOISE_FILE),
        "mean_accuracy": statistics.fmean(accuracies),
        "seeds": results,
    }


def estimate_noise(config: NoiseConfig) -> dict:
    """`--estimate-only`: the recipe's training estimate (its pilot steps, run once, under the first seed: nothing
    charged or saved) times the number of seeds, against what the dollar cap has left; `BudgetExhausted` (exit 1)
    when it does not fit. Seeds train the same recipe on the same data, so one pilot speaks for all of them."""
    # lazy: training pulls torch, transformers and trl
    from ..budget import BudgetExhausted
    from ..training import build_grpo_trainer, build_sft_trainer
    from ..training.builders import estimate_training

    for seed in config.seeds:
        parse_recipe(config, seed)  # every seed's settings refused before the pilot runs
    script_args, training_args, model_args = parse_recipe(config, config.seeds[0])
    script_args.estimate_only = True
    build = build_grpo_trainer if config.trainer == "grpo" else build_sft_trainer
    per_seed = estimate_training(build(script_args, training_args, model_args), refuse_over_cap=False)
    if not per_seed:
        raise UserError("--estimate-only: the recipe made no estimate (no price for this device: --price-gpu-hour)")
    total = per_seed["estimated_total_dollars"] * len(config.seeds)
    left = per_seed["cap_left_dollars"]
    estimate = {
        "seeds": len(config.seeds),
        "training_dollars_per_seed": per_seed["estimated_total_dollars"],
        "estimated_training_dollars": total,
        "max_steps": per_seed["max_steps"],
        "cap_left_dollars": left,
        "fits": left is None or total <= left,
        "evaluation": "not estimated: the seeds' models do not exist until they are trained",
    }
    print("ESTIMATE " + json.dumps(estimate, sort_keys=True), flush=True)
    if not estimate["fits"]:
        raise BudgetExhausted(
            f"budget: training {len(config.seeds)} seeds would cost about ${total:.6g} (${estimate['training_dollars_per_seed']:.6g} "
            f"each), more than the dollar cap has left (${left:.6g}); nothing was charged or saved"
        )
    return estimate


def measure_noise(config: NoiseConfig) -> dict:
    """Train every seed, check the seeds really differ, evaluate each, record the spread as the experiment's floor.

    Returns the record written to `OUT/noise.json` (the floor, its source, every seed's result)."""
    for seed in config.seeds:
        parse_recipe(config, seed)  # every seed's settings refused before the first one trains
    for seed in config.seeds:
        train_seed(config, seed)
    check_fingerprints(config)  # before any evaluation is paid for
    results = []
    for seed in config.seeds:
        result = evaluate_seed(config, seed)
        results.append(
            {
                "seed": seed,
                "model": str(config.seed_dir(seed)),
                "eval_dir": result["config"]["output_dir"],
                "accuracy": result["metrics"]["accuracy"],
                "n": result["metrics"]["n"],
                "integrity": result["integrity"]["status"],
                "dollars": ((result.get("spend") or {}).get("this_run") or {}).get("dollars", 0.0),
            }
        )
    measured = f"{config.trainer} {config.config} on {config.split}"
    record = record_floor(config.project_dir(), config.experiment, results, measured)
    write_json_atomic(Path(config.out) / NOISE_RECORD, record)
    return record

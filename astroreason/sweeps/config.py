"""The sweep file: one recipe config, the values that vary (the grid), seeds, per-task resources and the budget.

    name: tiny_lr
    base_config: recipes/configs/tiny/sft_image.yaml   # a recipe config (GalaxyScriptArguments + SFTConfig + ModelConfig)
    overrides: {max_steps: 4}                            # like `--key value` on the recipe's command line, every task
    grid: {learning_rate: [1.0e-3, 1.0e-2]}              # every combination is one arm
    seeds: 2                                             # each arm runs with each derived seed
    resources: {time: "00:30:00", cpus_per_task: 1, signal_lead_s: 120, max_requeues: 2}
    array_throttle: 2
    budget: {ledger: runs/ledger/spend.jsonl, max_dollars: 20, price_gpu_hour: 2.5}   # BudgetArguments

Nested sections are plain YAML mappings, read into the dataclasses below; an unknown key or a bad value is one line
naming the file and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..budget.prices import gpu_price
from ..errors import UserError
from ..options import BudgetArguments

TRAINERS = ("sft", "grpo")
# Keys a sweep sets itself for every task: a grid or an override may not set them.
RESERVED = ("output_dir", "resume", "seed")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Recipe settings that turn on the recipe's own training meter (BudgetCallback). A sweep task's meter already charges
# the sweep's ledger for the task's whole wall-clock, training included: with these, training would be charged twice.
METERED = ("max_dollars", "ledger", "pilot_steps", "estimate_only")
_OFF = {"pilot_steps": 0, "estimate_only": False}  # the recipe's own estimate is off by default; the others None


def refuse_second_meter(settings: dict, where: str, section: str = "") -> None:
    """Refuse a recipe setting that would charge a sweep task's training a second time (or meter it with a budget
    callback of its own, as the recipe's estimate does)."""
    for key in METERED:
        value = settings.get(key)
        if value is not None and not (key in _OFF and value == _OFF[key]):
            raise UserError(
                f"{where}: {section}{key}: a sweep task's training is charged by the sweep (its `budget:` "
                f"section; `sweep plan` prints its worst case); {key} would meter it a second time; remove it"
            )


@dataclass
class Resources:
    """What each array task asks SLURM for.

    Args:
        time: Time limit of one attempt (`[D-]HH:MM:SS`, `MM:SS` or minutes), passed to `sbatch --time`.
        cpus_per_task: `--cpus-per-task`; also the task's OMP_NUM_THREADS.
        gpus_per_task: GPUs per task (`--gres=gpu:N`); 0 for CPU-only tasks.
        mem: `--mem` (e.g. `16G`), or None for the partition's default.
        partition: `--partition`, or None for the cluster's default.
        account: `--account`, or None.
        signal_lead_s: Seconds before the time limit at which SLURM sends USR1 to the batch script
            (`--signal=B:USR1@N`): the task checkpoints and requeues itself. Leave room for one checkpoint save.
            SLURM checks every 30 s and may signal up to a minute early, so keep the time limit well above this.
        max_requeues: Requeues allowed per task; the task's total wall-clock is at most `time x (1 + max_requeues)`,
            which is what the budget estimate charges.
        extra_sbatch: Further `sbatch` options, passed as they are (e.g. `--constraint=a100`).
    """

    time: str = "01:00:00"
    cpus_per_task: int = 1
    gpus_per_task: int = 0
    mem: str | None = None
    partition: str | None = None
    account: str | None = None
    signal_lead_s: int = 120
    max_requeues: int = 2
    extra_sbatch: list[str] = field(default_factory=list)


@dataclass
class Evaluation:
    """How each task evaluates its trained model (`astroreason.evaluation.harness.EvalConfig`); the data, modality,
    codec, rendering and image size come from the task's recipe config.

    Args:
        split: Split to evaluate; every task scores the same galaxies, so arms can be compared pairwise.
        max_samples: Evaluate only the first N rows of the split.
        batch_size: Prompts per generate call.
        max_new_tokens: Completion budget per sample.
        n_boot: Bootstrap resamples for each run's intervals.
    """

    split: str = "test"
    max_samples: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 32
    n_boot: int = 1000


@dataclass
class Budget(BudgetArguments):
    """What the sweep may spend, checked against the project's spend ledger: the same options as every run's
    (`astroreason.options.BudgetArguments`: `max_dollars`, `ledger`, `prices`, `price_key`, `price_gpu_hour`).

    A task is charged by its wall-clock x its devices x one device-hour price: `price_gpu_hour` when given, else the
    price table's entry `price_key` (default `cpu` for a CPU-only task; a GPU task names its device, since the
    node's device is unknown at `sweep plan` time). `gpu_hour:` is read as `price_gpu_hour` (older sweep files).
    """

    def device_price(self, gpus_per_task: int, where: str = "budget"):
        """The `budget.Price` of one device-hour of a task (the table fails closed on an unknown device)."""
        key = self.price_key or ("cpu" if gpus_per_task == 0 else None)
        if key is None and self.price_gpu_hour is None:
            raise UserError(
                f"{where}: price_key: a task with GPUs is priced by the device it runs on; name it (an entry of "
                f"{self.prices}'s gpu_hour: section) or set price_gpu_hour"
            )
        return gpu_price(self.prices, key or "sweep", gpu_hour=self.price_gpu_hour)


@dataclass
class SweepConfig:
    """A sweep: every combination of `grid` is one arm, and each arm runs once per seed.

    Args:
        name: Name of the sweep (letters, digits, `_.-`); the default output directory is `runs/sweeps/<name>`.
        base_config: The recipe config every task starts from (a `recipes/configs/...yaml` file).
        trainer: `sft` (recipes/sft.py) or `grpo` (recipes/grpo.py).
        overrides: Recipe settings applied to every task, as `--key value` would be.
        grid: Recipe settings that vary: `{key: [values...]}`; the arms are their Cartesian product. A `seed` key
            lists explicit seeds (then `seeds` is not used).
        seeds: Seeds per arm, derived from `base_seed` (the same seeds in every arm, so arms pair up by seed).
        base_seed: Root of the derived seeds.
        out_dir: Where the manifest, task directories, logs and report go (default `runs/sweeps/<name>`).
        array_throttle: At most this many tasks run at once (`--array=...%K`).
        resources: Per-task SLURM resources.
        evaluation: How each task evaluates its model.
        budget: Spend ledger, cap and price.
        template: The sbatch script each array task runs.
        experiment: Results-ledger experiment the collected rows are recorded under: each task's result is then
            judged against the experiment's best kept result on the same galaxies (paired test and noise floor,
            `astroreason.integrity.ledger`), `keep` only when it beats it, else `discard`; empty: every row `keep`
            without a comparison (the arms are compared in `sweep.md`).
    """

    name: str = ""
    base_config: str = ""
    trainer: str = "sft"
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=dict)
    seeds: int = 1
    base_seed: int = 0
    out_dir: str | None = None
    array_throttle: int = 2
    resources: Resources = field(default_factory=Resources)
    evaluation: Evaluation = field(default_factory=Evaluation)
    budget: Budget = field(default_factory=Budget)
    template: str = "slurm/array_sweep.slurm"
    experiment: str = ""

    @property
    def output_dir(self) -> Path:
        return Path(self.out_dir or f"runs/sweeps/{self.name}")


def parse_time(value: str) -> int:
    """Seconds in a SLURM time string: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM` or `D-HH:MM:SS`."""
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise ValueError(text)
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        h, mnt, s = int(a), int(b or 0), int(c or 0)
        return ((int(days) * 24 + h) * 60 + mnt) * 60 + s
    if c is not None:
        return (int(a) * 60 + int(b)) * 60 + int(c)
    if b is not None:
        return int(a) * 60 + int(b)
    return int(a) * 60


def _section(cls, data, where: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    if unknown := sorted(set(data) - known):
        raise UserError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    return cls(**data)


def budget_aliases(data):
    """The budget section with its older spelling `gpu_hour` read as `price_gpu_hour`."""
    if isinstance(data, dict) and "gpu_hour" in data:
        data = dict(data)
        if "price_gpu_hour" in data:
            raise UserError("budget: gpu_hour and price_gpu_hour: give one (gpu_hour is price_gpu_hour's older name)")
        data["price_gpu_hour"] = data.pop("gpu_hour")
    return data


def _check_int(value, where: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{where}: must be an integer >= {low}, got {value!r}")


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep file; every problem is a `UserError` naming the file and field."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: sweep file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a sweep file is a YAML mapping")
    known = {f.name for f in fields(SweepConfig)}
    if unknown := sorted(set(data) - known):
        raise UserError(f"{path}: {unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    if "seed" in (data.get("grid") or {}) and "seeds" in data:
        raise UserError(f"{path}: seeds: give either grid.seed (explicit seeds) or seeds (derived), not both")
    nested = {
        "resources": _section(Resources, data.pop("resources", None), f"{path}: resources"),
        "evaluation": _section(Evaluation, data.pop("evaluation", None), f"{path}: evaluation"),
        "budget": _section(Budget, budget_aliases(data.pop("budget", None)), f"{path}: budget"),
    }
    config = SweepConfig(**data, **nested)
    validate(config, str(path))
    return config


def validate(c: SweepConfig, where: str) -> None:
    if not isinstance(c.name, str) or not NAME_RE.match(c.name):
        raise UserError(f"{where}: name: letters, digits and _.- only, got {c.name!r}")
    if not c.base_config or not Path(c.base_config).is_file():
        raise UserError(f"{where}: base_config: recipe config {c.base_config!r} not found")
    if c.trainer not in TRAINERS:
        raise UserError(f"{where}: trainer: expected one of {', '.join(TRAINERS)}, got {c.trainer!r}")
    if not isinstance(c.overrides, dict):
        raise UserError(f"{where}: overrides: expected a mapping of recipe settings")
    if not isinstance(c.grid, dict):
        raise UserError(f"{where}: grid: expected a mapping of recipe settings to lists of values")
    for key, values in c.grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: grid.{key}: expected a non-empty list of values, got {values!r}")
    for section, keys in (("overrides", c.overrides), ("grid", c.grid)):
        for key in keys:
            if key in RESERVED and not (section == "grid" and key == "seed"):
                raise UserError(f"{where}: {section}.{key}: set by the sweep for every task; remove it")
    refuse_second_meter(c.overrides, where, "overrides.")
    refuse_second_meter(c.grid, where, "grid.")
    if clash := sorted(set(c.overrides) & set(c.grid)):
        raise UserError(f"{where}: {clash[0]}: set both in overrides and in grid")
    _check_int(c.seeds, f"{where}: seeds", 1)
    _check_int(c.base_seed, f"{where}: base_seed", 0)
    _check_int(c.array_throttle, f"{where}: array_throttle", 1)
    r = c.resources
    try:
        seconds = parse_time(r.time)
    except ValueError:
        raise UserError(f"{where}: resources.time: not a SLURM time ([D-]HH:MM:SS), got {r.time!r}") from None
    if seconds <= 0:
        raise UserError(f"{where}: resources.time: must be positive, got {r.time!r}")
    _check_int(r.cpus_per_task, f"{where}: resources.cpus_per_task", 1)
    _check_int(r.gpus_per_task, f"{where}: resources.gpus_per_task", 0)
    _check_int(r.max_requeues, f"{where}: resources.max_requeues", 0)
    _check_int(r.signal_lead_s, f"{where}: resources.signal_lead_s", 1)
    if r.signal_lead_s >= seconds:
        raise UserError(
            f"{where}: resources.signal_lead_s: {r.signal_lead_s} s is not shorter than the time limit "
            f"{r.time} ({seconds} s)"
        )
    if not isinstance(r.extra_sbatch, list) or not all(
        isinstance(o, str) and o.startswith("-") for o in r.extra_sbatch
    ):
        raise UserError(f"{where}: resources.extra_sbatch: expected a list of sbatch options (`--key=value`)")
    e = c.evaluation
    if e.max_samples is not None:
        _check_int(e.max_samples, f"{where}: evaluation.max_samples", 1)
    _check_int(e.batch_size, f"{where}: evaluation.batch_size", 1)
    _check_int(e.max_new_tokens, f"{where}: evaluation.max_new_tokens", 1)
    _check_int(e.n_boot, f"{where}: evaluation.n_boot", 1)
    b = c.budget
    for name in ("max_dollars", "price_gpu_hour"):
        value = getattr(b, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise UserError(f"{where}: budget.{name}: must be a non-negative number, got {value!r}")
    b.device_price(r.gpus_per_task, f"{where}: budget")  # an unpriced device is refused before anything is planned

"""From a sweep file to a manifest: one row per task (arm x seed), each with a derived seed, a fixed directory and a
complete recipe config (`tasks/<name>/config.yaml`) that `recipes/sft.py --config` would also accept.

The manifest is the contract between `plan`, the array tasks and `collect`: a task reads only its row. Planning the
same sweep again gives the same manifest; planning a changed grid, base config or evaluation into the same directory is
refused, so a task directory never holds the work of two different configs.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError
from ..io import check_writable, read_json_file, sha256_json, write_json_atomic, write_text_atomic
from .config import Budget, Evaluation, Resources, SweepConfig, budget_aliases, load_sweep, refuse_second_meter

MANIFEST = "manifest.json"
# Recipe settings derived from output_dir (they differ between tasks without making them different experiments).
_PER_DIR = {"output_dir", "logging_dir", "run_name", "hub_model_id"}


@dataclass
class Task:
    """One row of the manifest: which arm, which seed, where its work lives."""

    index: int
    name: str
    arm: str
    values: dict
    seed: int
    dir: str
    config: str

    @property
    def train_dir(self) -> Path:
        return Path(self.dir) / "train"


@dataclass
class Manifest:
    path: Path
    data: dict

    @property
    def tasks(self) -> list[Task]:
        return [Task(**row) for row in self.data["tasks"]]

    @property
    def sweep(self) -> SweepConfig:

        s = dict(self.data["sweep"])
        return SweepConfig(
            **{
                **s,
                "resources": Resources(**s["resources"]),
                "evaluation": Evaluation(**s["evaluation"]),
                "budget": Budget(**budget_aliases(s["budget"])),  # a manifest planned before may say gpu_hour
            }
        )

    @property
    def out_dir(self) -> Path:
        return self.path.parent

    def task(self, index: int) -> Task:
        tasks = self.tasks
        if not 0 <= index < len(tasks):
            raise UserError(f"{self.path}: no task {index} (the sweep has tasks 0-{len(tasks) - 1})")
        return tasks[index]


def derive_seeds(base_seed: int, n: int) -> list[int]:
    """`n` distinct 32-bit seeds drawn from one root seed (numpy SeedSequence), the same on every machine."""
    import numpy as np

    seeds = [int(s) for s in np.random.SeedSequence(base_seed).generate_state(n, dtype=np.uint32)]
    if len(set(seeds)) != n:  # 32-bit collisions are possible in principle; never run two replicates on one seed
        raise UserError(f"base_seed: {base_seed} derives a repeated seed; choose another base_seed")
    return seeds


def _slug(values: dict) -> str:
    if not values:
        return "base"
    text = "_".join(f"{k}-{v}" for k, v in values.items())
    return re.sub(r"[^A-Za-z0-9_.=-]+", "", text.replace("/", "-"))[:80]


def _arm(values: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items()) or "base"


def trainer_classes(trainer: str):
    """The recipe's config dataclasses for `trainer`, in TrlParser order."""
    from trl import ModelConfig

    # lazy: `sweep status` loads this module; training pulls torch, transformers and trl
    from ..training import GalaxyScriptArguments

    if trainer == "grpo":
        from trl import GRPOConfig as TrainingConfig
    else:
        from trl import SFTConfig as TrainingConfig
    return GalaxyScriptArguments, TrainingConfig, ModelConfig


def parse_task_config(config_path: str | Path, trainer: str, *, planning: bool = False):
    """(script_args, training_args, model_args) of a task config, the TRL way; bad settings are one line.

    `planning`: the config is only being checked, maybe on a login node without the GPUs the tasks will get; parse it
    as if on CPU so that `bf16: true` is not refused for want of a GPU here (the task itself parses it as written).
    """
    import torch

    # lazy: `sweep status` loads this module; training pulls torch, transformers and trl
    from ..training import parse_recipe_args

    config_class = trainer_classes(trainer)[1]
    argv = ["--config", str(config_path)]
    if planning and not torch.cuda.is_available():
        argv += ["--use_cpu", "true"]
    try:
        with warnings.catch_warnings():  # deprecation notes of TrainingArguments, once per task, are noise here
            warnings.simplefilter("ignore", FutureWarning)
            return parse_recipe_args(config_class, argv, check_device=not planning)
    except UserError as err:  # name the task's config once
        raise (err if str(config_path) in str(err) else UserError(f"{config_path}: {err}")) from None


def experiment_key(parsed) -> str:
    """What makes two tasks the same experiment: every parsed setting except where they write."""
    script, training, model = parsed
    train = {k: v for k, v in training.to_dict().items() if k not in _PER_DIR}
    script = {k: v for k, v in asdict(script).items() if k != "resume"}
    return sha256_json({"script": script, "training": train, "model": asdict(model)})


def expand(config: SweepConfig) -> list[dict]:
    """Rows (values, seed) of the sweep: the grid's Cartesian product (minus `seed`) x the seeds."""
    grid = {k: v for k, v in config.grid.items() if k != "seed"}
    seeds = config.grid.get("seed") or derive_seeds(config.base_seed, config.seeds)
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise UserError(f"grid.seed: seeds are non-negative integers, got {s!r}")
    arms = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())] or [{}]
    return [{"values": values, "seed": seed} for values in arms for seed in seeds]


def plan(sweep_path: str | Path, *, check_configs: bool = True) -> Manifest:
    """Write (or confirm) the manifest and the task configs of a sweep file; returns the manifest."""
    import yaml

    config = load_sweep(sweep_path)
    check_writable(config.output_dir, "out_dir", directory=True)
    out = config.output_dir.resolve()
    try:
        base = yaml.safe_load(Path(config.base_config).read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{config.base_config}: base_config is not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(base, dict):
        raise UserError(f"{config.base_config}: a recipe config is a YAML mapping")
    refuse_second_meter(base, config.base_config)
    for key in ("output_dir",):
        base.pop(key, None)

    tasks, configs = [], []
    rows = expand(config)
    width = max(3, len(str(len(rows) - 1)))
    for index, row in enumerate(rows):
        name = f"{index:0{width}d}-{_slug(row['values'])}-s{row['seed']}"
        task_dir = out / "tasks" / name
        task_config = {
            **base,
            **config.overrides,
            **row["values"],
            "seed": row["seed"],
            "output_dir": str(task_dir / "train"),
            "resume": True,
        }
        tasks.append(
            Task(
                index=index,
                name=name,
                arm=_arm(row["values"]),
                values=row["values"],
                seed=row["seed"],
                dir=str(task_dir),
                config=str(task_dir / "config.yaml"),
            )
        )
        configs.append(task_config)

    identity = sha256_json(
        {
            "trainer": config.trainer,
            "configs": configs,
            "evaluation": asdict(config.evaluation),
            "tasks": [asdict(t) for t in tasks],
        }
    )
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        try:
            existing = json.loads(manifest_path.read_text())["identity"]
        except (json.JSONDecodeError, KeyError):
            raise UserError(f"{manifest_path}: not a sweep manifest; choose another out_dir") from None
        if existing != identity:
            raise UserError(
                f"{manifest_path}: this directory holds a different plan of the sweep (other grid, seeds, "
                "base config or evaluation); choose another out_dir"
            )

    for task, task_config in zip(tasks, configs):
        header = (
            f"# Task {task.index} of sweep {config.name}: arm {task.arm}, seed {task.seed} (written by `sweep plan`)\n"
        )
        write_text_atomic(task.config, header + yaml.safe_dump(task_config, sort_keys=True))
    if check_configs:
        seen: dict[str, Task] = {}
        for task in tasks:
            key = experiment_key(parse_task_config(task.config, config.trainer, planning=True)) + f"/{task.seed}"
            if key in seen:
                first = seen[key]
                raise UserError(
                    f"{sweep_path}: tasks {first.index} ({first.arm}, seed {first.seed}) and {task.index} "
                    f"({task.arm}, seed {task.seed}) are the same config with the same seed; remove one"
                )
            seen[key] = task

    sweep = asdict(config)
    sweep["out_dir"] = str(out)
    data = {
        "identity": identity,
        "sweep_file": str(Path(sweep_path).resolve()),
        "workdir": os.getcwd(),
        "sweep": sweep,
        "tasks": [asdict(t) for t in tasks],
    }
    write_json_atomic(manifest_path, data)
    (out / "logs").mkdir(exist_ok=True)
    return Manifest(manifest_path, data)


def load_manifest(path: str | Path) -> Manifest:
    """The manifest at `path` (a manifest.json, or the sweep directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise UserError(f"{path}: no sweep manifest (run `astroreason sweep plan SWEEP.yaml` first)")
    return Manifest(path.resolve(), read_json_file(path, "sweep manifest", keys=("tasks", "sweep")))

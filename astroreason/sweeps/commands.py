"""`astroreason sweep plan|submit|status|collect|run`: a grid of recipe runs as one SLURM array job, or locally.

astroreason sweep plan    SWEEP.yaml           write the manifest (one row per task) and the task configs
astroreason sweep submit  SWEEP.yaml           one `sbatch --array=I%K` job for the unfinished tasks
astroreason sweep status  SWEEP.yaml|DIR       task states (state files + squeue)
astroreason sweep collect SWEEP.yaml|DIR       results.jsonl, results.tsv rows and the comparison report
astroreason sweep run --local SWEEP.yaml       the same tasks on this machine, resumable
astroreason noise RECIPE.yaml --experiment NAME --seeds N    the experiment's noise floor, measured
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def _manifest(target: str):
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .config import load_sweep
    from .plan import MANIFEST, load_manifest

    path = Path(target)
    if path.is_dir() or path.name == MANIFEST:
        return load_manifest(path)
    return load_manifest(load_sweep(path).output_dir / MANIFEST)


def run_plan(args) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .plan import plan
    from .spend import task_estimate

    manifest = plan(args.sweep)
    tasks, sweep = manifest.tasks, manifest.sweep
    arms = sorted({t.arm for t in tasks})
    print(
        f"{manifest.path}: {len(tasks)} tasks ({len(arms)} arms x {len(tasks) // len(arms)} seeds), "
        f"worst case ${task_estimate(sweep) * len(tasks):.2f}"
    )
    for t in tasks:
        print(f"  {t.index:>3}  {t.arm}  seed {t.seed}  {t.dir}")
    return 0


def run_submit(args) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .plan import plan
    from .slurm import submit

    record = submit(plan(args.sweep), python=args.python)
    if record["job_id"] is None:
        print(record["message"])
        return 0
    print(
        f"submitted array job {record['job_id']} for tasks {record['indices']} "
        f"(worst case ${record['estimate_dollars']:.2f})"
    )
    return 0


def run_status(args) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .collect import print_table, task_table
    from .slurm import queued, submissions

    manifest = _manifest(args.sweep)
    jobs = [s["job_id"] for s in submissions(manifest)]
    states = queued(jobs) if jobs else {}
    rows = task_table(manifest, states)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print_table(
            rows,
            ["index", "name", "status", "slurm", "attempts", "elapsed_s", "step", "checkpoint", "accuracy"],
            f"sweep {manifest.sweep.name} (jobs {', '.join(jobs) or 'none'})",
        )
    return 0


def run_collect(args) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .collect import collect, print_table

    manifest = _manifest(args.sweep)
    out = collect(manifest, partial=args.partial)
    print_table(
        out["rows"],
        ["task", "arm", "seed", "accuracy", "balanced_accuracy", "macro_f1", "attempts", "elapsed_s"],
        f"sweep {manifest.sweep.name}: {len(out['rows'])} results",
    )
    for arm, summary in out["arms"].items():
        acc = summary["accuracy"]
        interval = (
            f"[{acc['interval'][0]:.3f}, {acc['interval'][1]:.3f}]" if acc["interval"] else "(one seed: no interval)"
        )
        print(f"{arm}: accuracy mean {acc['mean']:.3f} {interval} over seeds {summary['seeds']}")
    for name, c in out["comparisons"].items():
        if "not_paired" in c:
            print(f"{name}: not paired ({c['not_paired']})")
            continue
        p = c["pooled"]
        print(
            f"{name}: accuracy difference {p['accuracy_difference']:+.3f} "
            f"[{p['difference_interval'][0]:+.3f}, {p['difference_interval'][1]:+.3f}], "
            f"McNemar p {p['mcnemar_p_value']:.3g} over {len(c['seeds'])} seeds"
        )
    from ..integrity.ledger import LEDGER_FILE

    print(
        f"results ledger {manifest.out_dir / LEDGER_FILE}: {len(out['ledger_added'])} row(s) added, "
        f"{len(out['rows']) - len(out['ledger_added'])} already there"
    )
    print(f"results: {manifest.out_dir / 'results.jsonl'}; report: {out['report']}/sweep.md")
    return 0


def run_local_cmd(args) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .local import run_local
    from .plan import plan

    if not args.local:
        raise UserError("sweep run: runs the tasks on this machine; pass --local (or `sweep submit` for SLURM)")
    if args.jobs < 1:
        raise UserError(f"--jobs: must be >= 1, got {args.jobs}")
    run_local(plan(args.sweep), jobs=args.jobs, python=args.python)
    return 0


def run_noise(args) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .noise import NoiseConfig, estimate_noise, measure_noise, parse_seeds

    config = NoiseConfig(
        config=args.config,
        experiment=args.experiment,
        seeds=parse_seeds(args.seeds, args.base_seed),
        trainer=args.trainer,
        out=args.out,
        overrides=args.set or [],
        split=args.split,
        max_samples=args.max_samples,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        ledger=args.ledger,
        results_dir=args.results_dir,
        max_dollars=args.max_dollars,
        prices=args.prices,
        price_gpu_hour=args.price_gpu_hour,
        estimate_only=args.estimate_only,
    )
    if config.estimate_only:
        estimate_noise(config)
        return 0
    record = measure_noise(config)
    print("NOISE " + json.dumps(record, sort_keys=True))
    return 0


def add_noise_parser(subparsers) -> None:
    n = subparsers.add_parser(
        "noise",
        help="Measure an experiment's noise floor: one recipe under N seeds, the spread of their accuracy.",
        description="Train the recipe under each seed on the same data, evaluate each on the same galaxies, and "
        "record the standard deviation of the accuracy across seeds as the experiment's noise floor "
        "(noise_floors.json beside results.tsv): a later gain no larger is discarded. Seeds whose fingerprints "
        "are equal (one run under several names) are refused (exit 1). Prints one NOISE {json} line.",
        allow_abbrev=False,
    )
    n.add_argument("config", help="The recipe config (YAML), as recipes/sft.py --config takes it.")
    n.add_argument("--experiment", required=True, help="The experiment whose noise floor this is.")
    n.add_argument("--seeds", default="3", help="How many seeds (from --base-seed), or a list: 0,7,11 (default 3).")
    n.add_argument("--base-seed", type=int, default=0, help="First seed when --seeds is a count (default 0).")
    n.add_argument("--trainer", choices=("sft", "grpo"), default="sft", help="The recipe the config is for.")
    n.add_argument("--out", default="runs/noise", help="Directory of the runs (seed-S/ each) and noise.json.")
    n.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="A recipe setting on top of the config (repeatable), e.g. --set max_steps=4.",
    )
    n.add_argument("--split", default="test", help="Split each run is evaluated on (the experiment's).")
    n.add_argument("--max-samples", type=int, help="Evaluate the first N galaxies of the split (the experiment's).")
    n.add_argument("--batch-size", type=int, default=16, help="Prompts per generate call of the evaluation.")
    n.add_argument("--max-new-tokens", type=int, default=32, help="Completion budget per galaxy in the evaluation.")
    n.add_argument("--ledger", help="The project's spend ledger (training and evaluation charge it).")
    n.add_argument(
        "--results-dir", help="Where the floor is recorded (default: the spend ledger's directory, as eval)."
    )
    n.add_argument("--max-dollars", type=float, help="Cap on the project's total spend.")
    n.add_argument("--prices", help="Price table (YAML).")
    n.add_argument("--price-gpu-hour", type=float, help="Set the device price yourself (dollars per GPU-hour).")
    n.add_argument(
        "--estimate-only",
        action="store_true",
        help="Print the training estimate of all the seeds (one pilot of the recipe, neither charged nor saved, "
        "times the seeds: one ESTIMATE {json} line) and stop; exit 1 when it does not fit the cap.",
    )
    n.set_defaults(func=run_noise)


def add_parser(subparsers) -> None:
    import sys

    add_noise_parser(subparsers)

    p = subparsers.add_parser("sweep", help="Grids of arms x seeds as SLURM array jobs (or locally), and their report.")
    sub = p.add_subparsers(dest="sweep_command", metavar="SUBCOMMAND", required=True)

    s = sub.add_parser("plan", help="Write the manifest (one row per task) and each task's recipe config.")
    s.add_argument("sweep", help="Sweep file (YAML).")
    s.set_defaults(func=run_plan)

    s = sub.add_parser("submit", help="Submit the unfinished tasks as one `sbatch --array` job (budget-checked).")
    s.add_argument("sweep", help="Sweep file (YAML).")
    s.add_argument("--python", default=sys.executable, help="Python that runs each task (default: this one).")
    s.set_defaults(func=run_submit)

    s = sub.add_parser("status", help="Task states: state files, squeue, results.")
    s.add_argument("sweep", help="Sweep file (YAML) or sweep directory.")
    s.add_argument("--json", action="store_true", help="Print the rows as JSON.")
    s.set_defaults(func=run_status)

    s = sub.add_parser(
        "collect",
        help="results.jsonl, one results.tsv row per task and the comparison report "
        "(per arm over seeds, paired tests).",
    )
    s.add_argument("sweep", help="Sweep file (YAML) or sweep directory.")
    s.add_argument("--partial", action="store_true", help="Collect the finished tasks even if some are not done.")
    s.set_defaults(func=run_collect)

    s = sub.add_parser("run", help="Run the sweep's tasks on this machine (--local), resuming unfinished ones.")
    s.add_argument("sweep", help="Sweep file (YAML).")
    s.add_argument("--local", action="store_true", help="Run here, without SLURM.")
    s.add_argument("--jobs", type=int, default=1, help="Tasks at a time (default 1).")
    s.add_argument("--python", default=sys.executable, help="Python that runs each task (default: this one).")
    s.set_defaults(func=run_local_cmd)

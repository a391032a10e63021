"""`astroreason audit DATA_OR_RUN`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..arms import ARMS
from ..errors import CheckFailed, UserError


def add_parser(subparsers) -> None:
    audit = subparsers.add_parser(
        "audit",
        help="leak and shortcut probes on data, a run or a sweep (exit 1 if any fails)",
        description="Row order, duplicates across splits, a metadata-only classifier, blank-input, "
        "label-permutation and (for a GRPO run) random-reward controls, seed fingerprints and the ceiling. Exit 1 "
        "if any probe fails.",
    )
    audit.add_argument(
        "target",
        metavar="DATA_OR_RUN",
        help="a Galaxy10-schema HDF5 file, a prepared directory, a run directory or a sweep directory",
    )
    audit.add_argument("--json", action="store_true", help="print the report as JSON")
    audit.add_argument(
        "--template",
        type=Path,
        help="file holding the prompt template to probe (default: the run's "
        "recorded template, else the standard templates)",
    )
    audit.add_argument("--modality", choices=tuple(ARMS), default="image", help="modality of --template")
    audit.add_argument("--ceiling", type=float, default=None, help="accuracy above this is suspect (default 0.95)")
    audit.add_argument(
        "--no-controls",
        action="store_true",
        help="skip the model controls (blank input, label permutation, random reward)",
    )
    audit.add_argument("--max-samples", type=int, default=64, help="rows the model controls use")
    audit.add_argument(
        "--permutation-steps",
        type=int,
        default=None,
        help="cap on the training steps of the label-permutation control, which reruns the run's recipe "
        "from its base model on permuted labels for at most its own steps (default 200)",
    )
    audit.add_argument(
        "--random-reward-steps",
        type=int,
        default=None,
        help="cap on the training steps of a GRPO run's random-reward control, which reruns the run's GRPO stage "
        "from its own start with each label-reading reward replaced by a random one of the same mean, for the "
        "run's own steps but at most this many (default 500)",
    )
    audit.add_argument(
        "--random-reward-samples",
        type=int,
        default=None,
        help="galaxies of the run's split on which the random-reward control scores the start, the run and the "
        "rerun, paired (default 512; fewer when the split is smaller)",
    )
    audit.set_defaults(func=run_audit)


def print_report(report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"audit of {report.target} ({report.kind})")
    for col in ("probe", "status", "summary"):
        table.add_column(col, overflow="fold")
    colours = {"pass": "green", "fail": "red", "note": "yellow", "skip": "dim"}
    for p in report.probes:
        table.add_row(p.name, f"[{colours[p.status]}]{p.status}[/]", p.summary)
    Console(width=140).print(table)


def run_audit(args: argparse.Namespace) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from ..integrity.gate import DEFAULT_CEILING
    from .probes import DEFAULT_PERMUTATION_STEPS, audit
    from .random_reward import DEFAULT_RANDOM_REWARD_SAMPLES, DEFAULT_RANDOM_REWARD_STEPS

    templates = None
    if args.template is not None:
        if not args.template.is_file():
            raise UserError(f"--template: {args.template} not found")
        templates = {args.modality: args.template.read_text()}
    steps = DEFAULT_PERMUTATION_STEPS if args.permutation_steps is None else args.permutation_steps
    if args.max_samples < 1 or steps < 1:
        raise UserError("--max-samples and --permutation-steps must be >= 1")
    rr_steps = DEFAULT_RANDOM_REWARD_STEPS if args.random_reward_steps is None else args.random_reward_steps
    rr_samples = DEFAULT_RANDOM_REWARD_SAMPLES if args.random_reward_samples is None else args.random_reward_samples
    for option, value in (("--random-reward-steps", rr_steps), ("--random-reward-samples", rr_samples)):
        if value < 1:
            raise UserError(f"{option} must be >= 1, got {value}")
    report = audit(
        args.target,
        templates=templates,
        ceiling=args.ceiling or DEFAULT_CEILING,
        controls=not args.no_controls,
        max_samples=args.max_samples,
        permutation_steps=steps,
        random_reward_steps=rr_steps,
        random_reward_samples=rr_samples,
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=1, default=str))
    else:
        print_report(report)
    if report.failed:
        names = ", ".join(p.name for p in report.failed)
        raise CheckFailed(f"audit: {len(report.failed)} probe(s) failed on {args.target}: {names}")
    return 0

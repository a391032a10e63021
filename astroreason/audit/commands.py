"""`astroreason audit DATA_OR_RUN`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import CheckFailed, UserError


def add_parser(subparsers) -> None:
    audit = subparsers.add_parser(
        "audit",
        help="leak and shortcut probes on data, a run or a sweep (exit 1 if any fails)",
        description="Row order, duplicates across splits, a metadata-only classifier, blank-input and "
        "label-permutation controls, seed fingerprints and the ceiling. Exit 1 if any probe fails.",
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
    audit.add_argument("--modality", choices=("image", "tokens"), default="image", help="modality of --template")
    audit.add_argument("--ceiling", type=float, default=None, help="accuracy above this is suspect (default 0.95)")
    audit.add_argument("--no-controls", action="store_true", help="skip the model controls (blank input, permutation)")
    audit.add_argument("--max-samples", type=int, default=64, help="rows the model controls use")
    audit.add_argument(
        "--permutation-steps",
        type=int,
        default=None,
        help="cap on the training steps of the label-permutation control, which reruns the run's recipe "
        "from its base model on permuted labels for at most its own steps (default 200)",
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

    templates = None
    if args.template is not None:
        if not args.template.is_file():
            raise UserError(f"--template: {args.template} not found")
        templates = {args.modality: args.template.read_text()}
    steps = DEFAULT_PERMUTATION_STEPS if args.permutation_steps is None else args.permutation_steps
    if args.max_samples < 1 or steps < 1:
        raise UserError("--max-samples and --permutation-steps must be >= 1")
    report = audit(
        args.target,
        templates=templates,
        ceiling=args.ceiling or DEFAULT_CEILING,
        controls=not args.no_controls,
        max_samples=args.max_samples,
        permutation_steps=steps,
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=1, default=str))
    else:
        print_report(report)
    if report.failed:
        names = ", ".join(p.name for p in report.failed)
        raise CheckFailed(f"audit: {len(report.failed)} probe(s) failed on {args.target}: {names}")
    return 0

"""`astroreason audit DATA_OR_RUN`, `astroreason gate RESULT` and `astroreason ledger verify|log DIR`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import CheckFailed, UserError
from ..io import check_writable


def add_parser(subparsers) -> None:
    audit = subparsers.add_parser(
        "audit", help="leak and shortcut probes on data, a run or a sweep (exit 1 if any fails)",
        description="Row order, duplicates across splits, a metadata-only classifier, blank-input and "
                    "label-permutation controls, seed fingerprints and the ceiling. Exit 1 if any probe fails.",
    )
    audit.add_argument("target", metavar="DATA_OR_RUN",
                       help="a Galaxy10-schema HDF5 file, a prepared directory, a run directory or a sweep directory")
    audit.add_argument("--json", action="store_true", help="print the report as JSON")
    audit.add_argument("--template", type=Path, help="file holding the prompt template to probe (default: the run's "
                       "recorded template, else the standard templates)")
    audit.add_argument("--modality", choices=("image", "tokens"), default="image", help="modality of --template")
    audit.add_argument("--ceiling", type=float, default=None, help="accuracy above this is suspect (default 0.95)")
    audit.add_argument("--no-controls", action="store_true", help="skip the model controls (blank input, permutation)")
    audit.add_argument("--max-samples", type=int, default=64, help="rows the model controls use")
    audit.add_argument("--permutation-steps", type=int, default=None,
                       help="cap on the training steps of the label-permutation control, which reruns the run's recipe "
                       "from its base model on permuted labels for at most its own steps (default 200)")
    audit.set_defaults(func=run_audit)

    gate = subparsers.add_parser(
        "gate", help="mark a result above the ceiling suspect (exit 1)",
        description="Check an evaluation result against the ceiling; a suspect one is marked in SUSPECT.json and, "
                    "with --ledger, recorded with status suspect.",
    )
    gate.add_argument("result", help="result.json, or the directory holding it")
    gate.add_argument("--ceiling", type=float, default=None, help="default 0.95 (Galaxy10 DECaLS)")
    gate.add_argument("--metric", default="accuracy", help="the result's metric to check (default accuracy)")
    gate.add_argument("--ledger", type=Path, help="also append the result to DIR/results.tsv")
    gate.add_argument("--description", default="", help="ledger description")
    gate.set_defaults(func=run_gate)

    ledger = subparsers.add_parser("ledger", help="verify the results ledger or regenerate its log")
    sub = ledger.add_subparsers(dest="ledger_command", metavar="COMMAND", required=True)
    verify = sub.add_parser("verify", help="check results.tsv (exit 1 if malformed or edited)")
    verify.add_argument("dir", type=Path, help="directory holding results.tsv")
    verify.set_defaults(func=run_ledger_verify)
    log = sub.add_parser("log", help="regenerate experiment_log.md from results.tsv")
    log.add_argument("dir", type=Path, help="directory holding results.tsv")
    log.set_defaults(func=run_ledger_log)


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
    from .gate import DEFAULT_CEILING
    from .probes import DEFAULT_PERMUTATION_STEPS, audit

    templates = None
    if args.template is not None:
        if not args.template.is_file():
            raise UserError(f"--template: {args.template} not found")
        templates = {args.modality: args.template.read_text()}
    steps = DEFAULT_PERMUTATION_STEPS if args.permutation_steps is None else args.permutation_steps
    if args.max_samples < 1 or steps < 1:
        raise UserError("--max-samples and --permutation-steps must be >= 1")
    report = audit(args.target, templates=templates, ceiling=args.ceiling or DEFAULT_CEILING,
                   controls=not args.no_controls, max_samples=args.max_samples,
                   permutation_steps=steps)
    if args.json:
        print(json.dumps(report.to_json(), indent=1, default=str))
    else:
        print_report(report)
    if report.failed:
        names = ", ".join(p.name for p in report.failed)
        raise CheckFailed(f"audit: {len(report.failed)} probe(s) failed on {args.target}: {names}")
    return 0


def run_gate(args: argparse.Namespace) -> int:
    from .gate import DEFAULT_CEILING, gate_result, read_result
    from .ledger import record_result

    ceiling = DEFAULT_CEILING if args.ceiling is None else args.ceiling
    if args.ledger is not None:
        check_writable(args.ledger, "--ledger", directory=True)
    verdict = gate_result(args.result, ceiling=ceiling, metric=args.metric)
    if args.ledger is not None:
        run_dir = Path(args.result) if Path(args.result).is_dir() else Path(args.result).parent
        record_result(args.ledger, read_result(args.result), run_dir=run_dir, description=args.description,
                      metric=args.metric, ceiling=ceiling)
    print(("SUSPECT: " if verdict.suspect else "ok: ") + verdict.reason, file=sys.stdout)
    if verdict.suspect:
        raise CheckFailed(f"gate: {args.result} is suspect: {verdict.reason}")
    return 0


def run_ledger_verify(args: argparse.Namespace) -> int:
    from .ledger import LEDGER_FILE, verify

    if not (args.dir / LEDGER_FILE).is_file():
        raise UserError(f"{args.dir}: no {LEDGER_FILE}")
    rows = verify(args.dir)
    print(f"{args.dir / LEDGER_FILE}: {len(rows)} rows, hash chain intact")
    return 0


def run_ledger_log(args: argparse.Namespace) -> int:
    from .ledger import LEDGER_FILE, LOG_FILE, write_log

    if not (args.dir / LEDGER_FILE).is_file():  # nothing to render (and no directory created for it)
        raise UserError(f"{args.dir}: no {LEDGER_FILE}")
    check_writable(args.dir / LOG_FILE, "ledger log")
    print(write_log(args.dir))
    return 0

"""`astroreason gate RESULT` and `astroreason ledger verify|log|noise-floor|crash DIR` (`astroreason audit` is
`astroreason.audit`'s)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import CheckFailed, UserError
from ..io import check_writable


def add_parser(subparsers) -> None:
    gate = subparsers.add_parser(
        "gate",
        help="mark a result above the ceiling suspect (exit 1)",
        description="Check an evaluation result against the ceiling; a suspect one is marked in SUSPECT.json and, "
        "with --ledger, recorded with status suspect.",
    )
    gate.add_argument("result", help="result.json, or the directory holding it")
    gate.add_argument("--ceiling", type=float, default=None, help="default 0.95 (Galaxy10 DECaLS)")
    gate.add_argument("--metric", default="accuracy", help="the result's metric to check (default accuracy)")
    gate.add_argument("--ledger", type=Path, help="also append the result to DIR/results.tsv")
    gate.add_argument("--description", default="", help="ledger description")
    gate.add_argument(
        "--experiment",
        default="",
        help="with --ledger: the experiment; the result is kept only if it beats the experiment's best on the same "
        "galaxies (needs predictions.jsonl beside result.json)",
    )
    gate.set_defaults(func=run_gate)

    ledger = subparsers.add_parser(
        "ledger", help="verify the results ledger, regenerate its log, set a noise floor, record a crash"
    )
    sub = ledger.add_subparsers(dest="ledger_command", metavar="COMMAND", required=True)
    verify = sub.add_parser("verify", help="check results.tsv (exit 1 if malformed or edited)")
    verify.add_argument("dir", type=Path, help="directory holding results.tsv")
    verify.set_defaults(func=run_ledger_verify)
    log = sub.add_parser("log", help="regenerate experiment_log.md from results.tsv")
    log.add_argument("dir", type=Path, help="directory holding results.tsv")
    log.set_defaults(func=run_ledger_log)
    floor = sub.add_parser(
        "noise-floor",
        help="record an experiment's noise floor: a gain at most this large is discarded",
        description="Record the experiment's noise floor (an accuracy difference, e.g. 0.02); later results of the "
        "experiment are kept only when their gain over the best exceeds it. Without one the floor is 0.",
    )
    floor.add_argument("dir", type=Path, help="directory holding results.tsv")
    floor.add_argument("experiment", help="the experiment's name")
    floor.add_argument("value", type=float, help="the floor, as an accuracy difference in [0, 1)")
    floor.add_argument("--source", required=True, help="how it was measured (recorded with it)")
    floor.set_defaults(func=run_ledger_noise_floor)
    crash = sub.add_parser("crash", help="record a run that died before its result (status crash)")
    crash.add_argument("dir", type=Path, help="directory holding results.tsv")
    crash.add_argument("--experiment", default="", help="the experiment the run belonged to")
    crash.add_argument("--run-dir", type=Path, help="the run's directory")
    crash.add_argument("--description", required=True, help="what was tried and how it died")
    crash.set_defaults(func=run_ledger_crash)


def run_gate(args: argparse.Namespace) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .gate import DEFAULT_CEILING, gate_result, read_result
    from .ledger import record_result

    ceiling = DEFAULT_CEILING if args.ceiling is None else args.ceiling
    if args.ledger is not None:
        check_writable(args.ledger, "--ledger", directory=True)
    verdict = gate_result(args.result, ceiling=ceiling, metric=args.metric)
    if args.ledger is not None:
        run_dir = Path(args.result) if Path(args.result).is_dir() else Path(args.result).parent
        record_result(
            args.ledger,
            read_result(args.result),
            run_dir=run_dir,
            description=args.description,
            metric=args.metric,
            ceiling=ceiling,
            experiment=args.experiment,
        )
    print(("SUSPECT: " if verdict.suspect else "ok: ") + verdict.reason, file=sys.stdout)
    if verdict.suspect:
        raise CheckFailed(f"gate: {args.result} is suspect: {verdict.reason}")
    return 0


def run_ledger_verify(args: argparse.Namespace) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .ledger import LEDGER_FILE, verify

    if not (args.dir / LEDGER_FILE).is_file():
        raise UserError(f"{args.dir}: no {LEDGER_FILE}")
    rows = verify(args.dir)
    print(f"{args.dir / LEDGER_FILE}: {len(rows)} rows, hash chain intact")
    return 0


def run_ledger_log(args: argparse.Namespace) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .ledger import LEDGER_FILE, LOG_FILE, write_log

    if not (args.dir / LEDGER_FILE).is_file():  # nothing to render (and no directory created for it)
        raise UserError(f"{args.dir}: no {LEDGER_FILE}")
    check_writable(args.dir / LOG_FILE, "ledger log")
    print(write_log(args.dir))
    return 0


def run_ledger_noise_floor(args: argparse.Namespace) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .ledger import NOISE_FILE, set_noise_floor

    check_writable(args.dir / NOISE_FILE, "noise floor")
    record = set_noise_floor(args.dir, args.experiment, args.value, args.source)
    print(f"{args.dir / NOISE_FILE}: {args.experiment} noise floor {record['value']:g} ({record['source']})")
    return 0


def run_ledger_crash(args: argparse.Namespace) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .ledger import LEDGER_FILE, record_crash

    check_writable(args.dir / LEDGER_FILE, "ledger")
    row = record_crash(args.dir, experiment=args.experiment, run_dir=args.run_dir, description=args.description)
    print(f"{args.dir / LEDGER_FILE}: crash recorded ({row['row_sha256'][:12]})")
    return 0

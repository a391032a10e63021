"""`astroreason eval` (the same entry as eval/run.py, configured the TRL way: `--config file.yaml` plus overrides),
`astroreason report RUN...` and `astroreason budget status|estimate`."""

from __future__ import annotations

import argparse
import json


def parse_eval_config(argv: list[str], prog: str = "astroreason eval"):
    """An `EvalConfig` from `--config FILE` plus `--key value` overrides; any mistake is one `UserError` line, and an
    `output_dir` that cannot be written is refused before anything runs."""
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from ..arguments import parse_config_args
    from .config import EvalConfig

    (config,) = parse_config_args((EvalConfig,), argv, prog=prog, check=check_eval_values)
    return config


def check_eval_values(values: dict) -> None:
    """What `EvalConfig` itself does not refuse, before anything is loaded: sampling settings no run can have and an
    `output_dir` that cannot be written."""
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from ..errors import UserError
    from ..io import check_writable

    seed, temperature, top_p = values["seed"], values["temperature"], values["top_p"]
    if seed is not None and seed < 0:  # numpy's generators refuse it, after the model is loaded
        raise UserError(f"seed: must be a non-negative integer, got {seed}")
    if temperature is not None and temperature < 0:
        raise UserError(f"temperature: must be >= 0 (0 is greedy decoding), got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top_p: expected a number in (0, 1], got {top_p}")
    check_writable(values["output_dir"], "output_dir", directory=True)


def run_eval(argv: list[str]) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from ..errors import CheckFailed

    config = parse_eval_config(argv)  # before the harness loads: `--help` and a mistake stay fast
    from .harness import IncompleteRun, estimate_evaluation, evaluate, print_result_line

    if config.estimate_only:
        print_estimate(estimate_evaluation(config), "nothing was asked, charged or written")
        return 0

    try:
        result = evaluate(config)
    except IncompleteRun as err:
        print_result_line(err.result)  # the partial outcome, still one machine-readable line
        raise
    print_result_line(result)
    integrity = result.get("integrity") or {}
    if integrity.get("status") == "suspect":
        raise CheckFailed(f"result: SUSPECT, recorded so in {integrity['ledger']} ({integrity['description']})")
    return 0


def print_estimate(estimate: dict, what: str) -> None:
    """The one `ESTIMATE {json}` line; `CheckFailed` (exit 1) when the estimate does not fit under the caps."""
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from ..errors import CheckFailed

    print("ESTIMATE " + json.dumps(estimate, sort_keys=True), flush=True)
    if not estimate["fits"]:
        left = estimate.get("cap_left_dollars")
        raise CheckFailed(
            f"budget: the estimate (${estimate['estimated_dollars']:.6g} more) exceeds the "
            f"{', '.join(estimate['over'])} cap" + (f" (${left:.6g} left)" if left is not None else "") + f"; {what}"
        )


def run_report(args) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from ..io import check_writable
    from .report import write_report

    check_writable(args.out, "--out", directory=True)
    path = write_report(args.runs, args.out, tex=args.tex, macros=args.macros)
    print(f"report written to {path}")
    return 0


def run_budget_status(args) -> int:
    from rich.console import Console
    from rich.table import Table

    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from ..budget import Ledger
    from ..errors import UserError

    if args.max_dollars is not None and args.max_dollars < 0:
        raise UserError(f"--max-dollars: expected a non-negative number, got {args.max_dollars}")
    ledger = Ledger(args.ledger)
    totals = ledger.totals()
    table = Table(title=f"spend ledger {ledger.path}")
    for column in ("run", "dollars", "requests", "prompt tokens", "completion tokens", "GPU-seconds"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for run, t in sorted(ledger.by_run().items()):
        table.add_row(
            run,
            f"{t.dollars:.6f}",
            str(t.requests),
            str(t.prompt_tokens),
            str(t.completion_tokens),
            f"{t.gpu_seconds:.1f}",
        )
    Console().print(table)
    status = {"ledger": str(ledger.path), **totals.to_json()}
    if args.max_dollars is not None:
        status["max_dollars"] = args.max_dollars
        status["remaining_dollars"] = args.max_dollars - totals.committed_dollars
    print("STATUS " + json.dumps(status, sort_keys=True))
    return 0


def run_budget_estimate(args) -> int:
    """Answer a small stratified pilot (charged and cached like any run) and extrapolate the cost of the rest."""
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from ..errors import UserError

    config = parse_eval_config(args.argv, prog="astroreason budget estimate")  # before the harness loads
    if config.estimate_only:
        raise UserError("estimate_only: `budget estimate` runs a pilot; --estimate_only is `astroreason eval`'s")
    from .harness import Evaluation

    run = Evaluation(config)
    estimate = run.pilot(config.pilot_samples or 10)
    print("ESTIMATE " + json.dumps(estimate, sort_keys=True))
    return 0 if estimate["fits"] else 1


def add_parser(subparsers) -> None:
    r = subparsers.add_parser("report", help="Markdown + PNG report of evaluation runs, read from their results files.")
    r.add_argument("runs", nargs="+", help="Evaluation output directories (each with result.json and samples.jsonl).")
    r.add_argument("--out", default="runs/report", help="Report directory (replaced atomically).")
    r.add_argument(
        "--tex",
        action="store_true",
        help="Also write macros.tex: every figure of the report as a LaTeX macro, each with its source files' sha256.",
    )
    r.add_argument("--macros", action="store_true", help="Also write macros.md: the same values as a Markdown table.")
    r.set_defaults(func=run_report)

    # prefix_chars="+": every `--key value` goes through untouched to the TRL-style parser of EvalConfig.
    p = subparsers.add_parser(
        "eval",
        help="Evaluate a checkpoint on a prepared split (see eval/run.py --help).",
        add_help=False,
        prefix_chars="+",
    )
    p.add_argument("argv", nargs=argparse.REMAINDER, help="--config FILE.yaml and --key value overrides")
    p.set_defaults(func=lambda args: run_eval(args.argv))

    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from ..budget import DEFAULT_LEDGER

    b = subparsers.add_parser("budget", help="The project's spend ledger: status, or a cost estimate from a pilot.")
    sub = b.add_subparsers(dest="budget_command", metavar="ACTION", required=True)
    s = sub.add_parser("status", help="Totals of the spend ledger, per run.")
    s.add_argument("--ledger", default=DEFAULT_LEDGER, help=f"Ledger file (default {DEFAULT_LEDGER}).")
    s.add_argument("--max-dollars", type=float, help="Show what remains under this cap.")
    s.set_defaults(func=run_budget_status)
    e = sub.add_parser(
        "estimate",
        add_help=False,
        prefix_chars="+",
        help="Run a stratified pilot of an eval config (--pilot_samples N, default 10) and print the cost of the rest.",
    )
    e.add_argument("argv", nargs=argparse.REMAINDER, help="the eval config: --config FILE.yaml and overrides")
    e.set_defaults(func=run_budget_estimate)

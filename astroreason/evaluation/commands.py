"""`astroreason eval`: the same entry as eval/run.py, configured the TRL way (`--config file.yaml` plus overrides)."""

from __future__ import annotations

import argparse


def parse_eval_config(argv: list[str]):
    from trl import TrlParser

    from .harness import EvalConfig

    (config,) = TrlParser((EvalConfig,), prog="astroreason eval").parse_args_and_config(args=argv)
    return config


def run_eval(argv: list[str]) -> int:
    from ..errors import UserError
    from .harness import evaluate, print_result_line

    config = parse_eval_config(argv)
    if not config.model:
        raise UserError("model: pass --model DIR (a checkpoint directory) or set `model:` in the config")
    print_result_line(evaluate(config))
    return 0


def run_report(args) -> int:
    from .report import write_report

    path = write_report(args.runs, args.out)
    print(f"report written to {path}")
    return 0


def add_parser(subparsers) -> None:
    r = subparsers.add_parser("report", help="Markdown + PNG report of evaluation runs, read from their results files.")
    r.add_argument("runs", nargs="+", help="Evaluation output directories (each with result.json and samples.jsonl).")
    r.add_argument("--out", default="runs/report", help="Report directory (replaced atomically).")
    r.set_defaults(func=run_report)

    p = subparsers.add_parser(
        "eval", help="Evaluate a checkpoint on a prepared split (see eval/run.py --help).", add_help=False
    )
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: run_eval(args.argv))

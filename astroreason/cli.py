"""The `astroreason` command: parse, dispatch to the library, turn deliberate failures into exit statuses.

Each command group lives beside its library code in a module exposing `add_parser(subparsers)`, which registers
its sub-commands with `set_defaults(func=...)`. A `func` takes the parsed namespace and returns an exit status
(or None for 0). `UserError` exits 2 and `CheckFailed` exits 1, each with one line on stderr and no traceback; a usage
mistake argparse catches (unknown flag, missing or mistyped argument) is a `UserError` too, so it reads the same.
Every option is accepted in both spellings, `--max-dollars` and `--max_dollars`, as the recipes and `eval` accept them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError, exit_status


class CommandParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one `UserError` line naming the sub-command (`data prepare: ...`)
    instead of the usage text and `prog: error:` that argparse prints; sub-parsers inherit the class."""

    def error(self, message):
        command = self.prog.removeprefix("astroreason").strip()
        raise UserError(f"{command}: {message}" if command else message)

    def add_argument(self, *names, **kwargs):
        """Every long option is accepted as --dash-case and as --snake_case (the recipes' and `eval`'s spelling)."""
        return super().add_argument(*names, *both_spellings(names), **kwargs)


def both_spellings(names) -> list[str]:
    """The other spelling of each long option in `names` that is not already there."""
    others = []
    for name in names:
        if name.startswith("--") and len(name) > 2:
            for other in ("--" + name[2:].replace("_", "-"), "--" + name[2:].replace("-", "_")):
                if other not in names and other not in others:
                    others.append(other)
    return others


# Command groups, in the order `astroreason --help` lists them.
COMMAND_MODULES = [
    "astroreason.data.commands",
    "astroreason.tokens_commands",
    "astroreason.model_commands",
    "astroreason.evaluation.commands",
    "astroreason.evaluation.claims_commands",
    "astroreason.sweeps.commands",
    "astroreason.audit.commands",
    "astroreason.integrity.commands",
    "astroreason.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="astroreason",
        description="Galaxy morphology with Qwen-VL models: data, tokens, training, evaluation, integrity, sweeps.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    return exit_status(run_command, argv)


def run_command(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

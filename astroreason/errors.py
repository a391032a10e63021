"""The two ways a command fails on purpose, each with its exit status (README.md, "Exit status").

Library code raises these with one line naming the file or field and what is wrong; `astroreason.cli.main`
prints that line (no traceback) and exits with the status.
"""


class UserError(Exception):
    """Bad usage or bad input (a missing file, a malformed config, a corrupt HDF5). Exit status 2."""

    exit_code = 2


class CheckFailed(Exception):
    """The check ran and found a problem (audit failure, suspect result, budget refusal). Exit status 1."""

    exit_code = 1


def seed(text: str) -> int:
    """argparse type of a `--seed`: a non-negative integer (numpy's generators refuse negative seeds), else a usage
    error naming the flag."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer (numpy's generators refuse {value})")
    return value


def exit_status(main, *args, **kwargs) -> int:
    """Run an entry point; a deliberate failure becomes one line on stderr and its exit status, never a traceback."""
    import sys

    try:
        status = main(*args, **kwargs)
    except (UserError, CheckFailed) as err:
        print(f"astroreason: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("astroreason: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)

"""Command lines read the TRL way (`--config FILE.yaml` plus `--key value` overrides), every mistake one line.

`parse_config_args` is `TrlParser.parse_args_and_config` for the recipes and the evaluation, with their mistakes
turned into one `UserError` line (exit 2) before any dataclass is built: a config file that is missing, not YAML or
not a mapping; a key or flag that is no field; a value of the wrong type; and whatever
the caller's `check` refuses in the merged values (impossible numbers, a device this machine lacks, an output path
that cannot be written). A dataclass's own refusal (a `ValueError` of `TrainingArguments.__post_init__`) is one line
too.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from trl import TrlParser

from .errors import UserError

Check = Callable[[dict[str, Any]], None]


class ConfigParser(TrlParser):
    """`TrlParser` whose usage errors, unknown keys and mistyped config values raise `UserError`, and which hands
    the merged values (config file, then command line) to `check` before the dataclasses are built."""

    def __init__(self, dataclass_types, *, check: Check | None = None, **kwargs):
        super().__init__(dataclass_types, **kwargs)
        self.check = check
        self.config_path = None

    def error(self, message):  # argparse would print the usage and exit 2; one line instead
        raise UserError(f"arguments: {message}")

    def set_defaults_with_config(self, **config) -> list[str]:
        actions = {a.dest: a for a in self._actions}
        names = " or ".join(t.__name__ for t in self.dataclass_types)
        for key, value in config.items():
            if key not in actions:
                raise UserError(f"--config: {self.config_path}: unknown key `{key}` (not a field of {names})")
            check_config_value(key, value, actions[key], self.config_path)
        return super().set_defaults_with_config(**config)

    def parse_known_args(self, args=None, namespace=None):
        namespace, remaining = super().parse_known_args(args, namespace)
        if remaining:
            raise UserError(f"arguments: unknown {' '.join(remaining)} (see --help)")
        if self.check is not None:
            self.check(vars(namespace))
        return namespace, remaining


def check_config_value(key: str, value: Any, action, path) -> None:
    """A config file's value against its field's type. argparse converts a text value itself (YAML's `1e-3` is
    text), and a bad one is its usage error; any other value reaches the dataclass as it is, so it is checked here."""
    from transformers.hf_argparser import string_to_bool

    if value is None or isinstance(value, str) or action.nargs in ("+", "*"):
        return  # null is each field's own business; lists are checked by their dataclass
    where = f"--config: {path}: {key}"
    kind = action.type
    if kind is string_to_bool and not isinstance(value, bool):
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
        if kind is int and not float(value).is_integer():
            raise UserError(f"{where}: expected an integer, got {value!r}")
    if action.choices is not None and value not in action.choices:
        raise UserError(f"{where}: expected one of {', '.join(map(str, action.choices))}, got {value!r}")


def parse_config_args(
    dataclass_types: Iterable[type],
    argv: list[str] | None = None,
    *,
    prog: str | None = None,
    check: Check | None = None,
) -> tuple:
    """The dataclasses of `--config FILE` plus `--key value` overrides (TRL's precedence: the command line wins);
    any mistake is one `UserError` line."""
    import yaml

    argv = list(sys.argv[1:] if argv is None else argv)
    # TRL's configs default `gradient_checkpointing` (deprecated in transformers 5.24): a warning no user can act on.
    warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
    parser = ConfigParser(tuple(dataclass_types), check=check, prog=prog)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise UserError("--config: expected a YAML file")
        parser.config_path = path = argv[i + 1]
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f)
        except OSError as err:
            raise UserError(f"--config: cannot read {path} ({err.strerror})") from None
        except yaml.YAMLError as err:
            raise UserError(f"--config: {path} is not valid YAML ({' '.join(str(err).split())})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"--config: {path} must hold a YAML mapping of settings, got {type(loaded).__name__}")
    try:
        return tuple(parser.parse_args_and_config(args=argv))
    except (ValueError, TypeError) as err:  # a dataclass's own refusal (`__post_init__`), already one message
        raise UserError(f"arguments: {' '.join(str(err).split())}") from None

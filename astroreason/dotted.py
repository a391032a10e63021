"""User code by dotted path (`my_module.my_object`), the way TRL's scripts take a reward function or a callback."""

from __future__ import annotations

import importlib

from .errors import UserError


def import_dotted(path: str, field: str):
    """The object `path` names (`package.module.name`); a path that does not import is one error naming `field`."""
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise UserError(f"{field}: {path!r} is not a dotted path (expected module.name)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"{field}: cannot import {module_name!r} for {path!r} ({err})") from None
    if not hasattr(module, name):
        raise UserError(f"{field}: module {module_name!r} has no {name!r}")
    return getattr(module, name)

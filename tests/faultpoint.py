"""Run `astroreason ARGS` and kill it with SIGKILL right after the K-th call of one function returns.

    python tests/faultpoint.py MODULE:QUALNAME K ARGS...
    python tests/faultpoint.py MODULE:QUALNAME K recipes/sft.py ARGS...     # a recipe, as `python recipes/sft.py`
    python tests/faultpoint.py MODULE:QUALNAME K -m astroreason.sweeps.task ARGS...    # a module's `main(ARGS)`

`MODULE:QUALNAME` names what writes an output record or file (`datasets.arrow_writer:ArrowWriter.write_table`: a
batch of rows). Where the process dies is a count of outputs, never a time: the same on a fast and a slow machine.
The process dies as a power cut would leave it: no `finally`, no `atexit`, no flush.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys


def kill_after(target: str, k: int) -> None:
    """Wrap `target` so that the process kills itself after its `k`-th call returns."""
    module_name, qualname = target.split(":")
    *path, name = qualname.split(".")
    owner = importlib.import_module(module_name)
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = 0

    def counted(*args, **kwargs):
        nonlocal calls
        result = original(*args, **kwargs)
        calls += 1
        if calls == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, counted)


if __name__ == "__main__":
    kill_after(sys.argv[1], int(sys.argv[2]))
    if sys.argv[3].endswith(".py"):
        import runpy

        sys.argv = sys.argv[3:]
        runpy.run_path(sys.argv[0], run_name="__main__")
    elif sys.argv[3] == "-m":  # its own `main(ARGS)`: a `__main__` copy of the module would not call what is wrapped
        sys.exit(importlib.import_module(sys.argv[4]).main(sys.argv[5:]))
    else:
        from astroreason.cli import main

        sys.exit(main(sys.argv[3:]))

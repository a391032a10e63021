"""A TrainerCallback that holds a run at a chosen checkpoint so a test can interrupt it there.

Named by dotted path in a recipe's `callbacks` (`holdpoint.HoldAtSave`, with this folder on PYTHONPATH). Right after
the run saves `checkpoint-$HOLD_AT_STEP` it writes its pid to `$HOLD_MARKER` and waits until the test removes that
file. The test kills or signals the run while it waits: where a run is interrupted never depends on how fast this
machine trains. Without `HOLD_MARKER` in the environment it does nothing (a resumed run).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from transformers import TrainerCallback


class HoldAtSave(TrainerCallback):
    def __init__(self):
        marker = os.environ.get("HOLD_MARKER")
        self.marker = Path(marker) if marker else None
        self.step = int(os.environ.get("HOLD_AT_STEP", "0"))

    def on_save(self, args, state, control, **kwargs):
        if self.marker is None or state.global_step != self.step or not state.is_world_process_zero:
            return
        tmp = self.marker.with_suffix(".tmp")
        tmp.write_text(str(os.getpid()))
        tmp.replace(self.marker)  # whole or absent: the test never reads half a pid
        while self.marker.exists():
            time.sleep(0.05)


def wait_for_hold(marker: Path, proc=None, timeout: float = 600) -> None:
    """Until the run holds at its checkpoint (or ends, or `timeout` passes: both fail the test)."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert proc is None or proc.poll() is None, "the run ended before it reached its hold point"
        assert time.monotonic() < deadline, f"no hold at {marker} after {timeout:.0f} s"
        time.sleep(0.05)

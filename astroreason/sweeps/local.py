"""The same sweep without SLURM: each unfinished task runs as `python -m astroreason.sweeps.task MANIFEST I`, at most
`jobs` at a time, with the same state files, checkpoints and ledger charges as an array task.

Stopping the runner (Ctrl-C, SIGTERM) makes every running task checkpoint and exit; running it again resumes each
unfinished task from its last checkpoint, as a requeued array task would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import CheckFailed
from .plan import Manifest
from .slurm import unfinished
from .spend import check_affordable
from .task import REQUEUE_EXIT


def run_local(manifest: Manifest, *, jobs: int = 1, python: str = sys.executable, log=print) -> dict:
    """Run every unfinished task; returns {index: exit status}. Raises CheckFailed if a task failed."""
    todo = unfinished(manifest)
    if not todo:
        log("every task is done")
        return {}
    check_affordable(manifest.sweep, len(todo))
    logs = manifest.out_dir / "logs"
    logs.mkdir(exist_ok=True)
    stopping: list[str] = []

    def on_signal(signum, frame):
        stopping.append(signal.Signals(signum).name)
        for proc, _, _ in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(manifest.sweep.resources.cpus_per_task)),
    }
    running: dict[int, tuple[subprocess.Popen, object, float]] = {}
    status: dict[int, int] = {}
    queue = list(todo)
    try:
        while queue or running:
            while queue and len(running) < jobs and not stopping:
                index = queue.pop(0)
                out = open(Path(logs) / f"{index}.log", "a")
                # Own process group: a terminal's Ctrl-C reaches the runner, which asks each task to checkpoint.
                proc = subprocess.Popen(
                    [python, "-m", "astroreason.sweeps.task", str(manifest.path), str(index)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
                running[index] = (proc, out, time.monotonic())
                log(f"task {index} started (log {out.name})")
            if not queue and not running:
                break
            time.sleep(0.2)
            for index, (proc, out, _) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                out.close()
                del running[index]
                if code == REQUEUE_EXIT and not stopping:
                    log(f"task {index} checkpointed on a signal; running it again (resumes)")
                    queue.insert(0, index)
                    continue
                status[index] = code
                log(f"task {index} exited with status {code}")
            if stopping and not running:
                break
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopping:
        log(f"stopped by {stopping[0]}: running tasks checkpointed; run again to resume them")
        raise KeyboardInterrupt
    failed = {i: c for i, c in status.items() if c != 0}
    if failed:
        raise CheckFailed(f"tasks {sorted(failed)} failed (see {logs}/<index>.log)")
    return status

"""SLURM side of a sweep: one `sbatch --array=I%K` job for the unfinished tasks, and task states from `squeue`.

The job runs `slurm/array_sweep.slurm PYTHON MANIFEST` once per array index; the script runs
`python -m astroreason.sweeps.task MANIFEST $SLURM_ARRAY_TASK_ID` and, on USR1 (`--signal=B:USR1@lead`), has it
checkpoint and then requeues `${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}` only.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..errors import CheckFailed, UserError
from .plan import Manifest
from .spend import check_affordable
from .task import DONE, read_state

SUBMISSIONS = "submissions.jsonl"


def array_spec(indices: list[int]) -> str:
    """`0-3`, `1,3,5-7`: the indices as SLURM's --array list."""
    parts, start = [], None
    for i, k in enumerate(indices):
        if start is None:
            start = k
        if i + 1 == len(indices) or indices[i + 1] != k + 1:
            parts.append(str(start) if start == k else f"{start}-{k}")
            start = None
    return ",".join(parts)


def unfinished(manifest: Manifest) -> list[int]:
    return [t.index for t in manifest.tasks if read_state(t.dir)["status"] != DONE]


def template_path(manifest: Manifest) -> Path:
    """The sbatch script: as given (relative to the sweep's working directory), else the one in this checkout."""
    name = manifest.sweep.template
    for candidate in (Path(manifest.data["workdir"]) / name, Path(__file__).resolve().parents[2] / name):
        if candidate.is_file():
            return candidate
    raise UserError(f"template: sbatch script {name!r} not found (relative to {manifest.data['workdir']})")


def sbatch_command(manifest: Manifest, indices: list[int], python: str = sys.executable) -> list[str]:
    sweep, r = manifest.sweep, manifest.sweep.resources
    cmd = [
        "sbatch",
        "--parsable",
        f"--job-name=sweep-{sweep.name}",
        f"--array={array_spec(indices)}%{sweep.array_throttle}",
        f"--time={r.time}",
        f"--cpus-per-task={r.cpus_per_task}",
        "--ntasks=1",
        "--nodes=1",
        f"--signal=B:USR1@{r.signal_lead_s}",
        "--requeue",
        "--open-mode=append",
        f"--output={manifest.out_dir / 'logs' / '%a.log'}",
        f"--chdir={manifest.data['workdir']}",
    ]
    if r.gpus_per_task:
        cmd.append(f"--gres=gpu:{r.gpus_per_task}")
    if r.mem:
        cmd.append(f"--mem={r.mem}")
    if r.partition:
        cmd.append(f"--partition={r.partition}")
    if r.account:
        cmd.append(f"--account={r.account}")
    cmd += list(r.extra_sbatch)
    return cmd + [str(template_path(manifest)), python, str(manifest.path)]


def _client(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise UserError(f"{name}: SLURM client not found on PATH (use `astroreason sweep run --local` without SLURM)")
    return path


def submissions(manifest: Manifest) -> list[dict]:
    path = manifest.out_dir / SUBMISSIONS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def queued(job_ids: list[str]) -> dict[int, str]:
    """State of each queued or running array task of these jobs, by array index (`squeue -r`)."""
    if not job_ids:
        return {}
    out = subprocess.run(
        [_client("squeue"), "-h", "-r", "-j", ",".join(job_ids), "-o", "%i|%T"], capture_output=True, text=True
    )
    if out.returncode != 0:
        if "Invalid job id" in out.stderr:  # every job has left the queue
            return {}
        raise CheckFailed(f"squeue: {out.stderr.strip() or 'failed'}")
    states = {}
    for line in out.stdout.splitlines():
        m = re.fullmatch(r"(\d+)_(\d+)\|(\w+)", line.strip())
        if m:
            states[int(m.group(2))] = m.group(3)
    return states


def submit(manifest: Manifest, *, python: str = sys.executable) -> dict:
    """Submit the unfinished tasks as one array job; refused if the sweep is queued already or is unaffordable."""
    todo = unfinished(manifest)
    if not todo:
        return {"job_id": None, "indices": [], "message": "every task is done; nothing submitted"}
    active = queued([s["job_id"] for s in submissions(manifest)])
    if active:
        raise CheckFailed(
            f"sweep {manifest.sweep.name}: tasks {sorted(active)} are still queued or running; "
            "wait for them or scancel the job before submitting again"
        )
    figures = check_affordable(manifest.sweep, len(todo))
    cmd = sbatch_command(manifest, todo, python)
    cmd[0] = _client("sbatch")
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise CheckFailed(f"sbatch: {out.stderr.strip() or 'failed'}")
    job_id = out.stdout.strip().split(";")[0]
    record = {"job_id": job_id, "indices": todo, "time": time.time(), "command": cmd, **figures}
    with open(manifest.out_dir / SUBMISSIONS, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
    return record

"""Sweeps on a real one-node SLURM cluster (munged + slurmctld + slurmd on 127.0.0.1, tests/slurm_cluster.py):
a 4-task array with throttle 2 lands all four results; a running task that gets SLURM's USR1 checkpoints, requeues
itself and resumes from that checkpoint. The daemons are stopped at the end and no process of the cluster is left.

Needs root and Debian's slurm-wlm + munge (`.ci/slurm_setup.sh`); skipped without them unless
ASTROREASON_REQUIRE_SLURM=1 (CI), where their absence is a failure.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from holdpoint import wait_for_hold
from slurm_cluster import LocalSlurm, missing_binaries
from test_sweep import (  # noqa: F401  (fixtures)
    REPO,
    _wait_for,
    base_config,
    check_charges,
    check_collect,
    cli,
    hold_env,
    write_base_config,
    write_sweep,
)

_missing = missing_binaries()
_why = (
    f"SLURM binaries missing ({', '.join(_missing)}): run .ci/slurm_setup.sh"
    if _missing
    else "slurmd must run as root"
    if os.geteuid() != 0
    else None
)
if _why and os.environ.get("ASTROREASON_REQUIRE_SLURM") == "1":
    raise RuntimeError(f"ASTROREASON_REQUIRE_SLURM=1 but {_why}")
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        killed = cluster.stop()
        leftovers = cluster.leftovers()
        assert not killed and not leftovers, f"cluster did not stop cleanly: killed {killed}, left {leftovers}"


@pytest.fixture
def slurm_env(slurm, monkeypatch):
    """The clients (and the jobs, through sbatch's --export=ALL) talk to the test cluster and import this checkout."""
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return slurm


def _states(slurm: LocalSlurm, job_id: str) -> dict[int, str]:
    out = slurm.run("squeue", "-h", "-r", "-j", job_id, "-o", "%i|%T", check=False).stdout
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\d+_(\d+)\|(\w+)$", out, re.M)}


def _state(task_dir: Path) -> dict:
    path = task_dir / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_array_sweep_lands_four_results_two_at_a_time(cli, slurm_env, base_config, tmp_path):
    sweep = write_sweep(tmp_path / "arr.yaml", base_config, array_throttle=2)
    out = cli("sweep", "submit", str(sweep), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    record = json.loads((tmp_path / "arr-out" / "submissions.jsonl").read_text())
    job = record["job_id"]
    assert f"submitted array job {job} for tasks [0, 1, 2, 3]" in out.stdout
    assert "--array=0-3%2" in record["command"] and "--signal=B:USR1@60" in record["command"]

    manifest = json.loads((tmp_path / "arr-out" / "manifest.json").read_text())
    dirs = [Path(t["dir"]) for t in manifest["tasks"]]
    most_running = 0

    def all_done():
        nonlocal most_running
        running = sum(s == "RUNNING" for s in _states(slurm_env, job).values())
        most_running = max(most_running, running)
        return all(_state(d).get("status") == "done" for d in dirs)

    _wait_for(all_done, 900, "all four tasks to finish", poll=0.5)
    assert most_running == 2  # the throttle let two run together, never more
    for index, d in enumerate(dirs):
        state = _state(d)
        assert state["attempts"] == 1 and (d / "result.json").exists() and (d / "samples.jsonl").exists()
        assert state["history"][0]["job"]["SLURM_ARRAY_JOB_ID"] == job
        assert state["history"][0]["job"]["SLURM_ARRAY_TASK_ID"] == str(index)
        assert "RESULT {" in (tmp_path / "arr-out" / "logs" / f"{index}.log").read_text()

    status = cli("sweep", "status", str(sweep), "--json", cwd=tmp_path)
    assert status.returncode == 0
    assert [r["status"] for r in json.loads(status.stdout)] == ["done"] * 4

    # Each task charged the project's spend ledger as it ran; collect: four results.tsv rows and the report.
    check_charges(tmp_path / "ledger.jsonl", "arr", manifest["tasks"])
    check_collect(cli, sweep, tmp_path, tmp_path / "arr-out")

    again = cli("sweep", "submit", str(sweep), cwd=tmp_path)
    assert again.returncode == 0 and "every task is done" in again.stdout


def test_requeued_task_resumes_from_its_checkpoint(cli, slurm_env, prepared_dir, tiny_model_dir, tmp_path, monkeypatch):
    steps, held_at = 40, 4
    base = write_base_config(
        tmp_path / "long.yaml",
        prepared_dir,
        tiny_model_dir,
        max_steps=steps,
        save_steps=4,
        callbacks=["holdpoint.HoldAtSave"],
    )
    sweep = write_sweep(tmp_path / "rq.yaml", base, grid={}, seeds=1)
    marker = tmp_path / "held"
    hold_env(monkeypatch, marker, held_at)  # sbatch passes this environment to the job
    out = cli("sweep", "submit", str(sweep), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    job = json.loads((tmp_path / "rq-out" / "submissions.jsonl").read_text())["job_id"]
    task_dir = Path(json.loads((tmp_path / "rq-out" / "manifest.json").read_text())["tasks"][0]["dir"])

    # The task holds after checkpoint-4 and gets the signal there: it cannot have finished, whatever the speed.
    wait_for_hold(marker, timeout=600)
    assert _states(slurm_env, job) == {0: "RUNNING"}
    busy = cli("sweep", "submit", str(sweep), cwd=tmp_path)  # never two jobs on one sweep
    assert busy.returncode == 1 and "still queued or running" in busy.stderr
    # What slurmctld sends `signal_lead_s` before the time limit (--signal=B:USR1@60): USR1 to the batch script.
    slurm_env.run("scancel", "--batch", "--signal=USR1", f"{job}_0")
    log_path = tmp_path / "rq-out" / "logs" / "0.log"
    _wait_for(lambda: "SIGUSR1 received during train" in log_path.read_text(), 120, "the task to get the signal")
    marker.unlink()

    _wait_for(lambda: _state(task_dir).get("status") == "done", 600, "the requeued task to finish", poll=0.5)
    state = _state(task_dir)
    assert state["attempts"] == 2, state
    first, second = state["history"]
    assert first["outcome"] == "checkpointed for requeue"
    stopped_at = int(first["checkpoint"].split("-")[1])
    assert stopped_at == held_at + 1  # the step after the hold, where training looks at the stop request
    assert second["resumed_from"] == f"checkpoint-{stopped_at}"
    assert first["job"]["SLURM_ARRAY_JOB_ID"] == second["job"]["SLURM_ARRAY_JOB_ID"] == job
    assert second["job"]["SLURM_RESTART_COUNT"] == "1"
    # Wall-clock carried across the requeue: the total is both attempts.
    assert state["elapsed_s"] == pytest.approx(first["seconds"] + second["seconds"], abs=0.01)

    log = (tmp_path / "rq-out" / "logs" / "0.log").read_text()
    assert "requeueing this array task only" in log and "(restart 1)" in log
    resume_line = f"Resuming from {task_dir / 'train' / f'checkpoint-{stopped_at}'} (global step {stopped_at})"
    assert resume_line in log
    # The second attempt trained only the remaining steps: it did not start over.
    assert log.split(resume_line)[1].count("'loss'") == steps - stopped_at
    final = json.loads((task_dir / "train" / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    assert final["global_step"] == steps
    assert (task_dir / "result.json").exists()

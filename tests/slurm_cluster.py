"""A real one-node SLURM cluster on 127.0.0.1 for the sweep tests: munged, slurmctld and slurmd, all in a temporary
directory (config, state, spool, logs, munge key and socket), started as root and stopped completely.

Install the daemons first (Debian `slurm-wlm` and `munge`): `.ci/slurm_setup.sh`. The clients (`sbatch`, `squeue`,
`scontrol`, `scancel`) find this cluster through `SLURM_CONF`, which `env()` sets.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
NODE = "astro1"
PARTITION = "debug"


def missing_binaries() -> list[str]:
    return [b for b in (*DAEMONS, "sbatch", "squeue", "scontrol", "scancel") if shutil.which(b) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_resources() -> tuple[int, int]:
    """CPUs and RealMemory (MB) of this machine as slurmd itself reports them (`slurmd -C`)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
    return int(fields["CPUs"]), int(fields["RealMemory"])


class LocalSlurm:
    """Start with `start()`, stop with `stop()`; `run(*argv)` calls a SLURM client against this cluster."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.conf = self.root / "etc" / "slurm.conf"
        self.socket_dir: Path | None = None
        self.pids: dict[str, Path] = {d: self.root / "run" / f"{d}.pid" for d in DAEMONS}

    # ---- configuration -------------------------------------------------------------------------------------------
    @property
    def socket(self) -> Path:
        return self.socket_dir / "munge.socket"

    def write_config(self) -> None:
        # munged wants every directory above its socket executable by all, and a socket path is limited to 107
        # bytes: the socket lives in its own short directory under /tmp (removed by stop()), not under `root`.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="astroreason-munge-"))
        self.socket_dir.chmod(0o755)
        for sub in ("etc", "run", "log", "state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        key_dir = self.root / "munge-key"
        key_dir.mkdir(mode=0o700, exist_ok=True)
        key = key_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        cpus, memory = _node_resources()
        r = self.root
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=astroreason-test",
                    "SlurmctldHost=localhost(127.0.0.1)",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    # cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
                    f"AuthInfo=socket={self.socket},cred_expire=5",
                    f"StateSaveLocation={r}/state",
                    f"SlurmdSpoolDir={r}/spool",
                    f"SlurmctldPidFile={self.pids['slurmctld']}",
                    f"SlurmdPidFile={self.pids['slurmd']}",
                    f"SlurmctldLogFile={r}/log/slurmctld.log",
                    f"SlurmdLogFile={r}/log/slurmd.log",
                    "SlurmctldDebug=info",
                    "SlurmdDebug=info",
                    "ProctrackType=proctrack/pgid",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "JobCompType=jobcomp/none",
                    "MpiDefault=none",
                    "SwitchType=switch/none",
                    "ReturnToService=2",
                    "JobRequeue=1",
                    "MaxArraySize=1001",
                    # Schedule promptly: the tests wait on state changes, not on a production cadence.
                    "SchedulerType=sched/backfill",
                    "SchedulerParameters=sched_interval=2,bf_interval=2",
                    "MinJobAge=300",
                    "KillWait=5",
                    "InactiveLimit=0",
                    "SlurmdTimeout=60",
                    f"NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname=localhost CPUs={cpus} RealMemory={memory} State=UNKNOWN",
                    f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO",
                    "",
                ]
            )
        )

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # ---- daemons -------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        self.write_config()
        r = self.root
        subprocess.run(
            [
                "munged",
                f"--socket={self.socket}",
                f"--key-file={r}/munge-key/munge.key",
                f"--pid-file={self.pids['munged']}",
                f"--log-file={r}/log/munged.log",
                f"--seed-file={r}/munge-key/seed",
            ],
            check=True,
            env=self.env(),
        )
        # -i: ignore state files (a fresh directory has none); both daemons fork and write their pid files.
        subprocess.run(["slurmctld", "-i", "-f", str(self.conf)], check=True, env=self.env())
        subprocess.run(["slurmd", "-N", NODE, "-f", str(self.conf)], check=True, env=self.env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-n", NODE, "-o", "%T", check=False).stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"node {NODE} did not come up (state {state!r}); see {r}/log")

    def jobs(self) -> list[str]:
        return self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()

    def cancel_all(self, timeout: float = 60) -> None:
        """Cancel every job and wait until the queue is empty (their processes are gone)."""
        if self.jobs():
            self.run("scancel", "--partition", PARTITION, check=False)
        deadline = time.monotonic() + timeout
        while self.jobs() and time.monotonic() < deadline:
            time.sleep(0.5)

    def leftovers(self) -> list[int]:
        """Processes still carrying this cluster's SLURM_CONF: daemons, slurmstepd and job processes."""
        mark = f"SLURM_CONF={self.conf}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if mark in (proc / "environ").read_bytes().split(b"\0") and _proc_state(int(proc.name)) != "Z":
                    found.append(int(proc.name))
            except OSError:
                continue
        return found

    def stop(self, timeout: float = 20) -> list[str]:
        """Cancel the jobs, then stop every daemon this cluster started; returns the daemons (and leftover processes)
        that had to be killed with SIGKILL."""
        if self.pids["slurmctld"].exists():
            self.cancel_all()
        killed = []
        for daemon in reversed(DAEMONS):
            pid_file = self.pids[daemon]
            if not pid_file.exists():
                continue
            pid = int(pid_file.read_text().split()[0])
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                killed.append(daemon)
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(f"pid {pid}")
            except ProcessLookupError:
                pass
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        return killed

    def daemon_pids(self) -> dict[str, int]:
        return {d: int(p.read_text().split()[0]) for d, p in self.pids.items() if p.exists()}

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env(), check=check)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, IndexError):
        return "X"

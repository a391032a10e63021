"""Where a result came from: code version, configuration, data and seed, recorded in every results file."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .data.splits import load_manifest
from .io import sha256_json


class GitState:
    """The commit of the code that ran and whether the working tree had uncommitted changes, asked of git in the
    background from now on and read with `result()`: a run starts it first and reads it when it writes its result."""

    # One process answers both: the `# branch.oid` header line, then one line per changed tracked file.
    COMMAND = ["git", "status", "--porcelain=v2", "--branch", "--untracked-files=no"]

    def __init__(self, path: str | Path | None = None):
        cwd = Path(path or Path(__file__).resolve().parent)
        try:
            self._proc = subprocess.Popen(
                self.COMMAND, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        except OSError:
            self._proc = None
        self._result: dict | None = None

    def result(self) -> dict:
        if self._result is None:
            self._result = self._read()
        return self._result

    def _read(self) -> dict:
        if self._proc is None:  # no git here
            return {"commit": None, "dirty": None}
        lines = self._proc.communicate()[0].splitlines()
        oid = next((ln.split()[2] for ln in lines if ln.startswith("# branch.oid ")), None)
        if self._proc.returncode or oid in (None, "(initial)"):  # not a repository, or no commit yet
            return {"commit": None, "dirty": None}
        return {"commit": oid, "dirty": any(not ln.startswith("#") for ln in lines)}


def provenance(
    config: dict,
    *,
    data_dir: str | None = None,
    seed: int | None = None,
    git: GitState | None = None,
    manifest=None,
) -> dict:
    """Commit and dirty flag (from `git`, if started earlier), config hash, split-manifest hash, source data hash
    and seed (`manifest`: `data_dir`'s, when the caller has loaded it already)."""
    record = {
        **(git or GitState()).result(),
        "config_sha256": sha256_json(config),
        "seed": seed,
        "manifest_sha256": None,
        "data_sha256": None,
    }
    if manifest is None and data_dir is not None and (Path(data_dir) / "manifest.json").exists():
        manifest = load_manifest(data_dir)
    if manifest is not None:
        record["manifest_sha256"] = manifest.hash
        record["data_sha256"] = manifest.source_sha256
    return record

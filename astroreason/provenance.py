"""Where a result came from: code version, configuration, data and seed, recorded in every results file."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .io import sha256_json


def git_state(path: str | Path | None = None) -> dict:
    """The commit of the code that ran and whether the working tree had uncommitted changes."""
    cwd = Path(path or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def provenance(config: dict, *, data_dir: str | None = None, seed: int | None = None) -> dict:
    """Commit and dirty flag, config hash, split-manifest hash, source data hash and seed."""
    record = {**git_state(), "config_sha256": sha256_json(config), "seed": seed,
              "manifest_sha256": None, "data_sha256": None}
    if data_dir is not None and (Path(data_dir) / "manifest.json").exists():
        from .data.splits import load_manifest

        manifest = load_manifest(data_dir)
        record["manifest_sha256"] = manifest.hash
        record["data_sha256"] = manifest.source_sha256
    return record

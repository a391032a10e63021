"""Kill -9 at points chosen by count (after the k-th output record or file: tests/faultpoint.py), then rerun: the rerun
completes, its output is byte-identical to an uninterrupted run's, and what the killed run left is never read as a
finished output."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from evalkit import build_codec

from astroreason.cli import main
from astroreason.data.splits import load_manifest
from astroreason.errors import UserError
from astroreason.tokens import load_codes

ROOT = Path(__file__).resolve().parents[1]
FAULTPOINT = ROOT / "tests" / "faultpoint.py"
BATCH = "datasets.arrow_writer:ArrowWriter.write_table"  # one record batch of a split view written
VIEW = "datasets.arrow_writer:ArrowWriter.finalize"  # one split view's file finished
CODES = "astroreason.tokens.codec:Codec._encode_fitted"  # one batch of codes encoded


def killed(target: str, k: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, str(FAULTPOINT), target, str(k), *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == -signal.SIGKILL, f"not killed at call {k} of {target}: {proc.stderr[-2000:]}"
    return proc


def contents(root: Path) -> dict[str, str]:
    """Every file under `root` by relative path, with its SHA-256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("target,k", [(BATCH, 1), (BATCH, 3), (VIEW, 1), (VIEW, 2)])
def test_data_prepare_killed_then_rerun(surrogate_h5, tmp_path, target, k):
    args = ["data", "prepare", str(surrogate_h5), "--seed", "0", "--out"]
    assert main([*args, str(tmp_path / "whole")]) == 0
    out = tmp_path / "prepared"
    killed(target, k, *args, str(out))
    # The killed run's split views are only in a temporary folder: the output it was writing does not exist.
    assert not out.exists()
    with pytest.raises(UserError, match="no manifest.json"):
        load_manifest(out)
    assert main([*args, str(out)]) == 0
    assert contents(out) == contents(tmp_path / "whole")


@pytest.fixture(scope="module")
def codec(prepared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    shutil.copytree(prepared_dir, root / "trained_on")
    return build_codec(root / "trained_on", root / "codec")


@pytest.mark.parametrize("k", [1, 4])
def test_tokens_encode_killed_then_rerun(prepared_dir, codec, tmp_path, k):
    data = tmp_path / "prepared"
    shutil.copytree(prepared_dir, data, ignore=shutil.ignore_patterns("tokens"))
    args = ["tokens", "encode", "--data", str(data), "--codec", str(codec), "--batch-size", "16"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    killed(CODES, k, *args)
    # No cache is there to be read: a later step is told to encode, never served the codes of the batches done.
    with pytest.raises(UserError, match="no token cache"):
        load_codes(data, codec)
    assert main(args) == 0
    cache = load_codes(data, codec).path
    assert contents(cache) == contents(tmp_path / "whole")

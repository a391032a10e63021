"""Bad input through the real command line, in a subprocess: exit status 2, exactly one line on stderr, no
traceback, and nothing half-written (prepare's --out never appears, no temporary file is left beside it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

N, SIDE = 12, 16


def good_columns(n=N, side=SIDE):
    rng = np.random.default_rng(0)
    return {
        "images": rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8),
        "ans": (np.arange(n) % 10).astype(np.uint8),
        "ra": rng.uniform(0, 360, n),
        "dec": rng.uniform(-20, 30, n),
        "redshift": rng.uniform(0.01, 0.2, n),
        "pxscale": np.full(n, 0.262),
    }


def h5(path, **changes):
    cols = good_columns()
    for key, value in changes.items():
        if value is None:
            cols.pop(key)
        else:
            cols[key] = value
    with h5py.File(path, "w") as f:
        for key, value in cols.items():
            f[key] = value
    return path


def truncated(path):
    h5(
        path.with_suffix(".full"),
        images=np.random.default_rng(1).integers(0, 256, (200, 64, 64, 3), dtype=np.uint8),
        ans=np.zeros(200, np.uint8),
        ra=np.zeros(200),
        dec=np.zeros(200),
        redshift=np.zeros(200),
        pxscale=np.zeros(200),
    )
    data = path.with_suffix(".full").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# name -> (build the input under tmp_path, a word the one error line must contain)
CASES = {
    "missing file": (lambda p: p, "no such file"),
    "directory": (lambda p: (p.mkdir(), p)[1], "is a directory"),
    "empty file": (lambda p: (p.write_bytes(b""), p)[1], "0 bytes"),
    "not hdf5": (lambda p: (p.write_text("ra,dec,label\n1,2,3\n"), p)[1], "not an HDF5 file"),
    "truncated": (truncated, "truncated"),
    "zero rows": (lambda p: h5(p, **{k: v[:0] for k, v in good_columns().items()}), "0 rows"),
    "missing key": (lambda p: h5(p, ans=None), "missing key `ans`"),
    "missing redshift": (lambda p: h5(p, redshift=None), "missing key `redshift`"),
    "image shape": (lambda p: h5(p, images=np.zeros((N, SIDE, SIDE), np.uint8)), "shape"),
    "image channels first": (lambda p: h5(p, images=np.zeros((N, 3, SIDE, SIDE), np.uint8)), "shape"),
    "image dtype": (lambda p: h5(p, images=np.zeros((N, SIDE, SIDE, 3), np.float32)), "uint8"),
    "label above 9": (lambda p: h5(p, ans=np.r_[np.zeros(N - 1), 10].astype(np.int16)), "outside 0-9"),
    "negative label": (lambda p: h5(p, ans=np.r_[-1, np.zeros(N - 1)].astype(np.int16)), "outside 0-9"),
    "float labels": (lambda p: h5(p, ans=np.zeros(N, np.float32)), "integer"),
    "lengths differ": (lambda p: h5(p, ra=np.zeros(N - 2)), "has 10 rows but `images` has 12"),
}


def run_cli(*args, preexec=None):
    return subprocess.run(
        [*(preexec or []), sys.executable, "-m", "astroreason.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_exit_2(result, word):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("astroreason: error: ") and word in lines[0], lines[0]


def assert_nothing_written(tmp_path, out):
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_file_is_one_line_and_exit_2(case, tmp_path):
    build, word = CASES[case]
    path = build(tmp_path / "g10.h5")
    out = tmp_path / "prepared"
    assert_one_line_exit_2(run_cli("data", "inspect", path, "--json"), word)
    assert_one_line_exit_2(run_cli("data", "prepare", path, "--out", out), word)
    assert_nothing_written(tmp_path, out)


def test_checksum_mismatch(tmp_path):
    path = h5(tmp_path / "g10.h5")
    out = tmp_path / "prepared"
    wrong = "0" * 64
    assert_one_line_exit_2(run_cli("data", "inspect", path, "--sha256", wrong), "checksum mismatch")
    assert_one_line_exit_2(run_cli("data", "prepare", path, "--out", out, "--sha256", wrong), "checksum mismatch")
    assert_one_line_exit_2(run_cli("data", "prepare", path, "--out", out, "--sha256", "xyz"), "64 hex digits")
    assert_nothing_written(tmp_path, out)
    # The right checksum passes, in either case of hex digits.
    import hashlib

    right = hashlib.sha256(path.read_bytes()).hexdigest().upper()
    assert run_cli("data", "inspect", path, "--sha256", right).returncode == 0


def test_unreadable_file(tmp_path):
    path = h5(tmp_path / "g10.h5")
    path.chmod(0)
    preexec = None
    if os.geteuid() == 0:
        # Root reads a mode-000 file through CAP_DAC_OVERRIDE; drop that capability (and DAC_READ_SEARCH) for the
        # command so that the permission check really bites, as it would for any other user.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: a mode-000 file stays readable")
        preexec = [
            setpriv,
            "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search",
        ]
        probe = subprocess.run([*preexec, "cat", str(path)], capture_output=True)
        if probe.returncode == 0:
            pytest.skip("cannot drop root's file-permission override here")
    out = tmp_path / "prepared"
    assert_one_line_exit_2(run_cli("data", "inspect", path, preexec=preexec), "permission denied")
    assert_one_line_exit_2(run_cli("data", "prepare", path, "--out", out, preexec=preexec), "permission denied")
    assert_nothing_written(tmp_path, out)


def test_bad_arguments_and_existing_out(tmp_path):
    path = h5(tmp_path / "g10.h5")
    out = tmp_path / "prepared"
    assert_one_line_exit_2(run_cli("data", "prepare", path, "--out", out, "--fractions", "0.5,0.6,0.1"), "fractions")
    assert_one_line_exit_2(run_cli("data", "prepare", path, "--out", out, "--fractions", "a,b"), "fractions")
    assert_one_line_exit_2(run_cli("data", "inspect", path, "--radius", "-1"), "radius")
    assert_nothing_written(tmp_path, out)
    # An --out that holds something else is refused and left as it was.
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_one_line_exit_2(run_cli("data", "prepare", path, "--out", out), "not a prepared directory")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

"""Seconds and peak memory of `astroreason data inspect` and `data prepare` on Galaxy10-sized files.

For each size (default 2,000, 8,000 and 17,736 rows, the last the full Galaxy10 DECaLS file) it draws a file in
Galaxy10 DECaLS's schema under a temporary directory: 256 x 256 x 3 uint8 images (a class's blob plus noise, so
every image is distinct), class-sorted with Galaxy10's class shares, random sky positions, and the traps scaled
to the size (at full size 59 exact duplicates, same pixels and position, with conflicting labels, and 18 near pairs
2-4.5 arcsec apart). Each command runs as the CLI in a fresh child process; its peak RSS is read from the child's
resource usage (os.wait4), its time is the child's wall clock (imports included). Before each command the file's
pages are evicted from the page cache (posix_fadvise), so it is read from disk (`--warm` keeps them). The files are
deleted after use.

    python bench/data_bench.py                        # 2000 8000 17736 rows; writes bench/results/data_bench.json
    python bench/data_bench.py --sizes 500 2000 --out /tmp/x.json

Disk: the full-size file is 3.25 GiB and its prepared directory 3.5 GB (plus as much again while it is written);
the bench checks free space first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FULL_ROWS = 17_736
SIDE = 256
CLASS_COUNTS = (1081, 1853, 2645, 2027, 334, 2043, 1829, 2628, 1423, 1873)  # Galaxy10 DECaLS, 17,736 rows
FULL_EXACT, FULL_NEAR = 59, 18  # conflicting exact duplicates and near pairs in the real file
BLOCK = 256  # rows drawn and written at a time


def class_counts(n: int) -> np.ndarray:
    """Galaxy10's class shares scaled to n rows (every class at least 2)."""
    counts = np.maximum(2, np.floor(np.asarray(CLASS_COUNTS) * n / FULL_ROWS).astype(int))
    counts[np.argmax(counts)] += n - counts.sum()
    return counts


def class_templates(side: int) -> np.ndarray:
    """One smooth uint8 blob per class (size, elongation, colour differ): (10, side, side, 3)."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side - 0.5
    out = []
    for k in range(10):
        angle, axis, width = k * 0.6, 1 + 0.3 * k, 0.05 + 0.012 * k
        u, v = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
        blob = np.exp(-(u**2 + (axis * v) ** 2) / (2 * width**2))
        colour = np.array([1.0, 0.8 + 0.02 * k, 0.6 + 0.04 * k], np.float32)
        out.append((200 * blob[..., None] * colour).astype(np.uint8))
    return np.stack(out)


def write_galaxy10_like(path: Path, n: int, seed: int = 0) -> dict:
    """Draw an n-row Galaxy10 DECaLS-schema file at `path`; returns what was planted (file rows)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), class_counts(n))
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    n_exact = max(1, round(FULL_EXACT * n / FULL_ROWS))
    n_near = max(1, round(FULL_NEAR * n / FULL_ROWS))
    rows = rng.permutation(n)
    # Exact duplicates: row b becomes a copy of row a (pixels and position), a's label differing from b's.
    exact = []
    for a in rows[: 4 * n_exact]:
        if len(exact) == n_exact:
            break
        b = int(rng.choice(np.flatnonzero(labels != labels[a])))
        if b not in rows[: 4 * n_exact] and all(b not in pair for pair in exact):
            exact.append((int(a), b))
    used = {r for pair in exact for r in pair}
    free = [int(r) for r in rows[4 * n_exact :] if r not in used]
    near = [(free[2 * i], free[2 * i + 1]) for i in range(n_near)]
    for a, b in exact:
        ra[b], dec[b] = ra[a], dec[a]
    for a, b in near:  # 2-4.5 arcsec apart, different pixels
        d, angle = rng.uniform(2, 4.5) / 3600, rng.uniform(0, 2 * np.pi)
        ra[b] = ra[a] + d * np.cos(angle) / np.cos(np.radians(dec[a]))
        dec[b] = dec[a] + d * np.sin(angle)
    copy_of = {b: a for a, b in exact}

    templates = class_templates(SIDE)
    with h5py.File(path, "w") as f:
        images = f.create_dataset("images", (n, SIDE, SIDE, 3), np.uint8)
        for start in range(0, n, BLOCK):
            stop = min(start + BLOCK, n)
            noise = rng.integers(0, 40, (stop - start, SIDE, SIDE, 3), dtype=np.uint8)
            images[start:stop] = templates[labels[start:stop]] + noise
        for b, a in copy_of.items():
            images[b] = images[a]
        f["ans"] = labels.astype(np.uint8)
        f["ra"], f["dec"] = ra, dec
        f["redshift"] = rng.uniform(0.01, 0.3, n)
        f["pxscale"] = np.full(n, 0.262)
    return {"exact_conflicting": len(exact), "near_pairs": len(near)}


def run_cli(args: list[str]) -> dict:
    """Run `astroreason ARGS` in a child process: its wall seconds and peak RSS."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    with tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "astroreason.cli", *args], stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT, env=env
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            tail = err.read().strip().splitlines()
            sys.exit(f"data_bench: astroreason {' '.join(args)} failed: {tail[-1] if tail else status}")
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024}  # ru_maxrss is KiB on Linux


def evict_from_page_cache(path: Path) -> None:
    """Drop this file's pages (only its own) from the page cache, so that the next command reads it from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def du_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def check_disk(workdir: Path, largest: int) -> None:
    need = 3 * largest * SIDE * SIDE * 3  # the file, the prepared views, and their staging copy
    free = shutil.disk_usage(workdir).free
    if free < need * 1.1:
        sys.exit(f"data_bench: {workdir} has {free / 2**30:.1f} GiB free, needs {need / 2**30:.1f} GiB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, FULL_ROWS], help="rows of each file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn files")
    parser.add_argument("--workdir", default=None, help="where the files go (default: a new temporary directory)")
    parser.add_argument(
        "--warm", action="store_true", help="leave the file in the page cache (default: evicted before each command)"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "data_bench.json"))
    args = parser.parse_args(argv)
    base = Path(args.workdir) if args.workdir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    check_disk(base, max(args.sizes))
    load_before = os.getloadavg()

    runs = []
    with tempfile.TemporaryDirectory(prefix="astroreason-data-bench-", dir=base) as tmp:
        for n in args.sizes:
            path, out = Path(tmp) / f"galaxy10_like_{n}.h5", Path(tmp) / f"prepared_{n}"
            t = time.perf_counter()
            planted = write_galaxy10_like(path, n, args.seed)
            print(f"n={n}: drew {path.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - t:.0f} s {planted}")
            for step, cli in (
                ("inspect", ["data", "inspect", str(path)]),
                ("prepare", ["data", "prepare", str(path), "--out", str(out)]),
            ):
                if not args.warm:
                    evict_from_page_cache(path)
                r = run_cli(cli)
                r.update(step=step, n=n, file_gib=path.stat().st_size / 2**30, planted=planted)
                r["ms_per_row"] = 1000 * r["seconds"] / n
                if step == "prepare":
                    r["prepared_gib"] = du_bytes(out) / 2**30
                    r["split_rows"] = {
                        k: len(v) for k, v in json.loads((out / "manifest.json").read_text())["rows"].items()
                    }
                    r["dropped_groups"] = len(json.loads((out / "manifest.json").read_text())["dropped"])
                runs.append(r)
                print(
                    f"  {step:8s} {r['seconds']:6.1f} s ({r['ms_per_row']:.2f} ms/row), peak RSS {r['peak_rss_mib']:.0f} MiB"
                )
            shutil.rmtree(out)
            path.unlink()

    ratios = {}
    smallest = min(args.sizes)
    for step in ("inspect", "prepare"):
        ref = next(r for r in runs if r["step"] == step and r["n"] == smallest)
        ratios[step] = {
            str(r["n"]): {
                "seconds_per_row_ratio": r["ms_per_row"] / ref["ms_per_row"],
                "peak_rss_ratio": r["peak_rss_mib"] / ref["peak_rss_mib"],
            }
            for r in runs
            if r["step"] == step
        }
        for n, ratio in ratios[step].items():
            print(
                f"{step} n={n} vs n={smallest}: time per row x{ratio['seconds_per_row_ratio']:.2f}, "
                f"peak RSS x{ratio['peak_rss_ratio']:.2f}"
            )
    result = {
        "bench": "data_bench",
        "command": "python bench/data_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "side_px": SIDE,
        "sizes": args.sizes,
        "seed": args.seed,
        "page_cache": "warm" if args.warm else "the file evicted from the page cache before each command",
        "runs": runs,
        "ratios_vs_smallest": ratios,
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "note": "shared machine: other processes ran alongside (load average above)",
        },
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

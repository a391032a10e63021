"""Seconds and peak memory of `astroreason data inspect` and `data prepare` against the time to read the file.

For each size (default 2,000 and 17,736 rows, the latter the full Galaxy10 DECaLS file) and each layout of the
`images` dataset (default all four) it draws a file in Galaxy10 DECaLS's schema under a temporary directory:

    contiguous   one contiguous, uncompressed block
    chunked      one image per chunk, uncompressed
    gzip_auto    gzip (level 4) with h5py's automatic chunks (chunks=True: 555 x 16 x 16 x 1 at full size)
    gzip_image   gzip (level 4), one image per chunk, (1, 256, 256, 3)

Images are 256 x 256 x 3 uint8: a class's blob on a dark sky plus uniform 0-39 noise, so every image is distinct
and gzip works as hard as on the real file: the drawn files are 0.71 (gzip_auto) and 0.73 (gzip_image) of their
pixels' size, the real Galaxy10_DECals.h5 0.73 (2.54 GB for 3.49 GB). Rows are class-sorted with Galaxy10's class
shares, at random sky positions, with the traps scaled to the size (at full size 59 exact duplicates, same pixels
and position, with conflicting labels, and 18 near pairs 2-4.5 arcsec apart). The same size and seed give the same
pixels in every layout.

For each file it measures, in the same run: the read time (every image read and decompressed once, in order, with
h5py in this process, whole chunks at a time: what reading the file costs), then `data inspect` and `data prepare`,
each as the CLI in a fresh child process: its wall clock (imports included) and peak RSS (os.wait4). Before each
step the file's pages are evicted from the page cache (posix_fadvise), so it is read from disk (`--warm` keeps
them). It prints per layout the seconds, the ratio to the read time, the target (inspect within max(10 s, 1.3 x
read), prepare within max(40 s, 2 x read), peak RSS within 1 GiB) and pass or FAIL. The files are deleted after use.

    python bench/data_bench.py                        # 2000 and 17736 rows; writes bench/results/data_bench.json
    python bench/data_bench.py --sizes 2000 --layouts gzip_auto gzip_image --out /tmp/x.json

Disk and time: a full-size file is 3.25 GiB (2.3 GiB compressed) and its prepared directory 3.5 GB, plus as much
again while it is written; one layout at a time. Drawing a full-size gzip file takes ~5 minutes (one core).
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
MAX_RSS_MIB = 1024  # peak RSS allowed to either command


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


LAYOUTS = {  # name -> h5py create_dataset keywords for `images` (chunks=(1, ...): one image per chunk)
    "contiguous": {},
    "chunked": {"chunks": (1, SIDE, SIDE, 3)},
    "gzip_auto": {"chunks": True, "compression": "gzip"},
    "gzip_image": {"chunks": (1, SIDE, SIDE, 3), "compression": "gzip"},
}


def row_noise(seed: int, row: int) -> np.ndarray:
    """The noise of one row, drawn from its own stream: a copied row is redrawn rather than read back."""
    return np.random.default_rng([seed, row]).integers(0, 40, (SIDE, SIDE, 3), dtype=np.uint8)


def write_galaxy10_like(path: Path, n: int, seed: int = 0, layout: str = "contiguous") -> dict:
    """Draw an n-row Galaxy10 DECaLS-schema file at `path` with `images` stored as `layout`; returns what was
    planted (file rows). The same n and seed give the same pixels in every layout."""
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
    pixels_of = np.arange(n)  # whose pixels each row shows: a copy shows its original's
    for a, b in exact:
        pixels_of[b] = a

    templates = class_templates(SIDE)
    with h5py.File(path, "w") as f:
        images = f.create_dataset("images", (n, SIDE, SIDE, 3), np.uint8, **LAYOUTS[layout])
        # Whole chunks at a time: a compressed chunk written in parts is decompressed and recompressed per part.
        step = images.chunks[0] * max(1, BLOCK // images.chunks[0]) if images.chunks else BLOCK
        for start in range(0, n, step):
            src = pixels_of[start : min(start + step, n)]
            images[start : start + len(src)] = templates[labels[src]] + np.stack([row_noise(seed, r) for r in src])
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


def read_seconds(path: Path) -> float:
    """Seconds to read and decompress every image once, in order: h5py in this process, whole chunks at a time
    (about 64 rows, a multiple of the chunk's rows), nothing else done with them. What reading the file costs."""
    t = time.perf_counter()
    with h5py.File(path, "r") as f:
        images = f["images"]
        chunk_rows = (images.chunks or (1,))[0]
        step = max(1, 64 // chunk_rows) * chunk_rows
        for start in range(0, len(images), step):
            images[start : start + step]
    return time.perf_counter() - t


def targets(read: float) -> dict:
    """The targets, in seconds, for a file whose images take `read` seconds to read."""
    return {"inspect": max(10.0, 1.3 * read), "prepare": max(40.0, 2.0 * read)}


def bench_file(path: Path, out: Path, n: int, layout: str, planted: dict, warm: bool) -> dict:
    """Read, inspect and prepare one file, each from disk unless `warm`; the record of the three."""
    if not warm:
        evict_from_page_cache(path)
    record = {"layout": layout, "n": n, "file_gib": path.stat().st_size / 2**30, "planted": planted}
    record["compression_ratio"] = path.stat().st_size / (n * SIDE * SIDE * 3)
    record["read_seconds"] = read_seconds(path)
    goal = targets(record["read_seconds"])
    for step, cli in (
        ("inspect", ["data", "inspect", str(path)]),
        ("prepare", ["data", "prepare", str(path), "--out", str(out)]),
    ):
        if not warm:
            evict_from_page_cache(path)
        r = run_cli(cli)
        r["ms_per_row"] = 1000 * r["seconds"] / n
        r["ratio_to_read"] = r["seconds"] / record["read_seconds"]
        r["target_seconds"] = goal[step]
        r["passes"] = r["seconds"] <= goal[step] and r["peak_rss_mib"] <= MAX_RSS_MIB
        record[step] = r
    manifest = json.loads((out / "manifest.json").read_text())
    record["prepare"]["prepared_gib"] = du_bytes(out) / 2**30
    record["prepare"]["split_rows"] = {k: len(v) for k, v in manifest["rows"].items()}
    record["prepare"]["dropped_groups"] = len(manifest["dropped"])
    return record


def print_row(r: dict) -> None:
    i, p = r["inspect"], r["prepare"]
    print(
        f"{r['n']:>6} {r['layout']:<11} {r['compression_ratio']:5.2f} {r['read_seconds']:7.1f} | "
        f"{i['seconds']:9.1f} {i['ratio_to_read']:6.2f} {i['target_seconds']:6.1f} {'pass' if i['passes'] else 'FAIL'} "
        f"{i['peak_rss_mib']:4.0f} | {p['seconds']:9.1f} {p['ratio_to_read']:6.2f} {p['target_seconds']:6.1f} "
        f"{'pass' if p['passes'] else 'FAIL'} {p['peak_rss_mib']:4.0f}",
        flush=True,
    )


HEADER = (
    "  rows layout     file/px  read s | inspect s  /read target      MiB | prepare s  /read target      MiB\n"
    "  (targets: inspect max(10 s, 1.3 x read), prepare max(40 s, 2 x read), peak RSS 1 GiB)"
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, FULL_ROWS], help="rows of each file")
    parser.add_argument(
        "--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS), help="how `images` is stored"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn files")
    parser.add_argument("--workdir", default=None, help="where the files go (default: a new temporary directory)")
    parser.add_argument(
        "--warm", action="store_true", help="leave the file in the page cache (default: evicted before each step)"
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
            for layout in args.layouts:
                path, out = Path(tmp) / f"galaxy10_like_{n}_{layout}.h5", Path(tmp) / f"prepared_{n}_{layout}"
                t = time.perf_counter()
                planted = write_galaxy10_like(path, n, args.seed, layout)
                print(f"n={n} {layout}: drew {path.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - t:.0f} s")
                runs.append(bench_file(path, out, n, layout, planted, args.warm))
                print_row(runs[-1])
                shutil.rmtree(out)
                path.unlink()
    print(HEADER)
    for r in runs:
        print_row(r)
    result = {
        "bench": "data_bench",
        "command": "python bench/data_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "side_px": SIDE,
        "sizes": args.sizes,
        "layouts": {name: {k: str(v) for k, v in LAYOUTS[name].items()} for name in args.layouts},
        "seed": args.seed,
        "page_cache": "warm" if args.warm else "the file evicted from the page cache before each step",
        "targets": "inspect <= max(10 s, 1.3 x read), prepare <= max(40 s, 2 x read), peak RSS <= 1 GiB",
        "all_pass": all(r[step]["passes"] for r in runs for step in ("inspect", "prepare")),
        "runs": runs,
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "h5py": h5py.__version__,
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

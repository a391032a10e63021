"""Images per second and peak memory of `inspect` and `prepare` on surrogate files of two sizes, side by side.

Each measurement is a fresh subprocess (the same code the command runs), so its peak RSS is its own: the parent
reads it from the child's resource usage (os.wait4). A child that only imports the modules gives the fixed part.
The memory target: the peak of the larger file within 1.2x of the smaller one's, i.e. the reader never holds the
whole `images` array and nothing else grows with the file.

    python bench/data_bench.py                       # 2,000 and 8,000 images at 128 px (files cached in --workdir)
    python bench/data_bench.py --sizes 2000 8000 --px 256

Prints a table and the peak-memory ratio, and writes bench/results/data_bench.json.
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

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.2

# What each child runs: the library calls behind `astroreason data inspect|prepare`.
CHILD = r"""
import json, sys, time
step, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
from astroreason.data.inspect import inspect_file
from astroreason.data.splits import prepare
# Imported up front in every child: one-off import time stays out of images/s, and the import-only child's peak
# is the fixed part of every other child's.
import astropy.coordinates, datasets, PIL.Image, scipy.sparse.csgraph  # noqa: E401,F401
t = time.perf_counter()
if step == "inspect":
    inspect_file(path)
elif step == "prepare":
    prepare(path, out, seed=0)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def run_child(step: str, path: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
    }
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        wall = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, step, str(path), str(out)], stdout=so, stderr=se, cwd=ROOT, env=env
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - wall
        proc.returncode = os.waitstatus_to_exitcode(status)
        so.seek(0)
        se.seek(0)
        stdout, stderr = so.read(), se.read()
    raise_if_failed(proc.returncode, step, stderr)
    result = json.loads(stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    # ru_maxrss is in KiB on Linux.
    return {"seconds": result["seconds"], "wall_seconds": wall, "peak_rss_mib": usage.ru_maxrss / 1024}


def raise_if_failed(code: int, step: str, stderr: str) -> None:
    if code != 0:
        sys.exit(
            f"data_bench: {step} failed (exit {code}): {stderr.strip().splitlines()[-1] if stderr.strip() else ''}"
        )


def surrogate(workdir: Path, n: int, px: int, seed: int) -> tuple[Path, float | None]:
    """A class-sorted surrogate of n rows, made once and kept in workdir; (path, seconds it took or None)."""
    from astroreason.data.surrogate import synthesize

    path = workdir / f"surrogate_n{n}_px{px}_seed{seed}.h5"
    if path.is_file():
        return path, None
    t = time.perf_counter()
    synthesize(path, n=n, size=px, seed=seed, sort_by_class=True, progress=True)
    return path, time.perf_counter() - t


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[2000, 8000], help="rows of the two files")
    parser.add_argument(
        "--px",
        type=int,
        default=128,
        help="image side (default 128: rendering 10,000 galaxies at 256 px takes ~30 min on 2 cores)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir",
        default=str(Path(tempfile.gettempdir()) / "astroreason-data-bench"),
        help="where the surrogate files are made once and kept",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "data_bench.json"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    files = {}
    for n in args.sizes:
        path, took = surrogate(workdir, n, args.px, args.seed)
        files[n] = path
        print(
            f"surrogate n={n} px={args.px}: {path} ({path.stat().st_size / 2**20:.0f} MiB)"
            + (f", made in {took:.0f} s" if took else ", cached")
        )

    rows = []
    baseline = run_child("import", files[args.sizes[0]], workdir / "unused")
    print(f"import-only child: peak RSS {baseline['peak_rss_mib']:.0f} MiB")
    for step in ("inspect", "prepare"):
        for n in args.sizes:  # side by side, in one run
            r = run_child(step, files[n], workdir / f"prepared_n{n}")
            r.update(step=step, n=n, images_per_s=n / r["seconds"], file_mib=files[n].stat().st_size / 2**20)
            rows.append(r)
            print(
                f"{step:8s} n={n:6d}: {r['images_per_s']:8.0f} images/s ({r['seconds']:.1f} s), "
                f"peak RSS {r['peak_rss_mib']:.0f} MiB, file {r['file_mib']:.0f} MiB"
            )

    small, large = args.sizes
    ratios = {}
    for step in ("inspect", "prepare"):
        a = next(r for r in rows if r["step"] == step and r["n"] == small)
        b = next(r for r in rows if r["step"] == step and r["n"] == large)
        ratios[step] = {
            "peak_rss_ratio": b["peak_rss_mib"] / a["peak_rss_mib"],
            "growth_above_imports_mib": [
                a["peak_rss_mib"] - baseline["peak_rss_mib"],
                b["peak_rss_mib"] - baseline["peak_rss_mib"],
            ],
        }
        ok = "meets" if ratios[step]["peak_rss_ratio"] <= TARGET_RATIO else "MISSES"
        print(
            f"{step}: peak memory ratio n={large} / n={small} = {ratios[step]['peak_rss_ratio']:.3f} "
            f"({ok} the {TARGET_RATIO} target; above the imports: "
            f"{ratios[step]['growth_above_imports_mib'][0]:.0f} -> {ratios[step]['growth_above_imports_mib'][1]:.0f} MiB)"
        )

    result = {
        "bench": "data_bench",
        "px": args.px,
        "sizes": args.sizes,
        "seed": args.seed,
        "target_ratio": TARGET_RATIO,
        "import_only_peak_rss_mib": baseline["peak_rss_mib"],
        "runs": rows,
        "ratios": ratios,
        "meets_target": all(r["peak_rss_ratio"] <= TARGET_RATIO for r in ratios.values()),
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "load_average_1m": os.getloadavg()[0],
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

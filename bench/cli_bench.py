"""Wall time of `astroreason --help` and of every sub-command's `--help`, and whether the commands that need no model
import torch or transformers.

Each measurement is a fresh interpreter (`python -m astroreason.cli ... --help`, the same start-up a user pays),
repeated `--repeats` times; the table shows the median. The target: every line under 1 s. The torch column comes
from a child that runs the command and then reports which of torch/transformers are in `sys.modules`.

    python bench/cli_bench.py                 # 5 repeats
    python bench/cli_bench.py --repeats 9

Prints a table and writes bench/results/cli_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.0
NO_MODEL = ("data inspect", "ledger verify", "budget status", "sweep status")
HEAVY = ("torch", "transformers")
PROBE = (
    "import sys\nfrom astroreason.cli import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    f"print('HEAVY', ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
)


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def commands() -> list[str]:
    """Every command path (`data`, `data inspect`, ...), read from the parser itself."""
    sys.path.insert(0, str(ROOT))
    from astroreason.cli import build_parser

    def walk(parser, path):
        yield " ".join(path)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, (*path, name))

    return list(walk(build_parser(), ()))


def help_seconds(command: str, repeats: int) -> float:
    """Median wall time of `astroreason COMMAND --help` in fresh interpreters."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "astroreason.cli", *command.split(), "--help"],
            env=env(),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def heavy_imports(command: str) -> list[str]:
    """Which of torch/transformers `astroreason COMMAND --help` imported."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *command.split(), "--help"], env=env(), cwd=ROOT, capture_output=True, text=True
    )
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("HEAVY "))
    return [m for m in line[len("HEAVY ") :].split(",") if m]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh interpreters per command (default 5)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cli_bench.json"), help="JSON to write")
    args = parser.parse_args()

    rows = []
    for command in commands():
        seconds = help_seconds(command, args.repeats)
        heavy = heavy_imports(command)
        rows.append(
            {
                "command": f"astroreason {command}".strip() + " --help",
                "median_s": round(seconds, 3),
                "imports": heavy,
                "no_model": command in NO_MODEL,
                "under_target": seconds < TARGET_S,
            }
        )
        print(f"{rows[-1]['command']:<42} {seconds:6.3f} s   {'imports ' + ','.join(heavy) if heavy else 'no torch'}")
    slowest = max(r["median_s"] for r in rows)
    heavy_no_model = [r["command"] for r in rows if r["no_model"] and r["imports"]]
    print(
        f"slowest {slowest:.3f} s (target < {TARGET_S:g} s); no-model commands importing torch: "
        f"{heavy_no_model or 'none'}"
    )
    result = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "target_s": TARGET_S,
        "slowest_s": slowest,
        "all_under_target": slowest < TARGET_S,
        "no_model_commands_importing_torch": heavy_no_model,
        "commands": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["all_under_target"] and not heavy_no_model else 1


if __name__ == "__main__":
    sys.exit(main())

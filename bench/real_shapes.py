"""One optimizer step of every shipped GPU config, in both arms, on a model of its checkpoint's real widths with the
depth cut: what the CI test on tiny models (tests/test_shipped_configs.py) cannot see, such as a LoRA target or a
code-token row at the real hidden size and the 151,936-row vocabulary, or a deepstack merger at Qwen3-VL's widths.

For each checkpoint a config names (`astroreason.models.shapes`) it builds, offline and with random weights, a model
of the published widths with `--layers` language-model layers and `--blocks` vision blocks (the family's tiny
tokenizer and processor), then runs `recipes/sft.py` or `recipes/grpo.py` as a subprocess with the config and only
what a CPU needs changed: the checkpoint, data and codec paths, one step, float32 weights (`--dtype`) and no bf16
autocast, no vLLM, and a smaller
batch (`--batch`, `--generations`, `--completion-length`: the widths are the point here, the CI test runs the
configs' own batch shapes). The data is the GalSim surrogate at 256 px; the token arm uses a built-in codec of 4096
codes. A run that would not fit this machine's memory (weights, gradients and AdamW states of the trainable
parameters, in `--dtype`) runs in `--fallback-dtype` (the configs' own bfloat16: half the bytes, many times the
time) or, if that does not fit either, is recorded as not run, with the bytes it needs. Runs of configs and arms not
selected this time are kept from the existing record when it was made with the same cut and changes, so families can
be run one at a time.

    python bench/real_shapes.py                                  # writes bench/results/real_shapes.json
    python bench/real_shapes.py --configs 'qwen3_vl_4b/*' --arms image
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
sys.path.insert(0, str(ROOT))
for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(name, "1")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["qwen*/*"], help="globs under recipes/configs/")
    parser.add_argument("--arms", nargs="+", default=["image", "tokens"], choices=["image", "tokens"])
    parser.add_argument("--layers", type=int, default=3, help="language-model layers of the cut model")
    parser.add_argument("--blocks", type=int, default=4, help="vision blocks of the cut model")
    parser.add_argument("--batch", type=int, default=2, help="per_device_train_batch_size of every run")
    parser.add_argument("--generations", type=int, default=2, help="GRPO num_generations")
    parser.add_argument("--completion-length", type=int, default=32, help="GRPO max_completion_length")
    parser.add_argument("--work", type=Path, default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "real_shapes.json")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one run may take")
    parser.add_argument(
        "--dtype", default="float32", help="weights' dtype (the configs' bfloat16 is many times slower on a CPU)"
    )
    parser.add_argument(
        "--fallback-dtype",
        default="bfloat16",
        help="weights' dtype of a run that does not fit this machine's memory in --dtype ('none': record it not run)",
    )
    return parser.parse_args(argv)


def build_material(work: Path) -> tuple[Path, Path]:
    """The surrogate at Galaxy10's 256 px, prepared, and a built-in codec with its token cache."""
    from astroreason.cli import main
    from astroreason.data.splits import prepare
    from astroreason.data.surrogate import synthesize

    data = work / "prepared"
    codec = work / "codec"
    if not (codec / "config.json").exists():
        source = synthesize(work / "surrogate.h5", n=120, size=256, seed=0, flux=False)
        prepare(source, data, seed=0)
        train = ["--size", "16", "--levels", "8,8,8,8", "--hidden", "8", "--steps", "3", "--batch-size", "8"]
        main(["tokens", "train", "--data", str(data), "--out", str(codec), *train, "--max-images", "32"])
        main(["tokens", "encode", "--data", str(data), "--codec", str(codec)])
    return data, codec


def config_values(config: Path) -> dict:
    import yaml

    return yaml.safe_load(config.read_text())


def trainable_parameters(shape, values: dict) -> tuple[int, int]:
    """(all parameters, trainable ones) of the cut model, counted on the meta device with the config's LoRA."""
    from astroreason.models.shapes import meta_model

    lora = None
    if values.get("use_peft"):
        lora = dict(r=values["lora_r"], lora_alpha=values["lora_alpha"], target_modules=values["lora_target_modules"])
    model = meta_model(shape, lora=lora)
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.parameters() if p.requires_grad)


def bytes_needed(total: int, trainable: int, dtype_bytes: int) -> int:
    """Weights, and for the trainable parameters gradients and AdamW's two states, all in the model's dtype (the CPU
    run has no fp32 master copy); activations come on top."""
    return total * dtype_bytes + trainable * 3 * dtype_bytes


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def run_key(run: dict) -> tuple[str, str]:
    return run["config"], run["arm"]


def kept_runs(out: Path, record: dict, configs: list[Path], arms: list[str]) -> list[dict]:
    """The runs of an existing record at `out` that this invocation does not redo, if that record was made with the
    same cut and the same changes to the configs (otherwise its runs are not comparable and are dropped)."""
    if not out.exists():
        return []
    old = json.loads(out.read_text())
    if old.get("cut") != record["cut"] or old.get("changed") != record["changed"]:
        return []
    redone = {(str(c.relative_to(ROOT)), arm) for c in configs for arm in arms}
    return [run for run in old.get("runs", []) if run_key(run) not in redone]


def run_argv(
    config: Path, arm: str, model_dir: Path, data: Path, codec: Path, out: Path, args, *, dtype: str
) -> list[str]:
    grpo = config.name.startswith("grpo")
    argv = [sys.executable, str(ROOT / "recipes" / ("grpo.py" if grpo else "sft.py")), "--config", str(config)]
    argv += ["--model_name_or_path", str(model_dir), "--data_dir", str(data), "--output_dir", str(out)]
    argv += ["--max_steps", "1", "--save_strategy", "no", "--report_to", "none", "--bf16", "false", "--use_cpu", "true"]
    argv += ["--dtype", dtype]
    argv += ["--per_device_train_batch_size", str(args.batch), "--gradient_accumulation_steps", "1"]
    if grpo:
        argv += ["--use_vllm", "false", "--num_generations", str(args.generations)]
        argv += ["--max_completion_length", str(args.completion_length)]
    if arm == "tokens":
        return argv + ["--modality", "tokens", "--codec", str(codec)]
    return argv + ["--modality", "image"]


def run_one(argv: list[str], timeout: int) -> dict:
    """Run a recipe; its wall time, peak RSS (the child's, from os.wait4) and, on failure, its last lines."""
    start = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.5)
        log.seek(0)
        lines = [line.rstrip() for line in log if line.strip() and "Warning" not in line]
    rc = os.waitstatus_to_exitcode(status)
    record = {"rc": rc, "seconds": round(time.perf_counter() - start, 1), "peak_rss_gib": usage.ru_maxrss / 2**20}
    saved = [line for line in lines if line.startswith("Model saved to")]
    record["ok"] = rc == 0 and bool(saved) and saved[-1].endswith("after 1 steps (1 process)")
    if not record["ok"]:
        record["tail"] = lines[-5:]
    return record


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from astroreason.io import write_json_atomic
    from astroreason.models.shapes import build_shaped_model, checkpoint_shape, cut_depth

    torch.set_num_threads(os.cpu_count() or 1)
    # In the order the globs are given (each glob's matches sorted), each config once.
    configs = list(
        dict.fromkeys(c for g in args.configs for c in sorted((ROOT / "recipes" / "configs").glob(g + ".yaml")))
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="real_shapes-"))
    work.mkdir(parents=True, exist_ok=True)
    data, codec = build_material(work)
    record = {
        "bench": "real_shapes",
        "command": "python bench/real_shapes.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gib": available_bytes() / 2**30,
            "python": platform.python_version(),
        },
        "cut": {"layers": args.layers, "blocks": args.blocks},
        "changed": {
            "per_device_train_batch_size": args.batch,
            "gradient_accumulation_steps": 1,
            "num_generations": args.generations,
            "max_completion_length": args.completion_length,
            "max_steps": 1,
            "bf16": False,
            "dtype": args.dtype,
            "use_vllm": False,
        },
        "runs": [],
    }
    kept = kept_runs(args.out, record, configs, args.arms)
    models: dict[str, Path] = {}
    for config in configs:
        values = config_values(config)
        name = values["model_name_or_path"]
        shape = cut_depth(checkpoint_shape(name), args.layers, args.blocks)
        dtype_name = args.dtype
        if name not in models:
            models[name] = build_shaped_model(
                work / "models" / name.split("/")[-1], shape, dtype=getattr(torch, dtype_name)
            )
        total, trainable = trainable_parameters(shape, values)
        need = bytes_needed(total, trainable, torch.finfo(getattr(torch, dtype_name)).bits // 8)
        if need > 0.9 * available_bytes() and args.fallback_dtype != "none":
            dtype_name = args.fallback_dtype
            need = bytes_needed(total, trainable, torch.finfo(getattr(torch, dtype_name)).bits // 8)
        for arm in args.arms:
            run = {
                "config": str(config.relative_to(ROOT)),
                "arm": arm,
                "checkpoint": name,
                "dtype": f"torch.{dtype_name}",
            }
            run.update(parameters=total, trainable=trainable, need_gib=need / 2**30)
            if need > 0.9 * available_bytes():
                run.update(
                    ok=None,
                    not_run=f"needs {need / 2**30:.1f} GiB before activations, {available_bytes() / 2**30:.1f} GiB free",
                )
            else:
                out = work / "runs" / f"{config.parent.name}-{config.stem}-{arm}"
                argv = run_argv(config, arm, models[name], data, codec, out, args, dtype=dtype_name)
                run.update(run_one(argv, args.timeout))
                shutil.rmtree(out, ignore_errors=True)
            record["runs"].append(run)
            write_json_atomic(args.out, {**record, "runs": sorted(kept + record["runs"], key=run_key)})
            state = "ok" if run["ok"] else ("not run" if run["ok"] is None else "FAILED")
            print(
                f"{run['config']:<45} {arm:<7} {state:<8} {run.get('seconds', '-')!s:>7} s  "
                f"{run.get('peak_rss_gib', 0):5.1f} GiB peak  {run.get('not_run', '')}",
                flush=True,
            )
    record["runs"] = sorted(kept + record["runs"], key=run_key)
    failed = [r for r in record["runs"] if r["ok"] is False]
    print(
        f"{len(record['runs'])} runs: {sum(r['ok'] is True for r in record['runs'])} ok, {len(failed)} failed, "
        f"{sum(r['ok'] is None for r in record['runs'])} not run; written to {args.out}"
    )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

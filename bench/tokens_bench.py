"""Benchmark of the token arm: encode throughput of the built-in codec, and LM tokens per code of each rendering.

    python bench/tokens_bench.py [--config tokenizers/fsq_rgb_96.json] [--images 4096] [--repeats 3]

1. Throughput: the codec of `--config` (seeded, untrained: the arithmetic does not depend on the weights) encodes
   `--images` random uint8 RGB images at its input size (96 px: no resize), in batches of 256, `--repeats` times.
   Reported: images/s of the best and the median repeat (wall clock), images per CPU-second of the process, and the
   time those rates give for Galaxy10's 17,736 images (target: under 60 s on this 2-core CPU). Other processes share
   the CPU; the CPU-time figure says what the two cores would do alone (assuming both threads stay busy).
2. Tokens per code: 64 random 24x24 grids of ids uniform in [0, vocab) rendered each way, counted with the tiny
   model's tokenizer (byte-level BPE with Qwen2's pre-tokenizer: digits split one by one, as in Qwen2/2.5/3), and
   with the special code tokens added for `special` (target <= 1.01; integers-as-text about 5-6).

Prints the figures and writes bench/results/tokens_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from astroreason.io import write_json_atomic
from astroreason.models import train_tokenizer
from astroreason.tokens.cost import rendering_cost
from astroreason.tokens.fsq import FSQCodec, FSQConfig
from astroreason.tokens.render import RENDERINGS

ROOT = Path(__file__).resolve().parents[1]
GALAXY10_ROWS = 17736
TARGET_SECONDS = 60.0


def throughput(codec: FSQCodec, n_images: int, repeats: int, batch_size: int = 256) -> dict:
    size = codec.input_spec.size
    images = np.random.default_rng(0).integers(0, 256, size=(n_images, size, size, 3), dtype=np.uint8)
    codec.encode(images[:batch_size])  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, n_images, batch_size):
            codec.encode(images[start : start + batch_size])
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    best, median = n_images / min(walls), n_images / statistics.median(walls)
    per_cpu_second = n_images / statistics.median(cpus)
    threads = torch.get_num_threads()
    return {
        "images_timed": n_images,
        "repeats": repeats,
        "batch_size": batch_size,
        "input": f"random uint8 RGB {size}x{size} (the codec's input size, no resize)",
        "wall_seconds": [round(w, 3) for w in walls],
        "cpu_seconds": [round(c, 3) for c in cpus],
        "images_per_s_best": round(best, 1),
        "images_per_s_median": round(median, 1),
        "images_per_cpu_s": round(per_cpu_second, 1),
        "torch_threads": threads,
        "galaxy10_seconds_best": round(GALAXY10_ROWS / best, 1),
        "galaxy10_seconds_median": round(GALAXY10_ROWS / median, 1),
        "galaxy10_seconds_if_cores_free": round(GALAXY10_ROWS / (per_cpu_second * threads), 1),
        "extrapolated_from": f"{n_images} images to {GALAXY10_ROWS}",
        "load_average_before_after": None,
    }


def tokens_per_code(vocab_size: int, grid: tuple[int, int], n: int = 64) -> list[dict]:
    tokenizer = train_tokenizer(1024)  # the tiny model's tokenizer (Qwen2's pre-tokenizer), built offline
    codes = np.random.default_rng(0).integers(0, vocab_size, size=(n, *grid))
    return [rendering_cost(codes, r, tokenizer, vocab_size=vocab_size).to_json() for r in RENDERINGS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "tokenizers" / "fsq_rgb_96.json"), help="codec config JSON")
    parser.add_argument("--images", type=int, default=4096, help="images to time (extrapolated to 17,736)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "tokens_bench.json"))
    args = parser.parse_args()

    config_file = json.loads(Path(args.config).read_text())
    config = FSQConfig.from_json(config_file.get("config", config_file))
    torch.manual_seed(0)
    codec = FSQCodec(config, name=Path(args.config).stem)
    print(f"codec: {codec.describe()} ({sum(p.numel() for p in codec.model.parameters())} parameters)")

    load_before = os.getloadavg()
    speed = throughput(codec, args.images, args.repeats)
    speed["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    costs = tokens_per_code(codec.vocab_size, codec.grid_shape)

    print(
        f"encode: {speed['images_per_s_best']} img/s best, {speed['images_per_s_median']} img/s median "
        f"(wall, {args.images} images x {args.repeats}); {speed['images_per_cpu_s']} img per CPU-second; "
        f"load average {speed['load_average_before_after'][0]} -> {speed['load_average_before_after'][1]} "
        f"on {os.cpu_count()} CPUs"
    )
    print(
        f"Galaxy10 ({GALAXY10_ROWS} images): {speed['galaxy10_seconds_best']} s at the best rate, "
        f"{speed['galaxy10_seconds_median']} s at the median, {speed['galaxy10_seconds_if_cores_free']} s if "
        f"{speed['torch_threads']} threads had the cores to themselves (target < {TARGET_SECONDS:.0f} s)"
    )
    for c in costs:
        print(
            f"{c['rendering']:<8} {c['tokens_per_code']:.3f} LM tokens/code  {c['lm_tokens_mean']:.1f} per galaxy "
            f"({c['codes_per_galaxy']} codes)"
        )
    result = {
        "codec": {
            "config": args.config,
            "description": codec.describe(),
            "vocab_size": codec.vocab_size,
            "grid_shape": list(codec.grid_shape),
        },
        "encode": speed,
        "meets_galaxy10_target_best": speed["galaxy10_seconds_best"] < TARGET_SECONDS,
        "tokens_per_code": {c["rendering"]: c for c in costs},
        "tokenizer": "tiny model tokenizer (astroreason.models.train_tokenizer(1024); Qwen2 pre-tokenizer)",
        "codes": "64 grids of ids uniform in [0, vocab)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
    }
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

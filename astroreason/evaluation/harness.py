"""The evaluation harness: a model + a prepared split -> per-sample JSONL (cached by content hash) -> metrics with
intervals -> `result.json` and one final `RESULT {json}` line.

A sample's cache key hashes everything that decides its answer: the exact prompt (template and, for the token arm, the
token text), the image's pixels, the checkpoint's weights and the sampling settings. A killed run resumes without
re-asking a finished sample, and a changed checkpoint at the same path is never served from the cache.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError
from ..io import sha256_bytes, sha256_json, write_json_atomic
from ..provenance import provenance
from .backends import SamplingSettings


@dataclass
class EvalConfig:
    """One evaluation run.

    Args:
        model: Checkpoint directory (or Hub name) of the model to evaluate.
        data_dir: Prepared split directory (`astroreason data prepare`).
        split: Split to evaluate.
        modality: `image` or `tokens`.
        codec: Codec directory for the token arm.
        rendering: Token rendering for the token arm.
        image_size: Side in pixels images are resized to (as in training).
        output_dir: Where `samples.jsonl` and `result.json` go; rerunning into it resumes.
        max_samples: Evaluate only the first N rows of the split (rows are a seeded shuffle).
        batch_size: Prompts per generate call.
        max_new_tokens: Completion budget per sample.
        temperature: 0 for greedy decoding.
        seed: Sampling seed.
        n_boot: Bootstrap resamples for the intervals.
    """

    model: str = ""
    data_dir: str = "runs/demo/prepared"
    split: str = "test"
    modality: str = "image"
    codec: str | None = None
    rendering: str = "ints"
    image_size: int = 112
    output_dir: str = "runs/eval"
    max_samples: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 32
    temperature: float = 0.0
    seed: int = 0
    n_boot: int = field(default=1000)

    def sampling(self) -> SamplingSettings:
        return SamplingSettings(max_new_tokens=self.max_new_tokens, temperature=self.temperature, seed=self.seed)


def model_fingerprint(model: str) -> str:
    """The weights hash of a local checkpoint (a changed checkpoint at the same path gets a new key)."""
    from ..models import weights_hash

    if not Path(model).is_dir():
        return sha256_bytes("hub", model)
    return weights_hash(model)


def sample_key(prompt: list[dict], image, weights: str, sampling: SamplingSettings) -> str:
    pixels = b"" if image is None else image.tobytes() + repr((image.size, image.mode)).encode()
    return sha256_bytes(json.dumps(prompt, sort_keys=True), pixels, weights, sha256_json(asdict(sampling)))


def read_cache(path: Path) -> dict[str, dict]:
    """Finished samples by key. A line cut short by a kill (the last one) is ignored and asked again."""
    done: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[record["key"]] = record
    return done


def append_records(path: Path, records: list[dict]) -> None:
    with open(path, "a") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def evaluation_dataset(config: EvalConfig):
    from ..training import GalaxyScriptArguments, galaxy_dataset

    args = GalaxyScriptArguments(
        data_dir=config.data_dir, modality=config.modality, codec=config.codec, rendering=config.rendering,
        image_size=config.image_size,
    )
    dataset = galaxy_dataset(args, config.split, with_completion=False, max_samples=config.max_samples)
    if len(dataset) == 0:
        raise UserError(f"split: {config.split!r} of {config.data_dir} has no rows to evaluate")
    return dataset


def evaluate(config: EvalConfig, backend=None, *, progress: bool = True) -> dict:
    """Run (or resume) one evaluation; returns the result that is also written to `output_dir/result.json`."""
    from rich.progress import Progress

    from ..data.galaxy10 import DECALS_CLASSES
    from ..rewards import parse_answer
    from .backends import TransformersBackend
    from .metrics import classification_metrics

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / "samples.jsonl"
    dataset = evaluation_dataset(config)
    sampling = config.sampling()
    weights = model_fingerprint(config.model)
    keys = [sample_key(row["prompt"], row.get("image"), weights, sampling) for row in dataset]
    done = read_cache(cache_path)
    todo = [i for i, k in enumerate(keys) if k not in done]
    if todo and backend is None:
        backend = TransformersBackend.from_pretrained(config.model, sampling, batch_size=config.batch_size)

    started = time.monotonic()
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"eval {config.modality} {config.split}", total=len(keys), completed=len(keys) - len(todo))
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start : start + config.batch_size]
            rows = [dataset[i] for i in batch]
            generations = backend.generate([r["prompt"] for r in rows], [r.get("image") for r in rows])
            records = [
                {"key": keys[i], "index": i, "label": r["label"], "completion": g.text, "prediction": parse_answer(g.text),
                 "prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens}
                for i, r, g in zip(batch, rows, generations)
            ]
            append_records(cache_path, records)
            done.update({rec["key"]: rec for rec in records})
            bar.advance(task, len(batch))

    records = [done[k] for k in keys]
    metrics = classification_metrics(
        [r["label"] for r in records], [r["prediction"] for r in records], len(DECALS_CLASSES),
        n_boot=config.n_boot, seed=config.seed,
    )
    result = {
        "config": asdict(config),
        "provenance": provenance(asdict(config), data_dir=config.data_dir, seed=config.seed),
        "weights_sha256": weights,
        "n_asked_this_run": len(todo),
        "n_from_cache": len(keys) - len(todo),
        "seconds": round(time.monotonic() - started, 3),
        "prompt_tokens": sum(r["prompt_tokens"] for r in records),
        "completion_tokens": sum(r["completion_tokens"] for r in records),
        "metrics": metrics,
    }
    write_json_atomic(out / "result.json", result)
    return result


def print_result_line(result: dict, file=sys.stdout) -> None:
    """The one line a script or an agent reads: `RESULT {json}`."""
    m = result["metrics"]
    summary = {
        "accuracy": m["accuracy"], "accuracy_interval": m["interval"]["accuracy"],
        "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
        "parse_failure_rate": m["parse_failure_rate"], "majority_rate": m["majority_rate"], "n": m["n"],
        "modality": result["config"]["modality"], "output_dir": result["config"]["output_dir"],
    }
    print("RESULT " + json.dumps(summary, sort_keys=True), file=file, flush=True)

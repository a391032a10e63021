"""Seed fingerprints: what a run actually started from, so that "different seeds" can be checked to differ.

Three seeds that agree to within 0.001 may not be three seeds at all: the same initialisation, the same data order and
the same sampling give the same run whatever `--seed` says. `RunFingerprint` (a TrainerCallback) writes
`fingerprint.json` into the run's `output_dir`:

- `weights_sha256`: every parameter at train begin (names, shapes, bytes), and `trainable_sha256` for the trainable
  ones alone (with LoRA the base is shared by design and the adapters carry the seed);
- `first_batch_sha256`: the tensors of the model's first forward call (the first batch);
- `first_forwards_sha256`: the first `n_forwards` forward calls together: in GRPO these are the generation passes, so
  sampled completions enter it (the first generations);
- the seeds and a hash of the training configuration without its seed and paths (`config_sha256`);
- `base`, when the recipe gives it (`astroreason.training.base_record`): the model the run started from
  (`model_name_or_path`), a hash of its weight files (`weights_sha256`), whether LoRA was used
  and its settings, and the recipe (`sft` or `grpo`) with its script, training and model arguments: what the audit's
  label-permutation control needs to retrain from the same start (`astroreason.audit.probes`).

`compare_fingerprints` (used by `astroreason audit` on a sweep directory) flags runs whose seeds differ but whose
fingerprints are equal, and two runs of one sweep with the same configuration and the same seed.
"""

from __future__ import annotations

import hashlib
from itertools import combinations
from pathlib import Path

from transformers import TrainerCallback

from ..io import read_json_file, read_json_record, sha256_file, sha256_json, write_json_atomic

FINGERPRINT_FILE = "fingerprint.json"
# Training arguments that name where a run writes, not what it does.
PATH_ARGS = ("output_dir", "logging_dir", "run_name", "hub_model_id", "seed", "data_seed", "hub_token")


def tensors_sha256(named) -> str:
    """SHA-256 over (name, shape, dtype, bytes) of each tensor, in the given order."""
    import torch

    h = hashlib.sha256()
    for name, tensor in named:
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _batch_tensors(args, kwargs) -> list:
    import torch

    named = [(f"arg{i}", a) for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    named += [(k, v) for k, v in sorted(kwargs.items()) if isinstance(v, torch.Tensor)]
    return named


WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "adapter_model.bin")


def model_files_dir(model_name_or_path: str) -> Path | None:
    """The local directory of a model: the path itself, or a Hub name's snapshot in the local cache (never the
    network); None when neither holds it."""
    path = Path(model_name_or_path)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_name_or_path, local_files_only=True))
    except Exception:  # noqa: BLE001  not a Hub name, or not cached: the weights cannot be hashed here
        return None


def base_weights_sha256(model_name_or_path: str) -> str | None:
    """SHA-256 over the weight files of a model directory (name and content of each, in name order); None when the
    model or its weight files cannot be found."""

    root = model_files_dir(model_name_or_path)
    if root is None:
        return None
    files = sorted({f for pattern in WEIGHT_FILES for f in root.glob(pattern) if f.is_file()})
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{sha256_file(f)}\n".encode())
    return h.hexdigest()


def config_hash(training_args, extra: dict | None = None) -> str:
    """Hash of a run's configuration without its seeds and output paths (what makes two runs "the same config")."""
    values = training_args.to_dict() if hasattr(training_args, "to_dict") else dict(training_args)
    values = {k: v for k, v in values.items() if k not in PATH_ARGS}
    return sha256_json({"training": values, "extra": extra or {}})


class RunFingerprint(TrainerCallback):
    """Write `fingerprint.json` at train begin (weights, seeds, config) and after the first forward calls.

    Args:
        extra: What else defines the run (e.g. the script arguments: data_dir, modality), hashed into the config.
        n_forwards: Forward calls hashed together as `first_forwards_sha256`.
        base: The base model and the recipe (`astroreason.training.base_record`), recorded as `base` with the hash
            of the base's weight files added (by the main process, at train begin). Not part of `config_sha256`.
    """

    def __init__(self, extra: dict | None = None, n_forwards: int = 4, base: dict | None = None):
        self.extra = {k: str(v) for k, v in (extra or {}).items()}
        self.n_forwards = n_forwards
        self.base = base
        self.record: dict = {}
        self._forwards = hashlib.sha256()
        self._seen = 0
        self._handle = None
        self._path: Path | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._path = Path(args.output_dir) / FINGERPRINT_FILE
        if state.global_step > 0 and self._path.is_file():  # resumed: keep the fingerprint of its true start
            self.record = read_json_file(self._path, "fingerprint")
            return
        named = list(model.named_parameters())
        self.record = {
            "seed": args.seed,
            "data_seed": args.data_seed,
            "config_sha256": config_hash(args, self.extra),
            "extra": self.extra,
            "weights_sha256": tensors_sha256(named),
            "trainable_sha256": tensors_sha256([(n, p) for n, p in named if p.requires_grad]),
            "first_batch_sha256": None,
            "first_forwards_sha256": None,
            "n_forwards": 0,
        }
        if self.base is not None and state.is_world_process_zero:  # only the main process writes the record
            weights = base_weights_sha256(self.base["model_name_or_path"])
            self.record["base"] = {**self.base, "weights_sha256": weights}
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)
        self._write(state)

    def _hook(self, module, args, kwargs):
        if self._seen >= self.n_forwards:
            return
        digest = tensors_sha256(_batch_tensors(args, kwargs))
        if self._seen == 0:
            self.record["first_batch_sha256"] = digest
        self._forwards.update(digest.encode())
        self._seen += 1
        self.record["first_forwards_sha256"] = self._forwards.hexdigest()
        self.record["n_forwards"] = self._seen
        if self._seen >= self.n_forwards:
            self._remove()

    def _remove(self):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _write(self, state):
        if state.is_world_process_zero and self._path is not None:
            write_json_atomic(self._path, self.record)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1 and self._seen:
            self._write(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._remove()
        if self._seen:
            self._write(state)


def read_fingerprint(run_dir) -> dict | None:
    return read_json_record(Path(run_dir) / FINGERPRINT_FILE, "fingerprint")


def identity(record: dict) -> tuple:
    """What must differ between two seeds: the initial weights, the first batch and the first forward passes."""
    return (record.get("weights_sha256"), record.get("first_batch_sha256"), record.get("first_forwards_sha256"))


def compare_fingerprints(runs: dict[str, dict]) -> list[dict]:
    """Problems between runs of one sweep: different seeds with equal fingerprints, or the same config and seed."""
    problems = []
    for (a, ra), (b, rb) in combinations(sorted(runs.items()), 2):
        seeds_a, seeds_b = (ra.get("seed"), ra.get("data_seed")), (rb.get("seed"), rb.get("data_seed"))
        if seeds_a != seeds_b and identity(ra) == identity(rb):
            problems.append(
                {
                    "kind": "same_fingerprint",
                    "runs": [a, b],
                    "reason": f"{a} and {b} have different seeds ({ra.get('seed')} vs {rb.get('seed')}) but the same initial "
                    "weights, first batch and first forward passes: they are one run, not two seeds",
                }
            )
        if ra.get("config_sha256") == rb.get("config_sha256") and seeds_a == seeds_b:
            problems.append(
                {
                    "kind": "same_config_and_seed",
                    "runs": [a, b],
                    "reason": f"{a} and {b} have the same configuration and seed {ra.get('seed')}: a duplicated run "
                    "counted twice",
                }
            )
    return problems

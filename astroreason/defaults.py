"""The tiny defaults of the recipes, built on first use so that a fresh clone trains with one command.

The tiny configs (recipes/configs/tiny/) name three directories under `runs/tiny/`: a GalSim surrogate of Galaxy10
split into a prepared directory, a tiny random Qwen2.5-VL, and a small built-in FSQ codec (with its token cache).
When a recipe is given exactly one of these paths and it does not exist yet, it is built here, deterministically
(fixed seeds), with one line saying so. Any other path is used as given and never built: a typo in a real run's
`data_dir` must fail loudly, not train on a surrogate.
"""

from __future__ import annotations

import os
from pathlib import Path

from .data.splits import load_manifest, prepare, source_path
from .data.surrogate import synthesize
from .models import build_tiny_model
from .tokens.cache import encode_prepared
from .tokens.codec import check_inputs, read_inputs
from .tokens.fsq import FSQConfig, TrainConfig, train_fsq

TINY_ROOT = "runs/tiny"
TINY_SOURCE = f"{TINY_ROOT}/galaxy10_surrogate.h5"
TINY_DATA = f"{TINY_ROOT}/prepared"
TINY_MODEL = f"{TINY_ROOT}/qwen2_5_vl"
TINY_CODEC = f"{TINY_ROOT}/codec"

SEED = 0
SURROGATE_ROWS = 240  # 191 train / 28 val / 21 test after the split
SURROGATE_SIZE = 64  # px; the recipes resize to `image_size` (112 px = 16 visual tokens)
CODEC_SIZE = 32  # px in, an 8x8 grid out: 64 codes, ~300 prompt tokens as text
CODEC_STEPS = 60


def _is(path, default: str) -> bool:
    """Whether `path` names the default directory (relative to the working directory, as the configs write it)."""
    return path is not None and Path(os.path.abspath(path)) == Path(os.path.abspath(default))


def _say(what: str, where: str) -> None:
    print(
        f"astroreason: {where} not found; building the tiny default {what} there (first use, seed {SEED})", flush=True
    )


def build_tiny_data(out: str = TINY_DATA) -> Path:
    """The GalSim surrogate (`SURROGATE_ROWS` rows) split into a prepared directory."""

    source = Path(out).parent / Path(TINY_SOURCE).name
    if not source.is_file():
        source.parent.mkdir(parents=True, exist_ok=True)
        synthesize(source, n=SURROGATE_ROWS, size=SURROGATE_SIZE, seed=SEED, workers=1)
    return prepare(source, out, seed=SEED)


def build_tiny_codec(
    out: str = TINY_CODEC,
    data_dir: str = TINY_DATA,
    *,
    steps: int = CODEC_STEPS,
    levels: list[int] | None = None,
    hidden: int = 16,
) -> Path:
    """A small built-in FSQ codec (rgb, 32 px in, 8x8 codes) trained on the prepared data's train rows."""
    import numpy as np

    manifest = load_manifest(data_dir)
    source = source_path(manifest, data_dir)
    config = FSQConfig(size=CODEC_SIZE, hidden=hidden, **({"levels": list(levels)} if levels else {}))
    spec = config.input_spec

    def inputs(split):
        rows = np.asarray(manifest.rows[split])
        return np.concatenate([check_inputs(b, spec, source=str(source)) for b in read_inputs(source, rows, spec)])

    train = TrainConfig(steps=steps, batch_size=32, seed=SEED)
    codec, metrics = train_fsq(config, inputs("train"), inputs("val"), train, name=Path(out).name)
    codec.save(out, training={"steps": train.steps, "seed": SEED, "prepared_dir": str(data_dir)}, metrics=metrics)
    return Path(out)


def ensure_tiny_defaults(data_dir, model_name_or_path, codec=None) -> None:
    """Build whichever of the tiny defaults the run names and lacks; other paths are left alone.

    Under `accelerate launch` the main process builds while the others wait, then all read the same files.
    """
    from accelerate import PartialState

    with PartialState().main_process_first():
        if _is(data_dir, TINY_DATA) and not Path(data_dir).exists():
            _say("GalSim surrogate data", str(data_dir))
            build_tiny_data(data_dir)
        if _is(model_name_or_path, TINY_MODEL) and not Path(model_name_or_path).exists():
            _say("random Qwen2.5-VL", str(model_name_or_path))
            build_tiny_model(model_name_or_path, arch="qwen2_5_vl", seed=SEED)
        if _is(codec, TINY_CODEC):
            if not Path(codec).exists():
                _say("FSQ codec", str(codec))
                if not Path(TINY_DATA).exists():
                    build_tiny_data(TINY_DATA)
                build_tiny_codec(codec, TINY_DATA)  # always trained on the tiny data: same files for every run
            if Path(data_dir).exists():
                encode_prepared(data_dir, codec)  # a no-op once the cache is up to date

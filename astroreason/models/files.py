"""Hashes of a checkpoint's files: its weights, and every file that decides what it answers."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..io import sha256_bytes, sha256_file, sha256_json

# The files of a checkpoint that decide what it answers: weights, model and generation configs, tokenizer, chat
# template, processor configs, a peft adapter's config and remote code. Training state, logs and records beside them
# (optimizer.pt, trainer_state.json, checkpoint-*/, prompt_lint.json, ...) do not.
ANSWER_FILES = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "tokenizer*",
    "vocab.*",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.*",
    "additional_chat_templates/*",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "*.py",
)
_FILE_HASHES: dict[tuple, str] = {}


def file_hash(path: Path) -> str:
    """`sha256_file`, once per process for a file left unchanged (same inode, size and times): a run keys many samples
    with the same checkpoint, and a multi-GB checkpoint is read once."""
    st = path.stat()
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _FILE_HASHES:
        _FILE_HASHES[key] = sha256_file(path)
    return _FILE_HASHES[key]


def answer_file_hash(path: Path) -> str:
    """`file_hash`, but a tokenizer.json without its padding and truncation: the tokenizer's runtime state when it was
    saved (a model saved after training on padded batches records their padding), which every call of transformers
    sets anew, so it decides no answer. The same model saved with and without it keys the same answers."""
    if path.name != "tokenizer.json":
        return file_hash(path)
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    tokenizer.pop("padding", None)
    tokenizer.pop("truncation", None)
    return sha256_json(tokenizer)


def weights_hash(model_dir: str | Path) -> str:
    """SHA-256 over a checkpoint's safetensors files (names and contents)."""
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UserError(f"model: {model_dir} holds no .safetensors files")
    return sha256_bytes(*(part for f in files for part in (f.name, file_hash(f))))


def answer_files_hash(model_dir: str | Path) -> str:
    """SHA-256 over the files of a checkpoint that decide its answers (`ANSWER_FILES`, names and contents); for a
    peft adapter, its base model's too (the base's weights, tokenizer and chat template are what it runs with)."""
    model_dir = Path(model_dir)
    weights_hash(model_dir)  # a directory without weights is refused here, as before
    files = sorted({f for pattern in ANSWER_FILES for f in model_dir.glob(pattern) if f.is_file()})
    parts = [part for f in files for part in (f.relative_to(model_dir).as_posix(), answer_file_hash(f))]
    if (model_dir / "adapter_config.json").is_file() and not (model_dir / "config.json").is_file():
        parts += ["base", answer_files_hash(adapter_base_dir(model_dir))]
    return sha256_bytes(*parts)


def adapter_base_dir(adapter_dir: Path) -> Path:
    """The local directory of a peft adapter's base model: the path it names, or its snapshot in the local Hugging
    Face cache."""
    base = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise UserError(f"model: {adapter_dir}/adapter_config.json names no base_model_name_or_path")
    if Path(base).expanduser().is_dir():
        return Path(base).expanduser()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(base, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError):
        raise UserError(
            f"model: the base model {base} of the adapter {adapter_dir} is neither a local directory nor "
            f"in the local Hugging Face cache; download it (`hf download {base}`) or point "
            "base_model_name_or_path at its directory"
        ) from None

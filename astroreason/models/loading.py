"""Loading a model and its processor (local directory, Hub name or peft adapter), the checks that need its
family (image sizes), and the `special` rendering's code-token surgery on a loaded model."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..io import atomic_path
from ..tokens.render import check_fits
from .family import ModelFamily, family_for, find_family


def read_config(name_or_path: str | Path, *, trust_remote_code: bool = False, local_files_only: bool = False):
    """The transformers config of a checkpoint (for a peft adapter, its base model's)."""
    from transformers import AutoConfig

    path = Path(str(name_or_path)).expanduser()
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise UserError(f"model: {path}/adapter_config.json names no base_model_name_or_path")
        return read_config(base, trust_remote_code=trust_remote_code, local_files_only=local_files_only)
    return AutoConfig.from_pretrained(
        str(name_or_path), trust_remote_code=trust_remote_code, local_files_only=local_files_only
    )


def checkpoint_family(name_or_path: str | Path) -> ModelFamily | None:
    """The family of a checkpoint, read from its config on disk (never from the network); None when there is no
    readable config here or its `model_type` is not a known family (the loader then says what is wrong)."""
    try:
        return find_family(read_config(name_or_path, local_files_only=True))
    except (OSError, ValueError, UserError):
        return None


def check_image_size(name_or_path: str | Path, image_size: int, where: str = "image_size") -> int:
    """Refuse (one line) an image side that the checkpoint's family does not fit; a checkpoint whose family is
    unknown here is left to its processor."""
    family = checkpoint_family(name_or_path)
    return family.check_image_size(image_size, where) if family is not None else image_size


def load_processor(name_or_path: str | Path, *, trust_remote_code: bool = False):
    """The model's processor; without torchvision, the family's processor minus video (images are all we send)."""
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    name_or_path = str(name_or_path)
    family = find_family(read_config(name_or_path, trust_remote_code=trust_remote_code))
    image_only = family.image_only_processor_class() if family is not None else None
    if not is_torchvision_available() and image_only is not None:
        return image_only.from_pretrained(name_or_path)
    return AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)


def _torch_dtype(dtype):
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise UserError(f"dtype: expected auto, bfloat16, float16 or float32, got {dtype!r}")
    return value


def load_model_and_processor(
    name_or_path: str | Path, *, dtype=None, trust_remote_code: bool = False, device_map=None, attn_implementation=None
):
    """(model, processor) from a local directory or a Hub name (read from the local Hugging Face cache when offline).

    A directory holding a peft adapter (a LoRA run's output) loads its base model with the adapter applied.

    `trust_remote_code` stays off unless asked: a checkpoint must not run its own code by default.
    """
    from transformers import AutoModelForImageTextToText

    name = str(name_or_path)
    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1
    if looks_local and (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        # A LoRA run's output (peft adapter): its base model, with the adapter on top.
        from peft import PeftModel

        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise UserError(f"model: {path}/adapter_config.json names no base_model_name_or_path")
        model, processor = load_model_and_processor(
            base,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            device_map=device_map,
            attn_implementation=attn_implementation,
        )
        if has_tokenizer(path):
            # The run saved its own tokenizer (the special rendering's code tokens): evaluate with it, and grow the
            # base to its size first; the adapter carries the trained rows of the added tokens.
            processor = load_processor(path, trust_remote_code=trust_remote_code)
            rows = len(getattr(processor, "tokenizer", processor))
            if rows > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(rows, mean_resizing=False)
        return PeftModel.from_pretrained(model, str(path)), processor
    if looks_local and not (path / "config.json").is_file():
        raise UserError(f"model: {name} is not a model directory (no config.json there)")
    source = str(path) if looks_local else name
    kwargs = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = _torch_dtype(dtype)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        processor = load_processor(source, trust_remote_code=trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except OSError as err:
        if looks_local:
            raise UserError(f"model: cannot load {source}: {str(err).splitlines()[0]}") from None
        raise UserError(
            f"model: cannot load {name} from the Hub or the local Hugging Face cache; without network, download it "
            f"elsewhere (`hf download {name} --local-dir DIR`), copy DIR here and pass DIR"
        ) from None
    return model, processor


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def has_tokenizer(path: str | Path) -> bool:
    """Whether a directory holds a saved tokenizer of its own (a LoRA run's output does: the recipes save it)."""
    return any((Path(path) / name).is_file() for name in TOKENIZER_FILES)


def tokenizer_dir(name_or_path: str | Path) -> str:
    """The directory (or Hub name) whose tokenizer a checkpoint is evaluated with: its own, or for a peft adapter
    saved without one, its base model's."""
    path = Path(str(name_or_path)).expanduser()
    if (path / "adapter_config.json").is_file() and not has_tokenizer(path):
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        return tokenizer_dir(base) if base else str(path)
    return str(name_or_path)


def check_code_tokens(name_or_path: str | Path, rendering: str, vocab_size: int) -> None:
    """Refuse (one line) a checkpoint whose tokenizer does not hold the `special` rendering's code tokens one token
    per code (they would be split into several BPE pieces), or holds more than the codec has."""
    from transformers import AutoTokenizer

    check_fits(rendering, vocab_size)
    if rendering != "special":
        return
    source = tokenizer_dir(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise UserError(f"model: cannot load the tokenizer of {source}: {str(err).splitlines()[0]}") from None
    check_fits(rendering, vocab_size, tokenizer, model_dir=source)


def add_code_tokens(processor, model, vocab_size: int, *, init: str = "mean", vectors=None, seed: int = 0) -> int:
    """Add the `special` rendering's code tokens to the processor's tokenizer and give each its own embedding row
    (the model family's surgery, `ModelFamily.add_code_tokens`); returns the tokens added, 0 when they are all there
    (then no row is touched)."""
    return family_for(model).add_code_tokens(processor, model, vocab_size, init=init, vectors=vectors, seed=seed)


def save_with_code_tokens(
    model_dir, out_dir, vocab_size: int, *, init: str = "mean", vectors=None, seed: int = 0
) -> Path:
    """Load a model and its processor, add the code tokens, and save both to `out_dir` (atomically)."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_fits("special", vocab_size)
    model, processor = load_model_and_processor(model_dir)  # image-only processor where torchvision is missing
    add_code_tokens(processor, model, vocab_size, init=init, vectors=vectors, seed=seed)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out_dir

"""Loading Qwen-VL models and processors, and building tiny random ones offline for tests and demos.

The tiny builder needs no Hub access and no torchvision: a byte-level BPE tokenizer trained here with `tokenizers`
(Qwen's pre-tokenizer, so digits split one by one), Qwen's special tokens, a small Qwen-style chat template, the PIL
image processor and a 2-layer `Qwen2_5_VLConfig` / `Qwen3VLConfig`. Without torchvision transformers cannot build
Qwen's video processor, so the processor is the stock Qwen processor minus video (`*ImageOnlyProcessor` below); it is
saved under the stock class name, so `AutoProcessor` loads the full processor wherever torchvision exists.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from .errors import UserError
from .io import atomic_path, sha256_bytes, sha256_file, write_json_atomic

ARCHS = ("qwen2_5_vl", "qwen3_vl")
SIZES = ("tiny", "small")
BUILD_RECORD = "astroreason_tiny.json"  # what built a tiny model: arch, size, seed, parameter count

# Qwen2.5-VL / Qwen3-VL special tokens (the ones the chat template and the processor use, plus their siblings).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2.5-VL's chat template cut to what this project sends: string content, or image and text parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class TinyModelSpec:
    """Sizes of a tiny random Qwen-VL. Image geometry stays Qwen's own (one visual token per 2x2 merged patches).

    Args:
        vocab_size: Target size of the locally trained BPE vocabulary (the small corpus may stop short of it).
        hidden_size: Width of the language model.
        intermediate_size: MLP width of the language model.
        num_layers: Decoder layers.
        num_heads: Attention heads (head size = hidden_size / num_heads).
        num_kv_heads: Key/value heads (grouped-query attention, as in Qwen).
        vision_hidden_size: Width of the vision encoder.
        vision_intermediate_size: MLP width of the vision encoder.
        vision_depth: Vision encoder blocks.
        vision_heads: Vision attention heads.
    """

    vocab_size: int = 1024
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_depth: int = 2
    vision_heads: int = 2


SIZE_SPECS = {
    "tiny": TinyModelSpec(),
    "small": TinyModelSpec(
        vocab_size=2048, hidden_size=256, intermediate_size=704, num_layers=4, num_heads=4, num_kv_heads=2,
        vision_hidden_size=128, vision_intermediate_size=256, vision_depth=2, vision_heads=2,
    ),
}

# Text the tokenizer is trained on: the prompts, the answers, digits and a few sentences of reasoning.
_REASONING = (
    "The galaxy has a bright central bulge and a smooth, round light profile with no visible arms.",
    "I see spiral arms winding around a central bar, so this is a barred spiral galaxy.",
    "The disc is seen edge-on as a thin line of light; there is no bulge in the middle.",
    "Two bright nuclei and tidal tails suggest the galaxies are merging.",
    "The shape is elongated like a cigar and the light is smooth.",
    "The light is irregular and disturbed, with asymmetric features.",
    "Tightly wound arms, loosely wound arms, in-between, round, smooth, edge-on, bulge, bar, disc, tail.",
)


def tokenizer_corpus() -> list[str]:
    """The built-in corpus: the prompt templates, class names and answers, digits, some reasoning text."""
    from .data.galaxy10 import DECALS_CLASSES
    from .prompts import TEMPLATES, answer_text

    numbers = " ".join(str(i) for i in range(0, 5000, 7))  # digits in every position, as codec ids appear
    lines = [t.replace("{tokens}", numbers) for t in TEMPLATES.values()]
    lines += list(DECALS_CLASSES) + [answer_text(i) for i in range(len(DECALS_CLASSES))]
    lines += [f"<think>{r}</think> {answer_text(i % 10)}" for i, r in enumerate(_REASONING)]
    lines += ["0 1 2 3 4 5 6 7 8 9", numbers, "You are a helpful assistant."]
    return lines


def train_tokenizer(vocab_size: int):
    """A Qwen2 tokenizer (byte-level BPE, Qwen's pre-tokenizer) trained on `tokenizer_corpus()`. Deterministic."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(tokenizer_corpus(), trainer)
    trained = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=[tuple(m) for m in trained["merges"]],
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        eos_token="<|im_end|>",  # as in Qwen's instruct models: a turn ends the generation
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@functools.cache
def _image_only_processors():
    """The stock Qwen processors minus video, keyed by `model_type` (torchvision is needed for video only)."""
    from transformers import Qwen2_5_VLProcessor, Qwen3VLProcessor

    def image_only(base):
        class ImageOnlyProcessor(base):
            def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
                super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

        # transformers records `type(processor).__name__` in the saved files: keeping the stock name lets
        # `AutoProcessor` load the full processor (video included) wherever torchvision exists.
        ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = base.__name__
        return ImageOnlyProcessor

    return {"qwen2_5_vl": image_only(Qwen2_5_VLProcessor), "qwen3_vl": image_only(Qwen3VLProcessor)}


def _model_config(arch: str, spec: TinyModelSpec, tokenizer):
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    ids = {
        name: tokenizer.convert_tokens_to_ids(token)
        for name, token in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        )
    }
    endoftext, im_end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    head_dim = spec.hidden_size // spec.num_heads
    # Multimodal RoPE splits half the head size over (time, height, width), in Qwen's 2:3:3 proportion.
    half = head_dim // 2
    mrope_section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=32768,
        bos_token_id=endoftext,
        eos_token_id=im_end,
        pad_token_id=endoftext,
    )
    vision = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_intermediate_size,
        num_heads=spec.vision_heads,
        out_hidden_size=spec.hidden_size,
    )
    if arch == "qwen2_5_vl":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope_section}
        vision.update(fullatt_block_indexes=[spec.vision_depth - 1], window_size=112)
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    text.update(head_dim=head_dim)
    text["rope_parameters"] = {
        "rope_type": "default", "rope_theta": 5e6, "mrope_section": mrope_section, "mrope_interleaved": True,
    }
    vision.update(deepstack_visual_indexes=[spec.vision_depth - 1], num_position_embeddings=576)
    return Qwen3VLConfig(text_config=text, vision_config=vision, **ids)


def build_tiny_model(
    out_dir: str | Path, *, arch: str = "qwen2_5_vl", seed: int = 0, size: str = "tiny", **overrides
) -> Path:
    """Build a tiny random Qwen-VL (model, tokenizer, processor, chat template) offline and save it in `out_dir`.

    `overrides` change fields of `TinyModelSpec` (e.g. `hidden_size=32`). The same arguments give the same files.
    Reload with `load_model_and_processor(out_dir)`.
    """
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if arch not in ARCHS:
        raise UserError(f"arch: expected one of {', '.join(ARCHS)}, got {arch!r}")
    if size not in SIZES:
        raise UserError(f"size: expected one of {', '.join(SIZES)}, got {size!r}")
    known = {f.name for f in fields(TinyModelSpec)}
    if unknown := sorted(set(overrides) - known):
        raise UserError(f"{unknown[0]}: not a tiny-model setting (known: {', '.join(sorted(known))})")
    spec = replace(SIZE_SPECS[size], **overrides)
    if spec.hidden_size % spec.num_heads or (spec.hidden_size // spec.num_heads) % 8:
        raise UserError(f"hidden_size: {spec.hidden_size} / num_heads {spec.num_heads} must be a multiple of 8")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"out: {out_dir} already exists and is not empty; choose another directory")

    tokenizer = train_tokenizer(spec.vocab_size)
    # Qwen2.5-VL looks at 14-px patches, Qwen3-VL at 16-px ones; both merge 2x2 patches into one visual token.
    patch_size = 14 if arch == "qwen2_5_vl" else 16
    image_processor = Qwen2VLImageProcessorPil(patch_size=patch_size, merge_size=2, temporal_patch_size=2)
    processor = _image_only_processors()[arch](image_processor, tokenizer, chat_template=CHAT_TEMPLATE)
    config = _model_config(arch, spec, tokenizer)
    model_class = Qwen2_5_VLForConditionalGeneration if arch == "qwen2_5_vl" else Qwen3VLForConditionalGeneration
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    endoftext, im_end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    model.generation_config = GenerationConfig(
        bos_token_id=endoftext, eos_token_id=[im_end, endoftext], pad_token_id=endoftext
    )
    n_params = sum(p.numel() for p in model.parameters())
    record = {
        "arch": arch, "size": size, "seed": seed, "spec": asdict(spec), "parameters": n_params,
        "vocab_size": len(tokenizer),
    }
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_json_atomic(tmp / BUILD_RECORD, record)
    return out_dir


def _model_type(name_or_path: str, trust_remote_code: bool) -> str:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code).model_type


def load_processor(name_or_path: str | Path, *, trust_remote_code: bool = False):
    """The model's processor; without torchvision, the Qwen processor minus video (images are all we send)."""
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    name_or_path = str(name_or_path)
    model_type = _model_type(name_or_path, trust_remote_code)
    image_only = _image_only_processors()
    if not is_torchvision_available() and model_type in image_only:
        return image_only[model_type].from_pretrained(name_or_path)
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
            base, dtype=dtype, trust_remote_code=trust_remote_code, device_map=device_map,
            attn_implementation=attn_implementation,
        )
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


# The files of a checkpoint that decide what it answers: weights, model and generation configs, tokenizer, chat
# template, processor configs, a peft adapter's config and remote code. Training state, logs and records beside them
# (optimizer.pt, trainer_state.json, checkpoint-*/, prompt_lint.json, ...) do not.
ANSWER_FILES = (
    "*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json", "adapter_config.json",
    "tokenizer*", "vocab.*", "merges.txt", "special_tokens_map.json", "added_tokens.json",
    "chat_template.*", "additional_chat_templates/*", "processor_config.json", "preprocessor_config.json",
    "video_preprocessor_config.json", "*.py",
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
    parts = [part for f in files for part in (f.relative_to(model_dir).as_posix(), file_hash(f))]
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
        raise UserError(f"model: the base model {base} of the adapter {adapter_dir} is neither a local directory nor "
                        f"in the local Hugging Face cache; download it (`hf download {base}`) or point "
                        "base_model_name_or_path at its directory") from None


def build_record(model_dir: str | Path) -> dict:
    """What built a tiny model (arch, size, seed, parameter count), or {} for any other checkpoint."""
    path = Path(model_dir) / BUILD_RECORD
    return json.loads(path.read_text()) if path.is_file() else {}

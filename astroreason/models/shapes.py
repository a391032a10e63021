"""The shapes of the checkpoints the shipped GPU configs name, from their published config.json files, so that a
model of the same widths (random weights, any depth) can be built offline: `bench/real_shapes.py` runs every shipped
config one step on such a model with its depth cut, and a memory plan counts its parameters without downloading it.

Only the fields that set a tensor's shape (and the positional encoding that must match it) are kept; token ids come
from whichever tokenizer the built model is saved with.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import UserError


@dataclass(frozen=True)
class CheckpointShape:
    """A published checkpoint's shape.

    Args:
        arch: The family's `model_type` (`qwen2_5_vl`, `qwen3_vl`).
        text: The language model's shape fields (`text_config`).
        vision: The vision tower's shape fields (`vision_config`).
        tied: Whether the LM head shares the embedding matrix (`tie_word_embeddings`).
        parameters: The published parameter count (tied weights once; None for a cut model); a model built from
            the fields has exactly this many (tests/test_memory.py counts them on the meta device).
        depth_fields: The vision fields that list block indexes, which a depth-cut model must keep inside its depth.
    """

    arch: str
    text: dict
    vision: dict
    tied: bool
    parameters: int | None
    depth_fields: tuple[str, ...] = field(default=())


_QWEN2_5_VL_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    hidden_act="silu",
    in_channels=3,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    tokens_per_second=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
)
_QWEN2_5_VL_ROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}
_QWEN3_VL_ROPE = {
    "rope_type": "default",
    "rope_theta": 5000000.0,
    "mrope_section": [24, 20, 20],
    "mrope_interleaved": True,
}
_QWEN3_VL_VISION = dict(
    hidden_act="gelu_pytorch_tanh",
    in_channels=3,
    num_heads=16,
    num_position_embeddings=2304,
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
)

SHAPES: dict[str, CheckpointShape] = {
    "Qwen/Qwen2.5-VL-3B-Instruct": CheckpointShape(
        arch="qwen2_5_vl",
        text=dict(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            rope_parameters=_QWEN2_5_VL_ROPE,
        ),
        vision=dict(_QWEN2_5_VL_VISION, out_hidden_size=2048),
        tied=True,
        parameters=3_754_622_976,
        depth_fields=("fullatt_block_indexes",),
    ),
    "Qwen/Qwen2.5-VL-7B-Instruct": CheckpointShape(
        arch="qwen2_5_vl",
        text=dict(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            rope_parameters=_QWEN2_5_VL_ROPE,
        ),
        vision=dict(_QWEN2_5_VL_VISION, out_hidden_size=3584),
        tied=False,
        parameters=8_292_166_656,
        depth_fields=("fullatt_block_indexes",),
    ),
    "Qwen/Qwen3-VL-4B-Instruct": CheckpointShape(
        arch="qwen3_vl",
        text=dict(
            vocab_size=151936,
            hidden_size=2560,
            intermediate_size=9728,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            rope_parameters=_QWEN3_VL_ROPE,
        ),
        vision=dict(
            _QWEN3_VL_VISION,
            depth=24,
            hidden_size=1024,
            intermediate_size=4096,
            out_hidden_size=2560,
            deepstack_visual_indexes=[5, 11, 17],
        ),
        tied=True,
        parameters=4_437_815_808,
        depth_fields=("deepstack_visual_indexes",),
    ),
    "Qwen/Qwen3-VL-8B-Instruct": CheckpointShape(
        arch="qwen3_vl",
        text=dict(
            vocab_size=151936,
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            rope_parameters=_QWEN3_VL_ROPE,
        ),
        vision=dict(
            _QWEN3_VL_VISION,
            depth=27,
            hidden_size=1152,
            intermediate_size=4304,
            out_hidden_size=4096,
            deepstack_visual_indexes=[8, 16, 24],
        ),
        tied=False,
        parameters=8_767_123_696,
        depth_fields=("deepstack_visual_indexes",),
    ),
}


def checkpoint_shape(name: str) -> CheckpointShape:
    """The published shape of a checkpoint a shipped config names; one line naming the known ones otherwise."""
    if name not in SHAPES:
        raise UserError(f"model_name_or_path: no published shape for {name!r} (known: {', '.join(SHAPES)})")
    return SHAPES[name]


def cut_depth(shape: CheckpointShape, layers: int, blocks: int) -> CheckpointShape:
    """The same widths with `layers` language-model layers and `blocks` vision blocks. A block index list keeps its
    length where the cut allows, on the last blocks, and block 0 stays out of it: the cut model then runs every
    kind of block the full one does (Qwen2.5-VL's windowed and full-attention blocks; Qwen3-VL's plain blocks and
    the deepstack ones, whose features enter the first language-model layers)."""
    vision = dict(shape.vision, depth=blocks)
    for name in shape.depth_fields:
        count = min(len(shape.vision[name]), blocks - 1)
        vision[name] = list(range(blocks - count, blocks))
    return replace(shape, text=dict(shape.text, num_hidden_layers=layers), vision=vision, parameters=None)


def shaped_config(shape: CheckpointShape, token_ids: dict):
    """A transformers config of the shape, its token ids (`image_token_id`, `bos_token_id`, ...) from `token_ids`
    (a tokenizer's: the ids of a real checkpoint's tokenizer differ from a tiny one's)."""
    from .family import family_for

    text_ids = {k: token_ids[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in token_ids}
    top_ids = {k: v for k, v in token_ids.items() if k not in text_ids}
    return family_for(shape.arch).config_class()(
        text_config={**shape.text, **text_ids},
        vision_config=shape.vision,
        tie_word_embeddings=shape.tied,
        **top_ids,
    )


def meta_model(shape: CheckpointShape, *, dtype=None, lora: dict | None = None):
    """A model of `shape` on the meta device (no memory, no weights), with peft's LoRA when `lora` gives its
    `r`, `lora_alpha` and `target_modules`: what a plan counts parameters on."""
    import torch

    from .family import family_for

    with torch.device("meta"):
        model = family_for(shape.arch).model_class()._from_config(shaped_config(shape, {}), dtype=dtype)
        if lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(**lora))
    return model


def build_shaped_model(out_dir, shape: CheckpointShape, *, seed: int = 0, dtype=None):
    """A model directory of `shape` with random weights: the family's tiny tokenizer, processor and chat template
    (built offline), the shaped weights. Its vocabulary (the checkpoint's) is larger than the tokenizer's, as a real
    checkpoint's padded embedding is; no step's shape depends on the difference."""
    import shutil
    from pathlib import Path

    import torch
    from transformers import AutoConfig, GenerationConfig

    from .family import family_for
    from .tiny import build_tiny_model

    out_dir = Path(out_dir)
    tiny_dir = build_tiny_model(out_dir.with_name(out_dir.name + "-tokenizer"), arch=shape.arch, seed=seed)
    tiny = AutoConfig.from_pretrained(tiny_dir)
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    ids = {k: getattr(tiny, k) for k in names}
    ids.update({k: getattr(tiny.text_config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = family_for(shape.arch).model_class()._from_config(shaped_config(shape, ids), dtype=dtype)
    model.generation_config = GenerationConfig.from_pretrained(tiny_dir)
    model.save_pretrained(out_dir)
    for f in tiny_dir.iterdir():  # tokenizer, processor, chat template: all but the tiny weights, config and record
        if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json", "generation_config.json"):
            shutil.copy(f, out_dir / f.name)
    shutil.rmtree(tiny_dir)
    return out_dir

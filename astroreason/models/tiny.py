"""Tiny random models built offline, for tests and demos: sizes, the tokenizer's training text, the builder.

Each model family builds its own (`ModelFamily.build_tiny`); `build_tiny_model` validates the arguments, asks the
family and saves the model, its processor and a record of what built it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ..data.task import GALAXY10, Task
from ..errors import UserError
from ..io import atomic_path, write_json_atomic

# prompts sits above models in the layers; see docs/models.md
from ..prompts import IMAGE_ZOOM_INSTRUCTION, TOKENS_ZOOM_INSTRUCTION, answer_text, image_template, tokens_template
from .family import families

SIZES = ("tiny", "small")
BUILD_RECORD = "astroreason_tiny.json"  # what built a tiny model: arch, size, seed, parameter count


@dataclass
class TinyModelSpec:
    """Sizes of a tiny random model. Image geometry stays the family's own (Qwen-VL: one visual token per 2x2 merged
    patches).

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
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=704,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        vision_hidden_size=128,
        vision_intermediate_size=256,
        vision_depth=2,
        vision_heads=2,
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


# A zoom episode's text (docs/zoom.md) besides its system turn: the families' tool-calling preamble, a tool schema's
# JSON and a call. In the corpus, the tokenizer merges it as it merges the prompts; without it a zoom prompt's system
# turn was ~750 tokens, nearly one per character, most of the cost of a tiny zoom run.
_TOOL_TEXT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "zoom", "description": "Look again at part of the galaxy, at full '
    'resolution.", "parameters": {"type": "object", "properties": {"bbox_2d": {"type": "array", "items": {"type": '
    '"number"}, "description": "The region as [x1, y1, x2, y2], fractions (0 to 1) of the image\'s width and height, '
    'from the top-left corner; x1 < x2 and y1 < y2."}}, "required": ["bbox_2d"]}}}\n</tools>\n\n'
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
    'XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>',
    '<tool_call>\n{"name": "zoom", "arguments": {"bbox_2d": [0.25, 0.25, 0.75, 0.75]}}\n</tool_call>',
    "<tool_response>\n</tool_response>",
)


def tokenizer_corpus(task: Task = GALAXY10) -> list[str]:
    """The built-in corpus: the prompt templates of `task` (`data.task`: default Galaxy10 DECaLS), its class names
    and answers, digits, some reasoning text, and a zoom episode's system turn, tool schema and call."""

    classes = task.classes
    numbers = " ".join(str(i) for i in range(0, 5000, 7))  # digits in every position, as codec ids appear
    lines = [t(task).replace("{tokens}", numbers) for t in (image_template, tokens_template)]
    lines += list(classes) + [answer_text(i, classes) for i in range(len(classes))]
    lines += [f"<think>{r}</think> {answer_text(i % len(classes), classes)}" for i, r in enumerate(_REASONING)]
    lines += ["0 1 2 3 4 5 6 7 8 9", numbers, "You are a helpful assistant."]
    lines += [IMAGE_ZOOM_INSTRUCTION, TOKENS_ZOOM_INSTRUCTION, *_TOOL_TEXT]
    return lines


def build_tiny_model(
    out_dir: str | Path,
    *,
    arch: str = "qwen2_5_vl",
    seed: int = 0,
    size: str = "tiny",
    task: Task = GALAXY10,
    **overrides,
) -> Path:
    """Build a tiny random model of the family `arch` (a `model_type`: model, tokenizer, processor, chat template)
    offline and save it in `out_dir`. Its tokenizer is trained on `task`'s prompts and answers (`data.task`; default
    Galaxy10 DECaLS): a task's class names are a few tokens each, as in a real vocabulary.

    `overrides` change fields of `TinyModelSpec` (e.g. `hidden_size=32`). The same arguments give the same files.
    Reload with `load_model_and_processor(out_dir)`.
    """
    archs = families()
    if arch not in archs:
        raise UserError(f"arch: expected one of {', '.join(archs)}, got {arch!r}")
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

    model, processor = archs[arch].build_tiny(out_dir, spec, seed, task)
    n_params = sum(p.numel() for p in model.parameters())
    record = {
        "arch": arch,
        "size": size,
        "seed": seed,
        "spec": asdict(spec),
        "parameters": n_params,
        "vocab_size": len(processor.tokenizer),
        "classes": list(task.classes),
    }
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_json_atomic(tmp / BUILD_RECORD, record)
    return out_dir


def build_record(model_dir: str | Path) -> dict:
    """What built a tiny model (arch, size, seed, parameter count), or {} for any other checkpoint."""
    path = Path(model_dir) / BUILD_RECORD
    return json.loads(path.read_text()) if path.is_file() else {}

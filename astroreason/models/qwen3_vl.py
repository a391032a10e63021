"""Qwen3-VL: 16-px patches merged 2x2, so one visual token per 32x32 px (224 px is 7x7 = 49 tokens, 256 px is 64).

Its vision tower adds DeepStack mergers (`deepstack_merger_list`), which project features of inner vision blocks
into the language model: they count as the merger. Its stock chat template renders tool calls; the tiny builder uses
it as TRL ships it (`trl/chat_templates/qwen3_vl.jinja`), so TRL recognises it for response parsing too.
"""

from __future__ import annotations

import functools
from importlib.resources import files

from .family import register
from .qwen_vl import QwenVLFamily


@functools.cache
def stock_chat_template() -> str:
    """Qwen3-VL-Instruct's own chat template, from TRL's copy of the known templates."""
    return (files("trl") / "chat_templates" / "qwen3_vl.jinja").read_text()


class Qwen3_VL(QwenVLFamily):
    model_type = "qwen3_vl"
    name = "Qwen3-VL"
    patch_size = 16
    merger_prefixes = ("model.visual.merger.", "model.visual.deepstack_merger_list.")

    @property
    def chat_template(self) -> str:
        return stock_chat_template()

    def processor_class(self):
        from transformers import Qwen3VLProcessor

        return Qwen3VLProcessor

    def model_class(self):
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration

    def config_class(self):
        from transformers import Qwen3VLConfig

        return Qwen3VLConfig

    def tiny_config_extras(self, spec, text, vision, mrope_section):
        text.update(head_dim=spec.hidden_size // spec.num_heads)
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 5e6,
            "mrope_section": mrope_section,
            "mrope_interleaved": True,
        }
        vision.update(deepstack_visual_indexes=[spec.vision_depth - 1], num_position_embeddings=576)


register(Qwen3_VL())

"""Qwen2.5-VL: 14-px patches merged 2x2, so one visual token per 28x28 px.

Its stock chat template drops tool calls (TRL's `supports_tool_calling` refuses it); the family's template is the
stock one with Qwen2.5's tool-call and tool-result turns (`qwen_vl.CHAT_TEMPLATE`).
"""

from __future__ import annotations

from .family import register
from .qwen_vl import CHAT_TEMPLATE, QwenVLFamily


class Qwen2_5_VL(QwenVLFamily):
    model_type = "qwen2_5_vl"
    name = "Qwen2.5-VL"
    patch_size = 14
    chat_template = CHAT_TEMPLATE

    def processor_class(self):
        from transformers import Qwen2_5_VLProcessor

        return Qwen2_5_VLProcessor

    def model_class(self):
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    def config_class(self):
        from transformers import Qwen2_5_VLConfig

        return Qwen2_5_VLConfig

    def tiny_config_extras(self, spec, text, vision, mrope_section):
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope_section}
        vision.update(fullatt_block_indexes=[spec.vision_depth - 1], window_size=112)


register(Qwen2_5_VL())

"""What Qwen2.5-VL and Qwen3-VL share: the `visual` tower and its merger, `image_grid_thw`, Qwen's special tokens
and byte-level tokenizer, the image-only processor, and the tiny offline builder. Each family's own module
(qwen2_5_vl.py, qwen3_vl.py) sets what differs and registers itself.

The tiny builder needs no Hub access and no torchvision: a byte-level BPE tokenizer trained here with `tokenizers`
(Qwen's pre-tokenizer, so digits split one by one), Qwen's special tokens, the family's chat template (tool calls
included), the PIL image processor and a 2-layer config. Without torchvision transformers cannot build Qwen's video
processor, so the processor is the stock one minus video (`image_only_processor_class`); it is saved under the stock
class name, so `AutoProcessor` loads the full processor wherever torchvision exists.
"""

from __future__ import annotations

import functools
import json
from abc import abstractmethod

import numpy as np

from ..data.task import GALAXY10, Task
from .family import ModelFamily
from .tiny import TinyModelSpec, tokenizer_corpus

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


# Qwen2.5-VL's chat template (string content, or image, video and text parts; a default system turn) with the tool
# calls and tool results of Qwen2.5's text models: an assistant turn renders `tool_calls` as
# `<tool_call>{"name": ..., "arguments": ...}</tool_call>`, consecutive `tool` turns become one user turn of
# `<tool_response>` blocks, and `tools` go into the system turn. Without tools it renders what the stock template does.
# An assistant turn, its `<|im_end|>` included, is inside `{% generation %}` markers: SFT's assistant-only loss
# (`assistant_only_loss`, the zoom warm start) trains on it and on nothing else; they change nothing rendered. A
# call follows a newline only after text: empty content, a string or a text block, renders as the model writes it.
_CONTENT = (
    "{% macro render_content(content) %}"
    "{% if content is string %}{{ content }}"
    "{% else %}{% for part in content %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{% endmacro %}"
)
# No text right after a block tag starts with a newline: transformers renders with `trim_blocks`, which drops it.
CHAT_TEMPLATE = _CONTENT + (
    "{% if tools %}"
    "<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ render_content(messages[0]['content']) }}"
    "{% else %}You are a helpful assistant.{% endif %}"
    "{{ '\\n\\n' }}# Tools{{ '\\n\\n' }}You may call one or more functions to assist with the user query.{{ '\\n\\n' }}"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{% for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{% endfor %}"
    "{{ '\\n' }}</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call><|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' and not tools %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "{% if message['role'] == 'system' and tools %}"
    "{% elif message['role'] == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}<|im_start|>user{% endif %}"
    "{{ '\\n' }}<tool_response>\n{{ render_content(message['content']) }}\n</tool_response>"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}<|im_end|>\n{% endif %}"
    "{% elif message['role'] == 'assistant' %}"
    "{% set text = render_content(message['content']) %}"
    "<|im_start|>assistant\n{% generation %}{{ text }}"
    "{% if message['tool_calls'] %}{% for tool_call in message['tool_calls'] %}"
    "{% if not loop.first or text %}{{ '\\n' }}{% endif %}"
    "{% set call = tool_call['function'] if tool_call['function'] else tool_call %}"
    '<tool_call>\n{"name": "{{ call[\'name\'] }}", "arguments": '
    "{% if call['arguments'] is string %}{{ call['arguments'] }}{% else %}{{ call['arguments'] | tojson }}{% endif %}"
    "}\n</tool_call>"
    "{% endfor %}{% endif %}"
    "<|im_end|>{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "<|im_start|>{{ message['role'] }}\n{{ render_content(message['content']) }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(vocab_size: int, chat_template: str | None = None, task: Task = GALAXY10):
    """A Qwen2 tokenizer (byte-level BPE, Qwen's pre-tokenizer) trained on `tokenizer_corpus(task)`. Deterministic."""
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

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
    bpe.train_from_iterator(tokenizer_corpus(task), trainer)
    trained = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=[tuple(m) for m in trained["merges"]],
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        eos_token="<|im_end|>",  # as in Qwen's instruct models: a turn ends the generation
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    tokenizer.chat_template = chat_template or CHAT_TEMPLATE
    return tokenizer


@functools.cache
def _image_only(base):
    """`base` (a stock Qwen processor class) minus video: torchvision is needed for video only."""

    class ImageOnlyProcessor(base):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    # transformers records `type(processor).__name__` in the saved files: keeping the stock name lets
    # `AutoProcessor` load the full processor (video included) wherever torchvision exists.
    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = base.__name__
    return ImageOnlyProcessor


class QwenVLFamily(ModelFamily):
    """Qwen-VL: a `visual` tower whose merger turns each merge_size x merge_size block of patches into one token.

    Attributes (beyond `ModelFamily`'s):
        patch_size: Side in pixels of one vision patch (the image processor's `patch_size`).
    """

    patch_size: int = 14
    merge_size: int = 2
    vision_prefixes = ("model.visual.",)
    merger_prefixes = ("model.visual.merger.",)

    @property
    def pixel_multiple(self) -> int:  # one visual token per merged block of patches
        return self.patch_size * self.merge_size

    def visual_tokens(self, processor, height: int, width: int | None = None) -> int:
        from PIL import Image

        image_processor = getattr(processor, "image_processor", processor)
        out = image_processor(images=[Image.new("RGB", (width or height, height))], return_tensors="np")
        return int(np.prod(out["image_grid_thw"][0])) // int(image_processor.merge_size) ** 2

    def image_features(self, model, pixel_inputs) -> list:
        inner = model.model  # Qwen*VLForConditionalGeneration -> Qwen*VLModel, which holds `visual`
        return list(
            inner.get_image_features(pixel_inputs["pixel_values"], pixel_inputs["image_grid_thw"]).pooler_output
        )

    # --- the tiny builder -------------------------------------------------------------------------------------------

    @abstractmethod
    def processor_class(self):
        """The family's stock processor class."""

    @abstractmethod
    def model_class(self):
        """The family's `...ForConditionalGeneration` class."""

    @abstractmethod
    def config_class(self):
        """The family's model config class."""

    @abstractmethod
    def tiny_config_extras(self, spec: TinyModelSpec, text: dict, vision: dict, mrope_section: list[int]) -> None:
        """Set the family's own fields of the tiny text and vision configs (in place)."""

    def image_only_processor_class(self):
        return _image_only(self.processor_class())

    def response_template(self) -> dict:
        """How to parse a completion's `<tool_call>{json}</tool_call>` blocks back into tool calls (transformers'
        `parse_response`): Qwen's format, as TRL declares it for Qwen3 (`trl.chat_template_utils`)."""
        from trl.chat_template_utils import qwen3_template

        return qwen3_template

    def build_tiny(self, out_dir, spec: TinyModelSpec, seed: int, task):
        import torch
        from transformers import GenerationConfig
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        tokenizer = train_tokenizer(spec.vocab_size, self.chat_template, task)
        tokenizer.response_template = self.response_template()  # saved with the tokenizer: TRL parses tool calls
        image_processor = Qwen2VLImageProcessorPil(
            patch_size=self.patch_size, merge_size=self.merge_size, temporal_patch_size=2
        )
        processor = self.image_only_processor_class()(image_processor, tokenizer, chat_template=self.chat_template)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.model_class()(self._tiny_config(spec, tokenizer))
        endoftext, im_end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
        model.generation_config = GenerationConfig(
            bos_token_id=endoftext, eos_token_id=[im_end, endoftext], pad_token_id=endoftext
        )
        return model, processor

    def _tiny_config(self, spec: TinyModelSpec, tokenizer):
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
        self.tiny_config_extras(spec, text, vision, mrope_section)
        return self.config_class()(text_config=text, vision_config=vision, **ids)

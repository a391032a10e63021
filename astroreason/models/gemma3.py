"""Gemma 3: a SigLIP vision tower whose output is average-pooled to a fixed number of soft tokens per image
(`mm_tokens_per_image`, 256 on the real models) and projected into the language model by `multi_modal_projector`.

The image processor resizes every image to the tower's side (896 px on the real models) before the patches are
cut, so every `image_size` fits and costs the same visual tokens: the processor writes `<start_of_image>`, that many
`<image_soft_token>`s and `<end_of_image>` for each image (pan-and-scan, off by default, adds crops).

Gemma 3's own chat template has no tool turns (TRL's `supports_tool_calling` refuses it: it rejects the `tool`
role); the family's template is Gemma 3's with Qwen-style `<tool_call>` / `<tool_response>` blocks (below).

The tiny builder: a byte-fallback BPE tokenizer trained here (Gemma's normalizer, digits split one by one as in
Gemma's own), Gemma 3's turn and image tokens, the PIL image processor (no torchvision: Gemma 3 has no video
processor) and a 2-layer text model on a 2-layer SigLIP tower of 64 px (8-px patches pooled 2x2 to 16 tokens).
"""

from __future__ import annotations

import json

from ..data.task import GALAXY10, Task
from .family import ModelFamily, register
from .tiny import TinyModelSpec, tokenizer_corpus

BOI, EOI, IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
START_TURN, END_TURN = "<start_of_turn>", "<end_of_turn>"
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", START_TURN, END_TURN, BOI, EOI, IMAGE)

_TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_FORMAT = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)

# Gemma 3's chat template (TRL's copy, `trl/chat_templates/gemma3.jinja`: a system turn folded into the first user
# turn, `model` for the assistant, images as `<start_of_image>`) plus tool calls: `tools` join the system text, an
# assistant turn renders `tool_calls` as `<tool_call>{"name": ..., "arguments": ...}</tool_call>`, and consecutive
# `tool` turns become one user turn of `<tool_response>` blocks. The role-alternation check is gone (a tool turn
# follows the model's). Without tools it renders what the stock template does.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- macro render_content(content) -%}"
    "{%- if content is string -%}{{ content | trim }}"
    "{%- else -%}{%- for item in content -%}"
    "{%- if item['type'] == 'image' -%}{{ '" + BOI + "' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system = render_content(messages[0]['content']) -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set system = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- if tools -%}"
    "{%- set ns = namespace(tools='') -%}"
    "{%- for tool in tools -%}{%- set ns.tools = ns.tools + '\\n' + (tool | tojson) -%}{%- endfor -%}"
    "{%- set system = (system + '\\n\\n' if system else '') + "
    + json.dumps(_TOOLS_PREAMBLE)
    + " + ns.tools + "
    + json.dumps(_TOOLS_FORMAT)
    + " -%}"
    "{%- endif -%}"
    "{%- set first_user_prefix = system + '\\n\\n' if system else '' -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'tool' -%}"
    "{%- if loop.first or loop_messages[loop.index0 - 1]['role'] != 'tool' -%}"
    "{{ '" + START_TURN + "user\\n' }}{%- else -%}{{ '\\n' }}{%- endif -%}"
    "{{ '<tool_response>\\n' + render_content(message['content']) + '\\n</tool_response>' }}"
    "{%- if loop.last or loop_messages[loop.index0 + 1]['role'] != 'tool' -%}{{ '" + END_TURN + "\\n' }}{%- endif -%}"
    "{%- else -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '" + START_TURN + "' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{- render_content(message['content']) -}}"
    "{%- if message['tool_calls'] -%}{%- for tool_call in message['tool_calls'] -%}"
    "{%- if not loop.first or message['content'] -%}{{ '\\n' }}{%- endif -%}"
    "{%- set call = tool_call['function'] if tool_call['function'] else tool_call -%}"
    "{{ '<tool_call>\\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' }}"
    "{%- if call['arguments'] is string -%}{{ call['arguments'] }}{%- else -%}{{ call['arguments'] | tojson }}"
    "{%- endif -%}"
    "{{ '}\\n</tool_call>' }}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '" + END_TURN + "\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '" + START_TURN + "model\\n' }}{%- endif -%}"
)


def train_tokenizer(vocab_size: int, chat_template: str | None = None, task: Task = GALAXY10):
    """A Gemma tokenizer (BPE with byte fallback, spaces as `▁`) trained on `tokenizer_corpus(task)`, with Gemma 3's
    turn and image tokens. Deterministic. Digits are split one by one in training, so no merge joins two digits."""
    from transformers import GemmaTokenizer

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.pre_tokenizer = pre_tokenizers.Digits(individual_digits=True)
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]  # byte fallback for any character the corpus lacks
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[*SPECIAL_TOKENS, *byte_tokens], show_progress=False
    )
    bpe.train_from_iterator(tokenizer_corpus(task), trainer)
    trained = json.loads(bpe.to_str())["model"]
    tokenizer = GemmaTokenizer(
        vocab=trained["vocab"],
        merges=[tuple(m) for m in trained["merges"]],
        eos_token=END_TURN,  # as the tiny Qwen models do: a turn ends the generation
        extra_special_tokens={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE},
        model_max_length=32768,
    )
    tokenizer.add_special_tokens({"extra_special_tokens": [START_TURN, END_TURN]}, replace_extra_special_tokens=False)
    tokenizer.chat_template = chat_template or CHAT_TEMPLATE
    return tokenizer


class Gemma3(ModelFamily):
    """Gemma 3 (`Gemma3ForConditionalGeneration`): `vision_tower` (SigLIP) and `multi_modal_projector`.

    Attributes (beyond `ModelFamily`'s):
        tiny_image_side: Side in pixels the tiny model's processor resizes every image to.
        tiny_patch_size: The tiny SigLIP tower's patch side.
        tiny_tokens_per_image: Soft tokens per image of the tiny model (a square: the patches are pooled to it).
    """

    model_type = "gemma3"
    name = "Gemma 3"
    pixel_multiple = 1  # the processor resizes every image to the tower's side: every side fits
    vision_prefixes = ("model.vision_tower.", "model.multi_modal_projector.")
    merger_prefixes = ("model.multi_modal_projector.",)
    chat_template = CHAT_TEMPLATE
    tiny_image_side = 64
    tiny_patch_size = 8
    tiny_tokens_per_image = 16

    def visual_tokens(self, processor, height: int, width: int | None = None) -> int:
        """The `<image_soft_token>`s the processor writes for one image (its `image_seq_length`, more with
        pan-and-scan crops): the whole processor is asked, the image processor alone does not know."""
        from PIL import Image

        if not hasattr(processor, "tokenizer"):
            raise TypeError(
                f"{self.name} counts visual tokens with the whole processor, not {type(processor).__name__}"
            )
        tokenizer = processor.tokenizer
        out = processor(text=[tokenizer.boi_token], images=[Image.new("RGB", (width or height, height))])
        return list(out["input_ids"][0]).count(tokenizer.image_token_id)

    def image_features(self, model, pixel_inputs) -> list:
        inner = model.model  # Gemma3ForConditionalGeneration -> Gemma3Model, which holds the tower and projector
        return list(inner.get_image_features(pixel_inputs["pixel_values"]).pooler_output)

    def response_template(self) -> dict:
        """How to parse a completion's `<tool_call>{json}</tool_call>` blocks back into tool calls (transformers'
        `parse_response`): TRL's Qwen3 fields, with Gemma's model turn around them."""
        from trl.chat_template_utils import qwen3_template

        fields = dict(qwen3_template["fields"], content={"close_pattern": r"<end_of_turn>\s*", "content": "text"})
        return {**qwen3_template, "start_anchor": f"{START_TURN}model\n", "fields": fields}

    def build_tiny(self, out_dir, spec: TinyModelSpec, seed: int, task):
        import torch
        from transformers import Gemma3ForConditionalGeneration, Gemma3Processor, GenerationConfig
        from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

        tokenizer = train_tokenizer(spec.vocab_size, self.chat_template, task)
        tokenizer.response_template = self.response_template()  # saved with the tokenizer: TRL parses tool calls
        side = self.tiny_image_side
        image_processor = Gemma3ImageProcessorPil(size={"height": side, "width": side})
        processor = Gemma3Processor(
            image_processor, tokenizer, chat_template=self.chat_template, image_seq_length=self.tiny_tokens_per_image
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Gemma3ForConditionalGeneration(self._tiny_config(spec, tokenizer))
        bos, eos, pad, end_turn = tokenizer.convert_tokens_to_ids(["<bos>", "<eos>", "<pad>", END_TURN])
        model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=[end_turn, eos], pad_token_id=pad)
        return model, processor

    def _tiny_config(self, spec: TinyModelSpec, tokenizer):
        from transformers import Gemma3Config

        bos, pad, end_turn, boi, eoi, image = tokenizer.convert_tokens_to_ids(
            ["<bos>", "<pad>", END_TURN, BOI, EOI, IMAGE]
        )
        text = dict(
            vocab_size=len(tokenizer),
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            num_key_value_heads=spec.num_kv_heads,
            head_dim=spec.hidden_size // spec.num_heads,
            query_pre_attn_scalar=spec.hidden_size // spec.num_heads,  # as on the real ones: the head size
            # Gemma 3 interleaves sliding-window and full attention (5:1); the tiny model has one of each.
            layer_types=["sliding_attention"] * (spec.num_layers - 1) + ["full_attention"],
            max_position_embeddings=32768,
            bos_token_id=bos,
            eos_token_id=end_turn,
            pad_token_id=pad,
        )
        vision = dict(
            hidden_size=spec.vision_hidden_size,
            intermediate_size=spec.vision_intermediate_size,
            num_hidden_layers=spec.vision_depth,
            num_attention_heads=spec.vision_heads,
            image_size=self.tiny_image_side,
            patch_size=self.tiny_patch_size,
            vision_use_head=False,  # Gemma 3 reads the tower's patch features, never its pooling head
        )
        return Gemma3Config(
            text_config=text,
            vision_config=vision,
            mm_tokens_per_image=self.tiny_tokens_per_image,
            boi_token_index=boi,
            eoi_token_index=eoi,
            image_token_index=image,
        )


register(Gemma3())

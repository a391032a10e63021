"""The chat side of a zoom episode, shared by training and evaluation: the family's tool-calling chat template where
the processor's own drops tool calls (Qwen2.5-VL's stock one), and its response template, by which a completion's
tool calls are parsed (`trl.chat_template_utils.parse_response`), where the tokenizer has none."""

from __future__ import annotations


def tool_templates(processor, family) -> tuple[str | None, dict | None]:
    """(chat template, response template) a zoom episode needs in place of the processor's; None where its own
    serves."""
    from trl.chat_template_utils import supports_tool_calling  # lazy: trl loads with the trainer or the episode

    tokenizer = getattr(processor, "tokenizer", processor)
    chat = None if supports_tool_calling(processor) else family.chat_template
    has_parser = getattr(tokenizer, "response_template", None) is not None or (
        getattr(tokenizer, "response_schema", None) is not None
    )
    return chat, None if has_parser else family.response_template()


def tool_capable(processor, family) -> None:
    """Give the processor the family's tool-calling chat template and response template where it lacks them (in
    place: the processor a trainer renders and parses with)."""
    chat, response = tool_templates(processor, family)
    tokenizer = getattr(processor, "tokenizer", processor)
    if chat is not None:
        processor.chat_template = tokenizer.chat_template = chat
    if response is not None:
        tokenizer.response_template = response


def suppressing_placeholders(generation_kwargs: dict | None, model_config) -> dict:
    """`generation_kwargs` that also never sample the model's image and video placeholder tokens: a sampled one in a
    turn would be read back as an image or a video that is not there once a tool has returned an image."""
    kwargs = dict(generation_kwargs or {})
    placeholders = {getattr(model_config, n, None) for n in ("image_token_id", "video_token_id")} - {None}
    kwargs["suppress_tokens"] = sorted({*kwargs.get("suppress_tokens", ()), *placeholders})
    return kwargs

"""Generation backends: each turns a batch of conversational prompts (with an optional image each) into completions
and reports the tokens it spent, so the budget can charge them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Generation:
    """One completion and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class SamplingSettings:
    """Decoding settings; part of every cache key, so a change never reuses old answers."""

    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 is greedy decoding
    top_p: float = 1.0
    seed: int = 0

    def generate_kwargs(self) -> dict:
        if self.temperature <= 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": True, "temperature": self.temperature,
                "top_p": self.top_p}


def chat_messages(prompt: list[dict], image=None) -> list[dict]:
    """The exact messages TRL builds in training: the image block goes before the user's text."""
    from trl.data_utils import prepare_multimodal_messages

    return prepare_multimodal_messages(prompt, images=[image]) if image is not None else prompt


class TransformersBackend:
    """Batched `model.generate` on a local model (the default backend)."""

    name = "transformers"

    def __init__(self, model, processor, sampling: SamplingSettings, *, batch_size: int = 16):
        self.model, self.processor, self.sampling, self.batch_size = model.eval(), processor, sampling, batch_size
        tokenizer = getattr(processor, "tokenizer", processor)
        tokenizer.padding_side = "left"  # decoder-only batched generation pads on the left
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, model_dir: str, sampling: SamplingSettings, *, batch_size: int = 16, **kwargs):
        from ..models import load_model_and_processor

        model, processor = load_model_and_processor(model_dir, **kwargs)
        return cls(model, processor, sampling, batch_size=batch_size)

    @torch.no_grad()
    def generate(self, prompts: list[list[dict]], images: list | None = None) -> list[Generation]:
        images = images if images is not None else [None] * len(prompts)
        out: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            out += self._generate_batch(prompts[start : start + self.batch_size], images[start : start + self.batch_size])
        return out

    def _generate_batch(self, prompts, images) -> list[Generation]:
        texts = [
            self.processor.apply_chat_template(chat_messages(p, im), tokenize=False, add_generation_prompt=True)
            for p, im in zip(prompts, images)
        ]
        has_images = [im for im in images if im is not None]
        inputs = self.processor(
            text=texts, images=has_images or None, padding=True, return_tensors="pt"
        ).to(self.model.device)
        torch.manual_seed(self.sampling.seed)
        generated = self.model.generate(
            **inputs, **self.sampling.generate_kwargs(), pad_token_id=self.tokenizer.pad_token_id
        )
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        results = []
        for ids, n_prompt in zip(new_tokens, prompt_lengths):
            # Count completion tokens up to and including the first end-of-sequence token; the rest is padding.
            eos = self.model.generation_config.eos_token_id
            eos = set(eos if isinstance(eos, list) else [eos])
            ids = ids.tolist()
            n = next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))
            results.append(Generation(self.tokenizer.decode(ids[:n], skip_special_tokens=True), int(n_prompt), n))
        return results

"""Helpers shared by the integrity tests: a class-sorted copy of a surrogate, a tiny prompt-reading classifier, and a
GRPO reward that any two random completions tell apart (`letter_share_reward`, named by dotted path in a recipe).

`PromptNumberModel` is a real model trained with a real `transformers.Trainer`: it reads the first number written in
a prompt (through a thermometer code) and nothing else. On a prompt that carries the row index of a class-sorted
file it learns the label; on a clean prompt it can only learn the class prior.
"""

from __future__ import annotations

import h5py
import numpy as np
import torch
from torch import nn

BINS = 256


def sorted_copy(src, dst):
    """`src` with its rows ordered by class (then RA), as the real Galaxy10 DECaLS file is."""
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        order = np.lexsort((f["ra"][()], f["ans"][()]))
        for key, value in f.attrs.items():
            g.attrs[key] = value
        g.attrs["sorted_by_class"] = True
        for key in f:
            g.create_dataset(key, data=f[key][()][order])
            for k, v in f[key].attrs.items():
                g[key].attrs[k] = v
    return dst


def prompt_features(texts, max_value: float) -> np.ndarray:
    """Thermometer code of the first number in each text (scaled by `max_value`), plus a "no number" flag."""
    from astroreason.integrity.lint import _numbers

    out = np.zeros((len(texts), BINS + 1), np.float32)
    for i, text in enumerate(texts):
        values = _numbers(text)[0]
        if len(values) == 0:
            out[i, BINS] = 1.0
        else:
            level = int(np.clip(values[0] / max_value, 0, 1) * (BINS - 1))
            out[i, : level + 1] = 1.0
    return out


class PromptNumberModel(nn.Module):
    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.linear = nn.Linear(BINS + 1, n_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x, labels=None):
        logits = self.linear(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class PromptNumberBackend:
    """The trained model as an evaluation backend (`generate(prompts, images)`), answering in the task's format."""

    def __init__(self, model: PromptNumberModel, max_value: float):
        self.model, self.max_value = model.eval(), max_value

    @torch.no_grad()
    def generate(self, prompts, images=None):
        from astroreason.data.galaxy10 import DECALS_CLASSES
        from astroreason.evaluation.backends import Generation
        from astroreason.integrity.lint import prompt_text
        from astroreason.prompts import answer_text

        x = torch.from_numpy(prompt_features([prompt_text(p) for p in prompts], self.max_value))
        predictions = self.model(x)["logits"].argmax(-1).tolist()
        return [Generation(answer_text(int(c), DECALS_CLASSES), 0, 0) for c in predictions]


SCORED: list[int] = []  # the completions each call of `letter_share_reward` scored, in order


def letter_share_reward(completions, **kwargs) -> list[float]:
    """The share of a completion's characters that are letters: it varies between a random model's completions."""
    from astroreason.rewards import completion_text

    SCORED.append(len(completions))
    texts = [completion_text(c) for c in completions]
    return [sum(ch.isalpha() for ch in t) / max(len(t), 1) for t in texts]

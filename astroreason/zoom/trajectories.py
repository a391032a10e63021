"""Zoom trajectories for a warm-start SFT (`recipes/sft.py --zoom true`, docs/zoom.md): the episode a zoom run should
learn to play, made from the data, so that GRPO starts from a policy that calls the tool at all (under an
outcome-only reward, one that never calls it never learns to).

A trajectory is the zoom prompt (its system turn and the first view), one assistant turn that calls `zoom` on the
galaxy's focus box (`data.focus`: the region that decides its class, as the surrogate knows it, or the galaxy's
light), the tool's own result for that box (the crop of the full-resolution source, as in training and
evaluation), and the answer. The box is fitted to the tool's limits (`arms.box.fit_box`) and written with two decimals,
as a model writes one. Which rows are taught this way: those whose focus box is small (`max_box`: the downsampled
first view shows the region that decides the class smallest there, so a zoom can help), or a seeded `fraction` of
them (then the choice does not depend on the galaxy, and greedy decoding follows the larger share). The others
answer at once, so GRPO's samples hold both. Only the assistant turns are trained (`assistant_only_loss`).

The rows are conversations of TRL's language-modeling type (`messages`). The image arm's carry both images inside
their turns (the first view in the user turn, the crop in the tool turn) and an empty `images`: TRL's vision collator
renders them with the processor, which reads every image block. They are an `IterableDataset` made row by row as
the trainer reads them, kept out of Arrow, which would give every content block the keys of all the others. The
token arm's are text only: an Arrow dataset with TRL's `tools` column.
"""

from __future__ import annotations

import json

import numpy as np

from ..arms import ZoomTool, fit_box
from .environment import POSITION_COLUMN, SPLIT_COLUMN

SHUFFLE_BUFFER = 1024  # the image arm's trajectories are reshuffled each epoch within this many rows


def trajectory(prompt: list[dict], answer: str, box: list[float] | None = None, result=None) -> list[dict]:
    """The prompt, then the answer; with a `box`, first the assistant's call of `zoom` on it and the tool's `result`.
    The call's content is empty, as the model writes a call; its arguments are JSON text, as a parsed call renders."""
    if box is None:
        return [*prompt, {"role": "assistant", "content": answer}]
    call = {"type": "function", "function": {"name": "zoom", "arguments": json.dumps({"bbox_2d": box})}}
    return [
        *prompt,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": "zoom", "content": result},
        {"role": "assistant", "content": answer},
    ]


def taught_rows(focus, *, fraction: float, seed: int, max_box: float | None = None) -> np.ndarray:
    """Which rows (one focus box [x1, y1, x2, y2] each, in fractions) are taught a zoom, as a boolean mask: with
    `max_box`, those whose focus box has a longer side of at most `max_box` (where a zoom can help); else a seeded
    choice of round(fraction * n) of them."""
    focus = np.asarray(focus, np.float64).reshape(-1, 4)
    if max_box is not None:
        return np.maximum(focus[:, 2] - focus[:, 0], focus[:, 3] - focus[:, 1]) <= max_box
    taught = np.zeros(len(focus), bool)
    taught[np.random.default_rng(seed).permutation(len(focus))[: round(fraction * len(focus))]] = True
    return taught


class Trajectories:
    """The trajectories of a zoom SFT dataset (`prompt`, `completion`, the zoom columns, the image arm's `image`),
    row by row: `messages(row, i)` calls the tool on row `i`'s fitted box where it is taught a zoom."""

    def __init__(self, dataset, tool: ZoomTool, boxes: list[list[float]], taught: np.ndarray):
        self.dataset, self.tool, self.boxes, self.taught = dataset, tool, boxes, taught

    def messages(self, row: dict, i: int) -> list[dict]:
        system, user = row["prompt"]
        if self.tool.arm.carries_image:  # the first view inside its turn, before the text, as TRL puts it
            user = {"role": "user", "content": [{"type": "image", "image": row["image"]}, _text(user)]}
        answer = row["completion"][0]["content"]
        if not self.taught[i]:
            return trajectory([system, user], answer)
        box = self.boxes[i]
        return trajectory([system, user], answer, box, self.tool(row[SPLIT_COLUMN], row[POSITION_COLUMN], box).result)

    def __iter__(self):
        for i, row in enumerate(self.dataset):
            yield {"messages": self.messages(row, i), "images": []}


def _rows(trajectories: Trajectories):
    yield from trajectories


def _text(message: dict) -> dict:
    return {"type": "text", "text": message["content"]}


def zoom_trajectories(dataset, tool: ZoomTool, focus, taught: np.ndarray, *, seed: int, tools: list[dict]):
    """The SFT trajectories of a zoom dataset (`zoom.with_zoom_columns` of an arm's SFT dataset): `focus` holds each
    row's focus box (fitted here to the tool's limits), `taught` which rows zoom on it (`taught_rows`); `seed`
    shuffles the image arm's rows; `tools` is the tool schema the chat template renders (the token arm's `tools`
    column; the image arm's collator is given it)."""
    trajectories = Trajectories(dataset, tool, [fit_box(b, tool.limits) for b in focus], taught)
    if tool.arm.carries_image:
        from datasets import IterableDataset  # lazy: datasets loads with the arm's dataset

        # Iterable: its rows pass through as Python objects (no Arrow), made as the trainer reads them.
        return IterableDataset.from_generator(_rows, gen_kwargs={"trajectories": trajectories}).shuffle(
            seed=seed, buffer_size=SHUFFLE_BUFFER
        )
    schema = json.dumps(tools)
    return dataset.map(
        lambda row, i: {"messages": trajectories.messages(row, i), "tools": schema},
        with_indices=True,
        remove_columns=dataset.column_names,
        desc="zoom trajectories",
    )

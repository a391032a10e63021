"""Zoom episodes in the evaluation (`--zoom true`, docs/zoom.md): each galaxy is a multi-turn conversation in which
the model may call `zoom(bbox_2d)` before it answers, run by the local `transformers` backend.

One episode: the zoom system turn and the first view; generate; if the completion holds a zoom call (parsed as TRL
parses it: `trl.chat_template_utils.parse_response` with the family's response template), run it through the
arm's `ZoomTool` in a `ZoomEnvironment` (the training rollout's own tool: the crop from the full-resolution
source), append the assistant turn and the tool turn (an image block, or the codes as text), and generate again; up
to `zoom_max_turns` rounds of calls. The last completion is the answer, parsed as every answer is. An episode whose
last completion still calls the tool is `capped` (it has no answer).

Episodes are batched across galaxies turn by turn: every turn, the galaxies still going (up to `batch_size` at a
time) are one `generate` call, reserved against the budget (prompt tokens + `max_new_tokens` each) before it is
sent, so a cap stops the run between two turns, within one request. An episode is saved only once it has ended:
one stopped by a cap mid-way is asked again, from its first turn, when the run resumes (its paid turns are in the
spend ledger, not in the cache).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..zoom import POSITION_COLUMN, SPLIT_COLUMN, ZoomEnvironment, ZoomTool
from ..zoom.chat import tool_templates


@dataclass
class Episode:
    """One galaxy's zoom episode as it runs: the conversation so far, its images in order, the turns' costs."""

    messages: list[dict]
    images: list
    env: ZoomEnvironment
    turns: list[dict] = field(default_factory=list)  # per generated turn: prompt_tokens, completion_tokens, dollars
    text: str = ""
    logprob: float = 0.0
    capped: bool = False
    done: bool = False

    def record(self) -> dict:
        """What the cache keeps of the episode (besides the answer): its calls, turns and tokens."""
        return {
            "calls": [c.to_json() for c in self.env.calls],
            "n_calls": self.env.n_calls,
            "valid_calls": self.env.valid_calls,
            "turns": len(self.turns),
            "turn_tokens": self.turns,
            "total_tokens": sum(t["prompt_tokens"] + t["completion_tokens"] for t in self.turns),
            "capped": self.capped,
        }


def first_messages(prompt: list[dict], image) -> list[dict]:
    """The episode's opening turns in content blocks: the image block before the user's text (as in training)."""
    from trl.data_utils import prepare_multimodal_messages  # lazy: trl loads with a backend

    return prepare_multimodal_messages(prompt, images=[image] if image is not None else [])


def parsed_turn(tokenizer, generation) -> dict:
    """The assistant turn of a completion, its tool calls parsed as TRL parses them (a malformed call is text)."""
    from trl.chat_template_utils import parse_response  # lazy: trl loads with a backend

    return parse_response(tokenizer, generation.token_ids, prefix=generation.prompt_ids)


def zoom_calls(turn: dict) -> list[dict]:
    """The function calls of a parsed assistant turn."""
    return [c["function"] for c in turn.get("tool_calls") or [] if c.get("type") == "function"]


def tool_message(name: str, result) -> dict:
    """The tool turn TRL appends: content blocks for an image result, text otherwise."""
    if isinstance(result, list):
        return {"role": "tool", "name": name, "content": result}
    return {"role": "tool", "name": name, "content": [{"type": "text", "text": str(result)}]}


def call_tool(env: ZoomEnvironment, function: dict):
    """Run one call as TRL runs it: the tool's own result, or an error text for a wrong name or arguments (never an
    exception). A bad box is the tool's own error message (`ZoomCall.error`)."""
    if function.get("name") != "zoom":
        return {"error": f"Tool {function.get('name')} not found."}
    try:
        return env.zoom(**(function.get("arguments") or {}))
    except TypeError as err:
        return {"error": str(err)}


class ZoomEpisodes:
    """Runs zoom episodes on a `TransformersBackend`, rendered with the family's tool-calling chat template where the
    processor's own drops tool calls and parsed with its response template where the tokenizer has none
    (`zoom.chat.tool_templates`); the backend's processor itself is left as it is."""

    def __init__(self, backend, tool: ZoomTool, split: str, family, *, max_turns: int):
        self.backend, self.tool, self.split, self.max_turns = backend, tool, split, max_turns
        self.chat_template, response_template = tool_templates(backend.processor, family)
        self.tokenizer = getattr(backend.processor, "tokenizer", backend.processor)
        if response_template is not None:  # a shallow copy parses with it; the backend's tokenizer is unchanged
            self.tokenizer = copy.copy(self.tokenizer)
            self.tokenizer.response_template = response_template

    def start(self, prompt: list[dict], image, position: int) -> Episode:
        env = ZoomEnvironment(self.tool)
        env.reset(**{SPLIT_COLUMN: self.split, POSITION_COLUMN: position})
        return Episode(first_messages(prompt, image), [image] if image is not None else [], env)

    def stream(self, prompts, images, positions, budget=None) -> Iterator[list[tuple[int, Episode]]]:
        """Episodes of these galaxies, turn by turn in batches; yields `(k, Episode)` lists as episodes end."""
        episodes = [self.start(p, im, pos) for p, im, pos in zip(prompts, images, positions)]
        active = list(range(len(episodes)))
        while active:
            step = self.backend.batch_size
            going = []
            for start in range(0, len(active), step):
                batch = active[start : start + step]
                self.turn([episodes[k] for k in batch], budget)
                ended = [(k, episodes[k]) for k in batch if episodes[k].done]
                if ended:
                    yield ended
                going += [k for k in batch if not episodes[k].done]
            active = going

    def turn(self, batch: list[Episode], budget) -> None:
        """One generated turn of each episode in `batch` (one gate reservation), and the tool calls it made."""
        tools = [batch[0].env.zoom]  # the schema TRL renders: read from the method's type hints and docstring
        generations = self.backend.conversations(
            [e.messages for e in batch],
            [e.images for e in batch],
            budget,
            tools=tools,
            chat_template=self.chat_template,
        )
        for episode, g in zip(batch, generations):
            episode.turns.append(
                {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens, "dollars": g.dollars}
            )
            episode.logprob += g.logprob or 0.0
            turn = parsed_turn(self.tokenizer, g)
            calls = zoom_calls(turn)
            episode.text = g.text
            if not calls:
                episode.done = True
                continue
            rounds = len(episode.turns) - 1  # rounds of tool calls already run
            if rounds >= self.max_turns:
                episode.capped = episode.done = True
                continue
            content = turn.get("content") or ""
            episode.messages.append({**turn, "content": [{"type": "text", "text": content}]})
            for function in calls:
                result = call_tool(episode.env, function)
                message = tool_message(function.get("name", "zoom"), result)
                episode.images += [b["image"] for b in message["content"] if b.get("type") == "image"]
                episode.messages.append(message)


def zoom_summary(records: list[dict]) -> dict:
    """`result.json`'s `zoom`: how often the model zoomed, what it cost, and accuracy with and without zoom."""
    episodes = [r for r in records if r.get("zoom")]
    if not episodes:
        return {"n": 0}
    zoomed = [r for r in episodes if r["zoom"]["valid_calls"] > 0]
    unzoomed = [r for r in episodes if r["zoom"]["valid_calls"] == 0]
    accuracy = lambda rs: (sum(r["prediction"] == r["label"] for r in rs) / len(rs)) if rs else None  # noqa: E731
    n = len(episodes)
    return {
        "n": n,
        "zoom_rate": len(zoomed) / n,
        "zooms_per_galaxy": sum(r["zoom"]["n_calls"] for r in episodes) / n,
        "valid_zooms_per_galaxy": sum(r["zoom"]["valid_calls"] for r in episodes) / n,
        "turns_per_galaxy": sum(r["zoom"]["turns"] for r in episodes) / n,
        "tokens_per_galaxy": sum(r["zoom"]["total_tokens"] for r in episodes) / n,
        "accuracy_with_zoom": accuracy(zoomed),
        "n_with_zoom": len(zoomed),
        "accuracy_without_zoom": accuracy(unzoomed),
        "n_without_zoom": len(unzoomed),
        "capped": sum(bool(r["zoom"]["capped"]) for r in episodes),
    }

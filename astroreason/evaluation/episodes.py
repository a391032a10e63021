"""Zoom episodes in the evaluation (`--zoom true`, docs/zoom.md): each galaxy is a multi-turn conversation in which
the model may call `zoom(bbox_2d)` before it answers, run by the local `transformers` backend (`LocalTurns`) or an
OpenAI-compatible server (`ServedTurns`).

One episode: the zoom system turn and the first view; generate; if the completion holds a zoom call (locally parsed
as TRL parses it, `trl.chat_template_utils.parse_response` with the family's response template; a server's
`message.tool_calls`), run it through the
arm's `ZoomTool` in a `ZoomEnvironment` (the training rollout's own tool: the crop from the full-resolution
source), append the assistant turn and the tool turn (an image block, or the codes as text), and generate again; up
to `zoom_max_turns` rounds of calls. The last completion is the answer, parsed as every answer is. An episode whose
last completion still calls the tool is `capped` (it has no answer).

Episodes run across galaxies: locally, turn by turn, every turn the galaxies still going (up to `batch_size` at a
time) are one `generate` call; served, up to `concurrency` requests in flight (`OpenAIBackend.chats`, the plain
evaluation's own pool), an episode's next turn queued as soon as its last one is answered (its own turns one after
another). Each turn is reserved against the budget (prompt tokens, or their bound, + `max_new_tokens` each) before
it is sent, so a cap stops the run between two turns of an episode, within the requests in flight.

Every turn is handed to the caller as it is paid (`stream` yields the episodes that took one): the harness saves a
finished episode to its cache and the turn of one still going to its turn log, and a resumed run replays an unfinished
episode's paid turns (`ZoomEpisodes.start(..., paid=)`: the recorded assistant turns, and the tool run again on the
recorded calls, deterministic, the crop from the same source) and asks only its next turn.
"""

from __future__ import annotations

import copy
import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..zoom import POSITION_COLUMN, SPLIT_COLUMN, ZoomEnvironment, ZoomTool, zoom_schema
from ..zoom.chat import tool_templates
from .backends import Generation, image_data_url, openai_messages

ZOOM_TURN_TOKENS = 128  # new tokens of a zoom episode's turn: room for a call, its box digit by digit
TURN_COSTS = ("prompt_tokens", "completion_tokens", "attempts", "dollars")  # an episode's: the sum over its turns


@dataclass
class Episode:
    """One galaxy's zoom episode as it runs: the conversation so far, its images in order, its turns."""

    messages: list[dict]
    images: list
    env: ZoomEnvironment
    # per turn (`turn_entry`): its costs, text, logprob, assistant message and calls (what a resumed run replays)
    turns: list[dict] = field(default_factory=list)
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
            "turn_tokens": [{f: t[f] for f in TURN_COSTS} for t in self.turns],
            "total_tokens": sum(t["prompt_tokens"] + t["completion_tokens"] for t in self.turns),
            "capped": self.capped,
        }


def call_tool(env: ZoomEnvironment, function: dict):
    """Run one call as TRL runs it: the tool's own result, or an error text for a wrong name or arguments (never an
    exception). A bad box is the tool's own error message (`ZoomCall.error`)."""
    if function.get("name") != "zoom":
        return {"error": f"Tool {function.get('name')} not found."}
    arguments = function.get("arguments") or {}
    if not isinstance(arguments, dict):
        return {"error": f"arguments must be a JSON object, got {arguments!r}"}
    try:
        return env.zoom(**arguments)
    except TypeError as err:
        return {"error": str(err)}


@dataclass
class Turn:
    """One generated turn: its cost, the assistant message to append, the calls it made (`id`, `name`,
    `arguments` each)."""

    generation: Generation
    message: dict
    calls: list[dict]


def turn_entry(turn: Turn) -> dict:
    """What an episode keeps of a turn (JSON): its costs, and all a resumed run needs to replay it (`replayed`)."""
    g = turn.generation
    costs = {f: getattr(g, f) for f in TURN_COSTS}
    return {**costs, "text": g.text, "logprob": g.logprob, "message": turn.message, "calls": turn.calls}


def replayed(entry: dict) -> Turn:
    """A paid turn read back from its entry, as it was generated (nothing is sent)."""
    costs = {f: entry[f] for f in TURN_COSTS}
    return Turn(Generation(entry["text"], **costs, logprob=entry["logprob"]), entry["message"], entry["calls"])


class LocalTurns:
    """Turns on a `TransformersBackend`: batched `generate`, rendered with the family's tool-calling chat template
    where the processor's own drops tool calls and parsed as TRL parses them (`parse_response`, with the family's
    response template where the tokenizer has none; `zoom.chat.tool_templates`). The backend's processor is left
    as it is."""

    def __init__(self, backend, family):
        self.backend, self.batch_size = backend, backend.batch_size
        self.chat_template, response_template = tool_templates(backend.processor, family)
        self.tokenizer = getattr(backend.processor, "tokenizer", backend.processor)
        if response_template is not None:  # a shallow copy parses with it; the backend's tokenizer is unchanged
            self.tokenizer = copy.copy(self.tokenizer)
            self.tokenizer.response_template = response_template

    def first(self, prompt: list[dict], image) -> tuple[list[dict], list]:
        """The opening turns in content blocks, the image block before the user's text (as in training)."""
        from trl.data_utils import prepare_multimodal_messages  # lazy: trl loads with a backend

        images = [image] if image is not None else []
        return prepare_multimodal_messages(prompt, images=images), images

    def generate(self, episodes: list[Episode], budget) -> list[Turn]:
        from trl.chat_template_utils import parse_response  # lazy: trl loads with a backend

        tools = [episodes[0].env.zoom]  # the schema TRL renders: read from the method's type hints and docstring
        generations = self.backend.conversations(
            [e.messages for e in episodes],
            [e.images for e in episodes],
            budget,
            tools=tools,
            chat_template=self.chat_template,
        )
        turns = []
        for g in generations:
            parsed = parse_response(self.tokenizer, g.token_ids, prefix=g.prompt_ids)
            calls = [c["function"] for c in parsed.get("tool_calls") or [] if c.get("type") == "function"]
            message = {**parsed, "content": [{"type": "text", "text": parsed.get("content") or ""}]}
            turns.append(Turn(g, message, calls))
        return turns

    def tool_message(self, call: dict, result) -> tuple[dict, list]:
        """The tool turn TRL appends (content blocks for an image result, text otherwise) and its images."""
        name = call.get("name", "zoom")
        if isinstance(result, list):
            return {"role": "tool", "name": name, "content": result}, [b["image"] for b in result if "image" in b]
        return {"role": "tool", "name": name, "content": [{"type": "text", "text": str(result)}]}, []


class ServedTurns:
    """Turns on an `OpenAIBackend`: one chat-completions request per turn, with `tools=` (the zoom schema TRL
    renders), up to the backend's `concurrency` in flight across episodes; the server parses the tool calls
    (`message.tool_calls`, arguments as JSON text), and a tool turn carries an image result as an `image_url` data
    URL (PNG: the crop's pixels exactly), a text result as text."""

    def __init__(self, backend):
        self.backend = backend
        self.tools = zoom_schema()

    def first(self, prompt: list[dict], image) -> tuple[list[dict], list]:
        return openai_messages(prompt, image), [image] if image is not None else []

    def stream(self, episodes: list[Episode], queue: deque, budget) -> Iterator[tuple[int, Turn]]:
        """The next turn of each episode in `queue` (its position in `episodes`) as it is answered; the caller may
        append to `queue` while it reads."""
        conversation = lambda k: episodes[k].messages  # noqa: E731 (read when its request is sent)
        for k, g in self.backend.chats(queue, conversation, budget, tools=self.tools):
            yield k, self.turn(g)

    @staticmethod
    def turn(g: Generation) -> Turn:
        tool_calls = [c for c in (g.message or {}).get("tool_calls") or [] if c.get("type") == "function"]
        calls = []
        for c in tool_calls:
            arguments = c["function"].get("arguments")
            try:
                arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
            except json.JSONDecodeError:
                pass  # left as text: `call_tool` answers with an error the model reads
            calls.append({"id": c.get("id"), "name": c["function"].get("name"), "arguments": arguments})
        message = {"role": "assistant", "content": g.text or ""}
        if tool_calls:
            message["tool_calls"] = tool_calls
        return Turn(g, message, calls)

    def tool_message(self, call: dict, result) -> tuple[dict, list]:
        if isinstance(result, list):
            images = [b["image"] for b in result if "image" in b]
            content = [{"type": "image_url", "image_url": {"url": image_data_url(im)}} for im in images]
            return {"role": "tool", "tool_call_id": call.get("id"), "content": content}, images
        return {"role": "tool", "tool_call_id": call.get("id"), "content": str(result)}, []


class ZoomEpisodes:
    """Runs zoom episodes through `turns` (`LocalTurns`: turn by turn across the galaxies, batched; `ServedTurns`:
    up to `concurrency` requests in flight)."""

    def __init__(self, turns, tool: ZoomTool, split: str, *, max_turns: int):
        self.turns, self.tool, self.split, self.max_turns = turns, tool, split, max_turns

    def start(self, prompt: list[dict], image, position: int, paid: list[dict] = ()) -> Episode:
        """A new episode, or one resumed: its `paid` turns (`turn_entry`s) replayed through `advance` (the tool run
        again on their calls), nothing sent."""
        env = ZoomEnvironment(self.tool)
        env.reset(**{SPLIT_COLUMN: self.split, POSITION_COLUMN: position})
        episode = Episode(*self.turns.first(prompt, image), env)
        for entry in paid:
            self.advance(episode, replayed(entry))
        return episode

    def stream(self, prompts, images, positions, budget=None, paid=None) -> Iterator[list[tuple[int, Episode]]]:
        """Episodes of these galaxies (resumed from `paid[k]`, their turns paid so far, where given); yields
        `(k, Episode)` lists of the episodes that took a turn, as they take it (`done` once it ended them)."""
        paid = paid or [()] * len(prompts)
        episodes = [self.start(*args) for args in zip(prompts, images, positions, paid)]
        ended = [(k, e) for k, e in enumerate(episodes) if e.done]
        if ended:  # a replay that ends its episode (never written so, but then it is saved, not lost)
            yield ended
        active = [k for k, e in enumerate(episodes) if not e.done]
        if isinstance(self.turns, ServedTurns):
            yield from self._in_flight(episodes, active, budget)
        else:
            yield from self._in_rounds(episodes, active, budget)

    def _in_rounds(self, episodes: list[Episode], active: list[int], budget) -> Iterator[list[tuple[int, Episode]]]:
        """Turn by turn across the galaxies: every round, the episodes still going, `batch_size` at a time."""
        while active:
            going = []
            for start in range(0, len(active), self.turns.batch_size):
                batch = active[start : start + self.turns.batch_size]
                for k, turn in zip(batch, self.turns.generate([episodes[k] for k in batch], budget)):
                    self.advance(episodes[k], turn)
                yield [(k, episodes[k]) for k in batch]
                going += [k for k in batch if not episodes[k].done]
            active = going

    def _in_flight(self, episodes: list[Episode], active: list[int], budget) -> Iterator[list[tuple[int, Episode]]]:
        """Up to `concurrency` requests in flight: an episode's next turn is queued once its last one is answered."""
        queue = deque(active)
        for k, turn in self.turns.stream(episodes, queue, budget):
            self.advance(episodes[k], turn)
            if not episodes[k].done:
                queue.append(k)
            yield [(k, episodes[k])]

    def advance(self, episode: Episode, turn: Turn) -> None:
        """Add one generated turn to its episode, and run the tool calls it made."""
        g = turn.generation
        episode.turns.append(turn_entry(turn))
        episode.logprob += g.logprob or 0.0
        episode.text = g.text
        if not turn.calls:
            episode.done = True
            return
        if len(episode.turns) - 1 >= self.max_turns:  # as many rounds of calls as the cap allows: no answer
            episode.capped = episode.done = True
            return
        episode.messages.append(turn.message)
        for call in turn.calls:
            message, images = self.turns.tool_message(call, call_tool(episode.env, call))
            episode.messages.append(message)
            episode.images += images


def zoom_summary(records: list[dict]) -> dict:
    """`result.json`'s `zoom`: how often the model zoomed (over all galaxies and per true class, and how uniform its
    decision was), what it cost, and accuracy with and without zoom."""
    episodes = [r for r in records if r.get("zoom")]
    if not episodes:
        return {"n": 0}
    did_zoom = [r["zoom"]["valid_calls"] > 0 for r in episodes]
    zoomed = [r for r, z in zip(episodes, did_zoom) if z]
    unzoomed = [r for r, z in zip(episodes, did_zoom) if not z]
    accuracy = lambda rs: (sum(r["prediction"] == r["label"] for r in rs) / len(rs)) if rs else None  # noqa: E731
    n = len(episodes)
    by_class: dict[int, list[bool]] = {}
    for r, z in zip(episodes, did_zoom):
        by_class.setdefault(int(r["label"]), []).append(z)
    return {
        "n": n,
        "zoom_rate": len(zoomed) / n,
        # Whether the model chooses when to zoom: the share of galaxies whose decision (zoom or not) is the arm's
        # majority decision; 1.0 is the same decision for every galaxy ("tool-usage homogenisation").
        "homogenisation": max(len(zoomed), len(unzoomed)) / n,
        "zoom_rate_per_class": {str(c): sum(d) / len(d) for c, d in sorted(by_class.items())},
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

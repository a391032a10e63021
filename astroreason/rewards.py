"""GRPO reward functions, and the one answer parser that training and evaluation share.

TRL calls a reward function as `f(prompts, completions, completion_ids, **columns)`; every dataset column (here
`label`) arrives as a keyword, and it returns one float per completion. Completions are conversational
(`[{"role": "assistant", "content": ...}]`) or plain strings; both are accepted.

An answer is the text inside the last `<answer>...</answer>` tags, matched to a class name exactly (case and
surrounding whitespace aside). Anything else is unparseable: `parse_answer` returns None and no reward ever maps it
to a class. The class names are the split's (`data.task`, from its manifest): `get_reward_funcs` binds them to the
rewards of a run (a reward called without them scores against Galaxy10 DECaLS's, as every run did before).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable

import numpy as np

from .data.galaxy10 import DECALS_CLASSES
from .dotted import import_dotted
from .errors import UserError

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
# The whole completion: optional reasoning, then exactly one answer block at the end.
_FORMAT = re.compile(r"^(?:(?!<answer>).)*<answer>[^<]*</answer>\s*$", re.DOTALL | re.IGNORECASE)

# Groups of classes Galaxy10 DECaLS itself confuses: a wrong answer inside the true class's group earns partial credit.
CONFUSABLE_GROUPS: tuple[tuple[int, ...], ...] = (
    (0, 1),  # Disturbed, Merging
    (2, 3, 4),  # Round, In-between round, Cigar-shaped smooth
    (5, 6, 7),  # Barred, tight and loose unbarred spirals
    (8, 9),  # Edge-on without and with bulge
)
PARTIAL_CREDIT = 0.5


def completion_text(completion) -> str:
    """The text of a completion, conversational or plain."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # content parts
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    raise TypeError(f"completion: expected a string or a list of messages, got {type(completion).__name__}")


@functools.cache
def _class_index(classes: tuple[str, ...]) -> dict[str, int]:
    return {" ".join(name.split()).lower(): i for i, name in enumerate(classes)}


def parse_answer(text: str, classes) -> int | None:
    """The index in `classes` of the class named in the last `<answer>` block, or None if there is none or it names
    no class."""
    answers = _ANSWER.findall(text)
    if not answers:
        return None
    return _class_index(tuple(classes)).get(" ".join(answers[-1].split()).lower())


def format_reward(completions, classes=DECALS_CLASSES, **kwargs) -> list[float]:
    """1 for reasoning (optional) followed by exactly one `<answer>` block naming a class, else 0."""
    out = []
    for completion in completions:
        text = completion_text(completion)
        ok = bool(_FORMAT.match(text)) and len(_ANSWER.findall(text)) == 1 and parse_answer(text, classes) is not None
        out.append(1.0 if ok else 0.0)
    return out


def accuracy_reward(completions, label, classes=DECALS_CLASSES, **kwargs) -> list[float]:
    """1 when the parsed answer is the true class, else 0 (unparseable answers included)."""
    return [1.0 if parse_answer(completion_text(c), classes) == int(y) else 0.0 for c, y in zip(completions, label)]


def _group_of(label: int) -> tuple[int, ...]:
    return next((g for g in CONFUSABLE_GROUPS if label in g), (label,))


def check_partial_credit(classes) -> None:
    """Refuse partial credit for classes other than Galaxy10 DECaLS's: its groups (`CONFUSABLE_GROUPS`) are theirs."""
    if tuple(classes) != DECALS_CLASSES:
        raise UserError(
            f"reward_funcs: partial credit groups Galaxy10 DECaLS's classes, not these ({', '.join(classes)}); "
            "use accuracy"
        )


def partial_credit_reward(completions, label, classes=DECALS_CLASSES, **kwargs) -> list[float]:
    """1 for the true class, `PARTIAL_CREDIT` for a confusable one (same morphology group), 0 otherwise. Galaxy10
    DECaLS's classes only (`check_partial_credit`)."""
    check_partial_credit(classes)
    out = []
    for completion, y in zip(completions, label):
        predicted = parse_answer(completion_text(completion), classes)
        if predicted is None:
            out.append(0.0)
        elif predicted == int(y):
            out.append(1.0)
        else:
            out.append(PARTIAL_CREDIT if predicted in _group_of(int(y)) else 0.0)
    return out


# --- zoom episodes (astroreason.zoom) ------------------------------------------------------------------------------
# TRL hands reward functions the rollouts' environments (`environments=`); a `ZoomEnvironment` records its calls.


def _environments(environments, n: int, name: str) -> list:
    if environments is None or len(environments) != n:
        raise UserError(f"reward_funcs: {name} needs zoom episodes (--zoom true), which give it the rollouts' tools")
    return environments


def ended_on_tool_call(completion) -> bool:
    """Whether a multi-turn completion ends on a tool call that was never answered: the turn cap stopped the episode
    (TRL runs at most `max_tool_calling_iterations` rounds of calls), or the tool's result would not fit in
    `max_completion_length`. Such a rollout has no final answer to score."""
    return isinstance(completion, list) and bool(completion) and bool(completion[-1].get("tool_calls"))


def zoom_cost_reward(completions, environments=None, log_metric=None, label=None, **kwargs) -> list[float]:
    """Minus `zoom_cost` per zoom call (valid or not): the price of looking again. Also logs the zoom rate (over all
    rollouts, and per true class of the step's galaxies: `zoom/rate_class_<label>`, whether zooming depends on the
    galaxy), the calls and tokens per rollout, the share of invalid calls and of rollouts stopped at the turn cap."""
    envs = _environments(environments, len(completions), "zoom_cost")
    if log_metric is not None and envs:
        calls = sum(e.n_calls for e in envs)
        log_metric("zoom/rate", _zoom_rate(envs))
        for y in sorted({int(v) for v in label or ()}):
            log_metric(f"zoom/rate_class_{y}", _zoom_rate([e for e, v in zip(envs, label) if int(v) == y]))
        log_metric("zoom/calls_per_rollout", calls / len(envs))
        log_metric("zoom/tokens_per_rollout", sum(e.zoom_tokens for e in envs) / len(envs))
        log_metric("zoom/invalid_share", (calls - sum(e.valid_calls for e in envs)) / calls if calls else 0.0)
        log_metric("zoom/unanswered_share", sum(map(ended_on_tool_call, completions)) / len(completions))
    return [-e.zoom_cost * e.n_calls for e in envs]


def _zoom_rate(envs) -> float:
    return sum(e.n_calls > 0 for e in envs) / len(envs)


def zoom_bonus_reward(completions, label, environments=None, classes=DECALS_CLASSES, **kwargs) -> list[float]:
    """`zoom_bonus` for a right answer reached with at least one valid zoom, else 0: a tool bonus that only
    correctness earns, against the zoom rate collapsing to 0 under an outcome-only reward."""
    envs = _environments(environments, len(completions), "zoom_bonus")
    right = accuracy_reward(completions, label, classes)
    return [e.zoom_bonus if r and e.valid_calls else 0.0 for e, r in zip(envs, right)]


def skip_unanswered(func: Callable) -> Callable:
    """`func`, returning None for a rollout that ended on an unanswered tool call (`ended_on_tool_call`).

    When every reward function returns None for a rollout, TRL leaves it out of its group's baseline and gives it
    zero advantage: it contributes no policy gradient, instead of being scored 0 as a wrong answer would be."""

    @functools.wraps(func)
    def wrapped(completions, **kwargs):
        rewards = func(completions=completions, **kwargs)
        return [None if ended_on_tool_call(c) else r for c, r in zip(completions, rewards)]

    return wrapped


REWARD_FUNCS: dict[str, Callable] = {
    "format": format_reward,
    "accuracy": accuracy_reward,
    "partial": partial_credit_reward,
    "zoom_cost": zoom_cost_reward,
    "zoom_bonus": zoom_bonus_reward,
}


# The rewards that read the label (by registry name): the random-reward control of a GRPO run replaces each with a
# `random_reward` of the same mean (`astroreason.audit.random_reward`).
LABEL_REWARDS = ("accuracy", "partial", "zoom_bonus")


def random_reward(mean: float, *, seed, high: float = 1.0, name: str = "random_reward") -> Callable:
    """A reward that reads neither the completion nor the label: `high` with probability `mean / high`, else 0, so
    its expected value is `mean` (Bernoulli(mean) for a 0/1 reward such as `accuracy`). The draws come from one
    generator seeded with `seed` (an int or a list of ints, as numpy's `default_rng` takes), in call order: the same
    seed gives the same values.

    The control for a GRPO gain ("Spurious Rewards", arXiv 2506.10947: GRPO with random rewards raised
    Qwen2.5-Math-7B by 21 points on MATH-500): rerun with each label-reading reward replaced by this one at the
    mean the run logged for it, a gain that does not need the labels shows up in the rerun too. `name` is the
    function's `__name__`, under which TRL logs it (`rewards/NAME/mean`)."""
    if high <= 0:
        raise ValueError(f"random_reward: high must be > 0, got {high}")
    p = min(max(float(mean) / high, 0.0), 1.0)  # a logged mean may stray a rounding error outside [0, high]
    rng = np.random.default_rng(seed)

    def reward(completions, **kwargs) -> list[float]:
        return [float(high) if hit else 0.0 for hit in rng.random(len(completions)) < p]

    reward.__name__ = reward.__qualname__ = name
    return reward


def get_reward_funcs(names, classes=DECALS_CLASSES) -> list[Callable]:
    """Reward functions by registry name (`REWARD_FUNCS`) or, for user code, by dotted path (`my_module.my_reward`,
    importable from the working directory or `PYTHONPATH`, called the way TRL calls every reward). A list, or one
    comma-separated string; an unknown name, or a path that does not import, is one clear error. The registry's
    rewards that read answers score them against `classes` (the split's class names, by label); `partial` is
    refused for classes other than Galaxy10 DECaLS's."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in REWARD_FUNCS and "." not in n]
    if unknown or not names:
        raise UserError(
            f"reward_funcs: unknown {unknown or 'empty list'} (known: {', '.join(REWARD_FUNCS)}, "
            "or a dotted path module.function)"
        )
    if "partial" in names:
        check_partial_credit(classes)
    return [_with_classes(REWARD_FUNCS[n], classes) if n in REWARD_FUNCS else _user_reward(n) for n in names]


def _with_classes(func: Callable, classes) -> Callable:
    """`func` scoring against `classes`, under its own name (TRL logs a reward by `__name__`)."""
    if "classes" not in inspect.signature(func).parameters:
        return func
    classes = tuple(classes)

    @functools.wraps(func)
    def bound(*args, **kwargs):
        return func(*args, classes=classes, **kwargs)

    return bound


def _user_reward(path: str) -> Callable:
    func = import_dotted(path, "reward_funcs")
    if not callable(func):
        raise UserError(f"reward_funcs: {path!r} is a {type(func).__name__}, not a function")
    return func

"""GRPO reward functions, and the one answer parser that training and evaluation share.

TRL calls a reward function as `f(prompts, completions, completion_ids, **columns)`; every dataset column (here
`label`) arrives as a keyword, and it returns one float per completion. Completions are conversational
(`[{"role": "assistant", "content": ...}]`) or plain strings; both are accepted.

An answer is the text inside the last `<answer>...</answer>` tags, matched to a class name exactly (case and
surrounding whitespace aside). Anything else is unparseable: `parse_answer` returns None and no reward ever maps it
to a class.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .data.galaxy10 import DECALS_CLASSES
from .dotted import import_dotted
from .errors import UserError

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
# The whole completion: optional reasoning, then exactly one answer block at the end.
_FORMAT = re.compile(r"^(?:(?!<answer>).)*<answer>[^<]*</answer>\s*$", re.DOTALL | re.IGNORECASE)
_CLASS_INDEX = {name.lower(): i for i, name in enumerate(DECALS_CLASSES)}

# Groups of classes Galaxy10 itself confuses: a wrong answer inside the true class's group earns partial credit.
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


def parse_answer(text: str) -> int | None:
    """The class index named in the last `<answer>` block, or None if there is none or it names no class."""
    answers = _ANSWER.findall(text)
    if not answers:
        return None
    return _CLASS_INDEX.get(" ".join(answers[-1].split()).lower())


def format_reward(completions, **kwargs) -> list[float]:
    """1 for reasoning (optional) followed by exactly one `<answer>` block naming a class, else 0."""
    out = []
    for completion in completions:
        text = completion_text(completion)
        ok = bool(_FORMAT.match(text)) and len(_ANSWER.findall(text)) == 1 and parse_answer(text) is not None
        out.append(1.0 if ok else 0.0)
    return out


def accuracy_reward(completions, label, **kwargs) -> list[float]:
    """1 when the parsed answer is the true class, else 0 (unparseable answers included)."""
    return [1.0 if parse_answer(completion_text(c)) == int(y) else 0.0 for c, y in zip(completions, label)]


def _group_of(label: int) -> tuple[int, ...]:
    return next((g for g in CONFUSABLE_GROUPS if label in g), (label,))


def partial_credit_reward(completions, label, **kwargs) -> list[float]:
    """1 for the true class, `PARTIAL_CREDIT` for a confusable one (same morphology group), 0 otherwise."""
    out = []
    for completion, y in zip(completions, label):
        predicted = parse_answer(completion_text(completion))
        if predicted is None:
            out.append(0.0)
        elif predicted == int(y):
            out.append(1.0)
        else:
            out.append(PARTIAL_CREDIT if predicted in _group_of(int(y)) else 0.0)
    return out


REWARD_FUNCS: dict[str, Callable] = {
    "format": format_reward,
    "accuracy": accuracy_reward,
    "partial": partial_credit_reward,
}


def get_reward_funcs(names) -> list[Callable]:
    """Reward functions by registry name (`REWARD_FUNCS`) or, for user code, by dotted path (`my_module.my_reward`,
    importable from the working directory or `PYTHONPATH`, called the way TRL calls every reward). A list, or one
    comma-separated string; an unknown name, or a path that does not import, is one clear error."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in REWARD_FUNCS and "." not in n]
    if unknown or not names:
        raise UserError(
            f"reward_funcs: unknown {unknown or 'empty list'} (known: {', '.join(REWARD_FUNCS)}, "
            "or a dotted path module.function)"
        )
    return [REWARD_FUNCS[n] if n in REWARD_FUNCS else _user_reward(n) for n in names]


def _user_reward(path: str) -> Callable:
    func = import_dotted(path, "reward_funcs")
    if not callable(func):
        raise UserError(f"reward_funcs: {path!r} is a {type(func).__name__}, not a function")
    return func

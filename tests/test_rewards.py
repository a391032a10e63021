"""The GRPO rewards on real completion strings, called the way TRL calls them (conversational and plain)."""

from __future__ import annotations

import pytest

from astroreason.arms import ImageArm
from astroreason.data.galaxy10 import DECALS_CLASSES
from astroreason.errors import UserError
from astroreason.prompts import answer_text, build_prompt
from astroreason.rewards import (
    PARTIAL_CREDIT,
    REWARD_FUNCS,
    accuracy_reward,
    format_reward,
    get_reward_funcs,
    parse_answer,
    partial_credit_reward,
)

ROUND, IN_BETWEEN, CIGAR, BARRED, TIGHT = 2, 3, 4, 5, 6

# (completion text, class it names or None when unparseable, whether the format is right)
COMPLETIONS = [
    ("<answer>Round Smooth</answer>", ROUND, True),
    ("<think>Smooth light, no arms, nearly circular.</think>\n<answer>Round Smooth</answer>", ROUND, True),
    ("The bulge is bright and the arms are tightly wound. <answer>Unbarred Tight Spiral</answer>\n", TIGHT, True),
    ("<answer>  barred   SPIRAL </answer>", BARRED, True),  # case and spacing aside, it is the class name
    ("<answer>Round Smooth</answer> I am not sure though.", ROUND, False),  # text after the answer
    ("<answer>Merging</answer> or maybe <answer>Round Smooth</answer>", ROUND, False),  # two answers: last is parsed
    ("Round Smooth", None, False),  # no tags: never mapped to a class
    ("<answer>Spiral</answer>", None, False),  # not a class name
    ("<answer>Round Smooth or Cigar Shaped Smooth</answer>", None, False),  # hedging names no single class
    ("<answer>Round Smooth", None, False),  # unterminated
    ("<answer></answer>", None, False),
    ("", None, False),
    ("<answer>2</answer>", None, False),  # a class index is not a class name
]


def conversational(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def trl_call(func, texts, labels, *, as_conversation: bool):
    """Call a reward exactly as GRPOTrainer does: prompts, completions, completion_ids, then every dataset column."""
    completions = [conversational(t) if as_conversation else t for t in texts]
    prompts = [build_prompt(ImageArm) for _ in texts] if as_conversation else ["prompt"] * len(texts)
    return func(prompts=prompts, completions=completions, completion_ids=[[0]] * len(texts), label=labels)


@pytest.mark.parametrize("text,expected,_", COMPLETIONS)
def test_parse_answer(text, expected, _):
    assert parse_answer(text, DECALS_CLASSES) == expected


@pytest.mark.parametrize("as_conversation", [True, False], ids=["conversational", "plain"])
def test_format_reward(as_conversation):
    texts = [t for t, _, _ in COMPLETIONS]
    expected = [1.0 if ok else 0.0 for _, _, ok in COMPLETIONS]
    assert trl_call(format_reward, texts, [0] * len(texts), as_conversation=as_conversation) == expected


@pytest.mark.parametrize("as_conversation", [True, False], ids=["conversational", "plain"])
def test_accuracy_reward(as_conversation):
    texts = [t for t, _, _ in COMPLETIONS]
    # Against the class each one names: 1 when it names one; an unparseable answer earns nothing whatever the label.
    for label in range(len(DECALS_CLASSES)):
        rewards = trl_call(accuracy_reward, texts, [label] * len(texts), as_conversation=as_conversation)
        assert rewards == [1.0 if named == label else 0.0 for _, named, _ in COMPLETIONS], label


@pytest.mark.parametrize("as_conversation", [True, False], ids=["conversational", "plain"])
def test_partial_credit_reward(as_conversation):
    texts = [
        answer_text(ROUND, DECALS_CLASSES),
        answer_text(IN_BETWEEN, DECALS_CLASSES),
        answer_text(CIGAR, DECALS_CLASSES),
        answer_text(BARRED, DECALS_CLASSES),
        "Round Smooth",
        "<answer>Smooth</answer>",
    ]
    rewards = trl_call(partial_credit_reward, texts, [ROUND] * len(texts), as_conversation=as_conversation)
    # exact; same smooth group twice; a spiral is no credit; unparseable (even naming the right class untagged) is 0
    assert rewards == [1.0, PARTIAL_CREDIT, PARTIAL_CREDIT, 0.0, 0.0, 0.0]
    # Edge-on with bulge vs without: confusable; edge-on vs merging: not.
    assert partial_credit_reward([answer_text(8, DECALS_CLASSES), answer_text(1, DECALS_CLASSES)], label=[9, 9]) == [
        PARTIAL_CREDIT,
        0.0,
    ]


def test_every_sft_target_is_rewarded_in_full():
    """The SFT answers and the GRPO rewards agree: every class's target text earns full format and accuracy."""
    texts = [answer_text(i, DECALS_CLASSES) for i in range(len(DECALS_CLASSES))]
    labels = list(range(len(DECALS_CLASSES)))
    for func in (format_reward, accuracy_reward, partial_credit_reward):
        assert trl_call(func, texts, labels, as_conversation=True) == [1.0] * len(texts), func.__name__


def test_content_parts_and_numpy_labels():
    import numpy as np

    parts = [{"role": "assistant", "content": [{"type": "text", "text": "<answer>Merging</answer>"}]}]
    assert accuracy_reward([parts], label=[np.int64(1)]) == [1.0]


def test_reward_funcs_by_name():
    # Each bound to the run's classes (`classes`, here Galaxy10 DECaLS's), under its own name (TRL logs by it).
    unbound = [f.__wrapped__ for f in get_reward_funcs(["format", "accuracy"])]
    assert unbound == [format_reward, accuracy_reward]
    assert [f.__wrapped__ for f in get_reward_funcs("format, partial")] == [format_reward, partial_credit_reward]
    assert [f.__name__ for f in get_reward_funcs("format, partial")] == ["format_reward", "partial_credit_reward"]
    assert set(REWARD_FUNCS) == {"format", "accuracy", "partial", "zoom_cost", "zoom_bonus"}
    with pytest.raises(UserError, match="unknown"):
        get_reward_funcs(["format", "accuracy_typo"])
    with pytest.raises(UserError, match="empty"):
        get_reward_funcs([])

"""User rewards named by dotted path in the random-reward control's tests (`coin_reward.coin_reward`, with this
folder on `sys.path`, as pytest puts it there).

`coin_reward` is a planted reward that says nothing about the galaxy: a fair coin per completion. `labelled_reward`
takes the label, so the control cannot know what random reward would stand in for it."""

from __future__ import annotations

import numpy as np

_COIN = np.random.default_rng(1234)


def coin_reward(completions, **kwargs) -> list[float]:
    return [1.0 if heads else 0.0 for heads in _COIN.random(len(completions)) < 0.5]


def labelled_reward(completions, label, **kwargs) -> list[float]:
    return [float(int(y) % 2) for y in label]

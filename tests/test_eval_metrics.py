"""The vectorised bootstrap of the classification metrics agrees with sklearn's definitions on every resample."""

import numpy as np
import pytest

from astroreason.evaluation.metrics import _bootstrap_point_metrics, _point_metrics, classification_metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_bootstrap_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, k = 60, 10
    y = rng.integers(0, k, n)
    p = np.where(rng.random(n) < 0.2, -1, np.where(rng.random(n) < 0.5, y, rng.integers(0, k, n)))
    idx = rng.integers(0, n, size=(25, n))
    fast = _bootstrap_point_metrics(y, p, k, idx)
    for row, resample in enumerate(idx):
        slow = _point_metrics(y[resample], p[resample], list(range(k)))
        for name, value in slow.items():
            assert fast[name][row] == pytest.approx(value), (name, row)


def test_interval_brackets_the_point_estimate():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 10, 200)
    preds = [int(v) if rng.random() < 0.5 else None for v in y]
    m = classification_metrics(y, preds, 10, n_boot=500)
    for name in ("accuracy", "balanced_accuracy", "macro_f1"):
        lo, hi = m["interval"][name]
        assert lo <= m[name] <= hi and lo < hi

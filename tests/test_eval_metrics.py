"""The vectorised metrics (point estimates and every bootstrap resample) agree with sklearn's definitions."""

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, recall_score

from astroreason.evaluation.metrics import _confusion_counts, _metrics_from_counts, classification_metrics


def sklearn_metrics(y, p, k):
    """The reference: balanced accuracy as the mean recall over the classes present (an unparseable answer, -1, is
    simply wrong), macro-F1 over all k classes."""
    return {
        "accuracy": float(np.mean(y == p)),
        "balanced_accuracy": float(recall_score(y, p, labels=np.unique(y), average="macro", zero_division=0)),
        "macro_f1": float(f1_score(y, p, labels=list(range(k)), average="macro", zero_division=0)),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_bootstrap_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, k = 60, 10
    y = rng.integers(0, k, n)
    p = np.where(rng.random(n) < 0.2, -1, np.where(rng.random(n) < 0.5, y, rng.integers(0, k, n)))
    idx = rng.integers(0, n, size=(25, n))
    fast = _metrics_from_counts(_confusion_counts(y, p, k, idx))
    for row, resample in enumerate(idx):
        slow = sklearn_metrics(y[resample], p[resample], k)
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


@pytest.mark.parametrize("seed", [0, 1])
def test_point_metrics_confusion_and_recall_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, k = 80, 10
    y = rng.integers(0, k - 1, n)  # class 9 never true: its recall is None, its F1 still counts
    p = np.where(rng.random(n) < 0.15, -1, np.where(rng.random(n) < 0.5, y, rng.integers(0, k, n)))
    m = classification_metrics(y, [None if v < 0 else int(v) for v in p], k, n_boot=50)
    for name, value in sklearn_metrics(y, p, k).items():
        assert m[name] == pytest.approx(value), name
    assert m["confusion_matrix"] == confusion_matrix(y, p, labels=list(range(k)) + [-1])[:k].tolist()
    recall = recall_score(y, p, labels=list(range(k)), average=None, zero_division=0)
    assert m["per_class_recall"][:-1] == pytest.approx(recall[:-1].tolist()) and m["per_class_recall"][-1] is None


def test_out_of_range_class_is_refused():
    with pytest.raises(ValueError, match="classes 0..2"):
        classification_metrics([0, 1], [0, 3], 3)

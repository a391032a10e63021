"""Classification metrics with bootstrap intervals, and the paired comparison of two runs on the same samples.

A prediction is a class index or None (an unparseable answer). An unparseable answer counts as wrong everywhere and is
never mapped to a class; it is reported as its own rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The bootstrap and the paired comparison live in the low `stats` module (the results ledger's verdict uses them too);
# re-exported here, where callers have always found them.
from ..stats import PARSE_FAIL, bootstrap_interval, paired_comparison
from ..stats import encode_predictions as _encode

__all__ = ["PARSE_FAIL", "SUMMARY_METRICS", "bootstrap_interval", "classification_metrics", "paired_comparison"]

SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")  # each reported with a bootstrap interval


def _confusion_counts(y: np.ndarray, p: np.ndarray, num_classes: int, idx: np.ndarray) -> np.ndarray:
    """One confusion matrix per resample (rows of `idx`): shape (resamples, true class, 1 + predicted class), column 0
    counting the unparseable answers. One bincount for all resamples."""
    k, b = num_classes, len(idx)
    codes = y[idx] * (k + 1) + (p[idx] + 1) + (np.arange(b) * k * (k + 1))[:, None]
    return np.bincount(codes.ravel(), minlength=b * k * (k + 1)).reshape(b, k, k + 1)


def _metrics_from_counts(m: np.ndarray) -> dict:
    """Accuracy, balanced accuracy and macro-F1 of each confusion matrix, with sklearn's definitions (checked in the
    tests): balanced accuracy is the mean recall over the classes present, an unparseable answer is simply wrong,
    macro-F1 averages over all classes with 0 for a class never true nor predicted."""
    tp = np.diagonal(m[:, :, 1:], axis1=1, axis2=2).astype(float)
    support = m.sum(axis=2)
    fp = m[:, :, 1:].sum(axis=1) - tp
    fn = support - tp
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "accuracy": tp.sum(axis=1) / support.sum(axis=1),
        "balanced_accuracy": recall.sum(axis=1) / present.sum(axis=1),
        "macro_f1": f1.mean(axis=1),
        "recall": recall,
    }


def classification_metrics(
    labels: Sequence[int],
    predictions: Sequence[int | None],
    num_classes: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Accuracy, balanced accuracy, macro-F1 (each with a 95 % bootstrap interval), per-class recall, the confusion
    matrix (rows: true class; last column: unparseable) and the parse-failure rate."""
    y, p = np.asarray(labels, dtype=np.int64), _encode(predictions)
    if len(y) == 0:
        raise ValueError("no samples to score")
    if y.min() < 0 or y.max() >= num_classes or p.min() < PARSE_FAIL or p.max() >= num_classes:
        raise ValueError(f"labels and predictions must be classes 0..{num_classes - 1} (or None for unparseable)")
    confusion = _confusion_counts(y, p, num_classes, np.arange(len(y))[None])
    point = _metrics_from_counts(confusion)

    def summary(idx):
        draws = _metrics_from_counts(_confusion_counts(y, p, num_classes, idx))
        return {k: draws[k] for k in SUMMARY_METRICS}

    interval = bootstrap_interval(summary, len(y), n_boot=n_boot, seed=seed)
    matrix = np.concatenate([confusion[0, :, 1:], confusion[0, :, :1]], axis=1)  # unparseable answers last
    recall = point["recall"][0]
    counts = np.bincount(y, minlength=num_classes)
    return {
        "n": int(len(y)),
        **{k: float(point[k][0]) for k in SUMMARY_METRICS},
        "interval": interval,
        "parse_failure_rate": float(np.mean(p == PARSE_FAIL)),
        "per_class_recall": [float(r) if c else None for r, c in zip(recall, counts)],
        "class_counts": counts.tolist(),
        "majority_rate": float(counts.max() / len(y)),
        "confusion_matrix": matrix.tolist(),
    }


def tokens_per_galaxy(result: dict) -> float:
    """Prompt and completion tokens per galaxy, every turn of a zoom episode counted: what an answer cost."""
    return (result["prompt_tokens"] + result["completion_tokens"]) / result["metrics"]["n"]

"""The statistics every layer may use: the percentile bootstrap and the paired comparison of two runs.

Plain numpy and scipy, nothing of the project's: the evaluation's metrics (`evaluation.metrics`, which re-exports
these) and the results ledger's keep/discard verdict (`integrity.ledger`, a lower layer) both call them, so they live
below both. A prediction is a class index or None (an unparseable answer, always wrong).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest

PARSE_FAIL = -1  # the code of an unparseable answer


def encode_predictions(predictions: Sequence[int | None]) -> np.ndarray:
    return np.array([PARSE_FAIL if p is None else int(p) for p in predictions], dtype=np.int64)


def bootstrap_interval(metrics_fn, n: int, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Percentile bootstrap 95 % interval of every metric `metrics_fn(idx)` returns, resampling the n samples.

    `idx` holds all the resamples at once, shape (n_boot, n), and `metrics_fn` returns one value per resample for
    each metric, so a metric is computed vectorised over every resample. (Not `scipy.stats.bootstrap`: it refuses a
    run of one sample, which must still be reported.)"""
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in metrics_fn(idx).items()}


def paired_comparison(
    labels: Sequence[int],
    predictions_a: Sequence[int | None],
    predictions_b: Sequence[int | None],
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Compare two runs on the same samples: exact McNemar test on the discordant pairs and a paired bootstrap
    95 % interval of the accuracy difference (a - b)."""
    if not (len(labels) == len(predictions_a) == len(predictions_b)) or len(labels) == 0:
        raise ValueError("paired comparison needs the same, non-empty set of samples in both runs")
    y = np.asarray(labels, dtype=np.int64)
    a, b = encode_predictions(predictions_a) == y, encode_predictions(predictions_b) == y
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = only_a + only_b
    # Exact McNemar: under H0 each discordant pair favours a or b with probability 1/2.
    p_value = float(binomtest(only_a, discordant, 0.5).pvalue) if discordant else 1.0
    diff = a.astype(float) - b.astype(float)
    interval = bootstrap_interval(lambda idx: {"d": diff[idx].mean(axis=1)}, len(y), n_boot=n_boot, seed=seed)["d"]
    return {
        "n": int(len(y)),
        "accuracy_a": float(a.mean()),
        "accuracy_b": float(b.mean()),
        "accuracy_difference": float(diff.mean()),
        "difference_interval": interval,
        "only_a_correct": only_a,
        "only_b_correct": only_b,
        "both_correct": int(np.sum(a & b)),
        "both_wrong": int(np.sum(~a & ~b)),
        "mcnemar_p_value": p_value,
    }

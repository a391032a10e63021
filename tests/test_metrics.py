"""Metrics and the paired comparison, checked against hand-countable cases and scipy/sklearn definitions."""

import numpy as np
import pytest
from scipy.stats import binomtest

from astroreason.evaluation.metrics import classification_metrics, paired_comparison


def test_unparseable_counts_as_wrong_and_is_reported():
    labels = [0, 0, 1, 1, 2, 2, 2, 2]
    preds = [0, None, 1, 0, 2, 2, None, 1]
    m = classification_metrics(labels, preds, num_classes=3, n_boot=200)
    assert m["accuracy"] == pytest.approx(4 / 8)
    assert m["parse_failure_rate"] == pytest.approx(2 / 8)
    assert m["per_class_recall"] == pytest.approx([0.5, 0.5, 0.5])
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    # The unparseable column is the last one and no parse failure was mapped to a class.
    assert [row[-1] for row in m["confusion_matrix"]] == [1, 0, 1]
    assert sum(map(sum, m["confusion_matrix"])) == 8
    assert m["majority_rate"] == pytest.approx(0.5)


def test_interval_brackets_point_and_narrows_with_n():
    rng = np.random.default_rng(1)
    small_y = rng.integers(0, 4, 50)
    big_y = rng.integers(0, 4, 2000)
    noisy = lambda y: [int(v) if rng.random() < 0.6 else int((v + 1) % 4) for v in y]  # noqa: E731
    small = classification_metrics(small_y, noisy(small_y), 4, n_boot=300)
    big = classification_metrics(big_y, noisy(big_y), 4, n_boot=300)
    for m in (small, big):
        lo, hi = m["interval"]["accuracy"]
        assert lo <= m["accuracy"] <= hi
    width = lambda m: m["interval"]["accuracy"][1] - m["interval"]["accuracy"][0]  # noqa: E731
    assert width(big) < width(small) / 3
    assert small["per_class_recall"][0] is not None


def test_paired_comparison_counts_and_exact_mcnemar():
    labels = [0] * 20
    a = [0] * 15 + [1] * 5  # 15 right
    b = [0] * 8 + [1] * 12  # 8 right, all inside a's right ones
    c = paired_comparison(labels, a, b, n_boot=500)
    assert (c["only_a_correct"], c["only_b_correct"], c["both_correct"], c["both_wrong"]) == (7, 0, 8, 5)
    assert c["accuracy_difference"] == pytest.approx(0.35)
    assert c["mcnemar_p_value"] == pytest.approx(binomtest(7, 7, 0.5).pvalue)
    lo, hi = c["difference_interval"]
    assert 0 < lo <= 0.35 <= hi
    same = paired_comparison(labels, a, a, n_boot=100)
    assert same["mcnemar_p_value"] == 1.0 and same["difference_interval"] == [0.0, 0.0]


def test_paired_comparison_refuses_mismatched_samples():
    with pytest.raises(ValueError):
        paired_comparison([0, 1], [0], [0, 1])

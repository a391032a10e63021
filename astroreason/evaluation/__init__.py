"""Evaluation: generation backends, budget caps, per-sample caches, metrics with intervals, comparisons, reports."""

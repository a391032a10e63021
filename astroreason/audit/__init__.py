"""The audit (`astroreason audit DATA_OR_RUN`): probes that ask a question a shortcut would answer wrongly.

- `probes`: row order, duplicates across splits, a metadata-only classifier, the blank-input and label-permutation
  controls, seed fingerprints, the ceiling.
- `permutation`: the label-permutation control's start (the root of a run's base chain) and its training.

The audit sits above training and evaluation: its model controls score a run's model through an evaluation backend
and rerun its recipe through the training builders, reading the records the integrity guards (`astroreason.integrity`)
wrote. Nothing below imports it.
"""

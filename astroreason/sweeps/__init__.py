"""Sweeps: a grid of arms x seeds of one recipe, planned into a manifest and run as a SLURM array (or locally).

- `config`: the sweep file (YAML) as dataclasses, validated with one-line errors.
- `plan`: the manifest, one row per task (derived seeds, a fixed directory and a full recipe config per task).
- `task`: one task: train (resuming from its last checkpoint), evaluate, write its result; wall-clock and spend carried
  across requeues in a per-task state file.
- `spend`: the project's spend ledger as the sweeps use it (estimate, remaining, charge).
- `slurm`: `sbatch --array` submission and task states from `squeue`; `local`: the same tasks without SLURM.
- `noise`: the noise floor, measured: one recipe under N seeds, each evaluated on the same galaxies, the spread of
  the accuracy recorded as the experiment's floor (`astroreason noise`).
- `collect`: the results table and the comparison report (per arm over seeds; paired tests between arms).
"""

"""Research-integrity guards: the pipeline itself catches a shortcut before it passes for a result.

- `lint`: refuses prompts that carry a row index, an id, a position or any dataset column besides the galaxy
  (template fields and rendered texts), with an explicit, recorded override for deliberate experiments.
- `alarms`: a TrainerCallback that marks a run suspect when its logs look like a shortcut (loss or entropy collapse,
  accuracy or reward jumps, reward variance collapse).
- `gate`: a result above the ceiling (default 0.95 for Galaxy10 DECaLS) is suspect, never a success.
- `fingerprint`: a TrainerCallback recording a run's initial weights, first batch and first forward passes.
- `ledger`: the append-only, hash-chained `results.tsv` and the `experiment_log.md` generated from it.

These guards sit below the arms, training and evaluation, which use them; they import only the data and the prompts.
The audit that reads their records and retrains or re-asks a run's model is `astroreason.audit`, above them.
"""

SUSPECT_FILE = "SUSPECT.json"

"""Evaluate a checkpoint on a prepared split, in either modality, and print one `RESULT {json}` line.

python eval/run.py --config eval/configs/tiny_image.yaml --model runs/demo/sft-image
"""

import sys

from astroreason.errors import exit_status
from astroreason.evaluation.commands import run_eval

if __name__ == "__main__":
    sys.exit(exit_status(run_eval, sys.argv[1:]))

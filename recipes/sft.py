"""Supervised fine-tuning of a Qwen-VL model on Galaxy10, from images or from image tokens written as text.

accelerate launch recipes/sft.py --config recipes/configs/tiny/sft_image.yaml [--key value ...]
python recipes/sft.py --config recipes/configs/tiny/sft_tokens.yaml --resume true
"""

import sys

from trl import SFTConfig

from astroreason.errors import exit_status
from astroreason.training import build_sft_trainer, parse_recipe_args, run_training


def main():
    script_args, training_args, model_args = parse_recipe_args(SFTConfig)
    trainer = build_sft_trainer(script_args, training_args, model_args)
    run_training(trainer, script_args)


if __name__ == "__main__":
    sys.exit(exit_status(main))

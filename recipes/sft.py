"""Supervised fine-tuning of a Qwen-VL model on Galaxy10, from images or from image tokens written as text.

    accelerate launch recipes/sft.py --config recipes/configs/tiny/sft_image.yaml [--key value ...]
    python recipes/sft.py --config recipes/configs/tiny/sft_tokens.yaml --resume true
"""

import sys

from trl import ModelConfig, SFTConfig, TrlParser

from astroreason.errors import exit_status
from astroreason.training import GalaxyScriptArguments, build_sft_trainer, run_training


def main():
    parser = TrlParser((GalaxyScriptArguments, SFTConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config()
    trainer = build_sft_trainer(script_args, training_args, model_args)
    run_training(trainer, script_args)


if __name__ == "__main__":
    sys.exit(exit_status(main))

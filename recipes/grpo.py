"""GRPO of a Qwen-VL model on Galaxy10, from images or from image tokens written as text.

    accelerate launch recipes/grpo.py --config recipes/configs/tiny/grpo_image.yaml [--key value ...]
    accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/grpo.py \
        --config recipes/configs/qwen2_5_vl_3b/grpo_lora.yaml --use_vllm true --vllm_mode colocate
"""

import sys

from trl import GRPOConfig

from astroreason.errors import exit_status
from astroreason.training import build_grpo_trainer, parse_recipe_args, run_training


def main():
    script_args, training_args, model_args = parse_recipe_args(GRPOConfig)
    trainer = build_grpo_trainer(script_args, training_args, model_args)
    run_training(trainer, script_args)


if __name__ == "__main__":
    sys.exit(exit_status(main))

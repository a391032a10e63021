"""Everything the SFT and GRPO recipes share: their script arguments and checks, the trainers built from them, resume.

The recipes (recipes/sft.py, recipes/grpo.py) only parse (`parse_recipe_args`), call `build_*_trainer` and
`run_training`. Both arms read the same split manifest and use the same instruction and answer format; only the
galaxy's representation (the arm, `astroreason.arms`) differs.

- `arguments`: `GalaxyScriptArguments` and the checks of a recipe's settings before anything loads;
- `launch`: how the recipe was launched (process count, vLLM);
- `checkpoints`: resume and the refusal to train over a run's own checkpoints;
- `records`: the base record of `fingerprint.json`;
- `memory`: the memory plan per GPU that `estimate_only` prints;
- `builders`: the datasets, the model, the trainers and the run loop.
"""

from .arguments import (
    GalaxyScriptArguments,
    MemoryPlanArguments,
    PartArguments,
    check_lora,
    check_precision,
    check_recipe_values,
    parse_recipe_args,
)
from .builders import (
    build_grpo_trainer,
    build_sft_trainer,
    code_tokens_for,
    galaxy_dataset,
    galaxy_rows,
    lint_datasets,
    load_model,
    peft_config,
    prepare_inputs,
    run_training,
    training_datasets,
)
from .checkpoints import check_output_dir, has_checkpoints, last_checkpoint, load_checkpoint_weights, resume_point
from .launch import VLLM_MODES, VLLM_RANGE, check_launch, check_vllm
from .memory import count_parameters, memory_plan, model_shape
from .records import base_record, training_args_record

__all__ = [
    "VLLM_MODES",
    "VLLM_RANGE",
    "GalaxyScriptArguments",
    "MemoryPlanArguments",
    "PartArguments",
    "base_record",
    "build_grpo_trainer",
    "build_sft_trainer",
    "check_launch",
    "check_lora",
    "check_output_dir",
    "check_precision",
    "check_recipe_values",
    "check_vllm",
    "count_parameters",
    "code_tokens_for",
    "galaxy_dataset",
    "galaxy_rows",
    "has_checkpoints",
    "last_checkpoint",
    "lint_datasets",
    "load_checkpoint_weights",
    "load_model",
    "memory_plan",
    "model_shape",
    "parse_recipe_args",
    "peft_config",
    "prepare_inputs",
    "resume_point",
    "run_training",
    "training_args_record",
    "training_datasets",
]

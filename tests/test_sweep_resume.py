"""A resumed run continues from its checkpoint's weights, not from its initial ones.

transformers 5.23's Trainer resumes a full model with a raw `load_state_dict(strict=False)` that matches none of a
Qwen-VL checkpoint's keys; `astroreason.training.load_checkpoint_weights` loads them properly. Requeued sweep tasks
depend on this, so it is checked here on the tiny model: 3 steps, then a resume to 6 from checkpoint-3.
"""

from __future__ import annotations

import torch
from test_sweep import write_base_config
from transformers import Qwen2_5_VLForConditionalGeneration, TrainerCallback
from trl import ModelConfig, SFTConfig, TrlParser

from astroreason.training import GalaxyScriptArguments, build_sft_trainer, run_training


class WeightsAtStart(TrainerCallback):
    """The model's weights when training begins (after any checkpoint was loaded)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train(config, output_dir, steps: int) -> dict:
    parser = TrlParser((GalaxyScriptArguments, SFTConfig, ModelConfig))
    script, training, model = parser.parse_args_and_config(
        args=[
            "--config",
            str(config),
            "--output_dir",
            str(output_dir),
            "--max_steps",
            str(steps),
            "--save_steps",
            "3",
            "--resume",
            "true",
            "--learning_rate",
            "1e-2",
        ]
    )
    trainer = build_sft_trainer(script, training, model)
    probe = WeightsAtStart()
    trainer.add_callback(probe)
    run_training(trainer, script)
    return probe.weights


def test_resume_continues_from_checkpoint_weights(prepared_dir, tiny_model_dir, tmp_path):
    config = write_base_config(tmp_path / "base.yaml", prepared_dir, tiny_model_dir, max_steps=3, save_steps=3)
    out = tmp_path / "run"
    _train(config, out, 3)
    resumed = _train(config, out, 6)
    saved = Qwen2_5_VLForConditionalGeneration.from_pretrained(out / "checkpoint-3").state_dict()
    initial = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir).state_dict()
    assert resumed.keys() == saved.keys()
    assert all(torch.equal(resumed[k], saved[k]) for k in saved)
    assert not all(torch.equal(saved[k], initial[k]) for k in saved)  # three steps at lr 1e-2 moved the weights

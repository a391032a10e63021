"""Every shipped recipe config runs one optimizer step, in both arms, on the tiny model of its family: its own batch,
group size, lengths, LoRA and zoom settings, with only what a CPU cannot do changed (the checkpoint, bf16, vLLM, the
data and codec paths, the step count). A config edited into one the recipes refuse, or that fails once built (an
image side off the family's grid, a LoRA target the family lacks, a zoom setting the tool refuses), fails here.

The steps run in this process, one after the other: a subprocess each would spend more on imports than on the step.
`bench/real_shapes.py` runs the same configs at their checkpoints' real widths.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from evalkit import build_codec
from trl import GRPOConfig, SFTConfig

from astroreason.models import build_tiny_model, family_for
from astroreason.training import build_grpo_trainer, build_sft_trainer, parse_recipe_args, run_training

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*/*.yaml"))
ARMS = ("image", "tokens")


def family_of(config: Path) -> str:
    """The family a config's directory is for: its checkpoint's (the tiny configs run the default tiny Qwen2.5-VL)."""
    return "qwen3_vl" if config.parent.name.startswith("qwen3_vl") else "qwen2_5_vl"


@pytest.fixture(scope="module")
def tiny_models(tiny_model_dir, tmp_path_factory):
    qwen3 = build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen3_vl", arch="qwen3_vl", seed=0)
    return {"qwen2_5_vl": tiny_model_dir, "qwen3_vl": qwen3}


@pytest.fixture(scope="module")
def codec(prepared_dir, tmp_path_factory):
    """A built-in codec of 4096 codes with its token cache in the session's prepared directory."""
    return build_codec(prepared_dir, tmp_path_factory.mktemp("configs_codec") / "codec", levels="8,8,8,8")


def one_step_argv(config: Path, arm: str, model_dir: Path, data_dir: Path, codec: Path, out: Path) -> list[str]:
    """The config, then what a CPU run must change; the arm's own options when the config is for the other one."""
    argv = ["--config", str(config), "--model_name_or_path", str(model_dir), "--data_dir", str(data_dir)]
    argv += ["--output_dir", str(out), "--max_steps", "1", "--save_strategy", "no", "--report_to", "none"]
    argv += ["--bf16", "false", "--use_cpu", "true", "--dtype", "float32"]
    if config.name.startswith("grpo"):
        argv += ["--use_vllm", "false"]
    if arm == "tokens":
        return argv + ["--modality", "tokens", "--codec", str(codec)]
    return argv + ["--modality", "image"]


@pytest.mark.parametrize("arm", ARMS)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_runs_one_step(config, arm, tiny_models, prepared_dir, codec, tmp_path):
    grpo = config.name.startswith("grpo")
    model_dir = tiny_models[family_of(config)]
    argv = one_step_argv(config, arm, model_dir, prepared_dir, codec, tmp_path / "run")
    script_args, training_args, model_args = parse_recipe_args(GRPOConfig if grpo else SFTConfig, argv)
    shipped, _, shipped_model = parse_recipe_args(
        GRPOConfig if grpo else SFTConfig, ["--config", str(config), "--bf16", "false", "--use_cpu", "true"]
    )
    trainer = (build_grpo_trainer if grpo else build_sft_trainer)(script_args, training_args, model_args)
    run_training(trainer, script_args)

    assert trainer.state.global_step == 1
    assert family_for(trainer.model).model_type == family_of(config)
    # The config's own shape reached the trainer: batch, accumulation, group size, adapters, zoom tool.
    assert trainer.args.per_device_train_batch_size == training_args.per_device_train_batch_size
    assert trainer.args.gradient_accumulation_steps == training_args.gradient_accumulation_steps
    if grpo:
        assert trainer.num_generations == training_args.num_generations
    assert hasattr(trainer.model, "peft_config") == bool(shipped_model.use_peft)
    zoom_tool = [t for t in getattr(trainer, "tools", None) or [] if getattr(t, "__name__", "") == "zoom"]
    assert bool(zoom_tool) == bool(grpo and shipped.zoom)
    if grpo and shipped.zoom:
        assert "zoom/rate" in trainer.state.log_history[0]
    saved = {p.name for p in (tmp_path / "run").iterdir()}
    weights = "adapter_model.safetensors" if shipped_model.use_peft else "model.safetensors"
    assert weights in saved, saved


def test_depth_cut_keeps_the_widths_and_every_kind_of_block():
    """bench/real_shapes.py's models: the published widths, the cut depth, and the block index lists (Qwen2.5-VL's
    full-attention blocks, Qwen3-VL's deepstack ones) inside it with block 0 left plain."""
    from astroreason.models.shapes import SHAPES, cut_depth, meta_model

    for name, shape in SHAPES.items():
        model = meta_model(cut_depth(shape, layers=3, blocks=4))
        text, vision = model.config.text_config, model.config.vision_config
        assert text.num_hidden_layers == 3 and len(model.model.language_model.layers) == 3, name
        assert vision.depth == 4 and len(model.model.visual.blocks) == 4, name
        assert model.get_input_embeddings().weight.shape == (shape.text["vocab_size"], shape.text["hidden_size"])
        for field in shape.depth_fields:
            assert getattr(vision, field) == [1, 2, 3], (name, field)

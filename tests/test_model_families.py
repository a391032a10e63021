"""The model families (astroreason/models/): what each says about its real tiny model, and a tiny Qwen3-VL and a
tiny Gemma 3 through SFT (the recipe, as a user runs it), GRPO and evaluation (the library) in both arms, as the
Qwen2.5-VL tests do.

Visual tokens are checked against the processor's own expansion of the image placeholder (`<|image_pad|>`,
`<image_soft_token>`) and the model's own image features; vision prefixes against the model's own vision
submodules (`visual`; `vision_tower` and `multi_modal_projector`); chat templates against TRL's tool checks and a
GRPOTrainer built with a tool.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from evalkit import build_codec
from PIL import Image

from astroreason.errors import UserError
from astroreason.models import (
    build_tiny_model,
    check_image_size,
    families,
    family_for,
    load_model_and_processor,
    save_with_code_tokens,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "configs" / "tiny"
Q3_SIZE = 128  # 4x4 = 16 visual tokens on Qwen3-VL, as 112 px is on Qwen2.5-VL
STEPS = 2


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen3_vl", arch="qwen3_vl", seed=0)


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "gemma3", arch="gemma3", seed=0)


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dir, qwen3_dir, gemma3_dir):
    return {"qwen2_5_vl": tiny_model_dir, "qwen3_vl": qwen3_dir, "gemma3": gemma3_dir}


# The families the end-to-end tests run (Qwen2.5-VL has its own, elsewhere), by their tiny model's fixture.
E2E_FIXTURES = {"qwen3_vl": "qwen3_dir", "gemma3": "gemma3_dir"}
E2E_ARCHS = tuple(E2E_FIXTURES)


@pytest.fixture(scope="module", params=E2E_ARCHS)
def e2e_dir(request):
    """(arch, tiny model directory) of each family the end-to-end tests run."""
    return request.param, request.getfixturevalue(E2E_FIXTURES[request.param])


@pytest.fixture(scope="module")
def loaded(model_dirs):
    return {arch: load_model_and_processor(d) for arch, d in model_dirs.items()}


def test_the_families_are_registered_and_chosen_from_the_config(loaded):
    assert set(families()) >= {"qwen2_5_vl", "qwen3_vl", "gemma3"}
    for arch, (model, _) in loaded.items():
        assert family_for(model).model_type == arch == model.config.model_type
        assert family_for(model.config) is family_for(model)
    with pytest.raises(UserError, match=r"model_type: llava is not a model family astroreason knows \(known: "):
        family_for("llava")


# --- visual tokens, asked of the processor ---------------------------------------------------------------------------


IMAGE_TOKEN = {"qwen2_5_vl": "<|image_pad|>", "qwen3_vl": "<|image_pad|>", "gemma3": "<image_soft_token>"}


def image_pads(processor, size: int, arch: str) -> int:
    """How many image placeholder tokens the processor puts in the prompt for one size x size image."""
    chat = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = processor(text=[chat], images=[Image.new("RGB", (size, size))], return_tensors="pt")["input_ids"][0]
    return int((ids == processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN[arch])).sum())


@pytest.mark.parametrize(
    "arch,size,expected",
    [
        ("qwen2_5_vl", 112, 16),
        ("qwen2_5_vl", 224, 64),
        ("qwen2_5_vl", 256, 81),
        ("qwen3_vl", 128, 16),
        ("qwen3_vl", 224, 49),
        ("qwen3_vl", 256, 64),
        ("gemma3", 112, 16),  # every side is resized to the tower's: a fixed 16 soft tokens (256 on real ones)
        ("gemma3", 256, 16),
    ],
)
def test_visual_tokens_are_what_the_processor_and_the_model_spend(loaded, arch, size, expected):
    model, processor = loaded[arch]
    family = family_for(model)
    n = family.visual_tokens(processor, size)
    assert n == expected == image_pads(processor, size, arch)
    pixel_inputs = processor.image_processor(images=[Image.new("RGB", (size, size))], return_tensors="pt")
    with torch.no_grad():
        features = family.image_features(model, pixel_inputs)
    assert len(features) == 1 and features[0].shape == (n, model.config.text_config.hidden_size)


def test_image_size_guard_names_the_valid_sizes(model_dirs):
    check_image_size(model_dirs["qwen2_5_vl"], 224)
    check_image_size(model_dirs["qwen3_vl"], 256)
    check_image_size(model_dirs["qwen3_vl"], 224)  # fits (7x7 = 49 tokens), as the processor says above
    with pytest.raises(UserError) as err:
        check_image_size(model_dirs["qwen3_vl"], 112)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("image_size: 112 px does not fit Qwen3-VL's 32-px grid; valid sizes are multiples of 32")
    assert "(32, 64, 96, 128, 160, 192, 224, 256, ...)" in message
    with pytest.raises(UserError, match="256 px does not fit Qwen2.5-VL's 28-px grid; valid sizes are multiples of 28"):
        check_image_size(model_dirs["qwen2_5_vl"], 256)
    check_image_size(model_dirs["qwen3_vl"].parent / "missing", 100)  # no config here: left to the loader
    for side in (100, 112, 256):  # Gemma 3's processor resizes every image to its tower's side
        check_image_size(model_dirs["gemma3"], side)
    with pytest.raises(UserError, match="0 px does not fit Gemma 3's"):
        check_image_size(model_dirs["gemma3"], 0)


def test_the_recipes_refuse_a_size_the_model_does_not_fit_before_any_data(qwen3_dir, prepared_dir, tmp_path):
    from trl import ModelConfig, SFTConfig

    from astroreason.training import GalaxyScriptArguments, build_sft_trainer

    with pytest.raises(UserError, match="image_size: must be a positive number of pixels, got 0"):
        GalaxyScriptArguments(data_dir=str(prepared_dir), image_size=0)
    args = GalaxyScriptArguments(data_dir=str(prepared_dir), image_size=112)  # fine for Qwen2.5-VL, not Qwen3-VL
    config = SFTConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(UserError, match="image_size: 112 px does not fit Qwen3-VL's 32-px grid"):
        build_sft_trainer(args, config, ModelConfig(str(qwen3_dir), dtype="float32"))
    assert not (tmp_path / "out").exists()
    # The token arm never resizes an image: its image_size is not checked.
    from astroreason.training import prepare_inputs

    prepare_inputs(
        GalaxyScriptArguments(data_dir=str(prepared_dir), modality="tokens", codec="c", image_size=112),
        ModelConfig(str(qwen3_dir)),
    )


# --- vision parameters --------------------------------------------------------------------------------------------


def own_vision_modules(model) -> tuple[list, list]:
    """(vision tower modules, merger modules) as the model itself holds them, by its own attribute names."""
    inner = model.model
    if hasattr(inner, "visual"):  # Qwen-VL: the merger(s) sit inside the tower
        visual = inner.visual
        return [visual], [visual.merger] + list(getattr(visual, "deepstack_merger_list", []))
    return [inner.vision_tower, inner.multi_modal_projector], [inner.multi_modal_projector]  # Gemma 3


def test_vision_prefixes_match_the_models_own_vision_tower(model_dirs):
    from peft import LoraConfig, get_peft_model

    for arch, model_dir in model_dirs.items():
        model, _ = load_model_and_processor(model_dir)
        family = family_for(model)
        towers, mergers = own_vision_modules(model)
        merger_ids = {id(p) for m in mergers for p in m.parameters()}
        vision_ids = {id(p) for m in towers for p in m.parameters()} - merger_ids
        parts = {name: family.part_of(name) for name, _ in model.named_parameters()}
        by_id = {id(p): parts[name] for name, p in model.named_parameters()}
        assert {i for i, part in by_id.items() if part == "merger"} == merger_ids, arch
        assert {i for i, part in by_id.items() if part == "vision"} == vision_ids, arch
        assert family.part_of("lm_head.weight") == "language" and len(vision_ids) > 0 and len(merger_ids) > 0
        assert {id(p) for p in family.vision_parameters(model)} == vision_ids | merger_ids
        if arch == "qwen3_vl":
            assert any("deepstack_merger_list" in n and part == "merger" for n, part in parts.items())
        # Under a peft wrapper (`base_model.model.` in front) the same parameters are the same parts.
        wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
        assert family_for(wrapped) is family
        assert next(n for n, _ in wrapped.named_parameters()).startswith("base_model.model.")
        wrapped_parts = {id(p): family.part_of(n) for n, p in wrapped.named_parameters() if "lora_" not in n}
        assert wrapped_parts == by_id


@pytest.mark.parametrize("arch", E2E_ARCHS)
def test_part_learning_rates_follow_the_family(model_dirs, arch):
    from astroreason.optim import PartLearningRates, part_param_groups

    model, _ = load_model_and_processor(model_dirs[arch])
    groups = {g["name"]: g for g in part_param_groups(model, PartLearningRates(vision=0.0, merger=1e-3, language=2e-3))}
    assert set(groups) == {"merger", "language"}
    towers, mergers = own_vision_modules(model)
    merger_ids = {id(p) for m in mergers for p in m.parameters()}
    tower = [p for m in towers for p in m.parameters() if id(p) not in merger_ids]
    assert tower and not any(p.requires_grad for p in tower)  # vision frozen
    assert all(p.requires_grad for m in mergers for p in m.parameters())
    assert sum(len(g["params"]) for g in groups.values()) == sum(p.requires_grad for p in model.parameters())


# --- chat templates with tool calls ---------------------------------------------------------------------------------


def zoom(x: int) -> str:
    """Zoom into the image.

    Args:
        x: Where to zoom.
    """
    return str(x)


def test_chat_templates_pass_trls_tool_checks(loaded, model_dirs, tmp_path):
    from importlib.resources import files

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
    from trl.chat_template_utils import is_chat_template_prefix_preserving, supports_tool_calling

    for arch, model_dir in model_dirs.items():
        model, processor = load_model_and_processor(model_dir)
        assert processor.chat_template == family_for(model).chat_template
        assert supports_tool_calling(processor) and is_chat_template_prefix_preserving(processor), arch
        end_of_turn = processor.tokenizer.eos_token  # `<|im_end|>`, `<end_of_turn>`
        parsed = processor.tokenizer.parse_response(
            prefix="", response=f'<tool_call>\n{{"name": "zoom", "arguments": {{"x": 3}}}}\n</tool_call>{end_of_turn}'
        )
        assert parsed["tool_calls"][0]["function"] == {"name": "zoom", "arguments": {"x": 3}}
        # TRL's GRPOTrainer accepts the processor with a tool (it refuses a template that drops tool calls).
        config = GRPOConfig(
            output_dir=str(tmp_path / arch),
            use_cpu=True,
            bf16=False,
            report_to="none",
            per_device_train_batch_size=2,
            num_generations=2,
            max_completion_length=4,
            activation_checkpointing=False,
        )
        data = Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}]}] * 2)
        GRPOTrainer(
            model=model,
            reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
            args=config,
            train_dataset=data,
            processing_class=processor,
            tools=[zoom],
        )
    # The check can fail: Qwen2.5-VL's stock template drops tool calls, Gemma 3's rejects the tool role.
    for arch, stock_name in (("qwen2_5_vl", "qwen2_5_vl.jinja"), ("gemma3", "gemma3.jinja")):
        stock = (files("trl") / "chat_templates" / stock_name).read_text()
        _, processor = loaded[arch]
        saved, processor.chat_template = processor.chat_template, stock
        try:
            assert not supports_tool_calling(processor), arch
        finally:
            processor.chat_template = saved


@pytest.mark.parametrize("arch", E2E_ARCHS)
def test_code_token_surgery(model_dirs, tmp_path, arch):
    out = save_with_code_tokens(model_dirs[arch], tmp_path / "coded", 300)
    model, processor = load_model_and_processor(out)
    ids = processor.tokenizer.convert_tokens_to_ids(["<|g_0|>", "<|g_299|>"])
    assert ids[1] - ids[0] == 299 and model.get_input_embeddings().weight.shape[0] > ids[1]
    assert model.get_output_embeddings().weight.shape == model.get_input_embeddings().weight.shape


# --- a tiny Qwen3-VL and a tiny Gemma 3 end to end: SFT (recipe), GRPO (library), evaluation (library), both arms --


@pytest.fixture(scope="module")
def q3_data(surrogate_h5, tmp_path_factory):
    """A prepared split of its own and a tiny codec of 4096 codes with its token cache (the token arm)."""
    from astroreason.data.splits import prepare

    data = prepare(surrogate_h5, tmp_path_factory.mktemp("q3data") / "prepared", seed=0)
    codec = build_codec(data, tmp_path_factory.mktemp("q3codec") / "codec", levels="8,8,8,8")
    return data, codec


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def arm_overrides(modality: str, codec: Path) -> list[str]:
    if modality == "image":
        return ["--modality", "image", "--image_size", str(Q3_SIZE)]
    return ["--modality", "tokens", "--codec", str(codec), "--rendering", "ints"]


@pytest.fixture(scope="module")
def e2e_sft(e2e_dir, q3_data, tmp_path_factory):
    """`python recipes/sft.py` on the family's tiny model, each arm, two steps; both runs at once (one core each)."""
    arch, model_dir = e2e_dir
    data, codec = q3_data
    root = tmp_path_factory.mktemp(f"sft_{arch}")
    procs = {}
    for modality in ("image", "tokens"):
        cmd = [
            sys.executable,
            str(ROOT / "recipes" / "sft.py"),
            "--config",
            str(TINY / "sft_image.yaml"),
            "--model_name_or_path",
            str(model_dir),
            "--data_dir",
            str(data),
            *arm_overrides(modality, codec),
            "--max_steps",
            str(STEPS),
            "--max_train_samples",
            "8",
            "--save_strategy",
            "no",
            "--output_dir",
            str(root / modality),
        ]
        procs[modality] = subprocess.Popen(
            cmd, cwd=root, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    outputs = {m: p.communicate(timeout=600)[0] for m, p in procs.items()}
    return {m: (procs[m].returncode, outputs[m], root / m) for m in procs}


def changed(before_dir: Path, after_dir: Path) -> dict[str, bool]:
    """Whether any vision parameter and any language parameter differ between two saved checkpoints, loaded as
    models (the checkpoint files' keys are the format's, not `named_parameters`') and told apart by their family."""
    from transformers import AutoModelForImageTextToText

    before, after = (
        AutoModelForImageTextToText.from_pretrained(d, dtype=torch.float32) for d in (before_dir, after_dir)
    )
    family = family_for(before)
    params = dict(after.named_parameters())
    assert params.keys() == dict(before.named_parameters()).keys()
    moved = [n for n, p in before.named_parameters() if not torch.equal(p, params[n])]
    return {"vision": any(family.is_vision(n) for n in moved), "language": any(not family.is_vision(n) for n in moved)}


@pytest.mark.parametrize("modality", ["image", "tokens"])
def test_sft_recipe_learns(e2e_sft, e2e_dir, modality):
    arch, model_dir = e2e_dir
    status, out, out_dir = e2e_sft[modality]
    assert status == 0, out[-4000:]
    assert f"after {STEPS} steps (1 process)" in out
    import json

    config = json.loads((out_dir / "config.json").read_text())
    assert config["model_type"] == arch
    moved = changed(model_dir, out_dir)
    assert moved["language"]
    assert moved["vision"] == (modality == "image")  # the token arm shows no image: the tower gets no gradient


@pytest.mark.parametrize("modality", ["image", "tokens"])
def test_grpo_learns(e2e_dir, q3_data, tmp_path, modality):
    from test_grpo_learning import answer_vocab_reward_for, grpo_config
    from trl import GRPOTrainer, ModelConfig

    from astroreason.training import GalaxyScriptArguments, galaxy_dataset, load_model, prepare_inputs

    arch, model_dir = e2e_dir
    data, codec = q3_data
    args = GalaxyScriptArguments(
        data_dir=str(data),
        modality=modality,
        codec=str(codec) if modality == "tokens" else None,
        image_size=Q3_SIZE,
        max_train_samples=8,
    )
    model_args = ModelConfig(str(model_dir), dtype="float32")
    prepare_inputs(args, model_args)  # the recipe's checks: the size fits the family's grid
    config = grpo_config(tmp_path, STEPS)
    train = galaxy_dataset(args, args.train_split, with_completion=False, max_samples=args.max_train_samples)
    model, processor = load_model(model_args, config)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[answer_vocab_reward_for(processor.tokenizer)],
        args=config,
        train_dataset=train,
        processing_class=processor,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    assert len(rewards) == STEPS and all(math.isfinite(r) for r in rewards)
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    family = family_for(model)
    assert any(n.startswith("model.language_model.") for n in moved)
    assert any(family.is_vision(n) for n in moved) == (modality == "image")


@pytest.mark.parametrize("modality", ["image", "tokens"])
def test_evaluates(e2e_sft, e2e_dir, q3_data, tmp_path, modality):
    from astroreason.evaluation.harness import EvalConfig, evaluate

    arch, _ = e2e_dir
    status, out, sft_dir = e2e_sft[modality]
    assert status == 0, out[-4000:]
    data, codec = q3_data
    config = EvalConfig(
        model=str(sft_dir),
        data_dir=str(data),
        modality=modality,
        codec=str(codec) if modality == "tokens" else None,
        image_size=Q3_SIZE,
        output_dir=str(tmp_path / "eval"),
        ledger=str(tmp_path / "spend.jsonl"),
        prices=str(ROOT / "eval" / "prices.yaml"),
        max_samples=4,
        batch_size=2,
        max_new_tokens=4,
        n_boot=50,
    )
    result = evaluate(config, progress=False)
    assert result["status"] == "complete" and result["n_done"] == 4
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
    if modality == "image":  # each prompt carries the 16 visual tokens of a 128 px image, plus the text
        assert result["prompt_tokens"] > 4 * 16
    if modality == "image" and arch == "qwen3_vl":  # Gemma 3 resizes any side: nothing to refuse
        with pytest.raises(UserError, match="112 px does not fit Qwen3-VL's 32-px grid"):
            evaluate(
                EvalConfig(**{**config.__dict__, "image_size": 112, "output_dir": str(tmp_path / "e2")}), progress=False
            )


def test_vision_pretraining_moves_only_the_tower(e2e_dir, surrogate_h5, tmp_path):
    from astroreason.pretrain import VisionPretrainConfig, pretrain_vision_tower

    _, model_dir = e2e_dir
    out = tmp_path / "pretrained"
    pretrain_vision_tower(
        model_dir, surrogate_h5, out, VisionPretrainConfig(steps=3, batch_size=8, image_size=Q3_SIZE), progress=False
    )
    assert changed(model_dir, out) == {"vision": True, "language": False}


def test_the_cli_builds_a_tiny_gemma3_and_costs_its_image_arm(q3_data, tmp_path, capsys):
    """`astroreason model tiny --arch gemma3`, then `tokens cost` on it: the image arm costs what its processor
    writes (16 soft tokens, whatever the side), the token arm what its own tokenizer makes of the codes."""
    import json

    from astroreason.cli import main

    _, codec = q3_data
    out = tmp_path / "g3"
    assert main(["model", "tiny", "--arch", "gemma3", "--out", str(out)]) == 0
    assert "Built a random gemma3 (tiny, seed 0" in capsys.readouterr().out
    report = tmp_path / "cost.json"
    argv = ["tokens", "cost", "--codec", str(codec), "--model", str(out), "--n", "2", "--image-size", "200"]
    assert main([*argv, "--rendering", "ints,special", "--json", str(report)]) == 0
    figures = json.loads(report.read_text())
    assert figures["image"] == {"side_px": 200, "visual_tokens": 16}
    by_rendering = {r["rendering"]: r for r in figures["renderings"]}
    assert by_rendering["special"]["tokens_per_code"] == 1.0  # one added token per code, on Gemma's tokenizer too
    assert by_rendering["ints"]["tokens_per_code"] > 1.0  # digits one by one, plus the separators

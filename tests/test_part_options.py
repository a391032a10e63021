"""The recipes' part options (`PartArguments`: freeze_vision_tower, freeze_merger, freeze_language_model,
freeze_code_rows, vision_lr, merger_lr) reach the real trainers' optimizers, are recorded in `fingerprint.json` and
replayed by the label-permutation control, and are what the demo builds every stage from.

Each run is a few steps of the tiny Qwen2.5-VL on the session's surrogate split, parsed from the shipped tiny
configs the way `recipes/sft.py` and `recipes/grpo.py` parse them. AdamW moves a parameter by about its learning rate
a step, so a part's rate shows in how far its weights moved; a frozen part does not move at all."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from evalkit import build_codec

from astroreason.errors import UserError
from astroreason.integrity.fingerprint import FINGERPRINT_FILE
from astroreason.models import family_for
from astroreason.tokens import load_codec
from astroreason.tokens.render import code_token

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "configs" / "tiny"
STEPS = 2
_draws = random.Random(0)


def random_reward(completions, **kwargs) -> list[float]:
    """A reward that differs inside every group, so every GRPO step has a gradient (the recipes' own rewards are 0
    for every completion of a random model: no gradient, and a frozen part would stay put for nothing)."""
    return [_draws.random() for _ in completions]


def parse(recipe: str, config: str, out: Path, *extra: str, model_dir, data_dir):
    from trl import GRPOConfig, SFTConfig

    from astroreason.training import parse_recipe_args

    argv = ["--config", str(TINY / config), "--model_name_or_path", str(model_dir), "--data_dir", str(data_dir)]
    argv += ["--output_dir", str(out), "--max_steps", str(STEPS), "--max_train_samples", "16", "--image_size", "56"]
    return parse_recipe_args(SFTConfig if recipe == "sft" else GRPOConfig, [*argv, *extra])


def build(recipe: str, config: str, out: Path, *extra: str, model_dir, data_dir):
    from astroreason.training import build_grpo_trainer, build_sft_trainer

    script, training, model = parse(recipe, config, out, *extra, model_dir=model_dir, data_dir=data_dir)
    trainer = (build_sft_trainer if recipe == "sft" else build_grpo_trainer)(script, training, model)
    return trainer, script


def train(recipe: str, config: str, out: Path, *extra: str, model_dir, data_dir):
    """A recipe's trainer, built and run (`run_training`); returns it and the parameters it started from."""
    from astroreason.training import run_training

    trainer, script = build(recipe, config, out, *extra, model_dir=model_dir, data_dir=data_dir)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    run_training(trainer, script)
    return trainer, before


def moved(trainer, before: dict) -> dict[str, float]:
    """The largest change of any parameter of each part (`vision`, `merger`, `language`)."""
    family, out = family_for(trainer.model), {}
    for name, param in trainer.model.named_parameters():
        part = family.part_of(name)
        out[part] = max(out.get(part, 0.0), (param.detach() - before[name]).abs().max().item())
    return out


def group_rates(trainer) -> dict[str, float]:
    """Each named optimizer group's learning rate; every group of a part has the same."""
    rates = {}
    for group in trainer.optimizer.param_groups:
        assert rates.setdefault(group["name"], group["lr"]) == group["lr"]
    return rates


def optimized(trainer) -> set[int]:
    return {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}


def part_params(trainer, part: str) -> list[torch.nn.Parameter]:
    family = family_for(trainer.model)
    return [p for n, p in trainer.model.named_parameters() if family.part_of(n) == part]


@pytest.fixture(scope="module")
def lr_run(prepared_dir, tiny_model_dir, tmp_path_factory):
    """SFT, image arm: the vision tower at 1e-4, the merger at 2e-3, the language model at 1e-2; weight decay on."""
    out = tmp_path_factory.mktemp("parts") / "sft_lrs"
    extra = ("--vision_lr", "1e-4", "--merger_lr", "2e-3", "--learning_rate", "1e-2", "--weight_decay", "0.01")
    return (
        train(
            "sft",
            "sft_image.yaml",
            out,
            *extra,
            "--save_steps",
            str(STEPS),
            model_dir=tiny_model_dir,
            data_dir=prepared_dir,
        ),
        out,
        extra,
    )


@pytest.fixture(scope="module")
def frozen_grpo_run(prepared_dir, tiny_model_dir, tmp_path_factory):
    """GRPO, image arm, as the demo's: the vision tower frozen, the merger at 1e-3, the language model at 1e-2."""
    out = tmp_path_factory.mktemp("parts") / "grpo_frozen"
    extra = ("--freeze_vision_tower", "true", "--merger_lr", "1e-3", "--learning_rate", "1e-2")
    reward = ("--reward_funcs", f"{__name__}.random_reward", "--per_device_train_batch_size", "8")
    trainer, before = train(
        "grpo",
        "grpo_image.yaml",
        out,
        *extra,
        *reward,
        "--save_strategy",
        "no",
        model_dir=tiny_model_dir,
        data_dir=prepared_dir,
    )
    return trainer, before, out


def test_sft_part_learning_rates_reach_the_optimizer(lr_run):
    (trainer, before), _, _ = lr_run
    assert group_rates(trainer) == {"vision": 1e-4, "merger": 2e-3, "language": 1e-2}
    decays = {(g["name"], g["weight_decay"]) for g in trainer.optimizer.param_groups}
    assert decays == {(part, wd) for part in ("vision", "merger", "language") for wd in (0.01, 0.0)}  # norms: none
    assert optimized(trainer) == {id(p) for p in trainer.model.parameters() if p.requires_grad}
    step = moved(trainer, before)  # AdamW moves a weight by about its rate a step
    assert 0 < step["vision"] <= STEPS * 1.1e-4 < step["merger"] <= STEPS * 2.2e-3 < step["language"]


def test_a_resumed_run_reloads_the_per_part_optimizer(lr_run, prepared_dir, tiny_model_dir, capsys):
    """The Trainer loads the checkpoint's optimizer state into the per-part optimizer it builds on resume."""
    (_, _), out, extra = lr_run
    capsys.readouterr()
    resumed, _ = train(
        "sft",
        "sft_image.yaml",
        out,
        *extra,
        "--max_steps",
        str(2 * STEPS),
        "--resume",
        "true",
        model_dir=tiny_model_dir,
        data_dir=prepared_dir,
    )
    assert f"Resuming from {out}/checkpoint-{STEPS}" in capsys.readouterr().out
    assert group_rates(resumed) == {"vision": 1e-4, "merger": 2e-3, "language": 1e-2}
    steps = {int(s["step"]) for s in resumed.optimizer.state.values()}
    assert steps == {2 * STEPS}  # the saved state's 2 steps, then 2 more: not a fresh optimizer


def test_the_fingerprint_records_the_part_options(lr_run, frozen_grpo_run):
    _, out, _ = lr_run
    script = json.loads((out / FINGERPRINT_FILE).read_text())["base"]["recipe"]["script_args"]
    assert (script["vision_lr"], script["merger_lr"], script["freeze_vision_tower"]) == (1e-4, 2e-3, False)
    _, _, grpo_out = frozen_grpo_run
    script = json.loads((grpo_out / FINGERPRINT_FILE).read_text())["base"]["recipe"]["script_args"]
    assert (script["vision_lr"], script["merger_lr"], script["freeze_vision_tower"]) == (None, 1e-3, True)


def test_grpo_leaves_a_frozen_vision_tower_where_it_was(frozen_grpo_run):
    trainer, before, _ = frozen_grpo_run
    assert group_rates(trainer) == {"merger": 1e-3, "language": 1e-2}
    vision = part_params(trainer, "vision")
    assert vision and not any(p.requires_grad for p in vision)
    assert not optimized(trainer) & {id(p) for p in vision}
    step = moved(trainer, before)
    assert step["vision"] == 0 and 0 < step["merger"] <= STEPS * 1.1e-3 < step["language"]


def test_the_permutation_control_replays_the_part_options(frozen_grpo_run, prepared_dir, tmp_path):
    """The control rebuilds the recorded recipe through the builders: its vision tower is frozen too, and its
    merger and language model train at the recorded rates."""
    from astroreason.audit.permutation import control_start, control_trainer

    _, _, out = frozen_grpo_run
    start = control_start(str(out), str(prepared_dir))
    assert start.recipe["kind"] == "grpo" and start.recipe["script_args"]["freeze_vision_tower"] is True
    trainer = control_trainer(start, str(tmp_path / "control"), steps=1)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert group_rates(trainer) == {"merger": 1e-3, "language": 1e-2}
    assert not any(p.requires_grad for p in part_params(trainer, "vision"))
    step = moved(trainer, before)
    assert step["vision"] == 0 and step["language"] > 0


@pytest.fixture(scope="module")
def codec_dir(prepared_dir, tmp_path_factory):
    return build_codec(prepared_dir, tmp_path_factory.mktemp("codec") / "fsq25")


def test_code_rows_stay_fixed_while_the_rest_of_the_embeddings_train(prepared_dir, tiny_model_dir, codec_dir, tmp_path):
    extra = ("--codec", str(codec_dir), "--rendering", "special", "--freeze_code_rows", "true")
    trainer, before = train(
        "sft",
        "sft_tokens.yaml",
        tmp_path / "sft",
        *extra,
        "--learning_rate",
        "1e-2",
        "--save_strategy",
        "no",
        model_dir=tiny_model_dir,
        data_dir=prepared_dir,
    )
    tok = trainer.processing_class.tokenizer
    ids = tok.convert_tokens_to_ids([code_token(i) for i in range(load_codec(codec_dir).vocab_size)])
    name = next(n for n, p in trainer.model.named_parameters() if p is trainer.model.get_input_embeddings().weight)
    weight = trainer.model.get_input_embeddings().weight.detach()
    torch.testing.assert_close(weight[ids], before[name][ids], rtol=0, atol=0)
    others = [i for i in range(len(weight)) if i not in set(ids)]
    assert (weight[others] - before[name][others]).abs().max() > 1e-3  # the rows of the prompt's words trained


LORA = ("--use_peft", "true", "--lora_r", "4", "--save_strategy", "no")


def test_lora_adapters_on_a_frozen_vision_tower_stay_frozen(prepared_dir, tiny_model_dir, tmp_path):
    """LoRA on every linear layer (vision blocks, merger, language model): the vision blocks' adapters are named
    after the modules they adapt (`base_model.model.model.visual...lora_A`), so freezing the tower freezes them."""
    extra = ("--lora_target_modules", "all-linear", "--freeze_vision_tower", "true", "--learning_rate", "1e-2")
    trainer, before = train(
        "sft", "sft_image.yaml", tmp_path / "lora", *LORA, *extra, model_dir=tiny_model_dir, data_dir=prepared_dir
    )
    family = family_for(trainer.model)
    adapters = {n: family.part_of(n) for n, _ in trainer.model.named_parameters() if "lora_" in n}
    assert {"vision", "merger", "language"} <= set(adapters.values())  # the adapters reach every part
    params = dict(trainer.model.named_parameters())
    assert not any(params[n].requires_grad for n, part in adapters.items() if part == "vision")
    assert all(params[n].requires_grad for n, part in adapters.items() if part != "vision")
    step = moved(trainer, before)
    assert step["vision"] == 0 and step["merger"] > 0 and step["language"] > 0


def test_lora_refusals_are_one_line(prepared_dir, tiny_model_dir, codec_dir, tmp_path):
    """Freezing the only part LoRA adapts leaves nothing to train; frozen code rows a base model lacks would not be
    saved in the adapter."""
    only_language = ("--lora_target_modules", "q_proj", "v_proj", "--freeze_language_model", "true")
    with pytest.raises(UserError, match="freeze_language_model: with freeze_language_model nothing is left to train"):
        build(
            "sft",
            "sft_image.yaml",
            tmp_path / "a",
            *LORA,
            *only_language,
            model_dir=tiny_model_dir,
            data_dir=prepared_dir,
        )
    rows = ("--codec", str(codec_dir), "--rendering", "special", "--freeze_code_rows", "true")
    with pytest.raises(UserError, match=f"freeze_code_rows: {tiny_model_dir} lacks the code tokens"):
        build(
            "sft",
            "sft_tokens.yaml",
            tmp_path / "b",
            *LORA,
            "--lora_target_modules",
            "q_proj",
            *rows,
            model_dir=tiny_model_dir,
            data_dir=prepared_dir,
        )


@pytest.mark.parametrize(
    "extra,needle",
    [
        (
            ["--freeze_vision_tower", "true", "--freeze_merger", "true", "--freeze_language_model", "true"],
            "freeze_language_model: with freeze_vision_tower and freeze_merger nothing is left to train",
        ),
        (["--freeze_vision_tower", "true", "--vision_lr", "1e-4"], "vision_lr: freeze_vision_tower freezes"),
        (["--freeze_merger", "true", "--merger_lr", "1e-4"], "merger_lr: freeze_merger freezes"),
        (["--merger_lr", "0"], "merger_lr: expected a positive learning rate, got 0.0 (to freeze: freeze_merger)"),
        (["--freeze_code_rows", "true"], "freeze_code_rows: only the tokens arm with rendering special"),
        (
            [
                "--modality",
                "tokens",
                "--codec",
                "c",
                "--rendering",
                "special",
                "--freeze_code_rows",
                "true",
                "--weight_decay",
                "0.1",
            ],
            "freeze_code_rows: weight_decay 0.1 would shrink the frozen rows",
        ),
    ],
    ids=["all-frozen", "vision-lr-frozen", "merger-lr-frozen", "zero-lr", "code-rows-image", "code-rows-decay"],
)
def test_bad_part_options_are_one_user_error_line(extra, needle, prepared_dir, tiny_model_dir, tmp_path):
    with pytest.raises(UserError) as err:
        parse("sft", "sft_image.yaml", tmp_path / "out", *extra, model_dir=tiny_model_dir, data_dir=prepared_dir)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_no_part_option_leaves_the_trainers_own_optimizer(prepared_dir, tiny_model_dir, tmp_path):
    trainer, _ = build("sft", "sft_image.yaml", tmp_path / "plain", model_dir=tiny_model_dir, data_dir=prepared_dir)
    assert trainer.optimizer_cls_and_kwargs is None
    assert all(p.requires_grad for p in trainer.model.parameters())


# --- the demo builds every stage from a recipe file ------------------------------------------------------------------


def test_the_demo_writes_each_stage_as_a_recipe_file_the_recipes_parse(tmp_path):
    """Every stage of every arm (zoom arms too) is one TRL config file that `parse_recipe_args` reads back into the
    demo's settings, part options included."""
    from trl import GRPOConfig, SFTConfig

    from astroreason.demo import Demo, demo_config
    from astroreason.training import parse_recipe_args

    config = demo_config(quick=True, zoom=True)
    demo = Demo(tmp_path / "demo", config)
    for arm in config.arms:
        for stage, cls in (("sft", SFTConfig), ("grpo", GRPOConfig)):
            path = demo.write_recipe(arm, stage)
            assert path == tmp_path / "demo" / "configs" / f"{arm}_{stage}.yaml"
            script, training, model = parse_recipe_args(cls, ["--config", str(path)])
            assert training.output_dir == str(tmp_path / "demo" / arm / stage) and training.seed == config.seed
            assert script.modality == arm.split("_")[0] and script.zoom == arm.endswith("_zoom")
            assert script.freeze_code_rows == (script.modality == "tokens")
            language = config.zoom_sft_lr if script.zoom else config.lr_language
            if stage == "sft":
                assert training.learning_rate == language and script.vision_lr == config.lr_vision
                assert script.merger_lr == min(config.lr_merger, language) and not script.freeze_vision_tower
                assert model.model_name_or_path == str(
                    demo.out / arm.split("_")[0] / "sft" if script.zoom else demo.model
                )
            else:
                assert script.freeze_vision_tower and script.vision_lr is None
                assert training.learning_rate == script.merger_lr == config.grpo_lr
                assert model.model_name_or_path == str(demo.out / arm / "sft")

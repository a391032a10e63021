"""The zoom tool and its GRPO episodes on the tiny offline Qwen2.5-VL and the GalSim surrogate.

The crops are checked against crops made by hand from the source file itself (h5py, PIL, the codec), so a tool that
cropped the resized first view, or the wrong galaxy, fails. The GRPO runs are real `GRPOTrainer` runs through the
recipe's builder (`build_grpo_trainer` with `zoom=True`): a random tiny model never writes a tool call on its own,
so its sampling is steered with transformers' own `sequence_bias` (a logits processor in `generation_kwargs`) to
write one scripted call right after the user's prompt. Everything after that is TRL's: parsing the call with the
family's response template, running it in the rollout's `ZoomEnvironment`, the tool result (an image, or codes as
text) in the next turn, the tool mask, the rewards and the update.
"""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch
from evalkit import build_codec
from PIL import Image

from astroreason.arms import ARMS, ArmSettings, build_arm, resize_image
from astroreason.data.splits import load_manifest
from astroreason.errors import UserError
from astroreason.models import family_for
from astroreason.prompts import zoom_prompt
from astroreason.rewards import ended_on_tool_call, skip_unanswered, zoom_bonus_reward, zoom_cost_reward
from astroreason.tokens import load_codec, render
from astroreason.zoom import POSITION_COLUMN, SPLIT_COLUMN, ZoomEnvironment, environment_factory, with_zoom_columns
from astroreason.zoom.lint import result_text

BICUBIC = Image.Resampling.BICUBIC
CALL = '<tool_call>\n{{"name": "zoom", "arguments": {{"bbox_2d": {box}}}}}\n</tool_call><|im_end|>'
BOX = [0.25, 0.25, 0.75, 0.75]  # pixels 16-48 of the 64 px surrogate


@pytest.fixture(scope="module")
def codec(prepared_dir, tmp_path_factory):
    """rgb, 16 px in, 4x4 codes (its token cache written into the prepared directory)."""
    return build_codec(prepared_dir, tmp_path_factory.mktemp("zoom") / "fsq")


@pytest.fixture(scope="module")
def flux_codec(prepared_dir, tmp_path_factory):
    """g, r, i, z flux, 32 px in (the centre of the surrogate's 96 px cutouts), 8x8 codes."""
    from astroreason.cli import main

    out = tmp_path_factory.mktemp("zoom") / "fsq_flux"
    train = ["tokens", "train", "--data", str(prepared_dir), "--out", str(out), "--input", "flux", "--size", "32"]
    train += ["--levels", "5,5", "--hidden", "8", "--steps", "2", "--batch-size", "8", "--max-images", "16"]
    assert main(train) == 0
    assert main(["tokens", "encode", "--data", str(prepared_dir), "--codec", str(out)]) == 0
    return out


def settings(prepared_dir, codec=None, **kwargs) -> ArmSettings:
    if codec is not None:
        kwargs.update(modality="tokens", codec=str(codec))
    return ArmSettings(data_dir=str(prepared_dir), image_size=56, **kwargs)


def make_zoom_tool(settings: ArmSettings, **kwargs):
    """The arm's own zoom tool (`Arm.zoom_tool`)."""
    return settings.arm_class().zoom_tool(settings, **kwargs)


def episode(prepared_dir, arm_settings, *, row: int = 3, **tool_kwargs) -> tuple[ZoomEnvironment, int]:
    """A reset environment on row `row` of the zoom training dataset, and that galaxy's row in the source file."""
    arm = build_arm(arm_settings, "train", max_samples=8)
    dataset = with_zoom_columns(arm.dataset(with_completion=False), arm)
    tool_kwargs.setdefault("pixel_multiple", 28)
    env = environment_factory(make_zoom_tool(arm_settings, **tool_kwargs), zoom_cost=0.1)()
    env.reset(**dataset[row])
    source_row = load_manifest(prepared_dir).rows["train"][int(arm.positions[row])]
    return env, source_row


def source_image(surrogate_h5, row: int) -> Image.Image:
    with h5py.File(surrogate_h5) as f:
        return Image.fromarray(f["images"][row])


# --- the crops -------------------------------------------------------------------------------------------------------


def test_image_zoom_is_the_crop_of_the_full_resolution_source(prepared_dir, surrogate_h5):
    env, row = episode(prepared_dir, settings(prepared_dir))
    full = source_image(surrogate_h5, row)  # 64 px; the first view is 56 px
    result = env.zoom(BOX)
    assert [part["type"] for part in result] == ["image"]
    crop = np.asarray(result[0]["image"])
    by_hand = np.asarray(full.crop((16, 16, 48, 48)).resize((56, 56), BICUBIC))
    assert crop.shape == (56, 56, 3) and np.array_equal(crop, by_hand)
    # Not the first view zoomed: a crop of the resized image differs.
    first_view = resize_image(full, 56)
    assert not np.array_equal(crop, np.asarray(first_view.crop((14, 14, 42, 42)).resize((56, 56), BICUBIC)))
    # A box off the pixel grid covers every pixel it touches: x 6.4-41.6 -> 6-42, y 12.8-48.0 -> 12-48.
    crop = np.asarray(env.zoom([0.1, 0.2, 0.65, 0.75])[0]["image"])
    assert np.array_equal(crop, np.asarray(full.crop((6, 12, 42, 48)).resize((56, 56), BICUBIC)))
    assert [(c.box, c.valid, c.pixels) for c in env.calls] == [
        (BOX, True, (16, 16, 48, 48)),
        ([0.1, 0.2, 0.65, 0.75], True, (6, 12, 42, 48)),
    ]


@pytest.mark.parametrize("rendering", ["ints", "rows"])
def test_token_zoom_is_the_codec_of_the_hand_made_crop(prepared_dir, surrogate_h5, codec, rendering):
    env, row = episode(prepared_dir, settings(prepared_dir, codec, rendering=rendering))
    text = env.zoom(BOX)
    patch = source_image(surrogate_h5, row).crop((16, 16, 48, 48)).resize((16, 16), BICUBIC)
    codes = load_codec(codec).encode(np.asarray(patch)[None])[0]
    assert isinstance(text, str) and text == render(codes, rendering)
    assert env.calls[0].valid and env.calls[0].pixels == (16, 16, 48, 48)
    # The whole box: the whole 64 px image, resized to the codec's 16 px by the tool.
    whole = source_image(surrogate_h5, row).resize((16, 16), BICUBIC)
    assert env.zoom([0, 0, 1, 1]) == render(load_codec(codec).encode(np.asarray(whole)[None])[0], rendering)


def test_token_crop_prompt_holds_the_field_then_the_centre_zoom(prepared_dir, surrogate_h5, codec):
    """The token zoom arm's no-zoom control: each prompt carries the field's codes, then exactly what a zoom call on
    the centre box returns for that galaxy (the hand-made crop, encoded), for every row of the split."""
    from astroreason.arms.tokens import CENTRE_CROP_CAPTION

    plain = build_arm(settings(prepared_dir, codec), "train", max_samples=8)
    cropped = build_arm(settings(prepared_dir, codec, token_crop=0.5), "train", max_samples=8)
    assert cropped.positions.tolist() == plain.positions.tolist()
    assert cropped.labels == plain.labels
    rows = cropped.rows()
    for i in range(8):
        env, row = episode(prepared_dir, settings(prepared_dir, codec), row=i)
        patch = source_image(surrogate_h5, row).crop((16, 16, 48, 48)).resize((16, 16), BICUBIC)
        crop = render(load_codec(codec).encode(np.asarray(patch)[None])[0], "ints")
        assert env.zoom(BOX) == crop
        representation = cropped.representation(cropped.view[i])
        field = plain.representation(plain.view[i])
        assert representation == f"{field}\n{CENTRE_CROP_CAPTION.format(side=0.5)}\n{crop}"
        assert representation in rows[i]["prompt"][0]["content"]
    with pytest.raises(UserError, match="token_crop: only the tokens arm"):
        settings(prepared_dir, token_crop=0.5)
    with pytest.raises(UserError, match=r"token_crop: a fraction of the field in \(0, 1\)"):
        settings(prepared_dir, codec, token_crop=1.0)


def test_flux_token_zoom_crops_the_field_the_codec_saw(prepared_dir, surrogate_h5, flux_codec):
    env, row = episode(prepared_dir, settings(prepared_dir, flux_codec))
    text = env.zoom(BOX)
    with h5py.File(surrogate_h5) as f:
        flux = f["flux"][row]  # 4 x 96 x 96; the codec sees its centre 32 px: 32-64
    patch = torch.from_numpy(flux[:, 32 + 8 : 32 + 24, 32 + 8 : 32 + 24].copy())[None]
    patch = torch.nn.functional.interpolate(patch, size=(32, 32), mode="bilinear", align_corners=False)
    codes = load_codec(flux_codec).encode(patch.numpy())[0]
    assert text == render(codes, "ints") and env.calls[0].pixels == (8, 8, 24, 24)


# --- bad boxes -------------------------------------------------------------------------------------------------------

BAD_BOXES = [
    ([-0.1, 0.0, 0.5, 0.5], "outside the image"),
    ([0.2, 0.2, 1.2, 0.9], "outside the image"),
    ([0.6, 0.1, 0.4, 0.9], "inverted or empty"),
    ([0.1, 0.5, 0.9, 0.5], "inverted or empty"),
    ([0.0, 0.0, 0.3, 0.3], "too small"),  # one merged patch of the 56 px first view is 28/56 = 0.5
    ([0.0, 0.0, 1.0, 0.2], "too small"),
    ([0.1, 0.2, 0.3], "list of 4 numbers"),
    ("[0.1, 0.2, ", "list of 4 numbers"),
    ({"x1": 0.1}, "list of 4 numbers"),
    (["a", 0.1, 0.5, 0.5], "4 numbers"),
    ([True, 0.0, 1.0, 1.0], "4 numbers"),
    ([math.nan, 0.0, 1.0, 1.0], "4 numbers"),
    (None, "list of 4 numbers"),
]


@pytest.mark.parametrize("box,why", BAD_BOXES, ids=[str(b) for b, _ in BAD_BOXES])
def test_a_bad_box_is_a_tool_error_the_model_reads(prepared_dir, surrogate_h5, codec, box, why):
    """The error text in both arms; the image arm's refusal also returns the first view again (the whole source at
    the first view's size, exactly the arm's own resize), so that every image-arm call adds an image."""
    env, row = episode(prepared_dir, settings(prepared_dir))
    image, text = env.zoom(box)
    assert text["type"] == "text" and text["text"].startswith("error: ") and why in text["text"]
    first_view = resize_image(source_image(surrogate_h5, row), 56)
    assert image["type"] == "image" and np.array_equal(np.asarray(image["image"]), np.asarray(first_view))
    assert [(c.valid, c.error, c.pixels) for c in env.calls] == [(False, text["text"], None)]
    if why == "too small":  # the token arm's smallest box is one codec cell (0.25 here)
        return
    env, _ = episode(prepared_dir, settings(prepared_dir, codec))
    result = env.zoom(box)
    assert isinstance(result, str) and result.startswith("error: ") and why in result
    assert [(c.valid, c.error, c.pixels) for c in env.calls] == [(False, result, None)]


def test_box_limits_and_quoted_boxes(prepared_dir):
    env, _ = episode(prepared_dir, settings(prepared_dir), min_side=0.1, max_aspect=3.0)
    assert "too elongated" in result_text(env.zoom([0.0, 0.0, 0.95, 0.3]))  # 3.17 : 1
    assert isinstance(env.zoom([0.0, 0.0, 0.9, 0.3]), list)  # 3 : 1
    assert isinstance(env.zoom(json.dumps([0.0, 0.0, 0.5, 0.5])), list)  # arguments given as a JSON string
    assert "too small" in result_text(env.zoom([0.0, 0.0, 0.05, 0.5]))
    assert [c.valid for c in env.calls] == [False, True, True, False]


def test_token_arm_min_side_is_one_codec_cell(prepared_dir, codec):
    env, _ = episode(prepared_dir, settings(prepared_dir, codec))
    assert "too small" in env.zoom([0.0, 0.0, 0.2, 0.2])  # 4x4 codes: a cell is 0.25
    assert isinstance(env.zoom([0.0, 0.0, 0.25, 0.25]), str) and env.calls[-1].valid


# --- the dataset, the prompt, the rewards ----------------------------------------------------------------------------


def test_the_lint_reads_the_tool_turns(prepared_dir, codec):
    """Every tool result is linted like a prompt: the honest tools pass in both arms; a tool that also returns its
    galaxy's source row (a leak, Galaxy10 being sorted by class) is refused before anything trains."""
    from astroreason.arms import TokenZoom
    from astroreason.errors import CheckFailed
    from astroreason.zoom.lint import LINT_BOXES, lint_tool_turns

    positions = build_arm(settings(prepared_dir), "train").positions
    for arm in (settings(prepared_dir), settings(prepared_dir, codec)):
        assert lint_tool_turns(make_zoom_tool(arm, pixel_multiple=28), "train", positions) == 32 * len(LINT_BOXES)

    class LeakyZoom(TokenZoom):
        def __call__(self, split, position, bbox_2d):
            call = super().__call__(split, position, bbox_2d)
            call.result = f"{call.result} (source row {self.manifest.rows[split][int(position)]})"
            return call

    with pytest.raises(CheckFailed, match=r"tool lint: .* carry more than the galaxy \(.*row_index"):
        lint_tool_turns(LeakyZoom(settings(prepared_dir, codec)), "train", positions)


def test_zoom_rows_carry_the_galaxy_outside_the_prompt(prepared_dir):
    arm = build_arm(settings(prepared_dir), "train", max_samples=8)
    dataset = with_zoom_columns(arm.dataset(with_completion=False), arm)
    assert dataset[SPLIT_COLUMN] == ["train"] * 8 and dataset[POSITION_COLUMN] == arm.positions.tolist()
    assert all(p[0]["role"] == "system" and "zoom tool" in p[0]["content"] for p in dataset["prompt"])
    # The prompt lint still reads every prompt (system turn included) and finds no metadata in them.
    report = arm.lint(dataset["prompt"])
    assert not report.findings
    with pytest.raises(UserError, match="modality"):
        settings(prepared_dir, modality="pixels")


def test_zoom_rewards_read_the_environments(prepared_dir):
    envs = [episode(prepared_dir, settings(prepared_dir), row=i)[0] for i in range(3)]
    envs[0].zoom(BOX)
    envs[1].zoom([0.5, 0.5, 0.4, 0.4])  # invalid: still a call, still paid for
    envs[1].zoom(BOX)
    for e in envs:
        e.zoom_bonus = 0.5
    right = [{"role": "assistant", "content": "<answer>Merging</answer>"}]
    completions = [right, right, right]
    metrics = {}
    costs = zoom_cost_reward(completions, environments=envs, log_metric=metrics.__setitem__, label=[4, 7, 4])
    assert costs == pytest.approx([-0.1, -0.2, 0.0])
    assert metrics["zoom/rate"] == pytest.approx(2 / 3) and metrics["zoom/invalid_share"] == pytest.approx(1 / 3)
    # Per true class of the step's galaxies: class 4 zoomed once in two rollouts, class 7 in its one.
    assert metrics["zoom/rate_class_4"] == 0.5 and metrics["zoom/rate_class_7"] == 1.0
    assert zoom_bonus_reward(completions, label=[1, 1, 1], environments=envs) == [0.5, 0.5, 0.0]
    assert zoom_bonus_reward(completions, label=[2, 1, 1], environments=envs) == [0.0, 0.5, 0.0]
    with pytest.raises(UserError, match="zoom episodes"):
        zoom_cost_reward(completions, environments=None)
    unanswered = [{"role": "assistant", "content": "", "tool_calls": [{"type": "function"}]}]
    assert ended_on_tool_call(unanswered) and not ended_on_tool_call(right)
    skipping = skip_unanswered(zoom_cost_reward)
    assert skipping.__name__ == "zoom_cost_reward"  # TRL names the reward's metrics after it
    assert skipping(completions=[right, unanswered, right], environments=envs) == pytest.approx([-0.1, None, 0.0])


# --- GRPO episodes ---------------------------------------------------------------------------------------------------


def anchored_bias(tokenizer, conversation, tools, script: str, anchor: str) -> list:
    """`sequence_bias` entries that make sampling write `script` right after the rendered `conversation` (its last
    tokens, back to the text `anchor`, anchor it, so it fires there and nowhere else)."""
    text = tokenizer.apply_chat_template(conversation, tools=tools, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    k = next(k for k in range(1, len(ids) + 1) if anchor in tokenizer.decode(ids[-k:]))
    anchor = ids[-k:]
    ids = tokenizer(script, add_special_tokens=False)["input_ids"]
    return [[anchor + ids[: i + 1], 100.0] for i in range(len(ids))]


def steering(model_dir, modality: str, *, again: bool, box=BOX) -> list:
    """Write the zoom call on `box` after the user's prompt; with `again`, once more after the tool's result."""
    from astroreason.models import load_processor

    tokenizer = load_processor(str(model_dir)).tokenizer
    prompt = zoom_prompt([{"role": "user", "content": "x <answer>CLASS NAME</answer>."}], ARMS[modality])
    call = CALL.format(box=json.dumps(box))
    # The user turn's end ("</answer>.<|im_end|>\n<|im_start|>assistant\n"): the first turn only.
    bias = anchored_bias(tokenizer, prompt, [ZoomEnvironment.zoom], call, anchor="</answer>.")
    if again:
        called = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {}}]}
        called["tool_calls"][0]["function"] = {"name": "zoom", "arguments": {"bbox_2d": BOX}}
        turn = [*prompt, called, {"role": "tool", "name": "zoom", "content": "x"}]
        # The tool turn's end ("</tool_response><|im_end|>\n<|im_start|>assistant\n"), whatever came back.
        bias += anchored_bias(tokenizer, turn, [ZoomEnvironment.zoom], call, anchor="</tool_response>")
    return bias


def final_length_reward(completions, **kwargs) -> list[float]:
    """The length of the last turn's text: random completions differ, so every group has a signal."""
    return [len(str(c[-1].get("content", ""))) / 50 for c in completions]


def zoom_trainer(
    prepared_dir,
    model_dir,
    out,
    modality,
    codec=None,
    *,
    again=False,
    box=BOX,
    max_completion_length=256,
    image_size=56,
    **model_kwargs,
):
    from trl import GRPOConfig, ModelConfig

    from astroreason.training import GalaxyScriptArguments, build_grpo_trainer

    extra = {"codec": str(codec)} if codec else {}
    args = GalaxyScriptArguments(
        data_dir=str(prepared_dir),
        modality=modality,
        image_size=image_size,
        max_train_samples=8,
        zoom=True,
        zoom_max_turns=1,
        zoom_cost=0.1,
        reward_funcs=["format", "accuracy", "test_zoom.final_length_reward"],
        **extra,
    )
    config = GRPOConfig(
        output_dir=str(out),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=max_completion_length,
        learning_rate=1e-2,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        generation_kwargs={"sequence_bias": steering(model_dir, modality, again=again, box=box)},
    )
    trainer = build_grpo_trainer(args, config, ModelConfig(str(model_dir), dtype="float32", **model_kwargs))
    generated = []
    generate = trainer._generate

    def observe(prompts):  # keep what TRL's own rollout returned: ids, tool mask, completions
        out = generate(prompts)
        generated.append(out)
        return out

    trainer._generate = observe
    return trainer, generated


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def logged(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


@pytest.mark.parametrize("modality", ["image", "tokens"])
def test_zoom_grpo_runs_the_tool_and_learns(prepared_dir, tiny_model_dir, codec, tmp_path, modality):
    trainer, generated = zoom_trainer(
        prepared_dir, tiny_model_dir, tmp_path, modality, codec if modality == "tokens" else None
    )
    assert trainer.args.max_tool_calling_iterations == 1
    video, image = trainer.model.config.video_token_id, trainer.model.config.image_token_id
    assert trainer.generation_config.suppress_tokens == sorted([video, image])
    before = trainable(trainer.model)
    trainer.train()
    assert logged(trainer, "tools/call_frequency") == [1.0, 1.0] and logged(trainer, "tools/failure_frequency") == [
        0,
        0,
    ]
    assert logged(trainer, "zoom/rate") == [1.0, 1.0] and logged(trainer, "zoom/unanswered_share") == [0.0, 0.0]
    assert logged(trainer, "rewards/zoom_cost_reward/mean") == pytest.approx([-0.1, -0.1])
    tokenizer = trainer.processing_class.tokenizer
    for _, completion_ids, tool_mask, completions, *_rest, tool_images in generated:
        for ids, mask, messages, images in zip(completion_ids, tool_mask, completions, tool_images):
            assert [m["role"] for m in messages] == ["assistant", "tool", "assistant"]
            assert messages[0]["tool_calls"][0]["function"] == {"name": "zoom", "arguments": {"bbox_2d": BOX}}
            mask = np.asarray(mask, bool)
            model_text = tokenizer.decode(np.asarray(ids)[mask])
            tool_text = tokenizer.decode(np.asarray(ids)[~mask])
            # The tool's result is masked out of the loss; the call and the answer after it are the model's.
            assert '"name": "zoom"' in model_text and "<tool_response>" not in model_text
            assert "<tool_response>" in tool_text and "tool_call" not in tool_text
            if modality == "image":
                assert len(images) == 1 and images[0].size == (56, 56) and "<|image_pad|>" in tool_text
            else:
                assert images == [] and messages[1]["content"] in tool_text
    for env in trainer.environments:
        assert [(c.box, c.valid, c.pixels) for c in env.calls] == [(BOX, True, (16, 16, 48, 48))]
    # Every trainable parameter moved (TRL's own invariant); the token arm shows no image, so not its vision tower.
    family = family_for(trainer.model)
    used = {n: p for n, p in before.items() if modality == "image" or not family.is_vision(n)}
    unchanged = [n for n, p in used.items() if torch.equal(p, trainer.model.get_parameter(n))]
    assert used and not unchanged, f"parameters unchanged after zoom GRPO: {unchanged[:5]}"


@pytest.fixture(scope="module")
def tiny_qwen3_vl(tmp_path_factory):
    from astroreason.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen3_vl", arch="qwen3_vl", seed=0)


def test_zoom_grpo_on_qwen3_vl_uses_its_own_template(prepared_dir, tiny_qwen3_vl, tmp_path):
    """Qwen3-VL (the real-model zoom configs' family): its stock chat template renders the tool turns, TRL parses
    its calls, and the crop (64 px: 4 visual tokens of 32 px) reaches the next turn."""
    trainer, generated = zoom_trainer(prepared_dir, tiny_qwen3_vl, tmp_path, "image", image_size=64)
    assert trainer.processing_class.chat_template == family_for(trainer.model).chat_template  # its own, untouched
    before = trainable(trainer.model)
    trainer.train()
    assert logged(trainer, "tools/call_frequency") == [1.0, 1.0] and logged(trainer, "zoom/unanswered_share") == [0, 0]
    assert logged(trainer, "zoom/tokens_per_rollout") == [4.0, 4.0]
    for *_, completions, _logprobs, _extra, _images, tool_images in generated:
        assert all([m["role"] for m in c] == ["assistant", "tool", "assistant"] for c in completions)
        assert all(len(images) == 1 and images[0].size == (64, 64) for images in tool_images)
    unchanged = [n for n, p in before.items() if torch.equal(p, trainer.model.get_parameter(n))]
    assert not unchanged, f"parameters unchanged after zoom GRPO: {unchanged[:5]}"


def test_image_zoom_grpo_where_every_call_is_refused(prepared_dir, tiny_model_dir, tmp_path):
    """Every episode calls on an inverted box: each refusal returns the first view again with the error, the next
    turn sees it, and the step trains (TRL's tool loop fails on a round of an image batch whose calls add no image;
    the demo's zoom GRPO stopped there before refusals carried the first view)."""
    inverted = [0.6, 0.6, 0.4, 0.4]
    trainer, generated = zoom_trainer(prepared_dir, tiny_model_dir, tmp_path, "image", box=inverted)
    trainer.train()
    assert logged(trainer, "zoom/rate") == [1.0, 1.0] and logged(trainer, "zoom/invalid_share") == [1.0, 1.0]
    for *_, completions, _logprobs, _extra, _images, tool_images in generated:
        assert all([m["role"] for m in c] == ["assistant", "tool", "assistant"] for c in completions)
        assert all(len(images) == 1 and images[0].size == (56, 56) for images in tool_images)
        assert all("inverted or empty" in result_text(c[1]["content"]) for c in completions)
    assert all([(c.box, c.valid) for c in env.calls] == [(inverted, False)] for env in trainer.environments)
    # A refusal costs its image's visual tokens and its text's.
    tokenizer, call = trainer.processing_class.tokenizer, trainer.environments[0].calls[0]
    visual = family_for(trainer.model).visual_tokens(trainer.processing_class, 56)
    assert call.tokens == visual + len(tokenizer(call.error, add_special_tokens=False)["input_ids"]) > visual


def test_episodes_stopped_at_the_turn_cap_are_left_out(prepared_dir, tiny_model_dir, tmp_path):
    """Every episode calls again after the tool's result, past the cap of 1: no answer, every reward None, zero
    advantage for all, and nothing moves (the same run with an answer after the call learns, above)."""
    trainer, generated = zoom_trainer(prepared_dir, tiny_model_dir, tmp_path, "image", again=True)
    before = trainable(trainer.model)
    trainer.train()
    assert logged(trainer, "zoom/unanswered_share") == [1.0, 1.0]
    assert logged(trainer, "reward") == [None, None]  # every reward NaN: logged as None
    for *_, completions, _logprobs, _extra, _images, _tool_images in generated:
        assert all(ended_on_tool_call(c) and [m["role"] for m in c][-1] == "assistant" for c in completions)
    assert all(torch.equal(p, trainer.model.get_parameter(n)) for n, p in before.items())


def test_zoom_recipe_under_two_processes(prepared_dir, tiny_model_dir, tmp_path):
    """recipes/grpo.py with the tiny zoom config, launched by accelerate as two CPU processes (gloo), steered to call
    the tool once: both processes run their episodes, and the run trains and saves."""
    import subprocess
    import sys

    import yaml
    from test_recipes import ROOT, _env, _free_port, trainer_state

    config = yaml.safe_load((ROOT / "recipes/configs/tiny/grpo_zoom_image.yaml").read_text())
    config.update(
        model_name_or_path=str(tiny_model_dir),
        data_dir=str(prepared_dir),
        image_size=56,
        max_train_samples=16,
        max_steps=2,
        save_steps=2,
        max_completion_length=256,
        zoom_max_turns=1,
        output_dir=str(tmp_path / "out"),
        reward_funcs=["format", "accuracy", "test_zoom.final_length_reward"],
        generation_kwargs={"sequence_bias": steering(tiny_model_dir, "image", again=False)},
    )
    (tmp_path / "zoom.yaml").write_text(yaml.safe_dump(config))
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "recipes/accelerate/cpu.yaml"),
    ]
    launch += ["--num_processes", "2", "--main_process_port", str(_free_port())]
    env = _env()
    env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{ROOT / 'tests'}"  # the test's own reward, by dotted path
    cmd = [*launch, str(ROOT / "recipes/grpo.py"), "--config", str(tmp_path / "zoom.yaml")]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "after 2 steps (2 processes)" in result.stdout
    logs = [h for h in trainer_state(tmp_path / "out" / "checkpoint-2")["log_history"] if "zoom/rate" in h]
    # Metrics are gathered over both processes: every episode of both called the tool once, validly, and answered.
    assert [(h["tools/call_frequency"], h["zoom/rate"], h["zoom/invalid_share"]) for h in logs] == [(1, 1, 0)] * 2
    assert [h["zoom/unanswered_share"] for h in logs] == [0, 0]
    assert all(h["grad_norm"] > 0 for h in logs)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["--zoom_max_turns", "0"], "zoom_max_turns: expected a positive number of turns"),
        (["--zoom_cost", "-0.1"], "zoom_cost: expected a non-negative reward"),
        (["--zoom_min_side", "1.5"], "zoom_min_side: expected a fraction in (0, 1]"),
        (["--zoom_max_aspect", "0.5"], "zoom_max_aspect: expected a ratio of at least 1"),
        (["--zoom_sft_fraction", "1.5"], "zoom_sft_fraction: expected a fraction in [0, 1]"),
        (["--zoom_sft_max_box", "0"], "zoom_sft_max_box: expected a fraction in (0, 1]"),
        (
            ["--zoom_sft_max_box", "0.3", "--zoom_sft_fraction", "0.5"],
            "zoom_sft_max_box: the rows taught a zoom are chosen by their focus box or at random",
        ),
        (["--max_tool_calling_iterations", "3"], "max_tool_calling_iterations: 3 disagrees with zoom_max_turns 2"),
    ],
)
def test_bad_zoom_options_are_one_line(overrides, message):
    from test_recipes import TINY
    from trl import GRPOConfig

    from astroreason.training import parse_recipe_args

    with pytest.raises(UserError) as err:
        parse_recipe_args(GRPOConfig, ["--config", str(TINY / "grpo_zoom_image.yaml"), *overrides])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_template_without_tool_calls_gets_the_familys(tiny_model_dir):
    """Qwen2.5-VL's stock template drops tool calls (TRL refuses it): a zoom run gives the processor the family's."""
    from trl.chat_template_utils import supports_tool_calling

    from astroreason.models import load_processor
    from astroreason.training.zoom import tool_capable

    processor = load_processor(str(tiny_model_dir))
    plain = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    processor.chat_template = processor.tokenizer.chat_template = plain
    processor.tokenizer.response_template = None
    assert not supports_tool_calling(processor)
    family = family_for("qwen2_5_vl")
    tool_capable(processor, family)
    assert supports_tool_calling(processor) and processor.chat_template == family.chat_template
    assert processor.tokenizer.response_template == family.response_template()


def test_aion_token_zoom_reads_the_galaxy10_aion_flux(prepared_dir, surrogate_h5, tmp_path):
    """The token arm on AION codes made from a galaxy10-aion copy (`--flux-source`): the zoom re-reads that copy's
    flux (96 px, the whole field AION sees) for the galaxy at that split position; the arm holds only the galaxies
    with flux, so positions skip the others."""
    import shutil

    pytest.importorskip("aion.codecs", reason="the AION adapter needs the `aion` extra (polymathic-aion)")
    from aion import codecs as aion_codecs
    from aion.modalities import LegacySurveyImage
    from test_tokens_aion import write_galaxy10_aion

    from astroreason.cli import main

    data = tmp_path / "prepared"
    shutil.copytree(prepared_dir, data, ignore=shutil.ignore_patterns("tokens"))
    torch.manual_seed(0)
    codec_dir = tmp_path / "aion-base"
    aion_codecs.ImageCodec(quantizer_levels=[7, 5, 5, 5, 5], hidden_dims=16, num_consecutive=1).save_pretrained(
        str(codec_dir), modality=LegacySurveyImage
    )
    with h5py.File(surrogate_h5) as f:
        covered = np.flatnonzero(np.random.default_rng(3).random(len(f["ans"])) < 0.66)
    source = write_galaxy10_aion(surrogate_h5, tmp_path / "galaxy10-aion", covered)
    encode = ["tokens", "encode", "--data", str(data), "--codec", str(codec_dir), "--flux-source", str(source)]
    assert main(encode) == 0
    arm_settings = ArmSettings(data_dir=str(data), modality="tokens", codec=str(codec_dir))
    env, row = episode(data, arm_settings, row=5)
    assert row in set(covered.tolist()) and env._tool.inputs.cache.meta["input"] == "galaxy10-aion"
    text = env.zoom(BOX)
    with h5py.File(surrogate_h5) as f:
        patch = torch.from_numpy(f["flux"][row][:, 24:72, 24:72].copy())[None]
    patch = torch.nn.functional.interpolate(patch, size=(96, 96), mode="bilinear", align_corners=False)
    assert text == render(load_codec(codec_dir).encode(patch.numpy())[0], "ints")
    assert env.calls[0].pixels == (24, 24, 72, 72) and "too small" in env.zoom([0, 0, 0.04, 0.04])  # a cell: 1/24

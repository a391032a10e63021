"""The zoom warm start: SFT on zoom trajectories made from the data (`zoom.trajectories`, `data.focus`), on the tiny
offline Qwen2.5-VL and the GalSim surrogate.

The trajectory is checked against what a zoom rollout renders (the same prompt text, the tool's own crop of the
source, made by hand here from the HDF5 file) and its loss mask against the assistant's turns; the training is real
(`build_sft_trainer` with `zoom=True`), and a model it trained then calls the tool on its own in a zoom evaluation,
which the random model never does.
"""

from __future__ import annotations

import itertools
import json

import h5py
import numpy as np
import pytest
import torch
from evalkit import build_codec
from PIL import Image

from astroreason.arms.box import BoxLimits, fit_box, parse_box
from astroreason.data.focus import focus_boxes, light_box, pixel_box
from astroreason.data.galaxy10 import DECALS_CLASSES
from astroreason.data.splits import load_manifest, prepare

BICUBIC = Image.Resampling.BICUBIC


@pytest.fixture(scope="module")
def codec(prepared_dir, tmp_path_factory):
    return build_codec(prepared_dir, tmp_path_factory.mktemp("zoom_sft") / "fsq")


# --- where to look ---------------------------------------------------------------------------------------------------


def test_the_surrogates_focus_box_frames_the_galaxy(surrogate_h5):
    with h5py.File(surrogate_h5) as f:
        images, boxes = f["images"][()].astype(float).mean(-1), f["focus_box"][()]
    assert boxes.shape == (len(images), 4) and boxes.min() >= 0 and boxes.max() <= 1
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    for image, box in zip(images, boxes):
        light = image - np.median(image)  # above the sky
        left, top, right, bottom = pixel_box(box, 64, 64)
        inside = np.zeros(image.shape, bool)
        inside[top:bottom, left:right] = True
        assert light[inside].mean() > 5 * light[~inside].mean()  # the galaxy is in its box, the sky around it


def test_the_light_box_is_the_centre_and_spread_of_the_light():
    y, x = np.mgrid[0:100, 0:100] + 0.5
    blob = 20 + 200 * np.exp(-0.5 * ((x - 45) ** 2 + (y - 55) ** 2) / 5.0**2)
    box = light_box(Image.fromarray(blob.astype(np.uint8)))
    # centre (0.45, 0.55), +- 2 sigma = 0.10 (the sky is subtracted: its median)
    assert box == pytest.approx((0.35, 0.45, 0.55, 0.65), abs=0.01)
    assert light_box(Image.new("RGB", (32, 32))) == (0.25, 0.25, 0.75, 0.75)


def test_a_fitted_box_is_one_the_tool_accepts():
    limits = BoxLimits(0.25, 4.0)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        x, y = rng.uniform(0, 1, 2)
        w, h = rng.uniform(0.001, 0.6, 2)
        box = fit_box([x, y, min(1, x + w), min(1, y + h)], limits)
        parse_box(box, limits)
        assert all(round(v, 2) == v for v in box)
    assert fit_box([0.1, 0.2, 0.6, 0.7], limits) == [0.1, 0.2, 0.6, 0.7]  # a valid box stays as it is
    assert fit_box([0.45, 0.45, 0.55, 0.55], limits) == [0.37, 0.37, 0.62, 0.62]  # grown about its centre
    assert fit_box([0.9, 0.9, 0.95, 0.99], limits) == [0.75, 0.75, 1.0, 1.0]  # shifted inside the image
    assert fit_box([0.1, 0.4, 0.9, 0.45], limits) == [0.1, 0.3, 0.9, 0.55]  # widened to the aspect cap


def test_focus_boxes_follow_the_split_or_measure_the_light(prepared_dir, surrogate_h5, tmp_path):
    manifest = load_manifest(prepared_dir)
    positions = [5, 0, 17, 3]
    boxes, origin = focus_boxes(prepared_dir, "train", positions, manifest=manifest)
    with h5py.File(surrogate_h5) as f:
        expected = f["focus_box"][()][np.asarray(manifest.rows["train"])[positions]]
    assert origin == "surrogate" and np.array_equal(boxes, expected)

    # A source that does not know its galaxies' focus (the real Galaxy10 file): the galaxy's light.
    plain = tmp_path / "plain.h5"
    with h5py.File(surrogate_h5) as f, h5py.File(plain, "w") as g:
        for key in f:
            if key != "focus_box":
                f.copy(key, g)
        g.attrs.update(f.attrs)
    prepare(plain, tmp_path / "prepared", seed=0)
    other = load_manifest(tmp_path / "prepared")
    boxes, origin = focus_boxes(tmp_path / "prepared", "train", positions, manifest=other)
    with h5py.File(plain) as f:
        images = [Image.fromarray(f["images"][r]) for r in np.asarray(other.rows["train"])[positions]]
    assert origin == "light" and np.allclose(boxes, [light_box(im) for im in images])


# --- the trajectories and their loss mask ----------------------------------------------------------------------------


def sft_trainer(prepared_dir, model_dir, out, modality, codec=None, *, steps=2, lr=1e-2, lora=None, **zoom):
    from trl import ModelConfig, SFTConfig

    from astroreason.training import GalaxyScriptArguments, build_sft_trainer

    extra = {"codec": str(codec)} if codec else {}
    args = GalaxyScriptArguments(
        data_dir=str(prepared_dir), modality=modality, image_size=56, max_train_samples=8, zoom=True, **zoom, **extra
    )
    config = SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=lr,
        lr_scheduler_type="constant",
        max_length=None,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    model_args = ModelConfig(str(model_dir), dtype="float32", **(lora or {}))
    return build_sft_trainer(args, config, model_args), args


def zoom_prompt_ids(trainer, args, row: int) -> list[int]:
    """The tokens a zoom rollout of training row `row` renders before the model's first turn (TRL's GRPO and the
    evaluation: the zoom prompt, the image block before the user's text, the tool schema)."""
    from transformers.utils import get_json_schema
    from trl.data_utils import prepare_multimodal_messages

    from astroreason.arms import build_arm
    from astroreason.zoom import ZoomEnvironment, with_zoom_columns

    arm = build_arm(args, "train", max_samples=8)
    dataset = with_zoom_columns(arm.dataset(with_completion=False), arm)
    images = [dataset[row]["image"]] if args.modality == "image" else []
    prompt = prepare_multimodal_messages(dataset[row]["prompt"], images=images)
    tools = [get_json_schema(ZoomEnvironment(None).zoom)]
    rendered = trainer.processing_class.apply_chat_template(
        prompt, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(np.asarray(rendered["input_ids"]).reshape(-1))


def hand_crop(surrogate_h5, prepared_dir, position: int, box, size: int) -> Image.Image:
    row = load_manifest(prepared_dir).rows["train"][position]
    with h5py.File(surrogate_h5) as f:
        full = Image.fromarray(f["images"][row])
    return full.crop(pixel_box(box, *full.size)).resize((size, size), BICUBIC)


def test_an_image_trajectory_is_the_rollout_trained_on_the_assistant_only(
    prepared_dir, surrogate_h5, tiny_model_dir, tmp_path
):
    trainer, args = sft_trainer(prepared_dir, tiny_model_dir, tmp_path, "image")
    assert trainer.args.assistant_only_loss
    rows = list(itertools.islice(iter(trainer.train_dataset), 8))
    assert len(rows) == 8
    manifest = load_manifest(prepared_dir)
    processor, tokenizer = trainer.processing_class, trainer.processing_class.tokenizer
    row = rows[0]
    # Which galaxy a (shuffled) row is: its first view is the arm's resized image of one of the 8 training rows.
    from astroreason.arms import build_arm

    arm = build_arm(args, "train", max_samples=8)
    views = [np.asarray(im) for im in arm.dataset(with_completion=False)["image"]]
    first_view = np.asarray(row["messages"][1]["content"][0]["image"])
    k = next(i for i, v in enumerate(views) if np.array_equal(v, first_view))
    position = int(arm.positions[k])
    focus, _ = focus_boxes(prepared_dir, "train", [position], manifest=manifest)
    box = fit_box(focus[0], BoxLimits(28 / 56, 4.0))  # the tool's default: one merged patch of the 56 px view
    label = DECALS_CLASSES[arm.labels[k]]

    batch = trainer.data_collator([row])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    call = f'<tool_call>\n{{"name": "zoom", "arguments": {{"bbox_2d": {json.dumps(box)}}}}}\n</tool_call><|im_end|>'
    assert tokenizer.decode(ids[labels != -100]) == call + f"<answer>{label}</answer><|im_end|>"
    prompt = zoom_prompt_ids(trainer, args, k)
    assert ids[: len(prompt)].tolist() == prompt  # the prompt a rollout of this galaxy sees
    # The second image is the tool's crop of the 64 px source, made here by hand; its tokens are not trained.
    crop = hand_crop(surrogate_h5, prepared_dir, position, box, 56)
    expected = processor.image_processor(images=[first_view, np.asarray(crop)], return_tensors="pt")
    assert torch.equal(batch["pixel_values"], expected["pixel_values"])
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 4]]
    image_token = trainer.model.config.image_token_id
    assert (ids == image_token).sum() == 8 and not (labels == image_token).any()


def test_a_token_trajectory_carries_the_codes_of_the_crop(prepared_dir, tiny_model_dir, codec, tmp_path):

    trainer, args = sft_trainer(prepared_dir, tiny_model_dir, tmp_path, "tokens", codec)
    dataset = trainer.train_dataset  # tokenized by TRL, with its assistant mask
    manifest = load_manifest(prepared_dir)
    from astroreason.arms import build_arm

    arm = build_arm(args, "train", max_samples=8)
    focus, _ = focus_boxes(prepared_dir, "train", arm.positions, manifest=manifest)
    tool = args.arm_class().zoom_tool(args, pixel_multiple=28)
    tokenizer = trainer.processing_class.tokenizer
    for k in range(2):
        box = fit_box(focus[k], tool.limits)
        codes = tool("train", int(arm.positions[k]), box).result
        batch = trainer.data_collator([dataset[k]])
        ids, trained = batch["input_ids"][0].numpy(), batch["labels"][0].numpy() != -100
        prompt = zoom_prompt_ids(trainer, args, k)
        assert ids[: len(prompt)].tolist() == prompt
        text = tokenizer.decode(ids)
        assert f"<tool_response>\n{codes}\n</tool_response>" in text
        label = DECALS_CLASSES[arm.labels[k]]
        call = f'<tool_call>\n{{"name": "zoom", "arguments": {{"bbox_2d": {json.dumps(box)}}}}}\n</tool_call>'
        assert tokenizer.decode(ids[trained]) == f"{call}<|im_end|><answer>{label}</answer><|im_end|>"


def test_the_fraction_of_rows_taught_a_zoom(prepared_dir, tiny_model_dir, codec, tmp_path):
    trainer, _ = sft_trainer(prepared_dir, tiny_model_dir, tmp_path, "tokens", codec, zoom_sft_fraction=0.5)
    text = [trainer.processing_class.tokenizer.decode(r["input_ids"]) for r in trainer.train_dataset]
    assert sum("<tool_response>" in t for t in text) == 4 and len(text) == 8


def test_the_rows_taught_a_zoom_are_those_whose_focus_box_is_small(prepared_dir, tiny_model_dir, codec, tmp_path):
    """`zoom_sft_max_box`: a zoom is taught where the region that decides the class is small in the first view,
    row by row from the surrogate's focus boxes, and the others answer at once."""
    boxes, _ = focus_boxes(prepared_dir, "train", list(range(8)), manifest=load_manifest(prepared_dir))
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    max_box = float(np.median(sides))
    trainer, _ = sft_trainer(prepared_dir, tiny_model_dir, tmp_path, "tokens", codec, zoom_sft_max_box=max_box)
    text = [trainer.processing_class.tokenizer.decode(r["input_ids"]) for r in trainer.train_dataset]
    taught = ["<tool_response>" in t for t in text]
    assert taught == (sides <= max_box).tolist() and 0 < sum(taught) < len(taught)


# --- it teaches the call -----------------------------------------------------------------------------------------------


def zoom_rate(model_dir, prepared_dir, out, modality, codec=None) -> dict:
    from astroreason.evaluation.harness import EvalConfig, evaluate

    extra = {"codec": str(codec)} if codec else {}
    config = EvalConfig(
        model=str(model_dir),
        data_dir=str(prepared_dir),
        split="train",
        modality=modality,
        image_size=56,
        max_samples=8,
        batch_size=8,
        max_new_tokens=96,
        zoom=True,
        zoom_max_turns=1,
        output_dir=str(out),
        price_gpu_hour=0.0,
        ledger=str(out.parent / f"{out.name}_spend.jsonl"),
        n_boot=20,
        **extra,
    )
    return evaluate(config, progress=False)["zoom"]


@pytest.mark.parametrize("modality", ["image", "tokens"])
def test_the_warm_start_teaches_the_model_to_zoom(prepared_dir, tiny_model_dir, codec, tmp_path, modality):
    codec = codec if modality == "tokens" else None
    assert zoom_rate(tiny_model_dir, prepared_dir, tmp_path / "before", modality, codec)["zoom_rate"] == 0
    trainer, _ = sft_trainer(prepared_dir, tiny_model_dir, tmp_path / "sft", modality, codec, steps=60, lr=3e-3)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < 0.5 * losses[0]
    assert any(not torch.equal(p, trainer.model.get_parameter(n)) for n, p in before.items())
    trainer.save_model(tmp_path / "sft")
    trainer.processing_class.save_pretrained(tmp_path / "sft")
    after = zoom_rate(tmp_path / "sft", prepared_dir, tmp_path / "after", modality, codec)
    assert after["zoom_rate"] > 0.5 and after["valid_zooms_per_galaxy"] > 0.5

    # The audit's blank-input control of this zoom run is asked as zoom episodes too (their zooms see the control's
    # galaxy, see the next test); the model zooms there as well.
    from astroreason.audit.probes import probe_blank_input, run_spec

    spec = run_spec(tmp_path / "after")
    assert spec.zoom and spec.zoom_max_turns == 1 and spec.split == "train"
    probe = probe_blank_input(spec, max_samples=8)
    assert "in zoom episodes" in probe.summary and probe.details["zoom_rate"] > 0.5 and probe.details["n"] == 8


def test_the_blank_controls_zoom_sees_no_galaxy(prepared_dir, codec):
    from astroreason.arms import ArmSettings, BlankImageZoom, build_arm

    settings = ArmSettings(data_dir=str(prepared_dir), image_size=56)
    crop = BlankImageZoom(settings, pixel_multiple=28)("test", 3, [0.2, 0.2, 0.8, 0.8]).result[0]["image"]
    assert crop.size == (56, 56) and not np.asarray(crop).any()
    # The token arm's control: row k shows row control_order[k]'s codes, and zooms into that galaxy.
    tokens = ArmSettings(data_dir=str(prepared_dir), modality="tokens", codec=str(codec))
    arm = build_arm(tokens, "test", max_samples=8)
    order = arm.control_order(0)
    rows = arm.without_galaxy(0)
    assert [r["prompt"] for r in rows] == [arm.prompt(arm.view[int(j)], k) for k, j in enumerate(order)]
    assert sorted(order) == list(range(8)) and (order != np.arange(8)).any()
    tool = tokens.arm_class().zoom_tool(tokens)
    whole = tool("test", int(arm.positions[order[0]]), [0, 0, 1, 1]).result
    assert whole == arm.view[int(order[0])]["tokens_text"]  # the whole box: the first view's codes again


LORA = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"])


def test_the_warm_start_and_zoom_grpo_with_lora(prepared_dir, tiny_model_dir, tmp_path):
    """LoRA both ways: the warm start trains its adapters on the trajectories, and a zoom GRPO run (steered to call
    the tool, as in tests/test_zoom.py) trains its own; the base weights stay as they are."""
    from test_zoom import logged, zoom_trainer

    def adapters(model):
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}

    trainer, _ = sft_trainer(prepared_dir, tiny_model_dir, tmp_path / "sft", "image", steps=3, lora=LORA)
    q = next(n for n, _ in trainer.model.named_parameters() if n.endswith("q_proj.base_layer.weight"))
    before, base = adapters(trainer.model), trainer.model.get_parameter(q).detach().clone()
    trainer.train()
    assert before and any(not torch.equal(p, trainer.model.get_parameter(n)) for n, p in before.items())
    assert torch.equal(trainer.model.get_parameter(q), base)

    grpo, _ = zoom_trainer(prepared_dir, tiny_model_dir, tmp_path / "grpo", "image", **LORA)
    before, base = adapters(grpo.model), grpo.model.get_parameter(q).detach().clone()
    grpo.train()
    assert logged(grpo, "zoom/rate") == [1.0, 1.0]
    assert any(not torch.equal(p, grpo.model.get_parameter(n)) for n, p in before.items())
    assert torch.equal(grpo.model.get_parameter(q), base)


@pytest.mark.parametrize("modality", ["image", "tokens"])
def test_the_blank_controls_zoom_keeps_the_runs_box_limits(prepared_dir, tiny_model_dir, codec, tmp_path, modality):
    """A zoom run recorded with its own box limits (result.json's config, or a training run's fingerprint) gets its
    blank-input control asked with a tool of those limits, not the defaults."""
    from dataclasses import asdict

    from astroreason.arms import build_arm
    from astroreason.audit.probes import control_zoom_tool, run_spec
    from astroreason.evaluation.harness import EvalConfig
    from astroreason.models import family_for, load_model_and_processor

    extra = {"codec": str(codec)} if modality == "tokens" else {}
    config = EvalConfig(
        model=str(tiny_model_dir),
        data_dir=str(prepared_dir),
        modality=modality,
        zoom=True,
        zoom_min_side=0.375,
        zoom_max_aspect=2.0,
        **extra,
    )
    evaluated = tmp_path / "eval"
    evaluated.mkdir()
    (evaluated / "result.json").write_text(json.dumps({"config": asdict(config)}))
    trained = tmp_path / "trained"  # a training run: the script arguments are in its fingerprint's `extra`
    trained.mkdir()
    fingerprint = {"extra": {k: str(v) for k, v in asdict(config).items()}}
    (trained / "fingerprint.json").write_text(json.dumps(fingerprint))
    model, _ = load_model_and_processor(str(tiny_model_dir))
    for run in (evaluated, trained):
        spec = run_spec(run)
        assert (spec.zoom_min_side, spec.zoom_max_aspect) == (0.375, 2.0)
        arm = build_arm(spec.arm_settings(), spec.split, max_samples=4, lint_template=False)
        tool = control_zoom_tool(spec, arm, family_for(model))
        assert (tool.limits.min_side, tool.limits.max_aspect) == (0.375, 2.0)
        assert not tool("test", int(arm.positions[0]), [0.0, 0.0, 0.3, 0.3]).valid  # smaller than the run allowed

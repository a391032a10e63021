"""The `special` rendering end to end: one LM token per code, added by the recipes through the model family with a
chosen init, trained (full and LoRA), saved with the checkpoint's tokenizer, evaluated with it, and counted the same
way by `result.json` and `astroreason tokens cost`; a checkpoint without the code tokens is refused in one line.

Everything runs in-process on the tiny Qwen2.5-VL, the session's surrogate split and a 5x5-level FSQ codec
(25 codes, 4x4 = 16 codes per galaxy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, cli
from evalkit import build_codec

from astroreason.models import add_code_tokens, codec_vectors, load_model_and_processor
from astroreason.tokens import load_codec
from astroreason.tokens.render import code_token

REPO = Path(__file__).resolve().parents[1]
GRID_CELLS = 16  # the codec's 4x4 grid


@pytest.fixture(scope="module")
def codec_dir(prepared_dir, tmp_path_factory):
    return build_codec(prepared_dir, tmp_path_factory.mktemp("codec") / "fsq25")


def code_ids(processor, vocab_size: int) -> list[int]:
    tok = getattr(processor, "tokenizer", processor)
    return tok.convert_tokens_to_ids([code_token(i) for i in range(vocab_size)])


# --- the inits -------------------------------------------------------------------------------------------------------


def test_mean_init_gives_distinct_rows_and_keeps_rows_already_there(tiny_model_dir, codec_dir):
    model, processor = load_model_and_processor(tiny_model_dir)
    vocab = load_codec(codec_dir).vocab_size
    n_old = len(processor.tokenizer)
    old = model.get_input_embeddings().weight[:n_old].detach().clone()
    assert add_code_tokens(processor, model, vocab, init="mean", seed=0) == vocab
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    ids = code_ids(processor, vocab)
    torch.testing.assert_close(emb[:n_old], old)  # no old row moved
    rows = emb[ids].detach()
    assert torch.cdist(rows, rows).add(torch.eye(vocab) * 1e9).min() > 0  # no two code tokens start identical
    # Near the mean of the old rows: far closer to it than the old rows are.
    assert (rows - old.mean(0)).norm(dim=1).max() < 0.2 * (old - old.mean(0)).norm(dim=1).mean()
    assert torch.isfinite(head[ids]).all() and head.data_ptr() != emb.data_ptr()
    # Rows already there (a checkpoint trained with special, or warm-started) are never initialised again.
    warm = torch.randn(vocab, emb.shape[1], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        emb[ids] = warm
    assert add_code_tokens(processor, model, vocab, init="codebook", vectors=codec_vectors(load_codec(codec_dir))) == 0
    torch.testing.assert_close(model.get_input_embeddings().weight[ids], warm)


def test_codebook_init_follows_the_codebook(tiny_model_dir, codec_dir):
    """FSQ 5x5: code ids are points of a 5x5 grid of level values; the rows start as far apart as their points."""
    from scipy.stats import spearmanr

    codec = load_codec(codec_dir)
    vectors = codec_vectors(codec)
    assert vectors.shape == (25, 2) and len({tuple(v) for v in vectors.tolist()}) == 25
    model, processor = load_model_and_processor(tiny_model_dir)
    add_code_tokens(processor, model, codec.vocab_size, init="codebook", vectors=vectors, seed=3)
    for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        rows = weight[code_ids(processor, codec.vocab_size)].detach().double()
        row_d = torch.cdist(rows, rows).numpy()
        code_d = np.linalg.norm(vectors[:, None] - vectors[None], axis=-1)
        upper = np.triu_indices(25, 1)
        assert spearmanr(code_d[upper], row_d[upper]).statistic > 0.9
        # Neighbouring codes (one level apart) start closer than opposite corners of the grid.
        near, far = np.argsort(code_d[0])[1], np.argmax(code_d[0])
        assert row_d[0, near] < 0.5 * row_d[0, far]
    # The same seed gives the same rows; the mean init gives rows that do not follow the codebook.
    again_model, again_proc = load_model_and_processor(tiny_model_dir)
    add_code_tokens(again_proc, again_model, codec.vocab_size, init="codebook", vectors=vectors, seed=3)
    ids = code_ids(processor, codec.vocab_size)
    torch.testing.assert_close(again_model.get_input_embeddings().weight[ids], model.get_input_embeddings().weight[ids])


def test_tied_embeddings_stay_tied(tiny_model_dir, codec_dir):
    from transformers import AutoConfig, AutoModelForImageTextToText

    _, processor = load_model_and_processor(tiny_model_dir)
    model = AutoModelForImageTextToText.from_config(
        AutoConfig.from_pretrained(tiny_model_dir, tie_word_embeddings=True)
    )
    codec = load_codec(codec_dir)
    add_code_tokens(processor, model, codec.vocab_size, init="codebook", vectors=codec_vectors(codec))
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.data_ptr() == head.data_ptr() and emb.shape[0] >= len(processor.tokenizer)


# --- recipes, checkpoint, evaluation, cost ---------------------------------------------------------------------------


def train(recipe: str, model_dir, prepared_dir, codec_dir, out: Path, *extra: str):
    """A few steps of a recipe with `--rendering special` (in-process); returns the trainer after saving."""
    from trl import GRPOConfig, SFTConfig

    from astroreason.training import build_grpo_trainer, build_sft_trainer, parse_recipe_args, run_training

    config_class, build = (SFTConfig, build_sft_trainer) if recipe == "sft" else (GRPOConfig, build_grpo_trainer)
    argv = [
        "--config",
        str(REPO / f"recipes/configs/tiny/{recipe}_tokens.yaml"),
        "--model_name_or_path",
        str(model_dir),
        "--data_dir",
        str(prepared_dir),
        "--codec",
        str(codec_dir),
        "--rendering",
        "special",
        "--output_dir",
        str(out),
        "--max_steps",
        "3",
        "--save_steps",
        "3",
        "--max_train_samples",
        "12",
        "--learning_rate",
        "5e-2",
        *extra,
    ]
    script_args, training_args, model_args = parse_recipe_args(config_class, argv)
    trainer = build(script_args, training_args, model_args)
    run_training(trainer, script_args)
    return trainer


LORA = ("--use_peft", "true", "--lora_target_modules", "q_proj", "v_proj", "--lora_r", "4")


@pytest.fixture(scope="module")
def tied_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model's architecture with tied input and output embeddings (as Qwen2.5-VL-3B has)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from astroreason.models import load_processor

    out = tmp_path_factory.mktemp("tied") / "model"
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(
        AutoConfig.from_pretrained(tiny_model_dir, tie_word_embeddings=True)
    )
    model.save_pretrained(out)
    load_processor(tiny_model_dir).save_pretrained(out)
    return out


@pytest.mark.parametrize(
    "recipe,kind,init",
    [("sft", "full", "mean"), ("sft", "lora", "codebook"), ("sft", "lora-tied", "mean"), ("grpo", "lora", "mean")],
    ids=["sft-full", "sft-lora", "sft-lora-tied", "grpo-lora"],
)
def test_special_checkpoint_trains_saves_and_evaluates(
    recipe, kind, init, request, prepared_dir, codec_dir, tmp_path, capsys
):
    lora = kind.startswith("lora")
    tiny_model_dir = request.getfixturevalue("tied_model_dir" if kind == "lora-tied" else "tiny_model_dir")
    vocab = load_codec(codec_dir).vocab_size
    base, base_proc = load_model_and_processor(tiny_model_dir)
    n_old = len(base_proc.tokenizer)
    base_rows = base.get_input_embeddings().weight[:n_old].detach().clone()
    extra = (*LORA, "--code_token_init", init) if lora else ("--code_token_init", init)
    if recipe == "grpo":
        extra = (*extra, "--num_generations", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "8")
    out = tmp_path / "run"
    trainer = train(recipe, tiny_model_dir, prepared_dir, codec_dir, out, *extra)
    assert trainer.state.global_step == 3

    # Saved with its tokenizer: one token per code, and the checkpoint (or adapter) reloads with it.
    model, processor = load_model_and_processor(out)
    ids = code_ids(processor, vocab)
    assert min(ids) >= n_old and len(set(ids)) == vocab
    tok = processor.tokenizer
    assert tok("".join(code_token(c) for c in (3, 0, 24)), add_special_tokens=False)["input_ids"] == [
        ids[3],
        ids[0],
        ids[24],
    ]
    emb = model.get_input_embeddings().weight.detach()
    assert emb.shape[0] >= n_old + vocab
    # The new rows trained (they moved from their init, which the same seed reproduces here).
    fresh, fresh_proc = load_model_and_processor(tiny_model_dir)
    vectors = codec_vectors(load_codec(codec_dir)) if init == "codebook" else None
    add_code_tokens(fresh_proc, fresh, vocab, init=init, vectors=vectors, seed=42)
    init_rows = fresh.get_input_embeddings().weight[ids].detach()
    trained = trainer.model.get_input_embeddings().weight[ids].detach().cpu()
    torch.testing.assert_close(emb[ids], trained)  # the trained rows are what the checkpoint reloads
    moved = (trained - init_rows).norm(dim=1)
    if recipe == "sft":  # every code the training prompts hold moved (GRPO's rewards may not vary in 3 steps)
        seen = {t for row in trainer.train_dataset["input_ids"] for t in row} & set(ids)
        assert seen and all(moved[ids.index(t)] > 1e-4 for t in seen), moved
    if kind == "lora":  # trainable_token_indices: only the code rows train, the old vocabulary is untouched
        torch.testing.assert_close(emb[:n_old], base_rows)
        assert json.loads((out / "adapter_config.json").read_text())["trainable_token_indices"]
    if kind == "lora-tied":  # the whole embedding trains, saved in the adapter, still tied to the head
        assert "embed_tokens" in json.loads((out / "adapter_config.json").read_text())["modules_to_save"]
        assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()

    # Evaluated with its own tokenizer; the prompt per galaxy is the 16 codes plus the template, as `tokens cost`
    # counts it for the same tokenizer.
    eval_out = tmp_path / "eval"
    status = cli(
        capsys,
        "eval",
        "--model",
        out,
        "--data_dir",
        prepared_dir,
        "--modality",
        "tokens",
        "--codec",
        codec_dir,
        "--rendering",
        "special",
        "--output_dir",
        eval_out,
        "--ledger",
        tmp_path / "spend.jsonl",
        "--prices",
        REPO / "eval" / "prices.yaml",
        "--max_samples",
        "4",
        "--batch_size",
        "2",
        "--max_new_tokens",
        "2",
        "--n_boot",
        "10",
    )
    assert status[0] == 0, status[2]
    result = json.loads((eval_out / "result.json").read_text())
    cost_json = tmp_path / "cost.json"
    status = cli(
        capsys,
        "tokens",
        "cost",
        "--codec",
        codec_dir,
        "--model",
        out,
        "--rendering",
        "special",
        "--data",
        prepared_dir,
        "--n",
        "4",
        "--json",
        cost_json,
    )
    assert status[0] == 0, status[2]
    (cost,) = json.loads(cost_json.read_text())["renderings"]
    assert cost["note"] == ""  # the checkpoint's own tokenizer holds the code tokens
    assert cost["lm_tokens_mean"] == GRID_CELLS
    assert result["prompt_tokens_per_galaxy"] == GRID_CELLS + cost["template_tokens"] == cost["prompt_tokens_mean"]
    assert cost["template_tokens"] > 10


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_a_resumed_special_run_ends_where_an_uninterrupted_one_does(
    kind, tiny_model_dir, prepared_dir, codec_dir, tmp_path, capsys
):
    """A requeued overnight job: 3 steps, stopped at checkpoint-3, resumed to 6 (the code tokens are added again,
    rows from the run's seed, before the checkpoint is loaded) ends with the same code rows and weights as 6 steps
    run straight through."""
    extra = (*LORA, "--save_strategy", "steps") if kind == "lora" else ("--save_strategy", "steps")
    whole = train("sft", tiny_model_dir, prepared_dir, codec_dir, tmp_path / "whole", *extra, "--max_steps", "6")
    part = tmp_path / "part"
    train("sft", tiny_model_dir, prepared_dir, codec_dir, part, *extra)  # 3 steps, checkpoint-3
    capsys.readouterr()
    resumed = train(
        "sft", tiny_model_dir, prepared_dir, codec_dir, part, *extra, "--max_steps", "6", "--resume", "true"
    )
    assert whole.state.global_step == resumed.state.global_step == 6
    # It did resume (a restart from step 0 would end at the same weights: it is the same 6 steps).
    assert f"Resuming from {part}/checkpoint-3 (global step 3)" in capsys.readouterr().out
    vocab = load_codec(codec_dir).vocab_size
    ids = code_ids(resumed.processing_class, vocab)
    assert ids == code_ids(whole.processing_class, vocab)
    rows = {
        name: t.model.get_input_embeddings().weight[ids].detach()
        for name, t in (("whole", whole), ("resumed", resumed))
    }
    fresh, fresh_proc = load_model_and_processor(tiny_model_dir)
    add_code_tokens(fresh_proc, fresh, vocab, init="mean", seed=42)
    assert (rows["whole"] - fresh.get_input_embeddings().weight[ids]).abs().max() > 1e-4  # the rows trained
    torch.testing.assert_close(rows["resumed"], rows["whole"], rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(whole.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-4, atol=1e-5, msg=name)


def test_eval_refuses_special_without_code_tokens(tiny_model_dir, prepared_dir, codec_dir, tmp_path, capsys):
    status, _, err = cli(
        capsys,
        "eval",
        "--model",
        tiny_model_dir,
        "--data_dir",
        prepared_dir,
        "--modality",
        "tokens",
        "--codec",
        codec_dir,
        "--rendering",
        "special",
        "--output_dir",
        tmp_path / "eval",
        "--ledger",
        tmp_path / "spend.jsonl",
        "--prices",
        REPO / "eval" / "prices.yaml",
    )
    assert_one_line_error(
        status, err, "rendering special", str(tiny_model_dir), "holds 0 of the codec's 25", "--rendering special"
    )
    assert not (tmp_path / "eval" / "samples.jsonl").exists()


def test_recipe_refuses_an_unknown_init(tiny_model_dir, prepared_dir, codec_dir, tmp_path):
    from trl import SFTConfig

    from astroreason.errors import UserError
    from astroreason.training import parse_recipe_args

    argv = ["--config", str(REPO / "recipes/configs/tiny/sft_tokens.yaml"), "--code_token_init", "zeros"]
    argv += ["--output_dir", str(tmp_path / "out"), "--data_dir", str(prepared_dir), "--codec", str(codec_dir)]
    with pytest.raises(UserError, match="code_token_init.*invalid choice: 'zeros'"):
        parse_recipe_args(SFTConfig, argv)


def test_recipe_refuses_a_tokenizer_built_for_another_codec(tiny_model_dir, prepared_dir, codec_dir, tmp_path):
    """A model holding code tokens of a larger codec: some code tokens would never be one of this codec's codes."""
    from trl import SFTConfig

    from astroreason.errors import UserError
    from astroreason.models import save_with_code_tokens
    from astroreason.training import build_sft_trainer, parse_recipe_args

    other = save_with_code_tokens(tiny_model_dir, tmp_path / "other", 30)
    argv = ["--config", str(REPO / "recipes/configs/tiny/sft_tokens.yaml"), "--rendering", "special"]
    argv += ["--model_name_or_path", str(other), "--output_dir", str(tmp_path / "out")]
    argv += ["--data_dir", str(prepared_dir), "--codec", str(codec_dir), "--max_train_samples", "4"]
    script_args, training_args, model_args = parse_recipe_args(SFTConfig, argv)
    with pytest.raises(
        UserError,
        match=r"rendering special: the tokenizer of .*other holds more code tokens than the codec's vocabulary 25",
    ):
        build_sft_trainer(script_args, training_args, model_args)
    assert not (tmp_path / "out" / "checkpoint-1").exists()


def test_recipe_refuses_a_codec_too_large_for_special(tiny_model_dir, prepared_dir, tmp_path):
    from trl import SFTConfig

    from astroreason.errors import UserError
    from astroreason.tokens.fsq import FSQCodec, FSQConfig
    from astroreason.training import build_sft_trainer, parse_recipe_args

    huge = FSQCodec(FSQConfig(size=32, hidden=8, levels=[256, 256, 2]), name="huge").save(tmp_path / "huge")
    argv = ["--config", str(REPO / "recipes/configs/tiny/sft_tokens.yaml"), "--rendering", "special"]
    argv += ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "out")]
    argv += ["--data_dir", str(prepared_dir), "--codec", str(huge)]
    script_args, training_args, model_args = parse_recipe_args(SFTConfig, argv)
    with pytest.raises(UserError, match="131072 codes would add 131072 tokens"):
        build_sft_trainer(script_args, training_args, model_args)


def test_codebook_init_needs_a_codec_with_code_vectors():
    """A codec exposing no code vectors (the AION-1 adapter wraps a model astroreason does not look into)."""
    from types import SimpleNamespace

    from astroreason.errors import UserError

    with pytest.raises(
        UserError, match="code_token_init: codebook needs the codec's code vectors.*use --code_token_init mean"
    ):
        codec_vectors(SimpleNamespace(name="aion-image", vocab_size=10000, model=None))

"""Renderings of a code grid as prompt text, the added code tokens, and `astroreason tokens cost`.

Costs are checked against counts derived by hand from Qwen's pre-tokenizer, which splits every digit and every
punctuation mark on its own: `[3513, 3555]` is `[` 3 5 1 3 `,` ` ` 3 5 5 5 `]`. They are measured on the tiny
model's tokenizer and on a second, larger Qwen-style tokenizer trained here with `tokenizers`.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, cli

from astroreason.arms import TokenArm
from astroreason.data.splits import load_manifest, load_split
from astroreason.errors import UserError
from astroreason.models import add_code_tokens, load_model_and_processor, save_with_code_tokens
from astroreason.prompts import build_prompt
from astroreason.tokens import load_codec, render
from astroreason.tokens.codec import read_inputs
from astroreason.tokens.fsq import FSQCodec, FSQConfig
from astroreason.tokens.render import code_token, parse

VOCAB = 4375


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory):
    """An (untrained, seeded) built-in codec of AION's vocabulary: 32 px -> 8x8 codes. Cost needs no training."""
    torch.manual_seed(0)
    return FSQCodec(FSQConfig(size=32, hidden=8), name="fsq32").save(tmp_path_factory.mktemp("codec") / "fsq32")


@pytest.fixture(scope="module")
def coded_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with one added token per code of a 4375-code codec, saved with its processor."""
    return save_with_code_tokens(tiny_model_dir, tmp_path_factory.mktemp("coded") / "model", VOCAB)


@pytest.fixture(scope="module")
def qwen_style_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model's files with a larger Qwen-style tokenizer: byte-level BPE, Qwen's digit-splitting pre-tokenizer,
    a 4,000-token vocabulary trained here on English and on rendered code ids (digits still cannot merge)."""
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from astroreason.models import SPECIAL_TOKENS, tokenizer_corpus
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = np.random.default_rng(1)
    corpus = tokenizer_corpus() + [
        render(rng.integers(0, VOCAB, (8, 8)), r) for r in ("ints", "rows") for _ in range(50)
    ]
    # Pseudo-words from syllables give the trainer enough distinct text to fill a 4,000-token vocabulary.
    syllables = [a + b for a in "bcdfghklmnprstvwz" for b in "aeiou"] + ["the ", "ing", "tion", "galaxy", " "]
    corpus += ["".join(rng.choice(syllables, 60)) + f", {rng.integers(0, 99999)}." for _ in range(400)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"), pre_tokenizers.ByteLevel(use_regex=False)]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4000,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    trained = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=[tuple(m) for m in trained["merges"]],
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    out = tmp_path_factory.mktemp("qwenstyle") / "model"
    shutil.copytree(tiny_model_dir, out)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (out / name).unlink(missing_ok=True)
    tokenizer.save_pretrained(out)
    assert len(tokenizer) > 2 * len(load_model_and_processor(tiny_model_dir)[1].tokenizer)
    return out


# --- renderings --------------------------------------------------------------------------------------------------


def test_renderings_and_their_inverse():
    grid = np.array([[3513, 3555, 7], [42, 0, 4374]])
    assert render(grid, "ints") == "[3513, 3555, 7, 42, 0, 4374]"
    assert render(grid, "rows") == "3513 3555 7\n42 0 4374"
    assert render(grid, "special") == "<|g_3513|><|g_3555|><|g_7|><|g_42|><|g_0|><|g_4374|>"
    big = np.random.default_rng(0).integers(0, VOCAB, (24, 24))
    for rendering in ("ints", "rows", "special"):
        np.testing.assert_array_equal(parse(render(grid, rendering), rendering, (2, 3)), grid)
        np.testing.assert_array_equal(parse(render(big, rendering), rendering, (24, 24)), big)
        with pytest.raises(UserError, match="not a"):
            parse(render(grid, rendering), rendering, (3, 3))  # wrong grid size
    with pytest.raises(UserError, match="not a"):
        parse("[3513, 3555, row 7, 42, 0, 4374]", "ints", (2, 3))  # anything besides the codes
    with pytest.raises(UserError, match="rendering: expected one of ints, rows, special"):
        render(grid, "hex")
    with pytest.raises(UserError, match="one galaxy's grid"):
        render(big.ravel(), "ints")


def test_add_code_tokens_adds_one_token_per_code_and_grows_the_embeddings(tiny_model_dir):
    model, processor = load_model_and_processor(tiny_model_dir)
    tok = processor.tokenizer
    n_before, rows_before = len(tok), model.get_input_embeddings().weight.shape[0]
    old_rows = model.get_input_embeddings().weight[:rows_before].detach().clone()
    assert add_code_tokens(processor, model, VOCAB) == VOCAB
    assert len(tok) == n_before + VOCAB
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] >= len(tok) and head.shape[0] == emb.shape[0]
    torch.testing.assert_close(emb[:rows_before], old_rows)  # old tokens keep their embeddings
    ids = tok.convert_tokens_to_ids([code_token(i) for i in range(VOCAB)])
    assert len(set(ids)) == VOCAB and max(ids) < emb.shape[0] and min(ids) >= n_before
    assert torch.isfinite(emb[ids]).all()
    grid = np.random.default_rng(0).integers(0, VOCAB, (8, 8))
    encoded = tok(render(grid, "special"), add_special_tokens=False)["input_ids"]
    assert encoded == [ids[c] for c in grid.ravel()]  # exactly one token per code, the code's own
    assert add_code_tokens(processor, model, VOCAB) == 0  # idempotent
    with pytest.raises(UserError, match="at most 65536"):
        add_code_tokens(processor, model, 256 * 256 * 2)


def test_saved_model_with_code_tokens_reloads_and_runs(coded_model_dir):
    model, processor = load_model_and_processor(coded_model_dir)
    tok = processor.tokenizer
    grid = np.random.default_rng(2).integers(0, VOCAB, (24, 24))
    messages = build_prompt(TokenArm, render(grid, "special"))
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    code_ids = tok.convert_tokens_to_ids([code_token(i) for i in range(VOCAB)])
    lookup = {t: i for i, t in enumerate(code_ids)}
    seen = [lookup[t] for t in ids if t in lookup]
    assert seen == grid.ravel().tolist()  # the prompt carries the 576 codes as 576 tokens, in order
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, len(ids), model.get_output_embeddings().weight.shape[0])
    assert torch.isfinite(logits).all()
    np.testing.assert_array_equal(parse(tok.decode([code_ids[c] for c in grid.ravel()]), "special", (24, 24)), grid)


# --- tokens cost ---------------------------------------------------------------------------------------------------


def expected_costs(codes):
    """LM tokens per galaxy under Qwen's pre-tokenizer: every digit, comma, space, bracket and newline is one token."""
    digits = np.array([sum(len(str(c)) for c in g.ravel()) for g in codes])
    h, w = codes.shape[1:]
    n = h * w
    return {"ints": digits + 2 * (n - 1) + 2, "rows": digits + h * (w - 1) + (h - 1), "special": np.full(len(codes), n)}


def visual_tokens_of(processor, image):
    out = processor.image_processor(images=[image], return_tensors="np")
    return int(np.prod(out["image_grid_thw"][0])) // processor.image_processor.merge_size**2


@pytest.mark.parametrize("model_fixture", ["tiny_model_dir", "qwen_style_dir", "coded_model_dir"])
def test_cost_per_rendering_is_exact(model_fixture, request, codec_dir, prepared_dir, tmp_path, capsys):
    model_dir = request.getfixturevalue(model_fixture)
    out = tmp_path / "cost.json"
    status, stdout, err = cli(
        capsys,
        "tokens",
        "cost",
        "--codec",
        codec_dir,
        "--model",
        model_dir,
        "--data",
        prepared_dir,
        "--split",
        "test",
        "--n",
        "8",
        "--json",
        out,
    )
    assert status == 0, err
    report = json.loads(out.read_text())
    codec = load_codec(codec_dir)
    manifest = load_manifest(prepared_dir)
    rows = manifest.rows["test"][:8]
    codes = np.concatenate([codec.encode(b) for b in read_inputs(manifest.source_path, rows, codec.input_spec)])
    expected = expected_costs(codes)
    by_name = {r["rendering"]: r for r in report["renderings"]}
    assert set(by_name) == {"ints", "rows", "special"}
    for name, counts in expected.items():
        got = by_name[name]
        assert got["n_galaxies"] == 8 and got["codes_per_galaxy"] == 64
        assert got["lm_tokens_mean"] == pytest.approx(counts.mean()), name
        assert (got["lm_tokens_min"], got["lm_tokens_max"]) == (counts.min(), counts.max()), name
        line = next(ln for ln in stdout.splitlines() if ln.startswith(name + " "))
        assert f"{counts.mean():.1f}" in line
    assert by_name["special"]["tokens_per_code"] <= 1.01
    mean_digits = np.mean([len(str(c)) for c in codes.ravel()])
    assert by_name["ints"]["tokens_per_code"] == pytest.approx(mean_digits + 2, abs=0.05)
    # The saved model already holds the code tokens; the others are measured on a copy with them added.
    assert ("added to a copy" in by_name["special"]["note"]) == (model_fixture != "coded_model_dir")
    # The image arm's cost of the same galaxies: the model's own image processor on their 64-px images.
    _, processor = load_model_and_processor(model_dir)
    image = load_split(prepared_dir, "test")[0]["image"]
    assert report["image"] == {"side_px": 64, "visual_tokens": visual_tokens_of(processor, image)}
    assert any(ln.startswith("image ") and "64x64 px" in ln for ln in stdout.splitlines())


def test_cost_of_a_galaxy10_sized_image(codec_dir, tiny_model_dir, tmp_path, capsys):
    """Galaxy10's 256-px images cost 81 visual tokens on a Qwen2.5-VL processor (docs/facts.md)."""
    out = tmp_path / "cost.json"
    status, stdout, err = cli(
        capsys,
        "tokens",
        "cost",
        "--codec",
        codec_dir,
        "--model",
        tiny_model_dir,
        "--rendering",
        "ints,special",
        "--image-size",
        "256",
        "--n",
        "4",
        "--json",
        out,
    )
    assert status == 0, err
    report = json.loads(out.read_text())
    assert report["image"] == {"side_px": 256, "visual_tokens": 81}
    assert [r["rendering"] for r in report["renderings"]] == ["ints", "special"]
    assert "random code grids" in report["galaxies"]


def test_cost_refuses_a_codec_that_does_not_fit(codec_dir, coded_model_dir, tiny_model_dir, tmp_path, capsys):
    small = FSQCodec(FSQConfig(size=32, hidden=8, levels=[4, 4]), name="small").save(tmp_path / "small")
    status, _, err = cli(
        capsys, "tokens", "cost", "--codec", small, "--model", coded_model_dir, "--rendering", "special"
    )
    assert_one_line_error(status, err, "more code tokens than the codec's vocabulary 16")
    few = save_with_code_tokens(tiny_model_dir, tmp_path / "few", 16)
    status, _, err = cli(capsys, "tokens", "cost", "--codec", codec_dir, "--model", few, "--rendering", "special")
    assert_one_line_error(status, err, "holds 16 of the codec's 4375 code tokens")
    huge = FSQCodec(FSQConfig(size=32, hidden=8, levels=[256, 256, 2]), name="huge").save(tmp_path / "huge")
    status, _, err = cli(capsys, "tokens", "cost", "--codec", huge, "--model", tiny_model_dir)
    assert_one_line_error(status, err, "131072 codes", "at most 65536")
    status, _, err = cli(
        capsys, "tokens", "cost", "--codec", codec_dir, "--model", tiny_model_dir, "--rendering", "hex"
    )
    assert_one_line_error(status, err, "rendering: expected one of")
    status, _, err = cli(capsys, "tokens", "cost", "--codec", codec_dir, "--model", tmp_path / "nomodel")
    assert_one_line_error(status, err, "model directory not found")

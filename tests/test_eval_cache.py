"""The evaluation cache's key covers everything that decides an answer, and nothing else.

Each case evaluates the tiny model (a copy of it, at a path of its own) into a fresh output directory, changes ONE
thing (a file of the checkpoint, or a setting) and evaluates again into the same directory: nothing may come from
the cache. A third run with the change kept answers everything from the cache. The cases that change nothing that
decides an answer (another path, the seed of greedy decoding, the default template written out) answer everything
from the cache at once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from evalkit import ScriptedServer, build_codec

REPO = Path(__file__).resolve().parents[1]
BASE = {"max_samples": 3, "batch_size": 3, "max_new_tokens": 4, "n_boot": 50, "image_size": 56}


def evaluate_into(model, prepared_dir, out: Path, **settings) -> dict:
    from astroreason.evaluation.harness import EvalConfig, evaluate

    config = EvalConfig(
        model=str(model),
        data_dir=str(prepared_dir),
        output_dir=str(out),
        ledger=str(out.parent / "spend.jsonl"),
        prices=str(REPO / "eval" / "prices.yaml"),
        **{**BASE, **settings},
    )
    return evaluate(config, progress=False)


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2))


def perturb_weights(path: Path, prefix: str = "") -> None:
    """Add 0.01 to the first tensor (whose name starts with `prefix`) of a safetensors file, in place."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    name = next(k for k in sorted(tensors) if k.startswith(prefix))
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, str(path), metadata={"format": "pt"})


def system_prompt(model: Path) -> None:
    path = model / "chat_template.jinja"
    text = path.read_text()
    assert "You are a helpful assistant." in text
    path.write_text(text.replace("You are a helpful assistant.", "You are an astronomer. Think like one."))


# name: (settings of both runs, what changes: a function of the checkpoint directory -> settings of the second run)
CHANGES = {
    "weights": ({}, lambda m: perturb_weights(m / "model.safetensors")),
    "tokenizer": ({}, lambda m: edit_json(m / "tokenizer_config.json", model_max_length=4096)),
    "chat_template": ({}, system_prompt),
    "processor_config": (
        {},
        lambda m: edit_json(
            m / "processor_config.json",
            image_processor={
                **json.loads((m / "processor_config.json").read_text())["image_processor"],
                "image_mean": [0.5, 0.5, 0.5],
            },
        ),
    ),
    "generation_config": ({}, lambda m: edit_json(m / "generation_config.json", repetition_penalty=1.3)),
    "model_config": ({}, lambda m: edit_json(m / "config.json", astroreason_note="changed")),
    "trust_remote_code": ({}, lambda m: {"trust_remote_code": True}),
    "prompt_template": ({}, lambda m: {"prompt_template": "A galaxy image. Its Galaxy10 class in <answer></answer>?"}),
    "image_size": ({}, lambda m: {"image_size": 84}),
    "max_new_tokens": ({}, lambda m: {"max_new_tokens": 5}),
    "temperature": ({}, lambda m: {"temperature": 0.7}),
    "top_p_when_sampling": ({"temperature": 0.7}, lambda m: {"top_p": 0.9}),
    "seed_when_sampling": ({"temperature": 0.7}, lambda m: {"seed": 1}),
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_changing_one_thing_asks_again(name, tiny_model_dir, prepared_dir, tmp_path):
    settings, change = CHANGES[name]
    model = shutil.copytree(tiny_model_dir, tmp_path / "ckpt")
    out = tmp_path / "run"
    first = evaluate_into(model, prepared_dir, out, **settings)
    n = first["n_distinct_inputs"]
    assert first["n_from_cache"] == 0 and first["n_asked_this_run"] == n

    changed = {**settings, **(change(model) or {})}
    second = evaluate_into(model, prepared_dir, out, **changed)
    assert second["n_from_cache"] == 0 and second["n_asked_this_run"] == second["n_distinct_inputs"], name
    assert second["cache_key"] != first["cache_key"]
    third = evaluate_into(model, prepared_dir, out, **changed)
    assert third["n_asked_this_run"] == 0 and third["n_from_cache"] == third["n_distinct_inputs"]


UNCHANGED = {
    "nothing": ({}, lambda m: None),
    "another_path": ({}, lambda m: {"model": shutil.copytree(m, m.parent / "elsewhere")}),
    "seed_when_greedy": ({}, lambda m: {"seed": 7}),
    "top_p_when_greedy": ({}, lambda m: {"top_p": 0.5}),
    "default_template_written_out": ({}, lambda m: {"prompt_template": _default_template()}),
    "a_file_that_decides_nothing": ({}, lambda m: write_training_state(m)),
}


def write_training_state(model: Path) -> None:
    (model / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    (model / "prompt_lint.json").write_text("{}")


def _default_template() -> str:
    from astroreason.prompts import IMAGE_TEMPLATE

    return IMAGE_TEMPLATE


@pytest.mark.parametrize("name", sorted(UNCHANGED))
def test_unchanged_answers_come_from_the_cache(name, tiny_model_dir, prepared_dir, tmp_path):
    settings, change = UNCHANGED[name]
    model = shutil.copytree(tiny_model_dir, tmp_path / "ckpt")
    out = tmp_path / "run"
    first = evaluate_into(model, prepared_dir, out, **settings)
    again = {**settings, **(change(model) or {})}
    second = evaluate_into(again.pop("model", model), prepared_dir, out, **again)
    assert second["n_asked_this_run"] == 0 and second["n_from_cache"] == first["n_distinct_inputs"], name


def test_peft_adapter_keys_its_base_model_too(tiny_model_dir, prepared_dir, tmp_path):
    """A LoRA adapter runs on its base model's weights, tokenizer and chat template: a change to any of them, or
    to the adapter, asks again."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    torch.manual_seed(0)
    lora = get_peft_model(
        AutoModelForImageTextToText.from_pretrained(base),
        LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False),
    )
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    out = tmp_path / "run"
    first = evaluate_into(adapter, prepared_dir, out)
    assert first["n_asked_this_run"] == first["n_distinct_inputs"]
    assert evaluate_into(adapter, prepared_dir, out)["n_asked_this_run"] == 0

    for change in (
        lambda: perturb_weights(base / "model.safetensors"),
        lambda: system_prompt(base),
        lambda: perturb_weights(adapter / "adapter_model.safetensors", prefix="base_model"),
    ):
        change()
        result = evaluate_into(adapter, prepared_dir, out)
        assert result["n_from_cache"] == 0 and result["n_asked_this_run"] == result["n_distinct_inputs"]
        assert evaluate_into(adapter, prepared_dir, out)["n_asked_this_run"] == 0


def test_http_backend_keys_the_backend_and_the_served_name(tiny_model_dir, prepared_dir, tmp_path):
    """Over HTTP the served model name decides the answer (and the local checkpoint's files, when `model` names
    one); the server's address does not: a server restarted on another port resumes from the cache."""
    a, b = ScriptedServer(), ScriptedServer()
    out = tmp_path / "run"
    http = {
        "backend": "openai",
        "price_input_per_million": 1.0,
        "price_output_per_million": 1.0,
        "max_retries": 0,
        "concurrency": 1,
    }
    try:
        local = evaluate_into(tiny_model_dir, prepared_dir, out)
        n = local["n_distinct_inputs"]
        served = evaluate_into(tiny_model_dir, prepared_dir, out, **http, base_url=a.url, server_model="tiny-a")
        assert served["n_from_cache"] == 0 and a.count == n  # another backend: asked again
        other = evaluate_into(tiny_model_dir, prepared_dir, out, **http, base_url=a.url, server_model="tiny-b")
        assert other["n_from_cache"] == 0 and a.count == 2 * n  # another served model: asked again
        moved = evaluate_into(tiny_model_dir, prepared_dir, out, **http, base_url=b.url, server_model="tiny-a")
        assert moved["n_from_cache"] == n and b.count == 0  # the same model at another address: from the cache
        assert evaluate_into(tiny_model_dir, prepared_dir, out)["n_asked_this_run"] == 0  # the local answers kept
        # A served model with no local directory is keyed by its name alone.
        named = evaluate_into("scripted-vlm", prepared_dir, out, **http, base_url=a.url)
        assert named["n_from_cache"] == 0 and named["cache_key"]["model_files"] is None
        assert evaluate_into("scripted-vlm", prepared_dir, out, **http, base_url=b.url)["n_from_cache"] == n
    finally:
        a.stop()
        b.stop()


@pytest.fixture(scope="module")
def codecs(prepared_dir, tmp_path_factory):
    """A tiny codec, and a twin whose decoder differs: the same codes (the same token text), another codec hash."""
    import torch

    from astroreason.cli import main
    from astroreason.tokens import load_codec

    root = tmp_path_factory.mktemp("codecs")
    codec = build_codec(prepared_dir, root / "fsq-a")
    twin = load_codec(codec)
    with torch.no_grad():
        next(twin.model.decoder.parameters()).add_(0.01)
    twin._weights_sha256 = None
    twin.name = "fsq-b"
    twin.save(root / "fsq-b")
    assert main(["tokens", "encode", "--data", str(prepared_dir), "--codec", str(root / "fsq-b")]) == 0
    assert load_codec(root / "fsq-b").codec_hash != load_codec(codec).codec_hash
    return codec, root / "fsq-b"


def test_token_arm_keys_the_rendering_and_the_codec(codecs, tiny_model_dir, prepared_dir, tmp_path):
    from astroreason.evaluation.harness import EvalConfig, evaluation_rows

    codec, twin = codecs
    tokens = {"modality": "tokens", "max_samples": 12}

    def prompts(c):
        config = EvalConfig(model=str(tiny_model_dir), data_dir=str(prepared_dir), codec=str(c), **{**BASE, **tokens})
        return [r["prompt"] for r in evaluation_rows(config)]

    assert prompts(codec) == prompts(twin)  # the same prompts, word for word: only the codec's hash tells them apart
    out = tmp_path / "run"
    first = evaluate_into(tiny_model_dir, prepared_dir, out, **tokens, codec=str(codec))
    n = first["n_distinct_inputs"]
    assert evaluate_into(tiny_model_dir, prepared_dir, out, **tokens, codec=str(codec))["n_from_cache"] == n
    for changed in ({"codec": str(twin)}, {"codec": str(codec), "rendering": "rows"}):
        result = evaluate_into(tiny_model_dir, prepared_dir, out, **tokens, **changed)
        assert result["n_from_cache"] == 0 and result["n_asked_this_run"] == result["n_distinct_inputs"], changed
        assert evaluate_into(tiny_model_dir, prepared_dir, out, **tokens, **changed)["n_asked_this_run"] == 0
    # The token arm takes no pixels: the image size decides nothing there.
    resized = evaluate_into(tiny_model_dir, prepared_dir, out, **tokens, codec=str(codec), image_size=84)
    assert resized["n_from_cache"] == n

"""Zoom episodes in the evaluation harness on the tiny offline Qwen2.5-VL and the GalSim surrogate.

A random tiny model never writes a tool call on its own, so, as in tests/test_zoom.py, its decoding is steered with
transformers' own `sequence_bias` (passed through `TransformersBackend(generation_kwargs=...)`) to write one scripted
zoom call right after the user's prompt (and, with `again`, once more after the tool's result). Everything after
that is the harness's: parsing the call as TRL parses it, the arm's zoom tool, the tool turn, the next generation,
the gate's reservations, the cache and result.json. The backend is the real one; `SeenBackend` only keeps a copy of
the images each turn was sent, to compare with the tool called directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from evalkit import ledger_rows, sample_lines
from test_zoom import BOX, steering

from astroreason.evaluation.backends import SamplingSettings, TransformersBackend
from astroreason.evaluation.harness import EvalConfig, IncompleteRun, estimate_evaluation, evaluate, result_summary
from astroreason.models import load_model_and_processor
from astroreason.rewards import parse_answer
from astroreason.zoom import zoom_tool

REPO = Path(__file__).resolve().parents[1]
BASE = {"max_samples": 2, "batch_size": 1, "max_new_tokens": 96, "n_boot": 50, "image_size": 56}


class SeenBackend(TransformersBackend):
    """The transformers backend, keeping the images of each turn it generated (a copy, after the fact)."""

    def conversations(self, conversations, image_lists, budget=None, **kwargs):
        out = super().conversations(conversations, image_lists, budget, **kwargs)
        self.seen.extend([list(x) for x in image_lists])
        return out


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model_and_processor(str(tiny_model_dir))


def backend(tiny, model_dir, *, steer: bool = True, again: bool = False, batch_size: int = 1) -> SeenBackend:
    model, processor = tiny
    kwargs = {"sequence_bias": steering(model_dir, "image", again=again)} if steer else {}
    b = SeenBackend(
        model, processor, SamplingSettings(max_new_tokens=96), batch_size=batch_size, generation_kwargs=kwargs
    )
    b.seen = []
    return b


def config(model_dir, prepared_dir, out: Path, **settings) -> EvalConfig:
    return EvalConfig(
        model=str(model_dir),
        data_dir=str(prepared_dir),
        output_dir=str(out),
        ledger=str(out.parent / "spend.jsonl"),
        prices=str(REPO / "eval" / "prices.yaml"),
        **{**BASE, **settings},
    )


def charges(out: Path) -> list[dict]:
    return [r for r in ledger_rows(out.parent / "spend.jsonl") if r["kind"] == "charge"]


def test_a_zoom_episode_crops_records_charges_and_resumes(tiny, tiny_model_dir, prepared_dir, tmp_path):
    out = tmp_path / "run"
    cfg = config(tiny_model_dir, prepared_dir, out, zoom=True, zoom_max_turns=2)
    steered = backend(tiny, tiny_model_dir)
    result = evaluate(cfg, steered, progress=False)
    assert result["status"] == "complete"

    samples = sorted(sample_lines(out), key=lambda r: r["index"])
    assert len(samples) == 2
    from astroreason.arms import build_arm

    positions = build_arm(cfg.arm_settings(), "test", max_samples=2).positions
    tool = zoom_tool(cfg.arm_settings(), pixel_multiple=28)
    for s in samples:
        zoom = s["zoom"]
        # The scripted call, run by the tool: the 64 px surrogate's pixels 16-48, then an answer turn (no call).
        assert [(c["box"], c["valid"], c["error"], tuple(c["pixels"])) for c in zoom["calls"]] == [
            (BOX, True, None, (16, 16, 48, 48))
        ]
        assert zoom["turns"] == 2 and not zoom["capped"]
        assert (
            len(zoom["turn_tokens"]) == 2
            and zoom["turn_tokens"][1]["prompt_tokens"]
            > zoom["turn_tokens"][0]["prompt_tokens"] + zoom["turn_tokens"][0]["completion_tokens"]
        )  # the tool turn's crop joined the second prompt
        assert zoom["total_tokens"] == s["prompt_tokens"] + s["completion_tokens"]
    # Turn by turn across the galaxies (one per batch): both first turns, then both second turns. Each galaxy's
    # second turn was sent its first view and the crop the tool makes of that galaxy's own source.
    assert [len(images) for images in steered.seen] == [1, 1, 2, 2]
    for k, s in enumerate(samples):
        by_tool = tool("test", int(positions[s["index"]]), BOX).result[0]["image"]
        first, second = steered.seen[k], steered.seen[2 + k]
        assert np.array_equal(np.asarray(second[1]), np.asarray(by_tool))
        assert np.array_equal(np.asarray(second[0]), np.asarray(first[0]))
    assert not np.array_equal(np.asarray(steered.seen[2][1]), np.asarray(steered.seen[3][1]))  # two galaxies

    # One gate charge per turn (one galaxy per batch), each reserved before it was sent.
    paid = charges(out)
    assert len(paid) == sum(s["zoom"]["turns"] for s in samples) == 4
    assert sum(r["prompt_tokens"] for r in paid) == sum(s["prompt_tokens"] for s in samples)

    z = result["zoom"]
    n_split = len(build_arm(cfg.arm_settings(), "test").split_positions())
    assert z["tool_lint_calls"] == 3 * min(32, n_split)  # the tool's turns linted on the split's first rows, 3 boxes
    assert z["zoom_rate"] == 1.0 and z["zooms_per_galaxy"] == 1.0 and z["capped"] == 0
    assert z["n_with_zoom"] == 2 and z["n_without_zoom"] == 0 and z["accuracy_without_zoom"] is None
    assert z["tokens_per_galaxy"] == pytest.approx(sum(s["zoom"]["total_tokens"] for s in samples) / 2)
    assert result["cache_key"]["zoom"]["max_turns"] == 2 and result["cache_key"]["zoom"]["min_side"] == 0.5
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["zoom"]["n_calls"] for p in predictions] == [1, 1]

    # Resumed: every episode comes from the cache, nothing is generated or charged.
    again = backend(tiny, tiny_model_dir)
    resumed = evaluate(cfg, again, progress=False)
    assert resumed["n_from_cache"] == 2 and resumed["n_asked_this_run"] == 0 and again.seen == []
    assert len(charges(out)) == 4 and resumed["zoom"] == z  # the same figures, read from the cache

    assert result_summary(resumed)["zoom_rate"] == 1.0  # the RESULT line says it too

    # The estimate of two more galaxies counts a request per turn of the episodes in hand.
    estimate = estimate_evaluation(
        config(tiny_model_dir, prepared_dir, out, zoom=True, zoom_max_turns=2, max_samples=4, estimate_only=True)
    )
    assert estimate["remaining_samples"] == 2 and estimate["estimated_requests"] == 4

    # Another turn cap is another key: asked again.
    other = evaluate(config(tiny_model_dir, prepared_dir, out, zoom=True, zoom_max_turns=1), steered, progress=False)
    assert other["n_from_cache"] == 0 and other["n_asked_this_run"] == 2


def test_an_episode_still_calling_at_the_turn_cap_is_capped(tiny, tiny_model_dir, prepared_dir, tmp_path):
    out = tmp_path / "run"
    cfg = config(tiny_model_dir, prepared_dir, out, zoom=True, zoom_max_turns=1, batch_size=2)
    result = evaluate(cfg, backend(tiny, tiny_model_dir, again=True, batch_size=2), progress=False)
    for s in sample_lines(out):
        assert s["zoom"]["turns"] == 2 and s["zoom"]["capped"] and s["zoom"]["n_calls"] == 1
        assert s["prediction"] is None  # the last turn is a tool call, not an answer
    assert result["zoom"]["capped"] == 2
    assert len(charges(out)) == 2  # two turns, each a batch of both galaxies


def test_a_cap_stops_an_episode_between_two_turns(tiny, tiny_model_dir, prepared_dir, tmp_path):
    """Two galaxies, one batch: the first turn is paid for (2 requests); the second would pass the request cap and
    is never sent. The unfinished episodes are not cached: a resumed run asks them again from the start."""
    out = tmp_path / "run"
    cfg = config(tiny_model_dir, prepared_dir, out, zoom=True, batch_size=2, max_requests=2)
    steered = backend(tiny, tiny_model_dir, batch_size=2)
    with pytest.raises(IncompleteRun, match="request cap 2 reached") as stopped:
        evaluate(cfg, steered, progress=False)
    assert stopped.value.result["status"] == "budget_exhausted"
    assert [len(images) for images in steered.seen] == [1, 1]  # the first turn only
    paid = charges(out)
    assert len(paid) == 1 and paid[0]["requests"] == 2
    assert sample_lines(out) == []


def test_evaluation_without_zoom_is_unchanged(tiny, tiny_model_dir, prepared_dir, tmp_path):
    """`zoom: false` (the default) is the evaluation as it was: no system turn, no tools, no zoom in the key, the
    records or the result; one batched generate per batch of galaxies. A zoom run on the same galaxies is keyed
    apart, so neither is ever served the other's answers."""
    out = tmp_path / "run"
    plain = backend(tiny, tiny_model_dir, steer=False, batch_size=2)
    result = evaluate(config(tiny_model_dir, prepared_dir, out), plain, progress=False)
    assert plain.seen == []  # the single-turn path, `stream`, not the episodes'
    assert "zoom" not in result and "zoom" not in result["cache_key"] and "zoom_rate" not in result_summary(result)
    assert all("zoom" not in s for s in sample_lines(out))
    fields = {"index", "key", "label", "prediction", "completion", "prompt_tokens", "completion_tokens", "logprob"}
    assert all(set(json.loads(line)) == fields for line in (out / "predictions.jsonl").read_text().splitlines())
    # The same answers as an evaluation through `generate` on the plain prompts.
    rows = sorted(sample_lines(out), key=lambda r: r["index"])
    from astroreason.evaluation.harness import evaluation_rows

    ev = evaluation_rows(config(tiny_model_dir, prepared_dir, out))
    direct = backend(tiny, tiny_model_dir, steer=False, batch_size=2).generate(
        [r["prompt"] for r in ev], [r["image"] for r in ev]
    )
    assert [r["completion"] for r in rows] == [g.text for g in direct]
    assert [r["prompt_tokens"] for r in rows] == [g.prompt_tokens for g in direct]

    zoomed = evaluate(
        config(tiny_model_dir, prepared_dir, out, zoom=True), backend(tiny, tiny_model_dir), progress=False
    )
    assert zoomed["n_from_cache"] == 0 and zoomed["n_asked_this_run"] == 2


def test_zoom_is_refused_on_vllm_and_a_bad_turn_cap(tiny_model_dir, prepared_dir, tmp_path):
    from astroreason.errors import UserError

    with pytest.raises(UserError, match="zoom: zoom episodes run on the transformers and openai backends, not vllm"):
        config(tiny_model_dir, prepared_dir, tmp_path / "r", zoom=True, backend="vllm")
    with pytest.raises(UserError, match="zoom_max_turns"):
        config(tiny_model_dir, prepared_dir, tmp_path / "r", zoom=True, zoom_max_turns=0)


# --- the HTTP backend against `transformers serve` -------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny random text LM (the token arm's kind of model: no images) behind `transformers serve` on 127.0.0.1."""
    from evalkit import ServeProcess, build_text_lm

    root = tmp_path_factory.mktemp("served-zoom")
    model = build_text_lm(root / "text-lm")
    server = ServeProcess(model, root / "serve.log")
    yield model, server
    server.stop()


@pytest.fixture(scope="module")
def codec(prepared_dir, tmp_path_factory):
    from evalkit import build_codec

    return build_codec(prepared_dir, tmp_path_factory.mktemp("zoom-codec") / "fsq")


def served_steering(model_dir) -> str:
    """`transformers serve`'s `generation_config` extension: greedy decoding with the `sequence_bias` that writes
    the zoom call after the user's prompt (a 16 px codec's 4x4 grid: a cell is 0.25, so `BOX` is valid)."""
    from test_zoom import CALL, anchored_bias
    from transformers import AutoTokenizer

    from astroreason.prompts import zoom_prompt
    from astroreason.zoom import ZoomEnvironment

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prompt = zoom_prompt([{"role": "user", "content": "x <answer>CLASS NAME</answer>."}], "tokens")
    bias = anchored_bias(tokenizer, prompt, [ZoomEnvironment.zoom], CALL.format(box=json.dumps(BOX)), anchor=8)
    eos = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config = {"sequence_bias": bias, "do_sample": False, "eos_token_id": eos, "pad_token_id": eos[1]}
    return json.dumps(config)


def test_served_zoom_episodes_over_the_chat_api(served, codec, prepared_dir, tmp_path):
    """The token arm's episodes through `--backend openai` against a real `transformers serve`: the zoom schema goes
    out as `tools=`, the server parses the scripted call into `message.tool_calls`, the harness runs it through the
    arm's tool and sends the codes back in a `tool` message; every request is reserved before it is sent and charged
    what the server reports, and a finished episode is served from the cache on a rerun."""
    from astroreason.evaluation.backends import OpenAIBackend

    model, server = served
    out = tmp_path / "run"
    settings = {"modality": "tokens", "codec": str(codec), "backend": "openai", "base_url": server.url + "/v1"}
    settings.update(price_input_per_million=1.0, price_output_per_million=1.0)
    cfg = config(model, prepared_dir, out, zoom=True, zoom_max_turns=1, **settings)

    def steered():
        return OpenAIBackend(
            cfg.base_url,
            cfg.model,
            cfg.sampling(),
            max_retries=0,
            extra_body={"generation_config": served_steering(model)},
        )

    result = evaluate(cfg, steered(), progress=False)
    assert result["status"] == "complete"
    samples = sorted(sample_lines(out), key=lambda r: r["index"])
    from astroreason.arms import build_arm

    positions = build_arm(cfg.arm_settings(), "test", max_samples=2).positions
    tool = zoom_tool(cfg.arm_settings())
    for s in samples:
        zoom = s["zoom"]
        assert [(c["box"], c["valid"], tuple(c["pixels"])) for c in zoom["calls"]] == [(BOX, True, (16, 16, 48, 48))]
        assert zoom["turns"] == 2
        # The second request carried the tool's codes: its prompt grew by at least the codes' text.
        codes = tool("test", int(positions[s["index"]]), BOX).result
        first, second = zoom["turn_tokens"]
        assert second["prompt_tokens"] > first["prompt_tokens"] + len(codes.split()) // 4
    paid = charges(out)
    assert len(paid) == sum(s["zoom"]["turns"] for s in samples) == 4
    assert sum(r["prompt_tokens"] for r in paid) == sum(s["prompt_tokens"] for s in samples)
    assert result["zoom"]["zoom_rate"] == 1.0 and result["zoom"]["zooms_per_galaxy"] == 1.0

    again = evaluate(cfg, steered(), progress=False)
    assert again["n_from_cache"] == 2 and again["n_asked_this_run"] == 0 and len(charges(out)) == 4


def test_served_image_episode_sends_the_crop_in_the_tool_message(tiny_model_dir, prepared_dir, tmp_path):
    """The image arm over the chat API. `transformers serve` cannot load a Qwen-VL processor without torchvision
    (docs/zoom.md), so the server here is a scripted one on 127.0.0.1 (real HTTP, real client): it calls `zoom`
    on the first turn of each galaxy and answers on the second. The tool message it receives carries the crop as a
    PNG data URL whose pixels are the tool's crop of that galaxy's full-resolution source."""
    import base64
    import io
    from http.server import BaseHTTPRequestHandler

    from evalkit import _Server
    from PIL import Image

    from astroreason.arms import build_arm
    from astroreason.evaluation.backends import OpenAIBackend

    bodies = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bodies.append(body)
            if body["messages"][-1]["role"] == "tool":
                message = {"role": "assistant", "content": "<answer>Round Smooth</answer>"}
            else:
                call = {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "zoom", "arguments": json.dumps({"bbox_2d": BOX})},
                }
                message = {"role": "assistant", "content": "", "tool_calls": [call]}
            payload = {
                "choices": [{"index": 0, "message": message}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 5},
            }
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = _Server(Handler)
    try:
        out = tmp_path / "run"
        settings = {"backend": "openai", "base_url": server.url, "price_input_per_million": 1.0}
        cfg = config(tiny_model_dir, prepared_dir, out, zoom=True, price_output_per_million=1.0, **settings)
        result = evaluate(cfg, OpenAIBackend(cfg.base_url, cfg.model, cfg.sampling(), max_retries=0), progress=False)
    finally:
        server.stop()
    assert result["zoom"]["zoom_rate"] == 1.0 and result["metrics"]["n"] == 2
    assert all(b["tools"][0]["function"]["name"] == "zoom" for b in bodies) and len(bodies) == 4
    positions = build_arm(cfg.arm_settings(), "test", max_samples=2).positions
    tool = zoom_tool(cfg.arm_settings(), pixel_multiple=28)
    seconds = [b for b in bodies if b["messages"][-1]["role"] == "tool"]
    for s in sorted(sample_lines(out), key=lambda r: r["index"]):
        by_tool = np.asarray(tool("test", int(positions[s["index"]]), BOX).result[0]["image"])
        sent = []
        for b in seconds:
            url = b["messages"][-1]["content"][0]["image_url"]["url"]
            sent.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))))
        assert any(x.shape == by_tool.shape and np.array_equal(x, by_tool) for x in sent)
        assert s["prediction"] == parse_answer("<answer>Round Smooth</answer>")  # the second turn's answer
    assert [m["role"] for m in seconds[0]["messages"]] == ["system", "user", "assistant", "tool"]
    assert seconds[0]["messages"][2]["tool_calls"][0]["id"] == seconds[0]["messages"][3]["tool_call_id"] == "c1"
    assert len(charges(out)) == 4


def test_a_local_token_arm_episode_gets_the_codes_of_the_crop(tiny, tiny_model_dir, prepared_dir, codec, tmp_path):
    """The token arm on the local backend: the scripted call's result is the codec's codes of the crop, as text in
    the tool turn (the second turn's prompt holds them)."""
    model, processor = tiny
    out = tmp_path / "run"
    cfg = config(tiny_model_dir, prepared_dir, out, zoom=True, modality="tokens", codec=str(codec))
    kwargs = {"sequence_bias": steering(tiny_model_dir, "tokens", again=False)}
    b = SeenBackend(model, processor, cfg.sampling(), batch_size=2, generation_kwargs=kwargs)
    b.seen, texts = [], []
    real = b.conversations

    def keep_texts(conversations, image_lists, budget=None, **kw):
        texts.extend(json.dumps([m["content"] for m in c]) for c in conversations)
        return real(conversations, image_lists, budget, **kw)

    b.conversations = keep_texts
    result = evaluate(cfg, b, progress=False)
    from astroreason.arms import build_arm

    positions = build_arm(cfg.arm_settings(), "test", max_samples=2).positions
    tool = zoom_tool(cfg.arm_settings())
    for s in sorted(sample_lines(out), key=lambda r: r["index"]):
        assert [(c["box"], c["valid"]) for c in s["zoom"]["calls"]] == [(BOX, True)] and s["zoom"]["turns"] == 2
        codes = tool("test", int(positions[s["index"]]), BOX).result
        assert codes in texts[2 + s["index"]] and codes not in texts[s["index"]]
    assert result["zoom"]["zoom_rate"] == 1.0 and len(charges(out)) == 2  # two turns, each one batch of both

"""Zoom episodes in the evaluation harness on the tiny offline Qwen2.5-VL and the GalSim surrogate.

A random tiny model never writes a tool call on its own, so, as in tests/test_zoom.py, its decoding is steered with
transformers' own `sequence_bias` (passed through `TransformersBackend(generation_kwargs=...)`) to write one scripted
zoom call right after the user's prompt (and, with `again`, once more after the tool's result). Everything after
that is the harness's: parsing the call as TRL parses it, the arm's zoom tool, the tool turn, the next generation,
the gate's reservations, the cache and result.json. The backend is the real one; `SeenBackend` only keeps a copy of
the images each turn was sent, to compare with the tool called directly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from evalkit import ledger_rows, sample_lines
from test_zoom import BOX, steering

from astroreason.data.galaxy10 import DECALS_CLASSES
from astroreason.evaluation.backends import SamplingSettings, TransformersBackend
from astroreason.evaluation.harness import EvalConfig, IncompleteRun, estimate_evaluation, evaluate, result_summary
from astroreason.models import load_model_and_processor
from astroreason.rewards import parse_answer

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

    positions = build_arm(cfg, "test", max_samples=2).positions
    tool = cfg.arm_class().zoom_tool(cfg, pixel_multiple=28)
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
    n_split = len(build_arm(cfg, "test").split_positions())
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


def test_a_cap_stops_an_episode_between_two_turns_and_resume_goes_on_from_there(
    tiny, tiny_model_dir, prepared_dir, tmp_path
):
    """Two galaxies, one batch: the first turn is paid for (2 requests); the second would pass the request cap and
    is never sent. The unfinished episodes are not cached, their first turns are in the turn log: a resumed run
    replays them (the tool run again on the recorded box) and generates only the second turns, sent exactly what an
    uninterrupted run sends them, and its records are that run's (but for the GPU time each turn was charged)."""
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

    resumed = backend(tiny, tiny_model_dir, batch_size=2)
    result = evaluate(config(tiny_model_dir, prepared_dir, out, zoom=True, batch_size=2), resumed, progress=False)
    assert result["status"] == "complete" and result["n_asked_this_run"] == 2
    assert result["zoom"]["resumed_mid_episode"] == 2
    assert [len(images) for images in resumed.seen] == [2, 2]  # the second turns only: first view and crop
    assert len(charges(out)) == 2  # one batch more

    whole_out = tmp_path / "whole" / "run"
    whole = backend(tiny, tiny_model_dir, batch_size=2)
    evaluate(config(tiny_model_dir, prepared_dir, whole_out, zoom=True, batch_size=2), whole, progress=False)
    for sent, by_whole in zip(resumed.seen, whole.seen[2:]):
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(sent, by_whole, strict=True))

    def unpriced(record: dict) -> dict:
        turns = [{k: v for k, v in t.items() if k != "dollars"} for t in record["zoom"]["turn_tokens"]]
        return {**{k: v for k, v in record.items() if k != "dollars"}, "zoom": {**record["zoom"], "turn_tokens": turns}}

    assert [unpriced(r) for r in by_index(out)] == [unpriced(r) for r in by_index(whole_out)]
    assert all(r["zoom"]["turns"] == 2 and r["zoom"]["n_calls"] == 1 for r in by_index(out))


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

    from astroreason.arms import TokenArm
    from astroreason.prompts import zoom_prompt
    from astroreason.zoom import ZoomEnvironment

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prompt = zoom_prompt([{"role": "user", "content": "x <answer>CLASS NAME</answer>."}], TokenArm)
    bias = anchored_bias(
        tokenizer, prompt, [ZoomEnvironment.zoom], CALL.format(box=json.dumps(BOX)), anchor="</answer>."
    )
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

    positions = build_arm(cfg, "test", max_samples=2).positions
    tool = cfg.arm_class().zoom_tool(cfg)
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
    positions = build_arm(cfg, "test", max_samples=2).positions
    tool = cfg.arm_class().zoom_tool(cfg, pixel_multiple=28)
    seconds = [b for b in bodies if b["messages"][-1]["role"] == "tool"]
    for s in sorted(sample_lines(out), key=lambda r: r["index"]):
        by_tool = np.asarray(tool("test", int(positions[s["index"]]), BOX).result[0]["image"])
        sent = []
        for b in seconds:
            url = b["messages"][-1]["content"][0]["image_url"]["url"]
            sent.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))))
        assert any(x.shape == by_tool.shape and np.array_equal(x, by_tool) for x in sent)
        # the second turn's answer
        assert s["prediction"] == parse_answer("<answer>Round Smooth</answer>", DECALS_CLASSES)
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

    positions = build_arm(cfg, "test", max_samples=2).positions
    tool = cfg.arm_class().zoom_tool(cfg)
    for s in sorted(sample_lines(out), key=lambda r: r["index"]):
        assert [(c["box"], c["valid"]) for c in s["zoom"]["calls"]] == [(BOX, True)] and s["zoom"]["turns"] == 2
        codes = tool("test", int(positions[s["index"]]), BOX).result
        assert codes in texts[2 + s["index"]] and codes not in texts[s["index"]]
    assert result["zoom"]["zoom_rate"] == 1.0 and len(charges(out)) == 2  # two turns, each one batch of both


class ZoomServer:
    """A scripted chat-completions server on 127.0.0.1 (real HTTP, the real client) for served image-arm episodes:
    it calls `zoom(BOX)` on a galaxy's first turn and answers on the next, naming a class picked by a hash of the
    galaxy's user turn (its image), so answers differ by galaxy. It keeps every request body, counts requests by
    galaxy and turn, and the most it had in flight at once. With `hold_first`, the first request waits (up to a
    minute, a guard against a hang, not a measure) until a second request is in flight: a run then finishes
    promptly only if it keeps several requests in flight."""

    def __init__(self, *, hold_first: bool = False):
        import threading
        from http.server import BaseHTTPRequestHandler

        from evalkit import _Server

        self.bodies: dict[tuple[str, int], list[dict]] = {}  # (galaxy, messages) -> every body that asked it
        self.in_flight = self.max_in_flight = self.n = 0
        self.second = threading.Event()
        self.held_until_second: bool | None = None
        lock, server = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                galaxy = json.dumps(body["messages"][1], sort_keys=True)  # the user turn: the prompt and first view
                with lock:
                    server.n += 1
                    first = server.n == 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    if server.in_flight >= 2:
                        server.second.set()
                    server.bodies.setdefault((galaxy, len(body["messages"])), []).append(body)
                if first and hold_first:
                    server.held_until_second = server.second.wait(timeout=60)
                if body["messages"][-1]["role"] == "tool":
                    pick = int(hashlib.sha256(galaxy.encode()).hexdigest(), 16) % len(DECALS_CLASSES)
                    message = {"role": "assistant", "content": f"<answer>{DECALS_CLASSES[pick]}</answer>"}
                else:
                    arguments = json.dumps({"bbox_2d": BOX})
                    call = {"id": "c1", "type": "function", "function": {"name": "zoom", "arguments": arguments}}
                    message = {"role": "assistant", "content": "", "tool_calls": [call]}
                usage = {"prompt_tokens": 40 + 10 * len(body["messages"]), "completion_tokens": 5}
                data = json.dumps({"choices": [{"index": 0, "message": message}], "usage": usage}).encode()
                with lock:  # out of flight before the answer leaves, so the next request never overlaps it
                    server.in_flight -= 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.http = _Server(Handler)
        self.url = self.http.url

    def stop(self):
        self.http.stop()


def served_image_config(model_dir, prepared_dir, out: Path, url: str, **settings) -> EvalConfig:
    prices = {"price_input_per_million": 1.0, "price_output_per_million": 1.0}
    return config(model_dir, prepared_dir, out, zoom=True, backend="openai", base_url=url, **prices, **settings)


def served_run(cfg: EvalConfig, concurrency: int) -> dict:
    from astroreason.evaluation.backends import OpenAIBackend

    backend = OpenAIBackend(cfg.base_url, cfg.model, cfg.sampling(), concurrency=concurrency, max_retries=0)
    return evaluate(cfg, backend, progress=False)


def by_index(out: Path) -> list[dict]:
    return sorted(sample_lines(out), key=lambda r: r["index"])


def test_served_episodes_keep_requests_in_flight_across_galaxies(tiny_model_dir, prepared_dir, tmp_path):
    """Four galaxies at `concurrency` 4: the server's first request is held until a second one is in flight, so
    turns of several episodes were in flight at once; every turn was reserved and charged, and the records equal
    those of the same run at `concurrency` 1 (one request at a time), whatever order the answers came in."""
    runs = {}
    for concurrency in (1, 4):
        server = ZoomServer(hold_first=concurrency > 1)
        out = tmp_path / f"c{concurrency}" / "run"
        try:
            cfg = served_image_config(tiny_model_dir, prepared_dir, out, server.url, max_samples=4)
            result = served_run(cfg, concurrency)
        finally:
            server.stop()
        assert result["status"] == "complete" and result["zoom"]["zoom_rate"] == 1.0
        assert server.n == 8 and len(charges(out)) == 8  # two turns per galaxy, each reserved and charged
        assert all(len(bodies) == 1 for bodies in server.bodies.values())  # no turn asked twice
        runs[concurrency] = (server, by_index(out))
    assert runs[1][0].max_in_flight == 1
    assert runs[4][0].held_until_second is True and runs[4][0].max_in_flight >= 2
    assert len({r["prediction"] for r in runs[1][1]}) > 1  # the answers differ by galaxy: a mix-up would show
    assert runs[4][1] == runs[1][1]


def test_a_served_episode_stopped_mid_way_resumes_after_its_paid_turns(tiny_model_dir, prepared_dir, tmp_path):
    """Two galaxies of two turns each at `concurrency` 2 under a request cap of 3: the cap stops the run within the
    requests in flight, one episode finished (cached) and the other after its first turn (in the turn log). Resumed
    without the cap, the server is asked only the missing turn: over both runs each galaxy's turn was asked once, with
    the very body an uninterrupted run sends (the replayed tool turn's crop included), and the records equal that
    run's."""
    whole = ZoomServer()
    try:
        served_run(served_image_config(tiny_model_dir, prepared_dir, tmp_path / "whole" / "run", whole.url), 2)
    finally:
        whole.stop()

    server = ZoomServer()
    out = tmp_path / "parts" / "run"
    try:
        capped = served_image_config(tiny_model_dir, prepared_dir, out, server.url, max_requests=3)
        with pytest.raises(IncompleteRun, match="request cap 3 reached"):
            served_run(capped, 2)
        assert server.n == 3 and len(charges(out)) == 3  # every request sent was reserved and charged
        [finished] = sample_lines(out)
        assert finished["zoom"]["turns"] == 2
        logged = [json.loads(line) for line in (out / "episode_turns.jsonl").read_text().splitlines()]
        unfinished = [r for r in logged if r["key"] != finished["key"]]
        assert [r["turn"] for r in unfinished] == [0] and unfinished[0]["calls"][0]["arguments"] == {"bbox_2d": BOX}

        resumed = served_run(served_image_config(tiny_model_dir, prepared_dir, out, server.url), 2)
    finally:
        server.stop()
    assert resumed["status"] == "complete" and resumed["n_asked_this_run"] == 1 and resumed["n_from_cache"] == 1
    assert resumed["zoom"]["resumed_mid_episode"] == 1
    assert server.n == 4 and len(charges(out)) == 4  # only the unfinished episode's second turn was asked
    assert {k: len(b) for k, b in server.bodies.items()} == {k: 1 for k in whole.bodies}
    assert server.bodies == whole.bodies  # the resumed turn's request is the uninterrupted run's, byte for byte
    assert by_index(out) == by_index(tmp_path / "whole" / "run")

"""The HTTP backend's failure paths against real servers on 127.0.0.1: unreachable, garbage, 429/5xx then success,
a refused request, a response without usage. Each ends in one line and a non-zero exit (or recovers), with every
answer already paid for kept, and the ledger agreeing with what the server saw."""

from __future__ import annotations

import json
import socket

import pytest
from evalkit import CountingProxy, ScriptedServer, StallingFront, ledger_rows, sample_lines

from astroreason.cli import main

N = 6


@pytest.fixture
def run_args(prepared_dir, tmp_path):
    def make(url, **overrides):
        args = {
            "model": "scripted-vlm",
            "backend": "openai",
            "base_url": url,
            "data_dir": str(prepared_dir),
            "split": "test",
            "modality": "image",
            "image_size": 56,
            "output_dir": str(tmp_path / "run"),
            "max_samples": N,
            "max_new_tokens": 16,
            "concurrency": 1,
            "max_retries": 2,
            "retry_backoff": 0.01,
            "request_timeout": 10,
            "n_boot": 100,
            "price_input_per_million": 1.0,
            "price_output_per_million": 2.0,
            "image_tokens_bound": 64,
            "ledger": str(tmp_path / "spend.jsonl"),
            "max_dollars": 1.0,
        }
        args.update(overrides)
        return [x for k, v in args.items() for x in (f"--{k}", str(v))]

    return make


def _errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


def test_retries_429_and_503_then_succeeds(run_args, tmp_path, capsys):
    server = ScriptedServer(plan=lambda n: {0: "429", 1: "503"}.get(n, "ok"))
    try:
        assert main(["eval", *run_args(server.url)]) == 0
    finally:
        server.stop()
    out = capsys.readouterr().out
    result = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])
    assert result["status"] == "complete" and result["n"] == N
    charges = [r for r in ledger_rows(tmp_path / "spend.jsonl") if r["kind"] == "charge"]
    distinct = len(sample_lines(tmp_path / "run"))
    assert len(charges) == distinct and sum(c["attempts"] for c in charges) == server.count == distinct + 2
    assert sample_lines(tmp_path / "run")[0]["attempts"] == 3
    # Every image went as a base64 PNG data URL at the configured size.
    assert server.images == [(56, 56)] * server.count


def test_unreachable_server_is_one_line_and_spends_nothing(run_args, tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    assert main(["eval", *run_args(f"http://127.0.0.1:{port}/v1")]) == 1
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "unreachable" in err[0] and "3 attempts" in err[0]
    rows = ledger_rows(tmp_path / "spend.jsonl")
    assert [r["kind"] for r in rows] == ["reserve", "release"]  # reserved, never sent, released: $0 spent
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "backend_error"


def test_garbage_response_stops_the_run_and_keeps_what_was_answered(run_args, tmp_path, capsys):
    server = ScriptedServer(plan=lambda n: "ok" if n < 3 else "garbage")
    try:
        assert main(["eval", *run_args(server.url)]) == 1
    finally:
        server.stop()
    captured = capsys.readouterr()
    err = _errors(captured.err)
    assert len(err) == 1 and "malformed response" in err[0] and "not JSON" in err[0]
    kept = sample_lines(tmp_path / "run")
    assert len(kept) == 3 and server.count == 4  # nothing more was sent after the garbage
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "backend_error" and result["n_done"] >= 3
    # The unreadable answer may have been billed: it is charged at its worst case, never silently dropped.
    charges = [r for r in ledger_rows(tmp_path / "spend.jsonl") if r["kind"] == "charge"]
    assert len(charges) == 4 and charges[-1]["unknown"] == "malformed response"
    # A rerun against a healthy server asks only the rest.
    healthy = ScriptedServer()
    try:
        assert main(["eval", *run_args(healthy.url)]) == 0
    finally:
        healthy.stop()
    assert healthy.count == result["n_distinct_inputs"] - 3
    assert len(sample_lines(tmp_path / "run")) == result["n_distinct_inputs"]


def test_refused_request_is_not_retried_and_missing_usage_is_charged_worst_case(run_args, tmp_path, capsys):
    server = ScriptedServer(plan=lambda n: "400")
    try:
        assert main(["eval", *run_args(server.url)]) == 1
    finally:
        server.stop()
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "HTTP 400" in err[0] and server.count == 1

    server = ScriptedServer(plan=lambda n: "nousage")
    try:
        assert main(["eval", *run_args(server.url, output_dir=tmp_path / "run2")]) == 0
    finally:
        server.stop()
    charges = [r for r in ledger_rows(tmp_path / "spend.jsonl") if r["kind"] == "charge"]
    assert len(charges) == server.count and all(c["unknown"] == "no usage in response" for c in charges)
    reserves = {r["id"]: r["dollars"] for r in ledger_rows(tmp_path / "spend.jsonl") if r["kind"] == "reserve"}
    assert all(c["dollars"] == reserves[c["id"]] > 0 for c in charges)


def test_missing_api_key_variable_and_unpriced_model_refuse_before_sending(run_args, tmp_path, capsys):
    server = ScriptedServer()
    try:
        assert main(["eval", *run_args(server.url, api_key_env="ASTRO_NO_SUCH_KEY_VAR")]) == 2
        assert "ASTRO_NO_SUCH_KEY_VAR is not set" in capsys.readouterr().err
        prices = tmp_path / "prices.yaml"
        prices.write_text("api: {}\n")
        args = [a for a in run_args(server.url, prices=prices)]
        # Drop the user-set prices: the model is then unpriced and refused (fail closed).
        for flag in ("--price_input_per_million", "--price_output_per_million"):
            i = args.index(flag)
            del args[i : i + 2]
        assert main(["eval", *args]) == 1
        err = _errors(capsys.readouterr().err)
        assert len(err) == 1 and "has no price" in err[0]
        assert server.count == 0
    finally:
        server.stop()


def test_timed_out_then_server_error_keeps_the_worst_case_charged(run_args, tmp_path, capsys):
    """The first attempt times out (the server may have done the work and billed it); the retry, a request of its
    own with its own reservation, gets a 500. The first attempt stays charged at its worst case; only the retry's
    reservation, which nothing billed, is released."""
    front = StallingFront(plan=lambda n: "stall" if n == 0 else "500")
    try:
        assert main(["eval", *run_args(front.url, max_samples=1, max_retries=1, request_timeout=1)]) == 1
    finally:
        front.stop()
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "HTTP 500" in err[0] and "2 attempts" in err[0], err
    assert front.fates == ["stall", "500"]
    rows = ledger_rows(tmp_path / "spend.jsonl")
    assert [r["kind"] for r in rows] == ["reserve", "reserve", "charge", "release"]
    first, retry, charge, release = rows
    assert charge["id"] == first["id"] and charge["dollars"] == first["dollars"] > 0
    assert charge["unknown"] == "no answer" and charge["attempts"] == 1
    assert release["id"] == retry["id"]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "backend_error" and result["spend"]["ledger_totals"]["dollars"] == first["dollars"]
    assert result["spend"]["ledger_totals"]["open_reservations"] == 0


def test_retry_after_a_timeout_must_fit_under_the_cap(run_args, prepared_dir, tmp_path, capsys):
    """The retry of a timed-out request reserves its own worst case: under a cap with room for one, it is not sent,
    and the timed-out attempt stays charged."""
    from astroreason.evaluation.backends import OpenAIBackend, SamplingSettings
    from astroreason.evaluation.harness import EvalConfig, evaluation_rows

    [row] = evaluation_rows(
        EvalConfig(
            model="scripted-vlm",
            backend="openai",
            base_url="http://127.0.0.1:1/v1",
            data_dir=str(prepared_dir),
            image_size=56,
            max_samples=1,
        )
    )
    bound = OpenAIBackend(
        "http://127.0.0.1:1/v1", "scripted-vlm", SamplingSettings(max_new_tokens=16), image_tokens_bound=64
    ).prompt_bound(row["prompt"], row["image"])
    worst = (bound * 1.0 + 16 * 2.0) / 1e6  # the prices run_args sets, per million tokens in and out
    front = StallingFront(plan=lambda n: "stall" if n == 0 else "500")
    try:
        args = run_args(front.url, max_samples=1, max_retries=1, request_timeout=1, max_dollars=1.5 * worst)
        assert main(["eval", *args]) == 1
    finally:
        front.stop()
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "dollar cap" in err[0] and "retry of a request that timed out" in err[0], err
    assert front.count == 1  # the retry was not sent
    rows = ledger_rows(tmp_path / "spend.jsonl")
    assert [r["kind"] for r in rows] == ["reserve", "charge"]
    assert rows[0]["dollars"] == pytest.approx(worst) and rows[1]["dollars"] == rows[0]["dollars"]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "budget_exhausted"


def test_only_the_named_key_is_sent(run_args, tmp_path, monkeypatch):
    """The Authorization header carries the key of the variable named by api_key_env and nothing else: not the
    ambient OPENAI_API_KEY nor an Authorization in OPENAI_CUSTOM_HEADERS (which the openai client reads by itself);
    with no api_key_env, no Authorization header at all."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-ambient-key")
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "Authorization: Bearer sk-ambient-header")
    monkeypatch.setenv("ASTRO_HTTP_TEST_KEY", "sk-named-key")
    server = ScriptedServer()
    proxy = CountingProxy(server.url.removesuffix("/v1"))
    try:
        assert (
            main(
                [
                    "eval",
                    *run_args(
                        proxy.url, max_samples=2, output_dir=tmp_path / "keyed", api_key_env="ASTRO_HTTP_TEST_KEY"
                    ),
                ]
            )
            == 0
        )
        keyed = proxy.count
        assert main(["eval", *run_args(proxy.url, max_samples=2, output_dir=tmp_path / "keyless")]) == 0
    finally:
        proxy.stop()
        server.stop()
    assert keyed > 0 and proxy.count > keyed
    assert proxy.auth_headers == ["Bearer sk-named-key"] * keyed + [""] * (proxy.count - keyed)

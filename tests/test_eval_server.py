"""THE budget check: a real OpenAI-compatible server (`transformers serve`) on 127.0.0.1 serving a tiny text model,
behind a real counting proxy, with a price table that makes the dollar cap bite mid-run on the token arm.

The run stops without crossing the cap, the rerun with a raised cap sends only the missing samples, and the ledger
agrees with the requests (and the token usage) the server actually saw. The API key reaches the server and nothing
else."""

from __future__ import annotations

import json

import pytest
import yaml
from evalkit import CountingProxy, ServeProcess, StallingFront, build_codec, build_text_lm, ledger_rows, sample_lines

from astroreason.cli import main
from astroreason.evaluation.backends import OpenAIBackend, SamplingSettings
from astroreason.evaluation.harness import EvalConfig, evaluation_rows

SECRET = "sk-test-5f1d0c9e-never-log-me"
N, MAX_NEW = 14, 8
PER_MILLION_IN, PER_MILLION_OUT = 10_000.0, 20_000.0  # one cent per prompt token, two per completion token


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    model = build_text_lm(root / "text-lm")
    server = ServeProcess(model, root / "serve.log")
    proxy = CountingProxy(server.url)
    yield model, proxy
    proxy.stop()
    server.stop()


@pytest.fixture(scope="module")
def codec(prepared_dir, tmp_path_factory):
    return build_codec(prepared_dir, tmp_path_factory.mktemp("codec") / "fsq-tiny")


def _result_line(out: str) -> dict:
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1, out
    return json.loads(lines[0][len("RESULT ") :])


def test_cap_bites_mid_run_and_rerun_sends_only_the_missing(served, codec, prepared_dir, tmp_path, capsys, monkeypatch):
    model, proxy = served
    monkeypatch.setenv("ASTRO_EVAL_TEST_KEY", SECRET)
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        yaml.safe_dump(
            {"api": {"tiny-text": {"input_per_million": PER_MILLION_IN, "output_per_million": PER_MILLION_OUT}}}
        )
    )
    out_dir, ledger = tmp_path / "run", tmp_path / "ledger" / "spend.jsonl"
    base = {
        "model": str(model),
        "server_model": str(model),
        "backend": "openai",
        "base_url": proxy.url,
        "api_key_env": "ASTRO_EVAL_TEST_KEY",
        "data_dir": str(prepared_dir),
        "split": "test",
        "modality": "tokens",
        "codec": str(codec),
        "rendering": "ints",
        "output_dir": str(out_dir),
        "max_samples": N,
        "max_new_tokens": MAX_NEW,
        "concurrency": 2,
        "max_retries": 1,
        "retry_backoff": 0.05,
        "n_boot": 200,
        "prices": str(prices),
        "price_key": "tiny-text",
        "ledger": str(ledger),
    }
    # The worst case the gate reserves for one request, from the same bound the backend uses.
    rows = evaluation_rows(EvalConfig(**{k: v for k, v in base.items() if k != "api_key_env"}))
    backend = OpenAIBackend(proxy.url, str(model), SamplingSettings(max_new_tokens=MAX_NEW))
    worst = max(
        (backend.prompt_bound(r["prompt"], None) * PER_MILLION_IN + MAX_NEW * PER_MILLION_OUT) / 1e6 for r in rows
    )
    cap = 2.5 * worst
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({**base, "max_dollars": cap}))

    # 1. The cap bites: exit 1, one error line, a partial RESULT, every paid answer saved.
    capsys.readouterr()
    assert main(["eval", "--config", str(config)]) == 1
    captured = capsys.readouterr()
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("astroreason: error:")]
    assert len(errors) == 1 and "dollar cap" in errors[0] and "not sent" in errors[0]
    first = _result_line(captured.out)
    done = sample_lines(out_dir)
    # Galaxies whose token text is identical share one cache key and one paid answer (the tiny codec makes some).
    assert first["status"] == "budget_exhausted" and 0 < len(done) <= first["n"] < N
    totals = [r for r in ledger_rows(ledger) if r["kind"] == "charge"]
    spent = sum(r["dollars"] for r in totals)
    assert spent <= cap and cap - spent < worst  # never crossed; stopped only when the next request could not fit
    assert proxy.count == len(done) == len(totals)  # the server saw exactly the requests the ledger charged
    assert proxy.prompt_tokens == sum(r["prompt_tokens"] for r in totals)
    assert proxy.completion_tokens == sum(r["completion_tokens"] for r in totals)
    result = json.loads((out_dir / "result.json").read_text())
    assert result["status"] == "budget_exhausted" and result["n_done"] == first["n"]
    distinct = result["n_distinct_inputs"]
    assert len(done) < distinct <= N
    assert result["spend"]["ledger_totals"]["open_reservations"] == 0

    # 2. The rerun with a raised cap resumes: only the missing samples reach the server.
    seen_before = proxy.count
    assert main(["eval", "--config", str(config), "--max_dollars", str(100 * cap)]) == 0
    second = _result_line(capsys.readouterr().out)
    assert second["status"] == "complete" and second["n"] == N
    assert proxy.count - seen_before == distinct - len(done)
    result = json.loads((out_dir / "result.json").read_text())
    assert result["n_from_cache"] == len(done) and result["n_asked_this_run"] == distinct - len(done)
    all_samples = sample_lines(out_dir)
    assert len(all_samples) == distinct == len({s["key"] for s in all_samples})
    predictions = [json.loads(ln) for ln in (out_dir / "predictions.jsonl").read_text().splitlines()]
    assert [p["index"] for p in predictions] == list(range(N))
    charges = [r for r in ledger_rows(ledger) if r["kind"] == "charge"]
    assert proxy.count == len(charges) == sum(r["attempts"] for r in charges) == distinct
    assert proxy.prompt_tokens == sum(r["prompt_tokens"] for r in charges)
    assert sum(s["prompt_tokens"] for s in all_samples) == proxy.prompt_tokens

    # 3. A third run answers everything from the cache: the server sees nothing.
    assert main(["eval", "--config", str(config), "--max_dollars", str(100 * cap)]) == 0
    assert _result_line(capsys.readouterr().out)["status"] == "complete" and proxy.count == distinct

    # The key went to the server on every request and nowhere else.
    assert proxy.auth_headers == [f"Bearer {SECRET}"] * distinct
    written = [p for p in [*out_dir.rglob("*"), *ledger.parent.rglob("*")] if p.is_file()]
    assert written and not any(SECRET.encode() in p.read_bytes() for p in written)  # text and figures alike
    assert SECRET not in captured.out + captured.err


def test_timed_out_then_answered_is_charged_for_both(served, tmp_path):
    """A request whose first attempt timed out (the server may have done that work too) and whose retry
    `transformers serve` answers is charged the retry's reported usage plus the first attempt's worst case."""
    from astroreason.budget import Budget, Caps, Ledger, Price

    model, proxy = served
    front = StallingFront(plan=lambda n: "stall" if n == 0 else "forward", upstream=proxy.upstream)
    ledger = Ledger(tmp_path / "spend.jsonl")
    budget = Budget(ledger, Price("tiny-text", PER_MILLION_IN, PER_MILLION_OUT), Caps())
    backend = OpenAIBackend(
        front.url, str(model), SamplingSettings(max_new_tokens=MAX_NEW), timeout=1, max_retries=1, backoff=0.01
    )
    prompt = [{"role": "user", "content": "Which Galaxy10 class is a round smooth galaxy?"}]
    try:
        [(_, answer)] = [item for chunk in backend.stream([prompt], [None], budget) for item in chunk]
    finally:
        front.stop()
    assert front.fates == ["stall", "forward"] and answer.attempts == 2
    rows = ledger_rows(ledger.path)
    assert [r["kind"] for r in rows] == ["reserve", "reserve", "charge", "charge"]
    first, retry, worst, real = rows
    assert worst["id"] == first["id"] and worst["dollars"] == first["dollars"] and worst["unknown"] == "no answer"
    assert real["id"] == retry["id"] and "unknown" not in real
    assert (
        (real["prompt_tokens"], real["completion_tokens"])
        == (front.usage["prompt_tokens"], front.usage["completion_tokens"])
        != (0, 0)
    )
    assert real["dollars"] == pytest.approx(
        (real["prompt_tokens"] * PER_MILLION_IN + real["completion_tokens"] * PER_MILLION_OUT) / 1e6
    )
    totals = ledger.totals()
    assert answer.dollars == pytest.approx(totals.dollars) == pytest.approx(first["dollars"] + real["dollars"])
    assert totals.open_reservations == 0


def test_four_processes_share_one_request_cap(served, codec, prepared_dir, tmp_path):
    """Four `astroreason eval` processes charge one spend ledger under a global cap of N requests, all at once against
    the real server: the ledger holds at most N charges (the cap is checked and reserved under the ledger's lock), and
    the server saw exactly the requests charged."""
    import os
    import subprocess
    import sys

    model, proxy = served
    cap, ledger = 6, tmp_path / "spend.jsonl"
    prices = tmp_path / "prices.yaml"
    prices.write_text(yaml.safe_dump({"api": {"tiny-text": {"input_per_million": 1.0, "output_per_million": 1.0}}}))
    seen_before = proxy.count
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ASTRO_EVAL_TEST_KEY": SECRET}
    procs = []
    for i in range(4):
        args = ["--model", str(model), "--server_model", str(model), "--backend", "openai", "--base_url", proxy.url]
        args += ["--api_key_env", "ASTRO_EVAL_TEST_KEY", "--data_dir", str(prepared_dir), "--split", "test"]
        args += ["--modality", "tokens", "--codec", str(codec), "--rendering", "ints", "--max_samples", str(N)]
        args += ["--max_new_tokens", str(MAX_NEW), "--concurrency", "2", "--max_retries", "0", "--n_boot", "50"]
        args += ["--prices", str(prices), "--price_key", "tiny-text", "--ledger", str(ledger)]
        args += ["--max_requests", str(cap), "--output_dir", str(tmp_path / f"run{i}")]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "astroreason.cli", "eval", *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outcomes = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    # The four ask 4 x N requests between them; the cap stops each once the ledger holds N.
    assert all(code == 1 and "request cap" in err for code, err in outcomes), outcomes
    charges = [r for r in ledger_rows(ledger) if r["kind"] == "charge"]
    assert len(charges) == sum(r["attempts"] for r in charges) == cap
    assert proxy.count - seen_before == len(charges)
    assert sum(len(sample_lines(tmp_path / f"run{i}")) for i in range(4)) == cap

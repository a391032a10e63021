"""The harness end to end on the tiny model with the local transformers backend: eval/run.py with a config in both
modalities, a stopped and torn run resumed without re-asking, a changed checkpoint never served from the cache, the pilot
estimate, and bad input (one line, non-zero exit, earlier results untouched)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from evalkit import build_codec, ledger_rows, sample_lines

from astroreason.cli import main

REPO = Path(__file__).resolve().parents[1]
PRICES = REPO / "eval" / "prices.yaml"


def _args(model, prepared_dir, out, ledger, **overrides):
    args = {
        "model": model,
        "data_dir": prepared_dir,
        "output_dir": out,
        "ledger": ledger,
        "prices": PRICES,
        "max_samples": 6,
        "batch_size": 2,
        "max_new_tokens": 4,
        "n_boot": 100,
        "image_size": 56,
    }
    args.update(overrides)
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


def _result(out: str) -> dict:
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1
    return json.loads(lines[0][7:])


def test_stopped_and_torn_run_resumes_without_reasking(tiny_model_dir, prepared_dir, tmp_path, capsys):
    """A run stopped mid-way (its request cap bites after three answers, at the same point on any machine) whose
    answer file then ends in a torn row (what a SIGKILL in the middle of a write leaves) resumes: the three saved
    answers come from the cache, the torn row is ignored, only the rest is asked."""
    out, ledger = tmp_path / "run", tmp_path / "spend.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    config = str(REPO / "eval" / "configs" / "tiny_image.yaml")
    cmd = [
        sys.executable,
        str(REPO / "eval" / "run.py"),
        "--config",
        config,
        *_args(tiny_model_dir, prepared_dir, out, ledger, max_samples=10, batch_size=1, max_requests=3),
    ]
    stopped = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 1, stopped.stderr[-3000:]
    assert "request cap 3 reached" in stopped.stderr and "Traceback" not in stopped.stderr
    before = sample_lines(out)
    assert len(before) == 3
    assert json.loads((out / "result.json").read_text())["status"] == "budget_exhausted"
    with open(out / "samples.jsonl", "a") as f:
        f.write('{"key": "torn-by-a-kill", "answer": "Rou')  # half a row, no newline

    assert (
        main(
            [
                "eval",
                "--config",
                config,
                *_args(tiny_model_dir, prepared_dir, out, ledger, max_samples=10, batch_size=1),
            ]
        )
        == 0
    )
    summary = _result(capsys.readouterr().out)
    result = json.loads((out / "result.json").read_text())
    assert summary["status"] == "complete" and summary["n"] == 10
    assert result["n_from_cache"] == 3
    assert result["n_asked_this_run"] == result["n_distinct_inputs"] - 3
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert lines[3].startswith('{"key": "torn-by-a-kill"')  # kept on a line of its own, and ignored
    after = [json.loads(line) for line in lines[:3] + lines[4:]]
    assert after[:3] == before and len(after) == 10 and len({r["key"] for r in after}) == 10
    assert result["provenance"]["manifest_sha256"] and result["weights_sha256"]
    assert result["classes"] == json.loads((prepared_dir / "manifest.json").read_text())["classes"]  # the split's
    # Both runs charged the same ledger (GPU-hours at the table's CPU price), one request per answer.
    charges = [r for r in ledger_rows(ledger) if r["kind"] == "charge"]
    assert sum(c["requests"] for c in charges) == 10 and all(c["model"] == "cpu" for c in charges)


def test_changed_checkpoint_at_the_same_path_is_asked_again(tiny_model_dir, prepared_dir, tmp_path, capsys):
    import torch
    from transformers import AutoModelForImageTextToText

    model = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, model)
    out, ledger = tmp_path / "run", tmp_path / "spend.jsonl"
    assert main(["eval", *_args(model, prepared_dir, out, ledger, max_samples=3)]) == 0
    first = json.loads((out / "result.json").read_text())
    assert first["n_asked_this_run"] == first["n_distinct_inputs"]
    assert main(["eval", *_args(model, prepared_dir, out, ledger, max_samples=3)]) == 0
    assert json.loads((out / "result.json").read_text())["n_asked_this_run"] == 0  # unchanged: all from the cache

    weights = AutoModelForImageTextToText.from_pretrained(model)
    with torch.no_grad():
        next(weights.parameters()).add_(0.01)
    weights.save_pretrained(model)  # same path, new weights
    assert main(["eval", *_args(model, prepared_dir, out, ledger, max_samples=3)]) == 0
    third = json.loads((out / "result.json").read_text())
    assert third["weights_sha256"] != first["weights_sha256"]
    assert third["n_from_cache"] == 0 and third["n_asked_this_run"] == third["n_distinct_inputs"]
    capsys.readouterr()


def test_sampled_decoding_repeats_per_seed(tiny_model_dir, prepared_dir):
    from astroreason.evaluation.backends import SamplingSettings, TransformersBackend
    from astroreason.evaluation.harness import EvalConfig, evaluation_rows

    rows = evaluation_rows(
        EvalConfig(model=str(tiny_model_dir), data_dir=str(prepared_dir), image_size=56, max_samples=4)
    )
    prompts, images = [r["prompt"] for r in rows], [r["image"] for r in rows]

    def texts(seed, temperature=1.0):
        sampling = SamplingSettings(max_new_tokens=8, temperature=temperature, seed=seed)
        backend = TransformersBackend.from_pretrained(str(tiny_model_dir), sampling, batch_size=2)
        return [g.text for g in backend.generate(prompts, images)]

    assert texts(seed=0) == texts(seed=0)  # each batch is seeded: a sampled run repeats
    assert texts(seed=0) != texts(seed=1)
    assert texts(seed=0, temperature=0.0) == texts(seed=1, temperature=0.0)  # greedy ignores the seed


def test_greedy_answers_carry_their_log_probability(tiny_model_dir, prepared_dir):
    """The local backend records each completion's log-probability: the sum over its tokens, the same as a forward
    pass over prompt + completion gives (padding and the tokens after end-of-sequence left out)."""
    import torch

    from astroreason.evaluation.backends import SamplingSettings, TransformersBackend
    from astroreason.evaluation.harness import EvalConfig, evaluation_rows

    rows = evaluation_rows(
        EvalConfig(model=str(tiny_model_dir), data_dir=str(prepared_dir), image_size=56, max_samples=3)
    )
    backend = TransformersBackend.from_pretrained(str(tiny_model_dir), SamplingSettings(max_new_tokens=6), batch_size=3)
    generations = backend.generate([r["prompt"] for r in rows], [r["image"] for r in rows])
    for row, g in zip(rows, generations):
        inputs = backend._inputs([row["prompt"]], [row["image"]])  # one prompt alone: no padding
        out = backend.model.generate(
            **inputs, max_new_tokens=6, do_sample=False, pad_token_id=backend.tokenizer.pad_token_id
        )
        completion = out[:, inputs["input_ids"].shape[1] :][:, : g.completion_tokens]
        full = {**inputs, "input_ids": torch.cat([inputs["input_ids"], completion], 1)}
        full["attention_mask"] = torch.ones_like(full["input_ids"])
        if "mm_token_type_ids" in inputs:  # the completion holds text tokens only
            full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(completion)], 1)
        with torch.no_grad():
            logits = backend.model(**full).logits[0, inputs["input_ids"].shape[1] - 1 : -1]
        expected = torch.log_softmax(logits.float(), -1).gather(1, completion[0][:, None]).sum()
        assert g.logprob is not None and g.logprob <= 0
        assert g.logprob == pytest.approx(float(expected), abs=1e-3)


def test_token_arm_and_pilot_estimate(tiny_model_dir, prepared_dir, tmp_path, capsys):
    codec = build_codec(prepared_dir, tmp_path / "codec")
    out, ledger = tmp_path / "tokens", tmp_path / "spend.jsonl"
    capsys.readouterr()
    # A stratified pilot at a (user-set) GPU price: the estimate extrapolates its measured cost to the rest.
    args = _args(
        tiny_model_dir,
        prepared_dir,
        out,
        ledger,
        modality="tokens",
        codec=codec,
        max_samples=12,
        price_gpu_hour=3600.0,
        pilot_samples=4,
    )
    assert main(["budget", "estimate", *args]) == 0
    estimate = json.loads(next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("ESTIMATE "))[9:])
    assert estimate["pilot_samples"] == 4 and estimate["dollars_per_sample"] > 0
    assert estimate["estimated_dollars"] == pytest.approx(
        estimate["dollars_per_sample"] * estimate["remaining_samples"]
    )
    from astroreason.data.splits import load_split

    pilot = sample_lines(out)
    classes = set(load_split(prepared_dir, "test")["label"][:12])
    assert len(pilot) == 4 and len({r["label"] for r in pilot}) == min(4, len(classes))  # stratified by class
    spent = sum(r["dollars"] for r in ledger_rows(ledger) if r["kind"] == "charge")
    # With a cap below the estimate, eval refuses after the pilot instead of running out of money half-way.
    assert main(["eval", *args, "--max_dollars", str(spent + estimate["estimated_dollars"] / 4)]) == 1
    captured = capsys.readouterr()
    assert "exceeds the dollars cap" in captured.err and _result(captured.out)["status"] == "estimate_over_cap"
    assert len(sample_lines(out)) == 4
    # Without the cap the token arm runs to the end; the pilot's answers are reused.
    assert main(["eval", *args, "--pilot_samples", "0"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "complete" and result["n_from_cache"] == 4 and result["config"]["modality"] == "tokens"


def test_bad_input_is_one_line_and_leaves_results_intact(tiny_model_dir, prepared_dir, surrogate_h5, tmp_path, capsys):
    from astroreason.data.splits import prepare

    out, ledger = tmp_path / "run", tmp_path / "spend.jsonl"
    assert main(["eval", *_args(tiny_model_dir, prepared_dir, out, ledger, max_samples=2)]) == 0
    kept = {name: (out / name).read_bytes() for name in ("samples.jsonl", "predictions.jsonl", "result.json")}
    capsys.readouterr()
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: [unclosed\n")
    unknown_key = tmp_path / "unknown.yaml"
    unknown_key.write_text("modle: x\n")
    empty = prepare(surrogate_h5, tmp_path / "no-test", seed=0, fractions=(0.9, 0.1, 0.0))
    cases = {
        "not valid YAML": ["--config", str(bad_yaml)],
        "unknown key `modle`": ["--config", str(unknown_key)],
        "cannot read": ["--config", str(tmp_path / "missing.yaml")],
        "backend: expected one of": _args(tiny_model_dir, prepared_dir, out, ledger, backend="tensorrt"),
        "not a checkpoint directory": _args(tmp_path / "no-model", prepared_dir, out, ledger),
        "has no split 'holdout'": _args(tiny_model_dir, prepared_dir, out, ledger, split="holdout"),
        "has no rows to evaluate": _args(tiny_model_dir, empty, out, ledger),
        "max_dollars: expected a non-negative number": _args(tiny_model_dir, prepared_dir, out, ledger, max_dollars=-1),
        "arguments:": [*_args(tiny_model_dir, prepared_dir, out, ledger), "--no_such_flag", "1"],
    }
    for expected, argv in cases.items():
        assert main(["eval", *argv]) == 2, expected
        stderr = capsys.readouterr().err
        err = [ln for ln in stderr.splitlines() if ln.startswith("astroreason: error:")]
        assert len(err) == 1 and expected in err[0] and "Traceback" not in stderr, (expected, stderr)
    assert {name: (out / name).read_bytes() for name in kept} == kept

"""The integrity guards wired into the pipeline, through its real entry points: `recipes/sft.py` in a subprocess,
`astroreason eval` and `astroreason audit`.

The planted leak: a class-sorted surrogate (as the real Galaxy10 DECaLS file is) with the row index in the prompt.
The recipe and the evaluation refuse it (exit 1, one line); with the explicit override they run, record the override
(`prompt_lint.json`, the ledger's description), and the audit's metadata probe catches it. A model that reads the
row index (a real classifier served over HTTP on 127.0.0.1) scores above the ceiling through `astroreason eval`: the
result is recorded as suspect, exit 1. The same data without the leak passes the lint, the audit's probes (with the
blank-input and label-permutation controls) and the gate: no false alarm. Two recipe runs with different seeds but
a forced identical start (same pretrained weights, same `--data_seed`) are flagged by the audit of their sweep.

The tiny Qwen-VL cannot be trained past the ceiling in a test's time (a 100-step SFT on the leaky prompts reached
0.38, tests/test_integrity_leak.py), so the ceiling is crossed by the served row-index classifier instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from integrity_helpers import PromptNumberBackend, PromptNumberModel, prompt_features, sorted_copy

from astroreason.arms import ImageArm
from astroreason.cli import main as cli
from astroreason.integrity import SUSPECT_FILE
from astroreason.integrity.ledger import verify
from astroreason.prompts import IMAGE_TEMPLATE

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "configs" / "tiny" / "sft_image.yaml"
PRICES = ROOT / "eval" / "prices.yaml"
LEAKY = "Galaxy number {row_index} of the catalogue.\n" + IMAGE_TEMPLATE
OVERRIDE = ["--allow_prompt_fields", "row_index", "--override_reason", "planted leak: the integrity pipeline test"]


@pytest.fixture(scope="module")
def sorted_prepared(surrogate_h5, tmp_path_factory):
    from astroreason.data.splits import prepare

    root = tmp_path_factory.mktemp("sorted")
    return prepare(sorted_copy(surrogate_h5, root / "g10_sorted.h5"), root / "prepared", seed=0)


def _env() -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }


def sft(data_dir, model_dir, out_dir, *extra) -> subprocess.CompletedProcess:
    """`python recipes/sft.py` on the tiny config: 2 steps on 16 rows at 56 px."""
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "sft.py"),
        "--config",
        str(CONFIG),
        "--data_dir",
        str(data_dir),
        "--model_name_or_path",
        str(model_dir),
        "--output_dir",
        str(out_dir),
        "--max_steps",
        "2",
        "--max_train_samples",
        "16",
        "--image_size",
        "56",
        "--save_strategy",
        "no",
        *extra,
    ]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def recipe_runs(sorted_prepared, tiny_model_dir, tmp_path_factory):
    """Every recipe run the tests below read, two at a time (one torch thread each)."""
    root = tmp_path_factory.mktemp("recipes")
    runs = {
        "refused": (root / "refused", ["--prompt_template", LEAKY]),
        "leak": (root / "leak", ["--prompt_template", LEAKY, *OVERRIDE]),
        # The same pretrained weights and the same data order (data_seed) whatever --seed says: one run, twice.
        "s1": (root / "seeds" / "s1", ["--seed", "1", "--data_seed", "0"]),
        "s2": (root / "seeds" / "s2", ["--seed", "2", "--data_seed", "0"]),
        # The clean default: the standard template, its own seed.
        "clean": (root / "clean", ["--seed", "3"]),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(sft, sorted_prepared, tiny_model_dir, out, *extra) for name, (out, extra) in runs.items()
        }
        return {name: (f.result(), runs[name][0]) for name, f in futures.items()}


def check_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("astroreason: error:")]


# --- the recipe -------------------------------------------------------------------------------------------------------


def test_recipe_refuses_the_leak_and_records_the_override(recipe_runs):
    refused, out = recipe_runs["refused"]
    assert refused.returncode == 1
    errors = error_lines(refused.stderr)
    assert len(errors) == 1 and "{row_index} is a dataset column" in errors[0] and "--allow_prompt_fields" in errors[0]
    assert not out.exists()  # refused before the model was loaded: no checkpoint, no record

    leak, out = recipe_runs["leak"]
    check_ok(leak)
    lint = json.loads((out / "prompt_lint.json").read_text())
    assert lint["template"] == LEAKY and lint["findings"] == []
    assert lint["override"] == {"allow": ["row_index"], "reason": "planted leak: the integrity pipeline test"}
    # Both the template field and the rendered texts (own row index in 100 % of prompts) were found, and allowed.
    assert {(f["kind"], f["name"]) for f in lint["overridden"]} == {
        ("template_field", "row_index"),
        ("text", "row_index"),
    }
    fingerprint = json.loads((out / "fingerprint.json").read_text())
    assert fingerprint["weights_sha256"] and fingerprint["first_batch_sha256"] and fingerprint["n_forwards"] >= 1
    assert fingerprint["extra"]["prompt_template"] == LEAKY and (out / "model.safetensors").is_file()


def test_override_without_a_reason_is_refused(sorted_prepared, tiny_model_dir, tmp_path):
    result = sft(
        sorted_prepared,
        tiny_model_dir,
        tmp_path / "run",
        "--prompt_template",
        LEAKY,
        "--allow_prompt_fields",
        "row_index",
    )
    assert result.returncode == 2
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "lint override: give a reason" in errors[0]
    assert not (tmp_path / "run").exists()


def test_clean_recipe_passes_the_lint_and_the_audit(recipe_runs, tiny_model_dir, capsys):
    clean, out = recipe_runs["clean"]
    check_ok(clean)
    lint = json.loads((out / "prompt_lint.json").read_text())
    assert lint["findings"] == lint["overridden"] == [] and lint["override"] is None
    assert lint["template"] == IMAGE_TEMPLATE and lint["n_prompts"] == 16
    assert not (out / SUSPECT_FILE).exists()  # no training alarm on a 2-step run

    # The audit of the run: data probes on its recorded data and template, then the model controls on its model.
    assert cli(["audit", str(out), "--max-samples", "8", "--permutation-steps", "2", "--json"]) == 0
    probes = {p["name"]: p for p in json.loads(capsys.readouterr().out)["probes"]}
    assert {k: p["status"] for k, p in probes.items()} == {
        "row_order": "pass",
        "duplicates": "pass",
        "metadata": "pass",
        "blank_input": "pass",
        "label_permutation": "pass",
        "random_reward": "skip",  # an SFT run: the random-reward control is GRPO's
        "seeds": "skip",
    }
    permutation = probes["label_permutation"]
    assert permutation["details"]["n"] == 8 and "after 2 steps on permuted labels" in permutation["summary"]
    assert permutation["details"]["root_base"] == str(tiny_model_dir)  # retrained from the base, not the checkpoint


def test_audit_of_the_overridden_run_catches_the_leak(recipe_runs, tiny_model_dir, capsys):
    out = recipe_runs["leak"][1]
    assert cli(["audit", str(out), "--no-controls", "--json"]) == 1
    probes = {p["name"]: p for p in json.loads(capsys.readouterr().out)["probes"]}
    # The metadata probe reads the run's recorded (leaky) template: the prompt alone names the class.
    carried = probes["metadata"]["details"]["carried"]["image"]
    assert probes["metadata"]["status"] == "fail" and carried["accuracy"] > 0.6 and carried["p_value"] < 1e-6
    assert probes["row_order"]["status"] == "pass" and probes["row_order"]["details"]["source_sorted_by_class"]

    # With the model controls: failed by the metadata probe again. The permutation control reruns the recorded
    # recipe (its leaky template and override too) from the run's base, the tiny model, not from the checkpoint.
    assert cli(["audit", str(out), "--max-samples", "8", "--permutation-steps", "2", "--json"]) == 1
    probes = {p["name"]: p for p in json.loads(capsys.readouterr().out)["probes"]}
    assert probes["metadata"]["status"] == "fail"
    permutation = probes["label_permutation"]
    assert permutation["status"] == "pass" and permutation["details"]["root_base"] == str(tiny_model_dir)
    assert permutation["details"]["chain"] == [str(out)] and permutation["details"]["steps"] == 2


def test_forced_identical_seeds_are_flagged(recipe_runs, tmp_path, capsys):
    for name in ("s1", "s2", "clean"):
        check_ok(recipe_runs[name][0])
    seeds = recipe_runs["s1"][1].parent
    assert cli(["audit", str(seeds), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "sweep"
    (seed_probe,) = [p for p in report["probes"] if p["name"] == "seeds"]
    assert seed_probe["status"] == "fail"
    assert [p["kind"] for p in seed_probe["details"]["problems"]] == ["same_fingerprint"]

    # No false alarm: the same configuration with a different seed and its own data order has its own fingerprint.
    for name in ("s1", "clean"):
        (tmp_path / name).mkdir()
        shutil.copy(recipe_runs[name][1] / "fingerprint.json", tmp_path / name)
    assert cli(["audit", str(tmp_path), "--json"]) == 0
    (seed_probe,) = [p for p in json.loads(capsys.readouterr().out)["probes"] if p["name"] == "seeds"]
    assert seed_probe["status"] == "pass"


# --- the evaluation ---------------------------------------------------------------------------------------------------


def eval_args(model, data_dir, out, project, **overrides) -> list[str]:
    args = {
        "model": model,
        "data_dir": data_dir,
        "output_dir": out,
        "ledger": Path(project) / "spend.jsonl",
        "prices": PRICES,
        "max_samples": 6,
        "batch_size": 6,
        "max_new_tokens": 4,
        "n_boot": 50,
        "image_size": 56,
    }
    args.update(overrides)
    return ["eval"] + [x for k, v in args.items() for x in (f"--{k}", str(v))]


def result_line(out: str) -> dict:
    (line,) = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    return json.loads(line[len("RESULT ") :])


def test_eval_refuses_the_leak_and_records_the_override(recipe_runs, sorted_prepared, tmp_path, capsys):
    leak_model = recipe_runs["leak"][1]
    args = eval_args(leak_model, sorted_prepared, tmp_path / "eval", tmp_path / "project", prompt_template=LEAKY)
    assert cli(args) == 1
    captured = capsys.readouterr()
    errors = error_lines(captured.err)
    assert len(errors) == 1 and "{row_index} is a dataset column" in errors[0]
    assert not (tmp_path / "project" / "results.tsv").exists() and not (tmp_path / "eval" / "result.json").exists()

    assert cli(args + OVERRIDE + ["--description", "planted leak"]) == 0
    summary = result_line(capsys.readouterr().out)
    assert summary["integrity"] == "keep" and summary["n"] == 6
    lint = json.loads((tmp_path / "eval" / "prompt_lint.json").read_text())
    assert lint["override"]["allow"] == ["row_index"] and lint["split"] == "test" and lint["n_prompts"] == 6
    (row,) = verify(tmp_path / "project")  # the results ledger beside the spend ledger, hash chain intact
    assert row["status"] == "keep" and row["modality"] == "image"
    # Named once, though both the evaluation's record and its model's training record carry the override.
    assert row["description"] == "planted leak LINT OVERRIDE (row_index): planted leak: the integrity pipeline test"
    result = json.loads((tmp_path / "eval" / "result.json").read_text())
    assert result["integrity"]["row_sha256"] == row["row_sha256"] and result["integrity"]["status"] == "keep"


def test_clean_eval_is_kept(recipe_runs, prepared_dir, tmp_path, capsys):
    """The default prompts of the shuffled surrogate, the clean run's model: lint passes, one `keep` row."""
    model = recipe_runs["clean"][1]
    assert cli(eval_args(model, prepared_dir, tmp_path / "eval", tmp_path / "project")) == 0
    assert result_line(capsys.readouterr().out)["integrity"] == "keep"
    lint = json.loads((tmp_path / "eval" / "prompt_lint.json").read_text())
    assert lint["findings"] == lint["overridden"] == [] and lint["template"] == IMAGE_TEMPLATE
    (row,) = verify(tmp_path / "project")
    assert row["status"] == "keep" and "LINT OVERRIDE" not in row["description"] and "SUSPECT" not in row["description"]
    assert not (tmp_path / "eval" / SUSPECT_FILE).exists()


def number_reader(data_dir):
    """A real classifier of the first number in a prompt, trained (transformers.Trainer) on the leaky train prompts;
    it answers like a chat model: `<answer>CLASS</answer>`."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from astroreason.data.splits import load_manifest
    from astroreason.integrity.lint import render_text, split_metadata

    meta = split_metadata(data_dir, "train")
    texts = [render_text(LEAKY, ImageArm, {k: v[i] for k, v in meta.items()}) for i in range(len(meta["row_index"]))]
    max_value = float(load_manifest(data_dir).n_source_rows)
    dataset = Dataset.from_dict({"x": prompt_features(texts, max_value).tolist(), "labels": meta["label"].tolist()})
    model = PromptNumberModel()
    args = TrainingArguments(
        output_dir=str(Path(data_dir).parent / "reader"),
        max_steps=200,
        per_device_train_batch_size=64,
        learning_rate=0.05,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        lr_scheduler_type="constant",
    )
    Trainer(model=model, args=args, train_dataset=dataset).train()
    backend = PromptNumberBackend(model, max_value)
    return lambda messages: backend.generate([messages])[0].text


def test_ceiling_gate_through_eval(sorted_prepared, tmp_path, capsys):
    """A served model that reads the leaked row index scores above the ceiling: result.json and the RESULT line are
    written, the run is marked suspect, the ledger row says so, exit 1. The clean prompts to the same server: kept."""
    from evalkit import ScriptedServer

    server = ScriptedServer(answer=number_reader(sorted_prepared))
    project = tmp_path / "project"
    served = {
        "backend": "openai",
        "base_url": server.url,
        "price_input_per_million": 0.0,
        "price_output_per_million": 0.0,
        "max_samples": 100,
        "concurrency": 2,
        "request_timeout": 30,
    }
    try:
        leaky = eval_args("leaky-reader", sorted_prepared, tmp_path / "leaky", project, prompt_template=LEAKY, **served)
        assert cli(leaky + OVERRIDE) == 1
        captured = capsys.readouterr()
        summary = result_line(captured.out)
        errors = error_lines(captured.err)
        clean = eval_args("leaky-reader", sorted_prepared, tmp_path / "clean", project, **served)
        assert cli(clean) == 0
        clean_summary = result_line(capsys.readouterr().out)
    finally:
        server.stop()

    assert summary["status"] == "complete" and summary["accuracy"] > 0.95 and summary["integrity"] == "suspect"
    assert len(errors) == 1 and "SUSPECT" in errors[0] and "above the ceiling 0.9500" in errors[0]
    result = json.loads((tmp_path / "leaky" / "result.json").read_text())
    assert result["integrity"]["status"] == "suspect" and result["metrics"]["accuracy"] == summary["accuracy"]
    suspect = json.loads((tmp_path / "leaky" / SUSPECT_FILE).read_text())
    assert [r["rule"] for r in suspect["reasons"]] == ["ceiling"]

    assert clean_summary["integrity"] == "keep" and clean_summary["accuracy"] < 0.5
    rows = verify(project)
    assert [r["status"] for r in rows] == ["suspect", "keep"]
    assert "LINT OVERRIDE (row_index)" in rows[0]["description"] and "SUSPECT: accuracy" in rows[0]["description"]
    assert "**SUSPECT**" in (project / "experiment_log.md").read_text()


def test_ceiling_is_configurable_and_checked(prepared_dir, tiny_model_dir, tmp_path, capsys):
    assert cli(eval_args(tiny_model_dir, prepared_dir, tmp_path / "eval", tmp_path, ceiling=1.5)) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "ceiling: expected a number in (0, 1]" in errors[0]

"""The planted leak, end to end: a class-sorted surrogate with the row index in the prompt.

Refused by the lint; with an explicit override it is caught by the metadata probe, by the training alarms of a real
training on the leaky prompts, by the blank-input control and by the ceiling gate on that training's result; and the
same data without the leak passes every one of them (no false alarm).

The trained model is `PromptNumberModel` (tests/integrity_helpers.py), a linear classifier over a thermometer code
of the first number in the prompt, trained by `transformers.Trainer`. A tiny Qwen2.5-VL SFT on the same leaky
prompts reached only 0.38 test accuracy after 100 steps (317 s on this shared CPU), far from the ceiling, so the
Qwen model is not the one trained here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import Dataset
from integrity_helpers import PromptNumberBackend, PromptNumberModel, prompt_features, sorted_copy
from transformers import Trainer, TrainingArguments

from astroreason.arms import ImageArm
from astroreason.audit.probes import RunSpec, probe_blank_input
from astroreason.cli import main as cli
from astroreason.data.splits import load_manifest, load_split, prepare
from astroreason.errors import CheckFailed
from astroreason.evaluation.metrics import classification_metrics
from astroreason.integrity import SUSPECT_FILE
from astroreason.integrity.alarms import TrainingAlarms
from astroreason.integrity.fingerprint import RunFingerprint
from astroreason.integrity.ledger import record_result, verify
from astroreason.integrity.lint import LintOverride, check_dataset, check_template, render_text, split_metadata
from astroreason.io import write_json_atomic
from astroreason.prompts import IMAGE_TEMPLATE
from astroreason.provenance import provenance

LEAKY = "Galaxy number {row_index} of the catalogue.\n" + IMAGE_TEMPLATE
CLEAN = IMAGE_TEMPLATE


@pytest.fixture(scope="module")
def sorted_prepared(surrogate_h5, tmp_path_factory):
    root = tmp_path_factory.mktemp("sorted")
    source = sorted_copy(surrogate_h5, root / "g10_sorted.h5")
    return prepare(source, root / "prepared", seed=0)


def split_prompts(data_dir, split, template):
    """The image arm's dataset of a split, with its prompts rendered from `template` (a deliberate experiment)."""
    meta = split_metadata(data_dir, split)
    rows = [{k: v[i] for k, v in meta.items()} for i in range(len(meta["row_index"]))]
    view = load_split(data_dir, split)
    prompts = [[{"role": "user", "content": render_text(template, ImageArm, r)}] for r in rows]
    return Dataset.from_dict({"prompt": prompts, "label": view["label"]})


def test_sorted_copy_splits_like_the_shuffled_file(sorted_prepared, prepared_dir):
    sorted_manifest, shuffled_manifest = load_manifest(sorted_prepared), load_manifest(prepared_dir)
    labels = np.concatenate([np.asarray(load_split(sorted_prepared, s)["label"]) for s in ("train", "val", "test")])
    assert sorted_manifest.split_sha256 == shuffled_manifest.split_sha256  # same galaxies, same splits, same order
    assert len(labels) > 200


def test_lint_refuses_the_leak(sorted_prepared):
    with pytest.raises(CheckFailed, match=r"template field \{row_index\} is a dataset column"):
        check_template(ImageArm, LEAKY)
    assert check_template(ImageArm, LEAKY, override=LintOverride(("row_index",), "test")).overridden
    leaky = split_prompts(sorted_prepared, "train", LEAKY)
    # The template check alone refuses; the rendered texts are caught as well, with the template not given.
    with pytest.raises(CheckFailed, match=r"own row's row_index"):
        check_dataset(leaky, data_dir=sorted_prepared, split="train", arm=ImageArm, template=CLEAN)
    clean = split_prompts(sorted_prepared, "train", CLEAN)
    report = check_dataset(clean, data_dir=sorted_prepared, split="train", arm=ImageArm)
    assert report.findings == [] and report.overridden == []


def test_audit_metadata_probe_catches_the_leak(sorted_prepared, tmp_path, capsys):
    leaky = tmp_path / "leaky.txt"
    leaky.write_text(LEAKY)
    assert cli(["audit", str(sorted_prepared), "--template", str(leaky), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    probes = {p["name"]: p for p in report["probes"]}
    assert probes["metadata"]["status"] == "fail"
    carried = probes["metadata"]["details"]["carried"]["image"]
    # A class-sorted file: the row index alone names the class far above the ~15 % majority rate.
    assert carried["accuracy"] > 0.6 and carried["p_value"] < 1e-6
    assert probes["row_order"]["status"] == "pass" and probes["row_order"]["details"]["source_sorted_by_class"]
    assert probes["duplicates"]["status"] == "pass"

    # The same data without the leak: every probe passes (the row index predicts the label, and is only noted).
    assert cli(["audit", str(sorted_prepared), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {p["status"] for p in report["probes"]} == {"pass"}
    alone = [p for p in report["probes"] if p["name"] == "metadata"][0]["details"]["columns_alone"]
    assert alone["row_index"]["beats"]


def train_prompt_model(data_dir, template, out_dir, *, steps=200):
    """Train PromptNumberModel on the train split's prompts with a real Trainer, alarms and fingerprint attached."""
    meta = split_metadata(data_dir, "train")
    max_value = float(load_manifest(data_dir).n_source_rows)
    train = split_prompts(data_dir, "train", template)
    texts = [p[0]["content"] for p in train["prompt"]]
    dataset = Dataset.from_dict({"x": prompt_features(texts, max_value).tolist(), "labels": train["label"]})
    model = PromptNumberModel()
    alarms = TrainingAlarms()
    args = TrainingArguments(
        output_dir=str(out_dir),
        max_steps=steps,
        per_device_train_batch_size=64,
        learning_rate=0.05,
        logging_steps=20,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        lr_scheduler_type="constant",
    )
    Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        callbacks=[alarms, RunFingerprint(extra={"data_dir": data_dir, "modality": "image"})],
    ).train()
    assert len(meta["row_index"]) == len(dataset)
    return PromptNumberBackend(model, max_value), alarms


def evaluate_to_result(backend, data_dir, template, out_dir) -> dict:
    """Score the model on the test split and write `result.json` in the evaluation harness's format."""
    from astroreason.data.galaxy10 import DECALS_CLASSES
    from astroreason.rewards import parse_answer

    test = split_prompts(data_dir, "test", template)
    predictions = [parse_answer(g.text, DECALS_CLASSES) for g in backend.generate(test["prompt"])]
    config = {
        "model": str(out_dir),
        "data_dir": str(data_dir),
        "split": "test",
        "modality": "image",
        "seed": 0,
        "output_dir": str(out_dir),
    }
    result = {
        "config": config,
        "provenance": provenance(config, data_dir=str(data_dir), seed=0),
        "metrics": classification_metrics(test["label"], predictions, 10, n_boot=200),
    }
    write_json_atomic(out_dir / "result.json", result)
    return result


def test_leaky_training_is_caught_and_clean_training_is_not(sorted_prepared, tmp_path, capsys):
    ledger = tmp_path / "ledger"
    runs = {}
    for name, template, override in (
        ("leaky", LEAKY, LintOverride(("row_index",), "planted leak: the integrity test")),
        ("clean", CLEAN, None),
    ):
        out = tmp_path / name
        train = split_prompts(sorted_prepared, "train", template)
        report = check_dataset(
            train,
            data_dir=sorted_prepared,
            split="train",
            arm=ImageArm,
            template=template,
            override=override,
            record_dir=out,
        )
        backend, alarms = train_prompt_model(sorted_prepared, template, out)
        result = evaluate_to_result(backend, sorted_prepared, template, out)
        runs[name] = (out, report, alarms, result, backend)

    # The leak: the override is recorded, the loss collapses (alarm), accuracy passes the ceiling (gate), the model
    # answers from the prompt alone (blank-input control), and the ledger records it as suspect, never as a success.
    out, report, alarms, result, backend = runs["leaky"]
    assert {f.name for f in report.overridden} == {"row_index"}  # the template field and the rendered texts
    assert json.loads((out / "prompt_lint.json").read_text())["override"]["reason"].startswith("planted leak")
    assert {"loss_near_zero", "loss_abrupt_fall"} & {a["rule"] for a in alarms.alarms}
    assert result["metrics"]["accuracy"] > 0.95
    assert cli(["gate", str(out / "result.json"), "--ledger", str(ledger), "--description", "leaky"]) == 1
    suspect = json.loads((out / SUSPECT_FILE).read_text())
    assert "ceiling" in {r["rule"] for r in suspect["reasons"]} and len(suspect["reasons"]) >= 2
    blank = probe_blank_input(RunSpec(model="", data_dir=str(sorted_prepared), template=LEAKY), backend=backend)
    assert blank.status == "fail" and blank.details["accuracy"] > 0.9

    # Without the leak: no alarm, below the ceiling, the blank-input control at the majority rate, a kept row.
    out, report, alarms, result, backend = runs["clean"]
    assert report.overridden == [] and alarms.alarms == [] and not (out / SUSPECT_FILE).exists()
    assert result["metrics"]["accuracy"] <= result["metrics"]["majority_rate"] + 0.05
    assert cli(["gate", str(out / "result.json"), "--ledger", str(ledger), "--description", "clean"]) == 0
    blank = probe_blank_input(RunSpec(model="", data_dir=str(sorted_prepared), template=CLEAN), backend=backend)
    assert blank.status == "pass"

    rows = verify(ledger)
    assert [r["status"] for r in rows] == ["suspect", "keep"]
    assert "LINT OVERRIDE (row_index)" in rows[0]["description"] and "SUSPECT" in rows[0]["description"]
    log = (ledger / "experiment_log.md").read_text()
    assert "**SUSPECT**" in log and "1 keep" in log
    capsys.readouterr()

    # A second record of the leaky result through the library call the evaluation uses: still suspect.
    row = record_result(ledger, runs["leaky"][3], run_dir=runs["leaky"][0], description="again")
    assert row["status"] == "suspect"

"""The demo's learning recipe at a small scale: the image must matter, the codes must matter, and the demo refuses
bad output folders.

A small run of the demo's own stages (surrogate files, split, codec, the warm starts on the disjoint file, SFT with
per-part learning rates) and then each trained model is asked about the real test galaxies and about the same
galaxies' inputs shuffled among them (and, for the image arm, blank images). If a model stopped looking at its input
(a broken image path, code tokens split into pieces, a warm start that learns nothing, a recipe that only learns the
class prior), the accuracies are the same.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from astroreason.demo import Demo, DemoConfig

SMALL = DemoConfig(
    n_galaxies=700,
    n_pretrain=700,
    fractions=(0.7, 0.05, 0.25),
    pretrain_steps=120,
    sft_steps=100,
    sft_batch=16,
    check=False,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import torch

    torch.set_num_threads(SMALL.threads)
    demo = Demo(tmp_path_factory.mktemp("demo"), SMALL)
    demo.data()
    assert demo.shared_galaxies() == 0
    demo.tokens()
    records = demo.models()
    return demo, records, {"image": demo.sft("image"), "tokens": demo.sft("tokens")}


def _accuracy(backend, rows, images) -> float:
    from astroreason.data.galaxy10 import DECALS_CLASSES
    from astroreason.rewards import parse_answer

    generations = backend.generate([r["prompt"] for r in rows], images)
    return float(np.mean([parse_answer(g.text, DECALS_CLASSES) == r["label"] for g, r in zip(generations, rows)]))


def test_image_matters(trained):
    from astroreason.evaluation.backends import SamplingSettings, TransformersBackend
    from astroreason.training import galaxy_dataset

    demo, records, models = trained
    record, model_dir = records["image"], models["image"]
    # The tower alone learned something on its own held-out galaxies (well above the majority rate).
    assert record["held_out_accuracy"] > record["held_out_majority_rate"] + 0.1, record
    rows = list(galaxy_dataset(demo.script_args("image"), "test", with_completion=False))
    assert len(rows) >= 150
    backend = TransformersBackend.from_pretrained(str(model_dir), SamplingSettings(max_new_tokens=16), batch_size=32)
    real = [r["image"] for r in rows]
    shuffled = [real[i] for i in np.random.default_rng(0).permutation(len(real))]
    blank = [Image.new("RGB", real[0].size)] * len(real)
    acc = {
        name: _accuracy(backend, rows, images)
        for name, images in (("real", real), ("shuffled", shuffled), ("blank", blank))
    }
    majority = np.bincount([r["label"] for r in rows]).max() / len(rows)
    print(json.dumps({**acc, "majority": majority}))
    assert acc["real"] > acc["shuffled"] + 0.08, acc
    assert acc["real"] > acc["blank"] + 0.08, acc
    assert acc["real"] > majority + 0.05, (acc, majority)


def test_codes_matter(trained):
    import torch
    from safetensors.torch import load_file

    from astroreason.arms import ArmSettings, build_arm
    from astroreason.evaluation.backends import SamplingSettings, TransformersBackend
    from astroreason.tokens import load_codec
    from astroreason.tokens.render import code_token

    demo, records, models = trained
    record = records["tokens"]
    assert record["held_out_accuracy"] > record["held_out_majority_rate"] + 0.1, record
    args = demo.script_args("tokens")
    arm = build_arm(
        ArmSettings(data_dir=args.data_dir, modality="tokens", codec=args.codec, rendering="special"), "test"
    )
    backend = TransformersBackend.from_pretrained(
        str(models["tokens"]), SamplingSettings(max_new_tokens=16), batch_size=32
    )
    # One LM token per code: the checkpoint's own tokenizer reads each <|g_N|> whole.
    codes_text = arm.view[0]["tokens_text"]
    cells = int(np.prod(load_codec(args.codec).grid_shape))
    assert len(backend.processor.tokenizer(codes_text, add_special_tokens=False).input_ids) == cells
    # The pretrained code rows stayed as they were (held fixed), while the rest of the language model learnt.
    before, after = load_file(demo.model / "model.safetensors"), load_file(models["tokens"] / "model.safetensors")
    name = next(k for k in after if k.endswith("embed_tokens.weight"))
    ids = backend.processor.tokenizer.convert_tokens_to_ids(
        [code_token(i) for i in range(load_codec(args.codec).vocab_size)]
    )
    assert torch.equal(after[name][ids], before[name][ids])
    assert not torch.equal(after[name], before[name])
    rows = arm.rows()
    acc = {
        name: _accuracy(backend, prompts, None)
        for name, prompts in (("real", rows), ("shuffled", arm.without_galaxy(seed=0)))
    }
    majority = np.bincount(arm.labels).max() / len(arm.labels)
    print(json.dumps({**acc, "majority": majority}))
    assert acc["real"] > acc["shuffled"] + 0.08, acc
    assert acc["real"] > majority + 0.05, (acc, majority)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "astroreason.cli", "demo", *args], capture_output=True, text=True)


def test_refuses_a_file_as_out(tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("keep me\n")
    proc = _cli("--out", str(target))
    assert proc.returncode == 2, proc.stderr
    assert "is a file" in proc.stderr and "Traceback" not in proc.stderr
    assert target.read_text() == "keep me\n"


def test_refuses_a_folder_of_another_demo(tmp_path):
    (tmp_path / "demo_config.json").write_text(json.dumps({"n_galaxies": 1}))
    proc = _cli("--out", str(tmp_path), "--quick")
    assert proc.returncode == 2, proc.stderr
    assert "other settings" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "demo_config.json").read_text()) == {"n_galaxies": 1}


def test_the_quick_zoom_demo_reports_every_arm_from_its_results(tmp_path):
    """`astroreason demo --quick --zoom`: six arms trained and evaluated, the zoom arms as zoom episodes; every
    figure of the summary is its arm's `result.json` (a smoke run: its claims are not checked)."""
    proc = _cli("--quick", "--zoom", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "demo_result.json").read_text())
    assert sorted(summary["arms"]) == [
        "image",
        "image_matched",
        "image_zoom",
        "tokens",
        "tokens_matched",
        "tokens_zoom",
    ]
    assert summary["config"]["matched_image_size"] == 168 and summary["config"]["matched_token_crop"] == 0.25
    assert summary["config"]["render_size"] == 256 and summary["config"]["image_size"] == 112
    for arm, figures in summary["arms"].items():
        result = json.loads((tmp_path / "eval" / arm / "result.json").read_text())
        assert result["config"]["zoom"] is arm.endswith("_zoom")
        assert result["config"]["image_size"] == (168 if arm == "image_matched" else 112)
        assert result["config"]["token_crop"] == (0.25 if arm == "tokens_matched" else None)
        assert figures["accuracy"] == result["metrics"]["accuracy"]
        assert (
            figures["tokens_per_galaxy"]
            == (result["prompt_tokens"] + result["completion_tokens"]) / result["metrics"]["n"]
        )
        if arm.endswith("_zoom"):
            assert figures["zoom"] == result["zoom"] and summary["chooses_when_to_zoom"][arm] == (
                result["zoom"]["homogenisation"] < 0.9
            )
        assert f'"{arm}_accuracy": {result["metrics"]["accuracy"]}' in proc.stdout
    report = (tmp_path / "report" / "report.md").read_text()
    assert "no zoom vs zoom (image)" in report and "no zoom vs zoom (tokens)" in report
    comparisons = json.loads((tmp_path / "report" / "report.json").read_text())["comparisons"]
    # What each stage adds: every arm's start, SFT and GRPO models scored on the same galaxies, each stage paired
    # with the one before it; the RESULT line's gains are the report's.
    result_line = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT ") :])
    stages = json.loads((tmp_path / "report" / "report.json").read_text())["stages"]
    assert stages == summary["stages"] and sorted(stages) == sorted(summary["arms"])
    for arm, rows in stages.items():
        assert [r["stage"] for r in rows] == ["start (warm start)", "SFT", "GRPO"]
        for row, name in zip(rows, (f"{arm}_start", f"{arm}_sft", arm)):
            result = json.loads((tmp_path / "eval" / name / "result.json").read_text())
            assert row["accuracy"] == result["metrics"]["accuracy"]
        for before, row, stage in zip(rows, rows[1:], ("sft", "grpo")):
            assert row["gain"] == pytest.approx(row["accuracy"] - before["accuracy"])
            assert result_line[f"{arm}_{stage}_gain"] == round(100 * row["gain"], 2)
            assert result_line[f"{arm}_{stage}_gain_p"] == row["mcnemar_p_value"]
    # Each zoom arm against its modality's arm without zoom at the same budget, on the same galaxies.
    for arm in ("image_zoom", "tokens_zoom"):
        pair = comparisons[f"{arm} vs {arm.split('_')[0]}_matched"]
        assert result_line[f"{arm}_vs_matched"] == round(100 * pair["accuracy_difference"], 2)
        assert result_line[f"{arm}_vs_matched_p"] == pair["mcnemar_p_value"] and pair["n"] == summary["arms"][arm]["n"]
    # When each zoom arm zoomed, before GRPO (its warm start, the SFT stage) and after: read from the episodes.
    for arm in ("image_zoom", "tokens_zoom"):
        for name, key in ((f"{arm}_sft", f"{arm}_homogenisation_before_grpo"), (arm, f"{arm}_homogenisation")):
            records = [json.loads(x) for x in (tmp_path / "eval" / name / "predictions.jsonl").read_text().splitlines()]
            zoomed = [r["zoom"]["valid_calls"] > 0 for r in records]
            assert result_line[key] == max(sum(zoomed), len(zoomed) - sum(zoomed)) / len(zoomed)
        labels = sorted({r["label"] for r in records})
        assert result_line[f"{arm}_zoom_rate_per_class"] == {
            str(c): np.mean([z for z, r in zip(zoomed, records) if r["label"] == c]) for c in labels
        }
    assert "## When the model zoomed (zoom rate per true class)" in report
    # The image zoom arm's zooming gap: its GRPO model without zoom, on the 112 px first view and the 252 px full
    # view of the same galaxies; the RESULT line's gap is the report's, the difference of the two results.
    gap = summary["zooming_gaps"]["image_zoom"]
    accuracy = {}
    for view, size in (("first", 112), ("full", 252)):
        result = json.loads((tmp_path / "eval" / f"image_zoom_{view}_view" / "result.json").read_text())
        assert (result["config"]["zoom"], result["config"]["image_size"]) == (False, size)
        assert result["config"]["model"] == str(tmp_path / "image_zoom" / "grpo")
        assert gap["views"][view]["accuracy"] == result["metrics"]["accuracy"]
        accuracy[view] = result["metrics"]["accuracy"]
    assert gap["gap"] == pytest.approx(accuracy["full"] - accuracy["first"])
    assert result_line["image_zoom_zooming_gap"] == round(100 * gap["gap"], 2)
    assert "## The zooming gap" in report and list(summary["zooming_gaps"]) == ["image_zoom"]
    # The report's figures as LaTeX macros and a Markdown table, one per value of values.json.
    values = json.loads((tmp_path / "report" / "values.json").read_text())
    tex = (tmp_path / "report" / "macros.tex").read_text()
    assert sorted(re.findall(r"^\\newcommand\{\\(\w+)\}", tex, flags=re.M)) == sorted(v["name"] for v in values)
    assert (tmp_path / "report" / "macros.md").read_text().count("| `\\") == len(values)

"""Two runs on the same galaxies (image arm and token arm, answered by a real scripted server on 127.0.0.1) -> the
paired comparison agrees with the per-sample files, the report regenerates to the same page, and every number
carries its provenance."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from evalkit import ScriptedServer, build_codec
from scipy.stats import binomtest

from astroreason.cli import main
from astroreason.data.galaxy10 import DECALS_CLASSES


@pytest.fixture(scope="module")
def two_runs(prepared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    codec = build_codec(prepared_dir, root / "codec")
    common = [
        "--backend",
        "openai",
        "--data_dir",
        str(prepared_dir),
        "--split",
        "test",
        "--max_new_tokens",
        "16",
        "--price_input_per_million",
        "0.5",
        "--price_output_per_million",
        "1.5",
        "--image_tokens_bound",
        "64",
        "--ledger",
        str(root / "spend.jsonl"),
        "--max_dollars",
        "1",
        "--n_boot",
        "300",
        "--concurrency",
        "2",
    ]
    runs = {}
    for name, seed, extra in (
        ("image", 0, ["--modality", "image", "--image_size", "56"]),
        ("tokens", 1, ["--modality", "tokens", "--codec", str(codec)]),
    ):
        server = ScriptedServer(answer_seed=seed)
        try:
            assert (
                main(
                    [
                        "eval",
                        "--model",
                        f"scripted-{name}",
                        "--base_url",
                        server.url,
                        *common,
                        *extra,
                        "--output_dir",
                        str(root / name),
                    ]
                )
                == 0
            )
        finally:
            server.stop()
        runs[name] = root / name
    return root, runs


def _predictions(run_dir):
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


def test_comparison_matches_the_per_sample_files(two_runs, capsys):
    root, runs = two_runs
    assert main(["report", str(runs["image"]), str(runs["tokens"]), "--out", str(root / "report")]) == 0
    report = json.loads((root / "report" / "report.json").read_text())
    comparison = report["comparisons"]["image vs tokens"]
    a, b = _predictions(runs["image"]), _predictions(runs["tokens"])
    assert [r["label"] for r in a] == [r["label"] for r in b]  # the same galaxies, in the same order
    right_a = np.array([r["prediction"] == r["label"] for r in a])
    right_b = np.array([r["prediction"] == r["label"] for r in b])
    only_a, only_b = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    assert (comparison["only_a_correct"], comparison["only_b_correct"]) == (only_a, only_b)
    assert only_a + only_b > 0  # the scripted answers differ between the arms: a real test of the p-value
    assert comparison["mcnemar_p_value"] == pytest.approx(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    difference = right_a.mean() - right_b.mean()
    assert comparison["accuracy_difference"] == pytest.approx(difference)
    lo, hi = comparison["difference_interval"]
    assert lo <= difference <= hi and lo < hi
    # The page shows the same figures, and every run's provenance.
    page = (root / "report" / "report.md").read_text()
    assert f"{comparison['mcnemar_p_value']:.3g}" in page
    for run_dir in runs.values():
        result = json.loads((run_dir / "result.json").read_text())
        p = result["provenance"]
        assert p["commit"] and p["dirty"] in (True, False) and p["manifest_sha256"] and p["data_sha256"]
        for value in (p["commit"][:12], p["config_sha256"][:12], p["manifest_sha256"][:12], p["data_sha256"][:12]):
            assert value in page
        assert f"{100 * result['metrics']['accuracy']:.1f}" in page
    for figure in ("confusion.png", "per_class_recall.png", "accuracy_vs_cost.png"):
        assert (root / "report" / figure).stat().st_size > 1000


def assert_figures_name_their_runs(report_dir, expected):
    """Each PNG of the report carries its provenance (`figure_provenance`): the runs drawn in it, as `expected`
    (figure name -> run names) says, and the sha256 of each of their files, equal to the file's on disk now."""
    from astroreason.evaluation.figure_provenance import read_figure_provenance

    assert sorted(p.name for p in report_dir.glob("*.png")) == sorted(expected)
    for figure, names in expected.items():
        record = read_figure_provenance(report_dir / figure)
        assert [r["run"] for r in record["runs"]] == names, figure
        for run in record["runs"]:
            assert set(run["files_sha256"]) >= {"result.json", "predictions.jsonl"}
            for name, sha in run["files_sha256"].items():
                # The run's directory is written relative to the report (no path of this machine).
                assert not Path(run["dir"]).is_absolute()
                assert sha == hashlib.sha256((report_dir / run["dir"] / name).read_bytes()).hexdigest(), (figure, name)


def test_report_regenerates_identically_and_draws_training_curves(two_runs, tmp_path):
    root, runs = two_runs
    first, second = tmp_path / "r1", tmp_path / "r2"
    for out in (first, second):
        assert main(["report", str(runs["image"]), str(runs["tokens"]), "--out", str(out), "--tex", "--macros"]) == 0
    written = sorted(p.name for p in first.iterdir())
    assert {"report.md", "report.json", "report.html", "values.json", "macros.tex", "macros.md"} <= set(written)
    assert written == sorted(p.name for p in second.iterdir())
    for name in written:  # every file, the figures with their provenance chunks included, byte for byte
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert not (first / "training_curves.png").exists()
    both = ["image", "tokens"]
    assert_figures_name_their_runs(
        first,
        {f: both for f in ("confusion.png", "per_class_recall.png", "accuracy_vs_cost.png", "accuracy_vs_tokens.png")},
    )

    # A trainer_state.json beside a run (as a real Trainer writes it) adds the training-curve figure.
    from transformers import Qwen2Config, Qwen2ForCausalLM, Trainer, TrainingArguments

    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    rows = [{"input_ids": [i % 32] * 8, "labels": [i % 32] * 8} for i in range(16)]
    args = TrainingArguments(
        output_dir=str(tmp_path / "train"),
        max_steps=4,
        logging_steps=1,
        save_steps=4,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=rows).train()
    with_curve = tmp_path / "image-trained"
    shutil.copytree(runs["image"], with_curve)
    shutil.copy(tmp_path / "train" / "checkpoint-4" / "trainer_state.json", with_curve)
    assert main(["report", str(with_curve), str(runs["tokens"]), "--out", str(tmp_path / "r3")]) == 0
    assert (tmp_path / "r3" / "training_curves.png").stat().st_size > 1000
    assert "training_curves.png" in (tmp_path / "r3" / "report.md").read_text()
    # The training curves name only the run whose log they draw, with the sha256 of that log.
    pair = ["image-trained", "tokens"]
    assert_figures_name_their_runs(
        tmp_path / "r3",
        {
            **{
                f: pair
                for f in ("confusion.png", "per_class_recall.png", "accuracy_vs_cost.png", "accuracy_vs_tokens.png")
            },
            "training_curves.png": ["image-trained"],
        },
    )


def test_report_refuses_an_incomplete_or_missing_run(two_runs, tmp_path, capsys):
    root, runs = two_runs
    partial = tmp_path / "partial"
    shutil.copytree(runs["image"], partial)
    result = json.loads((partial / "result.json").read_text())
    result["status"] = "budget_exhausted"
    (partial / "result.json").write_text(json.dumps(result))
    assert main(["report", str(partial), "--out", str(tmp_path / "r")]) == 2
    assert "not complete" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "no result.json" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_git_state_names_the_commit_and_a_dirty_tree(tmp_path):
    import subprocess

    from astroreason.provenance import GitState

    def git_state(path):
        return GitState(path).result()

    assert git_state(tmp_path) == {"commit": None, "dirty": None}  # not a repository

    def git(*args):
        return subprocess.run(
            ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q")
    assert git_state(tmp_path) == {"commit": None, "dirty": None}  # no commit yet
    (tmp_path / "f.txt").write_text("a\n")
    git("add", "f.txt")
    git("commit", "-qm", "first")
    head = git("rev-parse", "HEAD")
    assert git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "untracked.txt").write_text("not part of the code\n")
    assert git_state(tmp_path) == {"commit": head, "dirty": False}
    started = GitState(tmp_path)  # asked now, read later
    (tmp_path / "f.txt").write_text("b\n")
    assert git_state(tmp_path) == {"commit": head, "dirty": True}
    assert started.result()["commit"] == head


def test_stage_table_compares_each_stage_with_the_one_before(two_runs, tmp_path):
    """`write_report(..., stages=...)`: per arm, each stage's gain over the stage before it is the paired difference
    of the per-sample files, with its exact McNemar p, and accuracy among parsed answers is read from them too."""
    from astroreason.evaluation.report import write_report

    _, runs = two_runs
    stages = {"arm": [("first", runs["tokens"]), ("second", runs["image"])]}
    write_report([runs["image"]], tmp_path / "report", stages=stages)
    rows = json.loads((tmp_path / "report" / "report.json").read_text())["stages"]["arm"]
    assert [r["stage"] for r in rows] == ["first", "second"] and "gain" not in rows[0]
    first, second = _predictions(runs["tokens"]), _predictions(runs["image"])
    right_1 = np.array([r["prediction"] == r["label"] for r in first])
    right_2 = np.array([r["prediction"] == r["label"] for r in second])
    assert rows[1]["gain"] == pytest.approx(right_2.mean() - right_1.mean())
    only_2, only_1 = int(np.sum(right_2 & ~right_1)), int(np.sum(~right_2 & right_1))
    assert (rows[1]["only_this_right"], rows[1]["only_previous_right"]) == (only_2, only_1)
    assert rows[1]["mcnemar_p_value"] == pytest.approx(binomtest(only_2, only_2 + only_1, 0.5).pvalue)
    for row, records in zip(rows, (first, second)):
        parsed = [r for r in records if r["prediction"] is not None]
        assert row["parsed_accuracy"] == pytest.approx(np.mean([r["prediction"] == r["label"] for r in parsed]))
    page = (tmp_path / "report" / "report.md").read_text()
    assert "## What each stage adds (same galaxies)" in page
    assert f"| arm | second | {100 * right_2.mean():.1f}" in page and f"{rows[1]['mcnemar_p_value']:.3g}" in page


def test_a_grpo_runs_training_log_draws_its_reward_curve(two_runs, tmp_path):
    """The recipes write `training_log.json` into the model's directory (no trainer_state.json when nothing is
    saved): the report reads it from there, draws the GRPO reward beside the loss and hashes the file it read."""
    _, runs = two_runs
    model = tmp_path / "grpo_model"
    model.mkdir()
    history = [{"step": s, "loss": 0.01 * s, "reward": 0.2 + 0.1 * s} for s in range(1, 5)]
    (model / "training_log.json").write_text(json.dumps({"global_step": 4, "max_steps": 4, "log_history": history}))
    run = tmp_path / "image-grpo"
    shutil.copytree(runs["image"], run)
    result = json.loads((run / "result.json").read_text())
    result["config"]["model"] = str(model)
    (run / "result.json").write_text(json.dumps(result))
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "training_curves.png").stat().st_size > 1000
    files = json.loads((tmp_path / "r" / "report.json").read_text())["runs"]["image-grpo"]["files_sha256"]
    assert files["training_log.json"] == hashlib.sha256((model / "training_log.json").read_bytes()).hexdigest()


def test_a_grpo_stage_shows_what_it_had_to_learn_from(two_runs, tmp_path):
    """A stage whose model has a GRPO training log gets, in report.json and report.md, its first and last logged
    reward, share of groups without reward spread and entropy; a gain whose p is not below 0.05 is listed as not
    distinguishable from no change. An SFT-only log (no reward) gets no such row."""
    from astroreason.evaluation.report import write_report

    _, runs = two_runs
    history = [
        {"step": s, "reward": r, "frac_reward_zero_std": z, "entropy": e, "loss": 0.0}
        for s, r, z, e in ((1, 0.4, 0.25, 0.3), (2, 0.5, 0.5, 0.2), (3, 0.75, 0.875, 0.1))
    ]
    staged = {}
    for name, log in (("sft", [{"step": 1, "loss": 1.0, "entropy": 0.5}]), ("grpo", history)):
        model = tmp_path / f"{name}_model"
        model.mkdir()
        (model / "training_log.json").write_text(json.dumps({"global_step": 3, "max_steps": 3, "log_history": log}))
        staged[name] = tmp_path / f"image-{name}"
        shutil.copytree(runs["image"], staged[name])
        result = json.loads((staged[name] / "result.json").read_text())
        result["config"]["model"] = str(model)
        (staged[name] / "result.json").write_text(json.dumps(result))
    write_report([staged["grpo"]], tmp_path / "r", stages={"image": [("SFT", staged["sft"]), ("GRPO", staged["grpo"])]})
    sft, grpo = json.loads((tmp_path / "r" / "report.json").read_text())["stages"]["image"]
    assert "grpo_signal" not in sft
    assert grpo["grpo_signal"] == {
        "logs": 3,
        "last_step": 3,
        "reward": [0.4, 0.75],
        "frac_reward_zero_std": [0.25, 0.875],
        "entropy": [0.3, 0.1],
    }
    page = (tmp_path / "r" / "report.md").read_text()
    assert "| image | GRPO | 3 (3) | 0.400 -> 0.750 | 25.0 -> 87.5 | 0.300 -> 0.100 |" in page
    # The same predictions twice: a gain of 0 with p 1, which the page says is no measurable change.
    assert grpo["gain"] == 0 and "- image, GRPO: +0.0 points, p 1" in page


def test_every_figure_of_the_report_is_a_named_value_with_its_source(two_runs, tmp_path):
    """values.json: each run's accuracy and interval as printed in report.md, the paired comparison's difference and
    p, `NTest`, each with the sha256 of the files it was read from."""
    from astroreason.evaluation.report import write_report

    _, runs = two_runs
    write_report(
        [runs["image"], runs["tokens"]],
        tmp_path / "report",
        stages={"image": [("SFT", runs["tokens"]), ("GRPO", runs["image"])]},
    )
    values = {v["name"]: v for v in json.loads((tmp_path / "report" / "values.json").read_text())}
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    page = (tmp_path / "report" / "report.md").read_text()
    m = report["runs"]["image"]["metrics"]
    assert values["ImageAccuracy"]["value"] == m["accuracy"] and values["ImageAccuracy"]["percent"]
    lo, hi = m["interval"]["accuracy"]
    assert (
        f"{values['ImageAccuracy']['text']} [{values['ImageAccuracyLow']['text']}, {values['ImageAccuracyHigh']['text']}]"
        in page
    )
    assert (values["ImageAccuracyLow"]["value"], values["ImageAccuracyHigh"]["value"]) == (lo, hi)
    c = report["comparisons"]["image vs tokens"]
    assert values["ImageVsTokensDiff"]["value"] == c["accuracy_difference"]
    assert values["ImageVsTokensP"]["text"] == f"{c['mcnemar_p_value']:.3g}"
    assert values["NTest"]["value"] == m["n"]
    assert values["ImageGrpoGain"]["value"] == pytest.approx(report["stages"]["image"][1]["gain"])
    # Every name but N<split> ends with one of the suffixes `claims` knows a misspelt macro of ours by.
    from astroreason.evaluation.values import SUFFIXES

    assert all(name == "NTest" or name.endswith(SUFFIXES) for name in values), sorted(values)
    # Each file relative to the report, with its sha256.
    source = {s["file"]: s["sha256"] for s in values["ImageVsTokensP"]["sources"]}
    for run in ("image", "tokens"):
        for name in ("result.json", "predictions.jsonl"):
            path = runs[run] / name
            relative = os.path.relpath(path, tmp_path / "report")
            assert source[relative] == hashlib.sha256(path.read_bytes()).hexdigest()


def visible_tick_labels(ax):
    """The x tick labels drawn inside the axis' view, major and minor, as matplotlib rendered them."""
    lo, hi = ax.get_xlim()
    labels = ax.xaxis.get_ticklabels(minor=False) + ax.xaxis.get_ticklabels(minor=True)
    return [t for t in labels if t.get_visible() and t.get_text() and lo <= t.get_position()[0] <= hi]


def assert_plain_ticks(ax):
    """At least two plain-number labels (no 1.3x10^2 mathtext), none overlapping another."""
    ax.figure.canvas.draw()
    labels = visible_tick_labels(ax)
    assert len(labels) >= 2, [t.get_text() for t in labels]
    for t in labels:
        assert "\\times" not in t.get_text() and "10^" not in t.get_text() and "$" not in t.get_text()
        assert float(t.get_text()) == pytest.approx(t.get_position()[0])  # the label is the tick's own number
    assert_apart(labels)


def assert_apart(labels):
    """No two of these drawn texts overlap along the axis."""
    boxes = sorted((t.get_window_extent() for t in labels), key=lambda b: b.x0)
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), [t.get_text() for t in labels]


def test_the_log_axes_of_the_figures_have_plain_readable_ticks(two_runs):
    """accuracy_vs_cost and accuracy_vs_tokens put tokens on a log axis: as the report draws them, their tick labels
    are plain numbers that do not overlap; the helper gives that on a narrow range (the default's 1.3x10^2, 1.4x10^2,
    ... overlapped there), on one decade and on several. The per-class recall's class names do not overlap either."""
    import matplotlib.pyplot as plt

    from astroreason.evaluation.report import draw_figures, load_run, plain_log_x

    _, runs = two_runs
    drawn = {}
    for name, _, fig in draw_figures([load_run(runs["image"]), load_run(runs["tokens"])]):
        drawn[name] = fig
    for name in ("accuracy_vs_cost.png", "accuracy_vs_tokens.png"):
        assert_plain_ticks(drawn[name].axes[0])
    # The per-class recall names each class whole (with its number in the confusion matrices), labels apart.
    recall = drawn["per_class_recall.png"].axes[0]
    recall.figure.canvas.draw()
    labels = visible_tick_labels(recall)
    assert [" ".join(t.get_text().split()) for t in labels] == [f"{k} {c}" for k, c in enumerate(DECALS_CLASSES)]
    assert_apart(labels)
    for fig in drawn.values():
        plt.close(fig)
    for lo, hi in ((130, 190), (40, 180), (20, 5000), (3, 3e5)):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.plot([lo, hi], [0.2, 0.5], "o")
        plain_log_x(ax)
        fig.tight_layout()
        assert_plain_ticks(ax)
        plt.close(fig)


def test_the_warm_start_table_names_each_record_relative_to_the_report(two_runs, tmp_path, monkeypatch):
    """A model with a pretraining record (`astroreason.pretrain`'s file): the warm-start table of report.md names it
    by its path from the report's directory, which leads to the record, and no absolute path of this machine."""
    from astroreason.pretrain import PRETRAIN_RECORD

    _, runs = two_runs
    model = tmp_path / "models" / "warm"
    model.mkdir(parents=True)
    record = {
        "what": "vision tower pretrained",
        "n_train": 120,
        "config": {"steps": 7},
        "held_out_accuracy": 0.5,
        "held_out_majority_rate": 0.25,
    }
    (model / PRETRAIN_RECORD).write_text(json.dumps(record))
    run = tmp_path / "evals" / "image-warm"
    shutil.copytree(runs["image"], run)
    result = json.loads((run / "result.json").read_text())
    result["config"]["model"] = str(model)
    (run / "result.json").write_text(json.dumps(result))
    monkeypatch.chdir(tmp_path)
    for out in (tmp_path / "reports" / "r", "r"):  # an absolute --out, and one relative to the working directory
        assert main(["report", str(run), "--out", str(out)]) == 0
        page = (tmp_path / out / "report.md").read_text()
        rows = [line for line in page.splitlines() if line.startswith("| image-warm | vision tower pretrained |")]
        assert len(rows) == 1
        cell = rows[0].split("|")[-2].strip()
        assert not os.path.isabs(cell) and str(tmp_path) not in page.split("## Figures")[0]
        assert ((tmp_path / out) / cell).resolve() == (model / PRETRAIN_RECORD).resolve()

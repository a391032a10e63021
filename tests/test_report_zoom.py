"""The report's zoom question: accuracy against tokens per galaxy for zoom and no-zoom runs of both modalities on the
same galaxies, and the paired test between zoom and no zoom.

The runs are real evaluations of the tiny offline Qwen2.5-VL (the harness, its cache and result.json), the zoom runs
steered to call the tool with `sequence_bias` as in tests/test_eval_zoom.py; the report is `astroreason report`.
Each run's answer is steered too (after the tool's result, or after the prompt without zoom): a zoom run names the
first galaxy's class, a plain run a class neither galaxy has, so the zoom run alone is right on the first galaxy and
the paired test between zoom and no zoom has a discordant pair to count.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image
from test_eval_zoom import SeenBackend, codec, config, tiny  # noqa: F401 (fixtures)
from test_zoom import BOX, anchored_bias, steering

from astroreason import arms
from astroreason.cli import main
from astroreason.data.galaxy10 import DECALS_CLASSES
from astroreason.evaluation.backends import SamplingSettings
from astroreason.evaluation.harness import evaluate, evaluation_rows
from astroreason.evaluation.report import compare_runs, load_run
from astroreason.models import load_processor
from astroreason.prompts import zoom_prompt
from astroreason.zoom import ZoomEnvironment

ARMS = {  # run name: (modality, zoom)
    "image-zoom": ("image", True),
    "image-plain": ("image", False),
    "tokens-zoom": ("tokens", True),
    "tokens-plain": ("tokens", False),
}


def answer_steering(model_dir, modality: str, zoom: bool, label: int) -> list:
    """Write `<answer>` naming `label`'s class as the answer turn: after the tool's result in a zoom episode (its
    turn's end, as `test_zoom.steering` anchors a second call), after the user's prompt without zoom."""
    tokenizer = load_processor(str(model_dir)).tokenizer
    answer = f"<answer>{DECALS_CLASSES[label]}</answer><|im_end|>"
    user = [{"role": "user", "content": "x <answer>CLASS NAME</answer>."}]
    if not zoom:
        return anchored_bias(tokenizer, user, None, answer, anchor="</answer>.")
    called = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {}}]}
    called["tool_calls"][0]["function"] = {"name": "zoom", "arguments": {"bbox_2d": BOX}}
    turn = [*zoom_prompt(user, arms.ARMS[modality]), called, {"role": "tool", "name": "zoom", "content": "x"}]
    return anchored_bias(tokenizer, turn, [ZoomEnvironment.zoom], answer, anchor="</tool_response>")


@pytest.fixture(scope="module")
def zoom_report(tiny, tiny_model_dir, prepared_dir, codec, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("report-zoom")
    model, processor = tiny
    runs = {}
    for name, (modality, zoom) in ARMS.items():
        extra = {"codec": str(codec)} if modality == "tokens" else {}
        cfg = config(tiny_model_dir, prepared_dir, root / name, modality=modality, zoom=zoom, **extra)
        labels = [r["label"] for r in evaluation_rows(cfg)]
        assert labels[0] != labels[1]  # two classes: a zoom run's steered answer is right on the first only
        wrong = next(k for k in range(len(DECALS_CLASSES)) if k not in labels)
        bias = answer_steering(tiny_model_dir, modality, zoom, labels[0] if zoom else wrong)
        steer = {"sequence_bias": (steering(tiny_model_dir, modality, again=False) if zoom else []) + bias}
        b = SeenBackend(model, processor, SamplingSettings(max_new_tokens=96), batch_size=2, generation_kwargs=steer)
        b.seen = []
        assert evaluate(cfg, b, progress=False)["status"] == "complete"
        runs[name] = root / name
    assert main(["report", *map(str, runs.values()), "--out", str(root / "report")]) == 0
    return runs, root / "report"


def table(markdown: str, heading: str) -> dict[str, list[str]]:
    """The rows of the pipe table under `heading`, by their first cell."""
    lines = markdown.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return {r[0]: r[1:] for r in rows}


def test_accuracy_against_tokens_per_galaxy_reads_each_result(zoom_report):
    runs, out = zoom_report
    report = json.loads((out / "report.json").read_text())
    rows = table((out / "report.md").read_text(), "## Accuracy against tokens per galaxy")
    assert set(rows) == set(ARMS)
    for name, (modality, zoom) in ARMS.items():
        result = json.loads((runs[name] / "result.json").read_text())
        m = result["metrics"]
        tokens = (result["prompt_tokens"] + result["completion_tokens"]) / m["n"]
        entry = report["runs"][name]
        assert entry["modality"] == modality and entry["tokens_per_galaxy"] == pytest.approx(tokens)
        assert entry["zoom"] == result.get("zoom")
        lo, hi = m["interval"]["accuracy"]
        row = rows[name]
        assert row[:2] == [modality, "yes" if zoom else "no"]
        assert row[4:6] == [f"{tokens:.1f}", f"{100 * m['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"]
        if zoom:
            z = result["zoom"]
            # The harness's own count of an episode's tokens agrees with the report's (every turn counted).
            assert z["tokens_per_galaxy"] == pytest.approx(tokens)
            assert z["zoom_rate"] == 1.0 and z["n_with_zoom"] == 2  # the steered runs zoomed on both galaxies
            assert row[2:4] == [f"{100 * z['zoom_rate']:.1f}", f"{z['zooms_per_galaxy']:.2f}"]
            assert z["accuracy_with_zoom"] == m["accuracy"] == 0.5  # the steered answer, right on one galaxy of two
            assert row[6] == f"{100 * z['accuracy_with_zoom']:.1f} ({z['n_with_zoom']})"
            assert row[7] == f"- ({z['n_without_zoom']})"  # no galaxy went without a zoom
        else:
            assert "zoom" not in result and row[2:4] == ["-", "-"] and row[6:] == ["-", "-"]
            assert m["accuracy"] == 0.0 and m["parse_failure_rate"] == 0.0  # a class, the wrong one
    # A zoom episode sends the crop and answers again: it costs more tokens than one turn on the same galaxies.
    for modality in ("image", "tokens"):
        zoomed, plain = report["runs"][f"{modality}-zoom"], report["runs"][f"{modality}-plain"]
        assert zoomed["tokens_per_galaxy"] > plain["tokens_per_galaxy"]

    figure = out / "accuracy_vs_tokens.png"
    with Image.open(figure) as image:
        image.load()
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
    assert "![accuracy_vs_tokens](accuracy_vs_tokens.png)" in (out / "report.md").read_text()


def test_zoom_and_no_zoom_of_each_modality_are_paired_on_the_same_galaxies(zoom_report):
    runs, out = zoom_report
    report = json.loads((out / "report.json").read_text())
    rows = table((out / "report.md").read_text(), "## Paired comparisons (same galaxies)")
    assert len(report["comparisons"]) == len(rows) == 6  # every pair of the four runs
    for modality in ("image", "tokens"):
        a, b = f"{modality}-zoom", f"{modality}-plain"
        expected = compare_runs(load_run(runs[a]), load_run(runs[b]))
        got = report["comparisons"][f"{a} vs {b}"]
        assert got == {**expected, "arms": f"zoom vs no zoom ({modality})"}
        # As steered: the zoom run alone is right, on the first galaxy.
        assert (expected["only_a_correct"], expected["only_b_correct"]) == (1, 0)
        assert expected["accuracy_difference"] == pytest.approx(0.5)
        lo, hi = expected["difference_interval"]
        assert rows[f"{a} vs {b}"] == [
            f"zoom vs no zoom ({modality})",
            f"{100 * expected['accuracy_difference']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]",
            str(expected["only_a_correct"]),
            str(expected["only_b_correct"]),
            f"{expected['mcnemar_p_value']:.3g}",
        ]
    assert report["comparisons"]["image-zoom vs tokens-zoom"]["arms"] == "image, zoom vs tokens, zoom"

    # The page shows the same table and inlines the figure.
    page = (out / "report.html").read_text()
    assert "<td>zoom vs no zoom (image)</td>" in page and "<td>zoom vs no zoom (tokens)</td>" in page
    assert 'alt="accuracy_vs_tokens"' in page and 'src="data:image/png;base64,' in page


def test_the_report_says_when_each_zoom_run_zoomed(zoom_report):
    """Per zoom run, the zoom rate per true class and the homogenisation, read from its episodes: the steered runs
    zoomed on both galaxies (two classes), the same decision for every galaxy, so homogenisation 1.0."""
    runs, out = zoom_report
    rows = table((out / "report.md").read_text(), "## When the model zoomed (zoom rate per true class)")
    assert set(rows) == {"image-zoom", "tokens-zoom"}  # the runs without zoom have no decisions to show
    for name, row in rows.items():
        records = [json.loads(x) for x in (runs[name] / "predictions.jsonl").read_text().splitlines()]
        z = json.loads((runs[name] / "result.json").read_text())["zoom"]
        assert z["homogenisation"] == 1.0 and z["zoom_rate_per_class"] == {str(r["label"]): 1.0 for r in records}
        assert row[:3] == ["-", "100.0", "100.0"] and sorted(row[3:]) == ["-"] * (len(row) - 5) + ["100.0"] * 2


def test_the_zooming_gap_pairs_one_model_s_two_views(tiny, tiny_model_dir, prepared_dir, tmp_path):  # noqa: F811
    """One model without zoom, on the first view (56 px) and on the full-resolution view (112 px), steered so that
    only the full view is right, on the first galaxy: the report's zooming gap is that paired difference, read from
    the two runs' results."""
    from astroreason.evaluation.report import write_report

    model, processor = tiny
    runs = {}
    for view, size in (("first", 56), ("full", 112)):
        cfg = config(tiny_model_dir, prepared_dir, tmp_path / view, modality="image", zoom=False, image_size=size)
        labels = [r["label"] for r in evaluation_rows(cfg)]
        wrong = next(k for k in range(len(DECALS_CLASSES)) if k not in labels)
        steer = {
            "sequence_bias": answer_steering(tiny_model_dir, "image", False, labels[0] if view == "full" else wrong)
        }
        b = SeenBackend(model, processor, SamplingSettings(max_new_tokens=24), batch_size=2, generation_kwargs=steer)
        b.seen = []
        assert evaluate(cfg, b, progress=False)["status"] == "complete"
        runs[view] = tmp_path / view
    report = write_report(list(runs.values()), tmp_path / "report", gaps={"image": (runs["first"], runs["full"])})
    gap = json.loads((report.parent / "report.json").read_text())["zooming_gaps"]["image"]
    expected = compare_runs(load_run(runs["full"]), load_run(runs["first"]))
    assert gap["gap"] == expected["accuracy_difference"] == pytest.approx(0.5)
    assert (gap["only_full_right"], gap["only_first_right"]) == (1, 0)
    assert [gap["views"][v]["image_size"] for v in ("first", "full")] == [56, 112]
    lo, hi = expected["difference_interval"]
    row = table(report.read_text(), "## The zooming gap")["image"]
    assert row[2:4] == [f"+50.0 [{100 * lo:+.1f}, {100 * hi:+.1f}]", "1 / 0"]
    assert row[0].startswith("56, ") and row[1].startswith("112, ") and row[1].endswith(", 50.0")
    assert "<h2>The zooming gap" in (report.parent / "report.html").read_text()

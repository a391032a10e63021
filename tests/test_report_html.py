"""`report.html`: one self-contained page (every image a data URI) with the report's tables and figures and galleries
of the galaxies, built from the two real runs of tests/test_report.py (image and token arm on the same split, answered
by a scripted server on 127.0.0.1). The galleries are checked against the runs' `predictions.jsonl` and the split's
manifest; a real headless browser (Debian's chromium) opens the page and counts the images it decoded.

Without chromium the browser test is skipped, except under ASTROREASON_REQUIRE_CHROMIUM=1 (CI, `.ci/run`), where its
absence is a failure.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from test_report import two_runs  # noqa: F401  (the module's fixture: two real evaluation runs)

from astroreason.cli import main
from astroreason.data.splits import load_manifest
from astroreason.evaluation.report_html import (
    BY_CONFIDENCE,
    ERRORS_PER_CLASS,
    MAX_PER_GALLERY,
    NO_CONFIDENCE,
    THUMB_PX,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("ASTROREASON_REQUIRE_CHROMIUM") == "1"


@pytest.fixture(scope="module")
def report(two_runs):  # noqa: F811
    root, runs = two_runs
    out = root / "html-report"
    assert main(["report", str(runs["image"]), str(runs["tokens"]), "--out", str(out)]) == 0
    return root, runs, out


def predictions(run_dir):
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


def source_ids(run_dir):
    """Each evaluated galaxy's source id, from the manifest of the run's own data (the image arm: split order)."""
    config = json.loads((run_dir / "result.json").read_text())["config"]
    manifest = load_manifest(config["data_dir"])
    ids = manifest.ids.get(config["split"]) or manifest.rows[config["split"]]
    return [f"{manifest.id_name} {ids[r['index']]}" for r in predictions(run_dir)]


def test_galleries_follow_the_predictions(report):
    root, runs, out = report
    galleries = {g["title"]: g["ids"] for g in json.loads((out / "report.json").read_text())["galleries"]}
    image, tokens = predictions(runs["image"]), predictions(runs["tokens"])
    ids = source_ids(runs["image"])
    assert ids == source_ids(runs["tokens"])  # the same galaxies, the token arm's positions from its cache
    only_image = [i for i, (a, b) in enumerate(zip(image, tokens)) if a["prediction"] == a["label"] != b["prediction"]]
    only_tokens = [i for i, (a, b) in enumerate(zip(image, tokens)) if b["prediction"] == b["label"] != a["prediction"]]
    assert only_image or only_tokens  # the scripted arms disagree somewhere: the galleries are not empty by luck
    assert galleries["image right, tokens wrong"] == [ids[i] for i in only_image][:MAX_PER_GALLERY]
    assert galleries["tokens right, image wrong"] == [ids[i] for i in only_tokens][:MAX_PER_GALLERY]
    for name, records in (("image", image), ("tokens", tokens)):
        errors = []
        for c in range(10):
            errors += [ids[i] for i, r in enumerate(records) if r["label"] == c != r["prediction"]][:ERRORS_PER_CLASS]
        assert galleries[f"{name}: errors per true class"] == errors and errors
        cells = {(r["label"], r["prediction"]) for r in records}
        assert len(galleries[f"{name}: one galaxy per confusion cell"]) == len(cells)

    page = (out / "report.html").read_text()
    # Self-contained: every src is a data URI and nothing is linked.
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "href=" not in page and "http://" not in page and "https://" not in page
    # The Markdown report's tables and figures are there: its p-value and one img per figure.
    md = (out / "report.md").read_text()
    p_value = json.loads((out / "report.json").read_text())["comparisons"]["image vs tokens"]["mcnemar_p_value"]
    assert f"{p_value:.3g}" in md and f"<td>{p_value:.3g}</td>" in page
    assert page.count('class="figure"') == md.count("![")
    # Each thumbnail decodes to a THUMB_PX square and is captioned with its id, true class and answers.
    thumbs = re.findall(r'<figure class="galaxy"><img src="data:image/png;base64,([^"]+)"', page)
    assert len(thumbs) == sum(len(v) for v in galleries.values())
    for thumb in thumbs[:5]:
        assert Image.open(io.BytesIO(base64.b64decode(thumb))).size == (THUMB_PX, THUMB_PX)
    first = galleries["image: errors per true class"][0]
    assert f"<figcaption>{first}<br>true: " in page
    assert (
        html.escape(NO_CONFIDENCE) in page
    )  # the page says the errors are not ranked by a confidence it does not have


def test_errors_are_ranked_by_the_answers_log_probability(two_runs, tmp_path):  # noqa: F811
    """With a `logprob` on every answer the errors per class come most confident first; the page says so."""
    root, runs = two_runs
    run = tmp_path / "image"
    shutil.copytree(runs["image"], run)
    records = predictions(run)
    for r in records:  # a confidence that grows along the split: the ranking must reverse split order
        r["logprob"] = -1.0 / (1 + r["index"])
    (run / "predictions.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 0
    galleries = {g["title"]: g["ids"] for g in json.loads((tmp_path / "r" / "report.json").read_text())["galleries"]}
    ids = source_ids(run)
    errors = []
    for c in range(10):
        wrong = [i for i, r in enumerate(records) if r["label"] == c != r["prediction"]]
        errors += [ids[i] for i in sorted(wrong, key=lambda i: records[i]["logprob"], reverse=True)][:ERRORS_PER_CLASS]
    assert galleries["image: errors per true class"] == errors
    page = (tmp_path / "r" / "report.html").read_text()
    assert html.escape(BY_CONFIDENCE) in page and html.escape(NO_CONFIDENCE) not in page and "answer logprob: " in page


def test_a_run_whose_data_is_gone_gets_no_gallery(two_runs, tmp_path):  # noqa: F811
    root, runs = two_runs
    moved = tmp_path / "image"
    shutil.copytree(runs["image"], moved)
    result = json.loads((moved / "result.json").read_text())
    result["config"]["data_dir"] = str(tmp_path / "gone")
    (moved / "result.json").write_text(json.dumps(result))
    assert main(["report", str(moved), "--out", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert f"no gallery for image: its data_dir {tmp_path / 'gone'} is not there" in page
    assert '<figure class="galaxy">' not in page and 'class="figure"' in page


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not REQUIRED,
    reason="chromium not installed (apt-get install chromium, or .ci/browser_setup.sh)",
)

# Appended to a copy of the page: after the load event, the count of images the browser decoded, into the DOM.
COUNTER = (
    "<script>window.addEventListener('load', () => { const imgs = [...document.images];"
    " const pre = document.createElement('pre'); pre.id = 'decoded';"
    " pre.textContent = 'DECODED ' + imgs.filter(i => i.complete && i.naturalWidth > 0).length + ' OF ' + imgs.length"
    " + ' THUMBS ' + [...document.querySelectorAll('figure.galaxy img')].filter(i => i.naturalWidth === "
    f"{THUMB_PX}).length; document.body.appendChild(pre); }});</script>"
)


def headless(tmp_path, *args) -> subprocess.CompletedProcess:
    """Headless chromium with a profile of its own in `tmp_path` and `args`."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    return subprocess.run(
        [CHROMIUM, *flags, f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@needs_chromium
def test_the_page_renders_its_images_in_a_headless_browser(report, tmp_path):
    assert CHROMIUM, "ASTROREASON_REQUIRE_CHROMIUM=1 but chromium is not installed: run .ci/browser_setup.sh"
    root, runs, out = report
    page = (out / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", COUNTER + "</body>"))
    done = headless(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r"DECODED (\d+) OF (\d+) THUMBS (\d+)", done.stdout)
    assert found, done.stdout[-2000:]
    decoded, total, thumbs = map(int, found.groups())
    n_thumbs = page.count('<figure class="galaxy">')
    assert total == page.count("<img ") and n_thumbs > 0
    assert decoded == total  # every image, figures and thumbnails, decoded by the browser
    assert thumbs == n_thumbs  # each thumbnail at its own size

    # A screenshot of the page as a reader sees it (kept in the test's tmp_path for a person to look at): the
    # tables and figures drew, not a blank page.
    shot = tmp_path / "report_screenshot.png"
    done = headless(
        tmp_path, "--hide-scrollbars", "--window-size=1200,3000", f"--screenshot={shot}", (out / "report.html").as_uri()
    )
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (3000, 1200) and pixels.std() > 20, pixels.std()

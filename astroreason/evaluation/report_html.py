"""`report.html`: the Markdown report's tables and figures in one self-contained page (every image a base64 data
URI: no other file, no network), plus galleries of the galaxies themselves, read from the split each run evaluated:

- where two runs on the same galaxies disagree (A right and B wrong, and the reverse);
- errors per true class (`predictions.jsonl` records no confidence per answer, so they are in split order, and the
  page says so);
- one galaxy per cell of each run's confusion matrix.

Each thumbnail carries the galaxy's source id (the manifest's `ids`), its true class and what each run answered.
A run whose prepared directory (or codec) is no longer there, or whose manifest changed since, gets no gallery and
the page says why; the rest of the report is unaffected.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import fields
from pathlib import Path

from ..arms import ArmSettings, build_arm
from ..data.splits import load_manifest, load_split
from ..errors import UserError

THUMB_PX = 96  # thumbnail side in pixels
MAX_PER_GALLERY = 24  # galaxies shown per disagreement gallery (in split order; the page gives the total)
ERRORS_PER_CLASS = 3  # errors shown per true class
NO_CONFIDENCE = (
    "Some answers in predictions.jsonl carry no confidence (a backend that reports no log-probability, or answers "
    "cached before it was recorded), so these errors are not ranked by confidence: they are shown per true class in "
    "split order."
)
BY_CONFIDENCE = (
    "The most confident errors first: ranked by the answer's log-probability under the model (its tokens' "
    "log-probabilities summed, `logprob` in predictions.jsonl)."
)

STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.5em; text-align: left; }
img.figure { max-width: 100%; }
.gallery { display: flex; flex-wrap: wrap; gap: 0.5em; }
figure.galaxy { margin: 0; width: 9em; font-size: 0.75em; }
figure.galaxy img { display: block; image-rendering: pixelated; }
.wrong { color: #b00; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class GalaxySource:
    """The galaxies one run evaluated: each record's position in its split, source id and thumbnail."""

    def __init__(self, run: dict):
        config, provenance = run["result"]["config"], run["result"]["provenance"]
        data_dir = config.get("data_dir")
        if not data_dir or not Path(data_dir).is_dir():
            raise UserError(f"{run['name']}: its data_dir {data_dir} is not there")
        manifest = load_manifest(data_dir)
        if manifest.hash != provenance.get("manifest_sha256"):
            raise UserError(f"{run['name']}: {data_dir}'s manifest changed since the run ({manifest.hash[:12]})")
        split = config["split"]
        settings = ArmSettings(**{f.name: config[f.name] for f in fields(ArmSettings) if f.name in config})
        arm = build_arm(settings, split, max_samples=config.get("max_samples"), manifest=manifest, lint_template=False)
        if arm.n != len(run["records"]):
            raise UserError(f"{run['name']}: {arm.n} galaxies in the split now, {len(run['records'])} evaluated")
        self.positions = [int(p) for p in arm.positions]
        self.classes = list(manifest.classes)
        self.id_name = manifest.id_name
        self.ids = (manifest.ids.get(split) or manifest.rows[split])[:]
        self.key = (manifest.hash, split)  # two runs with equal keys evaluated the same split
        self._view, self._data_dir, self._split, self._manifest = None, data_dir, split, manifest
        self._thumbnails: dict[int, bytes] = {}  # a galaxy shown in several galleries is drawn once

    def source_id(self, position: int) -> str:
        return f"{self.id_name} {self.ids[position]}"

    def thumbnail(self, position: int) -> bytes:
        if position not in self._thumbnails:
            self._thumbnails[position] = self._draw(position)
        return self._thumbnails[position]

    def _draw(self, position: int) -> bytes:
        from PIL import Image  # lazy: only when a gallery is drawn

        if self._view is None:
            self._view = load_split(self._data_dir, self._split, manifest=self._manifest)
        image = self._view[position]["image"].convert("RGB").resize((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()


def _class(classes: list[str], prediction) -> str:
    return "unparseable" if prediction is None else f"{prediction} {classes[prediction]}"


def _shown(n: int) -> str:
    if n <= MAX_PER_GALLERY:
        return f"{n} galaxies, all shown." if n else "No such galaxy."
    return f"{n} galaxies; the first {MAX_PER_GALLERY} in split order shown."


def galleries(runs: list[dict], pairs: list[tuple[str, str]]) -> tuple[list[dict], list[str]]:
    """The galleries (title, note, the source of the thumbnails, items: position, label, answers by run) and one line
    per run that has none."""
    sources, missing = {}, []
    for run in runs:
        try:
            sources[run["name"]] = GalaxySource(run)
        except UserError as err:
            missing.append(f"no gallery for {err}")
    placed = {
        run["name"]: dict(zip(sources[run["name"]].positions, run["records"])) for run in runs if run["name"] in sources
    }
    out = []
    for a, b in pairs:
        if a in sources and b in sources and sources[a].key == sources[b].key:
            out += [_disagreements(right, wrong, placed, sources[right]) for right, wrong in ((a, b), (b, a))]
    for name, records in placed.items():
        out += [_errors_per_class(name, records, sources[name]), _confusion_samples(name, records, sources[name])]
    return out, missing


def _disagreements(right: str, wrong: str, placed: dict, source: GalaxySource) -> dict:
    """The galaxies run `right` got right and run `wrong` got wrong, in split order."""
    mine, theirs = placed[right], placed[wrong]
    positions = [
        p
        for p in mine
        if p in theirs and mine[p]["prediction"] == mine[p]["label"] and theirs[p]["prediction"] != theirs[p]["label"]
    ]
    items = [
        {
            "position": p,
            "label": mine[p]["label"],
            "answers": {right: mine[p]["prediction"], wrong: theirs[p]["prediction"]},
        }
        for p in positions[:MAX_PER_GALLERY]
    ]
    return {"title": f"{right} right, {wrong} wrong", "note": _shown(len(positions)), "source": source, "items": items}


def _errors_per_class(name: str, records: dict, source: GalaxySource) -> dict:
    """Up to `ERRORS_PER_CLASS` wrong answers per true class: the most confident first (highest `logprob`) when
    every answer has one, else in split order."""
    ranked = all(r.get("logprob") is not None for r in records.values())
    items = []
    for c in range(len(source.classes)):
        wrong = [(p, r) for p, r in records.items() if r["label"] == c and r["prediction"] != c]
        if ranked:
            wrong.sort(key=lambda pr: -pr[1]["logprob"])  # stable: equal confidence stays in split order
        items += [
            {"position": p, "label": c, "answers": {name: r["prediction"]}, "logprob": r.get("logprob")}
            for p, r in wrong[:ERRORS_PER_CLASS]
        ]
    note = (BY_CONFIDENCE if ranked else NO_CONFIDENCE) + f" Up to {ERRORS_PER_CLASS} per class."
    return {"title": f"{name}: errors per true class", "note": note, "source": source, "items": items}


def _confusion_samples(name: str, records: dict, source: GalaxySource) -> dict:
    """The first galaxy of each (true, predicted) cell of the run's confusion matrix, unparseable answers last."""
    cells: dict[tuple, list] = {}
    for p, r in records.items():
        cells.setdefault((r["label"], r["prediction"] is None, r["prediction"] or 0), []).append((p, r))
    items = [
        {"position": p, "label": r["label"], "answers": {name: r["prediction"]}, "count": len(members)}
        for _, members in sorted(cells.items())
        for p, r in members[:1]
    ]
    note = "The first galaxy of each (true, predicted) cell in split order, with the cell's count."
    return {"title": f"{name}: one galaxy per confusion cell", "note": note, "source": source, "items": items}


def _figure_html(item: dict, source: GalaxySource) -> str:
    lines = [
        html.escape(source.source_id(item["position"])),
        f"true: {html.escape(_class(source.classes, item['label']))}",
    ]
    for name, prediction in item["answers"].items():
        cls = "" if prediction == item["label"] else ' class="wrong"'
        lines.append(f"<span{cls}>{html.escape(name)}: {html.escape(_class(source.classes, prediction))}</span>")
    if "count" in item:
        lines.append(f"cell count: {item['count']}")
    if item.get("logprob") is not None:
        lines.append(f"answer logprob: {item['logprob']:.2f}")
    alt = html.escape(f"{source.source_id(item['position'])}, true {_class(source.classes, item['label'])}", quote=True)
    return (
        f'<figure class="galaxy"><img src="{data_uri(source.thumbnail(item["position"]))}" width="{THUMB_PX}" '
        f'height="{THUMB_PX}" alt="{alt}"><figcaption>{"<br>".join(lines)}</figcaption></figure>'
    )


def markdown_html(text: str, figure_dir: Path) -> str:
    """The report's Markdown (headings, paragraphs, pipe tables, `![alt](file.png)`) as HTML, figures inlined."""
    out, table = [], []

    def flush_table():
        if not table:
            return
        rows = [[html.escape(c.strip()) for c in line.strip().strip("|").split("|")] for line in table]
        head = "".join(f"<th>{c}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows[2:])
        out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        image = re.fullmatch(r"!\[(.*)\]\((.*)\)", line)
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif image:
            alt, name = image.groups()
            src = data_uri((figure_dir / name).read_bytes())
            out.append(f'<p><img class="figure" src="{src}" alt="{html.escape(alt, quote=True)}"></p>')
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush_table()
    return "\n".join(out)


def render_html(markdown: str, figure_dir: Path, runs: list[dict], pairs: list[tuple[str, str]]) -> tuple[str, list]:
    """The page, and what its galleries show (title and the source ids, for `report.json`)."""
    shown, missing = galleries(runs, pairs)
    parts = [markdown_html(markdown, figure_dir), "<h2>Galleries</h2>"]
    parts += [f"<p>{html.escape(line)}</p>" for line in missing]
    summary = []
    for g in shown:
        source = g["source"]
        parts += [f"<h3>{html.escape(g['title'])}</h3>", f"<p>{html.escape(g['note'])}</p>", '<div class="gallery">']
        parts += [_figure_html(item, source) for item in g["items"]]
        parts.append("</div>")
        summary.append({"title": g["title"], "ids": [source.source_id(item["position"]) for item in g["items"]]})
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>astroreason comparison report</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    return page, summary

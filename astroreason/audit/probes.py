"""The audit's probes: each asks one question a shortcut would answer wrongly, and passes, fails or notes.

Data probes (a Galaxy10-schema file, a prepared directory, or the data behind a run):
- `row_order`: notes a class-sorted source, then proves the split does not depend on row order: every split's
  content hash is re-derived from the file, the split is re-derived from the content keys in permuted unit orders,
  each split's order is the seeded content order, its class mix matches the file's, and its rows are not monotone
  in label or source row.
- `duplicates`: no galaxy (same sky position within the manifest's radius, or identical pixels) spans two splits.
- `metadata`: a scikit-learn classifier trained on everything the prompt carries besides the galaxy (its text with
  the representation removed: numbers and words) must not beat the majority-class rate (one-sided binomial test).
  Each metadata column (row index, sky position, redshift, pixel scale) is also scored alone and noted: a column
  that predicts the label is harmless only while it stays out of the prompt, which is what the lint enforces.

Model controls (a run with a model):
- `blank_input`: the model answered with a blank image (image arm) or another galaxy's codes (token arm) must fall
  to about the majority-class rate. A zoom run's is asked as zoom episodes whose zoom tool crops that blank image or
  that other galaxy, so no turn brings the asked galaxy back.
- `label_permutation`: the run's recipe rerun from its base model (the root of its base chain, never the trained
  checkpoint) on permuted training labels, for a bounded number of steps, must stay at chance on the true test labels
  (`audit.permutation`); runs that do not record their base are skipped.
- `random_reward`: a GRPO run's gain over its own start must be larger than that of its GRPO stage rerun from the
  same start with every label-reading reward replaced by a seeded random reward of the same mean
  (`audit.random_reward`), on the same galaxies (exact McNemar p < 0.05); other runs are skipped.

Run records: `seeds` (fingerprints of a sweep's runs) and `ceiling` (a result above the ceiling).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..arms import ARMS, ArmSettings, build_arm
from ..data.inspect import duplicate_groups, ordering
from ..data.sources import open_source
from ..data.splits import MANIFEST_NAME, SPLIT_NAMES, assign_units, load_manifest, make_manifest
from ..data.task import task_of
from ..errors import UserError
from ..evaluation.backends import SamplingSettings, TransformersBackend
from ..evaluation.episodes import ZOOM_TURN_TOKENS, LocalTurns, ZoomEpisodes
from ..integrity.fingerprint import compare_fingerprints, read_fingerprint
from ..integrity.gate import DEFAULT_CEILING, gate_result
from ..integrity.lint import _numbers, read_lint_record, render_text
from ..io import read_json_file, sha256_bytes
from ..models import family_for
from ..prompts import zoom_prompt
from ..rewards import parse_answer
from ..stats import paired_comparison
from ..zoom import DEFAULT_MAX_ASPECT
from ..zoom.chat import suppressing_placeholders
from .permutation import check_base, control_start, control_steps, train_on_permuted_labels
from .random_reward import (
    DEFAULT_RANDOM_REWARD_SAMPLES,
    DEFAULT_RANDOM_REWARD_STEPS,
    grpo_start,
    random_rewards,
    rerun_steps,
    run_log,
    train_with_random_rewards,
)

DEFAULT_PERMUTATION_STEPS = 200  # cap on the label-permutation control's steps (it reruns at most the recipe's own)
ALPHA = 0.01  # one-sided significance of "beats the majority-class rate"
RANDOM_REWARD_ALPHA = 0.05  # significance of "the run beats its random-reward rerun" (exact McNemar)
MIN_GAIN = 0.05  # ... and by at least this much accuracy (tiny effects on huge splits are not shortcuts)


@dataclass
class ProbeResult:
    """One probe's verdict: `pass`, `fail`, `note` (informational) or `skip` (does not apply)."""

    name: str
    status: str
    summary: str
    details: dict = field(default_factory=dict)


@dataclass
class AuditReport:
    target: str
    kind: str
    probes: list[ProbeResult] = field(default_factory=list)

    @property
    def failed(self) -> list[ProbeResult]:
        return [p for p in self.probes if p.status == "fail"]

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "kind": self.kind,
            "passed": not self.failed,
            "probes": [asdict(p) for p in self.probes],
        }


def beats_rate(correct: int, n: int, rate: float) -> dict:
    """One-sided exact binomial test of `correct` out of `n` against a rate; `beats` when significant and large."""
    from scipy.stats import binomtest

    accuracy = correct / n if n else 0.0
    p = (
        float(binomtest(int(correct), int(n), min(max(rate, 1e-12), 1 - 1e-12), alternative="greater").pvalue)
        if n
        else 1.0
    )
    return {
        "accuracy": accuracy,
        "rate": float(rate),
        "n": int(n),
        "p_value": p,
        "beats": bool(p < ALPHA and accuracy - rate > MIN_GAIN),
    }


# --- the data behind a probe ---------------------------------------------------------------------------------------


@dataclass
class SplitData:
    """A manifest with the per-row facts the data probes need, read once from its source file."""

    manifest: object
    labels: np.ndarray
    hashes: list[str]
    columns: dict[str, np.ndarray]  # ra, dec, redshift, pxscale (those present)

    @property
    def split_of_row(self) -> dict[int, str]:
        return {r: name for name, rows in self.manifest.rows.items() for r in rows}


def load_split_data(manifest) -> SplitData:

    with open_source(manifest.source_path) as g10:
        columns = {k: c for k in ("ra", "dec", "redshift", "pxscale") if (c := g10.column(k)) is not None}
        return SplitData(manifest, g10.labels, g10.image_hashes(), columns)


# --- row order -----------------------------------------------------------------------------------------------------


def probe_row_order(data: SplitData, *, n_permutations: int = 1) -> ProbeResult:
    from scipy.stats import chisquare, spearmanr

    m, labels, hashes = data.manifest, data.labels, data.hashes
    order = ordering(labels, m.classes)
    details = {"source_sorted_by_class": order["sorted_by_class"], "source_grouped_by_class": order["grouped_by_class"]}
    problems = []

    # 1. The manifest matches the file: each split's content hash, re-derived.
    for name, rows in m.rows.items():
        if m.split_sha256.get(name) != sha256_bytes(*(f"{hashes[r]}:{labels[r]}" for r in rows)):
            problems.append(
                f"split {name}: its rows do not hash to the manifest's split_sha256 (the file or the manifest changed)"
            )

    # 2. The split re-derived from content keys alone, in permuted unit orders, is the manifest's split.
    split_index = {name: k for k, name in enumerate(SPLIT_NAMES)}
    units = [list(g) for g in m.groups]
    in_group = {r for g in units for r in g}
    units += [[r] for rows in m.rows.values() for r in rows if r not in in_group]
    split_of = data.split_of_row
    expected = np.array([split_index[split_of[u[0]]] for u in units])
    keys = [min(hashes[r] for r in u) for u in units]
    unit_labels = np.array([labels[u[0]] for u in units])
    sizes = np.array([len(u) for u in units])
    rng = np.random.default_rng(12345)
    orders = [np.arange(len(units)), np.arange(len(units))[::-1]] + [
        rng.permutation(len(units)) for _ in range(n_permutations)
    ]
    mismatched = 0
    for perm in orders:
        got = np.empty(len(units), np.int64)
        got[perm] = assign_units(unit_labels[perm], sizes[perm], [keys[i] for i in perm], m.fractions, m.seed)
        mismatched = max(mismatched, int(np.sum(got != expected)))
    details["units"] = len(units)
    details["unit_orders_tried"] = len(orders)
    if mismatched:
        problems.append(
            f"{mismatched} of {len(units)} galaxies land in another split when the split is re-derived "
            "from their content in another row order: the split depends on row order"
        )

    # 3. Each split's order is the seeded content order; its class mix is the file's; it is not monotone.
    kept = np.array([r for rows in m.rows.values() for r in rows], np.int64)
    n_classes = len(m.classes)
    share = np.bincount(labels[kept], minlength=n_classes) / max(len(kept), 1)
    details["splits"] = {}
    for k, name in enumerate(SPLIT_NAMES):
        rows = np.asarray(m.rows.get(name, []), np.int64)
        if len(rows) == 0:
            continue
        content = rows[np.argsort([hashes[r] for r in rows], kind="stable")]
        reordered = content[np.random.default_rng([m.seed, 100 + k]).permutation(len(rows))]
        if not np.array_equal(reordered, rows):
            problems.append(f"split {name}: its row order is not the seeded content order")
        counts = np.bincount(labels[rows], minlength=n_classes)
        present = share > 0
        p_mix = float(chisquare(counts[present], share[present] * len(rows)).pvalue) if present.sum() > 1 else 1.0
        deviation = float(np.max(np.abs(counts / len(rows) - share)))
        info = {"n": int(len(rows)), "class_mix_p": p_mix, "class_mix_max_deviation": deviation}
        if p_mix < 1e-3 and deviation > 0.05:
            problems.append(
                f"split {name}: class mix differs from the file's (max share deviation {deviation:.2f}, "
                f"chi-square p={p_mix:.1e})"
            )
        if len(rows) >= 10:
            for what, values in (("label", labels[rows]), ("source row", rows)):
                rho, p = spearmanr(np.arange(len(rows)), values)
                rho = 0.0 if not np.isfinite(rho) else float(rho)
                info[f"rank_corr_position_{what.replace(' ', '_')}"] = rho
                if abs(rho) > 0.5 and p < 1e-3:
                    problems.append(
                        f"split {name}: rows are ordered by {what} (Spearman rho {rho:.2f}): a first-N "
                        "slice would be one class"
                    )
            head = labels[rows[: min(20, len(rows))]]
            if len(np.unique(labels[rows])) > 1 and len(np.unique(head)) == 1:
                problems.append(f"split {name}: its first {len(head)} rows are all one class")
        details["splits"][name] = info

    note = (
        "source is sorted by class: a row index is a label, so nothing may depend on row order; "
        if order["sorted_by_class"] or order["grouped_by_class"]
        else "source is not ordered by class; "
    )
    if problems:
        return ProbeResult("row_order", "fail", note + "; ".join(problems), details)
    return ProbeResult(
        "row_order",
        "pass",
        note + f"the split is a function of content only (re-derived in "
        f"{len(orders)} unit orders), class mixes match, no split is ordered by label",
        details,
    )


# --- duplicates ----------------------------------------------------------------------------------------------------


def probe_duplicates(data: SplitData) -> ProbeResult:

    m = data.manifest
    groups = duplicate_groups(data.columns.get("ra"), data.columns.get("dec"), data.hashes, m.radius_arcsec)
    split_of = data.split_of_row
    crossing = {}
    for kind, found in (("sky_position", groups.exact + groups.near), ("image_content", groups.image)):
        bad = []
        for g in found:
            splits = sorted({split_of[int(r)] for r in g if int(r) in split_of})
            if len(splits) > 1:
                bad.append({"rows": [int(r) for r in g], "splits": splits})
        crossing[kind] = bad
    dropped_rows = {r for d in m.dropped for r in d["rows"]}
    leaked_dropped = sorted(r for r in dropped_rows if r in split_of)
    details = {
        "radius_arcsec": m.radius_arcsec,
        "groups": len(groups.combined),
        "crossing": crossing,
        "dropped_rows_in_splits": leaked_dropped,
    }
    n_pos, n_img = len(crossing["sky_position"]), len(crossing["image_content"])
    if n_pos or n_img or leaked_dropped:
        return ProbeResult(
            "duplicates",
            "fail",
            f"{n_pos} galaxies span two splits by sky position (within {m.radius_arcsec} arcsec), "
            f"{n_img} by identical pixels; {len(leaked_dropped)} rows of conflicting groups are in a "
            "split",
            details,
        )
    return ProbeResult(
        "duplicates",
        "pass",
        f"no duplicate group spans two splits ({len(groups.combined)} groups "
        "checked by sky position and image content)",
        details,
    )


# --- metadata-only classifier ----------------------------------------------------------------------------------------


def _row_meta(data: SplitData, rows: np.ndarray, positions: np.ndarray) -> list[dict]:
    m = data.manifest
    out = []
    for r, pos in zip(rows, positions):
        row = {
            "row_index": int(r),
            "position": int(pos),
            "label": int(data.labels[r]),
            "label_name": m.classes[int(data.labels[r])],
        }
        row.update({k: float(c[r]) for k, c in data.columns.items()})
        out.append(row)
    return out


def text_features(texts: list[str], n_numbers: int = 8, n_words: int = 64) -> np.ndarray:
    """What a classifier can read from prompt texts: the first numbers written (NaN-padded) and hashed words."""
    from sklearn.feature_extraction.text import HashingVectorizer

    numbers = np.full((len(texts), n_numbers), np.nan)
    for i, t in enumerate(texts):
        values = _numbers(t)[0][:n_numbers]
        numbers[i, : len(values)] = values
    words = HashingVectorizer(n_features=n_words, alternate_sign=False, ngram_range=(1, 2), norm=None)
    return np.hstack([numbers, words.transform(texts).toarray()])


def _fit_score(x_train, y_train, x_eval, y_eval) -> dict:
    from sklearn.ensemble import RandomForestClassifier

    majority = np.bincount(y_train).argmax()
    rate = float(np.mean(y_eval == majority))
    # Columns that are all NaN or constant carry nothing (and break the binning of an all-NaN column).
    filled = np.nan_to_num(x_train, nan=-1.0)
    useful = ~np.all(np.isnan(x_train), axis=0) & np.any(filled != filled[:1], axis=0)
    x_train, x_eval = x_train[:, useful], x_eval[:, useful]
    if not useful.any():
        predictions = np.full(len(y_eval), majority)  # constant features: nothing to learn beyond the prior
    else:
        model = RandomForestClassifier(n_estimators=100, min_samples_leaf=2, random_state=0, n_jobs=1)
        predictions = model.fit(x_train, y_train).predict(x_eval)
    return beats_rate(int(np.sum(predictions == y_eval)), len(y_eval), rate)


def probe_metadata(data: SplitData, templates: dict[str, str]) -> ProbeResult:
    """Fit on the train split, score on val + test, for each template (modality -> template)."""

    m = data.manifest
    fit_rows = np.asarray(m.rows.get("train", []), np.int64)
    eval_parts = [np.asarray(m.rows.get(s, []), np.int64) for s in ("val", "test")]
    eval_rows = np.concatenate(eval_parts)
    if len(fit_rows) < 10 or len(eval_rows) < 5:
        return ProbeResult("metadata", "skip", "too few rows to fit and score a classifier", {})
    fit_pos = np.arange(len(fit_rows))
    eval_pos = np.concatenate([np.arange(len(p)) for p in eval_parts])
    fit_meta, eval_meta = _row_meta(data, fit_rows, fit_pos), _row_meta(data, eval_rows, eval_pos)
    y_fit, y_eval = data.labels[fit_rows], data.labels[eval_rows]

    details: dict = {"carried": {}, "columns_alone": {}}
    failures = []
    for modality, template in templates.items():
        texts_fit = [render_text(template, ARMS[modality], r) for r in fit_meta]
        texts_eval = [render_text(template, ARMS[modality], r) for r in eval_meta]
        features = text_features(texts_fit + texts_eval)
        score = _fit_score(features[: len(fit_rows)], y_fit, features[len(fit_rows) :], y_eval)
        details["carried"][modality] = score
        if score["beats"]:
            failures.append(
                f"{modality} prompt (without the galaxy) predicts the label: accuracy "
                f"{score['accuracy']:.3f} vs majority rate {score['rate']:.3f} (p={score['p_value']:.1e})"
            )
    columns = {"row_index": (fit_rows, eval_rows)}
    if "ra" in data.columns and "dec" in data.columns:
        columns["ra_dec"] = tuple(np.c_[data.columns["ra"][r], data.columns["dec"][r]] for r in (fit_rows, eval_rows))
    for key in ("redshift", "pxscale"):
        if key in data.columns:
            columns[key] = (data.columns[key][fit_rows], data.columns[key][eval_rows])
    predictive = []
    for key, (a, b) in columns.items():
        a, b = np.asarray(a, float).reshape(len(fit_rows), -1), np.asarray(b, float).reshape(len(eval_rows), -1)
        score = _fit_score(a, y_fit, b, y_eval)
        details["columns_alone"][key] = score
        if score["beats"]:
            predictive.append(f"{key} ({score['accuracy']:.2f})")
    note = (
        f"; not in any prompt, but predictive alone (must stay out of prompts): {', '.join(predictive)}"
        if predictive
        else ""
    )
    if failures:
        return ProbeResult("metadata", "fail", "; ".join(failures) + note, details)
    rates = ", ".join(f"{k} {v['accuracy']:.3f} (majority {v['rate']:.3f})" for k, v in details["carried"].items())
    return ProbeResult(
        "metadata", "pass", f"prompts without the galaxy do not beat the majority rate: {rates}{note}", details
    )


# --- model controls ------------------------------------------------------------------------------------------------


@dataclass
class RunSpec:
    """What a model control needs to know about a run (read from its `result.json` or `fingerprint.json`)."""

    model: str
    data_dir: str
    modality: str = "image"
    template: str | None = None
    codec: str | None = None
    rendering: str = "ints"
    image_size: int = 112
    token_crop: float | None = None
    split: str = "test"
    zoom: bool = False
    zoom_max_turns: int = 2
    zoom_min_side: float | None = None  # None: the tool's default (the image arm: one merged patch)
    zoom_max_aspect: float = DEFAULT_MAX_ASPECT

    def arm_settings(self) -> ArmSettings:
        return ArmSettings(
            data_dir=self.data_dir,
            modality=self.modality,
            codec=self.codec,
            rendering=self.rendering,
            image_size=self.image_size,
            token_crop=self.token_crop,
            prompt_template=self.template,
        )

    def classes(self) -> list[str]:
        """The run's class names, by label (its split's manifest): what its answers name."""
        return load_manifest(self.data_dir).classes


def control_rows(spec: RunSpec, split: str, *, max_samples: int, galaxy: str = "blank", seed: int = 0):
    """(prompts, images, labels) of the first rows of a split, from the run's arm with its recorded template. `galaxy`
    is `real` (the galaxy as trained), or `blank`: a black image (image arm) or another galaxy's codes (token arm)."""
    # The run's recorded template was linted (or overridden) when the run was made: rendered here as it was.
    arm = build_arm(spec.arm_settings(), split, max_samples=max_samples, lint_template=False)
    rows = arm.rows() if galaxy == "real" else arm.without_galaxy(seed)
    labels = np.asarray([r["label"] for r in rows], np.int64)
    return [r["prompt"] for r in rows], [r.get("image") for r in rows], labels


def _majority_rate(labels: np.ndarray) -> float:
    return float(np.bincount(labels).max() / len(labels))


def _score(texts: list[str], labels, classes) -> dict:
    """The answers' accuracy against the majority-class rate, and the share of answers parsed (naming one of
    `classes`)."""
    predictions = [parse_answer(t, classes) for t in texts]
    correct = int(sum(p == y for p, y in zip(predictions, labels)))
    parsed = sum(p is not None for p in predictions) / max(len(predictions), 1)
    return {**beats_rate(correct, len(labels), _majority_rate(labels)), "parsed": parsed}


def _score_backend(backend, prompts, images, labels, classes) -> dict:
    return _score([g.text for g in backend.generate(prompts, images)], labels, classes)


def control_zoom_tool(spec: RunSpec, arm, family):
    """The zoom tool of a zoom run's blank-input control, with the run's box limits (`Arm.control_zoom_tool`): the
    image arm's crops black (`arms.BlankImageZoom`), the token arm's the other galaxy the control's prompt shows."""
    limits = {"min_side": spec.zoom_min_side, "max_aspect": spec.zoom_max_aspect, "manifest": arm.manifest}
    return arm.control_zoom_tool(arm.settings, pixel_multiple=family.pixel_multiple, **limits)


def _score_episodes(spec: RunSpec, backend, *, max_samples: int, seed: int = 0) -> dict:
    """The blank-input control of a zoom run, as zoom episodes (`evaluation.episodes`) on the run's model: a black
    first view whose zooms crop black (image arm), or another galaxy's codes whose zooms crop that other galaxy (the
    token arm's `control_order`), so no turn carries the asked galaxy."""
    texts, labels, zoom_rate = _episode_texts(spec, backend, max_samples=max_samples, galaxy="blank", seed=seed)
    return {**_score(texts, labels, spec.classes()), "zoom_rate": zoom_rate}


def _episode_texts(spec: RunSpec, backend, *, max_samples: int, galaxy: str, seed: int = 0):
    """(final answers, labels, share of episodes that zoomed) of zoom episodes on the first rows of the run's split:
    `galaxy` `real` asks about each galaxy with the run's own zoom tool and box limits; `blank` is the blank-input
    control's (`_score_episodes`)."""
    arm = build_arm(spec.arm_settings(), spec.split, max_samples=max_samples, lint_template=False)
    family = family_for(backend.model)
    if galaxy == "real":
        rows, positions = arm.rows(), [int(p) for p in arm.positions]
        limits = {"min_side": spec.zoom_min_side, "max_aspect": spec.zoom_max_aspect, "manifest": arm.manifest}
        tool = arm.zoom_tool(arm.settings, pixel_multiple=family.pixel_multiple, **limits)
    else:
        rows, tool = arm.without_galaxy(seed), control_zoom_tool(spec, arm, family)
        positions = arm.control_positions(seed)
    backend.generation_kwargs = suppressing_placeholders(backend.generation_kwargs, backend.model.config)
    runner = ZoomEpisodes(LocalTurns(backend, family), tool, spec.split, max_turns=spec.zoom_max_turns)
    prompts = [zoom_prompt(r["prompt"], arm) for r in rows]
    texts, zoomed = {}, 0
    for ended in runner.stream(prompts, [r.get("image") for r in rows], positions):
        for k, episode in ended:
            if episode.done:
                texts[k], zoomed = episode.text, zoomed + (episode.env.valid_calls > 0)
    labels = np.asarray([r["label"] for r in rows], np.int64)
    return [texts[k] for k in range(len(rows))], labels, zoomed / len(rows)


def probe_blank_input(spec: RunSpec, *, backend=None, max_samples: int = 64) -> ProbeResult:
    """The run's model with the galaxy removed must not beat the majority-class rate. `backend` is anything with
    `generate(prompts, images)` (default: the run's model through `TransformersBackend`). A zoom run's control is
    asked as zoom episodes whose tool sees the control's galaxy too (`_score_episodes`)."""

    if backend is None:
        max_new = ZOOM_TURN_TOKENS if spec.zoom else 32
        backend = TransformersBackend.from_pretrained(
            spec.model, SamplingSettings(max_new_tokens=max_new), batch_size=16
        )
    if spec.zoom:
        score = _score_episodes(spec, backend, max_samples=max_samples)
    else:
        prompts, images, labels = control_rows(spec, spec.split, max_samples=max_samples, galaxy="blank")
        score = _score_backend(backend, prompts, images, labels, spec.classes())
    what = ARMS[spec.modality].blank_input
    if spec.zoom:
        what += f" in zoom episodes whose zooms see it too ({score['zoom_rate']:.0%} zoomed)"
    line = (
        f"with {what}, accuracy {score['accuracy']:.3f} vs majority rate {score['rate']:.3f} "
        f"(n={score['n']}, p={score['p_value']:.1e})"
    )
    if score["beats"]:
        return ProbeResult("blank_input", "fail", line + ": the model answers without the galaxy (a shortcut)", score)
    return ProbeResult("blank_input", "pass", line, score)


def probe_label_permutation(
    spec: RunSpec, *, steps: int = DEFAULT_PERMUTATION_STEPS, max_samples: int = 64, seed: int = 0
) -> ProbeResult:
    """Retrain from the run's base (never from its trained checkpoint) on permuted training labels; scored on the
    true labels of the evaluation split, the retrained model must stay at chance.

    The base is the root of the run's base chain (`audit.permutation.control_start`): for a GRPO run started
    from an SFT run of the same split, the SFT run's base. The control reruns the recipe of the chain's first
    labelled stage (SFT for the demo's SFT -> GRPO chain: its targets are where the labels first enter), with a
    fresh LoRA adapter when that stage used LoRA, for at most `steps` of its steps. A run whose records do not say
    where it started, or whose base changed since, is skipped with the reason, never failed.
    """

    start = control_start(spec.model, spec.data_dir)
    if isinstance(start, str):
        return ProbeResult("label_permutation", "skip", start, {})
    details = {
        "root_base": start.root,
        "first_labelled_stage": str(start.stage),
        "recipe": start.recipe["kind"],
        "lora": bool(start.record.get("lora")),
        "chain": [str(p) for p in start.chain],
    }
    if reason := check_base(start):
        return ProbeResult("label_permutation", "skip", reason, details)
    n_steps, recipe_steps = control_steps(start, steps)
    details.update(steps=n_steps, recipe_steps=recipe_steps, permutation_seed=seed)
    model, processor = train_on_permuted_labels(start, steps=n_steps, seed=seed)
    backend = TransformersBackend(model, processor, SamplingSettings(max_new_tokens=32), batch_size=16)
    test_prompts, test_images, test_labels = control_rows(spec, spec.split, max_samples=max_samples, galaxy="real")
    images = test_images if ARMS[spec.modality].carries_image else None
    score = _score_backend(backend, test_prompts, images, test_labels, spec.classes())
    details.update(score)
    of = f" of the recipe's {recipe_steps}" if recipe_steps and recipe_steps != n_steps else ""
    adapter = ", a fresh LoRA adapter" if details["lora"] else ""
    line = (
        f"after {n_steps}{of} steps on permuted labels ({start.recipe['kind'].upper()} rerun from the base, not "
        f"the trained checkpoint{adapter}; base chain {start.describe()}), accuracy on the true {spec.split} "
        f"labels {score['accuracy']:.3f} vs majority rate {score['rate']:.3f} (n={score['n']}, "
        f"p={score['p_value']:.1e}, {score['parsed']:.0%} of answers parsed)"
    )
    if score["beats"]:
        return ProbeResult("label_permutation", "fail", line + ": labels reach the model by another route", details)
    return ProbeResult("label_permutation", "pass", line, details)


def _answers(spec: RunSpec, backend, *, max_samples: int) -> tuple[list, np.ndarray]:
    """(parsed answers, labels) of a model on the first galaxies of the run's split, asked as the run asks: one
    greedy answer, or a zoom run's episodes with its own tool (`_episode_texts`)."""
    if spec.zoom:
        texts, labels, _ = _episode_texts(spec, backend, max_samples=max_samples, galaxy="real")
    else:
        prompts, images, labels = control_rows(spec, spec.split, max_samples=max_samples, galaxy="real")
        texts = [g.text for g in backend.generate(prompts, images if ARMS[spec.modality].carries_image else None)]
    return [parse_answer(t, spec.classes()) for t in texts], labels


def _rates(predictions: list, labels: np.ndarray) -> dict:
    """Accuracy, the share of answers parsed, and the accuracy among parsed answers (format aside)."""
    correct = int(sum(p == y for p, y in zip(predictions, labels)))
    parsed = sum(p is not None for p in predictions)
    return {
        "accuracy": correct / len(labels),
        "parsed": parsed / len(labels),
        "accuracy_parsed": correct / parsed if parsed else 0.0,
    }


def _three_models(spec: RunSpec, start: str, rerun, *, max_samples: int) -> dict:
    """The start (a model directory), the run (`spec.model`) and the rerun (its model and processor), asked the same
    galaxies (`_answers`): `n`, `split`, their `rates`, the run's and the rerun's `gains` over the start (points, and
    among parsed answers), and the paired `comparison` of the run against the rerun (exact McNemar)."""
    sampling = SamplingSettings(max_new_tokens=ZOOM_TURN_TOKENS if spec.zoom else 32)
    backends = {
        "rerun": lambda: TransformersBackend(*rerun, sampling, batch_size=16),
        "start": lambda: TransformersBackend.from_pretrained(start, sampling, batch_size=16),
        "run": lambda: TransformersBackend.from_pretrained(spec.model, sampling, batch_size=16),
    }  # the saved models are loaded one at a time, as they are asked
    answers = {which: _answers(spec, make(), max_samples=max_samples) for which, make in backends.items()}
    labels = answers["run"][1]
    rates = {which: _rates(predictions, labels) for which, (predictions, _) in answers.items()}
    gains = {
        which: {
            "gain_points": 100 * (rates[which]["accuracy"] - rates["start"]["accuracy"]),
            "gain_parsed_points": 100 * (rates[which]["accuracy_parsed"] - rates["start"]["accuracy_parsed"]),
        }
        for which in ("run", "rerun")
    }
    comparison = paired_comparison(labels, answers["run"][0], answers["rerun"][0])
    return {"n": len(labels), "split": spec.split, "rates": rates, "gains": gains, "comparison": comparison}


def _bernoulli(mean: float, high: float) -> str:
    return f"Bernoulli({mean:.3f})" if high == 1 else f"{high:g} x Bernoulli({mean / high:.3f})"


def probe_random_reward(
    spec: RunSpec,
    *,
    steps: int = DEFAULT_RANDOM_REWARD_STEPS,
    max_samples: int = DEFAULT_RANDOM_REWARD_SAMPLES,
    seed: int = 0,
) -> ProbeResult:
    """A GRPO run's gain over its own start must beat that of its GRPO stage rerun from the same start, with the
    recorded recipe, for the same steps (at most `steps`), with every label-reading reward replaced by a seeded
    random reward of the mean the run logged for it (`audit.random_reward`).

    The start, the run and the rerun answer the same galaxies (the first `max_samples` of the run's split, greedy;
    a zoom run's as zoom episodes with its own tool). `fail` unless the run is right more often than the rerun with
    an exact McNemar p < 0.05. The gains are reported in points over the start, also among parsed answers only, so a
    gain that is only a higher parse rate shows as such. A run that is not a GRPO run of the recipes, or whose records
    cannot say where it started or what its rewards logged, or whose start changed since, is skipped with the
    reason."""

    name = "random_reward"
    start = grpo_start(spec.model)
    if isinstance(start, str):
        return ProbeResult(name, "skip", start, {})
    details = {"start": start.root, "run": str(start.stage), "lora": bool(start.record.get("lora")), "seed": seed}
    if reason := check_base(start):
        return ProbeResult(name, "skip", reason, details)
    log = run_log(start)
    if isinstance(log, str):
        return ProbeResult(name, "skip", log, details)
    made = random_rewards(start, log, seed=seed)
    if isinstance(made, str):
        return ProbeResult(name, "skip", made, details)
    funcs, overrides, replaced = made
    n_steps, run_steps = rerun_steps(start, log, steps)
    details.update(steps=n_steps, run_steps=run_steps, replaced=replaced, rewards=[f.__name__ for f in funcs])
    rerun = train_with_random_rewards(start, funcs, overrides, steps=n_steps)
    details.update(_three_models(spec, start.model_path, rerun, max_samples=max_samples))
    rates, gains, p = details["rates"], details["gains"], details["comparison"]["mcnemar_p_value"]
    random_part = (
        ", ".join(f"{k} -> {_bernoulli(v['mean'], v['high'])} (its logged mean)" for k, v in replaced.items())
        if replaced
        else "no reward reads the label, so the rerun is the run's own recipe"
    )
    line = (
        f"gain over the start {gains['run']['gain_points']:+.1f} points (run) vs "
        f"{gains['rerun']['gain_points']:+.1f} (GRPO rerun from the start with random rewards: {random_part}; "
        f"{n_steps} steps), exact McNemar p={p:.2g} (n={details['n']}, {spec.split}); among parsed answers "
        f"{gains['run']['gain_parsed_points']:+.1f} vs {gains['rerun']['gain_parsed_points']:+.1f} points (parsed "
        f"{rates['start']['parsed']:.0%} -> {rates['run']['parsed']:.0%} run, {rates['rerun']['parsed']:.0%} rerun)"
    )
    if rates["run"]["accuracy"] > rates["rerun"]["accuracy"] and p < RANDOM_REWARD_ALPHA:
        return ProbeResult(name, "pass", line, details)
    return ProbeResult(
        name,
        "fail",
        line + f": the run's gain is not larger than random rewards give with p < {RANDOM_REWARD_ALPHA} (no "
        "evidence that its rewards' labels taught it)",
        details,
    )


# --- run records ---------------------------------------------------------------------------------------------------


def probe_seeds(runs: dict[str, dict]) -> ProbeResult:

    if len(runs) < 2:
        return ProbeResult("seeds", "skip", "fewer than two runs with a fingerprint", {"runs": sorted(runs)})
    problems = compare_fingerprints(runs)
    if problems:
        return ProbeResult("seeds", "fail", "; ".join(p["reason"] for p in problems), {"problems": problems})
    return ProbeResult(
        "seeds",
        "pass",
        f"{len(runs)} runs: different seeds have different fingerprints, no configuration and seed repeats",
        {"runs": sorted(runs)},
    )


def probe_ceiling(result_path, ceiling: float) -> ProbeResult:

    verdict = gate_result(result_path, ceiling=ceiling)
    return ProbeResult("ceiling", "fail" if verdict.suspect else "pass", verdict.reason, asdict(verdict))


# --- the audit -----------------------------------------------------------------------------------------------------


def _is_run_dir(path: Path) -> bool:
    return any((path / f).is_file() for f in ("result.json", "fingerprint.json", "prompt_lint.json"))


def run_spec(run_dir: Path) -> RunSpec | None:
    """What the run's records say about its model and data (None when they do not say)."""

    lint = read_lint_record(run_dir) or {}
    values: dict = {}
    result_path = run_dir / "result.json"
    if result_path.is_file():
        config = read_json_file(result_path, "evaluation result", keys=("config",))["config"]
        values = {
            k: config[k]
            for k in (
                "model",
                "data_dir",
                "modality",
                "codec",
                "rendering",
                "image_size",
                "token_crop",
                "split",
                "zoom",
            )
            if config.get(k) is not None
        }
        if config.get("zoom"):
            values["zoom_max_turns"] = int(config.get("zoom_max_turns", RunSpec.zoom_max_turns))
            values.update({k: float(config[k]) for k in ("zoom_min_side", "zoom_max_aspect") if config.get(k)})
    fingerprint = read_fingerprint(run_dir) or {}
    for k, v in fingerprint.get("extra", {}).items():
        if k in ("data_dir", "modality", "codec", "rendering") and k not in values and v not in ("None", ""):
            values[k] = v
        if k in ("image_size", "zoom_max_turns") and k not in values:
            values[k] = int(v)
        if k in ("zoom_min_side", "zoom_max_aspect", "token_crop") and k not in values and v not in ("None", ""):
            values[k] = float(v)
        if k == "zoom" and "zoom" not in values:
            values[k] = v in (True, "True", "true")
    if "model" not in values and (run_dir / "config.json").is_file():
        values["model"] = str(run_dir)
    if lint.get("template"):
        values["template"] = lint["template"]
    if lint.get("modality") and "modality" not in values:
        values["modality"] = lint["modality"]
    if not values.get("data_dir"):
        return None
    return RunSpec(model=values.pop("model", ""), data_dir=values.pop("data_dir"), **values)


def audit(
    target,
    *,
    templates: dict[str, str] | None = None,
    ceiling: float | None = None,
    controls: bool = True,
    max_samples: int = 64,
    permutation_steps: int = DEFAULT_PERMUTATION_STEPS,
    random_reward_steps: int = DEFAULT_RANDOM_REWARD_STEPS,
    random_reward_samples: int = DEFAULT_RANDOM_REWARD_SAMPLES,
    blank_backend=None,
) -> AuditReport:
    """Run every probe that applies to `target`: a Galaxy10-schema HDF5 file, a prepared directory, a run directory
    (training output or evaluation output) or a sweep directory (run directories inside)."""

    ceiling = DEFAULT_CEILING if ceiling is None else ceiling
    path = Path(target)
    if not path.exists():
        raise UserError(f"{target}: no such file or directory")
    spec, runs, results = None, {}, []
    if path.is_file():
        kind, manifest = "data file", make_manifest(path)
    elif (path / MANIFEST_NAME).is_file():
        kind, manifest = "prepared data", load_manifest(path)
    elif _is_run_dir(path):
        kind, spec = "run", run_spec(path)
        manifest = load_manifest(spec.data_dir) if spec else None
        if (fp := read_fingerprint(path)) is not None:
            runs[path.name] = fp
        if (path / "result.json").is_file():
            results.append(path / "result.json")
    else:
        subdirs = [d for d in sorted(path.iterdir()) if d.is_dir() and _is_run_dir(d)]
        if not subdirs:
            raise UserError(f"{target}: not a Galaxy10 file, a prepared directory, a run or a sweep of runs")
        kind, manifest = "sweep", None
        for d in subdirs:
            if (fp := read_fingerprint(d)) is not None:
                runs[d.name] = fp
            if (d / "result.json").is_file():
                results.append(d / "result.json")
    report = AuditReport(str(path), kind)

    if manifest is not None:
        data = load_split_data(manifest)
        report.probes.append(probe_row_order(data))
        report.probes.append(probe_duplicates(data))
        if templates is None:
            task = task_of(manifest)
            # The templates of the arms that read this kind of data (images or spectra).
            templates = {
                name: arm.template_for(task)
                for name, arm in ARMS.items()
                if arm.reads_spectra == bool(manifest.spectra)
            }
            lint = read_lint_record(path) if path.is_dir() else None
            if lint and lint.get("template"):
                templates = {lint["modality"]: lint["template"]}
        report.probes.append(probe_metadata(data, templates))
    if spec is not None and spec.model and controls:
        report.probes.append(probe_blank_input(spec, backend=blank_backend, max_samples=max_samples))
        report.probes.append(probe_label_permutation(spec, steps=permutation_steps, max_samples=max_samples))
        report.probes.append(probe_random_reward(spec, steps=random_reward_steps, max_samples=random_reward_samples))
    elif kind == "run" and controls:
        report.probes.append(ProbeResult("controls", "skip", "no model or data recorded for this run", {}))
    if kind in ("run", "sweep"):
        report.probes.append(probe_seeds(runs))
        for result_path in results:
            report.probes.append(probe_ceiling(result_path, ceiling))
    return report

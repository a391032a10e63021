"""Prepared spectra splits through the real command line: a Multimodal-Universe-layout directory written by `datasets`
itself (parquet and save_to_disk) inspected and prepared with its traps reported, the splits disjoint by content,
stratified, independent of row order, in Angstrom; reuse and refusal on re-preparing; bad input as one line; and the
surrogate from `data synth --spectra --traps` to prepared splits."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, cli

from astroreason.data.splits import MANIFEST_NAME, SPLIT_NAMES, Manifest, load_manifest, load_split

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("A", "F", "K")
PER_CLASS = 20
PIXELS = 64
# The traps planted in the catalogue (object ids): a repeat observation of one star (same position, other noise,
# same class), one spectrum filed twice under two classes, and a spectrum holding a NaN.
POSITION_PAIR = ("A-03", "A-07")
CONFLICT_PAIR = ("F-05", "K-11")
NAN_ID = "K-02"


def run_cli(*args):
    """The installed command line in a subprocess: (exit status, stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "astroreason.cli", *map(str, args)], capture_output=True, text=True, env=env
    )
    return done.returncode, done.stdout, done.stderr


def mmu_rows(order=None) -> dict:
    """The catalogue and spectra, class-sorted (as a survey's class table often is), `lambda` in nm."""
    rng = np.random.default_rng(7)
    lam = np.linspace(380.0, 900.0, PIXELS, dtype=np.float32)  # nm
    ids, ra, dec, labels, flux = [], [], [], [], []
    for c, name in enumerate(CLASSES):
        for k in range(PER_CLASS):
            ids.append(f"{name}-{k:02d}")
            ra.append(10.0 + 3 * c + 0.1 * k)
            dec.append(-5.0 + 0.05 * k)
            labels.append(name)
            flux.append((1 + c) * np.exp(-((lam - 500 - 100 * c) ** 2) / 5000) + rng.normal(0, 0.05, PIXELS))
    flux = np.asarray(flux, np.float32)
    index = {i: r for r, i in enumerate(ids)}
    a, b = (index[i] for i in POSITION_PAIR)
    ra[b], dec[b] = ra[a], dec[a]
    a, b = (index[i] for i in CONFLICT_PAIR)
    flux[b] = flux[a]
    flux[index[NAN_ID], 10] = np.nan
    # Every third spectrum has its first pixels flagged bad by the survey.
    spectrum = [
        {
            "flux": f,
            "ivar": np.full(PIXELS, 400, np.float32),
            "lambda": lam,
            "mask": np.arange(PIXELS) < 3 * (i % 3 == 0),
        }
        for i, f in enumerate(flux)
    ]
    rows = {"object_id": ids, "ra": ra, "dec": dec, "spectrum": spectrum, "Z": [0.0] * len(ids), "subclass": labels}
    order = range(len(ids)) if order is None else order
    return {k: [v[i] for i in order] for k, v in rows.items()}


def mmu_features(length=None):
    """Multimodal Universe's declaration: a `spectrum` struct of flux, ivar, lambda, mask (fixed length as DESI's
    builder gives it, when `length`)."""
    from datasets import Features, Sequence, Value

    spectrum = Sequence(
        feature={"flux": Value("float32"), "ivar": Value("float32"), "lambda": Value("float32"), "mask": Value("bool")},
        length=length or -1,
    )
    return Features(
        {
            "object_id": Value("string"),
            "ra": Value("float64"),
            "dec": Value("float64"),
            "spectrum": spectrum,
            "Z": Value("float32"),
            "subclass": Value("string"),
        }
    )


@pytest.fixture(scope="module")
def mmu(tmp_path_factory):
    """The class-sorted rows as parquet (`data/train-00000-of-00001.parquet`), and the same rows permuted as a
    fixed-length `save_to_disk` directory."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    root = tmp_path_factory.mktemp("mmu")
    parquet = root / "parquet"
    (parquet / "data").mkdir(parents=True)
    Dataset.from_dict(mmu_rows(), features=mmu_features()).to_parquet(
        str(parquet / "data" / "train-00000-of-00001.parquet")
    )
    permuted = np.random.default_rng(1).permutation(len(CLASSES) * PER_CLASS).tolist()
    saved = root / "saved"
    Dataset.from_dict(mmu_rows(permuted), features=mmu_features(PIXELS)).save_to_disk(str(saved))
    return parquet, saved


@pytest.fixture(scope="module")
def prepared(mmu, tmp_path_factory):
    """Both copies prepared through the command line, lambda read in nm: (out dirs, prepare's stdout)."""
    root = tmp_path_factory.mktemp("prepared")
    outs, texts = [], []
    for source, name in zip(mmu, ("from_parquet", "from_saved")):
        out = root / name
        status, text, err = run_cli(
            "data", "prepare", source, "--out", out, "--label-column", "subclass", "--wavelength-unit", "nm"
        )
        assert status == 0, err
        outs.append(out)
        texts.append(text)
    return outs, texts


def views(out) -> dict:
    return {name: load_split(out, name) for name in SPLIT_NAMES}


def test_inspect_reports_the_traps(mmu):
    status, text, err = run_cli("data", "inspect", mmu[0], "--label-column", "subclass", "--json")
    assert status == 0, err
    report = json.loads(text)
    assert report["n_rows"] == len(CLASSES) * PER_CLASS and report["n_pixels"] == PIXELS
    assert [c["name"] for c in report["classes"]] == list(CLASSES)
    assert report["ordering"]["sorted_by_class"]
    dupes = report["duplicates"]
    assert [(g["ids"], g["conflict"]) for g in dupes["exact_position"]] == [(list(POSITION_PAIR), False)]
    assert [(g["ids"], g["conflict"]) for g in dupes["identical_flux"]] == [(list(CONFLICT_PAIR), True)]
    assert [(e["id"], e["reason"]) for e in report["flux_excluded"]] == [(NAN_ID, "flux holds 1 NaN value(s)")]

    # The same rows permuted, as save_to_disk: the same groups, no longer in class order.
    status, text, err = run_cli("data", "inspect", mmu[1], "--label-column", "subclass", "--json")
    assert status == 0, err
    saved = json.loads(text)
    assert not saved["ordering"]["sorted_by_class"] and saved["n_rows"] == report["n_rows"]
    for kind in ("exact_position", "identical_flux", "combined"):
        groups = [(sorted(g["ids"]), g["conflict"]) for g in report["duplicates"][kind]]
        assert sorted(groups) == sorted((sorted(g["ids"]), g["conflict"]) for g in saved["duplicates"][kind])
    assert [e["id"] for e in saved["flux_excluded"]] == [NAN_ID]

    status, text, err = run_cli("data", "inspect", mmu[0], "--label-column", "subclass")
    assert status == 0, err
    assert "sorted by class" in text and "yes (dropped by prepare)" in text
    assert f"object_id {NAN_ID}" in text and "NaN" in text
    assert ", ".join(CONFLICT_PAIR) in text and ", ".join(POSITION_PAIR) in text


def test_prepare_reports_and_splits_by_content(mmu, prepared):
    out, text = prepared[0][0], prepared[1][0]
    assert f"dropped object_id {', '.join(CONFLICT_PAIR)}: the same star labelled F, K" in text
    assert f"excluded object_id {NAN_ID}: flux holds 1 NaN value(s)" in text
    m = load_manifest(out)
    assert m.release == "mmu-spectra" and m.id_name == "object_id" and m.classes == list(CLASSES)
    assert m.spectra == {"label_column": "subclass", "wavelength_unit": "nm", "n_pixels": PIXELS}
    assert [d["ids"] for d in m.dropped] == [list(CONFLICT_PAIR)]
    assert [(e["id"], e["reason"]) for e in m.excluded_rows] == [(NAN_ID, "flux holds 1 NaN value(s)")]

    splits = views(out)
    ids = {name: d["object_id"] for name, d in splits.items()}
    every = [i for name in SPLIT_NAMES for i in ids[name]]
    assert sorted(every) == sorted(set(every)) and len(every) == len(CLASSES) * PER_CLASS - 3
    assert not {*CONFLICT_PAIR, NAN_ID} & set(every)
    assert [name for name in SPLIT_NAMES if set(POSITION_PAIR) <= set(ids[name])]  # the repeat kept in one split
    # Disjoint by content: no spectrum's flux in two splits.
    content = {
        name: {hashlib.sha256(np.asarray(f, np.float32).tobytes()).hexdigest() for f in d["flux"]}
        for name, d in splits.items()
    }
    assert not content["train"] & content["val"] and not content["train"] & content["test"]
    assert not content["val"] & content["test"]
    # Stratified: every class in every split, near its 80/10/10 share.
    for c, name in enumerate(CLASSES):
        n_class = sum(Counter(d["label"])[c] for d in splits.values())
        for split, share in zip(SPLIT_NAMES, m.fractions):
            assert abs(Counter(splits[split]["label"])[c] - share * n_class) <= 1, (name, split)
    # Not class-sorted any more: the seeded shuffle within a split.
    assert len(set(splits["train"]["label"][:10])) > 1


def test_prepared_rows_hold_the_source_spectra_in_angstrom(prepared):
    source = {r: i for i, r in enumerate(mmu_rows()["object_id"])}
    rows = mmu_rows()
    train = load_split(prepared[0][0], "train")
    assert train.features["label"].names == list(CLASSES)
    assert set(train.column_names) == {"object_id", "flux", "ivar", "wavelength", "label", "label_name"}
    masked = 0
    for example in train:
        r = source[example["object_id"]]
        cell = rows["spectrum"][r]
        np.testing.assert_allclose(example["wavelength"], cell["lambda"] * 10, rtol=1e-6)  # nm -> Angstrom
        np.testing.assert_array_equal(example["flux"], cell["flux"])
        # The survey's bad pixels reach the views as ivar 0 (the mask itself is not carried).
        np.testing.assert_array_equal(example["ivar"], np.where(cell["mask"], 0, cell["ivar"]))
        masked += int(cell["mask"].any())
        assert example["label_name"] == rows["subclass"][r] == CLASSES[example["label"]]
    assert masked > 0
    assert 3800 <= min(train[0]["wavelength"]) and max(train[0]["wavelength"]) <= 9000.5


def test_permuted_rows_give_the_same_splits(prepared):
    """The save_to_disk copy holds the same rows permuted (and fixed-length lists): the same spectra land in the
    same splits, in the same order."""
    a, b = (load_manifest(out) for out in prepared[0])
    assert a.ids == b.ids and a.split_sha256 == b.split_sha256
    assert a.source_sha256 != b.source_sha256  # the files differ (row order), the split does not


def test_re_prepare_reuses_or_refuses(mmu, prepared, capsys):
    out = prepared[0][0]
    before = (out / MANIFEST_NAME).read_bytes()
    status, text, err = run_cli(
        "data", "prepare", mmu[0], "--out", out, "--label-column", "subclass", "--wavelength-unit", "nm"
    )
    assert status == 0, err
    assert (out / MANIFEST_NAME).read_bytes() == before
    status, _, err = cli(
        capsys, "data", "prepare", mmu[0], "--out", out, "--label-column", "subclass", "--wavelength-unit", "nm",
        "--seed", "1",
    )  # fmt: skip
    assert_one_line_error(status, err, str(out), "already prepared with other data or settings")
    status, _, err = cli(capsys, "data", "prepare", mmu[0], "--out", out, "--label-column", "subclass")
    assert_one_line_error(status, err, "already prepared")  # Angstrom is not nm: other settings
    assert (out / MANIFEST_NAME).read_bytes() == before


def write_dataset(path: Path, rows: dict, features=None) -> Path:
    from datasets import Dataset

    (path / "data").mkdir(parents=True)
    Dataset.from_dict(rows, features=features).to_parquet(str(path / "data" / "train-00000-of-00001.parquet"))
    return path


def test_bad_input_is_one_line(mmu, tmp_path, capsys):
    parquet = mmu[0]
    part = "train-00000-of-00001.parquet"
    for command in ("inspect", "prepare"):
        out = ["--out", tmp_path / f"out-{command}"] if command == "prepare" else []
        status, _, err = cli(capsys, "data", command, parquet, *out, "--label-column", "sptype")
        assert_one_line_error(status, err, part, "no label column `sptype`", "subclass")
        status, _, err = cli(capsys, "data", command, parquet, *out, "--label-column", "subclass", "--wavelength-unit", "parsec-ish")  # fmt: skip
        assert_one_line_error(status, err, "--wavelength-unit", "parsec-ish")
        status, _, err = cli(capsys, "data", command, parquet, *out)
        assert_one_line_error(status, err, str(parquet), "--label-column")
    assert not (tmp_path / "out-prepare").exists()

    # A dataset without a `spectrum` column is not spectra.
    table = write_dataset(tmp_path / "table", {"object_id": ["a", "b"], "subclass": ["A", "F"]})
    for command in ("inspect", "prepare"):
        out = ["--out", tmp_path / "never"] if command == "prepare" else []
        status, _, err = cli(capsys, "data", command, table, *out, "--label-column", "subclass")
        assert_one_line_error(status, err, str(table), "not a spectra dataset", "--label-column")

    # Flux arrays of different lengths across rows.
    spectrum = [
        {"flux": [1.0, 2.0, 3.0], "ivar": [1.0] * 3, "lambda": [400.0, 500.0, 600.0]},
        {"flux": [1.0, 2.0], "ivar": [1.0] * 2, "lambda": [400.0, 500.0]},
    ]
    ragged = write_dataset(tmp_path / "ragged", {"object_id": ["a", "b"], "spectrum": spectrum, "cls": ["A", "F"]})
    status, _, err = cli(capsys, "data", "prepare", ragged, "--out", tmp_path / "r", "--label-column", "cls")
    assert_one_line_error(status, err, part, "`spectrum`.flux", "differ in length")

    # Image-only options on spectra.
    status, _, err = cli(capsys, "data", "synth", "--spectra", "--out", tmp_path / "stars", "--size", 64)
    assert_one_line_error(status, err, "--spectra", "--size")
    assert not (tmp_path / "stars").exists()
    status, _, err = cli(capsys, "data", "prepare", parquet, "--out", tmp_path / "s", "--label-column", "subclass", "--subset", "flux")  # fmt: skip
    assert_one_line_error(status, err, "--subset", "spectra")


def test_manifest_without_spectra_keeps_the_image_body():
    """An image manifest's saved body and hash have no `spectra` key: manifests written before it still verify."""
    fields = dict(
        source_path="/x.h5", source_sha256="0" * 64, release="decals", classes=["a", "b"], n_source_rows=2, seed=0,
        fractions=[0.8, 0.1, 0.1], radius_arcsec=5.0, subset="all", include_rows_sha256=None,
        rows={"train": [0, 1], "val": [], "test": []}, split_sha256={}, groups=[], dropped=[], excluded=0,
    )  # fmt: skip
    image = Manifest(**fields)
    assert "spectra" not in image.to_json()
    old = {k: v for k, v in image.to_json().items() if k != "hash"}
    assert Manifest(**image.to_json()).compute_hash() == image.compute_hash()
    assert Manifest(**old).compute_hash() == image.compute_hash()
    spectra = Manifest(**fields, spectra={"label_column": "c", "wavelength_unit": "nm", "n_pixels": 3})
    assert spectra.to_json()["spectra"]["label_column"] == "c" and spectra.compute_hash() != image.compute_hash()


def test_surrogate_synth_then_prepare(tmp_path):
    source, out = tmp_path / "stars", tmp_path / "prepared"
    status, text, err = run_cli("data", "synth", "--spectra", "--out", source, "--n", 70, "--seed", 3, "--sorted", "--traps")  # fmt: skip
    assert status == 0, err
    assert "70 stellar spectra" in text
    planted = json.loads((source / "planted.json").read_text())
    status, text, err = run_cli("data", "prepare", source, "--out", out, "--label-column", "spectral_class")
    assert status == 0, err
    m = load_manifest(out)
    ids = mmu_ids(source)
    dropped = sorted(i for d in m.dropped for i in d["ids"])
    assert dropped == sorted(ids[r] for key in ("position_conflict", "content_conflict") for r in planted[key])
    assert sorted(e["id"] for e in m.excluded_rows) == sorted(ids[planted[k]] for k in ("nan_flux", "inf_flux"))
    for key in ("position_same", "content_same"):
        pair = {ids[r] for r in planted[key]}
        assert [s for s in SPLIT_NAMES if pair <= set(m.ids[s])], key
    assert sum(m.split_sizes().values()) == 70 - 6
    train = load_split(out, "train")
    assert len(train[0]["flux"]) == m.spectra["n_pixels"] == 3980
    assert f"excluded object_id {ids[planted['nan_flux']]}: flux holds 1 NaN value(s)" in text


def mmu_ids(source) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(source / "data" / "train-00000-of-00001.parquet", columns=["object_id"])[
        "object_id"
    ].to_pylist()

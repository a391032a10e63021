"""The data layer on files written by other code (plain h5py): inspect finds every planted hazard, prepare splits
stratified, deduplicated and independent of row order, and the datasets views carry nothing but image and label."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter

import h5py
import numpy as np
import pytest
from data_files import SIDE, image_hash, write_foreign, write_h5

from astroreason.cli import main
from astroreason.data.galaxy10 import DECALS_CLASSES, SDSS_CLASSES
from astroreason.data.inspect import inspect_file
from astroreason.data.splits import SPLIT_NAMES, load_manifest, load_split, prepare
from astroreason.errors import UserError


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """(path, columns, planted): the class-sorted file with its planted duplicates."""
    return write_foreign(tmp_path_factory.mktemp("foreign") / "g10.h5")


@pytest.fixture(scope="module")
def shuffled(foreign, tmp_path_factory):
    """The same rows in a random order, and the permutation used (new row i is old row perm[i])."""
    _, cols, _ = foreign
    perm = np.random.default_rng(11).permutation(len(cols["ans"]))
    return write_h5(tmp_path_factory.mktemp("shuffled") / "g10.h5", cols, order=perm), perm


@pytest.fixture(scope="module")
def prepared(foreign, tmp_path_factory):
    return prepare(foreign[0], tmp_path_factory.mktemp("prep") / "out", seed=3)


@pytest.fixture(scope="module")
def prepared_shuffled(shuffled, tmp_path_factory):
    return prepare(shuffled[0], tmp_path_factory.mktemp("prep_shuf") / "out", seed=3)


def groups_of(report_groups):
    return {frozenset(g["rows"]) for g in report_groups}


# --- inspect ---------------------------------------------------------------------------------------------------


def test_inspect_finds_order_every_planted_group_conflicts_and_nans(foreign):
    path, cols, planted = foreign
    report = inspect_file(path)
    assert report["release"] == "decals" and report["n_rows"] == planted.n_rows
    assert report["image_size"] == [SIDE, SIDE]
    assert [c["count"] for c in report["classes"]] == np.bincount(cols["ans"], minlength=10).tolist()
    assert [c["name"] for c in report["classes"]] == list(DECALS_CLASSES)

    order = report["ordering"]
    assert order["sorted_by_class"] and order["grouped_by_class"] and order["n_runs"] == 10
    bounds = np.cumsum(np.bincount(cols["ans"], minlength=10))
    assert [r["stop"] for r in order["runs"]] == bounds.tolist()

    assert report["nan_counts"]["redshift"] == planted.nan_redshift
    assert report["nan_counts"]["ra"] == 0 and report["nan_counts"]["pxscale"] == 0

    dupes = report["duplicates"]
    assert groups_of(dupes["exact_position"]) == set(planted.exact)
    assert groups_of(dupes["near_position"]) == set(planted.near)
    assert groups_of(dupes["identical_image"]) == set(planted.image)
    assert groups_of(dupes["combined"]) == set(planted.all_groups)
    for kind, planted_groups in (
        ("exact_position", planted.exact),
        ("near_position", planted.near),
        ("identical_image", planted.image),
    ):
        flagged = {frozenset(g["rows"]) for g in dupes[kind] if g["conflict"]}
        assert flagged == set(planted.conflicting(planted_groups)), kind
        assert dupes["conflicts"][kind] == len(flagged)
    for g in dupes["near_position"]:
        assert 2.0 <= g["max_sep_arcsec"] <= 4.5
    for g in dupes["exact_position"]:
        assert g["max_sep_arcsec"] < 1e-3
    # A smaller radius no longer joins the near pairs; the exact ones stay.
    small = inspect_file(path, radius_arcsec=1.0)["duplicates"]
    assert small["near_position"] == [] and groups_of(small["exact_position"]) == set(planted.exact)


def test_inspect_cli_json_matches_and_shuffled_file_is_not_ordered(foreign, shuffled):
    path, _, planted = foreign
    out = subprocess.run(
        [sys.executable, "-m", "astroreason.cli", "data", "inspect", str(path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == json.loads(json.dumps(inspect_file(path)))
    table = subprocess.run(
        [sys.executable, "-m", "astroreason.cli", "data", "inspect", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "sorted by class" in table and f"{len(planted.all_groups)} groups in all" in table

    report = inspect_file(shuffled[0])
    assert not report["ordering"]["sorted_by_class"] and not report["ordering"]["grouped_by_class"]
    # The same groups, in the shuffled file's row numbers.
    back = {old: new for new, old in enumerate(shuffled[1])}
    assert groups_of(report["duplicates"]["combined"]) == {frozenset(back[r] for r in g) for g in planted.all_groups}


# --- prepare ---------------------------------------------------------------------------------------------------


def test_prepare_is_stratified_keeps_groups_whole_and_drops_conflicts(foreign, prepared):
    _, cols, planted = foreign
    m = load_manifest(prepared)
    labels = planted.labels
    split_of = {r: name for name, rows in m.rows.items() for r in rows}
    dropped = {frozenset(d["rows"]) for d in m.dropped}
    conflicting = set(planted.conflicting(planted.all_groups))
    assert dropped == conflicting
    for d in m.dropped:
        assert d["labels"] == [int(labels[r]) for r in d["rows"]]
    dropped_rows = set().union(*dropped)
    assert not dropped_rows & set(split_of)
    # Every other row is in exactly one split; no duplicate group straddles two.
    assert sorted(split_of) == sorted(set(range(planted.n_rows)) - dropped_rows)
    assert sum(m.split_sizes().values()) == len(split_of)
    kept = [g for g in planted.all_groups if g not in conflicting]
    assert {frozenset(g) for g in m.groups} == set(kept)
    for g in kept:
        assert len({split_of[r] for r in g}) == 1, g
    # Stratified: each class is split close to 80/10/10 (a group of 2 may tip a split by one).
    kept_labels = Counter(int(labels[r]) for r in split_of)
    for k, name in enumerate(SPLIT_NAMES):
        per_class = Counter(int(labels[r]) for r in m.rows[name])
        for c, total in kept_labels.items():
            assert abs(per_class[c] - m.fractions[k] * total) <= 1.5, (name, c)
        share = len(m.rows[name]) / len(split_of)
        assert abs(share - m.fractions[k]) < 0.03
    assert m.excluded == 0 and m.seed == 3


def test_split_does_not_depend_on_row_order(foreign, shuffled, prepared, prepared_shuffled):
    a, b = load_manifest(prepared), load_manifest(prepared_shuffled)
    assert a.split_sha256 == b.split_sha256
    perm = shuffled[1]
    for name in SPLIT_NAMES:
        # Same galaxies, same order: row r of the shuffled file is row perm[r] of the sorted one.
        assert [int(perm[r]) for r in b.rows[name]] == a.rows[name]
        ha = [image_hash(x["image"]) for x in load_split(prepared, name)]
        hb = [image_hash(x["image"]) for x in load_split(prepared_shuffled, name)]
        assert ha == hb
    # The first rows of a split from the class-sorted file are a mix of classes.
    first = load_split(prepared, "train")[:20]["label"]
    assert len(set(first)) >= 5
    # Another seed is another split.
    assert load_manifest(prepare(foreign[0], prepared.parent / "seed4", seed=4)).rows != a.rows


def test_views_carry_image_label_and_name_only(foreign, prepared):
    import pyarrow as pa
    from PIL import Image

    _, cols, _ = foreign
    m = load_manifest(prepared)
    for name in SPLIT_NAMES:
        ds = load_split(prepared, name)
        assert ds.column_names == ["image", "label", "label_name"]
        assert len(ds) == m.split_sizes()[name]
        assert ds.features["label"].names == list(DECALS_CLASSES)
        for i, row in enumerate(ds.select(range(min(8, len(ds))))):
            assert isinstance(row["image"], Image.Image) and row["image"].size == (SIDE, SIDE)
            src = m.rows[name][i]
            assert np.array_equal(np.asarray(row["image"]), cols["images"][src])
            assert row["label"] == int(cols["ans"][src]) and row["label_name"] == DECALS_CLASSES[row["label"]]
        assert set(ds["label_name"]) <= set(DECALS_CLASSES)
    # Nothing else on disk: one Arrow file per split holding exactly these three columns, and no metadata that
    # names a row, an id or a coordinate.
    assert sorted(p.name for p in (prepared / "splits").iterdir()) == sorted(f"{s}.arrow" for s in SPLIT_NAMES)
    for arrow in (prepared / "splits").iterdir():
        with pa.memory_map(str(arrow)) as source:
            schema = pa.ipc.open_stream(source).schema
        assert schema.names == ["image", "label", "label_name"]
        meta = b" ".join(schema.metadata.values()).decode().lower() if schema.metadata else ""
        names = set(re.findall(r'"([a-z_]+)"', meta))
        assert not names & {"ra", "dec", "row", "rows", "index", "id", "idx", "objid", "redshift"}, arrow
    assert load_split(prepared, "test").split == "test"


def test_prepare_reuses_refuses_and_detects_edits(foreign, prepared, capsys):
    path = str(foreign[0])
    manifest = prepared / "manifest.json"
    before = manifest.stat().st_mtime_ns, manifest.read_text()
    assert main(["data", "prepare", path, "--out", str(prepared), "--seed", "3"]) == 0
    assert (manifest.stat().st_mtime_ns, manifest.read_text()) == before
    assert load_manifest(prepared).hash[:12] in capsys.readouterr().out

    for other in (["--seed", "4"], ["--seed", "3", "--fractions", "0.7,0.15,0.15"], ["--seed", "3", "--radius", "1"]):
        assert main(["data", "prepare", path, "--out", str(prepared), *other]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "already prepared with other data or settings" in err[0]
    assert manifest.read_text() == before[1]

    # A hand-edited manifest is refused by every reader.
    edited = prepared.parent / "edited"
    prepare(path, edited, seed=3)
    obj = json.loads((edited / "manifest.json").read_text())
    obj["rows"]["test"], obj["rows"]["train"][0] = obj["rows"]["train"][:1], obj["rows"]["test"][0]
    (edited / "manifest.json").write_text(json.dumps(obj))
    with pytest.raises(UserError, match="hash"):
        load_split(edited, "train")
    assert main(["data", "prepare", path, "--out", str(edited), "--seed", "3"]) == 2
    assert "edited by hand" in capsys.readouterr().err
    # A damaged or missing split view is one line too, never a pyarrow traceback.
    damaged = prepared.parent / "damaged"
    prepare(path, damaged, seed=3)
    (damaged / "splits" / "val.arrow").write_bytes(b"not arrow")
    with pytest.raises(UserError, match="not a readable split view"):
        load_split(damaged, "val")
    (damaged / "splits" / "test.arrow").unlink()
    with pytest.raises(UserError, match="missing"):
        load_split(damaged, "test")


def test_subset_flux_and_include_rows(tmp_path, capsys):
    path, cols, planted = write_foreign(tmp_path / "flux.h5", flux=True)
    finite = np.isfinite(cols["flux"]).reshape(planted.n_rows, -1).all(axis=1)
    assert main(["data", "prepare", str(path), "--out", str(tmp_path / "f"), "--subset", "flux"]) == 0
    m = load_manifest(tmp_path / "f")
    rows = [r for split in m.rows.values() for r in split]
    assert m.subset == "flux" and m.excluded == planted.nan_flux_rows
    assert finite[rows].all()
    dropped = set().union(*(d["rows"] for d in m.dropped))
    assert set(rows) == set(np.flatnonzero(finite)) - dropped

    wanted = np.random.default_rng(0).choice(planted.n_rows, 60, replace=False)
    listing = tmp_path / "rows.txt"
    listing.write_text("\n".join(map(str, wanted)) + "\n")
    assert main(["data", "prepare", str(path), "--out", str(tmp_path / "i"), "--include-rows", str(listing)]) == 0
    m = load_manifest(tmp_path / "i")
    rows = {r for split in m.rows.values() for r in split}
    dropped = set().union(*(d["rows"] for d in m.dropped))
    assert rows == set(wanted.tolist()) - dropped and m.include_rows_sha256
    assert m.excluded == planted.n_rows - len(wanted)
    capsys.readouterr()

    # A subset the file cannot serve, or a bad row list, is one line and nothing written.
    bad = tmp_path / "bad.txt"
    for args, message in (
        (["--subset", "flux"], "needs a `flux` key"),
        (["--include-rows", str(tmp_path / "nope.txt")], "row list not found"),
        (["--include-rows", str(bad)], "outside"),
    ):
        bad.write_text(f"{planted.n_rows + 5}\n")
        src = str(path) if "--include-rows" in args else str(write_foreign(tmp_path / "noflux.h5")[0])
        assert main(["data", "prepare", src, "--out", str(tmp_path / "x"), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not (tmp_path / "x").exists()


def test_sdss_release_is_read_with_its_own_classes(tmp_path):
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(10), 8).astype(np.uint8)
    images = rng.integers(0, 256, (80, 69, 69, 3), dtype=np.uint8)
    images[79] = images[0]  # the same picture under two labels
    labels[79] = 4
    path = tmp_path / "Galaxy10.h5"
    with h5py.File(path, "w") as f:
        f["images"], f["ans"] = images, labels
    report = inspect_file(path)
    assert report["release"] == "sdss" and report["image_size"] == [69, 69]
    assert [c["name"] for c in report["classes"]] == list(SDSS_CLASSES)
    assert not report["duplicates"]["positions_checked"]
    assert groups_of(report["duplicates"]["identical_image"]) == {frozenset({0, 79})}
    assert report["duplicates"]["conflicts"]["combined"] == 1

    out = prepare(path, tmp_path / "prep", seed=0)
    m = load_manifest(out)
    assert m.release == "sdss" and m.classes == list(SDSS_CLASSES) and [d["rows"] for d in m.dropped] == [[0, 79]]
    ds = load_split(out, "train")
    assert ds.features["label"].names == list(SDSS_CLASSES)
    assert {r["label_name"] for r in ds} <= set(SDSS_CLASSES) and len(ds) == len(m.rows["train"])

"""Hub-layout datasets as sources of `data inspect|prepare` and of the token cache.

The test writes its own galaxy10-aion-layout directory (plain pyarrow: data/train-0000{0,1}-of-00002.parquet and
data/test-00000-of-00001.parquet, small row groups) with planted traps: rows sorted by class, an exact sky duplicate
with conflicting labels inside train and one across train/test, a near pair across train/test, a NaN-flux row and
an inf-flux row. The same rows go through save_to_disk (Array3D flux) and a fake local Hub cache, and must prepare
to the same split. A plain Galaxy10 image + label parquet copy is deduplicated by image content.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from cli_helpers import assert_one_line_error, cli
from PIL import Image

from astroreason.data.galaxy10 import DECALS_CLASSES
from astroreason.data.sources import open_source
from astroreason.data.splits import load_manifest, load_split, make_manifest, prepare
from astroreason.errors import UserError
from astroreason.tokens import encode_prepared, load_codes, matched_image_split, token_split
from astroreason.tokens.cache import manifest_rows
from astroreason.tokens.fsq import FSQCodec, FSQConfig

SIDE, FLUX = 32, 16
PER_CLASS = 8
N = 10 * PER_CLASS
TEST_ROWS = tuple(range(0, N, 10))  # the dataset's own test file: every 10th row (rows are class-sorted)
ID_BASE = 1000  # Galaxy10_DECals_index = ID_BASE + 3 * row: ids are not rows
# Planted (rows of the class-sorted table; labels are row // PER_CLASS):
EXACT_TRAIN = (15, 16)  # train, classes 1 and 2: same position
EXACT_ACROSS = (31, 40)  # train class 3, test class 5: same position
NEAR_ACROSS = (51, 50)  # train and test, both class 6: 2 arcsec apart
NAN_ROW, INF_ROW = 61, 62


def gid(row: int) -> int:
    return ID_BASE + 3 * row


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def aion_columns(seed: int = 0) -> dict:
    """The rows as numpy columns, traps planted."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), PER_CLASS)
    grid = rng.permutation(36 * 10)[:N]  # distinct positions, > 1 degree apart
    ra, dec = grid % 36 * 10.0 + rng.uniform(0, 0.5, N), grid // 36 * 5.0 - 20 + rng.uniform(0, 0.5, N)
    for a, b in (EXACT_TRAIN, EXACT_ACROSS):
        ra[b], dec[b] = ra[a], dec[a]
    a, b = NEAR_ACROSS
    ra[b], dec[b] = ra[a] + 2.0 / 3600 / np.cos(np.radians(dec[a])), dec[a]
    flux = rng.normal(0.0, 0.05, (N, 4, FLUX, FLUX)).astype(np.float32)
    flux[NAN_ROW, 2, 3, 4] = np.nan
    flux[INF_ROW, 0, 0, 0] = -np.inf
    images = rng.integers(0, 256, (N, SIDE, SIDE, 3), dtype=np.uint8)
    return {"labels": labels, "ra": ra, "dec": dec, "flux": flux, "images": images, "ids": gid(np.arange(N))}


def arrow_table(cols: dict, rows) -> pa.Table:
    rows = list(rows)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    return pa.table(
        {
            "image_rgb": pa.array([{"bytes": png(cols["images"][r]), "path": None} for r in rows], image_type),
            "image_bands": pa.array(
                [cols["flux"][r].tolist() for r in rows], pa.list_(pa.list_(pa.list_(pa.float32())))
            ),
            "ra": pa.array(cols["ra"][rows]),
            "dec": pa.array(cols["dec"][rows]),
            "Galaxy10_DECals_index": pa.array(cols["ids"][rows], pa.int64()),
            "label": pa.array(cols["labels"][rows], pa.int64()),
            "label_name": pa.array([DECALS_CLASSES[c] for c in cols["labels"][rows]]),
        }
    )


def own_splits():
    train = [r for r in range(N) if r not in TEST_ROWS]
    half = len(train) // 2
    return {"train": [train[:half], train[half:]], "test": [list(TEST_ROWS)]}


def write_aion_parquet(root, cols, *, tables=None):
    """data/<split>-NNNNN-of-NNNNN.parquet, 16-row row groups (several per file: reads cross them)."""
    (root / "data").mkdir(parents=True)
    for split, shards in own_splits().items():
        for k, rows in enumerate(shards):
            table = (tables or arrow_table)(cols, rows)
            pq.write_table(table, root / "data" / f"{split}-{k:05d}-of-{len(shards):05d}.parquet", row_group_size=16)
    return root


@pytest.fixture(scope="module")
def cols():
    return aion_columns()


@pytest.fixture(scope="module")
def aion_dir(cols, tmp_path_factory):
    return write_aion_parquet(tmp_path_factory.mktemp("hub") / "galaxy10-aion", cols)


@pytest.fixture(scope="module")
def aion_prepared(aion_dir, tmp_path_factory):
    return prepare(aion_dir, tmp_path_factory.mktemp("prep") / "aion", seed=0)


def ids_of(groups) -> list[set]:
    return [set(g["ids"]) for g in groups]


# --- inspect ------------------------------------------------------------------------------------------------------


def test_inspect_reports_the_leak_the_conflicts_and_the_exclusions(aion_dir, capsys):
    status, out, _ = cli(capsys, "data", "inspect", aion_dir, "--json")
    report = json.loads(out)
    assert status == 0 and report["format"] == "parquet" and report["n_rows"] == N
    assert report["source_splits"] == {"train": N - len(TEST_ROWS), "test": len(TEST_ROWS)}
    assert report["id_name"] == "Galaxy10_DECals_index" and report["image_size"] == [SIDE, SIDE]
    dupes = report["duplicates"]
    exact = {frozenset(g["ids"]): g["conflict"] for g in dupes["exact_position"]}
    assert exact == {frozenset(map(gid, EXACT_TRAIN)): True, frozenset(map(gid, EXACT_ACROSS)): True}
    assert ids_of(dupes["near_position"]) == [set(map(gid, NEAR_ACROSS))]
    leaks = {frozenset(g["ids"]): g["source_splits"] for g in dupes["source_split_leaks"]}
    assert set(leaks) == {frozenset(map(gid, EXACT_ACROSS)), frozenset(map(gid, NEAR_ACROSS))}
    assert all(sorted(s) == ["test", "train"] for s in leaks.values())
    excluded = {e["id"]: e["reason"] for e in report["flux_excluded"]}
    assert set(excluded) == {gid(NAN_ROW), gid(INF_ROW)}
    assert "NaN" in excluded[gid(NAN_ROW)] and "infinite" in excluded[gid(INF_ROW)]
    assert report["ordering"]["n_runs"] > 10  # class-sorted files: long runs, far from shuffled
    assert report["ordering"]["adjacent_same_label"] > 0.7

    status, text, _ = cli(capsys, "data", "inspect", aion_dir)
    assert status == 0 and "own split leaks" in text and "2 with conflicting labels" in text
    assert f"Galaxy10_DECals_index {gid(NAN_ROW)}" in text and "infinite values" in text


# --- prepare ------------------------------------------------------------------------------------------------------


def test_prepare_defuses_the_traps_and_names_galaxies_by_id(aion_prepared, cols):
    m = load_manifest(aion_prepared)
    assert m.id_name == "Galaxy10_DECals_index" and m.n_source_rows == N
    dropped = [set(d["ids"]) for d in m.dropped]
    assert sorted(map(sorted, dropped)) == sorted([sorted(map(gid, EXACT_TRAIN)), sorted(map(gid, EXACT_ACROSS))])
    assert {e["id"]: e["reason"].split()[0] for e in m.excluded_rows} == {gid(NAN_ROW): "NaN", gid(INF_ROW): "infinite"}
    assert m.excluded == 2
    split_of = {i: name for name, ids in m.ids.items() for i in ids}
    gone = {gid(r) for r in (*EXACT_TRAIN, *EXACT_ACROSS, NAN_ROW, INF_ROW)}
    assert not gone & set(split_of) and len(split_of) == N - len(gone)
    assert split_of[gid(NEAR_ACROSS[0])] == split_of[gid(NEAR_ACROSS[1])]  # the near pair: one split
    leaks = {frozenset(g["ids"]): g["conflict"] for g in m.source_split_leaks}
    assert leaks == {frozenset(map(gid, EXACT_ACROSS)): True, frozenset(map(gid, NEAR_ACROSS)): False}
    for name in m.rows:  # ids run beside rows; every split holds several classes although the files are sorted
        view = load_split(aion_prepared, name)
        assert len(view) == len(m.ids[name]) and len(set(view["label"])) >= 3
        for k in (0, len(view) - 1):
            row = (m.ids[name][k] - ID_BASE) // 3
            assert np.array_equal(np.asarray(view[k]["image"]), cols["images"][row])  # decoded image_rgb
            assert view[k]["label"] == cols["labels"][row]


def test_include_rows_names_galaxies_by_their_galaxy10_index(aion_dir, tmp_path):
    """A Galaxy10 row list restricts a galaxy10-aion copy to those galaxies: its values are the source's ids
    (Galaxy10_DECals_index), not positions in the parquet files; an id the source lacks is one line."""
    wanted = [gid(r) for r in range(0, N, 4)]
    listing = tmp_path / "rows.txt"
    listing.write_text("\n".join(map(str, wanted)) + "\n")
    m = make_manifest(aion_dir, include_rows=listing)
    kept = {i for ids in m.ids.values() for i in ids}
    assert kept and kept <= set(wanted) and m.include_rows_sha256
    assert len(kept) >= len(wanted) - 6  # only the planted duplicates and bad-flux rows among them go
    listing.write_text(f"{gid(0)}\n{gid(0) + 1}\n")  # ids step by 3: gid(0) + 1 is no galaxy of the source
    with pytest.raises(UserError, match=f"Galaxy10_DECals_index {gid(0) + 1} is outside the source's"):
        make_manifest(aion_dir, include_rows=listing)


def test_class_order_and_file_order_do_not_move_a_galaxy(cols, tmp_path):
    shuffled = {k: v.copy() for k, v in cols.items()}
    perm = np.random.default_rng(5).permutation(N)
    # Same galaxies, same own split, rows in another order within each file.
    root = tmp_path / "shuffled"
    (root / "data").mkdir(parents=True)
    for split, shards in own_splits().items():
        rows = [r for shard in shards for r in shard]
        rows = [r for r in perm if r in set(rows)]
        pq.write_table(arrow_table(shuffled, rows), root / "data" / f"{split}-00000-of-00001.parquet")
    a = make_manifest(root, seed=0)
    b = load_manifest(prepare(write_aion_parquet(tmp_path / "sorted", cols), tmp_path / "p", seed=0))
    assert {k: sorted(v) for k, v in a.ids.items()} == {k: sorted(v) for k, v in b.ids.items()}


def test_save_to_disk_and_the_hub_cache_prepare_the_same_split(aion_dir, aion_prepared, cols, tmp_path, monkeypatch):
    from datasets import Array3D, Dataset, DatasetDict, Features, Image, Value

    features = Features(
        {
            "image_rgb": Image(),
            "image_bands": Array3D((4, FLUX, FLUX), "float32"),
            "ra": Value("float64"),
            "dec": Value("float64"),
            "Galaxy10_DECals_index": Value("int64"),
            "label": Value("int64"),
            "label_name": Value("string"),
        }
    )

    def dataset(rows):
        return Dataset.from_dict(
            {
                "image_rgb": [{"bytes": png(cols["images"][r]), "path": None} for r in rows],
                "image_bands": [cols["flux"][r] for r in rows],
                "ra": cols["ra"][rows].tolist(),
                "dec": cols["dec"][rows].tolist(),
                "Galaxy10_DECals_index": cols["ids"][rows].tolist(),
                "label": cols["labels"][rows].tolist(),
                "label_name": [DECALS_CLASSES[c] for c in cols["labels"][rows]],
            },
            features=features,
        )

    splits = {name: [r for shard in shards for r in shard] for name, shards in own_splits().items()}
    disk = tmp_path / "saved"
    DatasetDict({"test": dataset(splits["test"]), "train": dataset(splits["train"])}).save_to_disk(str(disk))
    reference = load_manifest(aion_prepared)
    with open_source(disk) as source:
        assert source.format == "save_to_disk" and source.split_counts() == {"train": 72, "test": 8}
    saved = load_manifest(prepare(disk, tmp_path / "p_disk", seed=0))
    assert saved.identity() == reference.identity() and saved.ids == reference.ids

    # A local Hub cache as huggingface_hub lays it out: blobs, a snapshot of symlinks, refs/main.
    cache = tmp_path / "hub"
    repo = cache / "datasets--astronolan--galaxy10-aion"
    commit = "0123456789abcdef0123456789abcdef01234567"
    for f in sorted((aion_dir / "data").iterdir()):
        blob = repo / "blobs" / f"blob-{f.name}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(f.read_bytes())
        link = repo / "snapshots" / commit / "data" / f.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    from_folder = make_manifest(repo, seed=0)
    assert from_folder.identity() == reference.identity()
    assert from_folder.source_path == str((repo / "snapshots" / commit).resolve())
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # the repo id is no path here
    from_id = load_manifest(prepare("astronolan/galaxy10-aion", tmp_path / "p_id", seed=0))
    assert from_id.identity() == reference.identity()
    with pytest.raises(UserError, match="local Hub cache"):
        make_manifest("astronolan/not-downloaded", seed=0)


def test_an_image_label_copy_is_deduplicated_by_image_content(tmp_path, capsys):
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(10), 6)
    images = rng.integers(0, 256, (len(labels), SIDE, SIDE, 3), dtype=np.uint8)
    images[7] = images[8]  # same galaxy twice, labels 1 and 1: kept together
    images[30] = images[2]  # labels 5 and 0: a conflict, dropped
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    root = tmp_path / "galaxy10"
    (root / "data").mkdir(parents=True)
    for split, rows in (("train", range(0, 50)), ("test", range(50, 60))):
        rows = list(rows)
        table = pa.table(
            {
                "image": pa.array([{"bytes": png(images[r]), "path": None} for r in rows], image_type),
                "label": pa.array(labels[rows], pa.int64()),
            }
        )
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    status, out, _ = cli(capsys, "data", "inspect", root, "--json")
    report = json.loads(out)
    assert status == 0 and not report["duplicates"]["positions_checked"] and report["id_name"] == "row"
    assert {frozenset(g["rows"]): g["conflict"] for g in report["duplicates"]["identical_image"]} == {
        frozenset({7, 8}): False,
        frozenset({2, 30}): True,
    }
    m = load_manifest(prepare(root, tmp_path / "p", seed=0))
    assert m.dropped == [{"rows": [2, 30], "ids": [2, 30], "labels": [0, 5]}] and m.groups == [[7, 8]]
    split_of = {r: name for name, rows in m.rows.items() for r in rows}
    assert split_of[7] == split_of[8] and m.ids == m.rows  # no index column: the id is the row


def test_synth_writes_the_galaxy10_aion_layout_and_it_prepares(tmp_path, capsys):
    out = tmp_path / "synth"
    status, _, _ = cli(
        capsys, "data", "synth", "--layout", "galaxy10-aion", "--traps", "--n", "120", "--size", "32",
        "--flux-size", "16", "--sorted", "--workers", "1", "--out", out,
    )  # fmt: skip
    assert status == 0
    files = sorted(p.name for p in (out / "data").iterdir())
    assert files == ["test-00000-of-00001.parquet", "train-00000-of-00001.parquet"]
    schema = pq.read_schema(out / "data" / files[1])
    assert schema.names == ["image_rgb", "image_bands", "ra", "dec", "Galaxy10_DECals_index", "label", "label_name"]
    planted = json.loads((out / "planted.json").read_text())
    status, text, _ = cli(capsys, "data", "prepare", out, "--out", tmp_path / "p")
    assert status == 0 and "own split leaks" in text
    m = load_manifest(tmp_path / "p")
    assert sorted(map(sorted, (d["ids"] for d in m.dropped))) == sorted(
        [planted["exact_across"], planted["exact_train"]]
    )
    assert {e["id"] for e in m.excluded_rows} == {planted["nan_flux"], planted["inf_flux"]}
    split_of = {i: name for name, ids in m.ids.items() for i in ids}
    a, b = planted["near_across"]
    assert split_of[a] == split_of[b] and len(split_of) == 120 - 6
    with open_source(out) as source:  # the flux the surrogate rendered, 4 x 16 x 16 nanomaggies
        assert source.flux_rows([0, 1]).shape == (2, 4, 16, 16)


# --- the token arm ------------------------------------------------------------------------------------------------


def small_codec(tmp_path, kind: str):
    torch.manual_seed(0)
    size = FLUX if kind == "flux" else SIDE
    return FSQCodec(FSQConfig(input=kind, size=size, hidden=8), name=f"fsq_{kind}").save(tmp_path / f"codec_{kind}")


def test_tokens_encode_reads_image_bands_for_exactly_the_kept_rows(aion_prepared, cols, tmp_path, capsys, monkeypatch):
    codec_dir = small_codec(tmp_path, "flux")
    status, out, _ = cli(capsys, "tokens", "encode", "--data", aion_prepared, "--codec", codec_dir)
    assert status == 0 and "━" not in out  # the bar is transient, on stderr
    m = load_manifest(aion_prepared)
    codec = FSQCodec.load(codec_dir)
    cache = load_codes(aion_prepared, codec)
    assert np.array_equal(cache.rows, manifest_rows(m)) and cache.meta["input"] == "source:image_bands"
    # The codes are those of the flux written for each kept galaxy (found by its id).
    ids = dict(zip((r for rows in m.rows.values() for r in rows), (i for ids in m.ids.values() for i in ids)))
    flux = np.stack([cols["flux"][(ids[int(r)] - ID_BASE) // 3] for r in cache.rows])
    assert np.array_equal(cache.codes, codec.encode(flux))
    for split in m.rows:  # the token arm's galaxies are the image arm's, in the same order
        tokens = token_split(aion_prepared, split, codec, "ints")
        images = matched_image_split(aion_prepared, split, codec)
        assert len(tokens) == len(images) == len(m.rows[split])
        assert tokens["label"] == images["label"] == load_split(aion_prepared, split)["label"]

    rgb_dir = small_codec(tmp_path, "rgb")
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich takes stderr for a terminal: the bar is drawn
    capsys.readouterr()
    rgb = load_codes(encode_prepared(aion_prepared, rgb_dir, progress=True), FSQCodec.load(rgb_dir))
    assert "encoding (fsq_rgb" in capsys.readouterr().err
    images = np.stack([cols["images"][(ids[int(r)] - ID_BASE) // 3] for r in rgb.rows])
    assert np.array_equal(rgb.codes, FSQCodec.load(rgb_dir).encode(images))  # rgb codecs read image_rgb


def test_tokens_cost_reads_a_hub_prepared_directory(aion_prepared, tiny_model_dir, tmp_path, capsys):
    codec_dir = small_codec(tmp_path, "flux")
    status, out, err = cli(
        capsys, "tokens", "cost", "--codec", codec_dir, "--model", tiny_model_dir, "--data", aion_prepared
    )
    assert status == 0, err
    cells = int(np.prod(FSQCodec.load(codec_dir).grid_shape))
    special = next(line for line in out.splitlines() if line.startswith("special"))
    assert special.split()[1] == f"{cells:.1f}"  # one LM token per code, read from the galaxies of this directory
    assert "split test" in out


def test_a_changed_dataset_is_never_served_stale_codes(cols, tmp_path, capsys):
    root = write_aion_parquet(tmp_path / "aion", cols)
    prepared = prepare(root, tmp_path / "p", seed=0)
    codec_dir = small_codec(tmp_path, "flux")
    encode_prepared(prepared, codec_dir)
    changed = {k: v.copy() for k, v in cols.items()}
    changed["flux"][3, 0, 5, 5] += 1.0  # one value of one kept galaxy
    target = root / "data" / "train-00000-of-00002.parquet"
    pq.write_table(arrow_table(changed, own_splits()["train"][0]), target, row_group_size=16)
    with pytest.raises(UserError, match="source data changed"):
        load_codes(prepared, FSQCodec.load(codec_dir))
    status, _, err = cli(capsys, "tokens", "encode", "--data", prepared, "--codec", codec_dir, "--out", tmp_path / "c")
    assert_one_line_error(status, err, "changed since", "prepare it again")


# --- bad input: one line, exit 2 ----------------------------------------------------------------------------------


def broken(cols, case):
    if case == "missing_label":
        return lambda c, rows: arrow_table(c, rows).drop_columns(["label"])
    if case == "wrong_flux_shape":
        return lambda c, rows: arrow_table(c, rows).set_column(
            1, "image_bands", pa.array([c["flux"][r][:3].tolist() for r in rows])
        )
    if case == "label_out_of_range":
        return lambda c, rows: arrow_table(c, rows).set_column(5, "label", pa.array([12] * len(rows), pa.int64()))
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case, needles",
    [
        ("missing_label", ["missing column `label`"]),
        ("wrong_flux_shape", ["image_bands", "4 x H x H", "3 x 16 x 16"]),
        ("label_out_of_range", ["`label`", "outside 0-9"]),
        ("empty_dir", ["no dataset in it"]),
    ],
)
def test_bad_hub_datasets_are_one_line_exit_2(case, needles, cols, tmp_path, capsys):
    root = tmp_path / "bad"
    if case == "empty_dir":
        root.mkdir()
    else:
        write_aion_parquet(root, cols, tables=broken(cols, case))
    for command in (["inspect", root], ["prepare", root, "--out", tmp_path / "out"]):
        status, _, err = cli(capsys, "data", *command)
        assert_one_line_error(status, err, *needles)
    assert not (tmp_path / "out").exists()


def test_row_order_is_judged_within_each_of_the_sources_splits():
    from astroreason.data.galaxy10 import DECALS_CLASSES
    from astroreason.data.inspect import ordering

    labels = np.concatenate([np.repeat(np.arange(10), 12), np.repeat(np.arange(10), 4)])  # train, then test, sorted
    splits = np.array(["train"] * 120 + ["test"] * 40)
    assert ordering(labels, DECALS_CLASSES)["sorted_by_class"] is False  # the two files concatenated are not
    per_split = ordering(labels, DECALS_CLASSES, splits)
    assert per_split["sorted_by_class"] and per_split["grouped_by_class"]
    nudged = labels.copy()
    nudged[[5, 50, 130]] = [9, 0, 7]  # a few labels changed: no longer sorted, still ordered
    order = ordering(nudged, DECALS_CLASSES, splits)
    assert not order["sorted_by_class"] and not order["grouped_by_class"] and order["clustered_by_class"]
    shuffled = np.random.default_rng(0).permutation(labels)
    assert not any(ordering(shuffled, DECALS_CLASSES, splits)[k] for k in ("sorted_by_class", "clustered_by_class"))

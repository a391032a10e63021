"""The AION-1 adapter on a small randomly initialised AION `ImageCodec`, and the galaxy10-aion flux join.

The codec is AION's own class (PyPI polymathic-aion, extra `aion`) with smaller dimensions than the released one,
saved with AION's own `save_pretrained` in the Hub layout (`codecs/image/config.json` + `model.safetensors`).
The flux source is a local parquet copy in the public dataset's layout, cut from the surrogate's flux. Also: the
weights found in a local Hub cache (offline), batched and deterministic encodes, the cache key following the weights,
and what AION cannot use (bands, units, shapes) refused through the CLI in one line.
"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, cli

from astroreason.cli import main
from astroreason.data.galaxy10 import FLUX_BANDS
from astroreason.data.splits import load_manifest
from astroreason.errors import UserError
from astroreason.tokens import load_codec, load_codes, matched_image_split, render, token_split
from astroreason.tokens.aion import AionCodec, Galaxy10AionFlux

aion_codecs = pytest.importorskip("aion.codecs", reason="the AION adapter needs the `aion` extra (polymathic-aion)")
from aion.modalities import LegacySurveyImage  # noqa: E402


@pytest.fixture(scope="module")
def aion_dir(tmp_path_factory):
    """A local aion-base-like folder holding a small random AION image codec, saved by AION itself."""
    torch.manual_seed(0)
    codec = aion_codecs.ImageCodec(quantizer_levels=[7, 5, 5, 5, 5], hidden_dims=16, num_consecutive=1)
    out = tmp_path_factory.mktemp("aion") / "aion-base"
    codec.save_pretrained(str(out), modality=LegacySurveyImage)
    return out


@pytest.fixture(scope="module")
def flux96(surrogate_h5):
    with h5py.File(surrogate_h5, "r") as f:
        assert f["flux"].shape[1:] == (4, 96, 96)
        return f["flux"][:6]


def test_load_from_the_hub_layout_and_encode_576_codes(aion_dir, flux96):
    assert (aion_dir / "codecs" / "image" / "config.json").is_file()
    codec = load_codec(aion_dir)
    assert isinstance(codec, AionCodec)
    assert codec.vocab_size == 4375 and codec.grid_shape == (24, 24)
    assert codec.input_spec.bands == tuple(FLUX_BANDS) and codec.input_spec.size == 96
    assert load_codec(aion_dir / "codecs" / "image").codec_hash == codec.codec_hash  # the folder itself also opens

    bright = flux96 * 40  # well above AION's per-band clip (6-25 nanomaggies): its clamp writes into its input
    for batch in (bright, torch.from_numpy(bright.copy())):
        before = batch.copy() if isinstance(batch, np.ndarray) else batch.clone()
        codes = codec.encode(batch)
        assert codes.shape == (6, 24, 24) and codes.reshape(6, -1).shape[1] == 576
        assert codes.dtype == np.int32 and codes.min() >= 0 and codes.max() <= 4374
        if isinstance(batch, np.ndarray):
            np.testing.assert_array_equal(batch, before)
        else:
            assert torch.equal(batch, before)

    # The adapter gives exactly AION's own tokens, and AION's own encode does mutate what it is given.
    raw = torch.from_numpy(bright.copy())
    reference = codec.codec.encode(LegacySurveyImage(flux=raw, bands=list(FLUX_BANDS)))
    assert not torch.equal(raw, torch.from_numpy(bright))
    np.testing.assert_array_equal(codes.reshape(6, -1), reference.numpy())

    # Larger cutouts are centre-cropped to 96 px, as AION does.
    padded = np.pad(bright, ((0, 0), (0, 0), (16, 16), (16, 16)), mode="constant", constant_values=0.0)
    np.testing.assert_array_equal(codec.encode(padded), codes)

    decoded = codec.decode(codes)
    assert decoded.shape == (6, 4, 96, 96) and np.isfinite(decoded).all()


def test_bad_flux_is_refused(aion_dir, flux96):
    codec = load_codec(aion_dir)
    with pytest.raises(UserError, match="64x64 px, smaller than the codec's 96 px"):
        codec.encode(flux96[:, :, 16:80, 16:80])  # AION itself would silently return 16 tokens per galaxy
    with pytest.raises(UserError, match="takes 4 bands"):
        codec.encode(flux96[:, :3])
    bad = flux96.copy()
    bad[2, 3, 50, 50] = np.nan
    with pytest.raises(UserError, match="NaN or infinite flux values .first at batch row 2, band 3"):
        codec.encode(bad)
    bad[2, 3, 50, 50] = -np.inf
    with pytest.raises(UserError, match="NaN or infinite"):
        codec.encode(bad)
    with pytest.raises(UserError, match="floating point nanomaggies"):
        codec.encode(flux96.astype(np.int32))
    # 8-bit levels: a uint8 array (`data prepare` already refuses such a file), or the same levels as floats.
    levels = np.clip(flux96 * 40, 0, 255).round()
    with pytest.raises(UserError, match="floating point nanomaggies, got uint8"):
        codec.encode(levels.astype(np.uint8))
    with pytest.raises(UserError, match=r"all whole numbers in \[0, 255\].*not nanomaggies"):
        codec.encode(levels.astype(np.float32))
    with pytest.raises(UserError, match="96x112 px, not square"):
        codec.encode(np.pad(flux96, ((0, 0), (0, 0), (0, 0), (8, 8))))
    # Real flux with whole-number pixels here and there is still flux (the surrogate's has noise and negatives).
    assert (flux96 < 0).any() and codec.encode(flux96).shape == (6, 24, 24)


def test_missing_weights_say_how_to_get_them(aion_dir, tmp_path, capsys):
    empty = tmp_path / "aion-base"
    empty.mkdir()
    with pytest.raises(UserError, match="hf download polymathic-ai/aion-base"):
        load_codec(empty)
    (empty / "codecs" / "image").mkdir(parents=True)
    shutil.copy(aion_dir / "codecs" / "image" / "config.json", empty / "codecs" / "image")
    status, _, err = cli(capsys, "tokens", "cost", "--codec", empty, "--model", tmp_path)
    assert_one_line_error(status, err, "no AION image codec weights", "hf download polymathic-ai/aion-base")


def test_config_keys_and_weights_are_checked(aion_dir, tmp_path):
    folder = tmp_path / "aion-base" / "codecs" / "image"
    shutil.copytree(aion_dir / "codecs" / "image", folder)
    config = json.loads((folder / "config.json").read_text())
    # Keys that are not constructor arguments are ignored, as AION's own from_pretrained does.
    (folder / "config.json").write_text(json.dumps({**config, "saved_by": "someone"}))
    assert load_codec(folder.parent.parent).vocab_size == 4375
    # A config that does not describe these weights is refused, not half-loaded.
    (folder / "config.json").write_text(json.dumps({**config, "hidden_dims": 32}))
    with pytest.raises(UserError, match="does not match config.json"):
        load_codec(folder.parent.parent)
    (folder / "config.json").write_text(json.dumps({"hidden": 3}))
    with pytest.raises(UserError, match=r"not a valid AION ImageCodec config \(no quantizer_levels\)"):
        load_codec(folder.parent.parent)


# --- galaxy10-aion: the same galaxies and splits in both arms ------------------------------------------------------


def write_galaxy10_aion(surrogate_h5, out, rows, *, flip_label_of=None):
    """A local parquet copy in the public dataset's layout: `image_bands` 4x96x96 flux, Galaxy10 index, label."""
    import datasets

    with h5py.File(surrogate_h5, "r") as f:
        flux, labels = f["flux"][np.sort(rows)], f["ans"][np.sort(rows)].astype(np.int64)
    if flip_label_of is not None:
        labels[list(np.sort(rows)).index(flip_label_of)] += 1
    features = datasets.Features(
        {
            "image_bands": datasets.Array3D((4, 96, 96), "float32"),
            "Galaxy10_DECals_index": datasets.Value("int64"),
            "label": datasets.Value("int64"),
        }
    )
    ds = datasets.Dataset.from_dict(
        {"image_bands": flux, "Galaxy10_DECals_index": np.sort(rows), "label": labels}, features=features
    )
    (out / "data").mkdir(parents=True)
    ds.to_parquet(str(out / "data" / "train-00000-of-00001.parquet"))
    return out


@pytest.fixture(scope="module")
def flux_rows(surrogate_h5):
    """A subset of the surrogate's rows (about two thirds), as galaxy10-aion covers part of Galaxy10."""
    with h5py.File(surrogate_h5, "r") as f:
        n = len(f["ans"])
    return np.flatnonzero(np.random.default_rng(3).random(n) < 0.66)


def test_flux_source_join_holds_the_same_galaxies_in_both_arms(
    aion_dir, prepared_dir, surrogate_h5, flux_rows, tmp_path, capsys
):
    source = write_galaxy10_aion(surrogate_h5, tmp_path / "galaxy10-aion", flux_rows)
    reader = Galaxy10AionFlux(source)
    assert reader.flux_column == "image_bands" and reader.index_column == "Galaxy10_DECals_index"
    cache_dir = tmp_path / "cache"
    status, out, err = cli(
        capsys,
        "tokens",
        "encode",
        "--data",
        prepared_dir,
        "--codec",
        aion_dir,
        "--flux-source",
        source,
        "--out",
        cache_dir,
    )
    assert status == 0, err
    codec = load_codec(aion_dir)
    manifest = load_manifest(prepared_dir)
    covered = set(flux_rows.tolist())
    cache = load_codes(cache_dir, codec, prepared_dir=prepared_dir)
    in_manifest = sorted(r for rows in manifest.rows.values() for r in rows if r in covered)
    assert cache.rows.tolist() == in_manifest and f"codes for {len(in_manifest)} of" in out

    with h5py.File(surrogate_h5, "r") as f:
        images, flux = f["images"][:], f["flux"][:]
    for split in ("train", "val", "test"):
        expected_rows = [r for r in manifest.rows[split] if r in covered]
        tokens = token_split(prepared_dir, split, codec, "ints", cache_dir=cache_dir)
        matched = matched_image_split(prepared_dir, split, codec, cache_dir=cache_dir)
        assert 0 < len(tokens) == len(matched) == len(expected_rows) < len(manifest.rows[split])
        # The image arm shows exactly these galaxies, in this order ...
        shown = np.stack([np.asarray(im) for im in matched["image"]])
        np.testing.assert_array_equal(shown, images[expected_rows])
        assert matched["label"] == tokens["label"] == [int(x) for x in f_ans(surrogate_h5, expected_rows)]
        # ... and the token arm reads the codes of the same galaxies' flux.
        codes = codec.encode(flux[expected_rows])
        assert tokens["tokens_text"] == [render(g, "ints") for g in codes]


def f_ans(path, rows):
    with h5py.File(path, "r") as f:
        return f["ans"][:][rows]


def test_a_label_disagreement_is_refused(aion_dir, prepared_dir, surrogate_h5, flux_rows, tmp_path, capsys):
    manifest = load_manifest(prepared_dir)
    victim = next(r for r in manifest.rows["test"] if r in set(flux_rows.tolist()))
    source = write_galaxy10_aion(surrogate_h5, tmp_path / "galaxy10-aion", flux_rows, flip_label_of=victim)
    out = tmp_path / "cache"
    status, _, err = cli(
        capsys, "tokens", "encode", "--data", prepared_dir, "--codec", aion_dir, "--flux-source", source, "--out", out
    )
    assert_one_line_error(status, err, "disagree on the label", f"Galaxy10 row {victim}")
    assert not out.exists()


def test_a_changed_flux_source_is_refused(aion_dir, prepared_dir, surrogate_h5, flux_rows, tmp_path):
    source = write_galaxy10_aion(surrogate_h5, tmp_path / "galaxy10-aion", flux_rows[:40])
    cache_dir = tmp_path / "cache"
    assert (
        main(
            [
                "tokens",
                "encode",
                "--data",
                str(prepared_dir),
                "--codec",
                str(aion_dir),
                "--flux-source",
                str(source),
                "--out",
                str(cache_dir),
            ]
        )
        == 0
    )
    shutil.rmtree(source)
    write_galaxy10_aion(surrogate_h5, source, flux_rows[:41])  # one more galaxy: another dataset
    with pytest.raises(UserError, match="flux source changed"):
        load_codes(cache_dir, aion_dir, prepared_dir=prepared_dir)


def test_an_rgb_codec_cannot_take_a_flux_source(prepared_dir, tmp_path, capsys):
    from astroreason.tokens.fsq import FSQCodec, FSQConfig

    rgb = FSQCodec(FSQConfig(size=32, hidden=8), name="rgb").save(tmp_path / "rgb")
    status, _, err = cli(capsys, "tokens", "encode", "--data", prepared_dir, "--codec", rgb, "--flux-source", tmp_path)
    assert_one_line_error(status, err, "takes rgb images, not flux")


# --- where the weights come from: a snapshot root, its codecs/image folder, or a local Hub cache --------------------


def hub_cache(aion_dir, root, revisions=("a" * 40,), *, ref=True):
    """A Hugging Face Hub cache in huggingface_hub's layout: blobs, snapshots/<rev>/ symlinks, refs/main."""
    repo = root / "models--polymathic-ai--aion-base"
    (repo / "blobs").mkdir(parents=True)
    for rev in revisions:
        folder = repo / "snapshots" / rev / "codecs" / "image"
        folder.mkdir(parents=True)
        for name in ("config.json", "model.safetensors"):
            blob = repo / "blobs" / f"{rev[:8]}-{name}"
            shutil.copy(aion_dir / "codecs" / "image" / name, blob)
            (folder / name).symlink_to(blob)
    if ref:
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(revisions[-1])
    return repo


def test_a_local_hub_cache_opens_offline(aion_dir, tmp_path, capsys):
    reference = load_codec(aion_dir)
    repo = hub_cache(aion_dir, tmp_path / "hub", revisions=("b" * 40, "c" * 40))
    for path in (tmp_path / "hub", repo, repo / "snapshots" / ("c" * 40)):
        codec = load_codec(path)
        assert codec.codec_hash == reference.codec_hash and codec.name == "aion-aion-base"
    # Two snapshots and no refs/main: which one is meant is not guessed.
    shutil.rmtree(repo / "refs")
    status, _, err = cli(capsys, "tokens", "cost", "--codec", repo, "--model", tmp_path)
    assert_one_line_error(status, err, "2 snapshots hold AION image codec", "snapshots/<revision>")
    # One snapshot and no ref: that one.
    single = hub_cache(aion_dir, tmp_path / "hub1", ref=False)
    assert load_codec(single).codec_hash == reference.codec_hash


# --- batched, deterministic encodes; the cache key follows the weights --------------------------------------------


def test_batched_encode_with_a_progress_bar_is_the_same_and_deterministic(aion_dir, flux96, capsys, monkeypatch):
    codec = load_codec(aion_dir)
    whole = codec.encode(flux96)
    capsys.readouterr()
    codec.encode(flux96, batch_size=4, progress=True)
    assert capsys.readouterr().err == ""  # no bar where stderr is not a terminal (a log, a test)
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich then takes stderr for a terminal
    batched = codec.encode(flux96, batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert "encoding (aion-aion-base)" in err and "6/6" in err
    np.testing.assert_array_equal(batched, whole)
    np.testing.assert_array_equal(load_codec(aion_dir).encode(flux96, batch_size=1), whole)  # another load, same ids
    lazily = codec.encode_batches([flux96[:2], flux96[2:]], total=6)
    np.testing.assert_array_equal(lazily, whole)
    assert len(np.unique(whole)) > 1  # the random codec does not map everything to one id
    with pytest.raises(UserError, match="batch size: must be at least 1"):
        codec.encode(flux96, batch_size=-1)


def test_other_weights_are_another_codec_and_another_cache(aion_dir, prepared_dir, tmp_path, capsys):
    torch.manual_seed(1)
    other_dir = tmp_path / "aion-base"
    aion_codecs.ImageCodec(quantizer_levels=[7, 5, 5, 5, 5], hidden_dims=16, num_consecutive=1).save_pretrained(
        str(other_dir), modality=LegacySurveyImage
    )
    codec, other = load_codec(aion_dir), load_codec(other_dir)
    assert (other_dir / "codecs" / "image" / "config.json").read_text() == (
        aion_dir / "codecs" / "image" / "config.json"
    ).read_text()  # same config: only the weights differ
    assert other.codec_hash != codec.codec_hash

    cache_dir = tmp_path / "cache"
    status, _, err = cli(capsys, "tokens", "encode", "--data", prepared_dir, "--codec", aion_dir, "--out", cache_dir)
    assert status == 0, err
    cached = load_codes(cache_dir, codec, prepared_dir=prepared_dir)
    assert cached.codes.shape[1:] == (24, 24) and cached.codes.max() <= 4374
    with h5py.File(load_manifest(prepared_dir).source_path, "r") as f:
        rows = cached.rows[:5]
        np.testing.assert_array_equal(
            cached.codes_for(rows), codec.encode(f["flux"][np.sort(rows)])[np.argsort(np.argsort(rows))]
        )
    status, _, err = cli(capsys, "tokens", "encode", "--data", prepared_dir, "--codec", other_dir, "--out", cache_dir)
    assert_one_line_error(status, err, "codes were made by codec")
    with pytest.raises(UserError, match="codes were made by codec"):
        load_codes(cache_dir, other, prepared_dir=prepared_dir)


# --- what the codec cannot use: one line, exit status 2, through the CLI --------------------------------------------


def flux_file(surrogate_h5, path, *, flux, bands=FLUX_BANDS, n=60):
    """A Galaxy10-schema file of the surrogate's first `n` rows with the given flux and band names."""
    with h5py.File(surrogate_h5, "r") as src, h5py.File(path, "w") as dst:
        dst.attrs.update(src.attrs)
        for key in src:
            if key != "flux":
                dst[key] = src[key][:n]
        dst["flux"] = flux
        dst["flux"].attrs["bands"] = list(bands)
    return path


@pytest.mark.parametrize(
    "case, needles",
    [
        ("hsc_bands", ["['HSC-G', 'HSC-R', 'HSC-I', 'HSC-Z']", "do not match the codec's", "count and order"]),
        ("three_bands", ["['DES-G', 'DES-R', 'DES-I']", "do not match the codec's"]),
        ("whole_numbers", ["whole numbers in [0, 255]", "not nanomaggies"]),
        ("small", ["64x64 px, smaller than the codec's 96 px"]),
        ("not_square", ["96x112 px, not square"]),
    ],
)
def test_what_aion_cannot_use_is_refused_in_one_line(case, needles, aion_dir, surrogate_h5, tmp_path, capsys):
    from astroreason.data.splits import prepare

    n = 60
    with h5py.File(surrogate_h5, "r") as f:
        flux = f["flux"][:n]
    bands = FLUX_BANDS
    if case == "hsc_bands":
        bands = ("HSC-G", "HSC-R", "HSC-I", "HSC-Z")
    elif case == "three_bands":
        flux, bands = flux[:, :3], FLUX_BANDS[:3]
    elif case == "whole_numbers":  # 8-bit levels stored as float: still not flux
        flux = np.clip(flux * 40, 0, 255).round().astype(np.float32)
    elif case == "small":
        flux = np.ascontiguousarray(flux[:, :, 16:80, 16:80])
    elif case == "not_square":
        flux = np.pad(flux, ((0, 0), (0, 0), (0, 0), (8, 8)))
    prepared = prepare(flux_file(surrogate_h5, tmp_path / "bad.h5", flux=flux, bands=bands, n=n), tmp_path / "p")
    out = tmp_path / "cache"
    status, _, err = cli(capsys, "tokens", "encode", "--data", prepared, "--codec", aion_dir, "--out", out)
    assert_one_line_error(status, err, *needles)
    assert not out.exists()

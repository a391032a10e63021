"""The built-in FSQ codec and the token cache, on the surrogate, through the `astroreason tokens` CLI.

Train a small codec for a few steps, round-trip it, save and reload it, fill the token cache, and check that stale
or foreign codes are never served and that bad input fails with one line and exit status 2.
"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from cli_helpers import assert_one_line_error, cli
from safetensors.numpy import load_file, save_file

from astroreason.cli import main
from astroreason.data.galaxy10 import FLUX_BANDS
from astroreason.data.splits import load_manifest, load_split, prepare
from astroreason.errors import UserError
from astroreason.tokens import encode_prepared, load_codec, load_codes, matched_image_split, render, token_split
from astroreason.tokens.codec import check_inputs, read_inputs
from astroreason.tokens.fsq import FSQCodec, FSQConfig, evaluate

# Small enough to train in seconds on 2 busy cores: 64-px surrogate images resized to 32 px -> 8x8 codes, trained on
# 16-px crops.
SIZE, GRID = 32, 8
TRAIN_ARGS = [
    "--size",
    str(SIZE),
    "--hidden",
    "16",
    "--crop",
    "16",
    "--lr",
    "5e-3",
    "--steps",
    "40",
    "--batch-size",
    "16",
    "--seed",
    "0",
]


@pytest.fixture(scope="module")
def codec_dir(prepared_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("codecs") / "fsq_small"
    assert main(["tokens", "train", "--data", str(prepared_dir), "--out", str(out), *TRAIN_ARGS]) == 0
    return out


def val_inputs(prepared_dir, spec):
    manifest = load_manifest(prepared_dir)
    rows = manifest.rows["val"]
    return rows, np.concatenate([check_inputs(b, spec) for b in read_inputs(manifest.source_path, rows, spec)])


def changed_copy(codec_dir, dest):
    """The same codec directory with one weight changed: another codec."""
    shutil.copytree(codec_dir, dest)
    weights = load_file(str(dest / "model.safetensors"))
    name = "encoder.0.weight"  # an encoder weight: the codes change too
    weights[name] = weights[name] + np.float32(0.5)
    save_file(weights, str(dest / "model.safetensors"))
    return dest


# --- the codec --------------------------------------------------------------------------------------------------


def test_train_reports_metrics_and_beats_an_untrained_codec(codec_dir, prepared_dir):
    meta = json.loads((codec_dir / "codec.json").read_text())
    metrics = json.loads((codec_dir / "metrics.json").read_text())
    assert meta["type"] == "fsq" and meta["vocab_size"] == 4375 and meta["grid_shape"] == [GRID, GRID]
    assert meta["training"]["held_out_split"] == "val" and meta["training"]["steps"] == 40
    held = metrics["held_out"]
    assert set(held) >= {"mse", "psnr_db", "codebook_usage", "perplexity", "n_images"}

    codec = load_codec(codec_dir)
    rows, inputs = val_inputs(prepared_dir, codec.input_spec)
    assert held["n_images"] == len(rows)
    # The reported figure is the codec's real held-out error, recomputed here from the saved weights.
    mine = evaluate(codec, inputs)
    assert mine["mse"] == pytest.approx(held["mse"], rel=1e-4)
    assert mine["codebook_usage"] == pytest.approx(held["codebook_usage"])
    # An untrained codec of the same architecture reconstructs far worse.
    untrained = evaluate(FSQCodec(codec.config), inputs)
    assert held["mse"] < 0.5 * untrained["mse"], (held, untrained)
    # The codebook did not collapse onto a handful of ids (seen before the latent was normalised: one id).
    assert held["perplexity"] > 4 and held["codebook_usage"] * 4375 > 10


def test_round_trip_codes_in_range_and_decode(codec_dir, prepared_dir):
    codec = load_codec(codec_dir)
    _, inputs = val_inputs(prepared_dir, codec.input_spec)
    codes = codec.encode(inputs)
    assert codes.shape == (len(inputs), GRID, GRID) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < codec.vocab_size
    recon = codec.decode(codes)
    assert recon.shape == inputs.shape and recon.dtype == np.uint8
    # Decoded images are closer to their own originals than to other galaxies'.
    err_own = np.abs(recon.astype(float) - inputs).mean()
    err_other = np.abs(recon.astype(float) - np.roll(inputs, 1, axis=0)).mean()
    assert err_own < err_other
    with pytest.raises(UserError, match="ids must lie in"):
        codec.decode(np.full((1, GRID, GRID), codec.vocab_size))


def test_save_load_same_codes_and_hash_and_a_changed_weight_changes_it(codec_dir, prepared_dir, tmp_path):
    first, second = load_codec(codec_dir), load_codec(codec_dir)
    saved_hash = json.loads((codec_dir / "codec.json").read_text())["codec_hash"]
    assert first.codec_hash == second.codec_hash == saved_hash
    _, inputs = val_inputs(prepared_dir, first.input_spec)
    np.testing.assert_array_equal(first.encode(inputs), second.encode(inputs))

    resaved = first.save(tmp_path / "resaved")
    assert load_codec(resaved).codec_hash == saved_hash  # same config and weights, same hash wherever it lives

    other = load_codec(changed_copy(codec_dir, tmp_path / "changed"))
    assert other.codec_hash != saved_hash


def test_encode_leaves_the_callers_array_alone_and_refuses_small_images(codec_dir):
    codec = load_codec(codec_dir)
    images = np.random.default_rng(0).integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    before = images.copy()
    codec.encode(images)
    np.testing.assert_array_equal(images, before)
    with pytest.raises(UserError, match="smaller than the codec's 32 px"):
        codec.encode(images[:, :16, :16])
    with pytest.raises(UserError, match="uint8"):
        codec.encode(images.astype(np.float32))


# --- the token cache --------------------------------------------------------------------------------------------


def test_encode_writes_once_then_reuses_and_splits_match_the_image_arm(codec_dir, prepared_dir, capsys):
    status, out, err = cli(capsys, "tokens", "encode", "--data", prepared_dir, "--codec", codec_dir)
    assert status == 0, err
    codec = load_codec(codec_dir)
    cache_dir = prepared_dir / "tokens" / f"{codec.name}-{codec.codec_hash[:12]}"
    codes_file = cache_dir / "codes.safetensors"
    stamp = codes_file.stat().st_mtime_ns
    status, out2, err = cli(capsys, "tokens", "encode", "--data", prepared_dir, "--codec", codec_dir)
    assert status == 0 and codes_file.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert out2 == out

    manifest = load_manifest(prepared_dir)
    cache = load_codes(prepared_dir, codec)
    n_rows = sum(len(r) for r in manifest.rows.values())
    assert cache.codes.shape == (n_rows, GRID, GRID)
    # The cached codes are the codec's codes of those rows.
    rows = manifest.rows["test"][:10]
    fresh = np.concatenate([codec.encode(b) for b in read_inputs(manifest.source_path, rows, codec.input_spec)])
    np.testing.assert_array_equal(cache.codes_for(rows), fresh)

    for split in ("train", "val", "test"):
        tokens = token_split(prepared_dir, split, codec, "ints")
        images = load_split(prepared_dir, split)
        matched = matched_image_split(prepared_dir, split, codec)
        assert len(tokens) == len(images) == len(matched) == len(manifest.rows[split])
        assert tokens["label"] == images["label"] == matched["label"]
        expected = [render(g, "ints") for g in cache.codes_for(manifest.rows[split])]
        assert tokens["tokens_text"] == expected
    # The text holds the codes and nothing else: no row index of the galaxy.
    assert set(tokens.column_names) == {"tokens_text", "label", "label_name"}


def test_a_changed_codec_never_reuses_codes(codec_dir, prepared_dir, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    encode_prepared(prepared_dir, codec_dir, out=cache_dir)
    other_dir = changed_copy(codec_dir, tmp_path / "other_codec")
    with pytest.raises(UserError, match="codes were made by codec"):
        load_codes(cache_dir, other_dir, prepared_dir=prepared_dir)
    with pytest.raises(UserError, match="codes were made by codec"):
        token_split(prepared_dir, "test", other_dir, "ints", cache_dir=cache_dir)
    status, _, err = cli(capsys, "tokens", "encode", "--data", prepared_dir, "--codec", other_dir, "--out", cache_dir)
    assert_one_line_error(status, err, "codes were made by codec", "--force")
    # By default each codec has its own cache: the other codec's codes are its own.
    other = load_codec(other_dir)
    default = encode_prepared(prepared_dir, other)
    assert default.name.endswith(other.codec_hash[:12])
    assert not np.array_equal(load_codes(default, other).codes, load_codes(cache_dir, codec_dir).codes)
    # --force rebuilds the explicit cache for the codec given.
    status, _, err = cli(
        capsys, "tokens", "encode", "--data", prepared_dir, "--codec", other_dir, "--out", cache_dir, "--force"
    )
    assert status == 0, err
    assert load_codes(cache_dir, other_dir, prepared_dir=prepared_dir).meta["codec_hash"] == other.codec_hash


def test_other_data_is_refused(codec_dir, prepared_dir, surrogate_h5, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    encode_prepared(prepared_dir, codec_dir, out=cache_dir)
    other_prepared = prepare(surrogate_h5, tmp_path / "other_split", seed=1)
    with pytest.raises(UserError, match="built for other data"):
        load_codes(cache_dir, codec_dir, prepared_dir=other_prepared)
    with pytest.raises(UserError, match="built for other data"):
        token_split(other_prepared, "test", codec_dir, "rows", cache_dir=cache_dir)
    status, _, err = cli(capsys, "tokens", "encode", "--data", other_prepared, "--codec", codec_dir, "--out", cache_dir)
    assert_one_line_error(status, err, "built for other data")


def test_a_modified_source_file_is_refused(codec_dir, surrogate_h5, tmp_path, capsys):
    source = shutil.copy(surrogate_h5, tmp_path / "copy.h5")
    prepared = prepare(source, tmp_path / "prepared", seed=0)
    encode_prepared(prepared, codec_dir)
    assert len(token_split(prepared, "val", codec_dir, "ints")) > 0
    with h5py.File(source, "r+") as f:  # one pixel of one galaxy changes after the codes were made
        f["images"][0, 0, 0, 0] = 255 - f["images"][0, 0, 0, 0]
    with pytest.raises(UserError, match="source data changed"):
        token_split(prepared, "val", codec_dir, "ints")
    status, _, err = cli(capsys, "tokens", "encode", "--data", prepared, "--codec", codec_dir)
    assert_one_line_error(status, err, "source data changed")
    # Even a fresh cache location is refused: the file no longer holds what the manifest was made from.
    status, _, err = cli(
        capsys, "tokens", "encode", "--data", prepared, "--codec", codec_dir, "--out", tmp_path / "fresh"
    )
    assert_one_line_error(status, err, "changed since", "prepare it again")
    assert not (tmp_path / "fresh").exists()


# --- bad input: one line, exit status 2 --------------------------------------------------------------------------


def small_flux_file(surrogate_h5, path, *, bands=FLUX_BANDS, flux=None):
    """A 20-row Galaxy10-schema file with the given flux (default: the surrogate's) and band names."""
    with h5py.File(surrogate_h5, "r") as src, h5py.File(path, "w") as dst:
        for key in ("images", "ans", "ra", "dec"):
            dst[key] = src[key][:20]
        dst["flux"] = src["flux"][:20] if flux is None else flux
        dst["flux"].attrs["bands"] = list(bands)
    return path


@pytest.mark.parametrize(
    "case, needles",
    [
        ("three_bands", ["bands", "do not match"]),
        ("wrong_names", ["['HSC-G', 'HSC-R', 'HSC-I', 'HSC-Z']", "do not match"]),
        ("nan", ["NaN or infinite"]),
        ("inf", ["NaN or infinite"]),
        ("small", ["smaller than the codec's 32 px"]),
    ],
)
def test_bad_flux_input_is_refused_with_one_line(case, needles, surrogate_h5, tmp_path, capsys):
    with h5py.File(surrogate_h5, "r") as f:
        flux = f["flux"][:20]
    bands = FLUX_BANDS
    if case == "three_bands":
        flux, bands = flux[:, :3], FLUX_BANDS[:3]
    elif case == "wrong_names":
        bands = ("HSC-G", "HSC-R", "HSC-I", "HSC-Z")
    elif case == "nan":
        flux[3, 1, 40, 40] = np.nan
    elif case == "inf":
        flux[5, 0, 2, 2] = np.inf
    elif case == "small":
        flux = np.ascontiguousarray(flux[:, :, :16, :16])
    data = small_flux_file(surrogate_h5, tmp_path / "bad.h5", bands=bands, flux=flux)
    out = tmp_path / "codec"
    status, _, err = cli(capsys, "tokens", "train", "--data", data, "--out", out, "--input", "flux", *TRAIN_ARGS)
    assert_one_line_error(status, err, *needles)
    assert not out.exists()


def test_an_rgb_codec_larger_than_the_images_is_refused(prepared_dir, tmp_path, capsys):
    status, _, err = cli(
        capsys, "tokens", "train", "--data", prepared_dir, "--out", tmp_path / "c", "--size", "96", "--steps", "1"
    )
    assert_one_line_error(status, err, "64x64 px, smaller than the codec's 96 px")


def test_bad_codec_config_and_missing_codec(tmp_path, prepared_dir, capsys):
    status, _, err = cli(capsys, "tokens", "train", "--data", prepared_dir, "--out", tmp_path / "c", "--size", "30")
    assert_one_line_error(status, err, "size", "multiple of 4")
    status, _, err = cli(capsys, "tokens", "train", "--data", prepared_dir, "--out", tmp_path / "c", "--levels", "7,x")
    assert_one_line_error(status, err, "--levels")
    status, _, err = cli(capsys, "tokens", "encode", "--data", prepared_dir, "--codec", tmp_path / "nowhere")
    assert_one_line_error(status, err, "codec directory not found")
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"levels": [7, 5], "colour": "blue"}))
    status, _, err = cli(capsys, "tokens", "train", "--data", prepared_dir, "--out", tmp_path / "c", "--config", config)
    assert_one_line_error(status, err, "unknown fields ['colour']")


def test_the_config_file_is_read(tmp_path, prepared_dir):
    """A codec config file (as under tokenizers/) sets the architecture; flags override it."""
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"levels": [5, 5, 5], "size": 64, "hidden": 8, "stretch": "arcsinh"}))
    out = tmp_path / "c"
    assert (
        main(
            [
                "tokens",
                "train",
                "--data",
                str(prepared_dir),
                "--out",
                str(out),
                "--config",
                str(config),
                "--size",
                "16",
                "--steps",
                "2",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    codec = load_codec(out)
    assert isinstance(codec, FSQCodec) and codec.vocab_size == 125 and codec.grid_shape == (4, 4)
    assert codec.config.stretch == "arcsinh" and codec.config.size == 16
    assert FSQConfig.from_json(json.loads((out / "codec.json").read_text())["config"]) == codec.config


def test_the_shipped_demo_config_trains(prepared_dir, tmp_path):
    """tokenizers/fsq_rgb_96.json: codec fields and training settings; flags override either."""
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "tokenizers" / "fsq_rgb_96.json"
    spec = json.loads(shipped.read_text())
    out = tmp_path / "demo"
    # The surrogate fixture is 64 px, so the 96-px codec is trained smaller here; everything else comes from the file.
    assert (
        main(
            [
                "tokens",
                "train",
                "--data",
                str(prepared_dir),
                "--out",
                str(out),
                "--config",
                str(shipped),
                "--size",
                "64",
                "--hidden",
                "8",
                "--steps",
                "2",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    meta = json.loads((out / "codec.json").read_text())
    assert meta["config"]["levels"] == spec["config"]["levels"] and meta["config"]["size"] == 64
    assert meta["training"]["crop"] == spec["training"]["crop"] and meta["training"]["lr"] == spec["training"]["lr"]
    assert meta["training"]["steps"] == 2
    # A trained codec's codec.json is itself a config: retraining from it keeps its settings.
    again = tmp_path / "again"
    assert (
        main(["tokens", "train", "--data", str(prepared_dir), "--out", str(again), "--config", str(out / "codec.json")])
        == 0
    )
    assert json.loads((again / "codec.json").read_text())["codec_hash"] == meta["codec_hash"]  # same seed, same codec


def test_train_prints_the_held_out_figures_it_writes(prepared_dir, tmp_path, capsys):
    out = tmp_path / "c"
    status, printed, err = cli(capsys, "tokens", "train", "--data", prepared_dir, "--out", out, *TRAIN_ARGS[:-4])
    assert status == 0, err
    held = json.loads((out / "metrics.json").read_text())["held_out"]
    line = next(x for x in printed.splitlines() if x.startswith("held-out"))
    assert f"PSNR {held['psnr_db']:.2f} dB" in line and f"perplexity {held['perplexity']:.1f}" in line
    assert f"codebook usage {held['codebook_usage']:.1%}" in line and f"{held['n_images']} images" in line


def test_the_normalised_latent_uses_more_of_the_vocabulary(prepared_dir, tmp_path):
    """BatchNorm before the quantiser (latent_norm=batch, the default) spreads the codes over more of the vocabulary
    than the raw projection, on the same data, seed and steps."""
    usage = {}
    for norm in ("batch", "none"):
        config = tmp_path / f"{norm}.json"
        config.write_text(json.dumps({"config": {"latent_norm": norm}}))
        out = tmp_path / norm
        assert (
            main(
                [
                    "tokens",
                    "train",
                    "--data",
                    str(prepared_dir),
                    "--out",
                    str(out),
                    "--config",
                    str(config),
                    *TRAIN_ARGS,
                ]
            )
            == 0
        )
        usage[norm] = json.loads((out / "metrics.json").read_text())["held_out"]
    assert usage["batch"]["codebook_usage"] > 1.5 * usage["none"]["codebook_usage"], usage
    assert usage["batch"]["perplexity"] > usage["none"]["perplexity"], usage


def test_a_codec_saved_before_latent_norm_existed_loads_with_its_hash(codec_dir, prepared_dir, tmp_path):
    """A codec.json without `latent_norm` (saved before it existed) is a codec without the layer, and keeps the hash
    it was saved with: its token caches stay valid."""
    meta = json.loads((codec_dir / "codec.json").read_text())
    config = FSQConfig.from_json({**meta["config"], "latent_norm": "none"})
    old = FSQCodec(config, name="old").save(tmp_path / "old")
    saved = json.loads((old / "codec.json").read_text())
    del saved["config"]["latent_norm"]
    (old / "codec.json").write_text(json.dumps(saved))
    codec = load_codec(old)
    assert codec.config.latent_norm == "none" and codec.codec_hash == saved["codec_hash"]
    assert codec.codec_hash != load_codec(codec_dir).codec_hash
    _, inputs = val_inputs(prepared_dir, codec.input_spec)
    assert codec.encode(inputs).shape == (len(inputs), GRID, GRID)

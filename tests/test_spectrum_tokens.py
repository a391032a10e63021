"""Spectrum tokens end to end through the command line: surrogate stars -> prepared splits -> `tokens train` on the
train split (measured on val) -> `tokens encode` into the token cache -> `token_split` -> `tokens cost`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, cli

from astroreason.data.spectra.splits import split_spectra
from astroreason.data.splits import load_manifest, load_split, split_path
from astroreason.errors import UserError
from astroreason.tokens import load_codec, token_split
from astroreason.tokens.cache import CODES_NAME, default_cache_dir, load_codes, split_positions
from astroreason.tokens.fsq import TrainConfig
from astroreason.tokens.render import RENDERINGS, parse
from astroreason.tokens.spectrum_fsq import SpectrumFSQConfig, train_spectrum_fsq

CONFIG = {"pixels": 128, "downsample": 8, "hidden": 16}
TRAINING = {"batch_size": 16, "steps": 60}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """140 surrogate stars (20 per class) prepared into train/val/test splits by the command line."""
    from astroreason.cli import main

    root = tmp_path_factory.mktemp("spectok")
    stars, out = str(root / "stars"), str(root / "prep")
    assert main(["data", "synth", "--spectra", "--out", stars, "--n", "140", "--seed", "0"]) == 0
    assert main(["data", "prepare", stars, "--out", out, "--label-column", "spectral_class"]) == 0
    return root / "prep"


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    """(codec directory, the command's stdout) of `tokens train --data PREPARED` on the surrogate's splits."""
    from astroreason.cli import main

    out = tmp_path_factory.mktemp("codec") / "fsq1d_stars"
    config = out.parent / "spectrum.json"
    config.write_text(json.dumps({"config": CONFIG, "training": TRAINING}))
    assert main(["tokens", "train", "--data", str(prepared), "--config", str(config), "--out", str(out)]) == 0
    return out


def test_the_codec_trains_on_the_train_split_and_is_measured_on_val(prepared, trained, tmp_path):
    manifest = load_manifest(prepared)
    sizes = manifest.split_sizes()
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["n_train_spectra"] == sizes["train"] and metrics["held_out"]["n_spectra"] == sizes["val"]
    assert metrics["held_out"]["mse_vs_mean"] < 0.5  # it learned the spectra's shapes, on stars it never saw
    training = json.loads((trained / "codec.json").read_text())["training"]
    assert training["held_out_split"] == "val" and training["manifest_hash"] == manifest.hash
    # Exactly those rows: the same training on the train and val views, in the manifest's order, gives the same codec.
    codec, _ = train_spectrum_fsq(
        SpectrumFSQConfig(**CONFIG),
        split_spectra(prepared, "train"),
        split_spectra(prepared, "val"),
        TrainConfig(**TRAINING),
    )
    codec.save(tmp_path / "again")  # the hash of saved weights: what `load_codec` gives
    assert codec.codec_hash == load_codec(trained).codec_hash


def test_encode_fills_the_cache_and_token_split_gives_every_row_in_order(prepared, trained, capsys):
    status, out, err = cli(capsys, "tokens", "encode", "--data", prepared, "--codec", trained)
    assert status == 0, err
    assert "codes for 140 of 140 manifest rows (140 x 1x16)" in out
    codec = load_codec(trained)
    cache_file = default_cache_dir(prepared, codec) / CODES_NAME
    written = os.stat(cache_file).st_mtime_ns
    assert cli(capsys, "tokens", "encode", "--data", prepared, "--codec", trained)[0] == 0
    assert os.stat(cache_file).st_mtime_ns == written  # up to date: reused, not re-encoded

    manifest = load_manifest(prepared)
    for split, rows in manifest.rows.items():
        view = token_split(prepared, split, codec, "ints")
        assert view.column_names == ["tokens_text", "label", "label_name"] and len(view) == len(rows)
        assert view["label"] == load_split(prepared, split)["label"]
        assert np.array_equal(split_positions(prepared, split, codec), np.arange(len(rows)))
        # Each row's text is the codes of that row's spectrum, encoded now from the view.
        expected = codec.encode(split_spectra(prepared, split))
        parsed = np.stack([parse(text, "ints", codec.grid_shape) for text in view["tokens_text"]])
        assert np.array_equal(parsed, expected)


def test_a_changed_split_view_is_refused(prepared, trained, tmp_path, capsys):
    import shutil

    copy = tmp_path / "prep"
    shutil.copytree(prepared, copy, ignore=shutil.ignore_patterns("tokens"))
    assert cli(capsys, "tokens", "encode", "--data", copy, "--codec", trained)[0] == 0
    view = split_path(copy, "val")
    data = bytearray(view.read_bytes())
    data[-100] ^= 0xFF  # a flux value of the last row
    view.write_bytes(bytes(data))
    with pytest.raises(UserError, match="source data changed"):
        load_codes(copy, trained)


def test_cost_prints_a_row_per_rendering(prepared, trained, tiny_model_dir, tmp_path, capsys):
    args = ["tokens", "cost", "--codec", trained, "--model", tiny_model_dir, "--data", prepared, "--split", "val"]
    status, out, err = cli(capsys, *args, "--json", tmp_path / "cost.json")
    assert status == 0, err
    lines = out.splitlines()
    assert "14 spectra of" in lines[1] and "LM tokens/spectrum" in lines[2]
    rows = {line.split()[0]: line.split() for line in lines[3:] if line.split()[0] in RENDERINGS}
    assert list(rows) == list(RENDERINGS)
    assert float(rows["special"][1]) == 16  # one added token per code
    assert float(rows["ints"][1]) > 16 and float(rows["rows"][1]) > 16
    assert "image: none to compare" in out
    figures = json.loads((tmp_path / "cost.json").read_text())
    assert figures["image"] is None and [r["n_galaxies"] for r in figures["renderings"]] == [14] * 3

    status, out, err = cli(capsys, *args, "--rendering", "special", "--image-size", "56")
    assert status == 0, err
    assert "visual tokens of a plot of 56x56 px" in out


def test_bad_input_is_one_line(prepared, trained, tmp_path, capsys):
    config = tmp_path / "spectrum.json"
    config.write_text(json.dumps({"config": CONFIG, "training": TRAINING}))
    train = ["tokens", "train", "--data", prepared, "--config", config, "--out", tmp_path / "bad"]
    assert_one_line_error(*_status_err(cli(capsys, *train, "--size", "96")), "--size: an image codec's")
    assert_one_line_error(*_status_err(cli(capsys, *train, "--crop", "8")), "--crop: an image codec's")
    assert not (tmp_path / "bad").exists()

    no_val = tmp_path / "no-val"
    source = load_manifest(prepared).source_path
    prepare = ["data", "prepare", source, "--out", no_val, "--label-column", "spectral_class"]
    assert cli(capsys, *prepare, "--fractions", "0.9,0,0.1")[0] == 0
    train[3] = no_val
    assert_one_line_error(*_status_err(cli(capsys, *train)), "the val split is empty")

    encode = ["tokens", "encode", "--data", prepared, "--codec", trained, "--out", tmp_path / "cache"]
    assert_one_line_error(*_status_err(cli(capsys, *encode, "--flux-source", tmp_path)), "--flux-source")


def _status_err(result):
    status, _, err = result
    return status, err


def test_a_codec_of_the_other_kind_is_refused(trained, tiny_model_dir, tmp_path, capsys):
    """A spectrum codec on a prepared directory of images: one line, before anything is read or written."""
    from astroreason.data.splits import prepare
    from astroreason.data.surrogate import synthesize

    images = prepare(synthesize(tmp_path / "g10.h5", n=30, size=32, seed=0), tmp_path / "images", seed=0)
    encode = ["tokens", "encode", "--data", images, "--codec", trained]
    assert_one_line_error(*_status_err(cli(capsys, *encode)), "prepared directory of images", "takes spectrum input")
    assert not (images / "tokens").exists()
    cost = ["tokens", "cost", "--codec", trained, "--model", tiny_model_dir, "--data", images]
    assert_one_line_error(*_status_err(cli(capsys, *cost)), "holds images", "takes spectrum input")


# --- the AION-1 spectrum codec, from a local aion-base-like folder with random weights ------------------------------


@pytest.fixture(scope="module")
def aion_spectrum_dir(tmp_path_factory):
    """A small random AION `SpectrumCodec` saved by AION itself in the Hub layout (`codecs/spectrum/`): a 1024-pixel
    grid from 3500 Angstrom at 6 Angstrom a pixel, 32 codes after the normalisation token."""
    codecs = pytest.importorskip("aion.codecs", reason="the AION adapter needs the `aion` extra (polymathic-aion)")
    import torch
    from aion.modalities import Spectrum

    torch.manual_seed(0)
    small = {"encoder_dims": (8, 16, 16, 32), "decoder_dims": (16, 16, 8, 1), "latent_channels": 32}
    depths = {"encoder_depths": (1, 1, 1, 1), "decoder_depths": (1, 1, 1, 1), "embedding_dim": 10}
    codec = codecs.SpectrumCodec(**small, **depths, num_pixels=1024, lambda_min=3500.0, resolution=6.0)
    out = tmp_path_factory.mktemp("aion") / "aion-base"
    codec.save_pretrained(str(out), modality=Spectrum)
    return out


def test_aion_spectrum_codec_loads_and_gives_aions_own_codes(aion_spectrum_dir, prepared):
    import torch
    from aion.modalities import Spectrum

    from astroreason.tokens.aion import AionSpectrumCodec

    codec = load_codec(aion_spectrum_dir)
    assert isinstance(codec, AionSpectrumCodec) and codec.grid_shape == (1, 33) and codec.vocab_size == 1024
    assert codec.input_spec.kind == "spectrum" and codec.input_spec.wavelength_range == (3500.0, 3500.0 + 6 * 1023)
    assert load_codec(aion_spectrum_dir / "codecs" / "spectrum").codec_hash == codec.codec_hash  # the folder opens

    wave, flux, ivar = split_spectra(prepared, "val")
    ivar[:, :50] = 0  # masked pixels: AION's mask comes from ivar
    before = flux.copy()
    codes = codec.encode((wave, flux, ivar))
    assert codes.shape == (len(flux), 1, 33) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < 1024 and np.array_equal(flux, before)
    reference = codec.codec.encode(
        Spectrum(
            flux=torch.tensor(flux),
            ivar=torch.tensor(ivar),
            mask=torch.tensor(ivar == 0),
            wavelength=torch.tensor(wave),
        )
    )
    assert np.array_equal(codes[:, 0], reference.numpy())
    # A decreasing grid is the same spectrum (AION's own interpolation assumes increasing wavelength).
    assert np.array_equal(codec.encode((wave[:, ::-1], flux[:, ::-1], ivar[:, ::-1])), codes)
    assert codec.decode(codes).shape == (len(flux), 1024)
    assert load_codec(aion_spectrum_dir).codec_hash == codec.codec_hash  # stable across loads


@pytest.mark.parametrize(
    "case, message",
    [
        ("nan", "flux row 1 holds 1 NaN"),
        ("no ivar", "needs ivar"),
        ("outside", "outside the codec's grid 3500-9638"),
        ("lengths", "rows differ in length"),
    ],
)
def test_aion_spectrum_codec_refuses_bad_input_in_one_line(aion_spectrum_dir, prepared, case, message):
    codec = load_codec(aion_spectrum_dir)
    wave, flux, ivar = split_spectra(prepared, "val", positions=[0, 1])
    if case == "nan":
        flux[1, 7] = np.nan
    spectra = {
        "nan": (wave, flux, ivar),
        "no ivar": (wave, flux),
        "outside": (wave + 20000, flux, ivar),
        "lengths": ([wave[0], wave[1][:-1]], [flux[0], flux[1][:-1]], [ivar[0], ivar[1][:-1]]),
    }[case]
    with pytest.raises(UserError, match=message) as err:
        codec.encode(spectra)
    assert "\n" not in str(err.value)


def test_aion_spectrum_codec_fills_the_token_cache(aion_spectrum_dir, prepared, tmp_path, capsys):
    import shutil

    status, out, err = cli(capsys, "tokens", "encode", "--data", prepared, "--codec", aion_spectrum_dir)
    assert status == 0, err
    assert "codes for 140 of 140 manifest rows (140 x 1x33)" in out
    assert (
        len(token_split(prepared, "test", aion_spectrum_dir, "rows")) == load_manifest(prepared).split_sizes()["test"]
    )
    # Weights that do not fit the config: refused in one line, never half-loaded.
    broken = tmp_path / "aion-base"
    shutil.copytree(aion_spectrum_dir, broken)
    config = broken / "codecs" / "spectrum" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "num_pixels": 2048}))  # the grid is a buffer
    assert_one_line_error(
        *_status_err(cli(capsys, "tokens", "encode", "--data", prepared, "--codec", broken)),
        "model.safetensors: does not match config.json",
    )


def test_aion_spectrum_codec_opens_from_a_local_hub_cache(aion_spectrum_dir, tmp_path):
    """A Hub cache (snapshots/<rev>/, refs/main) whose aion-base snapshot holds only the spectrum codec opens it,
    offline, from the cache root, the repo folder or the snapshot."""
    import shutil

    repo = tmp_path / "hub" / "models--polymathic-ai--aion-base"
    snapshot = repo / "snapshots" / ("d" * 40)
    shutil.copytree(aion_spectrum_dir / "codecs", snapshot / "codecs")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("d" * 40)
    reference = load_codec(aion_spectrum_dir)
    for path in (tmp_path / "hub", repo, snapshot):
        codec = load_codec(path)
        assert codec.input_spec.kind == "spectrum" and codec.codec_hash == reference.codec_hash

"""The built-in spectrum codec (`tokens.spectrum_fsq`): it learns to reconstruct surrogate stellar spectra, its codes
carry the class, it saves and loads to the same codes and hash, it resamples any wavelength grid onto its own, and bad
input is one line naming the field."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from astroreason.data.spectra.stars import SPECTRAL_CLASSES, draw_star, model_flux, observe, wavelength_grid
from astroreason.errors import UserError
from astroreason.tokens import load_codec, render
from astroreason.tokens.codec import InputSpec, check_inputs
from astroreason.tokens.fsq import TrainConfig
from astroreason.tokens.render import parse
from astroreason.tokens.spectrum_fsq import SpectrumFSQCodec, SpectrumFSQConfig, fit_spectra, train_spectrum_fsq

SURVEY = wavelength_grid(2e-4)  # 3600-9000 A in 1990 pixels: the surrogate's grid at half resolution, for speed
CONFIG = dict(pixels=256, wavelength_min=3600.0, wavelength_max=9800.0, downsample=8)  # 32 codes per spectrum
STEPS = 150


def stars(n: int, seed: int, wave=SURVEY):
    """`n` noisy surrogate stars, classes as even as `n` allows and shuffled: (labels, flux, ivar)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(SPECTRAL_CLASSES))
    flux, ivar = np.empty((n, len(wave)), np.float32), np.empty((n, len(wave)), np.float32)
    for i, label in enumerate(labels):
        flux[i], ivar[i], _ = observe(draw_star(int(label), rng), wave, rng)
    return labels, flux, ivar


@pytest.fixture(scope="module")
def data():
    return {"train": stars(280, seed=0), "test": stars(140, seed=1)}


@pytest.fixture(scope="module")
def trained(data):
    torch.set_num_threads(1)
    (_, f_train, v_train), (_, f_test, v_test) = data["train"], data["test"]
    train = TrainConfig(steps=STEPS, batch_size=32, lr=5e-3, seed=0)
    return train_spectrum_fsq(
        SpectrumFSQConfig(**CONFIG), (SURVEY, f_train, v_train), (SURVEY, f_test, v_test), train, name="stars"
    )


def test_training_beats_the_per_spectrum_mean(trained):
    """Held-out weighted MSE far below that of predicting each spectrum by its own mean (observed: 0.05 of it after
    150 steps; an untrained decoder is above 1)."""
    codec, metrics = trained
    held = metrics["held_out"]
    assert held["n_spectra"] == 140 and metrics["n_train_spectra"] == 280 and metrics["steps"] == STEPS
    assert held["mse_vs_mean"] == pytest.approx(held["mse"] / held["mean_mse"])
    assert held["mse_vs_mean"] < 0.2, held
    assert held["perplexity"] > 5 and held["codebook_usage"] > 5 / codec.vocab_size  # not one code everywhere


def test_codes_carry_the_class(trained, data):
    """Logistic regression on each spectrum's code histogram, fitted on training stars, classifies held-out stars
    far above twice the majority rate (observed: about 0.94 against a majority rate of 0.14)."""
    from sklearn.linear_model import LogisticRegression

    codec, _ = trained
    (y_train, f_train, v_train), (y_test, f_test, v_test) = data["train"], data["test"]

    def histograms(flux, ivar):
        codes = codec.encode((SURVEY, flux, ivar))
        assert codes.shape == (len(flux), 1, 32) and codes.dtype == np.int32
        return np.stack([np.bincount(c.ravel(), minlength=codec.vocab_size) for c in codes])

    clf = LogisticRegression(max_iter=2000).fit(histograms(f_train, v_train), y_train)
    accuracy = (clf.predict(histograms(f_test, v_test)) == y_test).mean()
    majority = np.bincount(y_test).max() / len(y_test)
    assert accuracy > 0.6 > 2 * majority, (accuracy, majority)


def test_training_is_seeded(data):
    labels, flux, ivar = data["test"]
    config = SpectrumFSQConfig(**CONFIG)

    def run(seed):
        train = TrainConfig(steps=5, batch_size=16, seed=seed)
        return train_spectrum_fsq(config, (SURVEY, flux[:60], ivar[:60]), (SURVEY, flux[60:80], ivar[60:80]), train)

    (first, m1), (second, m2) = run(0), run(0)
    assert first.codec_hash == second.codec_hash and m1["held_out"] == m2["held_out"]
    assert run(1)[0].codec_hash != first.codec_hash


def test_save_and_load_give_the_same_codes_and_hash(trained, data, tmp_path):
    codec, metrics = trained
    _, flux, ivar = data["test"]
    out = codec.save(tmp_path / "stars", training={"steps": STEPS}, metrics=metrics)
    meta = json.loads((out / "codec.json").read_text())
    assert meta["type"] == "fsq1d" and meta["grid_shape"] == [1, 32] and meta["vocab_size"] == 1000
    assert InputSpec.from_json(meta["input_spec"]) == codec.input_spec
    assert meta["input_spec"]["wavelength_range"] == [3600.0, 9800.0]
    assert json.loads((out / "metrics.json").read_text())["held_out"] == metrics["held_out"]
    loaded = load_codec(out)
    assert isinstance(loaded, SpectrumFSQCodec) and loaded.name == "stars"
    assert loaded.codec_hash == codec.codec_hash == meta["codec_hash"]
    codes = codec.encode((SURVEY, flux, ivar))
    assert np.array_equal(loaded.encode((SURVEY, flux, ivar)), codes)
    decoded = loaded.decode(codes)
    assert decoded.shape == (len(flux), 256) and np.isfinite(decoded).all()
    assert "spectrum 256 px 3600-9800 A -> 1x32 codes" in loaded.describe()
    other = SpectrumFSQCodec(SpectrumFSQConfig(**{**CONFIG, "flux_clip": 5.0}), codec.model)
    assert other.codec_hash != codec.codec_hash  # the config enters the hash, not only the weights


def smooth_star(label: int, wave: np.ndarray, sigma_dex: float) -> np.ndarray:
    """A noiseless star smoothed by a Gaussian of `sigma_dex` in log wavelength, on a 1e-5 dex grid, interpolated at
    `wave`: one spectrum, whatever grid it is given on."""
    star = draw_star(label, np.random.default_rng(label))
    master = 10 ** np.arange(np.log10(3000.0), np.log10(11000.0), 1e-5)
    smooth = gaussian_filter1d(model_flux(star, master), sigma_dex / 1e-5, mode="nearest")
    return np.interp(np.log10(wave), np.log10(master), smooth)


def test_any_wavelength_grid_is_resampled_onto_the_codec_grid(trained):
    codec, _ = trained
    own = codec.wavelength
    step = np.log10(own[1] / own[0])
    assert len(own) == 256 and own[0] == pytest.approx(3600) and own[-1] == pytest.approx(9800)
    assert np.allclose(np.diff(np.log(own)), np.log(own[1] / own[0]))

    # Given on the codec's own grid, a spectrum is only divided by its median: no smoothing, every pixel used.
    flux = smooth_star(3, own, step)
    fitted = codec.fit_inputs((own, flux[None]))
    assert np.allclose(fitted[0, 0], flux / np.median(flux), rtol=1e-5) and (fitted[0, 1] == 1).all()

    # A fine grid 16 times denser (4096 pixels) holding the same smooth spectrum: averaged over each codec pixel, it
    # agrees with the spectrum sampled at the codec's pixels, and so do most codes (an FSQ code flips on a small move
    # near a rounding boundary). Read from red to blue, it is the same spectrum: the same codes exactly.
    fine = np.geomspace(own[0] / 10 ** (step / 2), own[-1] * 10 ** (step / 2), 4096)
    fine_flux = smooth_star(3, fine, step)
    fitted_fine = codec.fit_inputs((fine, fine_flux[None]))
    assert np.abs(fitted_fine[0, 0] - fitted[0, 0]).max() < 0.03 * fitted[0, 0].max()
    assert (fitted_fine[0, 1] == 1).all()
    assert (codec.encode((fine, fine_flux[None])) == codec.encode((own, flux[None]))).mean() >= 0.75
    assert np.array_equal(codec.encode((fine[::-1], fine_flux[None, ::-1])), codec.encode((fine, fine_flux[None])))

    # A star at +250 km/s on a survey's grid linear in wavelength, 3700-9000 A: encoded; the codec pixels the survey
    # does not reach are masked, the others used.
    rng = np.random.default_rng(0)
    star = draw_star(5, rng)
    star = dataclasses.replace(star, rv_kms=250.0)
    linear = np.linspace(3700.0, 9000.0, 3000)
    shifted, ivar, _ = observe(star, linear, rng)
    fitted = codec.fit_inputs((linear, shifted[None], ivar[None]))
    inside = (own > 3700 + 25) & (own < 9000 - 25)  # half a codec pixel is 11-25 A
    outside = (own < 3700 - 25) | (own > 9000 + 25)
    assert (fitted[0, 1][inside] > 0).all() and (fitted[0, 1][outside] == 0).all()
    assert (fitted[0, 0][outside] == 0).all() and fitted[0, 1][inside].mean() == pytest.approx(1, rel=0.05)
    assert codec.encode((linear, shifted[None], ivar[None])).shape == (1, 1, 32)

    # Rows on different grids in one batch: each resampled on its own, as if encoded alone.
    batch = codec.encode(([fine, linear], [fine_flux, shifted]))
    assert np.array_equal(batch[0], codec.encode((fine, fine_flux[None]))[0])
    assert np.array_equal(batch[1], codec.encode((linear, shifted[None]))[0])


def test_a_pixel_with_ivar_zero_is_masked(trained):
    codec, _ = trained
    _, flux, ivar = stars(1, seed=7)
    ivar[0, :400] = 0  # the blue end, 3600 to about 4350 A, flagged bad
    fitted = codec.fit_inputs((SURVEY, flux, ivar))
    own, edge = codec.wavelength, SURVEY[400]
    half = 25.0  # more than half a codec pixel, 11-25 A
    assert (fitted[0, 1][own < edge - half] == 0).all() and (fitted[0, 0][own < edge - half] == 0).all()
    assert (fitted[0, 1][(own > edge + half) & (own < SURVEY[-1] - half)] > 0).all()


@pytest.mark.parametrize(
    ("spectra", "message"),
    [
        (lambda f, v: (np.linspace(10000, 12000, 50), f[:, :50]), "wavelength row 0 spans 10000-12000, outside"),
        (lambda f, v: (SURVEY, np.where(np.arange(f.shape[1]) == 9, np.nan, f)), "flux row 0 holds 1 NaN"),
        (lambda f, v: (SURVEY[:-1], f), "wavelength row 0 has 1989 values, flux has 1990"),
        (lambda f, v: (SURVEY, f, v[:, 1:]), "ivar row 0 has 1989 values, flux has 1990"),
        (lambda f, v: (SURVEY, f, -v), "ivar row 0 holds negative"),
        (lambda f, v: (np.stack([SURVEY] * 3), f), "wavelength has 3 rows, flux has 2"),
        (lambda f, v: (np.where(np.arange(len(SURVEY)) == 5, 4000.0, SURVEY), f), "wavelength row 0 is not strictly"),
        (lambda f, v: (SURVEY, f - np.median(f) * 2), "flux row 0 has median -"),
        (lambda f, v: (SURVEY,), "spectra: expected (wavelength, flux)"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(trained, spectra, message):
    codec, _ = trained
    _, flux, ivar = stars(2, seed=3)
    with pytest.raises(UserError) as err:
        codec.encode(spectra(flux, ivar), source="stars.parquet")
    text = str(err.value)
    assert message in text and "\n" not in text
    assert text.startswith("stars.parquet: ") or text.startswith("spectra: ")


def test_spectrum_input_spec_and_config_are_checked():
    spec = SpectrumFSQConfig(**CONFIG).input_spec
    assert spec.kind == "spectrum" and spec.channels == 1 and spec.size == 256
    assert InputSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    # The image codecs' JSON is as before the field existed (their token caches record it).
    assert InputSpec("rgb", 3, 96).to_json() == {"kind": "rgb", "channels": 3, "size": 96, "bands": []}
    for bad, field in (
        (dict(kind="spectrum", channels=1, size=256), "wavelength_range"),
        (dict(kind="spectrum", channels=2, size=256, wavelength_range=(3600.0, 9000.0)), "channels"),
        (dict(kind="spectrum", channels=1, size=256, wavelength_range=(9000.0, 3600.0)), "wavelength_range"),
        (dict(kind="rgb", channels=3, size=96, wavelength_range=(3600.0, 9000.0)), "wavelength_range"),
    ):
        with pytest.raises(UserError, match=f"input {field}"):
            InputSpec(**bad)
    with pytest.raises(UserError, match="not image arrays"):
        check_inputs(np.zeros((1, 3, 96, 96), np.float32), spec, source="x")
    for bad, field in (
        ({"pixels": 100}, "pixels"),
        ({"downsample": 6}, "downsample"),
        ({"wavelength_min": 9000.0, "wavelength_max": 3600.0}, "wavelength_min"),
        ({"normalise": "mean"}, "normalise"),
        ({"levels": [1, 5]}, "levels"),
    ):
        with pytest.raises(UserError, match=field):
            SpectrumFSQConfig(**{**CONFIG, **bad})
    with pytest.raises(UserError, match="unknown fields"):
        SpectrumFSQConfig.from_json({"pixels": 256, "bands": ["g"]})
    with pytest.raises(UserError, match="crop"):
        train_spectrum_fsq(SpectrumFSQConfig(**CONFIG), None, None, TrainConfig(crop=8))
    with pytest.raises(UserError, match="flux row 0 has 1 pixels"):
        fit_spectra((SURVEY[:1], np.ones((1, 1))), SpectrumFSQConfig(**CONFIG))


def test_renderings_and_cost_take_the_one_row_grid(trained, data, tiny_model_dir):
    from astroreason.models import load_model_and_processor
    from astroreason.tokens.cost import rendering_cost

    codec, _ = trained
    _, flux, ivar = data["test"]
    codes = codec.encode((SURVEY, flux[:4], ivar[:4]))
    text = render(codes[0], "rows")
    assert "\n" not in text and len(text.split()) == 32
    assert np.array_equal(parse(text, "rows", codec.grid_shape), codes[0])
    assert np.array_equal(parse(render(codes[0], "special"), "special", codec.grid_shape), codes[0])
    tokenizer = load_model_and_processor(tiny_model_dir)[1].tokenizer
    special = rendering_cost(codes, "special", tokenizer, vocab_size=codec.vocab_size)
    assert special.codes_per_galaxy == 32 and special.lm_tokens_mean == 32  # one added token per code
    ints = rendering_cost(codes, "ints", tokenizer, vocab_size=codec.vocab_size)
    assert ints.lm_tokens_mean > 32 and ints.n_galaxies == 4

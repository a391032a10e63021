"""The spectrum arms on a prepared spectra split: `spectrum_plot` draws each spectrum as a plot with labelled axes
(the image path), `spectrum_tokens` writes its spectrum codec's ids into the prompt (the token path); both name the
split's own classes and have a blank-input control. An arm refuses a directory of the other kind in one line."""

from __future__ import annotations

import numpy as np
import pytest

from astroreason.arms import ARMS, ArmSettings, SpectrumPlotArm, build_arm
from astroreason.data.spectra.splits import prepare_spectra, split_spectra
from astroreason.data.spectra.stars import SPECTRAL_CLASSES
from astroreason.data.spectra.surrogate import synthesize_spectra
from astroreason.errors import UserError
from astroreason.tokens.cache import encode_prepared
from astroreason.tokens.fsq import TrainConfig
from astroreason.tokens.spectrum_fsq import SpectrumFSQConfig, train_spectrum_fsq

SIZE = 112


@pytest.fixture(scope="module")
def stars(tmp_path_factory):
    """70 surrogate stars (10 per class, a coarse grid) prepared into train/val/test splits."""
    root = tmp_path_factory.mktemp("spectrum_arms")
    source = synthesize_spectra(root / "stars", n=70, seed=1, dloglam=5e-4)
    return prepare_spectra(source, root / "prepared", label_column="spectral_class")


@pytest.fixture(scope="module")
def codec(stars, tmp_path_factory):
    """A small spectrum codec trained on the train split, its codes cached for every split."""
    codec, _ = train_spectrum_fsq(
        SpectrumFSQConfig(pixels=128, downsample=8, hidden=16),
        split_spectra(stars, "train"),
        split_spectra(stars, "val"),
        TrainConfig(batch_size=16, steps=30),
    )
    out = tmp_path_factory.mktemp("codec") / "fsq1d"
    codec.save(out)
    encode_prepared(stars, out)
    return out


def line_height(image, columns: slice) -> float:
    """Mean height (0 bottom, 1 top) of the plotted line's dark pixels inside the axes, over `columns` of them."""
    pixels = np.asarray(image.convert("L"), np.float64)
    h, w = pixels.shape
    # The axes box (`SpectrumPlotter`: left 0.2, bottom 0.18, 0.76 x 0.76 of the figure), inside its frame.
    box = pixels[int(h * 0.06) + 2 : int(h * 0.82) - 2, int(w * 0.2) + 2 : int(w * 0.96) - 2][:, columns]
    rows = np.nonzero(box < 128)[0]
    return 1 - rows.mean() / box.shape[0]


def test_the_plot_arm_draws_each_spectrum_and_names_the_spectral_classes(stars):
    arm = build_arm(ArmSettings(data_dir=str(stars), modality="spectrum_plot", image_size=SIZE), "train")
    rows = arm.rows()
    assert len(rows) == arm.n > 0
    assert all(r["image"].size == (SIZE, SIZE) and r["image"].mode == "RGB" for r in rows)
    (turn,) = rows[0]["prompt"]
    assert turn["content"].startswith("The image is a plot of a star's spectrum")
    assert "O, B, A, F, G, K, M" in turn["content"] and "galaxy" not in turn["content"]
    example = arm.dataset(with_completion=True)[0]
    assert example["completion"][0]["content"] == f"<answer>{SPECTRAL_CLASSES[example['label']]}</answer>"
    # The plot is the spectrum's: hot stars' continua fall toward the red, cool ones' rise (Wien), which the drawn
    # line shows as its height at the blue end against the red end.
    for row in rows:
        name = SPECTRAL_CLASSES[row["label"]]
        blue, red = line_height(row["image"], slice(0, 8)), line_height(row["image"], slice(-8, None))
        if name in "OB":
            assert blue > red, name
        if name == "M":
            assert red > blue, name


def test_the_plot_arms_blank_input_is_a_flat_spectrum(stars):
    arm = build_arm(ArmSettings(data_dir=str(stars), modality="spectrum_plot", image_size=SIZE), "val")
    blank = arm.without_galaxy()
    real = arm.rows()
    assert [r["prompt"] for r in blank] == [r["prompt"] for r in real]
    assert [r["label"] for r in blank] == [r["label"] for r in real]
    flat = [np.asarray(r["image"]) for r in blank]
    assert all(np.array_equal(flat[0], f) for f in flat)  # the same grid, the same flat line: nothing of the star
    assert not any(np.array_equal(flat[0], np.asarray(r["image"])) for r in real)


def test_the_token_arm_writes_the_spectrum_codes(stars, codec):
    arm = build_arm(ArmSettings(data_dir=str(stars), modality="spectrum_tokens", codec=str(codec)), "test")
    rows = arm.rows()
    assert len(rows) == arm.n == len(arm.manifest.rows["test"])
    (turn,) = rows[0]["prompt"]
    assert turn["content"].startswith("The star's spectrum is given as the discrete tokens of a spectrum codec")
    texts = [r["prompt"][0]["content"] for r in rows]
    assert len(set(texts)) > 1  # each spectrum its own codes
    # The blank-input control: the same prompts with another star's codes (a permutation of the used rows').
    blank = [r["prompt"][0]["content"] for r in arm.without_galaxy(seed=3)]
    assert sorted(blank) == sorted(texts) and blank != texts


def test_an_arm_refuses_data_of_the_other_kind(stars, prepared_dir):
    with pytest.raises(UserError, match="holds spectra; the image arm reads images"):
        build_arm(ArmSettings(data_dir=str(stars)), "train")
    with pytest.raises(UserError, match="holds images; the spectrum_plot arm reads spectra"):
        build_arm(ArmSettings(data_dir=str(prepared_dir), modality="spectrum_plot"), "train")


def test_the_spectrum_arms_are_registered_and_refuse_what_they_lack(stars):
    assert ARMS["spectrum_plot"] is SpectrumPlotArm and "spectrum_tokens" in ARMS
    with pytest.raises(UserError, match="codec: modality=tokens needs"):
        ArmSettings(data_dir=str(stars), modality="spectrum_tokens")
    with pytest.raises(UserError, match="token_crop"):
        ArmSettings(data_dir=str(stars), modality="spectrum_plot", token_crop=0.5)
    for modality in ("spectrum_plot", "spectrum_tokens"):
        settings = ArmSettings(data_dir=str(stars), modality=modality, codec="unused")
        with pytest.raises(UserError, match=f"zoom: the {modality} arm has no zoom tool yet"):
            ARMS[modality].zoom_tool(settings)

"""The stellar spectra surrogate and the Multimodal-Universe-layout reader: determinism, each class's features where
physics puts them, learnability, reading back with the user's label column and unit, the planted traps, and bad
input as one line."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from astroreason.data.spectra.reader import angstrom_factor, inspect_spectra, read_spectra
from astroreason.data.spectra.stars import SPECTRAL_CLASSES
from astroreason.data.spectra.surrogate import PARQUET_PART, synthesize_spectra
from astroreason.errors import UserError

PER_CLASS = 50


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """350 shuffled stars, 50 per class, no traps: for the physics and the classifier."""
    out = synthesize_spectra(tmp_path_factory.mktemp("spec") / "stars", n=PER_CLASS * 7, seed=0)
    return read_spectra(out, label_column="spectral_class", unit="Angstrom")


@pytest.fixture(scope="module")
def trapped(tmp_path_factory):
    """70 class-sorted stars with every trap planted, and what was planted."""
    out = synthesize_spectra(tmp_path_factory.mktemp("trap") / "stars", n=70, seed=3, sort_by_class=True, traps=True)
    return out, json.loads((out / "planted.json").read_text())


# --- measurements on the spectra as read back ---------------------------------------------------------------------


def normalised(spectra):
    return spectra.flux / np.median(spectra.flux, axis=1, keepdims=True)


def band(spectra, lo, hi):
    wave = spectra.wavelength[0]
    keep = (wave >= lo) & (wave < hi)
    return normalised(spectra)[:, keep].mean(axis=1)


def depth(spectra, line, blue, red):
    """1 - (mean flux in the line window) / (mean of the two side bands): a line's depth, per star."""
    return 1 - band(spectra, *line) / (0.5 * (band(spectra, *blue) + band(spectra, *red)))


def class_medians(spectra, values) -> dict[str, float]:
    return {name: float(np.median(values[spectra.labels == c])) for c, name in enumerate(spectra.classes)}


H_BETA = ((4851, 4871), (4790, 4810), (4910, 4930))
H_DELTA = ((4092, 4112), (4040, 4055), (4150, 4165))
CA_K = ((3926, 3942), (3895, 3910), (3990, 4010))
HE_II = ((4680, 4692), (4655, 4670), (4700, 4715))
HE_I = ((4465, 4478), (4440, 4455), (4490, 4505))
MG_B = ((5165, 5185), (5130, 5150), (5200, 5220))


def test_layout_is_multimodal_universe(sample):
    """A `spectrum` struct of flux, ivar, lambda, mask, lsf_sigma lists, beside object_id, ra, dec and the labels."""
    schema = pq.read_schema(sample.path / PARQUET_PART)
    assert {"object_id", "ra", "dec", "spectrum", "label", "spectral_class", "Z"} <= set(schema.names)
    spectrum = schema.field("spectrum").type
    assert {spectrum.field(i).name for i in range(spectrum.num_fields)} == {
        "flux",
        "ivar",
        "lambda",
        "mask",
        "lsf_sigma",
    }
    assert b"huggingface" in schema.metadata  # written by the datasets library, with its features
    assert sample.classes == list(SPECTRAL_CLASSES)
    assert np.bincount(sample.labels).tolist() == [PER_CLASS] * 7
    assert sample.flux.shape == sample.ivar.shape == sample.wavelength.shape == (350, 3980)
    assert 3599 < sample.wavelength.min() and sample.wavelength.max() < 9001
    assert np.isfinite(sample.flux).all() and (sample.ivar > 0).all()
    assert not sample.extra["mask"].any() and (sample.extra["lsf_sigma"] > 0).all()
    rv = sample.catalogue["Z"] * 299792.458
    assert np.abs(rv).max() <= 300.1 and rv.std() > 100  # a radial velocity per star, within +-300 km/s


def test_noise_matches_ivar(sample):
    """Neighbouring pixels differ by noise of variance 1/ivar + 1/ivar' (the model barely changes from one pixel to
    the next away from lines): the robust scatter of those pulls is about 1."""
    flux, var = sample.flux.astype(float), 1.0 / sample.ivar.astype(float)
    pulls = np.diff(flux, axis=1) / np.sqrt(var[:, 1:] + var[:, :-1])
    for c in range(7):
        rows = pulls[sample.labels == c]
        robust_std = 1.4826 * np.median(np.abs(rows - np.median(rows)))
        assert 0.9 < robust_std < 1.1, (sample.classes[c], robust_std)


def test_same_seed_same_bytes_other_seed_other_stars(tmp_path):
    paths = [synthesize_spectra(tmp_path / name, n=21, seed=seed) for name, seed in (("a", 5), ("b", 5), ("c", 6))]
    parts = [(p / PARQUET_PART).read_bytes() for p in paths]
    assert parts[0] == parts[1]
    assert parts[0] != parts[2]


def test_balmer_lines_peak_at_a(sample):
    for line in (H_BETA, H_DELTA):
        med = class_medians(sample, depth(sample, *line))
        assert max(med, key=med.get) == "A", med
        assert med["A"] > 0.3 and med["A"] > 1.5 * max(med["O"], med["G"], med["K"], med["M"])
        # fading to both sides of A
        assert med["A"] > med["B"] > med["O"] and med["A"] > med["F"] > med["G"] > med["K"] > med["M"]


def test_helium_in_hot_stars(sample):
    he2, he1 = class_medians(sample, depth(sample, *HE_II)), class_medians(sample, depth(sample, *HE_I))
    assert he2["O"] > 0.08 and all(he2[c] < 0.02 for c in "BAFGKM"), he2
    assert max(he1, key=he1.get) == "B" and he1["B"] > he1["O"] > 0.01 and all(he1[c] < 0.01 for c in "FGKM"), he1


def test_metal_lines_grow_through_f_g_k(sample):
    ca_k, mg_b = class_medians(sample, depth(sample, *CA_K)), class_medians(sample, depth(sample, *MG_B))
    assert ca_k["K"] > ca_k["A"] + 0.2, ca_k
    assert ca_k["A"] < ca_k["F"] < ca_k["G"] < ca_k["K"]
    assert mg_b["A"] < mg_b["F"] < mg_b["G"] < mg_b["K"], mg_b


def test_tio_bands_in_m_only(sample):
    """The flux just past the 7054 A band head drops well below the flux just before it in M stars only."""
    drop = class_medians(sample, 1 - band(sample, 7060, 7150) / band(sample, 6960, 7040))
    assert drop["M"] > 0.3, drop
    assert all(drop[c] < 0.1 for c in "OBAFGK"), drop


def test_continuum_moves_redward_from_o_to_m(sample):
    """Wien: the flux-weighted mean wavelength grows class by class, and the smoothed peak moves into the red."""
    from scipy.ndimage import gaussian_filter1d

    flux, wave = normalised(sample), sample.wavelength[0]
    mean_wave = class_medians(sample, (flux * wave).sum(axis=1) / flux.sum(axis=1))
    assert [mean_wave[c] for c in SPECTRAL_CLASSES] == sorted(mean_wave.values()), mean_wave
    assert len(set(mean_wave.values())) == 7
    peak = class_medians(sample, wave[np.argmax(gaussian_filter1d(flux, 60, axis=1), axis=1)])
    assert [peak[c] for c in SPECTRAL_CLASSES] == sorted(peak.values()), peak
    assert peak["O"] < 3800 and peak["M"] > 7000


def test_classes_are_learnable(sample):
    """A nearest-centroid classifier on log median-normalised flux beats the majority rate by a wide margin."""
    from sklearn.neighbors import NearestCentroid

    x, y = np.log(np.clip(normalised(sample), 1e-3, None)), sample.labels
    half = len(y) // 2
    accuracy = (NearestCentroid().fit(x[:half], y[:half]).predict(x[half:]) == y[half:]).mean()
    majority = np.bincount(y[half:]).max() / (len(y) - half)
    assert accuracy > majority + 0.5, (accuracy, majority)


# --- reading a directory the datasets library wrote ---------------------------------------------------------------


def write_mmu(path, *, lam_nm, flux, ivar=None, labels=("G", "K"), extra=None, save_to_disk=False):
    """A small Multimodal-Universe-layout directory, written by the datasets library."""
    from datasets import Dataset, Features, List, Value

    n = len(flux)
    ivar = ivar if ivar is not None else [[1.0] * len(f) for f in flux]
    rows = {
        "object_id": [f"id{i}" for i in range(n)],
        "ra": [10.0 + i for i in range(n)],
        "dec": [-5.0] * n,
        "spectrum": [{"flux": f, "ivar": v, "lambda": w} for f, v, w in zip(flux, ivar, lam_nm)],
        "type": list(labels),
        **(extra or {}),
    }
    spectrum = {k: List(Value("float32")) for k in ("flux", "ivar", "lambda")}
    features = {"object_id": Value("string"), "ra": Value("float64"), "dec": Value("float64")}
    features |= {"spectrum": spectrum, "type": Value("string")}
    features |= {k: Value("float32") for k in (extra or {})}
    dataset = Dataset.from_dict(rows, features=Features(features))
    if save_to_disk:
        dataset.save_to_disk(str(path))
        return path
    (path / "data").mkdir(parents=True)
    dataset.to_parquet(str(path / "data" / "train-00000-of-00001.parquet"))
    return path


def test_reads_label_column_and_converts_nm_to_angstrom(tmp_path):
    lam = [[400.0, 500.0, 600.0]] * 2
    path = write_mmu(tmp_path / "mmu", lam_nm=lam, flux=[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], extra={"z": [0.1, 0.2]})
    spectra = read_spectra(path, label_column="type", unit="nm")
    np.testing.assert_allclose(spectra.wavelength, [[4000.0, 5000.0, 6000.0]] * 2, rtol=1e-6)
    assert spectra.classes == ["G", "K"] and spectra.labels.tolist() == [0, 1]  # spectral letters in O..M order
    assert spectra.flux.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert spectra.catalogue["object_id"].tolist() == ["id0", "id1"]
    np.testing.assert_allclose(spectra.catalogue["z"], [0.1, 0.2], rtol=1e-6)
    microns = read_spectra(path, label_column="type", unit="µm")
    np.testing.assert_allclose(microns.wavelength, spectra.wavelength * 1000, rtol=1e-6)
    assert angstrom_factor("Å") == angstrom_factor("Angstrom") == 1.0 and angstrom_factor("nm") == pytest.approx(10)


def test_reads_a_save_to_disk_directory(tmp_path):
    path = write_mmu(tmp_path / "saved", lam_nm=[[1.0, 2.0]] * 2, flux=[[1.0, 2.0], [3.0, 4.0]], save_to_disk=True)
    spectra = read_spectra(path, label_column="type", unit="micron")
    assert spectra.flux.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    np.testing.assert_allclose(spectra.wavelength, [[1e4, 2e4]] * 2)


def test_surrogate_refuses_bad_arguments_in_one_line(tmp_path):
    with pytest.raises(UserError) as err:
        synthesize_spectra(tmp_path / "few", n=10, traps=True)
    one_line(err, "traps", "raise n")
    with pytest.raises(UserError) as err:
        synthesize_spectra(tmp_path / "none", n=0)
    one_line(err, "n must be")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UserError) as err:
        synthesize_spectra(tmp_path / "full", n=7)
    one_line(err, "full", "not an empty directory")


def test_reads_multimodal_universe_fixed_length_declaration(tmp_path):
    """Multimodal Universe's DESI builder declares `spectrum` as Sequence(feature={flux, ivar, lsf_sigma, lambda,
    mask}, length=N): datasets stores that as a struct of fixed-size lists, which reads the same."""
    from datasets import Dataset, Features, Sequence, Value

    names = ("flux", "ivar", "lsf_sigma", "lambda")
    spectrum = Sequence(feature={**{k: Value("float32") for k in names}, "mask": Value("bool")}, length=3)
    features = Features({"object_id": Value("string"), "ra": Value("float64"), "dec": Value("float64")})
    features |= {"spectrum": spectrum, "cls": Value("int64")}
    cell = {"flux": [1, 2, 3], "ivar": [1, 1, 1], "lsf_sigma": [1, 1, 1], "lambda": [0.4, 0.5, 0.6]}
    rows = {"object_id": ["a", "b"], "ra": [1.0, 2.0], "dec": [0.0, 0.0], "cls": [3, 1]}
    rows["spectrum"] = [cell | {"mask": [False, True, False]}] * 2
    (tmp_path / "data").mkdir()
    Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    spectra = read_spectra(tmp_path, label_column="cls", unit="um")
    np.testing.assert_allclose(spectra.wavelength, [[4000.0, 5000.0, 6000.0]] * 2, rtol=1e-6)
    assert spectra.classes == ["1", "3"] and spectra.labels.tolist() == [1, 0]
    assert spectra.extra["mask"].tolist() == [[False, True, False]] * 2


def test_reads_the_surrogate_with_an_integer_label_column(trapped):
    spectra = read_spectra(trapped[0], label_column="label", unit="Angstrom")
    assert spectra.classes == [str(c) for c in range(7)] and np.bincount(spectra.labels).tolist() == [10] * 7


# --- the traps --------------------------------------------------------------------------------------------------------


def test_inspection_reports_every_planted_trap(trapped):
    path, planted = trapped
    report = inspect_spectra(read_spectra(path, label_column="spectral_class", unit="AA"))
    assert [c["count"] for c in report["classes"]] == [10] * 7
    order = report["ordering"]
    assert order["sorted_by_class"] and order["grouped_by_class"] and order["n_runs"] == 7

    dupes = report["duplicates"]
    exact = {tuple(g["rows"]): g["conflict"] for g in dupes["exact_position"]}
    assert exact == {tuple(sorted(planted["position_conflict"])): True, tuple(sorted(planted["position_same"])): False}
    content = {tuple(g["rows"]): g["conflict"] for g in dupes["identical_flux"]}
    assert content == {tuple(sorted(planted["content_conflict"])): True, tuple(sorted(planted["content_same"])): False}
    assert dupes["conflicts"]["exact_position"] == 1 and dupes["conflicts"]["identical_flux"] == 1
    assert dupes["near_position"] == []

    excluded = {e["row"]: e["reason"] for e in report["flux_excluded"]}
    assert excluded == {
        planted["nan_flux"]: "flux holds 1 NaN value(s)",
        planted["inf_flux"]: "flux holds 1 infinite value(s)",
    }
    assert all(e["id"].startswith("star-3-") for e in report["flux_excluded"])
    json.dumps(report)  # JSON-ready


def test_shuffled_without_traps_reports_none(sample):
    report = inspect_spectra(sample)
    assert not report["ordering"]["sorted_by_class"] and not report["ordering"]["clustered_by_class"]
    assert report["duplicates"]["combined"] == [] and report["flux_excluded"] == []


# --- bad input is one line naming what is wrong -------------------------------------------------------------------


def one_line(excinfo, *needles):
    text = str(excinfo.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, text


def test_bad_input_is_one_line(tmp_path, trapped):
    path = trapped[0]
    with pytest.raises(UserError) as err:
        read_spectra(tmp_path / "nowhere", label_column="label")
    one_line(err, "nowhere", "no such directory")
    with pytest.raises(UserError) as err:
        read_spectra(path / "planted.json", label_column="label")
    one_line(err, "planted.json", "is not a directory")
    with pytest.raises(UserError) as err:
        read_spectra(path, label_column="subclass")
    one_line(err, "train-00000-of-00001.parquet", "`subclass`", "spectral_class")
    for unit in ("bananas", "kg"):
        with pytest.raises(UserError) as err:
            read_spectra(path, label_column="label", unit=unit)
        one_line(err, "--wavelength-unit", unit)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as err:
        read_spectra(empty, label_column="label")
    one_line(err, "empty", "parquet")


def test_wrong_array_lengths_are_one_line(tmp_path):
    lam = [[400.0, 500.0, 600.0]] * 2
    ragged = write_mmu(tmp_path / "ragged", lam_nm=lam, flux=[[1.0, 2.0, 3.0], [4.0, 5.0]])
    with pytest.raises(UserError) as err:
        read_spectra(ragged, label_column="type", unit="nm")
    one_line(err, "train-00000-of-00001.parquet", "`spectrum`.flux", "row 1")
    short = write_mmu(tmp_path / "short", lam_nm=lam, flux=[[1.0, 2.0, 3.0]] * 2, ivar=[[1.0, 1.0]] * 2)
    with pytest.raises(UserError) as err:
        read_spectra(short, label_column="type", unit="nm")
    one_line(err, "`spectrum`.ivar", "2 values per row where flux has 3")

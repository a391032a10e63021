"""The GalSim surrogate of Galaxy10 DECaLS: schema, class mix, determinism, flux, CLI, and that it is learnable."""

from __future__ import annotations

import itertools

import h5py
import numpy as np
import pytest
from scipy.stats import spearmanr

from astroreason.data.galaxy10 import DECALS_CLASSES, DECALS_COUNTS, FLUX_BANDS, REQUIRED_KEYS
from astroreason.data.surrogate import class_counts, contact_sheet, decals_rgb, synthesize

# Pairs Galaxy10 itself confuses; the surrogate keeps them confusable.
CONFUSABLE = {(2, 3), (6, 7), (5, 6), (5, 7), (0, 1), (8, 9)}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """600 shuffled 64-px galaxies: enough to train and score a small classifier."""
    return synthesize(tmp_path_factory.mktemp("sur") / "g10.h5", n=600, size=64, seed=0, workers=2)


def read(path, *keys):
    with h5py.File(path, "r") as f:
        return [f[k][:] for k in keys]


def test_schema_dtypes_and_ranges(sample):
    with h5py.File(sample, "r") as f:
        assert set(REQUIRED_KEYS) <= set(f.keys())
        assert "flux" not in f
        images, ans = f["images"], f["ans"]
        assert images.shape == (600, 64, 64, 3) and images.dtype == np.uint8
        assert ans.shape == (600,) and ans.dtype == np.uint8
        for key in ("ra", "dec", "redshift", "pxscale"):
            assert f[key].shape == (600,) and f[key].dtype == np.float64, key
        ra, dec, z, px = f["ra"][:], f["dec"][:], f["redshift"][:], f["pxscale"][:]
        img, labels = images[:], ans[:]
    assert set(np.unique(labels)) == set(range(10))
    assert ((ra >= 0) & (ra < 360)).all() and ((dec > -20) & (dec < 32)).all()
    assert 0 < np.isnan(z).sum() < 0.2 * len(z)
    assert (z[~np.isnan(z)] > 0).all() and (z[~np.isnan(z)] < 0.5).all()
    np.testing.assert_allclose(px, 0.262 * 256 / 64)
    # Sky positions are distinct: no two galaxies within 5 arcsec (the real file's duplicates are not copied).
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    coords = SkyCoord(ra=ra * u.deg, dec=dec * u.deg)
    _, sep, _ = coords.match_to_catalog_sky(coords, nthneighbor=2)
    assert sep.arcsec.min() > 5
    # A dark, noisy sky around a bright, roughly centred galaxy.
    border = np.concatenate([img[:, :4].reshape(600, -1), img[:, -4:].reshape(600, -1)], axis=1)
    centre = img[:, 28:36, 28:36].reshape(600, -1)
    assert 5 < np.median(border) < 70 and border.std(axis=1).mean() > 1
    assert (centre.mean(axis=1) > border.mean(axis=1) + 20).mean() > 0.95


def test_class_mix_follows_galaxy10_counts(sample):
    (ans,) = read(sample, "ans")
    expected = np.asarray(DECALS_COUNTS) / sum(DECALS_COUNTS) * 600
    assert np.abs(np.bincount(ans, minlength=10) - expected).max() <= 1
    for n in (10, 50, 333, 17736):
        counts = class_counts(n)
        assert counts.sum() == n and (counts >= 1).all()
    np.testing.assert_array_equal(class_counts(17736), DECALS_COUNTS)


def test_same_seed_same_bytes_for_any_workers_and_other_seed_differs(tmp_path):
    a = synthesize(tmp_path / "a.h5", n=40, size=32, seed=3, workers=1)
    b = synthesize(tmp_path / "b.h5", n=40, size=32, seed=3, workers=2)
    c = synthesize(tmp_path / "c.h5", n=40, size=32, seed=4, workers=1)
    keys = ("images", "ans", "ra", "dec", "redshift", "pxscale")
    for x, y in zip(read(a, *keys), read(b, *keys)):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    ia, ic = read(a, "images")[0], read(c, "images")[0]
    assert not np.array_equal(ia, ic)
    assert not np.array_equal(read(a, "ra")[0], read(c, "ra")[0])


def test_sorted_rows_are_the_same_galaxies_ordered_by_class(tmp_path):
    keys = ("images", "ans", "ra", "dec", "redshift")
    plain = read(synthesize(tmp_path / "p.h5", n=60, size=32, seed=0, workers=1), *keys)
    ordered = read(synthesize(tmp_path / "s.h5", n=60, size=32, seed=0, sort_by_class=True, workers=1), *keys)
    ans = ordered[1]
    assert (np.diff(ans.astype(int)) >= 0).all() and set(ans) == set(range(10))
    assert not (np.diff(plain[1].astype(int)) >= 0).all()
    perm = np.lexsort((plain[2], plain[1]))  # class, then RA, as the sorted file promises
    for p, s in zip(plain, ordered):
        np.testing.assert_array_equal(p[perm], s)


def test_flux_is_the_same_galaxy_in_nanomaggies(tmp_path):
    path = synthesize(tmp_path / "f.h5", n=40, size=64, seed=0, flux=True, flux_size=48, workers=1)
    with h5py.File(path, "r") as f:
        flux, images = f["flux"][:], f["images"][:]
        assert list(f["flux"].attrs["bands"]) == list(FLUX_BANDS)
        assert f["flux"].attrs["unit"] == "nanomaggy"
    assert flux.shape == (40, 4, 48, 48) and flux.dtype == np.float32 and np.isfinite(flux).all()
    # Sky noise at DECaLS-like levels (a few thousandths of a nanomaggy), rising from g to z. The corners of a
    # 12.6" cutout still hold galaxy light (r50 is 5-9"), so the noise comes from neighbouring-pixel differences,
    # which cancel that smooth light: a plain corner std mistakes the galaxy's gradient for noise.
    corner_diff = np.diff(flux[:, :, :8, :8], axis=3).reshape(40, 4, -1)
    noise = np.median(corner_diff.std(axis=2), axis=0) / np.sqrt(2)
    assert (0.002 < noise).all() and (noise < 0.02).all() and (np.diff(noise) > 0).all()
    # A galaxy of r ~ 14-18 mag: tens to thousands of nanomaggies in the r band.
    total_r = flux[:, 1].sum(axis=(1, 2))
    assert 10 < np.median(total_r) < 3000 and (flux[:, 1].max(axis=(1, 2)) > 20 * noise[1]).all()
    # Same galaxy, same orientation: the 48-px flux cutout (12.6") binned 4x matches the centre 12 px of the
    # 64-px RGB image (1.048"/px), and brighter flux makes brighter pixels.
    r_binned = flux[:, 1].reshape(40, 12, 4, 12, 4).sum(axis=(2, 4))
    green = images[:, 26:38, 26:38, 1].astype(float)
    per_row = [np.corrcoef(np.arcsinh(r_binned[i] / 0.05).ravel(), green[i].ravel())[0, 1] for i in range(40)]
    assert np.median(per_row) > 0.8
    assert spearmanr(total_r, green.mean(axis=(1, 2))).statistic > 0.5


def test_cli_writes_a_file_and_refuses_bad_input(tmp_path, capsys):
    from astroreason.cli import main

    out = tmp_path / "cli.h5"
    assert main(["data", "synth", "--out", str(out), "--n", "12", "--size", "32", "--seed", "1", "--sorted"]) == 0
    (ans, images) = read(out, "ans", "images")
    assert images.shape == (12, 32, 32, 3) and (np.diff(ans.astype(int)) >= 0).all()
    bad = tmp_path / "bad.h5"
    assert main(["data", "synth", "--out", str(bad), "--n", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "n must be" in err[0] and not bad.exists()
    assert list(tmp_path.glob(".bad*")) == []


def test_contact_sheet_is_a_png(sample, tmp_path):
    png = contact_sheet(sample, tmp_path / "sheet.png", per_class=3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_decals_rgb_is_the_viewer_stretch():
    sky = np.zeros((2, 2))
    assert (decals_rgb(sky, sky, sky) == round(np.arcsinh(20 * 0.03) / np.sqrt(20) / 0.03 * 0.03 * 255)).all()
    red = decals_rgb(np.full((1, 1), 0.01), np.full((1, 1), 0.05), np.full((1, 1), 0.2))[0, 0]
    assert red[0] > red[1] > red[2]  # z -> R, r -> G, g -> B


# ---------------------------------------------------------------------------------------------------------------
# Learnability: simple rotation-invariant features and a linear model must beat twice the majority-class rate,
# and its mistakes must fall on the pairs Galaxy10 itself confuses.


def morphology_features(images: np.ndarray) -> np.ndarray:
    """Concentration, shape, colour, asymmetry and azimuthal structure of each (N, H, W, 3) uint8 image."""
    rgb = images.astype(np.float64)
    n, h, w, _ = rgb.shape
    sky = np.median(np.concatenate([rgb[:, :3].reshape(n, -1, 3), rgb[:, -3:].reshape(n, -1, 3)], axis=1), axis=1)
    rgb = rgb - sky[:, None, None, :]
    lum = np.clip(rgb.mean(axis=3), 0, None)
    y, x = np.mgrid[:h, :w] - (h - 1) / 2
    r = np.hypot(x, y)
    theta = np.arctan2(y, x)
    edges = np.linspace(0, h / 2, 9)
    feats = []
    for i in range(n):
        im = lum[i] * (r < h / 2)
        total = im.sum() + 1e-9
        prof = [im[(r >= a) & (r < b)].mean() for a, b in zip(edges[:-1], edges[1:])]
        f = list(np.log1p(prof))
        for thresh in (0.5, 0.15):  # inner and outer isophote shape
            wgt = im * (im > thresh * im.max())
            m = wgt.sum() + 1e-9
            cx, cy = (wgt * x).sum() / m, (wgt * y).sum() / m
            cov = np.cov(np.stack([(x - cx).ravel(), (y - cy).ravel()]), aweights=wgt.ravel() + 1e-12)
            ev = np.linalg.eigvalsh(cov)
            f += [np.sqrt(ev[0] / ev[1]), np.log(ev[1] + 1e-9)]
        for ring in ((0, 4), (4, 10), (10, 20)):
            sel = (r >= ring[0]) & (r < ring[1])
            colour = (rgb[i, ..., 2][sel].sum() - rgb[i, ..., 0][sel].sum()) / (np.abs(rgb[i][sel]).sum() + 1e-9)
            f.append(colour)
        f.append(np.abs(im - im[::-1, ::-1]).sum() / total)
        phases = []
        for ring in ((3, 7), (7, 12), (12, 18)):
            sel = (r >= ring[0]) & (r < ring[1])
            ring_sum = im[sel].sum() + 1e-9
            for m in (1, 2, 3):
                a = (im[sel] * np.exp(-1j * m * theta[sel])).sum() / ring_sum
                f.append(abs(a))
                if m == 2:
                    phases.append(np.angle(a))
        f += [np.cos(phases[1] - phases[0]), np.cos(phases[2] - phases[1])]
        feats.append(f)
    return np.asarray(feats)


def test_surrogate_is_learnable_and_confuses_the_right_pairs(sample):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    images, ans = read(sample, "images", "ans")
    labels = ans.astype(int)
    feats = morphology_features(images)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    pred = cross_val_predict(model, feats, labels, cv=StratifiedKFold(5, shuffle=True, random_state=0))
    accuracy = (pred == labels).mean()
    majority = np.bincount(labels).max() / len(labels)
    print(f"held-out accuracy {accuracy:.3f} (majority rate {majority:.3f})")
    assert accuracy > 2 * majority

    rate = confusion_matrix(labels, pred, labels=range(10), normalize="true")
    mutual = {(a, b): rate[a, b] + rate[b, a] for a, b in itertools.combinations(range(10), 2)}
    designated = np.mean([mutual[p] for p in CONFUSABLE])
    others = np.mean([v for p, v in mutual.items() if p not in CONFUSABLE])
    print(f"mutual confusion: designated pairs {designated:.3f}, other pairs {others:.3f}")
    print(
        {DECALS_CLASSES[a][:12] + "/" + DECALS_CLASSES[b][:12]: round(mutual[(a, b)], 3) for a, b in sorted(CONFUSABLE)}
    )
    assert designated > 3 * others
    assert min(mutual[p] for p in CONFUSABLE) > 0  # no designated pair has become perfectly separable

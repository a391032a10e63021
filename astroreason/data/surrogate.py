"""A GalSim surrogate of Galaxy10 DECaLS: the same HDF5 schema as the real file, made offline in seconds.

Each row is one galaxy of a Galaxy10 class, built from physical ingredients (`morphology.py`), seen through a
Moffat PSF with DECaLS-like sky noise, and composed from g, r, z to RGB with the Legacy Surveys viewer's stretch,
as Galaxy10's cutouts were. Optionally the same galaxy model is also written as g, r, i, z flux in nanomaggies at
the native 0.262"/pixel (the input AION-1's image codec expects).

Schema (as the real file, plus the optional `flux`):
  images   (N, size, size, 3) uint8 RGB      ans      (N,) uint8 class 0-9
  ra, dec  (N,) float64 degrees              redshift (N,) float64, some NaN
  pxscale  (N,) float64 arcsec/pixel         flux     (N, 4, flux_size, flux_size) float32 nanomaggies
  focus_box (N, 4) float32: the region that decides the galaxy's class (its bar, inner arms, bulge, both nuclei,
           ...), [x1, y1, x2, y2] as fractions of the image from its top-left corner; what the surrogate knows and
           the real file does not (the zoom warm start's boxes, `astroreason.zoom.trajectories`)
Every row is seeded from (seed, row of the unsorted draw): the output does not depend on `workers`.

`layout="galaxy10-aion"` writes the same galaxies as the public galaxy10-aion dataset lays them out instead: a
directory with data/train-00000-of-00001.parquet and data/test-00000-of-00001.parquet, columns `image_rgb` (PNG),
`image_bands` (g,r,i,z nanomaggies, 4 x flux_size x flux_size), `ra`, `dec`, `Galaxy10_DECals_index` (the row the
HDF5 layout of the same seed has the galaxy at), `label`, `label_name`. `traps=True` plants what a naive split of it
would trip on (see `plant_traps`).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from pathlib import Path

import h5py
import numpy as np

from ..errors import UserError
from ..io import atomic_path
from .galaxy10 import DECALS_CLASSES, DECALS_COUNTS, DECALS_PIXEL_SCALE, FLUX_BANDS, LAYOUTS
from .morphology import BANDS, SKY_SIGMA, draw_galaxy, render

REDSHIFT_NAN_FRACTION = 0.08  # rows without a redshift (the real file has some NaN; its fraction is not recorded here)
_CHUNK = 32  # rows per task: memory stays flat however large n is
_STREAM_LABELS, _STREAM_SKY, _STREAM_SPLIT = 1, 2, 3  # seed streams beside the per-row ones
AION_TEST_FRACTION = 796 / 17736  # the public galaxy10-aion's test share
NEAR_ARCSEC = 2.0  # the planted near pair's separation


def class_counts(n: int) -> np.ndarray:
    """Rows per class for `n` rows, proportional to Galaxy10 DECaLS (largest remainder, so n = 17736 gives the real
    counts exactly); every class present once n >= 10, each missing one taken from the largest class."""
    weights = np.asarray(DECALS_COUNTS, float) / sum(DECALS_COUNTS)
    share = weights * n
    counts = np.floor(share).astype(int)
    remainder = n - counts.sum()
    counts[np.argsort(-(share - counts), kind="stable")[:remainder]] += 1
    if n >= len(counts):
        for c in np.flatnonzero(counts == 0):
            counts[np.argmax(counts)] -= 1
            counts[c] = 1
    return counts


def sky_positions(n: int, rng: np.random.Generator, min_sep_arcsec: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Distinct positions in a DECaLS-like footprint: -20 < dec < +32 deg, |galactic b| > 20 deg."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    ra, dec = np.empty(0), np.empty(0)
    while len(ra) < n:
        k = 2 * (n - len(ra)) + 16
        cand_ra = rng.uniform(0.0, 360.0, k)
        cand_dec = np.degrees(np.arcsin(rng.uniform(math.sin(math.radians(-20)), math.sin(math.radians(32)), k)))
        b = SkyCoord(ra=cand_ra * u.deg, dec=cand_dec * u.deg).galactic.b.deg
        keep = np.abs(b) > 20
        ra, dec = np.concatenate([ra, cand_ra[keep]])[:n], np.concatenate([dec, cand_dec[keep]])[:n]
        if len(ra) == n and n > 1:  # drop accidental near-duplicates and draw again
            coords = SkyCoord(ra=ra * u.deg, dec=dec * u.deg)
            _, sep, _ = coords.match_to_catalog_sky(coords, nthneighbor=2)
            first = np.ones(n, bool)
            close = np.flatnonzero(sep.arcsec < min_sep_arcsec)
            first[close[1::2]] = False  # keep one of each close pair
            ra, dec = ra[first], dec[first]
    return ra, dec


def decals_rgb(g: np.ndarray, r: np.ndarray, z: np.ndarray) -> np.ndarray:
    """g, r, z in nanomaggies per 0.262" pixel -> uint8 RGB, as the Legacy Surveys viewer draws DECaLS cutouts.

    The viewer's `dr2_rgb` (legacysurvey/imagine, map/views.py): z, r, g scaled by 2.2, 3.4, 6.0 into R, G, B,
    offset by 0.03, and a Lupton-style asinh stretch (Q = 20) of their mean that keeps each pixel's colour.
    """
    planes = [np.maximum(0.0, band * scale + 0.03) for band, scale in ((z, 2.2), (r, 3.4), (g, 6.0))]
    mean = sum(planes) / 3
    stretch = np.arcsinh(20 * mean) / math.sqrt(20) / np.where(mean > 0, mean, 1e-6)
    rgb = np.stack([p * stretch for p in planes], axis=-1)
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def render_row(index: int, label: int, seed: int, size: int, flux_size: int | None):
    """One row: (RGB uint8 image, g,r,i,z flux float32 or None, redshift, focus box). Seeded from (seed, index)
    only."""
    rng = np.random.default_rng([seed, index])
    galaxy = draw_galaxy(label, rng)
    # Size and redshift go together loosely (larger on the sky, nearer); some rows have no redshift.
    redshift = float(np.clip(0.06 * (7.0 / galaxy.r50) ** 0.8 * rng.lognormal(0.0, 0.35), 0.005, 0.3))
    if rng.random() < REDSHIFT_NAN_FRACTION:
        redshift = float("nan")
    pxscale = DECALS_PIXEL_SCALE * 256 / size
    # The RGB of a smaller image is the full-resolution cutout averaged down: values per native pixel, and
    # the sky noise of a pixel averaging (pxscale / 0.262)^2 native ones.
    binning = pxscale / DECALS_PIXEL_SCALE
    grz = tuple(BANDS.index(b) for b in "grz")
    sky = render(galaxy, size, pxscale, bands=grz) / binning**2
    sky += rng.normal(size=sky.shape) * (SKY_SIGMA[list(grz)] / binning)[:, None, None]
    image = decals_rgb(*sky)
    flux = None
    if flux_size:
        flux = render(galaxy, flux_size, DECALS_PIXEL_SCALE)
        flux += rng.normal(size=flux.shape) * SKY_SIGMA[:, None, None]
        flux = flux.astype(np.float32)
    return image, flux, redshift, galaxy.focus_box()


def _render_chunk(task):
    indices, labels, seed, size, flux_size = task
    rows = [render_row(int(i), int(c), seed, size, flux_size) for i, c in zip(indices, labels)]
    images = np.stack([r[0] for r in rows])
    flux = np.stack([r[1] for r in rows]) if flux_size else None
    return images, flux, np.array([r[2] for r in rows]), np.array([r[3] for r in rows], np.float32)


def synthesize(
    out,
    *,
    n: int = 2000,
    size: int = 256,
    seed: int = 0,
    sort_by_class: bool = False,
    flux: bool = False,
    flux_size: int = 96,
    workers: int | None = None,
    progress: bool = False,
    layout: str = "hdf5",
    traps: bool = False,
) -> Path:
    """Write a Galaxy10 DECaLS surrogate of `n` rows to `out` (HDF5, atomically) and return its path.

    `size` is the RGB side in pixels; the field of view stays Galaxy10's 67" (pxscale = 0.262 * 256 / size).
    `sort_by_class` orders rows by class (then RA), as the real file is. `flux` adds g, r, i, z nanomaggies of the
    same galaxies at 0.262"/pixel, `flux_size` pixels square. `workers` processes render in parallel (default:
    the available cores); the bytes written do not depend on it. `layout` `galaxy10-aion` writes a parquet
    directory instead (flux always, see the module doc); `traps` plants its hazards (galaxy10-aion layout only).
    """
    out = Path(out)
    if layout not in LAYOUTS:
        raise UserError(f"synth: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if traps and layout != "galaxy10-aion":
        raise UserError("synth: traps are planted in the galaxy10-aion layout only")
    for name, value, low in (("n", n, 1), ("size", size, 16), ("flux_size", flux_size, 16)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise UserError(f"synth: {name} must be an integer >= {low}, got {value!r}")
    if layout == "hdf5" and out.is_dir():
        raise UserError(f"{out}: is a directory; give the HDF5 file to write")
    if layout == "galaxy10-aion" and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty directory; give a new directory to write")
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if n >= 4 * _CHUNK else 1
    if workers < 1:
        raise UserError(f"synth: workers must be >= 1, got {workers}")

    counts = class_counts(n)
    labels = np.random.default_rng([seed, _STREAM_LABELS]).permutation(np.repeat(np.arange(len(counts)), counts))
    ra, dec = sky_positions(n, np.random.default_rng([seed, _STREAM_SKY]))
    order = np.lexsort((ra, labels)) if sort_by_class else np.arange(n)
    fsize = flux_size if flux or layout == "galaxy10-aion" else None
    tasks = [(order[i : i + _CHUNK], labels[order[i : i + _CHUNK]], seed, size, fsize) for i in range(0, n, _CHUNK)]
    if layout == "galaxy10-aion":
        rendered = _map(tasks, workers, progress)
        return _write_aion(out, rendered, labels[order], ra[order], dec[order], seed=seed, traps=traps)

    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["source"] = "astroreason GalSim surrogate of Galaxy10 DECaLS"
        f.attrs["surrogate"] = True
        f.attrs["seed"] = seed
        f.attrs["sorted_by_class"] = sort_by_class
        f.attrs["class_names"] = json.dumps(list(DECALS_CLASSES))
        images = f.create_dataset("images", (n, size, size, 3), np.uint8)
        images.attrs["bands"] = "g, r, z -> B, G, R (Legacy Surveys viewer asinh stretch)"
        f["ans"] = labels[order].astype(np.uint8)
        f["ra"], f["dec"] = ra[order], dec[order]
        f["pxscale"] = np.full(n, DECALS_PIXEL_SCALE * 256 / size)
        redshift = f.create_dataset("redshift", (n,), np.float64)
        focus = f.create_dataset("focus_box", (n, 4), np.float32)
        focus.attrs["meaning"] = "region deciding the class, [x1, y1, x2, y2] fractions from the top-left corner"
        if flux:
            flux_ds = f.create_dataset("flux", (n, len(FLUX_BANDS), flux_size, flux_size), np.float32)
            flux_ds.attrs["bands"] = list(FLUX_BANDS)
            flux_ds.attrs["unit"] = "nanomaggy"
            flux_ds.attrs["pixel_scale"] = DECALS_PIXEL_SCALE
        for k, (img, flx, z, box) in enumerate(_map(tasks, workers, progress)):
            rows = slice(k * _CHUNK, k * _CHUNK + len(img))
            images[rows], redshift[rows], focus[rows] = img, z, box
            if flux:
                flux_ds[rows] = flx
    return out


def aion_features():
    """The galaxy10-aion columns as `datasets` features: what its parquet files declare."""
    # lazy: datasets is only needed to write the Hub layout
    from datasets import Features, Image, List, Value

    return Features(
        {
            "image_rgb": Image(),
            "image_bands": List(List(List(Value("float32")))),
            "ra": Value("float64"),
            "dec": Value("float64"),
            "Galaxy10_DECals_index": Value("int64"),
            "label": Value("int64"),
            "label_name": Value("string"),
        }
    )


def aion_test_rows(n: int, seed: int) -> np.ndarray:
    """Which Galaxy10 rows go to galaxy10-aion's test file: a seeded draw of its test share (at least one)."""
    k = max(1, round(n * AION_TEST_FRACTION)) if n > 1 else 0
    return np.sort(np.random.default_rng([seed, _STREAM_SPLIT]).choice(n, k, replace=False))


def plant_traps(test: np.ndarray, labels: np.ndarray, ra: np.ndarray, dec: np.ndarray) -> dict:
    """Hazards planted in place (labels and positions changed, flux spoiled later), as the real sets have them.

    - an exact sky duplicate across the dataset's own train and test files, with conflicting labels;
    - an exact duplicate inside train, conflicting;
    - a near pair (NEAR_ARCSEC apart) across train and test, same class;
    - a row whose flux holds a NaN, and one whose flux holds an infinity.
    Returns the Galaxy10 rows of each, so a caller (or a test) knows what to look for.
    """
    train = np.setdiff1d(np.arange(len(labels)), test)
    if len(test) < 2 or len(train) < 6:
        raise UserError("synth: traps need at least 6 train and 2 test rows; raise --n")
    a, b, c, d, e, f = (int(r) for r in train[:6])
    t1, t2 = int(test[0]), int(test[1])
    for copy, of in ((t1, a), (c, b)):  # exact, conflicting
        ra[copy], dec[copy] = ra[of], dec[of]
        labels[copy] = (labels[of] + 1) % len(DECALS_CLASSES)
    ra[t2], dec[t2] = ra[d] + NEAR_ARCSEC / 3600 / math.cos(math.radians(dec[d])), dec[d]
    labels[t2] = labels[d]
    return {"exact_across": [a, t1], "exact_train": [b, c], "near_across": [d, t2], "nan_flux": e, "inf_flux": f}


def _write_aion(out: Path, rendered, labels, ra, dec, *, seed: int, traps: bool) -> Path:
    """Write rendered chunks (in Galaxy10 row order) as galaxy10-aion's train and test parquet files."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    labels, ra, dec = labels.copy(), ra.copy(), dec.copy()
    test = aion_test_rows(len(labels), seed)
    planted = plant_traps(test, labels, ra, dec) if traps else {}
    is_test = np.zeros(len(labels), bool)
    is_test[test] = True
    features = aion_features()
    schema = features.arrow_schema
    with atomic_path(out) as tmp:
        (tmp / "data").mkdir(parents=True)
        writers = {
            name: pq.ParquetWriter(tmp / "data" / f"{name}-00000-of-00001.parquet", schema)
            for name in ("train", "test")
        }
        row = 0
        for images, flux, _, _ in rendered:
            rows = np.arange(row, row + len(images))
            row += len(images)
            flux = flux.copy()
            for r, bad in ((planted.get("nan_flux"), np.nan), (planted.get("inf_flux"), np.inf)):
                if r is not None and rows[0] <= r < rows[-1] + 1:
                    flux[r - rows[0], 1, 0, 0] = bad
            pngs = []
            for img in images:
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                pngs.append({"bytes": buf.getvalue(), "path": None})
            batch = {
                "image_rgb": pngs,
                "image_bands": [f.tolist() for f in flux],
                "ra": ra[rows].tolist(),
                "dec": dec[rows].tolist(),
                "Galaxy10_DECals_index": rows.tolist(),
                "label": labels[rows].astype(np.int64).tolist(),
                "label_name": [DECALS_CLASSES[c] for c in labels[rows]],
            }
            table = pa.Table.from_pydict(batch, schema=schema)
            for name, mask in (("train", ~is_test[rows]), ("test", is_test[rows])):
                if mask.any():
                    writers[name].write_table(table.filter(pa.array(mask)))
        for w in writers.values():
            w.close()
        if planted:
            (tmp / "planted.json").write_text(json.dumps(planted, indent=1) + "\n")
    return out


def _map(tasks, workers: int, progress: bool):
    """Render chunks in order, in this process or in a pool of fresh (spawned) processes."""
    if progress:
        from rich.progress import track

        wrap = lambda it: track(it, total=len(tasks), description="rendering galaxies")  # noqa: E731
    else:
        wrap = lambda it: it  # noqa: E731
    if workers == 1:
        yield from wrap(map(_render_chunk, tasks))
        return
    # spawn, not fork: the caller may hold threads (torch, BLAS) that a forked child would inherit mid-lock.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from wrap(pool.imap(_render_chunk, tasks))


def contact_sheet(h5_path, out_png, *, per_class: int = 6) -> Path:
    """A PNG with the first `per_class` galaxies of each class of a Galaxy10-schema file, one class per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with h5py.File(h5_path, "r") as f:
        labels = f["ans"][:].astype(int)
        picks = [np.flatnonzero(labels == c)[:per_class] for c in range(len(DECALS_CLASSES))]
        fig, axes = plt.subplots(len(picks), per_class, figsize=(1.6 * per_class + 1.6, 1.6 * len(picks)))
        for c, rows in enumerate(picks):
            for j in range(per_class):
                ax = axes[c, j]
                ax.set_xticks([])
                ax.set_yticks([])
                if j < len(rows):
                    ax.imshow(f["images"][int(rows[j])], origin="lower")
                if j == 0:
                    ax.set_ylabel(f"{c} {DECALS_CLASSES[c]}", rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out_png

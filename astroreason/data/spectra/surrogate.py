"""A surrogate of stellar spectra, O to M, written in Multimodal Universe's Hub layout (docs/spectra.md).

A directory `out/data/train-00000-of-00001.parquet` written by the `datasets` library, one row per star:

  object_id  string                   ra, dec  float64 degrees
  spectrum   struct of equal-length lists: flux (float32, FLUX_UNIT), ivar (float32, 1 / flux variance),
             lambda (float32, Angstrom, observed frame), mask (bool, True = bad pixel; all False here),
             lsf_sigma (float32, Angstrom: the Gaussian line-spread function's sigma at each pixel)
  Z          float32: the radial velocity as v / c       teff  float32 K
  label      int64, index into SPECTRAL_CLASSES          spectral_class  string, "O" ... "M"

The `spectrum` struct and its field names are Multimodal Universe's (its DESI and SDSS builders); `label`,
`spectral_class` and `teff` are the surrogate's. Every star is seeded from (seed, its row in the unsorted draw):
the same seed writes byte-identical files. `traps=True` plants what a naive split would trip on (`plant_traps`);
`planted.json` beside `data/` says which rows.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ...errors import UserError
from ...io import atomic_path
from .stars import DLOGLAM, SPECTRAL_CLASSES, draw_star, observe, wavelength_grid

_STREAM_LABELS, _STREAM_SKY = 1, 2  # seed streams beside the per-star ones
PARQUET_PART = Path("data") / "train-00000-of-00001.parquet"


def class_counts(n: int) -> np.ndarray:
    """`n` stars split as evenly as the classes allow (the first classes take the remainder)."""
    counts = np.full(len(SPECTRAL_CLASSES), n // len(SPECTRAL_CLASSES))
    counts[: n % len(SPECTRAL_CLASSES)] += 1
    return counts


def spectra_features():
    """The columns as `datasets` features: what the parquet file declares."""
    from datasets import Features, List, Value

    return Features(
        {
            "object_id": Value("string"),
            "ra": Value("float64"),
            "dec": Value("float64"),
            "spectrum": {
                "flux": List(Value("float32")),
                "ivar": List(Value("float32")),
                "lambda": List(Value("float32")),
                "mask": List(Value("bool")),
                "lsf_sigma": List(Value("float32")),
            },
            "Z": Value("float32"),
            "teff": Value("float32"),
            "label": Value("int64"),
            "spectral_class": Value("string"),
        }
    )


def plant_traps(labels: np.ndarray, ra: np.ndarray, dec: np.ndarray, flux: np.ndarray, ivar: np.ndarray) -> dict:
    """Hazards planted in place, without changing any label (a class-sorted file stays sorted):

    - `position_conflict`: a star moved onto another class's star (same ra/dec, conflicting labels);
    - `position_same`: a star moved onto a star of its own class (a repeat observation);
    - `content_same`: a star's flux and ivar replaced by another same-class star's (a duplicated spectrum);
    - `content_conflict`: a star's flux and ivar replaced by another class's star's (the same spectrum, two labels);
    - `nan_flux`, `inf_flux`: a star whose flux holds a NaN, one whose flux holds an infinity.
    Returns the rows of each, as `planted.json` lists them.
    """
    by_class = [np.flatnonzero(labels == c) for c in range(len(SPECTRAL_CLASSES))]
    if sum(len(rows) >= 4 for rows in by_class) < 3:
        raise UserError("synth: spectra traps need at least 4 stars in each of 3 classes; raise n")
    a, b, c = [rows for rows in by_class if len(rows) >= 4][:3]  # three classes' rows
    planted = {
        "position_conflict": [int(a[0]), int(b[0])],
        "position_same": [int(a[1]), int(a[2])],
        "content_same": [int(b[1]), int(b[2])],
        "content_conflict": [int(c[0]), int(a[3])],
        "nan_flux": int(c[1]),
        "inf_flux": int(c[2]),
    }
    for key in ("position_conflict", "position_same"):
        of, copy = planted[key]
        ra[copy], dec[copy] = ra[of], dec[of]
    for key in ("content_same", "content_conflict"):
        of, copy = planted[key]
        flux[copy], ivar[copy] = flux[of], ivar[of]
    flux[planted["nan_flux"], len(flux[0]) // 3] = np.nan
    flux[planted["inf_flux"], len(flux[0]) // 2] = np.inf
    return planted


@contextmanager
def _quiet_datasets():
    """No `datasets` progress bar while writing (restored after, if it was on)."""
    import datasets

    was_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            datasets.enable_progress_bars()


def synthesize_spectra(
    out, *, n: int = 700, seed: int = 0, sort_by_class: bool = False, traps: bool = False, dloglam: float = DLOGLAM
) -> Path:
    """Write `n` stars (class mix `class_counts`) to the new directory `out` in the layout of the module doc.

    `sort_by_class` orders rows by class (then RA); `traps` plants `plant_traps`' hazards; `dloglam` is the grid's
    step in dex (SDSS's 1e-4 by default: 3980 pixels from 3600 to 9000 Angstrom).
    """
    from datasets import Dataset

    from ..surrogate import sky_positions

    out = Path(out)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise UserError(f"synth: n must be an integer >= 1, got {n!r}")
    if not 1e-5 <= dloglam <= 1e-2:
        raise UserError(f"synth: dloglam must be between 1e-5 and 1e-2 dex, got {dloglam!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty directory; give a new directory to write")

    labels = np.random.default_rng([seed, _STREAM_LABELS]).permutation(
        np.repeat(np.arange(len(SPECTRAL_CLASSES)), class_counts(n))
    )
    ra, dec = sky_positions(n, np.random.default_rng([seed, _STREAM_SKY]))
    wave = wavelength_grid(dloglam)
    stars, flux, ivar, lsf = [], np.empty((n, len(wave)), np.float32), np.empty((n, len(wave)), np.float32), []
    for row in range(n):
        rng = np.random.default_rng([seed, row])
        star = draw_star(int(labels[row]), rng)
        flux[row], ivar[row], sigma = observe(star, wave, rng)
        stars.append(star)
        lsf.append(sigma)
    order = np.lexsort((ra, labels)) if sort_by_class else np.arange(n)
    labels, ra, dec, flux, ivar = labels[order], ra[order].copy(), dec[order].copy(), flux[order], ivar[order]
    stars, lsf = [stars[i] for i in order], [lsf[i] for i in order]
    planted = plant_traps(labels, ra, dec, flux, ivar) if traps else {}

    lam = wave.astype(np.float32)
    mask = np.zeros(len(wave), bool)
    columns = {
        "object_id": [f"star-{seed}-{i:06d}" for i in order],
        "ra": ra,
        "dec": dec,
        "spectrum": [
            {"flux": f, "ivar": v, "lambda": lam, "mask": mask, "lsf_sigma": s} for f, v, s in zip(flux, ivar, lsf)
        ],
        "Z": np.array([s.redshift for s in stars], np.float32),
        "teff": np.array([s.teff for s in stars], np.float32),
        "label": labels.astype(np.int64),
        "spectral_class": [SPECTRAL_CLASSES[c] for c in labels],
    }
    dataset = Dataset.from_dict(columns, features=spectra_features())
    with atomic_path(out) as tmp, _quiet_datasets():
        (tmp / PARQUET_PART).parent.mkdir(parents=True)
        dataset.to_parquet(str(tmp / PARQUET_PART))
        if planted:
            (tmp / "planted.json").write_text(json.dumps(planted, indent=1) + "\n")
    return out

"""Galaxy10-schema files written with plain h5py (not the project's `synthesize`), with known planted hazards.

`write_foreign` builds a file as the real one is laid out: rows sorted by class, exact-position duplicates with
conflicting labels, near duplicates 2-4.5 arcsec apart (some same class, some not), byte-identical images under
different positions, and NaN redshifts. It returns what it planted, in the file's own row numbers, so a test can
check that every hazard is found.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import h5py
import numpy as np

# Rows per class before planting (roughly Galaxy10's proportions, small).
BASE_COUNTS = (14, 22, 30, 24, 6, 24, 22, 30, 18, 22)
SIDE = 16


@dataclass
class Planted:
    n_rows: int
    labels: np.ndarray
    exact: list[frozenset] = field(default_factory=list)  # same (ra, dec)
    near: list[frozenset] = field(default_factory=list)  # 2-4.5 arcsec apart
    image: list[frozenset] = field(default_factory=list)  # byte-identical pixels
    nan_redshift: int = 0
    nan_flux_rows: int = 0

    def conflicting(self, groups) -> list[frozenset]:
        return [g for g in groups if len({int(self.labels[r]) for r in g}) > 1]

    @property
    def all_groups(self) -> list[frozenset]:
        return self.exact + self.near + self.image


def image_hash(image) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(image, np.uint8)).data).hexdigest()


def _offset(ra, dec, arcsec, angle):
    d = arcsec / 3600.0
    return ra + d * np.cos(angle) / np.cos(np.radians(dec)), dec + d * np.sin(angle)


def foreign_rows(seed: int = 7, flux: bool = False):
    """The rows (as column arrays, class-sorted) and what was planted among them."""
    rng = np.random.default_rng(seed)
    labels = list(np.repeat(np.arange(10), BASE_COUNTS))
    n0 = len(labels)
    # Distinct positions on a coarse grid with jitter: any two base galaxies lie > 1 degree apart.
    grid = rng.permutation(36 * 10)[:n0]
    ra = list(grid % 36 * 10.0 + rng.uniform(0, 0.5, n0))
    dec = list(grid // 36 * 5.0 - 20 + rng.uniform(0, 0.5, n0))
    images = [rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8) for _ in range(n0)]
    tags: list[tuple[str, int]] = [("", -1)] * n0  # (kind, group id) of each row
    gid = 0

    def add(label, r, d, img, kind, group):
        labels.append(label)
        ra.append(r)
        dec.append(d)
        images.append(img)
        tags.append((kind, group))

    def tag(row, kind, group):
        tags[row] = (kind, group)

    def other(label):
        return int((label + 1 + rng.integers(0, 9)) % 10)

    base = rng.permutation(n0)
    picks = iter(base)
    # Exact positions: five conflicting pairs (as all 59 in the real file), one conflicting triple, one agreeing pair.
    for kind_labels in ("conflict",) * 5 + ("triple", "same"):
        a = int(next(picks))
        tag(a, "exact", gid)
        copies = 2 if kind_labels == "triple" else 1
        for k in range(copies):
            lab = labels[a] if kind_labels == "same" else (other(labels[a]) if k == 0 else labels[a])
            add(lab, ra[a], dec[a], rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8), "exact", gid)
        gid += 1
    # Near pairs, 2-4.5 arcsec apart: four of one class (two nuclei of a merger), two conflicting.
    for same in (True, True, True, True, False, False):
        a = int(next(picks))
        tag(a, "near", gid)
        r, d = _offset(ra[a], dec[a], rng.uniform(2.0, 4.5), rng.uniform(0, 2 * np.pi))
        add(
            labels[a] if same else other(labels[a]),
            r,
            d,
            rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8),
            "near",
            gid,
        )
        gid += 1
    # Identical pixels at unrelated positions: two of one class, one conflicting.
    for same in (True, True, False):
        a = int(next(picks))
        tag(a, "image", gid)
        add(
            labels[a] if same else other(labels[a]),
            float(rng.uniform(0, 360)),
            float(rng.uniform(40, 60)),
            images[a].copy(),
            "image",
            gid,
        )
        gid += 1

    n = len(labels)
    redshift = rng.uniform(0.01, 0.25, n)
    nan_rows = rng.choice(n, 9, replace=False)
    redshift[nan_rows] = np.nan
    cols = {
        "images": np.stack(images),
        "ans": np.asarray(labels, np.uint8),
        "ra": np.asarray(ra) % 360,
        "dec": np.asarray(dec),
        "redshift": redshift,
        "pxscale": np.full(n, 0.262),
    }
    if flux:
        f = rng.normal(0, 0.01, (n, 4, 8, 8)).astype(np.float32)
        bad = rng.choice(n, 25, replace=False)
        f[bad, 2, 3, 3] = np.nan
        cols["flux"] = f
    # Sort by class as the real file is (then by RA): every group's rows land wherever the sort puts them.
    order = np.lexsort((cols["ra"], cols["ans"]))
    cols = {k: v[order] for k, v in cols.items()}
    new_row = np.empty(n, np.int64)
    new_row[order] = np.arange(n)
    planted = Planted(n_rows=n, labels=cols["ans"].astype(np.int64), nan_redshift=9, nan_flux_rows=25 if flux else 0)
    for kind in ("exact", "near", "image"):
        members: dict[int, set] = {}
        for row, (k, g) in enumerate(tags):
            if k == kind:
                members.setdefault(g, set()).add(int(new_row[row]))
        getattr(planted, kind).extend(frozenset(m) for m in members.values())
    return cols, planted


def write_h5(path, cols: dict, order=None, attrs: dict | None = None):
    """Write columns with plain h5py, optionally in another row order."""
    with h5py.File(path, "w") as f:
        for key, value in cols.items():
            f.create_dataset(key, data=value if order is None else value[order])
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return path


def write_foreign(path, *, seed: int = 7, flux: bool = False, order=None):
    cols, planted = foreign_rows(seed, flux)
    write_h5(path, cols, order)
    return path, cols, planted

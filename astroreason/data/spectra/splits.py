"""Seeded, stratified, deduplicated train/val/test splits of a spectra dataset, written as the image splits are.

`prepare_spectra(source, out, label_column=..., unit=...)` writes a prepared directory in the image layout
(`..splits`): `manifest.json` (the same `Manifest`, `release` `mmu-spectra`, its `spectra` field saying how the
source was read) and `splits/<train|val|test>.arrow`, read back by `splits.load_split`. A split's rows hold

    object_id   string
    flux, ivar  list of float32 (the source's values; ivar 0 where the survey's `mask` flags a pixel bad)
    wavelength  list of float32, Angstrom (the source's `lambda` times the unit's factor)
    label       ClassLabel of the classes; label_name  string

The split itself is `splits.split_units`, as for images: each spectrum is placed by its content (SHA-256 of its
flux), rows at the same sky position (within the radius) or with identical flux go to one split together, a group
whose labels disagree is dropped and listed, rows whose flux is not finite are excluded with the reason, and within
each split the rows are a seeded shuffle of their content order. The same data with its rows permuted splits the
same; re-preparing with the same inputs reuses the directory, with other inputs it is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ...errors import UserError
from ...io import atomic_path
from ..inspect import DEFAULT_RADIUS_ARCSEC, describe_group, duplicate_groups, split_leaks
from ..splits import (
    DEFAULT_FRACTIONS,
    MANIFEST_NAME,
    SPLITS_DIR,
    Manifest,
    _check_settings,
    load_manifest,
    load_split,
    reuse_prepared,
    split_path,
    split_units,
)
from .reader import Spectra, read_spectra

RELEASE = "mmu-spectra"
ID_NAME = "object_id"
VIEW_BATCH_ROWS = 256  # rows per Arrow record batch of a view: 12 MiB of 4000-pixel spectra (3 arrays)


def spectra_sha256(spectra: Spectra) -> str:
    """The content fingerprint of a spectra dataset: every row's own split, id, label, position and arrays, so
    the same data in parquet or in save_to_disk has one fingerprint (row order counts, as for images)."""
    ra, dec = spectra.catalogue.get("ra"), spectra.catalogue.get("dec")
    digest = hashlib.sha256(f"spectra-source:{spectra.n_rows}:{spectra.flux.shape[1]}".encode())
    for row in range(spectra.n_rows):
        pos = "" if ra is None or dec is None else f"{float(ra[row])!r},{float(dec[row])!r}"
        split = "" if spectra.source_splits is None else spectra.source_splits[row]
        label = spectra.classes[spectra.labels[row]]
        digest.update(f"{split}:{spectra.ids[row]}:{label}:{pos}:".encode())
        for array in (spectra.flux, spectra.ivar, spectra.wavelength, *spectra.extra.values()):
            digest.update(np.ascontiguousarray(array[row]).data)
    return digest.hexdigest()


def usable_ivar(spectra: Spectra) -> np.ndarray:
    """The inverse variance with the survey's bad pixels (`mask` True) at 0: the one way every consumer (the codecs,
    a plot) tells a bad pixel, so the mask need not travel beside it."""
    mask = spectra.extra.get("mask")
    return spectra.ivar if mask is None else np.where(mask, np.float32(0), spectra.ivar)


def _positions(spectra: Spectra):
    ra, dec = spectra.catalogue.get("ra"), spectra.catalogue.get("dec")
    if ra is None or dec is None:
        return None, None
    return ra.astype(float), dec.astype(float)


def make_spectra_manifest(
    spectra: Spectra,
    *,
    unit: str,
    seed: int = 0,
    fractions=DEFAULT_FRACTIONS,
    radius_arcsec: float = DEFAULT_RADIUS_ARCSEC,
) -> Manifest:
    """The split of a spectra dataset already read (`read_spectra`, in `unit`); nothing written."""
    fractions = _check_settings(fractions, "all", radius_arcsec)
    labels, n, classes = spectra.labels, spectra.n_rows, spectra.classes
    ids = np.asarray([str(i) for i in spectra.ids], dtype=object)
    hashes = spectra.content_hashes()
    ra, dec = _positions(spectra)
    groups = duplicate_groups(ra, dec, hashes, radius_arcsec).combined
    reasons = spectra.flux_reasons()
    keep = np.ones(n, bool)
    keep[list(reasons)] = False
    # Content order: flux hash, then position, then object id (identical spectra at one position still sort alike).
    hash_rank = np.unique(np.asarray(hashes), return_inverse=True)[1]
    id_rank = np.unique(ids.astype(str), return_inverse=True)[1]
    order_keys = [hash_rank]
    if ra is not None:
        order_keys += [np.nan_to_num(ra, nan=-1.0), np.nan_to_num(dec, nan=-99.0)]
    plan = split_units(labels, hashes, groups, keep, ids, order_keys + [id_rank], fractions=fractions, seed=seed)
    if not any(plan.rows.values()):
        raise UserError(
            f"{spectra.path}: no rows left to split ({len(reasons)} with unusable flux, "
            f"{len(plan.dropped)} conflicting groups dropped)"
        )
    leaks = []
    for g in split_leaks(groups, spectra.source_splits):
        leak = describe_group(g, labels, classes, splits=spectra.source_splits)
        leak.pop("label_names")
        leak["ids"] = [ids[r] for r in g]
        leaks.append(leak)
    return Manifest(
        source_path=str(Path(spectra.path).resolve()),
        source_sha256=spectra_sha256(spectra),
        release=RELEASE,
        classes=list(classes),
        n_source_rows=int(n),
        seed=int(seed),
        fractions=list(fractions),
        radius_arcsec=float(radius_arcsec),
        subset="all",
        include_rows_sha256=None,
        rows=plan.rows,
        split_sha256=plan.split_sha256,
        groups=plan.groups,
        dropped=plan.dropped,
        excluded=int(n - keep.sum()),
        id_name=ID_NAME,
        ids={name: [ids[r] for r in rows] for name, rows in plan.rows.items()},
        excluded_rows=[{"row": r, "id": ids[r], "reason": why} for r, why in sorted(reasons.items())],
        source_split_leaks=leaks,
        spectra={"label_column": spectra.label_column, "wavelength_unit": unit, "n_pixels": spectra.flux.shape[1]},
    )


def spectra_features(classes):
    """A prepared split's columns as `datasets` features."""
    from datasets import ClassLabel, Features, List, Value

    return Features(
        {
            "object_id": Value("string"),
            "flux": List(Value("float32")),
            "ivar": List(Value("float32")),
            "wavelength": List(Value("float32")),
            "label": ClassLabel(names=list(classes)),
            "label_name": Value("string"),
        }
    )


def _list_column(values: np.ndarray):
    """(rows, pixels) float32 as an Arrow list column, without a Python object per value."""
    import pyarrow as pa

    rows, pixels = values.shape
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * pixels)
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(values, np.float32).ravel()))


def write_spectra_views(manifest: Manifest, spectra: Spectra, out_dir: Path) -> None:
    """One Arrow file per split under `out_dir/splits/`, written with datasets' `ArrowWriter`, a batch at a time."""
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter

    features = spectra_features(manifest.classes)
    schema = features.arrow_schema
    (out_dir / SPLITS_DIR).mkdir(parents=True, exist_ok=True)
    ivar = usable_ivar(spectra)
    for name, rows in manifest.rows.items():
        with ArrowWriter(features=features, path=str(split_path(out_dir, name))) as writer:
            for start in range(0, len(rows), VIEW_BATCH_ROWS):
                take = np.asarray(rows[start : start + VIEW_BATCH_ROWS], np.int64)
                labels = spectra.labels[take]
                columns = {
                    "object_id": pa.array([str(spectra.ids[r]) for r in take], pa.string()),
                    "flux": _list_column(spectra.flux[take]),
                    "ivar": _list_column(ivar[take]),
                    "wavelength": _list_column(spectra.wavelength[take]),
                    "label": pa.array(labels, pa.int64()),
                    "label_name": pa.array([spectra.classes[c] for c in labels], pa.string()),
                }
                writer.write_table(pa.Table.from_pydict(columns).cast(schema))
            writer.finalize()


def prepare_spectra(
    source,
    out,
    *,
    label_column: str,
    unit: str = "Angstrom",
    seed: int = 0,
    fractions=DEFAULT_FRACTIONS,
    radius_arcsec: float = DEFAULT_RADIUS_ARCSEC,
) -> Path:
    """Split the spectra dataset `source` and write the prepared directory `out` (atomically); returns `out`.

    As `splits.prepare`: a directory already prepared from the same data with the same settings is reused as it
    is, a different one is refused, so a split is never silently replaced under the runs that used it.
    """
    out = Path(out)
    existing = None
    if out.exists():  # refuse early, before reading the dataset
        if (out / MANIFEST_NAME).is_file():
            existing = load_manifest(out)
        elif not out.is_dir() or any(out.iterdir()):
            raise UserError(f"{out}: exists and is not a prepared directory; choose another --out")
    _check_settings(fractions, "all", radius_arcsec)
    spectra = read_spectra(source, label_column=label_column, unit=unit)
    manifest = make_spectra_manifest(spectra, unit=unit, seed=seed, fractions=fractions, radius_arcsec=radius_arcsec)
    if existing is None:
        with atomic_path(out) as tmp:
            tmp.mkdir()
            write_spectra_views(manifest, spectra, tmp)
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest.to_json(), indent=1, sort_keys=True) + "\n")
        return out
    return reuse_prepared(out, existing, manifest)


def iter_split_spectra(prepared_dir, split: str, *, manifest: Manifest | None = None, positions=None, batch_size=None):
    """Yield a prepared split's spectra as (wavelength, flux, ivar), each float32 [rows, pixels], `batch_size` rows
    at a time (default `VIEW_BATCH_ROWS`): every row in the manifest's order, or the rows at `positions` in the
    split, in the order given. What a spectrum codec's `encode` takes; read from the split's view, never the source."""
    manifest = load_manifest(prepared_dir) if manifest is None else manifest
    if manifest.spectra is None:
        raise UserError(f"{prepared_dir}: an image prepared directory, not spectra (its manifest has no `spectra`)")
    view = load_split(prepared_dir, split, manifest=manifest).with_format("arrow")
    positions = np.arange(len(view)) if positions is None else np.asarray(positions, np.int64)
    pixels = int(manifest.spectra["n_pixels"])
    size = batch_size or VIEW_BATCH_ROWS
    for start in range(0, len(positions), size):
        table = view[positions[start : start + size]]
        arrays = []
        for name in ("wavelength", "flux", "ivar"):
            values = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            if values.size != len(table) * pixels:
                raise UserError(
                    f"{split_path(prepared_dir, split)}: `{name}` rows are not {pixels} pixels each, as the manifest "
                    "says; prepare again"
                )
            arrays.append(values.reshape(len(table), pixels).astype(np.float32, copy=False))
        yield tuple(arrays)


def split_spectra(prepared_dir, split: str, *, manifest: Manifest | None = None, positions=None) -> tuple:
    """`iter_split_spectra` in one piece: (wavelength, flux, ivar), each float32 [rows, pixels]."""
    manifest = load_manifest(prepared_dir) if manifest is None else manifest
    parts = list(iter_split_spectra(prepared_dir, split, manifest=manifest, positions=positions))
    if not parts:
        return tuple(np.zeros((0, int(manifest.spectra["n_pixels"])), np.float32) for _ in range(3))
    return tuple(np.concatenate(column) for column in zip(*parts))

"""Read a spectra dataset in Multimodal Universe's Hub layout, and inspect what would make a naive split leak.

The directory is found as `sources.open_source` finds a Hub-layout one (parquet parts such as
`data/train-00000-of-00001.parquet`, or a `datasets` `save_to_disk` directory). Each row holds a `spectrum` struct
of equal-length lists `flux`, `ivar`, `lambda` (and optionally `mask`, `lsf_sigma`), as Multimodal Universe's DESI
and SDSS builders write it, plus catalogue columns: `object_id`, `ra`, `dec`, and whatever the label is. The user
names the label column and the unit of `lambda` (Angstrom, nm, micron, ...; converted to Angstrom with astropy).

`inspect_spectra` reports, as `data inspect` does for images (`..inspect`): class counts, whether rows are ordered
by class, duplicate groups by sky position and by content (identical flux arrays), each with its label conflicts,
and the rows whose flux is unusable, with the reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import UserError
from ..inspect import DEFAULT_RADIUS_ARCSEC, EXACT_ARCSEC, describe_group, duplicate_groups, ordering
from ..sources import arrow_storage, find_parts
from .stars import SPECTRAL_CLASSES

SPECTRUM_COLUMN = "spectrum"
ARRAY_FIELDS = ("flux", "ivar", "lambda")  # required in the struct
OPTIONAL_FIELDS = ("mask", "lsf_sigma")
UNIT_ALIASES = {"Å": "Angstrom", "A": "Angstrom", "angstrom": "Angstrom", "µm": "micron", "μm": "micron"}


@dataclass
class Spectra:
    """A spectra dataset read whole: per-row arrays (n, pixels), labels as class indices, catalogue columns."""

    path: Path
    flux: np.ndarray  # float32
    ivar: np.ndarray  # float32
    wavelength: np.ndarray  # float64, Angstrom
    labels: np.ndarray  # int64 index into `classes`
    classes: list[str]
    label_column: str
    catalogue: dict[str, np.ndarray]  # every one-value-per-row column, by name
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # mask, lsf_sigma when present
    source_splits: np.ndarray | None = None  # the dataset's own split of each row

    @property
    def n_rows(self) -> int:
        return len(self.labels)

    @property
    def ids(self) -> np.ndarray:
        return self.catalogue.get("object_id", np.arange(self.n_rows))

    def flux_reasons(self) -> dict[int, str]:
        """Row -> why its flux is unusable (NaN or infinite values)."""
        reasons = {}
        for row in np.flatnonzero(~np.isfinite(self.flux).all(axis=1)):
            values = self.flux[row]
            nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
            parts = [f"{nan} NaN value(s)" if nan else "", f"{inf} infinite value(s)" if inf else ""]
            reasons[int(row)] = "flux holds " + " and ".join(p for p in parts if p)
        return reasons

    def content_hashes(self) -> list[str]:
        """SHA-256 of each row's flux bytes: identical spectra hash alike."""
        return [hashlib.sha256(np.ascontiguousarray(row).tobytes()).hexdigest() for row in self.flux]


def is_spectra_dataset(path) -> bool:
    """Is `path` a Hub-layout dataset directory with a `spectrum` column (what `data inspect|prepare` read as
    spectra)? Anything else (an HDF5 file, an image dataset, no dataset at all) is not."""
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        _, parts = find_parts(path)
    except UserError:
        return False
    return bool(parts) and SPECTRUM_COLUMN in parts[0].schema.names


def angstrom_factor(unit: str) -> float:
    """How many Angstrom one `unit` is ('Angstrom', 'Å', 'nm', 'um', 'micron', 'µm', ...); else one UserError."""
    from astropy import units as u

    text = str(unit).strip()
    try:
        parsed = u.Unit(UNIT_ALIASES.get(text, text))
        return float(parsed.to(u.AA))
    except (ValueError, TypeError, u.UnitConversionError):
        raise UserError(
            f"--wavelength-unit: {unit!r} is not a unit of wavelength astropy knows (e.g. Angstrom, nm, um)"
        ) from None


def _label_codes(values: np.ndarray, where: str) -> tuple[np.ndarray, list[str]]:
    """Labels as indices and the class names: spectral letters in O ... M order, other strings sorted, integers
    as their sorted distinct values."""
    if values.dtype.kind in "iu":
        distinct = np.unique(values)
        return np.searchsorted(distinct, values).astype(np.int64), [str(v) for v in distinct]
    if values.dtype.kind in "OUS":
        if any(v is None for v in values):
            raise UserError(f"{where}: has empty labels")
        text = values.astype(str)
        distinct = sorted(set(text.tolist()))
        if set(distinct) <= set(SPECTRAL_CLASSES):
            distinct = [c for c in SPECTRAL_CLASSES if c in distinct]
        index = {name: k for k, name in enumerate(distinct)}
        return np.array([index[t] for t in text], np.int64), distinct
    raise UserError(f"{where}: labels must be integers or strings, got {values.dtype}")


def _arrays(struct, name: str, where: str, dtype) -> np.ndarray:
    """One list field of the spectrum struct as an (n, pixels) array; every row must hold the same length."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = struct.field(name)
    if not (
        pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type)
    ):
        raise UserError(f"{where}.{name}: must hold one array per row, got {values.type}")
    if values.null_count:
        raise UserError(f"{where}.{name}: {values.null_count} row(s) without an array")
    lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise UserError(f"{where}.{name}: arrays differ in length (row 0 has {lengths[0]}, row {row} {lengths[row]})")
    flat = values.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(dtype).reshape(len(values), int(lengths[0]) if len(lengths) else 0)


def read_spectra(path, *, label_column: str, unit: str = "Angstrom", spectrum_column: str = SPECTRUM_COLUMN) -> Spectra:
    """Read every row of a Multimodal-Universe-layout spectra directory (see the module doc)."""
    import pyarrow as pa

    path = Path(path)
    factor = angstrom_factor(unit)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "no such directory"
        raise UserError(f"{path}: {what} (a spectra dataset is a directory of parquet or Arrow files)")
    _, parts = find_parts(path)
    if not parts:
        raise UserError(f"{path}: the dataset has no splits")
    names = set(parts[0].schema.names)
    for part in parts[1:]:
        if set(part.schema.names) != names:
            raise UserError(f"{part.path}: columns {sorted(part.schema.names)} differ from {parts[0].path}'s")
    where = parts[0].path
    if label_column not in names:
        raise UserError(f"{where}: no label column `{label_column}` (has: {', '.join(sorted(names))})")
    if spectrum_column not in names:
        raise UserError(f"{where}: no spectrum column `{spectrum_column}` (has: {', '.join(sorted(names))})")

    structs = pa.concat_arrays([arrow_storage(p.whole(spectrum_column)).combine_chunks() for p in parts])
    if not pa.types.is_struct(structs.type):
        raise UserError(f"{where}: `{spectrum_column}` must be a struct of flux, ivar, lambda; got {structs.type}")
    fields = {structs.type.field(i).name for i in range(structs.type.num_fields)}
    missing = [f for f in ARRAY_FIELDS if f not in fields]
    if missing:
        raise UserError(f"{where}: `{spectrum_column}` has no field `{missing[0]}` (has: {', '.join(sorted(fields))})")
    label = f"{where}: `{spectrum_column}`"
    flux = _arrays(structs, "flux", label, np.float32)
    ivar = _arrays(structs, "ivar", label, np.float32)
    wavelength = _arrays(structs, "lambda", label, np.float64) * factor
    for name, arr in (("ivar", ivar), ("lambda", wavelength)):
        if arr.shape != flux.shape:
            raise UserError(f"{label}.{name}: {arr.shape[1]} values per row where flux has {flux.shape[1]}")
    extra = {}
    for name in OPTIONAL_FIELDS:
        if name in fields:
            extra[name] = _arrays(structs, name, label, bool if name == "mask" else np.float32)
            if extra[name].shape != flux.shape:
                raise UserError(f"{label}.{name}: {extra[name].shape[1]} values per row where flux has {flux.shape[1]}")

    catalogue = {}
    for name in sorted(names - {spectrum_column}):
        column = pa.chunked_array([c for p in parts for c in arrow_storage(p.whole(name)).chunks])
        if pa.types.is_list(column.type) or pa.types.is_struct(column.type) or pa.types.is_large_list(column.type):
            continue  # only one-value-per-row columns make the catalogue
        catalogue[name] = column.to_numpy()
    labels, classes = _label_codes(catalogue[label_column], f"{where}: `{label_column}`")
    splits = np.repeat(np.asarray([p.split for p in parts], dtype=object), [p.n_rows for p in parts])
    return Spectra(path, flux, ivar, wavelength, labels, classes, label_column, catalogue, extra, splits)


def inspect_spectra(spectra: Spectra, *, radius_arcsec: float = DEFAULT_RADIUS_ARCSEC) -> dict:
    """Class counts, class order, duplicate groups (position, content) and unusable flux, as a JSON-ready dict."""
    if not radius_arcsec >= 0:
        raise UserError(f"--radius: must be >= 0 arcsec, got {radius_arcsec}")
    labels, classes = spectra.labels, spectra.classes
    ra, dec = spectra.catalogue.get("ra"), spectra.catalogue.get("dec")
    ra = None if ra is None else ra.astype(float)
    dec = None if dec is None else dec.astype(float)
    groups = duplicate_groups(ra, dec, spectra.content_hashes(), radius_arcsec)
    ids = [str(i) for i in spectra.ids]

    def describe(gs, seps=None):
        out = []
        for g in gs:
            d = describe_group(g, labels, classes, seps)
            d["ids"] = [ids[r] for r in g]
            out.append(d)
        return out

    dupes = {
        "radius_arcsec": radius_arcsec,
        "exact_arcsec": EXACT_ARCSEC,
        "positions_checked": ra is not None and dec is not None,
        "exact_position": describe(groups.exact, groups.separations),
        "near_position": describe(groups.near, groups.separations),
        "identical_flux": describe(groups.image),
        "combined": describe(groups.combined),
    }
    dupes["conflicts"] = {
        k: sum(g["conflict"] for g in dupes[k])
        for k in ("exact_position", "near_position", "identical_flux", "combined")
    }
    counts = np.bincount(labels, minlength=len(classes))
    return {
        "path": str(spectra.path),
        "n_rows": spectra.n_rows,
        "n_pixels": spectra.flux.shape[1],
        "wavelength_range_aa": [float(np.nanmin(spectra.wavelength)), float(np.nanmax(spectra.wavelength))]
        if spectra.wavelength.size
        else None,
        "label_column": spectra.label_column,
        "classes": [{"label": c, "name": classes[c], "count": int(counts[c])} for c in range(len(classes))],
        "ordering": ordering(labels, classes),
        "duplicates": dupes,
        "flux_excluded": [{"row": r, "id": ids[r], "reason": why} for r, why in sorted(spectra.flux_reasons().items())],
    }

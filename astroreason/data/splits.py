"""Seeded, stratified, deduplicated train/val/test splits, and the Hugging Face `datasets` views of each split.

`prepare(source, out)` writes a prepared directory:

    manifest.json        the split: rows of each split, seed, fractions, source file hash, per-split content hashes,
                         the duplicate groups kept together and the conflicting ones dropped; hashed (`hash`)
    splits/<name>.arrow  a `datasets` view per split (`Dataset.from_file`): `image` (PIL; cells hold raw
                         PPM pixels from HDF5, a Hub source's PNG as is: `view_image`), `label` (ClassLabel), `label_name`

Nothing depends on row order. Every galaxy is placed by the content of its image (SHA-256 of its pixels), not by
its row: the same file with its rows permuted gives the same galaxies in the same splits, and a class-sorted file is
split exactly like a shuffled one. Rows that show the same galaxy (same sky position within a radius, or identical
pixels) form one unit that goes to one split; a unit whose labels disagree is dropped and listed. Within each split
the rows are a seeded shuffle, so "the first N rows of a split" is a random sample, never one class.

The manifest is written once: preparing again into the same directory with the same inputs reuses it, with other
inputs it is refused. Later steps (`load_split`, the token cache, evaluation) read it and never re-split.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import atomic_path, sha256_bytes, sha256_json
from .inspect import DEFAULT_RADIUS_ARCSEC, describe_group, duplicate_groups, split_leaks
from .reader import Galaxy10File
from .sources import open_source

MANIFEST_NAME = "manifest.json"
_VERIFIED_MANIFESTS: set[str] = set()  # digests of manifest files whose hash this process has checked
SPLITS_DIR = "splits"
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
SUBSETS = ("all", "flux")
MANIFEST_VERSION = 3  # 3: source ids, exclusion reasons, source split leaks; 2: one Arrow file per split


@dataclass
class Manifest:
    """A prepared split, as saved in `manifest.json`.

    Args:
        source_path: The source split (absolute path at preparation time): a Galaxy10-schema HDF5 file or a
            Hub-layout dataset directory (parquet, save_to_disk, a Hub cache snapshot).
        source_sha256: SHA-256 of that file (HDF5), or the content fingerprint of the dataset (`HubSource.sha256`):
            every later step checks its data against it.
        release: `decals` or `sdss`; `mmu-spectra` for a spectra split (`spectra`).
        classes: Class names, by label.
        n_source_rows: Rows in the source file.
        seed: Seed of the split.
        fractions: Share of train, val and test, per class.
        radius_arcsec: Rows closer than this on the sky are one galaxy.
        subset: `all`, or `flux` (only rows with a finite multi-band flux cutout).
        include_rows_sha256: Hash of the row list a split was restricted to (e.g. the galaxy10-aion cross-match).
        rows: Source rows of each split, in the split's (seeded, shuffled) order (for a dataset of several files,
            positions in its files taken in split order: train, validation, test, then the rest by name).
        split_sha256: Per split, a hash of its rows' image hashes and labels in order: the content of the split.
        groups: Duplicate groups kept whole inside one split (source rows).
        dropped: Duplicate groups dropped because their labels conflict: rows and labels.
        excluded: Rows left out by the subset or the row list, counted (dropped rows are counted in `dropped`,
            unless the subset left them out already).
        id_name: What a source id is: `row` (HDF5), `Galaxy10_DECals_index` (galaxy10-aion) or `object_id`
            (spectra: the ids are strings).
        ids: Source id of each split's rows, in the same order as `rows`: every kept galaxy by name.
        excluded_rows: Rows left out for unusable flux, each `{row, id, reason}` (rows outside a row list or the
            subset of an HDF5 file are only counted in `excluded`).
        source_split_leaks: Duplicate groups that span the source's own splits (its train and test files):
            `{rows, ids, source_splits, labels, conflict}`. Empty for a source without splits.
        spectra: None for an image split. For a spectra split (`release` `mmu-spectra`, `spectra.splits`): how its
            source was read, `{label_column, wavelength_unit, n_pixels}`, so that later steps read it the same way.
            Left out of the saved manifest and of its hash when None: image manifests are as they always were.
        hash: SHA-256 of everything above: the manifest's identity in every result.
    """

    source_path: str
    source_sha256: str
    release: str
    classes: list[str]
    n_source_rows: int
    seed: int
    fractions: list[float]
    radius_arcsec: float
    subset: str
    include_rows_sha256: str | None
    rows: dict[str, list[int]]
    split_sha256: dict[str, str]
    groups: list[list[int]]
    dropped: list[dict]
    excluded: int
    id_name: str = "row"
    ids: dict[str, list[int]] = field(default_factory=dict)
    excluded_rows: list[dict] = field(default_factory=list)
    source_split_leaks: list[dict] = field(default_factory=list)
    version: int = MANIFEST_VERSION
    spectra: dict | None = None
    hash: str = field(default="")

    def body(self) -> dict:
        out = asdict(self)
        out.pop("hash")
        if out["spectra"] is None:
            out.pop("spectra")
        return out

    def compute_hash(self) -> str:
        return sha256_json(self.body())

    def to_json(self) -> dict:
        return {**self.body(), "hash": self.compute_hash()}

    def identity(self) -> str:
        """Hash of the split itself: everything but where the source file lay (a moved file splits the same)."""
        body = self.body()
        body.pop("source_path")
        return sha256_json(body)

    def split_sizes(self) -> dict[str, int]:
        return {name: len(rows) for name, rows in self.rows.items()}


def load_manifest(prepared_dir) -> Manifest:
    """The manifest of a prepared directory; refuses a missing, malformed or hand-edited one (one line)."""
    path = Path(prepared_dir) / MANIFEST_NAME
    if not path.is_file():
        raise UserError(
            f"{prepared_dir}: no {MANIFEST_NAME}; prepare it first: astroreason data prepare FILE --out {prepared_dir}"
        )
    try:
        data = path.read_bytes()
        obj = json.loads(data.decode())
        manifest = Manifest(**obj)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a split manifest ({_first_line(err)})") from None
    if manifest.version != MANIFEST_VERSION:
        raise UserError(
            f"{path}: manifest version {manifest.version}, this astroreason reads {MANIFEST_VERSION}; prepare again"
        )
    # The same bytes checked once per process: a run loads its manifest several times (data, lint, provenance).
    digest = sha256_bytes(data)
    if digest not in _VERIFIED_MANIFESTS:
        if manifest.hash != manifest.compute_hash():
            raise UserError(
                f"{path}: its content does not match its hash (edited by hand?); prepare again into a new directory"
            )
        _VERIFIED_MANIFESTS.add(digest)
    return manifest


def _parse_fractions(fractions) -> tuple[float, float, float]:
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise UserError(f"fractions: expected three numbers (train, val, test), got {fractions!r}") from None
    if len(values) != 3 or min(values) < 0 or values[0] <= 0 or abs(sum(values) - 1) > 1e-6:
        raise UserError(
            f"fractions: expected three non-negative numbers summing to 1 with train > 0, got {list(fractions)}"
        )
    return values


def _read_row_list(path) -> np.ndarray:
    """Source rows to keep, one integer per line (or a .npy array): e.g. the Galaxy10 rows galaxy10-aion covers."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: row list not found")
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file is an empty list, said below
            rows = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"{path}: expected one integer row index per line ({_first_line(err)})") from None
    rows = np.asarray(rows)
    if rows.ndim != 1 or not (np.issubdtype(rows.dtype, np.integer) or rows.size == 0):
        raise UserError(f"{path}: expected a 1-D list of integer row indices, got {rows.dtype} of shape {rows.shape}")
    if rows.size == 0:
        raise UserError(f"{path}: the row list is empty")
    return np.unique(rows.astype(np.int64))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def assign_units(
    unit_labels: np.ndarray, unit_sizes: np.ndarray, unit_keys: list[str], fractions, seed: int
) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) of each unit, stratified by class.

    Units of one class are ordered by content key, shuffled with `seed`, and dealt in that order to the split whose
    share of the class's rows is furthest below its target. The order of the units given does not matter.
    """
    out = np.empty(len(unit_labels), np.int64)
    target = np.asarray(fractions)
    for label in np.unique(unit_labels):
        members = np.flatnonzero(unit_labels == label)
        members = members[np.argsort([unit_keys[i] for i in members], kind="stable")]
        rng = np.random.default_rng([seed, int(label)])
        members = members[rng.permutation(len(members))]
        filled = np.zeros(3)
        total = unit_sizes[members].sum()
        for unit in members:
            # Give the unit to the split furthest below its share of the class (ties: train, val, test).
            deficit = target * total - filled
            deficit[target == 0] = -np.inf
            k = int(np.argmax(deficit))
            out[unit] = k
            filled[k] += unit_sizes[unit]
    return out


@dataclass
class SplitPlan:
    """What `split_units` decides: each split's rows in order, their content hashes, the duplicate groups kept whole
    and the conflicting ones dropped (as the manifest lists them)."""

    rows: dict[str, list[int]]
    split_sha256: dict[str, str]
    groups: list[list[int]]
    dropped: list[dict]


def split_units(
    labels: np.ndarray,
    hashes: list[str],
    groups: list[np.ndarray],
    keep: np.ndarray,
    ids: np.ndarray,
    order_keys: list[np.ndarray],
    *,
    fractions,
    seed: int,
) -> SplitPlan:
    """The split of any source, images or spectra, from what it is made of: each row's label and content hash, its
    duplicate groups (`duplicate_groups(...).combined`), the rows usable at all (`keep`), the source ids, and the
    content order within a split (`order_keys`, primary first: the hash rank, then e.g. the position).

    Units are the duplicate groups and every other row alone. A group with conflicting labels is dropped whole,
    even where `keep` leaves out some of its rows: the kept label of a contradicted object is suspect too. Units are
    dealt to splits by `assign_units`; within a split the rows are put in content order, then shuffled with `seed`,
    so the source's row order never shows.
    """
    keep = keep.copy()
    n = len(labels)
    unit_of = np.arange(n)
    kept_groups, dropped = [], []
    for g in groups:
        group_labels = labels[g]
        if len(set(group_labels.tolist())) > 1:
            dropped.append({"rows": g.tolist(), "ids": ids[g].tolist(), "labels": group_labels.tolist()})
            keep[g] = False
        else:
            unit_of[g] = g[0]
            if keep[g].sum() > 1:
                kept_groups.append(g[keep[g]].tolist())
    rows = np.flatnonzero(keep)
    units, unit_index = np.unique(unit_of[rows], return_inverse=True)
    unit_sizes = np.bincount(unit_index, minlength=len(units))
    unit_labels = labels[units]
    # A unit's content key: the smallest hash among its rows (independent of which row comes first).
    unit_keys = [""] * len(units)
    for r, u in zip(rows, unit_index):
        unit_keys[u] = hashes[r] if not unit_keys[u] else min(unit_keys[u], hashes[r])
    split_of_unit = assign_units(unit_labels, unit_sizes, unit_keys, fractions, seed)
    split_of_row = split_of_unit[unit_index]

    split_rows, split_sha = {}, {}
    for k, name in enumerate(SPLIT_NAMES):
        members = rows[split_of_row == k]
        members = members[np.lexsort([key[members] for key in reversed(order_keys)])]
        members = members[np.random.default_rng([seed, 100 + k]).permutation(len(members))]
        split_rows[name] = [int(r) for r in members]
        split_sha[name] = sha256_bytes(*(f"{hashes[r]}:{labels[r]}" for r in members))
    return SplitPlan(split_rows, split_sha, kept_groups, dropped)


def _check_settings(fractions, subset: str, radius_arcsec: float):
    """The split settings checked before anything is read; returns the parsed fractions."""
    fractions = _parse_fractions(fractions)
    if subset not in SUBSETS:
        raise UserError(f"subset: expected one of {', '.join(SUBSETS)}, got {subset!r}")
    if not radius_arcsec >= 0:
        raise UserError(f"radius: must be >= 0 arcsec, got {radius_arcsec}")
    return fractions


def make_manifest(
    source,
    *,
    seed: int = 0,
    fractions=DEFAULT_FRACTIONS,
    radius_arcsec: float = DEFAULT_RADIUS_ARCSEC,
    subset: str = "all",
    include_rows=None,
    sha256: str | None = None,
    hashes: list[str] | None = None,
    source_sha256: str | None = None,
) -> Manifest:
    """Compute the split of a source (an HDF5 file or a Hub-layout directory; nothing written). `hashes` and
    `source_sha256`: its image hashes and its file's SHA-256 when already computed (`_stage`), else read here."""
    fractions = _check_settings(fractions, subset, radius_arcsec)
    with open_source(source, sha256=sha256) as g10:
        source = Path(g10.path)  # a Hub cache folder or repo id: the snapshot it resolved to
        labels, n, ids, own_splits = g10.labels, g10.n_rows, g10.ids, g10.source_splits
        hashes = g10.image_hashes() if hashes is None else hashes
        keep = np.ones(n, bool)
        excluded_rows = []
        if subset == "flux" and not g10.has_flux:
            raise UserError(f"{source}: subset=flux needs a `flux` key, and the file has none")
        if subset == "flux" or g10.flux_required:
            keep &= g10.finite_flux_rows()
            if g10.flux_required:
                excluded_rows = [
                    {"row": r, "id": int(ids[r]), "reason": why} for r, why in sorted(g10.flux_reasons().items())
                ]
        include_sha = None
        if include_rows is not None:
            # Matched against the source's ids (the manifest's `ids`): an HDF5 file's row, a galaxy10-aion copy's
            # Galaxy10_DECals_index, so one Galaxy10 row list restricts either source to the same galaxies.
            wanted = _read_row_list(include_rows)
            mask = np.isin(ids, wanted)
            missing = np.setdiff1d(wanted, ids)
            if len(missing):
                raise UserError(
                    f"{include_rows}: {g10.id_name} {int(missing[0])} is outside the source's {g10.id_name}s "
                    f"({int(ids.min())}-{int(ids.max())}; {len(missing)} such)"
                )
            keep &= mask
            include_sha = sha256_json(wanted.tolist())
        ra, dec = g10.column("ra"), g10.column("dec")
        groups = duplicate_groups(ra, dec, hashes, radius_arcsec).combined
        release, classes = g10.release.name, list(g10.classes)
        source_sha = sha256.strip().lower() if sha256 else source_sha256 or g10.sha256()
        id_name = g10.id_name
    leaks = [describe_group(g, labels, classes, ids=ids, splits=own_splits) for g in split_leaks(groups, own_splits)]
    for leak in leaks:
        leak.pop("label_names")

    excluded = int(n - keep.sum())
    hash_rank = np.unique(np.asarray(hashes), return_inverse=True)[1]
    order_keys = [hash_rank] + ([np.nan_to_num(ra, nan=-1.0), np.nan_to_num(dec, nan=-99.0)] if ra is not None else [])
    plan = split_units(labels, hashes, groups, keep, ids, order_keys, fractions=fractions, seed=seed)
    if not any(plan.rows.values()):
        raise UserError(
            f"{source}: no rows left to split (subset {subset!r}, {len(plan.dropped)} conflicting groups dropped)"
        )
    return Manifest(
        source_path=str(source.resolve()),
        source_sha256=source_sha,
        release=release,
        classes=classes,
        n_source_rows=int(n),
        seed=int(seed),
        fractions=list(fractions),
        radius_arcsec=float(radius_arcsec),
        subset=subset,
        include_rows_sha256=include_sha,
        rows=plan.rows,
        split_sha256=plan.split_sha256,
        groups=plan.groups,
        dropped=plan.dropped,
        excluded=excluded,
        id_name=id_name,
        ids={name: [int(ids[r]) for r in members] for name, members in plan.rows.items()},
        excluded_rows=excluded_rows,
        source_split_leaks=leaks,
    )


def _features(classes):
    from datasets import ClassLabel, Features, Image, Value

    return Features({"image": Image(), "label": ClassLabel(names=list(classes)), "label_name": Value("string")})


def split_path(prepared_dir, name: str) -> Path:
    """The Arrow file holding one split's view."""
    return Path(prepared_dir) / SPLITS_DIR / f"{name}.arrow"


VIEW_BATCH_ROWS = 64  # rows per Arrow record batch of a view: 12 MiB of 256 px images


def view_image(image) -> dict:
    """A view's `image` cell: the source's own encoded bytes (a Hub dataset's PNG) are kept as they are; pixels
    (an HDF5 row, (H, W, 3) uint8) are stored raw, as a binary PPM (a `P6 W H 255` text header, then the RGB bytes).

    PPM rather than PNG: encoding is a copy (PNG took ~7 ms per 256 px image, nearly all of `prepare`'s time) and
    decoding is ~3x faster than PNG's, while the column stays a `datasets` `Image` giving PIL images, pixel-exact.
    """
    if isinstance(image, dict):
        return image
    height, width = image.shape[:2]
    return {"bytes": b"P6\n%d %d\n255\n" % (width, height) + np.ascontiguousarray(image).tobytes(), "path": None}


def _stage(source, staging: Path, progress: bool, *, hash_file: bool) -> tuple[list[str] | None, str | None]:
    """Every row's view cells, read once in the source's order (chunk-aligned blocks: `image_examples`), into an
    Arrow IPC file of one-row record batches, so that any row can then be read alone (`get_batch`).

    For an HDF5 source, returns its image hashes, computed on the reading threads, and (`hash_file`) its file's
    SHA-256, computed on a thread of its own meanwhile: the manifest then needs no second read of the source.
    For a Hub source, (None, None): its hashes are of decoded pixels, and its cells keep the encoded bytes.
    """
    import pyarrow as pa  # lazy: pyarrow and datasets load only for commands that write views

    with (
        open_source(source) as g10,
        pa.OSFile(str(staging), "wb") as sink,
        ThreadPoolExecutor(1) as pool,
    ):
        features = _features(g10.classes)
        schema = features.arrow_schema
        hdf5 = isinstance(g10, Galaxy10File)
        file_sha = pool.submit(g10.sha256) if hdf5 and hash_file else None
        rows = np.arange(g10.n_rows)
        examples = g10.hashed_examples(rows) if hdf5 else ((r, img, None) for r, img in g10.image_examples(rows))
        if progress:
            from rich.progress import track  # lazy: only with a progress bar

            examples = track(examples, total=g10.n_rows, description="reading images")
        hashes = []
        with pa.ipc.new_file(sink, schema) as writer:
            batch = []
            for row, image, digest in examples:
                hashes.append(digest)
                label = int(g10.labels[row])
                cells = {"image": view_image(image), "label": label, "label_name": g10.classes[label]}
                batch.append(features.encode_example(cells))
                if len(batch) == VIEW_BATCH_ROWS:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema), max_chunksize=1)
                    batch = []
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema), max_chunksize=1)
        return (hashes if hdf5 else None), (file_sha.result() if file_sha else None)


def write_views(manifest: Manifest, out_dir: Path, staging: Path, *, progress: bool = False) -> None:
    """One Arrow file per split under `out_dir/splits/`, from `staging` (every source row: `_stage`).

    Each split is read from the staging file row by row in the split's order (plain reads, not a memory map, whose
    pages would count as this process's memory) and written with datasets' own `ArrowWriter`, a batch at a time:
    no builder cache, no `save_to_disk` copy, memory flat in the number of rows.
    """
    # lazy: pyarrow and datasets load only for commands that write views
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter

    features = _features(manifest.classes)
    (out_dir / SPLITS_DIR).mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(staging)) as source:
        staged = pa.ipc.open_file(source)
        for name, positions in manifest.rows.items():  # staged batch k is source row k
            path = str(split_path(out_dir, name))
            starts = range(0, len(positions), VIEW_BATCH_ROWS)
            if progress:
                from rich.progress import track  # lazy: only with a progress bar

                starts = track(starts, description=f"writing {name}")
            with ArrowWriter(features=features, path=path, writer_batch_size=VIEW_BATCH_ROWS) as writer:
                for start in starts:
                    batches = [staged.get_batch(p) for p in positions[start : start + VIEW_BATCH_ROWS]]
                    writer.write_table(pa.Table.from_batches(batches, schema=staged.schema).combine_chunks())
                writer.finalize()
    staging.unlink()


def prepare(
    source,
    out,
    *,
    seed: int = 0,
    fractions=DEFAULT_FRACTIONS,
    radius_arcsec: float = DEFAULT_RADIUS_ARCSEC,
    subset: str = "all",
    include_rows=None,
    sha256: str | None = None,
    progress: bool = False,
) -> Path:
    """Split `source` and write the prepared directory `out` (atomically); returns `out`.

    If `out` already holds a manifest made from the same file with the same settings, it is reused as it is;
    a different one is refused, so a split is never silently replaced under the runs that used it.
    """
    out = Path(out)
    existing = None
    if out.exists():  # refuse early, before reading the whole file
        if (out / MANIFEST_NAME).is_file():
            existing = load_manifest(out)
        elif not out.is_dir() or any(out.iterdir()):
            raise UserError(f"{out}: exists and is not a prepared directory; choose another --out")
    settings = dict(
        seed=seed,
        fractions=fractions,
        radius_arcsec=radius_arcsec,
        subset=subset,
        include_rows=include_rows,
        sha256=sha256,
    )
    if existing is None:
        _check_settings(fractions, subset, radius_arcsec)
        if sha256 is not None:
            open_source(source, sha256=sha256).close()  # a wrong checksum fails before the long read
        # The source's pixels are read once: staged (every row) with their hashes, then split from the staging file.
        with atomic_path(out) as tmp:
            tmp.mkdir()
            staging = tmp / "staging.arrow"
            hashes, file_sha = _stage(source, staging, progress, hash_file=sha256 is None)
            settings.update(sha256=None, source_sha256=sha256.strip().lower() if sha256 else file_sha)
            manifest = make_manifest(source, **settings, hashes=hashes)
            write_views(manifest, tmp, staging, progress=progress)
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest.to_json(), indent=1, sort_keys=True) + "\n")
        return out
    return reuse_prepared(out, existing, make_manifest(source, **settings))


def reuse_prepared(out: Path, existing: Manifest, manifest: Manifest) -> Path:
    """`out` as it is, when it was prepared as `manifest` says (same data, same settings) and every split view is
    there; anything else is refused, so a split is never silently replaced under the runs that used it."""
    if existing.identity() != manifest.identity():
        raise UserError(
            f"{out}: already prepared with other data or settings (manifest {existing.hash[:12]}); choose another --out"
        )
    missing = [s for s in existing.rows if not split_path(out, s).is_file()]
    if missing:
        raise UserError(f"{out}: split view(s) {', '.join(missing)} missing; remove the directory and prepare again")
    return out


def source_path(manifest: Manifest, prepared_dir) -> Path:
    """The manifest's source file or directory; a relative path is also looked up inside the prepared directory."""
    path = Path(manifest.source_path)
    if not path.is_absolute() and not path.exists() and (Path(prepared_dir) / path).exists():
        path = Path(prepared_dir) / path
    return path


def load_split(prepared_dir, split: str, *, manifest: Manifest | None = None):
    """The `datasets` view of one split: `image` (PIL), `label`, `label_name`, in the manifest's order (`manifest`:
    the directory's manifest, when the caller has loaded it already)."""
    from datasets import Dataset, NamedSplit

    manifest = load_manifest(prepared_dir) if manifest is None else manifest
    if split not in manifest.rows:
        raise UserError(f"split: {prepared_dir} has no split {split!r} (has {', '.join(manifest.rows)})")
    path = split_path(prepared_dir, split)
    if not path.is_file():
        raise UserError(f"{path}: missing; the prepared directory is incomplete, prepare it again")
    try:
        dataset = Dataset.from_file(str(path), split=NamedSplit(split))
    except (OSError, ValueError) as err:  # pyarrow's errors derive from these
        raise UserError(f"{path}: not a readable split view ({_first_line(err)}); prepare again") from None
    if len(dataset) != len(manifest.rows[split]):
        raise UserError(f"{path}: {len(dataset)} rows, but the manifest lists {len(manifest.rows[split])}")
    return dataset

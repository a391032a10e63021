"""Every kind of source `data inspect|prepare` and the token cache read, behind one interface: `open_source(path)`.

A source is a Galaxy10-schema HDF5 file (`reader.Galaxy10File`) or a dataset in the Hugging Face layouts, read by
`HubSource`:

* a directory of parquet files as on the Hub (`data/<split>-NNNNN-of-NNNNN.parquet`),
* a `datasets` `save_to_disk` directory (a Dataset or a DatasetDict), its Arrow files memory-mapped,
* either of those inside the local Hub cache: a `datasets--owner--name` folder (refs/ and snapshots/) or a repo id
  such as `astronolan/galaxy10-aion`, resolved offline (huggingface_hub, local_files_only; never the network).

Two schemas are recognised: galaxy10-aion (`image_rgb` PNG, `image_bands` g,r,i,z nanomaggies 4 x H x W, `ra`,
`dec`, `Galaxy10_DECals_index`, `label`, `label_name`) and the plain Galaxy10 DECaLS copy (`image`, `label`; no
positions, so duplicates are found by image content only). Reading is lazy: small per-row columns are read whole,
images and flux a row group (parquet) or a slice (Arrow) at a time, only the column asked for.

Both kinds answer the same questions: rows, labels, classes and release, `column("ra")`, images of given rows, the
content hash of every image, flux of given rows and a finite-flux mask, each row's source id (`Galaxy10_DECals_index`,
else the row), the dataset's own split of each row, a content fingerprint (`sha256`) and the schema.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .galaxy10 import DECALS_CLASSES, FLUX_BANDS
from .reader import CHUNK_ROWS, DECALS, Source, open_galaxy10

IMAGE_COLUMNS = ("image_rgb", "image")  # galaxy10-aion's RGB, then the plain Galaxy10 copy's
FLUX_COLUMN = "image_bands"
ID_COLUMN = "Galaxy10_DECals_index"
SPLIT_ORDER = ("train", "validation", "val", "test")  # the source's own splits, in this order, then the rest sorted
SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}$")  # train-00000-of-00002
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def open_source(path, *, sha256: str | None = None):
    """Open a Galaxy10-schema HDF5 file or a Hub-layout dataset directory / cached repo id (see module doc).

    `sha256`, when given, is checked first: the file's SHA-256 for HDF5, the content fingerprint for a directory.
    """
    text = str(path)
    path = Path(path)
    if path.is_file() or (not path.exists() and not _looks_like_repo_id(text)):
        return open_galaxy10(path, sha256=sha256)
    source = HubSource(_resolve_dir(path, text))
    if sha256 is not None:
        expected = sha256.strip().lower()
        if source.sha256() != expected:
            source.close()
            raise UserError(f"{path}: content fingerprint {source.sha256()} does not match --sha256 {expected}")
    return source


def _looks_like_repo_id(text: str) -> bool:
    return bool(HUB_REPO_ID.match(text)) and not text.startswith((".", "/"))


def _resolve_dir(path: Path, text: str) -> Path:
    """The directory holding the data: the path itself, or the snapshot a Hub cache folder or repo id points to."""
    if path.is_dir():
        if (path / "snapshots").is_dir() and path.name.startswith("datasets--"):
            return _cache_snapshot(path)
        return path
    # lazy: huggingface_hub is only needed to resolve a repo id in the local cache
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        # HF_HUB_CACHE read now, not when huggingface_hub was first imported
        cache = os.environ.get("HF_HUB_CACHE") or None
        return Path(snapshot_download(text, repo_type="dataset", local_files_only=True, cache_dir=cache))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError):
        raise UserError(
            f"{text}: no such file or directory, and no dataset of that id in the local Hub cache "
            f"({os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface/hub'}); "
            f"download it first: hf download {text} --repo-type dataset"
        ) from None


def _cache_snapshot(repo_dir: Path) -> Path:
    """The snapshot of a `datasets--owner--name` cache folder that refs/main names (else the only one there)."""
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        snapshot = repo_dir / "snapshots" / ref.read_text().strip()
        if snapshot.is_dir():
            return snapshot
    snapshots = sorted(p for p in (repo_dir / "snapshots").iterdir() if p.is_dir())
    if len(snapshots) != 1:
        raise UserError(f"{repo_dir}: no refs/main and {len(snapshots)} snapshots; cannot tell which to read")
    return snapshots[0]


# --- the parts a dataset is made of: one parquet file, or one split's memory-mapped Arrow files ------------------


class _ParquetPart:
    """One parquet file; reads whole row groups of one column, keeping the last one read."""

    def __init__(self, path: Path, split: str):
        import pyarrow.parquet as pq

        self.path, self.split = path, split
        try:
            self.file = pq.ParquetFile(path)
        except (OSError, ValueError) as err:
            raise UserError(f"{path}: not a readable parquet file ({_first_line(err)})") from None
        self.schema = self.file.schema_arrow
        meta = self.file.metadata
        self.n_rows = meta.num_rows
        self.bounds = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        self._last = None

    def whole(self, column: str):
        return self.file.read(columns=[column]).column(column)

    def blocks(self) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in zip(self.bounds[:-1], self.bounds[1:]) if b > a]

    def read(self, column: str, start: int, stop: int):
        """Rows start..stop-1 (of this file) of one column, as a pyarrow ChunkedArray."""
        import pyarrow as pa

        pieces = []
        group = int(np.searchsorted(self.bounds, start, side="right")) - 1
        while start < stop:
            first, end = int(self.bounds[group]), int(self.bounds[group + 1])
            if self._last is None or self._last[0] != (group, column):
                try:
                    self._last = ((group, column), self.file.read_row_group(group, columns=[column]).column(column))
                except (OSError, ValueError) as err:
                    raise UserError(f"{self.path}: cannot read `{column}` ({_first_line(err)})") from None
            upto = min(stop, end)
            pieces.extend(self._last[1].slice(start - first, upto - start).chunks)
            start, group = upto, group + 1
        return pa.chunked_array(pieces, type=self.schema.field(column).type)


class _ArrowPart:
    """One split of a `save_to_disk` directory: its Arrow stream files, memory-mapped (pages load as read)."""

    BLOCK = 256

    def __init__(self, files: list[Path], split: str):
        import pyarrow as pa

        self.path, self.split = files[0].parent, split
        try:
            tables = [pa.ipc.open_stream(pa.memory_map(str(f))).read_all() for f in files]
        except (OSError, ValueError) as err:
            raise UserError(f"{self.path}: not readable Arrow files ({_first_line(err)})") from None
        self.table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        self.schema = self.table.schema
        self.n_rows = self.table.num_rows

    def whole(self, column: str):
        return self.table.column(column)

    def blocks(self) -> list[tuple[int, int]]:
        return [(a, min(a + self.BLOCK, self.n_rows)) for a in range(0, self.n_rows, self.BLOCK)]

    def read(self, column: str, start: int, stop: int):
        return self.table.column(column).slice(start, stop - start)


def _split_key(name: str):
    return (SPLIT_ORDER.index(name) if name in SPLIT_ORDER else len(SPLIT_ORDER), name)


def find_parts(root: Path) -> tuple[str, list]:
    """The parts of a dataset directory and its format: `save_to_disk` (Arrow) or `parquet`."""
    if (root / "dataset_dict.json").is_file():
        try:
            splits = json.loads((root / "dataset_dict.json").read_text())["splits"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise UserError(f"{root / 'dataset_dict.json'}: not a datasets DatasetDict ({err})") from None
        return "save_to_disk", [
            _ArrowPart(_arrow_files(root / s), s) for s in sorted(splits, key=_split_key) if _arrow_files(root / s)
        ]
    if (root / "state.json").is_file():
        return "save_to_disk", [_ArrowPart(_arrow_files(root), _state_split(root))]
    files = sorted(p for p in root.rglob("*.parquet") if p.is_file() and ".cache" not in p.parts)
    if not files:
        raise UserError(
            f"{root}: is a directory with no dataset in it (neither parquet files, e.g. data/train-00000-of-00001.parquet, "
            "nor a datasets save_to_disk directory)"
        )
    named = [(_parquet_split(f, root), f) for f in files]
    return "parquet", [_ParquetPart(f, s) for s, f in sorted(named, key=lambda sf: (_split_key(sf[0]), str(sf[1])))]


def _parquet_split(path: Path, root: Path) -> str:
    """The split a parquet file belongs to: `train-00000-of-00002` -> train; `test.parquet` -> test; a file in a
    split-named folder (`train/0000.parquet`) -> that folder; anything else -> train."""
    match = SHARD.match(path.stem)
    if match:
        return match["split"]
    for name in (path.stem, path.parent.name if path.parent != root else ""):
        head = re.split(r"[-_.]", name)[0]
        if head in SPLIT_ORDER:
            return head
    return "train"


def _arrow_files(folder: Path) -> list[Path]:
    state = folder / "state.json"
    if not state.is_file():
        raise UserError(f"{folder}: no state.json; not a datasets save_to_disk split")
    try:
        names = [f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{state}: not a datasets state file ({err})") from None
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise UserError(f"{folder}: data file {missing[0]} listed in state.json is missing")
    return [folder / n for n in names]


def _state_split(folder: Path) -> str:
    try:
        return json.loads((folder / "state.json").read_text()).get("_split") or "train"
    except json.JSONDecodeError:
        return "train"


# --- column conversion ---------------------------------------------------------------------------------------------


def arrow_storage(chunked):
    """A ChunkedArray without datasets' extension types (Array3D and friends are lists underneath)."""
    import pyarrow as pa

    chunks = [c.storage if isinstance(c, pa.ExtensionArray) else c for c in chunked.chunks]
    return pa.chunked_array(chunks) if chunks else chunked


def _flux_block(chunked, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Nested lists (or Array3D) -> (float32 [n, bands, H, W] with NaN for null rows, mask of null rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = arrow_storage(chunked).combine_chunks()
    n = len(arr)
    null = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), bool)
    values, dims = (arr.filter(pc.invert(arr.is_null())) if null.any() else arr), []
    for _ in range(3):
        if not (
            pa.types.is_list(values.type)
            or pa.types.is_large_list(values.type)
            or pa.types.is_fixed_size_list(values.type)
        ):
            raise UserError(f"{where}: must hold (bands, H, W) arrays per row, got {chunked.type}")
        lengths = (
            np.unique(pc.list_value_length(values).to_numpy(zero_copy_only=False)) if len(values) else np.array([0])
        )
        if len(lengths) != 1:
            raise UserError(
                f"{where}: cutouts are not all the same shape (lengths {lengths[:4].tolist()} at one level)"
            )
        dims.append(int(lengths[0]))
        values = values.flatten()
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise UserError(f"{where}: flux must be numbers (nanomaggies), got {values.type}")
    if dims[0] != len(FLUX_BANDS) or dims[1] != dims[2]:
        raise UserError(
            f"{where}: each row must be {len(FLUX_BANDS)} x H x H (g,r,i,z bands), got {' x '.join(map(str, dims))}"
        )
    out = np.full((n, *dims), np.nan, np.float32)
    out[~null] = values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, *dims)
    return out, null


def _decode_png(value, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    data = value.get("bytes") if isinstance(value, dict) else value
    if not data:
        raise UserError(f"{where}: an image without bytes (only a path?); the dataset must embed its images")
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{where}: not a decodable image ({_first_line(err)})") from None


@dataclass(frozen=True)
class _Scan:
    """What one pass over every image and flux cutout yields."""

    image_hashes: list[str]
    finite: np.ndarray  # rows whose flux is present and finite everywhere
    reasons: dict[int, str]  # row -> why its flux is unusable
    sha256: str


class HubSource(Source):
    """A dataset in a Hub layout (parquet or save_to_disk), opened and checked; rows read on demand."""

    def __init__(self, root: Path, *, images: bool = True, flux_columns: tuple[str, ...] = (FLUX_COLUMN,)):
        """`images=False` opens a flux table (e.g. a galaxy10-aion copy joined to an HDF5 file): no image column
        and no label needed; the flux column is the first of `flux_columns` present."""
        self.path = Path(root)
        self.format, self.parts = find_parts(self.path)
        if not self.parts:
            raise UserError(f"{self.path}: the dataset has no splits")
        self.n_rows = sum(p.n_rows for p in self.parts)
        if self.n_rows == 0:
            raise UserError(f"{self.path}: empty dataset (0 rows)")
        self.offsets = np.cumsum([0] + [p.n_rows for p in self.parts])
        names = [set(p.schema.names) for p in self.parts]
        self.columns = sorted(set.intersection(*names))
        if any(n != names[0] for n in names):
            odd = next(p for p, n in zip(self.parts, names) if n != names[0])
            raise UserError(f"{odd.path}: columns {sorted(odd.schema.names)} differ from {self.parts[0].path}'s")
        self.image_column = next((c for c in IMAGE_COLUMNS if c in self.columns), None)
        self.flux_key = next((c for c in flux_columns if c in self.columns), flux_columns[0])
        self.image_key = self.image_column
        if images and self.image_column is None:
            raise UserError(f"{self.path}: missing column `image_rgb` (or `image`) (has: {', '.join(self.columns)})")
        if images and "label" not in self.columns:
            raise UserError(f"{self.path}: missing column `label` (has: {', '.join(self.columns)})")
        self.release = DECALS
        self.labels = self._labels() if "label" in self.columns else None
        self.ids = self._ids()
        self.id_name = ID_COLUMN if ID_COLUMN in self.columns else "row"
        self.source_splits = np.repeat(
            np.asarray([p.split for p in self.parts], dtype=object), [p.n_rows for p in self.parts]
        )
        self._check_pair("ra", "dec")
        self.height, self.width = self.image(0).shape[:2] if images else (None, None)
        self._scan: _Scan | None = None

    def close(self) -> None:
        for part in self.parts:  # parquet handles; Arrow memory maps close when their tables are collected
            if hasattr(part, "file"):
                part.file.close()

    # --- metadata -------------------------------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        return self.columns

    @property
    def has_flux(self) -> bool:
        return self.flux_key in self.columns

    @property
    def flux_required(self) -> bool:
        """galaxy10-aion's cutouts are the token arm's input: a row without finite flux is left out of both arms."""
        return self.has_flux

    @property
    def has_positions(self) -> bool:
        return "ra" in self.columns and "dec" in self.columns

    @property
    def flux_bands(self) -> tuple[str, ...] | None:
        return FLUX_BANDS if self.has_flux else None

    @property
    def files(self) -> list[Path]:
        if self.format == "parquet":
            return [p.path for p in self.parts]
        return sorted(f for p in self.parts for f in p.path.glob("*.arrow"))

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def split_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.parts:
            out[p.split] = out.get(p.split, 0) + p.n_rows
        return out

    def schema(self) -> dict[str, dict]:
        """Each column's Arrow type (and the per-row shape of images and flux), without reading the data."""
        out = {}
        for name in self.columns:
            out[name] = {"shape": None, "dtype": str(self.parts[0].schema.field(name).type)}
        out[self.image_column]["shape"] = [self.n_rows, self.height, self.width, 3]
        out[self.image_column]["dtype"] = "PNG image (uint8 RGB)"
        for name in ("label", "ra", "dec", ID_COLUMN):
            if name in out:
                out[name]["shape"] = [self.n_rows]
        return out

    # --- small columns --------------------------------------------------------------------------------------------
    def _whole(self, column: str) -> np.ndarray:
        values = [arrow_storage(p.whole(column)).to_numpy(zero_copy_only=False) for p in self.parts]
        return np.concatenate(values) if values else np.empty(0)

    def _labels(self) -> np.ndarray:
        raw = self._whole("label")
        if raw.dtype == object or not (np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)):
            raise UserError(f"{self.path}: `label` must be integer class labels, got {raw.dtype}")
        if np.issubdtype(raw.dtype, np.floating) and not np.all(np.isfinite(raw) & (raw == np.round(raw))):
            raise UserError(f"{self.path}: `label` must be integer class labels (found non-integers)")
        labels = raw.astype(np.int64)
        bad = np.flatnonzero((labels < 0) | (labels >= len(DECALS_CLASSES)))
        if len(bad):
            raise UserError(
                f"{self.path}: `label` has {len(bad)} label(s) outside 0-{len(DECALS_CLASSES) - 1} "
                f"(first at row {bad[0]}: {labels[bad[0]]})"
            )
        return labels

    def _ids(self) -> np.ndarray:
        if ID_COLUMN not in self.columns:
            return np.arange(self.n_rows, dtype=np.int64)
        ids = self._whole(ID_COLUMN)
        if ids.dtype == object or not np.issubdtype(ids.dtype, np.integer):
            raise UserError(f"{self.path}: `{ID_COLUMN}` must be integers (Galaxy10 rows), got {ids.dtype}")
        return ids.astype(np.int64)

    def _check_pair(self, a: str, b: str) -> None:
        if (a in self.columns) != (b in self.columns):
            raise UserError(f"{self.path}: has only one of `{a}` and `{b}`; sky positions need both")
        for key in (a, b):
            if key in self.columns and self.column(key) is None:
                raise UserError(f"{self.path}: `{key}` must be numeric degrees")

    def column(self, key: str) -> np.ndarray | None:
        """A one-value-per-row numeric column (`ra`, `dec`, ...) as float64, or None if absent."""
        if key not in self.columns:
            return None
        values = self._whole(key)
        if values.dtype == object or not np.issubdtype(values.dtype, np.number):
            return None
        return values.astype(np.float64)

    # --- row access -----------------------------------------------------------------------------------------------
    def _runs(self, rows: np.ndarray) -> Iterator[tuple[int, int, int, np.ndarray]]:
        """For rows in any order: (part, block first, block stop, local rows, their positions in `rows`) per row group
        touched, in file order."""
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        part_of = np.searchsorted(self.offsets, sorted_rows, side="right") - 1
        for k in np.unique(part_of):
            part, local = self.parts[k], sorted_rows[part_of == k] - self.offsets[k]
            where = order[part_of == k]
            block_of = np.searchsorted(np.asarray([a for a, _ in part.blocks()]), local, side="right") - 1
            blocks = part.blocks()
            for b in np.unique(block_of):
                yield int(k), blocks[b][0], blocks[b][1], local[block_of == b], where[block_of == b]

    def _take(self, column: str, rows) -> list:
        """Values of one column for rows in any order (a Python list), each row group read once."""
        import pyarrow as pa

        rows = np.asarray(rows, np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise UserError(f"{self.path}: row {int(rows.max())} out of range for {self.n_rows} rows")
        out: list = [None] * len(rows)
        for k, first, stop, local, where in self._runs(rows):
            block = self.parts[k].read(column, first, stop)
            picked = block.take(pa.array(local - first))
            for i, value in zip(where, picked.to_pylist()):
                out[i] = value
        return out

    def image(self, row: int) -> np.ndarray:
        """One (H, W, 3) uint8 image."""
        return self.image_rows([row])[0]

    def image_rows(self, rows) -> np.ndarray:
        """The images of rows (any order) as (n, H, W, 3) uint8."""
        where = f"{self.path}: `{self.image_column}`"
        images = [_decode_png(v, where) for v in self._take(self.image_column, rows)]
        shapes = {img.shape for img in images}
        if len(shapes) > 1:
            raise UserError(f"{where}: images of different sizes ({sorted(shapes)[:2]})")
        return np.stack(images) if images else np.zeros((0, 8, 8, 3), np.uint8)

    def image_examples(self, rows) -> Iterator[tuple[int, dict]]:
        """(row, encoded image {bytes, path}) for sorted rows, streamed: the split views keep the source's PNG."""
        for k, first, stop, local, _ in self._runs(np.asarray(rows, np.int64)):
            block = self.parts[k].read(self.image_column, first, stop).to_pylist()
            for r in local:
                value = block[int(r) - first]
                data = value.get("bytes") if isinstance(value, dict) else value
                yield int(r + self.offsets[k]), {"bytes": data, "path": None}

    def flux_rows(self, rows) -> np.ndarray:
        """Flux of rows (any order) as (n, 4, H, W) float32 nanomaggies (NaN where a row has none)."""
        if not self.has_flux:
            raise UserError(f"{self.path}: has no `{self.flux_key}` column")
        import pyarrow as pa

        rows = np.asarray(rows, np.int64)
        out = None
        for k, first, stop, local, where in self._runs(rows):
            block = self.parts[k].read(self.flux_key, first, stop).take(pa.array(local - first))
            flux, _ = _flux_block(block, f"{self.parts[k].path}: `{self.flux_key}`")
            if out is None:
                out = np.empty((len(rows), *flux.shape[1:]), np.float32)
            out[where] = flux
        return out if out is not None else np.zeros((0, len(FLUX_BANDS), 8, 8), np.float32)

    def flux(self, start: int, stop: int) -> np.ndarray:
        return self.flux_rows(np.arange(start, stop))

    def blocks(self) -> Iterator[tuple[int, int, int]]:
        """(part, global first row, local first, local stop) of every row group, in order."""
        for k, part in enumerate(self.parts):
            for a, b in part.blocks():
                yield k, int(self.offsets[k] + a), a, b

    # --- one pass over the content --------------------------------------------------------------------------------
    def scan(self) -> _Scan:
        """Image hashes, the finite-flux mask with reasons, and the content fingerprint: one pass, a block at a time.

        Images are hashed as decoded pixels (the same galaxy hashes the same in HDF5 and in PNG), and the
        fingerprint covers every row's split, id, label, position, pixels and flux: the same data in parquet, in
        save_to_disk or in the Hub cache has one fingerprint.
        """
        if self._scan is not None:
            return self._scan
        digest = hashlib.sha256(f"hub-source:{self.n_rows}:{self.has_flux}".encode())
        hashes: list[str] = []
        finite = np.zeros(self.n_rows, bool)
        reasons: dict[int, str] = {}
        ra, dec = self.column("ra"), self.column("dec")
        for k, start, a, b in self.blocks():
            part = self.parts[k]
            where = f"{part.path}: `{self.image_column}`"
            images = [_decode_png(v, where) for v in part.read(self.image_column, a, b).to_pylist()]
            flux = null = None
            if self.has_flux:
                flux, null = _flux_block(part.read(self.flux_key, a, b), f"{part.path}: `{self.flux_key}`")
            for i, img in enumerate(images):
                row = start + i
                h = hashlib.sha256(np.ascontiguousarray(img).data).hexdigest()
                hashes.append(h)
                pos = "" if ra is None else f"{ra[row]!r},{dec[row]!r}"
                digest.update(f"{part.split}:{self.ids[row]}:{self.labels[row]}:{pos}:{h}:".encode())
                if flux is not None:
                    cut = flux[i]
                    digest.update(np.ascontiguousarray(cut).data)
                    if null[i]:
                        reasons[row] = f"no {self.flux_key} (null)"
                    elif not np.isfinite(cut).all():
                        kinds = [w for w, m in (("NaN", np.isnan(cut)), ("infinite", np.isinf(cut))) if m.any()]
                        reasons[row] = (
                            f"{' and '.join(kinds)} values in {self.flux_key} ({int((~np.isfinite(cut)).sum())} of {cut.size})"
                        )
                    else:
                        finite[row] = True
        self._scan = _Scan(hashes, finite, reasons, digest.hexdigest())
        return self._scan

    def image_hashes(self, chunk_rows: int = CHUNK_ROWS) -> list[str]:
        return self.scan().image_hashes

    def finite_flux_rows(self, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
        return self.scan().finite.copy()

    def flux_reasons(self) -> dict[int, str]:
        return dict(self.scan().reasons)

    def sha256(self) -> str:
        return self.scan().sha256


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__

"""Read a Galaxy10-schema HDF5 file lazily, after checking everything a later step relies on.

`open_galaxy10(path)` validates the file once (keys, shapes, dtypes, lengths, label range, optional checksum) and
returns a `Galaxy10File`: a context manager whose methods read rows or chunks on demand, never the whole image array
(the DECaLS file holds 3.25 GiB of pixels). Every command shares it, so bad input fails the same way everywhere:
one `UserError` line naming the file and the field.

Two releases are recognised by their image size: Galaxy10 DECaLS (`Galaxy10_DECals.h5`, 256 px, and any other
side, e.g. the surrogate's) and the older Galaxy10 SDSS (`Galaxy10.h5`, 69 px, a different class list, and only
`images` and `ans` are required).
"""

from __future__ import annotations

import hashlib
import itertools
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import h5py
import numpy as np

from ..errors import UserError
from ..io import sha256_file
from .galaxy10 import DECALS_CLASSES, FLUX_BANDS, REQUIRED_KEYS, SDSS_CLASSES

SDSS_SIDE = 69  # Galaxy10 SDSS images are 69 x 69 x 3
SDSS_REQUIRED_KEYS = ("images", "ans")
COLUMN_KEYS = ("ra", "dec", "redshift", "pxscale")  # one float per row
CHUNK_ROWS = 64  # rows per read: 64 x 256 x 256 x 3 bytes = 12 MiB, whatever the file's size
READ_THREADS = 2  # blocks read at once: gzip chunks are inflated by zlib, which releases the GIL (`read_rows`)


@dataclass(frozen=True)
class Release:
    """One Galaxy10 release: its name, class names and the keys a file of it must carry."""

    name: str
    classes: tuple[str, ...]
    required_keys: tuple[str, ...]


DECALS = Release("decals", DECALS_CLASSES, REQUIRED_KEYS)
SDSS = Release("sdss", SDSS_CLASSES, SDSS_REQUIRED_KEYS)


def release_for_side(side: int) -> Release:
    """Galaxy10 SDSS images are 69 px; everything else is read as DECaLS (256 px real, any side for surrogates)."""
    return SDSS if side == SDSS_SIDE else DECALS


class Source(ABC):
    """What every source shares (a Galaxy10-schema file here, a Hub-layout dataset in `sources.HubSource`): a
    context manager over `n_rows` rows of one `release`."""

    n_rows: int
    release: Release

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @abstractmethod
    def close(self) -> None:
        """Release the open files."""

    def __len__(self) -> int:
        return self.n_rows

    @property
    def classes(self) -> tuple[str, ...]:
        return self.release.classes


class Galaxy10File(Source):
    """An open, validated Galaxy10-schema file. Reads rows on demand; small per-row columns are read whole."""

    def __init__(self, path: Path, handle: h5py.File, release: Release):
        self.path = path
        self._f = handle
        self.release = release
        self._images = handle["images"]
        self.n_rows, self.height, self.width, _ = self._images.shape
        self.labels = handle["ans"][()].astype(np.int64)  # N integers: small, and any integer width is accepted
        self.ids = np.arange(self.n_rows, dtype=np.int64)  # a galaxy's source id is its row
        self.id_name = "row"
        self.source_splits = None  # one file, no splits of its own
        self.format = "hdf5"
        self.flux_key, self.image_key = "flux", "images"

    def close(self) -> None:
        self._f.close()

    # --- metadata -------------------------------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        return sorted(self._f.keys())

    @property
    def has_flux(self) -> bool:
        return "flux" in self._f

    @property
    def has_positions(self) -> bool:
        return "ra" in self._f and "dec" in self._f

    @property
    def flux_bands(self) -> tuple[str, ...] | None:
        if not self.has_flux:
            return None
        bands = self._f["flux"].attrs.get("bands")
        return tuple(str(b.decode() if isinstance(b, bytes) else b) for b in bands) if bands is not None else FLUX_BANDS

    @property
    def flux_required(self) -> bool:
        """Rows without finite flux stay in unless `--subset flux` asks otherwise."""
        return False

    @property
    def files(self) -> list[Path]:
        return [self.path]

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def sha256(self) -> str:
        return sha256_file(self.path)

    def schema(self) -> dict[str, dict]:
        """Each dataset's shape and dtype (and attributes worth showing), without reading its data."""
        out = {}
        for key in self.keys:
            item = self._f[key]
            if isinstance(item, h5py.Dataset):
                out[key] = {"shape": list(item.shape), "dtype": str(item.dtype)}
                attrs = {k: _plain(v) for k, v in item.attrs.items()}
                if attrs:
                    out[key]["attrs"] = attrs
            else:
                out[key] = {"shape": None, "dtype": "group"}
        return out

    # --- row access -----------------------------------------------------------------------------------------------
    def column(self, key: str) -> np.ndarray | None:
        """A one-value-per-row column (`ra`, `dec`, `redshift`, `pxscale`) as float64, or None if absent."""
        if key not in self._f:
            return None
        return self._read(key, ())[...].astype(np.float64)

    def image(self, row: int) -> np.ndarray:
        """One (H, W, 3) uint8 image."""
        return self._read("images", int(row))

    def images(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 as (n, H, W, 3) uint8."""
        return self._read("images", slice(int(start), int(stop)))

    def flux(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 of the optional `flux` key, (n, bands, h, w) float32 nanomaggies."""
        if not self.has_flux:
            raise UserError(f"{self.path}: has no `flux` key")
        return self._read("flux", slice(int(start), int(stop)))

    def image_rows(self, rows) -> np.ndarray:
        """The images of rows in any order, (n, H, W, 3) uint8."""
        return self._rows("images", rows)

    def flux_rows(self, rows) -> np.ndarray:
        """The `flux` of rows in any order, (n, bands, h, w) float32."""
        if not self.has_flux:
            raise UserError(f"{self.path}: has no `flux` key")
        return self._rows("flux", rows)

    def image_examples(self, rows) -> Iterator[tuple[int, np.ndarray]]:
        """(row, image) for sorted, unique rows, read a chunk-aligned block at a time (`row_blocks`)."""
        for row, image, _ in self.hashed_examples(rows, hashes=False):
            yield row, image

    def hashed_examples(self, rows, *, hashes: bool = True) -> Iterator[tuple[int, np.ndarray, str | None]]:
        """(row, image, SHA-256 of its bytes as in `image_hashes`) for sorted, unique rows, read and hashed on the
        reading threads a chunk-aligned block at a time (`row_blocks`)."""
        rows = np.asarray(rows, np.int64)
        wanted = [(a, b, rows[np.searchsorted(rows, a) : np.searchsorted(rows, b)]) for a, b in self.row_blocks()]
        wanted = [(a, b, r) for a, b, r in wanted if len(r)]

        def read(a, b, r):
            block = self._read("images", slice(a, b))[r - a]
            return block, [_sha256(img) if hashes else None for img in block]

        for (_, _, r), (block, digests) in zip(wanted, self._map_blocks(read, wanted)):
            yield from zip(r.tolist(), block, digests)

    def flux_reasons(self) -> dict[int, str]:
        """Row -> why its `flux` is unusable (only non-finite rows; nothing without `flux`)."""
        if not self.has_flux:
            return {}
        return {int(r): "NaN or infinite values in flux" for r in np.flatnonzero(~self.finite_flux_rows())}

    def _rows(self, key: str, rows) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise UserError(f"{self.path}:{key}: row {int(rows.max())} out of range for {self.n_rows} rows")
        order = np.argsort(rows, kind="stable")
        unique, inverse = np.unique(rows[order], return_inverse=True)
        block = self._read(key, unique)[inverse]  # h5py wants increasing, unique indices
        out = np.empty_like(block)
        out[order] = block
        return out

    def row_blocks(self, key: str = "images", rows: int = CHUNK_ROWS) -> list[tuple[int, int]]:
        """(start, stop) row ranges covering the file, each made of whole chunks of `key` and about `rows` long.

        A read that cuts a chunk decompresses it again for each block it touches; h5py's automatic chunks span
        hundreds of rows (e.g. 555 x 16 x 16 x 1), so a fixed 64-row block would decompress each chunk ~9 times.
        """
        chunk_rows = (self._f[key].chunks or (1,))[0]  # contiguous: any row boundary is aligned
        step = max(1, rows // chunk_rows) * chunk_rows
        return [(start, min(start + step, self.n_rows)) for start in range(0, self.n_rows, step)]

    def chunks(self, key: str = "images", chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, block) over the whole file in `row_blocks`: memory stays flat."""
        blocks = self.row_blocks(key, chunk_rows)
        yield from zip((a for a, _ in blocks), self._map_blocks(lambda a, b: self._read(key, slice(a, b)), blocks))

    def image_hashes(self, chunk_rows: int = CHUNK_ROWS) -> list[str]:
        """SHA-256 of each row's image bytes, read in chunk-aligned blocks, READ_THREADS blocks at once (hashlib
        too releases the GIL). Identical images have identical hashes."""

        def hash_block(a, b):
            return [_sha256(img) for img in self._read("images", slice(a, b))]

        blocks = self.row_blocks("images", chunk_rows)
        return [h for hashes in self._map_blocks(hash_block, blocks) for h in hashes]

    def _map_blocks(self, work, blocks: list[tuple]) -> Iterator:
        """work(*block) for each block, in order, on READ_THREADS threads, at most READ_THREADS blocks ahead of the
        one in use: memory stays a few blocks."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(READ_THREADS) as pool:
            pending = []
            for block in blocks:
                pending.append(pool.submit(work, *block))
                if len(pending) > READ_THREADS:
                    yield pending.pop(0).result()
            for future in pending:
                yield future.result()

    def finite_flux_rows(self, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
        """Boolean mask of rows whose `flux` cutout is present and finite everywhere (all False without `flux`)."""
        mask = np.zeros(self.n_rows, bool)
        if self.has_flux:
            for start, block in self.chunks("flux", chunk_rows):
                mask[start : start + len(block)] = np.isfinite(block).reshape(len(block), -1).all(axis=1)
        return mask

    def _read(self, key: str, index):
        """`key`[index]; a slice of rows through `read_rows`."""
        # A file that validated can still fail mid-read (a damaged chunk): keep it to one line.
        dataset = self._f[key]
        try:
            return read_rows(dataset, index.start, index.stop) if isinstance(index, slice) else dataset[index]
        except (OSError, ValueError) as err:
            raise UserError(f"{self.path}: cannot read `{key}` ({_first_line(err)})") from None


def _sha256(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).data).hexdigest()


def read_rows(dataset: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    """Rows start..stop-1 of `dataset`, fastest when they are whole chunks along rows (`row_blocks`).

    A gzip-only chunked dataset is read as its stored chunks, each inflated here by zlib, which releases the GIL
    (h5py holds it while it decompresses): threads reading other blocks meanwhile use the other cores. Anything
    else (another filter, a chunk never written, a damaged one) is h5py's own read, with h5py's own errors.
    """
    if not _gzip_only(dataset) or start % dataset.chunks[0]:
        return dataset[start:stop]
    try:
        return _inflate_rows(dataset, start, stop)
    except (zlib.error, ValueError, OSError, KeyError):
        return dataset[start:stop]


def _gzip_only(dataset: h5py.Dataset) -> bool:
    plist = dataset.id.get_create_plist()
    return plist.get_nfilters() == 1 and plist.get_filter(0)[0] == h5py.h5z.FILTER_DEFLATE


def _inflate_rows(dataset: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    out = np.empty((stop - start, *dataset.shape[1:]), dataset.dtype)
    chunk = dataset.chunks
    starts = [range(start, stop, chunk[0])] + [range(0, n, c) for n, c in zip(dataset.shape[1:], chunk[1:])]
    for offset in itertools.product(*starts):
        mask, stored = dataset.id.read_direct_chunk(offset)
        data = stored if mask & 1 else zlib.decompress(stored)  # mask bit 0: stored without its gzip filter
        # Chunks at the dataset's edge reach past it: keep the part inside.
        inside = tuple(slice(0, min(c, end - o)) for o, c, end in zip(offset, chunk, (stop, *dataset.shape[1:])))
        into = (slice(offset[0] - start, offset[0] - start + inside[0].stop),)
        into += tuple(slice(o, o + part.stop) for o, part in zip(offset[1:], inside[1:]))
        out[into] = np.frombuffer(data, dataset.dtype).reshape(chunk)[inside]
    return out


def open_galaxy10(path, *, sha256: str | None = None) -> Galaxy10File:
    """Open and validate a Galaxy10-schema HDF5 file; any problem is one `UserError` line naming the file and field.

    `sha256` (hex), when given, is checked against the file's SHA-256 before anything else is read.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a Galaxy10 HDF5 file")
    # Try to read rather than ask os.access: root passes access() checks that a real read may still fail.
    try:
        with open(path, "rb") as probe:
            probe.read(1)
    except PermissionError:
        raise UserError(f"{path}: not readable (permission denied)") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({_first_line(err)})") from None
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes)")
    if sha256 is not None:
        verify_sha256(path, sha256)
    if not h5py.is_hdf5(path):
        raise UserError(f"{path}: not an HDF5 file (wrong format or damaged header)")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise UserError(f"{path}: cannot open as HDF5, truncated or damaged ({_first_line(err)})") from None
    try:
        release = _validate(path, handle)
        return Galaxy10File(path, handle, release)
    except (OSError, KeyError, RuntimeError) as err:
        # h5py reports damaged metadata or data blocks (a truncated file) as these.
        handle.close()
        raise UserError(f"{path}: cannot read, truncated or damaged ({_first_line(err)})") from None
    except BaseException:
        handle.close()
        raise


def verify_sha256(path, expected: str) -> str:
    """Raise `UserError` unless the file's SHA-256 is `expected`; return the hash."""
    expected = expected.strip().lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise UserError(f"--sha256: expected 64 hex digits, got {expected!r}")
    actual = sha256_file(path)
    if actual != expected:
        raise UserError(f"{path}: checksum mismatch (SHA-256 {actual}, expected {expected})")
    return actual


def _validate(path: Path, f: h5py.File) -> Release:
    where = lambda key: f"{path}: `{key}`"  # noqa: E731
    if "images" not in f:
        raise UserError(f"{path}: missing key `images` (has: {', '.join(sorted(f.keys())) or 'nothing'})")
    images = f["images"]
    if not isinstance(images, h5py.Dataset) or images.ndim != 4 or images.shape[3] != 3:
        shape = getattr(images, "shape", None)
        raise UserError(f"{where('images')} must have shape (N, H, W, 3), got {shape}")
    n, h, w, _ = images.shape
    if h != w or h < 8:
        raise UserError(f"{where('images')} must hold square images of at least 8 px, got {h} x {w}")
    if images.dtype != np.uint8:
        raise UserError(f"{where('images')} must be uint8 RGB, got {images.dtype}")
    release = release_for_side(h)
    for key in release.required_keys:
        if key not in f:
            raise UserError(
                f"{path}: missing key `{key}` (a Galaxy10 {release.name} file has {', '.join(release.required_keys)})"
            )
    if n == 0:
        raise UserError(f"{path}: empty file (0 rows)")

    ans = f["ans"]
    if not isinstance(ans, h5py.Dataset) or ans.ndim != 1 or not np.issubdtype(ans.dtype, np.integer):
        raise UserError(
            f"{where('ans')} must be a 1-D integer class label array, got {getattr(ans, 'shape', None)} {getattr(ans, 'dtype', None)}"
        )
    _check_length(path, "ans", ans, n)
    labels = ans[()].astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= len(release.classes)))
    if len(bad):
        raise UserError(
            f"{where('ans')} has {len(bad)} label(s) outside 0-{len(release.classes) - 1} "
            f"(first at row {bad[0]}: {labels[bad[0]]})"
        )

    for key in COLUMN_KEYS:
        if key in f:
            col = f[key]
            if not isinstance(col, h5py.Dataset) or col.ndim != 1 or not np.issubdtype(col.dtype, np.number):
                raise UserError(
                    f"{where(key)} must be a 1-D numeric array, got {getattr(col, 'shape', None)} {getattr(col, 'dtype', None)}"
                )
            _check_length(path, key, col, n)
    if ("ra" in f) != ("dec" in f):
        raise UserError(f"{path}: has only one of `ra` and `dec`; sky positions need both")

    if "flux" in f:
        flux = f["flux"]
        if not isinstance(flux, h5py.Dataset) or flux.ndim != 4 or not np.issubdtype(flux.dtype, np.floating):
            raise UserError(
                f"{where('flux')} must be (N, bands, H, W) floating nanomaggies, got {getattr(flux, 'shape', None)} {getattr(flux, 'dtype', None)}"
            )
        _check_length(path, "flux", flux, n)
        bands = flux.attrs.get("bands")
        if bands is not None and len(bands) != flux.shape[1]:
            raise UserError(f"{where('flux')} has {flux.shape[1]} bands but its `bands` attribute names {len(bands)}")
    return release


def _check_length(path: Path, key: str, dataset: h5py.Dataset, n: int) -> None:
    if len(dataset) != n:
        raise UserError(f"{path}: `{key}` has {len(dataset)} rows but `images` has {n}")


def _plain(value):
    """An HDF5 attribute as something JSON can hold."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__

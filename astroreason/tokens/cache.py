"""The token cache: codes for every row of a prepared split manifest, encoded once and reused by every later step.

A cache is a directory with `codes.safetensors` (`rows`: source row indices, `codes`: [N, H', W'] ids) and
`meta.json`, keyed by the manifest hash, the source data hash and the codec hash. `load_codes` refuses a cache whose
key does not match the data and codec in hand: a changed codec or dataset never reuses stale codes. By default it
lives in the prepared directory, `tokens/<codec name>-<codec hash[:12]>/`.

`token_split` turns a split into the token arm's dataset with the same rows, in the same order, as the image arm's
`load_split` (restricted, for a galaxy10-aion flux source, to the galaxies that have flux; `matched_image_split`
gives the image arm exactly those). A spectra prepared directory works the same way with a spectrum codec: its codes
are one-row grids [N, 1, L'] read from the split views, every row of every split.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..data.sources import open_source
from ..data.spectra.splits import iter_split_spectra
from ..data.splits import SPLITS_DIR, load_manifest, load_split, source_path, split_path
from ..errors import UserError
from ..io import atomic_path, read_json_file, require_keys, sha256_file, write_json_atomic
from .codec import Codec, check_bands, input_key, read_inputs
from .loading import load_codec
from .render import check_rendering, render

CODES_NAME = "codes.safetensors"
META_NAME = "meta.json"
CACHE_VERSION = 1


def _manifest(prepared_dir):

    return load_manifest(prepared_dir)


def manifest_rows(manifest) -> np.ndarray:
    """Every source row named by the manifest, sorted, each once."""
    return np.unique(np.concatenate([np.asarray(r, dtype=np.int64) for r in manifest.rows.values()]))


def _file_stat(path) -> dict:
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _source_stat(source) -> dict:
    """What `_unchanged` compares later: the HDF5 file's stat, or the stat of every file of a dataset directory."""
    if source.format == "hdf5":
        return _file_stat(source.path)
    return {"path": str(Path(source.path).resolve()), "files": [_file_stat(f) for f in source.files]}


def _file_unchanged(recorded: dict) -> bool:
    """A file still holds what was recorded (its stat and `sha256`): same size and mtime, or else the same hash."""
    path = Path(recorded["path"])
    if not path.is_file():
        return False
    if _file_stat(path) == {k: recorded[k] for k in ("path", "size", "mtime_ns")}:
        return True
    return path.stat().st_size == recorded["size"] and sha256_file(path) == recorded["sha256"]


def _unchanged(recorded: dict, sha256: str) -> bool:
    """A source still holds what was recorded: same sizes and mtimes, or else (touched, copied) the same hash."""
    path = Path(recorded["path"])
    if "files" in recorded and all("sha256" in f for f in recorded["files"]):  # a spectra prepared dir's views
        return all(_file_unchanged(f) for f in recorded["files"])
    if "files" in recorded:  # a dataset directory: its files' stats, else its content fingerprint
        if all(Path(f["path"]).is_file() and _file_stat(f["path"]) == f for f in recorded["files"]):
            return True
        try:
            with open_source(path) as source:
                return source.sha256() == sha256
        except UserError:
            return False
    if not path.is_file():
        return False
    st = path.stat()
    if st.st_size == recorded["size"] and st.st_mtime_ns == recorded["mtime_ns"]:
        return True
    return st.st_size == recorded["size"] and sha256_file(path) == sha256


def default_cache_dir(prepared_dir, codec: Codec) -> Path:
    return Path(prepared_dir) / "tokens" / f"{codec.name}-{codec.codec_hash[:12]}"


class TokenCache:
    """Codes of one codec for the rows of one prepared manifest."""

    def __init__(self, path: Path, rows: np.ndarray, codes: np.ndarray, meta: dict):
        self.path, self.rows, self.codes, self.meta = path, rows, codes, meta
        self._position = {int(r): i for i, r in enumerate(rows)}

    def __contains__(self, row) -> bool:
        return int(row) in self._position

    def codes_for(self, rows) -> np.ndarray:
        """Codes [n, H', W'] for source rows, in the order given; refuses a row the cache does not hold."""
        try:
            return self.codes[[self._position[int(r)] for r in rows]]
        except KeyError as err:
            raise UserError(f"{self.path}: no codes for source row {err.args[0]}") from None


CACHE_KEYS = ("manifest_hash", "source_sha256", "codec_hash")  # `_key`: what the codes were made from


def _key(manifest, codec: Codec) -> dict:
    return {
        "manifest_hash": manifest.hash,
        "source_sha256": manifest.source_sha256,
        "codec_hash": codec.codec_hash,
    }


def encode_prepared(
    prepared_dir,
    codec,
    *,
    out=None,
    flux_source=None,
    batch_size: int = 256,
    force: bool = False,
    progress: bool = False,
) -> Path:
    """Encode every row of a prepared manifest once and write the cache (atomically); returns its directory.

    The codec's input is read from the source (`open_source`: an HDF5 file or a Hub-layout dataset): its flux (the
    `flux` key, galaxy10-aion's `image_bands`) for flux codecs, its images (`images`, `image_rgb`) for rgb codecs,
    a batch at a time (`progress`: a bar over the batches). Or, with
    `flux_source`, from a local galaxy10-aion copy joined by Galaxy10 row: rows without flux are left out, and a
    row whose label there disagrees with the source file's is refused. A spectra prepared directory (its manifest's
    `spectra`) is read from its split views, split by split, by a spectrum codec (`_encode_spectra`); a codec of the
    other kind is refused. An up-to-date cache is kept unless `force`; a cache at `out` made for other data or another codec is
    refused (one line) unless `force`, so stale codes are never served and a shared cache is never clobbered.
    """
    from safetensors.numpy import save_file

    codec = load_codec(codec)
    prepared_dir = Path(prepared_dir)
    manifest = _manifest(prepared_dir)
    out = Path(out) if out else default_cache_dir(prepared_dir, codec)
    key = _key(manifest, codec)
    if not force and (out / META_NAME).is_file():
        try:
            load_codes(out, codec, prepared_dir=prepared_dir)
            return out  # up to date: written once, reused
        except UserError as err:
            # Never overwrite silently: the cache may serve another prepared directory or codec.
            raise UserError(f"{err} (or pass --force to overwrite {out})") from None
    _check_kind(prepared_dir, manifest, codec)
    meta = {"version": CACHE_VERSION, **key, "codec_name": codec.name, "vocab_size": codec.vocab_size}
    meta.update(grid_shape=list(codec.grid_shape), input_spec=codec.input_spec.to_json())
    meta["prepared_dir"] = str(prepared_dir.resolve())
    if manifest.spectra is not None:
        if flux_source is not None:
            raise UserError("--flux-source: a spectra prepared directory's spectra come from its split views")
        rows, codes = _encode_spectra(prepared_dir, codec, manifest, meta, batch_size, progress)
    else:
        path = source_path(manifest, prepared_dir)
        if not path.exists():
            raise UserError(f"{path}: source data of {prepared_dir} not found")
        with open_source(path) as source:
            if source.sha256() != manifest.source_sha256:
                raise UserError(
                    f"{path}: changed since {prepared_dir} was prepared (its hash differs); prepare it again"
                )
            meta["source"] = _source_stat(source)
            rows = manifest_rows(manifest)
            rows, codes = _encode_rows(source, rows, codec, manifest, meta, flux_source, batch_size, progress)
    meta["n_rows"] = int(len(rows))
    meta["n_manifest_rows"] = int(len(manifest_rows(manifest)))
    with atomic_path(out) as tmp:
        tmp.mkdir()
        save_file({"rows": rows.astype(np.int64), "codes": codes.astype(np.int32)}, str(tmp / CODES_NAME))
        write_json_atomic(tmp / META_NAME, meta)
    return out


def _check_kind(prepared_dir, manifest, codec) -> None:
    """A spectrum codec reads a spectra prepared directory, an image codec an image one."""
    spectra, spectrum_codec = manifest.spectra is not None, codec.input_spec.kind == "spectrum"
    if spectra != spectrum_codec:
        what = "spectra" if spectra else "images"
        raise UserError(
            f"{prepared_dir}: a prepared directory of {what}; codec {codec.name} takes {codec.input_spec.kind} input"
        )


def _encode_spectra(prepared_dir, codec, manifest, meta, batch_size, progress):
    """(rows, codes) of a spectra prepared directory: each split's view encoded in the manifest's order.

    The views hold the spectra (Angstrom, as `data prepare` read them), so the source dataset is not needed; the
    cache records the views' stat and hash in `source`, and `load_codes` refuses codes of views changed since."""
    meta["input"] = "split views"
    meta["source"] = {
        "path": str((prepared_dir / SPLITS_DIR).resolve()),
        "files": [
            {**_file_stat(split_path(prepared_dir, s)), "sha256": sha256_file(split_path(prepared_dir, s))}
            for s in manifest.rows
        ],
    }
    rows = np.concatenate([np.asarray(r, np.int64) for r in manifest.rows.values()])
    batches = (
        batch
        for split in manifest.rows
        for batch in iter_split_spectra(prepared_dir, split, manifest=manifest, batch_size=batch_size)
    )
    where = str(prepared_dir / SPLITS_DIR)
    return rows, codec.encode_batches(batches, source=where, total=len(rows), progress=progress)


def _encode_rows(source, rows, codec, manifest, meta, flux_source, batch_size, progress):
    """(rows encoded, their codes): from the source itself, or from a galaxy10-aion copy joined by Galaxy10 row."""
    if flux_source is None:
        key = input_key(source, codec.input_spec)
        batches = read_inputs(source, rows, codec.input_spec, batch_size=batch_size)
        where = f"{source.path}:{key}"
        meta["input"] = f"source:{key}"
    else:
        # lazy: optional extra (polymathic-aion)
        from .aion import Galaxy10AionFlux

        if codec.input_spec.kind != "flux":
            raise UserError(f"--flux-source: codec {codec.name} takes rgb images, not flux")
        flux = Galaxy10AionFlux(flux_source)
        check_bands(flux.bands, codec.input_spec, source=str(flux.path))
        positions = flux.positions_of(rows)
        rows, positions = rows[positions >= 0], positions[positions >= 0]
        if not len(rows):
            raise UserError(
                f"{flux.path}: none of the {len(manifest_rows(manifest))} manifest rows has a flux cutout; wrong index column?"
            )
        _check_labels(flux, positions, source, rows)
        batches = (flux.flux(positions[i : i + batch_size]) for i in range(0, len(positions), batch_size))
        where = f"{flux.path}:{flux.flux_column}"
        meta["input"] = "galaxy10-aion"
        meta["flux_source"] = {**flux.fingerprint(), "files": [_file_stat(f) for f in flux.files]}
    if not len(rows):
        return rows, np.zeros((0, *codec.grid_shape), np.int32)
    return rows, codec.encode_batches(batches, source=where, total=len(rows), progress=progress)


def _check_labels(flux, positions, source, rows) -> None:
    """The join is by row index: a label that disagrees with the source file means the index is not Galaxy10's."""
    if flux.labels is None:
        return
    ans = source.labels[np.asarray(rows)]
    bad = np.flatnonzero(flux.labels[positions] != ans)
    if len(bad):
        i = bad[0]
        raise UserError(
            f"{flux.path}: {len(bad)} of {len(rows)} joined galaxies disagree on the label with {source.path} "
            f"(Galaxy10 row {int(rows[i])}: {int(flux.labels[positions[i]])} vs {int(ans[i])}); is {flux.index_column} a Galaxy10 row index?"
        )


def load_codes(path, codec, *, prepared_dir=None, manifest=None) -> TokenCache:
    """Open a token cache (or the default one of a prepared directory), refusing one built for other data or codec.

    `path` is a cache directory or a prepared directory. The data key is checked against `prepared_dir` when given,
    else against the prepared directory the cache was built from; `manifest` is that directory's manifest when the
    caller has loaded it already.
    """
    from safetensors.numpy import load_file

    codec = load_codec(codec)
    path = Path(path)
    if not (path / META_NAME).is_file():
        prepared_dir = prepared_dir or path
        path = default_cache_dir(path, codec)
        if not (path / META_NAME).is_file():
            raise UserError(
                f"{prepared_dir}: no token cache for codec {codec.name} ({codec.codec_hash[:12]}); "
                f"run: astroreason tokens encode --data {prepared_dir} --codec DIR"
            )
    meta = read_json_file(path / META_NAME, "token cache record", keys=("version",))
    if meta.get("version") != CACHE_VERSION:
        raise UserError(
            f"{path}: token cache version {meta.get('version')}, expected {CACHE_VERSION}; re-run tokens encode"
        )
    require_keys(meta, (*CACHE_KEYS, "source"), str(path / META_NAME), "token cache record")
    if meta["codec_hash"] != codec.codec_hash:
        raise UserError(
            f"{path}: codes were made by codec {meta.get('codec_name')} ({meta['codec_hash'][:12]}), not {codec.name} "
            f"({codec.codec_hash[:12]}); re-run tokens encode"
        )
    prepared_dir = Path(prepared_dir or meta["prepared_dir"])
    manifest = _manifest(prepared_dir) if manifest is None else manifest
    for field, now in _key(manifest, codec).items():
        if meta[field] != now:
            raise UserError(
                f"{path}: built for other data ({field} {meta[field][:12]} != {now[:12]} of {prepared_dir}); re-run tokens encode"
            )
    if not _unchanged(meta["source"], manifest.source_sha256):
        raise UserError(
            f"{meta['source']['path']}: source data changed since the codes were made; re-prepare and re-encode"
        )
    if "flux_source" in meta:
        # lazy: optional extra (polymathic-aion)
        from .aion import Galaxy10AionFlux

        recorded = meta["flux_source"]
        files = recorded["files"]
        if not all(
            Path(f["path"]).is_file()
            and os.stat(f["path"]).st_size == f["size"]
            and os.stat(f["path"]).st_mtime_ns == f["mtime_ns"]
            for f in files
        ):
            if Galaxy10AionFlux(recorded["path"]).fingerprint()["sha256"] != recorded["sha256"]:
                raise UserError(
                    f"{recorded['path']}: flux source changed since the codes were made; re-run tokens encode"
                )
    arrays = load_file(str(path / CODES_NAME))
    rows, codes = arrays["rows"], arrays["codes"]
    if codes.shape[1:] != tuple(codec.grid_shape) or len(rows) != len(codes):
        raise UserError(f"{path / CODES_NAME}: codes of shape {codes.shape} do not fit codec grid {codec.grid_shape}")
    return TokenCache(path, rows, codes, meta)


def _split_positions(prepared_dir, split: str, cache: TokenCache, manifest) -> np.ndarray:
    if split not in manifest.rows:
        raise UserError(f"split: {prepared_dir} has no split {split!r} (has {', '.join(manifest.rows)})")
    rows = np.asarray(manifest.rows[split], dtype=np.int64)
    if cache.meta.get("input") != "galaxy10-aion":
        return np.arange(len(rows))
    return np.flatnonzero([r in cache for r in rows])


def _opened(prepared_dir, codec, cache_dir, cache, manifest):
    """(codec, cache, manifest) of a split function's arguments, each loaded only when the caller has not."""
    codec = load_codec(codec)
    manifest = _manifest(prepared_dir) if manifest is None else manifest
    if cache is None:
        cache = load_codes(cache_dir or prepared_dir, codec, prepared_dir=prepared_dir, manifest=manifest)
    return codec, cache, manifest


def split_positions(prepared_dir, split: str, codec, *, cache_dir=None, cache=None, manifest=None) -> np.ndarray:
    """The positions in the split of the rows `token_split` holds (all of them, or for a galaxy10-aion cache those
    with flux), in its order. `cache` and `manifest`: the opened cache and manifest, when the caller has them."""
    _, cache, manifest = _opened(prepared_dir, codec, cache_dir, cache, manifest)
    return _split_positions(prepared_dir, split, cache, manifest)


def token_split(prepared_dir, split: str, codec, rendering: str, *, cache_dir=None, cache=None, manifest=None):
    """The token arm's dataset for one split: columns `tokens_text`, `label`, `label_name`.

    Same rows, same order as `load_split(prepared_dir, split)` (for a galaxy10-aion cache: those rows that have flux,
    the same as `matched_image_split`). The text holds the codes only. Codes come from the prepared directory's
    default cache, or from `cache_dir` (checked against `prepared_dir`), or the opened `cache`.
    """

    check_rendering(rendering)
    _, cache, manifest = _opened(prepared_dir, codec, cache_dir, cache, manifest)
    positions = _split_positions(prepared_dir, split, cache, manifest)
    rows = np.asarray(manifest.rows[split], dtype=np.int64)[positions]
    texts = [render(grid, rendering) for grid in cache.codes_for(rows)]
    labels = load_split(prepared_dir, split, manifest=manifest).select_columns(["label", "label_name"])
    labels = labels.select(positions)
    return labels.add_column("tokens_text", texts).select_columns(["tokens_text", "label", "label_name"])


def matched_image_split(prepared_dir, split: str, codec, *, cache_dir=None, cache=None, manifest=None):
    """The image arm's `load_split` restricted to the galaxies `token_split` holds, in the same order."""

    _, cache, manifest = _opened(prepared_dir, codec, cache_dir, cache, manifest)
    positions = _split_positions(prepared_dir, split, cache, manifest)
    return load_split(prepared_dir, split, manifest=manifest).select(positions)

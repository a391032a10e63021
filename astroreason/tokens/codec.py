"""The codec interface: a galaxy (RGB image or multi-band flux) or a spectrum <-> an integer grid of discrete tokens.

Every codec (the built-in FSQ autoencoder, the AION-1 adapter) has the same surface: `encode` a batch into an
integer grid [B, H', W'], `decode` it back into the input's units, its `vocab_size`, `grid_shape`, `input_spec` and a
stable `codec_hash` (config + weights) that keys the token cache. `load_codec(path)` opens any kind from a local
directory. A spectrum codec's grid is one row, [B, 1, L'], so the renderings and the prompt cost take it unchanged.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..data.galaxy10 import FLUX_BANDS
from ..data.sources import open_source
from ..errors import UserError
from ..io import read_json_file

CONFIG_NAME = "codec.json"
WEIGHTS_NAME = "model.safetensors"
METRICS_NAME = "metrics.json"


@dataclass(frozen=True)
class InputSpec:
    """What a codec eats.

    Args:
        kind: `rgb`: uint8 images [B, H, W, 3], the Galaxy10 `images` key. `flux`: float flux in nanomaggies
            [B, C, H, W], the Galaxy10-schema `flux` key or the galaxy10-aion cutouts.
        channels: 3 for `rgb`; the number of bands for `flux`.
        size: Side in pixels the codec works at. Inputs must be square. Larger inputs are resized (`rgb`, keeping
            the field of view, as the image arm does) or centre-cropped (`flux`, as AION does); smaller inputs are
            refused.
        bands: Band names of a `flux` input, in channel order.
        wavelength_range: A `spectrum` input's grid, (first, last) pixel centre in Angstrom: the codec resamples
            each spectrum onto `size` pixels between them (`kind` `spectrum`, channels 1), uniform in log wavelength
            for the built-in codec, linear for AION-1's.
    """

    kind: Literal["rgb", "flux", "spectrum"]
    channels: int
    size: int
    bands: tuple[str, ...] = ()
    wavelength_range: tuple[float, ...] = ()

    def __post_init__(self):
        if self.kind not in ("rgb", "flux", "spectrum"):
            raise UserError(f"input kind: expected rgb, flux or spectrum, got {self.kind!r}")
        if self.kind == "spectrum":
            lo_hi = self.wavelength_range
            if self.channels != 1:
                raise UserError(f"input channels: a spectrum codec takes 1 channel, got {self.channels}")
            if len(lo_hi) != 2 or not 0 < lo_hi[0] < lo_hi[1]:
                raise UserError(f"input wavelength_range: expected (min, max) Angstrom with 0 < min < max, got {lo_hi}")
            if self.size < 2:
                raise UserError(f"input size: a spectrum grid needs at least 2 pixels, got {self.size}")
        elif self.wavelength_range:
            raise UserError(f"input wavelength_range: only a spectrum input has one, not {self.kind}")
        if self.kind == "rgb" and self.channels != 3:
            raise UserError(f"input channels: an rgb codec takes 3 channels, got {self.channels}")
        if self.kind == "flux" and len(self.bands) != self.channels:
            raise UserError(
                f"input bands: {self.channels} channels need {self.channels} band names, got {list(self.bands)}"
            )

    @property
    def h5_key(self) -> str:
        """The Galaxy10-schema HDF5 key this input is read from."""
        return "images" if self.kind == "rgb" else "flux"

    def to_json(self) -> dict:
        obj = {**asdict(self), "bands": list(self.bands), "wavelength_range": list(self.wavelength_range)}
        if self.kind != "spectrum":  # image codecs' JSON as before the field existed (their caches record it)
            del obj["wavelength_range"]
        return obj

    @classmethod
    def from_json(cls, obj: dict) -> InputSpec:
        return cls(
            kind=obj["kind"],
            channels=int(obj["channels"]),
            size=int(obj["size"]),
            bands=tuple(obj.get("bands", ())),
            wavelength_range=tuple(float(v) for v in obj.get("wavelength_range", ())),
        )


def flux_spec(size: int = 96, bands: Sequence[str] = FLUX_BANDS) -> InputSpec:
    return InputSpec(kind="flux", channels=len(bands), size=size, bands=tuple(bands))


def rgb_spec(size: int = 96) -> InputSpec:
    return InputSpec(kind="rgb", channels=3, size=size)


class Codec(ABC):
    """A discrete image tokenizer. Subclasses set `input_spec`, `vocab_size`, `grid_shape` and implement the rest."""

    name: str
    input_spec: InputSpec
    vocab_size: int
    grid_shape: tuple[int, int]

    @property
    @abstractmethod
    def codec_hash(self) -> str:
        """SHA-256 of what determines the codes (config and weights): a changed codec never reuses cached codes."""

    @abstractmethod
    def _encode(self, x: np.ndarray) -> np.ndarray:
        """Encode inputs already checked and fitted to `input_spec` (see `fit_inputs`) -> int [B, H', W']."""

    def fit_inputs(self, x, *, source: str = "input") -> np.ndarray:
        """Check a batch and fit it to what `_encode` takes: `check_inputs` for images; a spectrum codec resamples."""
        return check_inputs(x, self.input_spec, source=source)

    @abstractmethod
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes [B, H', W'] -> inputs in the codec's units: uint8 [B, S, S, 3] (rgb) or nanomaggies [B, C, S, S]."""

    default_batch_size: int = 256  # inputs per forward pass when `encode` is given more; AION's is smaller

    def encode(self, x, *, source: str = "input", batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Inputs in the layout of `input_spec` -> int32 codes [B, H', W'], each in [0, vocab_size).

        `source` names the inputs in error messages (a file and key, usually). The inputs are checked whole first (a
        bad row fails before minutes of encoding), then encoded `batch_size` at a time (default
        `default_batch_size`), with a progress bar on stderr when `progress` is true.
        """
        x = self.fit_inputs(x, source=source)
        size = batch_size or self.default_batch_size
        if size < 1:
            raise UserError(f"batch size: must be at least 1, got {size}")
        batches = (x[i : i + size] for i in range(0, len(x), size))
        return self._encode_all(batches, source=source, total=len(x), progress=progress, fitted=True)

    def encode_batches(
        self, batches, *, source: str = "input", total: int | None = None, progress: bool = False
    ) -> np.ndarray:
        """Encode an iterable of input batches (e.g. `read_inputs`, read lazily) into one int32 array [N, H', W'].

        Each batch is checked as `encode` checks it. `total` (inputs over all batches) sizes the progress bar.
        """
        return self._encode_all(batches, source=source, total=total, progress=progress, fitted=False)

    def _encode_all(self, batches, *, source: str, total: int | None, progress: bool, fitted: bool) -> np.ndarray:
        out = []
        bar = _progress_bar(f"encoding ({self.name})", total) if progress else None
        with bar if bar is not None else contextlib.nullcontext():
            for batch in batches:
                x = batch if fitted else self.fit_inputs(batch, source=source)
                out.append(self._encode_fitted(x))
                if bar is not None:
                    bar.advance(bar.task_ids[0], len(x))
        return np.concatenate(out) if out else np.zeros((0, *self.grid_shape), np.int32)

    def _encode_fitted(self, x: np.ndarray) -> np.ndarray:
        codes = np.asarray(self._encode(x))
        expected = (len(codes), *self.grid_shape)
        if codes.shape != expected or codes.size and not (0 <= codes.min() and codes.max() < self.vocab_size):
            raise UserError(
                f"codec {self.name}: produced codes of shape {codes.shape} in [{codes.min()}, {codes.max()}], "
                f"expected {expected} in [0, {self.vocab_size - 1}]"
            )
        return codes.astype(np.int32, copy=False)

    def describe(self) -> str:
        s = self.input_spec
        if s.kind == "spectrum":
            shape = f"{s.size} px {s.wavelength_range[0]:g}-{s.wavelength_range[1]:g} A"
        else:
            shape = f"{s.channels}x{s.size}x{s.size}"
        return (
            f"{self.name}: {s.kind} {shape} -> {self.grid_shape[0]}x{self.grid_shape[1]} codes, "
            f"vocabulary {self.vocab_size}, hash {self.codec_hash[:12]}"
        )


def _progress_bar(description: str, total: int | None):
    """A rich progress bar on a terminal's stderr (stdout stays for the command's result lines), transient; None when
    stderr is not a terminal: a log or a test keeps only the command's own lines (an error stays one line)."""
    # lazy: rich loads only when a bar is asked for
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    if not console.is_terminal:
        return None
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    bar.add_task(description, total=total)
    return bar


def check_bands(bands: Sequence[str], spec: InputSpec, *, source: str) -> None:
    """Refuse flux whose bands are not the codec's, in the codec's order (one line naming both)."""
    bands = [b.decode() if isinstance(b, bytes) else str(b) for b in bands]
    if spec.kind == "flux" and list(bands) != list(spec.bands):
        raise UserError(f"{source}: bands {bands} do not match the codec's {list(spec.bands)} (count and order)")


def check_inputs(x, spec: InputSpec, *, source: str = "input") -> np.ndarray:
    """Validate a batch against `spec` and fit it to the codec's size; a copy, never the caller's array.

    rgb: uint8 [B, H, W, 3], resized to `spec.size` with antialiasing when larger. flux: finite float nanomaggies
    [B, C, H, W], centre-cropped to `spec.size` when larger (what AION does itself). Refused: smaller inputs (AION
    silently mis-crops them), non-square ones, and "flux" that is 8-bit image levels (an integer dtype, or float
    values that are all whole numbers in [0, 255]).
    """
    import torch

    if spec.kind == "spectrum":
        raise UserError(f"{source}: a spectrum codec takes (wavelength, flux[, ivar]) per row, not image arrays")
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 4:
        raise UserError(f"{source}: expected a batch of 4 dimensions, got shape {arr.shape}")
    if spec.kind == "rgb":
        if arr.shape[-1] != 3:
            raise UserError(f"{source}: an rgb codec takes [B, H, W, 3] images, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise UserError(f"{source}: an rgb codec takes uint8 images, got {arr.dtype}")
        height, width = arr.shape[1:3]
    else:
        if arr.shape[1] != spec.channels:
            raise UserError(
                f"{source}: the codec takes {spec.channels} bands {list(spec.bands)}, got {arr.shape[1]} (shape {arr.shape})"
            )
        if not np.issubdtype(arr.dtype, np.floating):
            raise UserError(
                f"{source}: flux must be floating point nanomaggies, got {arr.dtype} (8-bit or integer images are "
                "not flux; an rgb codec takes those)"
            )
        bad = ~np.isfinite(arr)
        if bad.any():
            first = np.argwhere(bad)[0]
            raise UserError(
                f"{source}: {int(bad.sum())} NaN or infinite flux values (first at batch row {first[0]}, band {first[1]})"
            )
        if _looks_8bit(arr):
            raise UserError(
                f"{source}: flux values are all whole numbers in [0, 255] (max {arr.max():g}): 8-bit image levels, "
                "not nanomaggies; convert to calibrated flux first"
            )
        height, width = arr.shape[2:4]
    if height != width:
        raise UserError(f"{source}: images are {height}x{width} px, not square; the codec takes square cutouts")
    if min(height, width) < spec.size:
        raise UserError(
            f"{source}: images are {height}x{width} px, smaller than the codec's {spec.size} px input; refusing to pad"
        )
    if spec.kind == "rgb":
        return _resize_rgb(arr, spec.size)
    top, left = (height - spec.size) // 2, (width - spec.size) // 2
    return np.array(arr[:, :, top : top + spec.size, left : left + spec.size], dtype=np.float32)


def _looks_8bit(flux: np.ndarray) -> bool:
    """Whether float "flux" is really 8-bit image levels: every value a whole number in [0, 255], some above 1.

    Calibrated nanomaggies are real numbers with sky noise around zero (negative values included), so a batch of
    whole numbers only is not flux. The `> 1` keeps an all-zero (or 0/1 mask-like) batch out of this rule.
    """
    return bool(
        flux.size and flux.min() >= 0 and flux.max() <= 255 and flux.max() > 1 and (flux == np.round(flux)).all()
    )


def _resize_rgb(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1:3] == (size, size):
        return images.copy()
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def read_inputs(source, rows: Sequence[int], spec: InputSpec, *, batch_size: int = 256) -> Iterator[np.ndarray]:
    """Yield the codec's input for source rows, in the order given, `batch_size` rows at a time.

    `source` is a path `open_source` opens (a Galaxy10-schema HDF5 file, a Hub-layout dataset such as galaxy10-aion)
    or a source already open. A flux codec reads the `flux` key (HDF5) or the `image_bands` column; an rgb codec
    the `images` key or the `image_rgb` (`image`) column. Reads lazily: a 3 GB file is never loaded whole. Band
    names come from the `flux` key's `bands` attribute; without one (and for galaxy10-aion) g, r, i, z is assumed.
    """
    if getattr(source, "format", None) == "hdf5":
        source = source.path  # the one key read directly, as for a path
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        yield from _read_hdf5_inputs(source, rows, spec, batch_size=batch_size)
        return
    if isinstance(source, (str, os.PathLike)):
        with open_source(source) as src:
            yield from read_inputs(src, rows, spec, batch_size=batch_size)
        return
    src = source
    if spec.kind == "flux":
        if not src.has_flux:
            raise UserError(
                f"{src.path}: no `{src.flux_key}` data; a flux codec needs it (keys: {', '.join(sorted(src.keys))})"
            )
        check_bands(list(src.flux_bands), spec, source=f"{src.path}:{src.flux_key}")
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= src.n_rows):
        bad = int(rows.max() if rows.max() >= src.n_rows else rows.min())
        raise UserError(f"{src.path}: row {bad} out of range for {src.n_rows} rows")
    read = src.flux_rows if spec.kind == "flux" else src.image_rows
    for start in range(0, len(rows), batch_size):
        yield read(rows[start : start + batch_size])


def _read_hdf5_inputs(path, rows: Sequence[int], spec: InputSpec, *, batch_size: int) -> Iterator[np.ndarray]:
    """`read_inputs` for an HDF5 path: only the one key is needed (the file need not carry the full schema)."""
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, FileNotFoundError) as err:
        raise UserError(f"{path}: cannot open as HDF5 ({err})") from None
    with f:
        key = spec.h5_key
        if key not in f:
            raise UserError(f"{path}: no `{key}` key; a {spec.kind} codec needs it (keys: {', '.join(sorted(f))})")
        data = f[key]
        if spec.kind == "flux":
            bands = data.attrs.get("bands", f.attrs.get("bands", FLUX_BANDS))
            check_bands(list(bands), spec, source=f"{path}:{key}")
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(data)):
            raise UserError(f"{path}:{key}: row {int(rows.max())} out of range for {len(data)} rows")
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            order = np.argsort(chunk, kind="stable")
            unique, inverse = np.unique(chunk[order], return_inverse=True)
            block = data[unique][inverse]  # h5py wants increasing, unique indices
            out = np.empty_like(block)
            out[order] = block
            yield out


def input_key(source, spec: InputSpec) -> str:
    """The key or column of `source` a codec of `spec` reads (for messages and the cache's record)."""
    return source.flux_key if spec.kind == "flux" else source.image_key


def read_config(path, *, keys: tuple[str, ...] = ("type",)) -> dict:
    """A codec directory's `codec.json` (with `keys`); anything else is one line naming the file."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file():
        raise UserError(f"{path}: no {CONFIG_NAME}; not a codec directory (train one with `astroreason tokens train`)")
    return read_json_file(path / CONFIG_NAME, "codec config", keys=keys)

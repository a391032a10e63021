"""The AION-1 image and spectrum codecs behind the `Codec` interface, and a reader for the galaxy10-aion flux cutouts.

The codecs (optional extra `aion` = PyPI `polymathic-aion`) load from a LOCAL directory: their weights live on the
Hugging Face Hub (polymathic-ai/aion-base, `codecs/image/`, `codecs/spectrum/`), which nothing here reaches. AION's
traps are handled here, not by the caller (docs/facts.md): the image `encode` mutates its input (we pass a copy),
inputs under 96 px are silently mis-cropped (we refuse them), an unknown band raises a bare KeyError (we check band
names first); the spectrum `encode` zeroes NaN flux silently, interpolates a decreasing wavelength grid wrongly and
takes pixels outside its grid as flux 0 (we refuse, flip, and refuse a spectrum wholly outside).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data.galaxy10 import FLUX_BANDS
from ..data.sources import HubSource
from ..errors import UserError
from ..io import read_json_file, sha256_bytes, sha256_file
from .codec import Codec, InputSpec

AION_INPUT_SIZE = 96  # AION centre-crops to 96 px; smaller inputs come out as fewer tokens
AION_HUB_REPO = "polymathic-ai/aion-base"


def how_to_get(kind: str = "image") -> str:
    return (
        f"download it once on a machine with network: hf download {AION_HUB_REPO} --include 'codecs/{kind}/*' "
        "--local-dir DIR, then pass DIR"
    )


HOW_TO_GET = how_to_get()


def _import_aion():
    try:
        from aion.codecs import ImageCodec
        from aion.modalities import LegacySurveyImage
    except ImportError:
        raise UserError(
            "the AION-1 codec needs the optional extra: pip install 'astroreason[aion]' (PyPI polymathic-aion)"
        ) from None
    return ImageCodec, LegacySurveyImage


HUB_CACHE_NAME = "models--" + AION_HUB_REPO.replace("/", "--")


def resolve_snapshot(path: Path, kind: str = "image") -> Path:
    """A local Hugging Face Hub cache of aion-base -> its snapshot folder, offline; any other path as given.

    Accepted: the cache root holding `models--polymathic-ai--aion-base` (e.g. ~/.cache/huggingface/hub), or that
    folder itself. The snapshot is the one `refs/main` names (huggingface_hub's own lookup, `local_files_only`: no
    network); without a usable ref, the one snapshot that holds the codec of `kind` (`image`, `spectrum`).
    """
    if (path / HUB_CACHE_NAME).is_dir():
        path = path / HUB_CACHE_NAME
    snapshots = path / "snapshots"
    if not snapshots.is_dir():
        return path
    # lazy: only a Hub cache folder needs huggingface_hub
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(AION_HUB_REPO, cache_dir=str(path.parent), local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass  # no refs/main (or a cache folder under another name): pick the snapshot by its content
    found = sorted(p for p in snapshots.iterdir() if (p / "codecs" / kind / "config.json").is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(
            f"{path}: no snapshot holds an AION {kind} codec (codecs/{kind}/config.json); {how_to_get(kind)}"
        )
    raise UserError(
        f"{path}: {len(found)} snapshots hold AION {kind} codec ({', '.join(p.name[:12] for p in found)}) and no "
        "refs/main names one; pass the snapshots/<revision> folder to use"
    )


def find_codec_dir(path, kind: str = "image") -> Path:
    """The folder holding AION's `kind` codec `config.json` + `model.safetensors`: under an aion-base snapshot
    root, that `codecs/<kind>` folder itself, or the snapshot a local Hub cache folder points to
    (`resolve_snapshot`)."""
    path = resolve_snapshot(Path(path), kind)
    for candidate in (path / "codecs" / kind, path):
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    raise UserError(
        f"{path}: no AION {kind} codec weights (codecs/{kind}/config.json + model.safetensors); {how_to_get(kind)}"
    )


def aion_codec_kind(path) -> str:
    """Which AION codec a local folder is: `spectrum` for the `codecs/spectrum` folder itself (its config has
    `lambda_min`) or an aion-base copy or Hub cache that holds a spectrum codec and no image codec; else `image`
    (an aion-base copy with both opens its image codec: pass its `codecs/spectrum` folder for the other)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return "spectrum" if "lambda_min" in read_json_file(path / "config.json", "AION codec config") else "image"
    root = path / HUB_CACHE_NAME if (path / HUB_CACHE_NAME).is_dir() else path  # a Hub cache root: only aion-base
    configs = (*root.glob("codecs/*/config.json"), *root.glob("snapshots/*/codecs/*/config.json"))
    held = {p.parent.name for p in configs}
    return "spectrum" if held == {"spectrum"} else "image"


def _load_hub_codec(cls, folder: Path, what: str):
    """AION's codec class `cls` built from `folder`'s `config.json` and its `model.safetensors` loaded strictly
    -> (codec, the config's constructor arguments, the adapter's identity: its `name`, `config_sha256` and
    `weights_sha256` keywords).

    This is what AION's own `cls.from_pretrained(repo, modality=...)` does (huggingface_hub's
    `PyTorchModelHubMixin`: constructor arguments taken from config.json, other keys ignored; weights through
    `safetensors.torch.load_model`), minus the Hub lookup and with `strict=True` (the mixin's default is lenient: a
    mismatched checkpoint would load half-random)."""
    import inspect

    from safetensors.torch import load_model

    config_path, weights = folder / "config.json", folder / "model.safetensors"
    saved = read_json_file(config_path, f"AION {what} config")
    params = inspect.signature(cls.__init__).parameters
    config = {k: v for k, v in saved.items() if k in params and k != "self"}
    try:
        codec = cls(**config)
    except (TypeError, ValueError, AssertionError) as err:
        raise UserError(f"{config_path}: not an AION {what} config ({err})") from None
    try:
        load_model(codec, str(weights), strict=True)
    except (RuntimeError, OSError) as err:
        raise UserError(f"{weights}: does not match {config_path.name} ({str(err).splitlines()[0]})") from None
    identity = {
        "name": codec_name(folder),
        "config_sha256": sha256_file(config_path),
        "weights_sha256": sha256_file(weights),
    }
    return codec, config, identity


def codec_name(folder: Path) -> str:
    """`aion-<root>`: the aion-base copy's folder name, or the Hub repo's name for a Hub cache snapshot."""
    root = folder.parent.parent if folder.parent.name == "codecs" else folder
    if root.parent.name == "snapshots":
        return "aion-" + root.parent.parent.name.split("--")[-1]
    return f"aion-{root.name}"


def _codes_tensor(codes, grid_shape: tuple[int, int]):
    """Codes [B, *grid_shape] as the long tensor AION decodes; any other shape refused in one line."""
    import torch

    codes = torch.as_tensor(np.asarray(codes), dtype=torch.long)
    if codes.ndim != 3 or tuple(codes.shape[1:]) != tuple(grid_shape):
        raise UserError(f"codes: expected [B, {grid_shape[0]}, {grid_shape[1]}], got {list(codes.shape)}")
    return codes


class AionCodec(Codec):
    """AION-1's image codec: 4-band DES g,r,i,z flux in nanomaggies, 96 px -> 24x24 = 576 ids in [0, 4374].

    Inputs larger than 96 px are centre-cropped to 96 px (AION's own behaviour, done before AION sees them);
    smaller or non-square ones, other bands and 8-bit image levels are refused (`check_inputs`, `check_bands`).
    """

    default_batch_size = 32  # the released codec is ~70 M parameters: ~0.4 s a cutout on one CPU core

    def __init__(self, codec, config: dict, *, name: str, config_sha256: str, weights_sha256: str):
        self.codec = codec.eval()
        self.name = name
        self.config = config
        self.input_spec = InputSpec(
            kind="flux", channels=len(FLUX_BANDS), size=AION_INPUT_SIZE, bands=tuple(FLUX_BANDS)
        )
        self.vocab_size = math.prod(config["quantizer_levels"])
        side = AION_INPUT_SIZE // 2 ** int(config.get("n_compressions", 2))
        self.grid_shape = (side, side)
        self._hash = sha256_bytes("aion-image", config_sha256, weights_sha256)

    @property
    def codec_hash(self) -> str:
        return self._hash

    @classmethod
    def load(cls, path) -> AionCodec:
        """Build AION's `ImageCodec` from its local `config.json` and load `model.safetensors` strictly
        (`_load_hub_codec`)."""
        ImageCodec, _ = _import_aion()
        folder = find_codec_dir(path)
        read_json_file(folder / "config.json", "AION ImageCodec config", keys=("quantizer_levels",))
        codec, config, identity = _load_hub_codec(ImageCodec, folder, "ImageCodec")
        return cls(codec, config, **identity)

    def _encode(self, x: np.ndarray) -> np.ndarray:
        import torch

        _, LegacySurveyImage = _import_aion()
        # A fresh tensor: AION's Clamp writes into its input (a view of the caller's tensor after the centre crop).
        flux = torch.tensor(x, dtype=torch.float32)
        with torch.inference_mode():
            tokens = self.codec.encode(LegacySurveyImage(flux=flux, bands=list(self.input_spec.bands)))
        n = self.grid_shape[0] * self.grid_shape[1]
        if tokens.ndim != 2 or tokens.shape[1] != n:
            raise UserError(f"AION codec {self.name}: produced {tuple(tokens.shape)} tokens, expected [B, {n}]")
        return tokens.reshape(len(tokens), *self.grid_shape).numpy()

    def decode(self, codes) -> np.ndarray:
        import torch

        codes = _codes_tensor(codes, self.grid_shape)
        with torch.inference_mode():
            image = self.codec.decode(codes.reshape(len(codes), -1), bands=list(self.input_spec.bands))
        return image.flux.numpy()


class AionSpectrumCodec(Codec):
    """AION-1's spectrum codec: (wavelength, flux, ivar) -> one normalisation token then the spectrum's codes, a
    one-row grid [B, 1, 1 + L] (273 ids with `SpectrumCodec`'s defaults, all in [0, codebook_size)).

    AION interpolates each spectrum linearly onto its own grid (`lambda_min` + `resolution` x pixel, Angstrom: 3500
    to 10462 with its defaults), divides it by its mean flux over unmasked pixels (quantised into the first
    token) and encodes it. Flux is taken in the survey's units (DESI and SDSS: 1e-17 erg/s/cm2/Angstrom); nothing
    here can check that. The mask AION wants is derived from ivar (0: masked). Before AION sees a batch, each row is
    checked as the built-in spectrum codec checks it (`spectrum_fsq.check_row`: finite flux, ivar >= 0, a strictly
    monotonic wavelength overlapping the grid) and flipped to increasing wavelength: AION itself zeroes NaN flux,
    interpolates a decreasing grid wrongly and reads pixels outside its grid as flux 0. Every row of a batch must
    have the same length (AION takes [B, L] tensors); ivar is required (AION encodes the noise as a second channel).
    """

    default_batch_size = 16

    def __init__(self, codec, config: dict, *, name: str, config_sha256: str, weights_sha256: str):
        import torch

        self.codec = codec.eval()
        self.name = name
        self.config = config
        grid = codec.latent_grid.wavelength
        self.input_spec = InputSpec(
            kind="spectrum",
            channels=1,
            size=len(grid),
            wavelength_range=(float(grid[0]), float(grid[-1])),
        )
        self.vocab_size = int(codec.quantizer.codebook_size)
        with torch.inference_mode():  # the encoder's downsampling decides the code length: measured, not assumed
            latent = codec.encoder(torch.zeros(1, 2, len(grid)))
        self.grid_shape = (1, 1 + int(latent.shape[-1]))
        self._hash = sha256_bytes("aion-spectrum", config_sha256, weights_sha256)

    @property
    def codec_hash(self) -> str:
        return self._hash

    @property
    def wavelength(self) -> np.ndarray:
        """AION's grid (Angstrom): where `decode`'s flux lies."""
        return self.codec.latent_grid.wavelength.numpy()

    @classmethod
    def load(cls, path) -> AionSpectrumCodec:
        """Build AION's `SpectrumCodec` from its local `config.json` and load `model.safetensors` strictly
        (`_load_hub_codec`)."""
        try:
            from aion.codecs import SpectrumCodec
        except ImportError:
            _import_aion()  # the one-line message about the extra
            raise
        folder = find_codec_dir(path, "spectrum")
        codec, config, identity = _load_hub_codec(SpectrumCodec, folder, "SpectrumCodec")
        return cls(codec, config, **identity)

    def fit_inputs(self, x, *, source: str = "spectra") -> np.ndarray:
        """Check spectra (see the class) -> float32 [B, 3, P] of (wavelength increasing, flux, ivar)."""
        from .spectrum_fsq import check_row, spectrum_arrays

        wavelength, flux, ivar = spectrum_arrays(x, source)
        if ivar is None:
            raise UserError(f"{source}: the AION spectrum codec needs ivar: pass (wavelength, flux, ivar)")
        if len({len(row) for row in flux}) > 1:
            raise UserError(f"{source}: flux rows differ in length; the AION spectrum codec takes one length a batch")
        grid = self.input_spec.wavelength_range
        rows = [check_row(*parts, i, source, grid) for i, parts in enumerate(zip(wavelength, flux, ivar))]
        return np.array(rows, dtype=np.float32).reshape(len(rows), 3, -1)

    def _encode(self, x: np.ndarray) -> np.ndarray:
        import torch
        from aion.modalities import Spectrum

        wave, flux, ivar = (torch.tensor(x[:, i]) for i in range(3))  # fresh tensors, never the caller's
        spectrum = Spectrum(flux=flux, ivar=ivar, mask=ivar <= 0, wavelength=wave)
        with torch.inference_mode():
            tokens = self.codec.encode(spectrum)
        return tokens.reshape(len(tokens), *self.grid_shape).numpy()

    def decode(self, codes) -> np.ndarray:
        """Codes [B, 1, 1 + L] -> flux [B, pixels] on AION's grid (`wavelength`), in the input's units."""
        import torch

        codes = _codes_tensor(codes, self.grid_shape)
        with torch.inference_mode():
            return self.codec.decode(codes[:, 0]).flux.numpy()


# --- galaxy10-aion: 96x96 g,r,i,z flux cutouts keyed by their Galaxy10 row ------------------------------------------

# Column names tried in order. The public dataset (astronolan/galaxy10-aion, parquet under data/) stores the
# flux as `image_bands` (4 x 96 x 96, g,r,i,z nanomaggies) and the Galaxy10 row as `Galaxy10_DECals_index`.
FLUX_COLUMNS = ("image_bands", "image_flux", "flux", "image")
INDEX_COLUMNS = ("Galaxy10_DECals_index", "galaxy10_index", "g10_index", "index")


class Galaxy10AionFlux:
    """A local copy of galaxy10-aion: `rows` (Galaxy10 row indices) and `flux(positions)` -> [n, 4, 96, 96].

    Accepts a `datasets.save_to_disk` directory (a Dataset or a DatasetDict, all splits concatenated) or a directory
    of parquet files (data/train-*.parquet and data/test-*.parquet), read lazily through `data.sources.HubSource`:
    only the index and label columns are read whole, flux a row group at a time. The flux column is the first of
    FLUX_COLUMNS present, the Galaxy10 index the first of INDEX_COLUMNS. Bands are assumed to be g, r, i, z in that
    order (the dataset card's; the files carry no band names).
    """

    bands = tuple(FLUX_BANDS)

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"{self.path}: galaxy10-aion directory not found")
        source = HubSource(self.path, images=False, flux_columns=FLUX_COLUMNS)
        self.flux_column = source.flux_key if source.has_flux else None
        self.index_column = next((c for c in INDEX_COLUMNS if c in source.columns), None)
        if self.flux_column is None or self.index_column is None:
            raise UserError(
                f"{self.path}: need a flux column ({' or '.join(FLUX_COLUMNS)}) and a Galaxy10 index column "
                f"({' or '.join(INDEX_COLUMNS)}); found {source.columns}"
            )
        self.source = source
        self.files = self._data_files()
        rows = source._whole(self.index_column)
        if rows.dtype == object or not np.issubdtype(rows.dtype, np.integer):
            raise UserError(f"{self.path}:{self.index_column}: must be integer Galaxy10 rows, got {rows.dtype}")
        self.rows = rows.astype(np.int64)
        if len(np.unique(self.rows)) != len(self.rows):
            raise UserError(f"{self.path}:{self.index_column}: the same Galaxy10 row appears more than once")
        self.labels = source.labels

    def _data_files(self) -> list[Path]:
        return sorted(p for p in self.path.rglob("*") if p.is_file() and p.suffix in (".parquet", ".arrow", ".json"))

    def fingerprint(self) -> dict:
        """Names, sizes and one hash of the data files: what the token cache keys on."""
        files = [(str(f.relative_to(self.path)), f.stat().st_size, sha256_file(f)) for f in self.files]
        return {"path": str(self.path.resolve()), "sha256": sha256_bytes(*(f"{n}:{s}:{h}" for n, s, h in files))}

    def flux(self, positions) -> np.ndarray:
        """Flux [n, 4, H, W] float32 for dataset positions (not Galaxy10 rows; see `positions_of`)."""
        return self.source.flux_rows(np.asarray(positions, dtype=np.int64))

    def positions_of(self, galaxy10_rows) -> np.ndarray:
        """Dataset position of each Galaxy10 row, -1 where the row has no flux cutout."""
        lookup = {int(r): i for i, r in enumerate(self.rows)}
        return np.array([lookup.get(int(r), -1) for r in galaxy10_rows], dtype=np.int64)

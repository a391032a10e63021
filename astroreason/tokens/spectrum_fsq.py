"""The built-in spectrum codec: a 1D convolutional autoencoder with the same finite scalar quantiser as the image one.

A spectrum comes as (wavelength in Angstrom, flux[, ivar]) per row, on any grid: the codec resamples it onto its own
grid, `pixels` pixels uniform in log wavelength from `wavelength_min` to `wavelength_max` (a Doppler shift is then
the same shift in pixels everywhere), by averaging the input over each codec pixel (ivar-weighted where ivar is
given, so a fine grid's noise averages down instead of aliasing). Codec pixels the data covers less than
`min_coverage` of (outside its range, or over pixels with ivar 0) are masked. Each spectrum is divided by its median
flux over the unmasked pixels: a class is in a spectrum's shape, not its brightness.

The encoder sees two channels (normalised flux, 0 where masked; the mask), downsamples `downsample` times with
strided convolutions and rounds each position onto the FSQ grid, so 512 pixels become 64 codes from a vocabulary of
prod(levels) (1000 for [8, 5, 5, 5]). Codes are a one-row grid [B, 1, L'], so the renderings, the token cache and
the prompt cost take them as they take an image's. Training minimises the reconstruction's squared error over the
unmasked pixels, weighted by ivar (scaled to mean 1 per spectrum) when ivar is given.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..io import sha256_bytes
from .codec import InputSpec, read_config
from .fsq import FSQ, ChannelNorm, ResBlock, TorchCodec, TrainConfig, codebook_stats, load_weights, run_steps

CODEC_TYPE = "fsq1d"


@dataclass
class SpectrumFSQConfig:
    """Grid, normalisation and architecture of the spectrum codec; everything here enters `codec_hash`.

    Args:
        levels: FSQ levels per latent dimension; the vocabulary is their product ([8, 5, 5, 5] = 1000).
        pixels: Pixels of the codec's grid; a multiple of `downsample`. There are pixels / downsample codes.
        wavelength_min: First pixel centre of the grid, Angstrom (observed frame).
        wavelength_max: Last pixel centre of the grid, Angstrom.
        downsample: Pixels per code, a power of 2 (one stride-2 convolution per factor 2).
        hidden: Channels of the convolutional layers.
        blocks: Residual blocks at the code resolution, in the encoder and in the decoder.
        normalise: How a spectrum is scaled before encoding: `median` (divided by its median flux over the unmasked
            pixels; refused where that median is not positive).
        flux_clip: Normalised flux is clipped to [-flux_clip, flux_clip]: a cosmic ray or a bad pixel stays a bounded
            outlier, while a hot star's blue end (about 10 times its median) keeps its shape.
        min_coverage: Share of a codec pixel that valid input pixels must cover for it to be used; else masked.
    """

    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    pixels: int = 512
    wavelength_min: float = 3600.0
    wavelength_max: float = 9800.0
    downsample: int = 8
    hidden: int = 32
    blocks: int = 1
    normalise: str = "median"
    flux_clip: float = 20.0
    min_coverage: float = 0.5

    def __post_init__(self):
        self.levels = [int(v) for v in self.levels]
        if not self.levels or min(self.levels) < 2:
            raise UserError(f"levels: need at least one level of 2 or more per dimension, got {self.levels}")
        if self.downsample < 1 or self.downsample & (self.downsample - 1):
            raise UserError(f"downsample: must be a power of 2, got {self.downsample}")
        if self.pixels < 2 * self.downsample or self.pixels % self.downsample:
            raise UserError(
                f"pixels: must be a multiple of downsample ({self.downsample}) with at least 2 codes, got {self.pixels}"
            )
        if not 0 < self.wavelength_min < self.wavelength_max:
            raise UserError(
                f"wavelength_min, wavelength_max: expected 0 < min < max Angstrom, "
                f"got {self.wavelength_min}, {self.wavelength_max}"
            )
        if self.normalise != "median":
            raise UserError(f"normalise: expected median, got {self.normalise!r}")
        if not self.flux_clip > 0:
            raise UserError(f"flux_clip: must be positive, got {self.flux_clip}")
        if not 0 < self.min_coverage <= 1:
            raise UserError(f"min_coverage: must lie in (0, 1], got {self.min_coverage}")
        if self.hidden < 1 or self.blocks < 0:
            raise UserError(f"hidden, blocks: need hidden >= 1 and blocks >= 0, got {self.hidden}, {self.blocks}")

    @property
    def vocab_size(self) -> int:
        return math.prod(self.levels)

    @property
    def codes(self) -> int:
        return self.pixels // self.downsample

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(
            kind="spectrum",
            channels=1,
            size=self.pixels,
            wavelength_range=(float(self.wavelength_min), float(self.wavelength_max)),
        )

    @property
    def wavelength(self) -> np.ndarray:
        """The grid's pixel centres, Angstrom, uniform in log wavelength."""
        return np.geomspace(self.wavelength_min, self.wavelength_max, self.pixels)

    @classmethod
    def from_json(cls, obj: dict) -> SpectrumFSQConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise UserError(f"codec config: unknown fields {unknown} (known: {sorted(known)})")
        return cls(**obj)


# --- resampling ---------------------------------------------------------------------------------------------------


def _edges(log_centres: np.ndarray) -> np.ndarray:
    """Pixel edges of a grid of centres: midway between neighbours, the end pixels as wide as their neighbour's gap."""
    mid = (log_centres[1:] + log_centres[:-1]) / 2
    return np.concatenate([[2 * log_centres[0] - mid[0]], mid, [2 * log_centres[-1] - mid[-1]]])


def spectrum_rows(values, name: str, source: str, n_rows: int | None) -> list[np.ndarray]:
    """One float64 array per row from an array [B, P] or a sequence of 1D arrays (rows may differ in length)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray) and values.ndim == 2:
        rows = list(values)
    elif isinstance(values, np.ndarray):
        raise UserError(f"{source}: {name} must be [rows, pixels] (or one array per row), got shape {values.shape}")
    else:
        rows = [np.asarray(v) for v in values]
    for i, row in enumerate(rows):
        if row.ndim != 1:
            raise UserError(f"{source}: {name} row {i} must be one array of pixels, got shape {row.shape}")
        if not np.issubdtype(row.dtype, np.number) or np.issubdtype(row.dtype, np.complexfloating):
            raise UserError(f"{source}: {name} must be real numbers, got {row.dtype}")
    if n_rows is not None and len(rows) != n_rows:
        raise UserError(f"{source}: {name} has {len(rows)} rows, flux has {n_rows}")
    return [row.astype(np.float64) for row in rows]


def spectrum_parts(x) -> tuple:
    """(wavelength, flux, ivar or None) from a tuple (wavelength, flux[, ivar]) or an object with those attributes
    (a `read_spectra` result)."""
    if hasattr(x, "flux") and hasattr(x, "wavelength"):
        return x.wavelength, x.flux, getattr(x, "ivar", None)
    if isinstance(x, (tuple, list)) and len(x) in (2, 3):
        return (*x, None) if len(x) == 2 else tuple(x)
    raise UserError(
        "spectra: expected (wavelength, flux) or (wavelength, flux, ivar), each [rows, pixels] or one array per row"
    )


def spectrum_arrays(x, source: str) -> tuple:
    """(wavelength, flux, ivar or None) of spectra `x` (see `spectrum_parts`), each a list of float64 rows; one
    wavelength array [P] is every row's grid."""
    wavelength, flux, ivar = spectrum_parts(x)
    flux = spectrum_rows(flux, "flux", source, None)
    if isinstance(wavelength, (np.ndarray, torch.Tensor)) and np.ndim(wavelength) == 1:
        wavelength = [np.asarray(wavelength)] * len(flux)  # one grid for every row
    wavelength = spectrum_rows(wavelength, "wavelength", source, len(flux))
    ivar = None if ivar is None else spectrum_rows(ivar, "ivar", source, len(flux))
    return wavelength, flux, ivar


def fit_spectra(x, config: SpectrumFSQConfig, *, source: str = "spectra") -> np.ndarray:
    """Check spectra and resample them onto the codec's grid: float32 [B, 2, pixels] of (normalised flux, weight).

    `x` is (wavelength, flux[, ivar]) (see `spectrum_parts`); wavelength in Angstrom, either one grid for every row
    ([P] ) or one per row, increasing or decreasing. The weight is 0 on masked pixels; elsewhere 1, or the pixel's
    resampled ivar scaled to mean 1 over the spectrum when ivar is given. Refused, one line naming the field:
    non-finite flux or wavelength, negative or non-finite ivar, lengths that do not match, a wavelength grid that is
    not strictly monotonic or covers none of the codec's grid, a median flux that is not positive.
    """
    wavelength, flux, ivar = spectrum_arrays(x, source)
    target = _edges(np.log(config.wavelength))
    out = np.zeros((len(flux), 2, config.pixels), np.float32)
    for i in range(len(flux)):
        out[i] = _fit_row(wavelength[i], flux[i], None if ivar is None else ivar[i], target, config, i, source)
    return out


def check_row(wave, flux, ivar, row: int, source: str, grid: tuple[float, float]) -> tuple:
    """Refuse a spectrum no codec can read (one line naming the field); returns it with wavelength increasing.

    `grid` is the codec's (first, last) wavelength in Angstrom: a row that covers none of it is refused. Shared by
    every spectrum codec (this one, the AION-1 adapter)."""
    for name, values in (("wavelength", wave), ("ivar", ivar)):
        if values is not None and len(values) != len(flux):
            raise UserError(f"{source}: {name} row {row} has {len(values)} values, flux has {len(flux)}")
    if len(flux) < 2:
        raise UserError(f"{source}: flux row {row} has {len(flux)} pixels; a spectrum needs at least 2")
    if not np.isfinite(flux).all():
        raise UserError(
            f"{source}: flux row {row} holds {int((~np.isfinite(flux)).sum())} NaN or infinite values "
            f"(first at pixel {int(np.argmin(np.isfinite(flux)))}); mask them with ivar 0 and a finite flux"
        )
    if not (np.isfinite(wave).all() and (wave > 0).all()):
        raise UserError(f"{source}: wavelength row {row} holds non-finite or non-positive values")
    if ivar is not None and not (np.isfinite(ivar).all() and (ivar >= 0).all()):
        raise UserError(f"{source}: ivar row {row} holds negative, NaN or infinite values")
    step = np.diff(wave)
    if (step < 0).all():  # a decreasing grid: the same spectrum read the other way
        wave, flux, ivar = wave[::-1], flux[::-1], None if ivar is None else ivar[::-1]
    elif not (step > 0).all():
        raise UserError(f"{source}: wavelength row {row} is not strictly increasing or decreasing")
    if wave[-1] <= grid[0] or wave[0] >= grid[1]:
        raise UserError(
            f"{source}: wavelength row {row} spans {wave[0]:g}-{wave[-1]:g}, outside the codec's grid "
            f"{grid[0]:g}-{grid[1]:g} Angstrom"
        )
    return wave, flux, ivar


def _fit_row(wave, flux, ivar, target, config: SpectrumFSQConfig, row: int, source: str) -> np.ndarray:
    grid = (config.wavelength_min, config.wavelength_max)
    wave, flux, ivar = check_row(wave, flux, ivar, row, source, grid)

    # Averages over each codec pixel from the running integrals of the input, piecewise constant over its pixels:
    # interpolating an integral at the codec's pixel edges is exact for any overlap, and 0 outside the data.
    edges = _edges(np.log(wave))
    width = np.diff(edges)
    valid = np.ones_like(flux) if ivar is None else (ivar > 0).astype(np.float64)
    weight = valid if ivar is None else ivar

    def per_pixel(density):
        return np.diff(np.interp(target, edges, np.concatenate([[0.0], np.cumsum(density)])))

    covered = per_pixel(valid * width) / np.diff(target)
    sum_w = per_pixel(weight * width)
    use = (covered >= config.min_coverage) & (sum_w > 0)
    if not use.any():
        raise UserError(
            f"{source}: wavelength row {row} covers no pixel of the codec's grid "
            f"{config.wavelength_min:g}-{config.wavelength_max:g} Angstrom with valid data"
        )
    resampled = np.where(use, per_pixel(flux * weight * width) / np.where(use, sum_w, 1.0), 0.0)
    median = float(np.median(resampled[use]))
    if not median > 0:
        raise UserError(
            f"{source}: flux row {row} has median {median:g} over the codec's grid; median normalisation needs a "
            "positive continuum"
        )
    normed = np.where(use, np.clip(resampled / median, -config.flux_clip, config.flux_clip), 0.0)
    if ivar is None:
        loss_weight = use.astype(np.float64)
    else:
        pixel_ivar = per_pixel(ivar)  # ivar of the average: the inputs' ivar summed by their share in the pixel
        loss_weight = np.where(use, pixel_ivar, 0.0)
        loss_weight = loss_weight / loss_weight[use].mean()
    return np.stack([normed, loss_weight]).astype(np.float32)


# --- the network --------------------------------------------------------------------------------------------------


class SpectrumAutoencoder(nn.Module):
    """Conv1d encoder (log2(downsample) stride-2 convolutions, normalised latent) -> FSQ -> mirrored decoder."""

    def __init__(self, config: SpectrumFSQConfig):
        super().__init__()
        h, d = config.hidden, len(config.levels)
        halvings = int(math.log2(config.downsample))
        down = []
        for _ in range(halvings):
            down += [nn.Conv1d(h, h, 4, stride=2, padding=1), nn.SiLU()]
        self.encoder = nn.Sequential(
            nn.Conv1d(2, h, 7, padding=3),  # flux and mask
            nn.SiLU(),
            *down,
            *[ResBlock(h, nn.Conv1d) for _ in range(config.blocks)],
            # As the image codec: unit-scale features, then each latent dimension standardised over the batch, so
            # every dimension spreads over its levels instead of rounding to the centre code.
            ChannelNorm(h),
            nn.SiLU(),
            nn.Conv1d(h, d, 1),
            nn.BatchNorm1d(d, affine=False),
        )
        self.quantizer = FSQ(config.levels)
        up = []
        for _ in range(halvings):
            up += [nn.SiLU(), nn.ConvTranspose1d(h, h, 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(
            nn.Conv1d(d, h, 1),
            *[ResBlock(h, nn.Conv1d) for _ in range(config.blocks)],
            *up,
            nn.SiLU(),
            nn.Conv1d(h, 1, 7, padding=3),
        )

    @staticmethod
    def network_input(fitted: torch.Tensor) -> torch.Tensor:
        """Fitted [B, 2, P] (flux, weight) -> the encoder's (flux, mask): codes do not depend on the noise level."""
        return torch.stack([fitted[:, 0], (fitted[:, 1] > 0).float()], dim=1)

    def forward(self, fitted):
        """Fitted spectra [B, 2, P] -> reconstructed normalised flux [B, P] and codes [B, P / downsample]."""
        z, codes = self.quantizer(self.encoder(self.network_input(fitted)))
        return self.decoder(z)[:, 0], codes

    def encode(self, fitted):
        return self.quantizer(self.encoder(self.network_input(fitted)))[1]

    def decode(self, codes):
        return self.decoder(self.quantizer.dequantize(codes))[:, 0]


class SpectrumFSQCodec(TorchCodec):
    """The built-in spectrum codec behind the `Codec` interface: `encode((wavelength, flux[, ivar]))` -> [B, 1, L']."""

    codec_type = CODEC_TYPE

    def __init__(
        self,
        config: SpectrumFSQConfig,
        model: SpectrumAutoencoder | None = None,
        *,
        name: str = CODEC_TYPE,
        weights_sha256: str | None = None,
    ):
        self.config = config
        self.model = (model or SpectrumAutoencoder(config)).eval()
        self.name = name
        self.input_spec = config.input_spec
        self.vocab_size = config.vocab_size
        self.grid_shape = (1, config.codes)
        self._weights_sha256 = weights_sha256

    @property
    def codec_hash(self) -> str:
        return sha256_bytes(CODEC_TYPE, json.dumps(asdict(self.config), sort_keys=True), self._weights_hash())

    @property
    def wavelength(self) -> np.ndarray:
        """The codec's grid (pixel centres, Angstrom): where `decode`'s flux lies."""
        return self.config.wavelength

    def fit_inputs(self, x, *, source: str = "spectra") -> np.ndarray:
        return fit_spectra(x, self.config, source=source)

    @torch.inference_mode()
    def _encode(self, x: np.ndarray) -> np.ndarray:
        return self.model.encode(torch.from_numpy(x)).unsqueeze(1).to(torch.int32).numpy()

    @torch.inference_mode()
    def decode(self, codes) -> np.ndarray:
        """Codes [B, 1, L'] -> median-normalised flux [B, pixels] on the codec's grid (`wavelength`)."""
        codes = torch.as_tensor(np.asarray(codes), dtype=torch.long)
        if codes.ndim != 3 or tuple(codes.shape[1:]) != self.grid_shape:
            raise UserError(f"codes: expected [B, 1, {self.grid_shape[1]}], got {list(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.vocab_size):
            raise UserError(
                f"codes: ids must lie in [0, {self.vocab_size - 1}], got [{int(codes.min())}, {int(codes.max())}]"
            )
        return self.model.decode(codes[:, 0]).numpy()

    @classmethod
    def load(cls, path) -> SpectrumFSQCodec:
        path = Path(path)
        meta = read_config(path, keys=("type", "config"))
        config = SpectrumFSQConfig.from_json(meta["config"])
        model = SpectrumAutoencoder(config)
        sha = load_weights(path, model)
        return cls(config, model, name=meta.get("name", path.name), weights_sha256=sha)


# --- training -----------------------------------------------------------------------------------------------------


def _weighted_mse(recon: torch.Tensor, fitted: torch.Tensor) -> torch.Tensor:
    weight = fitted[:, 1]
    return (weight * (recon - fitted[:, 0]) ** 2).sum() / weight.sum().clamp_min(1e-12)


@torch.inference_mode()
def evaluate_spectra(codec: SpectrumFSQCodec, fitted: np.ndarray, batch_size: int = 256) -> dict:
    """Weighted reconstruction error of fitted spectra (normalised flux units, masked pixels left out), beside that
    of predicting each spectrum by its own weighted mean (`mean_mse`), and codebook use."""
    sq_err, base_err, total, all_codes = 0.0, 0.0, 0.0, []
    for start in range(0, len(fitted), batch_size):
        x = torch.from_numpy(fitted[start : start + batch_size])
        recon, codes = codec.model(x)
        flux, weight = x[:, 0], x[:, 1]
        mean = (weight * flux).sum(1, keepdim=True) / weight.sum(1, keepdim=True)
        sq_err += float((weight * (recon - flux) ** 2).sum())
        base_err += float((weight * (mean - flux) ** 2).sum())
        total += float(weight.sum())
        all_codes.append(codes.numpy())
    mse, mean_mse = sq_err / max(total, 1e-12), base_err / max(total, 1e-12)
    return {
        "mse": mse,
        "mean_mse": mean_mse,
        "mse_vs_mean": mse / mean_mse if mean_mse > 0 else float("nan"),
        **codebook_stats(np.concatenate(all_codes), codec.vocab_size),
        "n_spectra": int(len(fitted)),
    }


def train_spectrum_fsq(
    config: SpectrumFSQConfig,
    train_spectra,
    eval_spectra,
    train: TrainConfig,
    *,
    name: str = CODEC_TYPE,
    progress=None,
):
    """Train a spectrum codec; returns (codec, metrics), as `fsq.train_fsq` does for images (save with
    `codec.save(out_dir, training=..., metrics=...)`).

    The spectra are what `encode` takes: (wavelength, flux[, ivar]) or a `read_spectra` result. `train.max_images`
    caps the training spectra and `train.max_eval_images` the held-out ones (first rows kept); `train.crop` does not
    apply. `progress(step, loss)` is called every few steps when given. Seeded: the same inputs and seed give the
    same weights on a CPU.
    """
    if train.crop is not None:
        raise UserError("crop: the spectrum codec trains on whole spectra; leave crop unset")
    train_x = fit_spectra(train_spectra, config, source="training spectra")[: train.max_images]
    eval_x = fit_spectra(eval_spectra, config, source="held-out spectra")[: train.max_eval_images]
    if not len(train_x) or not len(eval_x):
        raise UserError(f"spectra: need training and held-out spectra, got {len(train_x)} and {len(eval_x)}")
    torch.manual_seed(train.seed)
    generator = torch.Generator().manual_seed(train.seed)
    codec = SpectrumFSQCodec(config, name=name)
    model = codec.model.train()
    data = torch.from_numpy(train_x)

    def loss_of(batch):
        recon, _ = model(batch)
        return _weighted_mse(recon, batch)

    trained = run_steps(model, data, train, generator, loss_of, progress)
    codec._weights_sha256 = None
    metrics = {"held_out": evaluate_spectra(codec, eval_x), **trained, "n_train_spectra": int(len(train_x))}
    return codec, metrics

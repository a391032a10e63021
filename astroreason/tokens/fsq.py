"""The built-in codec: a small convolutional autoencoder with a finite scalar quantiser (FSQ, Mentzer et al. 2023).

Shaped like AION-1's image codec at a fraction of its size: inputs are stretched into [-1, 1] (RGB linearly or with
an arcsinh; flux clipped per band then arcsinh-stretched like AION), downsampled 4x by strided convolutions, projected
to `len(levels)` dimensions and rounded onto the FSQ grid, so a 96 px galaxy becomes 24x24 = 576 codes from a
vocabulary of prod(levels) (4375 for AION's [7, 5, 5, 5, 5]). Small enough to train on a CPU in a minute or two.
Saved as safetensors + `codec.json` (+ `metrics.json`); loaded with safetensors only.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.galaxy10 import FLUX_BANDS
from ..errors import UserError
from ..io import atomic_path, sha256_bytes, sha256_file, write_json_atomic
from .codec import CONFIG_NAME, METRICS_NAME, WEIGHTS_NAME, Codec, InputSpec, read_config

# Per-band clip in nanomaggies before the arcsinh stretch: AION's own values for the DES bands
# (aion/codecs/preprocessing/band_to_index.py, BAND_CENTER_MAX).
FLUX_CLIP = {"DES-G": 6.0, "DES-R": 15.0, "DES-I": 20.0, "DES-Z": 25.0}


@dataclass
class FSQConfig:
    """Architecture and input scaling of the built-in codec; everything here enters `codec_hash`.

    Args:
        levels: FSQ levels per latent dimension; the vocabulary is their product ([7, 5, 5, 5, 5] = 4375, like AION).
        input: `rgb` (Galaxy10 `images`, uint8) or `flux` (the `flux` key: g, r, i, z nanomaggies).
        size: Input side in pixels; the grid is size/4 on a side (96 px -> 24x24 = 576 codes).
        hidden: Channels of the convolutional layers.
        blocks: Residual blocks at the latent resolution, in the encoder and in the decoder.
        bands: Band names of a flux input, in channel order.
        stretch: RGB scaling into [-1, 1]: `linear`, or `arcsinh` (lifts faint outskirts).
        arcsinh_scale: Softening of the RGB arcsinh stretch, in units of full scale.
        flux_softening: Softening of the flux arcsinh stretch, nanomaggies (AION's range_compression_factor).
        flux_clip: Per-band clip in nanomaggies before the stretch (AION's values by default).
        latent_norm: Normalisation of the latent just before quantisation. `batch`: each latent dimension
            standardised over the batch and positions (BatchNorm without affine parameters; running statistics at
            encode time), so every dimension spreads over all its levels and the vocabulary gets used. `none`: the
            raw projection (codecs saved before this field existed; they used ~2 % of a 4375-id vocabulary).
    """

    levels: list[int] = field(default_factory=lambda: [7, 5, 5, 5, 5])
    input: str = "rgb"
    size: int = 96
    hidden: int = 32
    blocks: int = 1
    bands: list[str] = field(default_factory=lambda: list(FLUX_BANDS))
    stretch: str = "linear"
    arcsinh_scale: float = 0.1
    flux_softening: float = 0.01
    flux_clip: dict[str, float] = field(default_factory=lambda: dict(FLUX_CLIP))
    latent_norm: str = "batch"

    def __post_init__(self):
        self.levels = [int(v) for v in self.levels]
        if not self.levels or min(self.levels) < 2:
            raise UserError(f"levels: need at least one level of 2 or more per dimension, got {self.levels}")
        if self.input not in ("rgb", "flux"):
            raise UserError(f"input: expected rgb or flux, got {self.input!r}")
        if self.size <= 0 or self.size % 4:
            raise UserError(f"size: must be a positive multiple of 4 (the codec downsamples 4x), got {self.size}")
        if self.latent_norm not in ("batch", "none"):
            raise UserError(f"latent_norm: expected batch or none, got {self.latent_norm!r}")
        if self.stretch not in ("linear", "arcsinh"):
            raise UserError(f"stretch: expected linear or arcsinh, got {self.stretch!r}")
        if self.input == "flux":
            missing = [b for b in self.bands if b not in self.flux_clip]
            if missing:
                raise UserError(f"flux_clip: no clip value for bands {missing}")

    @property
    def vocab_size(self) -> int:
        return math.prod(self.levels)

    @property
    def input_spec(self) -> InputSpec:
        if self.input == "rgb":
            return InputSpec(kind="rgb", channels=3, size=self.size)
        return InputSpec(kind="flux", channels=len(self.bands), size=self.size, bands=tuple(self.bands))

    @classmethod
    def from_json(cls, obj: dict) -> FSQConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise UserError(f"codec config: unknown fields {unknown} (known: {sorted(known)})")
        return cls(**obj)


@dataclass
class TrainConfig:
    """How the built-in codec is trained.

    Args:
        steps: Optimiser steps.
        batch_size: Images per step.
        lr: Peak AdamW learning rate (cosine decay to 10 % of it).
        seed: Seeds initialisation, batch order and augmentation.
        max_images: Cap on training images held in memory (sampled with `seed`).
        max_eval_images: Cap on held-out images for the reported metrics.
        crop: Train on random crops of this side in pixels (a multiple of 4, at most the codec's size), 4x cheaper a
            step at half the side; the codec is convolutional, so it encodes full-size inputs. None: full inputs.
    """

    steps: int = 400
    batch_size: int = 32
    lr: float = 5e-3
    seed: int = 0
    max_images: int = 4096
    max_eval_images: int = 512
    crop: int | None = None


class FSQ(nn.Module):
    """Finite scalar quantisation: bound each latent dimension, round it to `levels[i]` values (straight-through)."""

    def __init__(self, levels: list[int], eps: float = 1e-3):
        super().__init__()
        levels_t = torch.tensor(levels, dtype=torch.long)
        self.register_buffer("levels", levels_t, persistent=False)
        self.register_buffer("basis", torch.cumprod(torch.tensor([1] + levels[:-1]), 0), persistent=False)
        self.eps = eps

    def _bound(self, z):
        half = (self.levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        return torch.tanh(z + torch.atanh(offset / half)) * half - offset

    def forward(self, z):
        """z [B, D, H, W] (or [B, D, L]) -> quantised z in [-1, 1] (same shape) and integer codes [B, H, W] ([B, L])."""
        z = z.movedim(1, -1)
        bounded = self._bound(z)
        rounded = bounded + (bounded.round() - bounded).detach()  # straight-through estimator
        half_width = self.levels // 2
        codes = ((rounded.detach().round().long() + half_width) * self.basis).sum(-1)
        return (rounded / half_width).movedim(-1, 1), codes

    def dequantize(self, codes):
        """Integer codes [B, H, W] (or [B, L]) -> quantised z [B, D, H, W] ([B, D, L])."""
        digits = (codes.long().unsqueeze(-1) // self.basis) % self.levels
        half_width = self.levels // 2
        return ((digits - half_width) / half_width).movedim(-1, 1)


class ResBlock(nn.Module):
    """Two 3-wide convolutions and a skip; `conv` is nn.Conv2d for images, nn.Conv1d for spectra."""

    def __init__(self, channels: int, conv=nn.Conv2d):
        super().__init__()
        self.body = nn.Sequential(
            nn.SiLU(),
            conv(channels, channels, 3, padding=1),
            nn.SiLU(),
            conv(channels, channels, 3, padding=1),
        )

    def forward(self, x):
        return x + self.body(x)


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels at each position: no statistics across positions or images, so a codec trained on
    crops encodes full images the same way."""

    def forward(self, x):
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class FSQAutoencoder(nn.Module):
    """Conv encoder (two stride-2 convolutions: 4x downsampling, normalised latent) -> FSQ -> mirrored decoder."""

    def __init__(self, config: FSQConfig):
        super().__init__()
        c, h, d = config.input_spec.channels, config.hidden, len(config.levels)
        self.encoder = nn.Sequential(
            nn.Conv2d(c, h, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(h, h, 4, stride=2, padding=1),
            *[ResBlock(h) for _ in range(config.blocks)],
            # Normalised features keep the latent at unit scale: without this it starts near 0, every position
            # rounds to the centre code and the codebook collapses to one id (seen: usage 1/4375 after 60 steps).
            ChannelNorm(h),
            nn.SiLU(),
            nn.Conv2d(h, d, 1),
            *([nn.BatchNorm2d(d, affine=False)] if config.latent_norm == "batch" else []),
        )
        self.quantizer = FSQ(config.levels)
        self.decoder = nn.Sequential(
            nn.Conv2d(d, h, 1),
            *[ResBlock(h) for _ in range(config.blocks)],
            nn.SiLU(),
            nn.ConvTranspose2d(h, h, 4, stride=2, padding=1),
            nn.SiLU(),
            # Half the channels at full resolution, where most of the decoder's arithmetic is.
            nn.ConvTranspose2d(h, h // 2, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(h // 2, c, 3, padding=1),
        )

    def forward(self, x):
        z, codes = self.quantizer(self.encoder(x))
        return self.decoder(z), codes

    def encode(self, x):
        return self.quantizer(self.encoder(x))[1]

    def decode(self, codes):
        return self.decoder(self.quantizer.dequantize(codes))


class Scaler:
    """Codec inputs <-> the network's [-1, 1] space (and back), per `FSQConfig`."""

    def __init__(self, config: FSQConfig):
        self.config = config
        if config.input == "flux":
            clip = torch.tensor([config.flux_clip[b] for b in config.bands]).view(1, -1, 1, 1)
            self.clip = clip
            self.flux_norm = torch.asinh(clip / config.flux_softening)

    def forward(self, x: np.ndarray) -> torch.Tensor:
        cfg = self.config
        t = torch.from_numpy(np.ascontiguousarray(x))
        if cfg.input == "rgb":
            t = t.permute(0, 3, 1, 2).float() / 255.0
            if cfg.stretch == "arcsinh":
                t = torch.asinh(t / cfg.arcsinh_scale) / math.asinh(1 / cfg.arcsinh_scale)
            return t * 2 - 1
        t = torch.maximum(torch.minimum(t.float(), self.clip), -self.clip)
        return torch.asinh(t / cfg.flux_softening) / self.flux_norm

    def backward(self, y: torch.Tensor) -> np.ndarray:
        cfg = self.config
        y = y.detach().clamp(-1, 1)
        if cfg.input == "rgb":
            t = (y + 1) / 2
            if cfg.stretch == "arcsinh":
                t = torch.sinh(t * math.asinh(1 / cfg.arcsinh_scale)) * cfg.arcsinh_scale
            return (t * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return (torch.sinh(y * self.flux_norm) * cfg.flux_softening).numpy()


class TorchCodec(Codec):
    """A codec whose network is a torch module saved as `model.safetensors` beside `codec.json` (`type`
    `codec_type`, its dataclass `config`); subclasses build `model` and say what `codec_hash` covers."""

    codec_type: str
    config: object
    model: nn.Module
    _weights_sha256: str | None = None

    def _state_dict(self):
        return {k: v.contiguous() for k, v in self.model.state_dict().items()}

    def _weights_hash(self) -> str:
        if self._weights_sha256 is None:  # not saved yet: hash the weights in memory
            from safetensors.torch import save

            self._weights_sha256 = sha256_bytes(save(self._state_dict()))
        return self._weights_sha256

    def save(self, out_dir, *, training: dict | None = None, metrics: dict | None = None) -> Path:
        """Write `codec.json`, `model.safetensors` (and `metrics.json`) into `out_dir`, atomically as a whole."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            save_file(self._state_dict(), str(tmp / WEIGHTS_NAME))
            self._weights_sha256 = sha256_file(tmp / WEIGHTS_NAME)
            config = {
                "type": self.codec_type,
                "name": self.name,
                "config": asdict(self.config),
                "training": training or {},
            }
            config.update(
                vocab_size=self.vocab_size, grid_shape=list(self.grid_shape), input_spec=self.input_spec.to_json()
            )
            config["codec_hash"] = self.codec_hash
            write_json_atomic(tmp / CONFIG_NAME, config)
            if metrics is not None:
                write_json_atomic(tmp / METRICS_NAME, metrics)
        return out_dir


def load_weights(path: Path, model: nn.Module) -> str:
    """Load a codec directory's weights into `model` strictly (a mismatch is one line); returns their SHA-256."""
    from safetensors.torch import load_file

    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise UserError(f"{weights}: missing; the codec directory is incomplete")
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as err:
        raise UserError(f"{weights}: does not match {CONFIG_NAME} ({str(err).splitlines()[0]})") from None
    return sha256_file(weights)


class FSQCodec(TorchCodec):
    """The built-in codec behind the `Codec` interface."""

    codec_type = "fsq"

    def __init__(
        self,
        config: FSQConfig,
        model: FSQAutoencoder | None = None,
        *,
        name: str = "fsq",
        weights_sha256: str | None = None,
    ):
        self.config = config
        self.model = (model or FSQAutoencoder(config)).eval()
        self.scaler = Scaler(config)
        self.name = name
        self.input_spec = config.input_spec
        self.vocab_size = config.vocab_size
        self.grid_shape = (config.size // 4, config.size // 4)
        self._weights_sha256 = weights_sha256

    @property
    def codec_hash(self) -> str:
        config = asdict(self.config)
        if config["latent_norm"] == "none":  # hashed as before the field existed: old codecs keep their caches
            del config["latent_norm"]
        return sha256_bytes("fsq", json.dumps(config, sort_keys=True), self._weights_hash())

    @torch.inference_mode()
    def _encode(self, x: np.ndarray) -> np.ndarray:
        return self.model.encode(self.scaler.forward(x)).to(torch.int32).numpy()

    @torch.inference_mode()
    def decode(self, codes) -> np.ndarray:
        codes = torch.as_tensor(np.asarray(codes), dtype=torch.long)
        if codes.ndim != 3 or tuple(codes.shape[1:]) != self.grid_shape:
            raise UserError(f"codes: expected [B, {self.grid_shape[0]}, {self.grid_shape[1]}], got {list(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.vocab_size):
            raise UserError(
                f"codes: ids must lie in [0, {self.vocab_size - 1}], got [{int(codes.min())}, {int(codes.max())}]"
            )
        return self.scaler.backward(self.model.decode(codes))

    @classmethod
    def load(cls, path) -> FSQCodec:
        path = Path(path)
        meta = read_config(path, keys=("type", "config"))
        # Saved before `latent_norm` existed: those codecs had no normalisation layer.
        config = FSQConfig.from_json({"latent_norm": "none", **meta["config"]})
        model = FSQAutoencoder(config)
        sha = load_weights(path, model)
        return cls(config, model, name=meta.get("name", path.name), weights_sha256=sha)


def codebook_stats(codes: np.ndarray, vocab_size: int) -> dict:
    """Fraction of the vocabulary used and the perplexity (exp of the code entropy) of a set of codes."""
    counts = np.bincount(np.asarray(codes).ravel(), minlength=vocab_size)
    p = counts[counts > 0] / counts.sum()
    return {"codebook_usage": float((counts > 0).mean()), "perplexity": float(np.exp(-(p * np.log(p)).sum()))}


@torch.inference_mode()
def evaluate(codec: FSQCodec, inputs: np.ndarray, batch_size: int = 256) -> dict:
    """Reconstruction error in the codec's [-1, 1] input space (MSE; PSNR with peak-to-peak 2) and codebook use."""
    sq_err, n, all_codes = 0.0, 0, []
    for start in range(0, len(inputs), batch_size):
        x = codec.scaler.forward(inputs[start : start + batch_size])
        recon, codes = codec.model(x)
        sq_err += float(((recon.clamp(-1, 1) - x) ** 2).sum())
        n += x.numel()
        all_codes.append(codes.numpy())
    mse = sq_err / max(n, 1)
    return {
        "mse": mse,
        "psnr_db": float(10 * math.log10(4.0 / mse)) if mse > 0 else float("inf"),
        **codebook_stats(np.concatenate(all_codes), codec.vocab_size),
        "n_images": int(len(inputs)),
    }


def _augment(x: torch.Tensor, generator: torch.Generator, crop: int | None = None) -> torch.Tensor:
    """A random crop (when asked), rotation by 90 degrees and flip: galaxies have no preferred orientation."""
    if crop is not None and crop < x.shape[-1]:
        # One crop window per batch, drawn near the centre half of the time: that is where the galaxy is.
        span = x.shape[-1] - crop
        if torch.rand(1, generator=generator) < 0.5:
            top, left = (int(v) for v in torch.randint(span + 1, (2,), generator=generator))
        else:
            top, left = (
                span // 2 + int(v) - span // 4 for v in torch.randint(span // 2 + 1, (2,), generator=generator)
            )
        x = x[:, :, top : top + crop, left : left + crop]
    k = int(torch.randint(4, (1,), generator=generator))
    x = torch.rot90(x, k, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if torch.rand(1, generator=generator) < 0.5 else x


def make_optimizer(model: nn.Module, train: TrainConfig):
    """AdamW at `train.lr` with a cosine decay to 10 % of it over `train.steps`: (optimizer, scheduler)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, train.steps) / max(train.steps, 1)))
    )
    return optimizer, schedule


def run_steps(model: nn.Module, data, train: TrainConfig, generator, loss_of, progress=None) -> dict:
    """The training loop of every built-in codec: `train.steps` AdamW steps (`make_optimizer`), each on a batch of
    `data` drawn with `generator` and scored by `loss_of(batch)`; `progress(step, loss)` every few steps. Leaves the
    model in eval mode; returns the metrics of the run (final loss, wall and CPU seconds, steps)."""
    optimizer, schedule = make_optimizer(model, train)
    start, cpu_start, loss_value = time.perf_counter(), time.process_time(), float("nan")
    for step in range(1, train.steps + 1):
        idx = torch.randint(len(data), (min(train.batch_size, len(data)),), generator=generator)
        loss = loss_of(data[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_value = loss.item()
        if progress is not None and (step % 25 == 0 or step == train.steps):
            progress(step, loss_value)
    model.eval()
    return {
        "final_train_loss": loss_value,
        "train_seconds": round(time.perf_counter() - start, 2),
        "train_cpu_seconds": round(time.process_time() - cpu_start, 2),  # all threads; wall time depends on the load
        "steps": train.steps,
    }


def train_fsq(
    config: FSQConfig,
    train_inputs: np.ndarray,
    eval_inputs: np.ndarray,
    train: TrainConfig,
    *,
    name: str = "fsq",
    progress=None,
):
    """Train a codec on inputs already checked and fitted to `config.input_spec`; returns (codec, metrics).

    `progress(step, loss)` is called every few steps when given.
    """
    if train.crop is not None and (train.crop < 4 or train.crop % 4 or train.crop > config.size):
        raise UserError(f"crop: must be a multiple of 4 between 4 and the codec's size {config.size}, got {train.crop}")
    torch.manual_seed(train.seed)
    generator = torch.Generator().manual_seed(train.seed)
    codec = FSQCodec(config, name=name)
    model = codec.model.train()
    data = codec.scaler.forward(train_inputs)

    def loss_of(batch):
        x = _augment(batch, generator, train.crop)
        recon, _ = model(x)
        return nn.functional.mse_loss(recon, x)

    trained = run_steps(model, data, train, generator, loss_of, progress)
    codec._weights_sha256 = None
    metrics = {"held_out": evaluate(codec, eval_inputs), **trained, "n_train_images": int(len(train_inputs))}
    return codec, metrics

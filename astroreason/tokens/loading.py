"""Opening a codec directory: a built-in FSQ codec (images or spectra) or the AION-1 adapter, told apart by what the
directory holds.

Kept apart from `codec` (the interface every codec implements) so that the implementations import the interface and
nothing imports back.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .codec import CONFIG_NAME, Codec, read_config


def load_codec(path) -> Codec:
    """Open a codec from a local directory: a built-in FSQ codec for images (`type` fsq) or spectra (fsq1d), each
    `codec.json` + `model.safetensors`, or an AION-1 codec: a local copy of polymathic-ai/aion-base holding
    `codecs/image/` (or that folder itself) for images, its `codecs/spectrum/` folder (or a copy holding only that)
    for spectra (`aion.aion_codec_kind`)."""
    if isinstance(path, Codec):
        return path
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: codec directory not found")
    if (path / CONFIG_NAME).is_file():
        kind = read_config(path).get("type")
        if kind == "fsq":
            # lazy: the FSQ codec brings torch, which commands that only read token caches never need
            from .fsq import FSQCodec

            return FSQCodec.load(path)
        if kind == "fsq1d":
            from .spectrum_fsq import SpectrumFSQCodec

            return SpectrumFSQCodec.load(path)
        if kind != "aion":
            raise UserError(f"{path / CONFIG_NAME}: unknown codec type {kind!r} (expected fsq, fsq1d or aion)")
    # lazy: optional extra (polymathic-aion)
    from .aion import AionCodec, AionSpectrumCodec, aion_codec_kind

    return (AionSpectrumCodec if aion_codec_kind(path) == "spectrum" else AionCodec).load(path)

"""Part of a galaxy re-encoded by the codec: the token zoom's result (`zoom.TokenZoom`) and the token arm's fixed
centre crop (`ArmSettings.token_crop`, the token zoom arm's no-zoom control at its code budget).

The source is the codec's input for that galaxy as the token cache read it (the source file's images or flux; a
galaxy10-aion copy's flux), over the field the first view showed (a flux codec's centre crop). A crop of it is
resized to the codec's input size (bicubic for rgb, as the image arm resizes; bilinear for flux) and encoded.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..data.focus import pixel_box
from ..data.splits import source_path
from .cache import TokenCache
from .codec import Codec, read_inputs

BICUBIC = 3  # PIL.Image.BICUBIC, as `arms.resize_image`


class CodecInputs:
    """The codec inputs of a prepared directory's galaxies, by source row, as the token cache read them.

    Args:
        data_dir: The prepared directory.
        codec: The loaded codec.
        cache: Its token cache for `data_dir` (`load_codes`): says where the codes' inputs came from.
        manifest: The prepared directory's manifest.
    """

    def __init__(self, data_dir, codec: Codec, cache: TokenCache, manifest):
        self.data_dir, self.codec, self.cache, self.manifest = data_dir, codec, cache, manifest
        self.spec = codec.input_spec
        self._flux = None

    def source(self, row: int) -> np.ndarray:
        """The codec's input for a source row: rgb [H, W, 3] uint8 (the whole image, as the codec resizes it) or
        flux [C, S, S] (the centre crop of the codec's size, as the codec crops it)."""
        return next(self.sources([row], batch_size=1))

    def sources(self, rows, *, batch_size: int = 256) -> Iterator[np.ndarray]:
        """`source` of each row, in order, read a batch at a time."""
        rows = [int(r) for r in rows]
        if self.cache.meta.get("input") == "galaxy10-aion":
            # lazy: optional extra (polymathic-aion), as the cache itself opens it
            from .aion import Galaxy10AionFlux

            if self._flux is None:
                self._flux = Galaxy10AionFlux(self.cache.meta["flux_source"]["path"])
            positions = self._flux.positions_of(rows)
            batches = (self._flux.flux(positions[i : i + batch_size]) for i in range(0, len(rows), batch_size))
        else:
            batches = read_inputs(source_path(self.manifest, self.data_dir), rows, self.spec, batch_size=batch_size)
        for batch in batches:
            for x in batch:
                yield self._field(x)

    def _field(self, x) -> np.ndarray:
        """What the codec sees of an input: the whole rgb image, or a flux cutout's centre at the codec's size."""
        if self.spec.kind == "rgb":
            return np.asarray(x, np.uint8)
        top, left = (x.shape[1] - self.spec.size) // 2, (x.shape[2] - self.spec.size) // 2
        return np.asarray(x[:, top : top + self.spec.size, left : left + self.spec.size], np.float32)

    def source_size(self, source: np.ndarray) -> tuple[int, int]:
        """(width, height) of a source in pixels."""
        return (source.shape[1], source.shape[0]) if self.spec.kind == "rgb" else (source.shape[2], source.shape[1])

    def crop(self, source: np.ndarray, pixels: tuple[int, int, int, int]) -> np.ndarray:
        """The crop of `source` at `pixels` (left, top, right, bottom) as one codec input [1, ...] of its size."""
        left, top, right, bottom = pixels
        size = self.spec.size
        if self.spec.kind == "rgb":
            from PIL import Image  # lazy: PIL only once a crop is made

            patch = Image.fromarray(source).crop(pixels).resize((size, size), resample=BICUBIC)
            return np.asarray(patch, np.uint8)[None]
        import torch  # lazy: torch only once a flux crop is made
        import torch.nn.functional as F

        patch = torch.from_numpy(np.ascontiguousarray(source[:, top:bottom, left:right]))[None]
        return F.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False).numpy()

    def encode_crop(self, source: np.ndarray, pixels: tuple[int, int, int, int]) -> np.ndarray:
        """The codes [H', W'] of one crop."""
        return self.codec.encode(self.crop(source, pixels), source="zoom crop")[0]

    def centre_codes(self, rows, side: float, *, batch_size: int = 256) -> np.ndarray:
        """The codes [n, H', W'] of each row's centre box of `side` (a fraction of the field): the box a zoom call
        `[0.5 - side/2, 0.5 - side/2, 0.5 + side/2, 0.5 + side/2]` crops, encoded in batches."""
        box = centre_box(side)
        crops = [
            self.crop(source, pixel_box(box, *self.source_size(source)))
            for source in self.sources(rows, batch_size=batch_size)
        ]
        if not crops:
            return np.zeros((0, *self.codec.grid_shape), np.int32)
        return self.codec.encode(np.concatenate(crops), source="centre crops", batch_size=batch_size)


def centre_box(side: float) -> tuple[float, float, float, float]:
    """The normalised box of `side` centred on the field."""
    low, high = 0.5 - side / 2, 0.5 + side / 2
    return low, low, high, high

"""The same images stored contiguous, one image per chunk, gzip with h5py's automatic chunks, and gzip one image per
chunk: `data inspect` reports the same and `data prepare` writes the same bytes for all; reads follow the chunk grid."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from data_files import foreign_rows

from astroreason.data.inspect import inspect_file
from astroreason.data.reader import open_galaxy10
from astroreason.data.splits import MANIFEST_NAME, SPLIT_NAMES, prepare, split_path
from astroreason.errors import UserError

SIDE = 64
LAYOUTS = {
    "contiguous": {},
    "chunked": {"chunks": (1, SIDE, SIDE, 3)},
    "gzip_auto": {"chunks": True, "compression": "gzip"},
    "gzip_image": {"chunks": (1, SIDE, SIDE, 3), "compression": "gzip"},
    "gzip_odd": {"chunks": (7, 16, 16, 1), "compression": "gzip"},  # chunks across rows and within images
}
SOURCE_KEYS = ("source_path", "source_sha256", "hash")  # the file itself, and the hash over them


def write_layout(path, cols: dict, layout: str):
    """The columns with `images` stored as `layout` (its 16 px images scaled up to 64 px, mostly-dark sky)."""
    images = np.repeat(
        np.repeat(cols["images"], SIDE // cols["images"].shape[1], 1), SIDE // cols["images"].shape[2], 2
    )
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images // 8, **LAYOUTS[layout])
        for key, value in cols.items():
            if key != "images":
                f[key] = value
    return path


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """Layout -> file, all holding the same ~250 rows."""
    cols, _ = foreign_rows(seed=5)
    root = tmp_path_factory.mktemp("layouts")
    return {name: write_layout(root / f"{name}.h5", cols, name) for name in LAYOUTS}


def test_layouts_prepare_byte_identical_and_inspect_identically(layouts, tmp_path):
    with h5py.File(layouts["gzip_auto"]) as f:
        assert f["images"].chunks[0] > 1  # h5py's automatic chunks span rows: the case that needs aligned reads
    reference = None
    for name, path in layouts.items():
        report = inspect_file(path)
        out = prepare(path, tmp_path / name, seed=1)
        manifest = json.loads((out / MANIFEST_NAME).read_text())
        views = {split: split_path(out, split).read_bytes() for split in SPLIT_NAMES}
        for key in ("path", "size_bytes", "schema"):  # the file's own name, size and storage
            report.pop(key)
        for key in SOURCE_KEYS:
            manifest.pop(key)
        if reference is None:
            reference = (report, manifest, views)
        assert report == reference[0], name
        assert manifest == reference[1], name
        assert views == reference[2], name
    assert reference[1]["dropped"] and any(len(v) for v in reference[2].values())


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_reads_follow_the_chunk_grid(layouts, layout):
    with open_galaxy10(layouts[layout]) as g10, h5py.File(layouts[layout]) as f:
        chunk_rows = (f["images"].chunks or (1,))[0]
        blocks = g10.row_blocks()
        # Consecutive, covering every row once, each a union of whole chunks (only the file's last may be cut).
        assert blocks[0][0] == 0 and blocks[-1][1] == g10.n_rows
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
        assert all(start % chunk_rows == 0 and (stop % chunk_rows == 0 or stop == g10.n_rows) for start, stop in blocks)
        # Some rows, in order: each the file's own row.
        rows = np.arange(3, g10.n_rows, 5)
        got = list(g10.image_examples(rows))
        assert [r for r, _ in got] == rows.tolist()
        images = f["images"][()]
        assert all(np.array_equal(image, images[r]) for r, image in got)


def test_a_damaged_compressed_chunk_is_one_line(layouts, tmp_path):
    path = tmp_path / "damaged.h5"
    path.write_bytes(layouts["gzip_image"].read_bytes())
    with h5py.File(path) as f:
        info = f["images"].id.get_chunk_info(10)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * min(64, info.size))
    with pytest.raises(UserError, match=r"damaged\.h5: cannot read `images`") as err:
        inspect_file(path)
    assert "\n" not in str(err.value)

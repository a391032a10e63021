"""The split views' storage: an HDF5 source's pixels are kept raw (PPM in a `datasets` Image column), a Hub
source's PNG is kept as it is; either way the view is an ordinary datasets Arrow file whose images come back
pixel-exact as PIL images, in the manifest's order, and the image arm shows the same pixels it did from PNG."""

from __future__ import annotations

import io

import numpy as np
import pytest
from data_files import SIDE, write_foreign

from astroreason.arms import ArmSettings, build_arm
from astroreason.arms.image import resize_image
from astroreason.data.splits import SPLIT_NAMES, VIEW_BATCH_ROWS, load_manifest, prepare, split_path

PPM_HEADER = b"P6\n%d %d\n255\n" % (SIDE, SIDE)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    return write_foreign(tmp_path_factory.mktemp("views") / "g10.h5")


@pytest.fixture(scope="module")
def prepared(foreign, tmp_path_factory):
    return prepare(foreign[0], tmp_path_factory.mktemp("views_prep") / "out", seed=5)


def test_a_view_is_a_plain_datasets_file_with_every_image_pixel_exact(foreign, prepared):
    from datasets import Dataset, Image

    _, cols, _ = foreign
    manifest = load_manifest(prepared)
    assert len(manifest.rows["train"]) > 2 * VIEW_BATCH_ROWS  # the order is checked across several batches
    for name in SPLIT_NAMES:
        view = Dataset.from_file(str(split_path(prepared, name)))  # datasets alone, no astroreason reader
        assert isinstance(view.features["image"], Image)
        shown = np.stack([np.asarray(im) for im in view["image"]])
        assert np.array_equal(shown, cols["images"][manifest.rows[name]])
        assert view["label"] == cols["ans"][manifest.rows[name]].tolist()
    assert not (prepared / "staging.arrow").exists()


def test_an_hdf5_view_holds_raw_pixels_not_png(foreign, prepared):
    from datasets import Dataset

    _, cols, _ = foreign
    manifest = load_manifest(prepared)
    cells = Dataset.from_file(str(split_path(prepared, "val"))).cast_column("image", _undecoded())["image"]
    for cell, row in zip(cells, manifest.rows["val"]):
        assert cell["bytes"] == PPM_HEADER + cols["images"][row].tobytes()


def test_the_image_arm_shows_the_pixels_a_png_view_gave(foreign, prepared):
    from PIL import Image

    _, cols, _ = foreign
    manifest = load_manifest(prepared)
    arm = build_arm(ArmSettings(data_dir=str(prepared), image_size=24), "test", max_samples=10)
    for example, row in zip(arm.rows(), manifest.rows["test"]):
        png = io.BytesIO()
        Image.fromarray(cols["images"][row]).save(png, format="PNG")  # how the views stored it before
        before = resize_image(Image.open(io.BytesIO(png.getvalue())), 24)
        assert example["image"].mode == "RGB" and example["image"].size == (24, 24)
        assert example["image"].tobytes() == before.tobytes()


def test_a_hub_source_keeps_its_png_bytes(tmp_path):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(10), 10)
    images = rng.integers(0, 256, (len(labels), SIDE, SIDE, 3), dtype=np.uint8)
    pngs = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    features = Features({"image": ImageFeature(), "label": ClassLabel(num_classes=10)})
    Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in pngs], "label": labels.tolist()}, features=features
    ).save_to_disk(str(tmp_path / "hub"))
    prepared = prepare(tmp_path / "hub", tmp_path / "out", seed=0)
    manifest = load_manifest(prepared)
    for name in SPLIT_NAMES:
        view = Dataset.from_file(str(split_path(prepared, name)))
        assert [c["bytes"] for c in view.cast_column("image", _undecoded())["image"]] == [
            pngs[r] for r in manifest.rows[name]
        ]
        assert np.array_equal(np.stack([np.asarray(im) for im in view["image"]]), images[manifest.rows[name]])


def _undecoded():
    from datasets import Image

    return Image(decode=False)

"""The arms: one object per modality, built once per split from one read of the manifest, whose rows are what
training, evaluation and the audit's controls all use."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from evalkit import build_codec

from astroreason.arms import ArmSettings, ImageArm, TokenArm, build_arm
from astroreason.data.splits import load_manifest
from astroreason.errors import CheckFailed, UserError


@pytest.fixture(scope="module")
def codec(prepared_dir, tmp_path_factory):
    return build_codec(prepared_dir, tmp_path_factory.mktemp("arms") / "fsq")


@pytest.fixture
def manifest_reads(monkeypatch):
    """How many times a manifest.json is read from disk."""
    reads = []
    read_bytes = pathlib.Path.read_bytes

    def counting(self):
        if self.name == "manifest.json":
            reads.append(self)
        return read_bytes(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", counting)
    return reads


def settings(prepared_dir, codec=None, **kwargs) -> ArmSettings:
    if codec is not None:
        kwargs.update(modality="tokens", codec=str(codec))
    return ArmSettings(data_dir=str(prepared_dir), image_size=56, **kwargs)


def test_the_image_arm_reads_its_manifest_once(prepared_dir, manifest_reads):
    arm = build_arm(settings(prepared_dir), "test", max_samples=6)
    rows = arm.rows()
    arm.lint([r["prompt"] for r in rows])
    assert isinstance(arm, ImageArm) and len(manifest_reads) == 1
    # A second split of the same run shares the manifest already read.
    build_arm(settings(prepared_dir), "val", max_samples=2, manifest=arm.manifest).rows()
    assert len(manifest_reads) == 1


def test_the_token_arm_reads_its_manifest_and_cache_once(prepared_dir, codec, manifest_reads, monkeypatch):
    cache_opens = []  # each opening of a token cache reads its meta.json
    read_text = pathlib.Path.read_text

    def counting(self, *args, **kwargs):
        if self.name == "meta.json":
            cache_opens.append(self)
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", counting)
    arm = build_arm(settings(prepared_dir, codec), "test", max_samples=6)
    rows = arm.rows()
    arm.lint([r["prompt"] for r in rows])
    assert isinstance(arm, TokenArm) and len(rows) == 6 and len(arm.positions) == 6
    assert len(manifest_reads) == 1  # the view, its positions and the cache's data check share the arm's manifest
    assert len(cache_opens) == 1  # and the cache is opened once for the view and its positions


def test_rows_are_the_training_dataset(prepared_dir, codec):
    for s in (settings(prepared_dir), settings(prepared_dir, codec)):
        arm = build_arm(s, "test", max_samples=5)
        rows, dataset = arm.rows(), arm.dataset(with_completion=True)
        assert len(rows) == arm.n == 5
        assert [r["prompt"] for r in rows] == dataset["prompt"]
        assert [r["label"] for r in rows] == dataset["label"] == arm.labels
        assert [c[0]["content"] for c in dataset["completion"]][0].startswith("<answer>")
        if s.modality == "image":
            assert all(r["image"].size == (56, 56) for r in rows)
            assert all(r["image"].tobytes() == d.tobytes() for r, d in zip(rows, dataset["image"]))
        else:
            assert isinstance(arm, TokenArm) and "image" not in dataset.column_names and "image" not in rows[0]
    # The two arms hold the same galaxies, in the same order, with the same labels: only the representation differs.
    image, tokens = (build_arm(s, "train") for s in (settings(prepared_dir), settings(prepared_dir, codec)))
    assert image.labels == tokens.labels and list(image.positions) == list(tokens.positions)


def test_without_the_galaxy(prepared_dir, codec):
    image = build_arm(settings(prepared_dir), "test", max_samples=8)
    blank = image.without_galaxy()
    assert [r["prompt"] for r in blank] == [r["prompt"] for r in image.rows()]
    assert [r["label"] for r in blank] == image.labels
    assert all(not np.asarray(r["image"]).any() and r["image"].size == (56, 56) for r in blank)

    tokens = build_arm(settings(prepared_dir, codec), "test", max_samples=8)
    real, other = tokens.rows(), tokens.without_galaxy(seed=0)
    assert [r["label"] for r in other] == tokens.labels
    assert sorted(r["prompt"][0]["content"] for r in other) == sorted(r["prompt"][0]["content"] for r in real)
    assert [r["prompt"] for r in other] != [r["prompt"] for r in real]  # another galaxy's codes, same multiset


def test_a_template_carrying_a_column_needs_the_override(prepared_dir):
    template = "Galaxy number {row_index}. What is it?"
    with pytest.raises(CheckFailed, match="row_index.*--allow_prompt_fields COLUMN --override_reason WHY"):
        build_arm(settings(prepared_dir, prompt_template=template), "test", max_samples=3)
    with pytest.raises(UserError, match="override_reason: given without allow_prompt_fields"):
        settings(prepared_dir, override_reason="why").lint_override()

    allowed = settings(
        prepared_dir, prompt_template=template, allow_prompt_fields=["row_index"], override_reason="planted leak"
    )
    rows = build_arm(allowed, "test", max_samples=3).rows()
    source_rows = load_manifest(prepared_dir).rows["test"][:3]
    assert [r["prompt"][0]["content"] for r in rows] == [f"Galaxy number {i}. What is it?" for i in source_rows]
    # A run's recorded template (linted when the run was made) is rendered as it was, without the override.
    recorded = build_arm(settings(prepared_dir, prompt_template=template), "test", max_samples=3, lint_template=False)
    assert [r["prompt"] for r in recorded.rows()] == [r["prompt"] for r in rows]


def test_bad_settings_are_one_line():
    with pytest.raises(UserError, match="codec: modality=tokens needs --codec DIR"):
        ArmSettings(data_dir="x", modality="tokens")
    with pytest.raises(UserError, match="image_size: must be a positive number of pixels"):
        ArmSettings(data_dir="x", image_size=0)
    with pytest.raises(UserError, match="modality: expected one of image, tokens"):
        ArmSettings(data_dir="x", modality="audio")

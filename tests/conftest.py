"""Shared fixtures: everything is built offline, on the CPU, from the project's own code."""

from __future__ import annotations

import os

import pytest

# Nothing in the tests may reach the Hugging Face Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def surrogate_h5(tmp_path_factory):
    """A small GalSim surrogate of Galaxy10 DECaLS (shuffled rows, 64 px, with g,r,i,z flux)."""
    from astroreason.data.surrogate import synthesize

    return synthesize(tmp_path_factory.mktemp("surrogate") / "g10.h5", n=240, size=64, seed=0, flux=True)


@pytest.fixture(scope="session")
def prepared_dir(surrogate_h5, tmp_path_factory):
    """The surrogate, split (seeded, stratified, deduplicated) into a prepared directory."""
    from astroreason.data.splits import prepare

    out = tmp_path_factory.mktemp("prepared") / "g10"
    prepare(surrogate_h5, out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Qwen2.5-VL with a locally trained tokenizer and an image-only processor."""
    from astroreason.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2_5_vl", arch="qwen2_5_vl", seed=0)

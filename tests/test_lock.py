"""The install is the locked one: every package in requirements-lock.txt that is installed here has exactly the
locked version (a floating range would let a fresh clone test something else), and the README names the versions
of the main libraries as the lock has them."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
MAIN = ("torch", "transformers", "trl", "accelerate", "peft", "datasets")


def locked() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements-lock.txt").read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line):
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def installed() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}


def test_installed_versions_are_the_locked_ones():
    pins, have = locked(), installed()
    assert all(name in pins for name in MAIN)
    # torch's CPU wheel is `2.13.0+cpu`: the local label is the build, not another version.
    drift = {
        name: (have[name], pin)
        for name, pin in pins.items()
        if name in have and Version(have[name]).public != Version(pin).public
    }
    assert not drift, f"installed (left) differs from requirements-lock.txt (right): {drift}"
    assert all(name in have for name in MAIN)


def test_readme_names_the_locked_versions():
    pins = locked()
    paragraph = next(p for p in (REPO / "README.md").read_text().split("\n\n") if p.startswith("Tested with"))
    line = " ".join(paragraph.split())
    named = dict(re.findall(r"([a-z]+) (\d+\.\d+\.\d+)", line))
    assert set(named) == set(MAIN), line
    assert named == {name: pins[name] for name in MAIN}, line

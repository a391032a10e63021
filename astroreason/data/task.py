"""The classification task of a prepared split: its class names (the manifest's `classes`, by label), what is
classified (the object's noun) and the instruction that names them in every prompt (`astroreason.prompts`).

The wording is per release (the manifest's `release`); a release not listed here gets a plain one. Galaxy10 DECaLS's
instruction is the one every run has recorded since the first (its sha256 is in their fingerprints): it must not
change by a byte.
"""

from __future__ import annotations

from dataclasses import dataclass

from .galaxy10 import DECALS_CLASSES

# What is classified, per release: (the object's noun, what of it the instruction asks for, the class list's name).
_WORDING = {
    "decals": ("galaxy", "the galaxy's morphology", "Galaxy10 DECaLS classes"),
    "sdss": ("galaxy", "the galaxy's morphology", "Galaxy10 SDSS classes"),
    "mmu-spectra": ("star", "the star's spectral type", "classes"),
}
_PLAIN = ("source", "the source", "classes")
_COUNTS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
ANSWER_FORMAT = (
    "You may reason briefly first. Then give the class name inside answer tags, like this: <answer>CLASS NAME</answer>."
)


@dataclass(frozen=True)
class Task:
    """A split's classification task.

    Args:
        classes: Class names, by label: what an answer names (`<answer>NAME</answer>`).
        noun: What one row is (`galaxy`, `star`; `source` for a release without its own wording).
        instruction: The prompt's instruction: the classes, one per answer, and the answer format.
    """

    classes: tuple[str, ...]
    noun: str
    instruction: str


def make_task(release: str, classes) -> Task:
    """The task of a split of `release` whose labels name `classes`."""
    classes = tuple(classes)
    noun, what, kind = _WORDING.get(release, _PLAIN)
    count = _COUNTS[len(classes) - 1] if 0 < len(classes) <= len(_COUNTS) else str(len(classes))
    instruction = f"Classify {what} as exactly one of these {count} {kind}: {', '.join(classes)}.\n{ANSWER_FORMAT}"
    return Task(classes, noun, instruction)


def task_of(manifest) -> Task:
    """The task of a prepared split, from its manifest (`data.splits.Manifest`: `release`, `classes`)."""
    return make_task(manifest.release, manifest.classes)


# The task every run had before the classes came from the data: the default where no manifest is at hand.
GALAXY10 = make_task("decals", DECALS_CLASSES)

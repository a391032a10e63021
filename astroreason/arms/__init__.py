"""The arms: how a galaxy reaches the model in each modality, built once per split and handed to every consumer.

An arm is one split of one modality: its rows (in the manifest's order), their prompts (from the prompt template,
linted), their labels and positions in the split, and the galaxy itself: the resized image (`ImageArm`) or the codec
ids rendered as text (`TokenArm`). The only difference between the arms is the galaxy's representation. Training
(`training.galaxy_dataset`), evaluation (`evaluation.harness.evaluation_rows`), the audit's model controls
(`audit.probes.control_rows`) and the demo all take their rows from an arm, so they see the same prompts and
the same pixels.
"""

from __future__ import annotations

from .base import Arm, ArmSettings, override_hint, permuted_labels
from .image import ImageArm, resize_image
from .tokens import TokenArm

ARMS: dict[str, type[Arm]] = {"image": ImageArm, "tokens": TokenArm}


def build_arm(
    settings: ArmSettings, split: str, *, max_samples: int | None = None, manifest=None, lint_template: bool = True
) -> Arm:
    """The arm of `settings.modality` for one split (see `Arm`)."""
    return ARMS[settings.modality](
        settings, split, max_samples=max_samples, manifest=manifest, lint_template=lint_template
    )


__all__ = [
    "ARMS",
    "Arm",
    "ArmSettings",
    "ImageArm",
    "TokenArm",
    "build_arm",
    "override_hint",
    "permuted_labels",
    "resize_image",
]

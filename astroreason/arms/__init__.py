"""The arms: how a galaxy reaches the model in each modality, built once per split and handed to every consumer.

An arm is one split of one modality: its rows (in the manifest's order), their prompts (from the prompt template,
linted), their labels and positions in the split, and the galaxy itself: the resized image (`ImageArm`) or the codec
ids rendered as text (`TokenArm`). The only difference between the arms is the galaxy's representation. Training
(`training.galaxy_dataset`), evaluation (`evaluation.harness.evaluation_rows`), the audit's model controls
(`audit.probes.control_rows`) and the demo all take their rows from an arm, so they see the same prompts and
the same pixels.

An arm class is the one home of its modality: its view, its representation and default template, its blank-input
control, its zoom tool (`Arm.zoom_tool`: `ImageZoom`, `TokenZoom`, on the shared `zoom_tool.ZoomTool` and the box
rules of `box`) and its model checks (`Arm.check_model`, `Arm.visual_tokens`). Adding a modality is one module here
and one line in `ARMS`; nothing outside this package compares a modality's name.
"""

from __future__ import annotations

from .base import Arm, ArmSettings, override_hint, permuted_labels
from .box import BoxError, BoxLimits, fit_box, parse_box
from .image import BlankImageZoom, ImageArm, ImageZoom, resize_image
from .spectrum_plot import SpectrumPlotArm, SpectrumPlotter
from .spectrum_tokens import SpectrumTokenArm
from .tokens import TokenArm, TokenZoom
from .zoom_tool import DEFAULT_MAX_ASPECT, ZoomCall, ZoomTool

# The registry of modalities: `ArmSettings.modality` names one of these.
ARMS: dict[str, type[Arm]] = {arm.modality: arm for arm in (ImageArm, TokenArm, SpectrumPlotArm, SpectrumTokenArm)}


def build_arm(
    settings: ArmSettings, split: str, *, max_samples: int | None = None, manifest=None, lint_template: bool = True
) -> Arm:
    """The arm of `settings.modality` for one split (see `Arm`); `settings` is an `ArmSettings` or any config that
    inherits it (the recipes', the evaluation's), checked when it was made."""
    return settings.arm_class()(
        settings, split, max_samples=max_samples, manifest=manifest, lint_template=lint_template
    )


__all__ = [
    "ARMS",
    "DEFAULT_MAX_ASPECT",
    "Arm",
    "ArmSettings",
    "BlankImageZoom",
    "BoxError",
    "BoxLimits",
    "ImageArm",
    "ImageZoom",
    "SpectrumPlotArm",
    "SpectrumPlotter",
    "SpectrumTokenArm",
    "TokenArm",
    "TokenZoom",
    "ZoomCall",
    "ZoomTool",
    "build_arm",
    "fit_box",
    "override_hint",
    "parse_box",
    "permuted_labels",
    "resize_image",
]

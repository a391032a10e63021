"""The spectrum token arm: a spectrum as its codec ids (the built-in 1D FSQ codec, or AION-1's spectrum codec),
rendered as text into the prompt: the token arm's path (`TokenArm`: the token cache, the renderings, the blank-input
control of another object's codes) on a spectra split, with its own wording."""

from __future__ import annotations

from ..data.spectra.stars import SPECTRAL_CLASSES
from ..data.task import Task, make_task
from ..errors import UserError
from ..prompts import literal
from .base import ArmSettings
from .tokens import TokenArm


def spectrum_tokens_template(task: Task) -> str:
    """The spectrum token arm's default template for `task`: `{tokens}` is the codec ids as text."""
    return (
        f"The {task.noun}'s spectrum is given as the discrete tokens of a spectrum codec, written as text:\n"
        "{tokens}\n" + literal(task.instruction)
    )


class SpectrumTokenArm(TokenArm):
    modality = "spectrum_tokens"
    template_for = staticmethod(spectrum_tokens_template)
    default_template = spectrum_tokens_template(make_task("mmu-spectra", SPECTRAL_CLASSES))
    zoom_instruction = ""  # no zoom tool yet (`zoom_tool`)
    blank_input = "another spectrum's codes"
    reads_spectra = True
    marker = "^"

    @classmethod
    def check_settings(cls, settings: ArmSettings) -> None:
        if settings.token_crop is not None:
            raise UserError("token_crop: a centre box is the image token arm's; a spectrum has none")
        super().check_settings(settings)

    @classmethod
    def zoom_tool(cls, settings: ArmSettings, **kwargs):
        raise UserError(
            "zoom: the spectrum_tokens arm has no zoom tool yet (a wavelength range); run it without --zoom"
        )

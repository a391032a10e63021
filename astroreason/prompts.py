"""Prompt templates: one per modality, identical except for how the galaxy is represented.

A template is a `str.format` string whose only field is the galaxy's representation: none for the image arm (TRL
inserts the image block itself, from the dataset's `image` column) and `{tokens}` for the token arm (the codec ids
rendered as text). Nothing else may enter a prompt: a row index, an id, a sky position or any other dataset column
can leak the label (Galaxy10 DECaLS is sorted by class; docs/facts.md). `template_fields` lists a template's fields
so that the integrity lint can check this.
"""

from __future__ import annotations

import string

from .data.galaxy10 import DECALS_CLASSES
from .errors import UserError

MODALITIES = ("image", "tokens")

# The one field each modality's template must carry (and the only one it may carry).
REPRESENTATION_FIELDS: dict[str, tuple[str, ...]] = {"image": (), "tokens": ("tokens",)}

# The shared instruction: the ten class names and the answer format. Reasoning before the answer is allowed.
INSTRUCTION = (
    "Classify the galaxy's morphology as exactly one of these ten Galaxy10 DECaLS classes: "
    + ", ".join(DECALS_CLASSES)
    + ".\nYou may reason briefly first. Then give the class name inside answer tags, "
    "like this: <answer>CLASS NAME</answer>."
)

TEMPLATES: dict[str, str] = {
    "image": "The image shows a galaxy.\n" + INSTRUCTION,
    "tokens": (
        "The galaxy is given as the discrete tokens of an image codec, written as text:\n{tokens}\n" + INSTRUCTION
    ),
}


# The zoom episodes' system turn (`astroreason.zoom`): the tool exists, what a box is, what comes back. The tool's
# own schema (name, argument, docstring) is rendered by the chat template beside it.
_ZOOM_BOX = (
    "a box [x1, y1, x2, y2] given as fractions (0 to 1) of the galaxy's width and height from the top-left corner"
)
ZOOM_INSTRUCTIONS: dict[str, str] = {
    "image": (
        "Before you answer, you may call the zoom tool to look again at part of the galaxy at full resolution: "
        f"give it {_ZOOM_BOX}. Each call returns that part as a new image. Calls are limited; answer in the end."
    ),
    "tokens": (
        "Before you answer, you may call the zoom tool to look again at part of the galaxy at full resolution: "
        f"give it {_ZOOM_BOX}. Each call returns the codec tokens of that part, encoded again from the "
        "full-resolution image, written as text like the first ones. Calls are limited; answer in the end."
    ),
}


def zoom_prompt(prompt: list[dict], modality: str) -> list[dict]:
    """A prompt with the zoom instruction as its system turn (before the user turn TRL puts the image into)."""
    if modality not in ZOOM_INSTRUCTIONS:
        raise UserError(f"modality: expected one of {', '.join(ZOOM_INSTRUCTIONS)}, got {modality!r}")
    return [{"role": "system", "content": ZOOM_INSTRUCTIONS[modality]}, *prompt]


def template_fields(template: str) -> tuple[str, ...]:
    """The replacement fields of a format string, in order of first appearance (`{}` is listed as "")."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise UserError(f"template: not a valid format string ({err})") from None
    fields: list[str] = []
    for _, name, _, _ in parsed:
        if name is not None and name not in fields:
            fields.append(name)
    return tuple(fields)


def check_template(modality: str, template: str) -> None:
    """Refuse a template whose fields are anything but the modality's representation."""
    if modality not in MODALITIES:
        raise UserError(f"modality: expected one of {', '.join(MODALITIES)}, got {modality!r}")
    fields = template_fields(template)
    expected = REPRESENTATION_FIELDS[modality]
    if fields != expected:
        want = ", ".join("{" + f + "}" for f in expected) or "no field"
        got = ", ".join("{" + f + "}" for f in fields) or "no field"
        raise UserError(
            f"template: the {modality} template must carry {want} (the galaxy's representation) and nothing else; "
            f"it has {got}"
        )


def build_prompt(modality: str, *, tokens_text: str | None = None, template: str | None = None) -> list[dict]:
    """A conversational prompt for TRL: one user turn whose content is a plain string.

    For `image`, the galaxy is the dataset's `image` column and TRL inserts the image block before this text; for
    `tokens`, `tokens_text` (the rendered codec ids) is written into the text.
    """
    template = TEMPLATES.get(modality) if template is None else template
    check_template(modality, template)
    if modality == "image":
        if tokens_text is not None:
            raise UserError("tokens_text: the image prompt carries no tokens (the image comes from the `image` column)")
        text = template.format()
    else:
        if not tokens_text:
            raise UserError("tokens_text: the tokens prompt needs the galaxy's rendered token text")
        text = template.format(tokens=tokens_text)
    return [{"role": "user", "content": text}]


def answer_text(label: int) -> str:
    """The SFT target for a class index: `<answer>Round Smooth</answer>`."""
    try:
        index = int(label)
    except (TypeError, ValueError):
        raise UserError(f"label: expected a class index 0-{len(DECALS_CLASSES) - 1}, got {label!r}") from None
    if index != label or not 0 <= index < len(DECALS_CLASSES):
        raise UserError(f"label: expected a class index 0-{len(DECALS_CLASSES) - 1}, got {label!r}")
    return f"<answer>{DECALS_CLASSES[index]}</answer>"

"""Prompt templates: one per arm, identical except for how the galaxy is represented.

A template is a `str.format` string whose only field is the galaxy's representation (`Arm.representation_fields`):
none for the image arm (TRL inserts the image block itself, from the dataset's `image` column) and `{tokens}` for
the token arm (the codec ids rendered as text). The functions here take the arm (anything with its `modality`,
`representation_fields`, `default_template` and `zoom_instruction`), never a modality's name. Nothing else may
enter a prompt: a row index, an id, a sky position or any other dataset column can leak the label (Galaxy10 DECaLS
is sorted by class; docs/facts.md). `template_fields` lists a template's fields so that the integrity lint can check
this.
"""

from __future__ import annotations

import string

from .data.task import GALAXY10, Task
from .errors import UserError

# The shared instruction of Galaxy10 DECaLS: the ten class names and the answer format. Reasoning before the answer
# is allowed. A split's own instruction is its task's (`data.task.task_of(manifest)`).
INSTRUCTION = GALAXY10.instruction


def literal(text: str) -> str:
    """`text` as literal text inside a format string (class names are data: a brace in one is no field)."""
    return text.replace("{", "{{").replace("}", "}}")


def image_template(task: Task) -> str:
    """The image arm's default template for `task` (`Arm.default_template`)."""
    return f"The image shows a {task.noun}.\n" + literal(task.instruction)


def tokens_template(task: Task) -> str:
    """The token arm's default template for `task` (`Arm.default_template`): `{tokens}` is the codec ids as text."""
    return (
        f"The {task.noun} is given as the discrete tokens of an image codec, written as text:\n{{tokens}}\n"
        + literal(task.instruction)
    )


# The templates of Galaxy10 DECaLS: their text is recorded in runs (its sha256 in fingerprints), byte for byte.
IMAGE_TEMPLATE = image_template(GALAXY10)
TOKENS_TEMPLATE = tokens_template(GALAXY10)


# The zoom episodes' system turn (`astroreason.zoom`, `Arm.zoom_instruction`): the tool exists, what a box is, what
# comes back. The tool's own schema (name, argument, docstring) is rendered by the chat template beside it.
_ZOOM_BOX = (
    "a box [x1, y1, x2, y2] given as fractions (0 to 1) of the galaxy's width and height from the top-left corner"
)
IMAGE_ZOOM_INSTRUCTION = (
    "Before you answer, you may call the zoom tool to look again at part of the galaxy at full resolution: "
    f"give it {_ZOOM_BOX}. Each call returns that part as a new image. Calls are limited; answer in the end."
)
TOKENS_ZOOM_INSTRUCTION = (
    "Before you answer, you may call the zoom tool to look again at part of the galaxy at full resolution: "
    f"give it {_ZOOM_BOX}. Each call returns the codec tokens of that part, encoded again from the "
    "full-resolution image, written as text like the first ones. Calls are limited; answer in the end."
)


def zoom_prompt(prompt: list[dict], arm) -> list[dict]:
    """A prompt with the arm's zoom instruction (`Arm.zoom_instruction`) as its system turn (before the user turn TRL
    puts the image into)."""
    return [{"role": "system", "content": arm.zoom_instruction}, *prompt]


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


def check_template(arm, template: str) -> None:
    """Refuse a template whose fields are anything but the arm's representation (`Arm.representation_fields`)."""
    fields = template_fields(template)
    expected = arm.representation_fields
    if fields != expected:
        want = ", ".join("{" + f + "}" for f in expected) or "no field"
        got = ", ".join("{" + f + "}" for f in fields) or "no field"
        raise UserError(
            f"template: the {arm.modality} template must carry {want} (the galaxy's representation) and nothing "
            f"else; it has {got}"
        )


def build_prompt(arm, text: str | None = None, template: str | None = None) -> list[dict]:
    """A conversational prompt for TRL: one user turn whose content is a plain string, `template` (default: the arm's,
    `Arm.default_template`) with the galaxy's representation as text in its field (the token arm's rendered codec
    ids). An arm without such a field (the image arm) has no `text`: TRL inserts its galaxy before this text."""
    template = arm.default_template if template is None else template
    check_template(arm, template)
    (field, *_) = arm.representation_fields or (None,)
    if field is None:
        if text is not None:
            raise UserError(f"text: the {arm.modality} prompt carries no text representation (the galaxy is beside it)")
        return [{"role": "user", "content": template.format()}]
    if not text:
        raise UserError(f"text: the {arm.modality} prompt needs the galaxy's representation as text")
    return [{"role": "user", "content": template.format(**{field: text})}]


def answer_text(label: int, classes) -> str:
    """The SFT target for a class index, naming its class in `classes` (the split's, by label):
    `<answer>Round Smooth</answer>`."""
    try:
        index = int(label)
    except (TypeError, ValueError):
        raise UserError(f"label: expected a class index 0-{len(classes) - 1}, got {label!r}") from None
    if index != label or not 0 <= index < len(classes):
        raise UserError(f"label: expected a class index 0-{len(classes) - 1}, got {label!r}")
    return f"<answer>{classes[index]}</answer>"

"""What every arm shares: its settings, the split's rows and positions, prompts from the template, the lint; and
what each modality must say about itself (its template, its zoom tool, its model checks), so that nothing outside
`astroreason.arms` asks which modality it has."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from itertools import islice
from typing import ClassVar

import numpy as np

from ..data.splits import load_manifest
from ..data.task import Task, task_of
from ..errors import CheckFailed, UserError
from ..integrity.lint import LintOverride, check_dataset, check_template, render_text, split_metadata
from ..prompts import answer_text, build_prompt, template_fields


@dataclass
class ArmSettings:
    """How a galaxy reaches the model (its arm): the prepared data, the modality and its settings, the prompt. The
    recipes' `GalaxyScriptArguments` and the evaluation's `EvalConfig` inherit these fields, and an arm, its zoom
    tool and its model checks take any of them as they are. Each field's `help` is what `--help` prints."""

    data_dir: str = field(
        default="runs/demo/prepared",
        metadata={"help": "Prepared split directory (`astroreason data prepare`), read by every arm."},
    )
    modality: str = field(
        default="image",
        metadata={
            "help": "The arm (`arms.ARMS`): `image` shows the galaxy as pixels; `tokens` writes its codec ids into the "
            "prompt as text; on a spectra split, `spectrum_plot` shows the spectrum as a plot and `spectrum_tokens` "
            "writes its spectrum codec's ids."
        },
    )
    codec: str | None = field(
        default=None,
        metadata={"help": "Codec directory (`astroreason tokens train`, or an AION-1 codec); required for tokens."},
    )
    rendering: str = field(
        default="ints", metadata={"help": "How codec ids are written as text: ints, rows or special (token arm)."}
    )
    image_size: int = field(
        default=112,
        metadata={
            "help": "Side in pixels images are resized to before the processor; a multiple of the model "
            "family's grid, checked once the model is known: one visual token per 28x28 px on Qwen2.5-VL "
            "(112 px = 16 tokens), per 32x32 px on Qwen3-VL (128 px = 16); any side on Gemma 3, whose "
            "processor resizes every image to its tower's (a fixed number of tokens). See docs/models.md."
        },
    )
    token_crop: float | None = field(
        default=None,
        metadata={
            "help": "Tokens arm: the prompt also carries the codes of the field's centre box of this side (a "
            "fraction, e.g. 0.25), encoded again at the codec's resolution: a zoom fixed in advance, the no-zoom "
            "control of a token zoom arm at its code budget. Default: the whole field only."
        },
    )
    prompt_template: str | None = field(
        default=None,
        metadata={
            "help": "The prompt (a str.format string; default: the modality's template). A dataset column in "
            "it is refused by the prompt lint unless allow_prompt_fields allows it."
        },
    )
    allow_prompt_fields: list[str] | None = field(
        default=None,
        metadata={
            "help": "Lint override, for deliberate experiments only: the columns a prompt may carry (e.g. "
            "row_index). Needs override_reason; recorded in prompt_lint.json and the results ledger."
        },
    )
    override_reason: str | None = field(
        default=None, metadata={"help": "Why the lint override is used (required with allow_prompt_fields)."}
    )

    def __post_init__(self):
        self.check_arm()

    def check_arm(self) -> None:
        """Refuse settings no arm can have: an unknown modality, a size that is no size, then the modality's own
        checks (`Arm.check_settings`). The one place they run; a subclass's `__post_init__` calls it."""
        from . import ARMS  # the registry is built from the arm classes, which import this module

        if self.modality not in ARMS:
            raise UserError(f"modality: expected one of {', '.join(ARMS)}, got {self.modality!r}")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size <= 0:
            # The multiple the model's grid needs is checked once the model is known (`Arm.check_model`).
            raise UserError(f"image_size: must be a positive number of pixels, got {self.image_size!r}")
        self.arm_class().check_settings(self)

    def arm_class(self) -> type[Arm]:
        """The arm of `modality` (`arms.ARMS`)."""
        from . import ARMS

        return ARMS[self.modality]

    def lint_override(self) -> LintOverride | None:
        """The explicit prompt-lint override these settings ask for, or None; a reason without columns is refused."""
        if not self.allow_prompt_fields:
            if self.override_reason:
                raise UserError("override_reason: given without allow_prompt_fields (name the columns it allows)")
            return None
        return LintOverride(tuple(self.allow_prompt_fields), self.override_reason or "")


@contextmanager
def override_hint():
    """A lint refusal names the arguments of the recipes' and the evaluation's override."""
    try:
        yield
    except CheckFailed as err:
        raise CheckFailed(f"{err} (--allow_prompt_fields COLUMN --override_reason WHY)") from None


def permuted_labels(dataset, seed: int):
    """The dataset with its `label` column permuted among its rows (seeded)."""
    labels = np.asarray(dataset["label"], np.int64)
    permuted = labels[np.random.default_rng(seed).permutation(len(labels))]
    return dataset.remove_columns("label").add_column("label", permuted.tolist())


class Arm(ABC):
    """One split of one arm, built once from the manifest: the split's view in this arm (`view`, a `datasets`
    Dataset), how many of its first rows are used (`n`, from `max_samples`; rows are already a seeded shuffle), their
    positions in the split and the prompt of each.

    A template naming a dataset column is rendered only under the lint override (a deliberate experiment), with each
    row's own metadata; `lint_template=False` renders a run's recorded template, linted when the run was made (the
    audit's controls).
    """

    modality: ClassVar[str]
    columns: ClassVar[tuple[str, ...]]  # the view's columns a row keeps beside its prompt (TRL inserts images itself)
    # The arm's template for a split's task (`astroreason.prompts`). An arm's `default_template`, the prompt when
    # `prompt_template` is unset, is the one for its manifest's task (`data.task.task_of`); the class's is Galaxy10
    # DECaLS's, for callers with no split at hand (the benches).
    template_for: ClassVar[Callable[[Task], str]]
    default_template: ClassVar[str]
    representation_fields: ClassVar[tuple[str, ...]]  # the template's field for the galaxy as text (none: beside it)
    zoom_instruction: ClassVar[str]  # the zoom episodes' system turn (`prompts.zoom_prompt`)
    blank_input: ClassVar[str]  # what the blank-input control shows instead of the galaxy, in the audit's words
    carries_image: ClassVar[bool] = False  # rows carry the galaxy as an `image` (backends and collators get it)
    uses_codec: ClassVar[bool] = False  # the arm reads `codec`
    zoom_needs_family: ClassVar[bool] = False  # the tool's default smallest box is one of the family's patches
    marker: ClassVar[str]  # its runs' matplotlib marker in the report's figures
    reads_spectra: ClassVar[bool] = False  # its prepared directory holds spectra (`Manifest.spectra`), not images

    def __init__(
        self,
        settings: ArmSettings,
        split: str,
        *,
        max_samples: int | None = None,
        manifest=None,
        lint_template: bool = True,
    ):
        self.settings, self.split = settings, split
        self.manifest = load_manifest(settings.data_dir) if manifest is None else manifest
        held = "spectra" if self.manifest.spectra else "images"
        read = "spectra" if self.reads_spectra else "images"
        if held != read:
            raise UserError(f"data_dir: {settings.data_dir} holds {held}; the {self.modality} arm reads {read}")
        self.task = task_of(self.manifest)
        self.default_template = self.template_for(self.task)
        self.view = self.load_view()
        self.n = len(self.view) if max_samples is None else min(max_samples, len(self.view))
        self.template = settings.prompt_template
        self.meta = None
        if self.template is not None and set(template_fields(self.template)) - set(self.representation_fields):
            if lint_template:
                with override_hint():
                    check_template(self, self.template, override=settings.lint_override())
            self.meta = split_metadata(settings.data_dir, split, positions=self.positions, manifest=self.manifest)

    # --- what each modality defines ---

    @classmethod
    @abstractmethod
    def check_settings(cls, settings: ArmSettings) -> None:
        """Refuse (one line) settings this modality cannot use; run by `ArmSettings.check_arm`."""

    @classmethod
    @abstractmethod
    def check_model(cls, settings: ArmSettings, model: str | None) -> None:
        """Refuse (one line) a model (a local directory or a Hub name, read from its config only) that this arm's
        galaxies do not fit, before anything is loaded: the image size against the family's grid, the codec
        against the rendering."""

    @classmethod
    def check_checkpoint(cls, settings: ArmSettings, model: str) -> None:
        """`check_model` for a checkpoint that is asked as it is (evaluation): nothing will be added to it."""
        cls.check_model(settings, model)

    @classmethod
    def needs_code_tokens(cls, settings: ArmSettings) -> bool:
        """Whether the model needs one added token per code id (the special rendering's surgery)."""
        return False

    @classmethod
    def visual_tokens(cls, family, processor, settings: ArmSettings) -> int | None:
        """Visual tokens of one of this arm's images on the family's processor; None for an arm without images."""
        return None

    @classmethod
    def answer_settings(cls, settings: ArmSettings) -> dict:
        """What of these settings decides an answer besides the prompt text (part of every evaluation sample's
        key, `evaluation.harness.answer_settings`)."""
        return {}

    @classmethod
    @abstractmethod
    def zoom_tool(cls, settings: ArmSettings, **kwargs):
        """The arm's zoom tool (keyword arguments as `ZoomTool`'s)."""

    @classmethod
    def control_zoom_tool(cls, settings: ArmSettings, **kwargs):
        """The zoom tool of the blank-input control, whose crops must not bring the asked galaxy back; by default
        the arm's own (it crops the galaxy that `without_galaxy` shows)."""
        return cls.zoom_tool(settings, **kwargs)

    @abstractmethod
    def load_view(self):
        """The split's `datasets` view in this arm, in the manifest's order."""

    @abstractmethod
    def split_positions(self) -> np.ndarray:
        """Each row of the view, as its position in the split."""

    def representation(self, example) -> str | None:
        """The galaxy as prompt text (None when it is not text)."""
        return None

    def galaxy(self, example) -> dict:
        """The galaxy's columns beside the prompt (the image arm's resized image)."""
        return {}

    @abstractmethod
    def without_galaxy(self, seed: int = 0) -> list[dict]:
        """`rows()` with the galaxy taken out: the blank-input control."""

    def control_positions(self, seed: int = 0) -> list[int]:
        """The split position of the galaxy each row of `without_galaxy(seed)` shows (its zoom tool crops that one)."""
        return [int(p) for p in self.positions]

    # --- shared ---

    @cached_property
    def positions(self) -> np.ndarray:
        """The used rows' positions in the split."""
        return np.asarray(self.split_positions())[: self.n]

    @property
    def labels(self) -> list[int]:
        return [int(y) for y in self.view.select(range(self.n))["label"]]

    def prompt(self, example, index: int, representation: str | None = None) -> list[dict]:
        """The conversational prompt of used row `index` (one user turn); `representation` replaces the galaxy's."""
        text = self.representation(example) if representation is None else representation
        if self.meta is not None:
            content = render_text(self.template, self, {k: v[index] for k, v in self.meta.items()}, text or "")
            return [{"role": "user", "content": content}]
        return build_prompt(self, text, self.template)

    def conversation(self, example, index: int, *, with_completion: bool) -> dict:
        """Row `index` as TRL's conversational columns: `prompt`, the galaxy and, for SFT, `completion`."""
        row = {"prompt": self.prompt(example, index), **self.galaxy(example)}
        if with_completion:
            row["completion"] = [{"role": "assistant", "content": answer_text(example["label"], self.task.classes)}]
        return row

    def dataset(self, *, with_completion: bool, permute_labels_seed: int | None = None):
        """The training dataset: `prompt`, `label` (for the rewards), `completion` (SFT) and the image arm's `image`.

        `permute_labels_seed` (the audit's label-permutation control only) shuffles the labels among the used rows:
        same prompts, same galaxies, same class mix, no link between a galaxy and its label; the SFT targets and the
        GRPO rewards both follow the permuted labels.
        """
        dataset = self.view.select(range(self.n)) if self.n < len(self.view) else self.view
        if permute_labels_seed is not None:
            dataset = permuted_labels(dataset, permute_labels_seed)
        drop = [c for c in dataset.column_names if c not in self.columns]

        def to_conversation(example, index):
            return self.conversation(example, index, with_completion=with_completion)

        return dataset.map(
            to_conversation, with_indices=True, remove_columns=drop, desc=f"{self.modality} {self.split} prompts"
        )

    def rows(self) -> list[dict]:
        """The used rows (prompt, label and the galaxy), built in memory: what the evaluation and the controls ask,
        without writing resized images back to Arrow and decoding them again."""
        return [
            {**{k: example[k] for k in self.columns}, **self.conversation(example, i, with_completion=False)}
            for i, example in enumerate(islice(self.view, self.n))
        ]

    def lint(self, prompts, *, record_dir=None):
        """The prompt lint of these (the used rows') prompts: `CheckFailed` (exit 1) on a column the override does
        not allow; `prompt_lint.json` written into `record_dir` when given."""
        with override_hint():
            return check_dataset(
                {"prompt": prompts},
                data_dir=self.settings.data_dir,
                split=self.split,
                arm=self,
                template=self.template,
                override=self.settings.lint_override(),
                record_dir=record_dir,
                positions=self.positions[: len(prompts)],
                manifest=self.manifest,
            )

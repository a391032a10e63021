"""What every arm shares: its settings, the split's rows and positions, prompts from the template, the lint."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from itertools import islice
from typing import ClassVar

import numpy as np

from ..data.splits import load_manifest
from ..errors import CheckFailed, UserError
from ..integrity.lint import LintOverride, check_dataset, check_template, render_text, split_metadata
from ..prompts import MODALITIES, REPRESENTATION_FIELDS, answer_text, build_prompt, template_fields


@dataclass
class ArmSettings:
    """How the galaxies of a prepared directory reach the model (the recipes' and the evaluation's shared fields).

    Args:
        data_dir: A prepared split directory (`astroreason data prepare`).
        modality: `image` (pixels) or `tokens` (codec ids written into the prompt as text).
        codec: The codec directory, for `tokens`.
        rendering: How codec ids are written as text (`astroreason.tokens.render`), for `tokens`.
        image_size: Side in pixels images are resized to, for `image`.
        token_crop: For `tokens`: the prompt also carries the codes of the field's centre box of this side (a
            fraction of the field), encoded again at the codec's resolution: a zoom fixed in advance, the token zoom
            arm's no-zoom control at its code budget (the whole field and one crop). None: the field only.
        prompt_template: The prompt (`str.format` string); default: the modality's template (`astroreason.prompts`).
        allow_prompt_fields: Lint override: the dataset columns a prompt may carry (deliberate experiments only).
        override_reason: Why the override is used (required with `allow_prompt_fields`).
    """

    data_dir: str
    modality: str = "image"
    codec: str | None = None
    rendering: str = "ints"
    image_size: int = 112
    token_crop: float | None = None
    prompt_template: str | None = None
    allow_prompt_fields: list[str] | None = None
    override_reason: str | None = None

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise UserError(f"modality: expected one of {', '.join(MODALITIES)}, got {self.modality!r}")
        if self.modality == "tokens" and not self.codec:
            raise UserError(
                "codec: modality=tokens needs --codec DIR (a trained codec, see `astroreason tokens train`)"
            )
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size <= 0:
            # The multiple the model's grid needs is checked once the model is known (`models.check_image_size`).
            raise UserError(f"image_size: must be a positive number of pixels, got {self.image_size!r}")
        if self.token_crop is not None:
            if self.modality != "tokens":
                raise UserError("token_crop: only the tokens arm has a codec to encode a crop (modality image)")
            if isinstance(self.token_crop, bool) or not 0 < self.token_crop < 1:
                raise UserError(f"token_crop: a fraction of the field in (0, 1), got {self.token_crop!r}")

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
        self.view = self.load_view()
        self.n = len(self.view) if max_samples is None else min(max_samples, len(self.view))
        self.template = settings.prompt_template
        self.meta = None
        if self.template is not None and set(template_fields(self.template)) - set(
            REPRESENTATION_FIELDS[self.modality]
        ):
            if lint_template:
                with override_hint():
                    check_template(self.modality, self.template, override=settings.lint_override())
            self.meta = split_metadata(settings.data_dir, split, positions=self.positions, manifest=self.manifest)

    # --- what each modality defines ---

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
            content = render_text(self.template, self.modality, {k: v[index] for k, v in self.meta.items()}, text or "")
            return [{"role": "user", "content": content}]
        return build_prompt(self.modality, tokens_text=text, template=self.template)

    def conversation(self, example, index: int, *, with_completion: bool) -> dict:
        """Row `index` as TRL's conversational columns: `prompt`, the galaxy and, for SFT, `completion`."""
        row = {"prompt": self.prompt(example, index), **self.galaxy(example)}
        if with_completion:
            row["completion"] = [{"role": "assistant", "content": answer_text(example["label"])}]
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
                modality=self.modality,
                template=self.template,
                override=self.settings.lint_override(),
                record_dir=record_dir,
                positions=self.positions[: len(prompts)],
                manifest=self.manifest,
            )

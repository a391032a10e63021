"""Options shared by several command lines, each declared once: the recipes' `GalaxyScriptArguments`, the
evaluation's `EvalConfig` (and so `astroreason eval` and the sweeps' evaluation tasks) inherit these dataclasses,
so an option has one name, one type, one default and one help text everywhere. The arm's options are
`arms.ArmSettings`, beside the arms that read them.

Each field's `help` is what `--help` prints (`HfArgumentParser`/`TrlParser` read `metadata["help"]`, and accept
both `--data_dir` and `--data-dir`). `help_from_docstring` gives the fields of a config without `metadata` help
the text of its docstring's `Args:` section, so a field is documented in one place.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
from dataclasses import dataclass, field

from .arms import DEFAULT_MAX_ASPECT
from .budget.ledger import DEFAULT_LEDGER
from .budget.prices import DEFAULT_PRICES
from .errors import UserError


@dataclass
class ZoomArguments:
    """Zoom episodes (`astroreason.zoom`, docs/zoom.md): the model may call `zoom(bbox_2d)` to look again at part of
    the galaxy, cropped from its full-resolution source, before it answers (GRPO and evaluation), or is taught to
    (SFT on zoom trajectories, the warm start)."""

    zoom: bool = field(
        default=False,
        metadata={
            "help": "Multi-turn episodes with the zoom tool (GRPO: TRL's environment_factory, one environment per "
            "rollout; SFT: the warm start, trained on zoom trajectories made from the data). The prompts gain a "
            "system turn saying the tool exists."
        },
    )
    zoom_max_turns: int = field(
        default=2,
        metadata={
            "help": "Turn cap: rounds of tool calls per episode (GRPOConfig.max_tool_calling_iterations). An "
            "episode still calling the tool at the cap has no answer and is left out of the loss."
        },
    )
    zoom_cost: float = field(
        default=0.0,
        metadata={"help": "Reward taken off per zoom call (valid or not), against zooming always. 0: free."},
    )
    zoom_bonus: float = field(
        default=0.0,
        metadata={
            "help": "Reward added to a right answer reached with at least one valid zoom (correctness-gated tool "
            "bonus, against the zoom rate collapsing to 0). 0: none."
        },
    )
    zoom_min_side: float | None = field(
        default=None,
        metadata={
            "help": "Smallest box side, a fraction of the galaxy's side (default: one merged patch of the first "
            "view, the family's pixels per visual token over image_size; token arm: one codec cell)."
        },
    )
    zoom_max_aspect: float = field(
        default=DEFAULT_MAX_ASPECT,
        metadata={"help": "Largest ratio of a box's long side to its short side."},
    )
    zoom_sft_fraction: float = field(
        default=1.0,
        metadata={
            "help": "SFT with zoom (the warm start, `zoom.trajectories`): share of the training rows taught as a "
            "zoom trajectory (a call on the galaxy's focus box, the tool's crop, then the answer); the others "
            "answer at once. Which rows: a seeded choice."
        },
    )
    zoom_sft_max_box: float | None = field(
        default=None,
        metadata={
            "help": "SFT with zoom: teach a zoom only where it can help, on the rows whose focus box (the region "
            "that decides the class, `data.focus`) has a longer side of at most this fraction of the image side, "
            "where the downsampled first view shows that region smallest; the others answer at once. Instead of "
            "zoom_sft_fraction's seeded choice, which teaches GRPO a habit that does not depend on the galaxy."
        },
    )
    zoom_skip_unanswered: bool = field(
        default=True,
        metadata={
            "help": "Leave episodes that end on an unanswered tool call (turn cap, or no room left in "
            "max_completion_length) out of the loss: every reward None, so TRL gives them zero advantage and "
            "leaves them out of the group baseline. false: score them like any completion (0 for no answer)."
        },
    )

    def check_zoom(self) -> None:
        """Refuse zoom settings no run can have (one line each)."""
        if isinstance(self.zoom_max_turns, bool) or not isinstance(self.zoom_max_turns, int) or self.zoom_max_turns < 1:
            raise UserError(f"zoom_max_turns: expected a positive number of turns, got {self.zoom_max_turns!r}")
        for name in ("zoom_cost", "zoom_bonus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise UserError(f"{name}: expected a non-negative reward, got {value!r}")
        if self.zoom_min_side is not None and not 0 < self.zoom_min_side <= 1:
            raise UserError(f"zoom_min_side: expected a fraction in (0, 1], got {self.zoom_min_side!r}")
        if not 0 <= self.zoom_sft_fraction <= 1:
            raise UserError(f"zoom_sft_fraction: expected a fraction in [0, 1], got {self.zoom_sft_fraction!r}")
        if self.zoom_sft_max_box is not None:
            if not 0 < self.zoom_sft_max_box <= 1:
                raise UserError(f"zoom_sft_max_box: expected a fraction in (0, 1], got {self.zoom_sft_max_box!r}")
            if self.zoom_sft_fraction != 1:
                raise UserError(
                    "zoom_sft_max_box: the rows taught a zoom are chosen by their focus box or at random "
                    f"(zoom_sft_fraction {self.zoom_sft_fraction!r}), not both; leave zoom_sft_fraction at 1"
                )
        if not self.zoom_max_aspect >= 1:
            raise UserError(f"zoom_max_aspect: expected a ratio of at least 1, got {self.zoom_max_aspect!r}")


@dataclass
class BudgetArguments:
    """What a run may spend and at what price, charged to the project's one spend ledger."""

    max_dollars: float | None = field(
        default=None,
        metadata={
            "help": "Cap on the project's total spend in dollars, as the spend ledger records it (shared by "
            "every evaluation and training run). Training is charged by GPU-hours after each step and saves a "
            "checkpoint and stops before the next step would cross it."
        },
    )
    ledger: str | None = field(
        default=None,
        metadata={
            "help": f"The project's spend ledger (JSONL), shared by every run (default {DEFAULT_LEDGER}). "
            "Evaluation always charges it; training only when this or max_dollars is set."
        },
    )
    prices: str = field(
        default=DEFAULT_PRICES,
        metadata={
            "help": "Price table (YAML): per million input/output tokens for APIs (`api:`), per GPU-hour for "
            "devices (`gpu_hour:`)."
        },
    )
    price_key: str | None = field(
        default=None,
        metadata={
            "help": "Entry of the price table to use (default: the served model for APIs, the device name, "
            "or `cpu`, for local runs)."
        },
    )
    price_gpu_hour: float | None = field(
        default=None,
        metadata={
            "help": "Set the device price yourself (dollars per GPU-hour); without it a device missing from "
            "the table is refused."
        },
    )

    estimate_only: bool = field(
        default=False,
        metadata={
            "help": "Print the run's cost estimate (one ESTIMATE {json} line) and stop: nothing charged to the spend "
            "ledger, nothing written; exit 1 when it would not fit in what the caps have left. An evaluation "
            "extrapolates from the answers already in output_dir (a `budget estimate` pilot); training from "
            "`pilot_steps` timed steps that are neither charged nor kept."
        },
    )

    def spend_ledger(self) -> str:
        """The ledger file this run charges."""
        return self.ledger or DEFAULT_LEDGER


def help_from_docstring(cls):
    """Class decorator: every field of a dataclass without `metadata["help"]` gets its entry of the docstring's
    `Args:` section (Google style, as in TRL's configs), so `--help` prints it."""
    docs = docstring_args(inspect.getdoc(cls) or "")
    for f in dataclasses.fields(cls):
        if not f.metadata.get("help") and docs.get(f.name):
            f.metadata = types.MappingProxyType({**f.metadata, "help": docs[f.name]})
    return cls


def docstring_args(doc: str) -> dict[str, str]:
    """`{name: text}` of a Google-style `Args:` section, continuation lines joined."""
    section = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    args, name = {}, None
    for line in section.splitlines():
        match = re.match(r"^ {4}(\w+): ?(.*)$", line)
        if match:
            name, text = match.groups()
            args[name] = text.strip()
        elif name and line.startswith(" " * 8):
            args[name] += " " + line.strip()
        elif line.strip():
            break  # the section ended
    return args

"""The zoom episode for TRL's `GRPOTrainer(environment_factory=...)`: one `ZoomEnvironment` per rollout.

TRL resets each rollout's environment with its dataset row (`reset(**row)`), offers its public methods as tools
(here only `zoom`, its schema read from the type hints and the docstring), runs the calls the model makes, and
hands the environments to the reward functions (`environments=`), which read what each rollout did from `calls`.

The row says which galaxy the rollout is about through two columns that never enter a prompt: `zoom_split` and
`zoom_position` (the galaxy's position in its split, what the arm's `positions` hold). The tool reads the galaxy's
full-resolution source from them; the model only ever sees the crop.
"""

from __future__ import annotations

import functools

from ..arms import ZoomCall, ZoomTool
from ..prompts import zoom_prompt

SPLIT_COLUMN = "zoom_split"
POSITION_COLUMN = "zoom_position"


class ZoomEnvironment:
    """One rollout's zoom tool and its record.

    Attributes:
        calls: Every call of this rollout (`ZoomCall`: box, validity, error, pixels, tokens), in order.
        zoom_cost: Reward per call taken off by the `zoom_cost` reward.
        zoom_bonus: Reward the `zoom_bonus` reward adds to a right answer reached with at least one valid zoom.
    """

    def __init__(self, tool: ZoomTool, *, zoom_cost: float = 0.0, zoom_bonus: float = 0.0):
        self._tool = tool
        self.zoom_cost, self.zoom_bonus = zoom_cost, zoom_bonus
        self.calls: list[ZoomCall] = []
        self.split: str | None = None
        self.position: int | None = None

    def reset(self, **row) -> None:
        """Start a rollout on the row's galaxy (nothing is added to the prompt)."""
        self.split, self.position = row[SPLIT_COLUMN], int(row[POSITION_COLUMN])
        self.calls = []

    def zoom(self, bbox_2d: list[float]):
        """Look again at part of the galaxy, at full resolution.

        Args:
            bbox_2d: The region as [x1, y1, x2, y2], fractions (0 to 1) of the image's width and height, from the
                top-left corner; x1 < x2 and y1 < y2.
        """
        call = self._tool(self.split, self.position, bbox_2d)
        self.calls.append(call)
        return call.result

    @property
    def n_calls(self) -> int:
        return len(self.calls)

    @property
    def valid_calls(self) -> int:
        return sum(call.valid for call in self.calls)

    @property
    def zoom_tokens(self) -> int:
        """Tokens the tool's results cost this rollout (0 for calls whose cost was not counted)."""
        return sum(call.tokens or 0 for call in self.calls)


def zoom_schema() -> list[dict]:
    """`tools` for a chat template or the chat API: the schema of `ZoomEnvironment.zoom`, as TRL makes it from the
    method's signature and docstring for a rollout."""
    from transformers.utils import get_json_schema  # lazy: as trl

    return [get_json_schema(ZoomEnvironment(None).zoom)]


def environment_factory(tool: ZoomTool, *, zoom_cost: float = 0.0, zoom_bonus: float = 0.0):
    """TRL's `environment_factory`: a fresh `ZoomEnvironment` sharing one tool (its open views and codec)."""
    return functools.partial(ZoomEnvironment, tool, zoom_cost=zoom_cost, zoom_bonus=zoom_bonus)


def with_zoom_columns(dataset, arm):
    """An arm's dataset made for zoom episodes: the zoom instruction as a system turn before each prompt, and the
    columns the environment reads (`zoom_split`, `zoom_position`), which no prompt carries."""
    positions = [int(p) for p in arm.positions[: len(dataset)]]
    dataset = dataset.add_column(POSITION_COLUMN, positions).add_column(SPLIT_COLUMN, [arm.split] * len(dataset))
    arm_class = type(arm)  # what the map's function closes over is hashed: the class, not the arm's open views
    return dataset.map(lambda row: {"prompt": zoom_prompt(row["prompt"], arm_class)}, desc="zoom prompts")

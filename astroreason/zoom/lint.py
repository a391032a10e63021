"""The prompt lint over tool turns: what the zoom tool returns must carry the galaxy and nothing else.

A tool turn is prompt text the model reads, so a row index, an id or another column reaching it through the tool
would leak the label as surely as one in the prompt (Galaxy10 is sorted by class). Before a zoom run trains, the tool
is called on the first rows of the split with a few fixed boxes (the whole galaxy, its centre, and an invalid box for
the error text), and the text of each result goes through the same check as the prompts
(`integrity.lint.carried_columns`: does a column's own row's value appear in its result far more often than another
row's?). An image result has no text; its caption, if a tool gave one, would be checked the same way.
"""

from __future__ import annotations

from ..arms import ZoomTool
from ..errors import CheckFailed
from ..integrity.lint import carried_columns, split_metadata

LINT_BOXES = ([0.0, 0.0, 1.0, 1.0], [0.25, 0.25, 0.75, 0.75], [0.6, 0.6, 0.4, 0.4])  # whole, centre, inverted
LINT_ROWS = 32


def result_text(result) -> str:
    """The text of a tool result: a string, or the text blocks of a list of content blocks."""
    if isinstance(result, str):
        return result
    return " ".join(b.get("text", "") for b in result if isinstance(b, dict) and b.get("type") == "text")


def lint_tool_turns(tool: ZoomTool, split: str, positions, *, n: int = LINT_ROWS) -> int:
    """Call `tool` on the first `n` of `positions` (rows of `split`) with each of `LINT_BOXES` and check the results'
    text against the rows' metadata; `CheckFailed` (exit 1) on a column the results carry. Returns the calls made."""
    positions = [int(p) for p in list(positions)[:n]]
    if len(positions) < 2:
        return 0
    meta = split_metadata(tool.settings.data_dir, split, positions=positions, manifest=tool.manifest)
    for box in LINT_BOXES:
        texts = [result_text(tool(split, p, box).result) for p in positions]
        if findings := carried_columns(texts, meta):
            reasons = "; ".join(f.detail.replace("of prompts", "of zoom results") for f in findings)
            raise CheckFailed(
                f"tool lint: the zoom tool's results for box {box} carry more than the galaxy ({reasons}); a tool "
                "turn is read by the model like the prompt, so a row index or other column there leaks the label"
            )
    return len(positions) * len(LINT_BOXES)

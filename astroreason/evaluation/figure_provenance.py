"""The provenance a report's PNG figures carry in their text chunks: the runs drawn and the sha256 of each results
file they were drawn from, so a figure pasted into a draft can still say where it came from (`astroreason claims`
reads it back and flags a figure of other runs, or of results changed since)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError

# The PNG text chunk (tEXt) that holds the JSON.
KEY = "astroreason"


def figure_metadata(runs: list[dict], report_dir: str | Path) -> dict[str, str]:
    """`savefig(..., metadata=...)` for a figure of these runs (`report.load_run` dicts) saved in `report_dir`: each
    run's directory relative to it, so the record does not hold this machine's paths. A copy of the figure elsewhere
    is still recognised by the sha256 of its runs' files."""
    report_dir = Path(report_dir).resolve()
    drawn = [
        {
            "run": r["name"],
            "dir": os.path.relpath(Path(r["dir"]).resolve(), report_dir),
            "files_sha256": r["files_sha256"],
        }
        for r in runs
    ]
    return {KEY: json.dumps({"runs": drawn}, sort_keys=True)}


def read_figure_provenance(path: str | Path) -> dict | None:
    """The provenance `figure_metadata` wrote into a PNG, or None for a PNG without it; a file that is not a readable
    PNG is one `UserError` line naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            text = getattr(image, "text", {}).get(KEY)
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"{path}: not a readable PNG ({e})") from None
    if text is None:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        raise UserError(f"{path}: its '{KEY}' text chunk is not valid JSON") from None
    if not isinstance(record, dict) or not isinstance(record.get("runs"), list):
        raise UserError(f"{path}: its '{KEY}' text chunk has no list of runs")
    return record

"""Every run artefact a command reads, broken four ways: cut short, emptied, of another JSON type, or without a key its
readers need. Each is one line naming the file, exit 2, no traceback, and nothing on disk changed.

The artefacts are real: a finished evaluation of the tiny model (`result.json`, `predictions.jsonl`), a trained codec
and its token cache, a planned sweep (its manifest and a task's state), the spend ledger the evaluation charged. Each
case copies them into its own directory, breaks one file, runs the command in-process and compares every file's
bytes before and after.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from cli_helpers import assert_one_line_error, cli
from evalkit import build_codec
from test_user_errors import snapshot

from astroreason.cli import main
from astroreason.integrity.ledger import NOISE_FILE
from astroreason.tokens import load_codec
from astroreason.tokens.cache import default_cache_dir


@pytest.fixture(scope="module")
def artefacts(prepared_dir, tiny_model_dir, tmp_path_factory):
    """One directory of real artefacts: `prepared/` (with `codec/`'s token cache), `run/`, `sweep/`, `spend.jsonl`."""
    root = tmp_path_factory.mktemp("artefacts")
    prepared = root / "prepared"
    shutil.copytree(prepared_dir, prepared)
    build_codec(prepared, root / "codec")
    run = ["eval", "--model", str(tiny_model_dir), "--data_dir", str(prepared), "--split", "test", "--max_samples"]
    run += ["4", "--image_size", "56", "--max_new_tokens", "4", "--batch_size", "4", "--n_boot", "50"]
    run += ["--output_dir", str(root / "run"), "--price_gpu_hour", "0", "--ledger", str(root / "spend.jsonl")]
    assert main(run) == 0
    base = root / "sft.yaml"
    base.write_text(
        yaml.safe_dump(
            {"model_name_or_path": str(tiny_model_dir), "data_dir": str(prepared), "image_size": 56, "max_steps": 1}
        )
    )
    sweep = {"name": "s", "base_config": str(base), "out_dir": str(root / "sweep"), "grid": {"learning_rate": [0.1]}}
    (root / "sweep.yaml").write_text(yaml.safe_dump({**sweep, "seeds": 1}))
    assert main(["sweep", "plan", str(root / "sweep.yaml")]) == 0
    task = json.loads((root / "sweep" / "manifest.json").read_text())["tasks"][0]["dir"]
    state = {"status": "pending", "attempts": 0, "elapsed_s": 0.0, "dollars": 0.0, "history": []}
    (Path(task) / "state.json").write_text(json.dumps(state))  # as `sweep run` writes it (`task.write_state`)
    assert main(["ledger", "noise-floor", str(root / "ledger"), "e", "0.01", "--source", "two seeds"]) == 0
    return root


def token_cache_meta(root: Path) -> Path:
    """The record of this codec's cache (the session's prepared directory may hold other tests' caches too)."""
    return default_cache_dir(root / "prepared", load_codec(root / "codec")) / "meta.json"


def sweep_state(root: Path) -> Path:
    return next((root / "sweep").rglob("state.json"))


# artefact -> (where it is under the copy, the command that reads it, a key its readers need)
ARTEFACTS = {
    "result.json (audit)": (lambda r: r / "run" / "result.json", ["audit", "{root}/run", "--no-controls"], "config"),
    "result.json (report)": (
        lambda r: r / "run" / "result.json",
        ["report", "{root}/run", "--out", "{root}/report"],
        "metrics",
    ),
    "result.json (gate)": (lambda r: r / "run" / "result.json", ["gate", "{root}/run/result.json"], "metrics"),
    "predictions.jsonl (report)": (
        lambda r: r / "run" / "predictions.jsonl",
        ["report", "{root}/run", "--out", "{root}/report"],
        "prediction",
    ),
    "fingerprint.json (audit)": (
        lambda r: r / "run" / "fingerprint.json",
        ["audit", "{root}/run", "--no-controls"],
        None,
    ),
    "manifest.json of a prepared directory": (
        lambda r: r / "prepared" / "manifest.json",
        ["tokens", "encode", "--data", "{root}/prepared", "--codec", "{root}/codec"],
        "rows",
    ),
    "codec config": (
        lambda r: r / "codec" / "codec.json",
        ["tokens", "encode", "--data", "{root}/prepared", "--codec", "{root}/codec"],
        "type",
    ),
    "token cache record": (
        token_cache_meta,
        ["tokens", "encode", "--data", "{root}/prepared", "--codec", "{root}/codec"],
        "codec_hash",
    ),
    "sweep manifest": (lambda r: r / "sweep" / "manifest.json", ["sweep", "status", "{root}/sweep"], "tasks"),
    "sweep task state": (sweep_state, ["sweep", "status", "{root}/sweep"], "attempts"),
    "noise floors of the results ledger": (
        lambda r: r / "ledger" / NOISE_FILE,
        ["ledger", "noise-floor", "{root}/ledger", "f", "0.02", "--source", "s"],
        None,
    ),
    # A spend ledger's torn last line is a write a kill cut short, never committed, and is skipped; an empty one
    # has charged nothing. Broken rows inside it are refused.
    "spend ledger": (lambda r: r / "spend.jsonl", ["budget", "status", "--ledger", "{root}/spend.jsonl"], "dollars"),
}
# The breaks an artefact can have: all of them, except where a reader rightly accepts the file as it is.
NOT_BROKEN = {"spend ledger": ("cut short", "emptied")}


def cut_short(text: str, key: str | None) -> str:
    return text[: len(text) // 2]


def emptied(text: str, key: str | None) -> str:
    return ""


def objects(text: str) -> tuple[list[dict], bool]:
    """The file's objects, and whether it is JSON lines (else one JSON document)."""
    try:
        return [json.loads(text)], False
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines()], True


def another_type(text: str, key: str | None) -> str:
    """A JSON array where the object belongs (the first line's, in JSON lines)."""
    found, lines = objects(text)
    return "\n".join(["[1, 2]", *map(json.dumps, found[1:])]) + "\n" if lines else "[1, 2]\n"


def without_key(text: str, key: str | None) -> str:
    """Valid JSON without `key` (in every line, in JSON lines)."""
    found, _ = objects(text)
    for obj in found:
        obj.pop(key)
    return "\n".join(map(json.dumps, found)) + "\n"


BREAKS = {"cut short": cut_short, "emptied": emptied, "another type": another_type, "without a key": without_key}


def cases():
    for artefact, (_, _, key) in ARTEFACTS.items():
        for name in BREAKS:
            if (name == "without a key" and key is None) or name in NOT_BROKEN.get(artefact, ()):
                continue  # no key every reader needs (the fingerprint's take what it has; floors are by experiment)
            yield pytest.param(artefact, name, id=f"{artefact}: {name}")


@pytest.mark.parametrize("artefact,broken", list(cases()))
def test_a_broken_artefact_is_one_line_exit_2(artefact, broken, artefacts, tmp_path, capsys):
    where, argv, key = ARTEFACTS[artefact]
    root = tmp_path / "copy"
    shutil.copytree(artefacts, root, symlinks=True)
    for path in root.rglob("*.yaml"):  # the copies point at the copy
        path.write_text(path.read_text().replace(str(artefacts), str(root)))
    for path in root.rglob("*.json"):
        path.write_text(path.read_text().replace(str(artefacts), str(root)))
    if artefact.startswith("fingerprint"):
        (root / "run" / "fingerprint.json").write_text(json.dumps({"seed": 0, "extra": {"modality": "image"}}))
    path = where(root)
    path.write_text(BREAKS[broken](path.read_text(), key))
    before = snapshot(root)
    status, _, err = cli(capsys, *[a.format(root=root) for a in argv])
    assert not any("Traceback" in line for line in err), err
    assert_one_line_error(status, err, str(path.relative_to(root)))
    assert snapshot(root) == before, "a failed command changed files"

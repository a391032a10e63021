"""AGENTS.md runs as written: every command of its ```bash blocks, in order, exits as the page says.

The commands are run by bash, one process each (a here-document with its lines), exactly as a user would paste
them, in a temporary directory laid out like the repository's root (links to `eval/` and `recipes/`, whose configs,
price table and recipe scripts the commands name), with an `astroreason` and a `python` on PATH that run this
checkout's code. A comment `# exit N` is the status the page promises (0 otherwise), and `RESULT "key": value` (also
`ESTIMATE`, `MEMORY`, `NOISE`, `STATUS`, `CLAIMS`) a field of that JSON line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "AGENTS.md"
JSON_LINES = ("RESULT", "ESTIMATE", "MEMORY", "NOISE", "STATUS", "CLAIMS")
# One `"key": value` pair of a promised JSON field: a string, a number, true, false or null.
FIELD = r'"(\w+)":\s*("[^"]*"|true|false|null|-?[\d.]+(?:e-?\d+)?)'
FIELDS = "(?:[ ,]*" + re.sub(r"\((?!\?)", "(?:", FIELD) + ")+"  # one or more of them, nothing captured


def page_commands(text: str) -> list[str]:
    """Every command of the page's ```bash blocks, in order (backslash continuations joined, blank lines dropped, a
    here-document's lines kept with the command that reads them)."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        lines = iter(block.replace("\\\n", " ").splitlines())
        for command in lines:
            if command.strip() and not command.lstrip().startswith("#"):
                if heredoc := re.search(r"<<-?\s*'?(\w+)'?", command):
                    end, body = heredoc.group(1), []
                    for line in lines:
                        if line.strip() == end:
                            break
                        body.append(line)
                    command = "\n".join([command, *body, end])
                commands.append(command.strip())
    return commands


def promises(command: str) -> tuple[int, dict[str, dict]]:
    """What the command's comment promises: its exit status, and fields of its JSON lines."""
    comment = command.splitlines()[0].partition("  #")[2]  # a here-document's lines are not its comment
    status = re.search(r"\bexit (\d+)", comment)
    fields = {}
    for word in JSON_LINES:
        for group in re.findall(rf"\b{word}({FIELDS})", comment):
            fields.setdefault(word, {}).update((k, json.loads(v)) for k, v in re.findall(FIELD, group))
    return int(status.group(1)) if status else 0, fields


def json_lines(out: str, word: str) -> list[dict]:
    return [json.loads(line[len(word) + 1 :]) for line in out.splitlines() if line.startswith(word + " ")]


@pytest.fixture
def workdir(tmp_path):
    """A directory laid out like the repository's root, and the environment that puts `astroreason` on PATH."""
    (tmp_path / "eval").symlink_to(ROOT / "eval")
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    for name, run in (("astroreason", "-m astroreason.cli "), ("python", "")):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" {run}"$@"\n')
        shim.chmod(0o755)
    env = os.environ | {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    return tmp_path, env


def test_page_parsing():
    """The parser reads what the page means: the exit comment and the promised fields."""
    assert promises('astroreason eval --x 1  # exit 1, RESULT "status": "budget_exhausted"') == (
        1,
        {"RESULT": {"status": "budget_exhausted"}},
    )
    assert promises('astroreason eval  # RESULT "integrity": "keep", "n": 8 (the baseline)') == (
        0,
        {"RESULT": {"integrity": "keep", "n": 8}},
    )
    assert promises("astroreason ledger verify runs/x") == (0, {})
    assert page_commands("```bash\na \\\n  b\n\n# note\nc  # exit 2\n```\n```\nnot bash\n```\n") == [
        "a    b",
        "c  # exit 2",
    ]
    heredoc = "```bash\ncat > f.md <<'EOF'\n# a heading\nx  # not a comment\nEOF\nd\n```\n"
    assert page_commands(heredoc) == ["cat > f.md <<'EOF'\n# a heading\nx  # not a comment\nEOF", "d"]
    assert promises("cat > f.md <<'EOF'\nx  # exit 1\nEOF") == (0, {})


def test_readme_links_agents_md():
    assert "(AGENTS.md)" in (ROOT / "README.md").read_text()


def test_every_command_of_agents_md_runs_as_written(workdir):
    cwd, env = workdir
    commands = page_commands(PAGE.read_text())
    assert len(commands) >= 10, commands
    statuses = set()
    for command in commands:
        assert command.startswith(("astroreason ", "python recipes/", "cat > runs/agents/")), f"not ours: {command}"
        expected, fields = promises(command)
        done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True)
        where = f"{command}\n--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-3000:]}"
        assert done.returncode == expected, where
        statuses.add(done.returncode)
        for word in JSON_LINES:  # every such line is one JSON object (json.loads raises otherwise)
            json_lines(done.stdout, word)
        if "--estimate_only true" in command:  # an estimate is not a result: one ESTIMATE line instead
            assert len(json_lines(done.stdout, "ESTIMATE")) == 1 and not json_lines(done.stdout, "RESULT"), where
        elif command.startswith(("astroreason eval ", "astroreason demo")) and expected != 2:
            assert len(json_lines(done.stdout, "RESULT")) == 1, where
        for word, promised in fields.items():
            printed = json_lines(done.stdout, word)
            assert len(printed) == 1, where
            assert {k: printed[0].get(k) for k in promised} == promised, where
        if expected == 2:  # bad usage: one line naming the problem, no traceback
            err = done.stderr.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("astroreason: error: "), where
    # The page shows a refusal of each kind, and the ledger it wrote verifies.
    assert statuses == {0, 1, 2}
    assert (cwd / "runs/agents/ledger/experiment_log.md").is_file()
    # The measured floor and the hand-set one are recorded; the recipe's estimate wrote nothing.
    assert {"agents-demo", "agents-cluster"} <= set(
        json.loads((cwd / "runs/agents/ledger/noise_floors.json").read_text())
    )
    assert not (cwd / "runs/agents/sft").exists()


def test_an_edited_results_ledger_fails_verify(workdir):
    """What the page says of an edit: `ledger verify` finds it (exit 1). Two rows are enough to edit the first."""
    cwd, env = workdir
    ledger = cwd / "ledger"
    for description in ("killed at step 1", "killed at step 2"):
        run = ["astroreason", "ledger", "crash", str(ledger), "--experiment", "x", "--description", description]
        assert subprocess.run(run, cwd=cwd, env=env, capture_output=True).returncode == 0
    verify = ["astroreason", "ledger", "verify", str(ledger)]
    assert subprocess.run(verify, cwd=cwd, env=env, capture_output=True).returncode == 0
    tsv = ledger / "results.tsv"
    tsv.write_text(tsv.read_text().replace("killed at step 1", "finished at step 1"))
    done = subprocess.run(verify, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("astroreason: error: ") and "results.tsv" in done.stderr, done.stderr

"""The results ledger: append-only, hash-chained, its log generated; a hand-edited ledger is refused, never extended."""

from __future__ import annotations

import multiprocessing

import pytest

from astroreason.cli import main as cli
from astroreason.errors import CheckFailed, UserError
from astroreason.integrity.gate import mark_suspect
from astroreason.integrity.ledger import HEADER, LEDGER_FILE, LOG_FILE, append_result, row_from_result, verify


def result(accuracy, modality="image", seed=0, output_dir=None):
    return {
        "config": {"modality": modality, "seed": seed, "output_dir": output_dir},
        "provenance": {"commit": "a" * 40, "dirty": False, "config_sha256": "c" * 64, "seed": seed},
        "metrics": {"accuracy": accuracy, "interval": {"accuracy": [accuracy - 0.05, accuracy + 0.05]}},
        "prompt_tokens": 1000,
        "completion_tokens": 200,
    }


def test_append_verify_and_log(tmp_path):
    append_result(tmp_path, row_from_result(result(0.41), description="image arm, SFT"))
    append_result(
        tmp_path,
        {
            "modality": "tokens",
            "seed": 1,
            "value": 0.3,
            "status": "discard",
            "description": "tabs\tand\nnewlines are flattened",
        },
    )
    rows = verify(tmp_path)
    assert [r["status"] for r in rows] == ["keep", "discard"]
    assert rows[0]["value"] == "0.41" and rows[0]["interval"] == "0.36,0.46" and rows[0]["cost"] == "tokens=1200"
    assert rows[0]["commit"] == "a" * 40 and rows[0]["dirty"] == "false"
    assert rows[1]["description"] == "tabs and newlines are flattened"
    assert rows[1]["prev_sha256"] == rows[0]["row_sha256"]
    log = (tmp_path / LOG_FILE).read_text()
    assert "2 results: 1 keep, 1 discard, 0 crash, 0 suspect." in log and "image arm, SFT" in log
    assert cli(["ledger", "verify", str(tmp_path)]) == 0


def test_suspect_status_is_forced(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert row_from_result(result(0.97)).status == "suspect"  # above the ceiling
    assert row_from_result(result(0.97), ceiling=0.99).status == "keep"  # the ceiling is configurable
    mark_suspect(run, "entropy_collapse", "step 40: entropy collapsed")
    row = row_from_result(result(0.5, output_dir=str(run)), status="keep", description="looks fine")
    assert row.status == "suspect" and "entropy collapsed" in row.description
    with pytest.raises(UserError, match="status"):
        append_result(tmp_path, {"status": "great"})


@pytest.mark.parametrize("edit", ["value", "delete", "swap", "truncate", "header", "columns"])
def test_hand_edits_are_detected_and_never_extended(tmp_path, edit):
    for accuracy in (0.3, 0.35, 0.4):
        append_result(tmp_path, row_from_result(result(accuracy)))
    path = tmp_path / LEDGER_FILE
    lines = path.read_text().splitlines(keepends=True)
    if edit == "value":
        lines[1] = lines[1].replace("\t0.3\t", "\t0.93\t")
    elif edit == "delete":
        del lines[2]
    elif edit == "swap":
        lines[2], lines[3] = lines[3], lines[2]
    elif edit == "truncate":
        lines[-1] = lines[-1][:-10]
    elif edit == "header":
        lines[0] = lines[0].replace("value", "score")
    elif edit == "columns":
        lines[3] = lines[3].rstrip("\n") + "\textra\n"
    tampered = "".join(lines)
    path.write_text(tampered)
    with pytest.raises(CheckFailed):
        verify(tmp_path)
    with pytest.raises(CheckFailed):
        append_result(tmp_path, row_from_result(result(0.5)))
    assert path.read_text() == tampered  # nothing appended to a tampered ledger
    assert cli(["ledger", "verify", str(tmp_path)]) == 1


def test_last_row_edit_is_detected(tmp_path):
    append_result(tmp_path, row_from_result(result(0.3)))
    path = tmp_path / LEDGER_FILE
    path.write_text(path.read_text().replace("\tkeep\t", "\tdiscard\t"))
    with pytest.raises(CheckFailed, match="line 2 does not match its hash"):
        verify(tmp_path)
    assert path.read_text().startswith(HEADER)


def _append_many(directory, k):
    for i in range(k):
        append_result(directory, {"seed": i, "value": 0.1, "description": f"worker row {i}"})


def test_parallel_appends_keep_the_chain(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append_many, args=(tmp_path, 5)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert len(verify(tmp_path)) == 15


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli(["ledger", "verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no results.tsv" in err

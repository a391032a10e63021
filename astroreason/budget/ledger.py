"""The project's spend ledger: one append-only JSONL file (default `runs/ledger/spend.jsonl`) that every evaluation
and training run of a project draws on, so one cap holds across them all.

Each read-modify-append happens under an exclusive `filelock.FileLock` on `<ledger>.lock` beside it, and every row
is fsync'd. What the lock promises depends on the filesystem the ledger lives on:

- a local disk: exclusive among every process of this machine (the lock is `flock(2)` on the lock file, released by
  the kernel when its holder dies, so a killed run never leaves the ledger locked);
- NFS: Linux turns `flock` into a POSIX lock held by the server, so runs on different machines exclude each other
  only where the server supports locking (NFSv4, or NLM for v3) and the mount does not say `nolock` or
  `local_lock=flock|all`, under which the lock covers one machine only;
- a filesystem without `flock` at all (some FUSE and object-store mounts): filelock falls back to a soft lock, a
  marker file that only excludes writers using the same lock file.

Rows: `reserve` (a request's worst case, counted as spent until settled), `charge` (what it cost; settles the
reservation with the same id, or with no reservation is training time), `release` (never spent) and `estimate`
(what a run expected to cost when it started, `estimated_dollars`: a record beside the charges, never counted).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from ..errors import UserError

DEFAULT_LEDGER = "runs/ledger/spend.jsonl"


@dataclass
class Totals:
    """What a ledger holds: spent (charges) and committed (charges + open reservations)."""

    dollars: float = 0.0
    tokens: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    gpu_seconds: float = 0.0
    attempts: int = 0
    reserved_dollars: float = 0.0
    reserved_tokens: int = 0
    reserved_requests: int = 0
    open_reservations: int = 0

    @property
    def committed_dollars(self) -> float:
        return self.dollars + self.reserved_dollars

    @property
    def committed_tokens(self) -> int:
        return self.tokens + self.reserved_tokens

    @property
    def committed_requests(self) -> int:
        return self.requests + self.reserved_requests

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(
            committed_dollars=self.committed_dollars,
            committed_tokens=self.committed_tokens,
            committed_requests=self.committed_requests,
        )
        return d


class Ledger:
    """The project's spend ledger: append-only JSONL, one exclusive lock per read-modify-append, fsync'd rows
    (see the module docstring for what the lock promises on a network filesystem).

    Totals are folded incrementally: each locked section reads only the bytes appended since the last one.
    """

    def __init__(self, path: str | os.PathLike = DEFAULT_LEDGER):
        self.path = Path(path)
        self._offset = 0
        self._open: dict[str, dict] = {}
        self._totals = Totals()
        self._by_run: dict[str, Totals] = {}
        self._thread_lock = threading.Lock()
        self._file_lock = FileLock(self.path.with_name(self.path.name + ".lock"))

    def _fold(self, row: dict) -> None:
        kind, rid = row.get("kind"), row.get("id")
        if kind == "reserve":
            self._open[rid] = row
        elif kind in ("charge", "release"):
            self._open.pop(rid, None)
        if kind == "charge":
            for totals in (self._totals, self._by_run.setdefault(row.get("run", "?"), Totals())):
                totals.dollars += row["dollars"]
                totals.prompt_tokens += row.get("prompt_tokens", 0)
                totals.completion_tokens += row.get("completion_tokens", 0)
                totals.tokens += row.get("prompt_tokens", 0) + row.get("completion_tokens", 0)
                totals.requests += row.get("requests", 0)
                totals.attempts += row.get("attempts", 0)
                totals.gpu_seconds += row.get("gpu_seconds", 0.0)
        t = self._totals
        t.reserved_dollars = sum(r["dollars"] for r in self._open.values())
        t.reserved_tokens = sum(r.get("tokens", 0) for r in self._open.values())
        t.reserved_requests = sum(r.get("requests", 0) for r in self._open.values())
        t.open_reservations = len(self._open)

    def _refresh(self, f) -> None:
        f.seek(self._offset)
        data = f.read()
        # Only whole lines: a row being written by a killed process stays unread (and is repaired on append).
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if not line.startswith(b"{"):  # not a row cut short: this file is something else
                    raise UserError(
                        f"ledger: {self.path} is not a spend ledger (a line near byte {self._offset} is not a JSON row)"
                    ) from None
                continue  # a row torn by a killed writer was never fsync'd whole: it was never committed
            try:
                self._fold(row)
            except (KeyError, TypeError):
                raise UserError(
                    f"ledger: {self.path} holds a malformed row near byte {self._offset}; fix or move it"
                ) from None
        self._offset += end

    def transaction(self, decide):
        """Under the exclusive lock: refresh the totals, call `decide(totals)` -> rows to append, append them."""
        if self._offset == 0:  # nothing read yet: before the lock file is created beside it (later rows: `_refresh`)
            self._refuse_foreign_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, self._file_lock, open(self.path, "a+b") as f:
            self._refresh(f)
            rows = decide(self._totals)
            if rows:
                f.seek(0, os.SEEK_END)
                if f.tell() != self._offset:  # a torn last line from a killed writer: start a fresh line
                    f.write(b"\n")
                for row in rows:
                    f.write((json.dumps(row, sort_keys=True) + "\n").encode())
                f.flush()
                os.fsync(f.fileno())
                self._refresh(f)
            return rows

    def _refuse_foreign_file(self) -> None:
        """A file that is there but does not start like a ledger row is refused, without touching its directory."""
        try:
            with open(self.path, "rb") as f:
                first = f.read(1)
        except (FileNotFoundError, IsADirectoryError):
            return  # a new ledger; a directory fails with its own message when opened for appending
        if first and first != b"{":
            raise UserError(f"ledger: {self.path} is not a spend ledger (a line near byte 0 is not a JSON row)")

    def totals(self) -> Totals:
        if not self.path.exists():
            return Totals()
        self.transaction(lambda totals: [])
        return self._totals

    def by_run(self) -> dict[str, Totals]:
        self.totals()
        return dict(self._by_run)

    def append(self, row: dict) -> None:
        self.transaction(lambda totals: [row])

    def note_estimate(self, run: str, estimated_dollars: float, **fields) -> None:
        """Record what `run` expects to cost before it spends (counted in no total: its charges are the spend)."""
        self.append(ledger_row("estimate", uuid.uuid4().hex, run, estimated_dollars=estimated_dollars, **fields))


def ledger_row(kind: str, rid: str, run: str, **fields) -> dict:
    return {"kind": kind, "id": rid, "run": run, "time": round(time.time(), 3), **fields}

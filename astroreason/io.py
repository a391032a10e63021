"""Atomic writes and content hashes: a failure never leaves a half-written artefact behind."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UserError

# Whose temporary folder it is: this machine (its name, hashed) and the writing process, in the folder's name.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on failure remove it.

    Works for a file or a directory written at the yielded path. A process killed while writing (SIGKILL: no
    `finally` runs) leaves its temporary folder; the next write of `path` on this machine removes it (`remove_stale`).
    """
    path = Path(path)
    try:  # a parent that is a file, or read-only: one line (the commands check up front, see `check_writable`)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}@{_HOST}.", suffix=".tmp", dir=path.parent))
    except OSError as err:
        check_writable(path, "output")  # names the file in the way or the read-only directory, when it is that
        raise UserError(f"{path}: cannot write here ({err.strerror or err})") from None
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale(path: Path) -> None:
    """Remove the temporary folders that writers of `path` on this machine left when killed: those whose process is
    gone. A live writer's (another process writing the same path) and another machine's are left alone."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*@{_HOST}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split("@", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_writable(path: str | os.PathLike, what: str, *, directory: bool = False) -> Path:
    """Refuse up front, in one `UserError` line naming `what`, an output path this user cannot write.

    Called by the commands before any work, so a long run never dies at its final write: the path's nearest existing
    ancestor must be a writable directory (not a regular file), and with `directory` the path itself, if it exists,
    must be a directory. Nothing is created.
    """

    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        raise UserError(f"{what}: {path} is a file, not a directory")
    if not directory and path.is_dir():
        raise UserError(f"{what}: {path} is a directory, not a file")
    # The nearest existing directory on the way decides: it must be writable, and no file may stand in the way.
    start = path if directory and path.is_dir() else path.parent
    ancestor = next((p for p in [start, *start.parents] if p.exists()), Path("."))
    if not ancestor.is_dir():
        raise UserError(f"{what}: cannot write {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{what}: cannot write {path}: {ancestor} is not writable (permission denied)")
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json_record(path: str | os.PathLike, what: str) -> Any:
    """A run's JSON record (`what` names it in the error), or None when the run has none (`read_json_file`)."""
    path = Path(path)
    return read_json_file(path, what) if path.is_file() else None


def read_json_file(path: str | os.PathLike, what: str, *, keys: tuple[str, ...] = ()) -> dict:
    """An artefact a command reads, a JSON object: a missing, empty, cut short or unreadable file, another JSON type,
    or one without `keys` (dotted for nested ones, e.g. `metrics.accuracy`) is one `UserError` line naming the file.
    """
    path = Path(path)
    return parse_json_object(_read_text(path, what), str(path), what, keys=keys)


def parse_json_object(text: str, where: str, what: str, *, keys: tuple[str, ...] = ()) -> dict:
    """`text` as a JSON object with `keys` (see `read_json_file`); `where` (a file, or file:line) names it."""
    if not text.strip():
        raise UserError(f"{where}: empty, not a valid {what}")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: not a valid {what} (cut short or malformed JSON: {err.msg})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: not a valid {what} (a JSON {type(obj).__name__}, expected an object)")
    return require_keys(obj, keys, where, what)


def require_keys(obj: dict, keys: tuple[str, ...], where: str, what: str) -> dict:
    """`obj` when it holds every one of `keys` (dotted for nested ones); else one `UserError` line naming `where`."""
    missing = [key for key in keys if not _has(obj, key.split("."))]
    if missing:
        raise UserError(f"{where}: not a valid {what} (no {', '.join(missing)})")
    return obj


def read_json_lines(path: str | os.PathLike, what: str, *, keys: tuple[str, ...] = ()) -> list[dict]:
    """An artefact of JSON lines, each an object with `keys`: the first bad line is one `UserError` naming
    file:line. For a finished artefact; an append-only cache whose last line a kill may cut reads its own way."""
    path = Path(path)
    lines = _read_text(path, what).splitlines()
    return [parse_json_object(line, f"{path}:{i}", what, keys=keys) for i, line in enumerate(lines, 1)]


def _read_text(path: Path, what: str) -> str:
    """The file's text; a missing or unreadable file is one `UserError` line naming it."""
    try:
        return path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: no {what}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read the {what} ({type(err).__name__})") from None


def _has(obj, parts: list[str]) -> bool:
    for part in parts:
        if not isinstance(obj, dict) or part not in obj:
            return False
        obj = obj[part]
    return True


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, read in chunks (memory stays flat for multi-GB files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(*parts: bytes | str) -> str:
    """SHA-256 over several parts, length-prefixed so that ("ab", "c") and ("a", "bc") differ."""
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else bytes(p)
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-serialisable object, independent of key order."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str))

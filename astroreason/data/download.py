"""Fetch a Galaxy10 release from Zenodo, verified by its SHA-256; offline, say in one line where to put the file."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import UserError
from ..io import atomic_path, sha256_file
from .galaxy10 import DECALS_FILENAME, DECALS_SHA256, DECALS_URL, SDSS_FILENAME, SDSS_SHA256, SDSS_URL

RELEASES = {
    "decals": (DECALS_URL, DECALS_FILENAME, DECALS_SHA256),
    "sdss": (SDSS_URL, SDSS_FILENAME, SDSS_SHA256),
}
DEFAULT_DIR = Path("data")


def download(
    release: str = "decals",
    out_dir=DEFAULT_DIR,
    *,
    url: str | None = None,
    sha256: str | None = None,
    timeout: float = 30.0,
    progress: bool = False,
) -> Path:
    """Download a release into `out_dir` (atomically) and verify its SHA-256; returns the file's path.

    A file already there with the right checksum is kept. `url` and `sha256` override the release's (a mirror).
    """
    if release not in RELEASES:
        raise UserError(f"release: expected one of {', '.join(RELEASES)}, got {release!r}")
    default_url, filename, default_sha = RELEASES[release]
    url, expected = url or default_url, (sha256 or default_sha).lower()
    target = Path(out_dir) / filename
    if target.is_file():
        if sha256_file(target) == expected:
            return target
        raise UserError(f"{target}: exists with another SHA-256 than {expected}; move it away and download again")
    where = (
        f"download {url} on a machine with network and put it at {target} "
        f"(SHA-256 {expected}), or pass its path to `astroreason data inspect|prepare`"
    )
    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (https or a user-given mirror)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"cannot reach {url} ({reason}); {where}") from None
    total = int(response.headers.get("Content-Length") or 0)
    digest = hashlib.sha256()
    with response, atomic_path(target) as tmp:
        with open(tmp, "wb") as f, _bar(progress, total, filename) as advance:
            try:
                while block := response.read(1 << 20):
                    f.write(block)
                    digest.update(block)
                    advance(len(block))
            except (OSError, urllib.error.URLError) as err:
                raise UserError(f"download of {url} broke off ({err}); nothing was kept; {where}") from None
            f.flush()
            os.fsync(f.fileno())
        if digest.hexdigest() != expected:
            raise UserError(
                f"{url}: checksum mismatch (SHA-256 {digest.hexdigest()}, expected {expected}); nothing was kept"
            )
    return target


class _bar:
    """A rich progress bar when asked, else nothing."""

    def __init__(self, enabled: bool, total: int, name: str):
        self.enabled, self.total, self.name = enabled, total, name

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

        self.progress = Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn())
        self.progress.start()
        task = self.progress.add_task(self.name, total=self.total or None)
        return lambda n: self.progress.advance(task, n)

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()

"""`astroreason data download` against a real HTTP server on 127.0.0.1 (never any other address)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading

import pytest

# Proxies from the environment would send 127.0.0.1 requests elsewhere: the command talks to loopback directly.
ENV = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()} | {"NO_PROXY": "*", "no_proxy": "*"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real http.server serving a small file; yields (base URL, file bytes)."""
    root = tmp_path_factory.mktemp("www")
    payload = os.urandom(300_000)
    (root / "Galaxy10_DECals.h5").write_bytes(payload)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", payload
    httpd.shutdown()
    httpd.server_close()


def download(*args):
    return subprocess.run(
        [sys.executable, "-m", "astroreason.cli", "data", "download", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )


def test_right_checksum_writes_the_file_and_a_second_run_keeps_it(server, tmp_path):
    url, payload = server
    sha = hashlib.sha256(payload).hexdigest()
    result = download("--url", f"{url}/Galaxy10_DECals.h5", "--sha256", sha, "--out", tmp_path / "data")
    assert result.returncode == 0, result.stderr
    target = tmp_path / "data" / "Galaxy10_DECals.h5"
    assert target.read_bytes() == payload and "SHA-256 verified" in result.stdout
    assert sorted(p.name for p in target.parent.iterdir()) == ["Galaxy10_DECals.h5"]
    # Already there with the right checksum: kept, nothing fetched (the URL is now dead).
    again = download("--url", f"{url}/gone", "--sha256", sha, "--out", tmp_path / "data")
    assert again.returncode == 0 and target.read_bytes() == payload


def test_wrong_checksum_keeps_nothing(server, tmp_path):
    url, payload = server
    out = tmp_path / "data"
    result = download("--url", f"{url}/Galaxy10_DECals.h5", "--sha256", "1" * 64, "--out", out)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "checksum mismatch" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "nothing was kept" in lines[0]
    assert not out.exists() or list(out.iterdir()) == []
    # A file of another content already at the target is not overwritten.
    out.mkdir(exist_ok=True)
    (out / "Galaxy10_DECals.h5").write_bytes(b"mine")
    result = download(
        "--url", f"{url}/Galaxy10_DECals.h5", "--sha256", hashlib.sha256(payload).hexdigest(), "--out", out
    )
    assert result.returncode == 2 and "move it away" in result.stderr
    assert (out / "Galaxy10_DECals.h5").read_bytes() == b"mine"


def test_unreachable_says_where_to_put_the_file(server, tmp_path):
    url, _ = server
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "data"
    for bad in (f"http://127.0.0.1:{port}/Galaxy10_DECals.h5", f"{url}/missing.h5"):
        result = download("--url", bad, "--out", out)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"cannot reach {bad}" in lines[0]
        assert str(out / "Galaxy10_DECals.h5") in lines[0] and "19aefc477c41bb7f" in lines[0]
        assert not out.exists()

"""Real servers on 127.0.0.1 for the evaluation tests: `transformers serve` on a tiny text model, a counting proxy in
front of it, a small scripted OpenAI-compatible server (answers, garbage, 429/5xx) for the failure paths, and a front
that stalls chosen requests (the client times out) or fails them with a 500.

Nothing here stands in for code under test: every request goes over a real socket through the real backend.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from astroreason.data.galaxy10 import DECALS_CLASSES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_text_lm(out: Path, seed: int = 0) -> Path:
    """A tiny random Qwen2 causal LM with the project's tiny tokenizer (for `transformers serve`: text only)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from astroreason.models import train_tokenizer

    tokenizer = train_tokenizer(1024)
    endoftext, im_end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=endoftext,
        eos_token_id=im_end,
        pad_token_id=endoftext,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=endoftext, eos_token_id=[im_end, endoftext], pad_token_id=endoftext
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


class ServeProcess:
    """`transformers serve MODEL --host 127.0.0.1` in its own process group, stopped by its own pid; `extra_args` are
    more `transformers serve` options (bench/eval_bench.py: `--continuous-batching`)."""

    def __init__(self, model_dir: Path, log: Path, extra_args: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        exe = Path(sys.executable).parent / "transformers"
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [
                str(exe),
                "serve",
                str(model_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--device",
                "cpu",
                "--log-level",
                "info",
                *extra_args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {Path(log).read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("transformers serve did not come up in 240 s")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


class _Server:
    def __init__(self, handler):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class CountingProxy(_Server):
    """A real HTTP proxy: forwards every POST to `upstream`, counts the requests the server saw and sums the token
    usage it reported, and keeps the Authorization headers that went through."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.count = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.auth_headers: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy.lock:
                    proxy.count += 1
                    proxy.auth_headers.append(self.headers.get("Authorization", ""))
                request = urllib.request.Request(
                    proxy.upstream + self.path, data=body, method="POST", headers={"Content-Type": "application/json"}
                )
                try:
                    with urllib.request.urlopen(request, timeout=300) as r:
                        status, payload = r.status, r.read()
                except urllib.error.HTTPError as err:
                    status, payload = err.code, err.read()
                if status == 200:
                    usage = json.loads(payload).get("usage") or {}
                    with proxy.lock:
                        proxy.prompt_tokens += usage.get("prompt_tokens", 0)
                        proxy.completion_tokens += usage.get("completion_tokens", 0)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        super().__init__(Handler)


class ScriptedServer(_Server):
    """An OpenAI-compatible server whose answers follow a script, for the paths a real model cannot be made to take.

    `plan(n)` gives the n-th request's fate: "ok" (an `<answer>` naming a class picked by a hash of the request's
    messages, with usage), "garbage" (200 with HTML), "429", "503", "400" or "nousage" (a valid answer, no usage).
    It checks every image it receives is a base64 PNG data URL in the OpenAI content-part format. `answer`, when
    given, writes an "ok" answer from the request's messages instead (e.g. a real model served over HTTP).
    """

    def __init__(self, plan=lambda n: "ok", answer_seed: int = 0, answer=None):
        self.count = 0
        self.fates: list[str] = []
        self.images: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload: bytes, ctype="application/json", headers=()):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with server.lock:
                    n = server.count
                    server.count += 1
                    fate = plan(n)
                    server.fates.append(fate)
                for m in body["messages"]:
                    if isinstance(m["content"], list):
                        from PIL import Image

                        url = next(p["image_url"]["url"] for p in m["content"] if p["type"] == "image_url")
                        assert url.startswith("data:image/png;base64,")
                        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
                        with server.lock:
                            server.images.append(image.size)
                if fate == "garbage":
                    return self._send(200, b"<html>upstream proxy error</html>", "text/html")
                if fate in ("429", "503", "400"):
                    return self._send(
                        int(fate),
                        json.dumps({"error": {"message": fate}}).encode(),
                        headers=[("Retry-After", "0")] if fate == "429" else [],
                    )
                digest = hashlib.sha256((json.dumps(body["messages"], sort_keys=True) + str(answer_seed)).encode())
                text = f"<answer>{DECALS_CLASSES[digest.digest()[0] % len(DECALS_CLASSES)]}</answer>"
                if answer is not None:
                    text = answer(body["messages"])
                prompt_tokens = len(json.dumps(body["messages"])) // 8
                payload = {
                    "id": f"r{n}",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                }
                if fate != "nousage":
                    payload["usage"] = {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": 6,
                        "total_tokens": prompt_tokens + 6,
                    }
                self._send(200, json.dumps(payload).encode())

        super().__init__(Handler)


class StallingFront(_Server):
    """A real HTTP front whose `plan(n)` gives the n-th request's fate: "stall" (read it, then answer nothing until
    `release()`: the client times out, deterministically, however fast the machine), "500" (a server error), or
    "forward" (pass it to `upstream`, e.g. `transformers serve`, and return its answer). `usage` sums the token usage
    of the forwarded answers."""

    def __init__(self, plan, upstream: str | None = None):
        self.count = 0
        self.fates: list[str] = []
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self.released = threading.Event()
        self.lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with front.lock:
                    fate = plan(front.count)
                    front.count += 1
                    front.fates.append(fate)
                if fate == "stall":
                    front.released.wait(120)
                    return  # the client gave up long ago: close without an answer
                if fate == "500":
                    status, payload = 500, json.dumps({"error": {"message": "internal error"}}).encode()
                else:
                    request = urllib.request.Request(
                        upstream.rstrip("/") + self.path,
                        data=body,
                        method="POST",
                        headers={"Content-Type": "application/json"},
                    )
                    with urllib.request.urlopen(request, timeout=300) as r:
                        status, payload = r.status, r.read()
                    usage = json.loads(payload).get("usage") or {}
                    with front.lock:
                        for k in front.usage:
                            front.usage[k] += usage.get(k, 0)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        super().__init__(Handler)

    def release(self):
        self.released.set()

    def stop(self):
        self.release()
        super().stop()


def ledger_rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def sample_lines(run_dir) -> list[dict]:
    path = Path(run_dir) / "samples.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def build_codec(prepared_dir: Path, out: Path, levels: str = "5,5") -> Path:
    """A tiny built-in FSQ codec (a few training steps) and its token cache for `prepared_dir`. `levels` "8,8,8,8"
    gives 4096 codes: a small vocabulary's ids would often equal a row's position, which the prompt lint refuses."""
    from astroreason.cli import main

    assert (
        main(
            [
                "tokens",
                "train",
                "--data",
                str(prepared_dir),
                "--out",
                str(out),
                "--size",
                "16",
                "--levels",
                levels,
                "--hidden",
                "8",
                "--steps",
                "3",
                "--batch-size",
                "8",
                "--max-images",
                "32",
            ]
        )
        == 0
    )
    assert main(["tokens", "encode", "--data", str(prepared_dir), "--codec", str(out)]) == 0
    return out

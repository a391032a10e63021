"""Generation backends: each turns conversational prompts (with an optional image each) into completions, passing
every request (or local batch) through the budget gate before it is sent, and reporting what it spent.

- `TransformersBackend`: batched `model.generate` on a local model (the default); charged by GPU-hours.
- `VLLMBackend`: vLLM offline (`LLM.chat`), optional extra `astroreason[vllm]`; charged by GPU-hours.
- `OpenAIBackend`: any OpenAI-compatible `/v1/chat/completions` server (vllm serve, `transformers serve`, hosted
  APIs) through the `openai` client (its timeouts and typed errors), with a concurrency limit, retries with exponential
  backoff on 429/5xx (Retry-After honoured) and the API key read from an environment variable; charged by the token
  usage each response reports.

`stream(prompts, images, budget)` yields lists of `(position, Generation)` as they finish, so the harness saves each
answer the moment it exists; `generate` collects them.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import httpx2  # the openai client's transport: its exceptions say whether a failed attempt ever connected
import openai

from ..budget import BudgetExhausted
from ..errors import CheckFailed, UserError
from ..models import load_model_and_processor
from ..tokens.cost import chat_prompt_text
from .config import BACKENDS, SamplingSettings  # noqa: F401  (BACKENDS: re-exported for callers of this module)


class BackendError(CheckFailed):
    """The backend could not answer (server unreachable, malformed response, retries exhausted)."""


@dataclass
class Generation:
    """One completion and what it cost; `logprob`: the log-probability of the completion's tokens (summed) under
    the decoding distribution, how sure the model was of its whole answer, or None where the backend reports none."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    attempts: int = 1
    dollars: float = 0.0
    logprob: float | None = None
    token_ids: list[int] | None = field(default=None, repr=False)  # the completion's ids (local backends)
    prompt_ids: list[int] | None = field(default=None, repr=False)  # the prompt's, unpadded (for parse_response)
    message: dict | None = field(default=None, repr=False)  # the server's whole message (its tool_calls; openai)


def chat_messages(prompt: list[dict], image=None) -> list[dict]:
    """The exact messages TRL builds in training: the image block goes before the user's text."""
    from trl.data_utils import prepare_multimodal_messages

    return prepare_multimodal_messages(prompt, images=[image]) if image is not None else prompt


def image_data_url(image) -> str:
    """A PIL image as a base64 PNG data URL (lossless: the pixels the cache key hashed are the pixels sent)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def openai_messages(prompt: list[dict], image=None) -> list[dict]:
    """OpenAI content parts: the image (as a data URL) before the text, as in training; text-only prompts stay plain."""
    if image is None:
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    out, placed = [], False
    for m in prompt:
        if m["role"] == "user" and not placed:
            parts = [
                {"type": "image_url", "image_url": {"url": image_data_url(image)}},
                {"type": "text", "text": m["content"]},
            ]
            out.append({"role": "user", "content": parts})
            placed = True
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


def prompt_text(prompt: list[dict]) -> str:
    return "".join(m["content"] if isinstance(m["content"], str) else json.dumps(m["content"]) for m in prompt)


class _Batched:
    """Local backends: one gate reservation per batch. Its GPU time is predicted from the slowest sample so far,
    so the dollar cap can be overshot by at most one batch."""

    batch_size: int
    sampling: SamplingSettings

    def _per_sample_seconds(self) -> float:
        return getattr(self, "_slowest", 0.0)

    def _timed_batch(self, budget, n: int, prompt_tokens: int, run):
        reservation = None
        if budget is not None:
            reservation = budget.reserve(
                requests=n,
                prompt_tokens=prompt_tokens,
                completion_tokens=n * self.sampling.max_new_tokens,
                seconds=self._per_sample_seconds() * n,
            )
        start = time.perf_counter()
        try:
            generations = run()
        except BaseException:
            if budget is not None:  # the GPU time was spent even if the batch failed
                budget.charge(reservation, requests=n, seconds=time.perf_counter() - start, failed=True)
            raise
        seconds = time.perf_counter() - start
        self._slowest = max(self._per_sample_seconds(), seconds / max(n, 1))
        if budget is not None:
            dollars = budget.charge(
                reservation,
                requests=n,
                seconds=seconds,
                prompt_tokens=sum(g.prompt_tokens for g in generations),
                completion_tokens=sum(g.completion_tokens for g in generations),
            )
            for g in generations:
                g.dollars = dollars / n
        return generations

    def generate(self, prompts: list[list[dict]], images: list | None = None) -> list[Generation]:
        out: dict[int, Generation] = {}
        for chunk in self.stream(prompts, images):
            out.update(chunk)
        return [out[i] for i in range(len(prompts))]


class TransformersBackend(_Batched):
    """Batched `model.generate` on a local model (the default backend).

    `generation_kwargs`: extra `model.generate` keywords (e.g. `suppress_tokens`, or a `sequence_bias` that steers a
    tiny test model into a scripted tool call). They are not part of the cache key: a caller that changes answers
    with them keys its run apart (its own `output_dir`).
    """

    name = "transformers"

    def __init__(self, model, processor, sampling: SamplingSettings, *, batch_size: int = 16, generation_kwargs=None):
        self.model, self.processor, self.sampling, self.batch_size = model.eval(), processor, sampling, batch_size
        self.generation_kwargs = dict(generation_kwargs or {})
        tokenizer = getattr(processor, "tokenizer", processor)
        tokenizer.padding_side = "left"  # decoder-only batched generation pads on the left
        self.tokenizer = tokenizer
        eos = self.model.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos])

    @classmethod
    def from_pretrained(cls, model_dir: str, sampling: SamplingSettings, *, batch_size: int = 16, **kwargs):

        model, processor = load_model_and_processor(model_dir, **kwargs)
        return cls(model, processor, sampling, batch_size=batch_size)

    def stream(self, prompts, images=None, budget=None) -> Iterator[list[tuple[int, Generation]]]:
        images = images if images is not None else [None] * len(prompts)
        for start in range(0, len(prompts), self.batch_size):
            batch_prompts, batch_images = (
                prompts[start : start + self.batch_size],
                images[start : start + self.batch_size],
            )
            inputs = self._inputs(batch_prompts, batch_images)
            n_prompt = int(inputs["attention_mask"].sum())
            generations = self._timed_batch(budget, len(batch_prompts), n_prompt, lambda: self._generate(inputs))  # noqa: B023 (called now)
            yield [(start + k, g) for k, g in enumerate(generations)]

    def _inputs(self, prompts, images):
        texts = [
            chat_prompt_text(self.processor, chat_messages(p, im))  # as `tokens cost` counts a prompt
            for p, im in zip(prompts, images)
        ]
        # One list of images per prompt, as TRL passes them: a processor that nests images by prompt (Gemma 3)
        # reads a flat list as all the images of the first prompt.
        per_prompt = [[im] if im is not None else [] for im in images]
        has_images = any(per_prompt)
        return self.processor(
            text=texts, images=per_prompt if has_images else None, padding=True, return_tensors="pt"
        ).to(self.model.device)

    def conversations(
        self, conversations, image_lists, budget=None, *, tools=None, chat_template=None
    ) -> list[Generation]:
        """One batch of whole conversations (multi-turn, any number of images each, in order of appearance),
        rendered with `tools` (and `chat_template`, if given, in place of the processor's), through one gate
        reservation; each `Generation` carries its token ids (for `parse_response`). The caller batches
        (`batch_size` at most)."""
        texts = [
            self.processor.apply_chat_template(
                c, tools=tools, chat_template=chat_template, tokenize=False, add_generation_prompt=True
            )
            for c in conversations
        ]
        has_images = any(image_lists)
        inputs = self.processor(
            text=texts, images=[list(x) for x in image_lists] if has_images else None, padding=True, return_tensors="pt"
        ).to(self.model.device)
        n_prompt = int(inputs["attention_mask"].sum())
        return self._timed_batch(budget, len(conversations), n_prompt, lambda: self._generate(inputs))

    def _generate(self, inputs) -> list[Generation]:
        import torch

        kwargs = {**self.sampling.generate_kwargs(), **self.generation_kwargs}
        if kwargs["do_sample"]:
            # Seeded per batch so a sampled run repeats. Greedy needs no seed, and skipping it saves time: on a
            # CPU torch.manual_seed formats a stack trace for each lazily initialised accelerator backend.
            torch.manual_seed(self.sampling.seed)
        with torch.no_grad():
            out = self.model.generate(
                **inputs,
                **kwargs,
                pad_token_id=self.tokenizer.pad_token_id,
                output_scores=True,
                return_dict_in_generate=True,
            )
            # Each generated token's log-probability under the (temperature-warped) distribution it was drawn from.
            token_logprobs = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        new_tokens = out.sequences[:, inputs["input_ids"].shape[1] :].tolist()
        results = []
        masks = inputs["attention_mask"].tolist()
        for ids, prompt, mask, logprobs in zip(new_tokens, inputs["input_ids"].tolist(), masks, token_logprobs):
            # Completion tokens run up to and including the first end-of-sequence token; the rest is padding.
            n = next((i + 1 for i, t in enumerate(ids) if t in self._eos), len(ids))
            text = self.tokenizer.decode(ids[:n], skip_special_tokens=True)
            prompt_ids = [t for t, m in zip(prompt, mask) if m]
            results.append(
                Generation(
                    text,
                    len(prompt_ids),
                    n,
                    logprob=float(logprobs[:n].sum()),
                    token_ids=ids[:n],
                    prompt_ids=prompt_ids,
                )
            )
        return results


class VLLMBackend(_Batched):
    """vLLM offline inference (`LLM.chat` on a list of conversations); needs `pip install astroreason[vllm]` and a GPU."""

    name = "vllm"

    def __init__(
        self,
        model: str,
        sampling: SamplingSettings,
        *,
        batch_size: int = 256,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        image_tokens_bound: int = 1536,
        trust_remote_code: bool = False,
    ):
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise UserError(
                "backend: vllm is not installed; pip install 'astroreason[vllm]' (needs a GPU) "
                "or use --backend transformers"
            ) from None
        self.sampling, self.batch_size, self.image_tokens_bound = sampling, batch_size, image_tokens_bound
        self.llm = LLM(
            model=model,
            seed=sampling.seed,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            trust_remote_code=trust_remote_code,
        )
        self.params = SamplingParams(
            max_tokens=sampling.max_new_tokens,
            temperature=max(sampling.temperature, 0.0),
            top_p=sampling.top_p,
            seed=sampling.seed,
            logprobs=0,  # the sampled token's own log-probability only: `cumulative_logprob` of the completion
        )

    def stream(self, prompts, images=None, budget=None) -> Iterator[list[tuple[int, Generation]]]:
        images = images if images is not None else [None] * len(prompts)
        for start in range(0, len(prompts), self.batch_size):
            batch = list(zip(prompts[start : start + self.batch_size], images[start : start + self.batch_size]))
            conversations = [openai_messages(p, im) for p, im in batch]
            # Tokens are only known after the call: reserve the byte bound of the text plus the image allowance.
            bound = sum(
                len(prompt_text(p).encode()) + 64 + (self.image_tokens_bound if im is not None else 0)
                for p, im in batch
            )

            def run():
                outputs = self.llm.chat(conversations, sampling_params=self.params, use_tqdm=False)  # noqa: B023
                return [
                    Generation(
                        o.outputs[0].text,
                        len(o.prompt_token_ids),
                        len(o.outputs[0].token_ids),
                        logprob=o.outputs[0].cumulative_logprob,
                    )
                    for o in outputs
                ]

            generations = self._timed_batch(budget, len(batch), bound, run)
            yield [(start + k, g) for k, g in enumerate(generations)]


# A conversation's chat-template tokens beyond its text: per turn (role markers), and the tool preamble a template
# writes when tools are offered (Qwen's is ~400 bytes); a response reporting more still widens `_overhead`.
TURN_ALLOWANCE, TOOLS_ALLOWANCE = 16, 1024


class OpenAIBackend:
    """An OpenAI-compatible chat-completions server. Each request reserves its worst case (a prompt-token bound plus
    `max_new_tokens`) before it is sent and is charged the usage its response reports. An attempt that may have been
    billed without an answer (a timeout, a connection lost mid-answer) stays charged at its worst case, and its retry
    reserves a worst case of its own (see `_one`).

    The prompt bound is the prompt's UTF-8 byte count (a byte-level BPE never makes more tokens than bytes) plus a
    chat-template allowance, plus `image_tokens_bound` per image; a response reporting more raises the allowance.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        sampling: SamplingSettings,
        *,
        api_key_env: str | None = None,
        concurrency: int = 4,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        image_tokens_bound: int = 1536,
        extra_body: dict | None = None,
    ):
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise UserError(f"base_url: expected an http(s) URL of an OpenAI-compatible server, got {base_url!r}")
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise UserError("concurrency must be >= 1, max_retries >= 0 and request_timeout > 0")
        self.url = base_url.rstrip("/") + ("" if base_url.rstrip("/").endswith("/v1") else "/v1") + "/chat/completions"
        self.model, self.sampling = model, sampling
        self.concurrency, self.timeout, self.max_retries, self.backoff = concurrency, timeout, max_retries, backoff
        self.image_tokens_bound = image_tokens_bound
        # Extra request fields the server reads beyond the OpenAI API (e.g. `transformers serve`'s
        # `generation_config` JSON, through which a test steers a tiny served model); not part of the cache key.
        self.extra_body = dict(extra_body or {})
        self._overhead = 64
        self._lock = threading.Lock()
        self._key = None
        if api_key_env:
            self._key = os.environ.get(api_key_env)
            if not self._key:
                raise UserError(
                    f"api_key_env: the environment variable {api_key_env} is not set (the API key is read "
                    "from the environment only)"
                )
        # One attempt per call (max_retries=0): the retries are driven by `_one`, because each attempt settles the
        # budget on its own terms and a retry may have to reserve (or be refused) before it is sent, which the
        # client's own retry loop gives no place for.
        self._client = openai.OpenAI(
            base_url=self.url.removesuffix("/chat/completions"), api_key="unused", timeout=timeout, max_retries=0
        )
        # Set on every request, so the key sent is the named variable's and no other (not OPENAI_API_KEY nor an
        # Authorization in OPENAI_CUSTOM_HEADERS, which the client would otherwise send); without one, none is sent.
        self._headers = {"Authorization": f"Bearer {self._key}" if self._key else openai.omit}

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _request(self, prompt, image) -> dict:
        return self._chat_request(openai_messages(prompt, image))

    def _chat_request(self, messages: list[dict], tools: list[dict] | None = None) -> dict:
        s = self.sampling
        request = {
            "model": self.model,
            "messages": messages,
            "max_tokens": s.max_new_tokens,
            "temperature": max(s.temperature, 0.0),
            "seed": s.seed,
            "stream": False,
        }
        if s.temperature > 0:
            request["top_p"] = s.top_p
        if tools:
            request["tools"] = tools
        return request

    def prompt_bound(self, prompt, image) -> int:
        return (
            len(prompt_text(prompt).encode()) + self._overhead + (self.image_tokens_bound if image is not None else 0)
        )

    def stream(self, prompts, images=None, budget=None) -> Iterator[list[tuple[int, Generation]]]:
        """One request per prompt, up to `concurrency` in flight (`requests`); yields `[(position, Generation)]`."""
        images = images if images is not None else [None] * len(prompts)

        def prepare(i: int) -> tuple[dict, int]:
            return self._request(prompts[i], images[i]), self.prompt_bound(prompts[i], images[i])

        for i, generation in self.requests(deque(range(len(prompts))), prepare, budget):
            yield [(i, generation)]

    def chats(
        self, queue: deque, conversation, budget=None, *, tools: list[dict] | None = None
    ) -> Iterator[tuple[object, Generation]]:
        """Requests of whole conversations in OpenAI messages (a zoom episode's turns: its tool calls and tool turns,
        images as data URLs anywhere) with `tools`, up to `concurrency` in flight (`requests`): `conversation(tag)`
        gives the messages of `tag` as they are when its request is sent, each bounded by `messages_bound`. Yields
        `(tag, Generation)`, the `Generation` carrying the server's message (its `tool_calls`); the caller may append
        a tag to `queue` while it reads (an episode's next turn, once its last one is answered)."""

        def prepare(tag) -> tuple[dict, int]:
            messages = list(conversation(tag))
            return self._chat_request(messages, tools), self.messages_bound(messages, tools)

        return self.requests(queue, prepare, budget)

    def requests(self, queue: deque, prepare, budget=None) -> Iterator[tuple[object, Generation]]:
        """Up to `concurrency` requests in flight, one per tag taken from the front of `queue`, yielding
        `(tag, Generation)` as each finishes; `prepare(tag)` gives its request and prompt bound. The caller may append
        tags to `queue` while it reads the results: they are sent in turn.

        The worst case of the next request is reserved here, before it is submitted; a refusal while requests are in
        flight waits for them to settle (their real cost is usually below their reservation) and tries again, so the
        run stops only when the next request cannot fit at all, within the requests then in flight (which finish and
        are yielded). A server that failed for good stops the sending too; the error is raised once the requests in
        flight have finished."""
        stop: Exception | None = None
        head = None  # (request, bound) of the tag at the front, built once however often its reservation waits
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai") as pool:
            pending: dict = {}
            while queue or pending:
                while queue and stop is None and len(pending) < self.concurrency:
                    head = head or prepare(queue[0])
                    request, bound = head
                    try:
                        reservation = (
                            None
                            if budget is None
                            else budget.reserve(
                                requests=1, prompt_tokens=bound, completion_tokens=self.sampling.max_new_tokens
                            )
                        )
                    except BudgetExhausted as err:
                        if not pending:
                            stop = err
                        break
                    pending[pool.submit(self._one, request, bound, budget, reservation)] = queue.popleft()
                    head = None
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    tag = pending.pop(future)
                    try:
                        generation = future.result()
                    except (CheckFailed, UserError) as err:  # the server failed for good: send nothing more
                        stop = stop or err
                        continue
                    yield tag, generation
        if stop is not None:
            raise stop

    def messages_bound(self, messages: list[dict], tools: list[dict] | None = None) -> int:
        """The prompt-token bound of a conversation: the UTF-8 bytes of its text (tool calls and the tools' schemas
        included), the chat-template allowance per turn, the template's tool preamble when there are tools
        (`TOOLS_ALLOWANCE`), and `image_tokens_bound` per image."""
        n_images, text = 0, []
        for m in messages:
            content = m.get("content")
            parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
            for part in parts:
                if part.get("type") == "image_url":
                    n_images += 1
                else:
                    text.append(str(part.get("text", "")))
            if m.get("tool_calls"):
                text.append(json.dumps(m["tool_calls"]))
        text.append(json.dumps(tools or []))
        allowance = self._overhead + TURN_ALLOWANCE * len(messages) + (TOOLS_ALLOWANCE if tools else 0)
        return len("".join(text).encode()) + allowance + self.image_tokens_bound * n_images

    def _one(self, request: dict, bound: int, budget, reservation) -> Generation:
        """Send one request, retrying as `_attempt` allows, and settle its reservations.

        An attempt that may have reached the server and been billed (it timed out, or the connection dropped
        mid-answer) keeps its reservation, charged at the worst case whatever happens next; its retry is a request of
        its own and reserves its own worst case first (refused, it is not sent). An attempt answered with an HTTP
        error, or that never connected, was not billed: its retry reuses the reservation, released if all fail.
        """

        billed: list[tuple] = []  # (reservation, attempts on it, why) of attempts that may have been billed
        used = 0  # attempts on the current reservation
        failure: _Failed | None = None
        for attempt in range(1, self.max_retries + 2):
            used += 1
            try:
                raw = self._attempt(request, attempt)
                failure = None
                break
            except _Failed as err:
                failure = err
            if failure.maybe_billed:
                billed.append((reservation, used, failure.kind))
                reservation, used = None, 0
            if not failure.retry or attempt > self.max_retries:
                break
            time.sleep(
                failure.delay
                if failure.delay is not None
                else self.backoff * 2 ** (attempt - 1) * (1 + 0.25 * random.random())
            )
            if reservation is None and budget is not None:
                try:
                    reservation = budget.reserve(
                        requests=1, prompt_tokens=bound, completion_tokens=self.sampling.max_new_tokens
                    )
                except BudgetExhausted as err:
                    self._settle_billed(budget, billed)
                    raise BudgetExhausted(f"{err} (a retry of a request that timed out)") from None
        if budget is not None:
            self._settle_billed(budget, billed)
        if failure is not None:
            if budget is not None and reservation is not None:
                budget.release(reservation, attempts=used, reason=failure.kind)
            where = "" if not failure.retry else f" after {attempt} attempts"
            raise BackendError(self._scrub(f"{self.url}: {failure}{where}")) from None
        try:
            text, prompt_tokens, completion_tokens, message = self._parse(raw)
        except _Malformed as err:
            if budget is not None:
                budget.charge_worst_case(reservation, attempts=used, reason="malformed response")
            raise BackendError(self._scrub(f"{self.url}: malformed response ({err})")) from None
        if prompt_tokens > bound:
            with self._lock:  # the template or the image took more than allowed for: widen the bound from now on
                self._overhead = max(self._overhead, prompt_tokens - (bound - self._overhead))
        dollars = sum(r.dollars for r, _, _ in billed if r is not None)
        if budget is not None:
            if prompt_tokens < 0:  # no usage reported: charge the worst case rather than guess low
                dollars += budget.charge_worst_case(reservation, attempts=used, reason="no usage in response")
            else:
                dollars += budget.charge(
                    reservation,
                    requests=1,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    attempts=used,
                )
        return Generation(text, max(prompt_tokens, 0), max(completion_tokens, 0), attempt, dollars, message=message)

    @staticmethod
    def _settle_billed(budget, billed: list[tuple]) -> None:
        for reservation, attempts, why in billed:
            if reservation is not None:
                budget.charge_worst_case(reservation, attempts=attempts, reason=why)

    def _attempt(self, request: dict, attempt: int) -> bytes:
        """One request through the client; returns the raw response body (read by `_parse`, so an answer that is not
        a chat completion is named, not guessed at) or raises `_Failed` saying whether it may have been billed and
        whether to retry (429/5xx with the server's Retry-After, timeouts, refused or dropped connections)."""
        try:
            response = self._client.chat.completions.with_raw_response.create(
                **request,
                extra_headers={**self._headers, "x-stainless-retry-count": str(attempt - 1)},
                extra_body=self.extra_body or None,
            )
            return response.content
        except openai.APIStatusError as err:  # the server answered, with an error: nothing was billed
            last = f"HTTP {err.status_code} {err.response.text[:200]}".replace("\n", " ").strip()
            if not isinstance(err, (openai.RateLimitError, openai.InternalServerError)):
                raise _Failed(f"the server refused the request: {last}", "http error", retry=False) from None
            raise _Failed(last, "server error", delay=_retry_after(err.response.headers)) from None
        except openai.APIConnectionError as err:  # a timeout (APITimeoutError) or a connection failure
            cause = err.__cause__
            if isinstance(cause, (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)):
                raise _Failed(f"unreachable ({cause or cause.__class__.__name__})", "unreachable") from None  # not sent
            if isinstance(err, openai.APITimeoutError):
                raise _Failed(f"timed out after {self.timeout:g} s", "no answer", maybe_billed=True) from None
            raise _Failed(f"connection lost ({cause.__class__.__name__})", "no answer", maybe_billed=True) from None

    @staticmethod
    def _parse(raw: bytes) -> tuple[str, int, int, dict]:
        try:
            payload = json.loads(raw)
            message = payload["choices"][0]["message"]
            text = message.get("content") or ""
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Malformed(f"not JSON: {raw[:60]!r}") from None
        except (KeyError, IndexError, TypeError, AttributeError) as err:
            raise _Malformed(f"no choices[0].message.content ({err.__class__.__name__}: {err})") from None
        usage = payload.get("usage") or {}
        try:
            return text, int(usage["prompt_tokens"]), int(usage["completion_tokens"]), message
        except (KeyError, TypeError, ValueError):
            return text, -1, -1, message


def _retry_after(headers) -> float | None:
    """The server's numeric Retry-After in seconds (at most a minute), or None to back off exponentially."""
    value = headers.get("retry-after", "")
    return min(float(value), 60.0) if value.replace(".", "", 1).isdigit() else None


class _Failed(Exception):
    """One attempt failed: `maybe_billed` if it may have reached the server and been billed (timed out, connection
    lost mid-answer), `retry` if another attempt may succeed, `delay` the server's Retry-After."""

    def __init__(
        self, message: str, kind: str, *, maybe_billed: bool = False, retry: bool = True, delay: float | None = None
    ):
        super().__init__(message)
        self.kind, self.maybe_billed, self.retry, self.delay = kind, maybe_billed, retry, delay


class _Malformed(Exception):
    pass

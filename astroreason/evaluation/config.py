"""The evaluation's settings (`EvalConfig`, `SamplingSettings`), light to import: `astroreason eval --help` reads
them without loading a backend, a model or scipy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..arms import ArmSettings
from ..budget import Caps
from ..errors import UserError
from ..integrity.gate import DEFAULT_CEILING
from ..options import BudgetArguments, ZoomArguments, help_from_docstring

BACKENDS = ("transformers", "vllm", "openai")


@dataclass
class SamplingSettings:
    """Decoding settings; those that decide an answer (`deciding`) are part of every cache key."""

    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 is greedy decoding
    top_p: float = 1.0
    seed: int = 0

    def deciding(self) -> dict:
        """The settings that decide an answer, for the cache key: greedy decoding ignores top_p and the seed."""
        kwargs = self.generate_kwargs()
        return {**kwargs, "seed": self.seed} if kwargs["do_sample"] else kwargs

    def generate_kwargs(self) -> dict:
        if self.temperature <= 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }


@help_from_docstring
@dataclass
class EvalConfig(ZoomArguments, BudgetArguments, ArmSettings):
    """One evaluation run (with the arm, budget and zoom options it shares with training, `astroreason.options`;
    with `zoom: true` each galaxy is a zoom episode, `evaluation.episodes`, and `zoom_cost`, `zoom_bonus` and
    `zoom_skip_unanswered`, which only shape training's reward, do nothing).

    Args:
        model: Checkpoint directory (or Hub name) of the model to evaluate. With `backend: openai` it may name the
            served checkpoint's local directory (its weights hash then keys the cache) or just the served model.
        split: Split to evaluate.
        output_dir: Where `samples.jsonl` and `result.json` go; rerunning into it resumes.
        max_samples: Evaluate only the first N rows of the split (rows are a seeded shuffle).
        batch_size: Prompts per generate call (local backends).
        max_new_tokens: Completion budget per sample (also the completion part of each request's worst case).
        temperature: 0 for greedy decoding.
        top_p: Nucleus sampling mass (when temperature > 0).
        seed: Sampling seed.
        n_boot: Bootstrap resamples for the intervals.
        backend: `transformers` (local, batched), `vllm` (local, optional extra) or `openai` (an OpenAI-compatible
            server at `base_url`).
        base_url: Server URL for `backend: openai`, e.g. http://127.0.0.1:8000/v1.
        server_model: Model name sent to the server (default: `model`).
        api_key_env: Name of the environment variable holding the API key; the key itself is never written anywhere.
        concurrency: Requests in flight at once (`backend: openai`).
        request_timeout: Seconds before a request is abandoned (and retried).
        max_retries: Retries of a request after a 429/5xx, a timeout or a refused connection (exponential backoff).
        retry_backoff: First backoff in seconds; doubled on each retry.
        image_tokens_bound: Worst-case prompt tokens of one image, reserved before an image request is sent.
        price_input_per_million: Set the API input price yourself (dollars per million tokens).
        price_output_per_million: Set the API output price yourself (dollars per million tokens).
        gpus: GPUs a local backend occupies (charged per GPU-hour; default: all visible, 1 on a CPU).
        max_tokens: Cap on the project's total tokens (prompt + completion) in the ledger.
        max_requests: Cap on the project's total requests in the ledger.
        max_seconds: Cap on this run's wall-clock seconds.
        pilot_samples: Evaluate this many samples first (stratified by class), print the cost estimate of the rest,
            and refuse to go on if it would not fit under the caps.
        vllm_gpu_memory_utilization: Share of GPU memory vLLM may take.
        trust_remote_code: Let a checkpoint run its own code (off by default).
        ceiling: An accuracy above this is suspect, never a success (Galaxy10 DECaLS: best published CNN 0.955).
        results_dir: Directory of the results ledger (`results.tsv`, `experiment_log.md`), to which every finished
            evaluation appends one row; default: the spend ledger's directory (one project directory for both).
        description: One line for the results ledger: what this run tries.
        experiment: Name of the experiment this run belongs to: the ledger keeps it only when it beats the
            experiment's best kept result on the same galaxies (paired test, noise floor), else discards it; empty:
            recorded `keep` without a comparison, as before.
    """

    model: str = ""
    split: str = "test"
    output_dir: str = "runs/eval"
    max_samples: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    n_boot: int = field(default=1000)
    backend: str = "transformers"
    base_url: str | None = None
    server_model: str | None = None
    api_key_env: str | None = None
    concurrency: int = 4
    request_timeout: float = 120.0
    max_retries: int = 4
    retry_backoff: float = 1.0
    image_tokens_bound: int = 1536
    price_input_per_million: float | None = None
    price_output_per_million: float | None = None
    gpus: int | None = None
    max_tokens: int | None = None
    max_requests: int | None = None
    max_seconds: float | None = None
    pilot_samples: int = 0
    vllm_gpu_memory_utilization: float = 0.9
    trust_remote_code: bool = False
    ceiling: float = DEFAULT_CEILING
    results_dir: str | None = None
    description: str = ""
    experiment: str = ""

    def __post_init__(self):
        self.ledger = self.spend_ledger()  # an evaluation always charges the ledger
        if self.backend not in BACKENDS:
            raise UserError(f"backend: expected one of {', '.join(BACKENDS)}, got {self.backend!r}")
        self.check_arm()
        if self.backend == "openai" and not self.base_url:
            raise UserError("base_url: backend openai needs --base_url http://HOST:PORT/v1")
        numbers = {
            "batch_size": int,
            "max_new_tokens": int,
            "n_boot": int,
            "concurrency": int,
            "max_retries": int,
            "pilot_samples": int,
            "image_tokens_bound": int,
            "temperature": float,
            "top_p": float,
            "request_timeout": float,
            "retry_backoff": float,
        }
        for name, kind in numbers.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                raise UserError(f"{name}: expected a{'n integer' if kind is int else ' number'}, got {value!r}")
        for name in ("batch_size", "max_new_tokens", "n_boot", "concurrency"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in (
            "max_samples",
            "max_dollars",
            "max_tokens",
            "max_requests",
            "max_seconds",
            "gpus",
            "price_input_per_million",
            "price_output_per_million",
            "price_gpu_hour",
        ):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise UserError(f"{name}: expected a non-negative number, got {value!r}")
        if self.max_samples is not None and self.max_samples < 1:
            raise UserError(f"max_samples: must be at least 1, got {self.max_samples}")
        if isinstance(self.ceiling, bool) or not isinstance(self.ceiling, (int, float)) or not 0 < self.ceiling <= 1:
            raise UserError(f"ceiling: expected a number in (0, 1], got {self.ceiling!r}")
        if self.estimate_only and self.pilot_samples:
            raise UserError(
                "estimate_only: asks nothing, and pilot_samples asks a pilot; for a pilot and its estimate use "
                "`astroreason budget estimate`, then --estimate_only extrapolates from its answers"
            )
        if self.zoom:
            self.check_zoom()
            if self.backend == "vllm":
                raise UserError(
                    "zoom: zoom episodes run on the transformers and openai backends, not vllm (docs/zoom.md, "
                    "Zoom in evaluation); serve the model with `vllm serve` and use --backend openai"
                )
        self.lint_override()  # a lint override without a reason is refused before anything runs

    def project_dir(self) -> Path:
        """Where the results ledger lives: `results_dir`, else beside the spend ledger."""
        return Path(self.results_dir) if self.results_dir else Path(self.ledger).parent

    def sampling(self) -> SamplingSettings:
        return SamplingSettings(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed
        )

    def caps(self) -> Caps:
        return Caps(self.max_dollars, self.max_tokens, self.max_requests, self.max_seconds)

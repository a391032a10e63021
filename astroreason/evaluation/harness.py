"""The evaluation harness: a model + a prepared split -> per-sample JSONL (cached by content hash) -> metrics with
intervals -> `result.json` and one final `RESULT {json}` line, every request paid for through the budget gate.

A sample's cache key hashes everything that decides its answer: the exact prompt (template and, for the token arm, the
token text), the image's pixels, and the run's `answer_settings` (the checkpoint's files that decide answers, the
backend and served model, the arm's settings, the decoding settings). A killed run resumes without re-asking a
finished sample, and a changed checkpoint, chat template or setting is never served from the cache. Each answer is
appended (and fsync'd) the moment it exists, so a run stopped by a cap, a dead server or a kill keeps every answer it
paid for.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..arms import Arm, build_arm
from ..budget import Budget, BudgetExhausted, Ledger, api_price, gpu_price, local_device
from ..data.splits import load_manifest
from ..errors import CheckFailed, UserError
from ..integrity.gate import read_suspect
from ..integrity.ledger import LEDGER_FILE, record_result, recorded_row, write_log
from ..io import read_json_file, sha256_bytes, sha256_json, write_json_atomic, write_text_atomic
from ..models import answer_files_hash, checkpoint_family, weights_hash
from ..prompts import zoom_prompt
from ..provenance import GitState, provenance
from ..rewards import parse_answer
from ..zoom.chat import suppressing_placeholders
from ..zoom.lint import lint_tool_turns
from .backends import BackendError, OpenAIBackend, TransformersBackend, VLLMBackend
from .config import EvalConfig
from .episodes import TURN_COSTS, LocalTurns, ServedTurns, ZoomEpisodes, zoom_summary
from .metrics import classification_metrics

# samples.jsonl: the answer cache, one line per distinct input (append-only, fsync'd as answers arrive);
# predictions.jsonl: one line per evaluated galaxy, in split order (written with result.json); result.json.
CACHE_NAME, PREDICTIONS_NAME, RESULT_NAME = "samples.jsonl", "predictions.jsonl", "result.json"
# A zoom run's turn log: one line per paid turn of an episode that had not ended with it (append-only, fsync'd), by
# sample key and turn number; a resumed run replays these turns instead of asking them again.
TURNS_NAME = "episode_turns.jsonl"


class IncompleteRun(CheckFailed):
    """The run stopped before every sample was answered (a cap, a failing server); what it finished is saved and
    `result` (also in result.json) says how far it got."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


# Raised whenever what the key covers changes: answers cached under an older key are asked again.
CACHE_KEY_VERSION = 2


def model_fingerprint(config: EvalConfig) -> str:
    """The weights hash of a local checkpoint (recorded as `weights_sha256`); for a served model with no local
    directory, the served name."""

    if Path(config.model).is_dir():
        return weights_hash(config.model)
    if config.backend != "openai":
        raise UserError(f"model: {config.model} is not a checkpoint directory")
    return sha256_bytes("served", config.server_model or config.model)


def answer_settings(config: EvalConfig, zoom: dict | None = None, *, arm: Arm | None = None) -> dict:
    """Everything besides the prompt and the image that decides an answer, part by part (`cache_key` in
    result.json); each sample's key hashes all of it. Files are hashed once per process, not per sample.

    - `model_files`: a local checkpoint's weights, model and generation configs, tokenizer, chat template, processor
      configs, remote code, and for a peft adapter its base model's files too (`models.ANSWER_FILES`);
    - `backend`, and for `openai` the served model name (`trust_remote_code` for the local backends);
    - the arm: the prompt template in use; the image size (image arm); the rendering, the codec's hash and any
      `token_crop` (token arm);
    - `decoding`: max_new_tokens and, when sampling, temperature, top_p and the seed;
    - with `zoom: true` only, `zoom` (`zoom_settings`): the turn cap, the tool and its box limits, the family's
      tool-calling templates. A run without zoom keys its samples exactly as before.

    `arm` is the evaluated arm (`evaluation_arm`, built here when not given): its default template is its split's.
    """

    if arm is None:  # the default template is the one for the split's task (its classes): the arm knows it
        arm = evaluation_arm(config)
    served = config.backend == "openai"
    parts = {
        "version": CACHE_KEY_VERSION,
        "backend": config.backend,
        "served_model": (config.server_model or config.model) if served else None,
        "model_files": answer_files_hash(config.model) if Path(config.model).is_dir() else None,
        "trust_remote_code": None if served else config.trust_remote_code,
        "modality": config.modality,
        "prompt_template": sha256_bytes(config.prompt_template or arm.default_template),
        "decoding": config.sampling().deciding(),
        **arm.answer_settings(config),
    }
    if zoom is not None:
        parts["zoom"] = zoom
    return parts


def zoom_settings(config: EvalConfig, tool, family) -> dict:
    """What decides a zoom episode besides the model and the first prompt (part of every zoom sample's key)."""
    return {
        "max_turns": config.zoom_max_turns,
        "tool": type(tool).__name__,
        "min_side": tool.limits.min_side,
        "max_aspect": tool.limits.max_aspect,
        "family": family.name if family is not None else None,
        "chat_template": sha256_bytes(family.chat_template) if family is not None else None,
        "response_template": sha256_json(family.response_template()) if family is not None else None,
    }


def evaluation_zoom_tool(config: EvalConfig, arm: Arm):
    """The arm's zoom tool (the training rollout's), its limits as `zoom_min_side`/`zoom_max_aspect` set them, and
    the checkpoint's family (whose merged patch is the image arm's default smallest box; None for a served model
    without a local directory)."""
    family = checkpoint_family(config.model) if Path(config.model).is_dir() else None
    if family is None and arm.zoom_needs_family and config.zoom_min_side is None:
        raise UserError(
            f"zoom_min_side: {config.model} is no local checkpoint of a model family astroreason knows, so the "
            "image arm's smallest box (one merged patch) is unknown; set --zoom_min_side"
        )
    tool = arm.zoom_tool(
        config,
        min_side=config.zoom_min_side,
        max_aspect=config.zoom_max_aspect,
        pixel_multiple=family.pixel_multiple if family is not None else None,
        manifest=arm.manifest,
    )
    return tool, family


def sample_key(prompt: list[dict], image, settings_sha256: str) -> str:
    """The cache key of one sample; `settings_sha256` is `sha256_json(answer_settings(config))`, hashed once per run."""
    pixels = b"" if image is None else image.tobytes() + repr((image.size, image.mode)).encode()
    return sha256_bytes(json.dumps(prompt, sort_keys=True), pixels, settings_sha256)


def read_jsonl(path: Path) -> list[dict]:
    """The JSON lines of an append-only file; a line cut short by a kill (the last one) is skipped."""
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def read_cache(path: Path) -> dict[str, dict]:
    """Finished samples by key. A line cut short by a kill (the last one) is ignored and asked again."""
    return {record["key"]: record for record in read_jsonl(path)}


def read_episode_turns(path: Path) -> dict[str, list[dict]]:
    """The paid turns of unfinished zoom episodes by key, in order: each key's turns 0, 1, ... as far as they run
    unbroken (a line cut short by a kill is ignored, and the turns after it are asked again)."""
    by_key: dict[str, dict[int, dict]] = {}
    for record in read_jsonl(path):
        by_key.setdefault(record.pop("key"), {})[record.pop("turn")] = record
    paid = {}
    for key, turns in by_key.items():
        n = 0
        while n in turns:
            n += 1
        paid[key] = [turns[t] for t in range(n)]
    return paid


def append_records(path: Path, records: list[dict]) -> None:
    torn = False
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(path, "a") as f:
        if torn:
            f.write("\n")  # a line torn by a kill stays a line of its own (and is ignored)
        for record in records:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def evaluation_arm(config: EvalConfig) -> Arm:
    """The evaluated split's arm, built once (its manifest loaded once): its rows are decoded once, the keys hash
    these exact rows and the backend is sent these exact rows."""
    if not Path(config.data_dir).is_dir():
        raise UserError(f"data_dir: {config.data_dir} is not a prepared directory (run `astroreason data prepare`)")
    manifest = load_manifest(config.data_dir)
    if config.split in manifest.rows and len(manifest.rows[config.split]) == 0:
        # Checked here: `datasets` cannot even load an empty split from disk (IndexError in concat_tables).
        raise UserError(f"split: {config.split!r} of {config.data_dir} has no rows to evaluate")
    arm = build_arm(config, config.split, max_samples=config.max_samples, manifest=manifest)
    if arm.n == 0:
        raise UserError(f"split: {config.split!r} of {config.data_dir} has no rows to evaluate")
    return arm


def evaluation_rows(config: EvalConfig) -> list[dict]:
    """The evaluated rows (prompt, label, image): `evaluation_arm(config).rows()`."""
    return evaluation_arm(config).rows()


def unrecorded(output_dir) -> bool:
    """Whether `output_dir` holds a finished `result.json` that names no results-ledger row: its run was killed
    between writing it and recording it, and its row may be in the ledger already (`record_integrity`)."""
    path = Path(output_dir) / RESULT_NAME
    try:
        result = read_json_file(path, "evaluation result", keys=("status",)) if path.is_file() else {}
    except UserError:  # cut short: not a result
        return False
    return result.get("status") == "complete" and "integrity" not in result


def record_integrity(config: EvalConfig, result: dict, *, resumed: bool = False) -> dict:
    """After `result.json` is written: the ceiling gate and one row in the results ledger. A result above the
    ceiling, or from a run marked suspect (training alarms, an audit), gets status `suspect`; the verdict is added
    to `result.json` as `integrity`.

    `resumed`: the run took over from one killed while recording (`unrecorded`); the row that run appended for these
    same predictions, if it got that far, is this run's row (and the log is regenerated from the ledger), not a second
    one."""

    project = config.project_dir()
    row = recorded_row(project, config.output_dir) if resumed else None
    if row is not None:
        write_log(project)
    else:
        row = record_result(
            project,
            result,
            run_dir=config.output_dir,
            ceiling=config.ceiling,
            description=config.description,
            experiment=config.experiment,
        )
    marks = [
        r
        for d in dict.fromkeys((config.output_dir, config.model))
        if Path(d).is_dir()
        for r in (read_suspect(d) or {}).get("reasons", [])
    ]
    reasons = [r["reason"] for r in marks]
    result["integrity"] = {
        "status": row["status"],
        "ceiling": config.ceiling,
        "ledger": str(project / LEDGER_FILE),
        "row_sha256": row["row_sha256"],
        "reasons": reasons,
        # each mark as `rule: reason` (a training alarm on the model, the ceiling on this result), for the RESULT line
        "suspect_reasons": list(dict.fromkeys(f"{r.get('rule', 'suspect')}: {r['reason']}" for r in marks)),
        "description": row["description"],
        "experiment": row["experiment"],
        "baseline": row["baseline"],
        "comparison": row["comparison"],
    }
    write_json_atomic(Path(config.output_dir) / RESULT_NAME, result)
    return result


def make_price(config: EvalConfig):
    """The price this run pays, refused (fail closed) when neither the table nor the user sets one."""

    if config.backend == "openai":
        key = config.price_key or config.server_model or config.model
        return api_price(
            config.prices,
            key,
            input_per_million=config.price_input_per_million,
            output_per_million=config.price_output_per_million,
        ), 1
    device, count = local_device()
    return gpu_price(config.prices, config.price_key or device, gpu_hour=config.price_gpu_hour), config.gpus or count


def make_backend(config: EvalConfig):

    sampling = config.sampling()
    if config.backend == "openai":
        return OpenAIBackend(
            config.base_url,
            config.server_model or config.model,
            sampling,
            api_key_env=config.api_key_env,
            concurrency=config.concurrency,
            timeout=config.request_timeout,
            max_retries=config.max_retries,
            backoff=config.retry_backoff,
            image_tokens_bound=config.image_tokens_bound,
        )
    if config.backend == "vllm":
        return VLLMBackend(
            config.model,
            sampling,
            batch_size=config.batch_size,
            gpu_memory_utilization=config.vllm_gpu_memory_utilization,
            image_tokens_bound=config.image_tokens_bound,
            trust_remote_code=config.trust_remote_code,
        )
    return TransformersBackend.from_pretrained(
        config.model, sampling, batch_size=config.batch_size, trust_remote_code=config.trust_remote_code
    )


def stratified_order(labels: list[int], positions: list[int], n: int) -> list[int]:
    """Up to n of `positions`, dealt round-robin over the classes (in split order within a class)."""
    by_class: dict[int, list[int]] = {}
    for p in positions:
        by_class.setdefault(int(labels[p]), []).append(p)
    queues, out = [by_class[c] for c in sorted(by_class)], []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


class Evaluation:
    """One evaluation run, step by step: `prepare` (data, keys, cache), `ask` (spend), `finish` (metrics, result)."""

    def __init__(self, config: EvalConfig, backend=None, *, progress: bool = True):
        if not config.model:
            raise UserError("model: pass --model DIR (a checkpoint directory) or set `model:` in the config")
        self.config, self.backend, self.progress = config, backend, progress
        self.out = Path(config.output_dir)
        self.cache_path = self.out / CACHE_NAME
        self.weights = model_fingerprint(config)
        # Before any row is built or model loaded: the family fits the image size, codes are never silently split
        # into several tokens (read from a local config or tokenizer only).
        config.arm_class().check_checkpoint(config, config.model)
        self.arm = evaluation_arm(config)
        self.rows = self.arm.rows()
        self.labels = [int(r["label"]) for r in self.rows]
        if not config.estimate_only:  # an estimate writes nothing
            self.out.mkdir(parents=True, exist_ok=True)
        # The prompt lint (as in training), recorded in output_dir/prompt_lint.json: CheckFailed before anything is
        # asked or paid for.
        record_dir = None if config.estimate_only else config.output_dir
        zoom = None
        self.tool = self.family = None
        if config.zoom:  # the zoom system turn before each prompt, as in training (`zoom.with_zoom_columns`)
            self.rows = [{**r, "prompt": zoom_prompt(r["prompt"], self.arm)} for r in self.rows]
            self.tool, self.family = evaluation_zoom_tool(config, self.arm)
            zoom = zoom_settings(config, self.tool, self.family)
        self.lint = self.arm.lint([r["prompt"] for r in self.rows], record_dir=record_dir)
        if self.tool is not None:  # the tool's turns are prompt text too: CheckFailed before anything is asked
            # on the split's first rows, not only those evaluated (a few galaxies would test nothing)
            self.tool_lint_calls = lint_tool_turns(self.tool, config.split, self.arm.split_positions())
        self.settings = answer_settings(config, zoom, arm=self.arm)
        settings = sha256_json(self.settings)
        self.keys = [sample_key(row["prompt"], row.get("image"), settings) for row in self.rows]
        self.done = read_cache(self.cache_path)
        self.turns_path = self.out / TURNS_NAME
        self.paid_turns = read_episode_turns(self.turns_path) if config.zoom else {}  # unfinished episodes'
        self.n_from_cache = len({k for k in self.keys if k in self.done})
        self.n_asked = 0
        self.n_resumed = 0  # zoom episodes this run took up after turns an earlier run paid
        self.started = time.monotonic()
        self.budget: Budget | None = None
        self.git = GitState()  # read when the result is written

    def todo(self) -> list[int]:
        """Positions still to ask, one per distinct key: galaxies with identical input share one paid answer."""
        seen, out = set(), []
        for i, k in enumerate(self.keys):
            if k not in self.done and k not in seen:
                seen.add(k)
                out.append(i)
        return out

    def _budget(self) -> Budget:
        if self.budget is None:
            price, gpus = make_price(self.config)
            self.budget = Budget(Ledger(self.config.ledger), price, self.config.caps(), gpus=gpus)
        return self.budget

    def ask(self, positions: list[int]) -> None:
        """Answer these samples through the gate, saving each answer as it arrives. Raises BudgetExhausted or a
        BackendError when it has to stop (what finished is saved)."""
        from rich.progress import Progress

        if not positions:
            return
        budget = self._budget()
        if self.backend is None:
            self.backend = make_backend(self.config)
        if self.tool is not None:
            return self._ask_episodes(positions, budget)
        rows = [self.rows[i] for i in positions]
        with Progress(disable=not self.progress, transient=True) as bar:
            task = bar.add_task(f"eval {self.config.modality} {self.config.split}", total=len(positions))
            for chunk in self.backend.stream([r["prompt"] for r in rows], [r.get("image") for r in rows], budget):
                records = [
                    self._record(
                        positions[k],
                        g.text,
                        prompt_tokens=g.prompt_tokens,
                        completion_tokens=g.completion_tokens,
                        attempts=g.attempts,
                        dollars=g.dollars,
                        logprob=g.logprob,
                    )
                    for k, g in chunk
                ]
                self._keep(records)
                bar.advance(task, len(records))

    def _record(self, i: int, text: str, **fields) -> dict:
        """The cache record of sample `i`'s answer: its key, index, label, completion and parsed prediction, and the
        answer's costs and extras (`fields`)."""
        base = {"key": self.keys[i], "index": i, "label": self.labels[i], "completion": text}
        return {**base, "prediction": parse_answer(text, self.arm.task.classes), **fields}

    def _keep(self, records: list[dict]) -> None:
        """Append answers to the cache as they arrive (a killed run keeps them) and count them as asked."""
        append_records(self.cache_path, records)
        self.done.update({r["key"]: r for r in records})
        self.n_asked += len(records)

    def _ask_episodes(self, positions: list[int], budget) -> None:
        """Zoom episodes (`episodes.ZoomEpisodes`) for these samples: each paid turn of an episode still going is
        appended to the turn log, an episode is saved with all its turns once it ends, and one stopped mid-way by an
        earlier run resumes after its paid turns."""
        if isinstance(self.backend, TransformersBackend):  # as in training (`training.zoom.suppress_video_tokens`)
            self.backend.generation_kwargs = suppressing_placeholders(
                self.backend.generation_kwargs, self.backend.model.config
            )
        served = isinstance(self.backend, OpenAIBackend)
        turns = ServedTurns(self.backend) if served else LocalTurns(self.backend, self.family)
        runner = ZoomEpisodes(turns, self.tool, self.config.split, max_turns=self.config.zoom_max_turns)
        rows = [self.rows[i] for i in positions]
        split_positions = [int(self.arm.positions[i]) for i in positions]
        paid = [self.paid_turns.get(self.keys[i], []) for i in positions]
        self.n_resumed += sum(bool(p) for p in paid)
        for chunk in runner.stream(
            [r["prompt"] for r in rows], [r.get("image") for r in rows], split_positions, budget, paid
        ):
            going = [
                {"key": self.keys[positions[k]], "turn": len(episode.turns) - 1, **episode.turns[-1]}
                for k, episode in chunk
                if not episode.done
            ]
            if going:
                append_records(self.turns_path, going)
            records = [
                self._record(
                    positions[k],
                    episode.text,
                    **{f: sum(t[f] for t in episode.turns) for f in TURN_COSTS},
                    logprob=episode.logprob,
                    zoom=episode.record(),
                )
                for k, episode in chunk
                if episode.done
            ]
            if records:
                self._keep(records)

    def pilot(self, n: int) -> dict:
        """Make sure at least n distinct inputs are answered (topping up with a class-stratified pick), then
        estimate the cost of the rest from every answer in hand."""
        answered = len({k for k in self.keys if k in self.done})
        if answered < n:
            self.ask(stratified_order(self.labels, self.todo(), n - answered))
        return self.estimate()

    def estimate(self) -> dict:
        """Cost of the inputs not yet answered, extrapolated from the answered ones."""
        answered = [self.done[k] for k in set(self.keys) if k in self.done]
        remaining = len(self.todo())
        if not answered:
            raise CheckFailed("estimate: no pilot sample was answered; nothing to extrapolate from")
        mean = lambda field: sum(r.get(field, 0) for r in answered) / len(answered)  # noqa: E731
        # One request per sample; a zoom episode makes one per turn.
        per_sample = sum((r.get("zoom") or {}).get("turns", 1) for r in answered) / len(answered)
        requests = round(per_sample * remaining)
        totals = self._budget().ledger.totals()
        caps = self.config.caps()
        estimate = {
            "pilot_samples": len(answered),
            "remaining_samples": remaining,
            "dollars_per_sample": mean("dollars"),
            "tokens_per_sample": mean("prompt_tokens") + mean("completion_tokens"),
            "estimated_dollars": mean("dollars") * remaining,
            # The whole run: what the answers in hand cost plus the estimate of the rest (the results ledger's
            # `estimated_usd`, beside what the run's answers actually cost).
            "estimated_total_dollars": sum(r.get("dollars", 0.0) for r in answered) + mean("dollars") * remaining,
            "estimated_tokens": round((mean("prompt_tokens") + mean("completion_tokens")) * remaining),
            "estimated_requests": requests,
            "ledger_committed_dollars": totals.committed_dollars,
            "max_dollars": caps.max_dollars,
            "cap_left_dollars": None if caps.max_dollars is None else caps.max_dollars - totals.committed_dollars,
        }
        over = []
        if caps.max_dollars is not None and totals.committed_dollars + estimate["estimated_dollars"] > caps.max_dollars:
            over.append("dollars")
        if caps.max_tokens is not None and totals.committed_tokens + estimate["estimated_tokens"] > caps.max_tokens:
            over.append("tokens")
        if caps.max_requests is not None and totals.committed_requests + requests > caps.max_requests:
            over.append("requests")
        estimate["fits"] = not over
        estimate["over"] = over
        return estimate

    def finish(self, status: str = "complete", error: str | None = None, estimate: dict | None = None) -> dict:
        """Metrics over the answered samples and `result.json` (status `complete` only if every sample is in)."""

        finished = [
            {**self.done[k], "index": i, "label": self.labels[i]} for i, k in enumerate(self.keys) if k in self.done
        ]
        metrics = None
        if finished:
            metrics = classification_metrics(
                [r["label"] for r in finished],
                [r["prediction"] for r in finished],
                len(self.arm.task.classes),
                n_boot=self.config.n_boot,
                seed=self.config.seed,
            )
        config = asdict(self.config)
        spend = {}
        if self.budget is not None:
            run = self.budget.ledger.by_run().get(self.budget.run)
            totals = self.budget.ledger.totals()
            spend = {
                "run_id": self.budget.run,
                "price": asdict(self.budget.price),
                "gpus": self.budget.gpus,
                "this_run": run.to_json() if run else None,
                "ledger": str(self.budget.ledger.path),
                "ledger_totals": totals.to_json(),
            }
        result = {
            "status": status if len(finished) == len(self.keys) or status != "complete" else "incomplete",
            "error": error,
            "config": config,
            "provenance": provenance(
                config, data_dir=self.config.data_dir, seed=self.config.seed, git=self.git, manifest=self.arm.manifest
            ),
            "weights_sha256": self.weights,
            "cache_key": self.settings,
            "n_total": len(self.keys),
            "n_done": len(finished),
            "n_distinct_inputs": len(set(self.keys)),
            "n_asked_this_run": self.n_asked,
            "n_from_cache": self.n_from_cache,
            "seconds": round(time.monotonic() - self.started, 3),
            "prompt_tokens": sum(r["prompt_tokens"] for r in finished),
            # The whole prompt per galaxy (template + galaxy), as `astroreason tokens cost` counts it.
            "prompt_tokens_per_galaxy": (sum(r["prompt_tokens"] for r in finished) / len(finished))
            if finished
            else None,
            "completion_tokens": sum(r["completion_tokens"] for r in finished),
            # What the answers in use cost when they were bought (each distinct input paid once, whichever run).
            "dollars": sum(self.done[k].get("dollars", 0.0) for k in set(self.keys) if k in self.done),
            "spend": spend,
            "estimate": estimate,
            "metrics": metrics,
            # The class names, by label: what `prediction` and `label` index (older results have none: Galaxy10's).
            "classes": list(self.arm.task.classes),
        }
        if self.tool is not None:  # zoom rate, zooms and tokens per galaxy, accuracy with and without zoom
            result["zoom"] = {
                **zoom_summary(finished),
                "tool_lint_calls": self.tool_lint_calls,
                "resumed_mid_episode": self.n_resumed,
            }
        fields = ("index", "key", "label", "prediction", "completion", "prompt_tokens", "completion_tokens")
        write_text_atomic(
            self.out / PREDICTIONS_NAME,
            "".join(
                # `logprob`: None for a backend that reports none, or an answer cached before it was recorded
                json.dumps(
                    {
                        **{f: r[f] for f in fields},
                        "logprob": r.get("logprob"),
                        **({"zoom": r["zoom"]} if "zoom" in r else {}),
                    },
                    sort_keys=True,
                )
                + "\n"
                for r in finished
            ),
        )
        write_json_atomic(self.out / RESULT_NAME, result)
        return result


def evaluate(config: EvalConfig, backend=None, *, progress: bool = True) -> dict:
    """Run (or resume) one evaluation; returns the result also written to `output_dir/result.json`, gated by the
    ceiling and recorded in the results ledger (`result["integrity"]["status"]` is `keep`, `suspect`, or under an
    `experiment` name `discard` when it does not beat the experiment's best).

    Raises `IncompleteRun` (exit 1, with the partial result, not recorded as a result) when a cap or the backend
    stops it early.
    """

    if config.estimate_only:
        raise UserError("estimate_only: call estimate_evaluation (an estimate is not a result)")
    resumed = unrecorded(config.output_dir)  # read before this run's result.json replaces it
    run = Evaluation(config, backend, progress=progress)
    estimate = None
    try:
        # Refuse to start when the estimate does not fit: from a pilot asked now, or from the answers already in hand
        # (an earlier pilot, an interrupted run).
        in_hand = any(k in run.done for k in run.keys)
        if run.todo() and (config.pilot_samples > 0 or in_hand):
            estimate = run.pilot(config.pilot_samples) if config.pilot_samples > 0 else run.estimate()
            print("ESTIMATE " + json.dumps(estimate, sort_keys=True), flush=True)
            run.budget.ledger.note_estimate(
                run.budget.run, estimate["estimated_total_dollars"], output_dir=str(config.output_dir)
            )
            if not estimate["fits"]:
                message = (
                    f"budget: the estimate for the remaining {estimate['remaining_samples']} samples exceeds "
                    f"the {', '.join(estimate['over'])} cap; nothing more was sent"
                )
                raise IncompleteRun(message, run.finish("estimate_over_cap", message, estimate))
        run.ask(run.todo())
    except BudgetExhausted as err:
        raise IncompleteRun(str(err), run.finish("budget_exhausted", str(err), estimate)) from None
    except BackendError as err:
        raise IncompleteRun(str(err), run.finish("backend_error", str(err), estimate)) from None
    return record_integrity(config, run.finish("complete", None, estimate), resumed=resumed)


def estimate_evaluation(config: EvalConfig) -> dict:
    """`--estimate_only`: the cost of the run, extrapolated from the answers already in `output_dir` (a pilot of
    `astroreason budget estimate`, or an interrupted run), without asking, charging or writing anything.

    No answers in hand is refused: a pilot is paid work, asked for explicitly (its answers are cached and reused by
    the run, so they are paid once)."""
    run = Evaluation(config, progress=False)
    if not any(k in run.done for k in run.keys):
        raise UserError(
            f"estimate_only: no answers in {config.output_dir} to extrapolate from; run a pilot there first "
            f"(`astroreason budget estimate ... --output_dir {config.output_dir} --pilot_samples N`: charged once, "
            "cached, reused by the run)"
        )
    return run.estimate()


def result_summary(result: dict) -> dict:
    m = result.get("metrics") or {}
    interval = (m.get("interval") or {}).get("accuracy")
    summary = {
        "status": result.get("status", "complete"),
        "n": m.get("n", 0),
        "n_total": result.get("n_total", m.get("n")),
        "accuracy": m.get("accuracy"),
        "accuracy_interval": interval,
        "balanced_accuracy": m.get("balanced_accuracy"),
        "macro_f1": m.get("macro_f1"),
        "parse_failure_rate": m.get("parse_failure_rate"),
        "majority_rate": m.get("majority_rate"),
        "modality": result["config"]["modality"],
        "output_dir": result["config"]["output_dir"],
        "dollars_this_run": ((result.get("spend") or {}).get("this_run") or {}).get("dollars", 0.0),
        "integrity": (result.get("integrity") or {}).get("status"),
        "suspect_reasons": (result.get("integrity") or {}).get("suspect_reasons", []),
    }
    if result.get("zoom"):  # a zoom run's line says how often the model zoomed
        summary["zoom_rate"] = result["zoom"].get("zoom_rate")
    return summary


def print_result_line(result: dict, file=None) -> None:
    """The one line a script or an agent reads: `RESULT {json}`."""
    print("RESULT " + json.dumps(result_summary(result), sort_keys=True), file=file or sys.stdout, flush=True)

"""Spending caps that cannot be crossed: a price table, a persistent spend ledger shared by every run of a project,
a gate that reserves the worst case of a request before it is sent, and a TrainerCallback that charges training.

The ledger is one append-only JSONL file per project (default `runs/ledger/spend.jsonl`), written under an exclusive
file lock and fsync'd row by row, so many evaluation and training runs on one machine (or one shared filesystem) draw
on one global cap. Rows:

- `reserve`: the worst case of a request about to be sent (prompt-token bound + max_new_tokens, or one batch's
  expected GPU time). It counts as spent until settled: a process killed mid-request may already have been billed.
- `charge`: what the request actually cost (tokens reported by the server, GPU-seconds measured); it settles the
  reservation with the same id. A charge with no reservation is training time (the callback).
- `release`: the reservation was never spent (the request did not reach the server).

A request is sent only if the committed total (charges + open reservations) plus its worst case stays within every
cap, so with honest bounds the cap is never crossed; where a bound is an estimate (GPU time of a local batch, a
training step), the overshoot is at most that one unit.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import CheckFailed, UserError

DEFAULT_LEDGER = "runs/ledger/spend.jsonl"
DEFAULT_PRICES = "eval/prices.yaml"


class BudgetExhausted(CheckFailed):
    """A cap would be crossed by the next request: it was not sent."""


# --- prices -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Price:
    """What one unit of work costs, in dollars: tokens for an API, GPU-hours for a local backend."""

    key: str
    input_per_million: float = 0.0
    output_per_million: float = 0.0
    gpu_hour: float = 0.0
    source: str = ""

    def cost(self, *, prompt_tokens: int = 0, completion_tokens: int = 0, gpu_seconds: float = 0.0) -> float:
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6 + (
            gpu_seconds * self.gpu_hour / 3600.0
        )


def load_price_table(path: str | os.PathLike) -> dict:
    """`{"api": {model: {input_per_million, output_per_million}}, "gpu_hour": {device: dollars}}` from YAML."""
    import yaml

    path = Path(path)
    if not path.is_file() and str(path) == DEFAULT_PRICES:
        # Run from outside the checkout (a sweep task, the demo): the table shipped beside the package.
        shipped = Path(__file__).resolve().parents[2] / DEFAULT_PRICES
        path = shipped if shipped.is_file() else path
    if not path.is_file():
        raise UserError(f"prices: price table {path} not found")
    try:
        table = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"prices: {path} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(table, dict) or set(table) - {"api", "gpu_hour"}:
        raise UserError(f"prices: {path} must hold only `api:` and `gpu_hour:` sections")
    for name, entry in (table.get("api") or {}).items():
        if not isinstance(entry, dict) or set(entry) != {"input_per_million", "output_per_million"}:
            raise UserError(f"prices: {path}: api.{name} needs exactly input_per_million and output_per_million")
        _check_number(entry["input_per_million"], f"{path}: api.{name}.input_per_million")
        _check_number(entry["output_per_million"], f"{path}: api.{name}.output_per_million")
    for name, value in (table.get("gpu_hour") or {}).items():
        _check_number(value, f"{path}: gpu_hour.{name}")
    return table


def _check_number(value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise UserError(f"prices: {where} must be a non-negative number, got {value!r}")


def api_price(table_path, key: str, *, input_per_million=None, output_per_million=None) -> Price:
    """The token price of an API model; a model missing from the table is refused unless the user sets both prices."""
    if input_per_million is not None or output_per_million is not None:
        if input_per_million is None or output_per_million is None:
            raise UserError("price: set both price_input_per_million and price_output_per_million, or neither")
        _check_number(input_per_million, "price_input_per_million")
        _check_number(output_per_million, "price_output_per_million")
        return Price(key, float(input_per_million), float(output_per_million), source="user")
    table = load_price_table(table_path)
    entry = (table.get("api") or {}).get(key)
    if entry is None:
        raise CheckFailed(
            f"price: model {key!r} has no price in {table_path}; add it under `api:` or set "
            "--price_input_per_million and --price_output_per_million (refusing to spend at an unknown price)"
        )
    return Price(key, float(entry["input_per_million"]), float(entry["output_per_million"]), source=str(table_path))


def gpu_price(table_path, key: str, *, gpu_hour=None) -> Price:
    """The GPU-hour price of a device; a device missing from the table is refused unless the user sets one."""
    if gpu_hour is not None:
        _check_number(gpu_hour, "price_gpu_hour")
        return Price(key, gpu_hour=float(gpu_hour), source="user")
    table = load_price_table(table_path)
    value = (table.get("gpu_hour") or {}).get(key)
    if value is None:
        raise CheckFailed(
            f"price: device {key!r} has no GPU-hour price in {table_path}; add it under `gpu_hour:` or set "
            "--price_gpu_hour (refusing to spend at an unknown price)"
        )
    return Price(key, gpu_hour=float(value), source=str(table_path))


def local_device() -> tuple[str, int]:
    """(price-table key, number of devices) of this machine: the CUDA device name, or `cpu`."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0), torch.cuda.device_count()
    return "cpu", 1


# --- the ledger -------------------------------------------------------------------------------------------------


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
        d.update(committed_dollars=self.committed_dollars, committed_tokens=self.committed_tokens,
                 committed_requests=self.committed_requests)
        return d


class Ledger:
    """The project's spend ledger: append-only JSONL, one exclusive lock per read-modify-append, fsync'd rows.

    Totals are folded incrementally: each locked section reads only the bytes appended since the last one.
    """

    def __init__(self, path: str | os.PathLike = DEFAULT_LEDGER):
        self.path = Path(path)
        self._offset = 0
        self._open: dict[str, dict] = {}
        self._totals = Totals()
        self._by_run: dict[str, Totals] = {}
        self._thread_lock = threading.Lock()

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
                    raise UserError(f"ledger: {self.path} is not a spend ledger (a line near byte {self._offset} "
                                    "is not a JSON row)") from None
                continue  # a row torn by a killed writer was never fsync'd whole: it was never committed
            try:
                self._fold(row)
            except (KeyError, TypeError):
                raise UserError(f"ledger: {self.path} holds a malformed row near byte {self._offset}; fix or move it") from None
        self._offset += end

    def transaction(self, decide):
        """Under the exclusive lock: refresh the totals, call `decide(totals)` -> rows to append, append them."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, open(self.path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
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
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

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


def _row(kind: str, rid: str, run: str, **fields) -> dict:
    return {"kind": kind, "id": rid, "run": run, "time": round(time.time(), 3), **fields}


# --- caps and the gate ------------------------------------------------------------------------------------------


@dataclass
class Caps:
    """Caps on the project's total spend as the ledger records it (so every run shares them), and on this run's
    wall-clock time. None means no cap of that kind."""

    max_dollars: float | None = None
    max_tokens: int | None = None
    max_requests: int | None = None
    max_seconds: float | None = None


@dataclass
class Reservation:
    id: str
    dollars: float
    tokens: int
    requests: int


@dataclass
class Budget:
    """The gate every request passes: `reserve` its worst case (or be refused), then `charge` or `release` it."""

    ledger: Ledger
    price: Price
    caps: Caps
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    gpus: int = 1
    started: float = field(default_factory=time.monotonic)
    exhausted: str | None = None  # why the last reservation was refused

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def reserve(self, *, requests: int, prompt_tokens: int, completion_tokens: int, seconds: float = 0.0) -> Reservation:
        """Reserve the worst case of the next request (or batch) or raise `BudgetExhausted` without sending it."""
        dollars = self.price.cost(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                  gpu_seconds=seconds * self.gpus)
        tokens = prompt_tokens + completion_tokens
        rid = uuid.uuid4().hex

        def decide(t: Totals):
            c = self.caps
            why = None
            if c.max_seconds is not None and self.elapsed() + seconds > c.max_seconds:
                why = f"wall-clock cap {c.max_seconds:g} s reached ({self.elapsed():.1f} s elapsed)"
            elif c.max_requests is not None and t.committed_requests + requests > c.max_requests:
                why = f"request cap {c.max_requests} reached ({t.committed_requests} committed in {self.ledger.path})"
            elif c.max_tokens is not None and t.committed_tokens + tokens > c.max_tokens:
                why = (f"token cap {c.max_tokens} reached ({t.committed_tokens} committed in {self.ledger.path}, "
                       f"next request may use {tokens})")
            elif c.max_dollars is not None and t.committed_dollars + dollars > c.max_dollars:
                why = (f"dollar cap ${c.max_dollars:g} reached (${t.committed_dollars:.6g} committed in "
                       f"{self.ledger.path}, next request may cost ${dollars:.6g})")
            if why:
                self.exhausted = why
                return []
            return [_row("reserve", rid, self.run, model=self.price.key, dollars=dollars, tokens=tokens,
                         requests=requests)]

        if not self.ledger.transaction(decide):
            raise BudgetExhausted(f"budget: {self.exhausted}; the next request was not sent")
        return Reservation(rid, dollars, tokens, requests)

    def charge(self, reservation: Reservation | None, *, requests: int, prompt_tokens: int = 0,
               completion_tokens: int = 0, seconds: float = 0.0, attempts: int | None = None,
               dollars: float | None = None, **extra) -> float:
        """Record what was actually spent (settling `reservation`); returns the dollars charged."""
        gpu_seconds = seconds * self.gpus
        if dollars is None:
            dollars = self.price.cost(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                      gpu_seconds=gpu_seconds)
        rid = reservation.id if reservation else uuid.uuid4().hex
        self.ledger.append(_row(
            "charge", rid, self.run, model=self.price.key, dollars=dollars, requests=requests,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, gpu_seconds=round(gpu_seconds, 6),
            attempts=requests if attempts is None else attempts, **extra,
        ))
        return dollars

    def charge_worst_case(self, reservation: Reservation, *, attempts: int, reason: str) -> float:
        """A request whose fate is unknown (timed out, answer unreadable) may have been billed: charge its worst case."""
        self.ledger.append(_row("charge", reservation.id, self.run, model=self.price.key, dollars=reservation.dollars,
                                requests=reservation.requests, prompt_tokens=0, completion_tokens=0,
                                worst_case_tokens=reservation.tokens, gpu_seconds=0.0, attempts=attempts,
                                unknown=reason))
        return reservation.dollars

    def release(self, reservation: Reservation, *, attempts: int = 0, reason: str = "") -> None:
        self.ledger.append(_row("release", reservation.id, self.run, attempts=attempts, reason=reason))


# --- training ---------------------------------------------------------------------------------------------------


def _trainer_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class BudgetCallback(_trainer_callback_base()):
    """Charges training to the project's ledger by GPU-hours (wall-clock x GPUs x price) after every step, and
    saves a checkpoint and stops training before the next step would cross the dollar cap (overshoot: at most
    one step, predicted from the slowest step so far).

    Only the main process writes the ledger; the stop decision is broadcast so every rank stops together.

    Args:
        clock: Seconds since an arbitrary start (default `time.monotonic`): what a step is billed by. Anything that
            measures the job's paid time will do (a cluster's accounting, or a fixed time per step).
    """

    def __init__(self, price: Price, max_dollars: float | None, *, ledger: Ledger | str = DEFAULT_LEDGER,
                 gpus: int | None = None, run: str | None = None, clock=time.monotonic):
        self.ledger = ledger if isinstance(ledger, Ledger) else Ledger(ledger)
        self.price, self.max_dollars, self.gpus = price, max_dollars, gpus
        self.clock = clock
        self.run = run or f"train-{uuid.uuid4().hex[:8]}"
        self.stopped_reason: str | None = None
        self._last = None
        self._slowest_step = 0.0

    def _budget(self, args) -> Budget:
        return Budget(self.ledger, self.price, Caps(max_dollars=self.max_dollars), run=self.run,
                      gpus=self.gpus or max(1, getattr(args, "world_size", 1)))

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = self.clock()
        reason = None
        if state.is_world_process_zero and self.max_dollars is not None:
            committed = self.ledger.totals().committed_dollars
            if committed >= self.max_dollars:
                reason = f"dollar cap ${self.max_dollars:g} already reached (${committed:.6g} in {self.ledger.path})"
        if self._agree(reason is not None):
            # Trainer runs one step before it looks at should_training_stop: refuse to start instead.
            self.stopped_reason = reason or "dollar cap already reached"
            raise BudgetExhausted(f"budget: {self.stopped_reason}; training not started")
        return control

    def on_step_end(self, args, state, control, **kwargs):
        now = self.clock()
        seconds, self._last = now - self._last, now
        self._slowest_step = max(self._slowest_step, seconds)
        stop = False
        if state.is_world_process_zero:
            budget = self._budget(args)
            budget.charge(None, requests=0, seconds=seconds, step=state.global_step)
            if self.max_dollars is not None:
                next_step = self.price.cost(gpu_seconds=self._slowest_step * budget.gpus)
                committed = self.ledger.totals().committed_dollars
                if committed + next_step > self.max_dollars:
                    self.stopped_reason = (f"dollar cap ${self.max_dollars:g}: ${committed:.6g} spent in "
                                           f"{self.ledger.path}, the next step may cost ${next_step:.6g}")
                    stop = True
        if self._agree(stop):
            control.should_save = True
            control.should_training_stop = True
        return control

    @staticmethod
    def _agree(flag: bool) -> bool:
        """Rank 0's decision, on every rank."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            box = [flag]
            dist.broadcast_object_list(box, src=0)
            return bool(box[0])
        return flag


def budget_callback(max_dollars: float | None, *, prices: str = DEFAULT_PRICES, ledger: str = DEFAULT_LEDGER,
                    price_gpu_hour: float | None = None, price_key: str | None = None, gpus: int | None = None,
                    run: str | None = None) -> BudgetCallback:
    """The training recipes' callback: this machine's GPU-hour price (refused if unknown, unless set), the project's
    ledger and dollar cap. `trainer.add_callback(budget_callback(10.0))`."""
    device, count = local_device()
    price = gpu_price(prices, price_key or device, gpu_hour=price_gpu_hour)
    return BudgetCallback(price, max_dollars, ledger=ledger, gpus=gpus, run=run)

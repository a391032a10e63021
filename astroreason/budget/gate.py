"""Spending caps that cannot be crossed: the gate that reserves the worst case of a request before it is sent.

A request is sent only if the committed total (charges + open reservations, see `ledger`) plus its worst case stays
within every cap, so with honest bounds the cap is never crossed; where a bound is an estimate (GPU time of a local
batch, a training step), the overshoot is at most that one unit.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from ..errors import CheckFailed
from .ledger import Ledger, Totals, ledger_row
from .prices import Price


class BudgetExhausted(CheckFailed):
    """A cap would be crossed by the next request: it was not sent."""


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

    def reserve(
        self, *, requests: int, prompt_tokens: int, completion_tokens: int, seconds: float = 0.0
    ) -> Reservation:
        """Reserve the worst case of the next request (or batch) or raise `BudgetExhausted` without sending it."""
        dollars = self.price.cost(
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, gpu_seconds=seconds * self.gpus
        )
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
                why = (
                    f"token cap {c.max_tokens} reached ({t.committed_tokens} committed in {self.ledger.path}, "
                    f"next request may use {tokens})"
                )
            elif c.max_dollars is not None and t.committed_dollars + dollars > c.max_dollars:
                why = (
                    f"dollar cap ${c.max_dollars:g} reached (${t.committed_dollars:.6g} committed in "
                    f"{self.ledger.path}, next request may cost ${dollars:.6g})"
                )
            if why:
                self.exhausted = why
                return []
            return [
                ledger_row(
                    "reserve", rid, self.run, model=self.price.key, dollars=dollars, tokens=tokens, requests=requests
                )
            ]

        if not self.ledger.transaction(decide):
            raise BudgetExhausted(f"budget: {self.exhausted}; the next request was not sent")
        return Reservation(rid, dollars, tokens, requests)

    def charge(
        self,
        reservation: Reservation | None,
        *,
        requests: int,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        seconds: float = 0.0,
        attempts: int | None = None,
        dollars: float | None = None,
        **extra,
    ) -> float:
        """Record what was actually spent (settling `reservation`); returns the dollars charged."""
        gpu_seconds = seconds * self.gpus
        if dollars is None:
            dollars = self.price.cost(
                prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, gpu_seconds=gpu_seconds
            )
        rid = reservation.id if reservation else uuid.uuid4().hex
        self.ledger.append(
            ledger_row(
                "charge",
                rid,
                self.run,
                model=self.price.key,
                dollars=dollars,
                requests=requests,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                gpu_seconds=round(gpu_seconds, 6),
                attempts=requests if attempts is None else attempts,
                **extra,
            )
        )
        return dollars

    def charge_worst_case(self, reservation: Reservation, *, attempts: int, reason: str) -> float:
        """A request whose fate is unknown (timed out, answer unreadable) may have been billed: charge its worst case."""
        self.ledger.append(
            ledger_row(
                "charge",
                reservation.id,
                self.run,
                model=self.price.key,
                dollars=reservation.dollars,
                requests=reservation.requests,
                prompt_tokens=0,
                completion_tokens=0,
                worst_case_tokens=reservation.tokens,
                gpu_seconds=0.0,
                attempts=attempts,
                unknown=reason,
            )
        )
        return reservation.dollars

    def release(self, reservation: Reservation, *, attempts: int = 0, reason: str = "") -> None:
        self.ledger.append(ledger_row("release", reservation.id, self.run, attempts=attempts, reason=reason))

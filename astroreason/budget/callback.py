"""Training charged to the project's spend ledger: a `TrainerCallback` that bills GPU-hours after every step and
stops before the next step would cross the dollar cap, and estimates the whole run's cost from its first steps
(`pilot_steps`): a run whose estimate does not fit is stopped there, and `estimate_only` stops there in any case,
charging nothing."""

from __future__ import annotations

import json
import time
import uuid

from transformers import TrainerCallback

from .gate import Budget, BudgetExhausted, Caps
from .ledger import DEFAULT_LEDGER, Ledger
from .prices import DEFAULT_PRICES, Price, gpu_price, local_device


class BudgetCallback(TrainerCallback):
    """Charges training to the project's ledger by GPU-hours (wall-clock x GPUs x price) after every step, and
    saves a checkpoint and stops training before the next step would cross the dollar cap (overshoot: at most
    one step, predicted from the slowest step so far).

    Only the main process writes the ledger; the stop decision is broadcast so every rank stops together.

    Args:
        clock: Seconds since an arbitrary start (default `time.monotonic`): what a step is billed by. Anything that
            measures the job's paid time will do (a cluster's accounting, or a fixed time per step).
        pilot_steps: After this many steps, estimate the whole run (`max_steps` x the pilot's seconds per step, the
            first step left out as warm-up when there are more) and print one `ESTIMATE {json}` line; a run whose
            estimate does not fit under the dollar cap stops there (checkpoint saved). 0: no estimate.
        estimate_only: Stop after the pilot whatever the estimate, charging nothing and saving nothing (the pilot's
            steps are discarded).
    """

    def __init__(
        self,
        price: Price,
        max_dollars: float | None,
        *,
        ledger: Ledger | str = DEFAULT_LEDGER,
        gpus: int | None = None,
        run: str | None = None,
        clock=time.monotonic,
        pilot_steps: int = 0,
        estimate_only: bool = False,
    ):
        self.ledger = ledger if isinstance(ledger, Ledger) else Ledger(ledger)
        self.price, self.max_dollars, self.gpus = price, max_dollars, gpus
        self.clock = clock
        self.run = run or f"train-{uuid.uuid4().hex[:8]}"
        self.pilot_steps = max(pilot_steps, 1) if estimate_only else pilot_steps
        self.estimate_only = estimate_only
        self.estimate: dict | None = None
        self.stopped_reason: str | None = None
        self._last = None
        self._slowest_step = 0.0
        self._steps: list[float] = []

    def _budget(self, args) -> Budget:
        return Budget(
            self.ledger,
            self.price,
            Caps(max_dollars=self.max_dollars),
            run=self.run,
            gpus=self.gpus or max(1, getattr(args, "world_size", 1)),
        )

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
        self._steps.append(seconds)
        stop = False
        if state.is_world_process_zero:
            budget = self._budget(args)
            if not self.estimate_only:
                budget.charge(None, requests=0, seconds=seconds, step=state.global_step)
            if (
                self.pilot_steps
                and self.estimate is None
                and state.global_step >= min(self.pilot_steps, state.max_steps)
            ):
                self.estimate = self._estimate(budget, state)
                print("ESTIMATE " + json.dumps(self.estimate, sort_keys=True), flush=True)
                if not self.estimate_only:
                    self.ledger.note_estimate(
                        self.run, self.estimate["estimated_total_dollars"], step=state.global_step
                    )
                if not self.estimate["fits"]:
                    self.stopped_reason = (
                        f"the estimate for the whole run (${self.estimate['estimated_total_dollars']:.6g}, "
                        f"{state.max_steps} steps) does not fit under the dollar cap ${self.max_dollars:g} "
                        f"(${self.estimate['ledger_committed_dollars']:.6g} committed in {self.ledger.path})"
                    )
                stop = self.estimate_only or not self.estimate["fits"]
            if self.max_dollars is not None and not self.estimate_only and not stop:
                next_step = self.price.cost(gpu_seconds=self._slowest_step * budget.gpus)
                committed = self.ledger.totals().committed_dollars
                if committed + next_step > self.max_dollars:
                    self.stopped_reason = (
                        f"dollar cap ${self.max_dollars:g}: ${committed:.6g} spent in "
                        f"{self.ledger.path}, the next step may cost ${next_step:.6g}"
                    )
                    stop = True
        if self._agree(stop):
            control.should_save = not self.estimate_only  # a pilot that only estimates keeps nothing
            control.should_training_stop = True
        elif self.estimate_only:
            control.should_save = False
        return control

    def _estimate(self, budget: Budget, state) -> dict:
        """The whole run's cost from the pilot's steps (the first left out as warm-up when there are more)."""
        timed = self._steps[1:] if len(self._steps) > 1 else self._steps
        per_step = sum(timed) / len(timed)
        total = self.price.cost(gpu_seconds=per_step * state.max_steps * budget.gpus)
        spent = 0.0 if self.estimate_only else self.price.cost(gpu_seconds=sum(self._steps) * budget.gpus)
        committed = self.ledger.totals().committed_dollars
        # What is still to be charged: the whole run when nothing of the pilot was charged, else the rest.
        to_come = total if self.estimate_only else max(total - spent, 0.0)
        fits = self.max_dollars is None or committed + to_come <= self.max_dollars
        return {
            "pilot_steps": len(self._steps),
            "max_steps": state.max_steps,
            "seconds_per_step": per_step,
            "gpus": budget.gpus,
            "price_gpu_hour": self.price.gpu_hour,
            "estimated_total_dollars": total,
            "estimated_dollars": to_come,
            "ledger_committed_dollars": committed,
            "max_dollars": self.max_dollars,
            "cap_left_dollars": None if self.max_dollars is None else self.max_dollars - committed,
            "fits": fits,
            "over": [] if fits else ["dollars"],
        }

    @staticmethod
    def _agree(flag: bool) -> bool:
        """Rank 0's decision, on every rank."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            box = [flag]
            dist.broadcast_object_list(box, src=0)
            return bool(box[0])
        return flag


def budget_callback(
    max_dollars: float | None,
    *,
    prices: str = DEFAULT_PRICES,
    ledger: str = DEFAULT_LEDGER,
    price_gpu_hour: float | None = None,
    price_key: str | None = None,
    gpus: int | None = None,
    run: str | None = None,
    pilot_steps: int = 0,
    estimate_only: bool = False,
) -> BudgetCallback:
    """The training recipes' callback: this machine's GPU-hour price (refused if unknown, unless set), the project's
    ledger and dollar cap. `trainer.add_callback(budget_callback(10.0))`."""
    device, count = local_device()
    price = gpu_price(prices, price_key or device, gpu_hour=price_gpu_hour)
    return BudgetCallback(
        price, max_dollars, ledger=ledger, gpus=gpus, run=run, pilot_steps=pilot_steps, estimate_only=estimate_only
    )

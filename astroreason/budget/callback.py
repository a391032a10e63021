"""Training charged to the project's spend ledger: a `TrainerCallback` that bills GPU-hours after every step and
stops before the next step would cross the dollar cap."""

from __future__ import annotations

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
    ):
        self.ledger = ledger if isinstance(ledger, Ledger) else Ledger(ledger)
        self.price, self.max_dollars, self.gpus = price, max_dollars, gpus
        self.clock = clock
        self.run = run or f"train-{uuid.uuid4().hex[:8]}"
        self.stopped_reason: str | None = None
        self._last = None
        self._slowest_step = 0.0

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
        stop = False
        if state.is_world_process_zero:
            budget = self._budget(args)
            budget.charge(None, requests=0, seconds=seconds, step=state.global_step)
            if self.max_dollars is not None:
                next_step = self.price.cost(gpu_seconds=self._slowest_step * budget.gpus)
                committed = self.ledger.totals().committed_dollars
                if committed + next_step > self.max_dollars:
                    self.stopped_reason = (
                        f"dollar cap ${self.max_dollars:g}: ${committed:.6g} spent in "
                        f"{self.ledger.path}, the next step may cost ${next_step:.6g}"
                    )
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


def budget_callback(
    max_dollars: float | None,
    *,
    prices: str = DEFAULT_PRICES,
    ledger: str = DEFAULT_LEDGER,
    price_gpu_hour: float | None = None,
    price_key: str | None = None,
    gpus: int | None = None,
    run: str | None = None,
) -> BudgetCallback:
    """The training recipes' callback: this machine's GPU-hour price (refused if unknown, unless set), the project's
    ledger and dollar cap. `trainer.add_callback(budget_callback(10.0))`."""
    device, count = local_device()
    price = gpu_price(prices, price_key or device, gpu_hour=price_gpu_hour)
    return BudgetCallback(price, max_dollars, ledger=ledger, gpus=gpus, run=run)

"""The budget: price table (fail closed), the shared spend ledger under real concurrent processes, the gate, the
training callback on a real Trainer, and `astroreason budget status`."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from astroreason.budget import (
    Budget,
    BudgetExhausted,
    Caps,
    Ledger,
    Price,
    api_price,
    gpu_price,
    load_price_table,
)
from astroreason.budget.callback import BudgetCallback
from astroreason.cli import main
from astroreason.errors import CheckFailed, UserError

PRICES = """
api:
  model-a: {input_per_million: 2.0, output_per_million: 8.0}
gpu_hour:
  cpu: 3600.0
"""


@pytest.fixture
def prices(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text(PRICES)
    return path


def test_price_table_fails_closed(prices, tmp_path):
    price = api_price(prices, "model-a")
    assert price.cost(prompt_tokens=1_000_000, completion_tokens=500_000) == pytest.approx(2.0 + 4.0)
    assert gpu_price(prices, "cpu").cost(gpu_seconds=1.0) == pytest.approx(1.0)
    with pytest.raises(CheckFailed, match="has no price"):
        api_price(prices, "model-b")
    with pytest.raises(CheckFailed, match="no GPU-hour price"):
        gpu_price(prices, "NVIDIA B200")
    # The user may set a price for an unlisted model; half a price is refused.
    assert api_price(prices, "model-b", input_per_million=1, output_per_million=1).source == "user"
    with pytest.raises(UserError, match="both"):
        api_price(prices, "model-b", input_per_million=1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("api:\n  m: {input_per_million: -1, output_per_million: 1}\n")
    with pytest.raises(UserError, match="non-negative"):
        load_price_table(bad)
    bad.write_text("api: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_price_table(bad)


def test_gate_refuses_the_request_that_would_cross_the_cap(tmp_path):
    ledger = Ledger(tmp_path / "spend.jsonl")
    price = Price("m", input_per_million=1e6, output_per_million=1e6)  # one dollar per token
    budget = Budget(ledger, price, Caps(max_dollars=10))
    r = budget.reserve(requests=1, prompt_tokens=4, completion_tokens=2)  # worst case $6
    assert ledger.totals().committed_dollars == pytest.approx(6)
    with pytest.raises(BudgetExhausted, match="dollar cap"):
        budget.reserve(requests=1, prompt_tokens=4, completion_tokens=2)  # 6 + 6 > 10: not sent
    budget.charge(r, requests=1, prompt_tokens=3, completion_tokens=1)  # the real cost settles the reservation
    totals = ledger.totals()
    assert (totals.dollars, totals.open_reservations, totals.committed_dollars) == (
        pytest.approx(4),
        0,
        pytest.approx(4),
    )
    r2 = budget.reserve(requests=1, prompt_tokens=4, completion_tokens=2)  # 4 + 6 <= 10 now fits
    budget.release(r2)
    assert ledger.totals().committed_dollars == pytest.approx(4)
    # Token and request caps read the same ledger.
    with pytest.raises(BudgetExhausted, match="token cap"):
        Budget(ledger, price, Caps(max_tokens=5)).reserve(requests=1, prompt_tokens=1, completion_tokens=1)
    with pytest.raises(BudgetExhausted, match="request cap"):
        Budget(ledger, price, Caps(max_requests=1)).reserve(requests=1, prompt_tokens=0, completion_tokens=0)
    with pytest.raises(BudgetExhausted, match="wall-clock"):
        Budget(ledger, price, Caps(max_seconds=0)).reserve(requests=1, prompt_tokens=0, completion_tokens=0, seconds=1)


def test_a_fresh_ledger_object_reads_what_others_wrote_and_skips_a_torn_row(tmp_path):
    path = tmp_path / "spend.jsonl"
    budget = Budget(Ledger(path), Price("m", 1e6, 1e6), Caps())
    budget.charge(None, requests=1, prompt_tokens=2, completion_tokens=1)
    with open(path, "a") as f:
        f.write('{"kind": "charge", "dollars": 99')  # a writer killed mid-row
    assert Ledger(path).totals().dollars == pytest.approx(3)
    budget.charge(None, requests=1, prompt_tokens=1, completion_tokens=0)  # appends on a fresh line
    assert Ledger(path).totals().dollars == pytest.approx(4)
    assert Ledger(path).totals().requests == 2


def _reserve_many(path, n, out):
    budget = Budget(Ledger(path), Price("m", input_per_million=1e6), Caps(max_dollars=10))
    granted = 0
    for _ in range(n):
        try:
            budget.reserve(requests=1, prompt_tokens=1, completion_tokens=0)
            granted += 1
        except BudgetExhausted:
            pass
    out.put(granted)


def test_one_global_cap_across_concurrent_processes(tmp_path):
    """Four processes race for $1 reservations under a $10 cap on one ledger: exactly ten are granted."""
    path = tmp_path / "spend.jsonl"
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_reserve_many, args=(path, 8, out)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    granted = sum(out.get(timeout=10) for _ in procs)
    assert granted == 10
    totals = Ledger(path).totals()
    assert totals.committed_dollars == pytest.approx(10) and totals.open_reservations == 10
    assert all(json.loads(line) for line in path.read_text().splitlines())  # every row whole


class StepClock:
    """Each reading is one second after the last: every training step is billed exactly one second."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _tiny_trainer(tmp_path, name, callback):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    rows = [{"input_ids": torch.randint(0, 64, (16,)).tolist()} for _ in range(64)]
    for r in rows:
        r["labels"] = r["input_ids"]
    args = TrainingArguments(
        output_dir=str(tmp_path / name),
        max_steps=500,
        per_device_train_batch_size=4,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
    )
    return Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback])


def test_budget_callback_saves_and_stops_training_at_the_cap(tmp_path, prices):
    """A real Trainer on a tiny causal LM at $1 per second, each step billed one second: under a $4 cap it trains
    exactly four steps (the fifth would cross it), saves a checkpoint and stops; the ledger holds exactly $4."""
    ledger = Ledger(tmp_path / "spend.jsonl")
    price = gpu_price(prices, "cpu")
    callback = BudgetCallback(price, max_dollars=4.0, ledger=ledger, gpus=1, clock=StepClock())
    trainer = _tiny_trainer(tmp_path, "run", callback)
    trainer.train()
    assert trainer.state.global_step == 4
    assert callback.stopped_reason and "dollar cap" in callback.stopped_reason
    assert (tmp_path / "run" / "checkpoint-4").is_dir()
    charges = [json.loads(line) for line in ledger.path.read_text().splitlines()]
    assert [(c["kind"], c["step"], c["gpu_seconds"], c["dollars"]) for c in charges] == [
        ("charge", step, 1.0, pytest.approx(1.0)) for step in (1, 2, 3, 4)
    ]
    assert ledger.totals().dollars == pytest.approx(4.0)
    # A second training run on the same ledger refuses to start: the cap is global.
    again = BudgetCallback(price, max_dollars=4.0, ledger=ledger, gpus=1, clock=StepClock())
    trainer2 = _tiny_trainer(tmp_path, "run2", again)
    with pytest.raises(BudgetExhausted, match="already reached"):
        trainer2.train()
    assert trainer2.state.global_step == 0 and ledger.totals().dollars == pytest.approx(4.0)


def test_budget_callback_bills_measured_wall_time_by_default(tmp_path, prices):
    """Without a clock the callback bills each step's measured wall time: positive, and priced at the table's rate."""
    ledger = Ledger(tmp_path / "spend.jsonl")
    callback = BudgetCallback(gpu_price(prices, "cpu"), max_dollars=None, ledger=ledger, gpus=2)
    trainer = _tiny_trainer(tmp_path, "run", callback)
    trainer.args.max_steps = 3
    trainer.train()
    charges = [json.loads(line) for line in ledger.path.read_text().splitlines()]
    assert [c["step"] for c in charges] == [1, 2, 3] and callback.stopped_reason is None
    assert all(c["gpu_seconds"] > 0 and c["dollars"] == pytest.approx(c["gpu_seconds"], abs=1e-5) for c in charges)


def test_budget_status_command(tmp_path, capsys):
    path = tmp_path / "spend.jsonl"
    budget = Budget(Ledger(path), Price("m", 1e6, 0), Caps(), run="run-x")
    budget.charge(None, requests=3, prompt_tokens=2, completion_tokens=5)
    assert main(["budget", "status", "--ledger", str(path), "--max-dollars", "10"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("STATUS ")][-1]
    status = json.loads(line[len("STATUS ") :])
    assert status["dollars"] == pytest.approx(2) and status["requests"] == 3
    assert status["remaining_dollars"] == pytest.approx(8)

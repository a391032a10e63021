"""The project's spending caps: prices (`prices`), the spend ledger every run shares (`ledger`), the gate each
request passes (`gate`) and the training callback (`callback`, the only part that imports transformers, so it is not
re-exported here: `budget status` and the sweeps read the ledger without loading the model stack)."""

from .gate import Budget, BudgetExhausted, Caps, Reservation
from .ledger import DEFAULT_LEDGER, Ledger, Totals
from .prices import DEFAULT_PRICES, Price, api_price, gpu_price, load_price_table, local_device

__all__ = [
    "DEFAULT_LEDGER",
    "DEFAULT_PRICES",
    "Budget",
    "BudgetExhausted",
    "Caps",
    "Ledger",
    "Price",
    "Reservation",
    "Totals",
    "api_price",
    "gpu_price",
    "load_price_table",
    "local_device",
]

"""What work costs: the price table (`eval/prices.yaml`), the price of an API model or of a local device."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import CheckFailed, UserError

DEFAULT_PRICES = "eval/prices.yaml"


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
    import torch  # only here: the rest of the budget (and `budget status`) never loads torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0), torch.cuda.device_count()
    return "cpu", 1

"""A value comes back from the store exactly as written, or it is refused and nothing changes.

JSON would silently store NaN and infinity as ``null`` (a price turned into ``None`` after a
restart), and turn a ``Decimal``, a ``datetime``, a set or a dataclass into something that reads
back as another type; such values are refused with ``UnserializableValueError`` before anything is
written, and the value stored before stays.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
import math
from pathlib import Path

import pytest

from persistkit import PersistBase, PersistSignalAdapter, UnserializableValueError
from persistkit.models import SignalRow


@dataclasses.dataclass
class _Point:
    x: int


def signal_row(**changes: object) -> SignalRow:
    fields: dict[str, object] = {
        "id": "1",
        "symbol": "BTCUSDT",
        "strategy_name": "s",
        "position": "short",
        "price_open": 1.5,
        "price_take_profit": 1.0,
        "price_stop_loss": 2.0,
        "scheduled_at": 1,
        "pending_at": 2,
    }
    return SignalRow(**(fields | changes))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (float("nan"), "NaN or infinite"),
        (float("inf"), "NaN or infinite"),
        (-math.inf, "NaN or infinite"),
        ({"a": [1, {"b": float("nan")}]}, "NaN or infinite"),
        ([None, float("-inf")], "NaN or infinite"),
        (object(), "cannot be stored as JSON"),
        ({1: "non-string key"}, "cannot be stored as JSON"),
        (decimal.Decimal("1.1"), "cannot be stored as JSON"),
        (datetime.datetime(2026, 1, 1), "cannot be stored as JSON"),
        (_Point(1), "cannot be stored as JSON"),
        (2**64, "cannot be stored as JSON"),
        ({"s": {1, 2}}, "cannot be stored as JSON"),
    ],
)
async def test_a_value_that_would_not_read_back_the_same_is_refused_and_changes_nothing(
    value: object, reason: str, data_root: Path
) -> None:
    store = PersistBase("prices", base_dir=data_root)
    await store.write_value("p", {"price": 64_000.5})
    with pytest.raises(UnserializableValueError, match=reason):
        await store.write_value("p", value)
    assert await store.read_value("p") == {"price": 64_000.5}


async def test_plain_json_values_round_trip_exactly(data_root: Path) -> None:
    value = {"i": -(2**63), "f": 0.1, "s": "ü€", "n": None, "b": False, "l": [[], {}]}
    await PersistBase("values", base_dir=data_root).write_value("v", value)
    # A fresh store reads what is on disk, not a cache.
    assert await PersistBase("values", base_dir=data_root).read_value("v") == value


async def test_models_are_stored_with_backtest_kits_field_names(data_root: Path) -> None:
    row = signal_row()
    await PersistSignalAdapter.write_signal_data(row, "BTCUSDT", "s")
    on_disk = json.loads((data_root / "signal" / "BTCUSDT_s" / "BTCUSDT.json").read_bytes())
    assert on_disk["priceOpen"] == 1.5
    assert on_disk["strategyName"] == "s"
    assert SignalRow.model_validate(on_disk) == row


async def test_a_model_holding_nan_is_refused(data_root: Path) -> None:
    store = PersistBase("rows", base_dir=data_root)
    with pytest.raises(UnserializableValueError):
        await store.write_value("r", SignalRow.model_construct(id="1", price_open=float("nan")))
    assert [key async for key in store.keys()] == []


async def test_the_refusal_names_where_the_non_finite_float_is(data_root: Path) -> None:
    store = PersistBase("rows", base_dir=data_root)
    extra = SignalRow.model_construct(id="s", note=None, trail=[0.5, float("inf")])
    cases = {
        "value.a[1].b": {"a": [1, {"b": float("nan")}]},
        "value[1]": (None, float("-inf")),
        "value.rows[0].trail[1]": {"rows": [extra]},
    }
    for where, value in cases.items():
        with pytest.raises(UnserializableValueError) as refused:
            await store.write_value("r", value)
        assert str(refused.value).startswith(f"{where} is NaN or infinite")

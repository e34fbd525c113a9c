from __future__ import annotations

import dataclasses
import datetime
import decimal
import math

import pytest

from persistkit import codec
from persistkit.errors import UnserializableValueError
from persistkit.models import SignalRow


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        -math.inf,
        {"a": [1, {"b": float("nan")}]},
        [None, float("-inf")],
    ],
)
def test_non_finite_floats_are_refused_not_stored_as_null(value: object) -> None:
    with pytest.raises(UnserializableValueError, match="NaN or infinite"):
        codec.encode(value)


def test_the_refusal_names_where_the_non_finite_float_is() -> None:
    extra = SignalRow.model_construct(id="s", note=None, trail=[0.5, float("inf")])
    cases = {
        "value.a[1].b": {"a": [1, {"b": float("nan")}]},
        "value[1]": (None, float("-inf")),
        "value.rows[0].trail[1]": {"rows": [extra]},
    }
    for where, value in cases.items():
        with pytest.raises(UnserializableValueError) as refused:
            codec.encode(value)
        assert str(refused.value).startswith(f"{where} is NaN or infinite")


@dataclasses.dataclass
class _Point:
    x: int


@pytest.mark.parametrize(
    "value",
    [
        object(),
        {1: "non-string key"},
        decimal.Decimal("1.1"),
        datetime.datetime(2026, 1, 1),
        _Point(1),
        2**64,
        {"s": {1, 2}},
    ],
)
def test_values_that_would_not_read_back_the_same_are_refused(value: object) -> None:
    with pytest.raises(UnserializableValueError):
        codec.encode(value)


def test_plain_json_values_round_trip_exactly() -> None:
    value = {"i": -(2**63), "f": 0.1, "s": "ü€", "n": None, "b": False, "l": [[], {}]}
    assert codec.decode(codec.encode(value)) == value


def test_models_are_encoded_with_the_seeds_field_names() -> None:
    row = SignalRow(
        id="1",
        symbol="BTCUSDT",
        strategy_name="s",
        position="short",
        price_open=1.5,
        price_take_profit=1.0,
        price_stop_loss=2.0,
        scheduled_at=1,
        pending_at=2,
    )
    decoded = codec.decode(codec.encode(row))
    assert decoded["priceOpen"] == 1.5
    assert decoded["strategyName"] == "s"
    assert SignalRow.model_validate(decoded) == row


def test_a_model_holding_nan_is_refused() -> None:
    row = SignalRow.model_construct(id="1", price_open=float("nan"))
    with pytest.raises(UnserializableValueError):
        codec.encode(row)

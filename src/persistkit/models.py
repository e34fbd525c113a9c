"""Typed state of a trading bot: what the domain adapters store.

Field names are Python's (``price_open``); on disk they are backtest-kit's
camelCase (``priceOpen``), so files written by backtest-kit read here and the
other way round. Either spelling is accepted as input. Extra fields a bot adds to a
signal are kept and round-trip unchanged. NaN and infinity are refused:
a price that cannot be stored exactly must not be stored at all.

What backtest-kit 19.x writes reads here where it is not wrong: an empty
``note`` (every signal created without one), ``exchangeName``, ``frameName``
(empty in live mode) and its other fields (kept as extras), and a ``null``
``minuteEstimatedTime``, its "no limit" (JSON has no infinity). A ``null``
where a price is required (how ``JSON.stringify`` writes NaN) is still refused.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)
from pydantic.alias_generators import to_camel

__all__ = [
    "FINAL_INTENT_STATUSES",
    "PARTIAL_LEVELS",
    "UNRESOLVED_INTENT_STATUSES",
    "IntentStatus",
    "OrderIntent",
    "OrderSide",
    "PartialData",
    "PartialLevel",
    "Position",
    "RiskActivePosition",
    "ScheduledSignalRow",
    "SignalRow",
]

Position = Literal["long", "short"]

PARTIAL_LEVELS = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
PartialLevel = Literal[10, 20, 30, 40, 50, 60, 70, 80, 90, 100]

Price = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _not_a_bool(value: object) -> object:
    # A bool is an int to pydantic: `true` would be 1 ms after the epoch.
    if isinstance(value, bool):
        raise ValueError("a time in milliseconds since the epoch, not a boolean")
    return value


Timestamp = Annotated[
    int, BeforeValidator(_not_a_bool), Field(ge=0, description="milliseconds since the epoch")
]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        allow_inf_nan=False,
        validate_assignment=True,
        str_min_length=1,
        # A row built with model_copy(update=...) or model_construct skipped
        # validation; it is checked again before it is stored.
        revalidate_instances="always",
    )


class SignalRow(_Model):
    """The open signal (position) of one symbol under one strategy."""

    model_config = ConfigDict(extra="allow")

    id: str
    symbol: str
    strategy_name: str
    position: Position
    price_open: Price
    price_take_profit: Price
    price_stop_loss: Price
    scheduled_at: Timestamp
    pending_at: Timestamp
    exchange_name: str | None = None
    note: Annotated[str, Field(min_length=0)] | None = None
    """Free text; empty is what backtest-kit writes for a signal created without one."""
    minute_estimated_time: Annotated[int, Field(ge=0)] | None = None
    """Minutes the signal may stay open; ``None``: no limit (backtest-kit's ``Infinity``)."""


class ScheduledSignalRow(SignalRow):
    """A limit entry waiting for its price: ``price_open`` is the limit."""


class RiskActivePosition(_Model):
    """One position counted against a risk profile's portfolio limits."""

    model_config = ConfigDict(extra="allow")

    symbol: str
    strategy_name: str
    signal_id: str
    position: Position
    price_open: Price
    quantity: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    added_at: Timestamp


def _distinct_sorted(levels: list[int]) -> list[int]:
    if len(set(levels)) != len(levels):
        raise ValueError(f"levels must not repeat: {levels}")
    return sorted(levels)


Levels = Annotated[list[PartialLevel], AfterValidator(_distinct_sorted)]


class PartialData(_Model):
    """Profit and loss milestones (percent of the way to TP/SL) already reported."""

    profit_levels: Levels = Field(default_factory=list)
    loss_levels: Levels = Field(default_factory=list)


OrderSide = Literal["buy", "sell"]
"""An order's side (not a position's: closing a long sells)."""

IntentStatus = Literal[
    "pending", "sent", "acked", "filled", "partially_filled", "cancelled", "rejected", "unknown"
]
"""Where an order stands: written ``pending`` before it is sent, then what the exchange said."""

UNRESOLVED_INTENT_STATUSES: Final[frozenset[str]] = frozenset({"pending", "sent", "unknown"})
"""Outcomes only the exchange knows: after a crash, these are asked of it
(`LiveSession.reconcile`)."""

FINAL_INTENT_STATUSES: Final[frozenset[str]] = frozenset({"filled", "cancelled", "rejected"})
"""Outcomes that never change again: kept for a bounded time or count, then dropped."""

ClientOrderId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/-]{1,64}$")]
"""What exchanges accept as a client order id (:func:`persistkit.new_client_order_id`
makes ids of at most 36 characters of ``[A-Za-z0-9_-]``, which all of them accept)."""

Quantity = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class OrderIntent(_Model):
    """An order the bot decided to place, written durably before it is sent.

    One per client order id: the id the exchange deduplicates by, so that the
    order a crash left in doubt can be asked about (and never sent twice). A
    bot may add fields of its own (order type, time in force): they round-trip.
    """

    model_config = ConfigDict(extra="allow")

    client_order_id: ClientOrderId
    symbol: str
    strategy_name: str
    side: OrderSide
    quantity: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    price: Price | None
    """The limit price; ``None`` for a market order."""
    created_at: Timestamp
    status: IntentStatus
    exchange_order_id: str | None = None
    """The exchange's own id, once it answered."""
    filled_quantity: Quantity = 0.0
    updated_at: Timestamp | None = None
    """When it was last written: :meth:`PersistIntentAdapter.write_intent
    <persistkit._domains.intent.PersistIntentUtils.write_intent>` stamps it with the tick's time."""
    reason: str | None = None
    """Why it ended as it did (a rejection's message, a reconcile that found no order)."""

    @property
    def unresolved(self) -> bool:
        """Only the exchange knows its outcome (``pending``, ``sent`` or ``unknown``)."""
        return self.status in UNRESOLVED_INTENT_STATUSES

    @property
    def final(self) -> bool:
        """Its outcome never changes again (``filled``, ``cancelled`` or ``rejected``)."""
        return self.status in FINAL_INTENT_STATUSES

"""Signal and schedule: one row per (symbol, strategy), or none."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar

from persistkit._domains._base import DomainAdapter
from persistkit._domains.events import (
    SCHEDULE,
    forget_signal,
    remember_signal,
    row_needs_a_record,
    write_with_events,
)
from persistkit._names import join_pair
from persistkit._store import PersistBase
from persistkit._transaction import active_transaction, transaction
from persistkit.errors import EntityNotFoundError, RowMismatchError
from persistkit.models import ScheduledSignalRow, SignalRow

__all__ = ["PersistScheduleUtils", "PersistSignalUtils"]

RowT = TypeVar("RowT", bound=SignalRow)


class _RowAdapter(DomainAdapter, Generic[RowT]):
    """``{domain}/{symbol}_{strategy}/{symbol}.json`` holds one row; absent means none."""

    model: ClassVar[type[SignalRow]]

    async def _read(self, symbol: str, strategy_name: str) -> RowT | None:
        store = await self._store(join_pair(symbol, strategy_name))
        try:
            value = await store.read_value(symbol)
        except EntityNotFoundError:
            return None
        if value is None:  # backtest-kit writes null to clear
            return None
        row: Any = value if isinstance(value, self.model) else self.model.model_validate(value)
        return row  # type: ignore[no-any-return]

    async def _write(self, row: RowT | None, symbol: str, strategy_name: str) -> None:
        if row is not None:
            self._check_row(row, symbol, strategy_name)
        pair = join_pair(symbol, strategy_name)
        store = await self._store(pair)
        if active_transaction.get() is None and row_needs_a_record(store):
            async with transaction(store.backend):  # the events are derived from records
                await self._write(row, symbol, strategy_name)
            return
        if row is None:
            await store.remove_value(symbol)
            forget_signal(store, symbol)
        else:
            await store.write_value(symbol, row)
            if active_transaction.get() is not None:
                # A tick's schedule events read this row as it commits, and whether
                # the signal had a scheduled row's id on the way (a fill closed at once).
                remember_signal(store, symbol, row)

    def _check_row(self, row: object, symbol: str, strategy_name: str) -> None:
        """Refuse, before any I/O, a row written under names that are not its own."""
        if isinstance(row, Mapping):  # a raw row, as backtest-kit passes: camelCase or not
            own = (row.get("symbol"), row.get("strategyName", row.get("strategy_name")))
        else:
            own = (getattr(row, "symbol", None), getattr(row, "strategy_name", None))
        if own != (symbol, strategy_name):
            raise RowMismatchError(
                f"{self.domain} row of ({own[0]!r}, {own[1]!r}) written as ({symbol!r}, "
                f"{strategy_name!r}): a read of its own names would never find it (are the "
                "arguments swapped?); refused before any I/O"
            )


class PersistSignalUtils(_RowAdapter[SignalRow]):
    """The open signal of a symbol under a strategy."""

    domain = "signal"
    model = SignalRow
    schema = SignalRow | None

    async def read_signal_data(self, symbol: str, strategy_name: str) -> SignalRow | None:
        """The open signal, or ``None``."""
        return await self._read(symbol, strategy_name)

    async def write_signal_data(
        self, row: SignalRow | None, symbol: str, strategy_name: str
    ) -> None:
        """Store the open signal durably; ``None`` clears it."""
        await self._write(row, symbol, strategy_name)

    def use_persist_signal_adapter(self, store_class: type[PersistBase[Any]]) -> None:
        """Keep signals in a custom :class:`PersistBase` subclass."""
        self._use(store_class)


class PersistScheduleUtils(_RowAdapter[ScheduledSignalRow]):
    """The limit entry of a symbol under a strategy, waiting for its price."""

    domain = "schedule"
    model = ScheduledSignalRow
    schema = ScheduledSignalRow | None

    async def read_schedule_data(
        self, symbol: str, strategy_name: str
    ) -> ScheduledSignalRow | None:
        """The scheduled entry, or ``None``."""
        return await self._read(symbol, strategy_name)

    async def write_schedule_data(
        self, row: ScheduledSignalRow | None, symbol: str, strategy_name: str
    ) -> None:
        """Store the scheduled entry durably; ``None`` clears it (filled or cancelled).

        The change is recorded for ``persistkit.Schedule`` in the same commit
        (see :class:`~persistkit.ScheduleStatistics`): clearing the row counts as
        "opened" when the pair's signal has its id, so outside a tick write the
        signal first.
        """
        if row is not None:
            self._check_row(row, symbol, strategy_name)
        pair = join_pair(symbol, strategy_name)
        store = await self._store(pair)
        given = row if isinstance(row, ScheduledSignalRow) else None
        await write_with_events(store, symbol, row, SCHEDULE, symbol, pair, given)

    def use_persist_schedule_adapter(self, store_class: type[PersistBase[Any]]) -> None:
        """Keep scheduled entries in a custom :class:`PersistBase` subclass."""
        self._use(store_class)

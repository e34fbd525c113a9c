"""Statistics events, derived from the schedule and partial rows a commit changes.

The bot makes no extra call: when a commit changes a pair's scheduled row or
its partial levels, a hook of that commit (:meth:`Transaction.before_commit
<persistkit.transaction.Transaction.before_commit>`) compares the new value with
the committed one and appends what happened to the pair's event log, in the
same commit. A ``kill -9`` therefore never separates a state change from its
events: after a restart the statistics are exactly those of the acknowledged
ticks.

The rules:

- A scheduled row whose id was not there before: ``scheduled``.
- A scheduled row cleared or replaced by another id: ``opened`` when the pair's
  signal, as this commit leaves it (staged in the same tick, or already
  committed), has the old row's id; otherwise ``cancelled``. A write outside a
  tick is a commit of its own, so there the signal must be written before the
  schedule is cleared, or the fill counts as a cancellation.
- A row rewritten with the same id (a moved limit, say) is no event.
- Each level new in a signal's partial levels: one ``profit`` or ``loss``
  event. Levels dropped, or a signal's entry removed, are no event.

An event's time is the configured clock's (``configure(clock=...)``: a
backtest's market time), else the time of the tick that commits it
(:func:`persistkit.clock.now_ms`: the tick's time, recorded with it, so that a
replay records the same events), else, outside a live session's tick, the
wall-clock time of the commit. Each log keeps
the newest ``event_limit`` events (``configure(event_limit=...)``, 250 by
default) in ``stats/schedule/{symbol}_{strategy}/`` and
``stats/partial/{symbol}_{strategy}/`` beside the state they describe. The
``head`` holds the newest events (fewer than :data:`SEGMENT_EVENTS`) and lists
the sealed segments ``0``, ``1``, ...: each filled once, written once, and
dropped whole, oldest first, once the newer events reach the bound (a reader
returns the newest ``event_limit``). So an event's commit rewrites one small
value, always the same one, as the row it comes from. Files in live mode,
process memory in backtest mode. A pair has one writer (its live session); the
hooks read what is committed under this process's key locks.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import orjson
from pydantic import Field

from persistkit.backends.base import Backend, Versioned
from persistkit.clock import now_ms
from persistkit.config import Settings, active_settings
from persistkit.domains._base import DomainAdapter
from persistkit.errors import TransientBackendError
from persistkit.models import PartialData, PartialLevel, Position, ScheduledSignalRow, SignalRow
from persistkit.models import _Model as EventModel
from persistkit.retry import DEFAULT_RETRY
from persistkit.store import PersistBase
from persistkit.transaction import Transaction, transaction, transaction_for

__all__ = [
    "HEAD",
    "PARTIAL_LOG",
    "SCHEDULE_LOG",
    "SEGMENT_EVENTS",
    "Changes",
    "LogHead",
    "PartialEvent",
    "PartialEventLog",
    "ScheduleEvent",
    "ScheduleEventLog",
    "partial_changes",
    "partial_events",
    "remember_staged",
    "schedule_changes",
    "schedule_events",
    "surviving_segments",
    "write_with_events",
]

logger = logging.getLogger(__name__)

HEAD = "head"
"""The id of a pair's log head in its ``stats/...`` store; sealed segments have numbers."""
SEGMENT_EVENTS = 10
"""Events per sealed segment; the head holds fewer, the newest."""

Timestamp = Annotated[int, Field(ge=0, description="milliseconds since the epoch")]
_MS_PER_MINUTE = 60_000


class ScheduleEvent(EventModel):
    """A scheduled (limit) entry placed, filled (``opened``) or dropped (``cancelled``)."""

    timestamp: Timestamp
    action: Literal["scheduled", "opened", "cancelled"]
    symbol: str
    strategy_name: str
    signal_id: str
    position: Position
    price_open: float
    duration_min: float | None = None
    """Minutes waited: ``scheduled_at`` to the signal's ``pending_at`` when opened, to
    the event's time when cancelled; ``None`` for ``scheduled``."""


class PartialEvent(EventModel):
    """A profit or loss milestone (percent of the way to TP or SL) reached by a signal."""

    timestamp: Timestamp
    action: Literal["profit", "loss"]
    symbol: str
    strategy_name: str
    signal_id: str
    level: PartialLevel
    position: Position | None = None
    """The signal's side, when its row was known to the commit."""
    price: float | None = None
    """Where the level lies (entry + level% of the way to TP or SL), when the signal's
    row was known to the commit; not the market price of the moment."""


class LogHead(EventModel):
    """A pair's event log: its sealed segments, oldest first, as ``[number, events in it]``,
    and the newest events, not yet sealed."""

    segments: list[tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]]
    events: list[Any]


class ScheduleLogHead(LogHead):
    events: list[ScheduleEvent]


class PartialLogHead(LogHead):
    events: list[PartialEvent]


class ScheduleEventLog(DomainAdapter):
    """The newest schedule events of each pair: a head and its sealed segments."""

    domain = "stats/schedule"
    schema = ScheduleLogHead | list[ScheduleEvent] | None


class PartialEventLog(DomainAdapter):
    """The newest partial events of each pair: a head and its sealed segments."""

    domain = "stats/partial"
    schema = PartialLogHead | list[PartialEvent] | None


SCHEDULE_LOG = ScheduleEventLog()
PARTIAL_LOG = PartialEventLog()


# -- what a change means --------------------------------------------------------------


def _minutes(start_ms: int, end_ms: int) -> float:
    return (end_ms - start_ms) / _MS_PER_MINUTE


def schedule_events(
    old: ScheduledSignalRow | None,
    new: ScheduledSignalRow | None,
    signal: SignalRow | None,
    now: int,
) -> list[ScheduleEvent]:
    """The events of a pair's scheduled row going from ``old`` to ``new``.

    ``signal`` is the pair's signal as the same commit leaves it.
    """
    events: list[ScheduleEvent] = []
    if old is not None and (new is None or new.id != old.id):
        opened = signal is not None and signal.id == old.id
        events.append(
            ScheduleEvent.model_construct(
                timestamp=now,
                action="opened" if opened else "cancelled",
                symbol=old.symbol,
                strategy_name=old.strategy_name,
                signal_id=old.id,
                position=old.position,
                price_open=old.price_open,
                duration_min=_minutes(
                    old.scheduled_at, signal.pending_at if opened and signal else now
                ),
            )
        )
    if new is not None and (old is None or new.id != old.id):
        events.append(
            ScheduleEvent.model_construct(
                timestamp=now,
                action="scheduled",
                symbol=new.symbol,
                strategy_name=new.strategy_name,
                signal_id=new.id,
                position=new.position,
                price_open=new.price_open,
            )
        )
    return events


def _level_price(signal: SignalRow, level: int, target: float) -> float:
    return round(signal.price_open + (target - signal.price_open) * level / 100, 10)


_Side = tuple[
    Literal["profit", "loss"], Sequence[PartialLevel], Sequence[PartialLevel], float | None
]
"""An action, the levels reached now and before, and the price the levels lead to."""


def partial_events(
    old: Mapping[str, PartialData],
    new: Mapping[str, PartialData],
    signal: SignalRow | None,
    symbol: str,
    strategy: str,
    now: int,
) -> list[PartialEvent]:
    """One event per level in ``new`` that ``old`` did not have; ``signal`` gives prices."""
    events: list[PartialEvent] = []
    for signal_id, levels in new.items():
        before = old.get(signal_id)
        known = signal if signal is not None and signal.id == signal_id else None
        sides: tuple[_Side, _Side] = (
            (
                "profit",
                levels.profit_levels,
                before.profit_levels if before else [],
                known.price_take_profit if known else None,
            ),
            (
                "loss",
                levels.loss_levels,
                before.loss_levels if before else [],
                known.price_stop_loss if known else None,
            ),
        )
        for action, reached, had, target in sides:
            for level in reached:
                if level in had:
                    continue
                events.append(
                    PartialEvent.model_construct(
                        timestamp=now,
                        action=action,
                        symbol=symbol,
                        strategy_name=strategy,
                        signal_id=signal_id,
                        level=level,
                        position=known.position if known else None,
                        price=_level_price(known, level, target)
                        if known and target is not None
                        else None,
                    )
                )
    return events


# -- recording them in the commit --------------------------------------------------------


def _now(settings: Settings) -> int:
    clock = settings.clock
    if clock is None:
        return now_ms()  # the tick's time inside a tick, so that its replay records the same
    now = clock()
    if isinstance(now, bool) or not isinstance(now, int) or now < 0:
        raise ValueError(
            f"the configured clock returned {now!r}: it must return whole milliseconds "
            "since the epoch (>= 0); nothing was committed"
        )
    return now


async def _committed(backend: Backend, key: str) -> Versioned | None:
    try:
        return await backend.get(key)
    except TransientBackendError as exc:
        return await DEFAULT_RETRY.call(lambda: backend.get(key), exc)


async def _as_committed(txn: Transaction, backend: Backend, key: str) -> bytes | None:
    """``key`` as ``txn`` leaves it: staged there, else committed."""
    if backend is txn.backend:
        staged, data = txn.lookup(key)
        if staged:
            return data
    stored = await _committed(backend, key)
    return None if stored is None else stored.data


# What the hooks parsed last, by key: a row, a log head or segment is parsed
# once, then recognised by its bytes (compared with what is stored, so another
# writer's change is never missed).
_parsed: weakref.WeakKeyDictionary[Backend, dict[str, tuple[bytes, Any]]] = (
    weakref.WeakKeyDictionary()
)
_PARSED_KEPT = 4096


def _parse(store: PersistBase[Any], backend: Backend, key: str, data: bytes) -> Any:
    cache = _parsed.get(backend)
    if cache is None:
        cache = _parsed[backend] = {}
    found = cache.get(key)
    if found is not None and found[0] == data:
        return found[1]
    value = store._parse(key, data)
    _remember(cache, key, data, value)
    return value


def _remember(cache: dict[str, tuple[bytes, Any]], key: str, data: bytes, value: Any) -> None:
    if len(cache) >= _PARSED_KEPT:
        cache.clear()
    cache[key] = (data, value)


async def _read(txn: Transaction, store: PersistBase[Any], key: str) -> Any:
    """``key`` parsed as ``txn`` leaves it (staged there, else committed); ``None``: absent."""
    backend = store.backend
    data = await _as_committed(txn, backend, key)
    return None if data is None else _parse(store, backend, key, data)


async def _read_segment(txn: Transaction, log: PersistBase[Any], key: str) -> list[Any]:
    """A segment's events in their JSON form (what an append extends); ``[]``: absent."""
    backend = log.backend
    data = await _as_committed(txn, backend, key)
    if data is None:
        return []
    cache = _parsed.setdefault(backend, {})
    found = cache.get(key)
    if found is not None and found[0] == data:
        return list(found[1])
    events = [event.model_dump(mode="json") for event in log._parse(key, data) or []]
    _remember(cache, key, data, events)
    return list(events)


async def surviving_segments(
    log: PersistBase[Any], read: Callable[[str], Awaitable[list[Any]]]
) -> list[list[int]]:
    """``[number, events]`` of the segments stored without a head, oldest first.

    A new pair has none. A head quarantined at a start (a torn file, say) left
    its segments: they are listed again, so that none is overwritten and their
    events still count.
    """
    found = []
    async for entity_id in log.keys():
        if entity_id.isdigit():
            found.append([int(entity_id), len(await read(log._key(int(entity_id))))])
    return sorted(found)


async def _append(txn: Transaction, log: PersistBase[Any], events: list[Any], limit: int) -> None:
    """Add ``events`` to the head, seal full segments, drop whole old ones past ``limit``."""
    backend = txn.backend
    cache = _parsed.setdefault(backend, {})
    head_key = log._key(HEAD)
    head_data = await _as_committed(txn, backend, head_key)
    found = cache.get(head_key)
    current: list[Any]
    if head_data is None:
        segments = await surviving_segments(log, lambda key: _read_segment(txn, log, key))
        current = []
    elif found is not None and found[0] == head_data:
        listed, current = found[1]  # the head this process wrote last, still the stored one
        segments = [list(segment) for segment in listed]
    else:
        head = log._parse(head_key, head_data)
        segments = [list(segment) for segment in head.segments]
        current = [event.model_dump(mode="json") for event in head.events]
    current = [*current, *(event.model_dump(mode="json") for event in events)]
    # Every event was validated (no NaN, no infinity) when it was made or read, so
    # orjson's output is exact; the codec's walk for non-finite floats, set off by
    # each event's nulls, would only cost time.
    while len(current) >= SEGMENT_EVENTS:
        number = segments[-1][0] + 1 if segments else 0
        sealed, current = current[:SEGMENT_EVENTS], current[SEGMENT_EVENTS:]
        txn.include(log._key(number), orjson.dumps(sealed))
        segments.append([number, len(sealed)])
    total = sum(count for _, count in segments) + len(current)
    while segments and total - segments[0][1] >= limit:
        dropped, count = segments.pop(0)
        total -= count
        txn.include(log._key(dropped), None)
    data = orjson.dumps({"segments": segments, "events": current})
    txn.include(head_key, data)
    _remember(cache, head_key, data, (segments, current))


Changes = Callable[[Transaction], Awaitable[list[Any]]]
"""Reads a pair's old and new values in a committing transaction; returns its events."""

ChangesFor = Callable[[Settings], Awaitable[Changes]]
"""Builds the :data:`Changes` of one write under the settings it runs with."""


async def _register(
    txn: Transaction,
    row_key: str,
    log_adapter: DomainAdapter,
    pair: str,
    changes: Changes,
    settings: Settings,
) -> None:
    log = await log_adapter._store(pair)
    if log.backend is not txn.backend:
        logger.warning(
            "persistkit: %s is on %s, not on the backend of the commit (%s): "
            "no statistics events recorded for it",
            row_key,
            txn.backend.url,
            log.backend.url,
        )
        return

    async def record(committing: Transaction) -> None:
        events = await changes(committing)
        if events:
            await _append(committing, log, events, settings.event_limit)

    # Every change of the log rewrites its head: locking the head orders them.
    txn.before_commit(("stats", row_key), (log._key(HEAD),), record)


async def write_with_events(
    store: PersistBase[Any],
    entity_id: str,
    value: Any,
    log_adapter: DomainAdapter,
    pair: str,
    changes_for: ChangesFor,
    parsed: Any = None,
) -> None:
    """Write (``None``: remove) ``entity_id`` and record its events in the same commit.

    Inside a transaction on the store's backend (a tick) the events join it;
    outside one, the write and its events are a commit of their own. ``parsed``
    is ``value`` in the form a read gives (a model), when the caller has it:
    the commit then does not parse the staged bytes again.
    """
    settings = active_settings()
    backend = store.backend
    row_key = store._key(entity_id)
    if settings.event_limit == 0 or type(backend).commit is Backend.commit:
        # Recording is off, or the backend cannot commit two keys atomically.
        await _write(store, entity_id, value)
        return
    changes = await changes_for(settings)
    active = transaction_for(backend)
    if active is not None:
        await _write(store, entity_id, value)
        remember_staged(active, store, row_key, parsed)
        await _register(active, row_key, log_adapter, pair, changes, settings)
        return
    async with transaction(backend) as own:
        await _write(store, entity_id, value)
        remember_staged(own, store, row_key, parsed)
        await _register(own, row_key, log_adapter, pair, changes, settings)


def remember_staged(
    txn: Transaction | None, store: PersistBase[Any], key: str, parsed: Any
) -> None:
    """Note that the bytes ``txn`` staged for ``key`` read as ``parsed`` (spares a parse)."""
    if txn is None or parsed is None:
        return
    staged, data = txn.lookup(key)
    if staged and data is not None:
        _remember(_parsed.setdefault(store.backend, {}), key, data, parsed)


async def _write(store: PersistBase[Any], entity_id: str, value: Any) -> None:
    if value is None:
        await store.remove_value(entity_id)
    else:
        await store.write_value(entity_id, value)


def schedule_changes(
    schedule: PersistBase[Any], signal: PersistBase[Any], symbol: str, settings: Settings
) -> Changes:
    """The events of ``symbol``'s scheduled row in the committing transaction."""
    row_key = schedule._key(symbol)
    signal_key = signal._key(symbol)

    async def changes(txn: Transaction) -> list[Any]:
        if row_key not in txn.writes:
            return []
        new_data = txn.writes[row_key]
        old = await _committed(txn.backend, row_key)
        old_data = None if old is None else old.data
        if old_data == new_data:
            return []
        backend = txn.backend
        old_row = None if old_data is None else _parse(schedule, backend, row_key, old_data)
        new_row = None if new_data is None else _parse(schedule, backend, row_key, new_data)
        if old_row is None and new_row is None:
            return []
        resolved = old_row is not None and (new_row is None or new_row.id != old_row.id)
        # Only a resolved entry asks whether the signal took it.
        signal_row = await _read(txn, signal, signal_key) if resolved else None
        return schedule_events(old_row, new_row, signal_row, _now(settings))

    return changes


def partial_changes(
    partial: PersistBase[Any],
    levels_id: str,
    signal: PersistBase[Any],
    symbol: str,
    strategy: str,
    settings: Settings,
) -> Changes:
    """The events of the pair's partial levels in the committing transaction."""
    row_key = partial._key(levels_id)
    signal_key = signal._key(symbol)

    async def changes(txn: Transaction) -> list[Any]:
        new_data = txn.writes.get(row_key)
        if new_data is None:
            return []  # levels removed (the signal closed): no milestone reached
        old = await _committed(txn.backend, row_key)
        old_data = None if old is None else old.data
        if old_data == new_data:
            return []
        backend = txn.backend
        new_levels = _parse(partial, backend, row_key, new_data) or {}
        if not new_levels:
            return []
        old_levels = (
            None if old_data is None else _parse(partial, backend, row_key, old_data)
        ) or {}
        signal_row = await _read(txn, signal, signal_key)
        return partial_events(old_levels, new_levels, signal_row, symbol, strategy, _now(settings))

    return changes

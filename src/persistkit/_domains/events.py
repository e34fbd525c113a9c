"""Statistics events, derived from the schedule and partial rows a commit changes.

The bot makes no extra call: when a commit changes a pair's scheduled row or
its partial levels, a hook of that commit (:meth:`Transaction.before_commit
<persistkit._transaction.Transaction.before_commit>`) compares the new value with
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
(:func:`persistkit._clock.now_ms`: the tick's time, recorded with it, so that a
replay records the same events), else, outside a live session's tick, the
wall-clock time of the commit. Each log keeps
the newest ``event_limit`` events (``configure(event_limit=...)``, 250 by
default) in ``stats/schedule/{symbol}_{strategy}/`` and
``stats/partial/{symbol}_{strategy}/`` beside the state they describe. The
``head`` holds the newest events (fewer than :data:`HEAD_EVENTS`) and lists
the segments ``0``, ``1``, ...: at :data:`HEAD_EVENTS` events the head's events move
to the last segment, which grows to :data:`SEGMENT_EVENTS` before the next is
started; whole segments are dropped, oldest first, once the newer events reach
the bound (a reader returns the newest ``event_limit``). Events are stored as
short rows of their own fields (format 2, :class:`EventLog`), so an event costs
its commit a few hundred bytes, and a new file only every
:data:`SEGMENT_EVENTS` events. Files in live mode,
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

from persistkit._clock import now_ms
from persistkit._config import Settings, active_settings
from persistkit._domains._base import DomainAdapter
from persistkit._retry import DEFAULT_RETRY
from persistkit._store import PersistBase
from persistkit._transaction import Transaction, transaction, transaction_for
from persistkit.backends._base import Backend
from persistkit.errors import TransientBackendError
from persistkit.models import PartialData, PartialLevel, Position, ScheduledSignalRow, SignalRow
from persistkit.models import _Model as EventModel

__all__ = [
    "HEAD",
    "HEAD_EVENTS",
    "PARTIAL_LOG",
    "ROWS_FORMAT",
    "SCHEDULE_LOG",
    "SEGMENT_EVENTS",
    "Changes",
    "EventLog",
    "LogHead",
    "PartialEvent",
    "PartialEventLog",
    "PartialRow",
    "ScheduleEvent",
    "ScheduleEventLog",
    "ScheduleRow",
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
"""The id of a pair's log head in its ``stats/...`` store; segments have numbers."""
HEAD_EVENTS = 10
"""The head holds fewer events, the newest; at this many they move to the last segment."""
SEGMENT_EVENTS = 50
"""Events per full segment: the last one grows by :data:`HEAD_EVENTS` at a time, then
the next is started."""

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


ScheduleRow = tuple[
    Timestamp,
    Literal["scheduled", "opened", "cancelled"],
    Annotated[str, Field(min_length=1)],
    Position,
    Annotated[float, Field(allow_inf_nan=False)],
    Annotated[float, Field(allow_inf_nan=False)] | None,
]
"""A schedule event as stored: ``[timestamp, action, signal_id, position, price_open,
duration_min]``; the symbol and the strategy are the log's own."""

PartialRow = tuple[
    Timestamp,
    Literal["profit", "loss"],
    Annotated[str, Field(min_length=1)],
    PartialLevel,
    Position | None,
    Annotated[float, Field(allow_inf_nan=False)] | None,
]
"""A partial event as stored: ``[timestamp, action, signal_id, level, position, price]``."""


class LogHead(EventModel):
    """A pair's event log: its segments, oldest first, as ``[number, events in it]``,
    and the newest events, not yet in a segment."""

    segments: list[tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]]
    events: list[Any]


class _EventsHead(LogHead):
    """Format 1 (written before format 2; still read, rewritten as format 2 by the pair's
    next event): events whole, with the pair's names."""

    format: Literal[1] = 1


class _RowsHead(LogHead):
    """Format 2: events as rows."""

    format: Literal[2]


class ScheduleLogHead(_EventsHead):
    events: list[ScheduleEvent]


class ScheduleRowsHead(_RowsHead):
    events: list[ScheduleRow]


class PartialLogHead(_EventsHead):
    events: list[PartialEvent]


class PartialRowsHead(_RowsHead):
    events: list[PartialRow]


ROWS_FORMAT = 2
"""The format of the heads written now (their ``format``): ``{"format": 2, "segments":
[[number, count], ...], "events": [row, ...]}``; its segments are plain lists of rows."""


class EventLog(DomainAdapter):
    """A kind of event log: a head and sealed segments per pair, in either format.

    Format 2 (written now) stores each event as a short row of its own fields:
    a tick's commit carries a few dozen bytes per event, not a few hundred.
    Format 1 (whole events, as JSON objects with the pair's names) is still
    read: a log written by an earlier persistkit keeps its sealed segments as
    they are until they are dropped, and its head is rewritten in format 2 by
    the pair's next event.
    """

    def __init__(self) -> None:
        self.recorders: dict[tuple[int, str], _Recorder] = {}
        """How the writes of each row store record events in these logs, by settings and
        row key (``domains.events._recorder``); forgotten with the stores at a configure."""
        super().__init__()

    def _forget(self) -> None:
        super()._forget()
        self.recorders = {}

    model: type[EventModel]
    row_fields: tuple[str, ...]
    """An event's fields in the order its row (format 2) holds them; the pair's names are
    the log's folder's, not the row's."""

    def row(self, event: EventModel) -> list[Any]:
        """An event (format 1) as a row (format 2)."""
        return [getattr(event, name) for name in self.row_fields]

    def event(self, row: Sequence[Any], symbol: str, strategy: str) -> Any:
        """A row (validated on read) as the event it stands for."""
        return self.model.model_construct(
            symbol=symbol, strategy_name=strategy, **dict(zip(self.row_fields, row, strict=True))
        )

    def events(self, stored: Sequence[Any], symbol: str, strategy: str) -> list[Any]:
        """The events of a head's or segment's values, in either format."""
        return [
            item if isinstance(item, EventModel) else self.event(item, symbol, strategy)
            for item in stored
        ]


class ScheduleEventLog(EventLog):
    """The newest schedule events of each pair: a head and its sealed segments."""

    domain = "stats/schedule"
    schema = ScheduleRowsHead | ScheduleLogHead | list[ScheduleRow] | list[ScheduleEvent] | None

    model = ScheduleEvent
    row_fields = ("timestamp", "action", "signal_id", "position", "price_open", "duration_min")


class PartialEventLog(EventLog):
    """The newest partial events of each pair: a head and its sealed segments."""

    domain = "stats/partial"
    schema = PartialRowsHead | PartialLogHead | list[PartialRow] | list[PartialEvent] | None

    model = PartialEvent
    row_fields = ("timestamp", "action", "signal_id", "level", "position", "price")


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
) -> list[list[Any]]:
    """The events (as :data:`ScheduleRow`) of a pair's scheduled row going from ``old`` to ``new``.

    ``signal`` is the pair's signal as the same commit leaves it.
    """
    events: list[list[Any]] = []
    if old is not None and (new is None or new.id != old.id):
        opened = signal is not None and signal.id == old.id
        waited_until = signal.pending_at if opened and signal is not None else now
        events.append(
            [
                now,
                "opened" if opened else "cancelled",
                old.id,
                old.position,
                old.price_open,
                _minutes(old.scheduled_at, waited_until),
            ]
        )
    if new is not None and (old is None or new.id != old.id):
        events.append([now, "scheduled", new.id, new.position, new.price_open, None])
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
    now: int,
) -> list[list[Any]]:
    """One event (as :data:`PartialRow`) per level in ``new`` that ``old`` did not have;
    ``signal`` gives prices."""
    events: list[list[Any]] = []
    for signal_id, levels in new.items():
        before = old.get(signal_id)
        known = signal if signal is not None and signal.id == signal_id else None
        sides: tuple[_Side, _Side] = (
            (
                "profit",
                levels.profit_levels,
                before.profit_levels if before else (),
                known.price_take_profit if known else None,
            ),
            (
                "loss",
                levels.loss_levels,
                before.loss_levels if before else (),
                known.price_stop_loss if known else None,
            ),
        )
        for action, reached, had, target in sides:
            for level in reached:
                if level in had:
                    continue
                price = (
                    _level_price(known, level, target)
                    if known is not None and target is not None
                    else None
                )
                position = known.position if known is not None else None
                events.append([now, action, signal_id, level, position, price])
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


async def _committed(backend: Backend, key: str) -> bytes | None:
    try:
        stored = await backend.get(key)
    except TransientBackendError as exc:
        stored = await DEFAULT_RETRY.call(lambda: backend.get(key), exc)
    return None if stored is None else stored.data


async def _as_committed(txn: Transaction, backend: Backend, key: str) -> bytes | None:
    """``key`` as ``txn`` leaves it: staged there, else committed."""
    if backend is txn.backend:
        staged, data = txn.lookup(key)
        if staged:
            return data
    return await _committed(backend, key)


# What the hooks parsed last, by key: a row, a log head or segment is parsed
# once, then recognised by its bytes (compared with what is stored, so another
# writer's change is never missed). Two values per key, the newest: a row's
# committed value and the one staged over it, so that a tick that replaces a
# row parses neither. No more: what the cache holds, the garbage collector
# walks through at every full collection.
_parsed: weakref.WeakKeyDictionary[Backend, dict[str, dict[bytes, Any]]] = (
    weakref.WeakKeyDictionary()
)
_PARSED_KEYS = 4096
_UNKNOWN = object()


def _recall(backend: Backend, key: str, data: bytes) -> Any:
    """What ``key`` holding ``data`` was parsed as, else :data:`_UNKNOWN`."""
    cache = _parsed.get(backend)
    if cache is None:
        return _UNKNOWN
    values = cache.get(key)
    return _UNKNOWN if values is None else values.get(data, _UNKNOWN)


def _remember(backend: Backend, key: str, data: bytes, value: Any) -> None:
    cache = _parsed.get(backend)
    if cache is None:
        cache = _parsed[backend] = {}
    values = cache.get(key)
    if values is None:
        if len(cache) >= _PARSED_KEYS:
            cache.clear()
        values = cache[key] = {}
    elif len(values) >= 2 and data not in values:
        del values[next(iter(values))]  # the older of the two
    values[data] = value


def _parse(store: PersistBase[Any], key: str, data: bytes) -> Any:
    value = _recall(store.backend, key, data)
    if value is _UNKNOWN:
        value = store._parse(key, data)
        _remember(store.backend, key, data, value)
    return value


async def _read(txn: Transaction, store: PersistBase[Any], key: str) -> Any:
    """``key`` parsed as ``txn`` leaves it (staged there, else committed); ``None``: absent."""
    data = await _as_committed(txn, store.backend, key)
    return None if data is None else _parse(store, key, data)


async def surviving_segments(
    log: PersistBase[Any], count: Callable[[str], Awaitable[int]]
) -> list[list[int]]:
    """``[number, count(key)]`` of the segments stored without a head, oldest first.

    A new pair has none. A head quarantined at a start (a torn file, say) left
    its segments: they are listed again, so that none is overwritten and their
    events still count.
    """
    numbers = sorted([int(entity_id) async for entity_id in log.keys() if entity_id.isdigit()])
    return [[number, await count(log._key(number))] for number in numbers]


async def _stored_rows(
    txn: Transaction, log: PersistBase[Any], kind: EventLog, key: str
) -> list[Any]:
    """A segment's events as rows (a format-1 segment's converted); ``[]``: absent."""
    data = await _as_committed(txn, log.backend, key)
    if data is None:
        return []
    stored = _parse(log, key, data) or []
    return [kind.row(item) if isinstance(item, EventModel) else item for item in stored]


async def _append(
    txn: Transaction,
    log: PersistBase[Any],
    kind: EventLog,
    rows: list[list[Any]],
    limit: int,
    head_data: bytes | None,
) -> None:
    """Add ``rows`` to the head, move full heads to the last segment, drop whole old
    segments past ``limit``.

    A commit rewrites the head (fewer than :data:`HEAD_EVENTS` rows), and one in
    :data:`HEAD_EVENTS` events also the last segment: a few hundred bytes per
    event, and a new file only every :data:`SEGMENT_EVENTS` events (files are
    what the journal's applier pays for). The head is written in format 2
    whatever it was in; so is a format-1 segment that grows (see :class:`EventLog`).
    ``head_data`` is the head as ``txn`` leaves it before these rows.
    """
    backend = txn.backend
    head_key = log._key(HEAD)
    segments: list[list[int]]
    current: list[Any]
    if head_data is None:

        async def count(key: str) -> int:
            return len(await _stored_rows(txn, log, kind, key))

        segments = await surviving_segments(log, count)
        current = []
    else:
        found = _recall(backend, head_key, head_data)
        if isinstance(found, tuple):  # the head this process wrote last, still the stored one
            listed, current = found
        else:
            head = _parse(log, head_key, head_data)
            listed = [list(segment) for segment in head.segments]
            current = [kind.row(row) if isinstance(row, EventModel) else row for row in head.events]
        segments = list(listed)
    current = [*current, *rows]
    # Every row was validated (no NaN, no infinity) when it was made or read, so
    # orjson's output is exact; the codec's walk for non-finite floats would only
    # cost time.
    while len(current) >= HEAD_EVENTS:
        moving, current = current[:HEAD_EVENTS], current[HEAD_EVENTS:]
        if segments and segments[-1][1] < SEGMENT_EVENTS:
            number = segments.pop()[0]
            key = log._key(number)
            filled = [*await _stored_rows(txn, log, kind, key), *moving]
        else:
            number = segments[-1][0] + 1 if segments else 0
            key = log._key(number)
            filled = moving
        data = orjson.dumps(filled)
        txn.include(key, data)
        _remember(backend, key, data, filled)
        segments.append([number, len(filled)])
    total = sum(count for _, count in segments) + len(current)
    while segments and total - segments[0][1] >= limit:
        dropped, dropped_count = segments.pop(0)
        total -= dropped_count
        txn.include(log._key(dropped), None)
    data = orjson.dumps({"format": ROWS_FORMAT, "segments": segments, "events": current})
    txn.include(head_key, data)
    _remember(backend, head_key, data, (segments, current))


Changes = Callable[[Transaction, bytes | None, bytes | None], Awaitable[list[list[Any]]]]
"""Given a committing transaction and a row's committed and staged bytes (never equal),
returns the event rows of that change."""

ChangesFor = Callable[[Settings], Awaitable[Changes]]
"""Builds the :data:`Changes` of one write under the settings it runs with."""

_HOOK = "persistkit statistics events"
"""The name of the one commit hook that records every statistics event of a commit."""


class _Recorder:
    """How the writes of one row store record their events: built once per store."""

    __slots__ = ("changes", "head_key", "head_keys", "kind", "limit", "log", "settings", "store")

    def __init__(
        self,
        settings: Settings,
        store: PersistBase[Any],
        kind: EventLog,
        log: PersistBase[Any],
        changes: Changes,
    ) -> None:
        self.settings = settings
        self.store = store
        self.kind = kind
        self.log = log
        self.limit = settings.event_limit
        self.changes = changes
        self.head_key = log._key(HEAD)
        self.head_keys = (self.head_key,)
        """What the hook may add and locks: every change of the log rewrites its head."""


class _CommitEvents:
    """The commit hook of a transaction's statistics: one per commit, whatever the rows.

    It reads the committed values of all the rows it was told of in one batch
    (one look at the backend, not one per row), and a row rewritten unchanged
    (the common tick) costs no more than that comparison.
    """

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows: dict[str, tuple[_Recorder, bytes | None, Any]] = {}
        """The rows written with events in this commit, by key: their recorder, the
        bytes last staged and what they parse as (``None``: not known)."""

    async def __call__(self, txn: Transaction) -> None:
        writes = txn.writes
        written = [(key, found) for key, found in self.rows.items() if key in writes]
        if not written:
            return  # written in a savepoint that failed
        backend = txn.backend
        stored = await _committed_many(backend, [key for key, _ in written])
        appending: list[tuple[_Recorder, list[list[Any]]]] = []
        for (key, (recorder, staged, parsed)), old_data in zip(written, stored, strict=True):
            new_data = writes[key]
            if old_data == new_data:
                continue  # the common tick: nothing parsed, nothing remembered
            if parsed is not None and new_data is not None and new_data is staged:
                # Spares parsing it now, and as the old value of the next change.
                _remember(backend, key, new_data, parsed)
            rows = await recorder.changes(txn, old_data, new_data)
            if rows:
                appending.append((recorder, rows))
        if not appending:
            return
        # The heads of the logs that grow, in one batch too.
        heads = await _committed_many(backend, [recorder.head_key for recorder, _ in appending])
        for (recorder, rows), committed_head in zip(appending, heads, strict=True):
            grown, data = txn.lookup(recorder.head_key)  # by another row of this commit
            head = data if grown else committed_head
            await _append(txn, recorder.log, recorder.kind, rows, recorder.limit, head)


async def _committed_many(backend: Backend, keys: list[str]) -> list[bytes | None]:
    try:
        stored = await backend.get_many(keys)
    except TransientBackendError as exc:
        stored = await DEFAULT_RETRY.call(lambda: backend.get_many(keys), exc)
    return [None if found is None else found.data for found in stored]


async def _recorder(
    store: PersistBase[Any],
    row_key: str,
    log_adapter: EventLog,
    pair: str,
    changes_for: ChangesFor,
    settings: Settings,
) -> _Recorder:
    """The recorder of ``store``'s row ``row_key``, built at its first write: the closures,
    the log's store and its init are paid once per pair, not on every write of a tick."""
    memo = (id(settings), row_key)
    found = log_adapter.recorders.get(memo)
    if found is not None and found.settings is settings and found.store is store:
        return found
    changes = await changes_for(settings)
    log = await log_adapter._store(pair)
    made = log_adapter.recorders[memo] = _Recorder(settings, store, log_adapter, log, changes)
    return made


def _register(txn: Transaction, row_key: str, recorder: _Recorder, parsed: Any) -> None:
    log = recorder.log
    if log.backend is not txn.backend:
        logger.warning(
            "persistkit: %s is on %s, not on the backend of the commit (%s): "
            "no statistics events recorded for it",
            row_key,
            txn.backend.url,
            log.backend.url,
        )
        return
    # On the transaction that commits: a savepoint's hook would be dropped if the
    # outer block had one already, and a failed savepoint's row is no longer written.
    committing = txn.outermost()
    hook = committing.registered_hook(_HOOK)
    if not isinstance(hook, _CommitEvents):
        hook = _CommitEvents()
    committing.before_commit(_HOOK, recorder.head_keys, hook)
    _, staged = txn.lookup(row_key)
    hook.rows[row_key] = (recorder, staged, parsed)


async def write_with_events(
    store: PersistBase[Any],
    entity_id: str,
    value: Any,
    log_adapter: EventLog,
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
    recorder = await _recorder(store, row_key, log_adapter, pair, changes_for, settings)
    active = transaction_for(backend)
    if active is not None:
        await _write(store, entity_id, value)
        _register(active, row_key, recorder, parsed)
        return
    async with transaction(backend) as own:
        await _write(store, entity_id, value)
        _register(own, row_key, recorder, parsed)


def remember_staged(
    txn: Transaction | None, store: PersistBase[Any], key: str, parsed: Any
) -> None:
    """Note that the bytes ``txn`` staged for ``key`` read as ``parsed`` (spares a parse)."""
    if txn is None or parsed is None:
        return
    staged, data = txn.lookup(key)
    if staged and data is not None:
        _remember(store.backend, key, data, parsed)


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

    async def changes(
        txn: Transaction, old_data: bytes | None, new_data: bytes | None
    ) -> list[list[Any]]:
        old_row = None if old_data is None else _parse(schedule, row_key, old_data)
        new_row = None if new_data is None else _parse(schedule, row_key, new_data)
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
    settings: Settings,
) -> Changes:
    """The events of the pair's partial levels in the committing transaction."""
    row_key = partial._key(levels_id)
    signal_key = signal._key(symbol)

    async def changes(
        txn: Transaction, old_data: bytes | None, new_data: bytes | None
    ) -> list[list[Any]]:
        if new_data is None:
            return []  # levels removed (the signal closed): no milestone reached
        new_levels = _parse(partial, row_key, new_data) or {}
        if not new_levels:
            return []
        old_levels = (None if old_data is None else _parse(partial, row_key, old_data)) or {}
        signal_row = await _read(txn, signal, signal_key)
        return partial_events(old_levels, new_levels, signal_row, _now(settings))

    return changes

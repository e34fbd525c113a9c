"""Statistics events, derived from the schedule and partial rows a commit changes.

The bot makes no extra call: when a commit changes a pair's scheduled row or
its partial levels, a hook of that commit (:meth:`Transaction.before_commit
<persistkit._transaction.Transaction.before_commit>`) compares the new value with
the committed one and appends what happened to the pair's event logs, in the
same commit. A ``kill -9`` therefore never separates a state change from its
events: after a restart the statistics are exactly those of the acknowledged
ticks.

**File roots.** On the file backend the commit hook is not used: every commit
is already a journal record of every key it wrote, in one order across
processes, and a record is forgotten only at a checkpoint. So the events are
derived from the records after the commit, by the same rules
(:mod:`persistkit._domains.journal_events`), and folded into a per-pair head by
each checkpoint before it forgets them. The tick only stamps its record with the
event time when it writes a row with events (:data:`EVENT_TIME_KEY`), with the
signals it wrote on the way when the last value cannot tell
(:data:`SIGNAL_NOTES_KEY`), and, the first time, with the pair's committed rows
(:data:`SEEDS_KEY`): a tick's commit costs almost nothing more with the
statistics on. The logs of the layout below are then only read (written by
earlier versions, or copied from another backend by ``migrate``/``import``); the
memory, Redis and S3 backends keep the hook and write them.

The rules:

- A scheduled row whose id was not there before: ``scheduled``.
- A scheduled row cleared or replaced by another id: ``opened`` when the pair's
  signal, as this commit leaves it (staged in the same tick, or already
  committed), has the old row's id, or had it at a write of the same tick (a
  fill closed on the same candle: :func:`remember_signal`); otherwise
  ``cancelled``. A write outside a tick is a commit of its own, so there the
  signal must be written before the schedule is cleared, or the fill counts as
  a cancellation.
- A row rewritten with the same id (a moved limit, say) is no event.
- Each level new in a signal's partial levels: one ``profit`` or ``loss``
  event. Levels dropped, or a signal's entry removed, are no event.

An event's time is the configured clock's (``configure(clock=...)``: a
backtest's market time), else the time of the tick that commits it
(:func:`persistkit._clock.now_ms`: the tick's time, recorded with it, so that a
replay records the same events), else, outside a live session's tick, the
wall-clock time of the commit.

**Layout (format 3).** A pair's two logs (``schedule`` and ``partial``) live
together in ``stats/{symbol}_{strategy}/``: one ``head`` holds, for each kind,
its newest events (fewer than :data:`SEGMENT_EVENTS`) and the range of its
sealed segments ``{kind}-{n}``. When a kind's head events reach
:data:`SEGMENT_EVENTS` they are sealed into the next segment, a file written
once and never again; whole segments are dropped, oldest first, once the newer
events reach the bound (``configure(event_limit=...)``, 250 by default; a
reader returns the newest ``event_limit``). Events are short rows of their own
fields (:data:`ScheduleRow`, :data:`PartialRow`). So a tick's commit carries
one head per pair whose logs grow, whatever the kinds, plus a sealed segment
every :data:`SEGMENT_EVENTS` events of a kind.

Logs written by earlier versions (format 1: whole events; format 2: rows; one
head per kind in ``stats/schedule/{pair}/`` and ``stats/partial/{pair}/``) are
read as they are; the pair's next event moves both into format 3 in its commit
and removes the old files (see :func:`stored_rows`).

Files in live mode, process memory in backtest mode. The hooks read what is
committed under this process's key locks, and keep what they parsed or wrote
last (:class:`_PairLog`), recognised by its bytes, so that a tick parses
nothing it wrote itself. Events derive from copies of the values taken when
they are written (:func:`schedule_facts`): a bot that changes its row object
afterwards changes no event. A pair usually has one writer (its live
session); another (a process, a thread running an event loop of its own) is
settled at the commit: a pair's head is written only if it is still the one
the events were derived from, and otherwise the commit derives them again
from what that writer committed (:meth:`Transaction.before_commit
<persistkit._transaction.Transaction.before_commit>`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import Field, TypeAdapter, ValidationError, model_validator

from persistkit._clock import now_ms
from persistkit._config import DEFAULT_EVENT_LIMIT, Settings, active_settings
from persistkit._domains._base import DomainAdapter
from persistkit._history import RECORD_ONLY_KEYS
from persistkit._retry import DEFAULT_RETRY
from persistkit._store import PersistBase
from persistkit._transaction import Transaction, active_transaction, transaction, transaction_for
from persistkit.backends._base import Backend
from persistkit.backends._file import FileBackend
from persistkit.errors import (
    ConflictError,
    CorruptValueError,
    EntityNotFoundError,
    TransientBackendError,
)
from persistkit.models import (
    PartialData,
    PartialLevel,
    Position,
    ScheduledSignalRow,
    SignalRow,
    Timestamp,
)
from persistkit.models import _Model as EventModel

__all__ = [
    "EVENTS_FORMAT",
    "HEAD",
    "PAIR_LOGS",
    "PARTIAL",
    "SCHEDULE",
    "SEGMENT_EVENTS",
    "EventKind",
    "LegacyEventLog",
    "PairEventLogs",
    "PairHead",
    "PartialEvent",
    "PartialRow",
    "ScheduleEvent",
    "ScheduleRow",
    "pair_log_values",
    "partial_events",
    "remember_signal",
    "schedule_events",
    "segment_id",
    "stored_rows",
    "write_with_events",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

HEAD = "head"
"""The id of a pair's log head; segments are ``{kind}-{n}``, legacy ones plain numbers."""
SEGMENT_EVENTS = 10
"""Events per sealed segment; a kind's head holds fewer."""
EVENTS_FORMAT = 3
"""The format of the heads written now: ``{"format": 3, "schedule": {"segments":
[first, end], "events": [row, ...]}, "partial": {...}}``; a kind's segments are
``{kind}-{first}`` to ``{kind}-{end - 1}``, each a list of :data:`SEGMENT_EVENTS` rows."""

EVENTS_NAMESPACE = "_persistkit/events"
"""What the statistics keep outside the domains on a file root (see
:mod:`persistkit._domains.journal_events`): never validated at a start, left out
of replays' comparisons. The keys below ride in the journal's records only (never
a file, never listed: :data:`~persistkit._history.RECORD_ONLY_KEYS`)."""
EVENT_TIME_KEY = f"{EVENTS_NAMESPACE}/time"
"""A commit record's event time (ms), when it writes a row with events; followed by
its writer's ``event_limit`` (after a space) when that is not the default."""
SIGNAL_NOTES_KEY = f"{EVENTS_NAMESPACE}/signals"
"""The ``(id, pending_at)`` of each signal a tick wrote, when the last value cannot tell."""
FOLDED_NAMESPACE = f"{EVENTS_NAMESPACE}/pairs"
"""Each pair's folded head on a file root."""
SEEDS_KEY = f"{EVENTS_NAMESPACE}/seeds"
"""The committed rows of the pairs with no folded head yet, by pair, as the writer
read them before its record (see :func:`_seed`)."""
RECORD_ONLY_KEYS.update((EVENT_TIME_KEY, SIGNAL_NOTES_KEY, SEEDS_KEY))

_TIMESTAMP: TypeAdapter[int] = TypeAdapter(Timestamp)
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

SegmentNumber = Annotated[int, Field(ge=0)]


class _Section(EventModel):
    """One kind's part of a format-3 head: its sealed segments' range and newest events."""

    segments: tuple[SegmentNumber, SegmentNumber]
    """``[first, end]``: segments ``first`` to ``end - 1``."""
    events: list[Any]

    @model_validator(mode="after")
    def _range(self) -> _Section:
        if self.segments[1] < self.segments[0]:
            raise ValueError(f"segments {list(self.segments)}: the end is before the first")
        return self


class _ScheduleSection(_Section):
    events: list[ScheduleRow]


class _PartialSection(_Section):
    events: list[PartialRow]


class PairHead(EventModel):
    """The head of a pair's event logs (format 3): both kinds' newest events and segments."""

    format: Literal[3]
    schedule: _ScheduleSection
    partial: _PartialSection


# -- the logs written before format 3: one head per kind, read and moved on -------------------


class LegacyLogHead(EventModel):
    """A head of format 1 or 2: its segments, oldest first, as ``[number, events in it]``,
    and the newest events, not yet in a segment."""

    segments: list[tuple[SegmentNumber, SegmentNumber]]
    events: list[Any]


class _EventsHead(LegacyLogHead):
    """Format 1: events whole, with the pair's names."""

    format: Literal[1] = 1


class _RowsHead(LegacyLogHead):
    """Format 2: events as rows."""

    format: Literal[2]


class _ScheduleLogHead(_EventsHead):
    events: list[ScheduleEvent]


class _ScheduleRowsHead(_RowsHead):
    events: list[ScheduleRow]


class _PartialLogHead(_EventsHead):
    events: list[PartialEvent]


class _PartialRowsHead(_RowsHead):
    events: list[PartialRow]


class LegacyEventLog(DomainAdapter):
    """A kind's log as persistkit wrote it before format 3 (``stats/{kind}/{pair}/``):
    a head and segments numbered ``0``, ``1``, ... Only read, and emptied by the move
    to format 3."""

    def __init__(self, domain: str, schema: Any) -> None:
        self.domain = domain  # type: ignore[misc]  # a ClassVar of DomainAdapter, per instance here
        self.schema = schema  # type: ignore[misc]
        super().__init__()


# -- what the events are derived from ---------------------------------------------------


ScheduleFacts = tuple[str, Position, float, int]
"""What a scheduled row's events need of it: ``(id, position, price_open, scheduled_at)``."""
SignalFacts = tuple[str, Position, float, float, float, int]
"""What the events need of a signal: ``(id, position, price_open, price_take_profit,
price_stop_loss, pending_at)``."""
LevelsFacts = dict[str, tuple[tuple[int, ...], tuple[int, ...]]]
"""Partial levels as the events need them: signal id -> (profit levels, loss levels)."""


def schedule_facts(row: ScheduledSignalRow | None) -> ScheduleFacts | None:
    """A copy of what ``row``'s events need: taken when the row is written or read,
    so that a bot changing its object afterwards changes no event."""
    return None if row is None else (row.id, row.position, row.price_open, row.scheduled_at)


def signal_facts(row: SignalRow | None) -> SignalFacts | None:
    """A copy of what the events need of a signal (see :func:`schedule_facts`)."""
    if row is None:
        return None
    return (
        row.id,
        row.position,
        row.price_open,
        row.price_take_profit,
        row.price_stop_loss,
        row.pending_at,
    )


def levels_facts(levels: Mapping[str, PartialData] | None) -> LevelsFacts:
    """A copy of partial levels (see :func:`schedule_facts`); ``{}`` for none."""
    if not levels:
        return {}
    return {
        signal_id: (tuple(data.profit_levels), tuple(data.loss_levels))
        for signal_id, data in levels.items()
    }


# -- the two kinds ------------------------------------------------------------------------


class EventKind:
    """What differs between the schedule and the partial log: the event's model, how
    a row holds it, where earlier versions kept it."""

    def __init__(
        self,
        name: Literal["schedule", "partial"],
        model: type[EventModel],
        row_fields: tuple[str, ...],
        legacy: LegacyEventLog,
        facts: Callable[[Any], Any],
    ) -> None:
        self.name = name
        self.model = model
        self.facts = facts
        """The copy of a stored value that its events are derived from (see
        :func:`schedule_facts`)."""
        self.row_fields = row_fields
        """An event's fields in the order its row holds them; the pair's names are the
        log's folder's, not the row's."""
        self.legacy = legacy

    def __repr__(self) -> str:
        return f"<{self.name} events>"

    def row(self, event: EventModel) -> list[Any]:
        """An event (format 1) as a row."""
        return [getattr(event, name) for name in self.row_fields]

    def rows(self, stored: Sequence[Any]) -> list[Any]:
        """Rows of a head's or segment's values, in any format (a format-1 event converted)."""
        return [self.row(item) if isinstance(item, EventModel) else item for item in stored]

    def events(self, rows: Sequence[Sequence[Any]], symbol: str, strategy: str) -> list[Any]:
        """Rows (validated on read, or made by the hooks) as the events they stand for."""
        construct = self.model.model_construct
        fields = self.row_fields
        return [
            construct(symbol=symbol, strategy_name=strategy, **dict(zip(fields, row, strict=True)))
            for row in rows
        ]


SCHEDULE = EventKind(
    "schedule",
    ScheduleEvent,
    ("timestamp", "action", "signal_id", "position", "price_open", "duration_min"),
    LegacyEventLog(
        "stats/schedule",
        _ScheduleRowsHead | _ScheduleLogHead | list[ScheduleRow] | list[ScheduleEvent] | None,
    ),
    schedule_facts,
)
PARTIAL = EventKind(
    "partial",
    PartialEvent,
    ("timestamp", "action", "signal_id", "level", "position", "price"),
    LegacyEventLog(
        "stats/partial",
        _PartialRowsHead | _PartialLogHead | list[PartialRow] | list[PartialEvent] | None,
    ),
    levels_facts,
)
KINDS = (SCHEDULE, PARTIAL)


def segment_id(kind: EventKind, number: int) -> str:
    """The entity id of ``kind``'s segment ``number`` in a pair's log (format 3)."""
    return f"{kind.name}-{number}"


def _segment_number(kind: EventKind, entity_id: str) -> int | None:
    prefix, _, number = entity_id.partition("-")
    return int(number) if prefix == kind.name and number.isdigit() else None


class PairEventLogs(DomainAdapter):
    """The event logs of each pair (format 3): ``stats/{symbol}_{strategy}/``."""

    domain = "stats"
    schema = PairHead | list[ScheduleRow] | list[PartialRow] | None

    def __init__(self) -> None:
        self.pairs: dict[tuple[int, str], _PairLog] = {}
        """What the hooks know of each pair's logs, by settings and pair; forgotten with
        the stores at a configure (as are the two maps below)."""
        self.recorders: dict[PersistBase[Any], _Recorder] = {}
        """The recorder of each store whose row has events (a store is one settings')."""
        self.signals: dict[PersistBase[Any], _PairLog | None] = {}
        """The pair log of each signal store, for :func:`remember_signal` (``None``:
        the statistics are off under its settings)."""
        super().__init__()

    def _forget(self) -> None:
        super()._forget()
        self.pairs = {}
        self.recorders = {}
        self.signals = {}


PAIR_LOGS = PairEventLogs()


def pair_log_values(pair: str, rows: Mapping[str, Sequence[Sequence[Any]]]) -> dict[str, bytes]:
    """The keys and bytes of a pair's logs (format 3) holding ``rows`` (by kind name,
    oldest first): each kind's full segments of :data:`SEGMENT_EVENTS` rows from
    ``{kind}-0`` on, the rest in the head, as the pair's commits lay them out.

    How a copy carries statistics that no log holds yet (a file root's, derived
    from its journal) to any backend (see :mod:`persistkit._domains.portable_events`).
    """
    prefix = f"{PAIR_LOGS.domain}/{pair}/"
    values: dict[str, bytes] = {}
    sections: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        kind_rows = [list(row) for row in rows.get(kind.name, ())]
        sealed = len(kind_rows) // SEGMENT_EVENTS
        for number in range(sealed):
            chunk = kind_rows[number * SEGMENT_EVENTS : (number + 1) * SEGMENT_EVENTS]
            values[prefix + segment_id(kind, number)] = orjson.dumps(chunk)
        sections[kind.name] = {
            "segments": [0, sealed],
            "events": kind_rows[sealed * SEGMENT_EVENTS :],
        }
    values[prefix + HEAD] = orjson.dumps({"format": EVENTS_FORMAT, **sections})
    return values


# -- reading a pair's log, in any format ---------------------------------------------------


async def _read(store: PersistBase[Any], entity_id: str | int) -> Any:
    try:
        return await store.read_value(entity_id)
    except EntityNotFoundError:
        return None  # absent, or quarantined at a start


async def stored_rows(
    kind: EventKind, log: PersistBase[Any], legacy: PersistBase[Any]
) -> list[Any]:
    """``kind``'s stored events as rows, oldest first; all of them (the bound is the reader's).

    ``log`` is the pair's store (format 3), ``legacy`` its store of ``kind`` in the
    layout before it. A pair with anything in ``log`` is read there: its head's
    segments, else (a head quarantined at a start) the segments that survived it.
    Otherwise ``legacy``: its head (format 1 or 2) and the segments it lists, else
    those that survived it.
    """
    head = await _read(log, HEAD)
    if isinstance(head, PairHead):
        first, end = getattr(head, kind.name).segments
        numbers = list(range(first, end))
    else:
        ids = [entity_id async for entity_id in log.keys()]
        if ids:
            found = (_segment_number(kind, entity_id) for entity_id in ids)
            numbers = sorted(number for number in found if number is not None)
        else:
            return await _legacy_rows(kind, legacy)
    rows: list[Any] = []
    for number in numbers:
        rows += await _read(log, segment_id(kind, number)) or []
    if isinstance(head, PairHead):
        rows += getattr(head, kind.name).events
    return rows


async def _legacy_rows(kind: EventKind, legacy: PersistBase[Any]) -> list[Any]:
    head = await _read(legacy, HEAD)
    if isinstance(head, LegacyLogHead):
        numbers = [number for number, _ in head.segments]
    else:
        numbers = sorted(
            [int(entity_id) async for entity_id in legacy.keys() if entity_id.isdigit()]
        )
    stored: list[Any] = []
    for number in numbers:
        stored += await _read(legacy, number) or []
    if isinstance(head, LegacyLogHead):
        stored += head.events
    return kind.rows(stored)


# -- what a change means --------------------------------------------------------------


def _minutes(start_ms: int, end_ms: int) -> float:
    return (end_ms - start_ms) / _MS_PER_MINUTE


def schedule_events(
    old: ScheduleFacts | None,
    new: ScheduleFacts | None,
    signal: SignalFacts | None,
    now: int,
    staged_signals: Sequence[tuple[str, int | None]] = (),
) -> list[list[Any]]:
    """The events (as :data:`ScheduleRow`) of a pair's scheduled row going from ``old`` to ``new``.

    ``signal`` is the pair's signal as the same commit leaves it;
    ``staged_signals`` the ``(id, pending_at)`` of each signal the commit's block
    wrote on the way (a fill closed in the same tick leaves no signal).
    """
    events: list[list[Any]] = []
    if old is not None and (new is None or new[0] != old[0]):
        if signal is not None and signal[0] == old[0]:
            opened, waited_until = True, signal[5]
        else:
            filled = [pending for signal_id, pending in staged_signals if signal_id == old[0]]
            opened = bool(filled)
            waited_until = filled[-1] if filled and filled[-1] is not None else now
        action = "opened" if opened else "cancelled"
        events.append([now, action, old[0], old[1], old[2], _minutes(old[3], waited_until)])
    if new is not None and (old is None or new[0] != old[0]):
        events.append([now, "scheduled", new[0], new[1], new[2], None])
    return events


def partial_events(
    old: LevelsFacts,
    new: LevelsFacts,
    signal: SignalFacts | None,
    now: int,
) -> list[list[Any]]:
    """One event (as :data:`PartialRow`) per level in ``new`` that ``old`` did not have;
    ``signal`` gives prices."""
    events: list[list[Any]] = []
    for signal_id, (profit, loss) in new.items():
        before = old.get(signal_id)
        known = signal if signal is not None and signal[0] == signal_id else None
        for action, reached, had in (
            ("profit", profit, before[0] if before else ()),
            ("loss", loss, before[1] if before else ()),
        ):
            for level in reached:
                if level in had:
                    continue
                if known is None:
                    events.append([now, action, signal_id, level, None, None])
                    continue
                # Where the level lies: entry + level% of the way to TP or SL.
                entry = known[2]
                target = known[3] if action == "profit" else known[4]
                price = round(entry + (target - entry) * level / 100, 10)
                events.append([now, action, signal_id, level, known[1], price])
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


async def _retrying(read: Callable[[], Awaitable[T]]) -> T:
    """``read()``, repeated as the default policy says while the backend is unreachable
    (a read is safe to repeat)."""
    try:
        return await read()
    except TransientBackendError as exc:
        return await DEFAULT_RETRY.call(read, exc)


async def _committed(backend: Backend, key: str) -> bytes | None:
    stored = await _retrying(lambda: backend.get(key))
    return None if stored is None else stored.data


async def _committed_many(backend: Backend, keys: list[str]) -> list[bytes | None]:
    return await _retrying(lambda: backend.get_many_data(keys))


_KindLog = tuple[int, int, list[Any]]
"""A kind's part of a pair's logs as a head holds it: ``(first segment, end segment,
newest rows)``; never changed in place (a new one is made)."""
_KindLogs = dict[str, _KindLog]

_UNSTAGED: Any = object()
"""What ``txn.writes.get`` gives for a key the transaction did not write."""


class _PairLog:
    """One pair's event logs under one settings, as this process last saw them.

    ``cached`` is a head's bytes and the logs they hold: when the committed
    head still has those bytes (what a pair's only writer finds), a commit
    appends to those logs without parsing anything. A commit that fails leaves
    bytes that never landed, so the next one reads the logs again. Replaced
    whole, never changed: threads running loops of their own may share the
    pair (the commit's check of the head settles which of them wins). ``memo`` keeps,
    for each row the events are derived from (the scheduled row, the partial
    levels, the signal), the newest bytes parsed and what they parse as: a
    tick parses nothing it was handed as a model, nor the old value it
    committed itself.
    """

    __slots__ = (
        "backend",
        "cached",
        "head_key",
        "legacy",
        "limit",
        "log",
        "memo",
        "settings",
        "signal",
        "signal_backend",
        "signal_key",
        "unseeded",
    )

    def __init__(
        self,
        settings: Settings,
        log: PersistBase[Any],
        legacy: dict[str, PersistBase[Any]],
        signal: PersistBase[Any],
        symbol: str,
    ) -> None:
        self.settings = settings
        self.limit = settings.event_limit
        self.log = log
        self.backend = log.backend
        self.legacy = legacy
        self.head_key = log._key(HEAD)
        self.cached: tuple[bytes | None, _KindLogs] = (None, {})
        self.memo: dict[str, tuple[bytes | None, Any]] = {}
        self.signal = signal
        self.signal_backend = signal.backend
        self.signal_key = signal._key(symbol)
        self.unseeded = False
        """On a file root: the pair has no folded head yet, so the next commit of its
        rows carries their committed facts (see :func:`_seed`)."""

    def facts_of(
        self, store: PersistBase[Any], key: str, data: bytes, facts: Callable[[Any], Any]
    ) -> Any:
        """The facts (``facts`` of the value) of ``data``, ``key``'s bytes in ``store``:
        remembered, or parsed now. Bytes that do not parse count as no value: the
        write that replaces them must not fail for them."""
        found = self.memo.get(key)
        if found is not None and found[0] == data:
            return found[1]
        try:
            value = store._parse(key, data)
        except CorruptValueError as exc:
            logger.warning(
                "persistkit: %s does not parse (%s); its statistics events count it as absent",
                key,
                exc.reason,
            )
            value = None
        made = facts(value)
        self.memo[key] = (data, made)
        return made

    async def signal_in(self, txn: Transaction) -> SignalFacts | None:
        """The pair's signal as the committing ``txn`` leaves it: staged in it (the
        committing transaction holds every write of the block), else committed."""
        key = self.signal_key
        backend = self.signal_backend
        data = txn.writes.get(key, _UNSTAGED) if backend is txn.backend else _UNSTAGED
        if data is _UNSTAGED:
            data = await _committed(backend, key)
        if data is None:
            return None
        return self.facts_of(self.signal, key, data, signal_facts)  # type: ignore[no-any-return]

    async def append(
        self, txn: Transaction, committed: bytes | None, grown: dict[str, list[list[Any]]]
    ) -> None:
        """Add ``grown`` (kind -> new rows) to the logs whose head is ``committed``, in ``txn``.

        Seals a kind's head events into its next segment at :data:`SEGMENT_EVENTS`,
        drops its oldest segments past the bound, and writes the head once.
        """
        head, sections = self.cached
        if committed is None or committed != head:
            sections = await self._load(txn, committed)
        written = dict(sections)
        for kind_name, rows in grown.items():
            first, end, events = sections[kind_name]
            events = events + rows
            if (
                len(events) >= SEGMENT_EVENTS
                or (end - first - 1) * SEGMENT_EVENTS + len(events) >= self.limit
            ):
                written[kind_name] = self._seal(txn, kind_name, first, end, events)
            else:  # the common commit: the head grows, no segment changes
                written[kind_name] = (first, end, events)
        schedule, partial = written["schedule"], written["partial"]
        # Every row was validated (no NaN, no infinity) when it was made or read, so
        # orjson's output is exact: the codec's walk would only cost time.
        data = orjson.dumps(
            {
                "format": EVENTS_FORMAT,
                "schedule": {"segments": schedule[:2], "events": schedule[2]},
                "partial": {"segments": partial[:2], "events": partial[2]},
            }
        )
        txn.include(self.head_key, data)
        self.cached = (data, written)

    def _seal(
        self, txn: Transaction, kind_name: str, first: int, end: int, events: list[Any]
    ) -> _KindLog:
        """Move full segments of ``events`` (the head's, oldest first) into new segments
        and drop the oldest segments past the bound; returns the kind's new section."""
        key = self.log._key
        sealed = len(events) // SEGMENT_EVENTS
        total = (end - first) * SEGMENT_EVENTS + len(events)
        # Segments whose events the bound no longer needs, oldest first; one just
        # sealed among them is never written.
        keep_from = first
        while keep_from < end + sealed and total - SEGMENT_EVENTS >= self.limit:
            keep_from += 1
            total -= SEGMENT_EVENTS
        for number in range(first, min(keep_from, end)):
            txn.include(key(f"{kind_name}-{number}"), None)
        for index in range(sealed):
            if end + index >= keep_from:
                chunk = events[index * SEGMENT_EVENTS : (index + 1) * SEGMENT_EVENTS]
                txn.include(key(f"{kind_name}-{end + index}"), orjson.dumps(chunk))
        return keep_from, end + sealed, events[sealed * SEGMENT_EVENTS :]

    async def _load(self, txn: Transaction, committed: bytes | None) -> _KindLogs:
        """The logs as stored, when this process did not write the committed head last.

        No head: a new pair, a head quarantined at a start (the segments that
        survived it are listed again, so that none is overwritten and their
        events still count), or logs of an earlier format, moved here in ``txn``.
        """
        log = self.log
        head = None
        if committed is not None:
            try:
                head = log._parse(self.head_key, committed)
            except CorruptValueError as exc:
                # Damaged while running: set aside as a start would, never overwritten;
                # its sealed segments are listed again below.
                await self.backend.quarantine(self.head_key, exc.reason or str(exc))
                logger.warning(
                    "persistkit: the statistics head %s was damaged (%s): quarantined, its "
                    "unsealed events are lost; its segments still count",
                    self.head_key,
                    exc.reason,
                )
        if isinstance(head, PairHead):
            return {
                kind.name: (
                    *getattr(head, kind.name).segments,
                    list(getattr(head, kind.name).events),
                )
                for kind in KINDS
            }
        ids = [entity_id async for entity_id in log.keys()]
        if ids:
            sections: _KindLogs = {}
            for kind in KINDS:
                numbers = [_segment_number(kind, entity_id) for entity_id in ids]
                found = [number for number in numbers if number is not None]
                sections[kind.name] = (min(found), max(found) + 1, []) if found else (0, 0, [])
            return sections
        return {kind.name: (0, 0, await self._move_legacy(txn, kind)) for kind in KINDS}

    async def _move_legacy(self, txn: Transaction, kind: EventKind) -> list[Any]:
        """``kind``'s events in the layout before format 3, removed from it in ``txn``:
        the caller writes them in format 3 in the same commit."""
        legacy = self.legacy[kind.name]
        rows = await _legacy_rows(kind, legacy)
        async for entity_id in legacy.keys():
            txn.include(legacy._key(entity_id), None)
        return [list(row) for row in rows]


class _Recorder:
    """One row whose writes have events (a pair's scheduled row, or its partial levels):
    built at its first write, once per store."""

    __slots__ = ("backend", "from_journal", "key", "kind", "pair", "store")

    def __init__(self, pair: _PairLog, store: PersistBase[Any], key: str, kind: EventKind) -> None:
        self.pair = pair
        self.store = store
        self.key = key
        self.kind = kind
        self.backend = store.backend
        self.from_journal = isinstance(store.backend, FileBackend)
        """On a file root the events are derived from the journal's records after the
        fact (:mod:`persistkit._domains.journal_events`), not in the commit."""


_HOOK = "persistkit statistics events"
"""The name of the one commit hook that records every statistics event of a commit."""


class _CommitEvents:
    """The commit hook of a transaction's statistics: one per commit, whatever the rows.

    It reads the committed values of all the rows it was told of, and the heads
    of their pairs, in one batch (one look at the backend), so a row rewritten
    unchanged (the common tick) costs no more than that comparison. Each pair
    whose logs grow writes its head once.
    """

    __slots__ = ("live", "pairs", "rows")

    def __init__(self) -> None:
        self.live = True
        """Not run yet: a block that committed what it staged so far
        (``commit_staged``) registers a new hook for what it stages next."""
        self.rows: dict[str, tuple[_Recorder, bytes | None, Any]] = {}
        """The rows written with events in this commit, by key: their recorder, the
        bytes staged and what they parse as (``None``: not known)."""
        self.pairs: dict[str, _PairLog] = {}
        """The logs of those rows' pairs by head key (the transaction locks the heads
        while it commits). One log per head: rows recorded through another log of
        the same pair (one built under settings configured since) go to this one."""

    async def __call__(self, txn: Transaction) -> None:
        self.live = False
        writes = txn.writes
        rows = self.rows
        keys = [key for key in rows if key in writes]  # not a failed savepoint's
        if not keys:
            return
        pairs = self.pairs
        stored = await _committed_many(txn.backend, [*keys, *pairs])
        grown: dict[_PairLog, dict[str, list[list[Any]]]] = {}
        signals: dict[_PairLog, SignalFacts | None] = {}
        """Each pair's signal as this commit leaves it, once looked up."""
        now = -1
        for key, old in zip(keys, stored, strict=False):  # the heads follow the rows
            new = writes[key]
            recorder, staged, given = rows[key]
            pair = pairs[recorder.pair.head_key]
            if new is not staged:
                given = None  # rewritten since, by a write that gave no model
            if old == new:  # the common tick: nothing parsed
                if given is not None:
                    pair.memo[key] = (new, given)  # the old value of the next change
                continue
            store, kind = recorder.store, recorder.kind
            old_value = None if old is None else pair.facts_of(store, key, old, kind.facts)
            new_value: Any
            if new is None:
                new_value = kind.facts(None)
            elif given is None:
                new_value = pair.facts_of(store, key, new, kind.facts)
            else:
                new_value = given
                pair.memo[key] = (new, given)
            if now < 0:
                now = _now(pair.settings)
            if kind is SCHEDULE and (
                old_value is None or (new_value is not None and new_value[0] == old_value[0])
            ):
                # Not resolved (nothing before, or the same entry): no signal to ask.
                events = schedule_events(old_value, new_value, None, now)
            elif kind is PARTIAL and not new_value:
                continue  # levels removed (the signal closed): no milestone reached
            else:
                if pair in signals:
                    signal = signals[pair]
                else:
                    signal = signals[pair] = await pair.signal_in(txn)
                if kind is SCHEDULE:
                    on_the_way = txn.notes.get(pair.signal_key, ())
                    events = schedule_events(old_value, new_value, signal, now, on_the_way)
                else:
                    events = partial_events(old_value or {}, new_value, signal, now)
            if events:
                added = grown.get(pair)
                if added is None:
                    added = grown[pair] = {}
                kind_name = recorder.kind.name
                if kind_name in added:
                    added[kind_name] += events
                else:
                    added[kind_name] = events
        if not grown:
            return
        heads = dict(zip(pairs.values(), stored[len(keys) :], strict=True))
        growing = list(grown)
        backend = txn.backend
        versions = await _retrying(lambda: backend.get_many([pair.head_key for pair in growing]))
        for pair, found in zip(growing, versions, strict=True):
            committed = heads[pair]
            head_key = pair.head_key
            if (None if found is None else found.data) != committed:
                raise ConflictError(
                    f"{head_key} changed while this commit derived its events", key=head_key
                )
            # Written only if still the head the events were derived from: another
            # writer of the pair (a process, or a thread running a loop of its own)
            # makes this commit derive them again (Transaction.before_commit).
            txn.expected[head_key] = None if found is None else found.version
            await pair.append(txn, committed, grown[pair])


async def _new_recorder(
    settings: Settings,
    store: PersistBase[Any],
    entity_id: str,
    kind: EventKind,
    symbol: str,
    pair: str,
) -> _Recorder | None:
    """The recorder of ``store``'s row ``entity_id`` (``None``: its backend cannot commit
    two keys atomically, so no events), built at its first write: the log's stores and
    their init are paid once per pair, not on every write of a tick."""
    if type(store.backend).commit is Backend.commit:
        return None
    log = PAIR_LOGS.pairs.get((id(settings), pair))
    if log is None or log.settings is not settings:
        # Imported here: the adapters' package builds this module's users.
        from persistkit._domains import PersistSignalAdapter

        made_log = _PairLog(
            settings,
            await PAIR_LOGS._store(pair),
            {legacy.name: await legacy.legacy._store(pair) for legacy in KINDS},
            await PersistSignalAdapter._store(pair),
            symbol,
        )
        # Another write of the pair may have built its log during those awaits: one
        # log per pair, or two heads of it would meet in one commit.
        log = PAIR_LOGS.pairs.get((id(settings), pair))
        if log is None or log.settings is not settings:
            log = PAIR_LOGS.pairs[(id(settings), pair)] = made_log
            PAIR_LOGS.signals[log.signal] = log
    made = PAIR_LOGS.recorders[store] = _Recorder(log, store, store._key(entity_id), kind)
    if made.from_journal:
        from persistkit._domains.journal_events import folded_key

        log.unseeded = await store.backend.get(folded_key(pair)) is None
    return made


_last_registration: tuple[Transaction | None, Transaction | None, _CommitEvents] = (
    None,
    None,
    _CommitEvents(),
)
"""The transaction a row was last registered from, the one that commits it, and its
hook: the other rows of a tick find their hook here. One tuple, read and replaced
whole, so that threads running event loops of their own never mix two."""


def _register(txn: Transaction, recorder: _Recorder, given: Any) -> None:
    """Tell the commit hook of ``txn`` (or of the block it is a savepoint of) that
    ``recorder``'s row was just staged in ``txn``."""
    global _last_registration
    pair = recorder.pair
    if pair.backend is not txn.backend:
        logger.warning(
            "persistkit: %s is on %s, not on the backend of the commit (%s): "
            "no statistics events recorded for it",
            recorder.key,
            txn.backend.url,
            pair.backend.url,
        )
        return
    staged_in, committing, hook = _last_registration
    if staged_in is not txn or not hook.live:
        # On the transaction that commits: a savepoint's hook would be dropped if the
        # outer block had one already, and a failed savepoint's row is no longer written.
        committing = txn.outermost()
        found = committing.registered_hook(_HOOK)
        hook = found if isinstance(found, _CommitEvents) else _CommitEvents()
        _last_registration = (txn, committing, hook)
    head_key = pair.head_key
    if head_key not in hook.pairs:
        hook.pairs[head_key] = pair
        assert committing is not None
        committing.before_commit(_HOOK, (head_key,), hook)
    key = recorder.key
    # A copy, now: the bot may change its object after this write.
    facts = None if given is None else recorder.kind.facts(given)
    hook.rows[key] = (recorder, txn.writes.get(key), facts)  # the store staged it in txn


async def write_with_events(
    store: PersistBase[Any],
    entity_id: str,
    value: Any,
    kind: EventKind,
    symbol: str,
    pair: str,
    given: Any = None,
) -> None:
    """Write (``None``: remove) ``entity_id`` and record its events in the same commit.

    Inside a transaction on the store's backend (a tick) the events join it;
    outside one, the write and its events are a commit of their own. ``given``
    is ``value`` in the form a read gives (a model), when the caller has it:
    the commit then does not parse the staged bytes again.
    """
    recorder = PAIR_LOGS.recorders.get(store)
    if recorder is None:  # events off, or the row's first write under these settings
        settings = active_settings()
        if settings.event_limit:
            recorder = await _new_recorder(settings, store, entity_id, kind, symbol, pair)
        if recorder is None:
            if active_transaction.get() is None and row_needs_a_record(store):
                async with transaction(store.backend):  # a record the events see
                    await _write(store, entity_id, value)
            else:
                await _write(store, entity_id, value)
            return
    backend = recorder.backend
    active = active_transaction.get()
    if active is not None and active.backend is not backend:
        active = transaction_for(backend)  # an outer one on this backend, if any
    from_journal = recorder.from_journal
    if active is None:
        async with transaction(backend) as own:
            if from_journal and recorder.pair.unseeded:
                await _seed(own, recorder.pair)
            await _write(store, entity_id, value)
            if from_journal:
                _stamp(own, recorder)
            else:
                _register(own, recorder, given)
        return
    if from_journal and recorder.pair.unseeded:
        await _seed(active, recorder.pair)
    await _write(store, entity_id, value)
    if from_journal:
        _stamp(active, recorder)
    else:
        _register(active, recorder, given)


async def _seed(txn: Transaction, pair: _PairLog) -> None:
    """Give ``txn``'s record the pair's committed facts (its scheduled row, levels and
    signal, before this record): the first commit of a pair's rows by this process
    when the pair has no folded head (a root written by an earlier version, or with
    the statistics off until now), so that the derivation does not start from
    nothing. Read before the tick's own writes of the pair are staged."""
    pair.unseeded = False
    name = pair.head_key.split("/")[1]  # stats/{pair}/head
    staged = txn.writes.get(SEEDS_KEY)
    parsed = next(
        (seeds for data, seeds in reversed(txn.notes.get(_SEEDS_NOTE, ())) if data is staged),
        None,
    )
    if staged is None:
        seeds: dict[str, Any] = {}
    elif parsed is not None:
        # What this function staged (not parsed again: a first tick after a start that
        # writes thousands of pairs would parse the growing seeds once per pair).
        seeds = parsed
    else:
        seeds = orjson.loads(staged)
    if name in seeds:
        return
    entity = pair.signal_key.rsplit("/", 1)[1]
    committed = await _committed_many(
        pair.backend, [f"schedule/{name}/{entity}", f"partial/{name}/levels", pair.signal_key]
    )
    # The values as they are committed (JSON already): parsed when derived.
    facts = [None if data is None else orjson.Fragment(data) for data in committed]
    seeds[name] = dict(zip(("schedule", "partial", "signal"), facts, strict=True))
    data = orjson.dumps(seeds)
    txn.stage_now(SEEDS_KEY, data)
    txn.notes[_SEEDS_NOTE] = [(data, seeds)]  # a list, as every note: savepoints join them


_SEEDS_NOTE = ("seeds parsed",)
"""The note of the seeds :func:`_seed` staged and their parsed form: they are the staged
ones while the staged bytes are that very object."""


def _stamp(txn: Transaction, recorder: _Recorder) -> None:
    """On a file root: give ``txn``'s record its event time (see
    :mod:`persistkit._domains.journal_events`). Every record that writes a row with
    events gets it, changed or not: whether the row changed is known only against
    the record before it in the journal, and another process may commit the same
    row between this write and the commit (deciding against this process's view
    would then lose the events of a changed row)."""
    if EVENT_TIME_KEY not in txn.writes:
        settings = recorder.pair.settings
        if settings.event_limit == DEFAULT_EVENT_LIMIT:
            txn.stage_now(EVENT_TIME_KEY, b"%d" % _now(settings))
        else:  # the writer's bound rides along: the folded head keeps the largest
            txn.stage_now(EVENT_TIME_KEY, b"%d %d" % (_now(settings), settings.event_limit))


def _include_signal_notes(txn: Transaction) -> None:
    notes = {
        name: items
        for name, items in txn.notes.items()
        if isinstance(name, str) and name.startswith("signal/")
    }
    txn.stage_now(SIGNAL_NOTES_KEY, orjson.dumps(notes))


def row_needs_a_record(store: PersistBase[Any]) -> bool:
    """Whether a write of a row the events depend on (signal, scheduled row, levels)
    outside a tick must be a commit of its own: on a file root without history a plain
    write of a key the journal does not hold goes straight to its file, and the events,
    derived from the journal's records, would not see it (a fill written before its
    entry is cleared would count as a cancellation). Whatever this process's
    ``event_limit``: another process of the root may record the pair's events."""
    backend = store.backend
    return isinstance(backend, FileBackend) and backend.history is None


def forget_signal(store: PersistBase[Any], symbol: str) -> None:
    """Note that the signal of ``store`` was just removed in the block that removes it:
    on a file root, a tick that wrote a signal before removing it keeps the signals
    it wrote in its record (a fill closed at once is ``opened``)."""
    backend = store.backend
    if not isinstance(backend, FileBackend):
        return
    txn = transaction_for(backend)
    if txn is not None and txn.notes.get(store._key(symbol)):
        _include_signal_notes(txn)


def remember_signal(
    store: PersistBase[Any], symbol: str, row: SignalRow | Mapping[str, Any]
) -> None:
    """Note the signal ``row`` just staged in ``store``, in the block that staged it.

    A scheduled row cleared in the same tick is ``opened`` if the signal had its
    id at any write of the tick, not only as the tick leaves it (a limit filled
    and closed on the same candle leaves no signal): each write notes ``(id,
    pending_at)`` (:meth:`Transaction.note
    <persistkit._transaction.Transaction.note>`, under the signal's key). And what
    ``row`` parses as is remembered, so that the tick's events do not parse it again.
    """
    log = PAIR_LOGS.signals.get(store, _UNSTAGED)
    if log is None:
        return  # statistics off under these settings
    if log is _UNSTAGED:  # no statistics written for the pair yet
        if not active_settings().event_limit:
            PAIR_LOGS.signals[store] = None
            return
        log = None
        backend, key = store.backend, store._key(symbol)
    else:
        backend, key = log.signal_backend, log.signal_key
    txn = transaction_for(backend)
    if txn is None:
        return  # a commit of its own: only what it leaves counts
    if isinstance(backend, FileBackend):
        # The record holds the last signal; the notes ride in it only when a signal
        # written on the way has another id (see journal_events). So also before the
        # pair's first row with events in this process (``log`` still ``None``): a
        # new process's first tick may fill an entry and replace its signal at once.
        seen_now = (
            (row.id, row.pending_at)
            if isinstance(row, SignalRow)
            else (row.get("id"), _raw_pending_at(row))
        )
        txn.note(key, seen_now)
        noted = txn.notes[key]
        if len(noted) > 1 and any(item[0] != seen_now[0] for item in noted):
            _include_signal_notes(txn)
        return
    if isinstance(row, SignalRow):
        facts = signal_facts(row)  # a copy: see schedule_facts
        seen: tuple[Any, Any] = (row.id, row.pending_at)
        if log is not None:
            data = txn.writes.get(key)  # the store staged it in txn
            if data is not None:
                log.memo[key] = (data, facts)
    else:  # a raw row, as backtest-kit passes: the store validated it
        seen = (row.get("id"), _raw_pending_at(row))
    txn.note(key, seen)


def _raw_pending_at(row: Mapping[str, Any]) -> int | None:
    """A raw signal row's ``pendingAt`` as its model took it (a whole float or a
    numeric string is the same time as the int); ``None`` when it has none."""
    try:
        return _TIMESTAMP.validate_python(row.get("pendingAt", row.get("pending_at")))
    except ValidationError:
        return None


async def _write(store: PersistBase[Any], entity_id: str, value: Any) -> None:
    if value is None:
        await store.remove_value(entity_id)
    else:
        await store.write_value(entity_id, value)

"""Statistics events on the file backend, derived from the commit journal after the fact.

On a file root every commit is already one journal record holding the new value
of every key it wrote, in one order shared by every process, with its commit
time; the journal forgets records only at a checkpoint. So a pair's events need
not be derived inside the tick: they are a function of the pair's facts (its
scheduled row, its partial levels, its signal) as of some sequence number and of
the records after it. The tick pays almost nothing:

- :data:`EVENT_TIME_KEY`, the event time (the configured clock's, else the
  tick's), rides in every record that writes a row with events, changed or not
  (whether it changed is known only against the record before it, which another
  process may commit after the write). A record without it records no events:
  that marks the commits of a process with the statistics off.
- :data:`SIGNAL_NOTES_KEY` rides only when a signal written in the tick is
  removed or replaced by another id in the same tick (a fill closed at once):
  the ``(id, pending_at)`` of every signal the tick wrote, which the last value
  cannot tell.
- :data:`SEEDS_KEY` rides in a process's first record of a pair that has no
  folded head yet (a root written by an earlier version, a copy, the statistics
  turned on later): the pair's committed rows as the writer read them, so that
  the derivation does not start from nothing.

A checkpoint, before it forgets its records, folds them into each pair's
folded head :func:`folded_key` (:data:`~persistkit.backends._journal.FOLDERS`):
the pair's facts, its newest events, and the last sequence number they cover.
It writes the heads as files before its ``syncfs``; a crash in between keeps
the journal, and folding it again skips what the heads already cover. A reader
(:func:`journal_rows`) takes the folded head and derives the events of the
records after it. A head that claims records the journal has not written yet
(damaged, or left from a newer journal than the one restored from a copy) covers the
records up to its commit time (:func:`_rebased`), never every record by number: that
would drop every later event of the pair, or count the copy's records twice.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from pydantic import Field, TypeAdapter, ValidationError

from persistkit._config import DEFAULT_EVENT_LIMIT
from persistkit._domains.events import (
    EVENT_TIME_KEY,
    FOLDED_NAMESPACE,
    SEEDS_KEY,
    SIGNAL_NOTES_KEY,
    LevelsFacts,
    PartialRow,
    ScheduleFacts,
    ScheduleRow,
    SignalFacts,
    levels_facts,
    partial_events,
    schedule_events,
    schedule_facts,
    signal_facts,
)
from persistkit.backends import _journal
from persistkit.backends._file import SUFFIX
from persistkit.models import (
    PartialData,
    PartialLevel,
    Position,
    ScheduledSignalRow,
    SignalRow,
    Timestamp,
)
from persistkit.models import _Model as EventModel

if TYPE_CHECKING:
    from persistkit.backends._file import FileBackend
    from persistkit.backends._journal import JournalPosition, JournalRecord

__all__ = [
    "FOLDED_FORMAT",
    "FoldedHead",
    "PairFold",
    "derive",
    "fold_journal",
    "folded_key",
    "journal_rows",
]

logger = logging.getLogger(__name__)

FOLDED_FORMAT = 4

_SCHEDULE: TypeAdapter[ScheduledSignalRow | None] = TypeAdapter(ScheduledSignalRow | None)
_SIGNAL: TypeAdapter[SignalRow | None] = TypeAdapter(SignalRow | None)
_LEVELS: TypeAdapter[dict[str, PartialData] | None] = TypeAdapter(dict[str, PartialData] | None)
_MS_PER_NS = 1_000_000
_UNKNOWN: Any = object()


def folded_key(pair: str) -> str:
    """Where a pair's folded head lives (outside the domains: no start validates it)."""
    return f"{FOLDED_NAMESPACE}/{pair}"


_Finite = Annotated[float, Field(allow_inf_nan=False)]
_Id = Annotated[str, Field(min_length=1)]


class _FoldedFacts(EventModel):
    """What a pair's next events depend on, as of the head's ``seq``: the tuples of
    :func:`schedule_facts`, :func:`levels_facts` and :func:`signal_facts`."""

    schedule: tuple[_Id, Position, _Finite, Timestamp] | None
    levels: dict[str, tuple[tuple[PartialLevel, ...], tuple[PartialLevel, ...]]]
    signal: tuple[_Id, Position, _Finite, _Finite, _Finite, Timestamp] | None


class FoldedHead(EventModel):
    """A pair's folded head on a file root (:func:`folded_key`), as stored: its facts
    and each kind's newest events as of journal record ``seq`` of this root."""

    format: Literal[4]  # FOLDED_FORMAT
    seq: Annotated[int, Field(ge=0)]
    time_ns: Annotated[int, Field(ge=0)] = 0  # 0: written before it was kept
    limit: Annotated[int, Field(ge=1)]
    facts: _FoldedFacts
    schedule: list[ScheduleRow]
    partial: list[PartialRow]


@dataclass(slots=True)
class PairFold:
    """A pair's facts and events as of record ``seq`` (0: before any record)."""

    seq: int = 0
    time_ns: int = 0
    """The commit time of record ``seq`` (0: not known). Commit times grow with the
    sequence numbers across journals, whatever the clock does; a journal restored from
    an older copy numbers its new records again from where it ended, below ``seq``,
    but gives them later times: they are not folded (:func:`_covers`)."""
    schedule: ScheduleFacts | None = None
    levels: LevelsFacts = field(default_factory=dict)
    signal: SignalFacts | None = None
    schedule_rows: list[list[Any]] = field(default_factory=list)
    partial_rows: list[list[Any]] = field(default_factory=list)
    raw: dict[str, bytes | None] = field(default_factory=dict)
    """The bytes the facts were parsed from, by domain (not stored): a record that
    writes a row again unchanged (the common tick) parses nothing."""
    limit: int = 0
    """How many of each kind's newest events the head keeps: the largest bound
    (``event_limit``) of the processes whose records gave the pair events, so that
    a process that folds with a smaller one (or with the statistics off) drops
    none that a writer's reader shows."""
    known: set[str] | None = field(default_factory=set)
    """The domains whose facts came from a record (not stored); ``None``: all of them
    (a folded head's). A seed gives only the others: it was read before its record
    was committed, and another process's record in between knows better."""

    def encode(self) -> bytes:
        limit = self.limit or DEFAULT_EVENT_LIMIT
        return orjson.dumps(
            {
                "format": FOLDED_FORMAT,
                "seq": self.seq,
                "time_ns": self.time_ns,
                "limit": limit,
                "facts": {
                    "schedule": self.schedule,
                    "levels": {
                        sid: [list(p), list(loss)] for sid, (p, loss) in self.levels.items()
                    },
                    "signal": self.signal,
                },
                "schedule": self.schedule_rows[-limit:],
                "partial": self.partial_rows[-limit:],
            }
        )

    @classmethod
    def decode(cls, data: bytes | None) -> PairFold:
        """A folded head's fold; :class:`ValueError` (``CorruptValueError`` is one) when
        its bytes are not a :class:`FoldedHead`."""
        if data is None:
            return cls()  # knows nothing: the seeds tell
        try:
            head = FoldedHead.model_validate_json(data)
        except ValidationError as exc:
            raise ValueError(f"a damaged folded statistics head: {exc}") from exc
        facts = head.facts
        return cls(
            seq=head.seq,
            time_ns=head.time_ns,
            limit=head.limit,
            schedule=facts.schedule,
            levels={sid: (tuple(p), tuple(loss)) for sid, (p, loss) in facts.levels.items()},
            signal=facts.signal,
            schedule_rows=[list(row) for row in head.schedule],
            partial_rows=[list(row) for row in head.partial],
            known=None,
        )


def _parse(adapter: TypeAdapter[Any], data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return adapter.validate_json(data)
    except ValidationError:
        return None  # as the in-commit hook: bytes that do not parse count as no value


def _parse_value(adapter: TypeAdapter[Any], value: Any) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError:
        return None


def _pair_row(key: str) -> tuple[str, str] | None:
    """``(domain, pair)`` of a key whose value the events depend on, else ``None``."""
    if not key.startswith(("signal/", "schedule/", "partial/")):
        return None
    parts = key.split("/")
    if len(parts) != 3 or (parts[0] == "partial" and parts[2] != "levels"):
        return None
    return parts[0], parts[1]


_RECORD_KEYS = (EVENT_TIME_KEY, SEEDS_KEY, SIGNAL_NOTES_KEY)
"""The keys :func:`derive` reads in a record that touches a pair, besides the pair's."""


def touched_pairs(records: Iterable[JournalRecord]) -> set[str]:
    return {
        found[1]
        for record in records
        for key in record.writes
        if (found := _pair_row(key)) is not None
    }


def derive(
    folds: dict[str, PairFold], records: Iterable[JournalRecord], only: str | None = None
) -> None:
    """Advance ``folds`` (by pair; a missing pair starts empty) through ``records``, in order.

    A record changes a pair's facts whatever it holds; it adds events only when it
    carries :data:`EVENT_TIME_KEY` (the statistics were on in the process that
    committed it, and one of its rows with events changed). The rules are the
    in-commit hook's (:func:`schedule_events`, :func:`partial_events`): the signal
    is the one the record leaves, and the notes the signals the tick wrote on the way.
    """
    for record in records:
        writes = record.writes
        touched: dict[str, dict[str, tuple[str, bytes | None]]] = {}
        for key, data in writes.items():
            found = _pair_row(key)
            if found is None or (only is not None and found[1] != only):
                continue
            touched.setdefault(found[1], {})[found[0]] = (key, data)
        if not touched:
            continue
        stamp = writes.get(EVENT_TIME_KEY)
        if stamp:
            at, _, bound = stamp.partition(b" ")
            now, limit = int(at), int(bound) if bound else DEFAULT_EVENT_LIMIT
        else:
            now, limit = record.time_ns // _MS_PER_NS, 0
        seeds_data = writes.get(SEEDS_KEY)
        seeds: Mapping[str, Any] = orjson.loads(seeds_data) if seeds_data else {}
        notes_data = writes.get(SIGNAL_NOTES_KEY)
        notes: Mapping[str, list[list[Any]]] = orjson.loads(notes_data) if notes_data else {}
        for pair, rows in touched.items():
            fold = folds.get(pair)
            if fold is None:
                fold = folds[pair] = PairFold()
            if _covers(fold, record):
                continue  # folded already (a checkpoint that died before forgetting)
            fold.limit = max(fold.limit, limit)
            seed = seeds.get(pair)
            if seed is not None and fold.known is not None:
                # The committed rows before this record, as the writer read them: the
                # facts of the domains the derivation knows nothing of.
                if "schedule" not in fold.known:
                    fold.schedule = schedule_facts(_parse_value(_SCHEDULE, seed["schedule"]))
                    fold.raw.pop("schedule", None)
                if "partial" not in fold.known:
                    fold.levels = levels_facts(_parse_value(_LEVELS, seed["partial"]))
                    fold.raw.pop("partial", None)
                if "signal" not in fold.known:
                    fold.signal = signal_facts(_parse_value(_SIGNAL, seed["signal"]))
                    fold.raw.pop("signal", None)
            if fold.known is not None:
                fold.known.update(rows)
            raw = fold.raw
            signal = fold.signal
            if "signal" in rows:
                data = rows["signal"][1]
                if raw.get("signal", _UNKNOWN) != data:
                    signal = signal_facts(_parse(_SIGNAL, data))
                    raw["signal"] = data
            if "schedule" in rows:
                key, data = rows["schedule"]
                if raw.get("schedule", _UNKNOWN) == data:
                    new = fold.schedule
                else:
                    new = schedule_facts(_parse(_SCHEDULE, data))
                    raw["schedule"] = data
                if stamp is not None:
                    signal_key = "signal/" + key[len("schedule/") :]
                    on_the_way = [(item[0], item[1]) for item in notes.get(signal_key, ())]
                    fold.schedule_rows += schedule_events(
                        fold.schedule, new, signal, now, on_the_way
                    )
                fold.schedule = new
            if "partial" in rows:
                data = rows["partial"][1]
                if raw.get("partial", _UNKNOWN) == data:
                    levels = fold.levels
                else:
                    levels = levels_facts(_parse(_LEVELS, data))
                    raw["partial"] = data
                if stamp is not None and levels:
                    fold.partial_rows += partial_events(fold.levels, levels, signal, now)
                fold.levels = levels
            fold.signal = signal
            fold.seq, fold.time_ns = record.seq, record.time_ns


def _covers(fold: PairFold, record: JournalRecord) -> bool:
    """Whether ``fold`` holds what ``record`` gave already: its sequence number, and its
    commit time when the fold knows its own (a record after a journal restored from an
    older copy may reuse a folded number, never a folded time)."""
    return record.seq <= fold.seq and (not fold.time_ns or record.time_ns <= fold.time_ns)


def _rebased(fold: PairFold, next_seq: int, key: str) -> PairFold:
    """``fold``, when it claims records the journal has not written yet: left from a
    journal since deleted, or replaced by an older copy (a backup put back, a root copied
    file by file across a checkpoint), or damaged. Believed by number alone, it would make
    every later record look folded already, and the pair would have no event again.

    A head that knows its commit time covers the records up to that time and no later
    one (:func:`_covers`): a journal older than the head counts none of its records
    twice. A head without it covers no record of the journal: its events and facts
    stand as those before the journal."""
    if fold.seq >= next_seq:
        if fold.time_ns:
            logger.warning(
                "persistkit: %s covers records up to %d, the journal is at %d: the "
                "journal's records up to the head's commit time count as folded, the "
                "later ones count",
                key,
                fold.seq,
                next_seq,
            )
        else:
            logger.warning(
                "persistkit: %s covers records up to %d, the journal is at %d: it is "
                "taken as older than every record of the journal",
                key,
                fold.seq,
                next_seq,
            )
            fold.seq = 0
    return fold


def fold_journal(backend: FileBackend, records: list[JournalRecord]) -> dict[str, bytes]:
    """The folded heads of the pairs ``records`` touch, advanced through them (a checkpoint's
    :data:`~persistkit.backends._journal.FOLDERS` entry; runs under the journal lock)."""
    pairs = touched_pairs(records)
    if not pairs:
        return {}
    folds: dict[str, PairFold] = {}
    had: set[str] = set()
    for pair in pairs:
        data = backend._read_at(None, backend.path_of(folded_key(pair)))
        try:
            folds[pair] = _rebased(PairFold.decode(data), records[-1].seq + 1, folded_key(pair))
        except ValueError as exc:
            # Set aside, never overwritten: its events are lost, those of the
            # records still in the journal are folded into a new head.
            backend._quarantine_sync(folded_key(pair), str(exc), wait=True)
            logger.warning("persistkit: %s quarantined (%s)", folded_key(pair), exc)
            folds[pair] = PairFold()
            data = None
        if data is not None:
            had.add(pair)
    derive(folds, records)
    written: dict[str, bytes] = {}
    for pair, fold in folds.items():
        if pair not in had and not fold.limit:
            # Statistics off for it (no stamped record): no file. With one, a head even
            # without events: it keeps the facts of the records about to be forgotten,
            # which the writer's later records (seeded once) depend on.
            continue
        if not _covers(fold, records[-1]):
            fold.seq, fold.time_ns = records[-1].seq, records[-1].time_ns
        written[folded_key(pair)] = fold.encode()
    return written


def last_folded(backend: FileBackend) -> int:
    """The last record a folded head of ``backend`` covers (0: none): a new journal
    numbers its records past it (:data:`~persistkit.backends._journal.NUMBERED_PAST`).
    A head that cannot be read counts for nothing here; the checkpoint that folds its
    pair quarantines it."""
    last = 0
    directory = backend._dir(FOLDED_NAMESPACE)
    try:
        entries = list(backend._os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not entry.name.endswith(SUFFIX) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            data = backend._read_at(None, f"{directory}/{entry.name}")
            seq = orjson.loads(data or b"null")["seq"]
        except (ValueError, TypeError, KeyError):
            continue
        if isinstance(seq, int) and not isinstance(seq, bool):
            last = max(last, seq)
    return last


_journal.FOLDERS.append(fold_journal)
_journal.NUMBERED_PAST.append(last_folded)


_read_cache: weakref.WeakKeyDictionary[
    FileBackend, dict[str, tuple[bytes | None, JournalPosition, PairFold]]
] = weakref.WeakKeyDictionary()
"""What this process derived last for each backend and pair: the folded head it began
with, how far into the journal it read, and the fold there; a read goes on from it.
By the backend object, not its ``id()``: a backend closed and collected must not
lend its entries to a new one that gets the same ``id()``."""


def _copy(fold: PairFold) -> PairFold:
    return replace(
        fold,
        schedule_rows=list(fold.schedule_rows),
        partial_rows=list(fold.partial_rows),
        raw=dict(fold.raw),
        known=None if fold.known is None else set(fold.known),
    )


async def journal_rows(backend: FileBackend, pair: str, kind: str) -> list[list[Any]]:
    """``kind``'s rows of ``pair`` on a file root: its folded head's and those of the
    journal's records after it, oldest first. Reads only the journal's new records
    since this process's last read of the pair (unless a checkpoint replaced it), and
    of those decodes only the ones that hold the pair's stored name (``/{pair}/``: a
    pair whose name starts or ends with this one's is another), and in them only the
    pair's writes and :data:`_RECORD_KEYS`: a first read of a full journal costs a
    byte search of it, not a parse of every record."""
    key = folded_key(pair)
    journal = backend.journal
    cache = _read_cache.setdefault(backend, {})
    while True:
        found = await backend.get(key)
        head = None if found is None else found.data
        cached = cache.get(pair)
        if cached is not None and cached[0] == head:
            position: JournalPosition | None = cached[1]
            fold = _copy(cached[2])
        else:
            try:
                position, fold = None, PairFold.decode(head)
            except ValueError as exc:
                # The next checkpoint quarantines it; meanwhile the journal's events count.
                logger.warning("persistkit: %s is damaged (%s)", key, exc)
                position, fold = None, PairFold()
        end, records = journal.records_after(position, f"/{pair}/", _RECORD_KEYS)
        if end is not None and position is not None and end.journal != position.journal:
            # A checkpoint replaced the journal since: its records are in the new head.
            cache.pop(pair, None)
            continue
        if position is None and end is not None:
            fold = _rebased(fold, end.next_seq, key)
        again = await backend.get(key)
        # The same head on both sides: no checkpoint folded the records read meanwhile
        # (a checkpoint writes the heads before it replaces the journal).
        if (None if again is None else again.data) == head:
            break
    derive({pair: fold}, records, only=pair)
    if end is not None:
        cache[pair] = (head, end, _copy(fold))
    return fold.schedule_rows if kind == "schedule" else fold.partial_rows

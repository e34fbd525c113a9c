"""Statistics events on the file backend, derived from the commit journal after the fact.

PROTOTYPE (branch ``stats-journal``). On a file root every commit is already one
journal record holding the new value of every key it wrote, in one order shared
by every process, with its commit time; the journal forgets records only at a
checkpoint. So a pair's events need not be derived inside the tick: they are a
function of the pair's facts (its scheduled row, its partial levels, its
signal) as of some sequence number and of the records after it. The tick pays
almost nothing:

- :data:`EVENT_TIME_KEY`, the event time (the configured clock's, else the
  tick's), rides in every record that writes a row with events, changed or not
  (whether it changed is known only against the record before it, which another
  process may commit after the write). A record without it records no events:
  that marks the commits of a process with the statistics off.
- :data:`SIGNAL_NOTES_KEY` rides only when a signal written in the tick is
  removed or replaced by another id in the same tick (a fill closed at once):
  the ``(id, pending_at)`` of every signal the tick wrote, which the last value
  cannot tell.

A checkpoint, before it forgets its records, folds them into each pair's
folded head :func:`folded_key` (:data:`~persistkit.backends._journal.FOLDERS`):
the pair's facts, its newest events, and the last sequence number they cover.
It writes the heads as files before its ``syncfs``; a crash in between keeps
the journal, and folding it again skips what the heads already cover. A reader
(:func:`journal_rows`) takes the folded head and derives the events of the
records after it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import TypeAdapter, ValidationError

from persistkit._config import DEFAULT_EVENT_LIMIT
from persistkit._domains.events import (
    EVENT_TIME_KEY,
    FOLDED_NAMESPACE,
    SEEDS_KEY,
    SIGNAL_NOTES_KEY,
    LevelsFacts,
    ScheduleFacts,
    SignalFacts,
    levels_facts,
    partial_events,
    schedule_events,
    schedule_facts,
    signal_facts,
)
from persistkit.backends import _journal
from persistkit.models import PartialData, ScheduledSignalRow, SignalRow

if TYPE_CHECKING:
    from persistkit.backends._file import FileBackend
    from persistkit.backends._journal import JournalRecord

__all__ = ["FOLDED_FORMAT", "PairFold", "derive", "fold_journal", "folded_key", "journal_rows"]

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


@dataclass(slots=True)
class PairFold:
    """A pair's facts and events as of record ``seq`` (0: before any record)."""

    seq: int = 0
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
        its bytes are not one."""
        if data is None:
            return cls()  # knows nothing: the seeds tell
        # PROTOTYPE: shapes checked loosely; a landable version validates with a model.
        try:
            raw = orjson.loads(data)
            facts = raw["facts"]
            if (
                raw["format"] != FOLDED_FORMAT
                or not isinstance(raw["seq"], int)
                or not isinstance(raw["limit"], int)
            ):
                raise ValueError(f"not a folded head of format {FOLDED_FORMAT}")
            return cls(
                seq=raw["seq"],
                limit=raw["limit"],
                schedule=None if facts["schedule"] is None else tuple(facts["schedule"]),
                levels={sid: (tuple(p), tuple(loss)) for sid, (p, loss) in facts["levels"].items()},
                signal=None if facts["signal"] is None else tuple(facts["signal"]),
                schedule_rows=list(raw["schedule"]),
                partial_rows=list(raw["partial"]),
                known=None,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"a damaged folded statistics head: {exc}") from exc


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
            if record.seq <= fold.seq:
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
            fold.seq = record.seq


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
            folds[pair] = PairFold.decode(data)
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
    last = records[-1].seq
    written: dict[str, bytes] = {}
    for pair, fold in folds.items():
        if pair not in had and not fold.limit:
            # Statistics off for it (no stamped record): no file. With one, a head even
            # without events: it keeps the facts of the records about to be forgotten,
            # which the writer's later records (seeded once) depend on.
            continue
        fold.seq = max(fold.seq, last)
        written[folded_key(pair)] = fold.encode()
    return written


_journal.FOLDERS.append(fold_journal)


_read_cache: dict[tuple[int, str], tuple[bytes | None, tuple[int, int, int, int], PairFold]] = {}
"""What this process derived last for each (backend, pair): the folded head it began
with, how far into the journal it read, and the fold there; a read goes on from it."""


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
    since this process's last read of the pair (unless a checkpoint replaced it)."""
    key = folded_key(pair)
    journal = backend.journal
    cache_key = (id(backend), pair)
    while True:
        found = await backend.get(key)
        head = None if found is None else found.data
        cached = _read_cache.get(cache_key)
        if cached is not None and cached[0] == head:
            position: tuple[int, int, int, int] | None = cached[1]
            fold = _copy(cached[2])
        else:
            try:
                position, fold = None, PairFold.decode(head)
            except ValueError as exc:
                # The next checkpoint quarantines it; meanwhile the journal's events count.
                logger.warning("persistkit: %s is damaged (%s)", key, exc)
                position, fold = None, PairFold()
        end, records = journal.records_after(position)
        if end is not None and position is not None and end[:2] != position[:2]:
            # A checkpoint replaced the journal since: its records are in the new head.
            _read_cache.pop(cache_key, None)
            continue
        again = await backend.get(key)
        # The same head on both sides: no checkpoint folded the records read meanwhile
        # (a checkpoint writes the heads before it replaces the journal).
        if (None if again is None else again.data) == head:
            break
    derive({pair: fold}, records, only=pair)
    if end is not None:
        _read_cache[cache_key] = (head, end, _copy(fold))
    return fold.schedule_rows if kind == "schedule" else fold.partial_rows

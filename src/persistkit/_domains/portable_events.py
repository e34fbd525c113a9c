"""A root's statistics in the form every backend reads: what ``migrate`` and ``export`` copy.

The memory, Redis and S3 backends keep each pair's events in its logs,
``stats/{pair}/`` (:func:`~persistkit._domains.events.stored_rows`). A file root
keeps them where its commit journal puts them (see
:mod:`persistkit._domains.journal_events`): logs written by earlier versions,
each pair's folded head (``_persistkit/events/pairs/{pair}``, with the journal
sequence number it covers, a number of THAT root's journal), and the records
after it, which no key holds yet. Copied key by key, the events of the unfolded
records would be lost, a folded head would skip the destination's own records
up to its source's sequence number, and a backend other than a file root would
not read it at all.

So a copy source presents every pair's statistics as logs of
:func:`~persistkit._domains.events.pair_log_values`: all the events
``Schedule.get_data`` and ``Partial.get_data`` read there (the logs, then the
folded head's and those derived from the journal's records, as many as a
checkpoint would keep), derived at the commit point the copy is read at, and
it copies no key of ``_persistkit/events/``. A file root that receives them has
no folded head for the pair: its next write of the pair's rows seeds the
derivation from its committed rows (``_seed``), and it reads the copied logs
followed by its own journal's events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from persistkit._config import DEFAULT_EVENT_LIMIT
from persistkit._domains.events import (
    EVENTS_NAMESPACE,
    FOLDED_NAMESPACE,
    KINDS,
    PAIR_LOGS,
    EventKind,
    pair_log_values,
    stored_rows,
)
from persistkit._domains.journal_events import PairFold, derive
from persistkit._store import PersistBase, SegmentName
from persistkit.backends._base import SNAPSHOT_ATTEMPTS, Backend, Snapshot
from persistkit.backends._file import FileBackend
from persistkit.backends._journal import JournalRecord
from persistkit.backends._memory import MemoryBackend
from persistkit.errors import SnapshotError

__all__ = ["PortableState", "portable_snapshot", "portable_values"]

_DERIVED_PREFIX = f"{EVENTS_NAMESPACE}/"
_FOLDED_PREFIX = f"{FOLDED_NAMESPACE}/"
_STATS_PREFIX = f"{PAIR_LOGS.domain}/"


@dataclass(slots=True)
class PortableState:
    """Values with every pair's statistics in its logs, and what could not be carried."""

    values: dict[str, bytes]
    """Key -> bytes, sorted by key: no ``_persistkit/events/`` key, the pairs' logs
    written anew where the statistics had to be gathered."""
    changed_at: dict[str, float] = field(default_factory=dict)
    """For each log key written anew: when its newest ingredient changed (epoch seconds)."""
    pairs: list[str] = field(default_factory=list)
    """The pairs whose logs were written anew."""
    problems: list[str] = field(default_factory=list)
    """Statistics the source itself cannot read (a damaged folded head or log), in words:
    left out of the copy as its readers leave them out."""


def _pair_of_log_key(key: str) -> str | None:
    """The pair whose logs ``key`` belongs to (format 3 or the layout before it), else ``None``."""
    parts = key.split("/")
    if parts[0] != PAIR_LOGS.domain:
        return None
    if len(parts) == 3:
        return parts[1]
    if len(parts) == 4 and parts[1] in {kind.name for kind in KINDS}:
        return parts[2]
    return None


async def portable_values(
    values: Mapping[str, bytes], records: Sequence[JournalRecord] = ()
) -> PortableState:
    """``values`` (a whole backend's, at one commit point) with each pair's statistics in
    its logs, derived from them and from ``records`` (the journal's at that point).

    Values with no key under ``_persistkit/events/`` and no record are given back as
    they are: only a file root's statistics need gathering.
    """
    heads = {
        key[len(_FOLDED_PREFIX) :]: data
        for key, data in values.items()
        if key.startswith(_FOLDED_PREFIX)
    }
    derived = any(key.startswith(_DERIVED_PREFIX) for key in values)
    state = PortableState(dict(values))
    if not derived and not records:
        return state
    folds: dict[str, PairFold] = {}
    for pair, data in heads.items():
        try:
            folds[pair] = PairFold.decode(data)
        except ValueError as exc:
            # Read as the source reads it: its events are lost there too (its next
            # checkpoint quarantines it); the journal's still count.
            state.problems.append(f"{FOLDED_NAMESPACE}/{pair}: {exc}; its events are not copied")
            folds[pair] = PairFold()
    derive(folds, records)
    logs = MemoryBackend("portable-statistics")
    for key, data in values.items():
        if key.startswith(_STATS_PREFIX):
            await logs.put(key, data)
    for pair, fold in sorted(folds.items()):
        keep = fold.limit or DEFAULT_EVENT_LIMIT  # what a checkpoint keeps of the fold
        rows: dict[str, list[Any]] = {
            kind.name: await _stored(logs, pair, kind) + _fold_rows(fold, kind.name)[-keep:]
            for kind in KINDS
        }
        if not any(rows.values()):
            continue  # no event anywhere: nothing to carry (a destination seeds its facts)
        for key in [key for key in state.values if _pair_of_log_key(key) == pair]:
            del state.values[key]
        state.values.update(pair_log_values(pair, rows))
        state.pairs.append(pair)
    async for entry in logs.list_quarantine(""):
        state.problems.append(f"{entry.key}: {entry.reason}; its events are not copied")
    for key in [key for key in state.values if key.startswith(_DERIVED_PREFIX)]:
        del state.values[key]
    state.values = dict(sorted(state.values.items()))
    return state


def _fold_rows(fold: PairFold, kind_name: str) -> list[list[Any]]:
    return fold.schedule_rows if kind_name == "schedule" else fold.partial_rows


async def _stored(logs: MemoryBackend, pair: str, kind: EventKind) -> list[Any]:
    """``kind``'s rows in ``pair``'s logs among the copied values, read as a reader reads them."""
    log: PersistBase[Any] = PersistBase(
        SegmentName(f"{PAIR_LOGS.domain}/{pair}"), backend=logs, model=PAIR_LOGS.schema
    )
    legacy: PersistBase[Any] = PersistBase(
        SegmentName(f"{kind.legacy.domain}/{pair}"), backend=logs, model=kind.legacy.schema
    )
    return [list(row) for row in await stored_rows(kind, log, legacy)]


async def portable_snapshot(backend: Backend) -> tuple[Snapshot, PortableState]:
    """``backend.snapshot()`` with every pair's statistics in its logs (:func:`portable_values`).

    On a file root the events are derived from the records of the journal read at
    the snapshot's own commit point. A checkpoint that folded records past that
    point while the files were read (its heads written, its journal not yet
    replaced) makes it read again, up to ``SNAPSHOT_ATTEMPTS`` times.
    """
    if not isinstance(backend, FileBackend):
        snapshot = await backend.snapshot()
        state = await portable_values(snapshot.values)
        return _with(snapshot, state), state
    for _ in range(SNAPSHOT_ATTEMPTS):
        snapshot, cut = await backend.snapshot_and_cut()
        if cut.generation is not None and any(
            _covers_past(snapshot.values.get(key), cut.seq)
            for key in snapshot.values
            if key.startswith(_FOLDED_PREFIX)
        ):
            continue
        state = await portable_values(snapshot.values, cut.records)
        for pair in state.pairs:
            times = [
                record.time_ns / 1e9
                for record in cut.records
                if any(_is_row_of(key, pair) for key in record.writes)
            ]
            for key in (f"{FOLDED_NAMESPACE}/{pair}", f"{PAIR_LOGS.domain}/{pair}/head"):
                found = await backend.changed_at(key)
                if found is not None:
                    times.append(found)
            if times:
                newest = max(times)
                state.changed_at.update(
                    (key, newest) for key in state.values if _pair_of_log_key(key) == pair
                )
        return _with(snapshot, state), state
    raise SnapshotError(
        f"{backend.root}: a checkpoint folded the statistics past the commit point read, "
        f"during each of {SNAPSHOT_ATTEMPTS} reads; nothing was read. Run it again"
    )


def _is_row_of(key: str, pair: str) -> bool:
    domain, _, rest = key.partition("/")
    return domain in ("signal", "schedule", "partial") and rest.split("/", 1)[0] == pair


def _covers_past(head: bytes | None, seq: int) -> bool:
    try:
        return PairFold.decode(head).seq > seq
    except ValueError:
        return False  # damaged: read as the source reads it (see portable_values)


def _with(snapshot: Snapshot, state: PortableState) -> Snapshot:
    """``snapshot`` holding ``state``'s values: a key it wrote anew is not pending."""
    values = snapshot.values
    kept = {key for key in snapshot.pending if state.values.get(key) == values.get(key)}
    return replace(
        snapshot,
        values=state.values,
        pending=frozenset(kept),
        committed_at={key: when for key, when in snapshot.committed_at.items() if key in kept},
    )

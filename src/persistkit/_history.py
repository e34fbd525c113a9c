"""What a backend's history holds, whatever the backend: commits in order, with their times.

A backend with :attr:`~persistkit.backends.Backend.keeps_history` returns a
:class:`RecordedHistory` from :meth:`~persistkit.backends.Backend.history`: the
state at the oldest moment it still knows (``base``) and every commit since, in
commit order. Commit times never go backwards (each is at least the one before),
so "the value at time ``t``" is the value after the last commit at or before ``t``.

A tick committed with inputs (``session.tick(inputs=...)``,
``session.record_inputs(...)``) carries them under a key of :data:`TICKS_NAMESPACE`
in the same commit; :meth:`RecordedHistory.ticks` lists those commits. A tick
split by :meth:`LiveSession.commit_now <persistkit.LiveSession.commit_now>`
records its inputs with its first part; each later part carries a record with
the same session and time and its ``part`` number (2, 3 ...), so that a replay
runs the tick once and compares it with all its parts.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from persistkit.errors import HistoryUnavailableError

__all__ = [
    "TICKS_NAMESPACE",
    "Change",
    "Commit",
    "PointInTime",
    "RecordedHistory",
    "RecordedTick",
    "encode_tick",
    "tick_key",
    "to_ns",
]

TICKS_NAMESPACE = "_persistkit/ticks"
"""Where a tick's inputs ride in its commit: ``_persistkit/ticks/{session}``.

Not a domain: replays, digests and divergence checks leave it out of the state."""

PointInTime = int | _dt.datetime
"""Epoch milliseconds, or an aware :class:`datetime.datetime`."""


def tick_key(session: str) -> str:
    """The key under which a tick of ``session`` records its inputs."""
    from persistkit._names import encode_segment  # names imports the errors only; kept local

    return f"{TICKS_NAMESPACE}/{encode_segment(session)}"


def encode_tick(session: str, at_ns: int, inputs: Any, **tags: str) -> bytes:
    """The bytes a tick records: its session, its time, its inputs and ``tags`` (a replay's
    ``mode``...). ``at_ns`` is the tick's clock (:mod:`persistkit._clock`), which its replay
    runs under again.

    Refuses, like every stored value, what JSON cannot carry exactly.
    """
    from persistkit import _codec as codec

    return codec.encode({"session": session, "at": at_ns, "inputs": inputs, **tags})


def to_ns(moment: PointInTime) -> int:
    """Nanoseconds since the epoch of ``moment`` (epoch milliseconds or an aware datetime).

    A naive datetime is refused: which time zone it meant cannot be guessed.
    """
    if isinstance(moment, bool):
        raise TypeError("a point in time is epoch milliseconds or an aware datetime, not a bool")
    if isinstance(moment, int):
        return moment * 1_000_000
    if isinstance(moment, _dt.datetime):
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(
                f"{moment!r} has no time zone; give an aware datetime (tzinfo=timezone.utc)"
            )
        delta = moment - _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    raise TypeError(
        f"a point in time is epoch milliseconds (int) or an aware datetime, "
        f"not {type(moment).__name__}"
    )


def format_ns(time_ns: int) -> str:
    """``2026-11-30T09:12:03.123456Z``: the UTC time of ``time_ns``, to the microsecond.

    Rounded up, so that the time shown, given back as ``as_of``, includes the
    commit it was shown for.
    """
    microseconds = -(-time_ns // 1_000)
    moment = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC) + _dt.timedelta(microseconds=microseconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Commit:
    """One commit in the history: its global sequence number, time and writes."""

    seq: int
    time_ns: int
    writes: Mapping[str, bytes | None]
    """Key -> new bytes (``None``: removed)."""

    @property
    def tick(self) -> RecordedTick | None:
        """The tick this commit recorded (with its inputs), if it is one."""
        for key, data in self.writes.items():
            if data is not None and key.startswith(TICKS_NAMESPACE + "/"):
                record = orjson.loads(data)
                at = record.get("at")
                part = record.get("part", "1")
                return RecordedTick(
                    self,
                    str(record.get("session")),
                    record.get("inputs"),
                    at if isinstance(at, int) else self.time_ns,
                    int(part) if isinstance(part, str) and part.isdigit() else 1,
                )
        return None


@dataclass(frozen=True, slots=True)
class Change:
    """One change of one key: what ``persistkit history KEY`` lists."""

    seq: int
    time_ns: int
    data: bytes | None
    """The new bytes; ``None``: removed."""
    tick: str | None
    """The session whose tick made it (with its inputs recorded), else ``None``."""


@dataclass(frozen=True, slots=True)
class RecordedTick:
    """A commit that recorded tick inputs: what a replay feeds its strategy."""

    commit: Commit
    session: str
    inputs: Any
    at_ns: int
    """The tick's clock: when it began (its commit time, for older records)."""
    part: int = 1
    """Which commit of its tick this is: 1, or 2, 3 ... after ``commit_now()``."""


@dataclass(slots=True)
class RecordedHistory:
    """The history a backend keeps: a base state and the commits after it, in order."""

    start_ns: int
    """The time of ``base``: the oldest moment the history can answer for."""
    base_seq: int
    """The last commit folded into ``base``."""
    base: dict[str, bytes]
    commits: list[Commit]
    """Every commit after ``base_seq`` still held, in order of ``seq``."""
    missing: list[tuple[int, int]] = field(default_factory=list)
    """Ranges ``[first, last]`` of commit numbers the history lost (damage, removal)."""

    def _check_time(self, time_ns: int) -> None:
        if time_ns < self.start_ns:
            raise HistoryUnavailableError(
                f"the history begins at {format_ns(self.start_ns)}; nothing is known of "
                f"{format_ns(time_ns)} (retention pruned it, or history began later)"
            )

    def state_at(self, time_ns: int) -> dict[str, bytes]:
        """Every key's bytes after the last commit at or before ``time_ns``."""
        self._check_time(time_ns)
        state = dict(self.base)
        for commit in self.commits:
            if commit.time_ns > time_ns:
                break
            apply_writes(state, commit.writes)
        return state

    def value_at(self, key: str, time_ns: int) -> bytes | None:
        """``key``'s bytes at ``time_ns`` (``None``: absent then)."""
        self._check_time(time_ns)
        value = self.base.get(key)
        for commit in self.commits:
            if commit.time_ns > time_ns:
                break
            if key in commit.writes:
                value = commit.writes[key]
        return value

    def changes_of(self, key: str) -> list[Change]:
        """Each change of ``key``, oldest first (the base counts as one when it holds the key)."""
        found = []
        if key in self.base:
            found.append(Change(self.base_seq, self.start_ns, self.base[key], None))
        for commit in self.commits:
            if key in commit.writes:
                tick = commit.tick
                found.append(
                    Change(
                        commit.seq,
                        commit.time_ns,
                        commit.writes[key],
                        tick.session if tick else None,
                    )
                )
        return found

    def ticks(self) -> Iterator[RecordedTick]:
        """The commits that recorded tick inputs, in order (a tick's first part only)."""
        for commit in self.commits:
            tick = commit.tick
            if tick is not None and tick.part == 1:
                yield tick

    @property
    def end_ns(self) -> int:
        """The time of the newest commit held (the base's when there is none)."""
        return self.commits[-1].time_ns if self.commits else self.start_ns


RECORD_ONLY_KEYS: set[str] = set()
"""Keys that ride in a commit's record for what is derived from the records (the
statistics' event time, say; see :data:`~persistkit.backends._journal.FOLDERS`), and
are no state: never in a process's view of the journal, so never read, listed,
snapshotted, written to a file, or in a state the history rebuilds. Registered at
import by the modules that write them."""


def drop_record_only(view: dict[str, Any]) -> None:
    """``view`` without the :data:`RECORD_ONLY_KEYS`."""
    for key in RECORD_ONLY_KEYS:
        view.pop(key, None)


def apply_writes(state: dict[str, bytes], writes: Mapping[str, bytes | None]) -> None:
    """``state`` after ``writes`` (``None`` removes; :data:`RECORD_ONLY_KEYS` are no state)."""
    for key, data in writes.items():
        if key in RECORD_ONLY_KEYS:
            continue
        if data is None:
            state.pop(key, None)
        else:
            state[key] = data


def unavailable(backend: object) -> HistoryUnavailableError:
    """The error of a backend that keeps no history."""
    return HistoryUnavailableError(
        f"{backend!r} keeps no history: point-in-time reads, `persistkit history` and "
        "replays need a backend with keeps_history (the file backend)"
    )

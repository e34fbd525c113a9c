"""Replay a recorded live run through a strategy: what would the changed version have done?

A live bot that records what it saw each tick (``session.tick(inputs=...)`` or
``session.record_inputs(...)``) leaves, in its root's history, every tick's
inputs next to the state it committed. :func:`replay` feeds those inputs, tick
by tick and in commit order, to a strategy under test::

    from persistkit.replay import replay
    summary = await replay(source="./dump/data", strategy=my_tick, start=t0, end=t1,
                           params={"min_edge_bps": 12})

``await my_tick(inputs, params)`` runs once per recorded tick in ``[start, end]``
inside a tick of its own, writing through the usual adapters. Those writes go to
an isolated namespace, never to the live data: memory by default, or ``target``
(a directory) under ``replay/{replay_run_id}/``. The replay starts from the live
state just before ``start``; commits in the window that were not ticks with
inputs (an operator's write, say) are applied as they happened.

After each tick the replayed state is compared with what the live run committed
at that tick: the first tick that differs is the summary's ``first_divergence``,
with the per-key differences. Replaying the unchanged strategy over its own
recording gives ``None``.

**Deterministic.** Inside a replay, :func:`now_ms` is the recorded commit time
of the tick (a virtual clock) and :func:`new_id` a deterministic id source, so
two replays of one window with one strategy and parameters commit byte-identical
state (equal ``state_digest``). Outside a replay they are the wall clock and a
fresh ULID: code that uses them (client order ids, statistics events) runs the
same in both. Statistics events take the clock and bound configured when the
replay starts (``configure(clock=..., event_limit=...)``), as a live session
does: a bot that gives its events market time is replayed under the same clock.

**Runs are recorded** in a registry (in the target, or in this process's memory):
each run with its status (``running``, then ``complete``, ``aborted`` or
``interrupted``), parameters, window and summary. A run id already there is
refused (it is the idempotency key), at most ``max_in_flight`` (5) runs run at
once per target, and a run whose process died (its lock is free) is marked
``interrupted`` at the next launch and never resumed. ``persistkit replay list``
and ``persistkit replay show RUN_ID`` read it.

Refusals (:class:`~persistkit.errors.ReplayConfigError`, ``.code``):
``INVALID_WINDOW`` (``start >= end``), ``TOO_MANY_VARIANTS`` (a sweep of more
than 200; more than 50 warns ``LARGE_SWEEP``), ``RUN_ID_EXISTS``,
``TOO_MANY_RUNS``, ``BAD_RUN_ID``, ``BAD_TARGET``. Warnings (:class:`ReplayWarning`,
also listed in ``summary.warnings``): ``WINDOW_CLAMPED`` (an ``end`` in the
future runs to now), ``TICK_SKIPPED`` (commits missing from the history are
skipped and counted in ``ticks_skipped``, never filled in), ``HISTORY_BEGINS_LATER``.
A source that cannot be read aborts the run with
:class:`~persistkit.errors.ReplaySourceError`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson

from persistkit._clock import TickClock, current_tick, new_id, now_ms, replay_run_id, ulid
from persistkit._config import Settings, current_settings, session_settings
from persistkit._domains.events import EVENTS_NAMESPACE
from persistkit._history import (
    TICKS_NAMESPACE,
    Commit,
    PointInTime,
    RecordedHistory,
    apply_writes,
    encode_tick,
    format_ns,
    tick_key,
    to_ns,
)
from persistkit._live.lock import InstanceLock
from persistkit._transaction import Transaction
from persistkit.backends._base import Backend
from persistkit.backends._file import FileBackend
from persistkit.backends._memory import MemoryBackend
from persistkit.errors import (
    EntityNotFoundError,
    HistoryUnavailableError,
    InstanceLockedError,
    ReplayConfigError,
    ReplaySourceError,
)

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "Divergence",
    "ReplaySummary",
    "ReplayWarning",
    "RunRegistry",
    "new_id",
    "now_ms",
    "replay",
    "replay_run_id",
    "replay_sweep",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_IN_FLIGHT = 5
SWEEP_WARN = 50
SWEEP_LIMIT = 200
REPLAY_DIR = "replay"
REGISTRY_DIR = ".runs"
_RUN_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")

Status = Literal["running", "complete", "aborted", "interrupted"]
Strategy = Callable[[Any, Mapping[str, Any]], Awaitable[object]]


class ReplayWarning(UserWarning):
    """A replay went on, with less than was asked: see ``summary.warnings``."""


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Divergence:
    """The first tick whose replayed state differs from what the live run committed."""

    seq: int
    """The recorded tick's commit number."""
    time: str
    """Its commit time (UTC, ISO 8601)."""
    session: str
    differences: dict[str, dict[str, Any]]
    """Key -> ``{"live": value, "replay": value}`` (``None``: absent) for each key that differs."""


@dataclass(slots=True)
class ReplaySummary:
    """What one replay did; also kept in the run registry."""

    replay_run_id: str
    mode: str = "replay"
    status: Status = "running"
    ticks_replayed: int = 0
    ticks_skipped: int = 0
    state_digest: str = ""
    """SHA-256 of the final replayed state (every key and its bytes, tick records left out)."""
    first_divergence: Divergence | None = None
    params: dict[str, Any] = field(default_factory=dict)
    start: str = ""
    end: str = ""
    source: str = ""
    target: str = "memory"
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the run registry -------------------------------------------------------------------------

_MEMORY_RUNS: dict[str, dict[str, Any]] = {}
"""The registry of replays kept in memory (``target=None``): one per process."""


class RunRegistry:
    """The runs of one target: ``{target}/replay/.runs/`` (or this process's memory).

    Records are written durably (the file backend's durable write); each
    running run holds a lock file, so a cold start tells a run whose process
    died (lock free) from one still going.
    """

    def __init__(self, target: str | None, *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        self.target = target
        self.max_in_flight = max_in_flight
        self._locks: dict[str, InstanceLock] = {}
        if target is None:
            self._records: FileBackend | None = None
            self.directory = ""
        else:
            self.directory = os.path.join(os.path.abspath(target), REPLAY_DIR, REGISTRY_DIR)
            self._records = FileBackend(self.directory, history=None)

    def _lock_for(self, run_id: str) -> InstanceLock:
        return InstanceLock(
            os.path.join(self.directory, "locks", f"{run_id}.lock"),
            purpose=f"replay run {run_id}",
            root=self.directory,
        )

    def _owner_alive(self, run_id: str) -> bool:
        if self.target is None:
            return True  # a memory run lives exactly as long as this process
        if run_id in self._locks:
            return True
        probe = self._lock_for(run_id)
        try:
            probe.acquire()
        except InstanceLockedError:
            return True
        probe.release()
        return False

    async def list(self) -> list[dict[str, Any]]:
        """Every run, oldest first; a running run whose owner is gone shows ``interrupted``."""
        if self._records is None:
            records = [dict(record) for record in _MEMORY_RUNS.values()]
        else:
            records = []
            async for key in self._records.scan("runs"):
                stored = await self._records.get(key)
                if stored is not None:
                    records.append(orjson.loads(stored.data))
        for record in records:
            if record["status"] == "running" and not self._owner_alive(record["replay_run_id"]):
                record["status"] = "interrupted"
        return sorted(records, key=lambda record: (record["started_at"], record["replay_run_id"]))

    async def get(self, run_id: str) -> dict[str, Any]:
        for record in await self.list():
            if record["replay_run_id"] == run_id:
                return record
        raise EntityNotFoundError(f"no replay run {run_id!r} in {self.describe()}")

    def describe(self) -> str:
        return "memory" if self.target is None else self.directory

    async def _save(self, record: dict[str, Any]) -> None:
        if self._records is None:
            _MEMORY_RUNS[record["replay_run_id"]] = record
        else:
            await self._records.put(f"runs/{record['replay_run_id']}", orjson.dumps(record))

    async def launch(self, record: dict[str, Any]) -> None:
        """Register a new run as ``running``, or refuse it (id taken, too many in flight).

        First marks the runs whose owner died ``interrupted`` (cold start).
        """
        run_id = record["replay_run_id"]
        launching = None if self.target is None else self._lock_for("launch")
        if launching is not None:
            deadline = time.monotonic() + 10
            while True:
                try:
                    launching.acquire()
                    break
                except InstanceLockedError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.01)
        try:
            running = 0
            for existing in await self.list():
                if existing["replay_run_id"] == run_id:
                    raise ReplayConfigError(
                        "RUN_ID_EXISTS",
                        f"replay run {run_id!r} exists already in {self.describe()} "
                        f"(status {existing['status']}); a run id is used once",
                    )
                if existing["status"] == "interrupted":
                    stored = await self._stored(existing["replay_run_id"])
                    if stored is not None and stored["status"] == "running":
                        stored["status"] = "interrupted"
                        stored["error"] = "its process stopped before the run ended"
                        await self._save(stored)
                        logger.warning(
                            "persistkit: replay run %s was interrupted (its process is gone); "
                            "it is not resumed",
                            existing["replay_run_id"],
                        )
                elif existing["status"] == "running":
                    running += 1
            if running >= self.max_in_flight:
                raise ReplayConfigError(
                    "TOO_MANY_RUNS",
                    f"{running} replay runs are in flight in {self.describe()} (at most "
                    f"{self.max_in_flight}); wait for one to end, then launch again",
                )
            if self.target is not None:
                lock = self._lock_for(run_id)
                lock.acquire()
                self._locks[run_id] = lock
            await self._save(record)
        finally:
            if launching is not None:
                launching.release()

    async def _stored(self, run_id: str) -> dict[str, Any] | None:
        if self._records is None:
            return _MEMORY_RUNS.get(run_id)
        stored = await self._records.get(f"runs/{run_id}")
        return None if stored is None else dict(orjson.loads(stored.data))

    async def finish(self, record: dict[str, Any]) -> None:
        """Record a run's end (its final status and summary) and release its lock."""
        try:
            await self._save(record)
        finally:
            lock = self._locks.pop(record["replay_run_id"], None)
            if lock is not None:
                lock.release()

    async def aclose(self) -> None:
        for lock in self._locks.values():
            lock.release()
        self._locks.clear()
        if self._records is not None:
            await self._records.aclose()


# -- replaying ------------------------------------------------------------------------------------


def _is_tick_record(key: str) -> bool:
    return key.startswith(TICKS_NAMESPACE + "/")


_DERIVED = ("stats/", EVENTS_NAMESPACE + "/")
"""Statistics kept beside the state: written in the commits on a memory root, derived
from the journal's records on a file root. Left out of the comparison: a replay on
either root compares the state, whichever way its statistics are kept."""


def _without_ticks(writes: Mapping[str, bytes | None]) -> dict[str, bytes | None]:
    return {
        key: data
        for key, data in writes.items()
        if not _is_tick_record(key) and not key.startswith(_DERIVED)
    }


def _decoded(data: bytes | None) -> Any:
    return None if data is None else orjson.loads(data)


def state_digest(state: Mapping[str, bytes]) -> str:
    """SHA-256 over every key and its bytes, in key order (tick records left out)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        if _is_tick_record(key):
            continue
        data = state[key]
        digest.update(f"{len(key)}:{key}:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


def _target_root(target: str | os.PathLike[str] | None) -> str | None:
    if target is None:
        return None
    text = os.fspath(target)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        raise ReplayConfigError(
            "BAD_TARGET",
            f"target {text!r}: a replay target is a directory (or file:// URL); "
            "replays into Redis or S3 are not supported yet",
        )
    return os.path.abspath(text)


def _new_run_id() -> str:
    # Always fresh, even when a replay launches another: run ids are keys, not replayed state.
    return "replay_" + ulid(time.time_ns() // 1_000_000, os.urandom(10))


def _absolute(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


def _check_run_id(run_id: str) -> None:
    if not _RUN_ID.match(run_id):
        raise ReplayConfigError(
            "BAD_RUN_ID",
            f"run id {run_id!r}: letters, digits, '.', '_' and '-', starting with a letter or "
            "digit, at most 100",
        )


@dataclass(slots=True)
class _Window:
    start_ns: int | None
    end_ns: int
    warnings: list[str]


def _window(start: PointInTime | None, end: PointInTime | None) -> _Window:
    """Check and clamp the window before anything runs."""
    now = time.time_ns()
    start_ns = None if start is None else to_ns(start)
    end_ns = now if end is None else to_ns(end)
    if start_ns is not None and start_ns >= end_ns:
        raise ReplayConfigError(
            "INVALID_WINDOW",
            f"start {format_ns(start_ns)} is not before end {format_ns(end_ns)}",
        )
    notes = []
    if end_ns > now:
        note = f"WINDOW_CLAMPED: end {format_ns(end_ns)} is in the future; replayed up to now"
        warnings.warn(note, ReplayWarning, stacklevel=3)
        notes.append(note)
        end_ns = now
        if start_ns is not None and start_ns >= end_ns:
            raise ReplayConfigError(
                "INVALID_WINDOW", f"start {format_ns(start_ns)} is in the future"
            )
    return _Window(start_ns, end_ns, notes)


async def _load_source(source: str | os.PathLike[str] | Backend) -> tuple[Backend, RecordedHistory]:
    """The source's backend and its history, or :class:`ReplaySourceError`."""
    if isinstance(source, Backend):
        backend = source
    else:
        root = os.fspath(source)
        if root.startswith("file://"):
            root = root[len("file://") :]
        if not os.path.isdir(root):  # noqa: ASYNC240 - one stat, before anything runs
            raise ReplaySourceError(f"replay source {root!r} is not a directory; nothing replayed")
        backend = FileBackend(root, read_only=True)
    try:
        history = await backend.history_records()
    except HistoryUnavailableError as exc:
        raise ReplaySourceError(f"replay source {backend.url}: {exc}") from exc
    except OSError as exc:
        raise ReplaySourceError(
            f"replay source {backend.url} cannot be read: {exc}; nothing replayed"
        ) from exc
    finally:
        if backend is not source:
            await backend.aclose()  # only its root and history are needed from here
    if not history.commits and history.base_seq <= 0:
        raise ReplaySourceError(f"replay source {backend.url} has no recorded history")
    return backend, history


async def replay(
    source: str | os.PathLike[str] | Backend,
    strategy: Strategy,
    start: PointInTime | None = None,
    end: PointInTime | None = None,
    params: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    target: str | os.PathLike[str] | None = None,
    *,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
) -> ReplaySummary:
    """Replay the ticks recorded in ``source`` between ``start`` and ``end`` through ``strategy``.

    ``start``/``end``: epoch milliseconds or aware datetimes (default: the
    history's beginning, and now). See the module docstring for the rules.
    """
    window = _window(start, end)
    registry = RunRegistry(_target_root(target), max_in_flight=max_in_flight)
    try:
        return await _replay_registered(
            source, None, strategy, window, dict(params or {}), run_id, registry
        )
    finally:
        await registry.aclose()


async def replay_sweep(
    source: str | os.PathLike[str] | Backend,
    strategy: Strategy,
    start: PointInTime | None = None,
    end: PointInTime | None = None,
    variants: Sequence[Mapping[str, Any]] = (),
    target: str | os.PathLike[str] | None = None,
    *,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
) -> list[ReplaySummary]:
    """One replay per parameter set in ``variants`` (none: one with ``{}``), each its own run.

    More than 50 variants warns (``LARGE_SWEEP``); more than 200 is refused
    (``TOO_MANY_VARIANTS``) before anything runs. The source is read once.
    """
    if len(variants) > SWEEP_LIMIT:
        raise ReplayConfigError(
            "TOO_MANY_VARIANTS",
            f"a sweep of {len(variants)} variants exceeds the limit of {SWEEP_LIMIT}; "
            "split it, or have it approved and run it in parts",
        )
    if len(variants) > SWEEP_WARN:
        warnings.warn(
            f"LARGE_SWEEP: {len(variants)} variants (more than {SWEEP_WARN})",
            ReplayWarning,
            stacklevel=2,
        )
    window = _window(start, end)
    registry = RunRegistry(_target_root(target), max_in_flight=max_in_flight)
    try:
        loaded = await _load_source(source)
        return [
            await _replay_registered(
                source, loaded, strategy, window, dict(variant), None, registry
            )
            for variant in (variants or [{}])
        ]
    finally:
        await registry.aclose()


async def _replay_registered(
    source: str | os.PathLike[str] | Backend,
    loaded: tuple[Backend, RecordedHistory] | None,
    strategy: Strategy,
    window: _Window,
    params: dict[str, Any],
    run_id: str | None,
    registry: RunRegistry,
) -> ReplaySummary:
    if run_id is None:
        run_id = _new_run_id()
    _check_run_id(run_id)
    summary = ReplaySummary(
        replay_run_id=run_id,
        params=params,
        end=format_ns(window.end_ns),
        start="" if window.start_ns is None else format_ns(window.start_ns),
        source=source.url if isinstance(source, Backend) else _absolute(source),
        target="memory" if registry.target is None else registry.target,
        warnings=list(window.warnings),
    )
    record = {**summary.as_dict(), "started_at": time.time(), "finished_at": None}
    await registry.launch(record)
    run_backend: Backend | None = None
    try:
        if loaded is None:
            loaded = await _load_source(source)
        if registry.target is None:
            run_backend = MemoryBackend(run_id)
        else:
            run_backend = FileBackend(os.path.join(registry.target, REPLAY_DIR, run_id))
        # The strategy's stores name the root as the caller does (a link, say):
        # the replayed state is mounted there.
        base_dir = source.root if isinstance(source, FileBackend) else summary.source
        # The statistics' clock and bound as configured, as a live session takes them.
        configured = current_settings()
        scope = Settings(
            mode="backtest" if isinstance(run_backend, MemoryBackend) else "live",
            base_dir=base_dir,
            backend=run_backend,
            clock=configured.clock,
            event_limit=configured.event_limit,
        )
        await _run(loaded[0], loaded[1], strategy, window, params, summary, scope)
        summary.status = "complete"
    except (asyncio.CancelledError, KeyboardInterrupt):
        summary.status = "interrupted"
        summary.error = "cancelled while running"
        raise
    except BaseException as exc:
        summary.status = "aborted"
        summary.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if run_backend is not None:
            await run_backend.aclose()
        record.update(summary.as_dict(), finished_at=time.time())
        await registry.finish(record)
    logger.info(
        "persistkit: replay %s %s: %d ticks replayed, %d skipped, divergence %s",
        run_id,
        summary.status,
        summary.ticks_replayed,
        summary.ticks_skipped,
        "none" if summary.first_divergence is None else f"at #{summary.first_divergence.seq}",
    )
    return summary


async def _run(
    source: Backend,
    history: RecordedHistory,
    strategy: Strategy,
    window: _Window,
    params: dict[str, Any],
    summary: ReplaySummary,
    scope: Settings,
) -> None:
    start_ns = window.start_ns
    if start_ns is None or start_ns <= history.start_ns:
        if start_ns is not None and start_ns < history.start_ns:
            note = (
                f"HISTORY_BEGINS_LATER: the history of {source.url} begins at "
                f"{format_ns(history.start_ns)}; replayed from there"
            )
            warnings.warn(note, ReplayWarning, stacklevel=4)
            summary.warnings.append(note)
        start_ns = history.start_ns + 1
        summary.start = format_ns(start_ns)
    live = {k: v for k, v in history.state_at(start_ns - 1).items() if not _is_tick_record(k)}
    later_parts, later_part_writes = _tick_parts(history.commits)
    replayed_ticks: set[int] = set()
    replayed = dict(live)
    run_backend = scope.backend
    if replayed:
        await run_backend.commit(dict(replayed))
    previous_seq = history.base_seq
    for commit in history.commits:
        if commit.time_ns < start_ns:
            previous_seq = commit.seq
            continue
        if commit.time_ns > window.end_ns:
            break
        if commit.seq > previous_seq + 1:
            lost = commit.seq - previous_seq - 1
            summary.ticks_skipped += lost
            note = (
                f"TICK_SKIPPED: commits #{previous_seq + 1}-#{commit.seq - 1} are missing from "
                f"the history; {lost} skipped, not filled in"
            )
            warnings.warn(note, ReplayWarning, stacklevel=4)
            logger.warning("persistkit: replay %s: %s", summary.replay_run_id, note)
            summary.warnings.append(note)
        previous_seq = commit.seq
        if later_parts.get(commit.seq) in replayed_ticks:
            continue  # compared with the first part, which its replay ran
        live_writes = {**_without_ticks(commit.writes), **later_part_writes.get(commit.seq, {})}
        apply_writes(live, live_writes)
        tick = commit.tick
        if tick is None or tick.part > 1:
            # Not a tick that recorded inputs (an operator's write, a part of a tick
            # whose first part ran before the window): it happened.
            if live_writes:
                await run_backend.commit(live_writes)
                apply_writes(replayed, live_writes)
            continue
        session = tick.session
        clock = TickClock(tick.at_ns, session, summary.replay_run_id)
        writes = await _replay_tick(run_backend, scope, clock, strategy, tick.inputs, params)
        replayed_ticks.add(commit.seq)
        apply_writes(replayed, writes)
        summary.ticks_replayed += 1
        if summary.first_divergence is None:
            differences = {
                key: {"live": _decoded(live.get(key)), "replay": _decoded(replayed.get(key))}
                for key in sorted(set(live_writes) | set(writes))
                if live.get(key) != replayed.get(key)
            }
            if differences:
                summary.first_divergence = Divergence(
                    commit.seq, format_ns(commit.time_ns), session, differences
                )
    summary.state_digest = state_digest(replayed)


def _tick_parts(
    commits: Sequence[Commit],
) -> tuple[dict[int, int], dict[int, dict[str, bytes | None]]]:
    """The later parts of ticks split by ``commit_now()``: each one's first part, by seq,
    and what they wrote, by the first part's seq.

    The replay runs such a tick once and compares it with all its parts; a part
    whose first one it did not run (before the window) happened, as it happened.
    """
    first_parts: dict[tuple[str, int], int] = {}
    later: dict[int, int] = {}
    writes: dict[int, dict[str, bytes | None]] = {}
    for commit in commits:
        tick = commit.tick
        if tick is None:
            continue
        moment = (tick.session, tick.at_ns)
        if tick.part == 1:
            first_parts[moment] = commit.seq
            continue
        first = first_parts.get(moment)
        if first is not None:
            later[commit.seq] = first
            writes.setdefault(first, {}).update(_without_ticks(commit.writes))
    return later, writes


async def _replay_tick(
    backend: Backend,
    scope: Settings,
    clock: TickClock,
    strategy: Strategy,
    inputs: Any,
    params: Mapping[str, Any],
) -> dict[str, bytes | None]:
    """One recorded tick through ``strategy``, in a tick of its own; returns what it wrote."""
    scope_token = session_settings.set(scope)
    clock_token = current_tick.set(clock)
    try:
        tick = Transaction(backend)
        async with tick:
            tick.stage_now(
                tick_key(clock.session),
                encode_tick(
                    clock.session,
                    clock.time_ns,
                    inputs,
                    mode="replay",
                    replay_run_id=clock.run_id or "",
                ),
            )
            await strategy(inputs, params)
        return _without_ticks(tick.writes)
    finally:
        current_tick.reset(clock_token)
        session_settings.reset(scope_token)

"""The live session: restore everything at start, commit each tick atomically, run alone.

A live bot restarts after a crash and continues as if nothing happened::

    session = LiveSession([("BTCUSDT", "trend")], risk_name="main")
    state = await session.start()          # lock, recover, restore, self-heal
    state.risk_positions                    # restored before anything else is returned
    async with session.tick():              # one atomic commit per tick
        await PersistSignalAdapter.write_signal_data(row, "BTCUSDT", "trend")
        await PersistRiskAdapter.write_position_data(positions, "main")
    await session.aclose()

or let :meth:`LiveSession.run` drive the ticks: it stops cleanly on SIGTERM or
SIGINT, after committing the tick in progress.

A session owns its backend: code inside its ticks, its ``run()`` and an
``async with session:`` block writes to the session's backend through a context
variable, whatever ``configure()`` does later elsewhere in the process, and two
sessions in one process never write into each other.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from persistkit.backends.base import Backend
from persistkit.backends.memory import MemoryBackend
from persistkit.clock import TickClock, current_tick
from persistkit.config import DEFAULT_BASE_DIR, Settings, configure, session_settings
from persistkit.domains import (
    PersistPartialAdapter,
    PersistRiskAdapter,
    PersistScheduleAdapter,
    PersistSignalAdapter,
)
from persistkit.errors import ConflictError, StoreClosedError
from persistkit.history import PointInTime, encode_tick, tick_key, to_ns
from persistkit.live.lock import RangeLocks, descriptor_limit_error
from persistkit.models import PartialData, RiskActivePosition, ScheduledSignalRow, SignalRow
from persistkit.names import encode_segment, join_pair
from persistkit.store import InitReport
from persistkit.transaction import Transaction, transaction_for

__all__ = ["LOCK_DIR", "LOCK_FILE", "LiveSession", "PairState", "RestoredState"]

logger = logging.getLogger("persistkit")

_NO_INPUTS: Any = object()
"""``tick()`` without ``inputs=``: nothing recorded (``None`` is a value)."""

LOCK_DIR = ".locks"
LOCK_FILE = "sessions.lock"
"""In ``{base_dir}/.locks/``: every pair's and risk profile's lock, one byte range each."""


@dataclass(frozen=True, slots=True)
class PairState:
    """What one (symbol, strategy) pair had when the bot stopped."""

    symbol: str
    strategy: str
    signal: SignalRow | None
    """The open signal, or ``None``."""
    scheduled: ScheduledSignalRow | None
    """The limit entry waiting for its price, or ``None``."""
    partial: dict[str, PartialData]
    """Signal id -> profit/loss levels already reported."""


@dataclass(frozen=True, slots=True)
class RestoredState:
    """Everything a live session restored, and what self-healing found on the way."""

    risk_name: str
    risk_positions: list[tuple[str, RiskActivePosition]]
    """The risk profile's active positions, restored first."""
    pairs: list[PairState]
    reports: list[InitReport] = field(default_factory=list)
    """One self-healing report per store that was opened."""
    replayed_commits: int = 0
    """Journal records of a crashed run replayed at startup (file backend)."""

    def pair(self, symbol: str, strategy: str) -> PairState:
        for state in self.pairs:
            if (state.symbol, state.strategy) == (symbol, strategy):
                return state
        raise KeyError(f"{symbol}/{strategy} is not a pair of this session")

    @property
    def healed(self) -> bool:
        """True when self-healing found nothing to repair."""
        return all(report.clean for report in self.reports)

    def inconsistencies(self) -> list[str]:
        """Signals without their risk position and positions without their signal.

        Positions of pairs this session does not run are not checked: another
        strategy sharing the risk profile owns them.
        """
        problems = []
        by_signal = {position.signal_id: position for _, position in self.risk_positions}
        mine = {(state.symbol, state.strategy): state for state in self.pairs}
        for state in self.pairs:
            if state.signal is not None and state.signal.id not in by_signal:
                problems.append(
                    f"{state.symbol}/{state.strategy}: signal {state.signal.id} "
                    "has no risk position"
                )
        for key, position in self.risk_positions:
            owner = mine.get((position.symbol, position.strategy_name))
            if owner is None:
                continue
            if owner.signal is None or owner.signal.id != position.signal_id:
                problems.append(
                    f"{position.symbol}/{position.strategy_name}: risk position {key} "
                    f"(signal {position.signal_id}) has no open signal"
                )
        return problems


class _SessionTick(Transaction):
    """A tick: the session's transaction, with the session's settings in force inside it."""

    __slots__ = ("_clock_token", "_inputs", "_scope", "_scope_token", "clock")

    def __init__(
        self, settings: Settings, clock: TickClock, inputs: tuple[str, bytes] | None = None
    ) -> None:
        super().__init__(settings.backend)
        self._scope = settings
        self._scope_token: contextvars.Token[Settings | None] | None = None
        self.clock = clock
        """The tick's time and id source (:mod:`persistkit.clock`), recorded with its inputs."""
        self._clock_token: contextvars.Token[TickClock | None] | None = None
        self._inputs = inputs

    async def __aenter__(self) -> Transaction:
        self._scope_token = session_settings.set(self._scope)
        self._clock_token = current_tick.set(self.clock)
        try:
            entered = await super().__aenter__()
        except BaseException:
            current_tick.reset(self._clock_token)
            session_settings.reset(self._scope_token)
            raise
        if self._inputs is not None:
            self.stage_now(*self._inputs)
        return entered

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await super().__aexit__(*exc_info)  # type: ignore[arg-type]
        finally:
            if self._clock_token is not None:
                current_tick.reset(self._clock_token)
            if self._scope_token is not None:
                session_settings.reset(self._scope_token)


class LiveSession:
    """A live bot's state for some (symbol, strategy) pairs and their risk profile.

    - :meth:`start` takes the one-instance lock, selects live mode, replays the
      commits a crash left unapplied, runs every store's self-healing scan and
      returns the restored state (risk positions first).
    - :meth:`tick` is the atomic commit of one tick across the four domains;
      ``tick(inputs=...)`` (or :meth:`record_inputs`) records what the tick saw
      in the same commit, for :mod:`persistkit.replay`.
    - :meth:`run` calls a tick function in a loop until SIGTERM or SIGINT.
    - :meth:`state_at` reads the four domains as they were at a past time.

    Inside its ticks (and ``run()``, and ``async with session:``) every store
    without an explicit ``backend=`` writes to this session's backend, whatever
    :func:`~persistkit.configure` or another session does meanwhile. A write
    there to a store on another backend raises
    :class:`~persistkit.errors.CrossBackendError`: it could not be part of the
    tick's one commit. A session on a memory backend warns that its state dies
    with the process.

    The locks live in one file, ``{base_dir}/.locks/sessions.lock``: one byte
    range per pair and one for the risk profile, so that two sessions (in two
    processes or in one) never run the same strategy nor update the same risk
    profile. However many pairs, a session holds one file descriptor for them.
    They are local locks even when the state lives in Redis or S3: one
    instance per machine is guaranteed, not one per cluster.
    """

    def __init__(
        self,
        pairs: Iterable[tuple[str, str]],
        risk_name: str,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        backend: Backend | str | None = None,
    ) -> None:
        self.pairs: list[tuple[str, str]] = [(str(s), str(t)) for s, t in pairs]
        if not self.pairs:
            raise ValueError("a live session needs at least one (symbol, strategy) pair")
        self.risk_name = risk_name
        self.base_dir = os.path.abspath(os.fspath(base_dir or DEFAULT_BASE_DIR))
        # Names are checked now, before any lock file or directory is created.
        lock_names = [f"pair-{join_pair(symbol, strategy)}" for symbol, strategy in self.pairs]
        lock_names.append(f"risk-{encode_segment(risk_name)}")
        self._locks = RangeLocks(
            os.path.join(self.base_dir, LOCK_DIR, LOCK_FILE), lock_names, root=self.base_dir
        )
        self._backend_choice = backend
        self._backend: Backend | None = None
        self._settings: Settings | None = None
        self._block_token: contextvars.Token[Settings | None] | None = None
        self._started = False
        self.restored: RestoredState | None = None
        """What :meth:`start` restored (also its return value)."""
        self._last_tick_ns = 0

    def __repr__(self) -> str:
        state = "started" if self._started else "stopped"
        return f"LiveSession({self.pairs!r}, risk_name={self.risk_name!r}, {state})"

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise StoreClosedError(f"{self!r} is not started")
        return self._backend

    # -- start -----------------------------------------------------------------------

    async def start(self) -> RestoredState:
        """Lock, recover and restore; see the class docstring."""
        if self._started:
            raise RuntimeError(f"{self!r} is already started")
        try:
            return await self._start()
        except OSError as exc:
            limit = descriptor_limit_error(exc)
            if limit is None:
                raise
            raise limit from exc

    async def _start(self) -> RestoredState:
        self._locks.acquire(purpose="live session")
        try:
            settings = configure(mode="live", base_dir=self.base_dir, backend=self._backend_choice)
            self._backend = settings.backend
            self._settings = settings
            # Before any store reads: what stopped processes left is finished first.
            replayed = await self._backend.recover()
            token = session_settings.set(settings)  # restore from this session's backend
            try:
                state = await self._restore(replayed)
            finally:
                session_settings.reset(token)
        except BaseException:
            self._backend = self._settings = None
            self._release_locks()
            raise
        self._started = True
        self.restored = state
        level = logging.INFO if state.healed else logging.WARNING
        logger.log(
            level,
            "persistkit live session: %d risk positions and %d pairs restored, "
            "%d journal commits replayed, self-healing %s",
            len(state.risk_positions),
            len(state.pairs),
            replayed,
            "clean" if state.healed else "repaired something (see the reports)",
        )
        return state

    def _release_locks(self) -> None:
        self._locks.release()

    async def _restore(self, replayed: int) -> RestoredState:
        # Risk first: portfolio limits must hold before any signal is considered.
        positions = await PersistRiskAdapter.read_position_data(self.risk_name)
        pairs = []
        for symbol, strategy in self.pairs:
            pairs.append(
                PairState(
                    symbol=symbol,
                    strategy=strategy,
                    signal=await PersistSignalAdapter.read_signal_data(symbol, strategy),
                    scheduled=await PersistScheduleAdapter.read_schedule_data(symbol, strategy),
                    partial=await PersistPartialAdapter.read_partial_data(symbol, strategy),
                )
            )
        reports = [
            await store.wait_for_init()
            for adapter in (
                PersistRiskAdapter,
                PersistSignalAdapter,
                PersistScheduleAdapter,
                PersistPartialAdapter,
            )
            for store in adapter.memoized_stores()
        ]
        return RestoredState(self.risk_name, positions, pairs, reports, replayed)

    # -- ticks -----------------------------------------------------------------------------

    def tick(self, *, inputs: Any = _NO_INPUTS) -> Transaction:
        """``async with session.tick():`` commits every write in the block atomically.

        Inside the block the session's backend serves every store without an
        explicit ``backend=``, whatever ``configure()`` did since :meth:`start`.
        ``inputs`` (any JSON value: prices, signals) is what the bot saw this
        tick: recorded in the same commit, kept in the history, and what a
        replay (:mod:`persistkit.replay`) feeds the strategy. A value JSON cannot
        carry exactly is refused here, before the block runs.
        """
        self.backend  # noqa: B018 - raises StoreClosedError when not started
        assert self._settings is not None
        # The tick's clock: one time per tick, never before the previous tick's.
        self._last_tick_ns = max(time.time_ns(), self._last_tick_ns + 1)
        clock = TickClock(self._last_tick_ns, self.risk_name)
        if inputs is _NO_INPUTS:
            return _SessionTick(self._settings, clock)
        return _SessionTick(self._settings, clock, self._encoded_inputs(clock, inputs))

    def _encoded_inputs(self, clock: TickClock, inputs: Any) -> tuple[str, bytes]:
        return tick_key(self.risk_name), encode_tick(self.risk_name, clock.time_ns, inputs)

    def record_inputs(self, inputs: Any) -> None:
        """Record ``inputs`` with the tick in progress (one driven by :meth:`run`, say).

        Same as ``session.tick(inputs=...)``; called again in one tick, the last
        call wins. Outside a tick of this session it raises ``RuntimeError``.
        """
        active = transaction_for(self.backend)
        if not isinstance(active, _SessionTick) or active.finished:
            raise RuntimeError(
                "record_inputs() records what a tick saw: call it inside "
                "`async with session.tick():` or a tick function run by session.run()"
            )
        active.stage_now(*self._encoded_inputs(active.clock, inputs))

    async def state_at(self, moment: PointInTime) -> RestoredState:
        """The four domains of this session's pairs as they were at ``moment``.

        ``moment`` is epoch milliseconds or an aware ``datetime``; the state is
        the one the last commit at or before it left (from the backend's
        history: :class:`~persistkit.errors.HistoryUnavailableError` without
        one). Read through the same adapters as :meth:`start`; nothing is written.
        """
        backend = self.backend
        assert self._settings is not None
        time_ns = to_ns(moment)
        history = await backend.history_records(until_ns=time_ns)
        snapshot = MemoryBackend("state_at")
        for key, data in history.state_at(time_ns).items():
            await snapshot.put(key, data)
        scope = Settings(mode="backtest", base_dir=self._settings.base_dir, backend=snapshot)
        token = session_settings.set(scope)
        try:
            return await self._restore(0)
        finally:
            session_settings.reset(token)

    async def run(
        self,
        tick: Callable[[int], Awaitable[object]],
        *,
        interval: float = 1.0,
        ticks: int | None = None,
        after_commit: Callable[[int], object] | None = None,
        stop_signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    ) -> int:
        """Call ``tick(n)`` inside :meth:`tick` every ``interval`` seconds; returns ticks run.

        SIGTERM or SIGINT lets the tick in progress finish and commit, then
        closes the session (checkpoint, lock released) and returns, so that the
        process can exit 0. Reaching ``ticks`` (``None``: no bound) returns with
        the session still open. ``after_commit(n)`` runs once tick ``n`` is
        durable (to acknowledge it, say). Outside ``run`` the signals keep the
        process's own handlers.
        """
        self.backend  # noqa: B018 - raises StoreClosedError when not started
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in stop_signals:
            loop.add_signal_handler(signum, stopping.set)
        count = 0
        try:
            while not stopping.is_set() and (ticks is None or count < ticks):
                # A signal only sets the event, so the tick in progress runs to
                # its commit; the loop stops before the next one.
                await self._tick_until_committed(tick, count)
                if after_commit is not None:
                    after_commit(count)
                count += 1
                if interval > 0:
                    try:
                        await asyncio.wait_for(stopping.wait(), interval)
                    except TimeoutError:
                        pass
                else:
                    await asyncio.sleep(0)
        finally:
            for signum in stop_signals:
                loop.remove_signal_handler(signum)
        if stopping.is_set():
            await self.aclose()
        return count

    async def _tick_until_committed(
        self, tick: Callable[[int], Awaitable[object]], count: int, *, attempts: int = 100
    ) -> None:
        """Run ``tick(count)`` in a tick; again while it loses a compare-and-set race.

        A tick that raised :class:`ConflictError` committed nothing: another
        tick or process changed what it read, so it runs again on what is there.
        """
        for attempt in range(attempts):
            try:
                async with self.tick():
                    await tick(count)
                return
            except ConflictError:
                if attempt == attempts - 1:
                    raise
                logger.info(
                    "persistkit: tick %d lost a compare-and-set race; running it again", count
                )
                await asyncio.sleep(0)

    # -- stop ------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Make every commit durable in the entity files, then release the lock."""
        if not self._started:
            return
        self._started = False
        try:
            backend = self._backend
            if backend is not None and not backend.read_only:
                await backend.checkpoint()
        finally:
            self._backend = self._settings = None
            self._release_locks()

    async def __aenter__(self) -> Self:
        """Start, and run the ``async with`` block in this session's context (see :meth:`tick`)."""
        await self.start()
        self._block_token = session_settings.set(self._settings)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, self._block_token = self._block_token, None
        try:
            await self.aclose()
        finally:
            if token is not None:
                session_settings.reset(token)

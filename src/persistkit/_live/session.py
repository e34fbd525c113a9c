"""The live session: restore everything at start, commit each tick atomically, run alone.

A live bot restarts after a crash and continues as if nothing happened::

    session = LiveSession([("BTCUSDT", "trend")], risk_name="main")
    state = await session.start()          # lock, recover, restore, self-heal
    state.risk_positions                    # restored before anything else is returned
    async with session.tick():              # one atomic commit per tick
        await PersistSignalAdapter.write_signal_data(row, "BTCUSDT", "trend")
        await PersistRiskAdapter.write_position_data(positions, "main")
    await session.aclose()

Orders survive a crash the same way: an :class:`~persistkit.OrderIntent` is
committed before the order leaves (in a tick of its own, or with
:meth:`LiveSession.commit_now` inside a longer one); after a restart
``state.open_intents`` lists those whose outcome only the exchange knows, and
:meth:`LiveSession.reconcile` asks the exchange and records its answers.

or let :meth:`LiveSession.run` drive the ticks: it stops cleanly on SIGTERM or
SIGINT, after committing the tick in progress. A tick that hangs does not keep
it from stopping: a second signal, or ``DEFAULT_STOP_GRACE`` (5) seconds after
the first, cancels that tick before its commit (nothing of it is committed),
and ``run()`` raises :class:`~persistkit.errors.TickCancelledError`.

A session owns its backend: code inside its ticks, its ``run()`` and an
``async with session:`` block writes to the session's backend through a context
variable, whatever ``configure()`` does later elsewhere in the process, and two
sessions in one process never write into each other.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

from persistkit._clock import TickClock, current_tick
from persistkit._config import (
    Settings,
    configure,
    current_settings,
    environment_base_dir,
    session_settings,
)
from persistkit._domains import (
    PersistIntentAdapter,
    PersistPartialAdapter,
    PersistRiskAdapter,
    PersistScheduleAdapter,
    PersistSignalAdapter,
)
from persistkit._domains.intent import PairInDoubt, TickIntents, check_same_order, tick_intents
from persistkit._history import PointInTime, encode_tick, tick_key, to_ns
from persistkit._live.lease import (
    DEFAULT_LEASE_TTL,
    SessionLeases,
    check_seconds,
    lease_clock,
    wait_poll_delay,
)
from persistkit._live.lock import RangeLocks, descriptor_limit_error
from persistkit._names import encode_segment, join_pair
from persistkit._store import InitReport
from persistkit._transaction import Transaction, active_transaction, transaction_for
from persistkit.backends._backtest_kit import find_backtest_kit_state
from persistkit.backends._base import Backend, Lease, fencing
from persistkit.backends._file import FileBackend
from persistkit.backends._memory import MemoryBackend
from persistkit.errors import (
    ConflictError,
    InstanceLockedError,
    IntentConflictError,
    LeaseLostError,
    StoreClosedError,
    TickCancelledError,
    UnreconciledIntentsError,
)
from persistkit.models import (
    OrderIntent,
    PartialData,
    RiskActivePosition,
    ScheduledSignalRow,
    SignalRow,
)

__all__ = [
    "DEFAULT_STOP_GRACE",
    "LOCK_DIR",
    "LOCK_FILE",
    "NOT_FOUND_REASON",
    "IntentLookup",
    "LiveSession",
    "PairState",
    "RestoredState",
]

logger = logging.getLogger(__name__)

_NO_INPUTS: Any = object()
"""``tick()`` without ``inputs=``: nothing recorded (``None`` is a value)."""

LOCK_DIR = ".locks"
LOCK_FILE = "sessions.lock"
"""In ``{base_dir}/.locks/``: every pair's and risk profile's lock, one byte range each."""

IntentLookup = Callable[[OrderIntent], Awaitable[OrderIntent | None]]
"""What :meth:`LiveSession.reconcile` asks about each intent in doubt: the intent as the
exchange knows it (found by its client order id), or ``None`` when it has no such order."""

NOT_FOUND_REASON = "not found at the exchange by its client order id when reconciled"
"""The ``reason`` of an intent :meth:`LiveSession.reconcile` cancelled (never sent)."""

DEFAULT_STOP_GRACE = 5.0
"""Seconds :meth:`LiveSession.run` lets a tick run on after the first stop signal.

Then a tick whose commit has not begun is cancelled. Five seconds leaves room
for the commit and the close inside the shortest common stop timeouts before
a SIGKILL (``docker stop``: 10 s; Kubernetes: 30 s; systemd: 90 s), while a
tick waiting a moment for an exchange still finishes."""


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
    open_intents: list[OrderIntent] = field(default_factory=list)
    """Order intents whose outcome only the exchange knows (``pending``, ``sent``, ``unknown``)."""
    intents_lost: str | None = None
    """Where start quarantined the pair's intents (corrupt), or ``None``. When set,
    :attr:`open_intents` is empty because the orders are unknown, not because there are none."""


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
    open_intents: list[OrderIntent] = field(default_factory=list)
    """Every pair's order intents whose outcome only the exchange knows (``pending``,
    ``sent``, ``unknown``), pair by pair in the order first written: the orders a crash may have
    left in flight. :meth:`LiveSession.reconcile` asks the exchange about them."""
    lost_intents: dict[tuple[str, str], str] = field(default_factory=dict)
    """(symbol, strategy) -> where start quarantined the pair's intents (their value was
    corrupt): its orders from before the restart are unknown, so its new intents are
    refused until :meth:`LiveSession.reconcile`, and :attr:`healed` is ``False``."""
    foreign_state: list[str] = field(default_factory=list)
    """State in the root persistkit does not read (a backtest-kit 19.x layout): each
    entry says what, and the command that migrates it. The session starts flat
    for it, so :attr:`healed` is ``False``."""

    def pair(self, symbol: str, strategy: str) -> PairState:
        for state in self.pairs:
            if (state.symbol, state.strategy) == (symbol, strategy):
                return state
        raise KeyError(f"{symbol}/{strategy} is not a pair of this session")

    @property
    def healed(self) -> bool:
        """True when self-healing found nothing to repair and no state it cannot read."""
        return (
            not self.foreign_state
            and not self.lost_intents
            and all(report.clean for report in self.reports)
        )

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


class _TickInFlight:
    """The tick :meth:`LiveSession.run` is running: has its commit begun, must it not?"""

    __slots__ = ("cancelled", "committing", "parts_committed")

    def __init__(self) -> None:
        self.committing = False
        """Its commit has begun: it is left to finish, whatever the signals say."""
        self.cancelled: str | None = None
        """Why it was cancelled; its commit is then refused, should it still try."""
        self.parts_committed = 0
        """Commits it made before its end (:meth:`LiveSession.commit_now`): these stay."""


class _SessionTick(Transaction):
    """A tick: the session's transaction, with the session's settings, leases and clock in force.

    With leases, a tick starts and commits only while they cover it: past their
    deadline it raises :class:`LeaseLostError` and commits nothing.
    """

    __slots__ = (
        "_clock_token",
        "_fence_token",
        "_flight",
        "_inputs",
        "_intents",
        "_intents_token",
        "_leases",
        "_records_inputs",
        "_scope",
        "_scope_token",
        "clock",
        "parts_committed",
    )

    def __init__(
        self,
        settings: Settings,
        leases: SessionLeases | None,
        clock: TickClock,
        *,
        inputs: tuple[str, bytes] | None = None,
        flight: _TickInFlight | None = None,
        intents: TickIntents | None = None,
    ) -> None:
        super().__init__(settings.backend)
        self._scope = settings
        self._leases = leases
        self._scope_token: contextvars.Token[Settings | None] | None = None
        self._fence_token: contextvars.Token[tuple[Lease, ...]] | None = None
        self._flight = flight
        self.clock = clock
        """The tick's time and id source (:mod:`persistkit._clock`), recorded with its inputs."""
        self._clock_token: contextvars.Token[TickClock | None] | None = None
        self._inputs = inputs
        self._intents = intents
        """What a new order intent of the tick is checked against."""
        self._intents_token: contextvars.Token[TickIntents | None] | None = None
        self.parts_committed = 0
        """Commits :meth:`commit_staged` made before the tick's end."""
        self._records_inputs = False

    async def __aenter__(self) -> Transaction:
        leases = self._leases
        if leases is not None:
            leases.check()
            self._fence_token = fencing.set(leases.current)
        self._scope_token = session_settings.set(self._scope)
        self._clock_token = current_tick.set(self.clock)
        self._intents_token = tick_intents.set(self._intents)
        try:
            entered = await super().__aenter__()
        except BaseException:
            self._reset_scope()
            raise
        if self._inputs is not None:
            self.stage_now(*self._inputs)
        return entered

    async def commit(self) -> None:
        flight, leases = self._flight, self._leases
        # Checked and marked without suspending: a stop signal is handled on
        # this loop, so it sees the commit either not begun or begun.
        if flight is not None and flight.cancelled is not None:
            # A tick that swallowed its cancellation and returned anyway.
            raise TickCancelledError(
                f"a cancelled tick tried to commit ({flight.cancelled}); refused, "
                "nothing of it was committed",
                reason=flight.cancelled,
            )
        if leases is not None:
            leases.check()  # the block may have outlasted the deadline: then nothing is sent
        if flight is not None:
            flight.committing = True
        if self.parts_committed == 0:
            self._records_inputs = self.lookup(tick_key(self.clock.session))[0]
        elif self._records_inputs:
            # A later part of a tick that recorded inputs: marked as such, so a
            # replay runs the tick once and compares it with all its parts.
            self.include(
                tick_key(self.clock.session),
                encode_tick(
                    self.clock.session,
                    self.clock.time_ns,
                    None,
                    part=str(self.parts_committed + 1),
                ),
            )
        if leases is None:
            await super().commit()
            return
        try:
            await super().commit()
        except LeaseLostError as refused:  # the backend's fence: a newer holder exists
            leases.lose(refused)
            raise

    async def commit_staged(self) -> None:
        await super().commit_staged()
        self.parts_committed += 1
        flight = self._flight
        if flight is not None:
            # What follows is a new part: a forced stop may cancel it again.
            flight.committing = False
            flight.parts_committed = self.parts_committed

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await super().__aexit__(*exc_info)  # type: ignore[arg-type]
        finally:
            self._reset_scope()

    def _reset_scope(self) -> None:
        if self._scope_token is not None:
            session_settings.reset(self._scope_token)
            self._scope_token = None
        if self._fence_token is not None:
            fencing.reset(self._fence_token)
            self._fence_token = None
        if self._clock_token is not None:
            current_tick.reset(self._clock_token)
            self._clock_token = None
        if self._intents_token is not None:
            tick_intents.reset(self._intents_token)
            self._intents_token = None


def _reconciled(intent: OrderIntent, answer: OrderIntent | None, reason: str) -> OrderIntent:
    """``intent`` as the exchange's ``answer`` leaves it (``None``: it has no such order)."""
    if answer is None:
        return intent.model_copy(update={"status": "cancelled", "reason": reason})
    if not isinstance(answer, OrderIntent):
        raise TypeError(
            f"the reconcile lookup of {intent.client_order_id!r} returned {answer!r}: it must "
            "return the intent as the exchange has it (an OrderIntent) or None; nothing was "
            "committed"
        )
    if answer.client_order_id != intent.client_order_id:
        raise IntentConflictError(
            f"the reconcile lookup of {intent.client_order_id!r} answered with order "
            f"{answer.client_order_id!r}; nothing was committed",
            client_order_id=intent.client_order_id,
        )
    # Another symbol or strategy would be filed under another pair's intents,
    # leaving this one in doubt: an answer must be the order that was asked about.
    check_same_order(intent, answer)
    if answer.unresolved:
        raise UnreconciledIntentsError(
            f"the reconcile lookup of {intent.client_order_id!r} answered {answer.status!r}: "
            "the exchange's answer is acked, filled, partially_filled, cancelled or rejected "
            "(or None: no such order); nothing was committed, the intent stays in doubt",
            pair=(intent.symbol, intent.strategy_name),
            client_order_ids=(intent.client_order_id,),
        )
    return answer


class _StopRequest:
    """What the stop signals asked of :meth:`LiveSession.run`: to stop, then to stop now."""

    def __init__(self, loop: asyncio.AbstractEventLoop, grace: float | None) -> None:
        self._loop = loop
        self._grace = grace
        self._grace_timer: asyncio.TimerHandle | None = None
        self.requested = asyncio.Event()
        """Stop before the next tick (the first signal)."""
        self.forced = asyncio.Event()
        """Stop the tick in progress (a second signal, or the grace ran out)."""
        self.reason = ""
        """What forced the stop, for the log and the error."""
        self._next: asyncio.Event | None = None

    def on_signal(self, signum: signal.Signals) -> None:
        if self._next is not None:
            self._next.set()
        if not self.requested.is_set():
            self.requested.set()
            logger.info(
                "persistkit: %s: stopping once the tick in progress, if any, has committed "
                "(a second signal%s cancels a tick that does not finish)",
                signum.name,
                "" if self._grace is None else f", or {self._grace:g} s from now,",
            )
            if self._grace is not None:
                self._grace_timer = self._loop.call_later(
                    self._grace,
                    self._force,
                    f"the stop grace of {self._grace:g} s after {signum.name} ran out",
                )
        elif not self.forced.is_set():
            self._force(f"a second stop signal ({signum.name}) arrived")

    def _force(self, reason: str) -> None:
        self.reason = reason
        self.forced.set()

    def next_signal(self) -> asyncio.Event:
        """An event the next stop signal sets."""
        self._next = asyncio.Event()
        return self._next

    def close(self) -> None:
        if self._grace_timer is not None:
            self._grace_timer.cancel()


class StopSignalRelay(Protocol):
    """Stop signals caught elsewhere, handed to :meth:`LiveSession.run` on its loop."""

    def deliver_to(self, handler: Callable[[signal.Signals], None] | None) -> None:
        """From now on call ``handler(signum)`` on the loop for each signal (``None``: stop)."""


stop_signal_relay: contextvars.ContextVar[StopSignalRelay | None] = contextvars.ContextVar(
    "persistkit_stop_signal_relay", default=None
)
"""Set by the blocking ``LiveSession.run`` (:mod:`persistkit.sync`): its loop runs in a
thread of its own, where no signal handler can be installed, so the main thread's
handlers relay the signals instead of ``run()`` installing its own."""


class _ForcedStop(Exception):
    """Internal: the tick in progress was cancelled by a forced stop."""

    def __init__(self, tick: int, reason: str, parts_committed: int = 0) -> None:
        super().__init__(reason)
        self.tick = tick
        self.reason = reason
        self.parts_committed = parts_committed


class LiveSession:
    """A live bot's state for some (symbol, strategy) pairs and their risk profile.

    - :meth:`start` takes the one-instance lock, selects live mode, replays the
      commits a crash left unapplied, runs every store's self-healing scan and
      returns the restored state (risk positions first).
    - :meth:`tick` is the atomic commit of one tick across the domains;
      ``tick(inputs=...)`` (or :meth:`record_inputs`) records what the tick saw
      in the same commit, for :mod:`persistkit.replay`.
    - :meth:`run` calls a tick function in a loop until SIGTERM or SIGINT;
      :meth:`commit_now` commits what a tick staged so far (an order intent,
      before the order leaves) and lets it go on.
    - :meth:`reconcile` asks the exchange about the order intents a crash left
      in doubt (:attr:`RestoredState.open_intents`) and records its answers;
      until then a tick refuses new intents for those pairs.
    - :meth:`state_at` reads the domains (order intents included) as they were at a past time.

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

    On a backend shared across hosts (Redis, S3: :attr:`Backend.leases`), the
    session also takes one lease per lock name in the backend itself, so that
    one instance runs per cluster, not per machine; sessions with disjoint
    pairs still run side by side. A second instance anywhere (another host,
    another data root, the same backend) gets
    :class:`~persistkit.errors.InstanceLockedError` naming the holder (host,
    pid, since, lease expiry). The leases outlive their last renewal by
    ``lease_ttl`` seconds (default 15): the session renews them every third of
    that, in the background, and gives them back on close; a holder killed
    with ``kill -9`` keeps them until they lapse. A holder that cannot renew
    stops committing a third of ``lease_ttl`` before they can lapse (timed on
    its own clock, from before each renewal was sent): its ticks, and every
    later one, raise :class:`~persistkit.errors.LeaseLostError`, and so does
    :meth:`run`. Each lease carries a fencing token that only grows; the
    session's writes carry the tokens of its leases (the
    :func:`~persistkit.backends.fenced_leases` of its context, set inside its ticks,
    its ``run()`` and its ``async with`` block), so the backend refuses a
    write of a holder whose lease has passed to another (each backend's
    docstring says what it checks, and when).

    ``lease_wait`` (seconds, default 0: fail fast) makes :meth:`start` wait
    that long for another instance to stop (its leases, or its local lock on
    this machine) before raising ``InstanceLockedError``: the new instance of
    a rolling deploy takes over as soon as the old one closes, and never
    commits while the old one can.
    """

    def __init__(
        self,
        pairs: Iterable[tuple[str, str]],
        risk_name: str,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        backend: Backend | str | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        lease_wait: float = 0.0,
    ) -> None:
        self.lease_ttl = check_seconds("lease_ttl", lease_ttl)
        """Seconds a lease in a shared backend outlives its last renewal."""
        self.lease_wait = check_seconds("lease_wait", lease_wait, zero=True)
        """Seconds :meth:`start` waits for another instance to stop before it gives up."""
        self.pairs: list[tuple[str, str]] = [(str(s), str(t)) for s, t in pairs]
        if not self.pairs:
            raise ValueError("a live session needs at least one (symbol, strategy) pair")
        self.risk_name = risk_name
        self.base_dir = (
            environment_base_dir() if not base_dir else os.path.abspath(os.fspath(base_dir))
        )
        # Names are checked now, before any lock file or directory is created.
        lock_names = [f"pair-{join_pair(symbol, strategy)}" for symbol, strategy in self.pairs]
        lock_names.append(f"risk-{encode_segment(risk_name)}")
        self._locks = RangeLocks(
            os.path.join(self.base_dir, LOCK_DIR, LOCK_FILE), lock_names, root=self.base_dir
        )
        self._backend_choice = backend
        self._backend: Backend | None = None
        self._leases: SessionLeases | None = None
        self._block_fence: contextvars.Token[tuple[Lease, ...]] | None = None
        self._settings: Settings | None = None
        self._block_token: contextvars.Token[Settings | None] | None = None
        self._started = False
        self._last_tick_ns = 0
        self._in_doubt: dict[tuple[str, str], PairInDoubt] = {}
        """Pairs -> what their new intents wait for until the reconcile."""
        self.restored: RestoredState | None = None
        """What :meth:`start` restored (also its return value)."""

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
        give_up_at = lease_clock() + self.lease_wait

        async def lock_locally() -> None:
            self._locks.acquire(purpose="live session")

        await self._while_locked(lock_locally, give_up_at)
        try:
            # The statistics' clock and bound, as configured before the session started.
            events = current_settings()
            settings = configure(
                mode="live",
                base_dir=self.base_dir,
                backend=self._backend_choice,
                clock=events.clock,
                event_limit=events.event_limit,
                final_intent_limit=events.final_intent_limit,
                final_intent_ttl=events.final_intent_ttl,
            )
            self._backend = settings.backend
            self._settings = settings
            if self._backend.leases:
                # The local lock first: on one machine a rival is refused without a request.
                self._leases = SessionLeases(
                    self._backend, self._locks.names, ttl=self.lease_ttl, holder=self._holder()
                )
                await self._while_locked(self._leases.acquire, give_up_at)
                self._leases.start_renewing()
            fence = fencing.set(self._fence())
            try:
                # Before any store reads: what stopped processes left is finished first.
                replayed = await self._backend.recover()
                token = session_settings.set(settings)  # restore from this session's backend
                try:
                    state = await self._restore(replayed)
                finally:
                    session_settings.reset(token)
            finally:
                fencing.reset(fence)
        except BaseException:
            self._backend = self._settings = None
            await self._release_locks()
            raise
        self._started = True
        self.restored = state
        self._in_doubt = {
            (pair.symbol, pair.strategy): PairInDoubt(
                frozenset(i.client_order_id for i in pair.open_intents), pair.intents_lost
            )
            for pair in state.pairs
            if pair.open_intents or pair.intents_lost is not None
        }
        for warning in state.foreign_state:
            logger.warning("persistkit live session: %s", warning)
        for (symbol, strategy), lost in state.lost_intents.items():
            logger.error(
                "persistkit live session: the order intents of %s/%s were corrupt and are "
                "quarantined (%s): its orders from before the restart are unknown and may stand "
                "at the exchange; its new intents are refused until session.reconcile()",
                symbol,
                strategy,
                lost,
            )
        level = logging.INFO if state.healed else logging.WARNING
        logger.log(
            level,
            "persistkit live session: %d risk positions and %d pairs restored, "
            "%d order intents in doubt, %d journal commits replayed, self-healing %s",
            len(state.risk_positions),
            len(state.pairs),
            len(state.open_intents),
            replayed,
            "clean"
            if state.healed
            else "found state it does not read (above)"
            if state.foreign_state
            else "repaired something (see the reports)",
        )
        return state

    async def _while_locked(
        self, attempt: Callable[[], Awaitable[None]], give_up_at: float
    ) -> None:
        """``attempt()``, again while another instance holds a lock, until ``give_up_at``."""
        waited = False
        while True:
            try:
                await attempt()
                return
            except InstanceLockedError as locked:
                remaining = give_up_at - lease_clock()
                if remaining <= 0:
                    raise
                if not waited:
                    waited = True
                    logger.info(
                        "persistkit: waiting up to %.1f s for the other instance to stop: %s",
                        remaining,
                        locked,
                    )
                await asyncio.sleep(wait_poll_delay(self.lease_ttl, remaining))

    def _holder(self) -> dict[str, object]:
        """Who this session is, as a lease names its holder to a rival (``since``: its leases')."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "root": self.base_dir}

    def _fence(self) -> tuple[Lease, ...]:
        """The leases the writes of this session carry (none on a local backend)."""
        return () if self._leases is None else self._leases.current

    async def _release_locks(self) -> None:
        leases, self._leases = self._leases, None
        try:
            if leases is not None:
                await leases.release()
        finally:
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
                    open_intents=await PersistIntentAdapter.read_unresolved_intents(
                        symbol, strategy
                    ),
                    intents_lost=await PersistIntentAdapter.lost_at_start(symbol, strategy),
                )
            )
        reports = [
            await store.wait_for_init()
            for adapter in (
                PersistRiskAdapter,
                PersistSignalAdapter,
                PersistScheduleAdapter,
                PersistPartialAdapter,
                PersistIntentAdapter,
            )
            for store in adapter.memoized_stores()
        ]
        open_intents = [intent for pair in pairs for intent in pair.open_intents]
        foreign = []
        backend = self._backend
        if isinstance(backend, FileBackend):
            # Never flat in silence: a backtest-kit 19.x bot's state is in other files.
            found = find_backtest_kit_state(backend.root)
            if found:
                foreign.append(found.warning())
            if found.unreadable:
                foreign.append(found.unreadable_warning())
        return RestoredState(
            self.risk_name,
            positions,
            pairs,
            reports,
            replayed,
            open_intents=open_intents,
            foreign_state=foreign,
            lost_intents={
                (pair.symbol, pair.strategy): pair.intents_lost
                for pair in pairs
                if pair.intents_lost is not None
            },
        )

    # -- ticks -----------------------------------------------------------------------------

    def tick(self, *, inputs: Any = _NO_INPUTS, allow_unreconciled: bool = False) -> Transaction:
        """``async with session.tick():`` commits every write in the block atomically.

        Inside the block the session's backend serves every store without an
        explicit ``backend=``, whatever ``configure()`` did since :meth:`start`.

        ``inputs`` (any JSON value: prices, signals) is what the bot saw this
        tick: recorded in the same commit, kept in the history, and what a
        replay (:mod:`persistkit.replay`) feeds the strategy. A value JSON cannot
        carry exactly is refused here, before the block runs.

        A new order intent for a pair whose intents from before the restart
        are still in doubt raises :class:`~persistkit.errors.UnreconciledIntentsError`
        (see :meth:`reconcile`); ``allow_unreconciled=True`` lets this tick
        write it anyway. A new order intent for a pair the session does not run
        raises :class:`~persistkit.errors.PairNotInSessionError` (no restart
        would reconcile it). Updates of intents already stored are always allowed.
        """
        return self._new_tick(inputs, allow_unreconciled=allow_unreconciled)

    def _new_tick(
        self,
        inputs: Any = _NO_INPUTS,
        flight: _TickInFlight | None = None,
        *,
        allow_unreconciled: bool = False,
    ) -> _SessionTick:
        self.backend  # noqa: B018 - raises StoreClosedError when not started
        assert self._settings is not None
        # The tick's clock: one time per tick, never before the previous tick's.
        self._last_tick_ns = max(time.time_ns(), self._last_tick_ns + 1)
        clock = TickClock(self._last_tick_ns, self.risk_name)
        encoded = None if inputs is _NO_INPUTS else self._encoded_inputs(clock, inputs)
        intents = TickIntents(
            frozenset(self.pairs), {} if allow_unreconciled else dict(self._in_doubt)
        )
        return _SessionTick(
            self._settings,
            self._leases,
            clock,
            inputs=encoded,
            flight=flight,
            intents=intents,
        )

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

    async def commit_now(self) -> None:
        """Commit what the tick in progress staged so far, and let the tick go on.

        The commit point of an order: inside a tick function driven by
        :meth:`run` (where a nested ``session.tick()`` only joins the tick in
        progress), write the intent, ``await session.commit_now()``, and only
        then send the order::

            async def on_tick(n):
                intent = OrderIntent(client_order_id=new_client_order_id("trend"), ...)
                await PersistIntentAdapter.write_intent(intent)
                await session.commit_now()      # durable before the order leaves
                oid = await exchange.create_order(..., client_order_id=intent.client_order_id)
                await PersistIntentAdapter.write_intent(
                    intent.model_copy(update={"status": "acked", "exchange_order_id": oid}))

        Everything staged before the call (the intent, and whatever else the
        tick wrote: inputs, signal, risk) is one atomic commit, durable when it
        returns; the rest of the tick commits at its end, atomically too, or
        not at all. A stop that cancels the tick later cancels only the rest.
        A replay runs such a tick once and compares it with all its parts.

        Works the same in ``async with session.tick():``. Outside a tick of this
        session, or inside a transaction nested in it, it raises ``RuntimeError``.
        """
        active = active_transaction.get()
        tick = active
        while tick is not None and not (
            isinstance(tick, _SessionTick) and tick.backend is self.backend
        ):
            tick = tick._parent
        if tick is None or tick.finished:
            raise RuntimeError(
                "commit_now() commits the tick in progress: call it inside "
                "`async with session.tick():` or a tick function run by session.run()"
            )
        if active is not tick:
            raise RuntimeError(
                "commit_now() inside a transaction nested in the tick: its writes join the "
                "tick only when that block exits; call commit_now() after it"
            )
        await tick.commit_staged()

    async def reconcile(
        self, lookup: IntentLookup, *, reason: str = NOT_FOUND_REASON
    ) -> list[OrderIntent]:
        """Ask the exchange about every intent in doubt and record the answers in one tick.

        For each intent :meth:`start` restored in doubt (:attr:`RestoredState.open_intents`)
        and still ``pending``, ``sent`` or ``unknown``, ``await lookup(intent)``
        asks the exchange by its client order id and returns the intent as the
        exchange has it (its status and ``exchange_order_id``:
        ``intent.model_copy(update={...})``), or ``None`` when the exchange has
        no such order: the intent becomes ``cancelled`` with ``reason``, and the
        bot may send the order again under a new client order id. Every answer
        is committed in one tick, after the last lookup: a lookup that raises
        leaves every intent as it was (call again). Then new intents are allowed
        again for every pair, those whose intents start quarantined
        (:attr:`RestoredState.lost_intents`: nothing to ask about) included;
        what was lost is logged at WARNING.

        An intent this session wrote after its start is never asked about: its
        order may be on the wire right now (a tick between ``commit_now()`` and
        the ack), and the exchange's "no such order" would record it as never
        sent. Once a reconcile has committed, another asks about nothing.

        Returns the intents as recorded. An answer that is another order
        (another client order id, symbol, side...) raises
        :class:`~persistkit.errors.IntentConflictError`, and one still
        ``pending``, ``sent`` or ``unknown`` raises
        :class:`~persistkit.errors.UnreconciledIntentsError`: nothing is
        committed then.
        """
        answers: list[OrderIntent] = []
        async with self._new_tick(allow_unreconciled=True):
            for (symbol, strategy), waiting in self._in_doubt.items():
                for intent in await PersistIntentAdapter.read_unresolved_intents(symbol, strategy):
                    if intent.client_order_id not in waiting.client_order_ids:
                        continue  # written since the start: its tick is sending it now
                    answer = await lookup(intent)
                    resolved = _reconciled(intent, answer, reason)
                    answers.append(await PersistIntentAdapter.write_intent(resolved))
        for (symbol, strategy), waiting in self._in_doubt.items():
            if waiting.lost is not None:
                # Nothing can be asked about orders no one can read: the bot owns that risk now.
                logger.warning(
                    "persistkit: reconciled %s/%s without its order intents from before the "
                    "restart, lost to a corrupt value (quarantined: %s): any of its orders still "
                    "at the exchange is unknown to the bot; new intents are allowed again",
                    symbol,
                    strategy,
                    waiting.lost,
                )
        self._in_doubt = {}
        if answers:
            logger.info(
                "persistkit: %d order intents reconciled: %s",
                len(answers),
                ", ".join(f"{a.client_order_id} {a.status}" for a in answers),
            )
        return answers

    async def state_at(self, moment: PointInTime) -> RestoredState:
        """The domains of this session's pairs as they were at ``moment``.

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
        stop_grace: float | None = DEFAULT_STOP_GRACE,
    ) -> int:
        """Call ``tick(n)`` inside :meth:`tick` every ``interval`` seconds; returns ticks run.

        SIGTERM or SIGINT lets the tick in progress finish and commit, then
        closes the session (checkpoint, lock released) and returns, so that the
        process can exit 0. Reaching ``ticks`` (``None``: no bound) returns with
        the session still open. ``after_commit(n)`` runs once tick ``n`` is
        durable (to acknowledge it, say; awaited when it returns an awaitable).
        Outside ``run`` the signals keep the process's own handlers.

        A tick that does not finish (it awaits something that never returns)
        does not keep the process from stopping: a second stop signal, or
        ``stop_grace`` seconds after the first (default
        ``DEFAULT_STOP_GRACE``, 5 s; ``None``: only a second signal),
        cancels it if its commit has not begun, so that nothing of it is
        committed; ``run()`` then closes the session (its locks released) and
        raises :class:`~persistkit.errors.TickCancelledError`, so that the
        process exits non-zero saying so. A commit already under way is
        left to finish, and the stop is then a normal one. A tick that
        swallows its cancellation is left behind at the next signal, its
        commit refused. A tick that blocks the event loop itself (a
        synchronous call that never returns) cannot be reached by any of this.

        With leases (Redis, S3), a tick past their deadline raises
        :class:`~persistkit.errors.LeaseLostError` and ``run`` stops with it:
        another instance may own the state now.
        """
        self.backend  # noqa: B018 - raises StoreClosedError when not started
        if stop_grace is not None and stop_grace < 0:
            raise ValueError(f"stop_grace must be at least 0 seconds or None, not {stop_grace}")
        loop = asyncio.get_running_loop()
        stop = _StopRequest(loop, stop_grace)
        relay = stop_signal_relay.get()
        if relay is None:
            for signum in stop_signals:
                loop.add_signal_handler(signum, stop.on_signal, signum)
        else:
            relay.deliver_to(stop.on_signal)
        count = 0
        fence = fencing.set(self._fence())
        try:
            while not stop.requested.is_set() and (ticks is None or count < ticks):
                # A first signal only sets the event, so the tick in progress runs
                # to its commit; the loop stops before the next one.
                await self._tick_unless_forced(tick, count, stop)
                if after_commit is not None:
                    acknowledged = after_commit(count)
                    if inspect.isawaitable(acknowledged):
                        await acknowledged
                count += 1
                if interval > 0:
                    try:
                        await asyncio.wait_for(stop.requested.wait(), interval)
                    except TimeoutError:
                        pass
                else:
                    await asyncio.sleep(0)
        except _ForcedStop as forced:
            what = (
                f"its parts up to commit_now() #{forced.parts_committed} are committed, "
                "the rest is not"
                if forced.parts_committed
                else "nothing of it was committed"
            )
            error = TickCancelledError(
                f"persistkit stopped the live session before tick {forced.tick} finished: "
                f"{forced.reason}, and the tick's commit had not begun, so it was cancelled "
                f"and {what} ({count} tick{'s' * (count != 1)} before "
                "it committed); the session is closed and its locks are released",
                tick=forced.tick,
                reason=forced.reason,
            )
            try:
                await self.aclose()  # locks released even when the checkpoint fails
            except Exception as exc:
                raise error from exc
            raise error from None
        finally:
            fencing.reset(fence)
            stop.close()
            if relay is None:
                for signum in stop_signals:
                    loop.remove_signal_handler(signum)
            else:
                relay.deliver_to(None)
        if stop.requested.is_set():
            await self.aclose()
        return count

    async def _tick_unless_forced(
        self, tick: Callable[[int], Awaitable[object]], count: int, stop: _StopRequest
    ) -> None:
        """Tick ``count`` to its commit, unless a forced stop cancels it first (raises
        :class:`_ForcedStop`)."""
        flight = _TickInFlight()
        running = asyncio.ensure_future(self._tick_until_committed(tick, count, flight))
        forced = asyncio.ensure_future(stop.forced.wait())
        try:
            await asyncio.wait((running, forced), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            # run() itself was cancelled: so is its tick, as before, unless it commits.
            if not flight.committing:
                running.cancel()
            await asyncio.wait((running,))
            raise
        finally:
            forced.cancel()
        if running.done():
            return running.result()
        if flight.committing:
            logger.warning(
                "persistkit: %s; tick %d is committing, its commit is left to finish",
                stop.reason,
                count,
            )
            # Shielded: a commit under way finishes whatever happens to run().
            await asyncio.shield(running)
            return None
        flight.cancelled = stop.reason
        running.cancel()
        logger.warning(
            "persistkit: %s; tick %d had not begun its commit: cancelled, %s",
            stop.reason,
            count,
            f"what it committed with commit_now() ({flight.parts_committed}) stays, the rest "
            "is not committed"
            if flight.parts_committed
            else "nothing of it is committed",
        )
        another = asyncio.ensure_future(stop.next_signal().wait())
        try:
            await asyncio.wait((running, another), return_when=asyncio.FIRST_COMPLETED)
        finally:
            another.cancel()
        if running.done():
            if not running.cancelled():
                running.exception()  # retrieved: what it raised once cancelled is moot
        else:
            logger.error(
                "persistkit: tick %d did not stop when cancelled; left behind, its commit refused",
                count,
            )
        raise _ForcedStop(count, stop.reason, flight.parts_committed)

    async def _tick_until_committed(
        self,
        tick: Callable[[int], Awaitable[object]],
        count: int,
        flight: _TickInFlight | None = None,
        *,
        attempts: int = 100,
    ) -> None:
        """Run ``tick(count)`` in a tick; again while it loses a compare-and-set race.

        A tick that raised :class:`ConflictError` committed nothing: another
        tick or process changed what it read, so it runs again on what is there.
        """
        for attempt in range(attempts):
            session_tick = self._new_tick(flight=flight)
            try:
                async with session_tick:
                    await tick(count)
                return
            except ConflictError:
                if attempt == attempts - 1 or session_tick.parts_committed:
                    # A tick that committed a part already is not run again:
                    # its orders may have left.
                    raise
                logger.info(
                    "persistkit: tick %d lost a compare-and-set race; running it again", count
                )
                await asyncio.sleep(0)

    # -- stop ------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Make every commit durable in the entity files, then release the locks and leases.

        A session whose leases were lost writes nothing more: its checkpoint is
        left to the instance that holds them now.
        """
        if not self._started:
            return
        self._started = False
        try:
            backend = self._backend
            leases = self._leases
            if backend is not None and not backend.read_only and not (leases and leases.lost):
                fence = fencing.set(self._fence())
                try:
                    await backend.checkpoint()
                finally:
                    fencing.reset(fence)
        finally:
            self._backend = self._settings = None
            await self._release_locks()

    async def __aenter__(self) -> Self:
        """Start, and run the ``async with`` block in this session's context (see :meth:`tick`)."""
        await self.start()
        self._block_token = session_settings.set(self._settings)
        self._block_fence = fencing.set(self._fence())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, self._block_token = self._block_token, None
        fence, self._block_fence = self._block_fence, None
        try:
            await self.aclose()
        finally:
            if fence is not None:
                fencing.reset(fence)
            if token is not None:
                session_settings.reset(token)

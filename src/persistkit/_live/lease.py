"""One live instance per cluster: a live session's leases in a shared backend.

On a backend with :attr:`~persistkit.backends.Backend.leases` (Redis, S3), a
live session takes one :class:`~persistkit.backends._base.Lease` per lock name it
also locks locally (each pair, the risk profile), renews them in the background
and gives them up when it closes. A holder that dies loses them after their
time-to-live; a holder that cannot renew stops committing *before* they can
lapse, at a deadline kept on this machine's clock:

- Every acquisition or renewal is timed from *before* its request was sent: the
  backend starts the new time-to-live when it receives the request, never
  earlier, so ``sent + ttl`` is never later than the backend's expiry.
- The deadline is ``sent + ttl * (1 - SAFETY_SHARE)``. The margin left (a third
  of the time-to-live) covers a commit already on its way when the deadline
  passes, on S3, where no server-side fence checks a commit against the lease.
- The clock is ``CLOCK_BOOTTIME``: it counts a machine's suspension, which the
  backend's clock also does, and no wall-clock step moves it.
- Renewals run every ``ttl * RENEW_SHARE``; one that fails is tried again
  every ``ttl * RETRY_SHARE`` until the deadline, so a backend outage (a
  failover) or an event loop blocked by a tick, up to a third of the
  time-to-live, passes without losing the leases.
- An acquisition that took long (a cold client's first requests) is renewed at
  once, before the session writes anything.

Past the deadline, or once the backend answered that another holder took a
lease, the session is lost for good: every tick raises
:class:`~persistkit.errors.LeaseLostError`, and the leases are not given back
(their time-to-live covers a stale commit still in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TypeVar

from persistkit._retry import DEFAULT_RETRY
from persistkit.backends._base import Backend, Fence, Lease
from persistkit.errors import (
    BackendError,
    InstanceLockedError,
    LeaseLostError,
    TransientBackendError,
)

__all__ = [
    "DEFAULT_LEASE_TTL",
    "RENEW_SHARE",
    "RETRY_SHARE",
    "SAFETY_SHARE",
    "SessionLeases",
    "check_seconds",
    "describe_holder",
    "lease_clock",
    "lease_deadline",
    "lease_holder",
    "renewal_due",
    "wait_poll_delay",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_LEASE_TTL = 15.0
"""Seconds. Renewed every 5 s and retried every second until 10 s, a holder rides
out a backend outage (a Redis failover, S3 throttling) or a blocked event loop
of up to 5 s, and a commit in flight at its deadline has 5 s more to land
before anyone else can hold the lease; the successor of a holder killed with
``kill -9`` waits at most 15 s (``lease_wait`` covers it)."""

RENEW_SHARE = 1 / 3
"""A lease is renewed every ``ttl * RENEW_SHARE`` seconds."""

SAFETY_SHARE = 1 / 3
"""The share of the time-to-live kept between a holder's deadline and the
earliest moment the backend can let its lease lapse."""

RETRY_SHARE = 1 / 15
"""A failed renewal is tried again every ``ttl * RETRY_SHARE`` seconds."""

CONCURRENT_REQUESTS = 16
"""Lease requests in flight at once: a session with thousands of pairs takes and
renews them in batches, never thousands of requests at the same instant."""


_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def lease_clock() -> float:
    """Seconds on a clock that never steps back and keeps counting while the machine sleeps."""
    return time.clock_gettime(_CLOCK)


def lease_deadline(sent_at: float, ttl: float) -> float:
    """When a holder must stop committing under a lease whose request left at ``sent_at``."""
    return sent_at + ttl * (1 - SAFETY_SHARE)


def renewal_due(sent_at: float, ttl: float) -> float:
    """When a lease whose last request left at ``sent_at`` is renewed next."""
    return sent_at + ttl * RENEW_SHARE


def wait_poll_delay(ttl: float, remaining: float) -> float:
    """How long a session waiting for a lease (``lease_wait``) sleeps between attempts."""
    return max(0.0, min(remaining, ttl * RETRY_SHARE, 1.0))


def _moment(seconds: object) -> object:
    """Seconds since the epoch as ``2026-11-30T09:00:00Z`` (the local locks' form); else as is."""
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    return seconds


def lease_holder(holder: Mapping[str, object]) -> dict[str, object]:
    """A lease's holder as a refusal reports it: ``since`` and ``expires_at`` as UTC times,
    like the holder of a local lock, whatever form the backend keeps them in."""
    named = dict(holder)
    for key in ("since", "expires_at"):
        if key in named:
            named[key] = _moment(named[key])
    return named


def describe_holder(holder: Mapping[str, object]) -> str:
    """``host H, pid P, since S, ..., lease expires at E unless renewed``."""
    parts = [
        f"host {holder.get('host', '?')}",
        f"pid {holder.get('pid', '?')}",
        f"since {_moment(holder.get('since', '?'))}",
    ]
    if "root" in holder:
        parts.append(f"data root {holder['root']}")
    parts.append(f"lease expires at {_moment(holder.get('expires_at', '?'))} unless renewed")
    return ", ".join(parts)


def check_seconds(name: str, value: object, *, zero: bool = False) -> float:
    """``value`` as a float, or a clear error naming ``name`` when it is no number of seconds.

    Finite and positive (``zero``: or 0). :class:`TypeError` for what is not a
    number (``bool`` included), :class:`ValueError` for a number out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        least = "0 or more" if zero else "a positive number of"
        raise ValueError(f"{name} must be {least} seconds, finite, got {value!r}")
    return float(value)


async def _bounded(calls: Iterable[Callable[[], Awaitable[T]]]) -> list[T | BaseException]:
    """Run ``calls`` with at most :data:`CONCURRENT_REQUESTS` in flight; each outcome, in order.

    None is cancelled when another fails: a lease request cut off midway would
    leave its outcome unknown until the lease lapsed.
    """
    gate = asyncio.Semaphore(CONCURRENT_REQUESTS)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return await asyncio.gather(*(one(call) for call in calls), return_exceptions=True)


class SessionLeases:
    """A live session's leases on ``names`` in ``backend``: taken, renewed, checked, released."""

    def __init__(
        self, backend: Backend, names: Iterable[str], *, ttl: float, holder: Mapping[str, object]
    ) -> None:
        self.backend = backend
        self.names = sorted(set(names))
        self.ttl = ttl
        self.holder = dict(holder)
        self._held: dict[str, Lease] = {}
        self._sent_at: dict[str, float] = {}
        """Per lease: when its last successful request (acquisition or renewal) left."""
        self._lost: LeaseLostError | None = None
        self._renewing: asyncio.Task[None] | None = None
        # The process that holds them: a forked child inherits this object, not the leases.
        self._pid = os.getpid()

    def __repr__(self) -> str:
        state = "lost" if self._lost is not None else f"{len(self._held)} held"
        return f"SessionLeases({self.backend.url}, {len(self.names)} names, {state})"

    @property
    def current(self) -> Fence:
        """The leases held now (the latest renewal of each), for the ``fencing`` context,
        with the deadline check every fenced write runs first."""
        return Fence(self._held.values(), self.check)

    # -- acquire ----------------------------------------------------------------------

    async def acquire(self) -> None:
        """Take every lease or none; :class:`InstanceLockedError` names a holder found."""
        names = self.names
        # Since now, not since the session began waiting (``lease_wait``).
        self.holder = {**self.holder, "since": time.time()}
        outcomes = await _bounded(self._acquire_call(name) for name in names)
        refused: list[BaseException] = []
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                refused.append(outcome)
            else:
                lease, sent_at = outcome
                self._held[name] = lease
                self._sent_at[name] = sent_at
        if not refused and self._due(lease_clock()):
            # The acquisition took a large part of the window (a cold client's
            # first requests): renew at once, before anything is written. A
            # lease the backend renews has not lapsed, so no one else held it.
            try:
                await self._renew_round()
            except BaseException:
                await self.release()
                raise
        if refused:
            await self.release()
            for name, outcome in zip(names, outcomes, strict=True):
                if isinstance(outcome, InstanceLockedError):
                    holder = lease_holder(outcome.holder)
                    raise InstanceLockedError(
                        f"live session {name} is already running: {describe_holder(holder)}"
                        f"; lease in {self.backend.url} (lease_wait= waits for it)",
                        holder=holder,
                    ) from outcome
            raise refused[0]

    def _acquire_call(self, name: str) -> Callable[[], Awaitable[tuple[Lease, float]]]:
        async def call() -> tuple[Lease, float]:
            sent_at = lease_clock()
            try:
                lease = await self.backend.acquire_lease(name, self.holder, self.ttl)
            except TransientBackendError as exc:
                # The backend recognises a repeated acquisition by its holder
                # (host, pid, since: the same in every retry), so a lost reply
                # is not a refusal.
                lease = await DEFAULT_RETRY.call(
                    lambda: self.backend.acquire_lease(name, self.holder, self.ttl), exc
                )
            return lease, sent_at

        return call

    # -- renew ------------------------------------------------------------------------

    def start_renewing(self) -> None:
        """Renew in the background until :meth:`release` (or the leases are lost)."""
        if self._renewing is None and self._held:
            self._renewing = asyncio.get_running_loop().create_task(
                self._renew_forever(), name=f"persistkit lease renewal ({len(self._held)} leases)"
            )

    async def _renew_forever(self) -> None:
        while self._lost is None:
            due = renewal_due(min(self._sent_at.values()), self.ttl)
            await asyncio.sleep(max(0.0, due - lease_clock()))
            if self._passed_deadline():
                return
            try:
                await self._renew_round()
            except LeaseLostError as exc:
                self.lose(exc)
                return
            except Exception as exc:  # never die silently: stop committing instead
                self.lose(
                    LeaseLostError(
                        f"the renewal of this live session's leases failed unexpectedly: {exc!r}"
                    ),
                    cause=exc,
                )
                return
            if self._retry_pending():
                await asyncio.sleep(self.ttl * RETRY_SHARE)

    def _retry_pending(self) -> bool:
        """True when some lease is due already: its renewal failed and is tried again soon."""
        now = lease_clock()
        return any(renewal_due(sent, self.ttl) <= now for sent in self._sent_at.values())

    def _due(self, now: float) -> list[str]:
        """The leases to renew now: those due, and those due within half a period (kept in step)."""
        soon = now + self.ttl * RENEW_SHARE / 2
        return [name for name, sent in self._sent_at.items() if renewal_due(sent, self.ttl) <= soon]

    async def _renew_round(self) -> None:
        due = self._due(lease_clock())
        outcomes = await _bounded(self._renew_call(name) for name in due)
        for name, outcome in zip(due, outcomes, strict=True):
            if isinstance(outcome, LeaseLostError):
                raise outcome
            if isinstance(outcome, BackendError):
                logger.warning(
                    "persistkit: renewing lease %s on %s failed (%s); trying again until "
                    "%.1f s before it could lapse",
                    name,
                    self.backend.url,
                    outcome,
                    self.ttl * SAFETY_SHARE,
                )
                continue
            if isinstance(outcome, BaseException):
                raise outcome
            lease, sent_at = outcome
            self._held[name] = lease
            self._sent_at[name] = sent_at

    def _renew_call(self, name: str) -> Callable[[], Awaitable[tuple[Lease, float]]]:
        async def call() -> tuple[Lease, float]:
            sent_at = lease_clock()
            return await self.backend.renew_lease(self._held[name], self.ttl), sent_at

        return call

    # -- check ------------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`LeaseLostError` when the leases no longer cover a commit.

        In a process forked from the holder they never do: the parent holds them,
        renews them and commits under them; the child's commits would carry the
        parent's fencing tokens and be accepted as the parent's.
        """
        self._in_a_forked_child()
        if self._lost is None:
            self._passed_deadline()
        if self._lost is not None:
            raise LeaseLostError(
                str(self._lost), lease=self._lost.lease, holder=dict(self._lost.holder)
            ) from self._lost

    def _passed_deadline(self) -> bool:
        if self._lost is not None:
            return True
        now = lease_clock()
        late = [
            name for name, sent in self._sent_at.items() if lease_deadline(sent, self.ttl) <= now
        ]
        if not late:
            return False
        name = late[0]
        since = now - self._sent_at[name]
        self.lose(
            LeaseLostError(
                f"lease {name} on {self.backend.url} was last renewed {since:.1f} s ago "
                f"(time-to-live {self.ttl:g} s): this instance stopped committing before "
                "another one could take it over; restart it",
                lease=name,
            )
        )
        return True

    def lose(self, error: LeaseLostError, *, cause: BaseException | None = None) -> None:
        """Stop committing for good (the first reason is kept); renewals stop."""
        if self._lost is not None:
            return
        if cause is not None:
            error.__cause__ = cause
        self._lost = error
        logger.error("persistkit: live session lost its lease: %s", error)
        task = self._renewing
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    @property
    def lost(self) -> bool:
        return self._in_a_forked_child() or self._lost is not None

    def _in_a_forked_child(self) -> bool:
        """Whether this process is a child forked from the holder; they are lost here if so."""
        if self._pid == os.getpid():
            return False
        if self._lost is None:
            self._lost = LeaseLostError(
                f"the leases of this live session ({', '.join(self.names)}) are held by "
                f"process {self._pid}, which this process was forked from: a child commits "
                "nothing under its parent's leases; start a session of its own",
                lease=self.names[0] if self.names else None,
            )
        return True

    # -- release ----------------------------------------------------------------------

    async def release(self) -> None:
        """Stop renewing and give every lease back, unless they are lost.

        A lost lease is left to lapse: a commit of this instance may still be
        on its way, and the remaining time-to-live is what keeps it harmless.
        A lease that cannot be given back (the backend is unreachable) lapses
        after its time-to-live; that is logged, not raised.
        """
        task, self._renewing = self._renewing, None
        if self._in_a_forked_child():
            # The parent's renewal task (of its loop) and leases: not this process's to end.
            self._held, self._sent_at = {}, {}
            return
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        held, self._held = self._held, {}
        self._sent_at = {}
        if self._lost is not None or not held:
            return
        outcomes = await _bounded(self._release_call(lease) for lease in held.values())
        for lease, outcome in zip(held.values(), outcomes, strict=True):
            if isinstance(outcome, BackendError):
                logger.warning(
                    "persistkit: could not give lease %s on %s back (%s); it lapses in %g s",
                    lease.name,
                    self.backend.url,
                    outcome,
                    self.ttl,
                )
            elif isinstance(outcome, BaseException):
                raise outcome

    def _release_call(self, lease: Lease) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            try:
                await self.backend.release_lease(lease)
            except TransientBackendError as exc:
                await DEFAULT_RETRY.call(lambda: self.backend.release_lease(lease), exc)

        return call

"""``async with transaction():``: every write in the block committed atomically, or none.

A bot changes several entities per tick (a signal and its risk position, say);
written one by one, a crash between them leaves one without the other. Inside
a transaction, :class:`~persistkit.PersistBase` stages writes instead of
storing them, and the block's normal exit hands them all to
:meth:`Backend.commit <persistkit.backends.Backend.commit>` in one call (the file
backend's commit journal, Redis MULTI/EXEC, S3's head commit record).

The active transaction lives in a context variable, so tasks started inside the
block join it, and a store costs one ``ContextVar.get()`` to learn there is none.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from types import TracebackType
from typing import Any, cast

from persistkit import _metrics
from persistkit._config import active_settings
from persistkit._retry import DEFAULT_RETRY, RetryPolicy
from persistkit.backends._base import ANY_VERSION, Backend, Expected
from persistkit.errors import (
    ConflictError,
    CrossBackendError,
    StoreClosedError,
    TransientBackendError,
)

__all__ = [
    "CommitHook",
    "Transaction",
    "active_transaction",
    "reading_transaction",
    "transaction",
    "transaction_for",
]

CommitHook = Callable[["Transaction"], Awaitable[None]]
"""Runs once as its transaction commits, before the writes go to the backend."""

_staged_versions = itertools.count(1)
HOOK_ATTEMPTS = 64
"""How many times a commit runs its hooks again when another writer changed what they
derived from (see :meth:`Transaction.before_commit`) before it gives up with the
:class:`~persistkit.errors.ConflictError`."""
HOOK_BACKOFF_LIMIT = 0.05
"""The longest pause, in seconds, before a commit runs its hooks again: a random one,
growing from a millisecond with each attempt."""
active_transaction: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar(
    "persistkit_transaction", default=None
)


class Transaction:
    """Writes made inside ``async with transaction():``, committed together on exit.

    Every :meth:`PersistBase.write_value` and :meth:`~PersistBase.remove_value`
    on a store of this transaction's backend is validated and encoded at the
    call (a bad value fails there) and staged; reads in the block see the staged
    writes. A normal exit hands them all to :meth:`Backend.commit` in one call:
    after a crash either all are stored or none. An exception discards them.
    A transaction opened inside another one on the same backend is a savepoint:
    its writes join the outer transaction when it exits normally.

    A compare-and-set (``if_version=``) inside the block is checked twice: when
    it is called, against the staged value or the stored one, and again when
    the block commits, against what is stored then (optimistic concurrency), so
    two ticks that read the same version never both commit a change of it
    (``update_value`` in concurrent ticks loses nothing). The tick that lost
    the race raises :class:`~persistkit.errors.ConflictError` from its
    ``async with`` and commits nothing. The version of a staged value (what
    ``write_value`` returns in the block) is valid in the block only.
    """

    __slots__ = (
        "_committing",
        "_hooks",
        "_parent",
        "_token",
        "_versions",
        "backend",
        "expected",
        "finished",
        "notes",
        "retry",
        "writes",
    )

    def __init__(self, backend: Backend, *, retry: RetryPolicy = DEFAULT_RETRY) -> None:
        if type(backend).commit is Backend.commit:
            raise NotImplementedError(
                f"{type(backend).__name__} has no atomic multi-key commit; transactions need one"
            )
        self.backend = backend
        self.writes: dict[str, bytes | None] = {}
        """Staged writes; ``None`` removes."""
        self._versions: dict[str, str] = {}
        self.expected: dict[str, Expected] = {}
        """Versions of stored values this transaction's compare-and-sets relied on;
        the commit succeeds only if each is still current."""
        self.finished = False
        self.retry = retry
        """How a commit that failed with a transient error is retried (its
        outcome is decided by the backend: repeating it is harmless)."""
        self._hooks: dict[Hashable, tuple[tuple[str, ...], CommitHook]] = {}
        self.notes: dict[Hashable, list[Any]] = {}
        """What the block's writes told its commit hooks besides the values (see
        :meth:`note`)."""
        self._parent: Transaction | None = None
        self._token: contextvars.Token[Transaction | None] | None = None
        self._committing: asyncio.Event | None = None
        """Set while :meth:`commit_staged` commits: the block's tasks stage after it."""

    def __repr__(self) -> str:
        return f"<Transaction on {self.backend.url}: {len(self.writes)} staged writes>"

    def _find(self, backend: Backend) -> Transaction | None:
        current: Transaction | None = self
        while current is not None and current.backend is not backend:
            current = current._parent
        return current

    def _check_active(self) -> None:
        if self.finished:
            raise StoreClosedError(f"{self!r} has already ended; write outside it or in a new one")

    def lookup(self, key: str) -> tuple[bool, bytes | None]:
        """``(True, staged value)`` when this transaction (or an outer one) wrote ``key``."""
        level = self._level_of(key)
        return (False, None) if level is None else (True, level.writes[key])

    def _level_of(self, key: str) -> Transaction | None:
        current: Transaction | None = self
        while current is not None:
            if current.backend is self.backend and key in current.writes:
                return current
            current = current._parent
        return None

    def staged_version(self, key: str) -> str | None:
        """The version of ``key`` in this transaction (``None``: removed or never staged)."""
        level = self._level_of(key)
        return None if level is None else level._versions.get(key)

    def staged_in(self, namespace: str) -> dict[str, bytes | None]:
        """Staged writes whose key lies directly in ``namespace``, innermost last."""
        chain: list[Transaction] = []
        current: Transaction | None = self
        while current is not None:
            if current.backend is self.backend:
                chain.append(current)
            current = current._parent
        prefix = f"{namespace}/"
        found: dict[str, bytes | None] = {}
        for level in reversed(chain):
            for key, data in level.writes.items():
                if key.startswith(prefix) and "/" not in key[len(prefix) :]:
                    found[key] = data
        return found

    async def version_of(self, key: str) -> str | None:
        """``key``'s version as this transaction sees it (``None``: absent)."""
        if self._level_of(key) is not None:
            return self.staged_version(key)
        backend = self.backend
        try:
            stored = await backend.get(key)
        except TransientBackendError as exc:
            # A read is safe to repeat; failing here would fail the whole tick,
            # after commit_now() too, when its order has left.
            stored = await self.retry.call(lambda: backend.get(key), exc)
        return None if stored is None else stored.version

    async def stage(self, key: str, data: bytes | None, expect: Expected) -> str | None:
        """Stage a write (``None``: remove) if ``key`` is at version ``expect``."""
        if self._committing is not None:  # no await on the hot path else
            await self.after_commit_in_progress()
        self._check_active()
        if expect is not ANY_VERSION:
            staged = self._level_of(key) is not None
            current = await self.version_of(key)
            if current != expect:
                raise ConflictError(
                    f"{key} is at version {current}, not {expect}, in this transaction", key=key
                )
            if not staged:
                # Read from the store: it must still be so when the block commits.
                self.expected.setdefault(key, expect)
        return self.stage_now(key, data)

    async def after_commit_in_progress(self) -> None:
        """Wait for the :meth:`commit_staged` in progress, if any: a task of the block that
        staged during it would change what is being committed, and what it staged would
        be dropped with the committed part (or by the commit's hooks running again)."""
        committing = self._committing
        if committing is not None:
            await committing.wait()

    def stage_now(self, key: str, data: bytes | None) -> str | None:
        """Stage an unconditional write; returns the staged version (after
        :meth:`after_commit_in_progress`, when called from a task of the block)."""
        self._check_active()
        self.writes[key] = data
        if data is None:
            self._versions.pop(key, None)
            return None
        # A counter, not a digest: staging must cost next to nothing per entity.
        version = self._versions[key] = f"staged-{next(_staged_versions)}"
        return version

    def before_commit(self, name: Hashable, keys: Iterable[str], hook: CommitHook) -> None:
        """Run ``hook(self)`` once, as this transaction commits, before the backend sees it.

        What derives writes from the whole tick registers here (the statistics
        events of :class:`~persistkit.ScheduleStatistics` and
        :class:`~persistkit.PartialStatistics`): the hook runs with the staged writes
        and ``keys`` (those it may add) locked against the other commits of this
        process, reads the committed state from the backend, and adds its
        writes with :meth:`include`, so they land in the same atomic commit. A
        second registration of ``name`` adds its ``keys`` to those locked and
        keeps the first hook (see :meth:`registered_hook`). A failed block
        discards its hooks with its writes; a savepoint hands them to the outer
        transaction.

        Other processes, and threads running event loops of their own, take
        none of these locks: a hook that must not overwrite what they commit
        meanwhile puts the version it derived from in :attr:`expected`. When
        the commit finds one of ``keys`` changed (a
        :class:`~persistkit.errors.ConflictError` naming it), the block's own
        writes are restored and the hooks run again on what is committed now,
        up to :data:`HOOK_ATTEMPTS` times.
        """
        self._check_active()
        found = self._hooks.get(name)
        if found is None:
            self._hooks[name] = (tuple(keys), hook)
            return
        locked, first = found
        added = tuple(key for key in keys if key not in locked)
        if added:
            self._hooks[name] = (locked + added, first)

    def outermost(self) -> Transaction:
        """The transaction on this backend that commits this one's writes (itself, unless
        this is a savepoint): a hook registered there outlives a savepoint that fails."""
        outer = self
        while outer._parent is not None:
            found = outer._parent._find(self.backend)
            if found is None:
                break
            outer = found
        return outer

    def registered_hook(self, name: Hashable) -> CommitHook | None:
        """The hook registered here as ``name`` (:meth:`before_commit`), if any: a hook
        that serves several writes of the block is registered once and told of each."""
        found = self._hooks.get(name)
        return None if found is None else found[1]

    def note(self, name: Hashable, item: Any) -> None:
        """Tell this block's commit hooks ``item`` under ``name``, beside the staged values.

        For what the last value of a key cannot say (a signal opened and closed in
        the same tick). A savepoint's notes join the outer block's when it exits
        normally and are dropped with its writes when it fails; the hooks read them
        in :attr:`notes`. They outlive :meth:`commit_staged`: the block goes on.
        """
        self._check_active()
        found = self.notes.get(name)
        if found is None:
            self.notes[name] = [item]
        else:
            found.append(item)

    def include(self, key: str, data: bytes | None) -> None:
        """Add a write (``None``: remove) to the commit in progress; for commit hooks."""
        self.writes[key] = data

    async def __aenter__(self) -> Transaction:
        parent = active_transaction.get()
        if parent is not None and parent.backend is not self.backend:
            # It would commit on its own exit: the outer block could still
            # fail, and the tick would not be atomic.
            raise CrossBackendError(
                f"a transaction on {self.backend.url} was opened inside one on "
                f"{parent.backend.url}: one commit cannot span two backends; refused "
                "before anything was written"
            )
        self._parent = parent
        self._token = active_transaction.set(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            active_transaction.reset(self._token)
        self.finished = True
        if exc_type is not None or not (self.writes or self.notes):
            return
        outer = self._parent._find(self.backend) if self._parent is not None else None
        if outer is None and not self.writes:
            return  # notes alone: nothing to commit
        if outer is not None:
            for key, version in self.expected.items():
                if outer._level_of(key) is None:
                    outer.expected.setdefault(key, version)
            outer.writes.update(self.writes)
            for name, hook in self._hooks.items():
                outer._hooks.setdefault(name, hook)
            for name, items in self.notes.items():
                outer.notes.setdefault(name, []).extend(items)
            for key, data in self.writes.items():
                if data is None:
                    outer._versions.pop(key, None)
                else:
                    outer._versions[key] = self._versions[key]
            return
        await self.commit()

    async def commit_staged(self) -> None:
        """Commit what the block staged so far, atomically, and go on staging in the same block.

        What is staged then is durable when this returns (an order intent,
        before the order leaves); the rest of the block commits on its exit,
        atomically too, or not at all. Versions the block staged before are
        no longer valid (values read since come from the backend). A task of
        the block that writes while this commits waits for it, and stages its
        write for the rest of the block. Refused in a savepoint: its writes
        belong to the outer block until that one commits.
        """
        self._check_active()
        if self._parent is not None and self._parent._find(self.backend) is not None:
            raise RuntimeError(
                "commit_staged() in a transaction nested in another on the same backend: "
                "its writes join the outer one, which alone commits; call it there"
            )
        if active_transaction.get() is not self:
            raise RuntimeError(
                "commit_staged() while a nested transaction is open: its writes are not "
                "staged here yet; call it after that block exits"
            )
        if self.writes:
            self._committing = committing = asyncio.Event()
            try:
                await self.commit()
                self._forget_committed()
            finally:
                self._committing = None
                committing.set()
        else:
            self._forget_committed()

    def _forget_committed(self) -> None:
        self.writes = {}
        self._versions.clear()
        self.expected.clear()
        self._hooks.clear()
        # The notes stay: they say what the block wrote on the way, and it goes on.

    async def commit(self) -> None:
        """Hand the staged writes to the backend in one atomic call (``__aexit__`` does it)."""
        recorder = _metrics.recorder
        if recorder is None:
            return await self._commit()
        attributes = recorder.backend(self.backend.scheme)
        started = time.perf_counter()
        try:
            await self._commit()
        except ConflictError:
            recorder.conflicts.add(1, attributes)
            raise
        finally:
            recorder.commit_duration.record(time.perf_counter() - started, attributes)

    async def _commit(self) -> None:
        writes = self.writes
        # Imported here: the store imports this module for its hooks.
        from persistkit._store import _ordering_for

        locks = _ordering_for(self.backend).current()
        keys = list(writes)
        # The keys the hooks may write: locked with the block's, and the ones whose
        # conflict runs the hooks again.
        hook_keys = dict.fromkeys(key for locked, _ in self._hooks.values() for key in locked)
        if hook_keys:
            keys = list(dict.fromkeys([*keys, *hook_keys]))
        taken: list[str] = []
        try:
            # Usually nobody else holds these keys: take them all without
            # suspending. Otherwise give them back and wait for each in one
            # global order, so two commits never wait on each other.
            for key in keys:
                if not locks.try_acquire(key):
                    for held in taken:
                        locks.release(held)
                    taken.clear()
                    for key_in_order in sorted(keys):
                        await locks.acquire(key_in_order)
                        taken.append(key_in_order)
                    break
                taken.append(key)
            if not self._hooks:
                await self._send()
                return
            # Under the locks: what a hook reads as committed stays so until this
            # commit lands, against the other commits of this loop. Against other
            # writers (processes, threads running loops of their own) a hook sets
            # expectations on the keys it writes: when one fails, the hooks run
            # again on what those writers committed.
            staged, expected = dict(writes), dict(self.expected)
            for attempt in range(1, HOOK_ATTEMPTS + 1):
                try:
                    for _, hook in self._hooks.values():
                        await hook(self)
                    await self._send()
                    return
                except ConflictError as exc:
                    if exc.key not in hook_keys or attempt == HOOK_ATTEMPTS:
                        raise
                writes.clear()
                writes.update(staged)
                self.expected = dict(expected)
                # Apart, at random: writers that met here would meet again at once.
                await asyncio.sleep(random.uniform(0, min(HOOK_BACKOFF_LIMIT, 0.001 * 2**attempt)))
        finally:
            for key in taken:
                locks.release(key)

    async def _send(self) -> None:
        """Hand the writes to the backend; a transient error repeats them."""
        backend, writes = self.backend, self.writes
        if self.expected and backend.commit_checks_versions:

            async def commit() -> None:
                # commit_checks_versions: this backend's commit takes expect=.
                await cast(Any, backend).commit(writes, expect=self.expected)

        else:

            async def commit() -> None:
                await backend.commit(writes)

        try:
            await commit()
        except TransientBackendError as exc:
            # A commit carries whole values, so repeating it is harmless.
            await self.retry.call(commit, exc)


def transaction(
    backend: Backend | None = None, *, retry: RetryPolicy = DEFAULT_RETRY
) -> Transaction:
    """``async with transaction():`` commits every write in the block atomically.

    ``backend`` defaults to the one serving the domain adapters here: the
    live session's inside its ticks, else the configured one
    (:func:`persistkit.configure`). ``retry`` is how a commit that failed with
    a transient error is repeated. See :class:`Transaction`.
    """
    return Transaction(active_settings().backend if backend is None else backend, retry=retry)


def transaction_for(backend: Backend) -> Transaction | None:
    """The active transaction (or an outer one) on ``backend``, if any."""
    active = active_transaction.get()
    return None if active is None else active._find(backend)


def reading_transaction(backend: Backend) -> Transaction | None:
    """The transaction whose staged writes a read on ``backend`` sees, if any.

    Only one still open: a task started in a tick that outlives it (a watcher,
    say) inherits the tick's context, and must read what is committed since,
    not what that tick once staged. Its writes are refused (``StoreClosedError``).
    """
    current = active_transaction.get()
    while current is not None:
        if current.backend is backend and not current.finished:
            return current
        current = current._parent
    return None

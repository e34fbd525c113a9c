"""Writers under test: the real file backend and the broken controls the suite must catch.

Each control is the real :class:`FileBackend` with only its write step
replaced, so whatever the harness catches is the missing step and nothing else.
Plain writes (:data:`WRITERS`) are DESIGN §3's durable replace: a root opened
with ``history=None``, as the history's own files are written. On a root that
keeps history (the default) a plain write is a one-key journal commit
(:data:`JOURNALED_PLAIN_WRITERS`), the tick commit's path.

Tick commits (:data:`TICK_WRITERS`, :data:`TICK_CONTROLS`) run each step as one
``async with transaction():`` on the commit journal. The journal's applier is
a thread that wakes after a delay; here its pass runs on the writer's own
thread at the start of every other tick, and the journal limit is small enough
to checkpoint every few ticks, so a power cut falls after every call of
commit, apply and checkpoint in one deterministic order.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, cast

from persistkit._store import PersistBase
from persistkit._transaction import transaction
from persistkit.backends._archive import HistoryPolicy
from persistkit.backends._file import TEMP_PREFIX, FileBackend
from persistkit.backends._journal import CommitJournal
from persistkit.backends._oslayer import REAL_OS, OSLayer

__all__ = [
    "CONTROLS",
    "JOURNALED_PLAIN_WRITERS",
    "TICK_CONTROLS",
    "TICK_JOURNAL_LIMIT",
    "TICK_WRITERS",
    "WRITERS",
    "DurableReplaceBackend",
    "InPlaceBackend",
    "NoDirFsyncBackend",
    "NoFileFsyncBackend",
    "Step",
    "TickBackend",
    "WriterUnderTest",
    "apply_step",
]

_O_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_O_IN_PLACE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW

Key = tuple[str, str]
"""(entity name, entity id)."""
Step = Mapping[Key, Any]
"""One acknowledged unit of work: new values by key, ``None`` removes."""
Stores = Mapping[str, PersistBase[Any]]


def _write_temp_and_replace(
    backend: FileBackend, dir_fd: int, name: str, data: bytes, *, file_fsync: bool, dir_fsync: bool
) -> None:
    osl = backend._os
    temp = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    fd = osl.open(temp, _O_TEMP, 0o666, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[osl.write(fd, view) :]
        if file_fsync:
            osl.fsync(fd)
    finally:
        osl.close(fd)
    osl.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    if dir_fsync:
        osl.fsync(dir_fd)


class DurableReplaceBackend(FileBackend):
    """The real file backend on a root without history: plain writes are the durable replace."""

    def __init__(self, root: str, **kwargs: Any) -> None:
        super().__init__(root, history=None, **kwargs)


class NoFileFsyncBackend(DurableReplaceBackend):
    """Control: renames a temp file whose bytes were never fsynced."""

    def _write_new_file(self, dir_fd: int, name: str, data: bytes, *, sync: bool = True) -> None:
        _write_temp_and_replace(self, dir_fd, name, data, file_fsync=False, dir_fsync=True)


class NoDirFsyncBackend(DurableReplaceBackend):
    """Control: acknowledges before the rename itself is durable."""

    def _write_new_file(self, dir_fd: int, name: str, data: bytes, *, sync: bool = True) -> None:
        _write_temp_and_replace(self, dir_fd, name, data, file_fsync=True, dir_fsync=False)


class InPlaceBackend(DurableReplaceBackend):
    """Control: truncates and rewrites the target itself, fsyncs included."""

    def _write_new_file(self, dir_fd: int, name: str, data: bytes, *, sync: bool = True) -> None:
        osl = self._os
        fd = osl.open(name, _O_IN_PLACE, 0o666, dir_fd=dir_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[osl.write(fd, view) :]
            osl.fsync(fd)
        finally:
            osl.close(fd)
        osl.fsync(dir_fd)


TICK_JOURNAL_LIMIT = 1500
"""Journal bytes before a checkpoint: every two or three ticks of this suite's values."""


class InlineApplyJournal(CommitJournal):
    """The real journal, its applier thread replaced by :meth:`TickBackend.apply_now`."""

    def _wake_applier(self) -> None:
        return None


class TickBackend(FileBackend):
    """The real file backend and journal, applying on the caller's thread (see above)."""

    journal_class: type[CommitJournal] = InlineApplyJournal

    def __init__(
        self,
        root: str,
        *,
        os_layer: OSLayer = REAL_OS,
        executor: Executor | None = None,
        journal_limit: int = TICK_JOURNAL_LIMIT,
        history: HistoryPolicy | None = HistoryPolicy(),  # noqa: B008 - frozen, shared safely
    ) -> None:
        super().__init__(root, os_layer=os_layer, executor=executor, history=history)
        self.journal = self.journal_class(self, limit=journal_limit)
        self.ticks = 0

    def apply_now(self) -> None:
        """The applier thread's pass: pending commits to their files, unsynced."""
        self._check_writable()
        self.journal.apply_pending()


class _JournalFsyncSkipped:
    """An OS layer that drops the fsync of the journal file and passes on all else."""

    def __init__(self, journal: CommitJournal, inner: OSLayer) -> None:
        self._journal = journal
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def fsync(self, fd: int) -> None:
        current = self._journal._journal
        if current is None or fd != current.fd:
            self._inner.fsync(fd)


class NoJournalFsyncJournal(InlineApplyJournal):
    """Control: acknowledges a commit whose journal record was never fsynced."""

    def __init__(self, backend: FileBackend, *, limit: int) -> None:
        super().__init__(backend, limit=limit)
        # Duck-typed: every call but fsync goes to the real layer unchanged.
        self._os = cast(OSLayer, _JournalFsyncSkipped(self, backend._os))


class NoJournalFsyncBackend(TickBackend):
    journal_class = NoJournalFsyncJournal


class EmptiedBeforeSyncJournal(InlineApplyJournal):
    """Control: checkpoints (and recovers) without syncing the applied files first."""

    def _sync_filesystem(self) -> None:
        return None


class EmptiedBeforeSyncBackend(TickBackend):
    journal_class = EmptiedBeforeSyncJournal


def _backend_of(stores: Stores) -> TickBackend:
    backend = next(iter(stores.values())).backend
    assert isinstance(backend, TickBackend)
    return backend


async def commit_tick(stores: Stores, step: Step) -> None:
    """One bot tick: every write of ``step`` in one transaction (the commit acknowledges it).

    Every other tick first runs the applier's pass for the ticks before it.
    """
    backend = _backend_of(stores)
    backend.ticks += 1
    if backend.ticks % 2 == 0:
        backend.apply_now()
    async with transaction(backend):
        await apply_step(stores, step)


async def apply_step(stores: Stores, step: Step) -> None:
    """The per-entity API: each key written (or removed) durably, one after the other."""
    for (entity, entity_id), value in step.items():
        if value is None:
            await stores[entity].remove_value(entity_id)
        else:
            await stores[entity].write_value(entity_id, value)


@dataclass(frozen=True)
class WriterUnderTest:
    name: str
    backend_class: type[FileBackend]
    broken: bool
    """A control: the harness fails unless it finds violations."""
    run_step: Callable[[Stores, Step], Awaitable[None]] = apply_step
    atomic_steps: bool = False
    """Whether a step of several keys must land all or nothing (tick commits)."""


WRITERS = [
    WriterUnderTest("FileBackend, history=None (durable replace)", DurableReplaceBackend, False)
]
CONTROLS = [
    WriterUnderTest("no file fsync", NoFileFsyncBackend, broken=True),
    WriterUnderTest("no directory fsync", NoDirFsyncBackend, broken=True),
    WriterUnderTest("write in place", InPlaceBackend, broken=True),
]
TICK_WRITERS = [
    WriterUnderTest(
        "tick commit (journal)", TickBackend, broken=False, run_step=commit_tick, atomic_steps=True
    )
]
JOURNALED_PLAIN_WRITERS = [
    WriterUnderTest(
        "plain writes of a root with history (one-key journal commits)", TickBackend, False
    )
]
TICK_CONTROLS = [
    WriterUnderTest(
        "commit acknowledged before the journal fsync",
        NoJournalFsyncBackend,
        broken=True,
        run_step=commit_tick,
        atomic_steps=True,
    ),
    WriterUnderTest(
        "journal emptied before the applied files are synced",
        EmptiedBeforeSyncBackend,
        broken=True,
        run_step=commit_tick,
        atomic_steps=True,
    ),
]


class TwoProcessBackend(TickBackend):
    """Two processes on one root: this backend and a twin with journal state of its own.

    Each is what one process of a bot has (its view of the shared journal, its
    lock descriptors, its applier); on the simulated file system both run on
    one thread, one call after the other, as two processes would interleave.
    Their root keeps no history: there a plain write goes to its file unless
    the journal holds its key, the interplay under test (with history, every
    plain write is a journal commit).
    """

    twin_class: type[TickBackend] = TickBackend

    def __init__(
        self,
        root: str,
        *,
        os_layer: OSLayer = REAL_OS,
        executor: Executor | None = None,
        journal_limit: int = TICK_JOURNAL_LIMIT,
    ) -> None:
        super().__init__(
            root, os_layer=os_layer, executor=executor, journal_limit=journal_limit, history=None
        )
        self.twin = self.twin_class(
            root, os_layer=os_layer, executor=executor, journal_limit=journal_limit, history=None
        )


class JournalBlindBackend(TickBackend):
    """Control: plain writes go straight to their files even while the journal holds the key."""

    def __init__(self, root: str, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.journal.holds = lambda key: False  # type: ignore[method-assign]


class JournalBlindTwinBackend(TwoProcessBackend):
    twin_class = JournalBlindBackend


async def interleaved_step(stores: Stores, step: Step) -> None:
    """Each process in turn makes two steps; a one-key step is a plain write, a step
    of several keys a tick commit. Every third step the process runs its
    applier's pass first."""
    backend = _backend_of(stores)
    assert isinstance(backend, TwoProcessBackend)
    backend.ticks += 1
    process: TickBackend = backend if (backend.ticks // 2) % 2 else backend.twin
    if process is not backend:
        stores = {name: PersistBase(name, backend=process) for name in stores}
    if backend.ticks % 3 == 0:
        process.apply_now()
    if len(step) == 1:
        await apply_step(stores, step)
        return
    async with transaction(process):
        await apply_step(stores, step)


TWO_PROCESS_WRITERS = [
    WriterUnderTest(
        "two processes: ticks and plain writes on shared keys",
        TwoProcessBackend,
        broken=False,
        run_step=interleaved_step,
        atomic_steps=True,
    )
]
TWO_PROCESS_CONTROLS = [
    WriterUnderTest(
        "a process whose plain writes ignore the shared journal",
        JournalBlindTwinBackend,
        broken=True,
        run_step=interleaved_step,
        atomic_steps=True,
    )
]

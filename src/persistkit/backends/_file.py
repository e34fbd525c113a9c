"""The file backend: one JSON file per entity, written so that a crash never tears it.

Layout under the root: ``{namespace}/{id}.json`` for values, ``.quarantine/`` for
values moved aside, ``.journal/`` for the commit journal (see
``persistkit.backends._journal``), ``.history/`` for the commits it archives at
each checkpoint (see ``persistkit.backends._archive``; ``history=None`` keeps
none), and ``.tmp-*`` files that exist only while a write is in flight. Nothing
whose name starts with ``.`` is ever listed as an entity.

A start removes persistkit's own orphan temp files (``.tmp-`` and 16 hex
digits) at once, under the directory's lock that every write holds while its
temp file lives. Any other ``.tmp-*`` file is another program's (backtest-kit
writes ``.tmp-<12 hex>-<name>.json``, and may be writing it right now, beside a
persistkit start in a cutover): it is removed only once it is older than
``foreign_temp_age`` seconds (at least :data:`MIN_FOREIGN_TEMP_AGE`, the 120 s
backtest-kit itself waits before it sweeps).

Plain writes (``put`` and ``delete`` outside a commit) of a root that keeps
history, the default, are commits of one key: one record appended to the
commit journal and fsynced (the commit point, so one fsync where the durable
write below takes two), then the entity's file written (temp file and rename,
unsynced: the journal is the durability) before the call returns. So the
history holds every change with its commit time, and the entity files stay
current. A root opened with ``history=None`` writes them with the durable
write; the history's own files use it too.

The durable write, so that an acknowledged value survives a crash or a power cut
and a failed write leaves the old value whole:

1. the caller has already encoded the value, so nothing can fail half-way
   through serialisation;
2. a temp file is created next to the target with ``O_CREAT | O_EXCL``;
3. all bytes are written (short writes looped) and the temp file is fsynced;
4. ``os.replace`` moves it onto the target, atomically;
5. the directory is fsynced so the rename itself survives a power cut.

Failure before 4 removes the temp file and keeps the old value
(:class:`WriteFailedError`). Failure at 5 means the new value is visible but
may not survive a power cut (:class:`DurabilityUnknownError`); the fsync is not
retried, because a second fsync can succeed after the kernel dropped the data.

Writers in different processes are serialised with ``flock`` on the entity's
directory (the directory's own file descriptor, so no lock files litter the
tree). A lock another process holds is never waited for on the event loop's
thread: the write moves to a worker thread, which gives up after
``lock_timeout`` seconds with :class:`LockTimeoutError`. Reads take no lock: a
rename is atomic, so a reader sees the old file or the new one, whole.

Keys committed through the shared commit journal (see
``persistkit.backends._journal``) are read from the journal, in every
process, until a checkpoint has made their files whole; plain writes of such
keys are appended to the journal too.

Versions are a digest of the content, so compare-and-set cannot be fooled by
a reused inode number or a coarse mtime.

:meth:`FileBackend.snapshot` reads every committed value at one commit of the
journal without a lock (what ``persistkit inspect`` and ``export`` show); it
lists symbolic links inside the root instead of following them.

**Fork.** A directory's ``flock`` belongs to the open file description, which a
child forked meanwhile (by another thread) shares through its copy of the
descriptor: the lock then lasts as long as the child keeps that copy, after the
parent let go. So every descriptor of a directory that may be locked is
registered from its open to its close, and a child closes its copies at once
(:func:`os.register_at_fork`): the parent's lock stays the parent's. Opening and
closing them pause a fork for the length of one system call. A fork first waits
for the journal's leaders to finish (their locks are let go before it, see
:mod:`._journal`), and only then takes the gate: a leader may be waiting for the
lock of a durable write, which needs the gate to close its descriptor.

Confined to the root: the root is resolved once (it may itself be a symbolic
link) and every syscall goes through :class:`~persistkit.backends._confine.ConfinedOS`,
which never follows a link below it (see that module). A link met on the way
raises :class:`~persistkit.errors.ForeignSymlinkError`; a listing leaves links out.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import Executor
from typing import Any, Self, TypeVar
from urllib.parse import unquote, urlsplit

import orjson

from persistkit._history import RecordedHistory, drop_record_only
from persistkit.backends._archive import HISTORY_DIR, HistoryArchive, HistoryPolicy
from persistkit.backends._base import (
    ANY_VERSION,
    SNAPSHOT_ATTEMPTS,
    Backend,
    Expected,
    QuarantineEntry,
    Snapshot,
    Versioned,
    join_key,
    lay_commits_over,
    new_quarantine_id,
    quarantined_key,
    split_key,
)
from persistkit.backends._confine import ConfinedOS
from persistkit.backends._journal import (
    _MISSING,
    DEFAULT_JOURNAL_LIMIT,
    DEFAULT_LOCK_TIMEOUT,
    JOURNAL_DIR,
    CommitJournal,
    JournalCut,
    SalvageReport,
    _lead_through_fork,
    _reset_after_fork,
    _stop_leading_after_fork,
    _WouldBlock,
    take_lock,
)
from persistkit.backends._oslayer import (
    O_CLOEXEC,
    O_DIRECTORY,
    O_NOFOLLOW,
    O_NONBLOCK,
    REAL_OS,
    OSLayer,
    require_posix_locks,
)
from persistkit.backends._threads import run_to_completion
from persistkit.errors import (
    BackendError,
    ConflictError,
    DurabilityUnknownError,
    EntityNotFoundError,
    ForeignSymlinkError,
    HistoryUnavailableError,
    InvalidNameError,
    LockTimeoutError,
    SnapshotError,
    StoreClosedError,
    WriteFailedError,
)

__all__ = [
    "MIN_FOREIGN_TEMP_AGE",
    "QUARANTINE_DIR",
    "SUFFIX",
    "TEMP_PREFIX",
    "FileBackend",
    "HistoryPolicy",
    "content_version",
    "entry_file_stem",
]

T = TypeVar("T")

SUFFIX = ".json"
TEMP_PREFIX = ".tmp-"
_OWN_TEMP = re.compile(r"\.tmp-[0-9a-f]{16}\Z")
"""The temp files persistkit itself writes (``TEMP_PREFIX`` and ``secrets.token_hex(8)``)."""
MIN_FOREIGN_TEMP_AGE = 120.0
"""Seconds another program's temp file must be old before a start removes it:
backtest-kit's own bound for its writes in flight."""
QUARANTINE_DIR = ".quarantine"
_ROOT_MARKS = (JOURNAL_DIR, ".locks")
"""Folders that make a folder a root of its own: its journal, a live session's locks."""
_REASON_SUFFIX = ".reason"
_NAME_MAX = 255
"""Bytes in one file name (``NAME_MAX`` of ext4, XFS, btrfs, tmpfs)."""

_FIRST_READ = 1 << 16
_O_DIR = os.O_RDONLY | O_DIRECTORY | O_CLOEXEC
_O_READ = os.O_RDONLY | O_CLOEXEC | O_NONBLOCK
"""``O_NONBLOCK``: no effect on a regular file; a FIFO put where a value belongs (by
mistake or malice) opens at once and reads empty, a damaged value, instead of
blocking the reader (a whole start) until something writes to it."""
_O_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_CLOEXEC | O_NOFOLLOW

_fork_gate = threading.Lock()
"""Held while a directory descriptor that may be locked is opened and registered, or
unregistered and closed, and by a fork: a child never holds a copy the registry
does not list."""
_LOCKING_DIRS: set[int] = set()
"""Descriptors of directories this process locks (``flock``), or is about to: see the
module's docstring, **Fork**."""


def _before_fork() -> None:
    # The journals' leaders first, the gate then: a leader may wait for the lock of a
    # durable write, which needs the gate to close its descriptor and let go of it.
    _lead_through_fork()
    _fork_gate.acquire()


def _after_fork_in_parent() -> None:
    _fork_gate.release()
    _stop_leading_after_fork()


def _after_fork_in_child() -> None:
    """Drop the copies of the parent's locked descriptors: the locks stay the parent's."""
    global _fork_gate
    for fd in _LOCKING_DIRS:
        try:
            os.close(fd)
        except OSError:
            pass
    _LOCKING_DIRS.clear()
    _fork_gate = threading.Lock()
    _reset_after_fork()


if hasattr(os, "register_at_fork"):
    # The journal's fork handlers too, in this one registration: their order matters.
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )

_DURABLE_DIRS: set[tuple[int, int, str]] = set()
"""Directories (st_dev, st_ino, path) whose entries this process has made durable.

The inode is part of the key: a directory removed and made again is a new one.
"""


def entry_file_stem(entry_name: str) -> str:
    """The stem of the files of quarantine entry ``entry_name`` (``{name}@{stamp}``).

    The entry's files add a stamp and ``.reason`` (34 bytes) to the value's
    name. A name persistkit makes leaves room for them (see
    :mod:`persistkit._names`), but a file made by hand or by another tool may be
    named up to 250 bytes, and quarantining it must not fail for its name's
    sake: such an entry's files are named by a prefix of the name and a digest
    of the whole name instead (the same every time). Its id and the key in its
    reason file keep the whole name.
    """
    raw = os.fsencode(entry_name)
    if len(raw) + len(_REASON_SUFFIX) <= _NAME_MAX:
        return entry_name
    name, at, stamp = raw.rpartition(b"@")
    digest = hashlib.blake2b(name, digest_size=8).hexdigest()
    room = _NAME_MAX - len(_REASON_SUFFIX) - len(at + stamp) - len(digest) - 1
    prefix = name[: max(room, 0)].decode("utf-8", "ignore")  # never half a character
    return f"{prefix}~{digest}{os.fsdecode(at + stamp)}"


def content_version(data: bytes) -> str:
    """The version of stored bytes: a digest of the content."""
    return hashlib.blake2b(data, digest_size=12).hexdigest()


class FileBackend(Backend):
    """Entities as JSON files under ``root`` (made absolute at construction).

    ``offload=True`` runs the blocking syscalls in worker threads and commits
    plain writes through the shared journal, so that writes in flight together
    share one fsync (group commit) instead of queueing for their directory's lock.
    ``read_only=True`` is for looking without touching (an operator's preflight):
    the commit journals of stopped processes are reported, not replayed, and
    every write is refused.
    """

    scheme = "file"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        os_layer: OSLayer = REAL_OS,
        offload: bool = False,
        executor: Executor | None = None,
        journal_limit: int = DEFAULT_JOURNAL_LIMIT,
        read_only: bool = False,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        history: HistoryPolicy | None = HistoryPolicy(),  # noqa: B008 - frozen, shared safely
        foreign_temp_age: float = MIN_FOREIGN_TEMP_AGE,
    ) -> None:
        require_posix_locks("the file backend")
        if not foreign_temp_age >= MIN_FOREIGN_TEMP_AGE:  # NaN too
            raise ValueError(
                f"foreign_temp_age={foreign_temp_age!r}: another program's temp file may be a "
                f"write in flight; at least {MIN_FOREIGN_TEMP_AGE:g} s (backtest-kit's own bound)"
            )
        self.foreign_temp_age = foreign_temp_age
        """Seconds before a start removes a temp file that is not persistkit's own."""
        # Absolute now, so that a later chdir does not move the data, and
        # resolved: the root may be a symbolic link, nothing below it may be.
        self.root = os_layer.realpath(os.path.abspath(os.fspath(root)))
        self._os = ConfinedOS(os_layer, self.root)
        self._offload = offload
        self._executor = executor
        # Inline writes never suspend, so they cannot be reordered.
        self.applies_in_call_order = not offload
        self._closed = False
        self.read_only = read_only
        self.lock_timeout = lock_timeout
        self.history = None if history is None else HistoryArchive(self, history)
        """The archive of past journal generations (``None``: ``history=None``, none kept)."""
        self._others_history: HistoryArchive | None = None
        self.keeps_history = history is not None
        # A root that keeps history sends plain writes through the journal too,
        # so that they reach the history with their commit time (and cost one
        # fsync, not the durable replace's two).
        self._plain_writes_journaled = offload or history is not None
        self.journal = CommitJournal(self, limit=journal_limit, lock_timeout=lock_timeout)

    def archive_for_checkpoint(self) -> HistoryArchive | None:
        """Where a checkpoint copies the journal's records before it forgets them.

        This backend's history; or, opened with ``history=None`` on a root that
        other processes keep history in (``.history/`` exists), that history:
        its checkpoint would otherwise erase from it what the journal holds,
        their acknowledged writes included. It archives there without pruning
        (the owners' policy prunes), and its own plain writes take the durable
        replace, so they are not in it.
        """
        if self.history is not None:
            return self.history
        if self._others_history is None:
            try:
                self._os.stat(f"{self.root}/{HISTORY_DIR}")
            except FileNotFoundError:
                return None
            self._others_history = HistoryArchive(self, HistoryPolicy())
        return self._others_history

    @classmethod
    def from_url(cls, url: str) -> Self:
        """``file:///abs/path`` or ``file:relative/path``."""
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise InvalidNameError(f"file URL {url!r} names a host; only local paths are supported")
        path = unquote(parts.path)
        if not path:
            raise InvalidNameError(f"file URL {url!r} has no path")
        return cls(path)

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    def __repr__(self) -> str:
        return f"FileBackend({self.root!r})"

    # -- paths -----------------------------------------------------------------

    def _dir(self, namespace: str) -> str:
        return f"{self.root}/{namespace}" if namespace else self.root

    def path_of(self, key: str) -> str:
        """The file that holds ``key``."""
        return f"{self.root}/{key}{SUFFIX}"

    # -- plumbing ----------------------------------------------------------------

    def _check_not_closed(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self!r} is closed")

    def _check_open(self) -> None:
        self._check_not_closed()
        if not self.journal.recovered:
            # First use: check the format, merge an older release's journals.
            self.journal.recover()

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise WriteFailedError(f"{self!r} was opened read-only; nothing was written")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the blocking syscalls of one operation.

        By default on the calling thread: a small durable write is bound by its
        two fsyncs, and waking a worker thread and then the event loop again
        costs more than the syscalls around them (measured: 0.5-0.7x of the raw
        loop with a thread hop, 0.95x+ without, on a 2-vCPU VM). With
        ``offload=True`` they run in a worker thread instead, so the event loop
        never blocks and concurrent writes overlap their fsyncs. A cancelled
        caller then still waits for the worker to finish its syscalls, so that
        the key's ordering lock is released only once the file is final.
        """
        self._check_open()
        if not self._offload:
            return fn(*args)
        return await run_to_completion(self._executor, fn, *args)

    async def _run_locking(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`_run` for an operation that takes a lock: ``fn(*args, wait=...)``.

        Inline, ``fn`` may not wait for a lock another process holds (it raises
        before changing anything); it then runs again in a worker thread, which
        waits up to ``lock_timeout``.
        """
        self._check_open()
        if not self._offload:
            try:
                return fn(*args, wait=False)
            except _WouldBlock:
                pass
        return await run_to_completion(self._executor, lambda: fn(*args, wait=True))

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Work that may wait for another process's lock: always in a worker thread."""
        return await run_to_completion(self._executor, fn, *args)

    def _open_dir(self, path: str) -> int:
        return self._os.open(path, _O_DIR)

    def _ensure_dir(self, path: str) -> int:
        """Open ``path``, creating missing directories durably (parent fsynced)."""
        osl = self._os
        try:
            fd = osl.open(path, _O_DIR)
        except FileNotFoundError:
            fd = self._create_dirs(path)
        try:
            self._ensure_durable(fd, path)
        except BaseException:
            osl.close(fd)
            raise
        return fd

    def _ensure_durable(self, fd: int, path: str) -> None:
        """Make the entries down to the directory ``path`` (open as ``fd``) durable, once."""
        stat_result = self._os.fstat(fd)
        identity = (stat_result.st_dev, stat_result.st_ino, path)
        if identity not in _DURABLE_DIRS:
            self._sync_entries_to(path)
            _DURABLE_DIRS.add(identity)

    def _sync_entries_to(self, path: str) -> None:
        """Make the entries from the root down to ``path`` durable.

        A directory found in place may come from a process killed between its
        mkdir and the fsync of the parent, or from one whose fsync failed: its
        entry can still vanish in a power cut, with every value acknowledged in
        it. Done once per directory per process (see ``_DURABLE_DIRS``).
        """
        directory = path
        while directory != self.root:
            parent = os.path.dirname(directory)
            if parent == directory:
                break
            self._fsync_dir(parent)
            directory = parent

    def _create_dirs(self, path: str) -> int:
        osl = self._os
        missing = []
        probe = path
        while True:
            try:
                osl.stat(probe)
                break
            except FileNotFoundError:
                missing.append(probe)
                parent = os.path.dirname(probe)
                if parent == probe:
                    break
                probe = parent
        for directory in reversed(missing):
            try:
                osl.mkdir(directory, 0o777)
            except FileExistsError:
                continue
            self._fsync_dir(os.path.dirname(directory))
        return osl.open(path, _O_DIR)

    def _fsync_dir(self, path: str) -> None:
        fd = self._os.open(path, _O_DIR)
        try:
            self._os.fsync(fd)
        finally:
            self._os.close(fd)

    def _read_at(self, dir_fd: int | None, path: str) -> bytes | None:
        """Whole content of ``path``; ``None`` when absent."""
        osl = self._os
        try:
            fd = osl.open(path, _O_READ, dir_fd=dir_fd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            # No fstat for the size: one generous read takes most values whole,
            # and a short read of a regular file is its end.
            data = osl.read(fd, _FIRST_READ)
            if len(data) < _FIRST_READ:
                return data
            chunks = [data]
            while chunk := osl.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            osl.close(fd)

    def _write_new_file(self, dir_fd: int, name: str, data: bytes, *, sync: bool = True) -> None:
        """Steps 2-5 of the durable write, under the caller's lock.

        ``sync=False`` skips both fsyncs: the commit journal applies values it
        has already made durable (see ``persistkit.backends._journal``).
        """
        osl = self._os
        try:
            found = osl.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            mode: int | None = None
        else:
            if stat.S_ISLNK(found.st_mode):
                raise self._os.refuse_link(dir_fd, name)  # never replace a foreign link
            mode = stat.S_IMODE(found.st_mode)
        temp = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            fd = osl.open(temp, _O_TEMP, 0o666, dir_fd=dir_fd)
        except OSError as exc:
            raise WriteFailedError(
                f"cannot create a temp file in {self._describe_dir(dir_fd)}: {exc}; "
                "the previous value is kept"
            ) from exc
        try:
            try:
                if mode is not None:
                    osl.fchmod(fd, mode)  # keep the mode a user gave the file
                view = memoryview(data)
                while view:
                    view = view[osl.write(fd, view) :]
                if sync:
                    osl.fsync(fd)
            finally:
                osl.close(fd)
            osl.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            try:
                osl.unlink(temp, dir_fd=dir_fd)
            except OSError:
                pass  # startup sweeps it; the error below is what matters
            raise WriteFailedError(
                f"writing {name} failed before it became visible: {exc}; the previous value is kept"
            ) from exc
        if not sync:
            return
        try:
            osl.fsync(dir_fd)
        except OSError as exc:
            raise DurabilityUnknownError(
                f"{name} was replaced but fsync of its directory failed ({exc}): "
                "the new value is visible, but may not survive a power cut"
            ) from exc

    def write_file(self, name: str, data: bytes) -> str:
        """Durably replace the file ``name`` in the root with ``data``; returns its path.

        For bytes that are not a value (a report written beside the state):
        the same durable write as every value (see the module docstring), the root created
        durably if missing, a link in its place refused. ``name`` is one file
        name, used as given.
        """
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise InvalidNameError(f"{name!r} is not a file name")
        self._check_not_closed()
        if self.read_only:
            raise WriteFailedError(f"{self!r} was opened read-only; nothing was written")
        dir_fd = self._ensure_dir(self.root)
        try:
            self._write_new_file(dir_fd, name, data)
        finally:
            self._os.close(dir_fd)
        return f"{self.root}/{name}"

    def _describe_dir(self, dir_fd: int) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{dir_fd}")
        except OSError:
            return "its directory"

    @staticmethod
    def _check_expected(key: str, current: bytes | None, expect: Expected) -> None:
        if expect is ANY_VERSION:
            return
        if expect is None:
            if current is not None:
                raise ConflictError(f"{key} exists already (create-only write)", key=key)
        elif current is None:
            raise ConflictError(f"{key} was removed since version {expect}", key=key)
        elif content_version(current) != expect:
            raise ConflictError(f"{key} changed since version {expect}", key=key)

    # -- single values ---------------------------------------------------------

    def _get_now(self, key: str, *, refreshed: bool = False) -> Versioned | None:
        journal = self.journal
        if not refreshed:
            journal.refresh()
        if journal.pending:
            found, committed = journal.lookup(key)
            if found:  # held by the journal: its files may lag behind
                return None if committed is None else Versioned(committed, content_version)
        try:
            data = self._read_at(None, f"{self.root}/{key}{SUFFIX}")
        except OSError as exc:
            raise BackendError(f"cannot read {key}: {exc}") from exc
        return None if data is None else Versioned(data, content_version)

    async def get(self, key: str) -> Versioned | None:
        # Inline, not in a thread: reading a small cached file takes a few
        # microseconds, less than the hop to a worker thread would.
        self._check_open()
        return self._get_now(key)

    async def get_many(self, keys: Iterable[str]) -> list[Versioned | None]:
        self._check_open()
        # One look at the shared journal for all of them (a system call each
        # would be most of the cost): each value is still one committed at a
        # moment of this call, as separate gets would give.
        self.journal.refresh()
        return [self._get_now(key, refreshed=True) for key in keys]

    async def get_many_data(self, keys: Iterable[str]) -> list[bytes | None]:
        self._check_open()
        journal = self.journal
        journal.refresh()
        pending = journal.pending
        found: list[bytes | None] = []
        for key in keys:
            # _get_now's journal lookup, inlined: the statistics of a tick read a
            # few keys the journal holds, in every commit.
            committed = pending.get(key, _MISSING)
            if committed is _MISSING:
                stored = self._get_now(key, refreshed=True)
                found.append(None if stored is None else stored.data)
            else:
                found.append(committed)  # type: ignore[arg-type]  # bytes or None
        return found

    def _lock_dir(self, dir_fd: int, key: str, wait: bool) -> None:
        """Lock ``dir_fd``, the directory of ``key``, opened by :meth:`_open_locking_dir`."""
        take_lock(self._os.flock, dir_fd, self.lock_timeout, f"the directory of {key}", wait=wait)

    def _open_locking_dir(self, path: str, *, create: bool = False) -> int:
        """Open the directory ``path`` (``create``: as :meth:`_ensure_dir` does) to lock it;
        registered until :meth:`_close_dir` (see the module's docstring, **Fork**)."""
        try:
            with _fork_gate:
                fd = self._open_dir(path)
                _LOCKING_DIRS.add(fd)
        except FileNotFoundError:
            if not create:
                raise
            self._close_dir(self._ensure_dir(path))  # made, durably; opened again registered
            return self._open_locking_dir(path)
        if create:
            try:
                self._ensure_durable(fd, path)
            except BaseException:
                self._close_dir(fd)
                raise
        return fd

    def _close_dir(self, dir_fd: int) -> None:
        """Close a descriptor :meth:`_open_locking_dir` opened (releasing its lock)."""
        with _fork_gate:
            _LOCKING_DIRS.discard(dir_fd)
            self._os.close(dir_fd)

    def _put_sync(self, key: str, data: bytes, expect: Expected, *, wait: bool) -> str | None:
        """The durable write under the directory lock; ``None``: the journal holds ``key``."""
        self.journal.ensure_open(wait=wait)
        namespace, name = split_key(key)
        try:
            dir_fd = self._open_locking_dir(self._dir(namespace), create=True)
        except OSError as exc:
            raise WriteFailedError(
                f"cannot open or create the directory of {key}: {exc}; the previous value is kept"
            ) from exc
        try:
            self._lock_dir(dir_fd, key, wait)
            if self.journal.holds(key):
                # Committed by a tick (in any process) since the last checkpoint:
                # this write goes behind it in the journal, or a later
                # application of the journal would undo it.
                return None
            filename = name + SUFFIX
            if expect is not ANY_VERSION:
                self._check_expected(key, self._read_at(dir_fd, filename), expect)
            self._write_new_file(dir_fd, filename, data)
        finally:
            self._close_dir(dir_fd)  # also releases the flock
        return content_version(data)

    async def put(self, key: str, data: bytes, *, expect: Expected = ANY_VERSION) -> str:
        self._check_writable()
        if not self._plain_writes_journaled and not self.journal.queued(key):
            # The durable replace (module docstring), unless the journal holds the key.
            version = await self._run_locking(self._put_sync, key, data, expect)
            if version is not None:
                return version
        await self._journal_commit({key: data}, {key: expect})
        return content_version(data)

    async def _journal_commit(
        self,
        writes: Mapping[str, bytes | None],
        expect: Mapping[str, Expected] | None,
        *,
        plain: bool = True,
    ) -> None:
        # A plain write's file is written before it returns when the history
        # routes every write through the journal (the entity files backtest-kit reads stay current).
        apply_now = plain and self._plain_writes_journaled and not self._offload
        if self._offload:
            await self._off_loop(self.journal.commit, writes, expect)
        else:
            await self.journal.commit_async(writes, expect, apply_now=apply_now)

    def _delete_sync(self, key: str, expect: Expected, *, wait: bool) -> bool | None:
        """The durable removal under the directory lock; ``None``: the journal holds ``key``."""
        self.journal.ensure_open(wait=wait)
        osl = self._os
        namespace, name = split_key(key)
        try:
            dir_fd = self._open_locking_dir(self._dir(namespace))
        except (FileNotFoundError, NotADirectoryError):  # no directory, so no value
            if self.journal.holds(key):
                return None
            self._check_expected(key, None, expect)
            return False
        try:
            self._lock_dir(dir_fd, key, wait)
            if self.journal.holds(key):
                return None
            filename = name + SUFFIX
            if expect is not ANY_VERSION:
                self._check_expected(key, self._read_at(dir_fd, filename), expect)
            try:
                osl.unlink(filename, dir_fd=dir_fd)
                removed = True
            except FileNotFoundError:
                # Perhaps removed by a process killed before its directory
                # fsync: the absence must be durable before we report it.
                removed = False
            except OSError as exc:
                raise WriteFailedError(f"cannot remove {key}: {exc}; it is kept") from exc
            try:
                osl.fsync(dir_fd)
            except OSError as exc:
                raise DurabilityUnknownError(
                    f"{key} was removed but fsync of its directory failed ({exc}): "
                    "it may reappear after a power cut"
                ) from exc
            return removed
        finally:
            self._close_dir(dir_fd)

    async def delete(self, key: str, *, expect: Expected = ANY_VERSION) -> bool:
        self._check_writable()
        if not self._plain_writes_journaled and not self.journal.queued(key):
            removed = await self._run_locking(self._delete_sync, key, expect)
            if removed is not None:
                return removed
        if expect is not ANY_VERSION:
            await self._journal_commit({key: None}, {key: expect})
            return expect is not None
        # "Was it there?" is answered at the commit: expect the version seen,
        # and look again if another writer changed it in between.
        while True:
            seen = await self.get(key)
            version = None if seen is None else seen.version
            try:
                await self._journal_commit({key: None}, {key: version})
            except ConflictError:
                continue
            return seen is not None

    commit_checks_versions = True

    async def commit(
        self,
        writes: Mapping[str, bytes | None],
        *,
        expect: Mapping[str, Expected] | None = None,
    ) -> None:
        """One journal record and one (shared) fsync; see ``persistkit.backends._journal``.

        ``expect`` maps keys to the version each must still have when the
        record is appended (compare-and-set at commit time, across processes).
        """
        self._check_writable()
        if writes:
            await self._journal_commit(writes, expect, plain=False)

    # -- listing ---------------------------------------------------------------

    async def scan(self, namespace: str, *, recursive: bool = False) -> AsyncIterator[str]:
        self._check_open()
        journaled = dict(self.journal.iter_pending(namespace, recursive))
        async for key in self._scan_files(namespace, recursive):
            if key in journaled and journaled.pop(key) is None:
                continue  # deleted by a commit not applied yet
            yield key
        for key, data in journaled.items():
            if data is not None:
                yield key

    async def _scan_files(self, namespace: str, recursive: bool) -> AsyncIterator[str]:
        pending = [namespace]
        listed = 0
        while pending:
            current = pending.pop()
            try:
                entries = self._os.scandir(self._dir(current))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise BackendError(f"cannot list {self._dir(current)}: {exc}") from exc
            with entries:
                for entry in entries:
                    name = entry.name
                    if name.startswith("."):
                        continue  # temp files, quarantine: persistkit's own
                    if name.endswith(SUFFIX):
                        yield join_key(current, name[: -len(SUFFIX)])
                        listed += 1
                        if listed % 1024 == 0:
                            await asyncio.sleep(0)  # a long listing must not starve the loop
                    elif recursive and entry.is_dir(follow_symlinks=False):
                        pending.append(join_key(current, name))

    # -- snapshot --------------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        """Every committed value at one commit of the shared journal; no lock, no write.

        See :meth:`snapshot_and_cut`, which also gives the journal's records at that point.
        """
        snapshot, _cut = await self.snapshot_and_cut()
        return snapshot

    async def snapshot_and_cut(self) -> tuple[Snapshot, JournalCut]:
        """Every committed value at one commit of the shared journal, and the journal
        read there (its records: what is derived from them, at the same point).

        The journal is read up to its last complete record (a commit point),
        then every value file, then the journal again. Keys the journal held
        at that point take its values (those that differ from their files are
        :attr:`~Snapshot.pending`). The files are right for every other key,
        unless a later commit reached them meanwhile: only possible for a key
        the journal holds now and did not then, or after a checkpoint (a new
        journal). Then it reads again, up to ``SNAPSHOT_ATTEMPTS`` (5) times
        without blocking anyone; a bot that commits without a pause can land a
        checkpoint in each, and then the journal lock is held (read-only) for
        one last read: the bot's commits wait for it, milliseconds. A plain
        write (outside a transaction) of a key the journal does not hold is
        one key's write: it is read as it is when its file is read.

        Symbolic links inside the root are listed, never followed (see
        :attr:`Snapshot.foreign_links`). Per-process journals of an older
        release are not read: they are :attr:`~Snapshot.behind`.
        """
        self._check_open()
        journal = self.journal
        for _ in range(SNAPSHOT_ATTEMPTS):
            cut = journal.read_cut()
            files, links, nested = await self._run(self._read_tree)
            if cut.continued_by(journal.read_cut()):
                break
        else:
            # A bot committing without a pause can land a checkpoint in every
            # read: hold its journal still for one read (its commits wait that long).
            try:
                cut, (files, links, nested) = await self._run(self._read_held_still)
            except LockTimeoutError as exc:
                raise SnapshotError(
                    f"{self.root}: a checkpoint or a commit to a new key landed during each of "
                    f"{SNAPSHOT_ATTEMPTS} reads, and the commit journal could not be held still "
                    f"for one ({exc}); nothing was read. Run it again"
                ) from exc
        behind = tuple(
            f"{JOURNAL_DIR}/{name}: an older release's commits, not read (a start merges them)"
            for name in journal.legacy_journal_names()
        ) + tuple(
            f"{namespace}/: a root of its own (a live session's base_dir below this root); "
            f"its commits are not read here: run the command on {self.root}/{namespace}"
            for namespace in nested
        )
        # Record-only keys are no state; as files they were applied by an earlier build's
        # checkpoint, which did not know them (see docs: mixed versions).
        drop_record_only(files)
        snapshot = lay_commits_over(
            files,
            cut.writes,
            {key: time_ns / 1e9 for key, time_ns in cut.committed_at.items()},
            behind=behind,
            foreign_links=tuple(sorted(links)),
            point=f"journal commit {cut.seq}" if cut.seq else "no journal commit yet: the files",
        )
        return snapshot, cut

    def _read_held_still(
        self,
    ) -> tuple[JournalCut, tuple[dict[str, bytes], list[str], list[str]]]:
        with self.journal.held_still():
            return self.journal.read_cut(), self._read_tree()

    def _read_tree(self) -> tuple[dict[str, bytes], list[str], list[str]]:
        """Every value file under the root, every symbolic link met (never followed),
        and every folder below the root that is a root of its own.

        Hidden folders (quarantine, journal, locks, history) are walked for links only.
        A folder holding a ``.journal`` or ``.locks`` is another root (a live
        session's ``base_dir`` below this one): its files are read as values
        here, but its commits are its own journal's.
        """
        values: dict[str, bytes] = {}
        links: list[str] = []
        nested: list[str] = []
        waiting = [("", True)]
        while waiting:
            namespace, holds_values = waiting.pop()
            path = self._dir(namespace)
            try:
                dir_fd = self._open_dir(path)
            except ForeignSymlinkError as exc:
                links.append(exc.path or path)
                continue
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed while we walked
            try:
                with self._os.scandir(dir_fd, links=True) as entries:
                    for entry in entries:
                        name = entry.name
                        if entry.is_symlink():
                            links.append(f"{path}/{name}")
                        elif entry.is_dir(follow_symlinks=False):
                            if namespace and holds_values and name in _ROOT_MARKS:
                                nested.append(namespace)
                            own = holds_values and not name.startswith(".")
                            waiting.append((join_key(namespace, name), own))
                        elif holds_values and name.endswith(SUFFIX) and not name.startswith("."):
                            try:
                                data = self._read_at(dir_fd, name)
                            except ForeignSymlinkError as exc:  # swapped for one just now
                                links.append(exc.path or f"{path}/{name}")
                                continue
                            if data is not None:
                                values[join_key(namespace, name[: -len(SUFFIX)])] = data
            except OSError as exc:
                raise BackendError(f"cannot read {path}: {exc}") from exc
            finally:
                self._os.close(dir_fd)
        return values, links, sorted(set(nested))

    # -- history -----------------------------------------------------------------

    def _history_now(self, until_ns: int | None) -> RecordedHistory:
        if self.history is None:
            raise HistoryUnavailableError(
                f"{self!r} was opened with history=None: it keeps no history"
            )
        # The journal first, then the archive: a checkpoint in between shows
        # its records twice (skipped by number), never not at all.
        current = self.journal.records()
        return self.history.read(current, until_ns)

    async def history_records(self, until_ns: int | None = None) -> RecordedHistory:
        """The root's history: the base state and every commit since (kept at each checkpoint).

        ``until_ns`` lets it skip the days after that time.
        """
        self._check_open()
        return await self._off_loop(self._history_now, until_ns)

    # -- self-healing ------------------------------------------------------------

    def _clean_orphans_sync(self, namespace: str, dry_run: bool, *, wait: bool) -> list[str]:
        osl = self._os
        try:
            dir_fd = self._open_locking_dir(self._dir(namespace))
        except (FileNotFoundError, NotADirectoryError):
            return []
        try:
            if not dry_run:
                # Every live write holds this lock for the life of its temp
                # file, so under it any temp file is a dead writer's leftover.
                self._lock_dir(dir_fd, f"{namespace}/", wait)
            found = self._sweep_temps(dir_fd, self._dir(namespace), namespace, dry_run)
            if not dry_run:
                # A writer killed between its rename and its directory fsync
                # left a value that this start would read but a power cut could
                # still take away: make the directory and its entries durable
                # before anything here is read.
                osl.fsync(dir_fd)
                self._sync_entries_to(self._dir(namespace))
            # A quarantine writes its reason file through a temp file while it
            # holds this same lock, so a crash there leaves one to sweep too.
            quarantine = self._quarantine_dir(namespace)
            try:
                quarantine_fd = self._open_dir(quarantine)
            except (FileNotFoundError, NotADirectoryError):
                return found
            try:
                prefix = join_key(QUARANTINE_DIR, namespace)
                found += self._sweep_temps(quarantine_fd, quarantine, prefix, dry_run)
            finally:
                osl.close(quarantine_fd)
        finally:
            self._close_dir(dir_fd)
        return found

    def _sweep_temps(self, dir_fd: int, path: str, namespace: str, dry_run: bool) -> list[str]:
        osl = self._os
        found = []
        stale_before = time.time() - self.foreign_temp_age
        with osl.scandir(path) as entries:
            for entry in entries:
                if not entry.name.startswith(TEMP_PREFIX):
                    continue
                if not _OWN_TEMP.match(entry.name):
                    # Another program's write, maybe in flight: its lock is not ours.
                    try:
                        found_stat = osl.stat(entry.name, dir_fd=dir_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # renamed onto its target meanwhile
                    if found_stat.st_mtime > stale_before:
                        continue
                found.append(join_key(namespace, entry.name))
                if not dry_run:
                    osl.unlink(entry.name, dir_fd=dir_fd)
        if found and not dry_run:
            osl.fsync(dir_fd)
        return found

    async def clean_orphans(self, namespace: str, *, dry_run: bool = False) -> list[str]:
        if not dry_run:
            self._check_writable()
        return await self._run_locking(self._clean_orphans_sync, namespace, dry_run)

    def _quarantine_dir(self, namespace: str) -> str:
        return (
            f"{self.root}/{QUARANTINE_DIR}/{namespace}"
            if namespace
            else (f"{self.root}/{QUARANTINE_DIR}")
        )

    def _quarantine_sync(self, key: str, reason: str, *, wait: bool) -> QuarantineEntry:
        osl = self._os
        namespace, name = split_key(key)
        now = time.time()
        entry_name = split_key(new_quarantine_id(key))[1]
        stem = entry_file_stem(entry_name)
        # A file named by hand may not be UTF-8 (its key then holds surrogates,
        # which JSON cannot): the reason file shows it escaped, the id keeps it.
        shown = key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        meta = orjson.dumps({"key": shown, "reason": reason, "quarantined_at": now})
        quarantine_fd = self._ensure_dir(self._quarantine_dir(namespace))
        try:
            try:
                source_fd = self._open_locking_dir(self._dir(namespace))
            except (FileNotFoundError, NotADirectoryError) as exc:
                raise BackendError(f"cannot quarantine {key}: {exc}") from exc  # no such value
            try:
                self._lock_dir(source_fd, key, wait)
                self._write_new_file(quarantine_fd, stem + _REASON_SUFFIX, meta)
                try:
                    osl.replace(
                        name + SUFFIX,
                        stem + SUFFIX,
                        src_dir_fd=source_fd,
                        dst_dir_fd=quarantine_fd,
                    )
                except OSError as exc:
                    osl.unlink(stem + _REASON_SUFFIX, dir_fd=quarantine_fd)
                    raise BackendError(f"cannot quarantine {key}: {exc}") from exc
                osl.fsync(quarantine_fd)
                osl.fsync(source_fd)
            finally:
                self._close_dir(source_fd)
        finally:
            osl.close(quarantine_fd)
        return QuarantineEntry(join_key(namespace, entry_name), key, reason, now)

    async def quarantine(self, key: str, reason: str) -> QuarantineEntry:
        self._check_writable()
        if self.journal.holds(key):
            # The journal's value of the key goes to its file first.
            await self._off_loop(self.journal.checkpoint)
        return await self._run_locking(self._quarantine_sync, key, reason)

    async def list_quarantine(self, namespace: str = "") -> AsyncIterator[QuarantineEntry]:
        self._check_open()
        pending = [namespace]
        while pending:
            current = pending.pop()
            try:
                entries = list(self._os.scandir(self._quarantine_dir(current)))
            except (FileNotFoundError, NotADirectoryError):
                continue
            names = {entry.name for entry in entries}
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_dir(follow_symlinks=False):
                    pending.append(join_key(current, entry.name))
                elif entry.name.endswith(_REASON_SUFFIX):
                    if entry.name[: -len(_REASON_SUFFIX)] + SUFFIX not in names:
                        # A quarantine cut before its move: the value stayed in
                        # place, and the next startup quarantines it again.
                        continue
                    data = self._read_at(None, f"{self._quarantine_dir(current)}/{entry.name}")
                    if data is None:
                        continue
                    try:
                        meta = orjson.loads(data)
                        key = str(meta["key"])
                        yield QuarantineEntry(
                            id=self._entry_id(current, entry.name[: -len(_REASON_SUFFIX)], key),
                            key=key,
                            reason=str(meta["reason"]),
                            quarantined_at=float(meta["quarantined_at"]),
                        )
                    except (ValueError, KeyError, TypeError):
                        continue  # a reason file torn by a crash; the data file is still there

    @staticmethod
    def _entry_id(namespace: str, stem: str, key: str) -> str:
        """The id of the entry whose files are ``stem``: ``{key}@{stamp}``.

        The stem is the id's last segment unless :func:`entry_file_stem`
        shortened it; then the key in the reason file gives the whole name,
        trusted only if it leads back to these very files.
        """
        whole = f"{key}@{stem.rpartition('@')[2]}"
        if split_key(key)[0] == namespace and entry_file_stem(split_key(whole)[1]) == stem:
            return whole
        return join_key(namespace, stem)

    def _entry_paths(self, entry_id: str) -> tuple[str, str, str]:
        """Quarantine directory, entry file stem and original key of ``entry_id``."""
        key = quarantined_key(entry_id)
        namespace, entry_name = split_key(entry_id)
        return self._quarantine_dir(namespace), entry_file_stem(entry_name), key

    async def read_quarantined(self, entry_id: str) -> bytes:
        self._check_open()
        directory, stem, _ = self._entry_paths(entry_id)
        data = self._read_at(None, f"{directory}/{stem}{SUFFIX}")
        if data is None:
            raise EntityNotFoundError(f"no quarantine entry {entry_id!r}")
        return data

    async def restore(self, entry_id: str, *, overwrite: bool = False) -> str:
        """Commit the quarantined value back to its key, then remove the entry.

        One commit of the shared journal, like a tick: ordered with every other
        process's commits, so no replay of the journal undoes it, and checked
        at commit time (the key must still be absent unless ``overwrite``). A
        crash between the commit and the entry's removal leaves the value in
        place and the entry still listed; purging it then loses nothing. A key
        that is not UTF-8 text (a file named by hand) cannot be committed:
        :class:`InvalidNameError`, nothing changed.
        """
        self._check_writable()
        key = quarantined_key(entry_id)
        try:
            key.encode()
        except UnicodeEncodeError:
            raise InvalidNameError(
                f"{key!r} is not UTF-8 text: no store wrote it, and a commit cannot name it; "
                f"move {entry_id!r} out of {self.root}/{QUARANTINE_DIR} by hand"
            ) from None
        data = await self.read_quarantined(entry_id)
        try:
            await self._journal_commit({key: data}, None if overwrite else {key: None})
        except ConflictError as exc:
            raise ConflictError(
                f"{key} has a value again; restore with overwrite to replace it", key=key
            ) from exc
        try:
            await self._run(self._purge_sync, entry_id)
        except EntityNotFoundError:
            pass  # removed meanwhile by a purge: the value is back all the same
        return key

    def _purge_sync(self, entry_id: str) -> None:
        directory, stem, _ = self._entry_paths(entry_id)
        try:
            dir_fd = self._open_dir(directory)
        except FileNotFoundError as exc:
            raise EntityNotFoundError(f"no quarantine entry {entry_id!r}") from exc
        try:
            try:
                self._os.unlink(stem + SUFFIX, dir_fd=dir_fd)
            except FileNotFoundError as exc:
                raise EntityNotFoundError(f"no quarantine entry {entry_id!r}") from exc
            self._unlink_quietly(dir_fd, stem + _REASON_SUFFIX)
            self._os.fsync(dir_fd)
        finally:
            self._os.close(dir_fd)

    async def purge(self, entry_id: str) -> None:
        self._check_writable()
        await self._run(self._purge_sync, entry_id)

    async def recover(self) -> int:
        """Check the format, merge an older release's journals, checkpoint (see the journal)."""
        self._check_not_closed()
        return await self._off_loop(self.journal.recover)

    async def checkpoint(self) -> None:
        """Apply the journal to the files, sync them, start an empty journal."""
        self._check_writable()
        await self._off_loop(self.journal.checkpoint)

    async def salvage_journal(self) -> list[SalvageReport]:
        """Apply a damaged commit journal up to its damage and keep it in the quarantine.

        What ``persistkit journal salvage ROOT`` runs. Empty when nothing is damaged.
        """
        self._check_not_closed()
        if self.read_only:
            raise WriteFailedError(f"{self!r} was opened read-only; nothing was salvaged")
        quarantine = f"{self.root}/{QUARANTINE_DIR}/{JOURNAL_DIR}"
        return await self._off_loop(self.journal.salvage, quarantine)

    async def unapplied_commits(self) -> list[str]:
        self._check_open()
        return await self._run(self.journal.describe_unapplied)

    def _unlink_quietly(self, dir_fd: int, name: str) -> None:
        try:
            self._os.unlink(name, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise

    async def changed_at(self, key: str) -> float | None:
        self._check_open()
        try:
            return self._os.stat(self.path_of(key)).st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise BackendError(f"cannot stat {key}: {exc}") from exc

    async def aclose(self) -> None:
        if not self._closed:
            await self._off_loop(self.journal.close)
        self._closed = True

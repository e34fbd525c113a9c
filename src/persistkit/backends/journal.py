"""The file backend's commit journal: one fsync per tick, however many entities it touches.

A commit (:meth:`FileBackend.commit`, used by :func:`persistkit.transaction`)
is one checksummed record appended to this process's journal file under
``{root}/.journal/`` (one file per process, ``flock``-ed by it for its life)
and made durable with a single ``fsync``. That fsync is the
commit point: a crash before it leaves no trace of the tick (a torn record fails
its checksum), a crash after it is repaired by replaying the record.

Record framing (little endian)::

    magic "PKJ1" | payload length u32 | crc32 u32 | seq u64 | time_ns u64 | payload
    payload = count u32 | count x (key length i64, data length i64; -1 deletes)
              | every key (UTF-8) and its data, in order

The crc covers ``seq``, ``time_ns`` and the payload. Recovery stops at the first
record that is short, has a bad magic, a bad checksum or an unexpected ``seq``:
that is the torn tail of the write in flight when the process died.

**Group commit.** The commits that tasks of one event loop make in the same loop
iteration (an ``asyncio.gather`` of ticks, say) are flushed together, on the
loop's thread, with one ``write`` and one ``fsync``. Commits from several
threads queue up while a flush is in flight; the next leader writes all of them
with one ``fsync``. Every commit returns only once its record is durable.

**Applying.** A committed write is visible at once to this process through an
in-memory overlay (``pending``), and a background thread applies it to the
entity's file (temp file + rename, no fsync: the journal is the durability) and
drops it from the overlay. Repeated updates of one entity coalesce into one file
write. Other processes read the files, so they see a commit once it is applied
(:data:`APPLY_DELAY` later, plus the time to write the files).

**Checkpoint.** When the journal passes ``limit`` bytes, at ``aclose`` and at
startup after a replay, every pending write is applied, the file system is
flushed (``syncfs``) and the journal is emptied. Only then may the journal
forget a record.

**Recovery.** At the backend's first use, before anything is read or listed,
every journal whose owner is gone (its ``flock`` can be taken) is replayed in
commit-time order and removed. Un-synced applied files may be torn or lost after
a power cut; the replay rewrites them.

**Plain writes of journaled keys.** A ``put`` or ``delete`` of a key that is in
this process's journal since the last checkpoint (or in a commit still queued)
goes through the journal too, as a one-write commit behind it, so that a replay
after a crash can never undo it.

Limit: that guarantee is per process. A plain write by *another* process to a
key this process committed, followed by a crash of this process, is undone by
the replay; the live session's one-instance lock is what keeps a strategy's
keys to one process.
"""

from __future__ import annotations

import array
import asyncio
import errno
import fcntl
import logging
import os
import secrets
import struct
import sys
import threading
import time
import weakref
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from persistkit.backends.base import ANY_VERSION, Expected, split_key
from persistkit.errors import (
    BackendError,
    ConflictError,
    DurabilityUnknownError,
    WriteFailedError,
)

if TYPE_CHECKING:
    from persistkit.backends.file import FileBackend

__all__ = [
    "DEFAULT_JOURNAL_LIMIT",
    "JOURNAL_DIR",
    "CommitJournal",
    "JournalRecord",
    "encode_record",
    "parse_records",
]

JOURNAL_DIR = ".journal"
JOURNAL_SUFFIX = ".log"
_NEW_SUFFIX = ".new"
DEFAULT_JOURNAL_LIMIT = 64 << 20
"""Journal bytes after which the leader checkpoints (applies, syncs, empties)."""
APPLY_DELAY = 0.5
"""Seconds the applier waits after a commit before writing the files, so that
ticks rewriting the same entities cost one file write, not one per tick. The
applier is a Python thread: while it runs it competes with the event loop for
the GIL (measured: 1,000-entity tick commits 2-10x slower while it writes every
tick), so it should run seldom. Other processes see a commit in the files this
much later; this process sees it at once."""

MAGIC = b"PKJ1"
_HEADER = struct.Struct("<4sIIQQ")
_SEQ_TIME = struct.Struct("<QQ")
_COUNT = struct.Struct("<I")
_MAX_PAYLOAD = (1 << 32) - 1

_O_JOURNAL = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC

Writes = Mapping[str, "bytes | None"]


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """One committed tick: its writes, in the order given (``None`` deletes)."""

    seq: int
    time_ns: int
    writes: dict[str, bytes | None]


def encode_record(seq: int, time_ns: int, writes: Writes) -> bytes:
    """The framed, checksummed bytes of one commit."""
    # Lengths in one pack and bytes in one join: a tick of a thousand entities
    # costs a few Python operations per entity, not a struct call per field.
    lengths: list[int] = []
    parts: list[bytes] = []
    for key, data in writes.items():
        encoded_key = key.encode()
        parts.append(encoded_key)
        lengths.append(len(encoded_key))
        if data is None:
            lengths.append(-1)
        else:
            lengths.append(len(data))
            parts.append(data)
    header = struct.pack(f"<I{len(lengths)}q", len(writes), *lengths)
    payload = b"".join((header, *parts))
    if len(payload) > _MAX_PAYLOAD:
        raise WriteFailedError(f"a commit of {len(payload)} bytes exceeds the 4 GiB record limit")
    seq_time = _SEQ_TIME.pack(seq, time_ns)
    crc = zlib.crc32(payload, zlib.crc32(seq_time))
    return _HEADER.pack(MAGIC, len(payload), crc, seq, time_ns) + payload


def _decode_payload(payload: bytes) -> dict[str, bytes | None] | None:
    try:
        (count,) = _COUNT.unpack_from(payload, 0)
        lengths = array.array("q")
        offset = _COUNT.size + 2 * count * lengths.itemsize
        if offset > len(payload):
            return None
        lengths.frombytes(payload[_COUNT.size : offset])
        if sys.byteorder != "little":
            lengths.byteswap()
        writes: dict[str, bytes | None] = {}
        for index in range(count):
            key_len, data_len = lengths[2 * index], lengths[2 * index + 1]
            if key_len < 0 or offset + key_len > len(payload):
                return None
            key = payload[offset : offset + key_len].decode()
            offset += key_len
            if data_len < 0:
                writes[key] = None
            else:
                if offset + data_len > len(payload):
                    return None
                writes[key] = payload[offset : offset + data_len]
                offset += data_len
        return writes if offset == len(payload) else None
    except (struct.error, UnicodeDecodeError):
        return None


def parse_records(data: bytes) -> tuple[list[JournalRecord], int]:
    """The complete records at the start of ``data`` and the length they cover.

    Everything after that length is a torn or corrupt tail.
    """
    records: list[JournalRecord] = []
    offset = 0
    expected_seq = 1
    while offset + _HEADER.size <= len(data):
        magic, length, crc, seq, time_ns = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        if magic != MAGIC or seq != expected_seq or end > len(data):
            break
        payload = data[offset + _HEADER.size : end]
        if zlib.crc32(payload, zlib.crc32(_SEQ_TIME.pack(seq, time_ns))) != crc:
            break
        writes = _decode_payload(payload)
        if writes is None:
            break
        records.append(JournalRecord(seq, time_ns, writes))
        offset = end
        expected_seq += 1
    return records, offset


@dataclass(slots=True)
class _Request:
    writes: Writes
    expect: Mapping[str, Expected] | None
    done: bool = False
    error: BaseException | None = None


@dataclass(slots=True)
class _OpenJournal:
    fd: int
    name: str
    size: int = 0
    next_seq: int = 1


_MISSING = object()

logger = logging.getLogger("persistkit")


class CommitJournal:
    """The commit journal of one :class:`FileBackend` in one process."""

    def __init__(self, backend: FileBackend, *, limit: int = DEFAULT_JOURNAL_LIMIT) -> None:
        self._backend = backend
        self._os = backend._os
        self.limit = limit
        self.directory = f"{backend.root}/{JOURNAL_DIR}"
        self.pending: dict[str, bytes | None] = {}
        """Committed writes not yet applied to their files (what reads see first)."""
        self.dirty: set[str] = set()
        """Keys in the journal since the last checkpoint."""
        self.recovered = False
        self.commits = 0
        self.flushes = 0
        """Journal fsyncs: fewer than ``commits`` when group commit shared them."""
        self._recovery_lock = threading.Lock()
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._gathering: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, list[tuple[_Request, asyncio.Future[None]]]
        ] = weakref.WeakKeyDictionary()
        self._leading = False
        self._journal: _OpenJournal | None = None
        self._retired: list[_OpenJournal] = []
        self._last_time_ns = 0
        self._apply_lock = threading.Lock()
        self._apply_wanted = threading.Event()
        self._applier: threading.Thread | None = None
        self._stopping = False

    # -- recovery ------------------------------------------------------------------

    def recover(self) -> int:
        """Replay the journals of dead processes, once; returns the records replayed."""
        with self._recovery_lock:
            if self.recovered:
                return 0
            replayed = self._replay_dead_journals()
            self.recovered = True
            return replayed

    def _journal_names(self) -> list[str]:
        """The journal files, oldest name first; none when the folder does not exist."""
        try:
            return sorted(
                entry.name
                for entry in self._os.scandir(self.directory)
                if entry.name.endswith(JOURNAL_SUFFIX)
            )
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BackendError(f"cannot list the commit journal {self.directory}: {exc}") from exc

    def describe_dead_journals(self) -> list[str]:
        """What :meth:`recover` would replay, found without changing anything.

        A journal whose owner is alive holds its lock and is left out; a shared
        lock taken and dropped at once is how that is told, and writes nothing.
        """
        osl = self._os
        names = self._journal_names()
        found = []
        for name in names:
            path = f"{self.directory}/{name}"
            try:
                fd = osl.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                try:
                    osl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process owns it
                records, _ = parse_records(self._backend._read_at(None, path) or b"")
            finally:
                osl.close(fd)
            if records:
                keys = {key for record in records for key in record.writes}
                found.append(
                    f"{JOURNAL_DIR}/{name}: {len(records)} commit{'s' * (len(records) != 1)} "
                    f"of a stopped process ({len(keys)} keys), replayed by the next start"
                )
        return found

    def _replay_dead_journals(self) -> int:
        osl = self._os
        names = self._journal_names()
        if not names:
            return 0
        held: list[tuple[int, str]] = []
        journals: list[tuple[int, str, list[JournalRecord]]] = []
        try:
            for name in names:
                path = f"{self.directory}/{name}"
                try:
                    fd = osl.open(path, os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue  # its owner closed it cleanly meanwhile
                try:
                    osl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    osl.close(fd)  # a live process owns it
                    continue
                held.append((fd, name))
                data = self._backend._read_at(None, path) or b""
                complete, _ = parse_records(data)  # a torn tail is left out
                if complete:
                    journals.append((complete[0].time_ns, name, complete))
            # Each journal in its own order; journals by when they began (a
            # retired journal of one process comes before its successor).
            journals.sort(key=lambda item: (item[0], item[1]))
            merged: dict[str, bytes | None] = {}
            replayed = 0
            for _, _, records in journals:
                for record in records:
                    merged.update(record.writes)
                replayed += len(records)
            if held:
                self._apply(merged)
                self._sync_filesystem()
                for _, name in held:
                    osl.unlink(f"{self.directory}/{name}")
                self._backend._fsync_dir(self.directory)
        except OSError as exc:
            raise BackendError(f"replaying the commit journal failed: {exc}") from exc
        finally:
            for fd, _ in held:
                osl.close(fd)
        return replayed

    # -- committing ---------------------------------------------------------------------

    async def commit_async(
        self, writes: Writes, expect: Mapping[str, Expected] | None = None
    ) -> None:
        """:meth:`commit` on the event loop's thread, gathering the ticks ready together.

        The first commit of a loop iteration schedules one flush with
        ``call_soon``; every task that commits before it runs (all the tasks of
        an ``asyncio.gather``, say) joins the same flush: one write, one fsync,
        and no hop to a worker thread, which would cost more than it saves on a
        single tick.
        """
        loop = asyncio.get_running_loop()
        # Dirty from now on: a plain write of these keys called after this commit
        # must queue behind it in the journal, not overtake it on disk.
        self.dirty.update(writes)
        waiting = self._gathering.get(loop)
        if waiting is None:
            waiting = self._gathering[loop] = []
            loop.call_soon(self._flush_gathered, loop)
        done: asyncio.Future[None] = loop.create_future()
        waiting.append((_Request(writes, expect), done))
        await done

    def _flush_gathered(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._gathering.pop(loop, [])
        requests = [request for request, _ in batch]
        fatal: BaseException | None = None
        try:
            self._commit_requests(requests)
        except BaseException as exc:  # every waiter must hear of it, or it waits forever
            for request in requests:
                request.error = request.error or exc
            fatal = None if isinstance(exc, Exception) else exc
        for request, done in batch:
            if done.done():
                continue  # the caller was cancelled; its tick is committed all the same
            if request.error is not None:
                done.set_exception(request.error)
            else:
                done.set_result(None)
        if fatal is not None:
            raise fatal  # KeyboardInterrupt and the like still stop the loop

    def commit(self, writes: Writes, expect: Mapping[str, Expected] | None = None) -> None:
        """Append ``writes`` as one record and fsync (shared with concurrent commits).

        Returns once the record is durable and visible to reads in this process.
        ``expect`` maps keys to the version they must still have (compare-and-set).
        Callable from any thread; commits from several threads share fsyncs.
        """
        request = _Request(writes, expect)
        self.dirty.update(writes)
        self._commit_requests([request])
        if request.error is not None:
            raise request.error

    def _commit_requests(self, requests: list[_Request]) -> None:
        """Queue ``requests``; the first thread to find no leader writes every queued one."""
        with self._cond:
            self._queue.extend(requests)
            while not all(request.done for request in requests):
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                batch, self._queue = self._queue, []
                self._cond.release()
                try:
                    self._write_batch(batch)
                except BaseException as exc:
                    for queued in batch:
                        queued.error = queued.error or exc
                finally:
                    self._cond.acquire()
                    self._leading = False
                    for queued in batch:
                        queued.done = True
                    self._cond.notify_all()

    def _current(self, key: str, view: Mapping[str, bytes | None]) -> bytes | None:
        value = view.get(key, _MISSING)
        if value is _MISSING:
            value = self.pending.get(key, _MISSING)
        if value is _MISSING:
            return self._backend._read_at(None, self._backend.path_of(key))
        return value  # type: ignore[return-value]  # bytes or None past the sentinel

    def _write_batch(self, batch: list[_Request]) -> None:
        from persistkit.backends.file import FileBackend

        journal = self._open_journal()
        view: dict[str, bytes | None] = {}
        accepted: list[_Request] = []
        chunks: list[bytes] = []
        # Increasing even if the wall clock steps back: replay orders journals by it.
        now = self._last_time_ns = max(time.time_ns(), self._last_time_ns + 1)
        for request in batch:
            if request.expect:
                try:
                    for key, expected in request.expect.items():
                        if expected is not ANY_VERSION:
                            FileBackend._check_expected(key, self._current(key, view), expected)
                except ConflictError as exc:
                    request.error = exc
                    continue
            chunks.append(encode_record(journal.next_seq + len(accepted), now, request.writes))
            accepted.append(request)
            view.update(request.writes)
        if not accepted:
            return
        blob = b"".join(chunks)
        osl = self._os
        try:
            view_bytes = memoryview(blob)
            while view_bytes:
                view_bytes = view_bytes[osl.write(journal.fd, view_bytes) :]
        except OSError as exc:
            self._retire(journal, truncate_to=journal.size)
            raise WriteFailedError(
                f"appending to the commit journal failed: {exc}; the tick was not committed"
            ) from exc
        try:
            osl.fsync(journal.fd)
        except OSError as exc:
            # Never fsync again and trust it: this journal is retired, and its
            # records are replayed (or not) after the process exits.
            self._retire(journal, truncate_to=None)
            raise DurabilityUnknownError(
                f"fsync of the commit journal failed ({exc}): the tick may or may not "
                "survive a power cut"
            ) from exc
        journal.size += len(blob)
        journal.next_seq += len(accepted)
        self.flushes += 1
        self.commits += len(accepted)
        for request in accepted:
            self.pending.update(request.writes)
            self.dirty.update(request.writes)
        self._wake_applier()
        if journal.size >= self.limit:
            self._checkpoint_locked()

    def _open_journal(self) -> _OpenJournal:
        if self._journal is not None:
            return self._journal
        osl = self._os
        try:
            dir_fd = self._backend._ensure_dir(self.directory)
            try:
                name = f"{os.getpid()}-{time.time_ns()}-{secrets.token_hex(4)}{JOURNAL_SUFFIX}"
                # Locked under a name recovery ignores, then renamed: another
                # process's recovery never sees this journal unlocked, so never
                # takes it for a dead one and removes it.
                unlocked = f".{name}{_NEW_SUFFIX}"
                fd = osl.open(unlocked, _O_JOURNAL, 0o644, dir_fd=dir_fd)
                # Held for the life of the process: recovery replays only the
                # journals whose lock it can take, the dead owners'.
                osl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                osl.replace(unlocked, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                osl.fsync(dir_fd)
            finally:
                osl.close(dir_fd)
        except OSError as exc:
            raise WriteFailedError(f"cannot create the commit journal: {exc}") from exc
        self._journal = _OpenJournal(fd, name)
        return self._journal

    def _retire(self, journal: _OpenJournal, *, truncate_to: int | None) -> None:
        """Stop appending to ``journal``; keep it (and its lock) until exit."""
        if truncate_to is not None:
            try:
                self._os.ftruncate(journal.fd, truncate_to)
            except OSError:
                pass  # a torn record at the end is skipped at recovery anyway
        self._retired.append(journal)
        self._journal = None

    # -- applying -----------------------------------------------------------------------

    def _wake_applier(self) -> None:
        if self._applier is None:
            self._applier = threading.Thread(
                target=self._apply_loop, name=f"persistkit-apply {self.directory}", daemon=True
            )
            self._applier.start()
        self._apply_wanted.set()

    def _apply_loop(self) -> None:
        while True:
            self._apply_wanted.wait()
            if self._stopping:
                return
            time.sleep(APPLY_DELAY)
            self._apply_wanted.clear()
            if self._stopping:
                return
            try:
                self.apply_pending()
            except Exception:  # logged; the next checkpoint retries and raises to its caller
                logger.exception(
                    "persistkit: applying committed writes to %s failed; a checkpoint retries",
                    self._backend.root,
                )
                time.sleep(0.1)

    def apply_pending(self) -> None:
        """Write every pending commit to its file, then drop it from the overlay."""
        with self._apply_lock:
            snapshot = dict(self.pending)
            if not snapshot:
                return
            self._apply(snapshot)
            pending = self.pending
            for key, value in snapshot.items():
                # A newer commit of the key stays pending for the next pass.
                if pending.get(key, _MISSING) is value:
                    del pending[key]

    def _apply(self, writes: Mapping[str, bytes | None]) -> None:
        """Files take the values in ``writes``: temp + rename, no fsync."""
        from persistkit.backends.file import SUFFIX  # file.py imports this module

        backend = self._backend
        osl = self._os
        by_directory: dict[str, list[tuple[str, bytes | None]]] = {}
        for key, data in writes.items():
            namespace, name = split_key(key)
            by_directory.setdefault(namespace, []).append((name, data))
        for namespace, items in by_directory.items():
            if all(data is None for _, data in items):
                try:
                    dir_fd = backend._open_dir(backend._dir(namespace))
                except FileNotFoundError:
                    continue
            else:
                dir_fd = backend._ensure_dir(backend._dir(namespace))
            try:
                osl.flock(dir_fd, fcntl.LOCK_EX)  # temp files live under the dir lock
                for name, data in items:
                    filename = f"{name}{SUFFIX}"
                    if data is None:
                        try:
                            osl.unlink(filename, dir_fd=dir_fd)
                        except FileNotFoundError:
                            pass
                    else:
                        backend._write_new_file(dir_fd, filename, data, sync=False)
            finally:
                osl.close(dir_fd)

    # -- checkpoint -------------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Apply everything, make it durable, empty the journal (blocks commits meanwhile)."""
        with self._cond:
            while self._leading:
                self._cond.wait()
            self._leading = True
        try:
            self._checkpoint_locked()
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()

    def _checkpoint_locked(self) -> None:
        journal = self._journal
        try:
            self.apply_pending()
            if (journal is None or journal.size == 0) and not self._retired:
                self._forget_checkpointed_keys()
                return
            self._sync_filesystem()
            if journal is not None:
                self._os.ftruncate(journal.fd, 0)
                self._os.fsync(journal.fd)
            # Everything a retired journal acknowledged is durable in the files
            # now; what it did not acknowledge was reported as failed.
            for retired in self._retired:
                self._os.unlink(f"{self.directory}/{retired.name}")
                self._os.close(retired.fd)
            if self._retired:
                self._retired.clear()
                self._backend._fsync_dir(self.directory)
        except OSError as exc:
            if journal is not None:
                self._retire(journal, truncate_to=None)
            raise DurabilityUnknownError(
                f"checkpoint of the commit journal failed ({exc}); the journal is kept "
                "and replayed at the next start"
            ) from exc
        if journal is not None:
            journal.size = 0
            journal.next_seq = 1
        self._forget_checkpointed_keys()

    def _forget_checkpointed_keys(self) -> None:
        """Nothing in the journal now, but commits still queued keep their keys dirty."""
        self.dirty.clear()
        with self._cond:
            queued = [request.writes for request in self._queue]
        for waiting in list(self._gathering.values()):
            queued.extend(request.writes for request, _ in list(waiting))
        for writes in queued:
            self.dirty.update(writes)

    def _sync_filesystem(self) -> None:
        fd = self._os.open(self._backend.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._os.syncfs(fd)
        finally:
            self._os.close(fd)

    # -- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Checkpoint, remove this process's journal, stop the applier."""
        if self._journal is not None or self._retired or self.pending:
            self.checkpoint()
            journal = self._journal
            if journal is not None:
                try:
                    self._os.unlink(f"{self.directory}/{journal.name}")
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
                self._os.close(journal.fd)
                self._journal = None
        self._stopping = True
        if self._applier is not None:
            self._apply_wanted.set()
            self._applier.join()
            self._applier = None
        self._stopping = False  # a later commit starts a new applier

    def lookup(self, key: str) -> tuple[bool, bytes | None]:
        """``(True, value)`` when ``key`` has a committed write not applied yet."""
        value = self.pending.get(key, _MISSING)
        if value is _MISSING:
            return False, None
        return True, value  # type: ignore[return-value]  # bytes or None past the sentinel

    def iter_pending(self, namespace: str, recursive: bool) -> Iterator[tuple[str, bytes | None]]:
        """Pending writes whose key lies in ``namespace`` (for listings)."""
        below = f"{namespace}/" if namespace else ""
        for key, data in list(self.pending.items()):
            if not key.startswith(below):
                continue
            if recursive or "/" not in key[len(below) :]:
                yield key, data

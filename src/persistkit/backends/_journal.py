"""The file backend's commit journal: one file per root, shared by every process.

A commit (:meth:`FileBackend.commit`, used by :func:`persistkit.transaction`)
is one checksummed record appended to ``{root}/.journal/commits.pkj`` under an
exclusive ``flock`` of ``{root}/.journal/lock`` and made durable with a single
``fsync``. That fsync is the commit point: a crash before it leaves no
acknowledged trace (a torn record fails its checksum), a crash after it leaves
a record that every process reads.

**One truth.** Every process of a root appends to the same file, so the file's
order is the commit order: one global sequence number per record, and commit
times that never go backwards whatever the wall clock does (each is at least the
one before it in the file). Every read, in every process, first brings its view
of the journal up to date (one ``fstat``; the new bytes only when the file
grew) and serves a key the journal holds from the journal: a commit is visible
to every process the moment it is appended, not when its files are written.

**Keys the journal holds.** A key written by a commit stays the journal's until
the next checkpoint: a plain ``put`` or ``delete`` of it, from any process, is
appended to the journal too, so that no later application of the journal can
undo it. On a root that keeps history (the default) every plain write is
appended, so that the history holds it. Otherwise (``history=None``) a plain
write of any other key goes straight to its file under the entity directory's
lock, and a commit that compares the version of such a key takes that same
lock while it checks and appends, so compare-and-set is exact across
processes whichever path each write takes.

Framing (little endian)::

    file header: magic "PKJ2" | flags u32 | first seq u64
    record:      magic "PKJ1" | payload length u32 | crc32 u32 | seq u64 | time_ns u64 | payload
    payload = count u32 | count x (key length i64, data length i64; -1 deletes)
              | every key (UTF-8) and its data, in order

The crc covers ``seq``, ``time_ns`` and the payload. A record that is short or
fails its check *at the end* of the file is the torn tail of a writer that died
mid-append; the next committer, holding the lock, cuts it off. A record that
fails its check *followed by valid records* is damage: nothing is applied or
deleted, every process refuses the root with :class:`JournalDamagedError`, and
``persistkit journal salvage ROOT`` is the way out (see :meth:`salvage`).

**Applying and checkpoints.** A background thread writes the journal's values
into the entity files (temp file and rename, no fsync: the journal is the
durability) :data:`APPLY_DELAY` after a commit, so that the entity files
(backtest-kit's layout) stay close to the truth. When the journal passes
``limit`` bytes, at ``aclose`` and at a start, a checkpoint applies everything, copies the
journal's records into the root's history (:mod:`persistkit.backends._archive`;
unless the backend keeps none), flushes the file system (``syncfs``, which
makes the files and the history durable together) and replaces the journal
by an empty one (written and fsynced aside, then renamed over it): only then
may the journal forget a record. Commit times go
on from the old journal's, whatever the clock does. Other processes notice the
replacement (the file they have open has no name any more) and read the new
one. All of this happens under the journal lock, so two processes never apply
at once.

**Reading at one commit point.** Records are only appended, so the journal up
to its last complete record is a state that was committed: :meth:`CommitJournal.read_cut`
reads it without the lock (the command line's ``export`` and ``inspect``, through
:meth:`FileBackend.snapshot`), and a second cut tells whether a checkpoint or a
commit to a new key may have reached the files in between.

**A failed fsync** (fsyncgate): the records are in the file, so they are
visible to every process, and the caller gets :class:`DurabilityUnknownError`.
The journal whose fsync failed is never fsynced again: its whole content is
copied to a new journal, fsynced, and renamed over it. The outcome no longer
depends on how the process ends.

**Fork.** A child process gets its own journal state (:func:`os.register_at_fork`):
it reopens the files instead of sharing its parent's locks and offsets.

**Upgrades.** Roots written by persistkit 0.1 hold one journal per process
(``.journal/{pid}-{ns}-{hex}.log``); a start merges those of stopped processes
into the shared journal (in one record) before anything is read. The file
``.journal/format`` names the format; a root written by a newer format is refused.
"""

from __future__ import annotations

import array
import asyncio
import bisect
import contextlib
import errno
import itertools
import logging
import os
import secrets
import stat
import struct
import sys
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from persistkit._history import drop_record_only
from persistkit.backends._base import ANY_VERSION, Expected, split_key
from persistkit.backends._oslayer import LOCK_EX, LOCK_NB, LOCK_UN, O_CLOEXEC
from persistkit.errors import (
    BackendError,
    ConflictError,
    DurabilityUnknownError,
    ForeignSymlinkError,
    JournalDamagedError,
    LockTimeoutError,
    PersistError,
    UnsupportedFormatError,
    WriteFailedError,
)

if TYPE_CHECKING:
    from persistkit.backends._file import FileBackend

__all__ = [
    "DEFAULT_JOURNAL_LIMIT",
    "FLAG_RESTATED",
    "FORMAT_VERSION",
    "JOURNAL_DIR",
    "JOURNAL_FILE",
    "CommitJournal",
    "JournalCut",
    "JournalPosition",
    "JournalRecord",
    "SalvageReport",
    "encode_record",
    "open_journals",
    "parse_records",
    "read_journal_file",
    "select_records",
]

JOURNAL_DIR = ".journal"
JOURNAL_FILE = "commits.pkj"
LOCK_FILE = "lock"
FORMAT_FILE = "format"
FORMAT_VERSION = 3
"""The on-disk format this release writes; a root marked with a higher one is refused.

3: the statistics of a file root are derived from the journal's records and folded
into their heads at each checkpoint (:data:`FOLDERS`): a release of format 2 would
checkpoint without folding, losing the events of the records it forgets, so it
must refuse such a root. The records and files are those of format 2, which is
read as it is and marked 3 by the first process of this release to lock the
journal (:meth:`CommitJournal._write_format_locked`)."""
LEGACY_SUFFIX = ".log"
"""Per-process journals of format 1 (persistkit 0.1), merged at a start."""
_NEW_SUFFIX = ".new"
FLAG_RESTATED = 1
"""Header flag: the journal's first record restates what earlier records wrote (a
journal rewritten after a failed fsync); the history counts it but shows no change."""
DEFAULT_JOURNAL_LIMIT = 64 << 20
"""Journal bytes after which a committer checkpoints (applies, syncs, empties)."""
DEFAULT_LOCK_TIMEOUT = 30.0
"""Seconds a wait for a lock held by another process lasts before :class:`LockTimeoutError`."""
CHECKPOINT_RETRY_DELAY = 1.0
"""Seconds a commit past the limit waits before trying again a checkpoint that failed
(a full disk, an entity directory swapped for a link): each try applies every
pending value, and the journal is kept meanwhile."""
APPLY_DELAY = 0.5
"""Seconds the applier waits after a commit before writing the files, so that
ticks rewriting the same entities cost one file write, not one per tick. The
applier is a Python thread: while it runs it competes with the event loop for
the GIL, so it should run seldom. Reads never wait for it: every process reads
committed keys from the journal."""

MAGIC = b"PKJ1"
FILE_MAGIC = b"PKJ2"
_FILE_HEADER = struct.Struct("<4sIQ")
_HEADER = struct.Struct("<4sIIQQ")
_SEQ_TIME = struct.Struct("<QQ")
_COUNT = struct.Struct("<I")
_LENGTH = struct.Struct("<4xI")
"""A record's payload length, read from the start of its header (after :data:`MAGIC`)."""
_MAX_PAYLOAD = (1 << 32) - 1

_O_LEGACY = os.O_RDWR | O_CLOEXEC

Writes = Mapping[str, "bytes | None"]

logger = logging.getLogger(__name__)

Folder = Callable[["FileBackend", list["JournalRecord"]], dict[str, bytes]]
"""What a checkpoint asks before the journal forgets its records: given the
backend and the records about to be forgotten (in order), the files to write
with the checkpoint (derived state that depends on every record, such as the
statistics events; see :mod:`persistkit._domains.journal_events`)."""
FOLDERS: list[Folder] = []
"""Registered by the modules whose derived state needs every record (at import)."""
NUMBERED_PAST: list[Callable[[FileBackend], int]] = []
"""What a journal made where there is none (a new root, or a journal deleted, or not
restored with a backup of the files) numbers its records past: the files a
:data:`FOLDERS` entry wrote name the last record they cover, and records numbered
from 1 again would look covered already. Registered with the folders."""


@dataclass(frozen=True, slots=True)
class JournalPosition:
    """How far a reader read a journal (:meth:`CommitJournal.records_after`)."""

    journal: tuple[int, int]
    """Which journal: its inode and its first record's number. The inode alone is not
    enough: a journal a checkpoint replaced frees it, and a later one may get it."""
    offset: int
    """The byte after the last record read."""
    next_seq: int
    """The number of the record at ``offset``."""


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


def _record_at(data: bytes | memoryview, offset: int, seq: int | None) -> JournalRecord | None:
    """The valid record starting at ``offset`` (with sequence ``seq`` if given), else ``None``."""
    if offset + _HEADER.size > len(data):
        return None
    magic, length, crc, found_seq, time_ns = _HEADER.unpack_from(data, offset)
    end = offset + _HEADER.size + length
    if magic != MAGIC or end > len(data) or (seq is not None and found_seq != seq):
        return None
    payload = bytes(data[offset + _HEADER.size : end])
    if zlib.crc32(payload, zlib.crc32(_SEQ_TIME.pack(found_seq, time_ns))) != crc:
        return None
    writes = _decode_payload(payload)
    return None if writes is None else JournalRecord(found_seq, time_ns, writes)


def _record_size(record_offset: int, data: bytes | memoryview) -> int:
    length: int = _HEADER.unpack_from(data, record_offset)[1]
    return _HEADER.size + length


def parse_records(data: bytes | memoryview, first_seq: int = 1) -> tuple[list[JournalRecord], int]:
    """The complete records at the start of ``data`` and the length they cover.

    What follows that length is a torn tail or damage; :func:`find_damage` tells which.
    """
    records: list[JournalRecord] = []
    offset = 0
    expected_seq = first_seq
    while True:
        record = _record_at(data, offset, expected_seq)
        if record is None:
            break
        records.append(record)
        offset += _record_size(offset, data)
        expected_seq += 1
    return records, offset


def _whole_journal_records(data: bytes) -> list[JournalRecord]:
    """The records of a journal file's bytes (header included), as far as they are
    complete; a restated first record (the values of a journal it replaced, no commit
    of its own) has no writes."""
    _magic, flags, first_seq = _FILE_HEADER.unpack_from(data)
    records, _ = parse_records(memoryview(data)[_FILE_HEADER.size :], first_seq)
    if records and flags & FLAG_RESTATED:
        records[0] = JournalRecord(records[0].seq, records[0].time_ns, {})
    return records


def select_records(
    data: bytes, start: int, first_seq: int, marker: str, with_keys: Collection[str]
) -> tuple[list[JournalRecord], int, int]:
    """The complete records at ``data[start:]`` that write a key holding ``marker``, each
    with only those writes and those of ``with_keys``; the length the complete records
    cover and how many they are.

    For a reader of a few keys of a whole journal (one pair's statistics): a key is
    stored as its UTF-8 bytes, so one byte search of the journal finds the records
    that may write one, and only their wanted writes are decoded; any other record
    costs a read of its length. Its checksum is not checked again: the journal's bytes
    up to the end this process has read were checked when it read them
    (:meth:`CommitJournal.refresh`). A record decoded is checked as
    :func:`parse_records` checks it; the complete records end before one that fails.
    """
    # The records' boundaries: the length field (after the magic) of each header.
    starts: list[int] = []
    offset, last = start, len(data) - _HEADER.size
    # Names bound once: this loop runs once per record of the journal.
    append, length_at, header_size = starts.append, _LENGTH.unpack_from, _HEADER.size
    while offset <= last:
        append(offset)
        offset += header_size + length_at(data, offset)[0]
    if offset > len(data):  # not the end of a complete record: damage since it was read
        offset = starts.pop()
    # Every place the marker occurs (in a key or not), by record.
    needle = marker.encode()
    hits: dict[int, list[int]] = {}
    found = data.find(needle, start, offset)
    while found != -1:
        hits.setdefault(bisect.bisect_right(starts, found) - 1, []).append(found)
        found = data.find(needle, found + 1, offset)
    keys = tuple(key.encode() for key in with_keys)
    records: list[JournalRecord] = []
    for index, places in hits.items():
        record_start = starts[index]
        magic, length, crc, seq, time_ns = _HEADER.unpack_from(data, record_start)
        payload_start = record_start + _HEADER.size
        payload = memoryview(data)[payload_start : payload_start + length]  # not copied
        writes = None
        if (
            magic == MAGIC
            and seq == first_seq + index
            and zlib.crc32(payload, zlib.crc32(_SEQ_TIME.pack(seq, time_ns))) == crc
        ):
            writes = _select_writes(data, payload_start, length, places, len(needle), keys)
        if writes is None:
            return records, record_start - start, index
        if writes:
            records.append(JournalRecord(seq, time_ns, writes))
    return records, offset - start, len(starts)


def _select_writes(
    data: bytes,
    start: int,
    length: int,
    places: list[int],
    marker_length: int,
    keys: tuple[bytes, ...],
) -> dict[str, bytes | None] | None:
    """The writes of the record payload ``data[start : start + length]`` whose key holds
    the marker found at ``places`` (in ``data``), and those of ``keys``, in the record's
    order; ``None`` when the payload is not one."""
    try:
        (count,) = _COUNT.unpack_from(data, start)
        if _COUNT.size + 16 * count > length:
            return None
        # A tuple, not an array: its ints are made once (summing and comparing an
        # array's boxes each of them on every pass).
        lengths: tuple[int, ...] = struct.unpack_from(f"<{2 * count}q", data, start + _COUNT.size)
        key_lengths = lengths[0::2]
        sizes = lengths
        if count and min(lengths) < 0:
            if min(key_lengths) < 0:
                return None
            # A negative value length is a deletion (as :func:`_decode_payload` reads it).
            sizes = tuple(max(size, 0) for size in lengths)
        # Where each field starts in data: key i at 2 i, its value at 2 i + 1 (empty when
        # deleted), the payload's end last.
        fields = list(itertools.accumulate(sizes, initial=start + _COUNT.size + 16 * count))
        if fields[-1] != start + length:
            return None
        chosen: set[int] = set()
        for place in places:
            # The last field starting there: an empty value starts where the next key does.
            field_index = bisect.bisect_right(fields, place) - 1
            if not field_index % 2 and place + marker_length <= fields[field_index + 1]:
                chosen.add(field_index // 2)
        if not chosen:
            return {}  # the marker only in values (or in the record's header)
        for key in keys:
            # The keys of its length, compared in place (they are few).
            key_index = -1
            for _ in range(key_lengths.count(len(key))):
                key_index = key_lengths.index(len(key), key_index + 1)
                if data.startswith(key, fields[2 * key_index]):
                    chosen.add(key_index)
                    break
        writes: dict[str, bytes | None] = {}
        for key_index in sorted(chosen):
            key_start, data_start, data_end = fields[2 * key_index : 2 * key_index + 3]
            name = data[key_start:data_start].decode()
            writes[name] = None if lengths[2 * key_index + 1] < 0 else data[data_start:data_end]
        return writes
    except (struct.error, UnicodeDecodeError):
        return None


def find_damage(data: bytes | memoryview, offset: int) -> list[JournalRecord]:
    """Valid records found after the bad bytes at ``offset``; empty for a torn tail.

    A writer killed mid-append leaves a short or failing record *at the end*;
    a valid record after a failing one means the journal was damaged in place.
    """
    found: list[JournalRecord] = []
    view = bytes(data)
    position = view.find(MAGIC, offset + 1)
    while position != -1:
        record = _record_at(view, position, None)
        if record is not None:
            found.append(record)
            position += _record_size(position, view)
            continue
        position = view.find(MAGIC, position + 1)
    return found


def read_journal_file(data: bytes) -> tuple[int, list[JournalRecord]]:
    """The first sequence number and the complete records of a whole journal file's bytes.

    For a reader that looks at the journal without opening it as a backend
    does (``persistkit status``). A torn tail, or damage, after the complete
    records is left out: :meth:`CommitJournal.refresh` is what tells them
    apart. :class:`JournalDamagedError` when ``data`` has no journal header.
    """
    if len(data) < _FILE_HEADER.size:
        raise JournalDamagedError("the commit journal has no header")
    magic, _flags, first_seq = _FILE_HEADER.unpack_from(data, 0)
    if magic != FILE_MAGIC:
        raise JournalDamagedError("the commit journal has a bad header")
    records, _ = parse_records(memoryview(data)[_FILE_HEADER.size :], first_seq)
    return first_seq, records


@dataclass(slots=True, eq=False)
class _Request:
    """One caller's commit. Compared by identity: two callers committing equal
    writes (two compare-and-set increments from the same value) are two
    requests, and taking one out of the queue must not take the other."""

    writes: Writes
    expect: Mapping[str, Expected] | None
    apply_now: bool = False
    """A plain write: its file is written before the commit returns (see :meth:`commit`)."""
    done: bool = False
    error: BaseException | None = None


@dataclass(slots=True)
class _OpenJournal:
    """This process's open handle on the shared journal and how far it has read it."""

    fd: int
    name: str
    ino: int
    offset: int
    """Bytes parsed so far (header included)."""
    next_seq: int
    last_time_ns: int = 0
    entry_durable: bool = False
    """Whether this process made the journal's directory entry durable (:meth:`_lock_journal`)."""


@dataclass(frozen=True, slots=True)
class JournalCut:
    """The shared journal up to its last complete record: one commit point.

    Made by :meth:`CommitJournal.read_cut`.
    """

    generation: tuple[int, int] | None
    """Inode and first sequence number of the journal file read (a checkpoint
    replaces the file); ``None`` when there was none."""
    seq: int
    """The last commit read; 0 when none."""
    writes: dict[str, bytes | None]
    """The newest committed value of every key the journal held (``None``: deleted)."""
    committed_at: dict[str, int]
    """``time_ns`` of the commit that wrote each key of ``writes`` last."""
    records: tuple[JournalRecord, ...] = ()
    """The records read, oldest first, record-only keys included (what :data:`FOLDERS`
    derive from them, at this point); a first record that restates earlier ones (a
    journal rewritten after a failed fsync) with no writes, as in
    :meth:`CommitJournal.records_after`."""

    def continued_by(self, later: JournalCut) -> bool:
        """Whether ``later`` is this journal grown only by commits to keys it already held.

        Only then do the value files read between the two cuts show no commit
        made after this one: the applier writes only keys the journal holds,
        and the values of those held here are taken from here. A commit to
        another key may have been applied to its file meanwhile, and a
        checkpoint (a new journal) may have applied anything.
        """
        return later.generation == self.generation and later.writes.keys() <= self.writes.keys()


@dataclass(slots=True)
class SalvageReport:
    """What :meth:`CommitJournal.salvage` did with a damaged journal."""

    journal: str
    """The journal's file name."""
    applied: int
    """Records before the damage, applied to the files."""
    damaged_at: int
    """Byte offset of the first record that failed its check."""
    left_out: list[JournalRecord] = field(default_factory=list)
    """Valid records after the damage: not applied (their base is unknown)."""
    kept_as: str = ""
    """Where the damaged journal was moved (under the quarantine)."""


def _valid_records(count: int) -> str:
    return "1 valid record follows" if count == 1 else f"{count} valid records follow"


class _WouldBlock(Exception):
    """A lock another process holds: the caller retries where it may wait."""


_MISSING = object()
_journals: weakref.WeakSet[CommitJournal] = weakref.WeakSet()


def open_journals() -> list[CommitJournal]:
    """The commit journals of this process's live file backends."""
    return list(_journals)


def _lead_through_fork() -> None:
    """Before a fork: lead every journal, so that no other thread is half-way through
    a commit or an application, holding a directory's ``flock`` through a descriptor
    that the child would keep open (and so the lock, after the parent let go of it)."""
    for journal in list(_journals):
        journal._lead_through_fork()


def _stop_leading_after_fork() -> None:
    for journal in list(_journals):
        journal._stop_leading_after_fork()


def _reset_after_fork() -> None:
    for journal in list(_journals):
        journal._forget_parent_state()


# Registered (os.register_at_fork) by persistkit.backends._file with its own fork
# handlers, in one order: see that module's docstring, **Fork**.


def take_lock(
    flock: Callable[[int, int], object], fd: int, timeout: float, what: str, *, wait: bool
) -> None:
    """An exclusive ``flock`` of ``fd``, through the OS layer's ``flock``.

    Free: taken at once. Held by another process: ``wait=False`` raises
    :class:`_WouldBlock` so that the caller moves to a worker thread (an event
    loop never waits for another process); ``wait=True`` polls until
    ``timeout`` seconds have passed, then raises :class:`LockTimeoutError`.
    """
    try:
        flock(fd, LOCK_EX | LOCK_NB)
        return
    except BlockingIOError:
        if not wait:
            raise _WouldBlock(what) from None
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while True:
        # Polled, since flock cannot time out; short pauses, as locks are held briefly.
        time.sleep(pause)
        pause = min(pause * 2, 0.005)
        try:
            flock(fd, LOCK_EX | LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockTimeoutError(
                    f"{what} is held by another process; gave up after {timeout:g} s "
                    "(find that process, or raise lock_timeout)"
                ) from None


class CommitJournal:
    """The shared commit journal of one root, as one :class:`FileBackend` sees it."""

    def __init__(
        self,
        backend: FileBackend,
        *,
        limit: int = DEFAULT_JOURNAL_LIMIT,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        self._backend = backend
        self._os = backend._os
        self.limit = limit
        self.lock_timeout = lock_timeout
        self.directory = f"{backend.root}/{JOURNAL_DIR}"
        self.path = f"{self.directory}/{JOURNAL_FILE}"
        self.pending: dict[str, bytes | None] = {}
        """The newest committed value of every key in the journal (all processes')."""
        self.recovered = False
        self._format_marked = False
        """Whether this process saw the root marked with :data:`FORMAT_VERSION` (or
        marked it): checked at its first hold of the journal lock."""
        self.commits = 0
        self.flushes = 0
        """Journal fsyncs: fewer than ``commits`` when group commit shared them."""
        self._applied: dict[str, bytes | None] = {}
        """What the applier last wrote to each key's file (skipped while unchanged)."""
        self._queued: dict[str, int] = {}
        self._confined_namespaces: set[str] = set()
        """Keys of this process's commits not written yet: a plain write called
        after such a commit must queue behind it (writes apply in call order)."""
        self._journal: _OpenJournal | None = None
        self._lock_fd: int | None = None
        self._broken: BaseException | None = None
        self._checkpoint_retry_at = 0.0
        """Monotonic time before which a commit does not try the checkpoint that failed."""
        self._init_threading()
        _journals.add(self)

    def _init_threading(self) -> None:
        self._recovery_lock = threading.Lock()
        self._view_lock = threading.RLock()
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._gathering: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, list[tuple[_Request, asyncio.Future[None]]]
        ] = weakref.WeakKeyDictionary()
        self._leading = False
        self._leading_through_fork = False
        self._apply_wanted = threading.Event()
        self._applier: threading.Thread | None = None
        self._stopping = False

    def _lead_through_fork(self) -> None:
        with self._cond:
            while self._leading:
                self._cond.wait()
            self._leading = self._leading_through_fork = True

    def _stop_leading_after_fork(self) -> None:
        with self._cond:
            if self._leading_through_fork:
                self._leading = self._leading_through_fork = False
                self._cond.notify_all()

    def _forget_parent_state(self) -> None:
        """In a forked child: the parent's files, locks and threads are not ours."""
        for fd in (self._lock_fd, self._journal.fd if self._journal else None):
            if fd is not None:
                try:
                    os.close(fd)  # our copy only: the parent's stays open and locked
                except OSError:
                    pass
        self._lock_fd = None
        self._journal = None
        self.pending = {}
        self._applied = {}
        self._queued = {}
        self._init_threading()

    @property
    def root(self) -> str:
        """The data root this journal belongs to."""
        return self._backend.root

    @property
    def size(self) -> int:
        """Bytes in the journal file now: commits not yet checkpointed (0: no journal)."""
        try:
            return self._os.stat(self.path).st_size
        except OSError:
            return 0

    # -- reading the shared journal -------------------------------------------------------

    def _open_current(self, *, writable: bool) -> _OpenJournal | None:
        osl = self._os
        flags = (os.O_RDWR | os.O_APPEND if writable else os.O_RDONLY) | os.O_CLOEXEC
        try:
            fd = osl.open(self.path, flags)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendError(f"cannot open the commit journal {self.path}: {exc}") from exc
        try:
            header = osl.pread(fd, _FILE_HEADER.size, 0)
            if len(header) < _FILE_HEADER.size:
                # Made by a start killed before its header was written and
                # renamed in: impossible with the rename, so damage.
                raise JournalDamagedError(
                    f"the commit journal {self.path} has no header: {self._salvage_hint()}"
                )
            magic, _flags, first_seq = _FILE_HEADER.unpack(header)
            if magic != FILE_MAGIC:
                raise JournalDamagedError(
                    f"the commit journal {self.path} has a bad header: {self._salvage_hint()}"
                )
            ino = osl.fstat(fd).st_ino
        except BaseException:
            osl.close(fd)
            raise
        return _OpenJournal(fd, JOURNAL_FILE, ino, _FILE_HEADER.size, first_seq)

    def _salvage_hint(self) -> str:
        return (
            "nothing was applied or deleted; run `persistkit journal salvage "
            f"{self._backend.root}` to apply the records before the damage and keep the "
            "journal in the quarantine"
        )

    def refresh(self) -> None:
        """Bring this process's view up to date with the shared journal (cheap when unchanged)."""
        # Under the lock even when unchanged: another thread may be closing this
        # descriptor (its journal replaced by a checkpoint), and its number reused.
        with self._view_lock:
            journal = self._journal
            if journal is not None:
                stat_result = self._os.fstat(journal.fd)
                if stat_result.st_nlink and stat_result.st_size == journal.offset:
                    return
            self._refresh_locked(truncate_torn=False)

    def _refresh_locked(self, *, truncate_torn: bool) -> _OpenJournal | None:
        """Read what other processes appended; ``truncate_torn`` only under the journal lock."""
        osl = self._os
        journal = self._journal
        if journal is not None and osl.fstat(journal.fd).st_nlink == 0:
            successor = self._open_current(writable=not self._backend.read_only)
            if successor is not None and successor.next_seq >= journal.next_seq:
                # Replaced by a checkpoint: everything it held is in the files now.
                osl.close(journal.fd)
                self._journal = journal = successor
                self.pending = {}
                self._applied = {}
            else:
                lost = self._journal_lost(journal, successor, truncate_torn)
                if lost is None:
                    return None
                journal = lost
        if journal is None:
            journal = self._journal = self._open_current(writable=not self._backend.read_only)
            if journal is None:
                return None
            self.pending = {}
            self._applied = {}
        size = osl.fstat(journal.fd).st_size
        if size == journal.offset:
            return journal
        if size < journal.offset:
            raise JournalDamagedError(
                f"the commit journal {self.path} is {size} bytes, shorter than the "
                f"{journal.offset} this process read from it: it was truncated or replaced "
                "by hand, and acknowledged commits may be gone from it. This process keeps "
                "them in memory and commits nothing more; " + self._salvage_hint()
            )
        data = osl.pread(journal.fd, size - journal.offset, journal.offset)
        records, length = parse_records(data, journal.next_seq)
        for record in records:
            self.pending.update(record.writes)
        drop_record_only(self.pending)
        journal.offset += length
        journal.next_seq += len(records)
        if records:
            journal.last_time_ns = records[-1].time_ns
        if length < len(data):
            later = find_damage(data, length)
            if later:
                raise JournalDamagedError(
                    f"the commit journal {self.path} is damaged at byte {journal.offset} "
                    f"(record {journal.next_seq}), and {_valid_records(len(later))} it: "
                    + self._salvage_hint()
                )
            if truncate_torn:
                # Under the lock nobody appends: these bytes are a dead writer's torn record.
                osl.ftruncate(journal.fd, journal.offset)
        return journal

    def ensure_open(self, *, wait: bool) -> None:
        """Create the shared journal if no process has yet (before a process's first write).

        From then on a read checks for other processes' commits with one
        ``fstat`` of the open journal instead of looking for the file.
        """
        if self._journal is None:
            self._lead(lambda _: None, wait=wait, create=True)

    def _journal_lost(
        self, journal: _OpenJournal, successor: _OpenJournal | None, under_lock: bool
    ) -> _OpenJournal | None:
        """The open journal lost its name, and not to a checkpoint (removed by hand).

        Its commits are still readable through the open descriptor. With no
        journal in its place, the committer holding the lock puts them back
        (a new file, fsynced, renamed in); a reader keeps serving them until
        then. A journal in its place that does not continue this one (made by
        a process that found none) is refused: two histories cannot be merged.
        """
        if successor is None:
            if not self.pending:
                # Everything it held was checkpointed: nothing to put back.
                self._os.close(journal.fd)
                self._journal = None
                return None
            if not under_lock or self._backend.read_only:
                return journal
            logger.warning(
                "persistkit: the commit journal %s was removed while this process used it; "
                "its %d commits are written back from the open file",
                self.path,
                journal.next_seq - self._first_seq(journal),
            )
            data = self._os.pread(journal.fd, journal.offset, 0)
            return self._restore_generation(journal, data)
        self._os.close(successor.fd)
        raise JournalDamagedError(
            f"the commit journal {self.path} was replaced by one that does not continue it "
            f"(its first commit is {successor.next_seq}, this process has read up to "
            f"{journal.next_seq - 1}): it was removed or replaced by hand while in use. "
            "Nothing was applied or deleted; stop every process of the root, then "
            "run `persistkit preflight` and `persistkit journal salvage`"
        )

    def lookup(self, key: str) -> tuple[bool, bytes | None]:
        """``(True, value)`` when the journal holds ``key`` (call :meth:`refresh` first)."""
        value = self.pending.get(key, _MISSING)
        if value is _MISSING:
            return False, None
        return True, value  # type: ignore[return-value]  # bytes or None past the sentinel

    def holds(self, key: str) -> bool:
        """Whether ``key`` goes through the journal: committed since the last checkpoint,
        or in a commit of this process not written yet."""
        if self.queued(key):
            return True
        self.refresh()
        return key in self.pending

    def queued(self, key: str) -> bool:
        """Whether a commit of this process that writes ``key`` is waiting to be written."""
        return key in self._queued

    def _enqueue(self, writes: Writes) -> None:
        queued = self._queued
        for key in writes:
            queued[key] = queued.get(key, 0) + 1

    def _dequeue(self, writes: Writes) -> None:
        queued = self._queued
        for key in writes:
            left = queued.get(key, 0) - 1
            if left > 0:
                queued[key] = left
            else:
                queued.pop(key, None)

    def iter_pending(self, namespace: str, recursive: bool) -> Iterator[tuple[str, bytes | None]]:
        """Journal-held writes whose key lies in ``namespace`` (for listings)."""
        self.refresh()
        below = f"{namespace}/" if namespace else ""
        for key, data in list(self.pending.items()):
            if not key.startswith(below):
                continue
            if recursive or "/" not in key[len(below) :]:
                yield key, data

    # -- the journal lock ----------------------------------------------------------------------

    def _take_journal_lock(self, *, wait: bool) -> None:
        """The journal lock's ``flock`` (the caller leads in this process).

        A lock file that lost its name (removed by hand, or by a cleaner of
        temporary folders) locks nothing for the process that opens the new
        one: after taking the lock, a file with no name is closed and the lock
        taken again on the file the name leads to now.
        """
        osl = self._os
        while True:
            if self._lock_fd is None:
                try:
                    dir_fd = self._backend._ensure_dir(self.directory)
                    try:
                        self._lock_fd = osl.open(
                            LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=dir_fd
                        )
                    finally:
                        osl.close(dir_fd)
                except OSError as exc:
                    raise WriteFailedError(
                        f"cannot open the commit journal lock {self.directory}/{LOCK_FILE}: {exc}"
                    ) from exc
            take_lock(
                osl.flock,
                self._lock_fd,
                self.lock_timeout,
                f"the commit journal lock {self.directory}/{LOCK_FILE}",
                wait=wait,
            )
            if osl.fstat(self._lock_fd).st_nlink:
                return
            osl.close(self._lock_fd)  # releases the lock on the nameless file
            self._lock_fd = None

    def _lock_journal(self, *, wait: bool, create: bool = True) -> _OpenJournal | None:
        """Take the journal lock (the caller leads in this process) and read to the end.

        ``create``: make the journal if there is none (a commit); otherwise
        ``None`` then, with the lock released (nothing to apply or checkpoint).
        """
        self._take_journal_lock(wait=wait)
        try:
            with self._view_lock:
                journal = self._refresh_locked(truncate_torn=True)
                if journal is None:
                    if not create:
                        self._unlock_journal()
                        return None
                    try:
                        self._write_format_locked()
                        first_seq = max((past(self._backend) for past in NUMBERED_PAST), default=0)
                        journal = self._start_generation(first_seq=first_seq + 1, writes=None)
                    except OSError as exc:
                        if isinstance(exc, PersistError):
                            raise
                        raise WriteFailedError(
                            f"cannot create the commit journal {self.path}: {exc}; "
                            "nothing was written"
                        ) from exc
                elif not self._format_marked and not self._backend.read_only:
                    try:
                        self._write_format_locked()
                    except OSError as exc:
                        if isinstance(exc, PersistError):
                            raise
                        raise WriteFailedError(
                            f"cannot mark {self._backend.root} with format {FORMAT_VERSION}: "
                            f"{exc}; nothing was written"
                        ) from exc
                history = self._backend.history
                if history is not None and not history.started:
                    history.ensure_base(set(self.pending), *self._generation_start(journal))
                if not journal.entry_durable:
                    # A process killed between renaming a new journal in and
                    # fsyncing the directory left a name a power cut can undo,
                    # taking with it every commit appended since: fsync it first.
                    self._backend._fsync_dir(self.directory)
                    journal.entry_durable = True
            return journal
        except BaseException:
            self._unlock_journal()
            raise

    def _unlock_journal(self) -> None:
        if self._lock_fd is not None:
            self._os.flock(self._lock_fd, LOCK_UN)

    def _start_generation(
        self, first_seq: int, writes: Writes | None, *, archived: bool = False
    ) -> _OpenJournal:
        """A new journal (header, and ``writes`` as its first record), fsynced, renamed in.

        Under the journal lock. Other processes see the old file lose its name
        and read this one. The old one's records go into the history first,
        unless the caller has ``archived`` them (durably) already.
        """
        with self._view_lock:
            return self._start_generation_viewed(first_seq, writes, archived)

    def _start_generation_viewed(
        self, first_seq: int, writes: Writes | None, archived: bool = False
    ) -> _OpenJournal:
        old = self._journal
        blob = _FILE_HEADER.pack(FILE_MAGIC, FLAG_RESTATED if writes else 0, first_seq)
        next_seq = first_seq
        # Commit times go on from the old generation's, whatever the clock does.
        last_time = old.last_time_ns if old is not None else 0
        if writes:
            last_time = self._commit_time(old)
            blob += encode_record(first_seq, last_time, writes)
            next_seq += 1
        history = self._backend.archive_for_checkpoint()
        if old is not None and history is not None and not archived:
            # The past goes into the history, durably, before the journal forgets it.
            history.archive(self._os.pread(old.fd, old.offset, 0))
        fd = self._rename_in(blob)
        if old is not None:
            self._os.close(old.fd)
        journal = self._journal = _OpenJournal(
            fd, JOURNAL_FILE, self._os.fstat(fd).st_ino, len(blob), next_seq, last_time, True
        )
        self.pending = dict(writes) if writes else {}
        self._applied = {}
        return journal

    def _restore_generation(self, journal: _OpenJournal, data: bytes) -> _OpenJournal:
        """Write ``data`` (a whole journal) back under the journal's name, fsynced."""
        fd = self._rename_in(data)
        self._os.close(journal.fd)
        restored = self._journal = _OpenJournal(
            fd,
            JOURNAL_FILE,
            self._os.fstat(fd).st_ino,
            journal.offset,
            journal.next_seq,
            journal.last_time_ns,
            True,
        )
        return restored

    def _rename_in(self, data: bytes) -> int:
        """``data`` as the journal: written beside it, fsynced, renamed over it, directory
        fsynced. Returns the new journal's descriptor (open for appending)."""
        osl = self._os
        dir_fd = self._backend._ensure_dir(self.directory)
        try:
            temp = f".{JOURNAL_FILE}-{secrets.token_hex(4)}{_NEW_SUFFIX}"
            fd = osl.open(
                temp,
                os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                0o644,
                dir_fd=dir_fd,
            )
            try:
                view = memoryview(data)
                while view:
                    view = view[osl.write(fd, view) :]
                osl.fsync(fd)
                osl.replace(temp, JOURNAL_FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                osl.fsync(dir_fd)
            except BaseException:
                osl.close(fd)
                try:
                    osl.unlink(temp, dir_fd=dir_fd)
                except OSError:
                    pass  # a start sweeps it under the journal lock
                raise
        finally:
            osl.close(dir_fd)
        return fd

    @staticmethod
    def _commit_time(journal: _OpenJournal | None) -> int:
        # Never before the last commit in the journal, whoever made it and
        # whatever the wall clock did since: the file order is the time order.
        last = journal.last_time_ns if journal is not None else 0
        return max(time.time_ns(), last + 1)

    # -- recovery ------------------------------------------------------------------

    def recover(self) -> int:
        """First use of a root in this process; returns the commits found and checkpointed.

        Checks the format, merges the per-process journals an older release
        left, and checkpoints what earlier processes committed, so that the
        files are whole again. Correctness does not depend on it: reads consult
        the journal anyway.
        """
        with self._recovery_lock:
            if self.recovered:
                return 0
            self._check_format()
            if self._backend.read_only or not self._exists(self.directory):
                # Nothing was ever committed here: nothing to recover, and
                # nothing is written (the first commit creates the journal).
                self.recovered = True
                return 0
            found = 0

            def merge_and_checkpoint(journal: _OpenJournal) -> None:
                nonlocal found
                self._sweep_temps_locked()
                if self._backend.history is not None:
                    self._backend.history.sweep_temps()
                self._write_format_locked()
                found = journal.next_seq - self._first_seq(journal)
                found += self._merge_legacy_journals()
                if self.pending:
                    try:
                        self._checkpoint_held(wait=True)
                    except (OSError, PersistError) as exc:
                        # Only tidiness: every read consults the journal, so a
                        # full disk must not keep a bot from its state.
                        logger.warning(
                            "persistkit: checkpoint at the start of %s failed (%s); the "
                            "journal is kept and read, and checkpointed later",
                            self._backend.root,
                            exc,
                        )

            # Another process committing right now holds the lock for a moment:
            # its files then stay as they are, which is only tidiness, since
            # every read consults the journal. A format-1 journal must be
            # merged before anything is read, though: for it we wait.
            wait = bool(self.legacy_journal_names())
            try:
                self._lead(merge_and_checkpoint, wait=wait, create=True)
            except _WouldBlock:
                pass
            except PersistError:
                raise
            except OSError as exc:
                raise BackendError(f"recovering the commit journal failed: {exc}") from exc
            self.recovered = True
            return found

    def _exists(self, path: str) -> bool:
        try:
            self._os.stat(path)
        except FileNotFoundError:
            return False
        return True

    def _generation_start(self, journal: _OpenJournal) -> tuple[int, int]:
        """The first commit number of ``journal`` and the time just before its first record."""
        head = self._os.pread(journal.fd, _FILE_HEADER.size + _HEADER.size, 0)
        first_seq = int(_FILE_HEADER.unpack_from(head)[2])
        if len(head) == _FILE_HEADER.size + _HEADER.size:
            return first_seq, int(_HEADER.unpack_from(head, _FILE_HEADER.size)[4]) - 1
        return first_seq, time.time_ns()

    def records(self) -> list[JournalRecord]:
        """Every record of the current journal, as far as this process has read it."""
        self.refresh()
        with self._view_lock:
            journal = self._journal
            if journal is None:
                return []
            data = self._os.pread(journal.fd, journal.offset, 0)
        return _whole_journal_records(data)

    def _first_seq(self, journal: _OpenJournal) -> int:
        header = self._os.pread(journal.fd, _FILE_HEADER.size, 0)
        return int(_FILE_HEADER.unpack(header)[2])

    def _check_format(self) -> None:
        """Refuse a root marked with a format newer than this release's."""
        data = self._backend._read_at(None, f"{self.directory}/{FORMAT_FILE}")
        version = self._marked_version(data)
        if data is not None and version is not None and version > FORMAT_VERSION:
            marker = data.decode(errors="replace").strip()
            raise UnsupportedFormatError(
                f"{self._backend.root} is marked as on-disk format {marker!r}; "
                f"this release of persistkit reads format {FORMAT_VERSION} and older. "
                "Upgrade persistkit to open it."
            )

    @staticmethod
    def _marked_version(data: bytes | None) -> int | None:
        """The format a marker names; ``None`` when absent or unreadable.

        The marker is written whole (temp file, fsync, rename) or not at all,
        so an unreadable one is a writer's torn temp that a broken disk let
        through: it is written again, like a missing one.
        """
        if data is None:
            return None
        try:
            return int(data.split()[-1])
        except (ValueError, IndexError):
            return None

    def _write_format_locked(self) -> None:
        """Mark the root with this release's format, under the journal lock: once, or
        over an older format's mark (an upgrade in place: format 2's records and
        files are read as they are), before anything of this release is committed
        or checkpointed, so that an older release started later refuses the root."""
        if self._format_marked:
            return
        marker = self._backend._read_at(None, f"{self.directory}/{FORMAT_FILE}")
        version = self._marked_version(marker)
        if version is None or version < FORMAT_VERSION:
            dir_fd = self._backend._ensure_dir(self.directory)
            try:
                self._backend._write_new_file(
                    dir_fd, FORMAT_FILE, f"persistkit-format {FORMAT_VERSION}\n".encode()
                )
            finally:
                self._os.close(dir_fd)
        self._format_marked = True

    def _sweep_temps_locked(self) -> None:
        """Temp files of journal replacements and format marks cut by a crash.

        Both are only ever written under the journal lock, which the caller holds.
        """
        from persistkit.backends._file import TEMP_PREFIX  # file.py imports this module

        osl = self._os
        dir_fd = self._backend._open_dir(self.directory)
        try:
            found = [
                entry.name
                for entry in osl.scandir(self.directory)
                if entry.name.startswith(TEMP_PREFIX) or entry.name.endswith(_NEW_SUFFIX)
            ]
            for name in found:
                osl.unlink(name, dir_fd=dir_fd)
            if found:
                osl.fsync(dir_fd)
        finally:
            osl.close(dir_fd)

    def legacy_journal_names(self) -> list[str]:
        """Per-process journals of format 1, oldest name first."""
        try:
            return sorted(
                entry.name
                for entry in self._os.scandir(self.directory)
                if entry.name.endswith(LEGACY_SUFFIX) and not entry.name.startswith(".")
            )
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BackendError(f"cannot list the commit journal {self.directory}: {exc}") from exc

    def _merge_legacy_journals(self) -> int:
        """Format-1 journals of stopped processes, merged into the shared journal as one record."""
        names = self.legacy_journal_names()
        if not names:
            return 0
        osl = self._os
        held: list[tuple[int, str]] = []
        journals: list[tuple[int, str, list[JournalRecord]]] = []
        try:
            for name in names:
                path = f"{self.directory}/{name}"
                try:
                    fd = osl.open(path, _O_LEGACY)
                except FileNotFoundError:
                    continue
                held.append((fd, name))
                # An older release still running holds its journal's lock for
                # its life; wait a bounded time, then refuse clearly.
                take_lock(
                    osl.flock,
                    fd,
                    self.lock_timeout,
                    f"the format-1 journal {path} (an older persistkit process runs on this root)",
                    wait=True,
                )
                data = self._backend._read_at(None, path) or b""
                complete, length = parse_records(data)
                if length < len(data) and find_damage(data, length):
                    raise JournalDamagedError(
                        f"the format-1 journal {path} is damaged at byte {length}: "
                        + self._salvage_hint()
                    )
                if complete:
                    journals.append((complete[0].time_ns, name, complete))
            journals.sort(key=lambda item: (item[0], item[1]))
            merged: dict[str, bytes | None] = {}
            count = 0
            for _, _, records in journals:
                for record in records:
                    merged.update(record.writes)
                count += len(records)
            if merged:
                self._append_locked([_Request(merged, None)])
            for _, name in held:
                osl.unlink(f"{self.directory}/{name}")
            self._backend._fsync_dir(self.directory)
        finally:
            for fd, _ in held:
                osl.close(fd)
        return count

    def read_cut(self) -> JournalCut:
        """The journal up to its last complete record; reads only, takes no lock.

        Records are only ever appended, so every complete prefix is a state
        that was committed: a record still being appended is simply not part
        of it. Nothing of this process's own view (:attr:`pending`) is used or
        changed. Damage raises :class:`JournalDamagedError`, as for any read.
        """
        journal = self._open_current(writable=False)
        if journal is None:
            return JournalCut(None, 0, {}, {})
        try:
            size = self._os.fstat(journal.fd).st_size
            data = self._os.pread(journal.fd, max(size - journal.offset, 0), journal.offset)
            _magic, flags, _first_seq = _FILE_HEADER.unpack(
                self._os.pread(journal.fd, _FILE_HEADER.size, 0)
            )
        finally:
            self._os.close(journal.fd)
        records, length = parse_records(data, journal.next_seq)
        if length < len(data) and find_damage(data, length):
            raise JournalDamagedError(
                f"the commit journal {self.path} is damaged at byte {journal.offset + length}: "
                + self._salvage_hint()
            )
        writes: dict[str, bytes | None] = {}
        committed_at: dict[str, int] = {}
        for record in records:
            writes.update(record.writes)
            committed_at.update(dict.fromkeys(record.writes, record.time_ns))
        drop_record_only(writes)
        drop_record_only(committed_at)
        if records and flags & FLAG_RESTATED:
            records[0] = JournalRecord(records[0].seq, records[0].time_ns, {})
        return JournalCut(
            (journal.ino, journal.next_seq),
            journal.next_seq + len(records) - 1,
            writes,
            committed_at,
            tuple(records),
        )

    @contextlib.contextmanager
    def held_still(self) -> Iterator[None]:
        """Hold the journal lock, read-only, so that no commit, application or
        checkpoint lands meanwhile (a reader's last resort: writers wait).

        The lock file is opened for reading and never created; a root with no
        journal lock has no journal to hold still.
        """
        osl = self._os
        try:
            dir_fd = self._backend._open_dir(self.directory)
        except FileNotFoundError:
            yield
            return
        try:
            fd = osl.open(LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            yield
            return
        finally:
            osl.close(dir_fd)
        try:
            take_lock(
                osl.flock,
                fd,
                self.lock_timeout,
                f"the commit journal lock {self.directory}/{LOCK_FILE}",
                wait=True,
            )
            yield
        finally:
            osl.close(fd)  # releases the lock

    def describe_unapplied(self) -> list[str]:
        """What the journal holds that the files do not show yet (changes nothing)."""
        found = []
        self.refresh()
        if self.pending:
            found.append(
                f"{JOURNAL_DIR}/{JOURNAL_FILE}: {len(self.pending)} keys committed and not yet "
                "applied to their files (reads include them; the next start applies them)"
            )
        for name in self.legacy_journal_names():
            data = self._backend._read_at(None, f"{self.directory}/{name}") or b""
            records, _ = parse_records(data)
            if records:
                keys = {key for record in records for key in record.writes}
                found.append(
                    f"{JOURNAL_DIR}/{name}: {len(records)} commit{'s' * (len(records) != 1)} "
                    f"of an older release's process ({len(keys)} keys), merged by the next start"
                )
        return found

    # -- committing ---------------------------------------------------------------------

    async def commit_async(
        self,
        writes: Writes,
        expect: Mapping[str, Expected] | None = None,
        *,
        apply_now: bool = False,
    ) -> None:
        """:meth:`commit` on the event loop's thread, gathering the ticks ready together.

        The first commit of a loop iteration schedules one flush with
        ``call_soon``; every task that commits before it runs (all the tasks of
        an ``asyncio.gather``, say) joins the same flush: one write, one fsync.
        When another process holds a lock the flush needs, the flush moves to a
        worker thread, which waits for it (never the event loop).
        """
        loop = asyncio.get_running_loop()
        waiting = self._gathering.get(loop)
        if waiting is None:
            waiting = self._gathering[loop] = []
            loop.call_soon(self._flush_gathered, loop)
        done: asyncio.Future[None] = loop.create_future()
        waiting.append((_Request(writes, expect, apply_now), done))
        self._enqueue(writes)
        try:
            await done
        finally:
            self._dequeue(writes)

    def _flush_gathered(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._gathering.pop(loop, [])
        requests = [request for request, _ in batch]
        try:
            self._commit_requests(requests, may_wait=False)
        except _WouldBlock:
            # Another process holds a lock: wait for it in a thread, not here.
            for request in requests:
                request.done = False
                request.error = None
            thread_done = loop.run_in_executor(None, self._commit_requests, requests, True)
            thread_done.add_done_callback(lambda _: self._settle(batch))
            return
        except BaseException as exc:  # every waiter must hear of it, or it waits forever
            for request in requests:
                request.error = request.error or exc
            if not isinstance(exc, Exception):
                self._settle(batch)
                raise  # KeyboardInterrupt and the like still stop the loop
        self._settle(batch)

    @staticmethod
    def _settle(batch: list[tuple[_Request, asyncio.Future[None]]]) -> None:
        for request, done in batch:
            if done.done():
                continue  # the caller was cancelled; its tick is committed all the same
            if request.error is not None:
                done.set_exception(request.error)
            else:
                done.set_result(None)

    def commit(
        self,
        writes: Writes,
        expect: Mapping[str, Expected] | None = None,
        *,
        apply_now: bool = False,
    ) -> None:
        """Append ``writes`` as one record and fsync (shared with concurrent commits).

        Returns once the record is durable and visible to reads in every process.
        ``expect`` maps keys to the version they must still have (compare-and-set).
        ``apply_now``: also write the keys' files (no fsync: the journal is the
        durability) before returning, under the journal lock so that no
        checkpoint comes between; what a plain write of a history-keeping root
        does, so that the entity files show it as soon as it returns.
        Callable from any thread but an event loop's (use :meth:`commit_async`).
        """
        request = _Request(writes, expect, apply_now)
        with self._cond:
            self._enqueue(writes)
        try:
            self._commit_requests([request], may_wait=True)
        finally:
            with self._cond:
                self._dequeue(writes)
        if request.error is not None:
            raise request.error

    def _commit_requests(self, requests: list[_Request], may_wait: bool) -> None:
        """Queue ``requests``; the first thread to find no leader writes every queued one."""
        with self._cond:
            self._queue.extend(requests)
            while not all(request.done for request in requests):
                if self._leading:
                    if not may_wait:
                        # Another thread of ours leads (it may be waiting for a
                        # lock): never wait on the event loop's thread.
                        self._queue = [r for r in self._queue if r not in requests]
                        raise _WouldBlock("the commit journal")
                    self._cond.wait()
                    continue
                self._leading = True
                batch, self._queue = self._queue, []
                self._cond.release()
                try:
                    self._write_batch(batch, may_wait)
                except _WouldBlock:
                    self._cond.acquire()
                    self._leading = False
                    # Give back what is not ours; our own requests go to a thread.
                    self._queue = [r for r in batch if r not in requests] + self._queue
                    self._cond.notify_all()
                    raise
                except BaseException as exc:
                    for queued in batch:
                        queued.error = queued.error or exc
                    self._cond.acquire()
                    self._finish_batch(batch)
                else:
                    self._cond.acquire()
                    self._finish_batch(batch)

    def _finish_batch(self, batch: list[_Request]) -> None:
        self._leading = False
        for queued in batch:
            queued.done = True
        self._cond.notify_all()

    def _write_batch(self, batch: list[_Request], may_wait: bool) -> None:
        if self._broken is not None:
            raise WriteFailedError(
                f"the commit journal of {self._backend.root} failed earlier in this process "
                f"({self._broken}); nothing more is committed through it. Restart the process."
            )
        journal = self._lock_journal(wait=may_wait)
        assert journal is not None  # created when missing
        try:
            self._append_locked(batch, wait=may_wait)
            self._apply_plain_writes(batch, wait=may_wait)
            if (
                journal.offset >= self.limit
                and self._journal is journal
                and time.monotonic() >= self._checkpoint_retry_at
            ):
                try:
                    self._checkpoint_held(wait=may_wait)
                except _WouldBlock:
                    pass  # committed all the same; the applier checkpoints soon
                except (PersistError, OSError) as exc:
                    # The batch is committed (appended, fsynced): a checkpoint that
                    # cannot finish keeps the journal, and is this commit's failure
                    # no more than it is the next one's.
                    self._checkpoint_retry_at = time.monotonic() + CHECKPOINT_RETRY_DELAY
                    logger.warning(
                        "persistkit: checkpoint of %s failed (%s); the journal is kept, "
                        "the commit stands, and a checkpoint is tried again later",
                        self._backend.root,
                        exc,
                    )
        finally:
            self._unlock_journal()
        self._wake_applier()

    def _apply_plain_writes(self, batch: list[_Request], *, wait: bool) -> None:
        """The files of the batch's plain writes, with the newest committed values."""
        keys = {
            key
            for request in batch
            if request.apply_now and request.error is None
            for key in request.writes
        }
        if not keys:
            return
        newest = {key: self.pending[key] for key in keys if key in self.pending}
        try:
            self._apply(newest, wait=wait)
        except (_WouldBlock, OSError, PersistError) as exc:
            # Committed all the same: reads serve it from the journal and the
            # applier writes the file later (through no link: a directory
            # swapped for one since the check is refused there too).
            logger.debug("persistkit: writing %d files now failed (%s)", len(newest), exc)
            return
        self._applied.update(newest)

    def _append_locked(self, batch: list[_Request], *, wait: bool = True) -> None:
        """Check, append and fsync ``batch`` under the journal lock."""
        journal = self._journal
        assert journal is not None
        held_dirs: list[int] = []
        try:
            accepted = self._check_requests(batch, held_dirs, wait=wait)
            if not accepted:
                return
            now = self._commit_time(journal)
            chunks = [
                encode_record(journal.next_seq + index, now, request.writes)
                for index, request in enumerate(accepted)
            ]
            blob = b"".join(chunks)
            osl = self._os
            # Readers of this process read the file too: they must not parse
            # these records while the offset is being moved past them.
            with self._view_lock:
                try:
                    # Space first: on a full disk a short write would show this
                    # batch's first records, whole, to other processes' readers
                    # until the truncate below, though none of them is committed.
                    osl.reserve(journal.fd, journal.offset, len(blob))
                    view_bytes = memoryview(blob)
                    while view_bytes:
                        view_bytes = view_bytes[osl.write(journal.fd, view_bytes) :]
                except OSError as exc:
                    try:
                        osl.ftruncate(journal.fd, journal.offset)
                    except OSError:
                        pass  # a torn record at the end is cut off by the next committer
                    raise WriteFailedError(
                        f"appending to the commit journal failed: {exc}; nothing was committed, "
                        "the previous values are kept"
                    ) from exc
                journal.offset += len(blob)
                journal.next_seq += len(accepted)
                journal.last_time_ns = now
                for request in accepted:
                    self.pending.update(request.writes)
                drop_record_only(self.pending)
            try:
                osl.fsync(journal.fd)
            except OSError as exc:
                # The records are in the file, so every process reads them.
                # Never fsync this file again and trust it (fsyncgate): copy
                # the journal to a new file and fsync that one instead.
                self._replace_after_failed_fsync(journal)
                raise DurabilityUnknownError(
                    f"fsync of the commit journal failed ({exc}): the commit is visible, "
                    "but may not survive a power cut"
                ) from exc
            self.flushes += 1
            self.commits += len(accepted)
        finally:
            for dir_fd in held_dirs:
                self._os.close(dir_fd)  # releases the entity directories' locks

    def _check_requests(
        self, batch: list[_Request], held_dirs: list[int], *, wait: bool
    ) -> list[_Request]:
        """The requests whose compare-and-set holds, in order; the others get a ConflictError."""
        from persistkit.backends._file import FileBackend

        view: dict[str, bytes | None] = {}
        accepted: list[_Request] = []
        locked: set[str] = set()
        """Namespaces whose directory lock this commit holds: each taken once, or a
        second descriptor of the same directory would wait for the first."""
        for request in batch:
            try:
                self._check_confined(request.writes, fresh=request.apply_now)
            except (ForeignSymlinkError, WriteFailedError) as exc:
                request.error = exc  # refused before it is acknowledged, not when applied
                continue
            if request.expect:
                try:
                    for key, expected in request.expect.items():
                        if expected is ANY_VERSION:
                            continue
                        namespace = split_key(key)[0]
                        if key not in view and key not in self.pending and namespace not in locked:
                            # A file-held key: a plain write of it may be in
                            # flight in another process. Its directory lock
                            # orders us with it; held until the append is done.
                            try:
                                held_dirs.append(self._lock_entity_dir(key, wait=wait))
                            except NotADirectoryError:
                                pass  # no directory, so no value and no write of it
                            locked.add(namespace)
                        FileBackend._check_expected(key, self._current(key, view), expected)
                except ConflictError as exc:
                    request.error = exc
                    continue
            accepted.append(request)
            view.update(request.writes)
        return accepted

    def _check_confined(self, writes: Writes, *, fresh: bool = False) -> None:
        """Refuse writes whose directory lies behind a symbolic link (:mod:`.confine`).

        Each directory is looked at once per process (the confined OS layer
        walks it and raises :class:`ForeignSymlinkError`); one swapped for a
        link later is refused when its files are written, and the journal
        keeps the commit. ``fresh`` (a plain write, whose file is written
        before it returns) looks again every time, its value's file too, so
        that such a write is refused before it is committed (one swapped in
        after this look is committed, and its file written once the link is gone).
        """
        from persistkit.backends._file import SUFFIX  # file.py imports this module

        backend = self._backend
        verified = self._confined_namespaces
        for key in writes:
            namespace, name = split_key(key)
            if namespace in verified and not fresh:
                continue
            try:
                dir_fd = backend._open_dir(backend._dir(namespace))
                try:
                    if fresh:
                        # The value's file itself: a link there is never replaced.
                        found = self._os.stat(name + SUFFIX, dir_fd=dir_fd, follow_symlinks=False)
                        if stat.S_ISLNK(found.st_mode):
                            raise self._os.refuse_link(dir_fd, name + SUFFIX)
                except FileNotFoundError:
                    pass  # a new value
                finally:
                    self._os.close(dir_fd)
            except FileNotFoundError:
                pass  # made when applied, through the same confined layer
            except NotADirectoryError as exc:
                if writes[key] is None:
                    continue  # nothing there to remove; the applier skips it too
                # Never made when applied: every checkpoint of the root would fail on it.
                raise WriteFailedError(
                    f"cannot write {key}: a file that is not a directory stands where its "
                    f"directory belongs ({exc}); nothing was committed, the previous values "
                    "are kept"
                ) from exc
            except OSError as exc:
                raise WriteFailedError(
                    f"cannot open the directory of {key}: {exc}; nothing was committed, "
                    "the previous values are kept"
                ) from exc
            if len(verified) >= 1 << 16:
                verified.clear()
            verified.add(namespace)

    def _lock_entity_dir(self, key: str, *, wait: bool) -> int:
        backend = self._backend
        namespace, _ = split_key(key)
        dir_fd = backend._ensure_dir(backend._dir(namespace))
        try:
            take_lock(
                self._os.flock, dir_fd, self.lock_timeout, f"the directory of {key}", wait=wait
            )
        except BaseException:
            self._os.close(dir_fd)
            raise
        return dir_fd

    def _current(self, key: str, view: Mapping[str, bytes | None]) -> bytes | None:
        value = view.get(key, _MISSING)
        if value is _MISSING:
            value = self.pending.get(key, _MISSING)
        if value is _MISSING:
            return self._backend._read_at(None, self._backend.path_of(key))
        return value  # type: ignore[return-value]  # bytes or None past the sentinel

    def _replace_after_failed_fsync(self, journal: _OpenJournal) -> None:
        try:
            # The restatement keeps the values, not the records: what FOLDERS derive
            # from the records is folded first, and made durable before they go.
            self._fold_held(journal, wait=True)
            if FOLDERS:
                self._sync_filesystem()
        except (OSError, PersistError) as exc:
            logger.error(
                "persistkit: folding the records of %s before replacing it failed (%s); "
                "what they derive (the statistics events) is lost",
                self.path,
                exc,
            )
        try:
            with self._view_lock:
                self._start_generation(journal.next_seq, dict(self.pending))
        except OSError as exc:
            self._broken = exc
            logger.error(
                "persistkit: the commit journal %s could not be replaced after a failed "
                "fsync (%s); this process commits nothing more",
                self.path,
                exc,
            )

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
        """Write the journal's values to their files (no fsync); off the event loop."""
        self._lead(lambda _: self._apply_held(wait=True), wait=True)

    def _lead(
        self, work: Callable[[_OpenJournal], None], *, wait: bool, create: bool = False
    ) -> None:
        """Run ``work`` as this process's leader, holding the journal lock.

        Without ``create``, nothing happens where no journal exists (a root
        never committed to, or removed by its owner): applying and
        checkpointing never make one.
        """
        if not create and not self.pending and not self._exists(self.directory):
            return  # nothing committed here, or the root was removed with nothing pending
        with self._cond:
            while self._leading:
                if not wait:
                    raise _WouldBlock("the commit journal")
                self._cond.wait()
            self._leading = True
        try:
            journal = self._lock_journal(wait=wait, create=create)
            if journal is None:
                return
            try:
                work(journal)
            finally:
                self._unlock_journal()
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()

    def _apply_held(self, *, wait: bool) -> None:
        changed = {
            key: data
            for key, data in self.pending.items()
            if self._applied.get(key, _MISSING) is not data
        }
        if changed:
            self._apply(changed, wait=wait)
            self._applied.update(changed)

    def _apply(self, writes: Mapping[str, bytes | None], *, wait: bool) -> None:
        """Files take the values in ``writes``: temp + rename, no fsync."""
        from persistkit.backends._file import SUFFIX  # file.py imports this module

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
                except (FileNotFoundError, NotADirectoryError):
                    continue  # no directory: nothing to remove
            else:
                dir_fd = backend._ensure_dir(backend._dir(namespace))
            try:
                # Temp files live under the directory's lock (the startup sweep relies on it).
                take_lock(osl.flock, dir_fd, self.lock_timeout, f"{namespace}/", wait=wait)
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
        """Apply everything, make it durable, empty the journal; off the event loop."""
        self._lead(lambda _: self._checkpoint_held(wait=True), wait=True)

    def _checkpoint_held(self, *, wait: bool) -> None:
        journal = self._journal
        if journal is None or (not self.pending and journal.offset == _FILE_HEADER.size):
            return
        history = self._backend.archive_for_checkpoint()
        try:
            self._fold_held(journal, wait=wait)
            self._apply_held(wait=wait)
            if history is not None:
                # Before the sync, which makes the segments durable with the applied
                # files: no fsync of their own, and still before the journal forgets.
                history.archive(self._os.pread(journal.fd, journal.offset, 0), sync=False)
            self._sync_filesystem()
            self._start_generation(journal.next_seq, None, archived=history is not None)
        except OSError as exc:
            raise DurabilityUnknownError(
                f"checkpoint of the commit journal failed ({exc}); the journal is kept "
                "and applied at the next start"
            ) from exc

        if history is not None and history is self._backend.history:  # its owner's policy
            try:
                history.prune(time.time_ns())
            except OSError as exc:  # the next checkpoint prunes; nothing was lost
                logger.warning(
                    "persistkit: pruning the history of %s failed (%s); the next checkpoint "
                    "tries again",
                    self._backend.root,
                    exc,
                )

    def _fold_held(self, journal: _OpenJournal, *, wait: bool) -> None:
        """Write what :data:`FOLDERS` derive from the records this checkpoint forgets:
        before the sync that makes the checkpoint durable, so that the derived files
        and the forgetting land together (a crash in between keeps the records, and
        the folders are idempotent through the sequence number they store)."""
        if not FOLDERS or journal.offset == _FILE_HEADER.size:
            return
        records = _whole_journal_records(self._os.pread(journal.fd, journal.offset, 0))
        if not records:
            return
        derived: dict[str, bytes | None] = {}
        for fold in FOLDERS:
            derived.update(fold(self._backend, records))
        if derived:
            self._apply(derived, wait=wait)

    def records_after(
        self,
        position: JournalPosition | None,
        marker: str,
        with_keys: Collection[str],
    ) -> tuple[JournalPosition | None, list[JournalRecord]]:
        """The records of the current journal after ``position`` (``None``: all of them)
        that write a key holding ``marker``, each with only those writes and those of
        ``with_keys`` (:func:`select_records`: a reader of a few keys of a large
        journal decodes little more than those); and the position after the last
        record read. A position in a journal a checkpoint replaced reads the new one
        from its start (the caller knows by :attr:`JournalPosition.journal`)."""
        self.refresh()
        with self._view_lock:
            journal = self._journal
            if journal is None:
                return None, []
            header = self._os.pread(journal.fd, _FILE_HEADER.size, 0)
            _magic, flags, generation = _FILE_HEADER.unpack_from(header)
            identity = (journal.ino, generation)
            if position is not None and position.journal == identity:
                start, first_seq = position.offset, position.next_seq
                data = self._os.pread(journal.fd, journal.offset - start, start)
                skip, flags = 0, 0
            else:
                start, data = 0, self._os.pread(journal.fd, journal.offset, 0)
                first_seq, skip = generation, _FILE_HEADER.size
            records, length, count = select_records(data, skip, first_seq, marker, with_keys)
            end = JournalPosition(identity, start + skip + length, first_seq + count)
        if records and records[0].seq == first_seq and flags & FLAG_RESTATED:
            records[0] = JournalRecord(records[0].seq, records[0].time_ns, {})
        return end, records

    def _sync_filesystem(self) -> None:
        fd = self._os.open(self._backend.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._os.syncfs(fd)
        finally:
            self._os.close(fd)

    # -- salvage ---------------------------------------------------------------------------

    def salvage(self, quarantine_dir: str) -> list[SalvageReport]:
        """Apply each damaged journal's records up to the damage; keep the journal aside.

        Empty when no journal is damaged. A damaged file is moved into
        ``quarantine_dir`` (never deleted); the valid records after its damage
        are reported, not applied: what came between them is lost, so applying
        them could make a state that never existed.
        """
        osl = self._os
        with self._cond:
            while self._leading:
                self._cond.wait()
            self._leading = True
        try:
            # Not _lock_journal: it reads the journal, and refuses a damaged one.
            self._take_journal_lock(wait=True)
            try:
                reports = []
                for name in self.legacy_journal_names():
                    legacy = self._backend._read_at(None, f"{self.directory}/{name}") or b""
                    report = self._salvage_file(name, memoryview(legacy), 1, 0, quarantine_dir)
                    if report is not None:
                        reports.append(report)
                data = self._backend._read_at(None, self.path)
                if data is not None:
                    magic, _, first_seq = _FILE_HEADER.unpack_from(data.ljust(_FILE_HEADER.size))
                    if magic != FILE_MAGIC:
                        first_seq = 0  # header lost: every record is after the damage
                    report = self._salvage_file(
                        JOURNAL_FILE, memoryview(data), first_seq, _FILE_HEADER.size, quarantine_dir
                    )
                    if report is not None:
                        reports.append(report)
                        if self._journal is not None:
                            osl.close(self._journal.fd)
                            self._journal = None
                        next_seq = max(
                            [first_seq + report.applied] + [r.seq + 1 for r in report.left_out]
                        )
                        self._start_generation(next_seq, None)
                return reports
            finally:
                self._unlock_journal()
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()

    def _salvage_file(
        self, name: str, data: memoryview, first_seq: int, start: int, quarantine_dir: str
    ) -> SalvageReport | None:
        osl = self._os
        records, length = parse_records(data[start:], first_seq) if first_seq else ([], 0)
        later = find_damage(data, start + length) if start + length < len(data) else []
        if not later:
            return None
        merged: dict[str, bytes | None] = {}
        for record in records:
            merged.update(record.writes)
        drop_record_only(merged)
        if records and start:  # a journal of this format: derived state goes on from it
            for fold in FOLDERS:
                merged.update(fold(self._backend, records))
        self._apply(merged, wait=True)
        self._sync_filesystem()
        history = self._backend.archive_for_checkpoint()
        if history is not None and start and records:
            # The records before the damage happened: they belong in the history.
            history.archive(bytes(data[: start + length]))
        target_fd = self._backend._ensure_dir(quarantine_dir)
        kept = f"{name}-damaged-{time.time_ns()}"
        dir_fd = self._backend._open_dir(self.directory)
        try:
            osl.replace(name, kept, src_dir_fd=dir_fd, dst_dir_fd=target_fd)
            osl.fsync(target_fd)
            osl.fsync(dir_fd)
        finally:
            osl.close(dir_fd)
            osl.close(target_fd)
        return SalvageReport(
            journal=name,
            applied=len(records),
            damaged_at=start + length,
            left_out=later,
            kept_as=f"{quarantine_dir}/{kept}",
        )

    # -- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Checkpoint what this process sees, stop the applier, close the files.

        A checkpoint that fails (a full disk, say) is logged, not raised: the
        commits stay in the journal, which every process reads, and the next
        checkpoint applies them. A closing process has lost nothing to report.
        """
        try:
            if self.recovered and not self._backend.read_only and self._broken is None:
                self.refresh()
                if self.pending:
                    try:
                        self.checkpoint()
                    except (OSError, PersistError) as exc:
                        if isinstance(exc, ForeignSymlinkError):
                            raise
                        logger.warning(
                            "persistkit: checkpoint at close of %s failed (%s); the commits "
                            "stay in the journal and are applied by the next checkpoint",
                            self._backend.root,
                            exc,
                        )
        finally:
            self._stopping = True
            if self._applier is not None:
                self._apply_wanted.set()
                self._applier.join()
                self._applier = None
            self._stopping = False  # a later commit starts a new applier
            for fd in (self._lock_fd, self._journal.fd if self._journal else None):
                if fd is not None:
                    try:
                        self._os.close(fd)
                    except OSError as exc:
                        if exc.errno != errno.EBADF:
                            raise
            self._lock_fd = None
            self._journal = None
            self.pending = {}
            self._applied = {}

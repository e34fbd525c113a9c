"""The file backend's history: journal generations archived instead of forgotten.

A checkpoint used to replace the commit journal by an empty one, and with it
the past. With history on (the default), the journal's records are first copied
into ``{root}/.history/YYYY-MM-DD/{first seq}.pkj`` (one segment per UTC day of
commit time, in the journal's own checksummed format), each segment written
aside, fsynced, renamed in and its directory fsynced, all before the journal is
replaced. So a crash between the two steps leaves the records in both places,
never in neither: the next checkpoint archives the same records under the same
names again (a segment is named by its first commit, and a day's records are
always the same ones), and a reader skips a commit number it has already seen.
No commit is lost or shown twice.

``{root}/.history/base.pkj`` holds the state at the oldest moment the history
can answer for: written once when the history starts (the files' values of the
keys the journal does not hold) and replaced when retention folds the oldest
segments into it. Retention runs at checkpoints: segments of days older than
``max_age`` and, while the segments exceed ``max_bytes``, the oldest ones are
folded into the base (written aside, fsynced, renamed in) and only then
removed. A crash between the two leaves segments the base already covers,
which readers skip.

Reading never takes the journal lock: the current journal is read first, then
the segments, so a checkpoint in between shows its records twice (skipped by
number), never not at all.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from persistkit.backends.journal import (
    _FILE_HEADER,
    _HEADER,
    FILE_MAGIC,
    FLAG_RESTATED,
    JournalRecord,
    encode_record,
    parse_records,
)
from persistkit.backends.oslayer import O_CLOEXEC, O_DIRECTORY
from persistkit.history import Commit, RecordedHistory, apply_writes

if TYPE_CHECKING:
    from persistkit.backends.file import FileBackend

__all__ = [
    "BASE_FILE",
    "DEFAULT_HISTORY_MAX_AGE_DAYS",
    "DEFAULT_HISTORY_MAX_BYTES",
    "HISTORY_DIR",
    "HistoryArchive",
    "HistoryPolicy",
]

HISTORY_DIR = ".history"
BASE_FILE = "base.pkj"
SEGMENT_SUFFIX = ".pkj"
DEFAULT_HISTORY_MAX_AGE_DAYS = 365.0
DEFAULT_HISTORY_MAX_BYTES = 1 << 30
_O_DIR = os.O_RDONLY | O_DIRECTORY | O_CLOEXEC
_NS_PER_DAY = 86_400 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """How much history a root keeps: whichever limit is reached first prunes."""

    max_age_days: float = DEFAULT_HISTORY_MAX_AGE_DAYS
    """Days of commits kept (by commit time, whole UTC days)."""
    max_bytes: int = DEFAULT_HISTORY_MAX_BYTES
    """Bytes of archived segments kept (the base state is not counted)."""
    plain_writes: bool = False
    """Also keep plain writes (``put``/``delete`` outside a commit) in the history:
    they then go through the journal too (one fsync instead of the durable
    replace's two; the file is written before the call returns, unsynced, and
    reads serve the key from the journal until the next checkpoint). Off by
    default: plain writes keep the file backend's durable replace, and only commits
    (every tick) reach the history. A plain write of a key a commit holds goes
    through the journal, and so into the history, either way."""

    def __post_init__(self) -> None:
        if self.max_age_days <= 0 or self.max_bytes <= 0:
            raise ValueError(f"a history policy keeps something: {self!r}")


def day_of(time_ns: int) -> str:
    """The UTC day of a commit time: the segment's directory."""
    return _dt.datetime.fromtimestamp(time_ns // 1_000_000_000, tz=_dt.UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True, slots=True)
class _Span:
    seq: int
    time_ns: int
    start: int
    end: int


def _spans(data: bytes, offset: int, first_seq: int) -> Iterator[_Span]:
    """Where each record of a (valid, already parsed) journal lies: headers only."""
    seq = first_seq
    while offset + _HEADER.size <= len(data):
        _magic, length, _crc, _seq, time_ns = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        yield _Span(seq, time_ns, offset, end)
        offset = end
        seq += 1


class HistoryArchive:
    """The history of one file root: archiving (under the journal lock) and reading."""

    def __init__(self, backend: FileBackend, policy: HistoryPolicy) -> None:
        self._backend = backend
        self._os = backend._os
        self.policy = policy
        self.directory = f"{backend.root}/{HISTORY_DIR}"
        self.started = False
        """Whether this process has seen (or written) the base: checked once, then free."""

    # -- writing, under the journal lock --------------------------------------------------

    def ensure_base(self, journal_keys: set[str], first_seq: int, time_ns: int) -> None:
        """Start the history once: the files' values of keys the journal does not hold.

        Those keys kept their value through the journal's records, so this is
        the state just before the journal's first record (``first_seq``).
        """
        if self.started:
            return
        try:
            self._os.stat(f"{self.directory}/{BASE_FILE}")  # a stat: the base may be large
        except FileNotFoundError:
            files, _links, _nested = self._backend._read_tree()  # links never followed
            state = {key: data for key, data in files.items() if key not in journal_keys}
            self._write_base(first_seq - 1, time_ns, state)
        self.started = True

    def archive(self, journal: bytes) -> None:
        """Copy a whole journal's records (header included in ``journal``) into the history.

        Durable when it returns: each segment fsynced and its directory entry too.
        """
        _magic, flags, first_seq = _FILE_HEADER.unpack_from(journal)
        spans = list(_spans(journal, _FILE_HEADER.size, first_seq))
        if not spans:
            return
        groups: list[list[_Span]] = []
        for span in spans:
            if groups and day_of(groups[-1][0].time_ns) == day_of(span.time_ns):
                groups[-1].append(span)
            else:
                groups.append([span])
        for group in groups:
            first = group[0]
            # The journal's restated first record (see FLAG_RESTATED) stays marked.
            segment_flags = flags & FLAG_RESTATED if first.seq == first_seq else 0
            blob = (
                _FILE_HEADER.pack(FILE_MAGIC, segment_flags, first.seq)
                + journal[first.start : group[-1].end]
            )
            self._write_durably(
                f"{self.directory}/{day_of(first.time_ns)}",
                f"{first.seq:020d}{SEGMENT_SUFFIX}",
                blob,
            )

    def prune(self, now_ns: int) -> int:
        """Fold what the policy no longer keeps into the base; returns segments removed."""
        segments = self._segments()
        if not segments:
            return 0
        cutoff = day_of(now_ns - int(self.policy.max_age_days * _NS_PER_DAY))
        sizes = {path: self._os.stat(path).st_size for _, path in segments}
        total = sum(sizes.values())
        folded: list[str] = []
        for day, path in segments:
            if day < cutoff or total > self.policy.max_bytes:
                folded.append(path)
                total -= sizes[path]
            else:
                break
        if not folded:
            return 0
        base_seq, base_time, state = self._read_base()
        for path in folded:
            for record in self._read_segment(path):
                if record.seq > base_seq:
                    apply_writes(state, record.writes)
                    base_seq, base_time = record.seq, record.time_ns
        self._write_base(base_seq, base_time, state)
        emptied = set()
        for path in folded:
            self._os.unlink(path)
            emptied.add(os.path.dirname(path))
        for directory in sorted(emptied):
            self._backend._fsync_dir(directory)
            try:
                self._os.rmdir(directory)
            except OSError:
                continue  # still holds a segment
        self._backend._fsync_dir(self.directory)
        return len(folded)

    def _write_base(self, seq: int, time_ns: int, state: dict[str, bytes]) -> None:
        blob = _FILE_HEADER.pack(FILE_MAGIC, 0, seq) + encode_record(seq, time_ns, dict(state))
        self._write_durably(self.directory, BASE_FILE, blob)

    def _write_durably(self, directory: str, name: str, blob: bytes) -> None:
        """Written aside, fsynced, renamed in, directory fsynced: the durable write."""
        dir_fd = self._backend._ensure_dir(directory)
        try:
            self._backend._write_new_file(dir_fd, name, blob)
        finally:
            self._os.close(dir_fd)

    def sweep_temps(self) -> list[str]:
        """Remove the temp files of archive writes a crash cut (under the journal lock)."""
        from persistkit.backends.file import TEMP_PREFIX  # file.py imports this module

        osl = self._os
        removed = []
        try:
            days = [self.directory] + [
                f"{self.directory}/{entry.name}"
                for entry in osl.scandir(self.directory)
                if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")
            ]
        except FileNotFoundError:
            return []
        for directory in days:
            names = [
                entry.name for entry in osl.scandir(directory) if entry.name.startswith(TEMP_PREFIX)
            ]
            if not names:
                continue
            dir_fd = self._backend._open_dir(directory)
            try:
                for name in names:
                    osl.unlink(name, dir_fd=dir_fd)
                    removed.append(f"{directory}/{name}")
                osl.fsync(dir_fd)
            finally:
                osl.close(dir_fd)
        return removed

    # -- reading ----------------------------------------------------------------------------

    def _segments(self, until_ns: int | None = None) -> list[tuple[str, str]]:
        """``(day, path)`` of every segment, oldest first; days after ``until_ns`` left out."""
        last_day = None if until_ns is None else day_of(until_ns)
        found: list[tuple[str, str]] = []
        try:
            days = sorted(
                entry.name
                for entry in self._os.scandir(self.directory)
                if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")
            )
        except FileNotFoundError:
            return []
        for day in days:
            if last_day is not None and day > last_day:
                break
            directory = f"{self.directory}/{day}"
            names = sorted(
                entry.name
                for entry in self._os.scandir(directory)
                if entry.name.endswith(SEGMENT_SUFFIX) and not entry.name.startswith(".")
            )
            found.extend((day, f"{directory}/{name}") for name in names)
        return found

    def _read_segment(self, path: str) -> list[JournalRecord]:
        data = self._backend._read_at(None, path) or b""
        if len(data) < _FILE_HEADER.size:
            return []
        magic, flags, first_seq = _FILE_HEADER.unpack_from(data)
        if magic != FILE_MAGIC:
            return []
        records, _ = parse_records(memoryview(data)[_FILE_HEADER.size :], first_seq)
        if records and flags & FLAG_RESTATED:
            # A restatement of what earlier records wrote: it holds its number, changes nothing.
            records[0] = JournalRecord(records[0].seq, records[0].time_ns, {})
        return records

    def _read_base(self) -> tuple[int, int, dict[str, bytes]]:
        records = self._read_segment(f"{self.directory}/{BASE_FILE}")
        if not records:
            return -1, -1, {}
        base = records[0]
        return base.seq, base.time_ns, {k: v for k, v in base.writes.items() if v is not None}

    def read(self, journal: list[JournalRecord], until_ns: int | None = None) -> RecordedHistory:
        """The history: the base, the segments and ``journal`` (the current records).

        The base is read last: a retention running meanwhile removes segments
        only after writing the base that covers them, so whatever segment this
        read missed, the base read after it holds.
        """
        by_seq: dict[int, JournalRecord] = {}
        for _, path in self._segments(until_ns):
            for record in self._read_segment(path):
                by_seq.setdefault(record.seq, record)
        for record in journal:
            by_seq.setdefault(record.seq, record)
        base_seq, base_time, base = self._read_base()
        ordered = [by_seq[seq] for seq in sorted(by_seq) if seq > base_seq]
        if base_seq < 0:
            # No base yet: the history starts with the oldest record held.
            base_seq = (ordered[0].seq - 1) if ordered else 0
            base_time = (ordered[0].time_ns - 1) if ordered else 0
        missing = []
        expected = base_seq + 1
        for record in ordered:
            if record.seq > expected:
                missing.append((expected, record.seq - 1))
            expected = record.seq + 1
        commits = []
        floor = base_time
        for record in ordered:
            # Commit times never go backwards; a clock stepped back across a
            # restart is read as the time before it, so that times follow numbers.
            floor = max(floor, record.time_ns)
            commits.append(Commit(record.seq, floor, record.writes))
        return RecordedHistory(base_time, base_seq, base, commits, missing)

    def size(self) -> int:
        """Bytes of archived segments (what ``max_bytes`` limits)."""
        return sum(self._os.stat(path).st_size for _, path in self._segments())

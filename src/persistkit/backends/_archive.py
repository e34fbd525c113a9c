"""The file backend's history: journal generations archived instead of forgotten.

A checkpoint used to replace the commit journal by an empty one, and with it
the past. With history on (the default), the journal's records are first copied
into ``{root}/.history/YYYY-MM-DD/{first seq}.pkj`` (one segment per UTC day of
commit time, in the journal's own checksummed format), each segment written
aside and renamed in, and made durable before the journal is replaced: by the
checkpoint's file-system sync (``syncfs``, after the copy), or elsewhere (a
salvage, a journal rewritten after a failed fsync) by its own fsync and its
directory's. So a crash between the two steps leaves the records in both places,
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

The first checkpoint of each day also leaves ``{day}/{seq}-{time_ns}.state``:
the whole state after the last commit it archived, built from the previous
snapshot and the segments after it. A point-in-time read starts from the
newest snapshot at or before its time and reads only the segments after it: a
day's commits at most, however long the history. Snapshots only save reading:
they are not fsynced of their own (the checkpoint's file-system sync follows;
checksummed like every record, a torn one is passed over for an older one, or
for the base), retention removes those its base covers, and their bytes count
towards ``max_bytes``.

Reading never takes the journal lock: the current journal is read first, then
the segments, so a checkpoint in between shows its records twice (skipped by
number), never not at all.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from persistkit._history import Commit, RecordedHistory, apply_writes
from persistkit.backends._journal import (
    _FILE_HEADER,
    _HEADER,
    FILE_MAGIC,
    FLAG_RESTATED,
    JournalRecord,
    encode_record,
    parse_records,
)
from persistkit.backends._oslayer import O_CLOEXEC, O_DIRECTORY
from persistkit.errors import PersistError

if TYPE_CHECKING:
    from persistkit.backends._file import FileBackend

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
SNAPSHOT_SUFFIX = ".state"
"""``{day}/{seq}-{time_ns}.state``: the whole state after commit ``seq`` (time ``time_ns``)."""
DEFAULT_HISTORY_MAX_AGE_DAYS = 365.0
DEFAULT_HISTORY_MAX_BYTES = 1 << 30
_O_DIR = os.O_RDONLY | O_DIRECTORY | O_CLOEXEC
_NS_PER_DAY = 86_400 * 1_000_000_000

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """How much history a root keeps: whichever limit is reached first prunes.

    A root that keeps history keeps every change in it, plain writes and
    removals too: they go through the commit journal like a tick's commit (see
    :class:`~persistkit.backends._file.FileBackend`).
    """

    max_age_days: float = DEFAULT_HISTORY_MAX_AGE_DAYS
    """Days of commits kept (by commit time, whole UTC days)."""
    max_bytes: int = DEFAULT_HISTORY_MAX_BYTES
    """Bytes of archived segments and day snapshots kept (the base state is not counted)."""

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


@dataclass(frozen=True, slots=True)
class _Snapshot:
    seq: int
    time_ns: int
    path: str


def _records_of(blob: bytes) -> list[JournalRecord]:
    """The records of a file in the journal's format (a segment, the base, a snapshot).

    A restated first record (see ``FLAG_RESTATED``) keeps its number and changes nothing.
    """
    if len(blob) < _FILE_HEADER.size:
        return []
    magic, flags, first_seq = _FILE_HEADER.unpack_from(blob)
    if magic != FILE_MAGIC:
        return []
    records, _ = parse_records(memoryview(blob)[_FILE_HEADER.size :], first_seq)
    if records and flags & FLAG_RESTATED:
        records[0] = JournalRecord(records[0].seq, records[0].time_ns, {})
    return records


def _snapshot_named(directory: str, name: str) -> _Snapshot | None:
    """The snapshot a file name ``{seq}-{time_ns}.state`` stands for, else ``None``."""
    stem = name.removesuffix(SNAPSHOT_SUFFIX)
    seq, _, time_ns = stem.partition("-")
    if stem == name or not (seq.isdigit() and time_ns.isdigit()):
        return None
    return _Snapshot(int(seq), int(time_ns), f"{directory}/{name}")


def _first_seq(path: str) -> int | None:
    """The first commit of a segment, from its name (``None``: not a name the archive gave)."""
    stem = os.path.basename(path).removesuffix(SEGMENT_SUFFIX)
    return int(stem) if stem.isdigit() else None


def _assemble(
    base_seq: int, base_time: int, base: dict[str, bytes], by_seq: dict[int, JournalRecord]
) -> RecordedHistory:
    """The history from a starting state (after commit ``base_seq``) and the records after it."""
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

    def archive(self, journal: bytes, *, sync: bool = True) -> None:
        """Copy a whole journal's records (header included in ``journal``) into the history.

        Durable when it returns: each segment fsynced and its directory entry
        too; with ``sync=False`` the caller makes them durable (a checkpoint
        archives before its file-system sync, which then covers the segments
        with the applied files, instead of two more fsyncs per segment).
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
                sync=sync,
            )
        self._snapshot_after(_records_of(journal))

    def prune(self, now_ns: int) -> int:
        """Fold what the policy no longer keeps into the base; returns segments removed."""
        segments, snapshots = self._listing()
        if not segments:
            return 0
        cutoff = day_of(now_ns - int(self.policy.max_age_days * _NS_PER_DAY))
        sizes = {path: self._os.stat(path).st_size for _, path in segments}
        snapshot_sizes = {
            snapshot.path: self._os.stat(snapshot.path).st_size for snapshot in snapshots
        }
        total = sum(sizes.values()) + sum(snapshot_sizes.values())
        folded: list[str] = []
        for index, (day, path) in enumerate(segments):
            if day < cutoff or total > self.policy.max_bytes:
                folded.append(path)
                total -= sizes[path]
                # The snapshots the base will cover go with the segment.
                following = segments[index + 1][1] if index + 1 < len(segments) else None
                until_seq = None if following is None else _first_seq(following)
                for snapshot in snapshots:
                    if until_seq is None or snapshot.seq < until_seq:
                        total -= snapshot_sizes.pop(snapshot.path, 0)
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
        covered = [snapshot.path for snapshot in snapshots if snapshot.seq <= base_seq]
        for path in folded + covered:
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

    def _write_durably(self, directory: str, name: str, blob: bytes, *, sync: bool = True) -> None:
        """Written aside, fsynced, renamed in, directory fsynced: the durable write
        (``sync=False``: the caller's file-system sync makes it durable)."""
        dir_fd = self._backend._ensure_dir(directory)
        try:
            self._backend._write_new_file(dir_fd, name, blob, sync=sync)
        finally:
            self._os.close(dir_fd)

    def sweep_temps(self) -> list[str]:
        """Remove the temp files of archive writes a crash cut (under the journal lock)."""
        from persistkit.backends._file import TEMP_PREFIX  # file.py imports this module

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

    def _days(self) -> list[str]:
        """The day folders, oldest first."""
        try:
            return sorted(
                entry.name
                for entry in self._os.scandir(self.directory)
                if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")
            )
        except FileNotFoundError:
            return []

    def _listing(
        self, until_ns: int | None = None
    ) -> tuple[list[tuple[str, str]], list[_Snapshot]]:
        """Every segment (``(day, path)``) and every day snapshot, oldest first, in one
        pass over the day folders; days after ``until_ns`` left out."""
        last_day = None if until_ns is None else day_of(until_ns)
        segments: list[tuple[str, str]] = []
        snapshots: list[_Snapshot] = []
        for day in self._days():
            if last_day is not None and day > last_day:
                break
            directory = f"{self.directory}/{day}"
            names = sorted(entry.name for entry in self._os.scandir(directory))
            for name in names:
                if name.startswith("."):
                    continue
                if name.endswith(SEGMENT_SUFFIX):
                    segments.append((day, f"{directory}/{name}"))
                snapshot = _snapshot_named(directory, name)
                if snapshot is not None:
                    snapshots.append(snapshot)
        snapshots.sort(key=lambda snapshot: snapshot.seq)
        return segments, snapshots

    def _segments(self, until_ns: int | None = None) -> list[tuple[str, str]]:
        """``(day, path)`` of every segment, oldest first; days after ``until_ns`` left out."""
        return self._listing(until_ns)[0]

    def _snapshots(self, until_ns: int | None = None) -> list[_Snapshot]:
        """Every day snapshot, oldest first; days after ``until_ns`` left out."""
        return self._listing(until_ns)[1]

    def _read_segment(self, path: str) -> list[JournalRecord]:
        return _records_of(self._backend._read_at(None, path) or b"")

    def _read_base(self) -> tuple[int, int, dict[str, bytes]]:
        records = self._read_segment(f"{self.directory}/{BASE_FILE}")
        if not records:
            return -1, -1, {}
        base = records[0]
        return base.seq, base.time_ns, {k: v for k, v in base.writes.items() if v is not None}

    def read(self, journal: list[JournalRecord], until_ns: int | None = None) -> RecordedHistory:
        """The history: the base, the segments and ``journal`` (the current records).

        With ``until_ns``, the history from the newest day snapshot at or before
        it (see :meth:`_snapshot_after`): only the records after the snapshot
        are read, so a point-in-time read costs a day's commits, not the whole
        history's. Without one (or when the records after it have a gap, such
        as a retention running meanwhile), the whole history.

        The base is read last: a retention running meanwhile removes segments
        only after writing the base that covers them, so whatever segment this
        read missed, the base read after it holds.
        """
        if until_ns is not None:
            recent = self._read_from_snapshot(journal, until_ns)
            if recent is not None:
                return recent
        by_seq: dict[int, JournalRecord] = {}
        for _, path in self._segments(until_ns):
            for record in self._read_segment(path):
                by_seq.setdefault(record.seq, record)
        for record in journal:
            by_seq.setdefault(record.seq, record)
        base_seq, base_time, base = self._read_base()
        return _assemble(base_seq, base_time, base, by_seq)

    def _read_from_snapshot(
        self, journal: list[JournalRecord], until_ns: int
    ) -> RecordedHistory | None:
        """The history from the newest readable snapshot at or before ``until_ns`` on;
        ``None`` when there is none or the records after it are not all there."""
        for snapshot in reversed(self._snapshots(until_ns)):
            if snapshot.time_ns > until_ns:
                continue
            state = self._read_snapshot(snapshot)
            if state is None:
                continue  # torn by a crash (snapshots are not fsynced): an older one
            by_seq: dict[int, JournalRecord] = {}
            for path in self._segments_after(snapshot.seq, until_ns):
                for record in self._read_segment(path):
                    if record.seq > snapshot.seq and record.time_ns <= until_ns:
                        by_seq.setdefault(record.seq, record)
            for record in journal:
                if record.seq > snapshot.seq and record.time_ns <= until_ns:
                    by_seq.setdefault(record.seq, record)
            history = _assemble(snapshot.seq, snapshot.time_ns, state, by_seq)
            return None if history.missing else history
        return None

    def _segments_after(self, seq: int, until_ns: int) -> list[str]:
        """The segments that may hold commits after ``seq``, up to the day of ``until_ns``.

        A segment holds the commits from the number in its name up to the next
        segment's, so every segment before the last one starting at or before
        ``seq + 1`` is left out.
        """
        numbered = sorted(
            ((-1 if (first := _first_seq(path)) is None else first), path)
            for _, path in self._segments(until_ns)
        )
        keep_from = max(
            (index for index, (first, _) in enumerate(numbered) if 0 <= first <= seq + 1),
            default=0,
        )
        return [
            path for index, (first, path) in enumerate(numbered) if index >= keep_from or first < 0
        ]

    # -- day snapshots: where a point-in-time read starts -------------------------------

    def _read_snapshot(self, snapshot: _Snapshot) -> dict[str, bytes] | None:
        try:
            records = _records_of(self._backend._read_at(None, snapshot.path) or b"")
        except OSError:
            return None  # removed by a retention meanwhile
        if len(records) != 1 or records[0].seq != snapshot.seq:
            return None
        return {key: data for key, data in records[0].writes.items() if data is not None}

    def _snapshot_after(self, records: list[JournalRecord]) -> None:
        """Write the state after ``records`` (just archived) as their day's snapshot.

        Once a day, at its first checkpoint: a read starts from the newest
        snapshot at or before its time, so it reads a day's commits at most.
        Built from the previous snapshot and the segments after it (from the
        base and every segment the first time). A snapshot only saves reading:
        it is not fsynced (the checkpoint's file-system sync follows), a torn or
        missing one is passed over, and a failure to write it is logged, never
        raised.
        """
        if not records:
            return
        newest = max(record.time_ns for record in records)
        day = f"{self.directory}/{day_of(newest)}"
        try:
            try:
                names = [entry.name for entry in self._os.scandir(day)]
            except FileNotFoundError:
                names = []
            if any(_snapshot_named(day, name) is not None for name in names):
                return  # the day has its snapshot
            recent = self._read_from_snapshot([], newest) or self.read([])
            seq = recent.commits[-1].seq if recent.commits else recent.base_seq
            state = recent.state_at(recent.end_ns)
            blob = _FILE_HEADER.pack(FILE_MAGIC, 0, seq) + encode_record(seq, recent.end_ns, state)
            directory = f"{self.directory}/{day_of(recent.end_ns)}"
            dir_fd = self._backend._ensure_dir(directory)
            try:
                name = f"{seq:020d}-{recent.end_ns:020d}{SNAPSHOT_SUFFIX}"
                self._backend._write_new_file(dir_fd, name, blob, sync=False)
            finally:
                self._os.close(dir_fd)
        except (OSError, PersistError) as exc:
            logger.warning(
                "persistkit: writing the history snapshot of %s failed (%s); point-in-time "
                "reads read further back until a checkpoint writes one",
                self._backend.root,
                exc,
            )

    def size(self) -> int:
        """Bytes of archived segments and day snapshots (what ``max_bytes`` limits)."""
        segments, snapshots = self._listing()
        paths = [path for _, path in segments] + [snapshot.path for snapshot in snapshots]
        return sum(self._os.stat(path).st_size for path in paths)

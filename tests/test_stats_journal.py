"""Statistics derived from the file journal after the fact.

The statistics of a file root are a function of the journal's records: these tests
check that where the records are when a reader asks (in the journal, folded into
the heads by a checkpoint, or folded twice by a checkpoint that died before it
forgot them) changes nothing.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.test_file_backend import FailingOS
from tests.test_stats import (
    MIN,
    STRATEGY,
    SYMBOL,
    T0,
    MarketClock,
    check_scripted_statistics,
    filled,
    put_schedule,
    put_signal,
    scheduled,
    scripted_run,
)

import persistkit
from persistkit import LiveSession, Partial, PersistScheduleAdapter, Schedule
from persistkit._config import DEFAULT_EVENT_LIMIT
from persistkit._domains.events import (
    EVENT_TIME_KEY,
    FOLDED_NAMESPACE,
    SEEDS_KEY,
    SIGNAL_NOTES_KEY,
)
from persistkit._domains.journal_events import folded_key
from persistkit._names import join_pair
from persistkit.backends._file import FileBackend
from persistkit.backends._journal import (
    JOURNAL_FILE,
    JournalRecord,
    encode_record,
    parse_records,
    select_records,
)
from persistkit.backends._oslayer import OSLayer
from persistkit.errors import DurabilityUnknownError
from persistkit.models import ScheduledSignalRow

_SRC = Path(__file__).parents[1] / "src"


def checkpointing_ticks(session: LiveSession) -> Any:
    """``session.tick`` followed by a checkpoint: every record is folded right after it."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def tick() -> Any:
        async with session.tick() as opened:
            yield opened
        await session.backend.checkpoint()

    return tick


async def test_a_checkpoint_after_every_tick_gives_the_same_statistics(data_root: Path) -> None:
    clock = MarketClock()
    persistkit.configure(mode="live", base_dir=data_root, clock=clock)
    async with LiveSession([(SYMBOL, STRATEGY)], "main", base_dir=data_root) as session:
        await scripted_run(checkpointing_ticks(session), clock)
        assert isinstance(session.backend, FileBackend)
        assert session.backend.journal.records() == []  # all folded, nothing left to derive
        await check_scripted_statistics()
    folded = data_root / FOLDED_NAMESPACE / f"{join_pair(SYMBOL, STRATEGY)}.json"
    head = orjson.loads(folded.read_bytes())
    assert head["format"] == 4 and len(head["schedule"]) == 9 and len(head["partial"]) == 3


async def test_a_fold_repeated_after_a_crash_adds_no_event(data_root: Path) -> None:
    """A checkpoint that wrote the heads and died before replacing the journal: the
    next one folds the same records again, and the heads' sequence numbers skip them."""
    clock = MarketClock()
    persistkit.configure(mode="live", base_dir=data_root, clock=clock)
    async with LiveSession([(SYMBOL, STRATEGY)], "main", base_dir=data_root) as session:
        await scripted_run(session.tick, clock)
        backend = session.backend
        assert isinstance(backend, FileBackend)
        journal = backend.journal
        journal._lead(lambda opened: journal._fold_held(opened, wait=True), wait=True)
        await check_scripted_statistics()  # heads folded, the same records still there
        await backend.checkpoint()
        await check_scripted_statistics()


async def test_a_tick_that_rewrites_a_row_unchanged_adds_no_event(data_root: Path) -> None:
    async with LiveSession([(SYMBOL, STRATEGY)], "main", base_dir=data_root) as session:
        async with session.tick():
            await put_schedule(scheduled("A", T0))
        async with session.tick():
            await put_schedule(scheduled("A", T0))  # unchanged
        assert (await Schedule.get_data(SYMBOL, STRATEGY)).total_scheduled == 1
        assert (await Partial.get_data(SYMBOL, STRATEGY)).total_events == 0


def _head_with(**changed: Any) -> bytes:
    head: dict[str, Any] = {
        "format": 4,
        "seq": 1,
        "limit": 250,
        "facts": {"schedule": None, "levels": {}, "signal": None},
        "schedule": [],
        "partial": [],
    }
    return orjson.dumps(head | changed)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(b'{"format": 4, "seq": ', id="torn"),
        pytest.param(_head_with(seq=-3), id="negative-seq"),
        pytest.param(_head_with(limit=0), id="no-limit"),
        pytest.param(
            _head_with(schedule=[[T0, "opened", "A", "sideways", 1.0, None]]), id="bad-row"
        ),
        pytest.param(_head_with(partial=[[T0, "profit", "A", 15, "long", 1.0]]), id="bad-level"),
        pytest.param(
            _head_with(facts={"schedule": ["A", "long"], "levels": {}, "signal": None}),
            id="short-facts",
        ),
        pytest.param(_head_with(facts={"levels": {"A": [[10], "x"]}}), id="bad-levels"),
    ],
)
async def test_a_damaged_folded_head_is_quarantined_and_later_events_still_count(
    data_root: Path, damage: bytes
) -> None:
    async with LiveSession([(SYMBOL, STRATEGY)], "main", base_dir=data_root) as session:
        async with session.tick():
            await put_schedule(scheduled("A", T0))
        await session.backend.checkpoint()
        folded = data_root / FOLDED_NAMESPACE / f"{join_pair(SYMBOL, STRATEGY)}.json"
        folded.write_bytes(damage)  # a bad disk, or a hand edit
        async with session.tick():
            await put_schedule(scheduled("B", T0))
        stats = await Schedule.get_data(SYMBOL, STRATEGY)
        # A's "scheduled" was in the damaged head, and so was the fact that A was the
        # row: its cancellation is lost with it (as the unsealed events of a torn head
        # of format 3 are).
        assert [(event.action, event.signal_id) for event in stats.event_list] == [
            ("scheduled", "B")
        ]
        await session.backend.checkpoint()
        assert [
            (event.action, event.signal_id)
            for event in (await Schedule.get_data(SYMBOL, STRATEGY)).event_list
        ] == [("scheduled", "B")]
        quarantined = [entry async for entry in session.backend.list_quarantine(FOLDED_NAMESPACE)]
        assert [entry.key for entry in quarantined] == [folded_key(join_pair(SYMBOL, STRATEGY))]


@pytest.mark.parametrize("history", ["kept", "none"])
async def test_outside_a_tick_a_signal_written_first_opens_the_entry_on_a_file_root(
    history: str, tmp_path: Path
) -> None:
    """The signal's own commit must be a record the derivation sees: on a root without
    history a plain write of a key the journal does not hold goes straight to its file."""
    backend = FileBackend(tmp_path / "root", **({"history": None} if history == "none" else {}))
    persistkit.configure(mode="live", backend=backend, clock=MarketClock())
    await backend.checkpoint()
    a, b = scheduled("A", T0), scheduled("B", T0)
    await put_schedule(a)
    await backend.checkpoint()  # the journal forgets the pair's keys
    await put_signal(filled(a, T0 + 3 * MIN))
    await put_schedule(None)
    await put_signal(None)
    await put_schedule(b)
    await put_schedule(None)
    await put_signal(filled(b, T0 + 3 * MIN))
    stats = await Schedule.get_data(SYMBOL, STRATEGY)
    assert [(event.action, event.signal_id) for event in stats.event_list] == [
        ("scheduled", "A"),
        ("opened", "A"),
        ("scheduled", "B"),
        ("cancelled", "B"),
    ]


async def test_statistics_turned_on_later_know_the_row_committed_before(data_root: Path) -> None:
    """A pair written with the statistics off (or by a release that kept its events in
    the commits) has no folded head: its first record under the statistics carries
    its committed rows, so replacing the old entry is a cancellation, not nothing."""
    persistkit.configure(mode="live", base_dir=data_root, event_limit=0)
    async with LiveSession([(SYMBOL, STRATEGY)], "main", base_dir=data_root) as session:
        tick = session.tick()
        async with tick:
            await put_schedule(scheduled("A", T0))
    assert not (data_root / FOLDED_NAMESPACE).exists()  # statistics off: no file
    persistkit.configure(mode="live", base_dir=data_root)  # a restart, statistics on
    async with LiveSession([(SYMBOL, STRATEGY)], "main", base_dir=data_root) as session:
        async with session.tick():
            await put_schedule(scheduled("B", T0))
        stats = await Schedule.get_data(SYMBOL, STRATEGY)
    assert [(event.action, event.signal_id) for event in stats.event_list] == [
        ("cancelled", "A"),
        ("scheduled", "B"),
    ]


async def test_a_journal_rewritten_after_a_failed_fsync_keeps_the_events_of_its_records(
    tmp_path: Path,
) -> None:
    """After a failed fsync the journal is rewritten as one record restating its values:
    the events its records derive are folded into the heads first, durably."""
    faults = FailingOS("fsync", errno.EIO, when=1)
    faults.armed = False
    backend = FileBackend(tmp_path / "root", os_layer=faults)
    persistkit.configure(mode="live", backend=backend)
    await put_schedule(scheduled("A", T0))
    await put_schedule(scheduled("B", T0))
    faults.armed = True  # the next fsync, the journal's at the next commit, fails
    with pytest.raises(DurabilityUnknownError):
        await put_schedule(scheduled("C", T0))
    faults.armed = False
    expected = [
        ("scheduled", "A"),
        ("cancelled", "A"),
        ("scheduled", "B"),
        ("cancelled", "B"),
        ("scheduled", "C"),  # visible, so it counts (as it would after a restart)
    ]
    stats = await Schedule.get_data(SYMBOL, STRATEGY)
    assert [(event.action, event.signal_id) for event in stats.event_list] == expected
    await backend.aclose()
    persistkit.configure(mode="live", base_dir=tmp_path / "root")  # a restart
    stats = await Schedule.get_data(SYMBOL, STRATEGY)
    assert [(event.action, event.signal_id) for event in stats.event_list] == expected


async def test_a_salvaged_journal_keeps_the_events_of_the_records_before_its_damage(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    persistkit.configure(mode="live", base_dir=root)
    for signal_id in "ABCD":
        await put_schedule(scheduled(signal_id, T0))
    # C's record damaged by a bad disk, D's after it still valid: the root is refused
    # until salvaged, which applies the records before the damage.
    journal = root / ".journal" / "commits.pkj"
    data = bytearray(journal.read_bytes())
    data[data.index(b'"id":"C"') + 6] ^= 0x40
    journal.write_bytes(bytes(data))
    (report,) = await FileBackend(root).salvage_journal()
    assert report.applied == 2
    stats = await Schedule.get_data(SYMBOL, STRATEGY, backend=FileBackend(root))
    assert [(event.action, event.signal_id) for event in stats.event_list] == [
        ("scheduled", "A"),
        ("cancelled", "A"),
        ("scheduled", "B"),
    ]


_SAME_ROW_AGAIN = """
import asyncio, os, sys
import persistkit
from persistkit import PersistScheduleAdapter
from tests.test_stats import STRATEGY, SYMBOL, put_schedule

async def main(root: str, ready: str, go: str, waiting_tick: str) -> None:
    settings = persistkit.configure(mode="live", base_dir=root)
    seen = await PersistScheduleAdapter.read_schedule_data(SYMBOL, STRATEGY)
    for tick in range(int(waiting_tick) + 1):
        async with persistkit.transaction():
            await put_schedule(seen)  # what this process last saw committed, again
            if tick == int(waiting_tick):
                open(ready, "w").close()
                while not os.path.exists(go):
                    await asyncio.sleep(0.001)
    await settings.backend.aclose()

asyncio.run(main(*sys.argv[1:5]))
"""


@pytest.mark.parametrize(
    ("statistics_first", "waiting_tick", "expected"),
    [
        ("on", 1, [("scheduled", "A"), ("cancelled", "A"), ("scheduled", "A")]),
        ("off", 0, [("cancelled", "A"), ("scheduled", "A")]),
    ],
    ids=["row-unchanged-for-it", "rows-read-for-its-seed"],
)
async def test_a_row_another_process_changed_before_the_commit_still_has_its_events(
    statistics_first: str, waiting_tick: int, expected: list[tuple[str, str]], data_root: Path
) -> None:
    """Process B stages the scheduled row it last saw (A, unchanged for it); before it
    commits, this process cancels A. B's commit then schedules A again: an event,
    though B's tick changed nothing it could see. B waits in its second tick (its
    view of the journal then up to date), or, when A was written with the
    statistics off (the pair has no folded head), in its first, whose record
    carries the pair's rows as B read them before the cancellation."""
    if statistics_first == "off":
        persistkit.configure(mode="live", base_dir=data_root, event_limit=0)
    else:
        persistkit.configure(mode="live", base_dir=data_root)
    await put_schedule(scheduled("A", T0))
    persistkit.configure(mode="live", base_dir=data_root)
    ready, go = data_root.parent / "ready", data_root.parent / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_SRC), str(_SRC.parent)])}
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SAME_ROW_AGAIN, str(data_root), str(ready), str(go),
        str(waiting_tick), env=env,
    )  # fmt: skip
    try:
        while not ready.exists():
            assert other.returncode is None, "the other process died before its commit"
            await asyncio.sleep(0.001)
        await put_schedule(None)
        go.touch()
        assert await asyncio.wait_for(other.wait(), timeout=60) == 0
    finally:
        if other.returncode is None:
            other.kill()
            await other.wait()
    stats = await Schedule.get_data(SYMBOL, STRATEGY)
    assert [(event.action, event.signal_id) for event in stats.event_list] == expected


async def test_the_event_time_notes_and_seeds_ride_in_the_records_only(data_root: Path) -> None:
    """What a record carries for the derivation is no state: no file of it after a
    checkpoint, no key of it in a snapshot (what inspect and export read) or in a
    state the history rebuilds, none read, before or after the checkpoint."""
    clock = MarketClock()
    persistkit.configure(mode="live", base_dir=data_root, clock=clock)
    async with LiveSession([(SYMBOL, STRATEGY)], "main", base_dir=data_root) as session:
        await scripted_run(session.tick, clock)  # the first record seeds the pair
        async with session.tick():  # a fill closed at once: the record notes its signal
            await put_signal(filled(scheduled("Z", T0), T0))
            await put_signal(None)
        backend = session.backend
        assert isinstance(backend, FileBackend)
        records = backend.journal.records()
        carried = {EVENT_TIME_KEY, SIGNAL_NOTES_KEY, SEEDS_KEY}
        assert carried <= {key for record in records for key in record.writes}
        for stage in ("in the journal", "checkpointed"):
            assert not carried & (await backend.snapshot()).values.keys(), stage
            assert [await backend.get(key) for key in carried] == [None] * 3, stage
            history = await backend.history_records()  # what state_at and replays rebuild
            assert not carried & history.state_at(history.end_ns).keys(), stage
            await backend.checkpoint()
        await check_scripted_statistics()
    files = {path.relative_to(data_root).as_posix() for path in data_root.rglob("*.json")}
    assert not {name for name in files if name.startswith("_persistkit/")} - {
        f"{FOLDED_NAMESPACE}/{join_pair(SYMBOL, STRATEGY)}.json"
    }


@pytest.mark.parametrize("first_use", ["start", "commit"])
async def test_a_root_of_format_2_is_read_and_marked_3_before_anything_is_committed(
    first_use: str, data_root: Path
) -> None:
    """A root the previous release wrote (format 2: the same records and files) is read
    as it is; the first commit or start of this release marks it 3, so that the
    previous release, which would checkpoint without folding the statistics, refuses
    it from then on. ``commit``: a start that could not take the journal lock (another
    process committing) left the mark to the first commit."""
    persistkit.configure(mode="live", base_dir=data_root, event_limit=0)
    await put_schedule(scheduled("A", T0))  # as the previous release: no statistics of it
    await persistkit.configure(mode="live", base_dir=data_root).backend.aclose()
    marker = data_root / ".journal" / "format"
    marker.write_text("persistkit-format 2\n")
    backend = FileBackend(data_root)
    if first_use == "commit":
        backend.journal.recovered = True  # the start's checkpoint found the lock taken
    persistkit.configure(mode="live", backend=backend)
    assert marker.read_text() == "persistkit-format 2\n"
    await put_schedule(scheduled("B", T0))
    assert marker.read_text() == "persistkit-format 3\n"
    stats = await Schedule.get_data(SYMBOL, STRATEGY)
    assert [(event.action, event.signal_id) for event in stats.event_list] == [
        ("cancelled", "A"),
        ("scheduled", "B"),
    ]


async def test_a_fold_keeps_the_events_of_the_largest_bound_whoever_folds(data_root: Path) -> None:
    """A writer configured for 300 events per pair; another process, with the default
    250 or the statistics off, checkpoints the root: the writer still reads its 300."""
    writer = persistkit.configure(mode="live", base_dir=data_root, event_limit=300)
    for number in range(151):  # 301 events: each replaces the entry ("cancelled", "scheduled")
        await put_schedule(scheduled(f"S{number}", T0))
    for limit in (DEFAULT_EVENT_LIMIT, 0):  # folds: all records, then none
        folder = FileBackend(data_root)
        persistkit.configure(mode="live", backend=folder, event_limit=limit)
        await folder.checkpoint()
        await folder.aclose()
    persistkit.configure(mode="live", backend=writer.backend, event_limit=300)
    stats = await Schedule.get_data(SYMBOL, STRATEGY)
    assert stats.total_events == 300
    assert stats.event_list[-1].signal_id == "S150"


_ENTRY_WITH_STATISTICS_OFF = """
import asyncio, sys
import persistkit
from tests.test_stats import T0, put_schedule, scheduled

async def main(root: str) -> None:
    settings = persistkit.configure(mode="live", base_dir=root, event_limit=0)
    await put_schedule(scheduled("A", T0))
    await settings.backend.aclose()

asyncio.run(main(sys.argv[1]))
"""


async def test_a_checkpoint_keeps_the_facts_of_a_pair_with_records_and_no_event_yet(
    data_root: Path,
) -> None:
    """The session's first record of the pair (no event) carries the pair's rows; then a
    process with the statistics off writes an entry, and a checkpoint forgets both
    records. The session's next entry replaces that one: a cancellation, which only
    a head keeping the facts of the forgotten records can tell."""
    persistkit.configure(mode="live", base_dir=data_root)
    async with LiveSession([(SYMBOL, STRATEGY)], "main", base_dir=data_root) as session:
        async with session.tick():
            await put_schedule(None)  # a row with events, and none
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_SRC), str(_SRC.parent)])}
        other = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _ENTRY_WITH_STATISTICS_OFF, str(data_root), env=env
        )
        assert await asyncio.wait_for(other.wait(), timeout=60) == 0
        await session.backend.checkpoint()
        assert session.backend.journal.records() == []
        async with session.tick():
            await put_schedule(scheduled("B", T0))
        stats = await Schedule.get_data(SYMBOL, STRATEGY)
    assert [(event.action, event.signal_id) for event in stats.event_list] == [
        ("cancelled", "A"),
        ("scheduled", "B"),
    ]


# Pairs whose names hold one another's: a prefix ("C1USDT_trend" of "C10USDT_trend" and
# of "C1USDT_trend_x"), a suffix ("XC1USDT_trend"), an escaped name and the name whose
# escape is the other's text ("BTC/USDT" is stored as "BTC%2FUSDT", "BTC%2FUSDT" as
# "BTC%252FUSDT"). Pair i schedules i + 1 limit entries, each replacing the one before
# (no signal: a cancellation), then clears its row (another); the ids of one pair hold
# another's stored name, so the journal holds each name in values too.
_NESTED_PAIRS = [
    ("C1USDT", "trend"),
    ("C10USDT", "trend"),
    ("C1USDT", "trend_x"),
    ("XC1USDT", "trend"),
    ("BTC/USDT", "my strat"),
    ("BTC%2FUSDT", "my strat"),
]


def _entry(index: int, number: int) -> ScheduledSignalRow:
    symbol, strategy = _NESTED_PAIRS[index]
    other = join_pair(*_NESTED_PAIRS[(index + 1) % len(_NESTED_PAIRS)])
    return scheduled(f"{index}-{number}/{other}/", T0).model_copy(
        update={"symbol": symbol, "strategy_name": strategy}
    )


async def _nested_pairs_events(backend: FileBackend | Path | None) -> list[list[tuple[str, str]]]:
    """Each pair's schedule events, read by ``backend``: a root is read by a new reader
    (as the command line's ``report``: nothing cached), ``None`` by the session's."""
    if isinstance(backend, Path):
        reader = FileBackend(backend, read_only=True)
        try:
            return await _nested_pairs_events(reader)
        finally:
            await reader.aclose()
    found = []
    for symbol, strategy in _NESTED_PAIRS:
        stats = await Schedule.get_data(symbol, strategy, backend=backend)
        found.append([(event.action, event.signal_id) for event in stats.event_list])
    return found


async def test_a_pair_gets_exactly_its_events_whatever_other_names_hold_it(
    data_root: Path,
) -> None:
    """A reader decodes only the records that hold a pair's stored name (a byte search):
    every record writing the pair's rows is found, another pair's (a name that starts or
    ends with it, an escape of it) or a value holding the name add nothing. The events
    read from the journal by the process that wrote it, by a new reader (the command
    line's, nothing cached), by that reader again after more records (from where it
    stopped), and from the heads a checkpoint folds (which decode every record) agree."""
    persistkit.configure(mode="live", base_dir=data_root)
    async with LiveSession(_NESTED_PAIRS, "main", base_dir=data_root) as session:
        backend = session.backend
        assert isinstance(backend, FileBackend)
        reader = FileBackend(data_root, read_only=True)
        # The last pair first: the event time rides after the tick's first write, and
        # then a cleared row (a deleted value: no bytes) is followed by the next pair's
        # key, which starts where that empty value does.
        order = [len(_NESTED_PAIRS) - 1, *range(len(_NESTED_PAIRS) - 1)]
        for number in range(len(_NESTED_PAIRS) + 1):
            async with session.tick():
                for index in order:
                    if number <= index + 1:
                        row = _entry(index, number) if number <= index else None
                        await PersistScheduleAdapter.write_schedule_data(row, *_NESTED_PAIRS[index])
            if number == 2:
                partway = await _nested_pairs_events(reader)  # the reader's first read
        expected = []
        for index in range(len(_NESTED_PAIRS)):
            events = [("scheduled", _entry(index, 0).id)]
            for number in range(1, index + 1):
                events += [("cancelled", _entry(index, number - 1).id)]
                events += [("scheduled", _entry(index, number).id)]
            expected.append([*events, ("cancelled", _entry(index, index).id)])
        assert partway[0] == expected[0]  # pair 0 was done by then; the others were not
        assert partway[-1] == expected[-1][:5]
        assert await _nested_pairs_events(None) == expected
        assert await _nested_pairs_events(reader) == expected  # read on from where it was
        assert await _nested_pairs_events(data_root) == expected
        await backend.checkpoint()
        assert backend.journal.records() == []
        assert await _nested_pairs_events(data_root) == expected
        await reader.aclose()


_MARKER = "/C1USDT_trend/"
_ALONG = (EVENT_TIME_KEY, SEEDS_KEY)
_SOME_KEYS = [
    "signal/C1USDT_trend/C1USDT",
    "partial/C1USDT_trend/levels",
    "signal/C10USDT_trend/C10USDT",
    "schedule/XC1USDT_trend/XC1USDT",
    "x/C1USDT_trend",
    EVENT_TIME_KEY,
    EVENT_TIME_KEY[:-1] + "T",  # as long as one wanted: compared, not taken
    EVENT_TIME_KEY[:-1],
    SEEDS_KEY,
    "risk/main/positions",
]
_SOME_VALUES = st.one_of(
    st.none(),  # a deletion: no bytes, the next key starts where it would
    st.sampled_from([b"", _MARKER.encode(), f'"signal{_MARKER}"'.encode(), b"PKJ1"]),
    st.binary(max_size=12),
)


@given(
    st.lists(st.dictionaries(st.sampled_from(_SOME_KEYS), _SOME_VALUES, max_size=6), max_size=8),
    st.integers(min_value=0, max_value=40),
)
@settings(max_examples=300, deadline=None)
def test_the_records_selected_by_a_byte_search_are_those_a_full_parse_finds(
    commits: list[dict[str, bytes | None]], torn: int
) -> None:
    """What a reader of one pair decodes (:func:`select_records`) is what parsing every
    record and keeping those with a key holding the pair's name gives, with a torn
    record at the end or not."""
    data = b"".join(encode_record(seq, seq * 7, writes) for seq, writes in enumerate(commits, 3))
    if torn:
        data += encode_record(len(commits) + 3, 0, {_SOME_KEYS[0]: b"x" * 30})[:torn]
    records, length = parse_records(data, 3)
    expected = [
        JournalRecord(
            record.seq,
            record.time_ns,
            {key: value for key, value in record.writes.items() if _MARKER in key or key in _ALONG},
        )
        for record in records
        if any(_MARKER in key for key in record.writes)
    ]
    assert select_records(b"head" + data, 4, 3, _MARKER, _ALONG) == (
        expected,
        length,
        len(records),
    )


class OneJournalInode(OSLayer):
    """The real system calls, except that every journal file reports one inode number: a
    file system that gives a freed inode number to the next new file, as ext4 does a
    couple of checkpoints after the journal it replaced was freed."""

    def __init__(self) -> None:
        self._journals: set[int] = set()

    def open(self, path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        fd = os.open(path, flags, mode, dir_fd=dir_fd)
        if os.path.basename(path).lstrip(".").startswith(JOURNAL_FILE):
            self._journals.add(fd)  # the journal, or a new one written beside it
        return fd

    def close(self, fd: int) -> None:
        self._journals.discard(fd)
        os.close(fd)

    def fstat(self, fd: int) -> os.stat_result:
        found = os.fstat(fd)
        if fd not in self._journals:
            return found
        return os.stat_result((found.st_mode, 1, *tuple(found)[2:10]))


async def test_a_reader_sees_every_event_after_checkpoints_gave_the_journal_a_used_inode_number(
    tmp_path: Path,
) -> None:
    """A process reads a pair's statistics, then checkpoints forget only other pairs'
    records (the pair's folded head unchanged) and the journal that replaces them has
    the inode number of the one it read: the records before the offset it read to are
    new ones, and their events count."""
    backend = FileBackend(tmp_path / "root", os_layer=OneJournalInode(), history=None)
    persistkit.configure(mode="live", backend=backend)
    other = 0

    async def put_other_pair() -> None:
        nonlocal other
        other += 1
        row = scheduled(f"O{other}", T0).model_copy(update={"strategy_name": "other"})
        await PersistScheduleAdapter.write_schedule_data(row, SYMBOL, "other")

    await put_schedule(scheduled("A", T0))
    await backend.checkpoint()  # A in the pair's folded head
    for _ in range(10):
        await put_other_pair()  # the offset the next read reaches is far into the journal
    assert [e.signal_id for e in (await Schedule.get_data(SYMBOL, STRATEGY)).event_list] == ["A"]
    for _ in range(2):
        await put_other_pair()
        await backend.checkpoint()
    await put_schedule(scheduled("B", T0))  # near the start of the journal
    for _ in range(10):
        await put_other_pair()
    stats = await Schedule.get_data(SYMBOL, STRATEGY)
    assert [(event.action, event.signal_id) for event in stats.event_list] == [
        ("scheduled", "A"),
        ("cancelled", "A"),
        ("scheduled", "B"),
    ]

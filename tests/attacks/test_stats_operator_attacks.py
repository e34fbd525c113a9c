"""What an operator does to a file root whose statistics are derived from the commit journal
(branch stats-journal): upgrade from the earlier build (journal format 2, events written in
the commit), leave a process of it running, copy the root file by file, restore a part of a
backup, salvage a damaged journal, mix processes with and without history.

Each process is a real one (``tests/support/stats_operator_bot.py``), with this build or the
earlier build, taken from the commit this branch grew from.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from tests import test_stats
from tests.support.stats_operator_bot import STRATEGY, expected
from tests.test_stats import MIN, SYMBOL, T0, filled, put_schedule, put_signal, scheduled

import persistkit
from persistkit import (
    PersistPartialAdapter,
    PersistScheduleAdapter,
    PersistSignalAdapter,
    Schedule,
)
from persistkit.backends import FileBackend

_REPO = Path(__file__).parents[2]
_BOT = _REPO / "tests" / "support" / "stats_operator_bot.py"
EARLIER_BUILD = "4ea81ceb7533f3e91973c15861285873cbea8010"
"""The commit stats-journal grew from: journal format 2, statistics written in the commit."""


@pytest.fixture(scope="module")
def earlier_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The earlier build's ``src`` (its package only), from the repository's history."""
    archive = subprocess.run(
        ["git", "-C", str(_REPO), "archive", EARLIER_BUILD, "src/persistkit"],
        check=True,
        capture_output=True,
    ).stdout
    target = tmp_path_factory.mktemp("earlier")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target / "src"


def _env(src: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src), **extra}


def bot(
    src: Path, root: Path, first: int, count: int, symbol: str = "BTC", **extra: str
) -> list[int]:
    """Ticks ``first`` .. ``first+count-1`` in a process of the build in ``src``; its totals."""
    done = subprocess.run(
        [sys.executable, str(_BOT), str(root), str(first), str(count), symbol],
        env=_env(src, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    totals: list[int] = json.loads(done.stdout.splitlines()[-1])
    return totals


NEW = _REPO / "src"


def digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) and its content's hash."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


async def committed_state(root: Path, symbol: str) -> tuple[Any, Any, Any]:
    persistkit.configure(mode="live", backend=FileBackend(root))
    schedule = await PersistScheduleAdapter.read_schedule_data(symbol, STRATEGY)
    signal = await PersistSignalAdapter.read_signal_data(symbol, STRATEGY)
    levels = await PersistPartialAdapter.read_partial_data(symbol, STRATEGY)
    return (
        schedule and schedule.id,
        signal and signal.id,
        {sid: data.profit_levels for sid, data in (levels or {}).items()},
    )


STATE_AFTER_TICK_11 = (None, None, {"s6": [10]})
"""What ticks 0..11 of the bot leave: the entry of tick 10 cancelled, the signal of tick 6
closed at tick 9, its level reached at tick 8."""


# -- 1. mixed versions --------------------------------------------------------------------


def test_an_upgrade_continues_the_events_of_the_earlier_build_exactly(
    tmp_path: Path, earlier_src: Path
) -> None:
    """The earlier build ticks (a checkpoint, then records left in the journal with its
    in-commit logs); this build goes on: its statistics are those of every tick."""
    root = tmp_path / "data"
    assert bot(earlier_src, root, 0, 20, CHECKPOINT="1") == expected(0, 20)
    assert bot(earlier_src, root, 20, 10) == expected(0, 30)
    assert bot(NEW, root, 30, 22, CHECKPOINT="1") == expected(0, 52)
    assert bot(NEW, root, 52, 0) == expected(0, 52)
    assert (root / ".journal" / "format").read_text() == "persistkit-format 3\n"


def test_the_earlier_build_refuses_a_root_this_build_marked_and_changes_nothing(
    tmp_path: Path, earlier_src: Path
) -> None:
    root = tmp_path / "data"
    bot(NEW, root, 0, 8)
    before = digest(root)
    done = subprocess.run(
        [sys.executable, str(_BOT), str(root), "8", "4"],
        env=_env(earlier_src),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "UnsupportedFormatError" in done.stderr
    assert digest(root) == before


def _earlier_build_checkpoints_this_builds_records(root: Path, earlier_src: Path) -> None:
    """The earlier build starts (and checks the format) first, then this build ticks ETH
    without a checkpoint, then the earlier one goes on and checkpoints: the operator did
    not stop it."""
    go = root.parent / "go"
    earlier = subprocess.Popen(
        [sys.executable, str(_BOT), str(root), "0", "12", "BTC"],
        env=_env(earlier_src, WAIT=str(go), CHECKPOINT="1", JOURNAL_LIMIT="3000"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert earlier.stdout is not None
        assert earlier.stdout.readline() == "ack 0\n"
        assert bot(NEW, root, 0, 12, "ETH") == expected(0, 12)
        go.touch()
        out, err = earlier.communicate(timeout=120)
    finally:
        if earlier.poll() is None:
            earlier.kill()
            earlier.wait()
    assert earlier.returncode == 0, err
    assert json.loads(out.splitlines()[-1]) == expected(0, 12)


async def test_an_earlier_build_left_running_loses_no_acknowledged_state(
    tmp_path: Path, earlier_src: Path
) -> None:
    """Not stopping the earlier build may cost this build's statistics (README), never
    the state either build acknowledged."""
    root = tmp_path / "data"
    _earlier_build_checkpoints_this_builds_records(root, earlier_src)
    assert await committed_state(root, "BTC") == STATE_AFTER_TICK_11
    assert await committed_state(root, "ETH") == STATE_AFTER_TICK_11
    earlier_events = await Schedule.get_data("BTC", STRATEGY)
    assert earlier_events.total_scheduled == expected(0, 12)[0]


async def test_record_only_keys_left_as_files_by_an_earlier_build_are_no_state(
    tmp_path: Path, earlier_src: Path
) -> None:
    """An earlier build's checkpoint applies this build's record-only keys
    (``_persistkit/events/time``, ``seeds``) as files: inspect and export listed them."""
    root = tmp_path / "data"
    _earlier_build_checkpoints_this_builds_records(root, earlier_src)
    snapshot = await FileBackend(root, read_only=True).snapshot()
    assert not [key for key in snapshot.values if key.startswith("_persistkit/events/")]


def test_preflight_tells_that_an_earlier_build_checkpointed_this_builds_commits(
    tmp_path: Path, earlier_src: Path
) -> None:
    root = tmp_path / "data"
    _earlier_build_checkpoints_this_builds_records(root, earlier_src)
    done = _cli("preflight", str(root))
    assert done.returncode == 1
    assert "[earlier-build] _persistkit/events/time" in done.stdout
    assert "statistics events of the commits it checkpointed are lost" in done.stdout


# -- 2. backups -----------------------------------------------------------------------------


def _copy_tree(source: Path, target: Path, names: list[str]) -> None:
    for name in names:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, symlinks=True, dirs_exist_ok=True)


def _no_event_twice(events: list[Any]) -> list[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    twice = []
    for event in events:
        mark = (event.action, event.signal_id)
        if mark in seen:
            twice.append(mark)
        seen.add(mark)
    return twice


async def test_a_file_by_file_copy_taken_across_a_checkpoint_counts_no_event_twice(
    tmp_path: Path,
) -> None:
    """``cp -a`` / rsync order: ``.journal`` before ``_persistkit``; a checkpoint between
    the two leaves the copy heads that cover the copied journal's records already. A
    head past the journal is rebased to cover nothing, and those records count twice."""
    root, copy = tmp_path / "data", tmp_path / "copy"
    bot(NEW, root, 0, 30, CHECKPOINT="1")
    bot(NEW, root, 30, 12)
    copy.mkdir()
    _copy_tree(root, copy, [".journal"])
    bot(NEW, root, 42, 18, CHECKPOINT="1")
    _copy_tree(root, copy, [".history", "_persistkit", "partial", "schedule", "signal"])
    persistkit.configure(mode="live", backend=FileBackend(copy))
    events = (await Schedule.get_data("BTC", STRATEGY)).event_list
    assert _no_event_twice(events) == []
    assert len(events) == sum(expected(0, 60)[:3])
    # A bot started on the copy ticks on (ids of its own) and checkpoints.
    bot(NEW, copy, 600, 6, CHECKPOINT="1")
    persistkit.configure(mode="live", backend=FileBackend(copy))
    events = (await Schedule.get_data("BTC", STRATEGY)).event_list
    assert _no_event_twice(events) == []
    assert len(events) == sum(expected(0, 60)[:3]) + sum(expected(600, 606)[:3])


async def test_a_journal_restored_older_than_the_folded_heads_counts_no_event_twice(
    tmp_path: Path,
) -> None:
    """The operator puts back ``.journal`` from last hour's backup (the heads are newer);
    then the bot ticks on: the restored records count once, the new ticks count."""
    root, backup = tmp_path / "data", tmp_path / "journal-backup"
    bot(NEW, root, 0, 30, CHECKPOINT="1")
    bot(NEW, root, 30, 12)
    shutil.copytree(root / ".journal", backup)
    bot(NEW, root, 42, 18, CHECKPOINT="1")
    shutil.rmtree(root / ".journal")
    shutil.copytree(backup, root / ".journal")
    bot(NEW, root, 60, 6)
    persistkit.configure(mode="live", backend=FileBackend(root))
    events = (await Schedule.get_data("BTC", STRATEGY)).event_list
    assert _no_event_twice(events) == []
    assert len(events) == sum(expected(0, 66)[:3])
    # Folded by a checkpoint, then more ticks in the journal after it: the same.
    assert bot(NEW, root, 66, 6, CHECKPOINT="1") == expected(0, 72)
    assert bot(NEW, root, 72, 6) == expected(0, 78)


async def test_an_older_events_folder_restored_loses_events_but_counts_none_twice(
    tmp_path: Path,
) -> None:
    root, backup = tmp_path / "data", tmp_path / "events-backup"
    bot(NEW, root, 0, 30, CHECKPOINT="1")
    shutil.copytree(root / "_persistkit", backup)
    bot(NEW, root, 30, 30, CHECKPOINT="1")
    shutil.rmtree(root / "_persistkit")
    shutil.copytree(backup, root / "_persistkit")
    totals = bot(NEW, root, 60, 6, CHECKPOINT="1")
    # The events of ticks 30..59 were in the head put aside: lost, not invented.
    assert totals == [a + b for a, b in zip(expected(0, 30), expected(60, 66), strict=True)]
    assert await committed_state(root, "BTC") == (None, None, {"s60": [10]})


# -- 3. salvage -----------------------------------------------------------------------------


def test_salvage_of_a_journal_damaged_mid_way_keeps_the_events_of_the_commits_before_it(
    tmp_path: Path,
) -> None:
    from persistkit.backends._journal import _FILE_HEADER, encode_record, parse_records

    root = tmp_path / "data"
    bot(NEW, root, 0, 12, CHECKPOINT="1")
    bot(NEW, root, 12, 24)
    journal = root / ".journal" / "commits.pkj"
    data = bytearray(journal.read_bytes())
    first_seq = _FILE_HEADER.unpack_from(data)[2]
    records, _ = parse_records(memoryview(bytes(data))[_FILE_HEADER.size :], first_seq)
    offset = _FILE_HEADER.size + sum(
        len(encode_record(r.seq, r.time_ns, r.writes)) for r in records[:12]
    )
    data[offset + 30] ^= 0xFF  # inside tick 24's record: ticks 12..23 stay before it
    journal.write_bytes(bytes(data))
    done = subprocess.run(
        [sys.executable, "-m", "persistkit", "journal", "salvage", str(root)],
        env=_env(NEW),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert bot(NEW, root, 24, 0) == expected(0, 24)


# -- 4. history=None beside history ----------------------------------------------------------


async def test_a_fill_written_by_a_process_without_history_nor_statistics_opens_the_entry(
    tmp_path: Path,
) -> None:
    """A bot (history, statistics on) schedules; a tool opened with ``history=None`` and
    ``event_limit=0`` writes the fill (a plain write: straight to the file); the bot
    clears the entry: ``opened``, as the in-commit rule says (the signal the commit
    leaves has its id), not ``cancelled``."""
    root = tmp_path / "data"
    entry = scheduled("s1", T0)
    persistkit.configure(mode="live", backend=FileBackend(root), clock=lambda: T0)
    await put_schedule(entry)
    persistkit.configure(mode="live", backend=FileBackend(root, history=None), event_limit=0)
    await put_signal(filled(entry, T0 + MIN))
    persistkit.configure(mode="live", backend=FileBackend(root), clock=lambda: T0 + 2 * MIN)
    await put_schedule(None)
    events = (await Schedule.get_data(SYMBOL, test_stats.STRATEGY)).event_list
    assert [(e.action, e.signal_id) for e in events] == [("scheduled", "s1"), ("opened", "s1")]


# -- 3b. what the person on call reads about _persistkit/events/ ---------------------------


def _damaged_head_root(tmp_path: Path) -> Path:
    """A root whose pair has folded events, its head then damaged: valid JSON, no head."""
    root = tmp_path / "data"
    bot(NEW, root, 0, 12, CHECKPOINT="1")
    head = root / "_persistkit" / "events" / "pairs" / "BTC_st.json"
    assert json.loads(head.read_bytes())["schedule"]
    head.write_bytes(b'{"format":4,"seq":"x"}')
    return root


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "persistkit", *args],
        env=_env(NEW),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_on_a_damaged_folded_head_fails_instead_of_printing_no_events(
    tmp_path: Path,
) -> None:
    """The README: exit 2 for "an event log that does not validate". The folded head is
    the pair's event log on a file root; it printed "No events recorded", exit 0."""
    root = _damaged_head_root(tmp_path)
    done = _cli("report", "schedule", "BTC", STRATEGY, str(root))
    assert done.returncode == 2, done.stdout
    assert "_persistkit/events/pairs/BTC_st" in done.stderr


def test_preflight_names_a_damaged_folded_head(tmp_path: Path) -> None:
    """It checked the head as JSON only: "clean", status "healthy", although the next
    checkpoint that folds the pair quarantines it and its events are lost."""
    root = _damaged_head_root(tmp_path)
    done = _cli("preflight", str(root))
    assert done.returncode == 1
    assert "BTC_st" in done.stdout + done.stderr


# -- 5. many pairs ---------------------------------------------------------------------------


async def test_the_stores_of_many_pairs_share_one_validator_per_model(tmp_path: Path) -> None:
    """The first tick after a start that writes 5,000 pairs opened three stores per pair
    with the statistics on, each building its own pydantic validator (about a millisecond
    and tens of kilobytes each): 5,000 pairs took 15 s of ticks with the statistics off and
    52 s with them on, 85 MB against 475 MB. One validator per model is enough."""
    persistkit.configure(mode="live", backend=FileBackend(tmp_path / "data"))
    stores = [await PersistScheduleAdapter._store(f"P{number}_{STRATEGY}") for number in range(3)]
    assert len({id(store._schema) for store in stores}) == 1

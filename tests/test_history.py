"""The file backend's history: archived at checkpoints, crash-safe, pruned, read as of a time."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from persistkit import (
    FileBackend,
    HistoryPolicy,
    HistoryUnavailableError,
    LiveSession,
    MemoryBackend,
    PersistBase,
    PersistSignalAdapter,
    UnserializableValueError,
)
from persistkit._history import TICKS_NAMESPACE, tick_key
from persistkit.backends import _journal as journal_module
from persistkit.backends._archive import HISTORY_DIR
from test_cli import run_cli, run_json

REPO = Path(__file__).resolve().parent.parent


def ceil_ms(time_ns: int) -> int:
    """The first epoch millisecond at or after ``time_ns``: ``as_of`` it includes that commit."""
    return math.ceil(time_ns / 1_000_000)


async def commit_values(backend: FileBackend, key: str, values: range) -> None:
    for value in values:
        await backend.commit({key: json.dumps(value).encode()})


def segment_files(root: Path) -> list[Path]:
    return sorted((root / HISTORY_DIR).glob("*/*.pkj"))


async def test_checkpoints_archive_every_commit_once_in_day_partitions(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "root")
    await commit_values(backend, "a/x", range(3))
    await backend.checkpoint()
    await commit_values(backend, "a/x", range(3, 5))
    await backend.commit({"a/y": b"1", "a/x": None})
    await backend.checkpoint()
    await backend.checkpoint()  # nothing new: no empty segment, nothing twice
    history = await backend.history_records()
    assert [commit.seq for commit in history.commits] == [1, 2, 3, 4, 5, 6]
    assert history.missing == []
    assert [change.data for change in history.changes_of("a/x")] == [
        b"0",
        b"1",
        b"2",
        b"3",
        b"4",
        None,
    ]
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert [path.parent.name for path in segment_files(backend_root(backend))] == [today, today]
    await backend.aclose()
    # Another process (here: a fresh backend) reads the same history.
    again = FileBackend(tmp_path / "root")
    assert [c.seq for c in (await again.history_records()).commits] == [1, 2, 3, 4, 5, 6]
    await again.aclose()


def backend_root(backend: FileBackend) -> Path:
    return Path(backend.root)


KILL_BEFORE_THE_JOURNAL_IS_REPLACED = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from persistkit import FileBackend
    from persistkit.backends._journal import CommitJournal

    def die_after_archiving(self, data):
        # Called once the old journal is archived, before the new one replaces it.
        os.kill(os.getpid(), signal.SIGKILL)

    async def main():
        backend = FileBackend(sys.argv[1])
        for value in range(5):
            await backend.commit({"a/x": str(value).encode(), "a/y": b"[1]"})
        print("committed", flush=True)
        CommitJournal._rename_in = die_after_archiving
        await backend.checkpoint()

    asyncio.run(main())
    """
)


async def test_a_kill_between_archiving_and_replacing_the_journal_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    finished = subprocess.run(
        [sys.executable, "-c", KILL_BEFORE_THE_JOURNAL_IS_REPLACED, str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert finished.returncode == -signal.SIGKILL, finished.stderr
    assert "committed" in finished.stdout
    assert segment_files(root), "killed after the archive was written"
    # The journal still holds the five commits; the next start archives them again.
    backend = FileBackend(root)
    await backend.recover()
    await backend.commit({"a/x": b"5"})
    await backend.checkpoint()
    history = await backend.history_records()
    assert [commit.seq for commit in history.commits] == [1, 2, 3, 4, 5, 6]
    assert [change.data for change in history.changes_of("a/x")] == [
        str(value).encode() for value in range(6)
    ]
    assert history.missing == []
    assert (await backend.get("a/x")).data == b"5"  # type: ignore[union-attr]
    await backend.aclose()


async def test_point_in_time_reads_follow_the_commits(tmp_path: Path) -> None:
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=tmp_path / "data")
    await session.start()
    progress: PersistBase[int] = PersistBase("bot", tmp_path / "data")
    acknowledged: list[tuple[int, int]] = []  # (value, a time after its commit)
    for value in range(4):
        async with session.tick():
            await progress.write_value("tick", value)
        acknowledged.append((value, time.time_ns()))
        if value == 1:
            await session.backend.checkpoint()  # the past survives a checkpoint
        await asyncio.sleep(0.002)
    history = await session.backend.history_records()
    for change in history.changes_of("bot/tick"):
        committed = json.loads(change.data or b"null")
        assert await progress.read_value("tick", as_of=ceil_ms(change.time_ns)) == committed
        microseconds = -(-change.time_ns // 1000)  # no float: it could round below the commit
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=microseconds)
        assert await progress.read_value("tick", as_of=moment) == committed
    for value, after in acknowledged:
        assert await progress.read_value("tick", as_of=ceil_ms(after)) >= value
    with pytest.raises(HistoryUnavailableError, match="begins at"):
        await progress.read_value("tick", as_of=history.start_ns // 1_000_000 - 1000)
    with pytest.raises(ValueError, match="time zone"):
        await progress.read_value("tick", as_of=datetime(2026, 1, 1))
    await session.aclose()


class SteppedClock:
    """The journal's clock, moved by the test, so that commits fall on days of its choosing."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def time_ns(self) -> int:
        return self.now_ns

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


async def test_point_in_time_reads_over_many_days_start_from_the_newest_day_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hour = 3_600 * 1_000_000_000
    clock = SteppedClock(time.time_ns() - 12 * 24 * hour)
    monkeypatch.setattr(journal_module, "time", clock)
    root = tmp_path / "root"
    backend = FileBackend(root)
    store: PersistBase[int] = PersistBase("bot", backend=backend)
    written: list[tuple[int, int]] = []
    for value in range(50):
        clock.now_ns += 5 * hour
        await store.write_value("tick", value)
        written.append((clock.now_ns, value))
        if value % 5 == 4:
            await backend.checkpoint()  # about one a day: each leaves its day's snapshot
    clock.now_ns += hour
    await store.write_value("tick", 50)  # in the journal, after the last snapshot
    written.append((clock.now_ns, 50))
    days = {path.parent.name for path in segment_files(root)}
    assert len(days) > 8
    # One snapshot per checkpoint here: 25 hours apart, each fell on a day of its own.
    assert len(list((root / HISTORY_DIR).glob("*/*.state"))) == 10
    for committed, value in written:
        assert await store.read_value("tick", as_of=ceil_ms(committed)) == value
    # A recent point in time is read from a recent snapshot, not from the start.
    recent = await backend.history_records(until_ns=written[-1][0])
    assert recent.value_at("bot/tick", written[-1][0]) == b"50"
    assert len(recent.commits) <= 5 and recent.base_seq >= 45
    # Snapshots are not fsynced: one torn by a power cut is passed over.
    for snapshot in (root / HISTORY_DIR).glob("*/*.state"):
        snapshot.write_bytes(snapshot.read_bytes()[:-3])
    for committed, value in written[-12:]:
        assert await store.read_value("tick", as_of=ceil_ms(committed)) == value
    await backend.aclose()


async def test_a_backend_without_history_says_so(tmp_path: Path) -> None:
    for backend in (MemoryBackend(), FileBackend(tmp_path / "plain", history=None)):
        store: PersistBase[int] = PersistBase("bot", backend=backend)
        await store.write_value("tick", 1)
        assert not backend.keeps_history
        with pytest.raises(HistoryUnavailableError, match="keeps no history"):
            await store.read_value("tick", as_of=int(time.time() * 1000))
        await backend.aclose()


async def test_tick_inputs_ride_in_the_ticks_commit(tmp_path: Path) -> None:
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=tmp_path / "data")
    await session.start()
    async with session.tick(inputs={"price": 64000.5, "signal": "long"}):
        await PersistBase[int]("bot", tmp_path / "data").write_value("tick", 1)
    async with session.tick():
        session.record_inputs({"price": 1})
        session.record_inputs({"price": 2})  # the last call wins
    async with session.tick():
        await PersistBase[int]("bot", tmp_path / "data").write_value("tick", 3)  # no inputs
    with pytest.raises(RuntimeError, match="inside"):
        session.record_inputs({"price": 3})
    with pytest.raises(UnserializableValueError):
        session.tick(inputs={"price": float("nan")})
    history = await session.backend.history_records()
    ticks = list(history.ticks())
    assert [(tick.session, tick.inputs) for tick in ticks] == [
        ("main", {"price": 64000.5, "signal": "long"}),
        ("main", {"price": 2}),
    ]
    first = ticks[0].commit
    assert set(first.writes) == {tick_key("main"), "bot/tick"}  # one commit, both
    assert all(key.startswith(TICKS_NAMESPACE) for key in ticks[1].commit.writes)
    changes = history.changes_of("bot/tick")
    assert [change.tick for change in changes] == ["main", None]
    await session.aclose()


async def test_state_at_restores_the_four_domains_as_they_were(tmp_path: Path) -> None:
    from persistkit.models import SignalRow

    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=tmp_path / "data")
    await session.start()
    row = SignalRow.model_validate(
        {
            "id": "s1",
            "symbol": "BTCUSDT",
            "strategyName": "trend",
            "position": "long",
            "priceOpen": 64000.0,
            "priceTakeProfit": 66000.0,
            "priceStopLoss": 63000.0,
            "minuteEstimatedTime": 60,
            "scheduledAt": 1,
            "pendingAt": 1,
        }
    )
    async with session.tick(inputs={"n": 1}):
        await PersistSignalAdapter.write_signal_data(row, "BTCUSDT", "trend")
    opened = time.time_ns()
    await asyncio.sleep(0.002)
    async with session.tick(inputs={"n": 2}):
        await PersistSignalAdapter.write_signal_data(None, "BTCUSDT", "trend")
    then = await session.state_at(ceil_ms(opened))
    assert then.pair("BTCUSDT", "trend").signal == row
    now = await session.state_at(datetime.now(UTC))
    assert now.pair("BTCUSDT", "trend").signal is None
    await session.aclose()


async def test_retention_by_size_folds_the_oldest_into_the_base(tmp_path: Path) -> None:
    root = tmp_path / "root"
    backend = FileBackend(root, history=HistoryPolicy(max_bytes=400))
    await backend.commit({"a/kept": b'"written once, long ago"'})
    for value in range(30):
        await backend.commit({"a/x": str(value).encode()})
        if value % 5 == 4:
            await backend.checkpoint()
    segments = segment_files(root)
    assert sum(path.stat().st_size for path in segments) <= 400
    history = await backend.history_records()
    assert history.base_seq > 1  # the oldest commits were folded into the base
    assert history.missing == []
    # What the pruned commits left is still known, from the base.
    assert history.value_at("a/kept", time.time_ns()) == b'"written once, long ago"'
    assert history.value_at("a/x", time.time_ns()) == b"29"
    with pytest.raises(HistoryUnavailableError):
        history.value_at("a/x", history.start_ns - 1)
    await backend.aclose()


async def test_retention_by_age_drops_old_day_partitions(tmp_path: Path) -> None:
    root = tmp_path / "root"
    backend = FileBackend(root, history=HistoryPolicy(max_age_days=30))
    await backend.commit({"a/x": b"1"})
    await backend.checkpoint()
    # A partition from long ago, as a year-old root has (its records are today's:
    # retention goes by partition, which is the day of the commits).
    (today,) = {path.parent for path in segment_files(root)}
    old = today.parent / "2020-01-01"
    today.rename(old)
    await backend.commit({"a/x": b"2"})
    await backend.checkpoint()
    assert not old.exists()
    assert [path.parent.name for path in segment_files(root)] == [today.name]
    history = await backend.history_records()
    assert history.base == {"a/x": b"1"} and history.base_seq == 1
    assert [commit.seq for commit in history.commits] == [2]
    await backend.aclose()


async def test_a_lost_segment_is_reported_as_missing_commits(tmp_path: Path) -> None:
    root = tmp_path / "root"
    backend = FileBackend(root)
    for batch in range(3):
        await commit_values(backend, "a/x", range(batch * 2, batch * 2 + 2))
        await backend.checkpoint()
    middle = segment_files(root)[1]
    middle.unlink()
    history = await backend.history_records()
    assert history.missing == [(3, 4)]
    assert [commit.seq for commit in history.commits] == [1, 2, 5, 6]
    await backend.aclose()


async def test_history_is_in_its_own_folder_and_never_listed(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "root")
    await backend.commit({"a/x": b"1"})
    await backend.checkpoint()
    assert [key async for key in backend.scan("", recursive=True)] == ["a/x"]
    await backend.aclose()


async def test_a_salvaged_journal_keeps_its_sound_records_in_the_history(tmp_path: Path) -> None:
    root = tmp_path / "root"
    writer = FileBackend(root)
    for value in range(3):
        await writer.commit({"a/x": str(value).encode(), "a/pad": b"x" * 40})
    journal = root / ".journal" / "commits.pkj"
    data = bytearray(journal.read_bytes())
    second_record_payload = len(data) * 2 // 3 - 20
    data[second_record_payload] ^= 0x40  # damage in the middle, a sound record after it
    journal.write_bytes(bytes(data))
    backend = FileBackend(root)
    reports = await backend.salvage_journal()
    assert len(reports) == 1 and reports[0].applied >= 1
    await backend.commit({"a/x": b"after"})
    history = await backend.history_records()
    kept = [commit.seq for commit in history.commits]
    assert kept[: reports[0].applied] == list(range(1, reports[0].applied + 1))
    assert kept[-1] == 4  # numbering goes on after the lost record
    assert history.missing == [(reports[0].applied + 1, 3)]
    await backend.aclose()


async def test_plain_writes_and_removals_are_in_the_history(tmp_path: Path) -> None:
    root = tmp_path / "root"
    backend = FileBackend(root)
    store: PersistBase[int] = PersistBase("a", backend=backend)
    await store.write_value("x", 1)
    assert (root / "a" / "x.json").read_bytes() == b"1"  # the entity file, on return
    await asyncio.sleep(0.002)  # each change in a millisecond of its own, for as_of
    await store.write_value("x", 2)
    await asyncio.sleep(0.002)
    await store.remove_value("x")
    assert not (root / "a" / "x.json").exists()
    await backend.checkpoint()
    await store.write_value("x", 3)  # in the journal, not archived yet
    changes = (await backend.history_records()).changes_of("a/x")
    assert [change.data for change in changes] == [b"1", b"2", None, b"3"]
    times = [change.time_ns for change in changes]
    assert times == sorted(times)
    assert await store.read_value("x", as_of=ceil_ms(times[1])) == 2
    await backend.aclose()
    # After a restart (the journal checkpointed into the history), nothing is lost or doubled.
    reopened = FileBackend(root)
    after_restart = (await reopened.history_records()).changes_of("a/x")
    assert [change.data for change in after_restart] == [b"1", b"2", None, b"3"]
    await reopened.aclose()


async def test_the_command_line_reads_the_past_with_inspect_as_of_and_history(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=root)
    await session.start()
    progress: PersistBase[int] = PersistBase("bot", root)
    for value in (1, 10, 100):  # one, two, three bytes
        async with session.tick(inputs={"n": value}):
            await progress.write_value("tick", value)
        await asyncio.sleep(0.002)
    history = await session.backend.history_records()
    await session.aclose()
    changes = history.changes_of("bot/tick")
    second = ceil_ms(changes[1].time_ns)

    code, document = await asyncio.to_thread(run_json, "inspect", root, "--as-of", str(second))
    assert code == 0, document
    assert document["backend"].endswith(f" as of {second}")
    assert {entity["key"]: entity["bytes"] for entity in document["entities"]}["bot/tick"] == 2
    code, now = await asyncio.to_thread(run_json, "inspect", root)
    assert code == 0 and "as of" not in now["backend"]

    code, listed = await asyncio.to_thread(run_json, "history", "bot/tick", root)
    assert code == 0
    assert [change["value"] for change in listed["changes"]] == [1, 10, 100]
    assert [change["tick"] for change in listed["changes"]] == ["main"] * 3

    too_early = str(history.start_ns // 1_000_000 - 1000)
    refused = await asyncio.to_thread(run_cli, "inspect", root, "--as-of", too_early)
    assert refused.returncode == 2 and "begins at" in refused.stderr

"""``migrate``, ``export`` and ``import`` carry the statistics (``Schedule``, ``Partial``).

A file root keeps a pair's events in its folded head and in the commit journal's
records not folded yet; every other backend in the pair's logs (``stats/``). A
copy carries them as logs, so what ``get_data`` reads after the copy is exactly
what it read before, on every backend, and the next ticks on the destination
go on from there: the scripted run leaves entry E waiting, and filling it on the
destination opens it with its wait since it was scheduled on the source.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from tests.test_stats import (
    MIN,
    STRATEGY,
    SYMBOL,
    T0,
    MarketClock,
    filled,
    put_schedule,
    put_signal,
    scheduled,
    scripted_run,
)

import persistkit
from persistkit import LiveSession, Partial, Schedule
from persistkit._cli.transfer import BackendSource
from persistkit._domains.events import EVENT_TIME_KEY, EVENTS_NAMESPACE, FOLDED_NAMESPACE
from persistkit._names import join_pair
from persistkit._stats import PartialStatistics, ScheduleStatistics
from persistkit.backends import FileBackend, MemoryBackend
from support.servers import RedisServer, SeaweedS3

PAIR = join_pair(SYMBOL, STRATEGY)
FOLDED_AFTER_TICKS = 6
"""The source's checkpoint folds the first ticks; the later ones stay in its journal."""

Statistics = tuple[ScheduleStatistics, PartialStatistics]


def run_cli(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "persistkit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


async def read_statistics() -> Statistics:
    return await Schedule.get_data(SYMBOL, STRATEGY), await Partial.get_data(SYMBOL, STRATEGY)


@asynccontextmanager
async def half_folded_source(
    root: Path, clock: MarketClock | None = None
) -> AsyncIterator[Statistics]:
    """A live session on ``root`` after the scripted run, its first ticks folded into the
    pair's head and the others in the journal only; yields what ``get_data`` reads."""
    clock = clock or MarketClock()
    persistkit.configure(mode="live", base_dir=root, clock=clock)
    async with LiveSession([(SYMBOL, STRATEGY)], "main", base_dir=root) as session:
        ticks = 0

        @asynccontextmanager
        async def tick() -> AsyncIterator[Any]:
            nonlocal ticks
            async with session.tick() as opened:
                yield opened
            ticks += 1
            if ticks == FOLDED_AFTER_TICKS:
                await session.backend.checkpoint()

        await scripted_run(tick, clock)
        assert isinstance(session.backend, FileBackend)
        assert session.backend.journal.records()  # events the heads do not hold yet
        assert (root / FOLDED_NAMESPACE / f"{PAIR}.json").is_file()
        yield await read_statistics()


def later() -> int:
    """The destination's clock: the tick after the copy comes at minute 80."""
    return T0 + 80 * MIN


async def fill_waiting_entry(tick: Any) -> Statistics:
    """The next tick after the copy: E (scheduled at minute 75 on the source) fills at 80."""
    async with tick():
        await put_signal(filled(scheduled("E", T0 + 75 * MIN), later()))
        await put_schedule(None)
    return await read_statistics()


def assert_went_on(before: Statistics, after: Statistics) -> None:
    schedule, partial = after
    assert schedule.event_list[:-1] == before[0].event_list
    last = schedule.event_list[-1]
    assert (last.timestamp, last.action, last.signal_id, last.duration_min) == (
        T0 + 80 * MIN,
        "opened",
        "E",
        5.0,
    )
    assert (schedule.total_opened, schedule.total_cancelled) == (before[0].total_opened + 1, 2)
    assert partial == before[1]


def assert_copied_verified(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "each read back and identical to the source; 0 failed" in result.stdout


async def test_a_file_root_exported_and_imported_has_the_same_statistics_and_goes_on(
    tmp_path: Path,
) -> None:
    export_file = tmp_path / "state.jsonl"
    async with half_folded_source(tmp_path / "source") as before:
        exported = run_cli("export", tmp_path / "source", export_file)
        assert exported.returncode == 0, exported.stderr

    destination = tmp_path / "destination"
    assert_copied_verified(run_cli("import", export_file, destination))
    persistkit.configure(mode="live", base_dir=destination, clock=later)
    assert await read_statistics() == before
    keys = [json.loads(line)["key"] for line in export_file.read_text().splitlines()]
    assert f"stats/{PAIR}/head" in keys
    assert not [key for key in keys if key.startswith(EVENTS_NAMESPACE)]
    assert "the statistics of 1 pair are copied as their logs" in exported.stderr
    # The destination's own records (their sequence numbers start again at 1) count.
    assert_went_on(before, await fill_waiting_entry(persistkit.transaction))
    async with LiveSession([(SYMBOL, STRATEGY)], "main", base_dir=destination) as session:
        assert isinstance(session.backend, FileBackend)
        await session.backend.checkpoint()  # folded now: the same statistics
        assert_went_on(before, await read_statistics())


async def test_a_file_root_migrated_into_redis_has_the_same_statistics_and_goes_on(
    tmp_path: Path,
) -> None:
    with RedisServer() as server:
        async with half_folded_source(tmp_path / "source") as before:
            assert_copied_verified(run_cli("migrate", tmp_path / "source", server.url))
        persistkit.configure(
            mode="live", base_dir=tmp_path / "unused", backend=server.url, clock=later
        )
        assert await read_statistics() == before
        assert_went_on(before, await fill_waiting_entry(persistkit.transaction))


@pytest.fixture
def s3_server() -> Iterator[SeaweedS3]:
    with SeaweedS3() as server:
        server.client().create_bucket(Bucket="stats-transfer")
        yield server


async def test_a_file_root_migrated_into_s3_has_the_same_statistics_and_goes_on(
    tmp_path: Path, s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_DEFAULT_REGION": s3_server.region,
    }
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    url = f"s3://stats-transfer/copy?endpoint_url={s3_server.endpoint_url}"
    async with half_folded_source(tmp_path / "source") as before:
        assert_copied_verified(run_cli("migrate", tmp_path / "source", url))
    persistkit.configure(mode="live", base_dir=tmp_path / "unused", backend=url, clock=later)
    assert await read_statistics() == before
    assert_went_on(before, await fill_waiting_entry(persistkit.transaction))


async def test_redis_migrated_into_a_file_root_has_the_same_statistics_and_goes_on(
    tmp_path: Path,
) -> None:
    destination = tmp_path / "destination"
    with RedisServer() as server:
        clock = MarketClock()
        persistkit.configure(
            mode="live", base_dir=tmp_path / "unused", backend=server.url, clock=clock
        )
        await scripted_run(persistkit.transaction, clock)
        before = await read_statistics()
        assert before[0].total_events == 9
        assert_copied_verified(run_cli("migrate", server.url, destination))
    persistkit.configure(mode="live", base_dir=destination, clock=later)
    assert await read_statistics() == before
    assert_went_on(before, await fill_waiting_entry(persistkit.transaction))


async def test_a_second_migration_replaces_the_statistics_the_source_added_since(
    tmp_path: Path,
) -> None:
    """The gathered logs are as old as the source's newest commit with the pair's events,
    so the destination's copy of them is provably older and replaced."""
    source, destination = tmp_path / "source", tmp_path / "destination"
    clock = MarketClock()
    async with half_folded_source(source, clock) as before:
        assert_copied_verified(run_cli("migrate", source, destination))
        clock.now = later()
        after = await fill_waiting_entry(persistkit.transaction)
        assert_went_on(before, after)
        again = run_cli("migrate", source, destination)
        assert_copied_verified(again)
        assert f"stats/{PAIR}/head: destination is older" in again.stdout
    persistkit.configure(mode="live", base_dir=destination)
    assert await read_statistics() == after


async def test_an_export_holding_a_folded_head_imports_its_events_as_logs(tmp_path: Path) -> None:
    """An export made before the statistics travelled as logs holds the folded head as a
    key: imported, its events are the pair's logs and the head is not written."""
    source = tmp_path / "source"
    async with half_folded_source(source):
        pass  # closed: every record folded into the head
    persistkit.configure(mode="live", base_dir=source)
    before = await read_statistics()
    export_file = tmp_path / "state.jsonl"
    assert run_cli("export", source, export_file).returncode == 0
    # As the export of an earlier build wrote it: the folded head, no logs.
    lines = [
        line
        for line in export_file.read_text().splitlines()
        if '"stats/' not in line and EVENTS_NAMESPACE not in line
    ]
    folded = (source / FOLDED_NAMESPACE / f"{PAIR}.json").read_bytes()
    head = {"key": f"{FOLDED_NAMESPACE}/{PAIR}", "value": json.loads(folded)}
    export_file.write_text("\n".join([json.dumps(head), *lines]) + "\n")
    destination = tmp_path / "destination"
    assert_copied_verified(run_cli("import", export_file, destination))
    persistkit.configure(mode="live", base_dir=destination, clock=later)
    assert await read_statistics() == before
    # A head copied as it was would skip the destination's records up to its source's
    # sequence number: this tick's among them.
    assert_went_on(before, await fill_waiting_entry(persistkit.transaction))
    assert not (destination / EVENTS_NAMESPACE).exists()


async def test_a_checkpoint_folding_past_the_copys_commit_point_makes_it_read_again(
    data_root: Path,
) -> None:
    """A checkpoint writes the folded heads before it replaces the journal: a copy whose
    files are read in between can meet heads holding a commit its journal cut does not.
    Its state and its statistics must then come from one commit point, the later one."""
    clock = MarketClock()
    persistkit.configure(mode="live", base_dir=data_root, clock=clock)
    await scripted_run(persistkit.transaction, clock)  # E is waiting
    writer = FileBackend(data_root)
    schedule_key, waiting = next(
        (key, data)
        for key, data in (await writer.snapshot()).values.items()
        if key.startswith("schedule/")
    )
    await writer.commit({schedule_key: waiting})  # the writer's start (a checkpoint) done

    def commit_and_fold() -> None:
        async def run() -> None:
            # E dropped (no signal: cancelled), committed after the copy's cut ...
            await writer.commit({schedule_key: None, EVENT_TIME_KEY: b"%d" % later()})
            journal = writer.journal
            # ... and folded by a checkpoint that has not replaced the journal yet.
            journal._lead(lambda opened: journal._fold_held(opened, wait=True), wait=True)

        asyncio.run(run())

    source = FileBackend(data_root, read_only=True)
    read_tree = source._read_tree
    reads = 0

    def read_tree_meanwhile() -> Any:
        nonlocal reads
        reads += 1
        if reads == 1:
            other = threading.Thread(target=commit_and_fold)
            other.start()
            other.join()
        return read_tree()

    source._read_tree = read_tree_meanwhile  # type: ignore[method-assign]
    copy = await BackendSource.at_one_point(source)
    await source.aclose()
    await writer.aclose()
    assert schedule_key not in copy.snapshot.values  # the later commit point's state ...
    destination = MemoryBackend("copy")
    for key, data in copy.snapshot.values.items():
        await destination.put(key, data)
    schedule = await Schedule.get_data(SYMBOL, STRATEGY, backend=destination)
    last = schedule.event_list[-1]  # ... and its statistics
    assert (last.timestamp, last.action, last.signal_id) == (later(), "cancelled", "E")
    assert schedule.total_events == 10
    assert reads > 1


async def test_a_damaged_folded_head_is_named_and_the_copy_reads_as_its_source(
    tmp_path: Path,
) -> None:
    """The source reads the journal's events without the damaged head's (its next
    checkpoint quarantines it): the copy carries the same, and says what it left out."""
    source, export_file = tmp_path / "source", tmp_path / "state.jsonl"
    async with half_folded_source(source):
        (source / FOLDED_NAMESPACE / f"{PAIR}.json").write_bytes(b'{"format": 4, "seq": ')
        before = await read_statistics()
        assert 0 < before[0].total_events < 9  # the folded ticks' events are not read
        exported = run_cli("export", source, export_file)
    assert exported.returncode == 0, exported.stderr
    assert f"statistics not copied: {FOLDED_NAMESPACE}/{PAIR}: a damaged folded" in (
        exported.stderr
    )
    destination = tmp_path / "destination"
    assert_copied_verified(run_cli("import", export_file, destination))
    persistkit.configure(mode="live", base_dir=destination)
    assert await read_statistics() == before

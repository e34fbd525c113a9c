"""Attacks on the statistics events of ``Schedule`` and ``Partial`` (issue 14).

Each test is a break found by hand against the commit hook that derives the
events from a pair's scheduled row and partial levels. Each checks what a user
would check: the events ``Schedule.get_data`` / ``Partial.get_data`` give match
the state changes the bot committed.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

import persistkit
from persistkit import (
    FileBackend,
    InvalidNameError,
    Partial,
    PersistPartialAdapter,
    PersistScheduleAdapter,
    PersistSignalAdapter,
    Schedule,
)
from persistkit.models import PartialData, ScheduledSignalRow, SignalRow
from support.servers import RedisServer

_WRITER = Path(__file__).parents[1] / "support" / "stats_writer.py"
"""The process of the tests of several writers of one pair."""


def _entry(signal_id: str, strategy: str = "dip") -> ScheduledSignalRow:
    return ScheduledSignalRow(
        id=signal_id,
        symbol="BTCUSDT",
        strategy_name=strategy,
        position="long",
        price_open=100.0,
        price_take_profit=110.0,
        price_stop_loss=90.0,
        scheduled_at=1_763_700_000_000,
        pending_at=1_763_700_000_000,
    )


async def test_levels_mutated_in_place_between_ticks_still_count_as_milestones() -> None:
    """A bot that keeps its levels and appends to them each tick (models are mutable,
    ``validate_assignment`` even invites it) must see one event per level reached.
    The hook remembers the object it was handed as the parse of the committed bytes,
    so the next tick's "old" value is the mutated object: the new level looks old."""
    levels = {"sig-1": PartialData(profit_levels=[10])}
    async with persistkit.transaction():
        await PersistPartialAdapter.write_partial_data(levels, "BTCUSDT", "dip")
    levels["sig-1"].profit_levels.append(20)
    async with persistkit.transaction():
        await PersistPartialAdapter.write_partial_data(levels, "BTCUSDT", "dip")
    levels["sig-1"].loss_levels = [10]
    async with persistkit.transaction():
        await PersistPartialAdapter.write_partial_data(levels, "BTCUSDT", "dip")

    stored = await PersistPartialAdapter.read_partial_data("BTCUSDT", "dip")
    assert stored["sig-1"].profit_levels == [10, 20]
    assert stored["sig-1"].loss_levels == [10]
    stats = await Partial.get_data("BTCUSDT", "dip")
    assert [(event.action, event.level) for event in stats.event_list] == [
        ("profit", 10),
        ("profit", 20),
        ("loss", 10),
    ]


async def test_scheduled_row_reused_with_a_new_id_is_a_cancellation_and_a_new_entry() -> None:
    """The same row object written again under another id (the bot re-arms its limit
    object) replaces the entry: "cancelled" for the old id, "scheduled" for the new."""
    entry = _entry("limit-1")
    await PersistScheduleAdapter.write_schedule_data(entry, "BTCUSDT", "dip")
    entry.id = "limit-2"
    await PersistScheduleAdapter.write_schedule_data(entry, "BTCUSDT", "dip")

    stored = await PersistScheduleAdapter.read_schedule_data("BTCUSDT", "dip")
    assert stored is not None and stored.id == "limit-2"
    stats = await Schedule.get_data("BTCUSDT", "dip")
    assert [(event.action, event.signal_id) for event in stats.event_list] == [
        ("scheduled", "limit-1"),
        ("cancelled", "limit-1"),
        ("scheduled", "limit-2"),
    ]


async def test_first_tick_writing_schedule_and_levels_concurrently_keeps_every_event() -> None:
    """Tasks started in a tick join it (the transaction's docstring says so): a tick
    that writes a new pair's scheduled row and partial levels with ``asyncio.gather``
    builds the pair's event log twice, one per row. Each commit then writes the pair's
    head twice, and the second overwrites the first: the schedule events are lost, in
    that tick and in every later one, sequential writes included."""
    for number in range(3):
        signal_id = f"limit-{number}"
        async with persistkit.transaction():
            if number == 0:
                await asyncio.gather(
                    PersistScheduleAdapter.write_schedule_data(_entry(signal_id), "BTCUSDT", "dip"),
                    PersistPartialAdapter.write_partial_data(
                        {signal_id: PartialData(profit_levels=[10])}, "BTCUSDT", "dip"
                    ),
                )
            else:
                await PersistScheduleAdapter.write_schedule_data(
                    _entry(signal_id), "BTCUSDT", "dip"
                )
                await PersistPartialAdapter.write_partial_data(
                    {signal_id: PartialData(profit_levels=[10])}, "BTCUSDT", "dip"
                )

    schedule = await Schedule.get_data("BTCUSDT", "dip")
    assert [(event.action, event.signal_id) for event in schedule.event_list] == [
        ("scheduled", "limit-0"),
        ("cancelled", "limit-0"),
        ("scheduled", "limit-1"),
        ("cancelled", "limit-1"),
        ("scheduled", "limit-2"),
    ]
    partial = await Partial.get_data("BTCUSDT", "dip")
    assert [(event.action, event.signal_id) for event in partial.event_list] == [
        ("profit", "limit-0"),
        ("profit", "limit-1"),
        ("profit", "limit-2"),
    ]


async def _tick(signal_id: str, strategy: str = "dip") -> None:
    async with persistkit.transaction():
        await PersistScheduleAdapter.write_schedule_data(
            _entry(signal_id, strategy), "BTCUSDT", strategy
        )
        await asyncio.sleep(0)  # the exchange call of a real tick
        await PersistPartialAdapter.write_partial_data(
            {signal_id: PartialData(profit_levels=[10])}, "BTCUSDT", strategy
        )


def _in_threads(
    count: int, work: Callable[[int], Coroutine[Any, Any, None]]
) -> list[BaseException]:
    """``work(number)`` in ``count`` threads at once, each on an event loop of its own."""
    failures: list[BaseException] = []
    start = threading.Barrier(count)

    def run(number: int) -> None:
        start.wait()
        try:
            asyncio.run(work(number))
        except BaseException as exc:  # reported by the test
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(number,)) for number in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


async def test_threads_on_loops_of_their_own_ticking_one_pair_lose_no_event(
    data_root: Path,
) -> None:
    """Threads that each run an event loop of their own (the hook's registration is
    made safe for them, the key locks are one per loop) commit ticks of one pair.
    Every commit replaces the scheduled row with a new id, so each must leave one
    "scheduled" event. The hooks of two loops read the same committed head and
    both append to it: the later commit drops the other's events."""
    persistkit.configure(mode="live", base_dir=data_root, event_limit=1000)
    await _tick("warm-up")  # the stores exist before the threads race
    ticks = 60

    async def ticks_of(thread: int) -> None:
        for number in range(ticks):
            await _tick(f"thread-{thread}-{number}")

    assert await asyncio.to_thread(_in_threads, 2, ticks_of) == []
    schedule = await Schedule.get_data("BTCUSDT", "dip")
    partial = await Partial.get_data("BTCUSDT", "dip")
    assert schedule.total_scheduled == 2 * ticks + 1
    assert schedule.total_cancelled == 2 * ticks
    assert partial.total_profit == 2 * ticks + 1


async def test_threads_on_loops_of_their_own_writing_a_new_pair_both_commit() -> None:
    """Two threads, each on an event loop of its own, make their first write of a pair
    at once (here, of 20 pairs in turn): the one that did not start the store's init
    awaits a future of the other loop and fails with ``RuntimeError: ... attached to
    a different loop``, a tick lost for no fault of the bot's."""

    async def first_ticks(thread: int) -> None:
        for strategy in range(20):
            await _tick(f"thread-{thread}", f"dip-{strategy}")

    failures = await asyncio.to_thread(_in_threads, 2, first_ticks)
    assert failures == []


def test_blocking_api_reads_the_statistics_it_records() -> None:
    """``persistkit.sync`` promises persistkit's names with blocking methods, for bots
    that are not async; its schedule writes record statistics, but ``Schedule`` and
    ``Partial`` (whose ``get_data``, ``get_report`` and ``dump`` are coroutines in
    persistkit) are not there, so such a bot cannot read them."""
    from persistkit import sync

    sync.PersistScheduleAdapter.write_schedule_data(_entry("limit-1"), "BTCUSDT", "dip")
    schedule = getattr(sync, "Schedule", None)
    partial = getattr(sync, "Partial", None)
    assert schedule is not None and partial is not None
    assert schedule.get_data("BTCUSDT", "dip").total_scheduled == 1
    assert partial.get_data("BTCUSDT", "dip").total_events == 0


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.mark.parametrize(("backend", "processes", "ticks"), [("file", 3, 60), ("redis", 8, 100)])
def test_processes_ticking_one_pair_lose_no_event_and_fail_no_tick(
    backend: str, processes: int, ticks: int, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Several processes tick one pair, each tick replacing the scheduled row: every
    acknowledged tick leaves one "scheduled" and one "profit" event, none lost or
    doubled, and no tick fails (they make no compare-and-set of their own).

    Broken first: the hook wrote the pair's head back without any check at commit,
    so one process's head overwrote another's events. Then, with the check, the
    hooks ran again at once on a conflict and kept meeting: after 32 losses a tick
    failed with ``ConflictError`` (3 to 4 of 8 processes on Redis per run)."""
    if backend == "file":
        target = str(tmp_path / "root")
        settings = persistkit.configure(mode="live", base_dir=target, event_limit=10_000)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        target = f"{server.url}?prefix=t-{uuid.uuid4().hex[:12]}"
        settings = persistkit.configure(mode="live", backend=target, event_limit=10_000)

    async def warm_up() -> None:  # the root and the pair's log exist before the race
        await PersistScheduleAdapter.write_schedule_data(_entry("warm-up"), "BTCUSDT", "dip")
        if backend == "redis":
            await settings.backend.aclose()  # its client belongs to this loop

    asyncio.run(warm_up())
    start = tmp_path / "start"
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    running = [
        subprocess.Popen(
            [sys.executable, str(_WRITER), target, f"process-{number}", str(ticks), str(start)],
            env=environment,
            stdout=subprocess.PIPE,
            text=True,
        )
        for number in range(processes)
    ]
    while not all(Path(f"{start}.process-{number}").exists() for number in range(processes)):
        time.sleep(0.01)  # each process imported persistkit and waits for the start
    start.touch()
    reports = [process.communicate(timeout=120)[0].strip() for process in running]
    assert [process.returncode for process in running] == [0] * processes
    # Each process prints how many of its ticks failed with ConflictError (and the first).
    assert [report.split(" ", 1)[0] for report in reports] == ["0"] * processes, reports

    async def statistics() -> tuple[Any, Any]:
        read = (
            persistkit.configure(mode="live", base_dir=target, event_limit=10_000)
            if backend == "file"
            else persistkit.configure(mode="live", backend=target, event_limit=10_000)
        )
        try:
            return (
                await Schedule.get_data("BTCUSDT", "dip"),
                await Partial.get_data("BTCUSDT", "dip"),
            )
        finally:
            if backend == "redis":
                await read.backend.aclose()

    schedule, partial = asyncio.run(statistics())
    assert schedule.total_scheduled == processes * ticks + 1  # and the warm-up's
    assert schedule.total_cancelled == processes * ticks
    assert sorted(event.signal_id for event in partial.event_list) == sorted(
        f"process-{number}-{tick}" for number in range(processes) for tick in range(ticks)
    )


class _LyingKey(str):
    """A key whose ``in`` and indexing lie (a str subclass may redefine any method):
    what check_key's plain string tests ask of it, not what the path is made of."""

    __slots__ = ()

    def __contains__(self, part: object) -> bool:
        return False

    def __getitem__(self, index: Any) -> str:
        return "a"


@pytest.mark.parametrize("key", [".journal/commits", ".history/base", "ns/.hidden"])
async def test_a_str_subclass_cannot_write_among_persistkits_own_files(
    tmp_path: Path, key: str
) -> None:
    """check_key keeps its cache to exact ``str`` because a subclass may redefine
    ``==``; its plain tests (``key[0]``, ``"/." in key``) ask the subclass too, so a
    key that lies about them writes into the journal's folder, the history's, or a
    hidden name, all refused for the same key as a plain ``str``."""
    backend = FileBackend(tmp_path / "root")
    try:
        with pytest.raises(InvalidNameError):
            await backend.put(key, b"plain str: refused")
        with pytest.raises(InvalidNameError):
            await backend.put(_LyingKey(key), b"subclass: must be refused too")
        assert not (tmp_path / "root" / f"{key}.json").exists()
    finally:
        await backend.aclose()


async def test_configure_while_a_tick_awaits_loses_none_of_its_events(data_root: Path) -> None:
    """Another task of the bot (an operator's command, say) raises ``event_limit`` on
    the same root while a tick awaits between its writes. The tick commits its new
    scheduled row and levels; both changes must leave their events. The rows written
    before and after the configure get two event logs of one pair in one commit, and
    the second head overwrites the first: the schedule events are lost."""
    await PersistScheduleAdapter.write_schedule_data(_entry("limit-1"), "BTCUSDT", "dip")

    async def operator() -> None:
        persistkit.configure(mode="live", base_dir=data_root, event_limit=500)

    async with persistkit.transaction():
        await PersistScheduleAdapter.write_schedule_data(_entry("limit-2"), "BTCUSDT", "dip")
        await asyncio.create_task(operator())  # the exchange call the tick awaits
        await PersistPartialAdapter.write_partial_data(
            {"limit-2": PartialData(profit_levels=[10])}, "BTCUSDT", "dip"
        )

    stored = await PersistScheduleAdapter.read_schedule_data("BTCUSDT", "dip")
    assert stored is not None and stored.id == "limit-2"
    schedule = await Schedule.get_data("BTCUSDT", "dip")
    assert [(event.action, event.signal_id) for event in schedule.event_list] == [
        ("scheduled", "limit-1"),
        ("cancelled", "limit-1"),
        ("scheduled", "limit-2"),
    ]
    partial = await Partial.get_data("BTCUSDT", "dip")
    assert [(event.action, event.signal_id) for event in partial.event_list] == [
        ("profit", "limit-2")
    ]


async def test_an_opening_waits_until_the_committed_pending_at_not_the_bots_copy() -> None:
    """The bot writes its open signal, then changes its own copy (not written). When the
    limit's row is cleared, the opening's wait runs to the ``pending_at`` committed (1
    minute here), not to the copy's: the hook took the object it was handed as the
    parse of the committed bytes and reads the changed field."""
    await PersistScheduleAdapter.write_schedule_data(_entry("limit-1"), "BTCUSDT", "dip")
    opened_at = 1_763_700_000_000 + 60_000
    signal = SignalRow.model_validate({**_entry("limit-1").model_dump(), "pendingAt": opened_at})
    async with persistkit.transaction():
        await PersistSignalAdapter.write_signal_data(signal, "BTCUSDT", "dip")
    signal.pending_at = opened_at + 9 * 60_000  # the bot's copy only
    async with persistkit.transaction():
        await PersistScheduleAdapter.write_schedule_data(None, "BTCUSDT", "dip")

    stored = await PersistSignalAdapter.read_signal_data("BTCUSDT", "dip")
    assert stored is not None and stored.pending_at == opened_at
    schedule = await Schedule.get_data("BTCUSDT", "dip")
    assert [(event.action, event.duration_min) for event in schedule.event_list] == [
        ("scheduled", None),
        ("opened", 1.0),
    ]
    assert schedule.avg_activation_time == 1.0


async def test_a_damaged_statistics_head_does_not_block_the_bots_state_writes() -> None:
    """The pair's statistics head is damaged while the bot runs (a tool wrote over it, a
    bad sector). Only statistics are at stake, but every later write of the pair's
    scheduled row or levels fails with ``CorruptValueError`` until a restart
    quarantines the head: the bot cannot record that its limit entry was cancelled."""
    await PersistScheduleAdapter.write_schedule_data(_entry("limit-1"), "BTCUSDT", "dip")
    backend = persistkit.current_settings().backend
    await backend.put("stats/BTCUSDT_dip/head", b"{not json")

    await PersistScheduleAdapter.write_schedule_data(None, "BTCUSDT", "dip")
    async with persistkit.transaction():
        await PersistScheduleAdapter.write_schedule_data(_entry("limit-2"), "BTCUSDT", "dip")
        await PersistPartialAdapter.write_partial_data(
            {"limit-2": PartialData(profit_levels=[10])}, "BTCUSDT", "dip"
        )

    stored = await PersistScheduleAdapter.read_schedule_data("BTCUSDT", "dip")
    assert stored is not None and stored.id == "limit-2"
    levels = await PersistPartialAdapter.read_partial_data("BTCUSDT", "dip")
    assert levels["limit-2"].profit_levels == [10]


async def test_a_plain_write_beside_a_live_sessions_first_tick_loses_no_event(
    data_root: Path,
) -> None:
    """A live session's first tick of a pair runs while another task of the bot makes a
    plain write of the same pair's scheduled row (a manual cancel, say). Each commit
    replaces the row, so each must leave its events; the tick's are overwritten, as
    its two rows get two event logs of the pair in one commit."""
    await PersistScheduleAdapter.write_schedule_data(_entry("before"), "BTCUSDT", "dip")
    session = persistkit.LiveSession([("BTCUSDT", "dip")], risk_name="main", base_dir=data_root)
    await session.start()
    try:

        async def tick() -> None:
            async with session.tick():
                await PersistScheduleAdapter.write_schedule_data(_entry("ticked"), "BTCUSDT", "dip")
                await asyncio.sleep(0)  # the exchange call of a real tick
                await PersistPartialAdapter.write_partial_data(
                    {"ticked": PartialData(profit_levels=[10])}, "BTCUSDT", "dip"
                )

        async def plain_write() -> None:
            await PersistScheduleAdapter.write_schedule_data(_entry("plain"), "BTCUSDT", "dip")

        await asyncio.gather(tick(), plain_write())
    finally:
        await session.aclose()

    persistkit.configure(mode="live", base_dir=data_root)
    schedule = await Schedule.get_data("BTCUSDT", "dip")
    assert schedule.total_scheduled == 3  # before, ticked, plain: one per commit
    assert schedule.total_cancelled == 2


async def test_a_loop_that_ended_during_a_pairs_first_write_does_not_break_the_pair_for_good(
    data_root: Path,
) -> None:
    """A thread running an event loop of its own starts the first write of a pair and
    its loop ends before that write is done (its job was given up: ``asyncio.run``
    returns and cancels what is pending). The store's start it began is cancelled
    with it. Every later write of the pair, from any loop, then raises
    ``CancelledError`` (wait_for_init shields the cancelled start and never drops
    it): the bot can no longer write the pair until it restarts. Here a dozen
    pairs, each given up after a different number of steps: several are broken."""
    persistkit.configure(mode="live", base_dir=data_root)
    pairs = 12

    async def given_up(steps: int) -> None:
        write = PersistScheduleAdapter.write_schedule_data(
            _entry("limit-1", f"dip-{steps}"), "BTCUSDT", f"dip-{steps}"
        )
        asyncio.ensure_future(write)  # noqa: RUF006  # left pending when the loop ends
        for _ in range(steps):
            await asyncio.sleep(0)

    for steps in range(pairs):
        thread = threading.Thread(target=asyncio.run, args=(given_up(steps),))
        thread.start()
        thread.join()

    failed: list[str] = []
    for steps in range(pairs):
        try:
            await PersistScheduleAdapter.write_schedule_data(
                _entry("limit-1", f"dip-{steps}"), "BTCUSDT", f"dip-{steps}"
            )
        except asyncio.CancelledError:
            failed.append(f"dip-{steps}")
    assert failed == []
    for steps in range(pairs):
        assert (await Schedule.get_data("BTCUSDT", f"dip-{steps}")).total_scheduled >= 1


async def test_a_write_waiting_for_a_foreign_loops_store_start_ends_when_that_loop_closes(
    data_root: Path,
) -> None:
    """A thread runs the first write of a pair on an event loop of its own
    (``loop.run_until_complete``), gives up before the store's start is done, and
    closes its loop later, without running it again. Meanwhile the bot's loop writes
    the pair: wait_for_init polls the other loop's start ``while not init.done()``,
    and a closed loop never finishes it: the write never returns (the tick hangs
    for good). A loop found closed before the polling begins is handled (the start
    begins again); one that closes during it is not. Here a dozen pairs, each given
    up after a different number of steps; a write still waiting after 3 s (the
    start of a new store takes milliseconds) counts as hung."""
    persistkit.configure(mode="live", base_dir=data_root)
    pairs = 12
    given_up_loops: list[asyncio.AbstractEventLoop] = []

    def give_up(steps: int) -> None:
        loop = asyncio.new_event_loop()

        async def start() -> None:
            write = PersistScheduleAdapter.write_schedule_data(
                _entry("limit-1", f"dip-{steps}"), "BTCUSDT", f"dip-{steps}"
            )
            asyncio.ensure_future(write)  # noqa: RUF006  # left pending in the stopped loop
            for _ in range(steps):
                await asyncio.sleep(0)

        loop.run_until_complete(start())
        given_up_loops.append(loop)  # stopped, closed below

    for steps in range(pairs):
        thread = threading.Thread(target=give_up, args=(steps,))
        thread.start()
        thread.join()

    async def write(steps: int) -> str:
        try:
            await asyncio.wait_for(
                PersistScheduleAdapter.write_schedule_data(
                    _entry("limit-1", f"dip-{steps}"), "BTCUSDT", f"dip-{steps}"
                ),
                3,
            )
        except TimeoutError:
            return f"dip-{steps} hung"
        return "written"

    writes = [asyncio.ensure_future(write(steps)) for steps in range(pairs)]
    await asyncio.sleep(0.1)  # the writes wait for the other loops' starts
    for loop in given_up_loops:
        loop.close()
    assert await asyncio.gather(*writes) == ["written"] * pairs

"""``Schedule`` and ``Partial`` statistics: derived from the committed state changes, exact,
bounded, null-safe, durable in live mode and file-free in backtest mode.

The kill -9 loop lives in tests/test_live_session.py: the demo bot's restored state
includes its statistics, compared after every restart with the acknowledged ticks.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import orjson
import pytest

import persistkit
from persistkit import (
    LiveSession,
    Partial,
    PersistPartialAdapter,
    PersistScheduleAdapter,
    PersistSignalAdapter,
    Schedule,
)
from persistkit._domains.events import (
    FOLDED_NAMESPACE,
    PAIR_LOGS,
    PARTIAL,
    SCHEDULE,
    SEGMENT_EVENTS,
    PairHead,
)
from persistkit._names import join_pair
from persistkit.backends import FileBackend, MemoryBackend
from persistkit.models import PartialData, ScheduledSignalRow, SignalRow

SYMBOL, STRATEGY = "BTC/USDT", "trend_1"
T0 = 1_763_700_000_000  # 2025-11-21T04:40:00Z
MIN = 60_000


class MarketClock:
    """A backtest's simulated time, in milliseconds."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def scheduled(signal_id: str, at: int) -> ScheduledSignalRow:
    return ScheduledSignalRow(
        id=signal_id,
        symbol=SYMBOL,
        strategy_name=STRATEGY,
        position="long",
        price_open=100.0,
        price_take_profit=110.0,
        price_stop_loss=95.0,
        scheduled_at=at,
        pending_at=at,
    )


def filled(row: ScheduledSignalRow, at: int) -> SignalRow:
    return SignalRow.model_validate({**row.model_dump(), "pendingAt": at})


async def put_schedule(row: ScheduledSignalRow | None) -> None:
    await PersistScheduleAdapter.write_schedule_data(row, SYMBOL, STRATEGY)


async def put_signal(row: SignalRow | None) -> None:
    await PersistSignalAdapter.write_signal_data(row, SYMBOL, STRATEGY)


async def put_levels(levels: dict[str, PartialData] | None) -> None:
    await PersistPartialAdapter.write_partial_data(levels, SYMBOL, STRATEGY)


Tick = Callable[[], AbstractAsyncContextManager[Any]]


async def scripted_run(tick: Tick, clock: MarketClock) -> None:
    """Five limit entries: A and C fill, B is cancelled, D is replaced by E (still waiting);
    A reaches two profit milestones and one loss milestone. Some ticks change nothing."""

    async def at(minute: int, *writes: Awaitable[None]) -> None:
        clock.now = T0 + minute * MIN
        async with tick():
            for write in writes:
                await write

    a, b, c = scheduled("A", T0), scheduled("B", T0 + 20 * MIN), scheduled("C", T0 + 60 * MIN)
    d, e = scheduled("D", T0 + 70 * MIN), scheduled("E", T0 + 75 * MIN)
    await at(0, put_schedule(a))
    await at(5, put_schedule(a), put_signal(None), put_levels(None))  # unchanged: no event
    # Cleared before the signal is written: one tick, so the order inside it is free.
    await at(10, put_schedule(None), put_signal(filled(a, T0 + 10 * MIN)))
    await at(11, put_levels({"A": PartialData(profit_levels=[10])}))
    await at(12, put_levels({"A": PartialData(profit_levels=[10, 20])}))
    await at(13, put_levels({"A": PartialData(profit_levels=[10, 20], loss_levels=[10])}))
    await at(20, put_schedule(b))
    await at(50, put_schedule(None))  # the signal is still A's: B was cancelled
    await at(55, put_signal(None), put_levels(None))  # A closes: no milestone
    await at(60, put_schedule(c))
    await at(64, put_signal(filled(c, T0 + 64 * MIN)), put_schedule(None))
    await at(70, put_signal(None), put_schedule(d))
    await at(75, put_schedule(e))  # D replaced: cancelled, E scheduled


EXPECTED_SCHEDULE = [
    (T0, "scheduled", "A", None),
    (T0 + 10 * MIN, "opened", "A", 10.0),
    (T0 + 20 * MIN, "scheduled", "B", None),
    (T0 + 50 * MIN, "cancelled", "B", 30.0),
    (T0 + 60 * MIN, "scheduled", "C", None),
    (T0 + 64 * MIN, "opened", "C", 4.0),
    (T0 + 70 * MIN, "scheduled", "D", None),
    (T0 + 75 * MIN, "cancelled", "D", 5.0),
    (T0 + 75 * MIN, "scheduled", "E", None),
]
EXPECTED_PARTIAL = [
    (T0 + 11 * MIN, "profit", "A", 10, 101.0),
    (T0 + 12 * MIN, "profit", "A", 20, 102.0),
    (T0 + 13 * MIN, "loss", "A", 10, 99.5),
]

EXPECTED_SCHEDULE_REPORT = """\
# Scheduled Signals Report: trend_1 (BTC/USDT)

| Timestamp | Action | Symbol | Signal ID | Position | Entry Price | Wait Time (min) |
| --- | --- | --- | --- | --- | --- | --- |
| 2025-11-21T04:40:00Z | SCHEDULED | BTC/USDT | A | LONG | 100.00 | N/A |
| 2025-11-21T04:50:00Z | OPENED | BTC/USDT | A | LONG | 100.00 | 10.00 |
| 2025-11-21T05:00:00Z | SCHEDULED | BTC/USDT | B | LONG | 100.00 | N/A |
| 2025-11-21T05:30:00Z | CANCELLED | BTC/USDT | B | LONG | 100.00 | 30.00 |
| 2025-11-21T05:40:00Z | SCHEDULED | BTC/USDT | C | LONG | 100.00 | N/A |
| 2025-11-21T05:44:00Z | OPENED | BTC/USDT | C | LONG | 100.00 | 4.00 |
| 2025-11-21T05:50:00Z | SCHEDULED | BTC/USDT | D | LONG | 100.00 | N/A |
| 2025-11-21T05:55:00Z | CANCELLED | BTC/USDT | D | LONG | 100.00 | 5.00 |
| 2025-11-21T05:55:00Z | SCHEDULED | BTC/USDT | E | LONG | 100.00 | N/A |

- **Total events:** 9
- **Scheduled signals:** 5
- **Opened signals:** 2
- **Cancelled signals:** 2
- **Activation rate:** 50.00%
- **Cancellation rate:** 50.00%
- **Average activation time:** 7.00 min
"""

EXPECTED_PARTIAL_REPORT = """\
# Partial Profit/Loss Report: trend_1 (BTC/USDT)

| Timestamp | Action | Symbol | Signal ID | Position | Level | Level Price |
| --- | --- | --- | --- | --- | --- | --- |
| 2025-11-21T04:51:00Z | PROFIT | BTC/USDT | A | LONG | +10% | 101.00 |
| 2025-11-21T04:52:00Z | PROFIT | BTC/USDT | A | LONG | +20% | 102.00 |
| 2025-11-21T04:53:00Z | LOSS | BTC/USDT | A | LONG | -10% | 99.50 |

- **Total events:** 3
- **Profit milestones:** 2
- **Loss milestones:** 1
"""


async def check_scripted_statistics() -> None:
    stats = await Schedule.get_data(SYMBOL, STRATEGY)
    assert [
        (event.timestamp, event.action, event.signal_id, event.duration_min)
        for event in stats.event_list
    ] == EXPECTED_SCHEDULE
    assert (stats.total_events, stats.total_scheduled) == (9, 5)
    assert (stats.total_opened, stats.total_cancelled) == (2, 2)
    assert (stats.activation_rate, stats.cancellation_rate) == (50.0, 50.0)
    assert stats.avg_activation_time == 7.0
    milestones = await Partial.get_data(SYMBOL, STRATEGY)
    assert [
        (event.timestamp, event.action, event.signal_id, event.level, event.price)
        for event in milestones.event_list
    ] == EXPECTED_PARTIAL
    assert (milestones.total_events, milestones.total_profit, milestones.total_loss) == (3, 2, 1)
    assert await Schedule.get_report(SYMBOL, STRATEGY) == EXPECTED_SCHEDULE_REPORT
    assert await Partial.get_report(SYMBOL, STRATEGY) == EXPECTED_PARTIAL_REPORT


async def test_a_scripted_backtest_gives_exact_statistics_in_market_time() -> None:
    clock = MarketClock()
    persistkit.configure(mode="backtest", clock=clock)
    await scripted_run(persistkit.transaction, clock)
    await check_scripted_statistics()


async def test_a_scripted_live_session_gives_the_same_statistics_after_a_restart(
    data_root: Path,
) -> None:
    clock = MarketClock()
    persistkit.configure(mode="live", base_dir=data_root, clock=clock)
    async with LiveSession([(SYMBOL, STRATEGY)], "main", base_dir=data_root) as session:
        await scripted_run(session.tick, clock)
        await check_scripted_statistics()
    persistkit.configure(mode="live", base_dir=data_root)  # a new process, say
    async with LiveSession([(SYMBOL, STRATEGY)], "main", base_dir=data_root):
        await check_scripted_statistics()
    # Closed: the journal's records folded into the pair's statistics head.
    assert (data_root / FOLDED_NAMESPACE / "BTC%2FUSDT_trend_1.json").is_file()
    persistkit.configure(mode="live", base_dir=data_root)
    await check_scripted_statistics()


async def test_live_events_carry_the_commit_time_by_default() -> None:
    assert persistkit.current_settings().clock is None
    started = time.time_ns() // 1_000_000
    await put_schedule(scheduled("A", T0))
    finished = time.time_ns() // 1_000_000
    (event,) = (await Schedule.get_data(SYMBOL, STRATEGY)).event_list
    assert started <= event.timestamp <= finished


async def test_outside_a_tick_the_signal_must_be_written_before_the_schedule_is_cleared() -> None:
    clock = MarketClock()
    persistkit.configure(mode="backtest", clock=clock)
    a, b = scheduled("A", T0), scheduled("B", T0)
    await put_schedule(a)
    await put_signal(filled(a, T0 + 3 * MIN))  # its own commit: A is the pair's signal now
    await put_schedule(None)
    await put_signal(None)
    await put_schedule(b)
    await put_schedule(None)  # its own commit: no signal B yet, so B counts as cancelled
    await put_signal(filled(b, T0 + 3 * MIN))
    stats = await Schedule.get_data(SYMBOL, STRATEGY)
    assert [(event.action, event.signal_id) for event in stats.event_list] == [
        ("scheduled", "A"),
        ("opened", "A"),
        ("scheduled", "B"),
        ("cancelled", "B"),
    ]


@pytest.mark.parametrize("mode", ["backtest", "live"])
async def test_a_fill_closed_in_the_same_tick_counts_as_opened(mode: str, data_root: Path) -> None:
    """A limit fills and its stop is hit on the same candle: the tick writes the
    signal, then clears it, and clears the schedule. The signal the tick leaves is
    none, but it had the entry's id on the way: opened, not cancelled, with the wait
    up to the fill. A raw row (backtest-kit passes dicts) counts the same; a signal
    written in a savepoint that failed does not."""
    clock = MarketClock()
    persistkit.configure(mode=mode, base_dir=data_root, clock=clock)  # type: ignore[arg-type]
    a, b, c, d = (scheduled(signal_id, T0) for signal_id in "ABCD")

    async def refused_fill(row: ScheduledSignalRow) -> None:
        async with persistkit.transaction():  # a savepoint of the tick
            await put_signal(filled(row, T0 + 9 * MIN))
            raise RuntimeError("fill not confirmed")

    await put_schedule(a)
    clock.now = T0 + 5 * MIN
    async with persistkit.transaction():
        await put_signal(filled(a, T0 + 4 * MIN))
        await put_schedule(None)
        await put_signal(None)  # closed on the same candle
    await put_schedule(b)
    clock.now = T0 + 8 * MIN
    async with persistkit.transaction():
        raw = {**filled(b, T0 + 7 * MIN).model_dump(by_alias=True)}
        await PersistSignalAdapter.write_signal_data(raw, SYMBOL, STRATEGY)  # type: ignore[arg-type]
        await put_signal(None)
        await put_schedule(None)
    await put_schedule(c)
    clock.now = T0 + 10 * MIN
    async with persistkit.transaction():
        with pytest.raises(RuntimeError, match="fill not confirmed"):
            await refused_fill(c)
        await put_schedule(None)
    await put_schedule(d)
    clock.now = T0 + 12 * MIN
    async with persistkit.transaction() as tick:
        await put_signal(filled(d, T0 + 11 * MIN))
        await tick.commit_staged()  # the order intent, durable before the order leaves
        await put_signal(None)  # the stop, hit within the same tick
        await put_schedule(None)

    if mode == "live":
        persistkit.configure(mode="live", base_dir=data_root)  # a new process, say
    stats = await Schedule.get_data(SYMBOL, STRATEGY)
    assert [
        (event.action, event.signal_id, event.duration_min)
        for event in stats.event_list
        if event.action != "scheduled"
    ] == [
        ("opened", "A", 4.0),
        ("opened", "B", 7.0),
        ("cancelled", "C", 10.0),
        ("opened", "D", 11.0),
    ]
    assert await PersistSignalAdapter.read_signal_data(SYMBOL, STRATEGY) is None


async def test_an_empty_pair_has_zero_counts_and_no_rates() -> None:
    stats = await Schedule.get_data("ETHUSDT", "never-ran")
    assert stats.event_list == []
    assert (stats.total_events, stats.total_scheduled) == (0, 0)
    assert (stats.total_opened, stats.total_cancelled) == (0, 0)
    assert stats.activation_rate is None
    assert stats.cancellation_rate is None
    assert stats.avg_activation_time is None
    report = await Schedule.get_report("ETHUSDT", "never-ran")
    assert "- **Activation rate:** N/A" in report and "No events recorded." in report
    assert stats.as_json()["activation_rate"] is None
    milestones = await Partial.get_data("ETHUSDT", "never-ran")
    assert (milestones.total_events, milestones.total_profit, milestones.total_loss) == (0, 0, 0)


async def test_only_cancellations_give_a_zero_activation_rate_and_no_average_wait() -> None:
    clock = MarketClock()
    persistkit.configure(mode="backtest", clock=clock)
    await put_schedule(scheduled("A", T0))
    clock.now = T0 + 2 * MIN
    await put_schedule(None)
    stats = await Schedule.get_data(SYMBOL, STRATEGY)
    assert (stats.activation_rate, stats.cancellation_rate) == (0.0, 100.0)
    assert stats.avg_activation_time is None
    assert stats.event_list[-1].duration_min == 2.0


async def test_300_events_keep_the_newest_250() -> None:
    clock = MarketClock()
    persistkit.configure(mode="backtest", clock=clock)
    for number in range(150):  # each: scheduled, then cancelled
        clock.now = T0 + number * MIN
        await put_schedule(scheduled(f"S{number}", clock.now))
        await put_schedule(None)
    stats = await Schedule.get_data(SYMBOL, STRATEGY)
    assert stats.total_events == 250
    assert [(event.action, event.signal_id) for event in stats.event_list[:2]] == [
        ("scheduled", "S25"),
        ("cancelled", "S25"),
    ]
    assert (stats.event_list[-1].action, stats.event_list[-1].signal_id) == ("cancelled", "S149")
    assert (stats.total_scheduled, stats.total_cancelled) == (125, 125)
    # What is stored stays bounded too: whole segments of old events are dropped.
    log = await PAIR_LOGS._store(join_pair(SYMBOL, STRATEGY))
    head = await log.read_value("head")
    assert isinstance(head, PairHead)
    kept = [
        len(await log.read_value(entity_id))
        async for entity_id in log.keys()
        if entity_id.startswith("schedule-")
    ]
    assert kept == [SEGMENT_EVENTS] * len(kept)
    assert 250 <= sum(kept) + len(head.schedule.events) < 250 + SEGMENT_EVENTS


async def test_the_bound_is_configurable_and_zero_records_nothing() -> None:
    persistkit.configure(mode="backtest", event_limit=3)
    for number in range(4):
        await put_schedule(scheduled(f"S{number}", T0))
    stats = await Schedule.get_data(SYMBOL, STRATEGY)
    assert [(event.action, event.signal_id) for event in stats.event_list] == [
        ("scheduled", "S2"),
        ("cancelled", "S2"),
        ("scheduled", "S3"),
    ]
    persistkit.configure(mode="backtest", event_limit=0)
    await put_schedule(scheduled("S9", T0))
    assert (await Schedule.get_data(SYMBOL, STRATEGY)).total_events == 0
    with pytest.raises(ValueError, match="event_limit"):
        persistkit.configure(mode="backtest", event_limit=-1)


async def test_a_tick_that_fails_records_no_event(data_root: Path) -> None:
    async with LiveSession([(SYMBOL, STRATEGY)], "main", base_dir=data_root) as session:

        async def failing_tick() -> None:
            async with session.tick():
                await put_schedule(scheduled("A", T0))
                raise RuntimeError("exchange down")

        with pytest.raises(RuntimeError, match="exchange down"):
            await failing_tick()
        assert (await Schedule.get_data(SYMBOL, STRATEGY)).total_events == 0
        async with session.tick():
            await put_schedule(scheduled("A", T0))
        assert (await Schedule.get_data(SYMBOL, STRATEGY)).total_scheduled == 1


async def test_a_failed_savepoint_in_a_tick_records_no_event_for_its_writes(
    data_root: Path,
) -> None:
    async def refused_order(schedule: ScheduledSignalRow | None) -> None:
        async with persistkit.transaction():  # a savepoint of the tick
            if schedule is not None:
                await put_schedule(schedule)
            await put_levels({"S1": PartialData(profit_levels=[10])})
            raise RuntimeError("order refused")

    async with LiveSession([(SYMBOL, STRATEGY)], "main", base_dir=data_root) as session:
        async with session.tick():
            await put_schedule(scheduled("A", T0))
            with pytest.raises(RuntimeError, match="order refused"):
                await refused_order(scheduled("B", T0))
        async with session.tick():
            with pytest.raises(RuntimeError, match="order refused"):
                await refused_order(None)
            async with persistkit.transaction():
                await put_schedule(scheduled("C", T0))
        schedule = await Schedule.get_data(SYMBOL, STRATEGY)
        assert [(event.action, event.signal_id) for event in schedule.event_list] == [
            ("scheduled", "A"),
            ("cancelled", "A"),
            ("scheduled", "C"),
        ]
        assert (await Partial.get_data(SYMBOL, STRATEGY)).total_events == 0


async def test_writes_after_commit_staged_in_a_tick_record_their_events_too(
    data_root: Path,
) -> None:
    """A tick that commits its order intent mid-way (``commit_staged``) and goes on
    writing: the events of both parts are recorded, each with its own commit."""
    async with LiveSession([(SYMBOL, STRATEGY)], "main", base_dir=data_root) as session:
        async with session.tick() as tick:
            await put_schedule(scheduled("A", T0))
            await tick.commit_staged()
            await put_signal(filled(scheduled("A", T0), T0 + 3 * MIN))
            await put_schedule(None)
            await put_levels({"A": PartialData(profit_levels=[10, 20])})
        schedule = await Schedule.get_data(SYMBOL, STRATEGY)
        assert [(event.action, event.signal_id) for event in schedule.event_list] == [
            ("scheduled", "A"),
            ("opened", "A"),
        ]
        assert schedule.avg_activation_time == 3.0
        partial = await Partial.get_data(SYMBOL, STRATEGY)
        assert [event.level for event in partial.event_list] == [10, 20]


async def test_pairs_ticking_concurrently_in_one_process_keep_their_own_events(
    data_root: Path,
) -> None:
    """Two tasks, each a tick of its own pair (its own root here: one commit per tick),
    interleaving their writes: each pair's events are its own, none lost or doubled."""
    import asyncio

    other = ("ETH/USDT", "trend_2")

    async def trade(root: Path, symbol: str, strategy: str, rounds: int) -> None:
        async with LiveSession([(symbol, strategy)], "main", base_dir=root) as session:
            for number in range(rounds):
                async with session.tick():
                    row = scheduled(f"{symbol}-{number}", T0).model_copy(
                        update={"symbol": symbol, "strategy_name": strategy}
                    )
                    await PersistScheduleAdapter.write_schedule_data(row, symbol, strategy)
                    await asyncio.sleep(0)  # the other pair's tick writes here
                    levels = {row.id: PartialData(profit_levels=[10])}
                    await PersistPartialAdapter.write_partial_data(levels, symbol, strategy)
                    await asyncio.sleep(0)

    await asyncio.gather(
        trade(data_root / "one", SYMBOL, STRATEGY, 12),
        trade(data_root / "two", *other, 9),
    )
    for root, (symbol, strategy), rounds in (
        (data_root / "one", (SYMBOL, STRATEGY), 12),
        (data_root / "two", other, 9),
    ):
        async with LiveSession([(symbol, strategy)], "main", base_dir=root):
            schedule = await Schedule.get_data(symbol, strategy)
            partial = await Partial.get_data(symbol, strategy)
        assert schedule.total_scheduled == rounds
        assert schedule.total_cancelled == rounds - 1
        assert {event.symbol for event in schedule.event_list} == {symbol}
        assert [event.signal_id for event in partial.event_list] == [
            f"{symbol}-{number}" for number in range(rounds)
        ]


async def test_backtest_mode_writes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = tmp_path / "backtest"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    clock = MarketClock()
    persistkit.configure(mode="backtest", clock=clock)
    await scripted_run(persistkit.transaction, clock)
    await check_scripted_statistics()
    assert list(workdir.rglob("*")) == []
    assert not (tmp_path / "data").exists()


async def test_dump_writes_one_report_per_pair_durably_under_collision_free_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # "a_b" + "c" and "a" + "b_c": backtest-kit's {strategy}.md, or a naive join, would collide.
    for symbol, strategy in (("a_b", "c"), ("a", "b_c")):
        row = scheduled(f"{symbol}-{strategy}", T0).model_copy(
            update={"symbol": symbol, "strategy_name": strategy}
        )
        await PersistScheduleAdapter.write_schedule_data(row, symbol, strategy)
    first = await Schedule.dump("a_b", "c")
    second = await Schedule.dump("a", "b_c")
    assert first != second
    assert Path(first).parent == tmp_path / "dump" / "schedule"
    for path, pair in ((first, ("a_b", "c")), (second, ("a", "b_c"))):
        assert Path(path).read_text() == await Schedule.get_report(*pair)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644 & ~_umask()
    custom = await Partial.dump("a", "b_c", tmp_path / "reports" / "partial")
    assert Path(custom).read_text() == await Partial.get_report("a", "b_c")
    assert sorted(p.name for p in (tmp_path / "dump" / "schedule").iterdir()) == sorted(
        [Path(first).name, Path(second).name]
    )  # no temp file left behind


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "persistkit", *(str(arg) for arg in args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "120"},
    )


async def test_the_report_command_prints_what_get_report_returns(data_root: Path) -> None:
    clock = MarketClock()
    persistkit.configure(mode="live", base_dir=data_root, clock=clock)
    await scripted_run(persistkit.transaction, clock)
    text = run_cli("report", "schedule", SYMBOL, STRATEGY, data_root)
    assert text.returncode == 0, text.stderr
    assert text.stdout == EXPECTED_SCHEDULE_REPORT
    document = run_cli("report", "partial", SYMBOL, STRATEGY, data_root, "--json")
    assert document.returncode == 0, document.stderr
    parsed = orjson.loads(document.stdout)
    assert (parsed["total_profit"], parsed["total_loss"]) == (2, 1)
    assert parsed["event_list"][0]["signal_id"] == "A" and parsed["event_list"][0]["level"] == 10
    empty = run_cli("report", "schedule", "ETHUSDT", "nothing", data_root, "--json")
    assert empty.returncode == 0
    assert orjson.loads(empty.stdout)["activation_rate"] is None


def test_the_report_command_fails_clearly_and_documents_its_exit_codes(tmp_path: Path) -> None:
    missing = run_cli("report", "schedule", SYMBOL, STRATEGY, tmp_path / "nowhere")
    assert missing.returncode == 2
    assert "no such directory" in missing.stderr and "Traceback" not in missing.stderr
    wrong = run_cli("report", "signals", SYMBOL, STRATEGY, tmp_path)
    assert wrong.returncode == 2  # click's usage error
    helptext = run_cli("report", "--help")
    assert helptext.returncode == 0
    assert "Exit codes: 0 printed" in helptext.stdout and "2 could not run" in helptext.stdout


async def test_a_clock_that_returns_no_milliseconds_refuses_the_commit() -> None:
    persistkit.configure(mode="backtest", clock=lambda: -5)
    with pytest.raises(ValueError, match="whole milliseconds"):
        await put_schedule(scheduled("A", T0))
    assert await PersistScheduleAdapter.read_schedule_data(SYMBOL, STRATEGY) is None


async def file_root_left_by_an_earlier_build(
    root: Path, writes: Callable[[], Awaitable[Any]]
) -> None:
    """Make ``root`` what a build that wrote the statistics in each tick's commit (format
    2) left after ``writes``: the bytes that hook writes on any backend (the memory one
    here), at the paths the file backend gives their keys."""
    memory = MemoryBackend()
    persistkit.configure(mode="live", backend=memory, clock=MarketClock())
    await writes()
    paths = FileBackend(root)
    for key, data in (await memory.snapshot()).values.items():
        path = Path(paths.path_of(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    await paths.aclose()


async def test_a_torn_log_head_is_quarantined_at_start_and_its_segments_still_count(
    data_root: Path,
) -> None:
    async def ticks() -> None:
        for number in range(SEGMENT_EVENTS):  # one segment, and newer events in the head
            async with persistkit.transaction():
                await put_schedule(scheduled(f"S{number}", T0))

    await file_root_left_by_an_earlier_build(data_root, ticks)
    head = data_root / "stats" / "BTC%2FUSDT_trend_1" / "head.json"
    assert len(orjson.loads(head.read_bytes())["schedule"]["events"]) == SEGMENT_EVENTS - 1
    head.write_bytes(b'{"segments": [[0, ')  # torn by a bad disk, say
    clock = MarketClock()
    persistkit.configure(mode="live", base_dir=data_root, clock=clock)  # this build
    async with LiveSession([(SYMBOL, STRATEGY)], "main", base_dir=data_root) as session:
        async with session.tick():
            await put_schedule(scheduled("B", T0))
        stats = await Schedule.get_data(SYMBOL, STRATEGY)
        # The sealed segment the lost head listed still counts and is not overwritten;
        # the newest events were in the head, which is kept in the quarantine.
        assert len(stats.event_list) == SEGMENT_EVENTS + 2
        assert [(event.action, event.signal_id) for event in stats.event_list[:3]] == [
            ("scheduled", "S0"),
            ("cancelled", "S0"),
            ("scheduled", "S1"),
        ]
        assert [(event.action, event.signal_id) for event in stats.event_list[-2:]] == [
            ("cancelled", f"S{SEGMENT_EVENTS - 1}"),
            ("scheduled", "B"),
        ]
        log = await PAIR_LOGS._store(join_pair(SYMBOL, STRATEGY))
        (entry,) = await log.list_quarantined()
        assert entry.key.endswith("/head")  # kept aside with its reason, not deleted


def old_event(number: int, old_format: int) -> Any:
    """A schedule event as persistkit wrote it before format 3: a whole JSON object
    (format 1) or a row (format 2)."""
    action = "scheduled" if number % 2 == 0 else "cancelled"
    duration = None if action == "scheduled" else 1.0
    timestamp, signal_id = T0 + number * MIN, f"OLD{number // 2}"
    if old_format == 2:
        return [timestamp, action, signal_id, "long", 100.0, duration]
    return {
        "timestamp": timestamp,
        "action": action,
        "symbol": SYMBOL,
        "strategyName": STRATEGY,
        "signalId": signal_id,
        "position": "long",
        "priceOpen": 100.0,
        "durationMin": duration,
    }


@pytest.mark.parametrize("old_format", [1, 2])
async def test_a_log_written_before_format_3_is_read_and_still_read_after_the_next_event(
    data_root: Path, old_format: int
) -> None:
    # Logs left by an earlier persistkit, one folder per kind: a schedule log with a
    # sealed segment of 10 events and a head listing it, holding the 4 newest (the
    # segment of 12 events that format 2 grew to 50), and a partial log.
    pair = join_pair(SYMBOL, STRATEGY)
    schedule_dir = data_root / "stats" / "schedule" / pair
    partial_dir = data_root / "stats" / "partial" / pair
    schedule_dir.mkdir(parents=True)
    partial_dir.mkdir(parents=True)
    old = [old_event(number, old_format) for number in range(16)]
    head = {"segments": [[0, 12]], "events": old[12:]}
    if old_format == 2:
        head["format"] = 2
    (schedule_dir / "0.json").write_bytes(orjson.dumps(old[:12]))
    (schedule_dir / "head.json").write_bytes(orjson.dumps(head))
    milestone = [T0, "profit", "OLD0", 10, "long", 101.0]
    partial_head: dict[str, Any] = {"format": 2, "segments": [], "events": [milestone]}
    if old_format == 1:
        partial_head = {
            "segments": [],
            "events": [
                {
                    "timestamp": T0,
                    "action": "profit",
                    "symbol": SYMBOL,
                    "strategyName": STRATEGY,
                    "signalId": "OLD0",
                    "level": 10,
                    "position": "long",
                    "price": 101.0,
                }
            ],
        }
    (partial_dir / "head.json").write_bytes(orjson.dumps(partial_head))
    expected = [
        (event[1], event[2], event[0])
        if old_format == 2
        else (event["action"], event["signalId"], event["timestamp"])
        for event in old
    ]

    def seen(stats: Any) -> list[tuple[str, str, int]]:
        return [(event.action, event.signal_id, event.timestamp) for event in stats.event_list]

    clock = MarketClock()
    persistkit.configure(mode="live", base_dir=data_root, clock=clock)
    async with LiveSession([(SYMBOL, STRATEGY)], "main", base_dir=data_root) as session:
        for kind in (SCHEDULE, PARTIAL):
            legacy = await kind.legacy._store(pair)  # its start scanned the old files
            assert await legacy.list_quarantined() == []  # valid, not damaged
        before = await Schedule.get_data(SYMBOL, STRATEGY)
        assert seen(before) == expected
        assert before.event_list[0].strategy_name == STRATEGY
        assert (before.total_scheduled, before.total_cancelled) == (8, 8)
        assert (await Partial.get_data(SYMBOL, STRATEGY)).total_profit == 1
        clock.now = T0 + 100 * MIN
        async with session.tick():
            await put_schedule(scheduled("NEW0", clock.now))
        after = await Schedule.get_data(SYMBOL, STRATEGY)
        milestones = await Partial.get_data(SYMBOL, STRATEGY)
    assert seen(after) == [*expected, ("scheduled", "NEW0", T0 + 100 * MIN)]
    assert [(event.action, event.signal_id, event.price) for event in milestones.event_list] == [
        ("profit", "OLD0", 101.0)
    ]
    # On a file root the old logs stay as they are (read, never written again): the
    # new events come from the commit journal, folded at a checkpoint.
    await persistkit.current_settings().backend.checkpoint()
    assert (schedule_dir / "head.json").is_file() and (partial_dir / "head.json").is_file()
    persistkit.configure(mode="live", base_dir=data_root)  # a restart
    assert seen(await Schedule.get_data(SYMBOL, STRATEGY)) == seen(after)
    assert (await Partial.get_data(SYMBOL, STRATEGY)).event_list == milestones.event_list

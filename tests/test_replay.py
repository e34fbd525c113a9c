"""persistkit.replay: its rules and failure cases, on small recordings made here."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from persistkit import (
    FileBackend,
    LiveSession,
    PersistBase,
    PersistScheduleAdapter,
    ReplayConfigError,
    ReplaySourceError,
    Schedule,
)
from persistkit.backends._archive import HISTORY_DIR
from persistkit.models import ScheduledSignalRow
from persistkit.replay import (
    ReplayWarning,
    RunRegistry,
    new_id,
    now_ms,
    replay,
    replay_run_id,
    replay_sweep,
)

REPO = Path(__file__).resolve().parent.parent


def strategy_for(root: Path) -> Any:
    """A tiny strategy: position = price x size, and what it saw of the clock and ids."""

    async def strategy(inputs: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        store: PersistBase[Any] = PersistBase("bot", root)
        await store.write_value("position", round(inputs["price"] * params.get("size", 1), 6))
        await store.write_value("seen", {"at": now_ms(), "order": new_id()})

    return strategy


async def record_run(root: Path, prices: list[float], *, checkpoint_every: int = 0) -> None:
    """A live session that records each tick's inputs and runs the strategy on them."""
    session = LiveSession([("BTCUSDT", "t")], "main", base_dir=root)
    await session.start()
    strategy = strategy_for(root)
    for index, price in enumerate(prices, 1):
        async with session.tick(inputs={"price": price}):
            await strategy({"price": price}, {})
        if checkpoint_every and index % checkpoint_every == 0:
            await session.backend.checkpoint()
    await session.aclose()


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
async def recorded(tmp_path: Path) -> Path:
    root = tmp_path / "live"
    await record_run(root, [100.0, 101.5, 99.25, 102.0, 103.5, 98.0])
    return root


async def test_replaying_the_unchanged_strategy_finds_no_divergence(recorded: Path) -> None:
    before = tree_digest(recorded)
    first = await replay(recorded, strategy_for(recorded))
    second = await replay(recorded, strategy_for(recorded))
    assert first.status == second.status == "complete"
    assert first.mode == "replay" and first.replay_run_id.startswith("replay_")
    assert first.replay_run_id != second.replay_run_id
    assert first.ticks_replayed == 6 and first.ticks_skipped == 0
    assert first.first_divergence is None
    assert first.state_digest == second.state_digest
    assert tree_digest(recorded) == before  # the live root was only read


async def test_a_changed_parameter_diverges_at_the_first_tick_it_changes(recorded: Path) -> None:
    summary = await replay(recorded, strategy_for(recorded), params={"size": 2})
    assert summary.first_divergence is not None
    assert summary.first_divergence.seq == 1
    assert summary.first_divergence.differences == {
        "bot/position": {"live": 100.0, "replay": 200.0}
    }
    unchanged = await replay(recorded, strategy_for(recorded))
    assert summary.state_digest != unchanged.state_digest


async def test_the_virtual_clock_and_ids_are_the_recorded_ones(
    recorded: Path, tmp_path: Path
) -> None:
    live_ids = {new_id() for _ in range(100)}
    assert len(live_ids) == 100 and replay_run_id() is None
    targets = [tmp_path / "a", tmp_path / "b"]
    summaries = [
        await replay(recorded, strategy_for(recorded), target=target) for target in targets
    ]
    assert summaries[0].state_digest == summaries[1].state_digest
    runs = [
        target / "replay" / s.replay_run_id for target, s in zip(targets, summaries, strict=True)
    ]
    # Byte-identical replayed state, the clock included (the tick records differ by run id).
    assert (runs[0] / "bot" / "seen.json").read_bytes() == (
        runs[1] / "bot" / "seen.json"
    ).read_bytes()
    assert (runs[0] / "bot" / "position.json").read_bytes() == (
        runs[1] / "bot" / "position.json"
    ).read_bytes()
    history = await FileBackend(recorded).history_records()
    last_tick = list(history.ticks())[-1]
    seen = PersistBase[Any]("bot", backend=FileBackend(runs[0]))
    # The tick's own clock, as the live tick saw it: when it began, a little before its
    # commit's time (the two can fall in different milliseconds).
    assert (await seen.read_value("seen"))["at"] == last_tick.at_ns // 1_000_000
    tick_record = (runs[0] / "_persistkit" / "ticks" / "main.json").read_text()
    assert '"mode":"replay"' in tick_record and summaries[0].replay_run_id in tick_record


async def test_start_not_before_end_is_refused(recorded: Path) -> None:
    now = int(time.time() * 1000)
    for start, end in ((now, now), (now, now - 1000)):
        with pytest.raises(ReplayConfigError) as refused:
            await replay(recorded, strategy_for(recorded), start=start, end=end)
        assert refused.value.code == "INVALID_WINDOW"


async def test_an_end_in_the_future_is_clamped_to_now(recorded: Path) -> None:
    tomorrow = int(time.time() * 1000) + 86_400_000
    with pytest.warns(ReplayWarning, match="WINDOW_CLAMPED"):
        summary = await replay(recorded, strategy_for(recorded), end=tomorrow)
    assert summary.status == "complete" and summary.ticks_replayed == 6
    assert any(note.startswith("WINDOW_CLAMPED") for note in summary.warnings)


async def test_a_window_replays_only_its_ticks(recorded: Path) -> None:
    history = await FileBackend(recorded).history_records()
    ticks = list(history.ticks())
    start = -(-ticks[2].commit.time_ns // 1_000_000)  # from the third tick's millisecond on
    summary = await replay(recorded, strategy_for(recorded), start=start)
    assert summary.ticks_replayed == len([t for t in ticks if t.commit.time_ns >= start * 10**6])
    assert summary.first_divergence is None  # started from the live state before the window


async def test_a_gap_in_the_history_skips_its_ticks_and_counts_them(tmp_path: Path) -> None:
    root = tmp_path / "live"
    await record_run(root, [100.0 + index for index in range(9)], checkpoint_every=3)
    segments = sorted((root / HISTORY_DIR).glob("*/*.pkj"))
    assert len(segments) == 3
    segments[1].unlink()  # ticks 4-6 lost
    with pytest.warns(ReplayWarning, match="TICK_SKIPPED"):
        summary = await replay(root, strategy_for(root))
    assert summary.status == "complete"
    assert summary.ticks_skipped == 3 and summary.ticks_replayed == 6
    assert any("#4-#6" in note for note in summary.warnings)


async def test_an_unreachable_source_aborts_the_run(tmp_path: Path) -> None:
    target = tmp_path / "target"
    with pytest.raises(ReplaySourceError, match="not a directory"):
        await replay(tmp_path / "missing", strategy_for(tmp_path), target=target, run_id="lost")
    plain = FileBackend(tmp_path / "plain", history=None)
    await plain.commit({"bot/position": b"1"})
    with pytest.raises(ReplaySourceError, match="keeps no history"):
        await replay(plain, strategy_for(tmp_path), target=target, run_id="no-history")
    await plain.aclose()
    registry = RunRegistry(str(target))
    statuses = {run["replay_run_id"]: run["status"] for run in await registry.list()}
    await registry.aclose()
    assert statuses == {"lost": "aborted", "no-history": "aborted"}


async def test_sweeps_warn_above_50_variants_and_refuse_above_200(recorded: Path) -> None:
    with pytest.raises(ReplayConfigError) as refused:
        await replay_sweep(recorded, strategy_for(recorded), variants=[{"size": 1}] * 201)
    assert refused.value.code == "TOO_MANY_VARIANTS"
    variants = [{"size": 1 + index / 100} for index in range(51)]
    with pytest.warns(ReplayWarning, match="LARGE_SWEEP"):
        summaries = await replay_sweep(recorded, strategy_for(recorded), variants=variants)
    assert len({summary.replay_run_id for summary in summaries}) == 51
    assert [summary.params for summary in summaries] == variants
    assert summaries[0].first_divergence is None
    assert all(summary.first_divergence is not None for summary in summaries[1:])


async def test_a_run_id_is_used_once_and_must_be_safe(recorded: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    await replay(recorded, strategy_for(recorded), run_id="baseline-1", target=target)
    with pytest.raises(ReplayConfigError) as refused:
        await replay(recorded, strategy_for(recorded), run_id="baseline-1", target=target)
    assert refused.value.code == "RUN_ID_EXISTS"
    for bad in ("../evil", "", ".runs", "a/b"):
        with pytest.raises(ReplayConfigError) as refused:
            await replay(recorded, strategy_for(recorded), run_id=bad, target=target)
        assert refused.value.code == "BAD_RUN_ID"
    with pytest.raises(ReplayConfigError) as refused:
        await replay(recorded, strategy_for(recorded), target="redis://localhost/0")
    assert refused.value.code == "BAD_TARGET"


async def test_at_most_max_in_flight_runs_per_target(recorded: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    release = asyncio.Event()
    two_started = asyncio.Event()
    started = 0

    async def slow(inputs: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        nonlocal started
        started += 1
        if started == 2:
            two_started.set()
        await release.wait()

    running = [
        asyncio.create_task(replay(recorded, slow, target=target, max_in_flight=2))
        for _ in range(2)
    ]
    await two_started.wait()
    with pytest.raises(ReplayConfigError) as refused:
        await replay(recorded, slow, target=target, max_in_flight=2)
    assert refused.value.code == "TOO_MANY_RUNS"
    release.set()
    assert [summary.status for summary in await asyncio.gather(*running)] == [
        "complete",
        "complete",
    ]
    # Both ended: the next launch runs.
    assert (await replay(recorded, slow, target=target, max_in_flight=2)).status == "complete"


KILLED_REPLAY = textwrap.dedent(
    """
    import asyncio, sys
    from persistkit.replay import replay

    async def stuck(inputs, params):
        print("running", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(replay(sys.argv[1], stuck, target=sys.argv[2], run_id="killed"))
    """
)


def test_a_run_whose_process_died_is_marked_interrupted_and_not_resumed(
    recorded: Path, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    registry = RunRegistry(str(target))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_REPLAY, str(recorded), str(target)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "running"
    assert [run["status"] for run in asyncio.run(registry.list())] == ["running"]
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()
    assert [run["status"] for run in asyncio.run(registry.list())] == ["interrupted"]
    listed = subprocess.run(
        [sys.executable, "-m", "persistkit", "replay", "list", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert "killed" in listed.stdout and "interrupted" in listed.stdout

    async def cold_start() -> None:
        # The next launch records it as interrupted, and never resumes it.
        await replay(recorded, strategy_for(recorded), target=target, run_id="after")
        stored = await registry.get("killed")
        assert stored["status"] == "interrupted" and stored["ticks_replayed"] == 0
        with pytest.raises(ReplayConfigError) as refused:
            await replay(recorded, strategy_for(recorded), target=target, run_id="killed")
        assert refused.value.code == "RUN_ID_EXISTS"
        await registry.aclose()

    asyncio.run(cold_start())


async def test_a_source_named_through_a_link_replays_into_the_same_stores(
    recorded: Path, tmp_path: Path
) -> None:
    link = tmp_path / "current"
    link.symlink_to(recorded)
    summary = await replay(link, strategy_for(link))
    assert summary.ticks_replayed == 6 and summary.first_divergence is None
    direct = await replay(recorded, strategy_for(recorded))
    assert summary.state_digest == direct.state_digest


async def test_statistics_events_take_the_ticks_time_so_a_replay_records_the_same(
    tmp_path: Path,
) -> None:
    """No clock configured: each event carries its tick's time, in the live run and the replay."""
    root = tmp_path / "live"

    async def schedule_one(inputs: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        # A new limit entry every tick: the previous one is cancelled, this one scheduled.
        at = now_ms()
        row = ScheduledSignalRow(
            id=f"limit-{inputs['n']}",
            symbol="BTCUSDT",
            strategy_name="t",
            position="long",
            price_open=inputs["price"],
            price_take_profit=inputs["price"] * 1.03,
            price_stop_loss=inputs["price"] * 0.98,
            scheduled_at=at,
            pending_at=at,
        )
        await PersistScheduleAdapter.write_schedule_data(row, "BTCUSDT", "t")

    session = LiveSession([("BTCUSDT", "t")], "main", base_dir=root)
    await session.start()
    for n, price in enumerate([100.0, 101.5, 99.25], 1):
        async with session.tick(inputs={"n": n, "price": price}):
            await schedule_one({"n": n, "price": price}, {})
        await asyncio.sleep(0.002)  # ticks in distinct milliseconds
    live = await Schedule.get_data("BTCUSDT", "t")
    await session.aclose()

    history = await FileBackend(root).history_records()
    tick_ms = [tick.at_ns // 1_000_000 for tick in history.ticks()]
    assert [(e.timestamp, e.action) for e in live.event_list] == [
        (tick_ms[0], "scheduled"),
        (tick_ms[1], "cancelled"),
        (tick_ms[1], "scheduled"),
        (tick_ms[2], "cancelled"),
        (tick_ms[2], "scheduled"),
    ]
    first = await replay(root, schedule_one, target=tmp_path / "a")
    second = await replay(root, schedule_one, target=tmp_path / "b")
    assert first.first_divergence is None and second.first_divergence is None
    assert first.state_digest == second.state_digest
    replayed = await Schedule.get_data(
        "BTCUSDT", "t", backend=FileBackend(tmp_path / "a" / "replay" / first.replay_run_id)
    )
    assert replayed.event_list == live.event_list

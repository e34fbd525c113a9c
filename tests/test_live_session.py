"""The live lifecycle with real processes: kill -9 loops, the one-instance lock, SIGTERM."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from persistkit import (
    CrossBackendError,
    FileBackend,
    InstanceLockedError,
    LiveSession,
    MemoryBackend,
    PersistBase,
    PersistRiskAdapter,
    PersistScheduleAdapter,
    PersistSignalAdapter,
    configure,
)
from persistkit._live.lease import (
    RETRY_SHARE,
    SAFETY_SHARE,
    lease_deadline,
    renewal_due,
    wait_poll_delay,
)
from persistkit.backends._base import fencing
from persistkit.models import RiskActivePosition, ScheduledSignalRow, SignalRow

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
sys.path.insert(0, str(EXAMPLES))

import live_bot  # noqa: E402 - examples/ is not a package

FORKSERVER = Path(__file__).resolve().parent / "helpers" / "bot_forkserver.py"
KILLS = int(
    os.environ.get("PERSISTKIT_KILLS", "3000" if os.environ.get("PERSISTKIT_LONG") else "300")
)


def read_json_line(stream: IO[str], deadline: float) -> dict[str, Any]:
    line = stream.readline()
    if not line:
        raise AssertionError("the bot process closed its output")
    if time.monotonic() > deadline:
        raise AssertionError("the kill loop ran out of time")
    parsed: dict[str, Any] = json.loads(line)
    return parsed


class ExpectedRun:
    """The bot's run replayed in memory, one step at a time, as far as needed."""

    def __init__(self) -> None:
        self.state = live_bot.BotState()

    def at(self, tick: int) -> dict[str, Any]:
        assert tick >= self.state.tick, f"tick {tick} went back before {self.state.tick}"
        while self.state.tick < tick:
            self.state = live_bot.step(self.state, self.state.tick + 1)
        return self.state.as_json()

    def check_restored(self, message: dict[str, Any], last_ack: int) -> int:
        """The restored state is the one after the last acknowledged tick (or the next
        one, committed but killed before it could say so), and the four domains agree."""
        restored = message["restored"]
        tick = restored["tick"]
        assert tick in (last_ack, last_ack + 1), f"restored tick {tick}, last acked {last_ack}"
        assert message["problems"] == [], message["problems"]
        assert restored == self.at(tick), f"state at tick {tick} differs"
        return int(tick)


def test_kill_9_loop_restores_every_acknowledged_tick(tmp_path: Path) -> None:
    """Every restart's state, and its schedule and partial statistics, are exactly
    those of the acknowledged ticks (or the one after, committed but not yet said)."""
    base_dir = tmp_path / "data"
    rng = random.Random(20261121)
    server = subprocess.Popen(
        [sys.executable, str(FORKSERVER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert server.stdin is not None and server.stdout is not None
    deadline = time.monotonic() + 60 + KILLS * 0.6
    expected = ExpectedRun()
    last_ack = 0
    restarts_checked = 0
    replayed_total = 0
    child = None
    try:
        for kill in range(KILLS):
            server.stdin.write(f"run {base_dir}\n")
            server.stdin.flush()
            # Mostly a few ticks in, sometimes during startup and recovery itself.
            acks_wanted = 0 if rng.random() < 0.1 else rng.randint(0, 6)
            wait_restored = acks_wanted > 0 or rng.random() < 0.5
            child = None
            restored_seen = False
            acks = 0
            while True:
                message = read_json_line(server.stdout, deadline)
                if "child" in message:
                    child = message["child"]
                elif "restored" in message:
                    last_ack = expected.check_restored(message, last_ack)
                    replayed_total += message["replayed"]
                    restored_seen = True
                    restarts_checked += 1
                elif "ack" in message:
                    assert message["ack"] == last_ack + 1
                    last_ack = message["ack"]
                    acks += 1
                elif "exit" in message:
                    raise AssertionError(f"bot exited on its own: {message}")
                ready = child is not None and (restored_seen or not wait_restored)
                if ready and acks >= acks_wanted:
                    break
            time.sleep(rng.uniform(0, 0.004))  # somewhere inside the next tick
            os.kill(child, signal.SIGKILL)
            while True:
                message = read_json_line(server.stdout, deadline)
                if "exit" in message:
                    assert message["exit"] == -signal.SIGKILL, f"kill {kill}: {message}"
                    child = None  # reaped: its pid may be reused, never signal it again
                    break
                if "ack" in message:  # committed and said so before the kill landed
                    assert message["ack"] == last_ack + 1
                    last_ack = message["ack"]
                elif "restored" in message:
                    last_ack = expected.check_restored(message, last_ack)
                    replayed_total += message["replayed"]
                    restarts_checked += 1
        # A last, clean restart sees the last acknowledged tick too.
        server.stdin.write(f"run {base_dir}\n")
        server.stdin.flush()
        final_tick = None
        while child is None or final_tick is None or "ack" not in message:
            message = read_json_line(server.stdout, deadline)
            if "child" in message:
                child = message["child"]
            elif "restored" in message:
                final_tick = expected.check_restored(message, last_ack)
        # In its tick loop (session.run handles the signal there): a clean stop.
        os.kill(child, signal.SIGTERM)
        while "exit" not in message:
            message = read_json_line(server.stdout, deadline)
        assert message["exit"] == 0
        child = None
    finally:
        if child is not None:  # a failed check left a bot running: stop it
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        server.stdin.close()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert restarts_checked >= KILLS * 0.8, f"only {restarts_checked} restarts reached a check"
    # Each check compared the statistics too (Schedule, Partial): make sure they had events.
    final = expected.at(final_tick)["pairs"].values()
    assert all(pair["schedule_events"] and pair["partial_events"] for pair in final)
    assert final_tick > KILLS / 2, f"the bot made little progress: tick {final_tick}"
    assert replayed_total > 0, "no kill ever landed between a commit and its checkpoint"


# -- one instance only ---------------------------------------------------------------------

HOLDER = """
import asyncio, sys
from persistkit import LiveSession

async def main():
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=sys.argv[1])
    await session.start()
    print("holding", flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "holding"
    yield process
    process.kill()
    process.wait()


async def test_a_second_process_is_refused_and_told_who_holds_the_lock(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=tmp_path / "data")
    with pytest.raises(InstanceLockedError) as refused:
        await session.start()
    assert refused.value.holder["pid"] == holder.pid
    assert refused.value.holder["host"] == socket.gethostname()
    assert str(holder.pid) in str(refused.value)
    assert "since" in refused.value.holder
    # Another strategy on the same risk profile is refused too: it would race on the positions.
    other = LiveSession([("ETHUSDT", "other")], "main", base_dir=tmp_path / "data")
    with pytest.raises(InstanceLockedError):
        await other.start()
    # A different pair and risk profile runs alongside.
    independent = LiveSession([("ETHUSDT", "other")], "side", base_dir=tmp_path / "data")
    await independent.start()
    await independent.aclose()


def test_a_second_process_fails_fast_with_the_holders_pid(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    started = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-c", HOLDER, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode != 0
    assert "InstanceLockedError" in second.stderr
    assert f"pid {holder.pid}" in second.stderr
    assert time.monotonic() - started < 60  # it did not wait for the lock


async def test_a_holder_killed_with_kill_9_leaves_no_stale_lock(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=tmp_path / "data")
    await session.start()  # at once: the kernel dropped the dead holder's flock
    await session.aclose()


async def test_two_sessions_in_one_process_exclude_each_other(data_root: Path) -> None:
    first = LiveSession([("BTCUSDT", "trend")], "main", base_dir=data_root)
    await first.start()
    second = LiveSession([("BTCUSDT", "trend")], "main", base_dir=data_root)
    with pytest.raises(InstanceLockedError):
        await second.start()
    await first.aclose()
    await second.start()
    await second.aclose()


# -- SIGTERM / SIGINT --------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_signal_commits_the_tick_in_progress_and_exits_0(
    tmp_path: Path, signum: signal.Signals
) -> None:
    base_dir = tmp_path / "data"
    bot = subprocess.Popen(  # noqa: ASYNC220 - the bot must run while this test reads it
        [
            sys.executable,
            EXAMPLES / "live_bot.py",
            "--json",
            "--interval=0.01",
            f"--base-dir={base_dir}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert bot.stdout is not None
    last_ack = 0
    for line in bot.stdout:
        message = json.loads(line)
        last_ack = message.get("ack", last_ack)
        if last_ack >= 5:
            break
    bot.send_signal(signum)
    for line in bot.stdout:
        message = json.loads(line)
        last_ack = message.get("ack", last_ack)
        if "stopped" in message:
            assert message["stopped"] == last_ack
    assert bot.wait(timeout=60) == 0
    # Checkpointed: the files hold every commit, the journal holds none.
    assert await FileBackend(base_dir, read_only=True).unapplied_commits() == []
    session = LiveSession(live_bot.PAIRS, live_bot.RISK_NAME, base_dir=base_dir)
    restored = await session.start()  # the lock was released
    tick = await PersistBase[int]("bot", base_dir).read_value("tick")
    assert tick == last_ack
    found = await live_bot.from_restored(restored, tick)
    assert found.as_json() == live_bot.simulate(tick).as_json()
    assert restored.replayed_commits == 0
    await session.aclose()


# -- restore --------------------------------------------------------------------------------------


def signal_row(signal_id: str) -> SignalRow:
    return SignalRow(
        id=signal_id,
        symbol="BTC/USDT",
        strategy_name="trend",
        position="long",
        price_open=100.0,
        price_take_profit=110.0,
        price_stop_loss=95.0,
        scheduled_at=1,
        pending_at=2,
    )


def position(signal_id: str) -> RiskActivePosition:
    return RiskActivePosition(
        symbol="BTC/USDT",
        strategy_name="trend",
        signal_id=signal_id,
        position="long",
        price_open=100.0,
        quantity=1.0,
        added_at=2,
    )


async def test_restore_reports_self_healing_and_inconsistencies(data_root: Path) -> None:
    first = LiveSession([("BTC/USDT", "trend")], "main", base_dir=data_root)
    async with first, first.tick():
        await PersistSignalAdapter.write_signal_data(signal_row("s1"), "BTC/USDT", "trend")
        await PersistRiskAdapter.write_position_data([("s1", position("s1"))], "main")
    # Outside any tick, a plain write makes the two disagree (what a tick prevents).
    configure(mode="live", base_dir=data_root)
    await PersistRiskAdapter.write_position_data([], "main")
    corrupt = data_root / "schedule" / "BTC%2FUSDT_trend" / "BTC%2FUSDT.json"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b'{"id": "torn')
    session = LiveSession([("BTC/USDT", "trend")], "main", base_dir=data_root)
    restored = await session.start()
    assert restored.pair("BTC/USDT", "trend").signal == signal_row("s1")
    assert restored.pair("BTC/USDT", "trend").scheduled is None
    assert restored.risk_positions == []
    assert restored.inconsistencies() == ["BTC/USDT/trend: signal s1 has no risk position"]
    assert not restored.healed
    quarantined = [finding for report in restored.reports for finding in report.corrupt]
    assert [finding.key for finding in quarantined] == ["schedule/BTC%2FUSDT_trend/BTC%2FUSDT"]
    await session.aclose()


async def test_a_tick_that_raises_commits_nothing(data_root: Path) -> None:
    session = LiveSession([("BTC/USDT", "trend")], "main", base_dir=data_root)
    await session.start()

    async def failing_tick(_: int) -> None:
        await PersistSignalAdapter.write_signal_data(signal_row("s1"), "BTC/USDT", "trend")
        raise RuntimeError("exchange unreachable")

    with pytest.raises(RuntimeError, match="exchange unreachable"):
        await session.run(failing_tick, interval=0, ticks=1)
    assert await PersistSignalAdapter.read_signal_data("BTC/USDT", "trend") is None
    await session.aclose()


SLOW_TICK_BOT = """
import asyncio, sys
from persistkit import LiveSession, PersistRiskAdapter, PersistSignalAdapter
from persistkit.models import RiskActivePosition, SignalRow

async def main():
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=sys.argv[1])
    await session.start()

    async def tick(number):
        row = SignalRow(id=f"s{number}", symbol="BTCUSDT", strategy_name="trend",
                        position="long", price_open=100.0, price_take_profit=110.0,
                        price_stop_loss=95.0, scheduled_at=1, pending_at=2)
        await PersistSignalAdapter.write_signal_data(row, "BTCUSDT", "trend")
        print("half of tick", number, flush=True)
        await asyncio.sleep(0.5)  # the stop signal arrives here, mid-tick
        position = RiskActivePosition(symbol="BTCUSDT", strategy_name="trend",
                                      signal_id=row.id, position="long", price_open=100.0,
                                      quantity=1.0, added_at=2)
        await PersistRiskAdapter.write_position_data([(row.id, position)], "main")

    ran = await session.run(tick, interval=0)
    await session.aclose()
    print("ticks", ran, flush=True)

asyncio.run(main())
"""


async def test_a_stop_signal_mid_tick_lets_the_whole_tick_commit(tmp_path: Path) -> None:
    base_dir = tmp_path / "data"
    bot = subprocess.Popen(  # noqa: ASYNC220 - the bot must run while this test reads it
        [sys.executable, "-c", SLOW_TICK_BOT, str(base_dir)], stdout=subprocess.PIPE, text=True
    )
    assert bot.stdout is not None
    assert bot.stdout.readline().strip() == "half of tick 0"
    bot.send_signal(signal.SIGTERM)
    assert bot.stdout.read().strip() == "ticks 1"
    assert bot.wait(timeout=60) == 0
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=base_dir)
    restored = await session.start()
    assert restored.pair("BTCUSDT", "trend").signal is not None
    assert [key for key, _ in restored.risk_positions] == ["s0"]
    assert restored.inconsistencies() == []
    await session.aclose()


# -- a session owns its backend ------------------------------------------------------------

CONFIGURED_AWAY_BOT = """
import asyncio, sys, persistkit
from persistkit import LiveSession, PersistSignalAdapter
from persistkit.models import SignalRow

async def main():
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=sys.argv[1])
    await session.start()
    persistkit.configure(mode="backtest")  # elsewhere in the process: a report, a test helper
    async with session.tick():
        row = SignalRow(id="after-configure", symbol="BTCUSDT", strategy_name="trend",
                        position="long", price_open=100.0, price_take_profit=110.0,
                        price_stop_loss=95.0, scheduled_at=1, pending_at=2)
        await PersistSignalAdapter.write_signal_data(row, "BTCUSDT", "trend")
    await session.aclose()
    print("acknowledged", flush=True)

asyncio.run(main())
"""


async def test_a_configure_elsewhere_does_not_move_a_running_sessions_ticks(
    data_root: Path,
) -> None:
    bot = subprocess.run(
        [sys.executable, "-c", CONFIGURED_AWAY_BOT, str(data_root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bot.returncode == 0, bot.stderr
    assert bot.stdout.strip() == "acknowledged"
    restarted = LiveSession([("BTCUSDT", "trend")], "main", base_dir=data_root)
    restored = await restarted.start()
    signal_state = restored.pair("BTCUSDT", "trend").signal
    assert signal_state is not None and signal_state.id == "after-configure"
    await restarted.aclose()


def trend_row(symbol: str, signal_id: str) -> SignalRow:
    return signal_row(signal_id).model_copy(update={"symbol": symbol})


async def test_two_sessions_in_one_process_never_write_into_each_other(tmp_path: Path) -> None:
    root_a, root_b = tmp_path / "bot-a", tmp_path / "bot-b"
    bot_a = LiveSession([("BTCUSDT", "trend")], "main", base_dir=root_a)
    bot_b = LiveSession([("BTCUSDT", "trend")], "main", base_dir=root_b)
    await bot_a.start()
    await bot_b.start()  # configures root_b process-wide; bot A's ticks must not care

    async def tick(session: LiveSession, symbol_id: str, fail: bool) -> None:
        async with session.tick():
            await asyncio.sleep(0.01)  # the other bot's tick runs meanwhile
            await PersistSignalAdapter.write_signal_data(
                trend_row("BTCUSDT", symbol_id), "BTCUSDT", "trend"
            )
            await asyncio.sleep(0.01)
            if fail:
                raise RuntimeError("bot A's exchange is down")

    results = await asyncio.gather(
        tick(bot_a, "from-a", fail=True), tick(bot_b, "from-b", fail=False), return_exceptions=True
    )
    assert isinstance(results[0], RuntimeError) and results[1] is None
    signal_file = Path("signal/BTCUSDT_trend/BTCUSDT.json")
    await bot_b.aclose()  # every commit in the entity files
    assert json.loads((root_b / signal_file).read_text())["id"] == "from-b"
    assert not (root_a / signal_file).exists()  # A's tick raised: nothing anywhere

    await tick(bot_a, "from-a", fail=False)
    await bot_a.aclose()
    assert json.loads((root_a / signal_file).read_text())["id"] == "from-a"
    assert json.loads((root_b / signal_file).read_text())["id"] == "from-b"


async def test_a_write_a_tick_cannot_commit_is_refused_and_the_tick_commits_nothing(
    tmp_path: Path, data_root: Path
) -> None:
    elsewhere = MemoryBackend("elsewhere")

    class ElsewhereStore(PersistBase[Any]):
        """A swapped adapter that keeps its state on a backend of its own."""

        def __init__(self, entity_name: str, base_dir: str) -> None:
            super().__init__(entity_name, base_dir, backend=elsewhere)

    other_root: PersistBase[Any] = PersistBase("fills", tmp_path / "other-root")
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=data_root)
    await session.start()
    PersistScheduleAdapter.use_persist_schedule_adapter(ElsewhereStore)
    try:

        async def tick_with_swapped_adapter() -> None:
            async with session.tick():
                await PersistSignalAdapter.write_signal_data(
                    trend_row("BTCUSDT", "s1"), "BTCUSDT", "trend"
                )
                scheduled = ScheduledSignalRow(**trend_row("BTCUSDT", "s1").model_dump())
                await PersistScheduleAdapter.write_schedule_data(scheduled, "BTCUSDT", "trend")

        with pytest.raises(CrossBackendError, match="cannot span two backends"):
            await tick_with_swapped_adapter()
    finally:
        PersistScheduleAdapter.use_persist_schedule_adapter(PersistBase)
    assert [key async for key in elsewhere.scan("", recursive=True)] == []

    async def tick_with_store_outside_the_root() -> None:
        async with session.tick():
            await PersistSignalAdapter.write_signal_data(
                trend_row("BTCUSDT", "s2"), "BTCUSDT", "trend"
            )
            await other_root.write_value("fill-1", {"qty": 1})

    with pytest.raises(CrossBackendError):
        await tick_with_store_outside_the_root()
    await session.aclose()
    assert not (tmp_path / "other-root").exists()
    assert not (data_root / "signal" / "BTCUSDT_trend" / "BTCUSDT.json").exists()


async def test_a_live_session_on_a_memory_backend_warns_that_its_state_dies_with_it(
    data_root: Path,
) -> None:
    logged: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = logged.append  # type: ignore[method-assign]
    logger = logging.getLogger("persistkit")
    level = logger.level
    logger.setLevel(logging.WARNING)  # whatever an earlier test left it at
    logger.addHandler(handler)
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=data_root, backend="memory://")
    try:
        with pytest.warns(RuntimeWarning, match="dies with it"):
            await session.start()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any("dies with it" in record.getMessage() for record in logged)
    await session.aclose()
    durable = LiveSession([("BTCUSDT", "trend")], "main", base_dir=data_root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file backend: no such warning
        await durable.start()
    await durable.aclose()


# -- limits are typed errors ---------------------------------------------------------------

MANY_PAIRS_BOT = """
import asyncio, resource, sys
from persistkit import LiveSession, PersistSignalAdapter
from persistkit.models import SignalRow

resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
PAIRS = [(f"SYM{n}USDT", "grid") for n in range(int(sys.argv[2]))]

async def main():
    session = LiveSession(PAIRS, "main", base_dir=sys.argv[1])
    restored = await session.start()
    held = sum(state.signal is not None for state in restored.pairs)
    async with session.tick():
        for symbol, strategy in PAIRS[::50]:
            row = SignalRow(id=f"{symbol}-{sys.argv[3]}", symbol=symbol, strategy_name=strategy,
                            position="long", price_open=100.0, price_take_profit=110.0,
                            price_stop_loss=95.0, scheduled_at=1, pending_at=2)
            await PersistSignalAdapter.write_signal_data(row, symbol, strategy)
    print("restored", held, "ticked", flush=True)
    if sys.argv[4] == "hold":
        await asyncio.sleep(600)
    await session.aclose()
    print("closed", flush=True)

asyncio.run(main())
"""


def test_5000_pairs_run_under_ulimit_n_1024_and_a_second_process_is_told_the_holder(
    tmp_path: Path,
) -> None:
    root = str(tmp_path / "data")
    first = subprocess.run(
        [sys.executable, "-c", MANY_PAIRS_BOT, root, "5000", "first", "close"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.split() == ["restored", "0", "ticked", "closed"]
    holder = subprocess.Popen(
        [sys.executable, "-c", MANY_PAIRS_BOT, root, "5000", "second", "hold"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().split() == ["restored", "100", "ticked"]
        second = subprocess.run(  # one pair of the 5,000, from a third process
            [
                sys.executable,
                "-c",
                HOLDER.replace('("BTCUSDT", "trend")], "main"', '("SYM4999USDT", "grid")], "side"'),
                root,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode != 0
        assert "InstanceLockedError" in second.stderr
        assert f"pid {holder.pid}" in second.stderr
        assert "pair-SYM4999USDT_grid" in second.stderr
    finally:
        holder.kill()
        holder.wait()
    assert len(os.listdir(tmp_path / "data" / ".locks")) <= 2  # one lock file, the holders


OUT_OF_DESCRIPTORS = """
import asyncio, os, resource, sys
from persistkit import LiveSession, PersistError

resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

async def main():
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=sys.argv[1])
    hog = []
    try:
        while True:  # a process that leaks descriptors, or a limit set too low
            hog.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    os.close(hog.pop())  # one left: the session needs more than that somewhere
    try:
        await session.start()
    except PersistError as exc:
        print(type(exc).__name__, exc, flush=True)
        return
    print("started", flush=True)

asyncio.run(main())
"""


def test_running_out_of_descriptors_at_start_is_a_persist_error_naming_the_limit(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", OUT_OF_DESCRIPTORS, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ResourceLimitError"), result.stdout
    assert "ulimit -n" in result.stdout
    assert "soft limit 64" in result.stdout


async def test_the_longest_names_keep_every_derived_file_name_under_255_bytes(
    data_root: Path,
) -> None:
    symbol, strategy = "S" * 198, "t"  # the joined pair is exactly MAX_SEGMENT_BYTES
    session = LiveSession([(symbol, strategy)], "r" * 200, base_dir=data_root)
    await session.start()
    async with session.tick():
        await PersistSignalAdapter.write_signal_data(
            trend_row(symbol, "s1").model_copy(update={"strategy_name": strategy}),
            symbol,
            strategy,
        )
    await session.aclose()
    signal_file = data_root / "signal" / f"{symbol}_{strategy}" / f"{symbol}.json"
    signal_file.write_text("{torn")
    restarted = LiveSession([(symbol, strategy)], "r" * 200, base_dir=data_root)
    restored = await restarted.start()  # quarantines the torn file: entry and reason
    assert [finding.key for report in restored.reports for finding in report.corrupt]
    await restarted.aclose()
    names = [path.name for path in data_root.rglob("*")]
    assert any(name.endswith(".reason") for name in names)
    longest = max(names, key=lambda name: len(os.fsencode(name)))
    assert len(os.fsencode(longest)) <= 255, longest


async def test_run_runs_a_tick_again_when_another_tick_won_its_compare_and_set(
    tmp_path: Path,
) -> None:
    base_dir = tmp_path / "data"
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=base_dir)
    await session.start()
    counter: PersistBase[int] = PersistBase("counters", base_dir)
    calls: list[int] = []

    async def tick(number: int) -> None:
        calls.append(number)
        seen = await counter.read_entry("n") if await counter.has_value("n") else None
        if len(calls) == 1:
            # Another writer (a second process would do the same) moves the
            # counter after this tick read it: this tick's write must not land.
            async def other_writer() -> None:
                await counter.update_value("n", lambda n: (n or 0) + 100)

            # A fresh context: outside this tick's transaction, as another process is.
            await asyncio.create_task(other_writer(), context=contextvars.Context())
        await counter.write_value(
            "n", (seen.value if seen else 0) + 1, if_version=seen.version if seen else None
        )

    assert await session.run(tick, interval=0, ticks=1) == 1
    assert calls == [0, 0]  # ran again after losing the race
    assert await counter.read_value("n") == 101  # the other writer's +100, then this tick's +1
    await session.aclose()


# -- leases: the schedule a holder keeps on its own clock (the servers' part: reliability) --


@pytest.mark.parametrize("ttl", [0.5, 1.5, 15.0, 120.0])
def test_a_holder_stops_committing_a_third_of_the_ttl_before_its_lease_can_lapse(
    ttl: float,
) -> None:
    sent_at = 1_000.0  # on lease_clock(), before the request left
    # The backend starts the TTL when it receives the request, never before it was sent.
    earliest_lapse = sent_at + ttl
    deadline = lease_deadline(sent_at, ttl)
    assert deadline == pytest.approx(earliest_lapse - ttl * SAFETY_SHARE)
    # Renewals come early enough that one may fail and be tried again before the deadline.
    assert renewal_due(sent_at, ttl) + ttl * RETRY_SHARE < deadline
    assert renewal_due(sent_at, ttl) > sent_at
    # A waiting instance polls often enough to take over soon after a release, never busily.
    assert 0 < wait_poll_delay(ttl, remaining=60.0) <= min(ttl / 2, 1.0)
    assert wait_poll_delay(ttl, remaining=0.01) == 0.01


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"lease_ttl": 0}, ValueError),
        ({"lease_ttl": -1.0}, ValueError),
        ({"lease_ttl": float("nan")}, ValueError),
        ({"lease_ttl": float("inf")}, ValueError),
        ({"lease_ttl": "15"}, TypeError),
        ({"lease_ttl": True}, TypeError),
        ({"lease_wait": -1}, ValueError),
        ({"lease_wait": float("inf")}, ValueError),
        ({"lease_wait": None}, TypeError),
    ],
)
def test_a_lease_time_that_is_not_a_number_of_seconds_is_refused_before_any_lock(
    data_root: Path, options: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error, match="lease_"):
        LiveSession([("BTCUSDT", "trend")], "main", base_dir=data_root, **options)
    assert not data_root.exists()


async def test_a_session_on_local_files_takes_no_lease_and_its_writes_carry_no_token(
    data_root: Path,
) -> None:
    session = LiveSession([("BTC/USDT", "trend")], "main", base_dir=data_root, lease_ttl=1)
    async with session:
        assert fencing.get() == ()
        async with session.tick():
            assert fencing.get() == ()
            await PersistSignalAdapter.write_signal_data(signal_row("s1"), "BTC/USDT", "trend")
    assert (await PersistSignalAdapter.read_signal_data("BTC/USDT", "trend")) is not None


async def test_lease_wait_also_waits_for_the_local_lock_of_an_instance_on_this_machine(
    tmp_path: Path, holder: subprocess.Popen[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="persistkit")
    session = LiveSession(
        [("BTCUSDT", "trend")], "main", base_dir=tmp_path / "data", lease_wait=120
    )
    starting = asyncio.create_task(session.start())
    while not any("waiting up to" in record.getMessage() for record in caplog.records):
        assert not starting.done(), starting  # it waits, it does not fail fast
        await asyncio.sleep(0.01)
    assert str(holder.pid) in caplog.text  # the log names whom it waits for
    holder.terminate()  # the old instance stops: its lock goes with it
    await starting
    await session.aclose()

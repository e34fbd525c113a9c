"""The blocking API (persistkit.sync): derived twins, one loop thread, threads, forks, signals."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import threading
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import persistkit
from persistkit import sync
from persistkit._domains import partial, risk
from persistkit._domains import signal as signal_domain
from persistkit._store import PersistBase
from persistkit._transaction import Transaction
from persistkit.backends._base import Backend
from persistkit.errors import BlockingCallError, EntityNotFoundError, TickCancelledError
from persistkit.models import RiskActivePosition
from support.servers import RedisServer

REPO = Path(__file__).resolve().parent.parent
TWINS = [
    (Backend, sync.Backend),
    (PersistBase, sync.PersistBase),
    (Transaction, sync.Transaction),
    (persistkit.LiveSession, sync.LiveSession),
    (signal_domain.PersistSignalUtils, sync.PersistSignalUtils),
    (signal_domain.PersistScheduleUtils, sync.PersistScheduleUtils),
    (risk.PersistRiskUtils, sync.PersistRiskUtils),
    (partial.PersistPartialUtils, sync.PersistPartialUtils),
]


def position(signal_id: str) -> RiskActivePosition:
    return RiskActivePosition(
        symbol="BTCUSDT",
        strategy_name="trend",
        signal_id=signal_id,
        position="long",
        price_open=100.0,
        quantity=1.0,
        added_at=1_763_700_000_000,
    )


# -- derived, not copied ----------------------------------------------------------------------


@pytest.mark.parametrize(("async_class", "blocking_class"), TWINS, ids=lambda c: c.__name__)
def test_every_public_method_has_its_blocking_twin_and_nothing_else(
    async_class: type, blocking_class: type
) -> None:
    expected = {sync.blocking_twin_name(name) for name in sync.public_methods(async_class)}
    assert set(sync.public_methods(blocking_class)) == expected
    for name, member in sync.public_methods(async_class).items():
        twin = inspect.getattr_static(blocking_class, sync.blocking_twin_name(name))
        if isinstance(member, property):
            assert isinstance(twin, property)
            continue
        original = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
        twin_function = twin.__func__ if isinstance(twin, classmethod) else twin
        # The body is the async one: the twin only carries the call to the loop.
        assert twin_function.__wrapped__ is original, name
    assert "close" in sync.public_methods(blocking_class) or not hasattr(async_class, "aclose")


def test_an_async_name_on_a_blocking_object_names_its_twin(tmp_path: Path) -> None:
    store = sync.PersistBase("entity", tmp_path / "data")
    with pytest.raises(AttributeError, match=r"its blocking twin is close\(\)"):
        store.aclose  # noqa: B018
    store.close()


# -- one loop thread, kept across calls ---------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def test_redis_works_across_many_blocking_calls(redis_server: RedisServer, tmp_path: Path) -> None:
    """The issue's report: asyncio.run around each call broke on Redis at the second call
    (``Event loop is closed``): the client's connections belonged to the first loop."""
    persistkit.configure(
        mode="live",
        base_dir=tmp_path / "data",
        backend=f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:12]}",
    )
    for round_ in range(30):
        sync.PersistRiskAdapter.write_position_data(
            [(f"s{round_}", position(f"s{round_}"))], "main"
        )
        stored = sync.PersistRiskAdapter.read_position_data("main")
        assert [key for key, _ in stored] == [f"s{round_}"]
    store = sync.PersistBase("entity", tmp_path / "data")
    with sync.transaction():
        store.write_value("a", 1)
        store.write_value("b", 2)
    assert sorted(store.keys()) == ["a", "b"]
    assert "redis://" in store.backend.url
    store.backend.close()


def test_errors_are_the_typed_ones_with_the_loop_threads_frames(tmp_path: Path) -> None:
    store = sync.PersistBase("entity", tmp_path / "data")
    with pytest.raises(EntityNotFoundError) as raised:
        store.read_value("absent")
    frames = traceback.extract_tb(raised.value.__traceback__)
    files = {Path(frame.filename).name for frame in frames}
    assert "_store.py" in files  # where the async core raised it
    assert frames[0].name == "test_errors_are_the_typed_ones_with_the_loop_threads_frames"


def test_iterators_and_returned_async_objects_are_blocking(tmp_path: Path) -> None:
    store = sync.PersistBase("entity", tmp_path / "data")
    for index in range(5):
        store.write_value(index, {"i": index})
    keys = store.keys()
    assert isinstance(keys, sync.BlockingIterator)
    assert sorted(keys) == ["0", "1", "2", "3", "4"]
    assert sorted(value["i"] for value in store.filter(lambda v: v["i"] % 2 == 0)) == [0, 2, 4]
    backend = store.backend
    assert isinstance(backend, sync.Backend)
    assert sorted(backend.scan("entity")) == [f"entity/{i}" for i in range(5)]
    assert backend.get("entity/0").data == b'{"i":0}'


# -- refused inside a running event loop ----------------------------------------------------------


async def test_a_blocking_call_inside_a_running_loop_is_refused(tmp_path: Path) -> None:
    store = await asyncio.to_thread(sync.PersistBase, "entity", tmp_path / "data")
    with pytest.raises(BlockingCallError, match="running event loop"):
        store.write_value("a", 1)
    with pytest.raises(BlockingCallError):
        sync.PersistBase("other", tmp_path / "data")
    # From a thread it works, and nothing was written by the refused call.
    assert await asyncio.to_thread(store.has_value, "a") is False


def test_a_blocking_call_from_a_callback_on_the_loop_thread_is_refused(tmp_path: Path) -> None:
    store = sync.PersistBase("entity", tmp_path / "data")
    store.write_value("n", 1)
    with pytest.raises(BlockingCallError):
        store.update_value("n", lambda n: store.read_value("n") + 1)
    assert store.read_value("n") == 1


# -- several threads ---------------------------------------------------------------------------


def test_threads_updating_one_key_lose_nothing(tmp_path: Path) -> None:
    store = sync.PersistBase("entity", tmp_path / "data")
    threads, increments = 8, 25

    def worker() -> None:
        for _ in range(increments):
            store.update_value("counter", lambda n: (n or 0) + 1)

    running = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    assert store.read_value("counter") == threads * increments


def test_each_thread_has_its_own_transaction(tmp_path: Path) -> None:
    store = sync.PersistBase("entity", tmp_path / "data")
    staged, checked = threading.Event(), threading.Event()
    seen_by_other: list[bool] = []

    def other_thread() -> None:
        staged.wait()
        seen_by_other.append(store.has_value("staged"))
        store.write_value("outside", 1)  # not part of the first thread's commit
        checked.set()

    def failing_tick() -> None:
        with sync.transaction():
            store.write_value("staged", 1)
            assert store.has_value("staged")
            staged.set()
            checked.wait()
            raise RuntimeError("tick failed")

    thread = threading.Thread(target=other_thread)
    thread.start()
    with pytest.raises(RuntimeError, match="tick failed"):
        failing_tick()
    thread.join()
    assert seen_by_other == [False]
    assert not store.has_value("staged")  # rolled back with the block
    assert store.read_value("outside") == 1


# -- fork ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_gets_its_own_loop_thread(tmp_path: Path) -> None:
    store = sync.PersistBase("entity", tmp_path / "data")
    store.write_value("parent", 1)  # the parent's loop thread is running now
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            store.write_value("child", store.read_value("parent") + 1)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.read_value("child") == 2
    store.write_value("parent", 3)  # the parent's loop thread is untouched
    assert store.read_value("parent") == 3


# -- the live session --------------------------------------------------------------------------


def test_session_tick_commits_a_blocking_block_atomically(tmp_path: Path) -> None:
    session = sync.LiveSession([("BTCUSDT", "trend")], "main", base_dir=tmp_path / "data")
    state = session.start()
    assert state.risk_positions == []
    with session.tick():
        sync.PersistRiskAdapter.write_position_data([("s1", position("s1"))], "main")

    def crashing_tick() -> None:
        with session.tick():
            sync.PersistRiskAdapter.write_position_data([], "main")
            raise RuntimeError("strategy crashed")

    with pytest.raises(RuntimeError, match="strategy crashed"):
        crashing_tick()
    session.close()
    again = sync.LiveSession([("BTCUSDT", "trend")], "main", base_dir=tmp_path / "data")
    with again:
        assert [key for key, _ in again.restored.risk_positions] == ["s1"]


def test_run_calls_a_blocking_tick_inside_its_commit(tmp_path: Path) -> None:
    session = sync.LiveSession([("BTCUSDT", "trend")], "main", base_dir=tmp_path / "data")
    session.start()
    counter = sync.PersistBase("bot", tmp_path / "data")
    acknowledged: list[int] = []

    def tick(count: int) -> None:
        counter.update_value("ticks", lambda n: (n or 0) + 1)
        sync.PersistRiskAdapter.write_position_data([(f"s{count}", position(f"s{count}"))], "main")
        if count == 3:
            raise RuntimeError("tick 3 failed")

    with pytest.raises(RuntimeError, match="tick 3 failed"):
        session.run(tick, interval=0, stop_signals=(), after_commit=acknowledged.append)
    assert acknowledged == [0, 1, 2]
    assert counter.read_value("ticks") == 3  # the failed tick committed nothing
    assert [key for key, _ in sync.PersistRiskAdapter.read_position_data("main")] == ["s2"]
    assert session.run(tick, interval=0, ticks=2, stop_signals=()) == 2
    session.close()


def test_run_away_from_the_main_thread_needs_no_signals(tmp_path: Path) -> None:
    session = sync.LiveSession([("BTCUSDT", "trend")], "main", base_dir=tmp_path / "data")
    session.start()
    outcome: list[object] = []

    def in_a_thread() -> None:
        try:
            session.run(lambda count: None, interval=0, ticks=1)
        except ValueError as exc:
            outcome.append(exc)
        outcome.append(session.run(lambda count: None, interval=0, ticks=2, stop_signals=()))

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert "main thread" in str(outcome[0]) and outcome[1] == 2
    session.close()


def run_bot(base_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(REPO / "examples" / "sync_bot.py"),
            "--base-dir",
            str(base_dir),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_on_the_main_thread_stops_run_after_the_tick_commits(
    tmp_path: Path, signum: signal.Signals
) -> None:
    bot = run_bot(tmp_path / "data", "--interval", "0.01")
    assert bot.stdout is not None
    for line in bot.stdout:
        if line.startswith("tick 5 committed"):
            break
    bot.send_signal(signum)
    out, err = bot.communicate(timeout=60)
    assert bot.returncode == 0, out + err
    committed = [line for line in out.splitlines() if line.endswith(" committed")]
    last = int(committed[-1].split()[1]) if committed else 5
    assert f"stopped cleanly after tick {last}" in out
    again = run_bot(tmp_path / "data", "--ticks", "1")
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert f"restored at tick {last}:" in out  # every committed tick, nothing more


HUNG_BOT = """
import signal, sys, threading
from persistkit import sync
session = sync.LiveSession([("BTCUSDT", "trend")], "main", base_dir=sys.argv[1])
session.start()
def tick(count):
    if count == 1:
        print("hung", flush=True)
        threading.Event().wait()  # an exchange call that never returns
try:
    session.run(tick, interval=0, stop_grace=0.1)
except Exception as exc:
    print(type(exc).__name__, exc.tick, flush=True)
    sys.exit(3)
"""


def test_a_hung_tick_does_not_keep_run_from_stopping(tmp_path: Path) -> None:
    bot = subprocess.Popen(
        [sys.executable, "-c", HUNG_BOT, str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert bot.stdout is not None
    assert bot.stdout.readline() == "hung\n"
    bot.send_signal(signal.SIGTERM)  # the stop grace then runs out: the tick is cancelled
    out, err = bot.communicate(timeout=60)
    assert bot.returncode == 3, out + err
    assert f"{TickCancelledError.__name__} 1" in out

"""Stopping a live bot never needs SIGKILL, with real bot processes and real signals.

A first SIGTERM or SIGINT lets the tick in progress commit (tests/test_live_session.py).
Here the tick never finishes: a second signal, or the stop grace, cancels it
before its commit, the process exits non-zero saying so, nothing of that tick is
committed and the locks are free. A tick whose commit is already under way
(held up by the journal lock, which this test holds) still commits.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import pytest

from persistkit import FileBackend, LiveSession, PersistBase, TickCancelledError

PAIR = ("BTCUSDT", "trend")

# Ticks 0 and 1 commit; tick 2 writes, then awaits something that never returns.
HANGING_BOT = """
import asyncio, logging, sys
from persistkit import LiveSession, PersistBase, TickCancelledError

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

async def main():
    base_dir, grace = sys.argv[1], sys.argv[2]
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=base_dir)
    await session.start()
    progress = PersistBase("bot", base_dir)

    async def tick(number):
        await progress.write_value(f"tick-{number}", number)
        if number == 2:
            print("hanging in tick 2", flush=True)
            await asyncio.Event().wait()

    try:
        await session.run(tick, interval=0, stop_grace=None if grace == "none" else float(grace))
    except TickCancelledError:
        # Released by run(), not by the process's exit: this process can lock them again.
        again = LiveSession([("BTCUSDT", "trend")], "main", base_dir=base_dir)
        await again.start()
        await again.aclose()
        print("locks free before the exit", flush=True)
        raise

asyncio.run(main())
"""

# One tick, whose commit waits for the journal lock the test holds.
COMMITTING_BOT = """
import asyncio, logging, sys
from persistkit import LiveSession, PersistBase

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

async def main():
    base_dir = sys.argv[1]
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=base_dir)
    await session.start()
    progress = PersistBase("bot", base_dir)

    async def tick(number):
        await progress.write_value("committed-while-stopping", number)
        print("committing", flush=True)  # the commit begins as this returns

    ran = await session.run(tick, interval=0, stop_grace=None)
    print("ticks", ran, flush=True)

asyncio.run(main())
"""


def start_bot(script: str, *args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(stream: IO[str] | None, fragment: str) -> list[str]:
    """Lines of ``stream`` up to the first that holds ``fragment`` (the bot's own pace)."""
    assert stream is not None
    lines = []
    for line in stream:
        lines.append(line)
        if fragment in line:
            return lines
    raise AssertionError(f"the bot ended without printing {fragment!r}: {''.join(lines)}")


def finish(bot: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Wait for the bot to exit: generous, since a slow machine is no failure."""
    try:
        out, err = bot.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        bot.kill()
        out, err = bot.communicate()
        raise AssertionError(f"the bot did not stop without SIGKILL:\n{err}") from None
    return bot.returncode, out, err


async def committed_ticks(root: Path) -> dict[str, Any]:
    """What a new session restores: it starts only if the locks are free."""
    session = LiveSession([PAIR], "main", base_dir=root)
    await session.start()
    try:
        store: PersistBase[int] = PersistBase("bot", root)
        return {key: await store.read_value(key) async for key in store.keys()}
    finally:
        await session.aclose()


@pytest.fixture
def hung_bot(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    root = tmp_path / "data"
    bot = start_bot(HANGING_BOT, root, request.param)
    read_until(bot.stdout, "hanging in tick 2")
    yield root, bot
    if bot.poll() is None:
        bot.kill()
        bot.wait()


async def assert_cancelled(bot: subprocess.Popen[str], root: Path, reason: str) -> None:
    """The bot exits non-zero saying why, its locks free; ticks 0 and 1 committed, 2 not."""
    code, out, err = finish(bot)
    assert code != 0, err
    assert "locks free before the exit" in out
    last = err.strip().splitlines()[-1]
    assert last.startswith("persistkit.errors.TickCancelledError: "), err
    assert "before tick 2 finished" in last and reason in last, last
    assert "nothing of it was committed" in last and "locks are released" in last
    assert await committed_ticks(root) == {"tick-0": 0, "tick-1": 1}


@pytest.mark.parametrize(
    ("hung_bot", "second_signal", "reason"),
    [
        ("none", signal.SIGINT, "a second stop signal (SIGINT) arrived"),
        ("0.5", None, "the stop grace of 0.5 s after SIGTERM ran out"),
    ],
    ids=["second-signal", "stop-grace"],
    indirect=["hung_bot"],
)
async def test_a_hung_tick_is_cancelled_before_its_commit(
    hung_bot: tuple[Path, subprocess.Popen[str]],
    second_signal: signal.Signals | None,
    reason: str,
) -> None:
    root, bot = hung_bot
    bot.send_signal(signal.SIGTERM)
    if second_signal is not None:
        # The first signal waits for the tick, as ever; once it is seen, the second.
        read_until(bot.stderr, "SIGTERM: stopping")
        bot.send_signal(second_signal)
    await assert_cancelled(bot, root, reason)


async def test_a_commit_under_way_at_the_second_signal_still_commits(tmp_path: Path) -> None:
    root = tmp_path / "data"
    async with LiveSession([PAIR], "main", base_dir=root) as first, first.tick():
        await PersistBase[int]("bot", root).write_value("earlier", 1)
    # The root as any bot leaves it: .journal/lock exists from here on.
    lock_fd = os.open(root / ".journal" / "lock", os.O_RDWR)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)  # the bot's commit waits for this lock
    try:
        bot = start_bot(COMMITTING_BOT, root)
        read_until(bot.stdout, "committing")
        bot.send_signal(signal.SIGTERM)
        read_until(bot.stderr, "SIGTERM: stopping")
        bot.send_signal(signal.SIGINT)
        read_until(bot.stderr, "tick 0 is committing, its commit is left to finish")
    finally:
        os.close(lock_fd)  # releases the flock: the commit goes through
    code, out, err = finish(bot)
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "ticks 1"
    assert await committed_ticks(root) == {"earlier": 1, "committed-while-stopping": 0}


async def test_a_tick_that_swallows_its_cancellation_commits_nothing(data_root: Path) -> None:
    """In-process: the tick catches CancelledError and returns; its commit is refused."""
    session = LiveSession([PAIR], "main", base_dir=data_root)
    await session.start()
    store: PersistBase[int] = PersistBase("bot", data_root)
    hanging = asyncio.Event()

    async def tick(number: int) -> None:
        await store.write_value(f"tick-{number}", number)
        if number == 1:
            hanging.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await store.write_value("after-cancel", 1)  # and returns as if nothing happened

    async def signal_twice() -> None:
        await hanging.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = asyncio.ensure_future(signal_twice())
    with pytest.raises(TickCancelledError) as raised:
        await session.run(tick, interval=0, stop_grace=None)
    await stopper
    assert raised.value.tick == 1
    assert "a second stop signal (SIGTERM)" in raised.value.reason
    reader: PersistBase[int] = PersistBase("bot", backend=FileBackend(data_root, read_only=True))
    assert sorted([key async for key in reader.keys()]) == ["tick-0"]
    assert await committed_ticks(data_root) == {"tick-0": 0}


async def test_a_negative_stop_grace_is_refused(data_root: Path) -> None:
    session = LiveSession([PAIR], "main", base_dir=data_root)
    await session.start()
    try:
        with pytest.raises(ValueError, match="stop_grace"):
            await session.run(lambda _: asyncio.sleep(0), stop_grace=-1)
    finally:
        await session.aclose()

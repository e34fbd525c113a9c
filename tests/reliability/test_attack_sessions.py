"""Second attack round on issue 11: sessions, the command line beside a bot, symlinks, ticks.

Each test is one break found by trying what an attacker or an operator on call
would try, with real second processes (``sys.executable``) where another
process is involved, real ``SIGTERM``s and real files.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from persistkit import FileBackend, LiveSession, LockTimeoutError, PersistBase

pytestmark = pytest.mark.usefixtures("count_in_the_report")
REPORT_AS = "operator and attacker, second round (issue 11 review)"
REPORT_INJECTION = (
    "a live bot in a second process ticks while the command line exports or imports, "
    "a .locks folder is a link outside the root, ticks hold two compare-and-sets or "
    "spawn tasks, and a session starts in a backtesting process"
)

BOT = r"""
import asyncio, sys
from persistkit import LiveSession, PersistBase, PersistRiskAdapter, PersistSignalAdapter
from persistkit.models import RiskActivePosition, SignalRow

root, ticks, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])


def row(i):
    return SignalRow(
        id=f"s{i}", symbol="BTC", strategy_name="t", position="long", price_open=1.0 + i,
        price_take_profit=2.0 + i, price_stop_loss=0.5, scheduled_at=1, pending_at=2,
    )


async def main():
    session = LiveSession([("BTC", "t")], "main", base_dir=root)
    state = await session.start()
    signal = state.pairs[0].signal
    start = 0 if signal is None or not signal.id.startswith("s") else int(signal.id[1:]) + 1
    print("START", signal.id if signal else None, flush=True)
    fills = PersistBase("fills", base_dir=root)

    async def tick(k):
        i = start + k
        await PersistSignalAdapter.write_signal_data(row(i), "BTC", "t")
        position = RiskActivePosition(
            symbol="BTC", strategy_name="t", signal_id=f"s{i}", position="long",
            price_open=1.0 + i, quantity=1, added_at=1,
        )
        await PersistRiskAdapter.write_position_data([(f"BTC:s{i}", position)], "main")
        await fills.write_value("n", i)

    await session.run(
        tick, interval=interval, ticks=ticks,
        after_commit=lambda k: print("ACK", start + k, flush=True),
    )
    await session.aclose()


asyncio.run(main())
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _bot(tmp_path: Path, root: Path, ticks: int, interval: float) -> subprocess.Popen[str]:
    script = tmp_path / "bot.py"
    script.write_text(BOT)
    bot = subprocess.Popen(
        [sys.executable, str(script), str(root), str(ticks), str(interval)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert bot.stdout is not None
    line = bot.stdout.readline()
    assert line.startswith("START"), (line, bot.stderr.read() if bot.poll() is not None else "")
    return bot


def _cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "persistkit", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
    )


def _stop(bot: subprocess.Popen[str]) -> str:
    bot.terminate()
    try:
        out, _ = bot.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        bot.kill()
        out, _ = bot.communicate()
    return out


def _snapshot(folder: Path) -> dict[str, tuple[int, int, bytes | None]]:
    found = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        found[str(path.relative_to(folder))] = (info.st_mode, info.st_mtime_ns, data)
    return found


# -- transactions ------------------------------------------------------------------------


async def test_a_tick_with_two_compare_and_sets_in_one_store_commits(tmp_path: Path) -> None:
    """A tick that update_values two keys of one store: it must commit, not wait on itself.

    The commit locks the entity directory once per compare-and-set key, each
    time through a new descriptor; ``flock`` on the second descriptor waits for
    the first, held by the same commit. The tick fails with LockTimeoutError
    after ``lock_timeout`` ("held by another process": there is none).
    """
    root = tmp_path / "root"
    session = LiveSession(
        [("BTC", "t")], "main", backend=FileBackend(root, lock_timeout=2.0), base_dir=root
    )
    await session.start()
    try:
        counters = PersistBase("counters", base_dir=root)
        started = time.monotonic()
        try:
            async with session.tick():
                await counters.update_value("orders", lambda n: (n or 0) + 1)
                await counters.update_value("fills", lambda n: (n or 0) + 1)
        except LockTimeoutError as exc:
            pytest.fail(
                f"one tick, one process, two update_value calls on one store: "
                f"{exc} after {time.monotonic() - started:.1f} s"
            )
        assert await counters.read_value("orders") == 1
        assert await counters.read_value("fills") == 1
    finally:
        await session.aclose()


# -- a session owns its backend ----------------------------------------------------------


async def test_a_task_spawned_in_a_tick_reads_what_later_ticks_committed(tmp_path: Path) -> None:
    """A task created inside a tick keeps reading that tick's staged values after it ended.

    The task inherits the tick's transaction in its context; every read looks
    at its staged writes first, so a watcher started in tick 1 reads tick 1's
    value forever, after ticks 2, 3 and 4 committed others (and the discarded
    value of a tick that raised).
    """
    session = LiveSession([("BTC", "t")], "main", base_dir=tmp_path / "root")
    await session.start()
    try:
        store = PersistBase("fills", base_dir=tmp_path / "root")
        seen: list[int] = []
        stop = asyncio.Event()

        async def watcher() -> None:
            for _ in range(200):  # bounded
                if stop.is_set():
                    return
                try:
                    seen.append(await store.read_value("n"))
                except KeyError:
                    # Read while tick 1 commits: before it, there is no value yet.
                    seen.append(0)
                await asyncio.sleep(0.005)

        async with session.tick():
            await store.write_value("n", 1)
            task = asyncio.create_task(watcher())
        for n in (2, 3, 4):
            async with session.tick():
                await store.write_value("n", n)
            await asyncio.sleep(0.03)
        stop.set()
        await task
        assert await store.read_value("n") == 4
        assert seen[-1] == 4, f"the task read {seen[-5:]} after tick 4 committed 4"
    finally:
        await session.aclose()


@pytest.mark.parametrize("command", ["import", "migrate"])
def test_an_overwrite_into_the_root_of_a_running_bot_is_refused_or_kept(
    tmp_path: Path, command: str
) -> None:
    """import/migrate --overwrite into a root whose bot runs: refused (exit 1), or the fix stays.

    Salvage refuses beside a running session; these do not. They report
    success (exit 0), and the bot's next tick replaces the operator's fix
    without a word: after a restart the bot has its own value, not the fix.
    """
    root = tmp_path / "root"
    bot = _bot(tmp_path, root, 100_000, 0.05)
    try:
        time.sleep(0.5)
        fix = {"id": "operator-fix", "symbol": "BTC", "strategyName": "t", "position": "short"}
        fix |= {"priceOpen": 9.0, "priceTakeProfit": 8.0, "priceStopLoss": 10.0}
        fix |= {"scheduledAt": 1, "pendingAt": 2, "minuteEstimatedTime": 60}
        line = {"key": "signal/BTC_t/BTC", "value": fix}
        if command == "import":
            source = tmp_path / "fix.jsonl"
            source.write_text(json.dumps(line) + "\n")
            done = _cli("import", str(source), str(root), "--overwrite")
        else:
            source = tmp_path / "fix-root"
            (source / "signal" / "BTC_t").mkdir(parents=True)
            (source / "signal" / "BTC_t" / "BTC.json").write_text(json.dumps(fix))
            done = _cli("migrate", str(source), str(root), "--overwrite")
        time.sleep(0.3)
    finally:
        _stop(bot)
    restarted = _bot(tmp_path, root, 0, 0)
    first, _ = restarted.communicate(timeout=20)
    restored = "operator-fix" if "operator-fix" in first else "the bot's own"
    assert done.returncode == 1 or restored == "operator-fix", (
        f"{command} --overwrite beside a running bot exited {done.returncode} "
        f"({done.stdout.strip().splitlines()[-1:]}); after a restart the bot has "
        f"{restored} signal"
    )


def test_an_export_during_ticks_holds_whole_ticks(tmp_path: Path) -> None:
    """export while the bot ticks: the signal, its risk position and the fill of one tick.

    Every tick writes all three in one commit. Read key by key (as export did
    before issue 12), a file could hold a signal of one tick and the risk
    position of another: a backup that, imported, is a signal without its risk
    position. Export reads at one commit point now.
    """
    root = tmp_path / "root"
    bot = _bot(tmp_path, root, 1_000_000, 0)
    torn = []
    try:
        for attempt in range(12):  # bounded: each export is one subprocess
            path = tmp_path / f"export-{attempt}.jsonl"
            done = _cli("export", str(root), str(path))
            assert done.returncode == 0, done.stderr
            values = {}
            for text in path.read_text().splitlines():
                item = json.loads(text)
                values[item["key"]] = item["value"]
            signal = values["signal/BTC_t/BTC"]["id"]
            position = values["risk/main/positions"][0][1]["signalId"]
            fill = f"s{values['fills/n']}"
            if len({signal, position, fill}) > 1:
                torn.append((signal, position, fill))
                break
    finally:
        _stop(bot)
    assert not torn, f"an export holds (signal, risk position, fill) of different ticks: {torn}"


# -- symlinks ------------------------------------------------------------------------------


def test_salvage_reads_nothing_through_a_locks_folder_linked_outside(tmp_path: Path) -> None:
    """.locks is a link to a folder outside the root: salvage must not read what is there.

    ``running_sessions`` lists ``.locks`` and reads ``.locks/holders/*.json``
    through the link, and refuses the salvage naming a "live session" that a
    file outside the root describes.
    """
    root = tmp_path / "root"
    bot = _bot(tmp_path, root, 3, 0)
    bot.communicate(timeout=20)
    outside = tmp_path / "outside"
    (outside / "holders").mkdir(parents=True)
    forged = {"pid": os.getpid(), "host": socket.gethostname(), "since": "from-outside"}
    forged |= {"token": "0ut51de", "locks": ["pair-BTC_t"]}
    (outside / "holders" / "0ut51de.json").write_text(json.dumps(forged))
    (outside / "sessions.lock").write_text("")
    (root / ".locks").rename(tmp_path / "locks.moved")
    (root / ".locks").symlink_to(outside)
    before = _snapshot(outside)
    with open(outside / "sessions.lock") as held:  # someone outside holds a lock there
        fcntl.flock(held, fcntl.LOCK_SH)
        done = _cli("journal", "salvage", str(root))
    said = done.stdout + done.stderr
    assert _snapshot(outside) == before
    assert "from-outside" not in said and "0ut51de" not in said, (
        f"salvage read a holder file outside the root (exit {done.returncode}): {said.strip()}"
    )

"""The command line's writes beside a real, running bot (a second process ticking a LiveSession).

A change to a root a live session holds is refused (exit 1, nothing written,
the holder named) unless ``--force``; a forced change is committed like one of
the bot's ticks, so that after the bot is killed with ``kill -9`` and restarted
the operator's change is still there.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from persistkit import FileBackend
from persistkit._cli.status import SessionHolder, refuse_beside_running_sessions, session_locks
from persistkit._cli.targets import CommandError
from persistkit.backends._base import Lease
from persistkit.backends._memory import MemoryBackend
from test_cli import run_cli

pytestmark = pytest.mark.usefixtures("count_in_the_report")
REPORT_AS = "the command line beside a running bot (issue 12)"
REPORT_INJECTION = (
    "a live session ticks in a second process while import, migrate, quarantine restore "
    "and purge run against its root, with and without --force; the bot is then killed "
    "with SIGKILL and restarted"
)

BOT = r"""
import asyncio, sys
from persistkit import LiveSession, PersistBase, PersistRiskAdapter, PersistSignalAdapter
from persistkit.models import RiskActivePosition, SignalRow

root, ticks = sys.argv[1], int(sys.argv[2])


async def main():
    session = LiveSession([("BTC", "t")], "main", base_dir=root)
    state = await session.start()
    signal = state.pairs[0].signal
    print("START", signal.id if signal else None, flush=True)
    fills = PersistBase("fills", base_dir=root)

    async def tick(k):
        if k == 0 and signal is None:  # the bot opens its signal once, then only fills
            row = SignalRow(
                id="bot-signal", symbol="BTC", strategy_name="t", position="long",
                price_open=1.0, price_take_profit=2.0, price_stop_loss=0.5,
                scheduled_at=1, pending_at=2,
            )
            await PersistSignalAdapter.write_signal_data(row, "BTC", "t")
            position = RiskActivePosition(
                symbol="BTC", strategy_name="t", signal_id="bot-signal", position="long",
                price_open=1.0, quantity=1, added_at=1,
            )
            await PersistRiskAdapter.write_position_data([("BTC:bot-signal", position)], "main")
        await fills.write_value("n", k)

    await session.run(
        tick, interval=0.02, ticks=ticks, after_commit=lambda k: print("ACK", k, flush=True)
    )
    await session.aclose()


asyncio.run(main())
"""

SIGNAL_KEY = "signal/BTC_t/BTC"
FIX = {
    "id": "operator-fix",
    "symbol": "BTC",
    "strategyName": "t",
    "position": "short",
    "priceOpen": 9.0,
    "priceTakeProfit": 8.0,
    "priceStopLoss": 10.0,
    "scheduledAt": 1,
    "pendingAt": 2,
    "minuteEstimatedTime": 60,
}


class Bot:
    """The bot script in its own process; ``acks`` waits for its committed ticks."""

    def __init__(self, tmp_path: Path, root: Path, ticks: int) -> None:
        script = tmp_path / "bot.py"
        script.write_text(BOT)
        self.process = subprocess.Popen(
            [sys.executable, str(script), str(root), str(ticks)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.stdout = self.process.stdout
        self.started = self.stdout.readline().split()
        assert self.started[:1] == ["START"], self._failure()

    def _failure(self) -> str:
        if self.process.poll() is None:
            return "the bot is still running"
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def wait_for_ticks(self, count: int) -> None:
        """Read until ``count`` more ticks are committed (bounded by the bot's output)."""
        for _ in range(count):
            line = self.stdout.readline()
            assert line.startswith("ACK"), (line, self._failure())

    def kill_9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=20)
        self.process.stdout and self.process.stdout.close()
        self.process.stderr and self.process.stderr.close()


@pytest.fixture
def bot(tmp_path: Path, data_root: Path) -> Iterator[Bot]:
    """A bot ticking on ``data_root``: its signal committed, then one fill per tick."""
    running = Bot(tmp_path, data_root, ticks=1_000_000)
    try:
        running.wait_for_ticks(2)
        yield running
    finally:
        if running.process.poll() is None:
            running.kill_9()


def committed(root: Path, key: str) -> Any:
    """What every reader (and a start) reads for ``key``, read without writing."""

    async def read() -> Any:
        backend = FileBackend(root, read_only=True)
        try:
            stored = await backend.get(key)
        finally:
            await backend.aclose()
        return None if stored is None else json.loads(stored.data)

    return asyncio.run(read())


def signal_after_kill_9_and_restart(tmp_path: Path, bot: Bot, root: Path) -> str:
    bot.wait_for_ticks(3)  # the bot commits after the operator's change, then dies
    bot.kill_9()
    restarted = Bot(tmp_path, root, ticks=0)
    restarted.process.communicate(timeout=20)
    assert restarted.process.returncode == 0
    return restarted.started[1]


def assert_refused_naming(result: subprocess.CompletedProcess[str], bot: Bot) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    said = result.stderr
    assert f"pid {bot.process.pid} on host {socket.gethostname()} since 20" in said, said
    assert "nothing was written" in said and "Stop it first" in said, said


@pytest.mark.parametrize("command", ["import", "migrate"])
def test_a_copy_into_a_running_bots_root_is_refused_then_forced_and_survives_kill_9(
    tmp_path: Path, data_root: Path, bot: Bot, command: str
) -> None:
    """import/migrate --overwrite into a running bot's root: refused, forced, kept after kill -9.

    The issue's scenario: "Copied 1 value, each read back and identical", exit 0,
    and after a kill -9 and a restart the fix was gone. Now refused by default
    (exit 1, nothing written, the bot named); with --force committed like a tick.
    """
    if command == "import":
        source: Path = tmp_path / "fix.jsonl"
        source.write_text(json.dumps({"key": SIGNAL_KEY, "value": FIX}) + "\n")
        arguments: list[str | Path] = ["import", source, data_root, "--overwrite"]
    else:
        source = tmp_path / "fix-root"
        (source / "signal" / "BTC_t").mkdir(parents=True)
        (source / "signal" / "BTC_t" / "BTC.json").write_text(json.dumps(FIX))
        arguments = ["migrate", source, data_root, "--overwrite"]

    refused = run_cli(*arguments)
    assert_refused_naming(refused, bot)
    assert "--force" in refused.stderr
    assert committed(data_root, SIGNAL_KEY)["id"] == "bot-signal"

    forced = run_cli(*arguments, "--force")
    assert forced.returncode == 0, forced
    assert "Copied 1 value, each read back and identical to the source; 0 failed." in forced.stdout
    assert f"written beside a live session (pid {bot.process.pid}" in forced.stdout
    assert committed(data_root, SIGNAL_KEY)["id"] == "operator-fix"

    assert signal_after_kill_9_and_restart(tmp_path, bot, data_root) == "operator-fix"


def test_quarantine_restore_and_purge_beside_a_running_bot(tmp_path: Path, data_root: Path) -> None:
    """restore and purge beside a running bot: refused, then forced; kept after kill -9."""

    async def quarantine_two() -> list[str]:
        backend = FileBackend(data_root)
        try:
            ids = []
            for name in ("a", "b"):
                await backend.put(f"notes/{name}", json.dumps({"note": name}).encode())
                ids.append((await backend.quarantine(f"notes/{name}", "by hand")).id)
            return ids
        finally:
            await backend.aclose()

    to_restore, to_purge = asyncio.run(quarantine_two())
    bot = Bot(tmp_path, data_root, ticks=1_000_000)
    try:
        bot.wait_for_ticks(2)
        refused = run_cli("quarantine", "restore", to_restore, data_root)
        assert_refused_naming(refused, bot)
        assert committed(data_root, "notes/a") is None
        refused = run_cli("quarantine", "purge", to_purge, data_root, "--yes")
        assert_refused_naming(refused, bot)
        listed = json.loads(run_cli("quarantine", "list", data_root, "--json").stdout)
        assert sorted(entry["id"] for entry in listed) == sorted([to_restore, to_purge])

        restored = run_cli("quarantine", "restore", to_restore, data_root, "--force")
        assert restored.returncode == 0, restored
        assert f"written beside a live session (pid {bot.process.pid}" in restored.stdout
        assert committed(data_root, "notes/a") == {"note": "a"}
        purged = run_cli("quarantine", "purge", to_purge, data_root, "--yes", "--force")
        assert purged.returncode == 0, purged
        listed = json.loads(run_cli("quarantine", "list", data_root, "--json").stdout)
        assert listed == []

        bot.wait_for_ticks(3)
        bot.kill_9()
    finally:
        if bot.process.poll() is None:
            bot.kill_9()
    restarted = Bot(tmp_path, data_root, ticks=0)
    restarted.process.communicate(timeout=20)
    assert committed(data_root, "notes/a") == {"note": "a"}
    assert json.loads((data_root / "notes" / "a.json").read_text()) == {"note": "a"}


def test_after_the_bot_stops_its_root_takes_changes_without_force(
    tmp_path: Path, data_root: Path, bot: Bot
) -> None:
    """A killed bot's holder file stays behind; it names nobody alive and refuses nothing."""
    bot.kill_9()
    assert list((data_root / ".locks" / "holders").iterdir()), "the killed bot left its holder"
    source = tmp_path / "fix.jsonl"
    source.write_text(json.dumps({"key": SIGNAL_KEY, "value": FIX}) + "\n")
    done = run_cli("import", source, data_root, "--overwrite")
    assert done.returncode == 0, done
    assert "live session" not in done.stdout + done.stderr
    assert json.loads((data_root / SIGNAL_KEY).with_suffix(".json").read_text())["id"] == (
        "operator-fix"
    )


def test_a_holder_file_whose_session_is_gone_names_nobody_even_when_its_pid_lives(
    tmp_path: Path, data_root: Path, bot: Bot
) -> None:
    """Liveness is the session's own lock, not its pid: pids are reused.

    A holder file left by a session that no longer runs, naming a pid that is
    alive now (this test's own), must not be reported beside the real bot.
    """
    forged = {"pid": os.getpid(), "host": socket.gethostname(), "since": "2026-01-01T00:00:00Z"}
    forged |= {"token": "0123456789abcdef", "locks": ["pair-BTC_t"]}
    (data_root / ".locks" / "holders" / "0123456789abcdef.json").write_text(json.dumps(forged))
    source = tmp_path / "fix.jsonl"
    source.write_text(json.dumps({"key": SIGNAL_KEY, "value": FIX}) + "\n")
    refused = run_cli("import", source, data_root, "--overwrite")
    assert_refused_naming(refused, bot)
    assert f"pid {os.getpid()} " not in refused.stderr, refused.stderr


class LeasingMemoryBackend(MemoryBackend):
    """A backend that keeps live-session leases, as Redis and S3 will (issue 13)."""

    leases = True

    def __init__(self) -> None:
        super().__init__("leasing")
        self.kept: dict[str, Lease] = {}

    async def acquire_lease(self, name: str, holder: Mapping[str, object], ttl: float) -> Lease:
        token = max((lease.token for lease in self.kept.values()), default=0) + 1
        self.kept[name] = Lease(name, token, dict(holder), time.time() + ttl)
        return self.kept[name]

    async def read_leases(self) -> list[Lease]:
        return [lease for lease in self.kept.values() if lease.expires_at > time.time()]


def test_a_backend_that_keeps_leases_refuses_writes_naming_each_session() -> None:
    """The writes' check asks a leasing backend for its leases, as status does."""

    async def check() -> tuple[list[SessionHolder], str, list[SessionHolder]]:
        backend = LeasingMemoryBackend()
        bot = {"host": "bot-1", "pid": 4242, "since": 1_796_000_000.0}
        await backend.acquire_lease("pair-BTC_t", bot, ttl=60)
        await backend.acquire_lease("risk-main", bot, ttl=60)
        await backend.acquire_lease("pair-ETH_t", {**bot, "pid": 7}, ttl=60)
        await backend.acquire_lease("pair-OLD_t", {**bot, "pid": 9}, ttl=-1)  # lapsed
        holders = (await session_locks(backend)).running
        with pytest.raises(CommandError) as refused:
            await refuse_beside_running_sessions(backend, how_to_force="it is forced")
        assert refused.value.exit_code == 1
        forced = await refuse_beside_running_sessions(backend, force=True)
        return holders, str(refused.value), forced

    holders, said, forced = asyncio.run(check())
    assert sorted(holder.pid for holder in holders) == [7, 4242]
    assert forced == holders
    assert "pid 4242 on host bot-1 since 2026-" in said and "pid 7 on host bot-1" in said
    assert "pid 9" not in said and "or pass --force: it is forced" in said

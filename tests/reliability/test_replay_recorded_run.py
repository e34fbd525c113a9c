"""A live run of the demo bot, killed with SIGKILL again and again, then read back and replayed.

The recording is the demo bot's own (``examples/live_bot.py`` records its market
inputs with every tick). After the kills, the history must hold every committed
tick exactly once, a point-in-time read at each acknowledgement must show what
the bot had acknowledged, two replays must agree byte for byte with each other
and with the live run, and a changed parameter must diverge at the first tick
it changes.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from common import count

import persistkit
from persistkit import FileBackend, LiveSession
from persistkit._history import RecordedHistory
from persistkit.replay import replay

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples"))
import live_bot  # noqa: E402 - the example, imported from its folder

pytestmark = pytest.mark.usefixtures("count_in_the_report")
REPORT_AS = "replay of a recorded live run (issue 15)"
REPORT_INJECTION = (
    "the demo bot records its inputs every tick and is killed with SIGKILL after a random "
    "number of acknowledged ticks, then restarted; its history is read as of each "
    "acknowledgement and replayed"
)

KILLS = count(3, 25, "demo bot kills recorded for replay")


def run_bot_until_killed(root: Path, rng: random.Random, acks: list[tuple[int, int]]) -> None:
    """Start the bot, let it acknowledge a few ticks, kill -9 it. ``acks``: (tick, ns seen)."""
    process = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "live_bot.py"), "--base-dir", str(root),
         "--json", "--interval", "0.01"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )  # fmt: skip
    assert process.stdout is not None
    wanted = rng.randint(2, 8)
    seen = 0
    try:
        for line in process.stdout:
            message = json.loads(line)
            if "ack" in message:
                acks.append((message["ack"], time.time_ns()))
                seen += 1
                if seen >= wanted:
                    break
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stdout.close()


def tick_commits(history: RecordedHistory) -> dict[int, Any]:
    """Recorded tick number -> the commit that recorded it."""
    found: dict[int, Any] = {}
    for tick in history.ticks():
        number = tick.inputs["tick"]
        assert number not in found, f"tick {number} recorded twice"
        found[number] = tick.commit
    return found


def first_new_entry(ticks: int) -> int:
    """The first tick at which the bot schedules a new limit entry (its take profit is set)."""
    for tick in range(1, ticks + 1):
        state = live_bot.simulate(tick)
        if any(
            book.scheduled is not None and book.scheduled.id.endswith(f"-{tick}")
            for book in state.pairs.values()
        ):
            return tick
    raise AssertionError("no entry was scheduled in the recording")


def test_a_killed_live_run_reads_back_as_acknowledged_and_replays_identically(
    tmp_path: Path,
) -> None:
    root = tmp_path / "live"
    rng = random.Random(15)
    acks: list[tuple[int, int]] = []
    for _ in range(KILLS):
        run_bot_until_killed(root, rng, acks)
    assert acks

    async def check() -> None:
        source = FileBackend(root)
        history = await source.history_records()
        await source.aclose()
        commits = tick_commits(history)
        last = max(commits)
        # Every committed tick exactly once, in order, none lost to the kills.
        assert sorted(commits) == list(range(1, last + 1))
        assert [commits[n].seq for n in sorted(commits)] == sorted(c.seq for c in commits.values())
        assert max(tick for tick, _ in acks) <= last

        session = LiveSession(live_bot.PAIRS, live_bot.RISK_NAME, base_dir=root)
        await session.start()
        try:
            for tick, seen_ns in acks:
                committed_ms = math.ceil(commits[tick].time_ns / 1_000_000)
                then = await session.state_at(committed_ms)
                # state_at reads the four domains; the statistics are checked by the replay.
                assert live_bot.without_statistics(
                    (await live_bot.from_restored(then, tick)).as_json()
                ) == live_bot.without_statistics(live_bot.simulate(tick).as_json())
                # What the bot had acknowledged when we read its ack, at the latest.
                at_ack = await live_bot.PersistBase[int]("bot", root).read_value(
                    "tick", as_of=math.ceil(seen_ns / 1_000_000)
                )
                assert at_ack >= tick
        finally:
            await session.aclose()

        # As the bot runs: its statistics events in market time.
        persistkit.configure(mode="live", base_dir=root, clock=live_bot.market_clock)
        strategy = live_bot.strategy_for(str(root))
        first = await replay(root, strategy, target=tmp_path / "a")
        second = await replay(root, strategy, target=tmp_path / "b")
        for summary in (first, second):
            assert summary.status == "complete"
            assert summary.ticks_replayed == last and summary.ticks_skipped == 0
            assert summary.first_divergence is None
        assert first.state_digest == second.state_digest
        runs = [
            tmp_path / "a" / "replay" / first.replay_run_id,
            tmp_path / "b" / "replay" / second.replay_run_id,
        ]
        files = [
            {
                str(path.relative_to(run)): path.read_bytes()
                for path in run.rglob("*.json")
                if not path.relative_to(run).parts[0].startswith(("_", "."))
            }
            for run in runs
        ]
        assert files[0] == files[1] and len(files[0]) >= 3

        changed = await replay(root, strategy, params={"take_profit_pct": 5.0})
        expected = first_new_entry(last)
        assert changed.first_divergence is not None
        assert changed.first_divergence.seq == commits[expected].seq
        assert any(key.startswith("schedule/") for key in changed.first_divergence.differences)

    asyncio.run(check())

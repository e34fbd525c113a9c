"""Statistics of a file root across kill -9 and power cuts landing inside a checkpoint's fold.

On a file root a pair's schedule and partial events are derived from the commit
journal's records, and a checkpoint folds the records it is about to forget into
the pair's folded head (``persistkit._domains.journal_events``). These tests run
real lane processes (``stats_agent.py``) whose every tick changes two pairs'
rows, with a journal limit small enough that a checkpoint follows every few
ticks, kill them for real (at random moments, and by themselves at a chosen
point of a checkpoint: while the heads are written, after them, after the
``syncfs``, after the journal's replacement) and check, after every restart,
that each pair's statistics are exactly the events the acknowledged ticks imply
(the tick in flight at the kill may count or not). The expected events are
derived here, from the scripted writes, by the documented rules: not by
persistkit's derivation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import stats_agent
from common import count
from stats_agent import (
    CUT_PHASES,
    MIN,
    PHASES,
    SHARED,
    STATISTICS_OFF_LANE,
    event_key,
    own_pair,
    own_writes,
    shared_writes,
    tick_time,
)

from persistkit import FileBackend, Partial, PersistBase, Schedule
from persistkit._config import DEFAULT_EVENT_LIMIT
from persistkit._domains.events import FOLDED_NAMESPACE
from persistkit.backends._journal import JOURNAL_DIR, JOURNAL_FILE

REPORT_AS = "statistics folded at checkpoints (issue 14)"
REPORT_INJECTION = (
    "lane processes ticking schedule and partial changes on a file root with a 6 KiB journal "
    "limit (a checkpoint every few ticks); SIGKILL at random moments and, from a hook in the "
    "lane's own script, inside a checkpoint's fold (between two heads, after the heads, after "
    "the syncfs, after the journal's replacement); restart, compare the statistics"
)
pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("count_in_the_report")]

ROUNDS = count(48, 600, "statistics fold: kill -9 rounds of one lane")
MP_KILLS = count(24, 300, "statistics fold: kill -9 of one of three concurrent lanes")
FOLD_CUTS = count(4, 24, "statistics fold: ext4 power cuts inside a checkpoint's fold")

AGENT = Path(stats_agent.__file__)
_HEADER = struct.Struct("<4sIQ")

Events = list[list[Any]]


# -- what the acknowledged ticks imply, by the rules (independent of persistkit's code) ------


@dataclass
class PairModel:
    """A pair's rows and events, tick after tick, by the rules of the README."""

    schedule: dict[str, Any] | None = None
    signal: dict[str, Any] | None = None
    levels: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)
    schedule_events: Events = field(default_factory=list)
    partial_events: Events = field(default_factory=list)

    def tick(self, writes: list[tuple[str, Any]], now: int, *, recorded: bool = True) -> None:
        """One commit's writes of this pair, in the order made; ``recorded``: by a process
        with the statistics on (otherwise the rows change and no event is recorded)."""
        before = (len(self.schedule_events), len(self.partial_events))
        self._change(writes, now)
        if not recorded:
            del self.schedule_events[before[0] :], self.partial_events[before[1] :]

    def _change(self, writes: list[tuple[str, Any]], now: int) -> None:
        written = dict(writes)
        signals_on_the_way = [value for domain, value in writes if domain == "signal" and value]
        if "signal" in written:
            self.signal = written["signal"]
        if "schedule" in written:
            old, new = self.schedule, written["schedule"]
            if old is not None and (new is None or new["id"] != old["id"]):
                fills = [s for s in signals_on_the_way if s["id"] == old["id"]]
                if self.signal is not None and self.signal["id"] == old["id"]:
                    action, until = "opened", self.signal["pending_at"]
                elif fills:
                    action, until = "opened", fills[-1]["pending_at"]
                else:
                    action, until = "cancelled", now
                wait = (until - old["scheduled_at"]) / MIN
                self.schedule_events.append([now, action, old["id"], wait])
            if new is not None and (old is None or new["id"] != old["id"]):
                self.schedule_events.append([now, "scheduled", new["id"], None])
            self.schedule = new
        if "partial" in written:
            levels = written["partial"] or {}
            for signal_id, (profit, loss) in levels.items():
                had = self.levels.get(signal_id, ([], []))
                for action, reached, before in (
                    ("profit", profit, had[0]),
                    ("loss", loss, had[1]),
                ):
                    self.partial_events += [
                        [now, action, signal_id, level] for level in reached if level not in before
                    ]
            self.levels = {sid: (list(p), list(lo)) for sid, (p, lo) in levels.items()}

    def statistics(self) -> tuple[Events, Events]:
        """The newest events a reader shows (the default bound)."""
        return (
            self.schedule_events[-DEFAULT_EVENT_LIMIT:],
            self.partial_events[-DEFAULT_EVENT_LIMIT:],
        )


def implied(order: list[tuple[int, int]]) -> dict[tuple[str, str], PairModel]:
    """Every pair's model after the ticks ``(lane, tick)`` committed in ``order``."""
    pairs: dict[tuple[str, str], PairModel] = {}
    for lane, tick in order:
        by_pair: dict[tuple[str, str], list[tuple[str, Any]]] = {}
        for pair, domain, value in own_writes(lane, tick) + shared_writes(lane, tick):
            by_pair.setdefault(pair, []).append((domain, value))
        for pair, writes in by_pair.items():
            pairs.setdefault(pair, PairModel()).tick(
                writes, tick_time(lane, tick), recorded=lane != STATISTICS_OFF_LANE
            )
    return pairs


@dataclass
class OwnPairTimeline:
    """A lane's own pair (no other lane writes it) after each of its ticks: the model is
    advanced once, not replayed from the start for every check of a long run."""

    lane: int
    model: PairModel = field(default_factory=PairModel)
    counts: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)])
    """The number of each kind's events after tick ``n``, at index ``n``."""

    def statistics(self, ticks: int) -> tuple[Events, Events]:
        while len(self.counts) <= ticks:
            tick = len(self.counts)
            writes = [(domain, value) for _pair, domain, value in own_writes(self.lane, tick)]
            recorded = self.lane != STATISTICS_OFF_LANE
            self.model.tick(writes, tick_time(self.lane, tick), recorded=recorded)
            self.counts.append((len(self.model.schedule_events), len(self.model.partial_events)))
        schedule, partial = self.counts[ticks]
        return (
            self.model.schedule_events[:schedule][-DEFAULT_EVENT_LIMIT:],
            self.model.partial_events[:partial][-DEFAULT_EVENT_LIMIT:],
        )


# -- where a kill landed -----------------------------------------------------------------


def heads_ahead_of_the_journal(root: Path) -> bool:
    """Whether some pair's folded head covers records the journal still holds: the kill
    landed after a checkpoint wrote its heads and before it replaced the journal, so
    the next checkpoint folds the same records again."""
    try:
        header = (root / JOURNAL_DIR / JOURNAL_FILE).read_bytes()[: _HEADER.size]
    except FileNotFoundError:
        return False
    if len(header) < _HEADER.size:
        return False
    _magic, _flags, first_seq = _HEADER.unpack(header)
    heads = root / FOLDED_NAMESPACE
    seqs = []
    for path in heads.glob("*.json") if heads.is_dir() else ():
        try:
            seqs.append(orjson.loads(path.read_bytes())["seq"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
    return any(seq >= first_seq for seq in seqs)


# -- driving lanes -------------------------------------------------------------------------


class Lane:
    """A fork server of ``stats_agent.py`` and the one lane process it runs at a time."""

    def __init__(self, number: int, root: Path) -> None:
        self.number = number
        self.root = root
        self.stderr_path = root.parent / f"lane-{number}.stderr"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in close()
        self.server = subprocess.Popen(
            [sys.executable, str(AGENT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(AGENT.parent), os.environ.get("PYTHONPATH")])
                ),
            },
        )
        self._lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.child: int | None = None
        self.acked = 0
        self.acks_this_life = 0
        self.restored: int | None = None
        self.running = False
        self.restarts_checked = 0
        self.reads_checked = 0
        self.timeline = OwnPairTimeline(number)

    def _pump(self) -> None:
        assert self.server.stdout is not None
        for line in self.server.stdout:
            self._lines.put(line)
        self._lines.put(b"")

    def start(self, phase: str = "none", at: int = 1, mount: Path | None = None) -> None:
        assert self.server.stdin is not None and not self.running
        command = f"run {self.root} {self.number} {phase} {at}"
        self.server.stdin.write(f"{command}{f' {mount}' if mount else ''}\n".encode())
        self.server.stdin.flush()
        self.running, self.restored, self.child, self.acks_this_life = True, None, None, 0

    def stderr(self) -> str:
        self._stderr.flush()
        text = self.stderr_path.read_text(errors="replace").strip()
        return f"\n--- lane {self.number} stderr ---\n{text[-3000:]}" if text else ""

    def handle(self, timeout: float | None) -> dict[str, Any] | None:
        """Take the next line (waiting up to ``timeout``; ``None``: not at all) and check it."""
        try:
            line = self._lines.get(timeout=timeout) if timeout else self._lines.get_nowait()
        except queue.Empty:
            if timeout:
                silent = f"lane {self.number}: silent {timeout} s{self.stderr()}"
                raise AssertionError(silent) from None
            return None
        if not line:
            raise AssertionError(f"lane {self.number}: its server ended{self.stderr()}")
        message: dict[str, Any] = json.loads(line)
        if "child" in message:
            self.child = message["child"]
        elif "restored" in message:
            self.check_restored(message)
        elif "read" in message:
            self.check_statistics(message, message["read"])
            self.reads_checked += 1
        elif "ack" in message:
            assert message["ack"] == self.acked + 1, (self.number, message, self.acked)
            self.acked = message["ack"]
            self.acks_this_life += 1
        elif "exit" in message:
            assert message["exit"] == -signal.SIGKILL, f"lane {self.number}: {message}"
            self.child, self.running = None, False  # reaped: never signal its pid again
        return message

    def check_restored(self, message: dict[str, Any]) -> None:
        restored = message["restored"]
        assert restored in (self.acked, self.acked + 1), (
            f"lane {self.number} restored tick {restored}, last acknowledged {self.acked}"
        )
        self.check_statistics(message, restored)
        self.acked = self.restored = restored
        self.restarts_checked += 1

    def check_statistics(self, message: dict[str, Any], tick: int) -> None:
        schedule, partial = self.timeline.statistics(tick)
        assert message["schedule"] == schedule, f"lane {self.number} at tick {tick}: schedule"
        assert message["partial"] == partial, f"lane {self.number} at tick {tick}: partial"

    def wait_for(self, key: str, timeout: float = 60.0) -> bool:
        """Take lines until one has ``key``; ``False`` when the lane exited first (a lane
        armed to die in its first fold dies in its start's, before it restored)."""
        while True:
            message = self.handle(timeout)
            assert message is not None
            if key in message:
                return True
            if "exit" in message:
                return False

    def wait_for_acks(self, acks: int, timeout: float = 60.0) -> None:
        while self.running and self.acks_this_life < acks:
            self.handle(timeout)

    def kill(self) -> None:
        """SIGKILL the running lane (unless it died already) and reap it."""
        while self.child is None and self.running:
            self.handle(60.0)
        if self.running:
            assert self.child is not None
            with contextlib.suppress(ProcessLookupError):  # it died at its armed point
                os.kill(self.child, signal.SIGKILL)
            self.wait_for("exit")

    def close(self) -> None:
        if self.child is not None and self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, signal.SIGKILL)
        assert self.server.stdin is not None
        self.server.stdin.close()
        try:
            self.server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        self._stderr.close()


@pytest.fixture
def lanes(tmp_path: Path) -> Iterator[list[Lane]]:
    """Every lane a test started; closed (their running process killed) afterwards."""
    started: list[Lane] = []
    yield started
    for lane in started:
        lane.close()


def _seed() -> int:
    seed = int(os.environ.get("PERSISTKIT_SEED", time.time_ns() % 1_000_000))
    print(f"seed {seed}", file=sys.stderr)
    return seed


# -- the tests -----------------------------------------------------------------------------


def test_kill_9_inside_a_checkpoint_fold_keeps_the_statistics_of_the_acknowledged_ticks(
    tmp_path: Path, lanes: list[Lane]
) -> None:
    """One lane, killed at random moments and inside its checkpoints' folds."""
    rng = random.Random(_seed())
    root = tmp_path / "data"
    lane = Lane(0, root)
    lanes.append(lane)
    plan = ("none", "none", *PHASES)
    landed: Counter[str] = Counter()
    for round_number in range(ROUNDS):
        phase = plan[round_number % len(plan)]
        lane.start(phase, rng.randint(1, 3))
        lane.wait_for("restored")
        if phase == "none":
            lane.wait_for_acks(rng.randint(0, 12))
            time.sleep(rng.uniform(0, 0.003))
            lane.kill()
        else:
            while lane.running:  # it kills itself at the armed point
                lane.handle(60.0)
        landed[phase] += heads_ahead_of_the_journal(root)
    lane.start()
    lane.wait_for("restored")
    lane.kill()
    print(f"kills that left heads ahead of the journal, by phase: {dict(landed)}", file=sys.stderr)
    # Lanes armed for their first fold die in their start's, before they could tell.
    assert lane.restarts_checked > ROUNDS // 2, lane.restarts_checked
    assert lane.acked > ROUNDS, f"the lane made little progress: {lane.acked} ticks"
    assert lane.reads_checked > ROUNDS // 2, lane.reads_checked
    # Self-kills after the heads and before the journal's replacement leave the heads
    # ahead: each of those restarts folded records a head already covered.
    rounds_of = {phase: len(range(plan.index(phase), ROUNDS, len(plan))) for phase in PHASES}
    for phase in ("mid-fold", "folded", "synced"):
        assert landed[phase] == rounds_of[phase], (phase, landed, rounds_of)
    assert landed["replaced"] == 0, landed
    shared = _final_statistics(root)[SHARED]
    assert shared == implied([(0, tick) for tick in range(1, lane.acked + 1)])[SHARED].statistics()


def _final_statistics(root: Path) -> dict[tuple[str, str], tuple[Events, Events]]:
    """Every pair's statistics, as a restarted reader finds them."""

    async def read() -> dict[tuple[str, str], tuple[Events, Events]]:
        backend = FileBackend(root)
        try:
            pairs = [SHARED, *(own_pair(lane) for lane in range(3))]
            found = {}
            for pair in pairs:
                schedule = await Schedule.get_data(*pair, backend=backend)
                partial = await Partial.get_data(*pair, backend=backend)
                found[pair] = (
                    [event_key(e) for e in schedule.event_list],
                    [event_key(e) for e in partial.event_list],
                )
            return found
        finally:
            await backend.aclose()

    return asyncio.run(read())


def _committed_order(root: Path) -> list[tuple[int, int]]:
    """The ticks ``(lane, tick)`` of every lane, in the order they were committed."""

    async def read() -> list[tuple[int, int]]:
        backend = FileBackend(root)
        try:
            order: PersistBase[Any] = PersistBase("fold_order", backend=backend)
            places = await order.read_value("next")
            return [tuple(await order.read_value(str(n))) for n in range(1, places + 1)]  # type: ignore[misc]
        finally:
            await backend.aclose()

    return asyncio.run(read())


def test_three_lanes_killed_and_restarted_keep_every_pairs_statistics_exact(
    tmp_path: Path, lanes: list[Lane]
) -> None:
    """Three lanes on one root, each with its own pair and all on one shared pair (one
    lane with the statistics off), checkpoints by whichever commit crosses the limit;
    lanes killed and restarted."""
    rng = random.Random(_seed())
    root = tmp_path / "data"
    for number in range(3):
        lanes.append(Lane(number, root))
    for lane in lanes:
        lane.start()
    kills = 0
    while kills < MP_KILLS:
        time.sleep(rng.uniform(0.01, 0.1))
        for lane in lanes:
            while lane.handle(None) is not None:
                pass
            if not lane.running:  # it killed itself at its armed point
                kills += 1
                lane.start(*_random_phase(rng))
        victim = lanes[kills % len(lanes)]
        if victim.running and victim.restored is not None:
            victim.wait_for_acks(rng.randint(0, 10))  # the others tick on meanwhile
            victim.kill()
            kills += 1
            victim.start(*_random_phase(rng))
    for lane in lanes:
        lane.kill()
    order = _committed_order(root)
    for lane in lanes:
        ticks = [tick for number, tick in order if number == lane.number]
        assert ticks == list(range(1, len(ticks) + 1)), f"lane {lane.number}: {ticks}"
        assert len(ticks) in (lane.acked, lane.acked + 1), (lane.number, len(ticks), lane.acked)
    found = _final_statistics(root)
    expected = implied(order)
    for pair, statistics in found.items():
        assert statistics == expected[pair].statistics(), pair
    print(
        f"ticks committed by lane: {Counter(n for n, _ in order)}, restarts checked: "
        f"{[lane.restarts_checked for lane in lanes]}, long-lived reads checked: "
        f"{[lane.reads_checked for lane in lanes]}",
        file=sys.stderr,
    )
    assert all(lane.restarts_checked >= 2 and lane.reads_checked for lane in lanes)
    assert len(found[SHARED][0]) > 20 and len(found[SHARED][1]) > 5


def _random_phase(rng: random.Random) -> tuple[str, int]:
    if rng.random() < 0.4:
        return rng.choice(PHASES), rng.randint(1, 3)
    return "none", 1


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a loop-mounted ext4 and its shutdown")
def test_power_cut_inside_a_checkpoint_fold_keeps_the_statistics_of_the_acknowledged_ticks(
    tmp_path: Path, lanes: list[Lane]
) -> None:
    """A lane cuts the power of its ext4 file system inside a checkpoint's fold."""
    from test_root_faults import _Ext4Image

    mounted: list[Path] = []
    try:
        disk = _Ext4Image(tmp_path, mounted)
        rng = random.Random(_seed())
        root = disk.point / "data"
        lane = Lane(0, root)
        lanes.append(lane)
        ahead: Counter[str] = Counter()
        for cut in range(FOLD_CUTS):
            disk.mount()
            phase = CUT_PHASES[cut % len(CUT_PHASES)]
            # Past the start's own fold (if any): each restart's statistics are checked.
            lane.start(phase, rng.randint(2, 3), disk.point)
            while lane.running:  # it cuts the power at the armed point, then kills itself
                lane.handle(60.0)
            disk.unmount()
            disk.mount()
            ahead[phase] += heads_ahead_of_the_journal(root)
            disk.unmount()
        disk.mount()
        lane.start()
        lane.wait_for("restored")
        lane.kill()
        disk.unmount()
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
    print(f"cuts that left heads ahead of the journal, by phase: {dict(ahead)}", file=sys.stderr)
    assert lane.restarts_checked == FOLD_CUTS + 1
    # Cut after the syncfs: the heads are durable, the journal not yet replaced.
    assert ahead["cut-synced"] == len(range(1, FOLD_CUTS, 2)), ahead
    assert lane.acked > FOLD_CUTS

"""A bot lane whose ticks make schedule and partial events, for the statistics fold crash tests.

``python stats_agent.py serve``: imports everything once, then forks a fresh
lane process for each ``run ROOT LANE PHASE AT [MOUNT]`` line on stdin (the kill
loops restart a lane hundreds of times; paying the interpreter's and pydantic's
start-up each time would take minutes). It prints ``{"child": pid}`` after
forking and ``{"exit": code}`` after reaping; the lane prints its own lines to
the same stdout:

- ``{"restored": t, "schedule": [...], "partial": [...]}`` once started: its
  last committed tick and its own pair's statistics, as events of
  :func:`event_key` shape;
- ``{"ack": t}`` after each tick's commit returned;
- ``{"read": t, "schedule": [...], "partial": [...]}`` after every
  :data:`READ_EVERY` ticks: its own pair's statistics read again by the same
  process (a long-lived reader, whose reads go on from its last one).

Each tick of lane ``w`` (``t`` = 1, 2, ...) is one transaction: it writes the
lane's own pair (:func:`own_writes`), the pair every lane shares
(:func:`shared_writes`), the lane's tick counter, and takes the next place in
the root's commit order (``fold_order``, a compare-and-set counter, so that the
test knows in which order the lanes' ticks touched the shared pair). Lane
:data:`STATISTICS_OFF_LANE` runs with the statistics off. What the
events of those writes are is the test's business: it derives them on its own
from the same scripted writes.

The journal limit is small, so a checkpoint (which folds the records it forgets
into the pairs' heads) follows every few ticks. ``PHASE`` arms a real
``SIGKILL`` of the lane by itself at the ``AT``-th checkpoint fold of its life
(the first may be its start's): ``mid-fold`` once the first pair's head is
written and before the others, ``folded`` after the heads and before anything
else, ``synced`` after the ``syncfs`` and before the journal is replaced,
``replaced`` right after. ``cut-folded`` and ``cut-synced`` first cut the power
of the ext4 file system mounted at ``MOUNT`` (``EXT4_IOC_SHUTDOWN``), then kill.
``none``: the test's own kill lands wherever it lands. These hooks live here,
in the test's process, not in persistkit.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import struct
import sys
from collections.abc import Callable
from typing import Any

import persistkit
from persistkit import (
    ConflictError,
    FileBackend,
    Partial,
    PersistBase,
    PersistPartialAdapter,
    PersistScheduleAdapter,
    PersistSignalAdapter,
    Schedule,
)
from persistkit._config import DEFAULT_EVENT_LIMIT
from persistkit.backends import _journal
from persistkit.models import PartialData, ScheduledSignalRow, SignalRow

T0 = 1_763_700_000_000
MIN = 60_000
JOURNAL_LIMIT = 6 << 10
"""A checkpoint every few ticks (a tick's record is about a kilobyte)."""
SHARED = ("ETHUSDT", "shared")
CYCLE = 7
"""Ticks of one limit entry of a lane's own pair, from scheduled to closed."""
STATISTICS_OFF_LANE = 2
"""The lane that runs with ``event_limit=0``: a process with the statistics off."""
READ_EVERY = 5
"""A lane reads its own pair's statistics after every this many ticks."""
PHASES = ("mid-fold", "folded", "synced", "replaced")
CUT_PHASES = ("cut-folded", "cut-synced")
_EXT4_IOC_SHUTDOWN = 0x8004587D
_EXT4_GOING_FLAGS_NOLOGFLUSH = 2

Write = tuple[tuple[str, str], str, dict[str, Any] | None]
"""``((symbol, strategy), domain, value)``: a row written by a tick (``None`` clears it);
``value`` as plain data (the scheduled row's or signal's fields, or the levels)."""


def own_pair(lane: int) -> tuple[str, str]:
    return ("BTCUSDT", f"lane-{lane}")


def tick_time(lane: int, tick: int) -> int:
    """The event time of a lane's tick (the configured clock's): distinct across lanes."""
    return T0 + (lane * 1_000_000 + tick) * MIN


def _row(signal_id: str, at: int) -> dict[str, Any]:
    return {"id": signal_id, "scheduled_at": at, "pending_at": at}


def own_writes(lane: int, tick: int) -> list[Write]:
    """A limit entry per :data:`CYCLE` ticks: scheduled, written again unchanged, then
    filled (every third one cancelled instead), three milestones, closed."""
    pair, cycle, step = own_pair(lane), (tick - 1) // CYCLE, (tick - 1) % CYCLE
    signal_id = f"L{lane}.{cycle}"
    entered = tick_time(lane, tick - step)
    now = tick_time(lane, tick)
    if step in (0, 1):
        return [(pair, "schedule", _row(signal_id, entered))]
    if step == 2:
        if cycle % 3 == 2:
            return [(pair, "schedule", None)]
        return [
            (pair, "schedule", None),
            (pair, "signal", {**_row(signal_id, entered), "pending_at": now}),
        ]
    if step == 6:
        return [(pair, "signal", None), (pair, "partial", None)]
    levels = {3: ([10], []), 4: ([10, 20], []), 5: ([10, 20], [10])}[step]
    return [(pair, "partial", {signal_id: levels})]


def shared_writes(lane: int, tick: int) -> list[Write]:
    """Blind writes to the shared pair, whose events depend on the other lanes' ticks
    between them: an entry, its fill (an entry of another lane there instead is
    cancelled), a milestone of the fill, then whatever entry is there cancelled."""
    now = tick_time(lane, tick)
    step = tick % 4
    if step == 0:
        return [(SHARED, "schedule", _row(f"S{lane}.{tick}", now))]
    if step == 1:
        filled = {**_row(f"S{lane}.{tick - 1}", tick_time(lane, tick - 1)), "pending_at": now}
        return [(SHARED, "schedule", None), (SHARED, "signal", filled)]
    if step == 2:
        return [(SHARED, "partial", {f"S{lane}.{tick - 2}": ([10, 20], [])})]
    return [(SHARED, "schedule", None), (SHARED, "signal", None)]


def event_key(event: Any) -> list[Any]:
    """What the tests compare of an event: time, action, signal id, and the wait (schedule)
    or the level (partial)."""
    last = event.level if hasattr(event, "level") else event.duration_min
    return [event.timestamp, event.action, event.signal_id, last]


def _scheduled(fields: dict[str, Any], symbol: str, strategy: str) -> ScheduledSignalRow:
    return ScheduledSignalRow(
        id=fields["id"],
        symbol=symbol,
        strategy_name=strategy,
        position="long",
        price_open=100.0,
        price_take_profit=110.0,
        price_stop_loss=95.0,
        scheduled_at=fields["scheduled_at"],
        pending_at=fields["pending_at"],
    )


async def _apply(write: Write) -> None:
    (symbol, strategy), domain, value = write
    if domain == "schedule":
        row = None if value is None else _scheduled(value, symbol, strategy)
        await PersistScheduleAdapter.write_schedule_data(row, symbol, strategy)
    elif domain == "signal":
        signal_row = None
        if value is not None:
            scheduled = _scheduled(value, symbol, strategy)
            signal_row = SignalRow.model_validate(scheduled.model_dump())
        await PersistSignalAdapter.write_signal_data(signal_row, symbol, strategy)
    else:
        levels = None
        if value is not None:
            levels = {
                sid: PartialData(profit_levels=profit, loss_levels=loss)
                for sid, (profit, loss) in value.items()
            }
        await PersistPartialAdapter.write_partial_data(levels, symbol, strategy)


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _die(mount: str | None) -> None:
    if mount is not None:
        fd = os.open(mount, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, _EXT4_IOC_SHUTDOWN, struct.pack("I", _EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def arm(phase: str, at: int, mount: str | None) -> None:
    """Kill this process at ``phase`` of its ``at``-th checkpoint fold (see the module doc)."""
    if phase == "none":
        return
    journal_class = _journal.CommitJournal
    folds = 0
    hit = False

    def wrap(name: str, after: Callable[[Any, Any], None]) -> None:
        original = getattr(journal_class, name)

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            if name == "_apply" and hit and phase == "mid-fold":
                writes = args[0]
                if len(writes) > 1 and all(k.startswith("_persistkit/") for k in writes):
                    first = next(iter(writes))
                    original(self, {first: writes[first]}, **kwargs)
                    _die(mount)
            result = original(self, *args, **kwargs)
            after(self, args)
            return result

        setattr(journal_class, name, wrapper)

    def after_fold(_self: Any, _args: Any) -> None:
        nonlocal folds, hit
        folds += 1
        hit = folds == at
        if hit and phase in ("folded", "cut-folded"):
            _die(mount)

    def after_sync(_self: Any, _args: Any) -> None:
        if hit and phase in ("synced", "cut-synced"):
            _die(mount)

    def after_replace(_self: Any, _args: Any) -> None:
        if hit and phase == "replaced":
            _die(mount)

    # _fold_held counts only once it returned, so mid-fold must be armed before it.
    original_fold = journal_class._fold_held

    def fold_held(self: Any, journal: Any, *, wait: bool) -> None:
        nonlocal hit
        if journal.offset == _journal._FILE_HEADER.size:
            return original_fold(self, journal, wait=wait)  # no record: no fold
        hit = folds + 1 == at
        original_fold(self, journal, wait=wait)
        after_fold(self, None)

    journal_class._fold_held = fold_held  # type: ignore[method-assign]
    wrap("_apply", lambda _self, _args: None)
    wrap("_sync_filesystem", after_sync)
    wrap("_start_generation", after_replace)


class _Clock:
    now = T0

    def __call__(self) -> int:
        return self.now


async def run_lane(root: str, lane: int, phase: str, at: int, mount: str | None) -> None:
    clock = _Clock()
    backend = FileBackend(root, journal_limit=JOURNAL_LIMIT)
    # The statistics off: its records carry no event time, so they give no events, and
    # still change the rows whose later changes the other lanes' events depend on.
    statistics = 0 if lane == STATISTICS_OFF_LANE else DEFAULT_EVENT_LIMIT
    persistkit.configure(mode="live", backend=backend, clock=clock, event_limit=statistics)
    arm(phase, at, mount)
    ticks: PersistBase[int] = PersistBase("fold_ticks", backend=backend)
    order: PersistBase[Any] = PersistBase("fold_order", backend=backend)
    tick = await ticks.read_value(f"w{lane}") if await ticks.has_value(f"w{lane}") else 0
    _say({"restored": tick, **await _own_statistics(lane)})
    while True:
        tick += 1
        clock.now = tick_time(lane, tick)
        while True:
            try:
                async with persistkit.transaction():
                    place = await order.update_value("next", lambda n: (n or 0) + 1)
                    await order.write_value(str(place), [lane, tick])
                    await ticks.write_value(f"w{lane}", tick)
                    for write in own_writes(lane, tick) + shared_writes(lane, tick):
                        await _apply(write)
                break
            except ConflictError:
                continue  # another lane took the place first: the same tick again
        _say({"ack": tick})
        if tick % READ_EVERY == 0:
            # Read again by this process (its reads go on from where the last one was):
            # across the checkpoints of every lane since.
            _say({"read": tick, **await _own_statistics(lane)})


async def _own_statistics(lane: int) -> dict[str, Any]:
    pair = own_pair(lane)
    return {
        "schedule": [event_key(e) for e in (await Schedule.get_data(*pair)).event_list],
        "partial": [event_key(e) for e in (await Partial.get_data(*pair)).event_list],
    }


def serve() -> None:
    # Build the validators before forking: each lane then starts in milliseconds.
    _scheduled(_row("warm", T0), *SHARED)
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] != "run":
            continue
        root, lane, phase, at = parts[1], int(parts[2]), parts[3], int(parts[4])
        mount = parts[5] if len(parts) > 5 else None
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                asyncio.run(run_lane(root, lane, phase, at, mount))
            finally:
                sys.stdout.flush()
                os._exit(code)
        _say({"child": pid})
        _, status = os.waitpid(pid, 0)
        _say({"exit": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    serve()

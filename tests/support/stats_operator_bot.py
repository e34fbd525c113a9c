"""A scripted bot on a file root, run by the operator attacks of the statistics with this
build or with an earlier one (same public API), each as a process of its own.

    python stats_operator_bot.py ROOT FIRST COUNT [SYMBOL]

Ticks FIRST .. FIRST+COUNT-1 of the pair (SYMBOL, "st"), cycling through six steps
(:func:`expected` counts their events), then prints ``ack {n}`` per tick and, at the
end, the pair's ``[scheduled, opened, cancelled, profit]`` as JSON. Environment:
``JOURNAL_LIMIT`` (bytes; a checkpoint past it), ``CHECKPOINT=1`` (checkpoint at the
end), ``WAIT=PATH`` (after the first tick, wait until PATH exists: a process that
started, and checked the root's format, before another build marked it).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import persistkit
from persistkit import (
    Partial,
    PersistPartialAdapter,
    PersistScheduleAdapter,
    PersistSignalAdapter,
    Schedule,
)
from persistkit.backends import FileBackend
from persistkit.models import PartialData, ScheduledSignalRow, SignalRow

STRATEGY = "st"
T0 = 1_763_700_000_000
MIN = 60_000


def expected(first: int, last: int) -> list[int]:
    """``[scheduled, opened, cancelled, profit]`` of ticks ``first`` .. ``last - 1``."""
    steps = [i % 6 for i in range(first, last)]
    return [
        sum(s in (0, 4) for s in steps),
        steps.count(1),
        steps.count(5),
        steps.count(2),
    ]


def entry(symbol: str, number: int) -> ScheduledSignalRow:
    return ScheduledSignalRow(
        id=f"s{number}",
        symbol=symbol,
        strategy_name=STRATEGY,
        position="long",
        price_open=100.0,
        price_take_profit=110.0,
        price_stop_loss=95.0,
        scheduled_at=T0 + number * MIN,
        pending_at=T0 + number * MIN,
    )


async def tick(symbol: str, number: int) -> None:
    step = number % 6
    async with persistkit.transaction():
        if step in (0, 4):  # scheduled
            await PersistScheduleAdapter.write_schedule_data(
                entry(symbol, number), symbol, STRATEGY
            )
        elif step == 1:  # the entry of the tick before fills: opened
            filled = SignalRow.model_validate(
                {**entry(symbol, number - 1).model_dump(), "pendingAt": T0 + number * MIN}
            )
            await PersistSignalAdapter.write_signal_data(filled, symbol, STRATEGY)
            await PersistScheduleAdapter.write_schedule_data(None, symbol, STRATEGY)
        elif step == 2:  # its first profit level
            levels = {f"s{number - 2}": PartialData(profit_levels=[10])}
            await PersistPartialAdapter.write_partial_data(levels, symbol, STRATEGY)
        elif step == 3:  # closed
            await PersistSignalAdapter.write_signal_data(None, symbol, STRATEGY)
        else:  # the entry of the tick before is cancelled
            await PersistScheduleAdapter.write_schedule_data(None, symbol, STRATEGY)


async def main() -> None:
    root, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    symbol = sys.argv[4] if len(sys.argv) > 4 else "BTC"
    backend = FileBackend(root, journal_limit=int(os.environ.get("JOURNAL_LIMIT", 64 << 20)))
    persistkit.configure(mode="live", backend=backend, clock=lambda: T0)
    wait = os.environ.get("WAIT")
    for number in range(first, first + count):
        await tick(symbol, number)
        print("ack", number, flush=True)
        while wait and not os.path.exists(wait):
            time.sleep(0.02)
    if os.environ.get("CHECKPOINT") == "1":
        backend.journal.checkpoint()
    schedule = await Schedule.get_data(symbol, STRATEGY)
    partial = await Partial.get_data(symbol, STRATEGY)
    totals = [schedule.total_scheduled, schedule.total_opened, schedule.total_cancelled]
    print(json.dumps([*totals, partial.total_profit]), flush=True)


if __name__ == "__main__":
    asyncio.run(main())

"""A process that ticks one pair (BTCUSDT, dip), for the tests of several writers.

    python stats_writer.py TARGET NAME TICKS START

TARGET is a backend URL (``redis://...``) or a root directory. Each tick
replaces the pair's scheduled entry with ``{NAME}-{n}`` and gives it its first
profit level: one "scheduled" and one "profit" event per acknowledged tick (and
a "cancelled" for the entry it replaces). The process writes ``{START}.{NAME}``
once ready and begins when ``START`` exists, so that all the writers race from
the first tick. It prints how many ticks failed with ``ConflictError``, then the
first such error.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import persistkit
from persistkit import PersistPartialAdapter, PersistScheduleAdapter
from persistkit.errors import ConflictError
from persistkit.models import PartialData, ScheduledSignalRow


async def tick(settings: persistkit.Settings, name: str, ticks: int) -> None:
    failed: list[str] = []
    for number in range(ticks):
        signal_id = f"{name}-{number}"
        entry = ScheduledSignalRow(
            id=signal_id, symbol="BTCUSDT", strategy_name="dip", position="long",
            price_open=100.0, price_take_profit=110.0, price_stop_loss=90.0,
            scheduled_at=1_763_700_000_000, pending_at=1_763_700_000_000,
        )  # fmt: skip
        try:
            async with persistkit.transaction():
                await PersistScheduleAdapter.write_schedule_data(entry, "BTCUSDT", "dip")
                await PersistPartialAdapter.write_partial_data(
                    {signal_id: PartialData(profit_levels=[10])}, "BTCUSDT", "dip"
                )
        except ConflictError as exc:
            failed.append(repr(exc))
    print(len(failed), *failed[:1], flush=True)
    await settings.backend.aclose()


def main(target: str, name: str, ticks: int, start: str) -> None:
    if "://" in target:
        settings = persistkit.configure(mode="live", backend=target, event_limit=10_000)
    else:
        settings = persistkit.configure(mode="live", base_dir=target, event_limit=10_000)
    open(f"{start}.{name}", "w").close()  # ready
    while not os.path.exists(start):
        time.sleep(0.001)
    asyncio.run(tick(settings, name, ticks))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])

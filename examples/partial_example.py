"""Partial adapter: profit/loss milestones already reported are not reported twice after a restart.

python examples/partial_example.py [BASE_DIR]      (default ./dump/data)
"""

from __future__ import annotations

import asyncio
import sys

import persistkit
from persistkit import PersistPartialAdapter
from persistkit.models import PARTIAL_LEVELS, PartialData


async def report_progress(signal_id: str, percent_to_take_profit: float) -> list[int]:
    """Report each 10% milestone once, however often the bot restarts."""
    levels = await PersistPartialAdapter.read_partial_data("BTCUSDT", "trend")
    reached = levels.get(signal_id, PartialData())
    new = [
        level
        for level in PARTIAL_LEVELS
        if level <= percent_to_take_profit and level not in reached.profit_levels
    ]
    if new:
        levels[signal_id] = reached.model_copy(
            update={"profit_levels": sorted([*reached.profit_levels, *new])}
        )
        await PersistPartialAdapter.write_partial_data(levels, "BTCUSDT", "trend")
    return new


async def main(base_dir: str) -> None:
    persistkit.configure(mode="live", base_dir=base_dir)
    await PersistPartialAdapter.write_partial_data(None, "BTCUSDT", "trend")
    print("price at 25% of the way:", await report_progress("sig-1", 25))  # [10, 20]
    # ... the bot restarts here; the milestones come back from disk ...
    print("price at 25% again:    ", await report_progress("sig-1", 25))  # []
    print("price at 41%:          ", await report_progress("sig-1", 41))  # [30, 40]
    levels = await PersistPartialAdapter.read_partial_data("BTCUSDT", "trend")
    assert levels["sig-1"].profit_levels == [10, 20, 30, 40]


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "./dump/data"))

"""Schedule adapter: a limit entry waits for its price across restarts, then fills or is cancelled.

python examples/schedule_example.py [BASE_DIR]      (default ./dump/data)
"""

from __future__ import annotations

import asyncio
import sys

import persistkit
from persistkit import PersistScheduleAdapter, PersistSignalAdapter
from persistkit.models import ScheduledSignalRow, SignalRow


async def main(base_dir: str) -> None:
    persistkit.configure(mode="live", base_dir=base_dir)
    entry = ScheduledSignalRow(
        id="limit-1",
        symbol="ETH/USDT",  # any exchange name: stored as ETH%2FUSDT, read back as is
        strategy_name="dip buyer",
        position="long",
        price_open=3_100.0,
        price_take_profit=3_300.0,
        price_stop_loss=3_000.0,
        scheduled_at=1_763_700_000_000,
        pending_at=1_763_700_000_000,
    )
    await PersistScheduleAdapter.write_schedule_data(entry, "ETH/USDT", "dip buyer")
    waiting = await PersistScheduleAdapter.read_schedule_data("ETH/USDT", "dip buyer")
    assert waiting == entry
    print(f"waiting: {waiting.position} limit @ {waiting.price_open}")

    # The price reached the limit: the entry becomes the open signal, in one tick.
    filled = SignalRow.model_validate({**entry.model_dump(), "pendingAt": 1_763_700_600_000})
    async with persistkit.transaction():
        await PersistSignalAdapter.write_signal_data(filled, "ETH/USDT", "dip buyer")
        await PersistScheduleAdapter.write_schedule_data(None, "ETH/USDT", "dip buyer")
    print(
        "scheduled now:", await PersistScheduleAdapter.read_schedule_data("ETH/USDT", "dip buyer")
    )
    signal = await PersistSignalAdapter.read_signal_data("ETH/USDT", "dip buyer")
    assert signal is not None
    print(f"open signal: {signal.id} filled at {signal.pending_at}")
    await PersistSignalAdapter.write_signal_data(None, "ETH/USDT", "dip buyer")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "./dump/data"))

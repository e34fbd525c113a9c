"""Signal adapter: the open signal of a (symbol, strategy) pair survives a restart.

python examples/signal_example.py [BASE_DIR]      (default ./dump/data)
"""

from __future__ import annotations

import asyncio
import sys

import persistkit
from persistkit import PersistSignalAdapter
from persistkit.models import SignalRow


async def main(base_dir: str) -> None:
    persistkit.configure(mode="live", base_dir=base_dir)
    row = SignalRow(
        id="sig-1",
        symbol="BTCUSDT",
        strategy_name="trend",
        position="long",
        price_open=64_000.0,
        price_take_profit=66_000.0,
        price_stop_loss=63_000.0,
        scheduled_at=1_763_700_000_000,
        pending_at=1_763_700_060_000,
    )
    # Durable when the call returns.
    await PersistSignalAdapter.write_signal_data(row, "BTCUSDT", "trend")
    restored = await PersistSignalAdapter.read_signal_data("BTCUSDT", "trend")
    assert restored == row
    print(f"open signal: {restored.id} {restored.position} @ {restored.price_open}")
    # The position closed: clearing the signal removes its file.
    await PersistSignalAdapter.write_signal_data(None, "BTCUSDT", "trend")
    print("after close:", await PersistSignalAdapter.read_signal_data("BTCUSDT", "trend"))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "./dump/data"))

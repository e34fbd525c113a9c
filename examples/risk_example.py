"""Risk adapter: a risk profile's active positions, the portfolio limits' memory.

python examples/risk_example.py [BASE_DIR]      (default ./dump/data)
"""

from __future__ import annotations

import asyncio
import sys

import persistkit
from persistkit import PersistRiskAdapter
from persistkit.models import RiskActivePosition

MAX_POSITIONS = 2


def position(symbol: str, signal_id: str) -> RiskActivePosition:
    return RiskActivePosition(
        symbol=symbol,
        strategy_name="trend",
        signal_id=signal_id,
        position="long",
        price_open=100.0,
        quantity=1.5,
        added_at=1_763_700_060_000,
    )


async def main(base_dir: str) -> None:
    persistkit.configure(mode="live", base_dir=base_dir)
    await PersistRiskAdapter.write_position_data(None, "portfolio")  # start empty
    for symbol, signal_id in [("BTCUSDT", "s1"), ("ETHUSDT", "s2"), ("SOLUSDT", "s3")]:
        # After a restart this list comes back first, so the limit holds from the first tick.
        active = await PersistRiskAdapter.read_position_data("portfolio")
        if len(active) >= MAX_POSITIONS:
            print(f"{symbol}: refused, {len(active)} positions open (limit {MAX_POSITIONS})")
            continue
        active.append((signal_id, position(symbol, signal_id)))
        await PersistRiskAdapter.write_position_data(active, "portfolio")
        print(f"{symbol}: position {signal_id} added")
    active = await PersistRiskAdapter.read_position_data("portfolio")
    print("active positions:", [key for key, _ in active])
    assert [key for key, _ in active] == ["s1", "s2"]


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "./dump/data"))

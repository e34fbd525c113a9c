"""Backtest mode (``configure(mode="backtest")``, the memory backend) against ``dict`` + orjson.

A backtest calls the store on every simulated tick, so what matters is the cost
of one call next to the cheapest thing that could stand in for it: encoding
the value into a plain dict. The loop group measures what persisting every
tick adds to a simulated backtest.
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson

from bench.harness import Case, Group, Sample, timed
from bench.payload import SIGNAL
from bench.sizes import Sizes
from bench.store_loops import read_loop
from persistkit import PersistBase, configure

__all__ = ["backtest_loop_group", "memory_calls_group"]


def _backtest_store() -> PersistBase[Any]:
    configure(mode="backtest")
    return PersistBase("signal")


def memory_calls_group(sizes: Sizes) -> Group:
    count = sizes.memory_calls
    store = _backtest_store()
    plain: dict[str, bytes] = {}

    async def setup() -> None:
        configure(mode="backtest")  # stores follow configure() when called: this group's mode
        await store.write_value("BTCUSDT", SIGNAL)
        plain["BTCUSDT"] = orjson.dumps(SIGNAL)

    async def dict_write() -> Sample:
        table = plain
        dumps = orjson.dumps
        started = time.perf_counter()
        for _ in range(count):
            table["BTCUSDT"] = dumps(SIGNAL)
        return timed(count, started)

    async def dict_read() -> Sample:
        table = plain
        loads = orjson.loads
        started = time.perf_counter()
        for _ in range(count):
            loads(table["BTCUSDT"])
        return timed(count, started)

    async def dict_write_coroutine() -> Sample:
        # The floor of any async API: the same dict write behind one awaited coroutine.
        table = plain
        dumps = orjson.dumps

        async def write(key: str, value: Any) -> None:
            table[key] = dumps(value)

        started = time.perf_counter()
        for _ in range(count):
            await write("BTCUSDT", SIGNAL)
        return timed(count, started)

    async def persistkit_write() -> Sample:
        started = time.perf_counter()
        for _ in range(count):
            await store.write_value("BTCUSDT", SIGNAL)
        return timed(count, started)

    return Group(
        "backtest-calls",
        "Backtest mode: one call",
        "calls",
        "dict[key] = orjson.dumps(value)",
        [
            Case("dict[key] = orjson.dumps(value)", "reference", dict_write),
            Case(
                "same, inside an awaited coroutine",
                "reference",
                dict_write_coroutine,
                note="the cost of any async call",
            ),
            Case("persistkit write_value (backtest mode)", "persistkit", persistkit_write),
            Case("orjson.loads(dict[key])", "reference", dict_read),
            Case(
                "persistkit read_value (backtest mode)",
                "persistkit",
                read_loop(lambda: store, "BTCUSDT", count),
                reference="orjson.loads(dict[key])",
            ),
        ],
        sizes.rounds,
        setup=setup,
        notes=[f"{count} calls per sample, one key, the same signal as the file cases."],
    )


class _Strategy:
    """A moving-average crossover over a random-walk price: the work a backtest does per tick."""

    def __init__(self) -> None:
        self.price = 67_000.0
        self.fast = self.price
        self.slow = self.price
        self.step = 0

    def tick(self) -> dict[str, Any]:
        self.step += 1
        self.price *= 1.0 + 0.0005 * math.sin(self.step * 0.7) + 0.0002 * math.cos(self.step * 0.13)
        self.fast += (self.price - self.fast) * 0.2
        self.slow += (self.price - self.slow) * 0.05
        return {
            "symbol": "BTCUSDT",
            "position": "long" if self.fast > self.slow else "short",
            "priceOpen": self.price,
            "priceTakeProfit": self.price * 1.02,
            "priceStopLoss": self.price * 0.99,
            "pendingAt": 1_763_700_000_000 + self.step * 60_000,
        }


def backtest_loop_group(sizes: Sizes) -> Group:
    ticks = sizes.backtest_ticks

    async def without_persistence() -> Sample:
        strategy = _Strategy()
        latest: dict[str, Any] = {}
        started = time.perf_counter()
        for _ in range(ticks):
            latest = strategy.tick()
        sample = timed(ticks, started)
        assert latest["symbol"] == "BTCUSDT"
        return sample

    async def persisting_every_tick() -> Sample:
        store = _backtest_store()
        strategy = _Strategy()
        started = time.perf_counter()
        for _ in range(ticks):
            await store.write_value("BTCUSDT", strategy.tick())
        return timed(ticks, started)

    return Group(
        "backtest-loop",
        f"Simulated backtest of {ticks:,} ticks",
        "ticks",
        "loop without persistence",
        [
            Case("loop without persistence", "reference", without_persistence),
            Case(
                "loop + write_value every tick (backtest mode)", "persistkit", persisting_every_tick
            ),
        ],
        sizes.slow_rounds,
        warmup=False,
        notes=[
            "Each tick moves a random-walk price, updates two moving averages and "
            "builds the signal; the persisted loop also awaits write_value(signal).",
        ],
    )

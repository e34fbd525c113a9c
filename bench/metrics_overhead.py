"""What the metrics hooks cost: ``python -m bench.metrics_overhead [CALLS]``.

The hottest calls are a backtest's ``write_value`` and ``read_value`` (the
memory backend, no I/O), so that is where a hook shows most. Two figures, each
a ratio measured in this run on this machine:

- **off**: the hook as it stands in ``PersistBase.read_value``/``write_value``
  with metrics disabled (a module global read, a compare, a ``try/finally``),
  timed in a coroutine of its own against the same coroutine without it; the
  difference, divided by the time of one backtest call, is what every process
  that never enables metrics pays.
- **on**: the same backtest loop with metrics enabled on an OpenTelemetry SDK
  meter provider (no exporter) over the loop with metrics off.

Rounds alternate (off, on, off, ...) so that machine load hits both alike; the
median of the per-round ratios is printed with its inter-quartile range.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.payload import SIGNAL
from persistkit import PersistBase, _metrics, configure, disable_metrics, enable_metrics

ROUNDS = 15


async def _bare() -> int:
    return 1


async def _hooked() -> int:
    # A copy of the hook in PersistBase.read_value: keep the two alike.
    recorder = _metrics.recorder
    started = time.perf_counter() if recorder is not None else 0.0
    try:
        return 1
    finally:
        if recorder is not None:
            recorder.read_duration.record(time.perf_counter() - started)


async def _loop(call: Callable[[], Awaitable[Any]], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        await call()
    return (time.perf_counter() - started) / count


def _summary(name: str, ratios: list[float]) -> str:
    low, _, high = statistics.quantiles(ratios, n=4)
    return f"{name}: median {statistics.median(ratios):.4f} (IQR {low:.4f}-{high:.4f})"


async def main(count: int) -> None:
    from opentelemetry.sdk.metrics import MeterProvider

    provider = MeterProvider()
    configure(mode="backtest")
    store: PersistBase[Any] = PersistBase("signal")
    await store.write_value("BTCUSDT", SIGNAL)

    def write() -> Awaitable[str]:
        return store.write_value("BTCUSDT", SIGNAL)

    def read() -> Awaitable[Any]:
        return store.read_value("BTCUSDT")

    off_ratios: dict[str, list[float]] = {"write": [], "read": []}
    on_ratios: dict[str, list[float]] = {"write": [], "read": []}
    for _ in range(ROUNDS):
        disable_metrics()
        hook = await _loop(_hooked, count) - await _loop(_bare, count)
        for name, call in (("write", write), ("read", read)):
            off = await _loop(call, count)
            enable_metrics(provider)
            on = await _loop(call, count)
            disable_metrics()
            off_ratios[name].append(hook / off)
            on_ratios[name].append(on / off)
    provider.shutdown()
    print(f"backtest calls per loop: {count}, rounds: {ROUNDS}")
    for name in ("write", "read"):
        print(_summary(f"{name}_value, metrics off: hook / call", off_ratios[name]))
        print(_summary(f"{name}_value, metrics on / off", on_ratios[name]))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))

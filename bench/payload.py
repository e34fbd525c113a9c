"""The value every case stores: a ~300-byte JSON trading signal, the size a bot stores."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["SIGNAL", "SIGNALS", "SIGNALS_BYTES", "SIGNAL_BYTES", "VARIANTS", "Rotation", "signal"]


def signal(number: int = 0) -> dict[str, Any]:
    """An open signal row like the ones a live bot persists on every change."""
    return {
        "id": f"3f2a9c1e-7b4d-4e8a-9c2f-{number:012d}",
        "position": "long",
        "note": "ema cross 15m",
        "priceOpen": 67_123.45,
        "priceTakeProfit": 68_500.0,
        "priceStopLoss": 66_400.0,
        "minuteEstimatedTime": 240,
        "exchangeName": "binance",
        "strategyName": "ema_cross_v2",
        "symbol": "BTCUSDT",
        "scheduledAt": 1_763_700_000_000 + number,
        "pendingAt": 1_763_700_060_000 + number,
        "_isScheduled": False,
    }


SIGNAL = signal()
SIGNAL_BYTES = orjson.dumps(SIGNAL)

VARIANTS = 61
"""Writes cycle through this many different values (a prime, so that no rotation over
ids lines up with it): sqlite skips rewriting a row whose bytes did not change, and
a benchmark that wrote the same value again would measure that shortcut."""

SIGNALS = [signal(number) for number in range(VARIANTS)]
SIGNALS_BYTES = [orjson.dumps(value) for value in SIGNALS]


class Rotation:
    """Which id gets which value, write after write: every write changes what is stored."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.written = 0

    def take(self, count: int) -> list[tuple[str, int]]:
        """The next ``count`` writes as (id, index into SIGNALS / SIGNALS_BYTES)."""
        start, self.written = self.written, self.written + count
        return [(self.ids[n % len(self.ids)], n % VARIANTS) for n in range(start, start + count)]

"""How much work each sample does: the full run, and ``--quick`` for smoke runs."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FULL", "QUICK", "Sizes"]


@dataclass(frozen=True, slots=True)
class Sizes:
    rounds: int
    """Rounds of the quick groups (single writes, reads, backtest-mode calls)."""
    slow_rounds: int
    """Rounds of the groups whose sample takes seconds (startup scans, the backtest loop)."""
    durable_writes: int
    """Durable writes per sample."""
    reads: int
    distinct_ids: int
    """Ids the distinct-id cases rotate over."""
    init_entities: int
    """Entities the startup scan reads (the issue asks for 10,000)."""
    memory_calls: int
    """Backtest-mode calls per sample."""
    backtest_ticks: int
    """Ticks of the simulated backtest loop (the issue asks for 1,000,000)."""
    entities_per_tick: tuple[int, ...]
    tick_entity_writes: int
    """Entity writes per sample in the tick cases (at least one tick)."""
    warmup: bool = True
    """Run every case once, unrecorded, before the rounds."""
    cross_check: bool = True
    """Also run backtest-kit's own all-in-one bench.mjs."""


FULL = Sizes(
    rounds=11,
    slow_rounds=5,
    durable_writes=400,
    reads=4000,
    distinct_ids=1000,
    init_entities=10_000,
    memory_calls=100_000,
    backtest_ticks=1_000_000,
    entities_per_tick=(1, 10, 100, 1000),
    tick_entity_writes=1000,
)

QUICK = Sizes(
    rounds=2,
    slow_rounds=2,
    durable_writes=10,
    reads=100,
    distinct_ids=20,
    init_entities=200,
    memory_calls=2000,
    backtest_ticks=5000,
    entities_per_tick=(1, 10),
    tick_entity_writes=10,
    warmup=False,
    cross_check=False,
)

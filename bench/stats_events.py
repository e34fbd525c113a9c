"""What recording the statistics events (``Schedule``, ``Partial``) adds to a bot's tick commit.

A bot's tick as the demo bot writes it: for two pairs, the signal, the scheduled
entry and the partial levels, then the risk profile's positions; one commit per
tick (``LiveSession.tick()``, file backend). The same ticks run in two sessions
of the same process: one with the statistics off (``configure(event_limit=0)``),
one with them on. Three shapes of tick:

- every tick records events: each pair's scheduled entry is replaced (a
  cancellation and a new entry) and a signal reaches a new milestone: 6 events
  appended to 4 logs per tick;
- one tick in four records them, the others write the same rows again: about
  the demo bot's rate (1.3 events per tick over its two pairs);
- no tick records an event: the same rows are written again (the common tick
  of a live bot waiting for its price): only the comparison with what is
  committed is paid.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from bench.harness import Case, Group, Sample, timed
from bench.sizes import Sizes
from persistkit import (
    LiveSession,
    PersistPartialAdapter,
    PersistRiskAdapter,
    PersistScheduleAdapter,
    PersistSignalAdapter,
    configure,
)
from persistkit.config import DEFAULT_EVENT_LIMIT
from persistkit.models import PartialData, RiskActivePosition, ScheduledSignalRow, SignalRow

__all__ = ["statistics_group"]

PAIRS = (("BTCUSDT", "trend_follow"), ("ETHUSDT", "mean_reversion"))
RISK_NAME = "main"
T0 = 1_763_700_000_000

OFF_CHANGING = "tick changing schedule and levels, statistics off"
ON_CHANGING = "the same ticks, statistics on (6 events per tick)"
OFF_MIXED = "one tick in four changing them, statistics off"
ON_MIXED = "the same ticks, statistics on (6 events every 4th tick, the demo bot's rate)"
OFF_STEADY = "tick rewriting unchanged rows, statistics off"
ON_STEADY = "the same ticks, statistics on (nothing to record)"


def _row(model: type[SignalRow], symbol: str, strategy: str, signal_id: str) -> Any:
    return model(
        id=signal_id,
        symbol=symbol,
        strategy_name=strategy,
        position="long",
        price_open=100.0,
        price_take_profit=110.0,
        price_stop_loss=95.0,
        scheduled_at=T0,
        pending_at=T0,
    )


def statistics_group(workdir: str, sizes: Sizes) -> Group:
    root = os.path.join(workdir, "statistics")
    ticks = max(1, sizes.tick_entity_writes // 7)
    sessions: dict[bool, LiveSession] = {}
    counter = iter(range(1 << 62))
    positions = [
        (
            f"{symbol}:{strategy}",
            RiskActivePosition(
                symbol=symbol,
                strategy_name=strategy,
                signal_id="open",
                position="long",
                price_open=100.0,
                quantity=1.0,
                added_at=T0,
            ),
        )
        for symbol, strategy in PAIRS
    ]

    async def setup() -> None:
        for recording in (False, True):
            # A session pins the settings it starts with: one root per setting.
            configure(
                mode="live",
                base_dir=os.path.join(root, "on" if recording else "off"),
                event_limit=DEFAULT_EVENT_LIMIT if recording else 0,
            )
            session = sessions[recording] = LiveSession(
                PAIRS, RISK_NAME, base_dir=os.path.join(root, "on" if recording else "off")
            )
            await session.start()

    async def teardown() -> None:
        for session in sessions.values():
            await session.aclose()
        sessions.clear()
        shutil.rmtree(root, ignore_errors=True)

    async def tick(session: LiveSession, number: int) -> None:
        async with session.tick():
            for symbol, strategy in PAIRS:
                signal = _row(SignalRow, symbol, strategy, f"open-{number}")
                entry = _row(ScheduledSignalRow, symbol, strategy, f"limit-{number}")
                levels = {f"open-{number}": PartialData(profit_levels=[10])}
                await PersistSignalAdapter.write_signal_data(signal, symbol, strategy)
                await PersistScheduleAdapter.write_schedule_data(entry, symbol, strategy)
                await PersistPartialAdapter.write_partial_data(levels, symbol, strategy)
            await PersistRiskAdapter.write_position_data(positions, RISK_NAME)

    def drained(session: LiveSession, sample: Sample) -> Sample:
        # As in the tick groups: the journal's background applier is finished
        # untimed, so that it lands in no sample.
        journal = getattr(session.backend, "journal", None)
        if journal is not None:
            journal.checkpoint()
        return sample

    def ticking(recording: bool, every: int) -> Any:
        """Ticks that change the rows every ``every`` ticks (0: never) and rewrite them else."""

        async def run() -> Sample:
            session = sessions[recording]
            number = -1  # steady: the rows of "tick -1", the same after the first time
            started = time.perf_counter()
            for index in range(ticks):
                if every and index % every == 0:
                    number = next(counter)
                await tick(session, number)
            return drained(session, timed(ticks, started))

        return run

    cases = [
        Case(OFF_CHANGING, "reference", ticking(False, 1)),
        Case(ON_CHANGING, "persistkit", ticking(True, 1)),
        Case(OFF_MIXED, "reference", ticking(False, 4), reference=OFF_MIXED),
        Case(ON_MIXED, "persistkit", ticking(True, 4), reference=OFF_MIXED),
        Case(OFF_STEADY, "reference", ticking(False, 0), reference=OFF_STEADY),
        Case(ON_STEADY, "persistkit", ticking(True, 0), reference=OFF_STEADY),
    ]
    return Group(
        "statistics",
        "Statistics events in a bot's tick commit",
        "ticks",
        OFF_CHANGING,
        cases,
        sizes.rounds,
        setup=setup,
        teardown=teardown,
        notes=[
            f"{ticks} ticks per sample; a tick writes 7 entities (2 pairs x signal, scheduled "
            "entry, partial levels, and the risk positions) in one commit "
            "(LiveSession.tick(), file backend).",
            "Each 'statistics on' case is compared with the same ticks with the statistics "
            "off, in the same round; the issue allows the events at most 10% of the tick "
            "(a ratio of at least 0.91).",
        ],
    )

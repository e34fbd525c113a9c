"""What recording the statistics events (``Schedule``, ``Partial``) adds to a bot's tick commit.

A bot's tick as the demo bot writes it: for two pairs, the signal, the scheduled
entry and the partial levels, then the risk profile's positions; one commit per
tick (``LiveSession.tick()``, file backend). The same ticks run in two sessions
of the same process: one with the statistics off (``configure(event_limit=0)``),
one with them on. Three shapes of tick:

- every tick records events: each pair's scheduled entry is replaced (a
  cancellation and a new entry) and a signal reaches a new milestone: 6 events
  appended to the logs of 2 pairs per tick (one head each);
- every tick records one event: one pair's new signal reaches its first
  milestone, the other rows are written again (a live tick that has an event
  usually has one: a fill, or a level reached);
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
from persistkit._config import DEFAULT_EVENT_LIMIT
from persistkit.models import PartialData, RiskActivePosition, ScheduledSignalRow, SignalRow

__all__ = ["statistics_group"]

PAIRS = (("BTCUSDT", "trend_follow"), ("ETHUSDT", "mean_reversion"))
RISK_NAME = "main"
T0 = 1_763_700_000_000
ROUNDS_FACTOR = 3

OFF_CHANGING = "tick changing schedule and levels, statistics off"
ON_CHANGING = "the same ticks, statistics on (6 events per tick)"
OFF_ONE = "tick where one pair's signal changes and reaches a level, statistics off"
ON_ONE = "the same ticks, statistics on (1 event per tick)"
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
    # Three times the rounds of the other tick groups, each a third as long: the
    # statistics cost a few percent, which a machine shared with other work hides
    # unless each ratio pairs samples taken close together, and many of them.
    ticks = max(1, sizes.tick_entity_writes // 7 // ROUNDS_FACTOR)
    sessions: dict[bool, LiveSession] = {}
    record_bytes: dict[str, tuple[int, int]] = {}
    """Journal bytes the samples of each case wrote, and their ticks."""
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
        for off, on, _, _ in shapes:
            if off in record_bytes and on in record_bytes:
                notes.append(
                    f"Commit record per tick, {on.removeprefix('the same ticks, ')}: "
                    f"{per_tick(on):,.0f} bytes, {per_tick(off):,.0f} with the statistics off "
                    f"({off})."
                )

    def per_tick(case: str) -> float:
        written, counted = record_bytes[case]
        return written / counted

    async def tick(session: LiveSession, number: int, first_pair: int = -1) -> None:
        """Rows numbered ``number``; the first pair's signal and levels ``first_pair``
        (if not -1)."""
        async with session.tick():
            for index, (symbol, strategy) in enumerate(PAIRS):
                opened = first_pair if index == 0 and first_pair != -1 else number
                signal = _row(SignalRow, symbol, strategy, f"open-{opened}")
                entry = _row(ScheduledSignalRow, symbol, strategy, f"limit-{number}")
                levels = {f"open-{opened}": PartialData(profit_levels=[10])}
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

    def journal_bytes(session: LiveSession) -> int:
        journal = getattr(session.backend, "journal", None)
        try:
            return 0 if journal is None else os.path.getsize(journal.path)
        except FileNotFoundError:  # nothing committed yet
            return 0

    def ticking(case: str, recording: bool, every: int, one_pair: bool = False) -> Any:
        """Ticks that change the rows every ``every`` ticks (0: never) and rewrite them
        else; ``one_pair``: only the first pair's signal and levels change, every tick."""

        async def run() -> Sample:
            session = sessions[recording]
            number = -1  # steady: the rows of "tick -1", the same after the first time
            if not every and not one_pair:
                # Untimed: the rows the other shapes left change to those of "tick -1"
                # here, so that no timed tick of "nothing to record" records events.
                await tick(session, number)
            before = journal_bytes(session)
            started = time.perf_counter()
            for index in range(ticks):
                if one_pair:
                    await tick(session, -2, next(counter))
                    continue
                if every and index % every == 0:
                    number = next(counter)
                await tick(session, number)
            sample = timed(ticks, started)
            # The journal holds this sample's commit records: drained() empties it after.
            written, counted = record_bytes.get(case, (0, 0))
            record_bytes[case] = (written + journal_bytes(session) - before, counted + ticks)
            return drained(session, sample)

        return run

    shapes = [
        (OFF_CHANGING, ON_CHANGING, 1, False),
        (OFF_ONE, ON_ONE, 1, True),
        (OFF_MIXED, ON_MIXED, 4, False),
        (OFF_STEADY, ON_STEADY, 0, False),
    ]
    cases = []
    for off, on, every, one_pair in shapes:
        cases += [
            Case(off, "reference", ticking(off, False, every, one_pair), reference=off),
            Case(on, "persistkit", ticking(on, True, every, one_pair), reference=off),
        ]
    notes = [
        f"{ticks} ticks per sample; a tick writes 7 entities (2 pairs x signal, scheduled "
        "entry, partial levels, and the risk positions) in one commit "
        "(LiveSession.tick(), file backend).",
        "Each 'statistics on' case is compared with the same ticks with the statistics "
        "off, in the same round; the issue allows the events at most 10% of the tick "
        "(a ratio of at least 0.91).",
    ]
    return Group(
        "statistics",
        "Statistics events in a bot's tick commit",
        "ticks",
        OFF_CHANGING,
        cases,
        sizes.rounds * ROUNDS_FACTOR,
        setup=setup,
        teardown=teardown,
        notes=notes,
    )

"""What a checkpoint spends folding the statistics events of the
journal's records, per tick folded (statistics on minus off), for the four shapes of
bench/stats_events.py. Bytecodes (deterministic; C code such as pydantic's parsing is not
counted), or with ``time`` wall-clock microseconds (noisy):

    PYTHONHASHSEED=0 PYTHONPATH=src:. python -m bench.fold_cost SHAPE [TICKS] [time]
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import tempfile
import time
from typing import Any

import persistkit.backends._journal as journal_module
from bench import stats_events as be
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

journal_module.APPLY_DELAY = 1e6  # the applier stays out of the count


def run(recording: bool, shape: int, ticks: int, timing: bool = False) -> tuple[float, float]:
    """Bytecodes (or seconds) of the ticks, and of the checkpoint after them."""
    counts: list[float] = [0, 0]
    phase = [0]

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if event == "call":
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
            return tracer
        if event == "opcode":
            counts[phase[0]] += 1
        return tracer

    async def main() -> None:
        root = tempfile.mkdtemp()
        configure(mode="live", base_dir=root, event_limit=DEFAULT_EVENT_LIMIT if recording else 0)
        session = LiveSession(be.PAIRS, be.RISK_NAME, base_dir=root)
        await session.start()
        counter = itertools.count()
        positions = [
            (
                f"{symbol}:{strategy}",
                RiskActivePosition(
                    symbol=symbol, strategy_name=strategy, signal_id="open", position="long",
                    price_open=100.0, quantity=1.0, added_at=be.T0,
                ),
            )
            for symbol, strategy in be.PAIRS
        ]  # fmt: skip

        async def tick(number: int, first: int = -1) -> None:
            async with session.tick():
                for index, (symbol, strategy) in enumerate(be.PAIRS):
                    opened = first if index == 0 and first != -1 else number
                    await PersistSignalAdapter.write_signal_data(
                        be._row(SignalRow, symbol, strategy, f"open-{opened}"), symbol, strategy
                    )
                    await PersistScheduleAdapter.write_schedule_data(
                        be._row(ScheduledSignalRow, symbol, strategy, f"limit-{number}"),
                        symbol,
                        strategy,
                    )
                    await PersistPartialAdapter.write_partial_data(
                        {f"open-{opened}": PartialData(profit_levels=[10])}, symbol, strategy
                    )
                await PersistRiskAdapter.write_position_data(positions, be.RISK_NAME)

        journal = session.backend.journal  # type: ignore[attr-defined]
        number = -1
        for _ in range(12):  # warm up, then start from an empty journal
            await tick(next(counter))
        journal.checkpoint()
        started = time.perf_counter()
        if not timing:
            sys.settrace(tracer)
        for index in range(ticks):
            if shape == 1:
                await tick(-2, next(counter))
                continue
            if shape == 0 or (shape == 2 and index % 4 == 0):
                number = next(counter)
            await tick(number)
        phase[0] = 1
        ticked = time.perf_counter()
        journal.checkpoint()
        sys.settrace(None)
        if timing:
            counts[0], counts[1] = ticked - started, time.perf_counter() - ticked
        await session.aclose()

    asyncio.run(main())
    return counts[0], counts[1]


def main() -> None:
    shape = int(sys.argv[1])
    ticks = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    if sys.argv[3:] == ["time"]:
        rounds = [(run(False, shape, ticks, True), run(True, shape, ticks, True)) for _ in range(5)]
        rounds.sort(key=lambda pair: pair[1][1] - pair[0][1])
        (off_ticks, off_checkpoint), (on_ticks, on_checkpoint) = rounds[len(rounds) // 2]
        print(
            f"shape {shape}, {ticks} ticks (median of 5 by fold cost): tick us off "
            f"{off_ticks / ticks * 1e6:.0f} on {on_ticks / ticks * 1e6:.0f}; checkpoint us/tick "
            f"off {off_checkpoint / ticks * 1e6:.0f} on {on_checkpoint / ticks * 1e6:.0f} "
            f"(fold: +{(on_checkpoint - off_checkpoint) / ticks * 1e6:.0f})"
        )
        return
    off_ticks, off_checkpoint = run(False, shape, ticks)
    on_ticks, on_checkpoint = run(True, shape, ticks)
    print(
        f"shape {shape}, {ticks} ticks: tick bytecodes/tick off {off_ticks / ticks:.0f} "
        f"on {on_ticks / ticks:.0f}; checkpoint bytecodes/tick off {off_checkpoint / ticks:.0f} "
        f"on {on_checkpoint / ticks:.0f} (fold: +{(on_checkpoint - off_checkpoint) / ticks:.0f})"
    )


if __name__ == "__main__":
    main()

"""What a process's first statistics read of one pair costs on a file root whose commit
journal is near the checkpoint limit (``persistkit report``, or a bot's first
``get_data`` after a restart): the pair's events are derived from the journal's records.

A bot with ``PAIRS`` pairs ticks until the journal holds ``MEGABYTES`` (default: 60 of
the 64 MB limit, so no checkpoint folds them). Shape ``all``: every tick writes every
pair's signal, scheduled entry and partial levels (the demo bot's tick, with more
pairs); ``one``: every tick writes one pair's, in turn (a bot that writes what
changed). One pair's schedule is replaced every 8th tick it is written (events).

Then, in this process, each figure taken with a new read-only backend (as the command
line opens the root; nothing cached), the median of 5:

- reference: parsing every record of the journal once (:func:`read_journal_file`),
  the pass any reader of the whole journal makes;
- open: the backend's first read of a key (it reads the journal to know the keys
  committed and not yet applied);
- first read: ``Schedule.get_data`` of one pair after the open;
- next read: the same again (incremental: only the records committed since).

    PYTHONPATH=src:. python -m bench.first_read [all|one] [PAIRS] [MEGABYTES]
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time

import persistkit.backends._journal as journal_module
from bench import stats_events as be
from persistkit import (
    LiveSession,
    PersistPartialAdapter,
    PersistScheduleAdapter,
    PersistSignalAdapter,
    Schedule,
    configure,
)
from persistkit.backends._file import FileBackend
from persistkit.models import PartialData, ScheduledSignalRow, SignalRow

journal_module.APPLY_DELAY = 1e6  # the applier stays out of the journal's growth
ROUNDS = 5


def _pairs(count: int) -> list[tuple[str, str]]:
    # Names that are prefixes of others ("C1USDT" of "C10USDT") and one that is escaped.
    return [(f"C{index}USDT", "trend") for index in range(count - 1)] + [("BTC/USDT", "my strat")]


async def _fill(root: str, pairs: list[tuple[str, str]], shape: str, megabytes: float) -> int:
    configure(mode="live", base_dir=root)
    session = LiveSession(pairs, be.RISK_NAME, base_dir=root)
    await session.start()
    journal = session.backend.journal  # type: ignore[attr-defined]
    target = int(megabytes * (1 << 20))
    written = [0] * len(pairs)
    ticks = 0
    while journal.size < target:
        chosen = pairs if shape == "all" else [pairs[ticks % len(pairs)]]
        async with session.tick():
            for symbol, strategy in chosen:
                index = pairs.index((symbol, strategy))
                number = written[index] // 8
                written[index] += 1
                signal = be._row(SignalRow, symbol, strategy, f"open-{number}")
                entry = be._row(ScheduledSignalRow, symbol, strategy, f"limit-{number}")
                levels = {f"open-{number}": PartialData(profit_levels=[10])}
                await PersistSignalAdapter.write_signal_data(signal, symbol, strategy)
                await PersistScheduleAdapter.write_schedule_data(entry, symbol, strategy)
                await PersistPartialAdapter.write_partial_data(levels, symbol, strategy)
        ticks += 1
    # Left open: closing would checkpoint (fold and forget the records).
    return ticks


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def _measure(root: str, pair: tuple[str, str]) -> dict[str, list[float]]:
    taken: dict[str, list[float]] = {"reference": [], "open": [], "first": [], "next": []}
    path = os.path.join(root, journal_module.JOURNAL_DIR, journal_module.JOURNAL_FILE)
    events = None
    for _ in range(ROUNDS):
        with open(path, "rb") as file:  # noqa: ASYNC230 - nothing else runs meanwhile
            data = file.read()
        started = time.perf_counter()
        journal_module.read_journal_file(data)
        opened = time.perf_counter()
        taken["reference"].append(opened - started)
        backend = FileBackend(root, read_only=True)
        await backend.get("risk/none/positions")
        read = time.perf_counter()
        first = await Schedule.get_data(*pair, backend=backend)
        read_again = time.perf_counter()
        again = await Schedule.get_data(*pair, backend=backend)
        done = time.perf_counter()
        taken["open"].append(read - opened)
        taken["first"].append(read_again - read)
        taken["next"].append(done - read_again)
        assert first == again
        assert events is None or first == events
        events = first
        await backend.aclose()
    assert events is not None
    print(f"  {pair}: {events.total_events} schedule events")
    return taken


def main() -> None:
    shape = sys.argv[1] if len(sys.argv) > 1 else "all"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    megabytes = float(sys.argv[3]) if len(sys.argv) > 3 else 60
    pairs = _pairs(count)
    parent = "/dev/shm" if os.path.isdir("/dev/shm") else None  # no fsync to wait for
    root = tempfile.mkdtemp(dir=parent)
    try:
        started = time.perf_counter()
        ticks = asyncio.run(_fill(root, pairs, shape, megabytes))
        size = os.path.getsize(
            os.path.join(root, journal_module.JOURNAL_DIR, journal_module.JOURNAL_FILE)
        )
        print(
            f"shape {shape}, {count} pairs: {ticks} ticks, journal {size / (1 << 20):.1f} MB "
            f"(written in {time.perf_counter() - started:.0f} s)"
        )
        for pair in (pairs[1], pairs[-1]):
            taken = asyncio.run(_measure(root, pair))
            reference = _median_ms(taken["reference"])
            print(
                "  median ms: "
                + ", ".join(f"{name} {_median_ms(samples):.0f}" for name, samples in taken.items())
                + f"; first read / reference {_median_ms(taken['first']) / reference:.2f}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

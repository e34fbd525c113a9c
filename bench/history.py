"""What the history costs a tick, how many bytes it keeps per update, and how fast a replay runs.

History (issue 15): a checkpoint copies the journal into ``.history/`` (fsynced)
before replacing it, and a tick may record its inputs in its commit. The
reference is the same session ticks on a root opened with ``history=None``;
each sample ends with a checkpoint (the step that archives), timed, so that
the archive's copy and fsync are in the figure, not left for later.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from bench.harness import Case, Group, Sample, timed
from bench.payload import SIGNAL
from bench.sizes import Sizes
from persistkit import FileBackend, HistoryPolicy, LiveSession, PersistBase
from persistkit.replay import replay

__all__ = ["HISTORY_OFF", "HISTORY_ON", "HISTORY_WITH_INPUTS", "history_groups"]

HISTORY_OFF = "session ticks, history off (history=None)"
HISTORY_ON = "session ticks, history on (the default)"
HISTORY_WITH_INPUTS = "session ticks recording their inputs, history on"
LIVE_TICKS = "live session ticks recording their inputs (what is replayed)"
REPLAYED = "replay of those ticks through the same strategy (memory target)"

_PER_TICK = 10
_STORES = ("signal", "risk", "schedule", "partial")
_INPUTS = {"prices": {"BTCUSDT": 64123.5, "ETHUSDT": 3120.25}, "signal": "long", "edge_bps": 14}


def history_groups(workdir: str, sizes: Sizes) -> list[Group]:
    return [_history_group(workdir, sizes), _replay_group(workdir, sizes)]


def _bytes_under(folder: str) -> int:
    return sum(
        os.path.getsize(os.path.join(directory, name))
        for directory, _, names in os.walk(folder)
        for name in names
    )


def _ticks_per_sample(sizes: Sizes) -> int:
    return max(2, sizes.tick_entity_writes // _PER_TICK * 2)


def _history_group(workdir: str, sizes: Sizes) -> Group:
    ticks = _ticks_per_sample(sizes)
    state: dict[str, Any] = {}
    notes = [
        f"{ticks} ticks of {_PER_TICK} entities (~{len(SIGNAL)} fields each) over "
        f"{len(_STORES)} stores per sample, then one checkpoint, all timed; the rate counts "
        "ticks. The cost of the history per tick is 1 / ratio - 1.",
    ]

    async def start(name: str, history: HistoryPolicy | None) -> None:
        root = os.path.join(workdir, "history", name)
        backend = FileBackend(root, history=history)
        session = LiveSession([("BTCUSDT", name)], f"bench-{name}", base_dir=root, backend=backend)
        await session.start()
        stores: dict[str, PersistBase[Any]] = {
            store: PersistBase(store, base_dir=root) for store in _STORES
        }
        state[name] = (session, backend, stores, root)

    async def setup() -> None:
        await start("off", None)
        await start("on", HistoryPolicy())
        await start("inputs", HistoryPolicy())

    async def teardown() -> None:
        written = 0
        for name in ("off", "on", "inputs"):
            session, backend, _, root = state.pop(name)
            await session.aclose()
            await backend.aclose()
            if name == "inputs":
                written = _bytes_under(os.path.join(root, ".history"))
        updates = state.pop("updates", 0)
        if updates:
            notes.append(
                f"history kept per entity update (inputs included): {written / updates:,.0f} "
                f"bytes ({written:,} bytes for {updates:,} updates)"
            )
        shutil.rmtree(os.path.join(workdir, "history"), ignore_errors=True)

    def ticking(name: str, inputs: bool) -> Any:
        async def run() -> Sample:
            session, backend, stores, _ = state[name]
            targets = [
                (stores[_STORES[number % len(_STORES)]], f"BTC{number:03d}")
                for number in range(_PER_TICK)
            ]
            started = time.perf_counter()
            for number in range(ticks):
                tick = session.tick(inputs={**_INPUTS, "n": number}) if inputs else session.tick()
                async with tick:
                    for store, entity_id in targets:
                        await store.write_value(entity_id, SIGNAL)
            await backend.checkpoint()
            if inputs:
                state["updates"] = state.get("updates", 0) + ticks * _PER_TICK
            return timed(ticks, started)

        return run

    return Group(
        "history",
        f"history cost per tick ({_PER_TICK} entities per tick, file backend)",
        "ticks",
        HISTORY_OFF,
        [
            Case(HISTORY_OFF, "reference", ticking("off", False)),
            Case(HISTORY_ON, "persistkit", ticking("on", False)),
            Case(HISTORY_WITH_INPUTS, "persistkit", ticking("inputs", True)),
        ],
        sizes.rounds,
        setup=setup,
        teardown=teardown,
        notes=notes,
    )


def _strategy_for(root: str) -> Any:
    """The bench's strategy: one signal and a position sized by a parameter."""

    async def strategy(inputs: dict[str, Any], params: dict[str, Any]) -> None:
        signal_store: PersistBase[Any] = PersistBase("signal", root)
        risk_store: PersistBase[Any] = PersistBase("risk", root)
        await signal_store.write_value("BTCUSDT", {**SIGNAL, "priceOpen": inputs["price"]})
        await risk_store.write_value("main", [inputs["price"] * params.get("size", 1.0)])

    return strategy


def _replay_group(workdir: str, sizes: Sizes) -> Group:
    ticks = _ticks_per_sample(sizes)
    root = os.path.join(workdir, "replay-source")
    state: dict[str, Any] = {}
    strategy = _strategy_for(root)

    async def setup() -> None:
        session = LiveSession([("BTCUSDT", "replayed")], "bench-replay", base_dir=root)
        await session.start()
        state["session"] = session

    async def teardown() -> None:
        await state.pop("session").aclose()
        shutil.rmtree(root, ignore_errors=True)

    async def live() -> Sample:
        session = state["session"]
        started = time.perf_counter()
        for number in range(ticks):
            inputs = {"price": 64000.0 + number}
            async with session.tick(inputs=inputs):
                await strategy(inputs, {})
        return timed(ticks, started)

    async def replayed() -> Sample:
        await state["session"].backend.checkpoint()
        started = time.perf_counter()
        summary = await replay(root, strategy)
        sample = timed(summary.ticks_replayed, started)
        if summary.status != "complete" or summary.first_divergence is not None:
            raise RuntimeError(f"the bench's replay went wrong: {summary}")
        return sample

    return Group(
        "replay",
        "replay speed: recorded ticks replayed per second",
        "ticks",
        LIVE_TICKS,
        [Case(LIVE_TICKS, "reference", live), Case(REPLAYED, "persistkit", replayed)],
        sizes.slow_rounds,
        setup=setup,
        teardown=teardown,
        notes=[
            f"Each live sample records {ticks} ticks (a signal and a risk position each, with "
            "their inputs); each replay sample replays every tick recorded so far (it grows "
            "round by round), from the history, into memory, comparing each with the live "
            "state. The rate counts ticks.",
        ],
    )

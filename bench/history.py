"""What the history costs a tick and a plain write, how many bytes it keeps per update,
how fast a point-in-time read and a replay run.

History (issue 15): a checkpoint copies the journal into ``.history/`` (fsynced)
before replacing it, and a tick may record its inputs in its commit; plain
writes go through the journal too. The reference is the same work on a root
opened with ``history=None`` (plain writes: DESIGN §3's durable replace); each
sample ends with a checkpoint (the step that archives), timed, so that the
archive's copy and fsync are in the figure, not left for later.
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
from persistkit.backends import _journal as journal_module
from persistkit.replay import replay

__all__ = [
    "AS_OF_RECENT",
    "AS_OF_WHOLE",
    "HISTORY_OFF",
    "HISTORY_ON",
    "HISTORY_WITH_INPUTS",
    "PLAIN_OFF",
    "PLAIN_ON",
    "history_groups",
]

HISTORY_OFF = "session ticks, history off (history=None)"
HISTORY_ON = "session ticks, history on (the default)"
HISTORY_WITH_INPUTS = "session ticks recording their inputs, history on"
PLAIN_OFF = "plain writes (no tick), history off (durable replace)"
PLAIN_ON = "plain writes (no tick), history on (journaled, the default)"
AS_OF_WHOLE = "as_of read from the whole history (base + every segment)"
AS_OF_RECENT = "read_value(as_of=) on the last day"
AS_OF_MIDDLE = "read_value(as_of=) mid-history"
AS_OF_OLD = "read_value(as_of=) on the second day"
LIVE_TICKS = "live session ticks recording their inputs (what is replayed)"
REPLAYED = "replay of those ticks through the same strategy (memory target)"

_PER_TICK = 10
_STORES = ("signal", "risk", "schedule", "partial")
_INPUTS = {"prices": {"BTCUSDT": 64123.5, "ETHUSDT": 3120.25}, "signal": "long", "edge_bps": 14}


def history_groups(workdir: str, sizes: Sizes) -> list[Group]:
    return [
        _history_group(workdir, sizes),
        _as_of_group(workdir, sizes),
        _replay_group(workdir, sizes),
    ]


def _bytes_under(folder: str) -> int:
    return sum(
        os.path.getsize(os.path.join(directory, name))
        for directory, _, names in os.walk(folder)
        for name in names
    )


def _ticks_per_sample(sizes: Sizes) -> int:
    return max(2, sizes.tick_entity_writes // _PER_TICK * 2)


_ROUNDS_FACTOR = 3
"""The history group's rounds, per round of the quick groups: shorter samples, more of them,
so that the two halves of each per-round ratio run close together on a shared machine."""


def _history_group(workdir: str, sizes: Sizes) -> Group:
    ticks = max(2, _ticks_per_sample(sizes) // 2)
    plain_ticks = max(2, ticks // 5)  # each write is a commit of its own: 10x the fsyncs
    state: dict[str, Any] = {}
    notes = [
        f"{ticks} ticks of {_PER_TICK} entities (~{len(SIGNAL)} fields each) over "
        f"{len(_STORES)} stores per sample, then one checkpoint, all timed; the rate counts "
        "ticks. The cost of the history per tick is 1 / ratio - 1. The plain-write cases do "
        f"{plain_ticks} times the same {_PER_TICK} writes outside any tick (each its own "
        "commit with history on, a durable replace without), then one checkpoint.",
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
        await start("plain-off", None)
        await start("plain-on", HistoryPolicy())

    async def teardown() -> None:
        written = 0
        for name in ("off", "on", "inputs", "plain-off", "plain-on"):
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

    def plain_writing(name: str) -> Any:
        """A tick's worth of writes each, outside any tick: what a bot without ticks does."""

        async def run() -> Sample:
            _, backend, stores, _ = state[name]
            targets = [
                (stores[_STORES[number % len(_STORES)]], f"BTC{number:03d}")
                for number in range(_PER_TICK)
            ]
            started = time.perf_counter()
            for _ in range(plain_ticks):
                for store, entity_id in targets:
                    await store.write_value(entity_id, SIGNAL)
            await backend.checkpoint()
            return timed(plain_ticks, started)

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
            Case(PLAIN_OFF, "reference", plain_writing("plain-off")),
            Case(PLAIN_ON, "persistkit", plain_writing("plain-on"), reference=PLAIN_OFF),
        ],
        sizes.rounds * _ROUNDS_FACTOR,
        setup=setup,
        teardown=teardown,
        notes=notes,
    )


class _SteppedClock:
    """The journal's clock, moved by the bench: a history of many days, built in seconds."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def time_ns(self) -> int:
        return self.now_ns

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


_AS_OF_READS = 20


def _as_of_group(workdir: str, sizes: Sizes) -> Group:
    days = 30 if sizes.warmup else 5
    per_day = max(20, sizes.tick_entity_writes // 5)
    checkpoints_per_day = 4
    root = os.path.join(workdir, "as-of")
    state: dict[str, Any] = {}
    hour = 3_600 * 1_000_000_000

    async def setup() -> None:
        backend = FileBackend(root)
        store: PersistBase[Any] = PersistBase("signal", backend=backend)
        clock = _SteppedClock(time.time_ns() - (days + 1) * 24 * hour)
        # The journal reads commit times from its module's ``time``: swapped while building.
        journal_globals = vars(journal_module)
        real_time = journal_globals["time"]
        journal_globals["time"] = clock
        times: list[int] = []
        try:
            step = 24 * hour // per_day
            for number in range(days * per_day):
                clock.now_ns += step
                await store.write_value(f"BTC{number % _PER_TICK:03d}", {**SIGNAL, "n": number})
                times.append(clock.now_ns)
                if number % (per_day // checkpoints_per_day) == 0:
                    await backend.checkpoint()
        finally:
            journal_globals["time"] = real_time
        state.update(backend=backend, store=store, times=times)

    async def teardown() -> None:
        await state.pop("backend").aclose()
        shutil.rmtree(root, ignore_errors=True)

    def moments(where: float) -> list[int]:
        times: list[int] = state["times"]
        first = int((len(times) - 1) * where)
        return [times[min(len(times) - 1, first + offset)] for offset in range(_AS_OF_READS)]

    def reading(where: float) -> Any:
        async def run() -> Sample:
            store = state["store"]
            chosen = moments(where)
            started = time.perf_counter()
            for moment in chosen:
                await store.read_value("BTC000", as_of=-(-moment // 1_000_000))
            return timed(len(chosen), started)

        return run

    async def whole() -> Sample:
        backend = state["backend"]
        chosen = moments(0.99)
        started = time.perf_counter()
        for moment in chosen:
            (await backend.history_records()).value_at("signal/BTC000", moment)
        return timed(len(chosen), started)

    return Group(
        "history-as-of",
        f"point-in-time read on a history of {days} days, {days * per_day:,} commits",
        "reads",
        AS_OF_WHOLE,
        [
            Case(AS_OF_WHOLE, "reference", whole),
            Case(AS_OF_RECENT, "persistkit", reading(0.98)),
            Case(AS_OF_MIDDLE, "persistkit", reading(0.5)),
            Case(AS_OF_OLD, "persistkit", reading(1.5 / days)),
        ],
        sizes.rounds,
        setup=setup,
        teardown=teardown,
        notes=[
            f"{days} days of {per_day} plain writes each (over {_PER_TICK} entities, the journal's "
            f"clock stepped), {checkpoints_per_day} checkpoints a day. The reference reads the "
            "whole history (what every as_of read did before day snapshots); the cases read "
            f"through read_value(as_of=), which starts from the newest day snapshot before the "
            f"time. {_AS_OF_READS} reads per sample.",
        ],
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

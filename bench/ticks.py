"""Throughput against entities changed per tick.

A bot changes several entities per tick (a signal and its risk position, say).
Without a tick commit each is its own durable write; with one
(``persistkit.transaction()``) the whole tick costs one journal
fsync. Two references bound it: the physical floor of such a commit (one
``pwrite`` of every record of the tick and one ``fsync``), and the raw durable
replace of every entity of the tick (what a tick costs without a journal).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from typing import Any

from bench import raw
from bench.harness import Case, Group, Sample, timed
from bench.payload import SIGNAL, SIGNAL_BYTES
from bench.sizes import Sizes
from persistkit import LiveSession, PersistBase, transaction

__all__ = ["RAW_FLOOR", "RAW_REPLACE", "tick_groups"]

# Entities of one tick are spread over these stores, as a bot's are over its domains.
_STORES = ("signal", "risk", "schedule", "partial")

RAW_FLOOR = "raw floor: one pwrite of the tick + fsync"
RAW_REPLACE = "raw durable replace of each entity"
TRANSACTION = "persistkit transaction(): one commit per tick"


def tick_groups(workdir: str, sizes: Sizes) -> list[Group]:
    return [_tick_group(workdir, sizes, per_tick) for per_tick in sizes.entities_per_tick]


def _tick_group(workdir: str, sizes: Sizes, per_tick: int) -> Group:
    root = os.path.join(workdir, f"ticks-{per_tick}")
    ticks = max(1, sizes.tick_entity_writes // per_tick)
    entity_writes = ticks * per_tick
    ids = [f"{_STORES[number % len(_STORES)]}:BTC{number:04d}" for number in range(per_tick)]
    record = SIGNAL_BYTES * per_tick
    state: dict[str, Any] = {}

    async def setup() -> None:
        os.makedirs(os.path.join(root, "raw-replace"), exist_ok=True)
        state["journal"] = os.open(
            os.path.join(root, "journal.raw"), os.O_WRONLY | os.O_CREAT, 0o644
        )
        state["replace_dir"] = os.open(os.path.join(root, "raw-replace"), os.O_RDONLY)
        # The live session configures live mode on ``root``; the stores made after it
        # share its backend, so every persistkit case writes through the same one.
        session = state["session"] = LiveSession([("BTCUSDT", "bench")], "bench", base_dir=root)
        await session.start()
        state["stores"] = {name: PersistBase(name, base_dir=root) for name in _STORES}

    async def teardown() -> None:
        os.close(state.pop("journal"))
        os.close(state.pop("replace_dir"))
        await state.pop("session").aclose()
        state.pop("stores")
        shutil.rmtree(root, ignore_errors=True)

    def drained(sample: Sample) -> Sample:
        # The journal's applier writes committed values to their files in the
        # background. Finish that work now, untimed, so that it does not land in the
        # next case's sample; the figures above exclude it (see the group's notes).
        backend = state["stores"][_STORES[0]].backend
        journal = getattr(backend, "journal", None)
        if journal is not None:
            journal.checkpoint()
        return sample

    def targets() -> list[tuple[PersistBase[Any], str]]:
        by_name: dict[str, PersistBase[Any]] = state["stores"]
        return [(by_name[entity.split(":")[0]], entity.split(":")[1]) for entity in ids]

    async def raw_journal() -> Sample:
        fd = state["journal"]
        started = time.perf_counter()
        for _ in range(ticks):
            raw.journal_append(fd, 0, record)
        return timed(entity_writes, started)

    async def raw_replace_each() -> Sample:
        dir_fd = state["replace_dir"]
        started = time.perf_counter()
        for _ in range(ticks):
            for entity in ids:
                raw.durable_replace(dir_fd, f"{entity}.json", SIGNAL_BYTES, f".{entity}.tmp")
        return timed(entity_writes, started)

    async def one_commit_per_tick() -> Sample:
        tick = targets()
        backend = tick[0][0].backend
        started = time.perf_counter()
        for _ in range(ticks):
            async with transaction(backend):
                for store, entity_id in tick:
                    await store.write_value(entity_id, SIGNAL)
        return drained(timed(entity_writes, started))

    async def session_ticks() -> Sample:
        tick, session = targets(), state["session"]
        started = time.perf_counter()
        for _ in range(ticks):
            async with session.tick():
                for store, entity_id in tick:
                    await store.write_value(entity_id, SIGNAL)
        return drained(timed(entity_writes, started))

    async def separate_awaited() -> Sample:
        tick = targets()
        started = time.perf_counter()
        for _ in range(ticks):
            for store, entity_id in tick:
                await store.write_value(entity_id, SIGNAL)
        return drained(timed(entity_writes, started))

    async def separate_gathered() -> Sample:
        tick = targets()
        started = time.perf_counter()
        for _ in range(ticks):
            await asyncio.gather(
                *(store.write_value(entity_id, SIGNAL) for store, entity_id in tick)
            )
        return drained(timed(entity_writes, started))

    cases = [
        Case(RAW_FLOOR, "reference", raw_journal),
        Case(TRANSACTION, "persistkit", one_commit_per_tick),
        Case("persistkit LiveSession.tick(): one commit per tick", "persistkit", session_ticks),
        Case(RAW_REPLACE, "reference", raw_replace_each),
        Case(
            "persistkit, separate write_value calls awaited in turn",
            "persistkit",
            separate_awaited,
            reference=RAW_REPLACE,
        ),
        Case(
            "persistkit, separate write_value calls gathered",
            "persistkit",
            separate_gathered,
            reference=RAW_REPLACE,
        ),
    ]
    return Group(
        f"ticks-{per_tick}",
        f"{per_tick} entities changed per tick",
        "entities",
        RAW_FLOOR,
        cases,
        sizes.rounds if per_tick < 100 else sizes.slow_rounds,
        setup=setup,
        teardown=teardown,
        notes=[
            f"{ticks} ticks of {per_tick} entities over {len(_STORES)} stores per sample "
            "(file backend, live mode); the rate counts entities.",
            "The tick commits are compared with the raw floor; the separate writes with "
            "the raw durable replace of each entity.",
            "A commit is durable when its journal record is fsynced; the journal's applier "
            "then writes the values to their files in the background (no fsync). After each "
            "persistkit sample that work is finished untimed (a journal checkpoint: apply, "
            "syncfs, truncate), so it is not in these figures nor in the next case's. After "
            "a checkpoint the keys are no longer journaled, so the separate writes are plain "
            "durable file replaces.",
        ],
    )

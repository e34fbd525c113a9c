"""Throughput against entities changed per tick.

A bot changes several entities per tick (a signal and its risk position, say).
Without a tick commit each is its own durable write; with one
(``persistkit.transaction()``, DESIGN.md §5) the whole tick costs one journal
fsync. The reference is the physical floor of such a commit: one ``pwrite`` of
every record of the tick and one ``fsync``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import persistkit
from bench import raw
from bench.harness import Case, Group, Sample, timed
from bench.payload import SIGNAL, SIGNAL_BYTES
from bench.sizes import Sizes
from persistkit import PersistBase, configure

__all__ = ["TRANSACTION_MISSING", "tick_groups", "transaction_api"]

# Entities of one tick are spread over these stores, as a bot's are over its domains.
_STORES = ("signal", "risk", "schedule", "partial")

TRANSACTION_MISSING = (
    "persistkit.transaction() does not exist on this branch yet: "
    "tick commits were not measured (separate writes and the raw floor were)."
)


def transaction_api() -> Callable[[], AbstractAsyncContextManager[Any]] | None:
    """``persistkit.transaction`` when the tick-commit API has landed, else ``None``."""
    return getattr(persistkit, "transaction", None)


def tick_groups(workdir: str, sizes: Sizes) -> list[Group]:
    return [_tick_group(workdir, sizes, per_tick) for per_tick in sizes.entities_per_tick]


def _tick_group(workdir: str, sizes: Sizes, per_tick: int) -> Group:
    root = os.path.join(workdir, f"ticks-{per_tick}")
    ticks = max(1, sizes.tick_entity_writes // per_tick)
    entity_writes = ticks * per_tick
    ids = [f"{_STORES[number % len(_STORES)]}:BTC{number:04d}" for number in range(per_tick)]
    record = SIGNAL_BYTES * per_tick
    state: dict[str, Any] = {}

    def stores() -> dict[str, PersistBase[Any]]:
        configure(mode="live", base_dir=root)
        return {name: PersistBase(name, base_dir=root) for name in _STORES}

    async def setup() -> None:
        os.makedirs(root, exist_ok=True)
        state["journal"] = os.open(
            os.path.join(root, "journal.raw"), os.O_WRONLY | os.O_CREAT, 0o644
        )
        state["stores"] = stores()

    async def teardown() -> None:
        os.close(state.pop("journal"))
        shutil.rmtree(root, ignore_errors=True)

    def targets() -> list[tuple[PersistBase[Any], str]]:
        by_name: dict[str, PersistBase[Any]] = state["stores"]
        return [(by_name[entity.split(":")[0]], entity.split(":")[1]) for entity in ids]

    async def raw_journal() -> Sample:
        fd = state["journal"]
        started = time.perf_counter()
        for _ in range(ticks):
            raw.journal_append(fd, 0, record)
        return timed(entity_writes, started)

    async def separate_awaited() -> Sample:
        tick = targets()
        started = time.perf_counter()
        for _ in range(ticks):
            for store, entity_id in tick:
                await store.write_value(entity_id, SIGNAL)
        return timed(entity_writes, started)

    async def separate_gathered() -> Sample:
        tick = targets()
        started = time.perf_counter()
        for _ in range(ticks):
            await asyncio.gather(
                *(store.write_value(entity_id, SIGNAL) for store, entity_id in tick)
            )
        return timed(entity_writes, started)

    cases = [
        Case("raw floor: one pwrite of the tick + fsync", "reference", raw_journal),
        Case(
            "persistkit, separate write_value calls awaited in turn", "persistkit", separate_awaited
        ),
        Case("persistkit, separate write_value calls gathered", "persistkit", separate_gathered),
    ]
    notes: list[str] = []

    # ---- HOOK: tick commits (persistkit.transaction) --------------------------------
    # Measured as soon as the tick-commit API lands on the branch under test; until
    # then the group says so and the report prints the note.
    transaction = transaction_api()
    if transaction is not None:
        begin = transaction

        async def one_commit_per_tick() -> Sample:
            tick = targets()
            started = time.perf_counter()
            for _ in range(ticks):
                async with begin():
                    for store, entity_id in tick:
                        await store.write_value(entity_id, SIGNAL)
            return timed(entity_writes, started)

        cases.insert(
            1,
            Case(
                "persistkit transaction(): one commit per tick", "persistkit", one_commit_per_tick
            ),
        )
    else:
        notes.append(TRANSACTION_MISSING)
    # ---- end of HOOK ------------------------------------------------------------------

    return Group(
        f"ticks-{per_tick}",
        f"{per_tick} entities changed per tick",
        "entities",
        "raw floor: one pwrite of the tick + fsync",
        cases,
        sizes.rounds if per_tick < 100 else sizes.slow_rounds,
        setup=setup,
        teardown=teardown,
        notes=[f"{ticks} ticks of {per_tick} entities per sample.", *notes],
    )

"""The timed loops every group runs through ``PersistBase``, whatever the backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from bench.harness import Sample, SampleFn, timed
from bench.payload import SIGNALS, VARIANTS, Rotation
from persistkit import Backend, PersistBase, transaction

__all__ = ["commit_loop", "in_flight_loop", "read_loop", "tick_loop", "write_loop"]

StoreOf = Callable[[], PersistBase[Any]]
"""Returns the store at sample time (stores are often made in a group's setup)."""


def write_loop(store_of: StoreOf, rotation: Rotation, count: int) -> SampleFn:
    """``count`` awaited ``write_value`` calls, each storing a different value."""

    async def run() -> Sample:
        store, writes = store_of(), rotation.take(count)
        started = time.perf_counter()
        for entity_id, variant in writes:
            await store.write_value(entity_id, SIGNALS[variant])
        return timed(count, started)

    return run


def read_loop(store_of: StoreOf, entity_id: str, count: int) -> SampleFn:
    """``count`` awaited ``read_value`` calls of one entity."""

    async def run() -> Sample:
        store = store_of()
        started = time.perf_counter()
        for _ in range(count):
            await store.read_value(entity_id)
        return timed(count, started)

    return run


def in_flight_loop(store_of: StoreOf, ids: list[str], batches: int) -> SampleFn:
    """``batches`` rounds of one ``write_value`` per id, gathered: ``len(ids)`` in flight."""

    async def run() -> Sample:
        store = store_of()
        started = time.perf_counter()
        for batch in range(batches):
            value = SIGNALS[batch % VARIANTS]
            await asyncio.gather(*(store.write_value(key, value) for key in ids))
        return timed(batches * len(ids), started)

    return run


def tick_loop(
    stores_of: Callable[[], dict[str, PersistBase[Any]]],
    entities: list[tuple[str, str]],
    ticks: int,
) -> SampleFn:
    """``ticks`` ticks, each one ``transaction()`` writing every (store, id) of ``entities``."""

    async def run() -> Sample:
        stores = stores_of()
        backend = next(iter(stores.values())).backend
        started = time.perf_counter()
        for number in range(ticks):
            value = SIGNALS[number % VARIANTS]
            async with transaction(backend):
                for name, entity_id in entities:
                    await stores[name].write_value(entity_id, value)
        return timed(ticks, started)

    return run


def commit_loop(
    backend_of: Callable[[], Backend], writes: Mapping[str, bytes], ticks: int
) -> SampleFn:
    """``ticks`` calls of ``backend.commit(writes)``: the commit without the store above it."""

    async def run() -> Sample:
        backend = backend_of()
        started = time.perf_counter()
        for _ in range(ticks):
            await backend.commit(writes)
        return timed(ticks, started)

    return run

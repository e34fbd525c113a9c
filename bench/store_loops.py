"""The timed loops every group runs through ``PersistBase``, whatever the backend."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.harness import Sample, SampleFn, timed
from bench.payload import SIGNALS, Rotation
from persistkit import PersistBase

__all__ = ["read_loop", "write_loop"]

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

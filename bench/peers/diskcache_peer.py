"""Peer: diskcache, as installed (sqlite ``synchronous=NORMAL``) and with ``FULL``.

With its default settings a ``set`` is not fsynced when it returns (a power cut
can lose it); ``sqlite_synchronous=2`` makes every ``set`` durable, which is the
fair comparison with a durable write.
"""

from __future__ import annotations

import time
from typing import Any

import diskcache

from bench.harness import Sample, timed
from bench.payload import SIGNALS

__all__ = ["DiskcachePeer"]

SYNCHRONOUS_FULL = 2


class DiskcachePeer:
    def __init__(self, directory: str, *, durable: bool) -> None:
        settings: dict[str, Any] = {"sqlite_synchronous": SYNCHRONOUS_FULL} if durable else {}
        self.cache = diskcache.Cache(directory, **settings)

    @property
    def version(self) -> str:
        return str(diskcache.__version__)

    def write(self, writes: list[tuple[str, int]]) -> Sample:
        """One ``set`` per (key, index into SIGNALS): the value object, as a user stores it."""
        cache = self.cache
        started = time.perf_counter()
        for key, variant in writes:
            cache.set(key, SIGNALS[variant])
        return timed(len(writes), started)

    def read(self, key: str, count: int) -> Sample:
        cache = self.cache
        started = time.perf_counter()
        for _ in range(count):
            cache.get(key)
        return timed(count, started)

    def close(self) -> None:
        self.cache.close()

"""FIFO mutual exclusion per key, allocated only while a key is in use."""

from __future__ import annotations

import asyncio
import weakref
from collections import deque


class KeyedLock:
    """Writes to one key are applied in call order.

    The holder of a key is recorded as an entry in ``_queues``; later callers
    wait on futures in arrival order. Nothing is allocated for a key nobody
    holds, so millions of keys cost nothing and the uncontended path is a dict
    insert and delete.
    """

    __slots__ = ("_queues",)

    def __init__(self) -> None:
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}

    def try_acquire(self, key: str) -> bool:
        """Take ``key`` if nobody holds it, without suspending; ``False`` otherwise."""
        if key in self._queues:
            return False
        self._queues[key] = deque()
        return True

    async def acquire(self, key: str) -> None:
        queue = self._queues.get(key)
        if queue is None:
            self._queues[key] = deque()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(key)  # handed the key as we were cancelled: pass it on
            else:
                try:
                    queue.remove(waiter)
                except ValueError:
                    pass
            raise

    def release(self, key: str) -> None:
        queue = self._queues[key]
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        del self._queues[key]


class LoopLocalKeyedLocks:
    """One :class:`KeyedLock` per event loop: a backend may be shared by threads
    that each run their own loop, and futures cannot cross loops."""

    __slots__ = ("_by_loop",)

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, KeyedLock] = (
            weakref.WeakKeyDictionary()
        )

    def current(self) -> KeyedLock:
        loop = asyncio.get_running_loop()
        lock = self._by_loop.get(loop)
        if lock is None:
            lock = self._by_loop[loop] = KeyedLock()
        return lock

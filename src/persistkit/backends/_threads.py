"""Blocking calls in worker threads, finished even when the caller is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

__all__ = ["run_to_completion"]

T = TypeVar("T")


async def run_to_completion(executor: Executor | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread of ``executor`` (the loop's default if ``None``).

    A cancelled caller still waits for the worker to finish: a thread cannot be
    stopped half-way, and the store releases a key's ordering lock when this
    returns, so returning earlier would let a later write to the key overtake
    one still in flight.
    """
    future = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            try:
                await asyncio.wait([future])
            except asyncio.CancelledError:
                continue
        if not future.cancelled():
            future.exception()  # retrieved, so it is not reported as lost
        raise

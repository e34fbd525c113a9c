"""transaction(): savepoints, tasks inside the block, misuse, backends without a commit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from persistkit import FileBackend, MemoryBackend, PersistBase, StoreClosedError, transaction
from persistkit.backends.base import Backend


async def test_an_inner_transaction_is_a_savepoint() -> None:
    backend = MemoryBackend()
    store: PersistBase[int] = PersistBase("entity", backend=backend)

    async def failing_inner() -> None:
        async with transaction(backend):
            await store.write_value("inner-failed", 2)
            raise ValueError("inner step failed")

    async with transaction(backend):
        await store.write_value("outer", 1)
        async with transaction(backend):
            await store.write_value("inner", 1)
            assert await store.read_value("outer") == 1  # sees the outer staging
        with pytest.raises(ValueError, match="inner step failed"):
            await failing_inner()
        assert await backend.get("entity/inner") is None  # joined the outer, not committed
    assert sorted([key async for key in store.keys()]) == ["inner", "outer"]


async def test_tasks_started_in_the_block_join_it_and_late_writes_are_refused() -> None:
    backend = MemoryBackend()
    store: PersistBase[int] = PersistBase("entity", backend=backend)
    release = asyncio.Event()

    async def late_writer() -> None:
        await release.wait()
        await store.write_value("late", 1)

    async with transaction(backend):
        await asyncio.gather(*(store.write_value(f"task-{n}", n) for n in range(5)))
        straggler = asyncio.ensure_future(late_writer())
    assert sorted([key async for key in store.keys()]) == [f"task-{n}" for n in range(5)]
    release.set()
    with pytest.raises(StoreClosedError, match="has already ended"):
        await straggler
    assert not await store.has_value("late")


async def test_a_backend_without_commit_is_refused_up_front() -> None:
    class NoCommit(MemoryBackend):
        commit = Backend.commit

    with pytest.raises(NotImplementedError, match="no atomic multi-key commit"):
        transaction(NoCommit())


async def test_writes_to_another_backend_in_the_block_are_not_staged() -> None:
    staged, direct = MemoryBackend(), MemoryBackend()
    inside: PersistBase[Any] = PersistBase("a", backend=staged)
    outside: PersistBase[Any] = PersistBase("b", backend=direct)
    async with transaction(staged):
        await inside.write_value("x", 1)
        await outside.write_value("y", 2)
        assert await direct.get("b/y") is not None  # written at once
        assert await staged.get("a/x") is None  # staged until the block ends
    assert await inside.read_value("x") == 1


async def test_a_commit_waits_for_a_plain_write_of_its_keys_in_flight(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "data")
    store: PersistBase[Any] = PersistBase("entity", backend=backend)
    for _ in range(20):
        plain = asyncio.ensure_future(store.write_value("k", "plain"))
        await asyncio.sleep(0)  # the plain write has started and holds the key
        async with transaction(backend):
            await store.write_value("other", 1)
            await store.write_value("k", "tick")
        await plain
        assert await store.read_value("k") == "tick"  # called later, so applied later
    await backend.aclose()

"""transaction(): savepoints, tasks inside the block, misuse, backends without a commit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from persistkit import (
    CrossBackendError,
    FileBackend,
    MemoryBackend,
    PersistBase,
    StoreClosedError,
    transaction,
)
from persistkit.backends._base import Backend


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


async def test_a_write_the_transaction_cannot_stage_is_refused_not_written() -> None:
    staged, direct = MemoryBackend("staged"), MemoryBackend("direct")
    inside: PersistBase[Any] = PersistBase("a", backend=staged)
    outside: PersistBase[Any] = PersistBase("b", backend=direct)

    async def tick() -> None:
        async with transaction(staged):
            await inside.write_value("x", 1)
            await outside.write_value("y", 2)

    with pytest.raises(CrossBackendError, match="cannot span two backends"):
        await tick()
    assert await direct.get("b/y") is None  # not written unstaged
    assert await staged.get("a/x") is None  # and the block committed nothing

    async def remove_in_tick() -> None:
        async with transaction(staged):
            await outside.remove_value("y")

    with pytest.raises(CrossBackendError):
        await remove_in_tick()
    await outside.write_value("y", 2)  # outside any block it is an ordinary write
    assert await outside.read_value("y") == 2


async def test_a_transaction_on_two_backends_is_refused_before_anything_is_written() -> None:
    first, second = MemoryBackend("first"), MemoryBackend("second")
    one: PersistBase[Any] = PersistBase("a", backend=first)
    two: PersistBase[Any] = PersistBase("b", backend=second)

    async def tick() -> None:
        async with transaction(first):
            await one.write_value("x", 1)
            async with transaction(second):  # would commit on its own exit
                await two.write_value("y", 2)

    with pytest.raises(CrossBackendError, match="cannot span two backends"):
        await tick()
    assert await first.get("a/x") is None
    assert await second.get("b/y") is None


async def test_a_store_outside_the_configured_root_is_refused_in_a_transaction(
    tmp_path: Path, data_root: Path
) -> None:
    inside: PersistBase[Any] = PersistBase("fills", data_root)
    outside: PersistBase[Any] = PersistBase("fills", tmp_path / "elsewhere")

    async def tick() -> None:
        async with transaction():
            await inside.write_value("x", 1)
            await outside.write_value("y", 2)

    with pytest.raises(CrossBackendError):
        await tick()
    assert not (tmp_path / "elsewhere").exists()
    assert not await inside.has_value("x")


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

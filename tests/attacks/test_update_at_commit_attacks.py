"""Attacks on changes applied again at commit (``_MergesAtCommit``, a6a33e2; since
cef8fee only for ``PersistBase._merge_value``, which ``write_intent`` uses).

Inside a transaction, a merge whose key another writer committed first does not fail
the block: the commit re-reads the key and applies the block's changes of it again.
Each test is a break found by hand, with a real second process on the same root, a
real ``redis-server``, real files (the first two broke a6a33e2 and guard cef8fee's
fix). Each checks what a user would check: what a process was told is stored stays
stored, a value the user's store refuses is never stored, a write whose call returned
in a block that ended normally is committed, and a failed commit raises a typed error.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import persistkit
from persistkit import FileBackend, PersistBase, PersistError, transaction
from persistkit.backends import Backend, open_backend
from persistkit.errors import ConflictError
from support.servers import RedisServer

SRC = str(Path(__file__).parents[2] / "src")


async def _in_another_process(root: Path, script: str, *args: str) -> None:
    """Run ``script`` (it gets ``root`` and ``args``) in a process of its own, to its end:
    what it committed is acknowledged when this returns."""
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", textwrap.dedent(script), str(root), *args],
        env={**os.environ, "PYTHONPATH": SRC},
        check=True,
    )


# -- a value the block derived from what an update returned -------------------------------

TAKE_AN_ID_AND_RECORD_AN_ORDER = """
    import asyncio, sys
    import persistkit
    from persistkit import PersistBase

    async def main(root, payload):
        persistkit.configure(mode="live", base_dir=root)
        async with persistkit.transaction():
            number = await PersistBase("ids").update_value("next", lambda n: (n or 0) + 1)
            await PersistBase("orders").write_value(number, payload)

    asyncio.run(main(*sys.argv[1:]))
"""


async def test_an_id_an_update_gave_a_tick_never_takes_the_id_another_process_took(
    tmp_path: Path,
) -> None:
    """A counter of order ids kept with ``update_value``, as its docstring invites
    ("concurrent updates from threads or processes are never lost"): each tick takes
    the next id and records its order under it.

    With every ``update_value`` applied again at commit (a6a33e2) the tick committed
    ``next = 2`` beside its order 1, over the other process's acknowledged order 1
    (fixed by cef8fee: only ``_merge_value`` is applied again)."""
    persistkit.configure(mode="live", base_dir=tmp_path)
    ids: PersistBase[int] = PersistBase("ids")
    orders: PersistBase[str] = PersistBase("orders")
    raised: ConflictError | None = None
    try:
        async with transaction():
            number = await ids.update_value("next", lambda n: (n or 0) + 1)
            await orders.write_value(number, "ours")
            await _in_another_process(tmp_path, TAKE_AN_ID_AND_RECORD_AN_ORDER, "theirs")
    except ConflictError as exc:  # nothing of the block committed: allowed
        raised = exc
    stored = {key: await orders.read_value(key) async for key in orders.keys()}
    assert "theirs" in stored.values(), f"the other process's order is gone: {stored}"
    if raised is None:
        assert sorted(stored.values()) == ["ours", "theirs"]
        assert await ids.read_value("next") == len(stored)


# -- a store of the user's that checks each value it writes --------------------------------


class OverTheCapError(Exception):
    """The user's store refused a value."""


class CappedExposure(PersistBase[int]):
    """A user's store (as ``use_persist_*_adapter`` takes) that refuses, on every write,
    an exposure over its cap: a risk limit."""

    cap = 10

    async def write_value(self, entity_id: str | int, value: int, **kwargs: Any) -> str:
        if value > self.cap:
            raise OverTheCapError(f"exposure {value} is over the cap of {self.cap}")
        return await super().write_value(entity_id, value, **kwargs)


RAISE_THE_EXPOSURE = """
    import asyncio, sys
    import persistkit
    from persistkit import PersistBase

    async def main(root, value):
        persistkit.configure(mode="live", base_dir=root)
        await PersistBase("risk").write_value("exposure", int(value))

    asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_value_an_update_commits_is_one_the_users_store_accepts(tmp_path: Path) -> None:
    # The value applied again at commit was encoded and included, never handed to the
    # store's write_value: 14 committed, over the cap its check enforced on 8.
    persistkit.configure(mode="live", base_dir=tmp_path)
    exposure = CappedExposure("risk")
    await exposure.write_value("exposure", 3)
    with pytest.raises(OverTheCapError):
        await exposure.update_value("exposure", lambda n: (n or 0) + 20)  # checked outside
    raised: Exception | None = None
    try:
        async with transaction():
            assert await exposure._merge_value("exposure", lambda n: (n or 0) + 5) == 8
            await _in_another_process(tmp_path, RAISE_THE_EXPOSURE, "9")
    except (OverTheCapError, ConflictError) as exc:  # refused, nothing committed: allowed
        raised = exc
    stored = await PersistBase[int]("risk").read_value("exposure")
    assert stored <= CappedExposure.cap, f"committed {stored}, over the cap (raised {raised!r})"


# -- a task of the tick that writes while commit_now() commits ----------------------------


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["file", "redis"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A backend whose commit suspends: the file backend offloading its syscalls to
    threads, or a real Redis server."""
    if request.param == "file":
        return str(tmp_path / "data")
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


def _open(url: str) -> Backend:
    return open_backend(url) if "://" in url else FileBackend(url, offload=True)


async def test_an_update_a_tick_task_makes_while_commit_now_commits_is_committed(
    backend_url: str,
) -> None:
    """A tick records a fill from a task of its own while the main path commits its
    order intent with ``commit_now()``; the position it updated was committed by
    another process meanwhile.

    The task staged into the writes being committed: the hooks running again restored
    the writes as they were (and ``commit_staged`` then emptied them), so the fill
    whose ``update_value`` returned 6 was lost, 5 stored. Now a task's write waits for
    the ``commit_staged`` in progress."""
    backend, other = _open(backend_url), _open(backend_url)
    store: PersistBase[int] = PersistBase("n", backend=backend)
    elsewhere: PersistBase[int] = PersistBase("n", backend=other)
    await store.write_value("position", 0)
    fill_recorded: int | None = None
    try:
        async with transaction(backend) as txn:
            await store._merge_value("position", lambda n: n + 1)  # as write_intent does
            await store.write_value("fills", 5)
            # Not in the block: another writer, as another process would be.
            await asyncio.create_task(
                elsewhere.write_value("position", 100), context=contextvars.Context()
            )
            go = asyncio.Event()

            async def record_a_fill() -> int:
                await go.wait()
                return await store.update_value("fills", lambda n: n + 1)

            task = asyncio.create_task(record_a_fill())
            go.set()
            try:
                await txn.commit_staged()  # LiveSession.commit_now()
            finally:
                fill_recorded = await task
    except ConflictError:  # refused: the part and the rest committed nothing
        assert await store.read_value("position") == 100
        assert not await store.has_value("fills")
    else:
        assert fill_recorded == 6
        assert await store.read_value("position") == 101
        assert await store.read_value("fills") == 6, "the fill whose update returned is lost"
    finally:
        await backend.aclose()
        await other.aclose()


async def test_a_hook_registered_while_commit_now_runs_the_hooks_is_no_untyped_error(
    redis_server: RedisServer,
) -> None:
    backend, other = open_backend(redis_server.url), open_backend(redis_server.url)
    store: PersistBase[int] = PersistBase("n", backend=backend)
    elsewhere: PersistBase[int] = PersistBase("n", backend=other)
    await store.write_value("a", 0)
    await store.write_value("b", 0)
    applied_again = asyncio.Event()

    def add_one_to_a(n: int) -> int:
        if n == 100:  # applied again, to what the other writer committed
            applied_again.set()
        return n + 1

    async def other_writer() -> None:
        await elsewhere.write_value("a", 100)
        await elsewhere.write_value("b", 100)

    async def record_a_fill() -> None:
        await applied_again.wait()  # the commit is running its hooks again now
        await store._merge_value("c", lambda n: n + 1)

    # The task's update registered its commit hook while the commit iterated over them:
    # RuntimeError('dictionary changed size during iteration'), untyped, from commit_now().
    raised: PersistError | None = None
    try:
        async with transaction(backend) as txn:
            await store._merge_value("a", add_one_to_a)  # as write_intent does
            await store._merge_value("b", lambda n: n + 1)
            await store.write_value("c", 5)
            await asyncio.create_task(other_writer(), context=contextvars.Context())
            task = asyncio.create_task(record_a_fill())
            try:
                await txn.commit_staged()
            finally:
                if applied_again.is_set():
                    await task
                else:
                    task.cancel()  # refused before any change was applied again
    except PersistError as exc:  # a typed refusal is an answer; nothing more committed
        raised = exc
    try:
        if raised is None:
            assert await store.read_value("a") == 101
            assert await store.read_value("b") == 101
            assert await store.read_value("c") == 6
    finally:
        await backend.aclose()
        await other.aclose()

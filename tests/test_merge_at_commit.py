"""A value merged inside a transaction (a pair's order intents), when another writer
commits the same key first; and ``update_value``, which must not be merged.

A tick's ``update_value`` is staged with the version it read, and the commit is a
compare-and-set: another process committing the key in between fails the tick
with ``ConflictError``, since the tick may have used the value it got (an id it
took). A merged value (``PersistBase._merge_value``: entries by their own ids,
which is how ``write_intent`` records an order) is applied again at commit to
what the other process committed. Before, a bot under ``LiveSession.run`` that
recorded an order's ack after ``commit_now()`` stopped with the ack unrecorded.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import persistkit
from persistkit import PersistBase, transaction
from persistkit.errors import ConflictError
from support.servers import RedisServer

SRC = str(Path(__file__).parents[1] / "src")

# Each process: ticks that add an entry of their own to a shared map (merged) and
# write a row of their own, with an await between the merge and the commit, so
# that the other processes' commits fall in between. Prints how many ticks failed.
INCREMENTING_TICKS = textwrap.dedent(
    """
    import asyncio, os, sys, time
    import persistkit
    from persistkit import PersistBase, transaction
    from persistkit.errors import ConflictError

    async def main(target, name, ticks, start):
        if "://" in target:
            persistkit.configure(mode="live", backend=target)
        else:
            persistkit.configure(mode="live", base_dir=target)
        store = PersistBase("counters")
        open(start + "." + name, "w").close()
        while not os.path.exists(start):
            time.sleep(0.005)
        failed = 0
        for tick in range(int(ticks)):
            try:
                async with transaction():
                    await store._merge_value(
                        "shared", lambda m: {**(m or {}), f"{name}-{tick}": tick}
                    )
                    await asyncio.sleep(0.002)
                    await store.write_value(name, {"tick": tick})
            except ConflictError:
                failed += 1
        print(failed, flush=True)

    asyncio.run(main(*sys.argv[1:]))
    """
)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_entries_merged_in_ticks_of_several_processes_are_all_kept(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    processes, ticks = 4, 40
    if backend == "file":
        target = str(tmp_path / "root")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        target = f"{server.url}?prefix=u-{uuid.uuid4().hex[:12]}"
    start = str(tmp_path / "start")
    running = [
        subprocess.Popen(
            [sys.executable, "-c", INCREMENTING_TICKS, target, f"p{n}", str(ticks), start],
            env={**os.environ, "PYTHONPATH": SRC},
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(processes)
    ]
    while not all(os.path.exists(f"{start}.p{n}") for n in range(processes)):
        pass
    Path(start).touch()
    failed = [process.communicate(timeout=120)[0].strip() for process in running]
    assert [process.returncode for process in running] == [0] * processes
    assert failed == ["0"] * processes

    async def counted() -> tuple[Any, list[Any]]:
        settings = (
            persistkit.configure(mode="live", base_dir=target)
            if backend == "file"
            else persistkit.configure(mode="live", backend=target)
        )
        try:
            store: PersistBase[Any] = PersistBase("counters")
            rows = [await store.read_value(f"p{n}") for n in range(processes)]
            return await store.read_value("shared"), rows
        finally:
            await settings.backend.aclose()

    shared, rows = asyncio.run(counted())
    assert shared == {f"p{n}-{tick}": tick for n in range(processes) for tick in range(ticks)}
    assert rows == [{"tick": ticks - 1}] * processes


async def _commit_with_another_writer_in_between(
    root: Path, block: Any, other: Any
) -> tuple[BaseException | None, Any]:
    """Run ``block(store)`` in a transaction; ``other(store)`` commits from another
    process's backend (the same root) before the block ends. Returns what the commit
    raised and the committed ``shared`` value."""
    persistkit.configure(mode="live", base_dir=root)
    store: PersistBase[Any] = PersistBase("counters")
    await store.write_value("shared", 10)
    raised: BaseException | None = None
    try:
        async with transaction():
            await block(store)
            await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-c", OTHER_WRITER, str(root), other],
                env={**os.environ, "PYTHONPATH": SRC},
                check=True,
            )
    except Exception as exc:  # what the commit says is the test's subject
        raised = exc
    return raised, await store.read_value("shared")


OTHER_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    import persistkit
    from persistkit import PersistBase

    async def main(root, value):
        persistkit.configure(mode="live", base_dir=root)
        await PersistBase("counters").write_value("shared", int(value))

    asyncio.run(main(*sys.argv[1:]))
    """
)


async def test_an_update_of_a_tick_fails_the_commit_when_another_writer_was_first(
    tmp_path: Path,
) -> None:
    """The tick took 11 as its id; applying +1 again to 100 would commit 101 beside
    whatever the tick wrote under 11."""

    async def block(store: PersistBase[Any]) -> None:
        assert await store.update_value("shared", lambda n: n + 1) == 11
        await store.write_value("order-11", {"taken": True})

    raised, shared = await _commit_with_another_writer_in_between(tmp_path, block, "100")
    assert isinstance(raised, ConflictError)
    assert shared == 100
    assert not await PersistBase[Any]("counters").has_value("order-11")


async def test_two_merges_of_a_tick_are_applied_again_in_order(tmp_path: Path) -> None:
    async def block(store: PersistBase[Any]) -> None:
        assert await store._merge_value("shared", lambda n: n + 1) == 11
        assert await store._merge_value("shared", lambda n: n * 2) == 22

    raised, shared = await _commit_with_another_writer_in_between(tmp_path, block, "100")
    assert raised is None
    assert shared == (100 + 1) * 2


async def test_a_store_with_its_own_write_checks_is_not_merged_at_commit(
    tmp_path: Path,
) -> None:
    """The commit could not run the subclass's checks on the merged value: the
    compare-and-set stands."""

    class Checked(PersistBase[Any]):
        async def write_value(self, entity_id: str | int, value: Any, **kwargs: Any) -> str:
            if value > 1000:
                raise ValueError("too large")
            return await super().write_value(entity_id, value, **kwargs)

    async def block(store: PersistBase[Any]) -> None:
        await Checked("counters")._merge_value("shared", lambda n: n * 10)

    raised, shared = await _commit_with_another_writer_in_between(tmp_path, block, "101")
    assert isinstance(raised, ConflictError)
    assert shared == 101


async def test_a_merge_overwritten_by_a_plain_write_in_the_tick_still_conflicts(
    tmp_path: Path,
) -> None:
    """The block's last word on the key is a plain write derived from its read: applying
    the merge again would drop it, and writing it would drop the other writer's."""

    async def block(store: PersistBase[Any]) -> None:
        await store._merge_value("shared", lambda n: n + 1)
        await store.write_value("shared", 42)

    raised, shared = await _commit_with_another_writer_in_between(tmp_path, block, "100")
    assert isinstance(raised, ConflictError)
    assert "not a merge of it" in str(raised)
    assert shared == 100


async def test_a_change_that_refuses_the_new_value_fails_the_commit_and_writes_nothing(
    tmp_path: Path,
) -> None:
    class Refused(Exception):
        pass

    def at_most_50(n: int) -> int:
        if n >= 50:
            raise Refused(f"{n} is over the limit")
        return n + 1

    async def block(store: PersistBase[Any]) -> None:
        await store._merge_value("shared", at_most_50)
        await store.write_value("other", {"written": True})

    raised, shared = await _commit_with_another_writer_in_between(tmp_path, block, "100")
    assert isinstance(raised, Refused)
    assert shared == 100
    assert not await PersistBase[Any]("counters").has_value("other")

"""Redis backend against raw redis-py, on a real ``redis-server`` with ``appendfsync always``.

The server is started by the group's setup on a free loopback port in a
temporary folder and stopped by its teardown. persistkit is reached through
its public API: ``configure(mode="live", backend="redis://...")`` and
``PersistBase``.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import orjson

from bench.backends import real_servers
from bench.harness import Case, Group, Sample, timed
from bench.payload import SIGNALS_BYTES, Rotation
from bench.sizes import Sizes
from bench.store_loops import read_loop, write_loop

__all__ = ["BACKEND_MODULE", "groups", "missing_server"]

BACKEND_MODULE = "persistkit.backends.redis"
IN_FLIGHT = 16


def missing_server() -> str | None:
    return None if shutil.which("redis-server") else "redis-server is not installed"


def groups(workdir: str, sizes: Sizes) -> list[Group]:
    import redis
    import redis.asyncio

    from persistkit import PersistBase, configure

    count = sizes.durable_writes
    state: dict[str, Any] = {}
    same = Rotation(["same"])

    async def setup() -> None:
        server = state["server"] = real_servers().RedisServer().start()
        state["sync"] = redis.Redis(port=server.port)
        state["async"] = redis.asyncio.Redis(port=server.port)
        configure(mode="live", base_dir=os.path.join(workdir, "redis"), backend=server.url)
        state["store"] = PersistBase("signal", base_dir=os.path.join(workdir, "redis"))

    async def teardown() -> None:
        state.pop("sync").close()
        await state.pop("async").aclose()
        backend = state.pop("store").backend
        await backend.aclose()
        state.pop("server").stop()

    async def raw_set() -> Sample:
        client, writes = state["sync"], same.take(count)
        started = time.perf_counter()
        for key, variant in writes:
            client.set(key, SIGNALS_BYTES[variant])
        return timed(count, started)

    async def raw_set_async() -> Sample:
        client, writes = state["async"], same.take(count)
        started = time.perf_counter()
        for key, variant in writes:
            await client.set(key, SIGNALS_BYTES[variant])
        return timed(count, started)

    async def raw_get() -> Sample:
        client = state["sync"]
        started = time.perf_counter()
        for _ in range(count):
            orjson.loads(client.get("same"))
        return timed(count, started)

    return [
        Group(
            "redis",
            "Redis (appendfsync always): one write, one read",
            "calls",
            "redis-py SET",
            [
                Case("redis-py SET", "reference", raw_set),
                Case("redis.asyncio SET", "reference", raw_set_async),
                Case(
                    "persistkit write_value on Redis",
                    "persistkit",
                    write_loop(lambda: state["store"], Rotation(["same"]), count),
                    reference="redis.asyncio SET",
                ),
                Case("redis-py GET + orjson.loads", "reference", raw_get),
                Case(
                    "persistkit read_value on Redis",
                    "persistkit",
                    read_loop(lambda: state["store"], "same", count),
                    reference="redis-py GET + orjson.loads",
                ),
            ],
            sizes.rounds,
            setup=setup,
            teardown=teardown,
            notes=[f"{count} calls per sample on one key; a real redis-server on loopback."],
        )
    ]

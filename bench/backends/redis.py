"""Redis backend against raw redis-py, on a real ``redis-server`` with ``appendfsync always``.

The server is started by the group's setup on a free loopback port in a
temporary folder and stopped by its teardown. persistkit is reached through
its public API: ``configure(mode="live", backend="redis://...")`` and
``PersistBase``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from typing import Any

import orjson

from bench.backends import real_servers
from bench.harness import Case, Group, Sample, SampleFn, timed
from bench.payload import SIGNALS_BYTES, VARIANTS, Rotation
from bench.sizes import Sizes
from bench.store_loops import commit_loop, in_flight_loop, read_loop, tick_loop, write_loop

__all__ = ["BACKEND_MODULE", "groups", "missing_server"]

BACKEND_MODULE = "persistkit.backends._redis"
IN_FLIGHT = 16
TICK = 100
_STORES = ("signal", "risk", "schedule", "partial")
RAW_PIPELINE = f"redis.asyncio pipeline of {TICK} SET (no MULTI)"
RAW_MULTI = f"redis.asyncio MULTI/EXEC of {TICK} SET"
RAW_GET = "redis.asyncio GET + orjson.loads"
BARE_CAS = "RedisBackend.put(expect=version) without receipt or fence"


def missing_server() -> str | None:
    return None if shutil.which("redis-server") else "redis-server is not installed"


def groups(workdir: str, sizes: Sizes) -> list[Group]:
    import redis
    import redis.asyncio

    from persistkit import PersistBase, configure

    count = sizes.durable_writes
    state: dict[str, Any] = {}
    same = Rotation(["same"])
    flight_ids = [f"BTC{number:02d}" for number in range(IN_FLIGHT)]
    batches = max(1, count // IN_FLIGHT)
    ticks = max(2, count // TICK)
    tick_ids = [(_STORES[number % len(_STORES)], f"S{number:03d}") for number in range(TICK)]
    raw_tick_keys = [f"raw:{store}:{entity}" for store, entity in tick_ids]
    encoded_tick = {f"{store}/{entity}": SIGNALS_BYTES[0] for store, entity in tick_ids}

    async def setup() -> None:
        server = state["server"] = real_servers().RedisServer().start()
        state["sync"] = redis.Redis(port=server.port)
        state["async"] = redis.asyncio.Redis(port=server.port)
        base_dir = os.path.join(workdir, "redis")
        configure(mode="live", base_dir=base_dir, backend=server.url)
        state["store"] = PersistBase("signal", base_dir=base_dir)
        state["stores"] = {name: PersistBase(name, base_dir=base_dir) for name in _STORES}

    async def teardown() -> None:
        state.pop("sync").close()
        await state.pop("async").aclose()
        state.pop("stores")
        backend = state.pop("store").backend
        await backend.aclose()
        state.pop("server").stop()

    async def setup_exactly_once() -> None:
        from persistkit.backends._redis import RedisBackend

        class WithoutReceipts(RedisBackend):
            """The same backend with no write token: its scripts skip the receipt."""

            def _token_for(self, request: bytes) -> str:
                return ""

        server = state["server"] = real_servers().RedisServer().start()
        state["backend"] = RedisBackend.from_url(f"{server.url}?prefix=eo")
        state["bare"] = WithoutReceipts.from_url(f"{server.url}?prefix=bare")
        state["lease"] = await state["backend"].acquire_lease("bench", {"host": "bench"}, 3600)

    async def teardown_exactly_once() -> None:
        await state.pop("backend").aclose()
        await state.pop("bare").aclose()
        state.pop("lease")
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

    async def raw_get_async() -> Sample:
        client = state["async"]
        started = time.perf_counter()
        for _ in range(count):
            orjson.loads(await client.get("same"))
        return timed(count, started)

    def compare_and_set(backend_of: str, fenced: bool) -> SampleFn:
        """``count`` compare-and-set puts in a row on one key, each expecting the last version."""

        async def run() -> Sample:
            from persistkit.backends._base import fencing

            backend = state[backend_of]
            version = await backend.put("bench/cas", SIGNALS_BYTES[0])
            token = fencing.set((state["lease"],) if fenced else ())
            try:
                started = time.perf_counter()
                for number in range(count):
                    version = await backend.put(
                        "bench/cas", SIGNALS_BYTES[number % VARIANTS], expect=version
                    )
                return timed(count, started)
            finally:
                fencing.reset(token)

        return run

    async def raw_set_in_flight() -> Sample:
        client = state["async"]
        started = time.perf_counter()
        for batch in range(batches):
            body = SIGNALS_BYTES[batch % VARIANTS]
            await asyncio.gather(*(client.set(key, body) for key in flight_ids))
        return timed(batches * IN_FLIGHT, started)

    def pipeline_tick(transaction: bool) -> SampleFn:
        async def run() -> Sample:
            client = state["async"]
            started = time.perf_counter()
            for number in range(ticks):
                body = SIGNALS_BYTES[number % VARIANTS]
                pipe = client.pipeline(transaction=transaction)
                for key in raw_tick_keys:
                    pipe.set(key, body)
                await pipe.execute()
            return timed(ticks, started)

        return run

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
                Case(
                    f"redis.asyncio SET, {IN_FLIGHT} in flight (gather)",
                    "reference",
                    raw_set_in_flight,
                ),
                Case(
                    f"persistkit write_value on Redis, {IN_FLIGHT} in flight (gather)",
                    "persistkit",
                    in_flight_loop(lambda: state["store"], flight_ids, batches),
                    reference=f"redis.asyncio SET, {IN_FLIGHT} in flight (gather)",
                ),
                Case("redis-py GET + orjson.loads", "reference", raw_get),
                Case(RAW_GET, "reference", raw_get_async),
                Case(
                    "persistkit read_value on Redis",
                    "persistkit",
                    read_loop(lambda: state["store"], "same", count),
                    reference=RAW_GET,
                ),
            ],
            sizes.rounds,
            setup=setup,
            teardown=teardown,
            notes=[
                f"{count} calls per sample on one key ({IN_FLIGHT} keys for the in-flight "
                "cases); a real redis-server on loopback.",
            ],
        ),
        Group(
            "redis-exactly-once",
            "Redis (appendfsync always): what exactly-once and fencing cost a compare-and-set",
            "writes",
            BARE_CAS,
            [
                Case(BARE_CAS, "reference", compare_and_set("bare", fenced=False)),
                Case(
                    "RedisBackend.put(expect=version) with its receipt",
                    "persistkit",
                    compare_and_set("backend", fenced=False),
                ),
                Case(
                    "RedisBackend.put(expect=version) with its receipt, under a lease",
                    "persistkit",
                    compare_and_set("backend", fenced=True),
                ),
            ],
            sizes.rounds,
            setup=setup_exactly_once,
            teardown=teardown_exactly_once,
            notes=[
                f"{count} compare-and-set writes per sample, one key. The reference is the "
                "same backend and script with the write token turned off (no receipt is "
                "checked or stored) and no lease in the context: the cost of exactly-once "
                "(one GET and one SET PX in the script) and of fencing (one GET of the "
                "lease's token counter) against the same write without them.",
            ],
        ),
        Group(
            "redis-tick",
            f"Redis (appendfsync always): a tick of {TICK} entities",
            "ticks",
            RAW_PIPELINE,
            [
                Case(RAW_PIPELINE, "reference", pipeline_tick(transaction=False)),
                Case(RAW_MULTI, "reference", pipeline_tick(transaction=True)),
                Case(
                    f"persistkit transaction(): {TICK} write_value, one commit",
                    "persistkit",
                    tick_loop(lambda: state["stores"], tick_ids, ticks),
                    reference=RAW_MULTI,
                ),
                Case(
                    f"persistkit RedisBackend.commit of {TICK} encoded values",
                    "persistkit",
                    commit_loop(lambda: state["store"].backend, encoded_tick, ticks),
                    reference=RAW_MULTI,
                ),
            ],
            sizes.rounds,
            setup=setup,
            teardown=teardown,
            notes=[
                f"{ticks} ticks per sample, {TICK} distinct entities over {len(_STORES)} stores "
                "per tick. A pipeline without MULTI is not atomic; MULTI/EXEC is, and so is "
                "persistkit's commit.",
            ],
        ),
    ]

"""persistkit's Redis backend against raw redis-py on the same server, in the same run.

    .venv/bin/python bench/redis_backend.py [--rounds 15] [--url redis://127.0.0.1:6379/0]

Without ``--url`` it starts its own redis-server (``appendonly yes``,
``appendfsync always``, as in the tests) on a free loopback port and stops it.
Cases, each run in every round in a rotating order (interleaved, so drift and
noise from other work on the machine hit every case alike); medians reported:

- write: ``PersistBase.write_value`` of a ~300-byte signal (and the backend's
  ``put`` of its bytes) vs redis-py ``SET`` of the same bytes, one at a time;
- read: ``PersistBase.read_value`` (GET, SHA-1 version, JSON parse) and the
  backend's ``get`` vs ``GET``;
- tick: ``RedisBackend.commit`` of 100 entities vs a redis-py pipeline of 100
  ``SET`` (no MULTI) and one wrapped in MULTI/EXEC.

Prints one line per case and a JSON object with every median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from persistkit import PersistBase
from persistkit.backends.redis import RedisBackend
from persistkit.testing import sample_signal

ROOT = Path(__file__).resolve().parents[1]


async def timed(operation: Callable[[int], Awaitable[Any]], count: int) -> float:
    """Operations per second of ``count`` sequential calls."""
    started = time.perf_counter()
    for i in range(count):
        await operation(i)
    return count / (time.perf_counter() - started)


async def run(url: str, rounds: int, ops: int, ticks: int) -> dict[str, float]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    backend = RedisBackend.from_url(f"{url}?prefix={prefix}")
    store: PersistBase[Any] = PersistBase("signal", backend=backend)
    raw = aioredis.Redis.from_url(url)
    payload = sample_signal(1)
    payload_bytes = orjson.dumps(payload)
    entities = [f"tick/S{i}_trend/S{i}" for i in range(100)]
    raw_tick_keys = [f"{prefix}:raw:{i}" for i in range(100)]
    await store.write_value("read-me", payload)
    await raw.set(f"{prefix}:raw-read", payload_bytes)

    async def pk_write(i: int) -> None:
        await store.write_value(i % 64, payload)

    async def backend_put(i: int) -> None:
        await backend.put(f"signal/{i % 64}", payload_bytes)

    async def backend_get(_: int) -> None:
        await backend.get("signal/read-me")

    async def raw_write(i: int) -> None:
        await raw.set(f"{prefix}:raw:{i % 64}", payload_bytes)

    async def pk_read(_: int) -> None:
        await store.read_value("read-me")

    async def raw_read(_: int) -> None:
        await raw.get(f"{prefix}:raw-read")

    async def pk_tick(_: int) -> None:
        await backend.commit(dict.fromkeys(entities, payload_bytes))

    async def raw_pipeline(_: int) -> None:
        pipe = raw.pipeline(transaction=False)
        for key in raw_tick_keys:
            pipe.set(key, payload_bytes)
        await pipe.execute()

    async def raw_multi(_: int) -> None:
        pipe = raw.pipeline(transaction=True)
        for key in raw_tick_keys:
            pipe.set(key, payload_bytes)
        await pipe.execute()

    cases: dict[str, tuple[Callable[[int], Awaitable[Any]], int]] = {
        "write persistkit": (pk_write, ops),
        "write backend.put": (backend_put, ops),
        "write raw SET": (raw_write, ops),
        "read persistkit": (pk_read, ops),
        "read backend.get": (backend_get, ops),
        "read raw GET": (raw_read, ops),
        "tick persistkit commit(100)": (pk_tick, ticks),
        "tick raw pipeline 100 SET": (raw_pipeline, ticks),
        "tick raw MULTI 100 SET": (raw_multi, ticks),
    }
    for operation, _ in cases.values():  # warm up connections and the script cache
        await timed(operation, 5)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            operation, count = cases[name]
            samples[name].append(await timed(operation, count))
        print(f"  round {round_index + 1}/{rounds} done", file=sys.stderr)
    medians = {name: statistics.median(values) for name, values in samples.items()}

    cursor_keys = [key async for key in raw.scan_iter(match=f"{prefix}:*", count=1000)]
    if cursor_keys:
        await raw.delete(*cursor_keys)
    await raw.aclose()
    await backend.aclose()
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an existing server (default: start one)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ops", type=int, default=300, help="writes and reads per round")
    parser.add_argument("--ticks", type=int, default=30, help="tick commits per round")
    args = parser.parse_args()

    server = None
    url = args.url
    if url is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from support.servers import RedisServer

        server = RedisServer().start()
        url = server.url
    try:
        medians = asyncio.run(run(url, args.rounds, args.ops, args.ticks))
    finally:
        if server is not None:
            server.close()

    for name, value in medians.items():
        print(f"{name:32s} {value:12,.0f} ops/s")
    ratios = {
        "write persistkit / raw SET": medians["write persistkit"] / medians["write raw SET"],
        "write backend.put / raw SET": medians["write backend.put"] / medians["write raw SET"],
        "read persistkit / raw GET": medians["read persistkit"] / medians["read raw GET"],
        "read backend.get / raw GET": medians["read backend.get"] / medians["read raw GET"],
        "tick commit / raw pipeline": medians["tick persistkit commit(100)"]
        / medians["tick raw pipeline 100 SET"],
        "tick commit / raw MULTI": medians["tick persistkit commit(100)"]
        / medians["tick raw MULTI 100 SET"],
    }
    for name, ratio in ratios.items():
        print(f"{name:32s} {ratio:12.2f}x")
    print(json.dumps({"url": url, "rounds": args.rounds, "medians": medians, "ratios": ratios}))


if __name__ == "__main__":
    main()

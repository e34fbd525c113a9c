"""A separate process that works on Redis (one server or a cluster), for the cross-host tests.

    python redis_agent.py '<json spec>' ACTION [ARG ...]

The spec says where to connect: ``{"port": p, "prefix": ...}`` for one server,
``{"cluster": true, "port": p, "prefix": ...}`` for a cluster, plus
``"remap": {"7001": 9001, ...}`` to see it through one reply-losing proxy per
node (redis-py's ``address_remap`` sends each node's traffic to its proxy).
redis-py's own retries are off: the store's RetryPolicy is the only one, as
for clients built by ``RedisBackend.from_url``.

Actions (each prints one JSON line with what it did, then exits 0):

* ``increments COUNT``: wait for the key ``go``, then ``update_value(+1)`` COUNT times.
* ``ticks COUNT AT_ONCE``: COUNT ticks, AT_ONCE of them gathered at a time, each
  ``update_value(+1)`` of two entities in one ``transaction()``, run again on
  ``ConflictError`` until acknowledged.
* ``commit NAMES VALUE [wait]``: settle what stopped writers left (as a
  session's start does), then commit VALUE to every key of NAMES
  (comma-separated) in one tick; with ``wait``, first report ``ready`` and wait
  for a line on stdin.
* ``rounds ROUNDS NAMES ID``: for each round, wait for the key ``round-N``, then
  commit ``ID-N`` to every key of NAMES in one tick.
* ``fenced-writer NAME TTL KEY``: take lease NAME, then write ``pid-i`` to KEY
  under it until a write is refused; exits 3 with the ``LeaseLostError``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from persistkit import (
    BackendUnavailableError,
    ConflictError,
    LeaseLostError,
    PersistBase,
    RetryPolicy,
    TransientBackendError,
    transaction,
)
from persistkit.backends._base import fencing
from persistkit.backends._redis import RedisBackend

# Lost replies come back as closed connections at once: retry fast and long.
QUICK_RETRY = RetryPolicy(attempts=200, initial_delay=0.001, max_delay=0.02, deadline=60)


def connect(spec: dict[str, Any]) -> RedisBackend:
    options: dict[str, Any] = {"retry": Retry(NoBackoff(), 0), "socket_timeout": 30.0}
    client: aioredis.Redis | RedisCluster
    if spec.get("cluster"):
        remap = {int(port): proxy for port, proxy in spec.get("remap", {}).items()}

        def through_proxy(address: tuple[str, int]) -> tuple[str, int]:
            _, port = address
            return "127.0.0.1", remap.get(int(port), int(port))

        client = RedisCluster(
            host="127.0.0.1", port=spec["port"], address_remap=through_proxy, **options
        )
    else:
        client = aioredis.Redis(host="127.0.0.1", port=spec["port"], **options)
    return RedisBackend(
        client, prefix=spec["prefix"], commit_timeout=spec.get("commit_timeout", 10.0)
    )


def report(**facts: object) -> None:
    print(json.dumps(facts), flush=True)


async def wait_for_key(backend: RedisBackend, key: str) -> None:
    raw: Any = backend.client
    while True:
        try:
            if await raw.exists(key):
                return
        except Exception:  # a lost reply: ask again
            pass
        await asyncio.sleep(0.005)


async def main(spec: dict[str, Any], action: str, args: list[str]) -> int:
    backend = connect(spec)
    try:
        if action == "increments":
            store: PersistBase[Any] = PersistBase("counters", backend=backend, retry=QUICK_RETRY)
            await wait_for_key(backend, f"{spec['prefix']}-go")
            for _ in range(int(args[0])):
                await store.update_value("hits", lambda n: (n or 0) + 1)
            report(done=int(args[0]))
        elif action == "ticks":
            first: PersistBase[Any] = PersistBase("left", backend=backend, retry=QUICK_RETRY)
            second: PersistBase[Any] = PersistBase("right", backend=backend, retry=QUICK_RETRY)
            conflicts = 0

            async def tick() -> None:
                nonlocal conflicts
                while True:
                    try:
                        async with transaction(backend, retry=QUICK_RETRY):
                            await first.update_value("n", lambda n: (n or 0) + 1)
                            await second.update_value("n", lambda n: (n or 0) + 1)
                        return
                    except ConflictError:
                        conflicts += 1
                    except TransientBackendError as exc:
                        # A read inside the block (Transaction.version_of) is not
                        # retried by the store; nothing was committed, so the tick
                        # is simply run again. A commit whose retries ran out
                        # (BackendUnavailableError) has an unknown outcome: raise.
                        if isinstance(exc, BackendUnavailableError):
                            raise

            total, at_once = int(args[0]), int(args[1])
            for start in range(0, total, at_once):
                await asyncio.gather(*(tick() for _ in range(min(at_once, total - start))))
            report(done=int(args[0]), conflicts=conflicts)
        elif action == "commit":
            settled = await backend.recover_commits()
            names, value = args[0].split(","), args[1].encode()
            if args[2:] == ["wait"]:
                report(ready=True)
                await asyncio.to_thread(sys.stdin.readline)
            await backend.commit(dict.fromkeys(names, value))
            report(committed=args[1], settled=settled)
        elif action == "rounds":
            names = args[1].split(",")
            for number in range(int(args[0])):
                await wait_for_key(backend, f"{spec['prefix']}-round-{number}")
                await backend.commit(dict.fromkeys(names, f"{args[2]}-{number}".encode()))
                await backend.client.set(f"{spec['prefix']}-done-{args[2]}", number)  # type: ignore[misc]
            report(rounds=int(args[0]))
        elif action == "fenced-writer":
            name, ttl, key = args[0], float(args[1]), args[2]
            holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
            lease = await backend.acquire_lease(name, holder, ttl)
            report(token=lease.token)
            fencing.set((lease,))
            written = 0
            try:
                while True:
                    await backend.put(key, f"{os.getpid()}-{written}".encode())
                    written += 1
                    await asyncio.sleep(0.005)
            except LeaseLostError as exc:
                report(refused=str(exc), holder=exc.holder, written=written)
                return 3
        else:
            raise SystemExit(f"unknown action {action!r}")
    finally:
        await backend.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3:])))

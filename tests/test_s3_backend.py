"""The S3 backend on a real SeaweedFS server (one per module, a fresh prefix per test)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from support.servers import SeaweedS3

from persistkit.backends.s3 import S3Backend
from persistkit.testing import BackendConformance

BUCKET = "persistkit-tests"


@pytest.fixture(scope="module")
def s3_server() -> Iterator[SeaweedS3]:
    with SeaweedS3() as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def aws_env(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Credentials where the standard AWS chain finds them: the environment."""
    env = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_DEFAULT_REGION": s3_server.region,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def url_of(server: SeaweedS3, prefix: str, bucket: str = BUCKET, **options: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"endpoint_url": server.endpoint_url, **options}.items())
    return f"s3://{bucket}/{prefix}?{query}"


class TestS3Backend(BackendConformance):
    @pytest.fixture
    async def backend(
        self, s3_server: SeaweedS3, prefix: str, aws_env: dict[str, str]
    ) -> AsyncIterator[S3Backend]:
        backend = S3Backend.from_url(url_of(s3_server, prefix))
        yield backend
        await backend.aclose()

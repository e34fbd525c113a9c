"""Attacks on S3's exactly-once write tokens and on remote backends after a fork.

Each test is a break tried by hand against the per-writer write tokens of the
S3 backend (``persistkit-writers``) and against the Redis and S3 backends in a
forked child. Replies are lost for real (``support.replyloss``: the server
executes the request, the client never hears back); servers are real
(SeaweedFS, redis-server); children are real forks.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from common import count

from persistkit import PersistBase
from persistkit.backends._s3 import S3Backend
from support.replyloss import ReplyLossProxy
from support.servers import SeaweedS3

pytestmark = pytest.mark.timeout(120)

BUCKET = "token-attacks"


@pytest.fixture(scope="module")
def server() -> Iterator[SeaweedS3]:
    with SeaweedS3() as started:
        started.client().create_bucket(Bucket=BUCKET)
        yield started


@pytest.fixture
def prefix() -> str:
    return f"a-{uuid.uuid4().hex[:12]}"


def conditional_put(request: bytes) -> bool:
    head = request.split(b"\r\n\r\n", 1)[0].lower()
    return head.startswith(b"put ") and (b"\r\nif-match:" in head or b"\r\nif-none-match:" in head)


def _plus_one(value: int | None) -> int:
    return (value or 0) + 1


def _minus_one(value: int | None) -> int:
    return (value or 0) - 1


class WhileAReplyIsLost:
    """``lose_if`` of a proxy: when armed, lose the reply to our next conditional PUT
    (the server executed it) and, before our client sees the drop, run ``meanwhile``
    on a loop of its own, straight to the server."""

    def __init__(self) -> None:
        self.meanwhile: Callable[[], Coroutine[Any, Any, None]] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def __call__(self, request: bytes) -> bool:
        if self.meanwhile is None or not conditional_put(request):
            return False
        meanwhile, self.meanwhile = self.meanwhile, None
        asyncio.run_coroutine_threadsafe(meanwhile(), self._loop).result(timeout=60)
        return True

    def run(self, work: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=60)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def direct_store(server: SeaweedS3, prefix: str) -> PersistBase[int]:
    """Another writer (a backend instance of its own), straight to the server."""
    return PersistBase(
        "counters", backend=S3Backend(server.client(), BUCKET, prefix, owns_client=True)
    )


def lossy_store(server: SeaweedS3, port: int, prefix: str) -> PersistBase[int]:
    """Our writer, through the proxy at ``port``; the store's retry policy is the only one."""
    client = boto3.client(
        "s3",
        **{**server.client_kwargs(), "endpoint_url": f"http://127.0.0.1:{port}"},
        config=Config(
            s3={"addressing_style": "path"}, retries={"total_max_attempts": 1, "mode": "standard"}
        ),
    )
    return PersistBase("counters", backend=S3Backend(client, BUCKET, prefix, owns_client=True))


async def test_a_retry_whose_object_came_back_to_the_same_bytes_is_not_applied_twice(
    server: SeaweedS3, prefix: str
) -> None:
    """ABA through a lost reply: our +1 lands (5 -> 6), its reply is lost, another writer's
    -1 brings the value back to 5 (the same bytes, so the same ETag), and our retry's
    If-Match holds again: it must find its token (the other writer carried it on) and
    report success, not write 6 a second time. Acknowledged: +1, -1 from 5: 5."""
    hook = WhileAReplyIsLost()
    theirs = direct_store(server, prefix)
    with ReplyLossProxy("127.0.0.1", server.s3_port, loss=1.0, lose_if=hook) as proxy:
        ours = lossy_store(server, proxy.port, prefix)
        try:
            await ours.write_value("hits", 5)

            async def decrement() -> None:
                await theirs.update_value("hits", _minus_one)

            hook.meanwhile = decrement
            await ours.update_value("hits", _plus_one)
            assert hook.meanwhile is None  # the reply was lost and they wrote meanwhile
        finally:
            await ours.backend.aclose()
            hook.run(theirs.backend.aclose())
            hook.close()
    assert proxy.lost == 1
    check = direct_store(server, prefix)
    assert await check.read_value("hits") == 5
    await check.backend.aclose()

"""Attacks on S3's exactly-once write tokens and on remote backends after a fork.

Each test is a break tried by hand against the per-writer write tokens of the
S3 backend (``persistkit-writers``) and against the Redis and S3 backends in a
forked child. Replies are lost for real (``support.replyloss``: the server
executes the request, the client never hears back); servers are real
(SeaweedFS, redis-server); children are real forks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from common import count

from persistkit import (
    ConflictError,
    PersistBase,
    TransientBackendError,
    WriteFailedError,
    transaction,
)
from persistkit import sync as blocking_api
from persistkit.backends import open_backend
from persistkit.backends._s3 import S3Backend
from support.replyloss import ReplyLossProxy, conditional_put
from support.s3_writers import direct_store, lossy_store
from support.servers import RedisServer, SeaweedS3

pytestmark = pytest.mark.timeout(120)

BUCKET = "token-attacks"
T = TypeVar("T")


@pytest.fixture(scope="module")
def server() -> Iterator[SeaweedS3]:
    with SeaweedS3() as started:
        started.client().create_bucket(Bucket=BUCKET)
        yield started


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as started:
        yield started


@pytest.fixture
def prefix() -> str:
    return f"a-{uuid.uuid4().hex[:12]}"


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

    def lose_the_next_reply(self) -> None:
        """Lose the reply to our next conditional PUT, with nothing written meanwhile."""

        async def nothing() -> None:
            pass

        self.meanwhile = nothing

    def run(self, work: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=60)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


async def hits_now(server: SeaweedS3, prefix: str) -> int | None:
    """``counters/hits`` as a fresh writer reads it; ``None`` when absent."""
    store = direct_store(server, BUCKET, prefix)
    try:
        return await store.read_value("hits") if await store.has_value("hits") else None
    finally:
        await store.backend.aclose()


async def test_a_retry_whose_object_came_back_to_the_same_bytes_is_not_applied_twice(
    server: SeaweedS3, prefix: str
) -> None:
    """ABA through a lost reply: our +1 lands (5 -> 6), its reply is lost, another writer's
    -1 brings the value back to 5 (the same bytes, so the same ETag), and our retry's
    If-Match holds again: it must find its token (the other writer carried it on) and
    report success, not write 6 a second time. Acknowledged: +1, -1 from 5: 5, each round."""
    rounds = count(3, 20, "S3: a lost reply's object back at the same bytes before the retry")
    hook = WhileAReplyIsLost()
    theirs = direct_store(server, BUCKET, prefix)
    with ReplyLossProxy("127.0.0.1", server.s3_port, loss=1.0, lose_if=hook) as proxy:
        ours = lossy_store(server, proxy.port, BUCKET, prefix)
        try:
            await ours.write_value("hits", 5)

            async def decrement() -> None:
                await theirs.update_value("hits", _minus_one)

            for _ in range(rounds):
                hook.meanwhile = decrement
                await ours.update_value("hits", _plus_one)
                assert hook.meanwhile is None  # the reply was lost and they wrote meanwhile
        finally:
            await ours.backend.aclose()
            hook.run(theirs.backend.aclose())
            hook.close()
    assert proxy.lost == rounds
    assert await hits_now(server, prefix) == 5


async def test_a_tick_commit_retried_after_hundreds_of_other_commits_is_found_recorded(
    server: SeaweedS3, prefix: str
) -> None:
    """A tick's commit record is written (its reply lost), then another writer commits 300
    ticks before our retry: more than the record's list of recent commits holds. The retry
    must still find its commit recorded and report success, not record it again (its
    create-only check then failed: ConflictError for a commit that was applied)."""
    hook = WhileAReplyIsLost()
    theirs = direct_store(server, BUCKET, prefix)
    with ReplyLossProxy("127.0.0.1", server.s3_port, loss=1.0, lose_if=hook) as proxy:
        ours = lossy_store(server, proxy.port, BUCKET, prefix)
        try:
            await ours.write_value("warm-up", 0)  # the head record exists, applied

            async def three_hundred_ticks() -> None:
                for tick in range(300):
                    async with transaction(theirs.backend):
                        await theirs.write_value("theirs", tick)

            hook.meanwhile = three_hundred_ticks
            async with transaction(ours.backend):
                await ours.write_value("created-once", 1, if_version=None)
            assert hook.meanwhile is None  # the reply was lost and they committed meanwhile
            assert await ours.read_value("created-once") == 1
            assert await ours.read_value("theirs") == 299
        finally:
            await ours.backend.aclose()
            hook.run(theirs.backend.aclose())
            hook.close()
    assert proxy.lost == 1


async def test_a_tick_commit_retried_after_more_writers_than_the_record_keeps_is_in_doubt(
    server: SeaweedS3, prefix: str
) -> None:
    """As above, but 60 other writers commit meanwhile (5 ticks each), more than the commit
    record keeps the tokens of: the retry cannot tell, and says so (``WriteFailedError``, "outcome
    unknown"), rather than report a conflict for a commit that was applied."""
    hook = WhileAReplyIsLost()
    with ReplyLossProxy("127.0.0.1", server.s3_port, loss=1.0, lose_if=hook) as proxy:
        ours = lossy_store(server, proxy.port, BUCKET, prefix)
        try:
            await ours.write_value("warm-up", 0)

            async def sixty_writers() -> None:
                for writer in range(60):
                    theirs = direct_store(server, BUCKET, prefix)
                    try:
                        for _ in range(5):  # 300 commits: past the list of recent ones too
                            async with transaction(theirs.backend):
                                await theirs.write_value("theirs", writer)
                    finally:
                        await theirs.backend.aclose()

            hook.meanwhile = sixty_writers
            with pytest.raises(WriteFailedError, match="outcome unknown"):
                async with transaction(ours.backend):
                    await ours.write_value("created-once", 1, if_version=None)
            assert hook.meanwhile is None
            assert await ours.read_value("created-once") == 1  # it was recorded
        finally:
            await ours.backend.aclose()
            hook.close()
    assert proxy.lost == 1


@pytest.mark.xfail(
    strict=True,
    reason=(
        "a writer's compare-and-set on a version it holds from its own earlier write carries "
        "the write tokens it saw then: when the object came back to the same bytes (the same "
        "ETag) through other writers, it drops theirs, and a retry of theirs whose reply was "
        "lost reports ConflictError, so update_value applies it a second time. S3's If-Match "
        "sees only the ETag: no request can tell the two objects apart"
    ),
)
async def test_a_write_over_the_same_bytes_written_again_keeps_the_tokens_of_their_writer(
    server: SeaweedS3, prefix: str
) -> None:
    """Another writer sets 5 and keeps the version it got back. We decrement (4) and
    increment (5 again: the same ETag); our increment's reply is lost, and meanwhile the
    other writer sets 100 over "its" 5, which is ours now. Our retry must find its write
    applied: acknowledged, in order, 5, -1, +1, 100 leave 100, not 101."""
    hook = WhileAReplyIsLost()
    theirs = direct_store(server, BUCKET, prefix)
    with ReplyLossProxy("127.0.0.1", server.s3_port, loss=1.0, lose_if=hook) as proxy:
        ours = lossy_store(server, proxy.port, BUCKET, prefix)
        try:
            their_five = hook.run(theirs.write_value("hits", 5, if_version=None))
            await ours.update_value("hits", _minus_one)

            async def set_a_hundred() -> None:
                await theirs.write_value("hits", 100, if_version=their_five)

            hook.meanwhile = set_a_hundred
            await ours.update_value("hits", _plus_one)
            assert hook.meanwhile is None  # the reply was lost and they wrote meanwhile
        finally:
            await ours.backend.aclose()
            hook.run(theirs.backend.aclose())
            hook.close()
    assert proxy.lost == 1
    assert await hits_now(server, prefix) == 100


async def test_write_tokens_another_tool_stored_in_non_ascii_leave_the_key_writable(
    server: SeaweedS3, prefix: str
) -> None:
    """Another tool (raw HTTP: boto3 refuses non-ASCII metadata) stores the value with a
    ``persistkit-writers`` header in Latin-1. A compare-and-set over it carried the entry
    on, boto3 refused the request, and every conditional write of the key failed with
    WriteFailedError until someone overwrote it unconditionally."""
    tool = server.client()

    def raw_header(request: Any, **_: Any) -> None:
        request.headers["x-amz-meta-persistkit-writers"] = "caf\u00e9:abc,def"

    tool.meta.events.register("before-sign.s3.PutObject", raw_header)
    tool.put_object(Bucket=BUCKET, Key=f"{prefix}/counters/hits.json", Body=b"1")
    tool.close()
    store = direct_store(server, BUCKET, prefix)
    try:
        assert await store.update_value("hits", _plus_one) == 2
        current = await store.read_entry("hits")
        await store.write_value("hits", 10, if_version=current.version)
        assert await store.read_value("hits") == 10
    finally:
        await store.backend.aclose()


@pytest.mark.xfail(
    strict=True,
    reason=(
        "a plain delete removes the object outright, with the tokens: a create-only write "
        "whose reply was lost, retried after it, finds no object and creates it again, "
        "undoing an acknowledged delete (documented: README, What S3 guarantees across hosts)"
    ),
)
async def test_a_create_whose_reply_was_lost_is_not_made_again_after_a_plain_delete(
    server: SeaweedS3, prefix: str
) -> None:
    """We create the key (create-only), the reply is lost; another writer deletes it
    (a plain delete, which returns True: it removed our value). Our retry must not
    bring the value back: acknowledged, create then delete, the key is absent."""
    hook = WhileAReplyIsLost()
    theirs = direct_store(server, BUCKET, prefix)
    deleted: list[bool] = []
    with ReplyLossProxy("127.0.0.1", server.s3_port, loss=1.0, lose_if=hook) as proxy:
        ours = lossy_store(server, proxy.port, BUCKET, prefix)
        try:

            async def delete() -> None:
                deleted.append(await theirs.remove_value("hits"))

            hook.meanwhile = delete
            try:
                await ours.write_value("hits", 1, if_version=None)
            except ConflictError:
                pass  # what the README says happens; the value must stay deleted either way
        finally:
            await ours.backend.aclose()
            hook.run(theirs.backend.aclose())
            hook.close()
    assert proxy.lost == 1
    assert deleted == [True]
    assert await hits_now(server, prefix) is None


async def test_a_lease_renewal_retried_after_a_lost_reply_lasts_as_long_as_it_says(
    server: SeaweedS3, prefix: str
) -> None:
    """A renewal rewrites the lease's very bytes; its reply is lost and the retry comes
    seconds later. The lease, as a rival judges it (the object's Last-Modified, the
    server's clock), must last at least until the expiry the retry reported: a retry
    that found its first attempt applied and wrote nothing would report a later expiry
    than the server keeps."""
    hook = WhileAReplyIsLost()
    with ReplyLossProxy("127.0.0.1", server.s3_port, loss=1.0, lose_if=hook) as proxy:
        holder = lossy_store(server, proxy.port, BUCKET, prefix).backend
        rival = direct_store(server, BUCKET, prefix).backend
        try:
            lease = await holder.acquire_lease("pair-x", {"host": "h", "pid": 1}, ttl=30)
            hook.lose_the_next_reply()
            with pytest.raises(TransientBackendError):
                await holder.renew_lease(lease, ttl=30)
            await asyncio.sleep(2.5)  # S3 times are whole seconds: let them tell
            renewed = await holder.renew_lease(lease, ttl=30)
            (seen,) = await rival.read_leases()
        finally:
            await holder.aclose()
            await rival.aclose()
            hook.close()
    assert proxy.lost == 1
    assert seen.token == renewed.token
    assert seen.expires_at >= renewed.expires_at


# -- remote backends after a fork ------------------------------------------------------------


def in_a_forked_child(work: Callable[[], dict[str, str]]) -> dict[str, str]:
    """``work()`` in a forked child; what it returns (or the error it raised), as JSON."""
    readable, writable = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        try:
            os.close(readable)
            try:
                outcome = work()
            except BaseException as exc:
                outcome = {"raised": f"{type(exc).__name__}: {exc}"}
            os.write(writable, json.dumps(outcome).encode())
        finally:
            os._exit(0)
    os.close(writable)
    try:
        _, status = os.waitpid(pid, 0)
        with os.fdopen(readable, "rb") as pipe:
            reply = pipe.read()
    finally:
        assert os.waitstatus_to_exitcode(status) == 0
    return dict(json.loads(reply))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_cannot_commit_or_give_back_under_its_parents_leases(
    redis_server: RedisServer, tmp_path: Any
) -> None:
    """A bot forks a worker while its live session (on Redis) holds the pair's lease. The
    worker inherits the session object, not the lease: a tick there must raise
    LeaseLostError and write nothing (it would carry the parent's fencing token, which the
    server accepts), and closing the session there must leave the parent's leases held."""
    session = blocking_api.LiveSession(
        [("BTCUSDT", "trend")], risk_name="main", base_dir=tmp_path, backend=redis_server.url
    )
    session.start()
    try:
        store: Any = blocking_api.PersistBase("notes", backend=session.backend)
        with session.tick():
            store.write_value("who", "parent")
        held = {(lease.name, lease.token) for lease in _leases(redis_server.url)}

        def child() -> dict[str, str]:
            outcome = {}
            try:
                with session.tick():
                    store.write_value("who", "child")
                outcome["tick"] = "committed"
            except BaseException as exc:
                outcome["tick"] = type(exc).__name__
            session.close()
            return outcome

        assert in_a_forked_child(child) == {"tick": "LeaseLostError"}
        assert store.read_value("who") == "parent"
        assert {(lease.name, lease.token) for lease in _leases(redis_server.url)} == held
        with session.tick():  # the parent still holds them and commits
            store.write_value("who", "parent again")
        assert store.read_value("who") == "parent again"
    finally:
        session.close()


def _leases(url: str) -> list[Any]:
    """The live leases another process sees in the backend at ``url``."""

    async def read() -> list[Any]:
        backend = open_backend(url)
        try:
            return await backend.read_leases()
        finally:
            await backend.aclose()

    return list(asyncio.run(read()))


def in_a_thread_of_its_own(work: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(work)`` in a new thread: a forked child of a running loop has no loop."""
    outcome: list[T] = []
    thread = threading.Thread(target=lambda: outcome.append(asyncio.run(work)))
    thread.start()
    thread.join()
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
async def test_a_write_in_doubt_across_a_fork_is_found_by_the_parents_retry(
    server: SeaweedS3, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our compare-and-set lands and its reply is lost; we fork before retrying, and the
    child (the same backend object, a writer of its own there) increments the key. The
    parent's retry must find its write under the child's and report success, once."""
    for name, value in (
        ("AWS_ACCESS_KEY_ID", server.access_key),
        ("AWS_SECRET_ACCESS_KEY", server.secret_key),
        ("AWS_DEFAULT_REGION", server.region),
    ):
        monkeypatch.setenv(name, value)
    hook = WhileAReplyIsLost()
    with ReplyLossProxy("127.0.0.1", server.s3_port, loss=1.0, lose_if=hook) as proxy:
        backend = S3Backend.from_url(
            f"s3://{BUCKET}/{prefix}?endpoint_url=http://127.0.0.1:{proxy.port}"
        )
        try:
            first = await backend.put("counters/hits", b"1", expect=None)
            hook.lose_the_next_reply()
            with pytest.raises(TransientBackendError):
                await backend.put("counters/hits", b"2", expect=first)

            def child() -> dict[str, str]:
                async def increment() -> int:
                    store: PersistBase[int] = PersistBase("counters", backend=backend)
                    return await store.update_value("hits", _plus_one)

                return {"wrote": str(in_a_thread_of_its_own(increment()))}

            assert in_a_forked_child(child) == {"wrote": "3"}
            assert await backend.put("counters/hits", b"2", expect=first) == _md5(b"2")
        finally:
            await backend.aclose()
            hook.close()
    assert proxy.lost == 1
    assert await hits_now(server, prefix) == 3


def _md5(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'

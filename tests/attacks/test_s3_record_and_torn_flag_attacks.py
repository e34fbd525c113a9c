"""Attacks on two fixes: the per-writer tokens of the S3 tick commit record (a retry whose
reply was lost finds its commit past the 256 recent ones), and the start's flag on files
that are not JSON in folders named like backtest-kit's.

Each test is a break tried by hand. Replies are lost for real (``support.replyloss``: the
server executes the request, the client never hears back) against a real SeaweedFS; files
are real files of a real root.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import orjson
import pytest
from tests.support.replyloss import ReplyLossProxy, conditional_put
from tests.support.s3_writers import direct_store, lossy_store
from tests.support.servers import SeaweedS3

from persistkit import WriteFailedError, transaction
from persistkit.backends._s3 import COMMITS_DIR

BUCKET = "record-attacks"


@pytest.fixture(scope="module")
def server() -> Iterator[SeaweedS3]:
    with SeaweedS3() as started:
        started.client().create_bucket(Bucket=BUCKET)
        yield started


@pytest.fixture
def prefix() -> str:
    return f"r-{uuid.uuid4().hex[:12]}"


class LoseTheNthConditionalPut:
    """``lose_if`` of a proxy: once armed, lose the reply to our ``nth`` conditional PUT
    from then on (the server executed it) and run ``meanwhile`` on a loop of its own,
    straight to the server: before our client sees that drop, or, with ``meanwhile_at``,
    when the reply to an earlier one comes back (then it is passed on)."""

    def __init__(self) -> None:
        self.meanwhile: Callable[[], Coroutine[Any, Any, None]] | None = None
        self._left = 0
        self._meanwhile_left = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def arm(
        self,
        nth: int,
        meanwhile: Callable[[], Coroutine[Any, Any, None]],
        *,
        meanwhile_at: int | None = None,
    ) -> None:
        self._left, self._meanwhile_left = nth, nth if meanwhile_at is None else meanwhile_at
        self.meanwhile = meanwhile

    def __call__(self, request: bytes) -> bool:
        if not self._left or not conditional_put(request):
            return False
        self._left -= 1
        self._meanwhile_left -= 1
        if not self._meanwhile_left and self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            asyncio.run_coroutine_threadsafe(meanwhile(), self._loop).result(timeout=120)
        return not self._left

    def run(self, work: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=120)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


# -- S3: the commit record's per-writer tokens ---------------------------------------------


@pytest.mark.parametrize(
    "lost", [2, 3], ids=["the reply of its apply", "the reply of its mark-applied"]
)
async def test_a_tick_commit_recorded_whose_later_reply_was_lost_is_found_past_256_commits(
    server: SeaweedS3, prefix: str, lost: int
) -> None:
    """Our tick's record is written and answered; the reply of a later step of the same
    commit (writing its object, or marking the record applied) is lost, and another writer
    commits 300 ticks meanwhile (they apply our record first). The commit is recorded and
    applied, so its retry must report success, not record it again: its create-only check
    then fails, ConflictError for a commit that was applied."""
    hook = LoseTheNthConditionalPut()
    theirs = direct_store(server, BUCKET, prefix)
    with ReplyLossProxy("127.0.0.1", server.s3_port, loss=1.0, lose_if=hook) as proxy:
        ours = lossy_store(server, proxy.port, BUCKET, prefix)
        try:
            await ours.write_value("warm-up", 0)  # a plain write: no commit record yet

            async def three_hundred_ticks() -> None:
                for tick in range(300):
                    async with transaction(theirs.backend):
                        await theirs.write_value("theirs", tick)

            hook.arm(lost, three_hundred_ticks)
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


def commit_as_the_previous_release(server: SeaweedS3, prefix: str, key: str, data: bytes) -> None:
    """One tick commit recorded as persistkit before the per-writer tokens records it: the
    next head, with its write and its token among the recent ones, and no "writers" (a
    process not upgraded yet, beside upgraded ones). Left for the next committer to apply,
    as a writer stopped before its apply leaves it."""
    client = server.client()
    head_key = f"{prefix}/{COMMITS_DIR}/head.json"
    found = client.get_object(Bucket=BUCKET, Key=head_key)
    payload, _, _ = found["Body"].read().rpartition(b"\n")
    head = orjson.loads(payload)
    seq = head["seq"] + 1
    record = orjson.dumps(
        {
            "format": head["format"],
            "seq": seq,
            "applied": False,
            "writes": [[key, base64.b64encode(data).decode("ascii")]],
            "fences": head["fences"],
            "tokens": {},
            "recent": [*head["recent"], [uuid.uuid4().hex, seq]][-256:],
        }
    )
    client.put_object(
        Bucket=BUCKET,
        Key=head_key,
        Body=record + b"\n" + hashlib.sha256(record).hexdigest().encode("ascii"),
        IfMatch=found["ETag"],
    )


async def test_a_retry_across_a_head_of_the_previous_release_is_not_recorded_again(
    server: SeaweedS3, prefix: str
) -> None:
    """A rolling upgrade: our (upgraded) tick's record is written, its reply lost; another
    writer commits 300 ticks, then a process still on the previous release commits once
    (its head carries no per-writer tokens). Our commit was recorded and applied: the
    retry must say the outcome is unknown (the head of the previous release dropped every
    writer's tokens), never report a conflict."""
    hook = LoseTheNthConditionalPut()
    theirs = direct_store(server, BUCKET, prefix)
    with ReplyLossProxy("127.0.0.1", server.s3_port, loss=1.0, lose_if=hook) as proxy:
        ours = lossy_store(server, proxy.port, BUCKET, prefix)
        try:
            await ours.write_value("warm-up", 0)

            async def ticks_then_one_of_the_previous_release() -> None:
                for tick in range(300):
                    async with transaction(theirs.backend):
                        await theirs.write_value("theirs", tick)
                commit_as_the_previous_release(server, prefix, "counters/theirs", b"300")

            hook.arm(1, ticks_then_one_of_the_previous_release)
            # Its entry went with the previous release's head: it cannot tell, and says so.
            with pytest.raises(WriteFailedError, match="outcome unknown"):
                async with transaction(ours.backend):
                    await ours.write_value("created-once", 1, if_version=None)
            assert hook.meanwhile is None
            assert await ours.read_value("created-once") == 1
            assert await ours.read_value("theirs") == 300
        finally:
            await ours.backend.aclose()
            hook.run(theirs.backend.aclose())
            hook.close()
    assert proxy.lost == 1


async def test_the_first_commit_after_an_upgrade_refused_and_its_reply_lost_is_committed(
    server: SeaweedS3, prefix: str
) -> None:
    """The head is a record of the previous release; our (upgraded) tick's record is refused
    (a process of the previous release committed first) and the refusal's reply is lost.
    Nothing of ours was recorded, and the recent commits say so: the retry must commit it,
    not give up with "outcome unknown"."""
    hook = LoseTheNthConditionalPut()
    with ReplyLossProxy("127.0.0.1", server.s3_port, loss=1.0, lose_if=hook) as proxy:
        ours = lossy_store(server, proxy.port, BUCKET, prefix)
        try:
            async with transaction(ours.backend):
                await ours.write_value("warm-up", 0)  # the head record exists
            commit_as_the_previous_release(server, prefix, "counters/theirs", b"1")

            async def one_of_the_previous_release() -> None:
                commit_as_the_previous_release(server, prefix, "counters/theirs", b"2")

            # Ours is refused on the head it knew, applies their record (its object, then
            # marked applied, when theirs commits again), then is refused again: lost.
            hook.arm(4, one_of_the_previous_release, meanwhile_at=3)
            async with transaction(ours.backend):
                await ours.write_value("created-once", 1, if_version=None)
            assert hook.meanwhile is None
            assert await ours.read_value("created-once") == 1
            assert await ours.read_value("theirs") == 2
        finally:
            await ours.backend.aclose()
            hook.close()
    assert proxy.lost == 1

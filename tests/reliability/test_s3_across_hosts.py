"""S3 across hosts (issue 13): lost replies, concurrent committers, crashes, leases and fencing.

Everything runs on a real SeaweedFS server. Replies are lost for real: a TCP
proxy (``support.replyloss``) lets the server execute a conditional PUT and
cuts the connection before its answer reaches the client, which sees a
dropped connection and retries. Processes are real (``s3_agent.py``), started
together and killed or stopped with real signals. ``PERSISTKIT_LONG=1`` runs
the full counts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from common import count

import persistkit
from persistkit import (
    ConflictError,
    InstanceLockedError,
    LeaseLostError,
    PersistBase,
    TransientBackendError,
    WriteFailedError,
)
from persistkit._retry import DEFAULT_RETRY
from persistkit.backends._base import fencing
from persistkit.backends._s3 import S3Backend
from support.replyloss import ReplyLossProxy, conditional_put
from support.servers import SeaweedS3

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("count_in_the_report")]
REPORT_AS = "S3 across hosts (issue 13)"
REPORT_INJECTION = (
    "real SeaweedFS; a TCP proxy that lets the server execute a conditional PUT and drops "
    "its reply (30%); real processes (s3_agent.py) started together, SIGKILL / SIGSTOP"
)

AGENT = Path(__file__).with_name("s3_agent.py")
SRC = Path(persistkit.__file__).resolve().parent.parent
BUCKET = "across-hosts"
LOSS = 0.3
T = TypeVar("T")


@pytest.fixture(scope="module")
def server() -> Iterator[SeaweedS3]:
    with SeaweedS3() as started:
        started.client().create_bucket(Bucket=BUCKET)
        yield started


@pytest.fixture
def env(server: SeaweedS3) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "PYTHONPATH": path,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_DEFAULT_REGION": server.region,
    }


@pytest.fixture
def lossy(server: SeaweedS3) -> Iterator[ReplyLossProxy]:
    with ReplyLossProxy(
        "127.0.0.1", server.s3_port, loss=LOSS, seed=13, lose_if=conditional_put
    ) as proxy:
        yield proxy


@pytest.fixture
def prefix() -> str:
    return f"h-{uuid.uuid4().hex[:12]}"


def url(port: int, prefix: str) -> str:
    return f"s3://{BUCKET}/{prefix}?endpoint_url=http://127.0.0.1:{port}"


def open_backend(server: SeaweedS3, port: int, prefix: str, monkeypatch: Any) -> S3Backend:
    for name, value in (
        ("AWS_ACCESS_KEY_ID", server.access_key),
        ("AWS_SECRET_ACCESS_KEY", server.secret_key),
        ("AWS_DEFAULT_REGION", server.region),
    ):
        monkeypatch.setenv(name, value)
    return S3Backend.from_url(url(port, prefix))


class Agent:
    """One s3_agent.py process; ``host``: run it as another host (its own UTS namespace)."""

    def __init__(self, env: dict[str, str], *args: str, host: str | None = None) -> None:
        command = [sys.executable, str(AGENT), *args]
        if host is not None:
            # unshare --uts gives the process a host name of its own (needs root, as CI is).
            command = [
                "unshare",
                "--uts",
                "sh",
                "-c",
                f'hostname {host} && exec "$@"',
                "-",
                *command,
            ]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.read() == "ready", self.stderr()

    def read(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self, timeout: float = 240) -> tuple[int, str]:
        out, err = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0, err
        return self.process.returncode, out

    def stderr(self) -> str:
        if self.process.poll() is None:
            return ""
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def stored(server: SeaweedS3, prefix: str, key: str) -> bytes | None:
    """What a fresh backend reads at ``key`` (it replays a commit left unapplied first)."""

    async def read() -> bytes | None:
        client = server.client(retries={"total_max_attempts": 1})
        backend = S3Backend(client, BUCKET, prefix, owns_client=True)
        try:
            found = await backend.get(key)
        finally:
            await backend.aclose()
        return None if found is None else found.data

    # In a thread of its own: async tests call it from inside their event loop.
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, read()).result()


async def retried(operation: Callable[[], Awaitable[T]]) -> T:
    """``operation()``, retried like the store retries a backend call (transient errors only)."""
    try:
        return await operation()
    except TransientBackendError as exc:
        return await DEFAULT_RETRY.call(operation, exc)


# -- exactly-once conditional writes ---------------------------------------------------------


def test_increments_from_four_processes_through_lost_replies_count_exactly_once(
    server: SeaweedS3, lossy: ReplyLossProxy, env: dict[str, str], prefix: str
) -> None:
    """update_value from 4 processes, 30% of conditional PUT replies lost: exactly N."""
    each = count(12, 50, "S3: update_value from 4 processes through 30% lost replies")
    agents = [Agent(env, "increments", url(lossy.port, prefix), str(each)) for _ in range(4)]
    try:
        for agent in agents:
            agent.send("go")
        for agent in agents:
            agent.finish()
    finally:
        for agent in agents:
            agent.kill()
    assert stored(server, prefix, "counters/hits") == b"%d" % (4 * each)
    assert lossy.lost > 0


class WritersBehindALostReply:
    """Other writers, straight to the server, that run while a reply of ours is being lost.

    ``lose_if`` of a :class:`ReplyLossProxy`: when armed, it loses the reply to
    our next conditional PUT (the server has executed it) and, before our
    client even sees the connection drop, lets ``writers`` stores take turns
    at ``increments`` increments of ``counters/hits``. Our retry then finds
    our write buried under all of theirs, deterministically.
    """

    def __init__(self, server: SeaweedS3, prefix: str, writers: int, increments: int) -> None:
        self.increments = increments
        self.armed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client = server.client()
        self._stores: list[PersistBase[int]] = [
            PersistBase("counters", backend=S3Backend(self._client, BUCKET, prefix))
            for _ in range(writers)
        ]

    def __call__(self, request: bytes) -> bool:
        if not (self.armed and conditional_put(request)):
            return False
        self.armed = False
        asyncio.run_coroutine_threadsafe(self._increment(), self._loop).result(timeout=120)
        return True

    async def _increment(self) -> None:
        for index in range(self.increments):
            await self._stores[index % len(self._stores)].update_value("hits", _plus_one)

    def close(self) -> None:
        async def close_all() -> None:
            for store in self._stores:
                await store.backend.aclose()

        asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._client.close()


def _plus_one(value: int | None) -> int:
    return (value or 0) + 1


async def test_an_increment_whose_reply_is_lost_under_40_later_increments_counts_once(
    server: SeaweedS3, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our write lands, its reply is lost, 3 other writers increment 40 times: counted once.

    Before the fix an object kept the tokens of its last 31 writes only: the
    retry found its token gone, reported a conflict, and update_value applied
    the increment a second time (the 49-for-48 of the 4-process test above).
    """
    rounds = count(3, 20, "S3: an increment's reply lost while 40 later increments land")
    others = WritersBehindALostReply(server, prefix, writers=3, increments=40)
    with ReplyLossProxy("127.0.0.1", server.s3_port, loss=1.0, lose_if=others) as proxy:
        ours: PersistBase[int] = PersistBase(
            "counters", backend=open_backend(server, proxy.port, prefix, monkeypatch)
        )
        try:
            for _ in range(rounds):
                others.armed = True
                await ours.update_value("hits", _plus_one)
                assert not others.armed  # the reply was lost, the others wrote meanwhile
        finally:
            await ours.backend.aclose()
            others.close()
    assert proxy.lost == rounds
    assert stored(server, prefix, "counters/hits") == b"%d" % (rounds * (1 + 40))


async def test_a_lost_reply_under_more_writers_than_an_object_names_is_outcome_unknown(
    server: SeaweedS3, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our write lands, its reply is lost, 60 distinct writers follow: "outcome unknown", once.

    An object names its latest ~45 writers; past that, the retry cannot tell
    whether its write was applied. It must say so (WriteFailedError), never
    report a conflict that update_value would answer by applying it again.
    """
    others = WritersBehindALostReply(server, prefix, writers=60, increments=60)
    with ReplyLossProxy("127.0.0.1", server.s3_port, loss=1.0, lose_if=others) as proxy:
        ours: PersistBase[int] = PersistBase(
            "counters", backend=open_backend(server, proxy.port, prefix, monkeypatch)
        )
        try:
            await ours.update_value("hits", _plus_one)  # a first value, and our name on it
            others.armed = True
            with pytest.raises(WriteFailedError, match="outcome unknown"):
                await ours.update_value("hits", _plus_one)
            assert stored(server, prefix, "counters/hits") == b"%d" % (2 + 60)  # applied once
            # Past it, the key works as before: only a write that got no answer is unsure.
            # Another writer deletes it (a tombstone that does not name us), we create it.
            theirs: PersistBase[int] = PersistBase(
                "counters", backend=S3Backend(server.client(), BUCKET, prefix, owns_client=True)
            )
            deleted = (await theirs.read_entry("hits")).version
            assert await theirs.remove_value("hits", if_version=deleted)
            await theirs.backend.aclose()
            await ours.write_value("hits", 1000, if_version=None)  # create-only, over it
            current = await ours.read_entry("hits")
            await ours.update_value("hits", _plus_one)
            with pytest.raises(ConflictError):
                await ours.write_value("hits", 0, if_version=current.version)
        finally:
            await ours.backend.aclose()
            others.close()
    assert proxy.lost == 1
    assert stored(server, prefix, "counters/hits") == b"1001"


async def test_create_only_writes_with_lost_replies_report_success_with_the_callers_value(
    server: SeaweedS3, lossy: ReplyLossProxy, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Create-only writes of fresh keys whose replies are lost: all report success."""
    writes = count(40, 200, "S3: create-only writes of fresh keys through lost replies")
    backend = open_backend(server, lossy.port, prefix, monkeypatch)
    store: PersistBase[dict[str, int]] = PersistBase("fresh", backend=backend)
    for index in range(writes):
        await store.write_value(f"k{index}", {"i": index}, if_version=None)
    lost = lossy.lost
    await backend.aclose()
    assert lost > 0
    for index in range(writes):
        assert stored(server, prefix, f"fresh/k{index}") == b'{"i":%d}' % index


async def test_a_real_conflict_through_lost_replies_is_still_a_conflict(
    server: SeaweedS3, lossy: ReplyLossProxy, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through lost replies: own writes succeed once, others' writes still conflict."""
    rounds = count(10, 60, "S3: conflicts and conditional deletes through lost replies")
    ours = open_backend(server, lossy.port, prefix, monkeypatch)
    theirs = S3Backend(server.client(), BUCKET, prefix, owns_client=True)

    async def one_round(key: str) -> None:
        first = await retried(lambda: ours.put(key, b"1", expect=None))
        with pytest.raises(ConflictError, match="exists already"):
            await retried(lambda: ours.put(key, b"other", expect=None))
        await theirs.put(key, b"2")  # someone else moves it on
        with pytest.raises(ConflictError, match="changed since"):
            await retried(lambda: ours.put(key, b"3", expect=first))
        with pytest.raises(ConflictError):
            await retried(lambda: ours.delete(key, expect=first))
        current = await retried(lambda: ours.get(key))
        assert current is not None and current.data == b"2"
        version = current.version
        assert await retried(lambda: ours.delete(key, expect=version)) is True  # exactly once
        assert await retried(lambda: ours.get(key)) is None
        assert key not in [k async for k in ours.scan("c")]  # the tombstone is no entity
        await retried(lambda: ours.put(key, b"4", expect=None))  # over the tombstone

    for index in range(rounds):
        await one_round(f"c/k{index}")
    lost = lossy.lost
    await ours.aclose()
    await theirs.aclose()
    assert lost > 0


# -- two committers, one order ---------------------------------------------------------------


def test_two_processes_committing_the_same_keys_leave_one_whole_tick(
    server: SeaweedS3, env: dict[str, str], prefix: str
) -> None:
    """Two processes commit a 4-key tick at the same instant: one whole tick, never a mix."""
    rounds = count(8, 25, "S3: two processes commit 4-key ticks at the same instant")
    agents = [Agent(env, "ticks", url(server.s3_port, prefix), name) for name in ("a", "b")]
    client = server.client()
    try:
        for tick in range(rounds):
            for agent in agents:
                agent.send(f"go {tick}")
            for agent in agents:
                assert agent.read() == f"committed {tick}", agent.stderr()
            values = {
                client.get_object(Bucket=BUCKET, Key=f"{prefix}/tick/k{index}.json")["Body"].read()
                for index in range(4)
            }
            assert len(values) == 1, f"round {tick}: the keys hold parts of both ticks: {values}"
            assert f'"tick": {tick}}}'.encode() in values.pop()
    finally:
        for agent in agents:
            agent.process.stdin.close()  # type: ignore[union-attr]
            agent.kill()


def test_gathered_ticks_of_increments_through_lost_replies_lose_nothing_acknowledged(
    server: SeaweedS3, lossy: ReplyLossProxy, env: dict[str, str], prefix: str
) -> None:
    """10 gathered update_value ticks in each of 2 processes, lost replies: the count holds."""
    rounds = count(2, 6, "S3: 10 gathered increment ticks in 2 processes, lost replies")
    committed = 0
    for _ in range(rounds):
        agents = [Agent(env, "gathered", url(lossy.port, prefix), "10") for _ in range(2)]
        try:
            for agent in agents:
                agent.send("go")
            committed += sum(int(agent.finish()[1]) for agent in agents)
        finally:
            for agent in agents:
                agent.kill()
    assert committed > 0
    assert stored(server, prefix, "counters/hits") == b"%d" % committed


# -- a writer killed between recording and applying ------------------------------------------

KEYS = [f"tick/k{index}" for index in range(4)]

KILLED_COMMITTER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from persistkit.backends._s3 import S3Backend

    url, tick = sys.argv[1], sys.argv[2]

    def die(self, seq, key, data, seen):
        os.kill(os.getpid(), signal.SIGKILL)  # recorded, nothing applied

    S3Backend._apply_write_sync = die

    async def main():
        backend = S3Backend.from_url(url)
        await backend.commit({f"tick/k{i}": tick.encode() for i in range(4)})

    asyncio.run(main())
    """
)


def test_a_writer_killed_between_record_and_apply_never_rolls_back_a_later_tick(
    server: SeaweedS3, env: dict[str, str], prefix: str
) -> None:
    """kill -9 between record and apply, restart, more ticks, restart: never rolled back."""
    rounds = count(2, 12, "S3: kill -9 between record and apply, restart twice")

    async def commit_then_close(tick: int) -> None:
        backend = S3Backend(server.client(), BUCKET, prefix, owns_client=True)
        await backend.commit({key: b"%d" % tick for key in KEYS})
        await backend.aclose()

    tick = 0
    for _ in range(rounds):
        tick += 1
        asyncio.run(commit_then_close(tick))
        tick += 1
        killed = subprocess.run(
            [sys.executable, "-c", KILLED_COMMITTER, url(server.s3_port, prefix), str(tick)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        # The restart reads the killed writer's tick: it was recorded, so it is decided.
        assert {stored(server, prefix, key) for key in KEYS} == {b"%d" % tick}
        tick += 1
        asyncio.run(commit_then_close(tick))  # a further acknowledged tick
        # Another restart: the old record is never replayed over it.
        assert {stored(server, prefix, key) for key in KEYS} == {b"%d" % tick}


# -- leases and fencing -----------------------------------------------------------------------


async def test_a_lease_refuses_a_second_holder_until_released_or_lapsed(
    server: SeaweedS3, prefix: str
) -> None:
    """A second instance is refused, named; release or lapse lets it in with a larger token."""
    first = S3Backend(server.client(), BUCKET, prefix, owns_client=True)
    second = S3Backend(server.client(), BUCKET, prefix, owns_client=True)
    me = {"host": "host-a", "pid": 101}
    lease = await first.acquire_lease("pair-BTCUSDT_trend", me, 30)
    with pytest.raises(InstanceLockedError, match="host-a") as locked:
        await second.acquire_lease("pair-BTCUSDT_trend", {"host": "host-b", "pid": 202}, 30)
    assert locked.value.holder["host"] == "host-a" and locked.value.holder["pid"] == 101
    assert locked.value.holder["expires_at"] >= lease.expires_at
    assert "since" in locked.value.holder
    other = await second.acquire_lease("risk-main", {"host": "host-b", "pid": 202}, 30)
    assert [held.name for held in await first.read_leases()] == ["pair-BTCUSDT_trend", "risk-main"]

    renewed = await first.renew_lease(lease, 30)
    assert renewed.token == lease.token and renewed.expires_at >= lease.expires_at
    await first.release_lease(renewed)
    taken = await second.acquire_lease("pair-BTCUSDT_trend", {"host": "host-b", "pid": 202}, 1)
    assert taken.token == lease.token + 1
    with pytest.raises(LeaseLostError, match="taken over"):
        await first.renew_lease(renewed, 30)

    # A lease that is not renewed lapses by the server's clock; the next holder gets in.
    await asyncio.sleep(taken.expires_at - time.time() + 2.5)
    again = await first.acquire_lease("pair-BTCUSDT_trend", me, 30)
    assert again.token == taken.token + 1
    with pytest.raises(LeaseLostError):
        await second.renew_lease(taken, 30)
    await second.release_lease(other)
    await first.aclose()
    await second.aclose()


async def test_a_commit_under_a_superseded_lease_is_refused_and_lands_nothing(
    server: SeaweedS3, prefix: str
) -> None:
    """Fencing: a commit carrying an older token than the lease's newest is never recorded."""
    old_holder = S3Backend(server.client(), BUCKET, prefix, owns_client=True)
    new_holder = S3Backend(server.client(), BUCKET, prefix, owns_client=True)
    old = await old_holder.acquire_lease("bot", {"host": "a"}, 30)
    fencing.set((old,))
    await old_holder.put("ns/x", b"old 1")
    await old_holder.release_lease(old)  # as if it had lapsed
    new = await new_holder.acquire_lease("bot", {"host": "b"}, 30)
    for attempt in (
        old_holder.put("ns/x", b"old 2"),
        old_holder.commit({"ns/x": b"old 3"}),
        old_holder.delete("ns/x"),
    ):
        with pytest.raises(LeaseLostError, match="took it over"):
            await attempt
    fencing.set((new,))
    await new_holder.put("ns/x", b"new 1")
    fencing.set(())
    check = S3Backend(server.client(), BUCKET, prefix, owns_client=True)
    found = await check.get("ns/x")
    assert found is not None and found.data == b"new 1"
    for backend in (old_holder, new_holder, check):
        await backend.aclose()


async def test_an_instance_on_another_host_is_named_by_the_lease_it_holds(
    server: SeaweedS3, env: dict[str, str], prefix: str
) -> None:
    """Another host (own host name, own process) holds the lease: a second instance is refused."""
    other_host = Agent(env, "fenced", url(server.s3_port, prefix), "b", "30", host="bot-host-b")
    try:
        assert other_host.read() == "leased 1"
        here = S3Backend(server.client(), BUCKET, prefix, owns_client=True)
        with pytest.raises(InstanceLockedError, match="bot-host-b") as locked:
            await here.acquire_lease("bot", {"host": "bot-host-a", "pid": os.getpid()}, 30)
        assert locked.value.holder["host"] == "bot-host-b"
        assert locked.value.holder["pid"] == other_host.process.pid
        await here.aclose()
    finally:
        other_host.kill()


def test_a_stopped_holder_resumed_after_a_takeover_lands_no_write_and_stops(
    server: SeaweedS3, env: dict[str, str], prefix: str
) -> None:
    """SIGSTOP a holder past its TTL, a second takes over and writes, SIGCONT: nothing lands."""
    rounds = count(1, 5, "S3: SIGSTOP a lease holder past its TTL, takeover, SIGCONT")
    ttl = 1.5
    for _ in range(rounds):
        stale = Agent(env, "fenced", url(server.s3_port, prefix), "stale", str(ttl))
        fresh: Agent | None = None
        try:
            first_token = int(stale.read().split()[1])
            while not stale.read().startswith("acked 3"):
                pass
            stale.process.send_signal(signal.SIGSTOP)
            time.sleep(ttl + 2.5)  # past the TTL by the server's whole-second clock
            fresh = Agent(env, "fenced", url(server.s3_port, prefix), "fresh", "30")
            assert int(fresh.read().split()[1]) == first_token + 1
            while not fresh.read().startswith("acked 5"):
                pass
            stale.process.send_signal(signal.SIGCONT)
            assert stale.process.stdout is not None
            rest = stale.process.stdout.read().split()
            assert stale.process.wait(timeout=60) == 3, stale.stderr()
            assert rest[-1] == "lost"
            fresh.kill()  # wherever its commit was: the reader below finishes it
            assert stored(server, prefix, "tick/owner") == b"fresh"
        finally:
            stale.process.send_signal(signal.SIGCONT)
            stale.kill()
            if fresh is not None:
                fresh.kill()
        prefix = f"{prefix}-next"

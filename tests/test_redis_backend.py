"""The Redis backend on a real redis-server and on a real three-master Redis Cluster."""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

import persistkit
from persistkit import (
    BackendError,
    BackendUnavailableError,
    PersistBase,
    PersistSignalAdapter,
    RetryPolicy,
    StoreClosedError,
    TransientBackendError,
)
from persistkit._retry import NO_RETRY
from persistkit._store import SegmentName
from persistkit.backends._redis import RedisBackend
from persistkit.models import SignalRow
from persistkit.testing import BackendConformance, sample_signal
from support.servers import RedisCluster, RedisServer

# ------------------------------------------------------------------------ servers


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    # KEYS is disabled on this server: listing must work with SCAN alone.
    with RedisServer(extra_args=["--rename-command", "KEYS", ""]) as server:
        yield server


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start a server of this test's own (to kill, or with other settings)."""
    started: list[RedisServer] = []

    def start(*extra_args: str) -> RedisServer:
        server = RedisServer(directory=tmp_path / f"redis-{len(started)}", extra_args=extra_args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.close()


def fresh_prefix() -> str:
    """A key prefix of its own per test, so that tests never see each other's keys."""
    return f"t{uuid.uuid4().hex[:12]}"


def cluster_url(cluster: RedisCluster) -> str:
    return f"redis+cluster://127.0.0.1:{cluster.ports[0]}"


# --------------------------------------------------------------- the conformance suite


class TestRedisServer(BackendConformance):
    """Built from a URL: the backend owns (and closes) its client."""

    @pytest.fixture
    async def backend(self, redis_server: RedisServer) -> AsyncIterator[RedisBackend]:
        backend = RedisBackend.from_url(f"{redis_server.url}?prefix={fresh_prefix()}")
        yield backend
        await backend.aclose()


class TestRedisCluster(BackendConformance):
    """Given a ready cluster client, which stays the caller's to close."""

    @pytest.fixture
    async def backend(self, redis_cluster: RedisCluster) -> AsyncIterator[RedisBackend]:
        client = AsyncRedisCluster(
            host="127.0.0.1", port=redis_cluster.ports[0], retry=Retry(NoBackoff(), 0)
        )
        backend = RedisBackend(client, prefix=fresh_prefix())
        yield backend
        await backend.aclose()
        await client.aclose()


# ------------------------------------------------------------------- URL and layout


def test_url_never_shows_the_password() -> None:
    backend = RedisBackend.from_url("redis://bot:s3cret@127.0.0.1:6390/2?prefix=desk")
    assert backend.url == "redis://bot@127.0.0.1:6390/2?prefix=desk"
    assert "s3cret" not in repr(backend)
    cluster = RedisBackend.from_url("redis+cluster://:s3cret@127.0.0.1:7000")
    assert cluster.url == "redis+cluster://127.0.0.1:7000"
    given = RedisBackend(aioredis.Redis(host="127.0.0.1", port=6390, db=3, password="s3cret"))
    assert given.url == "redis://127.0.0.1:6390/3"


def test_bad_prefix_and_decoding_client_are_refused() -> None:
    with pytest.raises(persistkit.InvalidNameError):
        RedisBackend(aioredis.Redis(), prefix="a{b}")
    with pytest.raises(ValueError, match="decode_responses"):
        RedisBackend(aioredis.Redis(decode_responses=True))


async def test_key_layout_is_readable_and_one_entity_shares_a_slot(
    redis_cluster: RedisCluster,
) -> None:
    prefix = fresh_prefix()
    backend = RedisBackend.from_url(f"{cluster_url(redis_cluster)}?prefix={prefix}")
    raw = redis_cluster.client()
    try:
        await backend.put("signal/BTCUSDT_trend/BTCUSDT", b'{"id":"a"}')
        value_key = f"{prefix}:{{signal/BTCUSDT_trend}}:BTCUSDT"
        assert raw.get(value_key) == b'{"id":"a"}'

        await backend.put("signal/BTCUSDT_trend/ETHUSDT", b"{")
        entry = await backend.quarantine("signal/BTCUSDT_trend/ETHUSDT", "unparseable")
        quarantined = [k.decode() for k in raw.scan_iter(match=f"{prefix}:quarantine:*")]
        assert len(quarantined) == 1
        assert quarantined[0].startswith(f"{prefix}:quarantine:{{signal/BTCUSDT_trend}}:ETHUSDT@")
        assert raw.hget(quarantined[0], "reason") == b"unparseable"
        assert raw.keyslot(quarantined[0]) == raw.keyslot(value_key)
        assert await backend.read_quarantined(entry.id) == b"{"
    finally:
        raw.close()
        await backend.aclose()


# ----------------------------------------------------------------- the tick commit


def aof_size_and_tail(server: RedisServer, offset: int = 0) -> tuple[int, bytes]:
    (incr,) = (server.dir / "appendonlydir").glob("*.incr.aof")
    data = incr.read_bytes()
    return len(data), data[offset:]


async def test_single_server_commit_is_one_transaction(redis_server: RedisServer) -> None:
    prefix = fresh_prefix()
    backend = RedisBackend.from_url(f"{redis_server.url}?prefix={prefix}")
    try:
        await backend.commit({"warm/up": b"1"})
        writes: dict[str, bytes | None] = {
            f"signal/S{i}_trend/S{i}": f'{{"i":{i}}}'.encode() for i in range(100)
        }
        writes["warm/up"] = None
        before, _ = aof_size_and_tail(redis_server)
        await backend.commit(writes)
        _, logged = aof_size_and_tail(redis_server, before)
        written = [key async for key in backend.scan("", recursive=True)]
        assert sorted(written) == sorted(key for key, data in writes.items() if data is not None)
        # In the append-only file the tick is one MULTI ... EXEC block: a crash
        # that tears it loses the whole tick when the server loads the file.
        assert logged.startswith(b"*1\r\n$5\r\nMULTI\r\n")
        assert logged.endswith(b"*1\r\n$4\r\nEXEC\r\n")
        assert logged.count(b"MULTI") == 1
        # 100 values and the commit's receipt (its write token, for a retry).
        assert logged.count(b"\r\n$3\r\nSET\r\n") == 101
        assert logged.count(f"{prefix}:receipt:".encode()) == 1
        assert logged.count(b"\r\n$3\r\nDEL\r\n") == 1
    finally:
        await backend.aclose()


async def test_cluster_settles_commit_records_by_their_locks_never_by_their_age(
    redis_cluster: RedisCluster,
) -> None:
    """Records left by stopped writers, as the two phases leave them: a committed
    one is rolled forward onto the keys it still locks and never over a key it
    no longer locks (written since); an undecided one is rolled back once it is
    older than commit_timeout by the server's clock, and left to its writer before."""
    prefix = fresh_prefix()
    raw = redis_cluster.client()
    good = SignalRowBytes

    def value(name: str) -> str:
        return f"{prefix}:{{signal/{name}_trend}}:{name}"

    def lock(name: str) -> str:
        return f"{prefix}:lock:{{signal/{name}_trend}}:{name}"

    assert raw.keyslot(value("A")) != raw.keyslot(value("B"))
    raw.set(value("B"), b"written after the commit finished there")
    raw.set(lock("A"), b"done-1")  # A still locked: not finished there yet
    now_ms = int(time.time() * 1000)
    committed = f"{prefix}:commit:{{done-1}}"
    raw.hset(
        committed,
        mapping={
            "state": "committed",
            "at": now_ms,
            f"s{value('A')}": good.a,
            f"d{value('B')}": b"",
        },
    )
    raw.set(value("C"), b"before the stale commit")
    raw.set(lock("C"), b"stale-2")
    stale = f"{prefix}:commit:{{stale-2}}"
    raw.hset(stale, mapping={"state": "pending", "at": now_ms - 60_000, f"s{value('C')}": b"x"})
    raw.set(lock("D"), b"young-3")
    young = f"{prefix}:commit:{{young-3}}"
    raw.hset(young, mapping={"state": "pending", "at": now_ms, f"s{value('D')}": b"y"})

    backend = RedisBackend.from_url(f"{cluster_url(redis_cluster)}?prefix={prefix}")
    try:
        assert sorted(await backend.unapplied_commits()) == sorted(
            [f"{committed} (committed)", f"{stale} (pending)", f"{young} (pending)"]
        )
        store: PersistBase[Any] = PersistBase(
            SegmentName("signal/A_trend"), backend=backend, model=SignalRow
        )
        report = await store.wait_for_init()
        assert sorted(report.orphans) == sorted([committed, stale])
        assert (await store.read_value("A")).id == "s1"
        assert raw.get(value("B")) == b"written after the commit finished there"
        assert raw.get(value("C")) == b"before the stale commit"
        assert raw.exists(lock("A"), lock("C")) == 0
        # Settled records shrink to receipts, kept (receipt_ttl) for their writers' retries.
        assert raw.hgetall(committed) == {b"state": b"committed", b"done": b"1"}
        assert raw.hgetall(stale) == {b"state": b"aborted", b"done": b"1"}
        assert 0 < raw.ttl(committed) <= 600
        assert raw.exists(young, lock("D")) == 2  # its writer may still decide it
        assert await backend.unapplied_commits() == [f"{young} (pending)"]
        assert raw.get(value("D")) is None
    finally:
        raw.close()
        await backend.aclose()


async def test_cluster_commit_cut_by_a_dead_master_is_applied_once_by_its_retry() -> None:
    """A master dies while a cross-slot commit locks its keys: the commit fails
    undecided. Its retry, once the master is back, applies it exactly once; the
    attempts nobody retries are rolled back by the next writer of their keys
    (after commit_timeout), never applied."""
    with RedisCluster() as cluster:
        prefix = fresh_prefix()
        names = [f"signal/S{i}_trend/S{i}" for i in range(40)]
        owner = {
            name: cluster.node_for_key(f"{prefix}:{{{name.rpartition('/')[0]}}}:x")
            for name in names
        }
        alive_key = names[0]
        doomed_key = next(name for name in names if owner[name] is not owner[alive_key])
        doomed = owner[doomed_key]
        backend = RedisBackend.from_url(
            f"{cluster_url(cluster)}?prefix={prefix}", commit_timeout=1.0
        )
        try:
            await backend.put(doomed_key, b"old")
            doomed.kill()
            for attempt in range(4):  # different ticks: some records land on the dead master
                with pytest.raises(TransientBackendError):
                    await backend.commit({alive_key: f"new-{attempt}".encode(), doomed_key: b"new"})
            doomed.start()
            cluster.wait_cluster_ok()
            # The retry of the last tick (same writes: same write token).
            await backend.commit({alive_key: b"new-3", doomed_key: b"new"})
            stored = await backend.get(doomed_key)
            assert stored is not None and stored.data == b"new"
            alive = await backend.get(alive_key)
            assert alive is not None and alive.data == b"new-3"
            await backend.recover_commits()  # the un-retried attempts are old by now
            locks = [
                key
                for node in cluster.nodes
                for key in await _scan_node(node.port, f"{prefix}:lock:*")
            ]
            assert locks == []
            assert await backend.unapplied_commits() == []
            alive = await backend.get(alive_key)
            assert alive is not None and alive.data == b"new-3"  # never an older attempt
        finally:
            await backend.aclose()


async def _scan_node(port: int, pattern: str) -> list[bytes]:
    node = aioredis.Redis(host="127.0.0.1", port=port)
    try:
        return [key async for key in node.scan_iter(match=pattern)]
    finally:
        await node.aclose()


# ------------------------------------------------------------------ errors, retries


async def test_kill_9_mid_run_recovers_and_keeps_every_acknowledged_write(
    own_server: Callable[..., RedisServer],
) -> None:
    server = own_server()
    backend = RedisBackend.from_url(f"{server.url}?prefix={fresh_prefix()}")
    store: PersistBase[Any] = PersistBase(
        "writer", backend=backend, retry=RetryPolicy(attempts=60, max_delay=0.5, deadline=30)
    )
    total = 800
    acknowledged: dict[int, tuple[float, float]] = {}
    a_third_written = asyncio.Event()
    try:

        async def writer() -> None:
            for i in range(total):
                started = time.monotonic()
                await store.write_value(i, sample_signal(i))
                acknowledged[i] = (started, time.monotonic())
                if i == total // 3:
                    a_third_written.set()

        async def killer() -> tuple[float, float]:
            await a_third_written.wait()
            await asyncio.to_thread(server.kill)  # SIGKILL: no shutdown, no AOF rewrite
            killed_at = time.monotonic()
            await asyncio.sleep(0.3)
            await asyncio.to_thread(server.start)  # same port, same folder
            return killed_at, time.monotonic()

        _, (killed_at, restarted_at) = await asyncio.gather(writer(), killer())
        assert len(acknowledged) == total
        # The write in flight at the kill waited through the outage and succeeded.
        assert any(start < killed_at and end > restarted_at for start, end in acknowledged.values())
        assert any(end < killed_at for _, end in acknowledged.values())
        fresh = RedisBackend.from_url(backend.url)
        reader: PersistBase[Any] = PersistBase("writer", backend=fresh)
        for i in range(total):
            assert await reader.read_value(i) == sample_signal(i)
        await fresh.aclose()
    finally:
        await backend.aclose()


async def test_transient_errors_are_typed_and_chained(
    own_server: Callable[..., RedisServer],
) -> None:
    server = own_server()
    backend = RedisBackend.from_url(server.url)
    store: PersistBase[Any] = PersistBase("e", backend=backend, retry=NO_RETRY)
    try:
        await store.write_value("a", 1)
        server.kill()
        with pytest.raises(BackendUnavailableError) as caught:
            await store.read_value("a")
        transient = caught.value.__cause__
        assert isinstance(transient, TransientBackendError)
        assert isinstance(transient.__cause__, RedisConnectionError)
    finally:
        await backend.aclose()


async def test_non_transient_errors_are_not_retried(own_server: Callable[..., RedisServer]) -> None:
    server = own_server()
    server.client().config_set("requirepass", "right")
    wrong = RedisBackend.from_url(f"redis://:wrong@127.0.0.1:{server.port}/0")
    right = RedisBackend.from_url(f"redis://:right@127.0.0.1:{server.port}/0")
    raw = server.client(password="right")
    try:
        store: PersistBase[Any] = PersistBase("e", backend=wrong)
        started = time.monotonic()
        with pytest.raises(BackendError) as caught:
            await store.write_value("a", 1)
        assert not isinstance(caught.value, TransientBackendError)
        assert "AuthenticationError" in str(caught.value)
        assert time.monotonic() - started < 5  # not retried for the policy's 30 s

        raw.hset("persistkit:{e}:h", "field", "a hash, not a string")
        with pytest.raises(BackendError) as caught:
            await PersistBase("e", backend=right).read_value("h")
        assert not isinstance(caught.value, TransientBackendError)
        assert "WRONGTYPE" in str(caught.value)
    finally:
        raw.close()
        await wrong.aclose()
        await right.aclose()


async def test_closing_closes_only_a_client_it_made(redis_server: RedisServer) -> None:
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    given = RedisBackend(client, prefix=fresh_prefix())
    await given.put("ns/a", b"1")
    await given.aclose()
    with pytest.raises(StoreClosedError):
        await given.get("ns/a")
    assert await client.ping()  # still the caller's, still open
    await client.aclose()


# ---------------------------------------------------------------- compare-and-set


async def test_four_processes_x_500_increments_end_at_2000(redis_server: RedisServer) -> None:
    url = f"{redis_server.url}?prefix={fresh_prefix()}"
    worker = textwrap.dedent(
        """
        import asyncio, sys, time
        from persistkit import PersistBase
        from persistkit.backends._redis import RedisBackend

        async def main(url: str, count: int) -> None:
            backend = RedisBackend.from_url(url)
            raw = backend.client
            while not await raw.exists("go-" + url):   # start together
                await asyncio.sleep(0.005)
            store = PersistBase("counters", backend=backend)
            for _ in range(count):
                await store.update_value("hits", lambda n: (n or 0) + 1)
            await backend.aclose()

        asyncio.run(main(sys.argv[1], int(sys.argv[2])))
        """
    )
    processes = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", worker, url, "500")
        for _ in range(4)
    ]
    backend = RedisBackend.from_url(url)
    try:
        await backend.client.set("go-" + url, b"1")
        for process in processes:
            assert await asyncio.wait_for(process.wait(), 120) == 0
        store: PersistBase[Any] = PersistBase("counters", backend=backend)
        assert await store.read_value("hits") == 2000
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        await backend.client.delete("go-" + url)
        await backend.aclose()


# ---------------------------------------------------------------------- durability


async def test_no_durability_warning_with_appendfsync_always(redis_server: RedisServer) -> None:
    backend = RedisBackend.from_url(f"{redis_server.url}?prefix={fresh_prefix()}")
    try:
        report = await PersistBase("ok", backend=backend).wait_for_init()
        assert report.warnings == []
        assert await backend.durability_warnings() == []
    finally:
        await backend.aclose()


async def test_durability_warnings_are_logged_once_and_reported(
    own_server: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = own_server("--appendonly", "no")
    backend = RedisBackend.from_url(server.url)
    try:
        with caplog.at_level(logging.WARNING, logger="persistkit"):
            first = await PersistBase("a", backend=backend).wait_for_init()
            second = await PersistBase("b", backend=backend).wait_for_init()
        assert len(first.warnings) == 1 and "appendonly is 'no'" in first.warnings[0]
        assert second.warnings == first.warnings
        assert "1 durability warnings" in first.summary()
        logged = [r.getMessage() for r in caplog.records if "appendonly is 'no'" in r.getMessage()]
        assert len(logged) == 1
    finally:
        await backend.aclose()


async def test_appendfsync_everysec_is_warned_about(redis_server: RedisServer) -> None:
    raw = redis_server.client()
    raw.config_set("appendfsync", "everysec")
    backend = RedisBackend.from_url(redis_server.url)
    try:
        (warning,) = await backend.durability_warnings()
        assert "appendfsync is 'everysec'" in warning
    finally:
        raw.config_set("appendfsync", "always")
        raw.close()
        await backend.aclose()


async def test_durability_is_checked_on_every_cluster_master(redis_cluster: RedisCluster) -> None:
    weak = redis_cluster.nodes[1]
    raw = weak.client()
    raw.config_set("appendfsync", "no")
    backend = RedisBackend.from_url(cluster_url(redis_cluster))
    try:
        (warning,) = await backend.durability_warnings()
        assert warning.startswith(f"127.0.0.1:{weak.port}: appendfsync is 'no'")
    finally:
        raw.config_set("appendfsync", "always")
        raw.close()
        await backend.aclose()


async def test_durability_cannot_be_checked_when_config_is_disabled(
    own_server: Callable[..., RedisServer],
) -> None:
    server = own_server("--rename-command", "CONFIG", "")
    backend = RedisBackend.from_url(server.url)
    try:
        (warning,) = await backend.durability_warnings()
        assert "durability cannot be checked" in warning
    finally:
        await backend.aclose()


# ------------------------------------------------------ configure() and moving state


async def test_configure_redis_and_move_file_state_byte_for_byte(
    redis_server: RedisServer, data_root: Path
) -> None:
    row = SignalRow.model_validate(sample_signal(7, symbol="BTCUSDT", strategyName="trend"))
    persistkit.configure(mode="live", base_dir=data_root)
    await PersistSignalAdapter.write_signal_data(row, "BTCUSDT", "trend")
    file_path = data_root / "signal" / "BTCUSDT_trend" / "BTCUSDT.json"
    file_bytes = file_path.read_bytes()

    prefix = fresh_prefix()
    settings = persistkit.configure(
        mode="live", base_dir=data_root, backend=f"{redis_server.url}?prefix={prefix}"
    )
    backend = settings.backend
    assert isinstance(backend, RedisBackend)
    raw = redis_server.client()
    try:
        assert await PersistSignalAdapter.read_signal_data("BTCUSDT", "trend") is None
        for path in sorted(data_root.rglob("*.json")):  # the move: bytes, as they are
            key = str(path.relative_to(data_root).with_suffix(""))
            await backend.put(key, path.read_bytes())
        assert await PersistSignalAdapter.read_signal_data("BTCUSDT", "trend") == row
        assert raw.get(f"{prefix}:{{signal/BTCUSDT_trend}}:BTCUSDT") == file_bytes

        # and back: what the adapters write to Redis is what the file backend writes
        row = row.model_copy(update={"symbol": "ETHUSDT"})
        await PersistSignalAdapter.write_signal_data(row, "ETHUSDT", "trend")
        assert not (data_root / "signal" / "ETHUSDT_trend").exists()
        redis_bytes = raw.get(f"{prefix}:{{signal/ETHUSDT_trend}}:ETHUSDT")
        persistkit.configure(mode="live", base_dir=data_root)
        await PersistSignalAdapter.write_signal_data(row, "ETHUSDT", "trend")
        assert (data_root / "signal" / "ETHUSDT_trend" / "ETHUSDT.json").read_bytes() == redis_bytes
    finally:
        raw.close()
        await backend.aclose()


class SignalRowBytes:
    a = (
        b'{"id":"s1","symbol":"A","strategyName":"trend","position":"long",'
        b'"priceOpen":100.5,"priceTakeProfit":110.0,"priceStopLoss":95.0,'
        b'"scheduledAt":1763700000000,"pendingAt":1763700060000}'
    )

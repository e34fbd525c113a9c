"""Attacks on issue 13's cross-host promises, on real servers through real reply loss.

Each test here failed on main when it was written; its docstring says what a
bot owner loses while it fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.support.replyloss import ReplyLossProxy
from tests.support.servers import RedisCluster, RedisServer, SeaweedS3, redis_command

from persistkit._domains import PersistRiskAdapter
from persistkit._live.session import LiveSession
from persistkit.backends._redis import RedisBackend
from persistkit.errors import LeaseLostError, PersistError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(directory=tmp_path / "redis") as server:
        yield server


@pytest.fixture
def seaweed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SeaweedS3]:
    with SeaweedS3(directory=tmp_path / "weed") as server:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
        monkeypatch.setenv("AWS_DEFAULT_REGION", server.region)
        yield server


def s3_url(port: int) -> str:
    return f"s3://attack/bot?endpoint_url=http://127.0.0.1:{port}&region=us-east-1&create_bucket=1"


def lose_first(wanted: Callable[[bytes], bool]) -> Callable[[bytes], bool]:
    """A ``lose_if`` that picks only the first request ``wanted`` accepts."""
    picked: list[bytes] = []

    def pick(request: bytes) -> bool:
        if not picked and wanted(request):
            picked.append(request)
            return True
        return False

    return pick


def test_redis_lease_acquire_whose_reply_was_lost_is_not_a_refusal_by_itself(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A bot whose first lease request's reply is lost must still start.

    The acquisition script ran (the lease is stored, held by this very
    process); the retry finds it and, on main, raises ``InstanceLockedError``
    naming the bot's own host and pid. The bot owner's redeploy fails on a
    single dropped packet and the bot cannot start again until the lease
    lapses (``lease_ttl``) by itself: no trading for that long, with a
    message that blames a second instance that does not exist.
    """

    async def warm_up() -> None:
        # Loads the scripts on the server, so that the lost reply below is the
        # reply of a script that ran (not a NOSCRIPT answer).
        warm = LiveSession(
            [("ETHUSDT", "warm")], "warm", base_dir=tmp_path / "warm", backend=redis_server.url
        )
        await warm.start()
        await warm.aclose()

    asyncio.run(warm_up())
    # Only the acquisition script names the never-expiring token counter.
    pick = lose_first(lambda request: b"}:token" in request)
    with ReplyLossProxy("127.0.0.1", redis_server.port, loss=1.0, lose_if=pick) as proxy:

        async def start_through_loss() -> None:
            session = LiveSession(
                [("BTCUSDT", "trend")],
                "main",
                base_dir=tmp_path / "bot",
                backend=f"redis://127.0.0.1:{proxy.port}/0",
                lease_ttl=30,
            )
            await session.start()
            await session.aclose()

        asyncio.run(start_through_loss())
    assert proxy.lost == 1, "the attack did not lose the acquisition's reply"


def test_redis_that_evicts_keys_is_named_among_the_durability_warnings(tmp_path: Path) -> None:
    """A Redis that may evict keys (``maxmemory``, ``allkeys-*`` policy) must be warned about.

    ``durability_warnings`` (shown by ``preflight``, ``status`` and every
    store's ``InitReport.warnings``) checks ``appendonly`` and ``appendfsync``
    only. A server that evicts under memory pressure drops acknowledged
    values, write receipts (a retried compare-and-set then reports a conflict
    on its own value) and the never-expiring lease token counters (a new
    holder restarts at token 1, the fence no longer tells it from a stale
    holder: two bots trade the same pair). The owner is told nothing. Here
    the eviction is real: a value written first is gone after others filled
    the server, and no warning said it could happen.
    """

    extra = ["--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru"]
    with RedisServer(directory=tmp_path / "redis", extra_args=extra) as server:

        async def fill_and_check() -> tuple[bool, list[str]]:
            backend = RedisBackend.from_url(server.url)
            try:
                warnings = await backend.durability_warnings()
                await backend.put("signal/BTCUSDT_trend:first", b'{"v": 1}')
                filler = b"x" * 20_000
                for index in range(600):  # 12 MB through a 4 MB server
                    await backend.put(f"signal/BTCUSDT_trend:fill{index}", filler)
                survived = await backend.get("signal/BTCUSDT_trend:first") is not None
                return survived, warnings
            finally:
                await backend.aclose()

        survived, warnings = asyncio.run(fill_and_check())
    assert survived or any("maxmemory" in warning for warning in warnings), (
        f"an acknowledged value was evicted and the durability warnings were {warnings}"
    )


def test_s3_lease_acquire_whose_reply_was_lost_is_not_a_refusal_by_itself(
    seaweed: SeaweedS3, tmp_path: Path
) -> None:
    """On S3 too, a bot whose lease write's reply is lost must still start.

    The S3 docstring says a lease write carries a write token, so a retry
    whose precondition fails recognises its own write. On main the retry of
    the lost ``PUT .leases/pair-....json`` raises ``InstanceLockedError``
    naming the bot itself: a redeploy fails on one dropped reply, and the bot
    is locked out of its own state until the lease lapses.
    """

    pick = lose_first(lambda request: request.startswith(b"PUT") and b"/.leases/" in request)
    with ReplyLossProxy("127.0.0.1", seaweed.s3_port, loss=1.0, lose_if=pick) as proxy:

        async def start_through_loss() -> None:
            session = LiveSession(
                [("BTCUSDT", "trend")],
                "main",
                base_dir=tmp_path / "bot",
                backend=s3_url(proxy.port),
                lease_ttl=30,
            )
            await session.start()
            await session.aclose()

        asyncio.run(start_through_loss())
    assert proxy.lost == 1, "the attack did not lose a lease write's reply"


STALE_HOLDER = """
import asyncio, sys
from persistkit.backends._redis import RedisBackend
from persistkit._domains import PersistRiskAdapter
from persistkit.errors import LeaseLostError, PersistError
from persistkit._live.session import LiveSession

async def main() -> None:
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=sys.argv[2],
                          backend=sys.argv[1], lease_ttl=float(sys.argv[3]))
    async with session:  # starts it; writes here carry the session's fencing tokens
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            try:
                await session.backend.put("risk/main:marker", line.encode())
                print("written", flush=True)
            except Exception as exc:
                print(type(exc).__name__, flush=True)

asyncio.run(main())
"""


def test_redis_cluster_stale_holder_write_outside_a_tick_lands_after_takeover(
    tmp_path: Path,
) -> None:
    """A holder frozen past its TTL must not write once resumed, ticks or not.

    Holder A writes under its session (``async with session:``, so its writes
    carry the fencing tokens), is frozen with SIGSTOP past ``lease_ttl``; B,
    another data root, takes the leases over and commits a tick to the signal
    namespace. A is resumed and writes the risk namespace. On a cluster the
    fence of a namespace only learns of B when B writes there, and the
    Redis docstring says the holder's own monotonic deadline closes that
    window: but the deadline is checked by ticks only, so on main A's write
    lands. The bot owner's risk positions are overwritten by a stale
    instance after the new one restored them.
    """

    ttl = 2.0
    with RedisCluster() as cluster:
        cluster_url = f"redis+cluster://127.0.0.1:{cluster.ports[0]}"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(Path.cwd() / "src"), str(Path.cwd())]),
        }
        holder = subprocess.Popen(
            [sys.executable, "-c", STALE_HOLDER, cluster_url, str(tmp_path / "a"), str(ttl)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert holder.stdout is not None and holder.stdin is not None
            assert holder.stdout.readline().strip() == "ready"
            holder.send_signal(signal.SIGSTOP)
            time.sleep(ttl + 1.5)  # past the TTL by the server's clock: the leases lapse

            async def take_over() -> None:
                successor = LiveSession(
                    [("BTCUSDT", "trend")],
                    "main",
                    base_dir=tmp_path / "b",
                    backend=cluster_url,
                    lease_ttl=30,
                )
                await successor.start()
                async with successor.tick():
                    await successor.backend.put("signal/BTCUSDT_trend:seen", b'"B"')
                await successor.aclose()

            asyncio.run(take_over())
            holder.send_signal(signal.SIGCONT)
            holder.stdin.write(json.dumps("stale A") + "\n")
            holder.stdin.flush()
            answer = holder.stdout.readline().strip()
            holder.stdin.close()
            holder.wait(timeout=30)
        finally:
            if holder.poll() is None:
                holder.kill()

        async def read_marker() -> bytes | None:
            backend = RedisBackend.from_url(cluster_url)
            try:
                found = await backend.get("risk/main:marker")
                return None if found is None else found.data
            finally:
                await backend.aclose()

        stored = asyncio.run(read_marker())
    assert stored is None, f"the stale holder's write landed ({answer!r}): {stored!r}"
    assert answer == "LeaseLostError"


def test_s3_session_still_commits_after_its_lease_objects_were_removed(
    seaweed: SeaweedS3, tmp_path: Path
) -> None:
    """Removing ``.leases/`` while no bot runs must not lock the next bot out of its writes.

    An operator who cleans up lock objects while the bot is stopped (the
    error for a damaged lease object even says "remove it only if no instance
    is running"), or a bucket lifecycle rule, removes the lease objects; the
    head record still holds the fence of the last token. On main the next
    session takes token 1 again, starts, and its first tick fails with
    ``LeaseLostError`` ("another instance took it over") although no other
    instance exists: the bot stops trading, and only restarting it as many
    times as there were sessions before brings it back.
    """

    url = s3_url(seaweed.s3_port)

    async def one_session() -> None:
        session = LiveSession(
            [("BTCUSDT", "trend")], "main", base_dir=tmp_path / "bot", backend=url, lease_ttl=30
        )
        await session.start()
        try:
            async with session.tick():
                await PersistRiskAdapter.write_position_data([], "main")
        finally:
            await session.aclose()

    asyncio.run(one_session())
    asyncio.run(one_session())
    client = seaweed.client()
    listed = client.list_objects_v2(Bucket="attack", Prefix="bot/.leases/")
    removed = [entry["Key"] for entry in listed.get("Contents", [])]
    assert removed, "no lease objects found to remove"
    for key in removed:
        client.delete_object(Bucket="attack", Key=key)
    asyncio.run(one_session())


def test_a_plain_redis_url_to_a_cluster_node_is_refused_clearly(tmp_path: Path) -> None:
    """``redis://`` pointing at a Redis Cluster node must say "use redis+cluster://".

    On main the session retries ``MOVED`` as a transient failure and gives up
    with ``BackendUnavailableError: gave up after 8 attempts: ... MovedError``;
    a store on that URL works for the keys of that node's slots and fails for
    the others. The bot owner sees an outage where there is a one-word
    configuration mistake, and a bot that half works.
    """

    with RedisCluster() as cluster:

        async def start() -> None:
            session = LiveSession(
                [("BTCUSDT", "trend"), ("ETHUSDT", "trend")],
                "main",
                base_dir=tmp_path / "bot",
                backend=f"redis://127.0.0.1:{cluster.ports[0]}",
            )
            await session.start()
            await session.aclose()

        with pytest.raises(PersistError) as refused:
            asyncio.run(start())
    assert "redis+cluster://" in str(refused.value), str(refused.value)


def test_redis_holder_whose_lease_and_counter_were_lost_stops_once_another_holds_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """After the server lost the lease state, a second holder must make the first stop.

    A failover to a replica that had not received the last writes, a restart
    from an old snapshot or a ``FLUSHALL`` loses the lease and its token
    counter: the next instance takes the lease with token 1 again, the token
    the running instance holds. The renewal checks the token only, so on main
    the first instance renews the second's lease as its own and both commit
    for good, under equal tokens the fence cannot tell apart: two bots trade
    the same pair.
    """
    ttl = 1.5
    pairs = [("BTCUSDT", "trend")]

    async def both() -> None:
        first = LiveSession(
            pairs, "main", base_dir=tmp_path / "a", backend=redis_server.url, lease_ttl=ttl
        )
        await first.start()
        try:
            redis_command(redis_server.port, "FLUSHALL")
            second = LiveSession(
                pairs, "main", base_dir=tmp_path / "b", backend=redis_server.url, lease_ttl=ttl
            )
            await second.start()
            try:
                await asyncio.sleep(ttl)  # the first instance renews twice meanwhile
                with pytest.raises(LeaseLostError):
                    async with first.tick():
                        await PersistRiskAdapter.write_position_data([], "main")
            finally:
                await second.aclose()
        finally:
            await first.aclose()

    asyncio.run(both())

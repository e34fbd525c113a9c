"""One live instance per cluster (issue 13): leases and fencing with real hosts and servers.

Every bot is a real process (``tests/helpers/lease_bot.py``) on a real
redis-server, Redis Cluster or SeaweedFS S3. "Another host" is a process in
a UTS namespace of its own (``unshare --uts``, root) with its own host name
and its own data root: all it shares with the others is the backend URL.
The bots log each committed tick in one list in the backend, with a
compare-and-set, so the list is the order in which instances committed: two
instances writing at once would interleave there.

Lease times are short (``TTL`` seconds) so that a lapse costs seconds; nothing
here measures a duration, the bots and the backend's answers say what happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from common import count

import persistkit
from persistkit import InstanceLockedError, LeaseLostError, LiveSession, PersistBase, open_backend
from persistkit._live.lease import SAFETY_SHARE
from persistkit.backends._base import fencing
from support.servers import RedisCluster, RedisServer, SeaweedS3

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("count_in_the_report")]
REPORT_AS = "hosts and leases (issue 13)"
REPORT_INJECTION = (
    "real bot processes on one backend URL (redis-server, a 3-master Redis Cluster, "
    "SeaweedFS S3), each with its own data root and, where it says, its own host name "
    "(unshare --uts); SIGKILL, SIGSTOP/SIGCONT past the lease's time-to-live, SIGTERM"
)

BOT = Path(__file__).resolve().parent.parent / "helpers" / "lease_bot.py"
SRC = Path(persistkit.__file__).resolve().parent.parent
BUCKET = "persistkit-leases"
TTL = 1.5
"""Seconds: the bots' lease time-to-live, short so that waiting for a lapse is cheap."""
READY = 60.0
"""Seconds a bot may take to say what a step expects (a hang guard, never a measurement)."""

TAKEOVERS = count(1, 10, "lease takeovers per backend and fault (kill -9, SIGSTOP)")

needs_unshare = pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0,
    reason="a host name of its own needs unshare --uts as root",
)


# -- backends ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shared:
    """One backend URL of this test's own (a fresh prefix), and what a bot needs to reach it."""

    url: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def s3_server() -> Iterator[SeaweedS3]:
    with SeaweedS3() as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture(params=["redis", "cluster", "s3"])
def shared(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Shared:
    prefix = f"lease{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    }
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return Shared(f"{server.url}?prefix={prefix}", env)
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return Shared(f"redis+cluster://127.0.0.1:{cluster.ports[0]}?prefix={prefix}", env)
    s3: SeaweedS3 = request.getfixturevalue("s3_server")
    credentials = {
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": s3.region,
    }
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)  # for this process's own sessions
    return Shared(f"s3://{BUCKET}/{prefix}?endpoint_url={s3.endpoint_url}", {**env, **credentials})


# -- bots -------------------------------------------------------------------------------------


class Bot:
    """One ``lease_bot.py`` process; its stdout lines are read in a thread as they come."""

    def __init__(self, config: dict[str, Any], env: dict[str, str], host: str | None) -> None:
        self.config = config
        command = [sys.executable, str(BOT), json.dumps(config)]
        if host is not None:
            # sh sets the namespace's host name, then becomes the bot (same pid).
            command = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host, *command]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.pid = self.process.pid
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.acks: list[int] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, word: str) -> str:
        """Read lines until one starting with ``word``; return the rest of it."""
        while True:
            try:
                line = self.lines.get(timeout=READY)
            except queue.Empty:
                raise AssertionError(f"bot {self.config['name']} never said {word}") from None
            if line is None:
                raise AssertionError(
                    f"bot {self.config['name']} ended (exit {self.process.wait()}) before "
                    f"saying {word}: {self.stderr()}"
                )
            if line.startswith("ACK "):
                self.acks.append(int(line.split()[1]))
            if line == word or line.startswith(word + " "):
                return line[len(word) :].strip()

    def ack(self, at_least: int) -> None:
        """Wait until tick ``at_least`` (or a later one) is acknowledged."""
        while not self.acks or self.acks[-1] < at_least:
            self.expect("ACK")

    def drain(self) -> None:
        """Read what is left after the process ended (late acknowledgements)."""
        self.process.wait(timeout=READY)
        while (line := self.lines.get(timeout=READY)) is not None:
            if line.startswith("ACK "):
                self.acks.append(int(line.split()[1]))

    def stop(self) -> int:
        """SIGTERM: the bot commits the tick in progress, closes and exits."""
        self.process.send_signal(signal.SIGTERM)
        self.drain()
        return self.process.returncode

    def stderr(self) -> str:
        assert self.process.stderr is not None
        if self.process.poll() is None:
            return "(still running)"
        return self.process.stderr.read()


@pytest.fixture
def bots(tmp_path: Path, shared: Shared) -> Iterator[Callable[..., Bot]]:
    """Start a bot with its own data root: ``bots(name, symbol, host=..., ttl=..., ...)``."""
    started: list[Bot] = []

    def start(name: str, symbol: str = "BTC", *, host: str | None = None, **config: Any) -> Bot:
        root = tmp_path / f"root-{name}"
        bot = Bot(
            {"url": shared.url, "root": str(root), "name": name, "symbol": symbol, "ttl": TTL}
            | config,
            shared.env,
            host,
        )
        started.append(bot)
        return bot

    yield start
    for bot in started:
        if bot.process.poll() is None:
            os.kill(bot.pid, signal.SIGCONT)  # a stopped process would not die of SIGKILL's reap
            bot.process.kill()
        bot.process.wait()


async def read_log(shared: Shared, symbol: str = "BTC") -> list[list[Any]]:
    """The tick log as any reader of the backend sees it now."""
    backend = open_backend(shared.url)
    try:
        store: PersistBase[Any] = PersistBase("fence", backend=backend)
        log: list[list[Any]] = await store.read_value(f"log-{symbol}")
        return log
    finally:
        await backend.aclose()


def committed_log(shared: Shared, symbol: str = "BTC") -> list[list[Any]]:
    return asyncio.run(read_log(shared, symbol))


def assert_one_writer_at_a_time(log: list[list[Any]], order: list[str]) -> None:
    """Each bot's entries form one block, the blocks come in ``order``, each counts 0, 1, 2 ..."""
    writers = [name for name, _ in log]
    blocks = [name for i, name in enumerate(writers) if i == 0 or writers[i - 1] != name]
    assert blocks == order, f"writers interleaved: {blocks} (expected {order}): {log}"
    for name in order:
        assert [n for writer, n in log if writer == name] == list(range(writers.count(name))), (
            f"{name}'s ticks are not 0, 1, 2 ... in the log: {log}"
        )


# -- tests ------------------------------------------------------------------------------------


@needs_unshare
def test_a_second_instance_on_another_host_is_refused_and_disjoint_pairs_run_beside_it(
    shared: Shared, bots: Callable[..., Bot]
) -> None:
    """Same backend URL, other host names and data roots: one instance per pair, cluster-wide.

    A rival for the holder's pair gets InstanceLockedError naming the holder
    (host, pid, since, lease expiry); a bot with a disjoint pair and risk
    profile runs beside it.
    """
    holder = bots("a", host="lease-host-a")
    holder.expect("START")
    holder.ack(1)
    rivals = [
        bots("b", host="lease-host-b"),  # the same pair and risk profile
        bots("c", host="lease-host-c", risk="other"),  # the same pair only
    ]
    beside = bots("d", "ETH", host="lease-host-d")
    for rival in rivals:
        refusal = json.loads(rival.expect("LOCKED"))
        assert rival.process.wait(timeout=READY) == 3
        named = refusal["holder"]
        assert named["host"] == "lease-host-a", refusal
        assert named["pid"] == holder.pid, refusal
        # As a local lock's holder says it: UTC times, the lease's expiry after its start.
        assert named["since"].startswith("20") and named["expires_at"] >= named["since"], refusal
        for words in ("host lease-host-a", f"pid {holder.pid}", "since 20", "expires at 20"):
            assert words in refusal["message"], (words, refusal)
    beside.expect("START")
    beside.ack(2)
    holder.ack(holder.acks[-1] + 2)  # the holder went on committing throughout
    beside.ack(beside.acks[-1] + 1)
    assert holder.stop() == 0 and beside.stop() == 0
    assert_one_writer_at_a_time(committed_log(shared, "BTC"), ["a"])
    assert_one_writer_at_a_time(committed_log(shared, "ETH"), ["d"])


@pytest.mark.parametrize("trial", range(TAKEOVERS))
async def test_a_holder_killed_with_kill_9_keeps_its_lease_until_the_ttl(
    shared: Shared, bots: Callable[..., Bot], tmp_path: Path, trial: int
) -> None:
    """kill -9 the holder: its lease stays until its TTL lapses, then a new instance takes it."""
    holder = bots("a", ttl=3.0)
    holder.expect("START")
    holder.ack(2)
    held = await _read_leases(shared)
    os.kill(holder.pid, signal.SIGKILL)
    holder.drain()
    successor = LiveSession(
        [("BTC", "trend")], "BTC", base_dir=tmp_path / "successor", backend=shared.url
    )
    with pytest.raises(InstanceLockedError) as refused:
        await successor.start()  # at once: the dead holder's lease has not lapsed
    assert refused.value.holder["pid"] == holder.pid
    waiting = LiveSession(
        [("BTC", "trend")],
        "BTC",
        base_dir=tmp_path / "successor",
        backend=shared.url,
        lease_ttl=TTL,
        lease_wait=30.0,
    )
    await waiting.start()
    try:
        log = PersistBase("fence", base_dir=tmp_path / "successor")
        async with waiting.tick():
            tokens = {lease.name: lease.token for lease in fencing.get()}
            await log.update_value("log-BTC", lambda entries: [*entries, ["successor", 0]])
        assert fencing.get() == ()  # outside the session's ticks, writes carry no token
    finally:
        await waiting.aclose()
    assert set(tokens) == {lease.name for lease in held}
    for lease in held:
        assert tokens[lease.name] > lease.token, "a new holder's fencing token did not grow"
    entries = await read_log(shared)
    assert_one_writer_at_a_time(entries, ["a", "successor"])
    assert len(entries) - 1 >= holder.acks[-1] + 1, "an acknowledged tick of the dead holder"


async def _read_leases(shared: Shared) -> list[Any]:
    backend = open_backend(shared.url)
    try:
        return await backend.read_leases()
    finally:
        await backend.aclose()


@pytest.mark.parametrize("trial", range(TAKEOVERS))
@pytest.mark.parametrize("mode", ["ticks", "plain"])
def test_a_holder_stopped_past_its_ttl_never_writes_after_its_successor(
    shared: Shared, bots: Callable[..., Bot], mode: str, trial: int
) -> None:
    """SIGSTOP a holder past its TTL, a successor takes over and writes, SIGCONT: LeaseLostError.

    ``ticks``: the stale holder's next tick finds its deadline passed. ``plain``:
    writes outside any tick, inside ``async with session:``, which only the
    backend's fence can refuse, by the token the session's context carries.
    """
    stale = bots("a", mode=mode)
    stale.expect("START")
    stale.ack(2)
    os.kill(stale.pid, signal.SIGSTOP)
    try:
        successor = bots("b", wait=TTL * 10)  # waits for the stopped holder's lease to lapse
        restored = json.loads(successor.expect("START"))
        successor.ack(3)
    finally:
        os.kill(stale.pid, signal.SIGCONT)
    assert stale.process.wait(timeout=READY) != 0
    stale.drain()
    assert "LeaseLostError" in stale.stderr()
    successor.ack(successor.acks[-1] + 2)  # the successor was not disturbed
    assert successor.stop() == 0
    entries = committed_log(shared)
    assert_one_writer_at_a_time(entries, ["a", "b"])
    assert entries[: len(restored)] == restored, "the stale holder wrote after its successor began"
    assert len(restored) >= stale.acks[-1] + 1, "an acknowledged tick of the stale holder was lost"


@needs_unshare
def test_a_rolling_deploy_waits_for_the_old_instance_and_never_writes_beside_it(
    shared: Shared, bots: Callable[..., Bot]
) -> None:
    """lease_wait: the new instance (another host) waits, takes over once the old one closes."""
    old = bots("old", host="lease-old")
    old.expect("START")
    old.ack(1)
    new = bots("new", host="lease-new", wait=120.0)
    new.expect("LOG persistkit: waiting")  # it found the old instance running
    old.ack(old.acks[-1] + 3)  # which keeps committing while the new one waits
    assert old.stop() == 0
    restored = json.loads(new.expect("START"))
    assert [entry[0] for entry in restored].count("old") == old.acks[-1] + 1
    new.ack(2)
    assert new.stop() == 0
    entries = committed_log(shared)
    assert_one_writer_at_a_time(entries, ["old", "new"])
    assert entries[: len(restored)] == restored


async def test_a_holder_that_could_not_renew_commits_nothing_from_its_deadline_on(
    shared: Shared, tmp_path: Path
) -> None:
    """A loop blocked past the deadline (no renewal could run): every tick raises LeaseLostError."""
    ttl = 3.0
    session = LiveSession(
        [("BTC", "trend")], "BTC", base_dir=tmp_path / "root", backend=shared.url, lease_ttl=ttl
    )
    await session.start()
    log: PersistBase[Any] = PersistBase("fence", base_dir=tmp_path / "root")
    async with session.tick():
        await log.write_value("log-BTC", [["a", 0]])
    time.sleep(ttl * (1 - SAFETY_SHARE) + 0.1)  # blocks the loop: no renewal can run
    for attempt in range(2):  # that tick and every later one
        with pytest.raises(LeaseLostError, match=r"pair-BTC_trend|risk-BTC"):
            async with session.tick():
                await log.write_value("log-BTC", [["a", 0], ["a", attempt + 1]])

    async def tick(n: int) -> None:
        await log.write_value("log-BTC", [["a", 0], ["run", n]])

    with pytest.raises(LeaseLostError):
        await session.run(tick, interval=0, ticks=1)
    await session.aclose()
    assert await read_log(shared) == [["a", 0]]

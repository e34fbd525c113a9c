"""``persistkit status``, run as a real subprocess: beside a real running bot, after its
``kill -9``, on a quarantined value, a damaged journal, a clean root, and on real
Redis and S3 servers. It must never change what it looks at.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import persistkit
from persistkit import FileBackend, LiveSession, MemoryBackend, PersistSignalAdapter
from persistkit._cli.status import session_locks
from persistkit._history import RECORD_ONLY_KEYS
from persistkit.backends._base import Lease
from persistkit.backends._journal import read_journal_file
from persistkit.backends._s3 import S3Backend
from support.servers import RedisServer, SeaweedS3, free_port
from test_cli import (
    CONSOLE_SCRIPT,
    child_environment,
    run_cli,
    tree_fingerprint,
    write_state,
)
from test_cli import signal as signal_row
from test_run_stop import read_until
from test_s3_backend import BUCKET, crash_while_committing, objects_under, url_of

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BOT_PAIRS = ["BTCUSDT / trend_follow", "ETH/USDT / mean reversion", "risk main-portfolio"]

TOP_LEVEL = {
    "backend", "status", "exit_code", "checked_at", "sessions", "domains", "journal",
    "commits_waiting", "quarantine", "open_intents", "durability_warnings", "problems", "notes",
    "attention",
}  # fmt: skip
HOLDER = {"pid", "host", "since", "alive", "locks", "where"}


def status_json(target: str | Path, env: dict[str, str] | None = None) -> tuple[int, Any]:
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "status", str(target), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**child_environment(), **(env or {})},
    )
    assert result.stderr == "", result.stderr
    return result.returncode, json.loads(result.stdout)


def journal_applied(root: Path) -> bool:
    """Whether every key of the journal's commits has its committed value in its file."""
    _, records = read_journal_file((root / ".journal" / "commits.pkj").read_bytes())
    newest: dict[str, bytes | None] = {}
    for record in records:
        newest.update(record.writes)
    for key, value in newest.items():
        if key in RECORD_ONLY_KEYS:
            continue  # in the records only: never a file
        path = root / f"{key}.json"
        if (path.read_bytes() if path.exists() else None) != value:
            return False
    return True


def settled_fingerprint(root: Path) -> str:
    """The tree's fingerprint once an idle running bot has stopped changing it: its
    background applier writes the files about half a second after a commit."""
    for _ in range(240):
        if journal_applied(root):
            break
        time.sleep(0.25)
    else:
        raise AssertionError(f"the bot never applied its journal to {root}")
    previous = tree_fingerprint(root)
    for _ in range(120):
        time.sleep(0.5)
        current = tree_fingerprint(root)
        if current == previous:
            return current
        previous = current
    raise AssertionError(f"{root} never stopped changing")


@pytest.fixture
def bot(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """examples/live_bot.py, a real process: one tick committed, then idle for an hour."""
    root = tmp_path / "data"
    process = subprocess.Popen(
        [sys.executable, EXAMPLES / "live_bot.py", "--json", "--interval=3600",
         f"--base-dir={root}"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if json.loads(line).get("ack") == 1:
            break
    yield root, process
    process.kill()
    process.wait()


def test_a_running_bot_is_shown_alive_and_status_changes_nothing(
    bot: tuple[Path, subprocess.Popen[str]],
) -> None:
    root, process = bot
    before = settled_fingerprint(root)
    code, report = status_json(root)
    words = run_cli("status", root)
    assert tree_fingerprint(root) == before  # bytes, inodes and mtimes, bot running
    assert code == 0, report["attention"]
    assert report["status"] == "healthy" and report["attention"] == []
    [holder] = report["sessions"]["running"]
    assert holder["pid"] == process.pid and holder["alive"] is True
    assert holder["locks"] == BOT_PAIRS
    assert report["sessions"]["gone"] == []
    # The bot committed tick 1 and is running: its commit is its own, not waiting on a start.
    assert report["journal"]["commits"] == 1 and report["commits_waiting"] == 1
    # Applied (settled above): what its record carries for the statistics is no key.
    assert report["journal"]["keys_behind"] == 0, report["journal"]
    assert "all in their files" in words.stdout
    by_domain = {domain["domain"]: domain for domain in report["domains"]}
    assert by_domain["bot"]["entities"] == 1 and by_domain["bot"]["last_change"] is not None
    assert words.returncode == 0, words.stdout
    assert f"pid {process.pid} on" in words.stdout and ": alive" in words.stdout
    assert "1 live session running" in words.stdout
    assert "the running session's" in words.stdout
    assert words.stdout.rstrip().endswith("Result: healthy (exit 0)")


def test_after_kill_9_the_holder_is_gone_and_commits_wait(
    bot: tuple[Path, subprocess.Popen[str]],
) -> None:
    root, process = bot
    process.kill()
    process.wait()
    before = tree_fingerprint(root)
    code, report = status_json(root)
    words = run_cli("status", root)
    assert tree_fingerprint(root) == before
    assert code == 1 and words.returncode == 1
    assert report["status"] == "needs-attention"
    assert report["sessions"]["running"] == []
    [holder] = report["sessions"]["gone"]
    assert holder["pid"] == process.pid and holder["alive"] is False
    assert report["commits_waiting"] == 1
    assert f"pid {process.pid} on" in words.stdout
    assert "gone (stopped without closing)" in words.stdout
    assert "1 commit waiting to be applied and no live session runs" in words.stdout
    assert "waiting for the next start" in words.stdout

    async def restart() -> int:  # status took no lock: a start goes ahead, and applies them
        session = LiveSession([("BTCUSDT", "trend_follow")], "main-portfolio", base_dir=root)
        restored = await session.start()
        await session.aclose()
        return restored.replayed_commits

    assert asyncio.run(restart()) == 1
    code, report = status_json(root)
    assert code == 0, report["attention"]
    assert report["sessions"] == {
        "known": True, "why_unknown": None, "running": [], "gone": [], "unnamed_locks": []
    }  # fmt: skip


async def test_a_clean_root_is_healthy(data_root: Path) -> None:
    await write_state(data_root)
    before = tree_fingerprint(data_root)
    result = run_cli("status", data_root)
    assert tree_fingerprint(data_root) == before
    assert result.returncode == 0, result.stdout
    assert "sessions     none running" in result.stdout
    code, report = status_json(data_root)
    assert code == 0
    counts = {domain["domain"]: domain["entities"] for domain in report["domains"]}
    assert counts == {"signal": 2, "risk": 1, "schedule": 1, "partial": 1, "intent": 0}
    assert report["open_intents"] == []
    assert report["journal"]["commits"] == 0 and report["commits_waiting"] == 0


async def test_a_quarantined_value_needs_attention(data_root: Path) -> None:
    await write_state(data_root)
    backend = FileBackend(data_root)
    await backend.quarantine("risk/main_portfolio/positions", "torn by a bad disk")
    await backend.aclose()
    result = run_cli("status", data_root)
    assert result.returncode == 1, result.stdout
    assert "risk/main_portfolio/positions: torn by a bad disk" in result.stdout
    assert "1 value in quarantine" in result.stdout
    code, report = status_json(data_root)
    assert code == 1
    [entry] = report["quarantine"]
    assert entry["key"] == "risk/main_portfolio/positions"
    assert entry["reason"] == "torn by a bad disk"


THREE_COMMITS_THEN_HANG = """
import asyncio, sys
import persistkit

async def main():
    persistkit.configure(mode="live", base_dir=sys.argv[1])
    fills = persistkit.PersistBase("fills", sys.argv[1])
    for tick in range(3):
        async with persistkit.transaction():
            await fills.write_value(f"order-{tick}", tick)
    print("committed", flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_a_damaged_journal_and_a_foreign_link_are_preflights_problems(
    data_root: Path, tmp_path: Path
) -> None:
    writer = subprocess.Popen(  # noqa: ASYNC220 - killed once it has committed
        [sys.executable, "-c", THREE_COMMITS_THEN_HANG, str(data_root)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "committed"
    writer.kill()  # nothing of this process touches the root any more
    writer.wait()
    journal = data_root / ".journal" / "commits.pkj"
    data = bytearray(journal.read_bytes())
    data[data.index(b"PKJ1", data.index(b"PKJ1") + 1) + 30] ^= 0x04
    journal.write_bytes(bytes(data))
    (tmp_path / "elsewhere").mkdir()
    (data_root / "signal").mkdir()
    (data_root / "signal" / "ETHUSDT_x").symlink_to(tmp_path / "elsewhere")
    before = tree_fingerprint(data_root)
    code, report = status_json(data_root)
    assert tree_fingerprint(data_root) == before
    assert code == 1
    kinds = {problem["kind"] for problem in report["problems"]}
    assert kinds == {"damaged-journal", "foreign-symlink"}
    # Nothing can be read through a damaged journal, and status does not pretend it did.
    assert report["domains"] is None and report["commits_waiting"] is None
    assert any("journal salvage" in reason for reason in report["attention"])


def test_a_memory_url_cannot_be_looked_at_from_another_process() -> None:
    for spec in ("memory:", "memory://bot"):
        result = run_cli("status", spec)
        assert result.returncode == 2
        assert "lives inside one process" in result.stderr
    code, report = status_json_allowing_errors("memory://bot")
    assert code == 2 and report["status"] == "could-not-run"


def status_json_allowing_errors(target: str) -> tuple[int, Any]:
    result = run_cli("status", target, "--json")
    return result.returncode, json.loads(result.stdout)


def test_the_json_document_has_the_documented_keys(
    bot: tuple[Path, subprocess.Popen[str]],
) -> None:
    root, _ = bot
    _, report = status_json(root)
    assert set(report) == TOP_LEVEL
    assert isinstance(report["checked_at"], str) and report["exit_code"] == 0
    assert set(report["sessions"]) == {"known", "why_unknown", "running", "gone", "unnamed_locks"}
    assert set(report["sessions"]["running"][0]) == HOLDER
    for domain in report["domains"]:
        assert set(domain) == {"domain", "entities", "last_change"}
    assert [domain["domain"] for domain in report["domains"]][:5] == [
        "signal", "risk", "schedule", "partial", "intent"
    ]  # fmt: skip
    assert set(report["journal"]) == {
        "path", "bytes", "commits", "keys", "keys_behind", "last_commit"
    }  # fmt: skip
    assert report["journal"]["bytes"] == (root / ".journal" / "commits.pkj").stat().st_size
    for name in ("quarantine", "durability_warnings", "problems", "notes", "attention"):
        assert report[name] == [], name


def test_help_is_whole_and_states_the_exit_codes() -> None:
    result = run_cli("status", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "Exit codes: 0 healthy; 1 needs attention" in text
    assert "2 could not run (missing root, bad URL, unreachable server)." in text
    assert "--watch" in text and "--interval SECONDS" in text


# -- --watch --------------------------------------------------------------------------------


@contextmanager
def watching(target: str | Path, **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """``persistkit status TARGET --watch --interval 0.2``, killed if a test leaves it running."""
    watcher = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "status", str(target), "--watch", "--interval", "0.2"], **popen
    )
    try:
        yield watcher
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()


async def test_watch_refreshes_until_ctrl_c_and_exits_with_the_last_code(
    data_root: Path,
) -> None:
    await write_state(data_root)
    with watching(data_root, stdout=subprocess.PIPE, text=True, env=child_environment()) as watcher:
        assert watcher.stdout is not None
        results = 0
        for line in watcher.stdout:
            results += line.startswith("Result: healthy (exit 0)")
            if results == 3:
                break
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=60) == 0


def test_watch_on_a_terminal_redraws_in_place(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    controller, terminal = pty.openpty()
    env = {**child_environment(), "TERM": "xterm", "COLUMNS": "120", "LINES": "40"}
    seen = b""
    try:
        with watching(root, stdin=terminal, stdout=terminal, stderr=terminal, env=env) as watcher:
            os.close(terminal)
            while seen.count(b"Ctrl-C to stop") < 3:
                chunk = os.read(controller, 65536)
                assert chunk, seen
                seen += chunk
            watcher.send_signal(signal.SIGINT)
            assert watcher.wait(timeout=60) == 0
    finally:
        os.close(controller)
    assert b"\x1b[" in seen  # rich moved the cursor back to draw over the last report
    assert b"Result: healthy (exit 0)" in seen


# -- Redis and S3 ---------------------------------------------------------------------------


def test_a_redis_url_reports_what_redis_can_tell() -> None:
    with RedisServer() as server, RedisServer(extra_args=["--appendfsync", "everysec"]) as lax:
        for target in (server, lax):
            persistkit.configure(mode="live", backend=target.url)
            asyncio.run(
                PersistSignalAdapter.write_signal_data(
                    signal_row("BTCUSDT", "trend", 1), "BTCUSDT", "trend"
                )
            )
        code, report = status_json(server.url)
        assert code == 0, report["attention"]
        # Redis keeps the live sessions' leases (issue 13): none is running.
        assert report["sessions"]["known"] is True and report["sessions"]["running"] == []
        counts = {domain["domain"]: domain["entities"] for domain in report["domains"]}
        assert counts["signal"] == 1 and report["journal"] is None
        running = asyncio.run(_status_beside_a_session(server.url))
        [holder] = running
        assert (holder["pid"], holder["host"]) == (os.getpid(), socket.gethostname()), running
        assert sorted(holder["locks"]) == ["BTCUSDT / trend", "risk main"], running
        code, report = status_json(lax.url)
        assert code == 1
        [warning] = report["durability_warnings"]
        assert "appendfsync is 'everysec'" in warning
        words = run_cli("status", lax.url)
        assert words.returncode == 1 and "durability: " in words.stdout
    persistkit.configure(mode="live")


async def _status_beside_a_session(url: str) -> list[dict[str, Any]]:
    """``running`` as ``status --json`` reports it while a live session holds its leases."""
    session = LiveSession([("BTCUSDT", "trend")], "main", backend=url)
    await session.start()
    try:
        code, report = await asyncio.to_thread(status_json, url)
    finally:
        await session.aclose()
    assert code == 0, report["attention"]
    running: list[dict[str, Any]] = report["sessions"]["running"]
    return running


@pytest.fixture(scope="module")
def s3_server() -> Iterator[SeaweedS3]:
    with SeaweedS3() as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


def test_an_s3_url_shows_a_commit_a_crash_left_and_replays_nothing(
    s3_server: SeaweedS3,
) -> None:
    env = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_DEFAULT_REGION": s3_server.region,
    }
    prefix = f"status-{os.getpid()}-{time.monotonic_ns()}"
    client = s3_server.client()

    async def write() -> None:
        backend = S3Backend(client, BUCKET, prefix)
        persistkit.configure(mode="live", backend=backend)
        await PersistSignalAdapter.write_signal_data(
            signal_row("BTCUSDT", "trend", 1), "BTCUSDT", "trend"
        )
        await backend.aclose()

    asyncio.run(write())
    persistkit.configure(mode="live")
    url = url_of(s3_server, prefix)
    code, report = status_json(url, env)
    assert code == 0, report["attention"]
    # S3 keeps the sessions' leases: status knows who runs (nobody yet).
    assert report["sessions"]["known"] is True and report["sessions"]["running"] == []
    assert {domain["domain"]: domain["entities"] for domain in report["domains"]}["signal"] == 1
    assert report["domains"][0]["last_change"] is not None  # S3's LastModified

    async def lease_then_status() -> Any:
        backend = S3Backend(client, BUCKET, prefix)
        holder = {"host": "bot-host-b", "pid": 4242, "since": time.time()}
        lease = await backend.acquire_lease("pair-BTCUSDT_trend", holder, 600)
        try:
            return await asyncio.to_thread(status_json, url, env)
        finally:
            await backend.release_lease(lease)
            await backend.aclose()

    code, report = asyncio.run(lease_then_status())
    [holder] = report["sessions"]["running"]
    assert holder["host"] == "bot-host-b" and holder["pid"] == 4242

    crash_while_committing(s3_server, prefix, env, "before-apply")
    before = objects_under(client, prefix)
    code, report = status_json(url, env)
    assert objects_under(client, prefix) == before  # the commit is reported, not replayed
    assert code == 1 and report["commits_waiting"] == 1
    assert any("1 commit waiting to be applied" in reason for reason in report["attention"])


def test_an_unreachable_server_is_exit_2_and_a_watch_rides_out_an_outage(
    tmp_path: Path,
) -> None:
    with RedisServer(directory=tmp_path / "redis") as server:
        gone = run_cli("status", f"redis://127.0.0.1:{free_port()}/0")
        assert gone.returncode == 2 and "Traceback" not in gone.stderr
        assert gone.stderr.startswith("persistkit: error: ") and "connect" in gone.stderr
        with watching(
            server.url, stdout=subprocess.PIPE, text=True, env=child_environment()
        ) as watcher:
            read_until(watcher.stdout, "Result: healthy (exit 0)")
            server.kill()  # SIGKILL: the watch goes on, saying so
            read_until(watcher.stdout, "could not run: ")
            server.restart()
            read_until(watcher.stdout, "Result: healthy (exit 0)")
            watcher.send_signal(signal.SIGINT)
            assert watcher.wait(timeout=60) == 0


class LeasingMemoryBackend(MemoryBackend):
    """Leases kept the way the issue-13 contract says (``Backend.read_leases``), in memory:
    enough to show where Redis's and S3's leases plug into status, not a test of theirs."""

    leases = True

    def __init__(self, leases: list[Lease]) -> None:
        super().__init__()
        self._leases = leases

    async def read_leases(self) -> list[Lease]:
        return [lease for lease in self._leases if lease.expires_at > time.time()]


async def test_a_backend_that_keeps_leases_names_each_session_through_them() -> None:
    now = time.time()
    bot = {"host": "bot-1", "pid": 4242, "since": 1_764_490_000.0}
    other = {"host": "bot-2", "pid": 7, "since": 1_764_490_100.0}
    backend = LeasingMemoryBackend(
        [
            Lease("risk-main", 3, bot, now + 30),
            Lease("pair-BTCUSDT_trend", 4, bot, now + 30),
            Lease("pair-ETHUSDT_mean", 9, other, now + 30),
            Lease("pair-SOLUSDT_x", 2, {"host": "bot-3", "pid": 1, "since": 0.0}, now - 1),
        ]
    )
    sessions = await session_locks(backend)
    assert sessions.known
    assert [(h.host, h.pid, h.alive, h.locks) for h in sessions.running] == [
        ("bot-1", 4242, True, ["BTCUSDT / trend", "risk main"]),
        ("bot-2", 7, True, ["ETHUSDT / mean"]),
    ]
    assert sessions.running[0].since == "2025-11-30T08:06:40Z"

"""What the SQLite backend promises beyond the shared conformance suite.

Everything here is real: real database files, a second real SQLite connection
holding the write lock, real writer processes killed with SIGKILL, a real full
file system (tmpfs, root only).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import random
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import persistkit
from persistkit import (
    BackendError,
    PersistBase,
    PersistSignalAdapter,
    RetryPolicy,
    TransientBackendError,
    open_backend,
)
from persistkit.errors import InvalidNameError, StoreClosedError
from persistkit.models import SignalRow
from persistkit_sqlite import SQLiteBackend

LONG = os.environ.get("PERSISTKIT_LONG") == "1"


def sqlite_url(path: Path) -> str:
    return f"sqlite://{path}"


# -- found through the entry point, opened from a URL ----------------------------------


async def test_open_backend_finds_the_plugin_through_its_entry_point(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    backend = open_backend(sqlite_url(path))
    assert type(backend) is SQLiteBackend
    assert backend.url == f"sqlite://{path}"
    await backend.put("ns/a", b"1")
    await backend.aclose()
    reopened = open_backend(backend.url)
    stored = await reopened.get("ns/a")
    assert stored is not None and stored.data == b"1"
    await reopened.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://db.example.com/state.db",  # a host
        "sqlite:///tmp/state.db?mode=ro",  # options
        "sqlite://",  # no file
        "sqlite:///tmp/",  # a directory
    ],
)
def test_from_url_refuses_what_it_cannot_honour(url: str) -> None:
    with pytest.raises(InvalidNameError):
        SQLiteBackend.from_url(url)


def test_relative_paths_are_fixed_when_the_backend_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    backend = SQLiteBackend.from_url("sqlite:state.db")
    monkeypatch.chdir("/")
    assert backend.path == str(tmp_path / "state.db")


@pytest.mark.usefixtures("restore_configuration")
async def test_configure_puts_every_domain_adapter_in_the_database(tmp_path: Path) -> None:
    path = tmp_path / "bot" / "state.db"  # the directory does not exist yet
    persistkit.configure(mode="live", backend=sqlite_url(path))
    row = SignalRow.model_validate_json(
        b'{"id":"s1","symbol":"BTC/USDT","strategyName":"trend","position":"long",'
        b'"priceOpen":100.5,"priceTakeProfit":110.0,"priceStopLoss":95.0,'
        b'"scheduledAt":1763700000000,"pendingAt":1763700060000}'
    )
    await PersistSignalAdapter.write_signal_data(row, "BTC/USDT", "trend")
    await persistkit.current_settings().backend.aclose()
    persistkit.configure(mode="live", backend=sqlite_url(path))  # a restart
    assert await PersistSignalAdapter.read_signal_data("BTC/USDT", "trend") == row
    await persistkit.current_settings().backend.aclose()
    assert os.listdir(tmp_path / "bot") == ["state.db"]  # WAL checkpointed and removed on close


# -- the file on disk ----------------------------------------------------------------------


async def test_database_is_wal_and_durable_and_readable_by_plain_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SQLiteBackend(path) as backend:
        version = await backend.put("signal/BTCUSDT_trend/BTCUSDT", b'{"id":"s1"}')
        assert await backend.durability_warnings() == []
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert other.execute(
                "SELECT namespace, name, data, version FROM entities"
            ).fetchall() == [("signal/BTCUSDT_trend", "BTCUSDT", b'{"id":"s1"}', int(version))]


async def test_versions_are_never_reused_after_delete_and_recreate(tmp_path: Path) -> None:
    async with SQLiteBackend(tmp_path / "state.db") as backend:
        old = await backend.put("ns/a", b"1")
        await backend.delete("ns/a")
        await backend.put("ns/a", b"1")
        with pytest.raises(persistkit.ConflictError):
            await backend.put("ns/a", b"2", expect=old)


async def test_commit_is_all_or_nothing_when_one_write_fails(tmp_path: Path) -> None:
    async with SQLiteBackend(tmp_path / "state.db") as backend:
        await backend.put("tick/signal", b"old")
        # A lone surrogate has no UTF-8 form: the second write fails after
        # the first one was applied inside the transaction.
        with pytest.raises(InvalidNameError):
            await backend.commit({"tick/signal": b"new", "tick/\ud800": b"x"})
        stored = await backend.get("tick/signal")
        assert stored is not None and stored.data == b"old"


async def test_refuses_a_database_that_belongs_to_something_else(tmp_path: Path) -> None:
    path = tmp_path / "trades.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("CREATE TABLE trades (id INTEGER PRIMARY KEY, qty REAL)")
    backend = SQLiteBackend(path)
    with pytest.raises(BackendError, match="something else"):
        await backend.get("ns/a")
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        tables = other.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        journal_mode = other.execute("PRAGMA journal_mode").fetchone()
    assert tables == [("trades",)]
    assert journal_mode == ("delete",)  # not switched to WAL either


async def test_a_file_that_is_not_a_database_is_a_backend_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    garbage = b"this is not sqlite" * 100
    path.write_bytes(garbage)
    backend = SQLiteBackend(path)
    with pytest.raises(BackendError, match="not a database") as caught:
        await backend.put("ns/a", b"1")
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    assert path.read_bytes() == garbage


async def test_closed_backend_refuses_use(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "state.db")
    await backend.put("ns/a", b"1")
    await backend.aclose()
    with pytest.raises(StoreClosedError):
        await backend.get("ns/a")


async def test_quarantine_ids_that_were_never_issued_are_refused(tmp_path: Path) -> None:
    async with SQLiteBackend(tmp_path / "state.db") as backend:
        await backend.put("ns/a", b"{")
        entry = await backend.quarantine("ns/a", "torn")
        for forged in ("", "x", "-1", f"0{entry.id}", f"{entry.id} "):
            with pytest.raises(InvalidNameError):
                await backend.read_quarantined(forged)
        with pytest.raises(persistkit.EntityNotFoundError):
            await backend.read_quarantined(str(int(entry.id) + 1))


# -- scan streams ----------------------------------------------------------------------------


async def test_scan_pages_through_namespaces_that_sort_between_each_other(tmp_path: Path) -> None:
    # "x-1" sorts between "x" and "x/..." ("-" < "/"), and pages end mid-namespace.
    keys = [f"x/k{i:04d}" for i in range(700)]
    keys += [f"x-1/k{i:04d}" for i in range(600)]
    keys += [f"x/sub/k{i:04d}" for i in range(600)]
    keys += [f"root{i:04d}" for i in range(20)]
    async with SQLiteBackend(tmp_path / "state.db") as backend:
        await backend.commit(dict.fromkeys(keys, b"1"))
        assert [k async for k in backend.scan("x")] == sorted(
            k for k in keys if k.count("/") == 1 and k.startswith("x/")
        )
        below_x = [k async for k in backend.scan("x", recursive=True)]
        assert sorted(below_x) == sorted(k for k in keys if k.startswith("x/"))
        assert [k async for k in backend.scan("")] == [f"root{i:04d}" for i in range(20)]
        everything = [k async for k in backend.scan("", recursive=True)]
        assert sorted(everything) == sorted(keys)


async def test_get_many_over_several_pages_and_namespaces_keeps_order(tmp_path: Path) -> None:
    stored = {f"a/k{i:04d}": f"a{i}".encode() for i in range(0, 1400, 2)}
    stored |= {f"b/c/k{i:04d}": f"b{i}".encode() for i in range(0, 1400, 3)}
    wanted = [f"{space}k{i:04d}" for i in reversed(range(1400)) for space in ("a/", "b/c/")]
    async with SQLiteBackend(tmp_path / "state.db") as backend:
        await backend.commit(stored)
        found = await backend.get_many(wanted)
    assert [item.data if item else None for item in found] == [stored.get(k) for k in wanted]


async def test_scan_keeps_going_while_the_caller_writes(tmp_path: Path) -> None:
    async with SQLiteBackend(tmp_path / "state.db") as backend:
        await backend.commit({f"ns/k{i:04d}": b"1" for i in range(1200)})
        seen = []
        async for key in backend.scan("ns"):
            seen.append(key)
            await backend.delete(key)  # e.g. remove_all
        assert len(seen) == 1200
        assert [k async for k in backend.scan("ns")] == []


# -- locking: busy timeout, threads, processes ------------------------------------------------


@pytest.fixture
def lock_holder(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A second, plain SQLite connection to the same database."""
    connection = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    yield connection
    if connection.in_transaction:
        connection.execute("ROLLBACK")
    connection.close()


async def test_a_held_write_lock_is_a_transient_error_and_changes_nothing(
    tmp_path: Path, lock_holder: sqlite3.Connection
) -> None:
    async with SQLiteBackend(tmp_path / "state.db", busy_timeout=0.05) as backend:
        await backend.put("ns/a", b"before")
        lock_holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(TransientBackendError, match="locked") as caught:
            await backend.put("ns/a", b"during")
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        stored = await backend.get("ns/a")  # WAL: readers are never blocked
        assert stored is not None and stored.data == b"before"


async def test_the_store_retries_until_the_lock_is_released(
    tmp_path: Path, lock_holder: sqlite3.Connection
) -> None:
    async with SQLiteBackend(tmp_path / "state.db", busy_timeout=0.05) as backend:
        store: PersistBase[Any] = PersistBase("orders", backend=backend)
        await store.write_value("o1", {"qty": 1})
        lock_holder.execute("BEGIN IMMEDIATE")
        # Released while the store waits between retries (the wait does not block the loop).
        asyncio.get_running_loop().call_later(0.3, lock_holder.execute, "COMMIT")
        await store.write_value("o1", {"qty": 2})
        assert await store.read_value("o1") == {"qty": 2}


async def test_the_store_gives_up_when_the_lock_is_never_released(
    tmp_path: Path, lock_holder: sqlite3.Connection
) -> None:
    async with SQLiteBackend(tmp_path / "state.db", busy_timeout=0.02) as backend:
        retry = RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.02)
        store: PersistBase[Any] = PersistBase("orders", backend=backend, retry=retry)
        await store.write_value("o1", {"qty": 1})
        lock_holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(persistkit.BackendUnavailableError):
            await store.write_value("o1", {"qty": 2})
        lock_holder.execute("ROLLBACK")
        assert await store.read_value("o1") == {"qty": 1}


def test_threads_with_their_own_event_loops_share_one_backend(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "state.db")
    errors: list[BaseException] = []

    async def increments() -> None:
        store: PersistBase[Any] = PersistBase("counters", backend=backend)
        for _ in range(25):
            await store.update_value("n", lambda n: (n or 0) + 1)

    def worker() -> None:
        try:
            asyncio.run(increments())
        except BaseException as exc:  # reported below, with the thread's traceback
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    async def final() -> Any:
        store: PersistBase[Any] = PersistBase("counters", backend=backend)
        value = await store.read_value("n")
        await backend.aclose()
        return value

    assert asyncio.run(final()) == 100


INCREMENTER = """
import asyncio, sys
from persistkit import PersistBase
from persistkit_sqlite import SQLiteBackend

async def main() -> None:
    async with SQLiteBackend(sys.argv[1]) as backend:
        store = PersistBase("counters", backend=backend)
        for _ in range(int(sys.argv[2])):
            await store.update_value("n", lambda n: (n or 0) + 1)

asyncio.run(main())
"""


async def test_processes_incrementing_with_compare_and_set_lose_no_update(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    processes, each = (4, 200) if LONG else (3, 30)
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", INCREMENTER, str(path), str(each)
        )
        for _ in range(processes)
    ]
    assert [await worker.wait() for worker in workers] == [0] * processes
    async with SQLiteBackend(path) as backend:
        assert await PersistBase("counters", backend=backend).read_value("n") == processes * each


# -- kill -9 and power cuts ------------------------------------------------------------------------

TICKER = """
import asyncio, sys
from persistkit_sqlite import SQLiteBackend

async def main() -> None:
    backend = SQLiteBackend(sys.argv[1])
    tick = int(sys.argv[2])
    while True:
        tick += 1
        value = str(tick).encode()
        # One bot tick: the signal, its risk position and a log line, all or none.
        await backend.commit({"tick/signal": value, "tick/risk": value, f"log/{tick:07d}": value})
        print(tick, flush=True)

asyncio.run(main())
"""


def acknowledged_ticks(
    command: list[str], wait_for: int, interrupt: Callable[[], None], *, count_late: bool = True
) -> list[int]:
    """Run a writer until it has acknowledged ``wait_for`` ticks, ``interrupt``, SIGKILL it.

    Returns every tick it acknowledged, including those printed after
    ``interrupt`` unless ``count_late`` is false. A power cut by
    ``EXT4_IOC_SHUTDOWN`` needs that: an fsync still running when the ioctl is
    issued can return success and yet not survive the remount (seen on this
    kernel with a bare append + fsync loop), where a real power cut would give
    no answer at all. Acknowledgements read before the cut are promises.
    """
    writer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert writer.stdout is not None and writer.stderr is not None
    acknowledged = []
    for _ in range(wait_for):
        line = writer.stdout.readline()
        assert line, f"the writer died on its own: {writer.stderr.read()}"
        acknowledged.append(int(line))
    interrupt()
    writer.send_signal(signal.SIGKILL)
    # After a power cut the writer may also exit first, on its next failing write.
    rest, _ = writer.communicate()
    return acknowledged + ([int(line) for line in rest.split()] if count_late else [])


def last_whole_tick(path: Path, acknowledged: list[int]) -> int:
    """Check what a restart finds after TICKER was stopped; return its last tick."""
    with closing(sqlite3.connect(path, isolation_level=None)) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = dict(check.execute("SELECT name, data FROM entities WHERE namespace = 'tick'"))
        logged = {
            int(name)
            for (name,) in check.execute("SELECT name FROM entities WHERE namespace = 'log'")
        }
    assert rows["signal"] == rows["risk"], "a tick was applied in part"
    last = int(rows["signal"])
    assert last >= max(acknowledged), "an acknowledged tick was lost"
    assert logged == set(range(1, last + 1)), "a tick's log line is missing"
    return last


def test_kill_9_mid_commit_keeps_every_acknowledged_tick_whole(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    rounds = 100 if LONG else 6
    shuffle = random.Random(os.environ.get("PERSISTKIT_SEED", "sqlite-kill"))
    last = 0
    for _ in range(rounds):
        acknowledged = acknowledged_ticks(
            [sys.executable, "-c", TICKER, str(path), str(last)],
            wait_for=shuffle.randint(1, 40),
            # land the kill anywhere in a commit
            interrupt=lambda: time.sleep(shuffle.uniform(0, 0.02)),
        )
        last = last_whole_tick(path, acknowledged)


class Ext4Image:
    """A loop-mounted ext4 file system whose power can be cut.

    ``EXT4_IOC_SHUTDOWN`` with ``NOLOGFLUSH`` stops the file system at once:
    what was fsynced is on the image, everything else never gets there, as in
    a power cut. Unmount and mount again to see what a reboot would find.
    """

    SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
    NOLOGFLUSH = 2

    def __init__(self, directory: Path) -> None:
        self.image = directory / "disk.img"
        self.mount_point = directory / "mnt"
        self.mount_point.mkdir()
        with self.image.open("wb") as image:
            image.truncate(32 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", self.image], check=True)
        self.mounted = False
        self.mount()

    def mount(self) -> None:
        subprocess.run(["mount", "-o", "loop", self.image, self.mount_point], check=True)
        self.mounted = True

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", self.mount_point], check=True)
            self.mounted = False

    def force_unmount(self) -> None:
        """Teardown: detach even when a failed test left a file open on it."""
        if self.mounted:
            subprocess.run(["umount", "--lazy", self.mount_point], check=True)
            self.mounted = False

    def cut_power(self) -> None:
        fd = os.open(self.mount_point, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, self.SHUTDOWN, struct.pack("I", self.NOLOGFLUSH))
        finally:
            os.close(fd)

    def reboot(self) -> None:
        self.unmount()
        self.mount()


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Ext4Image]:
    if os.geteuid() != 0:
        pytest.skip("mounting an ext4 image and shutting it down needs root")
    image = Ext4Image(tmp_path)
    try:
        yield image
    finally:
        image.force_unmount()


def test_acknowledged_ticks_survive_a_power_cut(ext4: Ext4Image) -> None:
    path = ext4.mount_point / "state.db"
    acknowledged = acknowledged_ticks(
        [sys.executable, "-c", TICKER, str(path), "0"],
        wait_for=random.Random("sqlite-power").randint(20, 80),
        interrupt=ext4.cut_power,
        count_late=False,
    )
    ext4.reboot()
    last_whole_tick(path, acknowledged)


RAW_TICKER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("PRAGMA journal_mode=WAL")
connection.execute("PRAGMA synchronous=NORMAL")  # WAL is not fsynced at each commit
connection.execute("CREATE TABLE ticks (tick INTEGER PRIMARY KEY)")
tick = 0
while True:
    tick += 1
    connection.execute("INSERT INTO ticks VALUES (?)", (tick,))
    print(tick, flush=True)
"""


def test_the_power_cut_catches_a_writer_that_does_not_fsync_each_commit(ext4: Ext4Image) -> None:
    # The control: without it, the test above could pass on a cut that loses nothing.
    path = ext4.mount_point / "raw.db"
    acknowledged = acknowledged_ticks(
        [sys.executable, "-c", RAW_TICKER, str(path)],
        wait_for=50,
        interrupt=ext4.cut_power,
        count_late=False,
    )
    ext4.reboot()
    with closing(sqlite3.connect(path, isolation_level=None)) as check:
        tables = check.execute("SELECT name FROM sqlite_master WHERE name = 'ticks'").fetchall()
        found = check.execute("SELECT count(*) FROM ticks").fetchone()[0] if tables else 0
    assert found < len(acknowledged)


# -- a full disk (root only: needs a tmpfs mount) -------------------------------------------------


@pytest.fixture
def tiny_disk() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a 512 KiB tmpfs needs root")
    mount_point = Path(tempfile.mkdtemp(prefix="persistkit-sqlite-enospc-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", mount_point], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", mount_point], check=True)
        mount_point.rmdir()


async def test_a_full_disk_is_a_backend_error_and_the_old_values_survive(tiny_disk: Path) -> None:
    path = tiny_disk / "state.db"
    async with SQLiteBackend(path) as backend:
        await backend.put("ns/keep", b"kept")
        await backend.put("ns/tick", b"1")
        with pytest.raises(BackendError) as caught:
            await backend.commit({"ns/tick": b"2", "ns/big": os.urandom(1 << 20)})
        assert isinstance(caught.value.__cause__, sqlite3.Error)
        assert await stored_data(backend) == {"ns/keep": b"kept", "ns/tick": b"1", "ns/big": None}
    async with SQLiteBackend(path) as reopened:  # what a restart finds
        assert await stored_data(reopened) == {"ns/keep": b"kept", "ns/tick": b"1", "ns/big": None}


async def stored_data(backend: SQLiteBackend) -> dict[str, bytes | None]:
    found = await backend.get_many(["ns/keep", "ns/tick", "ns/big"])
    return {
        key: None if item is None else item.data
        for key, item in zip(["ns/keep", "ns/tick", "ns/big"], found, strict=True)
    }

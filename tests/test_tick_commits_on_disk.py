"""Tick commits on the file backend: torn tails cut, crash replay, group commit, plain writes."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from pathlib import Path

import pytest

from persistkit import (
    FileBackend,
    JournalDamagedError,
    PersistBase,
    UnsupportedFormatError,
    transaction,
)
from persistkit.backends._journal import JOURNAL_DIR, JOURNAL_FILE, encode_record, parse_records
from persistkit.backends._oslayer import OSLayer

RECORDS = [
    {"tick/a": b'{"v":"A1"}', "tick/b": b'{"v":"B1"}'},
    {"tick/b": None, "other/c": b'{"v":"C2"}', "tick/a": b'{"v":"A2"}'},
    {"tick/a": None, "tick/d": b'{"v":"D3"}', "other/c": b'{"v":"C3"}'},
]


def expected_after(count: int) -> dict[str, bytes]:
    """Files after the first ``count`` records on top of the base state."""
    state: dict[str, bytes] = {"tick/base": b'{"v":"base"}'}
    for writes in RECORDS[:count]:
        for key, data in writes.items():
            if data is None:
                state.pop(key, None)
            else:
                state[key] = data
    return state


async def stored_state(root: Path) -> dict[str, bytes]:
    return await stored_state_of(FileBackend(root))


async def stored_state_of(backend: FileBackend) -> dict[str, bytes]:
    try:
        keys = [key async for key in backend.scan("", recursive=True)]
        values = await backend.get_many(keys)
        return {key: value.data for key, value in zip(keys, values, strict=True) if value}
    finally:
        await backend.aclose()


def dead_journal(root: Path, data: bytes) -> Path:
    """Leave ``data`` as the journal of a process that died (nobody holds its lock)."""
    directory = root / JOURNAL_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "12345-1-dead.log"
    path.write_bytes(data)
    return path


def journal_bytes() -> tuple[bytes, int]:
    """All three records, and where the last one starts."""
    chunks = [encode_record(seq, 1_000 + seq, writes) for seq, writes in enumerate(RECORDS, 1)]
    return b"".join(chunks), len(b"".join(chunks[:-1]))


def test_records_round_trip_and_a_torn_tail_is_cut() -> None:
    data, last_start = journal_bytes()
    records, length = parse_records(data)
    assert [record.writes for record in records] == RECORDS
    assert length == len(data)
    records, length = parse_records(data[:-1])
    assert [record.writes for record in records] == RECORDS[:2]
    assert length == last_start


async def test_replay_after_a_crash_at_every_byte_of_the_last_record(tmp_path: Path) -> None:
    data, last_start = journal_bytes()
    for cut in range(last_start, len(data) + 1):
        root = tmp_path / f"cut-{cut}"
        (root / "tick").mkdir(parents=True)
        (root / "tick" / "base.json").write_bytes(b'{"v":"base"}')
        journal = dead_journal(root, data[:cut])
        complete = 3 if cut == len(data) else 2
        assert await stored_state(root) == expected_after(complete), f"cut at byte {cut}"
        assert not journal.exists()  # replayed, made durable, then removed


async def test_a_damaged_record_followed_by_valid_ones_refuses_the_start_until_salvaged(
    tmp_path: Path,
) -> None:
    data, _ = journal_bytes()
    first_end = len(encode_record(1, 1_001, RECORDS[0]))
    for offset in (2, 7, first_end + 30):  # magic, checksum, payload of record 2
        root = tmp_path / f"flip-{offset}"
        (root / "tick").mkdir(parents=True)
        (root / "tick" / "base.json").write_bytes(b'{"v":"base"}')
        flipped = bytearray(data)
        flipped[offset] ^= 0x40
        journal = dead_journal(root, bytes(flipped))
        with pytest.raises(JournalDamagedError, match="persistkit journal salvage"):
            await stored_state(root)
        assert journal.read_bytes() == bytes(flipped)  # nothing deleted, nothing applied
        assert await stored_state_of(FileBackend(root, read_only=True)) == expected_after(0)

        backend = FileBackend(root)
        reports = await backend.salvage_journal()
        before_damage = 0 if offset < first_end else 1
        assert [(r.applied, [rec.seq for rec in r.left_out]) for r in reports] == [
            (before_damage, list(range(before_damage + 2, 4)))
        ]
        assert Path(reports[0].kept_as).read_bytes() == bytes(flipped)  # kept aside
        assert await stored_state(root) == expected_after(before_damage)


async def test_a_damaged_shared_journal_is_refused_by_every_new_backend(tmp_path: Path) -> None:
    root = tmp_path / "data"
    writer = FileBackend(root)
    for tick in range(1, 6):
        await writer.commit({"k/tick": b"%d" % tick, f"k/t{tick}": b"%d" % tick})
    path = root / JOURNAL_DIR / JOURNAL_FILE
    data = bytearray(path.read_bytes())
    second = data.index(b"PKJ1", data.index(b"PKJ1") + 1)
    data[second + 40] ^= 0x01  # inside record 2; records 3 to 5 stay valid
    path.write_bytes(bytes(data))
    with pytest.raises(JournalDamagedError, match="salvage"):
        await FileBackend(root).get("k/tick")
    reports = await FileBackend(root).salvage_journal()
    assert [r.seq for r in reports[0].left_out] == [3, 4, 5]
    assert await stored_state(root) == {"k/tick": b"1", "k/t1": b"1"}


async def test_replay_repairs_a_file_torn_after_its_commit(tmp_path: Path) -> None:
    """Applied files are not fsynced: a power cut may tear them, the journal rewrites them."""
    root = tmp_path / "data"
    (root / "signals").mkdir(parents=True)
    (root / "signals" / "s1.json").write_bytes(b'{"id": "s1", "sta')
    dead_journal(root, encode_record(1, 1, {"signals/s1": b'{"id":"s1","state":"open"}'}))
    store: PersistBase[dict[str, str]] = PersistBase("signals", backend=FileBackend(root))
    report = await store.wait_for_init()
    assert report.clean, report.summary()  # replayed before the scan: nothing to quarantine
    assert await store.read_value("s1") == {"id": "s1", "state": "open"}


async def test_a_commit_is_read_by_every_backend_of_the_root_at_once(tmp_path: Path) -> None:
    root = tmp_path / "data"
    writer = FileBackend(root)
    await writer.commit({"k/a": b"1"})
    reader = FileBackend(root)  # another process would see the same: it reads the journal
    assert (await reader.get("k/a")).data == b"1"  # type: ignore[union-attr]
    await writer.put("k/a", b"2")  # held by the journal: appended behind the commit
    assert (await reader.get("k/a")).data == b"2"  # type: ignore[union-attr]
    await writer.aclose()  # clean close: checkpointed into the files
    assert (root / "k" / "a.json").read_bytes() == b"2"
    assert await FileBackend(root, read_only=True).unapplied_commits() == []
    assert (await reader.get("k/a")).data == b"2"  # type: ignore[union-attr]
    await reader.aclose()


def copy_as_crashed(root: Path, to: Path) -> Path:
    """What a power cut would leave if everything written so far reached the disk.

    The backend's applier may rename or remove a file while we copy: a file
    that vanished under the copy is one a crash at that moment would not have.
    """

    def copy_if_still_there(source: str, target: str) -> None:
        try:
            shutil.copy2(source, target)
        except FileNotFoundError:
            pass

    shutil.copytree(root, to, copy_function=copy_if_still_there)
    return to


async def test_plain_write_after_a_commit_is_not_undone_by_replay(tmp_path: Path) -> None:
    root = tmp_path / "data"
    backend = FileBackend(root)
    await backend.commit({"k/put": b"committed", "k/deleted": b"committed", "k/other": b"c"})
    await backend.put("k/put", b"plain put")
    assert await backend.delete("k/deleted") is True
    crashed = await stored_state(copy_as_crashed(root, tmp_path / "crash"))
    assert crashed == {"k/put": b"plain put", "k/other": b"c"}
    await backend.aclose()


async def test_many_ticks_past_the_journal_limit_checkpoint_and_stay_readable(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    backend = FileBackend(root, journal_limit=4096)
    for tick in range(200):
        await backend.commit({f"k/{tick % 7}": b"%d" % tick, "k/last": b"%d" % tick})
    size = sum(path.stat().st_size for path in (root / JOURNAL_DIR).iterdir())
    assert size < 4096 + 200  # emptied at each checkpoint, never past the limit plus a record
    assert (await backend.get("k/last")).data == b"199"  # type: ignore[union-attr]
    crashed = await stored_state(copy_as_crashed(root, tmp_path / "crash"))
    assert crashed["k/last"] == b"199"
    assert crashed == {f"k/{tick % 7}": b"%d" % tick for tick in range(193, 200)} | {
        "k/last": b"199"
    }
    await backend.aclose()


class CountingOS(OSLayer):
    """The real system calls, counting the fsyncs of commit journal files."""

    def __init__(self) -> None:
        self.fsyncs = 0
        self._lock = threading.Lock()

    def fsync(self, fd: int) -> None:  # type: ignore[override]  # instance method over staticmethod
        if os.readlink(f"/proc/self/fd/{fd}").endswith(JOURNAL_FILE):  # not the applier's dirs
            with self._lock:
                self.fsyncs += 1
        os.fsync(fd)


async def test_concurrent_ticks_share_one_fsync_and_all_are_durable(tmp_path: Path) -> None:
    root = tmp_path / "data"
    counting = CountingOS()
    backend = FileBackend(root, os_layer=counting)
    await backend.commit({"warm/up": b"1"})  # creates the journal and its directory
    counting.fsyncs = 0
    tasks = 50

    async def tick(task: int) -> None:
        async with transaction(backend):
            await PersistBase("signal", backend=backend).write_value(task, {"tick": task})
            await PersistBase("risk", backend=backend).write_value(task, {"tick": task})

    await asyncio.gather(*(tick(task) for task in range(tasks)))
    # All fifty ticks were ready in the same loop iteration: one write, one fsync.
    assert counting.fsyncs == 1, f"{counting.fsyncs} fsyncs for {tasks} commits"
    crashed = await stored_state(copy_as_crashed(root, tmp_path / "crash"))
    for task in range(tasks):
        assert crashed[f"signal/{task}"] == crashed[f"risk/{task}"] == b'{"tick":%d}' % task
    await backend.aclose()


def test_commits_from_threads_share_fsyncs(tmp_path: Path) -> None:
    root = tmp_path / "data"
    counting = CountingOS()
    backend = FileBackend(root, os_layer=counting)
    backend.journal.recover()
    backend.journal.commit({"warm/up": b"1"})
    counting.fsyncs = 0
    threads, per_thread = 8, 25

    def worker(index: int) -> None:
        for tick in range(per_thread):
            backend.journal.commit({f"t{index}/tick": b"%d" % tick, f"t{index}/n": b"%d" % tick})

    pool = [threading.Thread(target=worker, args=(index,)) for index in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    commits = threads * per_thread
    assert backend.journal.commits == commits + 1
    assert counting.fsyncs < commits, f"{counting.fsyncs} fsyncs for {commits} commits"
    assert counting.fsyncs == backend.journal.flushes - 1  # the journal's own count agrees
    crashed = asyncio.run(stored_state(copy_as_crashed(root, tmp_path / "crash")))
    for index in range(threads):
        assert crashed[f"t{index}/tick"] == crashed[f"t{index}/n"] == b"%d" % (per_thread - 1)
    asyncio.run(backend.aclose())


@pytest.mark.parametrize("failing", ["write", "fsync"])
async def test_a_failed_journal_write_is_reported_and_the_next_tick_works(
    tmp_path: Path, failing: str
) -> None:
    root = tmp_path / "data"

    class FailOnce(OSLayer):
        armed = False

        def write(self, fd: int, data: bytes | memoryview) -> int:  # type: ignore[override]
            if self.armed and failing == "write":
                self.armed = False
                raise OSError(28, "No space left on device")
            return os.write(fd, data)

        def fsync(self, fd: int) -> None:  # type: ignore[override]
            if self.armed and failing == "fsync":
                self.armed = False
                raise OSError(5, "Input/output error")
            os.fsync(fd)

    layer = FailOnce()
    backend = FileBackend(root, os_layer=layer)
    await backend.commit({"k/a": b"1"})
    layer.armed = True
    from persistkit.errors import DurabilityUnknownError, WriteFailedError

    expected_error = WriteFailedError if failing == "write" else DurabilityUnknownError
    with pytest.raises(expected_error):
        await backend.commit({"k/a": b"2", "k/b": b"2"})
    if failing == "write":
        assert (await backend.get("k/a")).data == b"1"  # type: ignore[union-attr]
        assert await backend.get("k/b") is None
    await backend.commit({"k/a": b"3", "k/b": b"3"})
    crashed = await stored_state(copy_as_crashed(root, tmp_path / "crash"))
    assert crashed == {"k/a": b"3", "k/b": b"3"}
    await backend.aclose()


async def test_a_plain_write_called_after_a_queued_commit_lands_after_it(tmp_path: Path) -> None:
    root = tmp_path / "data"
    backend = FileBackend(root)
    tick = asyncio.ensure_future(backend.commit({"k/a": b"tick", "k/b": b"tick"}))
    await asyncio.sleep(0)  # the tick is queued for this loop iteration's flush, not written
    await backend.put("k/a", b"plain")
    await tick
    assert (await backend.get("k/a")).data == b"plain"  # type: ignore[union-attr]
    crashed = await stored_state(copy_as_crashed(root, tmp_path / "crash"))
    assert crashed == {"k/a": b"plain", "k/b": b"tick"}
    await backend.aclose()
    assert await stored_state(root) == {"k/a": b"plain", "k/b": b"tick"}


async def test_a_root_marked_by_a_newer_format_is_refused_and_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "data"
    backend = FileBackend(root)
    await backend.commit({"k/a": b"1"})
    await backend.aclose()
    marker = root / JOURNAL_DIR / "format"
    assert marker.read_text().split() == ["persistkit-format", "3"]
    marker.write_text("persistkit-format 4\n")
    before = sorted((p.name, p.read_bytes()) for p in (root / JOURNAL_DIR).iterdir())
    with pytest.raises(UnsupportedFormatError, match="format 3 and older"):
        await FileBackend(root).get("k/a")
    with pytest.raises(UnsupportedFormatError):
        await FileBackend(root, read_only=True).get("k/a")
    assert sorted((p.name, p.read_bytes()) for p in (root / JOURNAL_DIR).iterdir()) == before

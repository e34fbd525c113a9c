"""The file backend's own promises: the durable write protocol, plain writes through the
journal (a root with history), and their failures."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest

from persistkit import (
    CorruptValueError,
    DurabilityUnknownError,
    FileBackend,
    InvalidNameError,
    PersistBase,
    WriteFailedError,
)
from persistkit.backends._file import TEMP_PREFIX
from persistkit.backends._oslayer import OSLayer


class FailingOS(OSLayer):
    """The real system calls, except that ``fail_on`` fails with ``error`` the Nth time."""

    def __init__(self, fail_on: str, error: int = errno.EIO, when: int = 1) -> None:
        self.fail_on = fail_on
        self.error = error
        self.when = when
        self.calls: dict[str, int] = {}
        self.armed = True
        for name in ("open", "write", "fsync", "replace", "mkdir", "fchmod"):
            setattr(self, name, self._wrap(name, getattr(OSLayer, name)))

    def _wrap(self, name: str, real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if not self.armed:
                return real(*args, **kwargs)
            self.calls[name] = self.calls.get(name, 0) + 1
            if name == self.fail_on and self.calls[name] == self.when:
                raise OSError(self.error, os.strerror(self.error))
            return real(*args, **kwargs)

        return call


def failing_backend(root: Path, os_layer: FailingOS, *, history: bool = False) -> FileBackend:
    """A backend past its first use (format check, journal), faults counted from now.

    Without ``history`` (``history=None``) its plain writes are DESIGN §3's durable
    replace, which the history's own files use too; with it (the default root),
    they are journal commits.
    """
    backend = FileBackend(root, os_layer=os_layer, **({} if history else {"history": None}))
    os_layer.armed = False
    backend.journal.recover()
    backend.journal.ensure_open(wait=True)  # a process's first write creates the journal
    os_layer.armed = True
    return backend


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


async def test_write_lands_at_the_documented_path(tmp_path: Path) -> None:
    store: PersistBase[Any] = PersistBase("BTCUSDT_trend", tmp_path)
    await store.write_value("BTCUSDT", {"a": 1})
    assert (tmp_path / "BTCUSDT_trend" / "BTCUSDT.json").read_bytes() == b'{"a":1}'
    assert temp_files(tmp_path) == []


async def test_new_files_get_the_umask_mode_and_existing_modes_are_kept(tmp_path: Path) -> None:
    store: PersistBase[Any] = PersistBase("e", tmp_path)
    await store.write_value("fresh", 1)
    umask = os.umask(0)
    os.umask(umask)
    path = tmp_path / "e" / "fresh.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    path.chmod(0o600)
    await store.write_value("fresh", 2)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert await store.read_value("fresh") == 2


async def test_a_later_chdir_does_not_move_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store: PersistBase[Any] = PersistBase("e", "./relative")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    await store.write_value("k", 1)
    assert (tmp_path / "relative" / "e" / "k.json").exists()
    assert not (tmp_path / "elsewhere" / "relative").exists()


@pytest.mark.parametrize(
    ("fail_on", "error", "when"),
    [
        # The first open is the commit journal's folder, looked for at first use.
        ("open", errno.EMFILE, 1),  # the directory
        ("open", errno.ENOSPC, 2),  # the temp file
        ("fchmod", errno.EPERM, 1),
        ("write", errno.ENOSPC, 1),
        ("write", errno.EIO, 1),
        ("fsync", errno.EIO, 1),
        ("replace", errno.EIO, 1),
    ],
)
async def test_failure_before_the_rename_keeps_the_old_value_and_no_temp(
    tmp_path: Path, fail_on: str, error: int, when: int
) -> None:
    good: PersistBase[Any] = PersistBase("e", backend=FileBackend(tmp_path, history=None))
    await good.write_value("k", {"v": "old"})
    failing = failing_backend(tmp_path, FailingOS(fail_on, error, when))
    store: PersistBase[Any] = PersistBase("e", backend=failing)
    with pytest.raises(WriteFailedError, match="previous value is kept") as raised:
        await store.write_value("k", {"v": "new"})
    assert isinstance(raised.value.__cause__, OSError)
    assert raised.value.__cause__.errno == error
    assert await good.read_value("k") == {"v": "old"}
    assert temp_files(tmp_path) == []


async def test_failed_directory_fsync_says_durability_is_unknown(tmp_path: Path) -> None:
    # The first fsync is the temp file's, the second the directory's.
    backend = failing_backend(tmp_path, FailingOS("fsync", errno.EIO, when=2))
    store: PersistBase[Any] = PersistBase("e", backend=backend)
    await PersistBase("e", backend=FileBackend(tmp_path, history=None)).write_value("k", "seed")
    with pytest.raises(DurabilityUnknownError, match="may not survive a power cut"):
        await store.write_value("k", "new")
    # The new value is visible: the rename happened, only its durability is unknown.
    assert await PersistBase("e", backend=FileBackend(tmp_path)).read_value("k") == "new"
    assert temp_files(tmp_path) == []


async def test_failed_mkdir_is_a_write_failure(tmp_path: Path) -> None:
    backend = failing_backend(tmp_path, FailingOS("mkdir", errno.EACCES))
    with pytest.raises(WriteFailedError):
        await PersistBase("new_entity", backend=backend).write_value("k", 1)


@pytest.mark.parametrize(
    ("fail_on", "when", "outcome"),
    [
        ("open", 1, "refused"),  # the entity's directory, looked at before the append
        ("write", 1, "refused"),  # the append to the commit journal
        ("fsync", 1, "unknown"),  # the journal's fsync: the commit point
        # After the commit point: writing the entity's file, which the journal repeats.
        ("open", 2, "committed"),
        ("fchmod", 1, "committed"),
        ("write", 2, "committed"),
        ("replace", 1, "committed"),
    ],
)
async def test_a_plain_write_of_a_root_with_history_fails_whole_or_is_committed(
    tmp_path: Path, fail_on: str, when: int, outcome: str
) -> None:
    good: PersistBase[Any] = PersistBase("e", backend=FileBackend(tmp_path))
    await good.write_value("k", {"v": "old"})
    faults = FailingOS(fail_on, errno.EIO, when)
    failing = failing_backend(tmp_path, faults, history=True)
    store: PersistBase[Any] = PersistBase("e", backend=failing)
    if outcome == "refused":
        with pytest.raises(WriteFailedError, match="previous values are kept") as raised:
            await store.write_value("k", {"v": "new"})
        assert isinstance(raised.value.__cause__, OSError)
        assert raised.value.__cause__.errno == errno.EIO
    elif outcome == "unknown":
        with pytest.raises(DurabilityUnknownError, match="may not survive a power cut"):
            await store.write_value("k", {"v": "new"})
    else:
        await store.write_value("k", {"v": "new"})
    expected = {"v": "old"} if outcome == "refused" else {"v": "new"}
    faults.armed = False
    # What another process reads at once, and what the file holds after a restart.
    assert await PersistBase("e", backend=FileBackend(tmp_path)).read_value("k") == expected
    assert temp_files(tmp_path) == []
    await failing.aclose()
    restarted = FileBackend(tmp_path)
    await restarted.checkpoint()
    await restarted.aclose()
    assert (tmp_path / "e" / "k.json").read_bytes() == orjson.dumps(expected)
    changes = (await FileBackend(tmp_path).history_records()).changes_of("e/k")
    assert [orjson.loads(change.data or b"null") for change in changes][-1] == expected


async def test_startup_sweeps_orphan_temps_and_keeps_values(tmp_path: Path) -> None:
    store: PersistBase[Any] = PersistBase("e", tmp_path)
    await store.write_value("k", 1)
    orphan = tmp_path / "e" / f"{TEMP_PREFIX}deadbeefdeadbeef"
    orphan.write_bytes(b'{"half')
    fresh: PersistBase[Any] = PersistBase("e", backend=FileBackend(tmp_path))
    report = await fresh.wait_for_init()
    assert report.orphans == [f"e/{orphan.name}"]
    assert not orphan.exists()
    assert [key async for key in fresh.keys()] == ["k"]
    assert report.clean is False and report.corrupt == []


async def test_read_only_check_changes_nothing(tmp_path: Path) -> None:
    store: PersistBase[Any] = PersistBase("e", tmp_path)
    await store.write_value("k", 1)
    (tmp_path / "e" / f"{TEMP_PREFIX}0123456789abcdef").write_bytes(b"x")
    (tmp_path / "e" / "bad.json").write_bytes(b"{")
    before = sorted((p.name, p.read_bytes()) for p in (tmp_path / "e").iterdir())
    report = await PersistBase("e", backend=FileBackend(tmp_path)).check(repair=False)
    after = sorted((p.name, p.read_bytes()) for p in (tmp_path / "e").iterdir())
    assert before == after
    assert not (tmp_path / ".quarantine").exists()
    assert [f.key for f in report.corrupt] == ["e/bad"]
    assert report.corrupt[0].quarantine_id is None
    assert len(report.orphans) == 1


async def test_quarantined_files_keep_their_bytes_and_reason_on_disk(tmp_path: Path) -> None:
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "torn.json").write_bytes(b'{"price": 10')
    report = await PersistBase("e", backend=FileBackend(tmp_path)).wait_for_init()
    [finding] = report.corrupt
    kept = list((tmp_path / ".quarantine" / "e").iterdir())
    assert sorted(p.suffix for p in kept) == [".json", ".reason"]
    assert next(p for p in kept if p.suffix == ".json").read_bytes() == b'{"price": 10'
    assert "unparseable" in finding.reason


async def test_a_fifo_named_like_a_value_is_read_as_damaged_not_waited_on(
    tmp_path: Path,
) -> None:
    """Opening a FIFO for reading waits for a writer: a read, or a whole start, hung."""
    (tmp_path / "e").mkdir()
    os.mkfifo(tmp_path / "e" / "k.json")
    store: PersistBase[Any] = PersistBase("e", backend=FileBackend(tmp_path))

    def in_a_thread(check: Any) -> Any:
        return asyncio.wait_for(asyncio.to_thread(asyncio.run, check), timeout=60)

    try:
        with pytest.raises(CorruptValueError, match="e/k"):
            await in_a_thread(store.read_value("k"))
        report = await in_a_thread(store.wait_for_init())
    except TimeoutError:
        os.close(os.open(tmp_path / "e" / "k.json", os.O_WRONLY | os.O_NONBLOCK))  # unstick it
        pytest.fail("a read waited for something to write to the FIFO")
    assert [finding.key for finding in report.corrupt] == ["e/k"]
    assert [key async for key in store.keys()] == []
    [kept] = (tmp_path / ".quarantine" / "e").glob("*.json")
    assert stat.S_ISFIFO(kept.stat().st_mode)  # set aside as it is, never deleted


@pytest.mark.parametrize(
    "name",
    [
        b"x" * 250,  # the longest a value file's name can be (255 with .json)
        "\u00e9".encode() * 125,  # 250 bytes of two-byte characters
        b"\xff\xfe",  # not UTF-8: its key holds surrogates
    ],
    ids=["250-bytes", "250-bytes-unicode", "not-utf8"],
)
async def test_a_start_quarantines_and_restores_a_bad_value_whatever_its_file_name(
    tmp_path: Path, name: bytes
) -> None:
    """A file named by hand, not by persistkit: its quarantine name must still fit.

    The quarantine adds a stamp and ``.reason`` (34 bytes) to the name; a
    250-byte name made it 284, over the file system's 255, and every start
    failed with ``OSError: [Errno 36] File name too long``.
    """
    folder = tmp_path / "e"
    folder.mkdir()
    value = os.path.join(os.fsencode(folder), name + b".json")
    with open(value, "wb") as handle:
        handle.write(b'{"id": "torn')
    store: PersistBase[Any] = PersistBase("e", backend=FileBackend(tmp_path))
    report = await store.wait_for_init()
    [finding] = report.corrupt
    assert finding.key == f"e/{os.fsdecode(name)}"
    assert not os.path.exists(value)
    kept = list((tmp_path / ".quarantine" / "e").iterdir())
    assert sorted(p.suffix for p in kept) == [".json", ".reason"]
    assert all(len(os.fsencode(p.name)) <= 255 for p in kept)
    [entry] = await store.list_quarantined()
    assert entry.id == finding.quarantine_id
    backend = FileBackend(tmp_path)
    if name == b"\xff\xfe":
        with pytest.raises(InvalidNameError, match="not UTF-8"):
            await backend.restore(entry.id)
        return
    assert await backend.restore(entry.id) == finding.key
    await backend.aclose()
    with open(value, "rb") as handle:
        assert handle.read() == b'{"id": "torn'
    assert list((tmp_path / ".quarantine" / "e").iterdir()) == []


async def test_non_persistkit_files_are_not_listed(tmp_path: Path) -> None:
    store: PersistBase[Any] = PersistBase("e", tmp_path)
    await store.write_value("k", 1)
    (tmp_path / "e" / "notes.txt").write_text("hello")
    (tmp_path / "e" / "%41.json").write_text("1")  # not a canonical encoding
    assert [key async for key in store.keys()] == ["k"]


def test_file_urls(tmp_path: Path) -> None:
    assert FileBackend.from_url(f"file://{tmp_path}").root == str(tmp_path)
    with pytest.raises(ValueError, match="host"):
        FileBackend.from_url("file://remote-host/x")


class ShortWritesOS(OSLayer):
    """Writes at most three bytes per call, as a pipe or a full disk may."""

    @staticmethod
    def write(fd: int, data: Any) -> int:
        return os.write(fd, bytes(data[:3]))


async def test_short_writes_are_looped_until_every_byte_is_written(tmp_path: Path) -> None:
    store: PersistBase[Any] = PersistBase(
        "e", backend=FileBackend(tmp_path, os_layer=ShortWritesOS())
    )
    value = {"note": "x" * 1000, "n": list(range(50))}
    await store.write_value("k", value)
    assert await PersistBase("e", backend=FileBackend(tmp_path)).read_value("k") == value


async def test_concurrent_callers_share_one_startup_scan(tmp_path: Path) -> None:
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "bad.json").write_bytes(b"{")
    store: PersistBase[Any] = PersistBase("e", backend=FileBackend(tmp_path))
    reports = await asyncio.gather(*(store.wait_for_init() for _ in range(5)))
    assert all(report is reports[0] for report in reports)
    assert len(reports[0].corrupt) == 1
    assert len(await store.list_quarantined()) == 1


async def test_cancelling_an_offloaded_write_leaves_old_or_new_and_keeps_order(
    tmp_path: Path,
) -> None:
    backend = FileBackend(tmp_path, offload=True)
    store: PersistBase[Any] = PersistBase("e", backend=backend)
    await store.write_value("k", 0)
    for attempt in range(20):
        task = asyncio.ensure_future(store.write_value("k", {"attempt": attempt}))
        await asyncio.sleep(0)
        task.cancel()
        later = asyncio.ensure_future(store.write_value("k", {"later": attempt}))
        try:
            await task
        except asyncio.CancelledError:
            pass
        await later
        # The write queued after the cancelled one always wins: nothing overtakes it.
        assert await store.read_value("k") == {"later": attempt}
    assert temp_files(tmp_path) == []


async def test_a_read_only_backend_starts_a_store_by_reporting_not_repairing(
    tmp_path: Path,
) -> None:
    store: PersistBase[Any] = PersistBase("e", tmp_path)
    await store.write_value("k", 1)
    (tmp_path / "e" / "bad.json").write_bytes(b"{torn")
    (tmp_path / "e" / ".tmp-0123456789abcdef").write_bytes(b"{")
    looking: PersistBase[Any] = PersistBase("e", backend=FileBackend(tmp_path, read_only=True))
    report = await looking.wait_for_init()
    assert not report.repaired
    assert [finding.key for finding in report.corrupt] == ["e/bad"]
    assert (tmp_path / "e" / "bad.json").exists() and temp_files(tmp_path)  # left as found
    assert await looking.read_value("k") == 1

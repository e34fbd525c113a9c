"""Platforms: persistkit without POSIX (Windows), and the macOS durable flush.

These run on Linux. What they prove, and what they do not:

- Without ``fcntl``: a Python whose import system refuses ``fcntl`` and
  ``resource`` and whose ``os`` lacks the POSIX-only calls and flags imports
  persistkit, keeps state in memory and in a real Redis, and gets a typed error
  from the file backend. It is not Windows itself (paths, ``os.replace``
  semantics, the event loop are untested there).
- macOS: the OS layer built for ``"darwin"`` flushes every file and directory
  the durable write and the commit journal touch with ``fcntl(fd, F_FULLFSYNC)``,
  on real files. Linux has no ``F_FULLFSYNC``, so the recorder notes the call
  and does an ``fsync`` in its place: this proves the code path and the
  arguments, not that a Mac's drive honours the flush.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from persistkit import FileBackend, PersistBase, WriteFailedError, transaction
from persistkit.backends._oslayer import F_FULLFSYNC, OSLayer, durable_fsync
from support.servers import RedisServer

SRC = Path(__file__).resolve().parents[1] / "src"

# What Windows lacks that persistkit could reach at import time.
WITHOUT_POSIX = """
import importlib.abc, os, sys

class NoPosix(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in ("fcntl", "resource"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoPosix())
for name in ("fcntl", "resource"):
    sys.modules.pop(name, None)
for name in ("pread", "fchmod", "register_at_fork", "O_DIRECTORY", "O_CLOEXEC", "O_NOFOLLOW"):
    if hasattr(os, name):
        delattr(os, name)
"""

WITHOUT_POSIX_USER = """
import asyncio, json, sys
import persistkit
from persistkit import PersistBase, PersistSignalAdapter, UnsupportedPlatformError
from persistkit.backends._memory import MemoryBackend
from persistkit.models import SignalRow
import persistkit.backends._s3  # imports; the S3 server is not needed to prove that

assert "fcntl" not in sys.modules and "resource" not in sys.modules, "the hook leaked"
redis_url, root = sys.argv[1], sys.argv[2]
seen = {}

async def main():
    memory = PersistBase("entity", backend=MemoryBackend("win"))
    await memory.write_value("k", {"n": 1})
    seen["memory"] = await memory.read_value("k")

    persistkit.configure(mode="live", base_dir=root, backend=redis_url)
    row = SignalRow(id="s1", position="long", price_open=1.0, price_take_profit=2.0,
                    price_stop_loss=0.5, minute_estimated_time=5, symbol="BTC/USDT",
                    strategy_name="win", scheduledAt=1, pendingAt=1)
    await PersistSignalAdapter.write_signal_data(row, "BTC/USDT", "win")
    read = await PersistSignalAdapter.read_signal_data("BTC/USDT", "win")
    seen["redis"] = read.id if read else None

    for what, attempt in (
        ("file_backend", lambda: persistkit.FileBackend(root)),
        ("configure_live_files", lambda: persistkit.configure(mode="live", base_dir=root)),
    ):
        try:
            attempt()
        except UnsupportedPlatformError as exc:
            seen[what] = str(exc)
    await persistkit.current_settings().backend.aclose()

asyncio.run(main())
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def test_without_fcntl_memory_and_redis_work_and_the_file_backend_says_it_needs_posix(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    script = WITHOUT_POSIX + textwrap.dedent(WITHOUT_POSIX_USER)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    for name in ("PERSISTKIT_MODE", "PERSISTKIT_BASE_DIR", "PERSISTKIT_BACKEND"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-c", script, redis_server.url, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["memory"] == {"n": 1}
    assert seen["redis"] == "s1"
    for what in ("file_backend", "configure_live_files"):
        assert "needs POSIX file locks" in seen[what], seen
        assert "Redis or S3" in seen[what]
    assert not (tmp_path / "data").exists(), "the refused file backend created its root"


class RecordingFcntl:
    """``fcntl`` as macOS has it, on Linux: each call recorded with the file it reached."""

    def __init__(self, error: int | None = None) -> None:
        self.error = error
        self.full_fsyncs: list[tuple[int, bool]] = []
        """(inode, is a directory) of each ``F_FULLFSYNC``."""

    def fcntl(self, fd: int, cmd: int, arg: int = 0, /) -> int:
        assert cmd == F_FULLFSYNC, f"unexpected fcntl command {cmd}"
        info = os.fstat(fd)
        self.full_fsyncs.append((info.st_ino, stat.S_ISDIR(info.st_mode)))
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))
        os.fsync(fd)  # Linux's stand-in: it has no F_FULLFSYNC
        return 0

    def flock(self, fd: int, operation: int, /) -> None:
        fcntl.flock(fd, operation)


def macos_layer(recorder: RecordingFcntl, platform: str = "darwin") -> OSLayer:
    """The OS layer as it is built on macOS (which has no ``syncfs``), over ``recorder``."""

    class MacOSLayer(OSLayer):
        fsync = staticmethod(durable_fsync(platform, recorder))
        libc_syncfs = None

    return MacOSLayer()


async def test_linux_flushes_with_plain_fsync(tmp_path: Path) -> None:
    recorder = RecordingFcntl()
    backend = FileBackend(tmp_path / "data", os_layer=macos_layer(recorder, platform="linux"))
    await PersistBase("signal", backend=backend).write_value("BTC", {"n": 1})
    assert recorder.full_fsyncs == []
    await backend.aclose()


async def test_macos_durable_write_flushes_the_file_and_its_directory_with_full_fsync(
    tmp_path: Path,
) -> None:
    recorder = RecordingFcntl()
    # history=None: the durable replace (a root with history journals a plain write,
    # and the journal's flush is the next test's).
    backend = FileBackend(tmp_path / "data", os_layer=macos_layer(recorder), history=None)
    store = PersistBase("signal", backend=backend)
    await store.write_value("BTC", {"price": 1})
    await store.write_value("BTC", {"price": 2})  # a replace of an existing file
    target = Path(backend.path_of("signal/BTC"))
    assert json.loads(target.read_bytes()) == {"price": 2}
    flushed = {inode for inode, _ in recorder.full_fsyncs}
    # The temp file, flushed before the rename, is the target's inode now.
    assert target.stat().st_ino in flushed
    assert target.parent.stat().st_ino in flushed, "the directory's rename was not flushed"
    await backend.aclose()


async def test_macos_commit_and_checkpoint_flush_with_full_fsync(tmp_path: Path) -> None:
    recorder = RecordingFcntl()
    root = tmp_path / "data"
    backend = FileBackend(root, os_layer=macos_layer(recorder))
    async with transaction(backend):
        await PersistBase("signal", backend=backend).write_value("BTC", {"n": 1})
        await PersistBase("risk", backend=backend).write_value("main", {"n": 1})
    journals = {p.stat().st_ino for p in (root / ".journal").rglob("*") if p.is_file()}
    assert journals & {inode for inode, is_dir in recorder.full_fsyncs if not is_dir}, (
        "the commit journal was not flushed with F_FULLFSYNC"
    )
    # A checkpoint flushes the whole file system: macOS has no syncfs, so it
    # syncs and then F_FULLFSYNCs the root (which empties the drive's cache).
    recorder.full_fsyncs.clear()
    await backend.checkpoint()
    assert (root.stat().st_ino, True) in recorder.full_fsyncs
    await backend.aclose()


async def test_macos_falls_back_to_fsync_where_the_file_system_cannot_full_fsync(
    tmp_path: Path,
) -> None:
    recorder = RecordingFcntl(error=errno.ENOTSUP)
    backend = FileBackend(tmp_path / "data", os_layer=macos_layer(recorder))
    await PersistBase("signal", backend=backend).write_value("BTC", {"n": 1})
    assert recorder.full_fsyncs, "F_FULLFSYNC was not tried"
    assert json.loads(Path(backend.path_of("signal/BTC")).read_bytes()) == {"n": 1}
    await backend.aclose()


async def test_macos_failed_full_fsync_fails_the_write_and_keeps_the_old_value(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    recorder = RecordingFcntl()
    # history=None: the durable replace, which fails before the rename. (With history
    # the write is a journal commit, whose failed fsync is DurabilityUnknownError.)
    backend = FileBackend(root, os_layer=macos_layer(recorder), history=None)
    store = PersistBase("signal", backend=backend)
    await store.write_value("BTC", {"n": 1})
    recorder.error = errno.EIO
    with pytest.raises(WriteFailedError):
        await store.write_value("BTC", {"n": 2})
    assert json.loads(Path(backend.path_of("signal/BTC")).read_bytes()) == {"n": 1}
    assert not [p for p in (root / "signal").iterdir() if p.name.startswith(".")]
    await backend.aclose()

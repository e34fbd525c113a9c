"""One instance only: an ``flock`` on a lock file that names its holder.

``flock`` belongs to the open file, so the kernel drops it when the holder
exits for any reason, ``kill -9`` included: there is never a stale lock to
clean up by hand, and no timeout to guess. The lock file itself is never
deleted (deleting it would let two processes lock two different files); it
only holds a description of the current holder, for the error message.

With ``root`` (a live session passes its data root), the lock file is reached
without following any symbolic link below the root: a ``.locks`` folder or a
lock file that is a link is refused with
:class:`~persistkit.errors.ForeignSymlinkError`, so taking a lock never
creates, truncates or writes a file outside the root.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from types import TracebackType
from typing import Self

from persistkit.backends.confine import ConfinedOS
from persistkit.backends.oslayer import REAL_OS
from persistkit.errors import InstanceLockedError

__all__ = ["InstanceLock", "held_locks", "read_holder"]


def read_holder(path: str) -> dict[str, object]:
    """What the lock file at ``path`` says about its holder (``{}`` when nothing)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return {}
    try:
        return _holder_in(fd)
    finally:
        os.close(fd)


def _holder_in(fd: int) -> dict[str, object]:
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data) if data else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def held_locks(directory: str) -> list[str]:
    """The files under ``directory`` some process holds a lock on, found without locking.

    Read from ``/proc/locks``: taking a lock to test it, even a shared one for
    a moment, could make a bot starting at that moment believe it is already
    running. Empty where ``/proc/locks`` does not exist.
    """
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    by_inode = {}
    for entry in entries:
        if entry.is_file(follow_symlinks=False):
            info = entry.stat(follow_symlinks=False)
            by_inode[(os.major(info.st_dev), os.minor(info.st_dev), info.st_ino)] = entry.path
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    held = set()
    for line in lines:
        fields = line.split()
        # "1: FLOCK ADVISORY WRITE 1234 08:01:5678 0 EOF"; blocked waiters have "->".
        if len(fields) < 6 or fields[1] == "->":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
        except ValueError:
            continue
        if key in by_inode:
            held.add(by_inode[key])
    return sorted(held)


class InstanceLock:
    """An exclusive, non-blocking ``flock`` on ``path``; the holder is written into the file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        purpose: str = "",
        root: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.purpose = purpose
        self.root = None if root is None else os.path.abspath(os.fspath(root))
        """Below this folder, no symbolic link is followed on the way to the lock file."""
        self._fd: int | None = None

    def __repr__(self) -> str:
        state = "held" if self._fd is not None else "free"
        return f"InstanceLock({self.path!r}, {state})"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`InstanceLockedError` naming the holder."""
        if self._fd is not None:
            return
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_in(fd)
            os.close(fd)
            described = ", ".join(f"{key} {value}" for key, value in holder.items()) or "unknown"
            raise InstanceLockedError(
                f"{self.purpose or self.path} is already running ({described}); "
                f"lock file {self.path}",
                holder=holder,
            ) from None
        except BaseException:
            os.close(fd)
            raise
        holder_info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        # Informational only, so not fsynced: after a crash the flock is gone anyway.
        data = json.dumps(holder_info).encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        self._fd = fd

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        root = self.root
        relative = None if root is None else os.path.relpath(self.path, root)
        if root is None or relative is None or relative.startswith(".."):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            return os.open(self.path, flags, 0o644)
        os.makedirs(root, exist_ok=True)  # the root itself may be a link
        real_root = os.path.realpath(root)
        confined = ConfinedOS(REAL_OS, real_root)
        directory, name = os.path.split(relative)
        dir_fd = confined.open_dir(
            f"{real_root}/{directory}" if directory else real_root, create=True
        )
        try:
            return confined.open(name, flags, 0o644, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def release(self) -> None:
        """Drop the lock (closing the file releases the flock)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)  # no holder to name any more
            finally:
                os.close(fd)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

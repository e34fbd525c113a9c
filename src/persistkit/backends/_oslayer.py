"""Every system call the file backend makes, behind one small object.

The reliability suite swaps :class:`OSLayer` for one that injects errors or
simulates a power cut, so nothing in :mod:`persistkit.backends._file` may call
``os`` directly. The default is the real ``os`` module, bound once.

A file backend wraps its layer in :class:`persistkit.backends._confine.ConfinedOS`,
which keeps every call that takes a path beneath the root; a method taking a
path that is added here must be confined there too.

Platforms. Importing this module never fails: where there is no ``fcntl``
(Windows) the file backend refuses to start with
:class:`~persistkit.errors.UnsupportedPlatformError` (its locks are ``flock``),
while the memory, Redis and S3 backends work. On macOS ``fsync(2)`` leaves the
data in the drive's volatile cache, so the durable flush there is
``fcntl(fd, F_FULLFSYNC)`` (:func:`durable_fsync` picks it by platform).
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from persistkit import _metrics
from persistkit.errors import UnsupportedPlatformError

__all__ = [
    "F_FULLFSYNC",
    "LOCK_EX",
    "LOCK_NB",
    "LOCK_UN",
    "O_CLOEXEC",
    "O_DIRECTORY",
    "O_NOFOLLOW",
    "O_NONBLOCK",
    "REAL_OS",
    "FcntlOps",
    "OSLayer",
    "durable_fsync",
    "fcntl_ops",
    "require_posix_locks",
]


class FcntlOps(Protocol):
    """The part of the ``fcntl`` module the OS layer uses (a test may pass a recorder)."""

    def fcntl(self, fd: int, cmd: int, arg: int = 0, /) -> int: ...

    def flock(self, fd: int, operation: int, /) -> None: ...


fcntl_ops: FcntlOps | None
"""The real ``fcntl`` module, or ``None`` where the platform has none (Windows)."""
try:
    import fcntl

    fcntl_ops = fcntl
except ImportError:
    fcntl_ops = None

# The POSIX values, also where fcntl is missing (so that modules using them import).
LOCK_EX = 2
LOCK_NB = 4
LOCK_UN = 8
# Flags Windows lacks: 0 there (the file backend refuses to start on it anyway).
O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
O_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)
O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
O_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)
F_FULLFSYNC = 51
"""``<sys/fcntl.h>`` on macOS; Python's ``fcntl`` module defines it only there."""

# A file system that cannot do F_FULLFSYNC (some network and FUSE mounts) says so
# with one of these before flushing anything; fsync is then the best there is.
# Any other error (EIO ...) is a failed flush and is raised, never retried.
_FULLFSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.ENOTTY})


def durable_fsync(platform: str, ops: FcntlOps | None) -> Callable[[int], None]:
    """The call that makes a descriptor's data durable on ``platform``.

    Each call counts in the ``persistkit.fsyncs`` metric while metrics are on.
    ``os.fsync`` everywhere but macOS (``"darwin"``), where it is
    ``ops.fcntl(fd, F_FULLFSYNC)``. ``platform`` and ``ops`` are parameters so
    that a test on Linux can take the macOS path with a recording ``ops``.
    """
    if platform != "darwin" or ops is None:

        def fsync(fd: int) -> None:
            recorder = _metrics.recorder
            if recorder is not None:
                recorder.fsyncs.add(1, _metrics.FSYNC)
            os.fsync(fd)

        return fsync
    full_fsync_ops = ops

    def full_fsync(fd: int) -> None:
        recorder = _metrics.recorder
        if recorder is not None:
            recorder.fsyncs.add(1, _metrics.FSYNC)
        try:
            full_fsync_ops.fcntl(fd, F_FULLFSYNC)
        except OSError as exc:
            if exc.errno not in _FULLFSYNC_UNSUPPORTED:
                raise
            os.fsync(fd)

    return full_fsync


def require_posix_locks(what: str) -> None:
    """Raise :class:`UnsupportedPlatformError` unless this platform has ``flock`` (POSIX)."""
    if fcntl_ops is None:
        raise UnsupportedPlatformError(
            f"{what} needs POSIX file locks (fcntl.flock), which {sys.platform} does not "
            "have; use the memory, Redis or S3 backend here (or run under Linux/WSL)"
        )


def _posix_only(*args: object) -> None:
    require_posix_locks("the file backend")


class OSLayer:
    """The system calls of the file backend; subclass to inject faults."""

    open = staticmethod(os.open)
    close = staticmethod(os.close)
    read = staticmethod(os.read)
    # POSIX-only calls (not on Windows): looked up so that the import works without them.
    pread = staticmethod(getattr(os, "pread", _posix_only))
    fchmod = staticmethod(getattr(os, "fchmod", _posix_only))
    write = staticmethod(os.write)
    fsync = staticmethod(durable_fsync(sys.platform, fcntl_ops))
    fstat = staticmethod(os.fstat)
    stat = staticmethod(os.stat)
    replace = staticmethod(os.replace)
    unlink = staticmethod(os.unlink)
    mkdir = staticmethod(os.mkdir)
    rmdir = staticmethod(os.rmdir)

    def scandir(self, path: str | int) -> os._ScandirIterator[str]:
        """Entries of a directory given by path or by descriptor (duplicated, not consumed)."""
        return os.scandir(path)

    def realpath(self, path: str) -> str:
        """Resolve the root once, at construction (the root itself may be a symbolic link)."""
        return os.path.realpath(path)

    flock = staticmethod(_posix_only if fcntl_ops is None else fcntl_ops.flock)
    ftruncate = staticmethod(os.ftruncate)

    libc_syncfs: ClassVar[Callable[[int], int] | None]
    """``syncfs(2)`` from the C library, or ``None`` where there is none (macOS)."""

    libc_fallocate: ClassVar[Callable[[int, int, int, int], int] | None]
    """``fallocate(2)`` from the C library, or ``None`` where there is none (macOS)."""

    def reserve(self, fd: int, offset: int, length: int) -> None:
        """Allocate ``length`` bytes at ``offset`` without changing the file's size.

        Writing into them then cannot run out of space, so a full disk refuses
        an append before any byte of it lands. Where the call or the file
        system lacks it (macOS, some network file systems), nothing is
        reserved: the append itself meets a full disk then.
        """
        fallocate = type(self).libc_fallocate
        if fallocate is None:
            return
        if fallocate(fd, _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
            code = ctypes.get_errno()
            if code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return
            raise OSError(code, os.strerror(code))

    def syncfs(self, fd: int) -> None:
        """Flush the whole file system holding ``fd`` (one call instead of an fsync per file)."""
        syncfs = type(self).libc_syncfs
        if syncfs is None:
            # Flush every file system instead, then the descriptor's own durable
            # flush: on macOS sync() leaves the drive's cache, F_FULLFSYNC empties it.
            os.sync()
            self.fsync(fd)
            return
        recorder = _metrics.recorder
        if recorder is not None:
            recorder.fsyncs.add(1, _metrics.SYNCFS)
        if syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))


def _libc_function(name: str, argtypes: list[Any]) -> Callable[..., int] | None:
    """``name`` from the C library, returning an ``int``; ``None`` where there is none."""
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (AttributeError, OSError, TypeError):  # TypeError: Windows has no CDLL(None)
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    found: Callable[..., int] = function
    return found


_FALLOC_FL_KEEP_SIZE = 1
OSLayer.libc_syncfs = _libc_function("syncfs", [ctypes.c_int])
OSLayer.libc_fallocate = _libc_function(
    "fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
)


REAL_OS = OSLayer()

"""Every system call the file backend makes, behind one small object.

The reliability suite swaps :class:`OSLayer` for one that injects errors or
simulates a power cut, so nothing in :mod:`persistkit.backends.file` may call
``os`` directly. The default is the real ``os`` module, bound once.

A file backend wraps its layer in :class:`persistkit.backends.confine.ConfinedOS`,
which keeps every call that takes a path beneath the root; a method taking a
path that is added here must be confined there too.
"""

from __future__ import annotations

import ctypes
import fcntl
import os

__all__ = ["REAL_OS", "OSLayer"]


class OSLayer:
    """The system calls of the file backend; subclass to inject faults."""

    open = staticmethod(os.open)
    close = staticmethod(os.close)
    read = staticmethod(os.read)
    pread = staticmethod(os.pread)
    write = staticmethod(os.write)
    fsync = staticmethod(os.fsync)
    fstat = staticmethod(os.fstat)
    stat = staticmethod(os.stat)
    fchmod = staticmethod(os.fchmod)
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

    flock = staticmethod(fcntl.flock)
    ftruncate = staticmethod(os.ftruncate)

    def syncfs(self, fd: int) -> None:
        """Flush the whole file system holding ``fd`` (one call instead of an fsync per file)."""
        if _libc_syncfs is None:
            os.sync()  # no syncfs(2) here: flush every file system instead
            return
        if _libc_syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))


def _find_syncfs() -> ctypes._NamedFuncPointer | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_libc_syncfs = _find_syncfs()


REAL_OS = OSLayer()

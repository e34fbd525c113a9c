"""A simulated file system that knows which bytes and entries would survive a power cut.

:class:`SimFS` implements the :class:`persistkit.backends._oslayer.OSLayer`
interface (same method names and signatures, ``dir_fd=`` forms and ``flock``
included), so a :class:`~persistkit.backends._file.FileBackend` runs on it
unchanged. Every mutation is appended to a log and replayed to build the disk
states a power cut could leave:

- file data, size (``ftruncate``) and mode become durable only when the file
  itself is fsynced; ``O_APPEND`` writes land at the current end of the file;
- ``syncfs`` makes everything done so far durable, data and entries alike;
- a directory entry (create, mkdir, rename, unlink) becomes durable only when
  its directory is fsynced (a rename: both directories);
- un-fsynced operations may still have reached the disk, but only in the order
  they were issued; the last one may be half-written (a torn write).

So the possible states after a crash are: the durable operations plus every
prefix of the others, plus that prefix with half of the next write. The model
is stricter than ext4 (which journals a rename as a whole), on purpose: code
correct here is correct on any POSIX file system.

``crash_at=k`` lets exactly ``k`` calls complete and makes every later call
raise :class:`SimulatedCrash` (a ``BaseException``, so no ``except OSError`` or
``except Exception`` in the code under test can swallow it): the process is
gone from that point on.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import stat as stat_module
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Literal

from persistkit.backends._oslayer import OSLayer

__all__ = ["DiskState", "SimFS", "SimulatedCrash"]

Kind = Literal["file", "dir"]
ROOT_INO = 1
UMASK = 0o022
_devices = itertools.count(1)


class SimulatedCrash(BaseException):
    """The simulated machine lost power: nothing after this call ran."""


@dataclass(slots=True)
class Inode:
    kind: Kind
    mode: int
    data: bytearray = field(default_factory=bytearray)
    entries: dict[str, int] = field(default_factory=dict)

    def copy(self) -> Inode:
        return Inode(self.kind, self.mode, bytearray(self.data), dict(self.entries))


@dataclass(slots=True)
class Op:
    """One mutation, replayable on a copy of the durable state."""

    kind: str  # alloc, write, truncate, chmod, link, unlink, rename
    ino: int
    offset: int = 0
    payload: bytes = b""
    dir_ino: int = 0
    name: str = ""
    dst_dir_ino: int = 0
    dst_name: str = ""
    inode_kind: Kind = "file"
    pending_dirs: set[int] = field(default_factory=set)
    durable: bool = False

    def is_data_of(self, ino: int) -> bool:
        return self.kind in ("write", "truncate", "chmod") and self.ino == ino


class DiskState:
    """What is on the disk: inodes by number, the root directory is inode 1."""

    def __init__(self, inodes: dict[int, Inode] | None = None) -> None:
        self.inodes: dict[int, Inode] = inodes or {ROOT_INO: Inode("dir", 0o755)}

    def copy(self) -> DiskState:
        return DiskState({ino: inode.copy() for ino, inode in self.inodes.items()})

    def inode(self, ino: int, kind: Kind = "file", mode: int = 0o644) -> Inode:
        found = self.inodes.get(ino)
        if found is None:
            found = self.inodes[ino] = Inode(kind, mode)
        return found

    def apply(self, op: Op, *, torn: bool = False) -> None:
        if op.kind == "alloc":
            self.inode(op.ino, op.inode_kind, op.offset)
        elif op.kind == "write":
            payload = op.payload[: len(op.payload) // 2] if torn else op.payload
            data = self.inode(op.ino).data
            if len(data) < op.offset:
                data.extend(bytes(op.offset - len(data)))
            data[op.offset : op.offset + len(payload)] = payload
        elif op.kind == "truncate":
            data = self.inode(op.ino).data
            del data[op.offset :]
            data.extend(bytes(max(0, op.offset - len(data))))
        elif op.kind == "chmod":
            self.inode(op.ino).mode = op.offset
        elif op.kind == "link":
            self.inode(op.dir_ino, "dir").entries[op.name] = op.ino
        elif op.kind == "unlink":
            entries = self.inode(op.dir_ino, "dir").entries
            if entries.get(op.name) == op.ino:
                del entries[op.name]
        elif op.kind == "rename":
            source = self.inode(op.dir_ino, "dir").entries
            if source.get(op.name) == op.ino:
                del source[op.name]
            self.inode(op.dst_dir_ino, "dir").entries[op.dst_name] = op.ino
        else:  # pragma: no cover - a typo in this module
            raise AssertionError(op.kind)

    def files(self) -> dict[str, bytes]:
        """Every reachable regular file by path (``a/b.json``), from the root."""
        found: dict[str, bytes] = {}

        def walk(ino: int, prefix: str) -> None:
            for name, child in sorted(self.inodes[ino].entries.items()):
                inode = self.inodes[child]
                path = f"{prefix}{name}"
                if inode.kind == "dir":
                    found[path + "/"] = b""
                    walk(child, path + "/")
                else:
                    found[path] = bytes(inode.data)

        walk(ROOT_INO, "")
        return found

    def fingerprint(self) -> str:
        digest = hashlib.blake2b(digest_size=16)
        for path, data in self.files().items():
            digest.update(path.encode() + b"\0" + data + b"\0")
        return digest.hexdigest()


@dataclass(slots=True)
class _Open:
    ino: int
    flags: int
    offset: int = 0


class _Entry:
    """What :func:`os.scandir` yields, for the attributes the file backend uses."""

    def __init__(self, name: str, path: str, kind: Kind) -> None:
        self.name = name
        self.path = path
        self._kind = kind

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return self._kind == "dir"

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return self._kind == "file"

    def is_symlink(self) -> bool:
        return False  # the simulation has no symbolic links


class _Scandir:
    def __init__(self, entries: list[_Entry]) -> None:
        self._entries = entries

    def __iter__(self) -> Iterator[_Entry]:
        return iter(self._entries)

    def __enter__(self) -> _Scandir:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def close(self) -> None:
        return None


def _error(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


class SimFS(OSLayer):
    """An in-memory file system that records what an fsync made durable.

    ``crash_at``: the number of calls allowed to complete before the power is
    cut (``None``: never). ``short_writes``: at most that many bytes per
    ``write`` call, to exercise the caller's loop on short writes.
    """

    def __init__(
        self,
        state: DiskState | None = None,
        *,
        crash_at: int | None = None,
        short_writes: int | None = None,
    ) -> None:
        self._base = (state or DiskState()).copy()
        self._live = self._base.copy()
        self._log: list[Op] = []
        self._fds: dict[int, _Open] = {}
        self._next_fd = 1000
        self._next_ino = max(self._live.inodes) + 1
        self._locks: dict[int, int] = {}  # inode -> fd holding its flock
        self._mutex = threading.RLock()
        # Each instance is a machine of its own to anything keyed by (st_dev, st_ino).
        self._dev = next(_devices)
        self.crash_at = crash_at
        self.short_writes = short_writes
        self.calls = 0
        self.crashed = False

    # -- crash control -------------------------------------------------------------

    def _tick(self) -> None:
        if self.crashed or (self.crash_at is not None and self.calls >= self.crash_at):
            self.crashed = True
            raise SimulatedCrash(f"power cut after {self.calls} calls")
        self.calls += 1

    def _record(self, op: Op) -> None:
        self._live.apply(op)
        self._log.append(op)

    def durable_state(self) -> DiskState:
        """Only what an fsync made durable."""
        return self.possible_states(include_unsynced=False)[0]

    def possible_states(self, *, include_unsynced: bool = True) -> list[DiskState]:
        """Distinct disk states a power cut right now could leave."""
        pending = [index for index, op in enumerate(self._log) if not op.durable]
        cuts: list[tuple[int, bool]] = [(0, False)]
        if include_unsynced:
            for count in range(1, len(pending) + 1):
                if self._log[pending[count - 1]].kind == "write":
                    cuts.append((count - 1, True))  # the next write reached the disk halfway
                cuts.append((count, False))
        states: dict[str, DiskState] = {}
        for count, torn in cuts:
            allowed = set(pending[:count])
            torn_index = pending[count] if torn else -1
            state = self._base.copy()
            for index, op in enumerate(self._log):
                if op.durable or index in allowed:
                    state.apply(op)
                elif index == torn_index:
                    state.apply(op, torn=True)
            states.setdefault(state.fingerprint(), state)
        return list(states.values())

    def live_state(self) -> DiskState:
        """What a process on this machine sees now (the page cache)."""
        return self._live.copy()

    def after_process_crash(self) -> SimFS:
        """The same machine after the process died (``kill -9``) without a power cut.

        The page cache survives: what the dead process did stays visible, and
        what it did not fsync is still not durable until someone fsyncs it.
        Its file descriptors and locks are gone.
        """
        with self._mutex:
            sim = SimFS(short_writes=self.short_writes)
            sim._base = self._base
            sim._live = self._live.copy()
            sim._log = [replace(op, pending_dirs=set(op.pending_dirs)) for op in self._log]
            sim._next_fd = self._next_fd
            sim._next_ino = self._next_ino
            return sim

    # -- paths -----------------------------------------------------------------------

    def _lookup_dir(self, path: str, dir_fd: int | None) -> tuple[int, str]:
        """Inode of the parent directory of ``path``, and its last component."""
        if path.startswith("/"):
            ino = ROOT_INO
        elif dir_fd is not None:
            ino = self._fd(dir_fd).ino
        else:
            raise _error(errno.EINVAL, f"relative path {path!r} without dir_fd in simulation")
        parts = [part for part in path.split("/") if part and part != "."]
        if not parts:
            return ino, "."
        for part in parts[:-1]:
            inode = self._live.inodes[ino]
            if inode.kind != "dir":
                raise _error(errno.ENOTDIR, path)
            if part == "..":
                raise _error(errno.EINVAL, f"'..' in simulated path {path!r}")
            child = inode.entries.get(part)
            if child is None:
                raise _error(errno.ENOENT, path)
            ino = child
        if self._live.inodes[ino].kind != "dir":
            raise _error(errno.ENOTDIR, path)
        return ino, parts[-1]

    def _resolve(self, path: str, dir_fd: int | None) -> int | None:
        parent, name = self._lookup_dir(path, dir_fd)
        if name == ".":
            return parent
        return self._live.inodes[parent].entries.get(name)

    def _fd(self, fd: int) -> _Open:
        found = self._fds.get(fd)
        if found is None:
            raise _error(errno.EBADF, f"fd {fd}")
        return found

    def _stat_of(self, ino: int) -> os.stat_result:
        inode = self._live.inodes[ino]
        kind = stat_module.S_IFDIR if inode.kind == "dir" else stat_module.S_IFREG
        size = len(inode.data) if inode.kind == "file" else 4096
        # The link count tells a reader that a file it holds open was replaced.
        links = (
            2
            if inode.kind == "dir"
            else sum(
                1
                for other in self._live.inodes.values()
                if other.kind == "dir"
                for child in other.entries.values()
                if child == ino
            )
        )
        return os.stat_result((kind | inode.mode, ino, self._dev, links, 0, 0, size, 0, 0, 0))

    def _new_inode(self, parent: int, name: str, kind: Kind, mode: int) -> int:
        ino = self._next_ino
        self._next_ino += 1
        # Allocation alone is harmless to replay (unreachable until linked), so durable.
        self._record(Op("alloc", ino, offset=mode & ~UMASK, inode_kind=kind, durable=True))
        self._record(Op("link", ino, dir_ino=parent, name=name))
        return ino

    # -- the OSLayer interface ----------------------------------------------------------
    # Each ``# type: ignore[override]`` below: OSLayer binds the ``os`` functions
    # as staticmethods; these are instance methods with the same call signature.

    def open(self, path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:  # type: ignore[override]
        with self._mutex:
            self._tick()
            parent, name = self._lookup_dir(path, dir_fd)
            ino = parent if name == "." else self._live.inodes[parent].entries.get(name)
            if ino is not None and flags & os.O_CREAT and flags & os.O_EXCL:
                raise _error(errno.EEXIST, path)
            if ino is None:
                if not flags & os.O_CREAT:
                    raise _error(errno.ENOENT, path)
                ino = self._new_inode(parent, name, "file", mode)
            inode = self._live.inodes[ino]
            if flags & os.O_DIRECTORY and inode.kind != "dir":
                raise _error(errno.ENOTDIR, path)
            if inode.kind == "dir" and flags & (os.O_WRONLY | os.O_RDWR):
                raise _error(errno.EISDIR, path)
            if flags & os.O_TRUNC and inode.kind == "file":
                self._record(Op("truncate", ino, offset=0))
            fd = self._next_fd
            self._next_fd += 1
            self._fds[fd] = _Open(ino, flags)
            return fd

    def close(self, fd: int) -> None:  # type: ignore[override]
        with self._mutex:
            self._tick()
            opened = self._fds.pop(fd, None)
            if opened is None:
                raise _error(errno.EBADF, f"fd {fd}")
            if self._locks.get(opened.ino) == fd:
                del self._locks[opened.ino]

    def read(self, fd: int, length: int) -> bytes:  # type: ignore[override]
        with self._mutex:
            self._tick()
            opened = self._fd(fd)
            inode = self._live.inodes[opened.ino]
            if inode.kind == "dir":
                raise _error(errno.EISDIR, f"fd {fd}")
            chunk = bytes(inode.data[opened.offset : opened.offset + length])
            opened.offset += len(chunk)
            return chunk

    def pread(self, fd: int, length: int, offset: int) -> bytes:  # type: ignore[override]
        with self._mutex:
            self._tick()
            opened = self._fd(fd)
            inode = self._live.inodes[opened.ino]
            if inode.kind == "dir":
                raise _error(errno.EISDIR, f"fd {fd}")
            return bytes(inode.data[offset : offset + length])

    def write(self, fd: int, data: Any) -> int:  # type: ignore[override]
        with self._mutex:
            self._tick()
            opened = self._fd(fd)
            if not opened.flags & (os.O_WRONLY | os.O_RDWR):
                raise _error(errno.EBADF, f"fd {fd} is not open for writing")
            payload = bytes(data)
            if opened.flags & os.O_APPEND:
                # Every write lands at the end, wherever an ftruncate left it.
                opened.offset = len(self._live.inodes[opened.ino].data)
            if self.short_writes is not None:
                payload = payload[: self.short_writes]
            self._record(Op("write", opened.ino, offset=opened.offset, payload=payload))
            opened.offset += len(payload)
            return len(payload)

    def fsync(self, fd: Any) -> None:  # type: ignore[override]
        with self._mutex:
            self._tick()
            ino = self._fd(fd).ino
            if self._live.inodes[ino].kind == "file":
                for op in self._log:
                    if op.is_data_of(ino):
                        op.durable = True
                return
            for op in self._log:
                if op.durable:
                    continue
                if op.kind in ("link", "unlink") and op.dir_ino == ino:
                    op.durable = True
                elif op.kind == "rename" and ino in op.pending_dirs:
                    op.pending_dirs.discard(ino)
                    op.durable = not op.pending_dirs

    def ftruncate(self, fd: int, length: int) -> None:  # type: ignore[override]
        """A size change is file data: durable after the file's own fsync (or a syncfs)."""
        with self._mutex:
            self._tick()
            opened = self._fd(fd)
            if not opened.flags & (os.O_WRONLY | os.O_RDWR):
                raise _error(errno.EINVAL, f"fd {fd} is not open for writing")
            if self._live.inodes[opened.ino].kind != "file":
                raise _error(errno.EINVAL, f"fd {fd} is not a regular file")
            self._record(Op("truncate", opened.ino, offset=length))

    def reserve(self, fd: int, offset: int, length: int) -> None:
        """Space for a coming write: this disk never fills, so it is only a call (a crash point)."""
        with self._mutex:
            self._tick()
            self._fd(fd)

    def syncfs(self, fd: int) -> None:
        """Everything done on this file system so far becomes durable: data and entries."""
        with self._mutex:
            self._tick()
            self._fd(fd)
            for op in self._log:
                op.durable = True
                op.pending_dirs.clear()

    def fstat(self, fd: int) -> os.stat_result:  # type: ignore[override]
        with self._mutex:
            self._tick()
            return self._stat_of(self._fd(fd).ino)

    def stat(  # type: ignore[override]
        self, path: str, *, dir_fd: int | None = None, follow_symlinks: bool = True
    ) -> os.stat_result:
        with self._mutex:
            self._tick()
            ino = self._resolve(path, dir_fd)
            if ino is None:
                raise _error(errno.ENOENT, path)
            return self._stat_of(ino)

    def fchmod(self, fd: int, mode: int) -> None:  # type: ignore[override]
        with self._mutex:
            self._tick()
            self._record(Op("chmod", self._fd(fd).ino, offset=mode))

    def replace(  # type: ignore[override]
        self,
        src: str,
        dst: str,
        *,
        src_dir_fd: int | None = None,
        dst_dir_fd: int | None = None,
    ) -> None:
        with self._mutex:
            self._tick()
            src_parent, src_name = self._lookup_dir(src, src_dir_fd)
            dst_parent, dst_name = self._lookup_dir(dst, dst_dir_fd)
            ino = self._live.inodes[src_parent].entries.get(src_name)
            if ino is None:
                raise _error(errno.ENOENT, src)
            existing = self._live.inodes[dst_parent].entries.get(dst_name)
            if existing is not None and self._live.inodes[existing].kind == "dir":
                raise _error(errno.EISDIR, dst)
            self._record(
                Op(
                    "rename",
                    ino,
                    dir_ino=src_parent,
                    name=src_name,
                    dst_dir_ino=dst_parent,
                    dst_name=dst_name,
                    pending_dirs={src_parent, dst_parent},
                )
            )

    def unlink(self, path: str, *, dir_fd: int | None = None) -> None:  # type: ignore[override]
        self._remove(path, dir_fd, directory=False)

    def mkdir(self, path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:  # type: ignore[override]
        with self._mutex:
            self._tick()
            parent, name = self._lookup_dir(path, dir_fd)
            if name in self._live.inodes[parent].entries:
                raise _error(errno.EEXIST, path)
            self._new_inode(parent, name, "dir", mode)

    def rmdir(self, path: str, *, dir_fd: int | None = None) -> None:  # type: ignore[override]
        self._remove(path, dir_fd, directory=True)

    def _remove(self, path: str, dir_fd: int | None, *, directory: bool) -> None:
        with self._mutex:
            self._tick()
            parent, name = self._lookup_dir(path, dir_fd)
            ino = self._live.inodes[parent].entries.get(name)
            if ino is None:
                raise _error(errno.ENOENT, path)
            inode = self._live.inodes[ino]
            if (inode.kind == "dir") != directory:
                raise _error(errno.ENOTDIR if directory else errno.EISDIR, path)
            if inode.entries:
                raise _error(errno.ENOTEMPTY, path)
            self._record(Op("unlink", ino, dir_ino=parent, name=name))

    def realpath(self, path: str) -> str:
        """No symbolic links in the simulation: the path itself, normalised."""
        return os.path.normpath(path)

    def scandir(self, path: str | int) -> Any:
        with self._mutex:
            self._tick()
            if isinstance(path, int):  # a directory descriptor, as os.scandir takes
                ino: int | None = self._fd(path).ino
                path = ""
            else:
                ino = self._resolve(path, None)
            if ino is None:
                raise _error(errno.ENOENT, path)
            inode = self._live.inodes[ino]
            if inode.kind != "dir":
                raise _error(errno.ENOTDIR, path)
            return _Scandir(
                [
                    _Entry(name, f"{path.rstrip('/')}/{name}", self._live.inodes[child].kind)
                    for name, child in sorted(inode.entries.items())
                ]
            )

    def flock(self, fd: int, operation: int) -> None:  # type: ignore[override]
        import fcntl

        with self._mutex:
            self._tick()
            ino = self._fd(fd).ino
            if operation & fcntl.LOCK_UN:
                if self._locks.get(ino) == fd:
                    del self._locks[ino]
                return
            holder = self._locks.get(ino)
            if holder is not None and holder != fd:
                if operation & fcntl.LOCK_NB:
                    raise _error(errno.EWOULDBLOCK, f"fd {fd}")
                raise RuntimeError("simulated flock would block forever: one process, one thread")
            self._locks[ino] = fd

"""One instance only: locks that belong to an open file and name their holder.

Both kinds of lock here belong to an *open file description*, so the kernel
drops them when the holder exits for any reason, ``kill -9`` included: there is
never a stale lock to clean up by hand, and no timeout to guess. Lock files are
never deleted (deleting one would let two processes lock two different files).

- :class:`InstanceLock`: an ``flock`` on one file per lock.
- :class:`RangeLocks`: any number of named locks in ONE file, each a one-byte
  open-file-description range lock (Linux ``F_OFD_SETLK``) at an offset derived
  from the name's hash. A live session with 5,000 pairs holds one descriptor,
  not 5,000, so it runs under ``ulimit -n 1024``. Who holds which names is kept
  in a small holder file per session, for the error message.

With ``root`` (a live session passes its data root), the lock file is reached
without following any symbolic link below the root: a ``.locks`` folder or a
lock file that is a link is refused with
:class:`~persistkit.errors.ForeignSymlinkError`, so taking a lock never
creates, truncates or writes a file outside the root.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import socket
import struct
import time
import weakref
from collections.abc import Iterable
from types import TracebackType
from typing import Self

from persistkit.backends._confine import ConfinedOS
from persistkit.backends._oslayer import REAL_OS, require_posix_locks
from persistkit.errors import ForeignSymlinkError, InstanceLockedError, ResourceLimitError

try:
    import fcntl
    import resource
except ImportError:  # Windows: acquire() says the locks need POSIX; importing still works
    fcntl = None  # type: ignore[assignment]
    resource = None  # type: ignore[assignment]

__all__ = [
    "InstanceLock",
    "RangeLocks",
    "descriptor_limit_error",
    "held_locks",
    "read_holder",
    "session_holders",
]


def read_holder(path: str, *, limit: int | None = 4096) -> dict[str, object]:
    """What the lock or holder file at ``path`` says about its holder (``{}`` when nothing)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return {}
    try:
        return _holder_in(fd, limit)
    finally:
        os.close(fd)


def _holder_in(fd: int, limit: int | None = 4096) -> dict[str, object]:
    try:
        data = os.pread(fd, limit if limit is not None else os.fstat(fd).st_size, 0)
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


def open_confined(path: str, flags: int, root: str | None) -> int:
    """Open ``path`` (``O_CLOEXEC | O_NOFOLLOW`` added), its folders made as needed.

    Below ``root``, no symbolic link is followed on the way (a link raises
    :class:`~persistkit.errors.ForeignSymlinkError`); elsewhere only the last
    component is protected.
    """
    flags |= os.O_CLOEXEC | os.O_NOFOLLOW
    relative = None if root is None else os.path.relpath(path, root)
    if root is None or relative is None or relative.startswith(".."):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, flags, 0o644)
    os.makedirs(root, exist_ok=True)  # the root itself may be a link
    real_root = os.path.realpath(root)
    confined = ConfinedOS(REAL_OS, real_root)
    directory, name = os.path.split(relative)
    dir_fd = confined.open_dir(f"{real_root}/{directory}" if directory else real_root, create=True)
    try:
        return confined.open(name, flags, 0o644, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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

    def acquire(self) -> None:
        """Take the lock or raise :class:`InstanceLockedError` naming the holder."""
        if self._fd is not None:
            return
        require_posix_locks("an instance lock")
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
        _held.add(self)

    def _open(self) -> int:
        return open_confined(self.path, os.O_RDWR | os.O_CREAT, self.root)

    def release(self) -> None:
        """Drop the lock (closing the file releases the flock)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)  # no holder to name any more
            finally:
                os.close(fd)

    def _forget_after_fork(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
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


def _forget_inherited_locks() -> None:
    """In a forked child: close the copies of the parent's lock descriptors.

    A lock belongs to the open file description, which a fork shares: a child
    that kept its copy (a process pool's worker, say) would hold the parent's
    locks after the parent died, so a ``kill -9`` of the bot would leave it
    "alive" and its restart refused. Closing the child's copy leaves the
    parent's locks in place; the child never unlinks the parent's holder file.
    """
    for lock in list(_held):
        lock._forget_after_fork()


_held: weakref.WeakSet[InstanceLock | RangeLocks] = weakref.WeakSet()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_locks)


# -- many named locks in one file ----------------------------------------------------------

_F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
# struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
_FLOCK = struct.Struct("hhqqi4x")
_OFFSET_BITS = 62  # well inside off_t; a lock may lie past the end of the file


def descriptor_limit_error(exc: BaseException) -> ResourceLimitError | None:
    """A :class:`ResourceLimitError` naming ``ulimit -n`` when ``exc`` (or its cause) is EMFILE."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.EMFILE, errno.ENFILE):
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            which = "this process" if seen.errno == errno.EMFILE else "the system"
            error = ResourceLimitError(
                errno.EMFILE,
                f"{which} ran out of file descriptors (RLIMIT_NOFILE, ulimit -n: soft limit "
                f"{soft}, hard limit {hard}): {exc}; raise the limit (ulimit -n) or close "
                "descriptors the process leaks",
            )
            error.__cause__ = exc
            return error
        seen = seen.__cause__ or seen.__context__
    return None


def _offset(name: str) -> int:
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - _OFFSET_BITS)


def _range_lock(fd: int, command: int, kind: int, offset: int) -> int:
    """One ``F_OFD_*`` call on the byte at ``offset``; returns the ``l_type`` it reports."""
    answer = fcntl.fcntl(fd, command, _FLOCK.pack(kind, os.SEEK_SET, offset, 1, 0))
    return int(_FLOCK.unpack(answer)[0])


class RangeLocks:
    """Exclusive, non-blocking locks on ``names``, all in the one file ``path``.

    :meth:`acquire` takes every name or none, and raises
    :class:`InstanceLockedError` naming the holder (pid, host, since) of the
    first name another open file holds, in this process or another. The holder
    files live in ``{dirname(path)}/holders/``: one per session, removed when it
    releases; one left by a killed session is recognised (its liveness byte is
    free) and removed by the next session that starts.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        names: Iterable[str],
        *,
        root: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.root = None if root is None else os.path.abspath(os.fspath(root))
        """Below this folder, no symbolic link is followed to the lock or holder files."""
        self.names = sorted(set(names))
        self._holders = os.path.join(os.path.dirname(self.path), "holders")
        self._fd: int | None = None
        self._holder_file: str | None = None

    def __repr__(self) -> str:
        state = "held" if self._fd is not None else "free"
        return f"RangeLocks({self.path!r}, {len(self.names)} names, {state})"

    def acquire(self, *, purpose: str = "live session") -> None:
        """Take every lock or raise :class:`InstanceLockedError` naming the holder."""
        if self._fd is not None:
            return
        require_posix_locks("a live session's locks")
        fd = open_confined(self.path, os.O_RDWR | os.O_CREAT, self.root)
        self._fd = fd
        _held.add(self)
        try:
            token = secrets.token_hex(8)
            # The liveness byte first: a holder file whose byte is free is stale.
            _range_lock(fd, _F_OFD_SETLK, fcntl.F_WRLCK, _offset(f"session:{token}"))
            self._remove_stale_holders()
            holder = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "token": token,
                "locks": self.names,
            }
            holder_file = os.path.join(self._holders, f"{token}.json")
            # Informational only, so not fsynced: after a crash the locks are gone anyway.
            holder_fd = open_confined(holder_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.root)
            try:
                os.write(holder_fd, json.dumps(holder).encode())
            finally:
                os.close(holder_fd)
            self._holder_file = holder_file
            for name in self.names:
                try:
                    _range_lock(fd, _F_OFD_SETLK, fcntl.F_WRLCK, _offset(name))
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    found = self._holder_of(name)
                    described = (
                        ", ".join(f"{key} {found[key]}" for key in ("pid", "host", "since"))
                        if found
                        else "unknown"
                    )
                    raise InstanceLockedError(
                        f"{purpose} {name} is already running ({described}); lock file {self.path}",
                        holder={k: v for k, v in found.items() if k != "locks"},
                    ) from None
        except BaseException:
            self.release()
            raise

    def _holder_files(self) -> list[tuple[str, dict[str, object]]]:
        found = []
        try:
            dir_fd = open_confined(self._holders, os.O_RDONLY | os.O_DIRECTORY, self.root)
        except FileNotFoundError:
            return []
        try:
            for entry in os.listdir(dir_fd):
                if not entry.endswith(".json"):
                    continue
                try:
                    fd = os.open(entry, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dir_fd)
                except OSError:
                    continue  # removed meanwhile, or a link: never read through
                try:
                    found.append((os.path.join(self._holders, entry), _holder_in(fd, None)))
                finally:
                    os.close(fd)
        finally:
            os.close(dir_fd)
        return found

    def _is_live(self, holder: dict[str, object]) -> bool:
        """True when another open file holds ``holder``'s liveness byte."""
        assert self._fd is not None
        offset = _offset(f"session:{holder.get('token')}")
        return _range_lock(self._fd, _F_OFD_GETLK, fcntl.F_WRLCK, offset) != fcntl.F_UNLCK

    def _holder_of(self, name: str) -> dict[str, object]:
        for _, holder in self._holder_files():
            locks = holder.get("locks")
            if isinstance(locks, list) and name in locks and self._is_live(holder):
                return holder
        return {}

    def _remove_stale_holders(self) -> None:
        for path, holder in self._holder_files():
            if holder.get("token") and not self._is_live(holder):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    def _forget_after_fork(self) -> None:
        self._holder_file = None  # the parent's, named by the parent's pid
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def release(self) -> None:
        """Drop every lock (closing the file releases them) and remove the holder file."""
        holder_file, self._holder_file = self._holder_file, None
        fd, self._fd = self._fd, None
        try:
            if holder_file is not None:
                try:
                    os.unlink(holder_file)  # before the locks go: never a live lock unnamed
                except FileNotFoundError:
                    pass
        finally:
            if fd is not None:
                os.close(fd)


# -- looking, for the command line ---------------------------------------------------------


def session_holders(lock_file: str) -> list[dict[str, object]]:
    """Every holder file of the live sessions locking in ``lock_file``, and whether each runs.

    ``lock_file`` is the :class:`RangeLocks` file (a root's
    ``.locks/sessions.lock``); its holder files are in ``holders/`` beside it.
    Each holder as its file says (pid, host, since, token, locks), with
    ``"file"`` (its path) and ``"alive"``: ``True`` while its session holds its
    liveness byte, ``False`` once that session is gone without removing its
    file (killed; the next start removes it), ``None`` where this cannot be
    told from here (written on another host).

    Strictly read-only, unlike :class:`RangeLocks`: nothing is created, locked
    or written (the liveness byte is asked with ``F_OFD_GETLK``, which takes
    nothing), so looking can never make a starting bot fail. A lock folder,
    holder folder or lock file that is a symbolic link is not looked through:
    :class:`~persistkit.errors.ForeignSymlinkError`.
    """
    lock_dir, lock_name = os.path.split(lock_file)
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        locks_fd = _open_unlinked(None, lock_dir, flags | os.O_DIRECTORY)
    except FileNotFoundError:
        return []
    try:
        try:
            holders_fd = _open_unlinked(locks_fd, "holders", flags | os.O_DIRECTORY, lock_dir)
        except FileNotFoundError:
            return []
        try:
            lock_fd: int | None = _open_unlinked(locks_fd, lock_name, flags, lock_dir)
        except FileNotFoundError:
            lock_fd = None
        try:
            found = []
            for name in sorted(os.listdir(holders_fd)):
                if not name.endswith(".json"):
                    continue
                try:
                    fd = os.open(name, flags, dir_fd=holders_fd)
                except OSError:
                    continue  # removed meanwhile, or a link: never read through
                try:
                    holder = _holder_in(fd, None)
                finally:
                    os.close(fd)
                if holder:
                    holder["file"] = os.path.join(lock_dir, "holders", name)
                    holder["alive"] = _liveness(holder, lock_fd)
                    found.append(holder)
            return found
        finally:
            os.close(holders_fd)
            if lock_fd is not None:
                os.close(lock_fd)
    finally:
        os.close(locks_fd)


def _open_unlinked(dir_fd: int | None, name: str, flags: int, parent: str = "") -> int:
    """``os.open`` with ``O_NOFOLLOW``; a symbolic link is a :class:`ForeignSymlinkError`."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        path = os.path.join(parent, name)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise ForeignSymlinkError(
                f"{path} is a symbolic link inside the data root: persistkit does not look "
                "through it to tell whether a live session runs; replace it with a real file "
                "or folder",
                path=path,
            ) from None
        raise


def _liveness(holder: dict[str, object], lock_fd: int | None) -> bool | None:
    if holder.get("host") != socket.gethostname():
        return None  # another kernel's locks: not this one's to ask
    token = holder.get("token")
    if lock_fd is None or not token:
        return _alive(holder.get("pid"))
    taken = _range_lock(lock_fd, _F_OFD_GETLK, fcntl.F_WRLCK, _offset(f"session:{token}"))
    return taken != fcntl.F_UNLCK

"""Confinement to the data root: no symbolic link inside the root is ever followed.

A :class:`~persistkit.backends._file.FileBackend` sees the system through
:class:`ConfinedOS`, a thin layer over its :class:`~persistkit.backends._oslayer.OSLayer`.
Every call that takes a path is kept beneath the root:

- the root itself is resolved once (``realpath``) when the backend is made, so
  a root that is a symbolic link (a common deployment layout) keeps working;
- a directory below the root is opened component by component, each one
  ``openat(parent, name, O_DIRECTORY | O_NOFOLLOW)``. Each verified directory's
  ``(st_dev, st_ino)`` is remembered per process; later opens take the fast
  path (one open of the full path with ``O_NOFOLLOW``, one ``fstat``, compare)
  and fall back to the walk when the identity changed: a directory swapped for
  a symbolic link, or a real directory behind a swapped ancestor, is a new
  identity and is walked again, and refused;
- a file is opened relative to its verified directory with ``O_NOFOLLOW``,
  and so are names relative to a directory descriptor;
- ``stat`` never follows a link; ``unlink``, ``replace``, ``mkdir`` and
  ``rmdir`` act in the verified parent directory (they never follow a final
  link anyway);
- listings open the verified directory and leave out symbolic links: what is
  not listed is never read, validated, quarantined or deleted by a scan.

A link met on the way raises :class:`~persistkit.errors.ForeignSymlinkError`.
It is not an ``OSError``, so no ``except OSError`` on the way up turns it into
something vaguer. Paths outside the root (the root's own ancestors, when the
root is created) are passed through untouched.

What is out of scope: a directory that persistkit verified and that an
operator then *moves* elsewhere, leaving a link in its place, keeps its
identity; writes then still land in that same directory, never in any other.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Self

from persistkit.backends._oslayer import O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW, OSLayer
from persistkit.errors import ForeignSymlinkError, InvalidNameError

__all__ = ["ConfinedOS", "describe_link", "forget_verified"]

_O_DIR = os.O_RDONLY | O_DIRECTORY | O_CLOEXEC
_O_DIR_NOFOLLOW = _O_DIR | O_NOFOLLOW
_LINK_ERRNOS = (errno.ELOOP, errno.ENOTDIR)
"""What ``O_NOFOLLOW`` answers when the last component is a link (``ENOTDIR``
with ``O_DIRECTORY``)."""
_SWAP_RETRIES = 8
"""Opens of a name that a link and a directory keep trading before it is refused as a link."""
_CACHE_LIMIT = 1 << 16

_VERIFIED: dict[str, tuple[int, int]] = {}
"""Directory path -> (st_dev, st_ino) this process walked to without a link."""


def forget_verified() -> None:
    """Forget every verified directory (tests; and when the cache grows too large)."""
    _VERIFIED.clear()


def describe_link(path: str) -> str:
    """``path -> target`` for messages; just ``path`` when the target cannot be read."""
    try:
        return f"{path} -> {os.readlink(path)}"
    except OSError:
        return path


class _Listing:
    """A directory listing without symbolic links (unless asked); a context manager like
    ``os.scandir``."""

    __slots__ = ("_entries", "_links")

    def __init__(self, entries: Any, *, links: bool = False) -> None:
        self._entries = entries
        self._links = links

    def __iter__(self) -> Iterator[Any]:
        for entry in self._entries:
            if self._links or not entry.is_symlink():
                yield entry

    def close(self) -> None:
        close = getattr(self._entries, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ConfinedOS:
    """The OS layer of one backend, kept beneath ``root`` (see the module docstring).

    Calls on file descriptors go straight to the layer below; anything this
    class does not define is looked up there too, so a method taking a path
    that is added to :class:`OSLayer` must be confined here as well.
    """

    def __init__(self, inner: OSLayer, root: str) -> None:
        self.inner = inner
        self.root = root
        self._prefix = root if root.endswith("/") else root + "/"
        # Bound once: no extra call on the hot paths.
        self.close = inner.close
        self.read = inner.read
        self.write = inner.write
        self.fsync = inner.fsync
        self.fstat = inner.fstat
        self.fchmod = inner.fchmod
        self.flock = inner.flock
        self.ftruncate = inner.ftruncate
        self.syncfs = inner.syncfs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    # -- classification --------------------------------------------------------------

    def _below(self, path: str) -> str | None:
        """``path`` relative to the root when it lies strictly below it, else ``None``."""
        if not path.startswith(self._prefix):
            return None
        relative = path[len(self._prefix) :]
        return relative or None

    @staticmethod
    def _single(name: str) -> None:
        if "/" in name or name in ("", ".", "..") or "\x00" in name:
            raise InvalidNameError(f"{name!r} is not a single name inside a directory")

    def _is_link(self, name: str, dir_fd: int) -> bool:
        try:
            found = self.inner.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return False
        return stat.S_ISLNK(found.st_mode)

    def _open_no_link(
        self, name: str, flags: int, mode: int, dir_fd: int, shown: Callable[[], str]
    ) -> int:
        """``open(name, flags | O_NOFOLLOW, dir_fd=dir_fd)``: a link refused (named
        ``shown()``).

        The open and the look at what refused it are two calls: a name swapped
        between them (a link exchanged for the directory) is opened again rather
        than reported as what it was not, a missing file or a non-directory (a
        read would say the value does not exist). A name that keeps changing is
        refused as a link.
        """
        inner = self.inner
        for _ in range(_SWAP_RETRIES):
            try:
                return inner.open(name, flags | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno not in _LINK_ERRNOS:
                    raise
                try:
                    found = inner.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
                except OSError:
                    continue  # gone meanwhile: open it again, which says what it is now
                if stat.S_ISLNK(found):
                    raise self._refuse(shown()) from None
                if exc.errno == errno.ENOTDIR and not stat.S_ISDIR(found):
                    raise exc  # not a directory, truly
        raise self._refuse(shown())

    def _refuse(self, path: str) -> ForeignSymlinkError:
        return ForeignSymlinkError(
            f"{describe_link(path)} is a symbolic link inside the data root {self.root}: "
            "persistkit never follows one (only the root itself may be a link), so nothing "
            "was read, written, moved or deleted through it. Replace the link with a real "
            "directory or file, or move it out of the root",
            path=path,
        )

    def refuse_link(self, dir_fd: int, name: str) -> ForeignSymlinkError:
        """The error for link ``name`` found in directory ``dir_fd``."""
        return self._refuse(self._name_of(dir_fd, name))

    def _name_of(self, dir_fd: int, name: str) -> str:
        try:
            return f"{os.readlink(f'/proc/self/fd/{dir_fd}')}/{name}"
        except OSError:
            return name

    # -- directories ------------------------------------------------------------------

    def open_dir(self, path: str, *, create: bool = False) -> int:
        """A descriptor of directory ``path`` (the root or below it), reached without a link.

        ``create``: make missing directories, each one's parent fsynced.
        """
        relative = self._below(path)
        if relative is None:
            return self.inner.open(path, _O_DIR)
        inner = self.inner
        # One open of the full path first. Absent: nothing was touched (a
        # lookup is not a read), so say so without walking. Present: it is used
        # only if it is the very directory verified before; anything else (not
        # verified yet, or replaced since) is walked to, or refused.
        try:
            fd = inner.open(path, _O_DIR_NOFOLLOW)
        except FileNotFoundError:
            if not create:
                raise
            return self._walk(relative, create)
        except OSError as exc:
            if exc.errno in _LINK_ERRNOS:
                return self._walk(relative, create)  # a link, or not a directory: the walk says
            raise
        try:
            found = inner.fstat(fd)
        except BaseException:
            inner.close(fd)
            raise
        if _VERIFIED.get(path) == (found.st_dev, found.st_ino):
            return fd
        inner.close(fd)
        return self._walk(relative, create)

    def _walk(self, relative: str, create: bool) -> int:
        inner = self.inner
        parts = relative.split("/")
        for part in parts:
            if part in ("", ".", "..") or "\x00" in part:
                raise InvalidNameError(
                    f"{self._prefix}{relative} is not a plain path below the root"
                )
        if len(_VERIFIED) > _CACHE_LIMIT:
            _VERIFIED.clear()
        fd = inner.open(self.root, _O_DIR)
        current = self.root.rstrip("/")
        try:
            for part in parts:
                current = f"{current}/{part}"
                try:
                    child = self._open_child(fd, part, current)
                except FileNotFoundError:
                    if not create:
                        raise FileNotFoundError(
                            errno.ENOENT, os.strerror(errno.ENOENT), current
                        ) from None
                    try:
                        inner.mkdir(part, 0o777, dir_fd=fd)
                    except FileExistsError:
                        pass  # made meanwhile by another writer; checked just below
                    else:
                        inner.fsync(fd)  # the new entry is durable before it is used
                    child = self._open_child(fd, part, current)
                inner.close(fd)
                fd = child
                found = inner.fstat(fd)
                _VERIFIED[current] = (found.st_dev, found.st_ino)
        except BaseException:
            inner.close(fd)
            raise
        return fd

    def _open_child(self, dir_fd: int, name: str, path: str) -> int:
        return self._open_no_link(name, _O_DIR_NOFOLLOW, 0o777, dir_fd, lambda: path)

    def _parent(self, path: str) -> tuple[int, str] | None:
        """Verified descriptor of ``path``'s directory and its last name; ``None`` outside."""
        relative = self._below(path)
        if relative is None:
            return None
        parent, _, name = path.rpartition("/")
        self._single(name)
        return self.open_dir(parent), name

    # -- the OSLayer interface, confined -------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        inner = self.inner
        if dir_fd is not None:
            self._single(path)
            return self._open_no_link(
                path, flags, mode, dir_fd, lambda: self._name_of(dir_fd, path)
            )
        if flags & os.O_DIRECTORY and not flags & os.O_CREAT:
            return self.open_dir(path)
        # The hot path of a read: the file's directory was verified before.
        parent, _, name = path.rpartition("/")
        known = _VERIFIED.get(parent)
        if known is not None and name and name != "." and name != "..":
            try:
                parent_fd = inner.open(parent, _O_DIR_NOFOLLOW)
            except OSError as exc:
                if exc.errno not in _LINK_ERRNOS:
                    raise  # absent: the caller says what that means
            else:
                try:
                    found_dir = inner.fstat(parent_fd)
                    if (found_dir.st_dev, found_dir.st_ino) == known:
                        return self._open_in(parent_fd, name, flags, mode, path)
                finally:
                    inner.close(parent_fd)
        found = self._parent(path)
        if found is None:
            return inner.open(path, flags, mode)
        parent_fd, name = found
        try:
            return self._open_in(parent_fd, name, flags, mode, path)
        finally:
            inner.close(parent_fd)

    def _open_in(self, parent_fd: int, name: str, flags: int, mode: int, path: str) -> int:
        return self._open_no_link(name, flags, mode, parent_fd, lambda: path)

    def stat(
        self, path: str, *, dir_fd: int | None = None, follow_symlinks: bool = True
    ) -> os.stat_result:
        """Never follows a link below the root: a link is reported as the link itself."""
        inner = self.inner
        if dir_fd is not None:
            self._single(path)
            return inner.stat(path, dir_fd=dir_fd, follow_symlinks=False)
        if path.rstrip("/") == self.root.rstrip("/"):
            return inner.stat(path)
        found = self._parent(path)
        if found is None:
            return inner.stat(path, follow_symlinks=follow_symlinks)
        parent_fd, name = found
        try:
            return inner.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        finally:
            inner.close(parent_fd)

    def _in_parent(self, path: str, dir_fd: int | None, call: Any) -> Any:
        if dir_fd is not None:
            self._single(path)
            return call(path, dir_fd)
        found = self._parent(path)
        if found is None:
            return call(path, None)
        parent_fd, name = found
        try:
            return call(name, parent_fd)
        finally:
            self.inner.close(parent_fd)

    def unlink(self, path: str, *, dir_fd: int | None = None) -> None:
        """Never removes a link either: a foreign object is left where it is."""

        def unlink_in(name: str, fd: int | None) -> None:
            if fd is not None and self._is_link(name, fd):
                raise self.refuse_link(fd, name)
            self.inner.unlink(name, dir_fd=fd)

        self._in_parent(path, dir_fd, unlink_in)

    def rmdir(self, path: str, *, dir_fd: int | None = None) -> None:
        self._in_parent(path, dir_fd, lambda name, fd: self.inner.rmdir(name, dir_fd=fd))

    def mkdir(self, path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        self._in_parent(path, dir_fd, lambda name, fd: self.inner.mkdir(name, mode, dir_fd=fd))

    def replace(
        self,
        src: str,
        dst: str,
        *,
        src_dir_fd: int | None = None,
        dst_dir_fd: int | None = None,
    ) -> None:
        def with_dst(src_name: str, src_fd: int | None) -> None:
            self._in_parent(
                dst,
                dst_dir_fd,
                lambda dst_name, dst_fd: self.inner.replace(
                    src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd
                ),
            )

        self._in_parent(src, src_dir_fd, with_dst)

    def scandir(self, path: str | int, *, links: bool = False) -> _Listing:
        """The entries of a directory, symbolic links left out.

        Entries come from the directory's descriptor: use ``entry.name``, not
        ``entry.path``. ``links=True`` (a directory descriptor only) keeps the
        links in, for those who report them; they are still never followed.
        """
        inner = self.inner
        if isinstance(path, int):
            return _Listing(inner.scandir(path), links=links)
        if self._below(path) is None and path.rstrip("/") != self.root.rstrip("/"):
            return _Listing(inner.scandir(path))
        fd = self.open_dir(path)
        try:
            # os.scandir duplicates the descriptor: ours can be closed at once.
            return _Listing(inner.scandir(fd))
        finally:
            inner.close(fd)

"""One switch for every domain adapter: live (persisted) or backtest (in memory).

The configured backend is *mounted* at ``base_dir``: any store whose directory
lies under it (the four domain adapters, and a user's own ``PersistBase``
subclass created with such a directory) uses that backend, with the rest of the
path as its namespace. So ``configure(mode="backtest")`` moves a custom adapter
into memory too, and one backend holds all four domains, which is what lets a
tick commit span them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from persistkit.backends import Backend, open_backend
from persistkit.backends.file import FileBackend
from persistkit.backends.memory import MemoryBackend

__all__ = ["DEFAULT_BASE_DIR", "Mode", "Settings", "configure", "current_settings"]

DEFAULT_BASE_DIR = "./dump/data"

Mode = Literal["live", "backtest"]


@dataclass(frozen=True, slots=True)
class Settings:
    mode: Mode
    base_dir: str
    """Absolute: resolved when configured, so a later ``chdir`` moves nothing."""
    backend: Backend


_lock = threading.Lock()
_current: Settings | None = None
_file_backends: dict[str, FileBackend] = {}
_on_change: list[Callable[[], None]] = []


def file_backend_for(root: str | os.PathLike[str]) -> FileBackend:
    """The one :class:`FileBackend` of this process for ``root``."""
    path = os.path.abspath(os.fspath(root))
    with _lock:
        backend = _file_backends.get(path)
        if backend is None:
            backend = _file_backends[path] = FileBackend(path)
        return backend


def configure(
    mode: Mode = "live",
    *,
    base_dir: str | os.PathLike[str] = DEFAULT_BASE_DIR,
    backend: Backend | str | None = None,
) -> Settings:
    """Select where every domain adapter keeps its state.

    - ``configure(mode="backtest")``: process memory only; no file, no directory.
    - ``configure(mode="live")``: files under ``base_dir`` (default ``./dump/data``).
    - ``configure(mode="live", backend="redis://...")`` or a ready :class:`Backend`.

    Stores the adapters memoized before are dropped, so the change applies to
    every key, including those already used.
    """
    global _current
    root = os.path.abspath(os.fspath(base_dir))
    chosen: Backend
    if mode == "backtest":
        if backend is not None:
            raise ValueError("backtest mode keeps state in memory; it takes no backend")
        chosen = MemoryBackend("backtest")
    elif mode == "live":
        if backend is None:
            chosen = file_backend_for(root)
        elif isinstance(backend, str):
            chosen = open_backend(backend)
        else:
            chosen = backend
    else:
        raise ValueError(f"mode must be 'live' or 'backtest', not {mode!r}")
    settings = Settings(mode=mode, base_dir=root, backend=chosen)
    with _lock:
        _current = settings
    for reset in list(_on_change):
        reset()
    return settings


def current_settings() -> Settings:
    """The configured settings; live mode on ``./dump/data`` until ``configure`` is called."""
    global _current
    settings = _current
    if settings is None:
        root = os.path.abspath(DEFAULT_BASE_DIR)
        settings = Settings(mode="live", base_dir=root, backend=file_backend_for(root))
        with _lock:
            _current = _current or settings
            settings = _current
    return settings


def on_configure(callback: Callable[[], None]) -> None:
    """Call ``callback`` after every :func:`configure` (adapters drop their stores)."""
    _on_change.append(callback)


def resolve_directory(directory: str) -> tuple[Backend, str]:
    """The backend serving absolute ``directory`` and the namespace inside it."""
    settings = current_settings()
    root = settings.base_dir
    if directory == root:
        return settings.backend, ""
    if directory.startswith(root + os.sep):
        relative = directory[len(root) + 1 :]
        return settings.backend, relative.replace(os.sep, "/")
    return file_backend_for(directory), ""

"""One switch for every domain adapter: live (persisted) or backtest (in memory).

The configured backend is *mounted* at ``base_dir``: any store whose directory
lies under it (the domain adapters, and a user's own ``PersistBase``
subclass created with such a directory) uses that backend, with the rest of the
path as its namespace. So ``configure(mode="backtest")`` moves a custom adapter
into memory too, and one backend holds every domain, which is what lets a
tick commit span them.

Stores without an explicit ``backend=`` look the mount up when they are
*called*, not when they are made: after ``configure(mode="backtest")`` every
such store lives in memory, whatever its directory, including stores made
earlier in live mode. A :class:`~persistkit.LiveSession` pins its own settings
for the code running inside it (its ticks, ``run()``, ``async with session:``)
through a context variable, so a ``configure()`` elsewhere in the process, or a
second session, never moves a running session's writes.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from persistkit.backends import Backend, open_backend
from persistkit.backends.file import FileBackend
from persistkit.backends.memory import MemoryBackend

__all__ = [
    "DEFAULT_BASE_DIR",
    "DEFAULT_EVENT_LIMIT",
    "DEFAULT_FINAL_INTENT_LIMIT",
    "DEFAULT_FINAL_INTENT_TTL",
    "Clock",
    "Mode",
    "Settings",
    "active_settings",
    "configure",
    "current_settings",
    "session_settings",
]

DEFAULT_BASE_DIR = "./dump/data"
DEFAULT_EVENT_LIMIT = 250
"""Statistics events kept per (symbol, strategy) for each of ``Schedule`` and ``Partial``."""

DEFAULT_FINAL_INTENT_LIMIT = 100
"""Final order intents (filled, cancelled, rejected) kept per (symbol, strategy)."""
DEFAULT_FINAL_INTENT_TTL = 7 * 24 * 3600.0
"""Seconds a final order intent is kept after its last write (a week)."""

Clock = Callable[[], int]
"""Milliseconds since the epoch: the time the statistics give an event."""

logger = logging.getLogger("persistkit")

Mode = Literal["live", "backtest"]


@dataclass(frozen=True, slots=True)
class Settings:
    mode: Mode
    base_dir: str
    """Absolute: resolved when configured, so a later ``chdir`` moves nothing."""
    backend: Backend
    _outside: dict[str, Backend] = field(default_factory=dict, repr=False, compare=False)
    """Backtest mode: the memory backend of each directory outside ``base_dir``."""
    clock: Clock | None = None
    """The time of statistics events; ``None``: the tick's time (:mod:`persistkit.clock`)."""
    event_limit: int = DEFAULT_EVENT_LIMIT
    """Statistics events kept per pair and kind, oldest dropped first; 0 records none."""
    final_intent_limit: int = DEFAULT_FINAL_INTENT_LIMIT
    """Final order intents kept per pair, oldest dropped first by the next write of the pair."""
    final_intent_ttl: float | None = DEFAULT_FINAL_INTENT_TTL
    """Seconds a final order intent is kept after its last write; ``None``: no time bound."""


session_settings: contextvars.ContextVar[Settings | None] = contextvars.ContextVar(
    "persistkit_session", default=None
)
"""The settings of the live session the current code runs in (``None``: none)."""

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
    clock: Clock | None = None,
    event_limit: int = DEFAULT_EVENT_LIMIT,
    final_intent_limit: int = DEFAULT_FINAL_INTENT_LIMIT,
    final_intent_ttl: float | None = DEFAULT_FINAL_INTENT_TTL,
) -> Settings:
    """Select where every domain adapter keeps its state.

    - ``configure(mode="backtest")``: process memory only; no file, no directory.
    - ``configure(mode="live")``: files under ``base_dir`` (default ``./dump/data``).
    - ``configure(mode="live", backend="redis://...")`` or a ready :class:`Backend`.

    ``clock`` gives the statistics events (:mod:`persistkit.stats`) their time
    in milliseconds since the epoch: a backtest passes its simulated time
    (``clock=lambda: candle.timestamp``) so that its statistics use market time;
    by default an event carries the time of the tick that recorded it
    (:func:`persistkit.clock.now_ms`, which its replay sees too), or the
    wall-clock time of a commit outside a live session's tick. ``event_limit``
    bounds the events kept per (symbol, strategy) for each of ``Schedule`` and
    ``Partial`` (oldest dropped first; 0 records none).

    ``final_intent_limit`` and ``final_intent_ttl`` (seconds, ``None``: no
    time bound) bound the final order intents (filled, cancelled, rejected)
    kept per (symbol, strategy): the write of a pair's intents drops, in its
    own commit, those beyond the newest ``final_intent_limit`` and those last
    written more than ``final_intent_ttl`` seconds ago. Intents not final are
    never dropped.

    Stores the adapters memoized before are dropped, so the change applies to
    every key, including those already used.
    """
    global _current
    if isinstance(event_limit, bool) or not isinstance(event_limit, int) or event_limit < 0:
        raise ValueError(f"event_limit must be a whole number >= 0, not {event_limit!r}")
    if (
        isinstance(final_intent_limit, bool)
        or not isinstance(final_intent_limit, int)
        or final_intent_limit < 0
    ):
        raise ValueError(
            f"final_intent_limit must be a whole number >= 0, not {final_intent_limit!r}"
        )
    if final_intent_ttl is not None and (
        isinstance(final_intent_ttl, bool)
        or not isinstance(final_intent_ttl, int | float)
        or not 0 <= final_intent_ttl < float("inf")
    ):
        raise ValueError(f"final_intent_ttl must be seconds >= 0 or None, not {final_intent_ttl!r}")
    if clock is not None and not callable(clock):
        raise TypeError(f"clock must be a function returning milliseconds, not {clock!r}")
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
    if mode == "live" and isinstance(chosen, MemoryBackend):
        message = (
            f"live mode on {chosen.url}: the state lives in this process's memory and "
            "dies with it (a crash, kill -9 or restart loses every write); use a file, "
            "Redis or S3 backend for state that must survive"
        )
        logger.warning("persistkit: %s", message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    settings = Settings(
        mode=mode,
        base_dir=root,
        backend=chosen,
        clock=clock,
        event_limit=event_limit,
        final_intent_limit=final_intent_limit,
        final_intent_ttl=final_intent_ttl,
    )
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


def active_settings() -> Settings:
    """The settings the calling code runs under: its live session's, else the configured ones.

    Cheap on purpose (stores call it on every operation): a ``ContextVar.get``
    and a module global.
    """
    return session_settings.get() or _current or current_settings()


def on_configure(callback: Callable[[], None]) -> None:
    """Call ``callback`` after every :func:`configure` (adapters drop their stores)."""
    _on_change.append(callback)


def resolve_directory(directory: str, settings: Settings | None = None) -> tuple[Backend, str]:
    """The backend serving absolute ``directory`` under ``settings``, and the namespace in it.

    ``settings`` defaults to :func:`active_settings`. A directory outside the
    root gets the file backend rooted there in live mode, and a memory backend
    of its own in backtest mode: backtest mode writes no file, whatever the path.
    """
    if settings is None:
        settings = active_settings()
    root = settings.base_dir
    if directory == root:
        return settings.backend, ""
    if directory.startswith(root + os.sep):
        relative = directory[len(root) + 1 :]
        return settings.backend, relative.replace(os.sep, "/")
    if settings.mode == "backtest":
        with _lock:
            backend = settings._outside.get(directory)
            if backend is None:
                backend = settings._outside[directory] = MemoryBackend("backtest")
        return backend, ""
    return file_backend_for(directory), ""

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

The environment configures a deploy without a code change (twelve-factor):
``PERSISTKIT_MODE`` (``live`` or ``backtest``), ``PERSISTKIT_BASE_DIR`` (a
directory) and ``PERSISTKIT_BACKEND`` (a backend URL, live mode only) give
:func:`configure` the arguments it is not passed, the settings in force before
any ``configure()`` call, a :class:`~persistkit.LiveSession` without
``base_dir``, and the command line's default ``ROOT | URL``. An argument
always wins over a variable; an empty variable counts as unset; a bad value
raises :class:`~persistkit.errors.ConfigurationError` naming the variable.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from persistkit.backends import Backend, open_backend
from persistkit.backends._file import FileBackend
from persistkit.backends._memory import MemoryBackend
from persistkit.errors import ConfigurationError, PersistError

__all__ = [
    "DEFAULT_BASE_DIR",
    "DEFAULT_EVENT_LIMIT",
    "DEFAULT_FINAL_INTENT_LIMIT",
    "DEFAULT_FINAL_INTENT_TTL",
    "ENV_BACKEND",
    "ENV_BASE_DIR",
    "ENV_MODE",
    "Clock",
    "Mode",
    "Settings",
    "active_settings",
    "configure",
    "current_settings",
    "environment_base_dir",
    "environment_target",
    "session_settings",
]

DEFAULT_BASE_DIR = "./dump/data"
"""Where live mode keeps its files unless told otherwise (made absolute when configured)."""
DEFAULT_EVENT_LIMIT = 250
"""Statistics events kept per (symbol, strategy) for each of ``Schedule`` and ``Partial``."""

DEFAULT_FINAL_INTENT_LIMIT = 100
"""Final order intents (filled, cancelled, rejected) kept per (symbol, strategy)."""
DEFAULT_FINAL_INTENT_TTL = 7 * 24 * 3600.0
"""Seconds a final order intent is kept after its last write (a week)."""

Clock = Callable[[], int]
"""Milliseconds since the epoch: the time the statistics give an event."""

logger = logging.getLogger(__name__)

Mode = Literal["live", "backtest"]
_MODES: tuple[Mode, ...] = ("live", "backtest")

ENV_MODE = "PERSISTKIT_MODE"
ENV_BASE_DIR = "PERSISTKIT_BASE_DIR"
ENV_BACKEND = "PERSISTKIT_BACKEND"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")


def _environment(name: str) -> str | None:
    """The variable's value, ``None`` when unset or empty (``VAR=`` in a deploy file)."""
    value = os.environ.get(name, "").strip()
    return value or None


def _environment_mode() -> Mode | None:
    value = _environment(ENV_MODE)
    if value is None:
        return None
    for mode in _MODES:
        if value.lower() == mode:
            return mode
    raise ConfigurationError(f"{ENV_MODE}={value!r}: must be 'live' or 'backtest'")


def environment_base_dir() -> str:
    """``PERSISTKIT_BASE_DIR`` made absolute, else :data:`DEFAULT_BASE_DIR` made absolute."""
    value = _environment(ENV_BASE_DIR)
    if value is None:
        return os.path.abspath(DEFAULT_BASE_DIR)
    # A leading ~ is the home directory: a systemd unit or a docker env file passes
    # it unexpanded, and a directory named "~" under the working directory is never meant.
    root = os.path.abspath(os.path.expanduser(value))
    if os.path.exists(root) and not os.path.isdir(root):
        raise ConfigurationError(f"{ENV_BASE_DIR}={value!r}: {root} is not a directory")
    return root


def _environment_backend_url() -> str | None:
    value = _environment(ENV_BACKEND)
    if value is not None and not _URL.match(value):
        raise ConfigurationError(
            f"{ENV_BACKEND}={value!r}: must be a backend URL (file:///path, redis://..., "
            f"s3://..., memory://); a directory goes in {ENV_BASE_DIR}"
        )
    return value


def _environment_backend() -> Backend | None:
    url = _environment_backend_url()
    if url is None:
        return None
    try:
        return open_backend(url)
    except (PersistError, ImportError, ValueError) as exc:
        raise ConfigurationError(f"{ENV_BACKEND}={url!r}: {exc}") from exc


def environment_target() -> str:
    """What the command line opens when given no ``ROOT | URL``.

    ``PERSISTKIT_BACKEND`` if set, else ``PERSISTKIT_BASE_DIR``, else
    :data:`DEFAULT_BASE_DIR`: the state a bot started in this environment uses.
    """
    _environment_mode()  # a bad mode is reported here too, not ignored
    url = _environment_backend_url()
    if url is not None:
        return url
    if _environment(ENV_BASE_DIR) is None:
        return DEFAULT_BASE_DIR
    return environment_base_dir()  # a file there is reported naming the variable


@dataclass(frozen=True, slots=True)
class Settings:
    mode: Mode
    base_dir: str
    """Absolute: resolved when configured, so a later ``chdir`` moves nothing."""
    backend: Backend
    _outside: dict[str, Backend] = field(default_factory=dict, repr=False, compare=False)
    """Backtest mode: the memory backend of each directory outside ``base_dir``."""
    clock: Clock | None = None
    """The time of statistics events; ``None``: the tick's (:func:`persistkit.replay.now_ms`)."""
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
    mode: Mode | None = None,
    *,
    base_dir: str | os.PathLike[str] | None = None,
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

    An argument not given comes from the environment (``PERSISTKIT_MODE``,
    ``PERSISTKIT_BASE_DIR``, ``PERSISTKIT_BACKEND``; see the module docstring),
    else from the defaults above. ``PERSISTKIT_BACKEND`` applies to live mode
    only: backtest mode keeps everything in memory whatever it says.

    ``clock`` gives the statistics events (:class:`~persistkit.ScheduleStatistics`,
    :class:`~persistkit.PartialStatistics`) their time in milliseconds since the
    epoch: a backtest passes its simulated time
    (``clock=lambda: candle.timestamp``) so that its statistics use market time;
    by default an event carries the time of the tick that recorded it
    (:func:`persistkit.replay.now_ms`, which its replay sees too), or the
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
    if (
        isinstance(final_intent_limit, bool)
        or not isinstance(final_intent_limit, int)
        or final_intent_limit < 0
    ):
        raise ConfigurationError(
            f"final_intent_limit must be a whole number >= 0, not {final_intent_limit!r}"
        )
    if final_intent_ttl is not None and (
        isinstance(final_intent_ttl, bool)
        or not isinstance(final_intent_ttl, int | float)
        or not 0 <= final_intent_ttl < float("inf")
    ):
        raise ConfigurationError(
            f"final_intent_ttl must be seconds >= 0 or None, not {final_intent_ttl!r}"
        )
    settings = replace(
        _resolve(mode, base_dir, backend, clock, event_limit),
        final_intent_limit=final_intent_limit,
        final_intent_ttl=final_intent_ttl,
    )
    _warn_if_volatile(settings, stacklevel=3)
    with _lock:
        _current = settings
    for reset in list(_on_change):
        reset()
    return settings


def _warn_if_volatile(settings: Settings, *, stacklevel: int) -> None:
    """Live mode on a memory backend works, but its state dies with the process: say so."""
    if settings.mode == "live" and isinstance(settings.backend, MemoryBackend):
        message = (
            f"live mode on {settings.backend.url}: the state lives in this process's memory "
            "and dies with it (a crash, kill -9 or restart loses every write); use a file, "
            "Redis or S3 backend for state that must survive"
        )
        logger.warning("persistkit: %s", message)
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)


def _resolve(
    mode: Mode | None,
    base_dir: str | os.PathLike[str] | None,
    backend: Backend | str | None,
    clock: Clock | None,
    event_limit: int,
) -> Settings:
    """The settings of these arguments, the environment filling in those not given."""
    if isinstance(event_limit, bool) or not isinstance(event_limit, int) or event_limit < 0:
        raise ConfigurationError(f"event_limit must be a whole number >= 0, not {event_limit!r}")
    if clock is not None and not callable(clock):
        raise TypeError(f"clock must be a function returning milliseconds, not {clock!r}")
    if mode is None:
        mode = _environment_mode() or "live"
        if mode == "backtest" and backend is not None:
            raise ConfigurationError(
                f"{ENV_MODE}=backtest keeps state in memory, but configure() was given "
                f"backend={backend!r}; pass mode='live' to use it"
            )
    elif mode not in _MODES:
        raise ConfigurationError(f"mode must be 'live' or 'backtest', not {mode!r}")
    root = environment_base_dir() if base_dir is None else os.path.abspath(os.fspath(base_dir))
    chosen: Backend
    if mode == "backtest":
        if backend is not None:
            raise ConfigurationError("backtest mode keeps state in memory; it takes no backend")
        chosen = MemoryBackend("backtest")
    else:
        if backend is None:
            backend = _environment_backend()
        if backend is None:
            chosen = file_backend_for(root)
        elif isinstance(backend, str):
            chosen = open_backend(backend)
        else:
            chosen = backend
    return Settings(mode=mode, base_dir=root, backend=chosen, clock=clock, event_limit=event_limit)


def current_settings() -> Settings:
    """The configured settings; until ``configure`` is called, the environment's.

    That is live mode on ``./dump/data`` when no ``PERSISTKIT_*`` variable is set.
    """
    global _current
    settings = _current
    if settings is None:
        settings = _resolve(None, None, None, None, DEFAULT_EVENT_LIMIT)
        _warn_if_volatile(settings, stacklevel=3)
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

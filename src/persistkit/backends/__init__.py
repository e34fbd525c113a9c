"""Backends: where the bytes go, chosen by object or by URL.

``open_backend("redis://127.0.0.1:6379/0")`` finds the class through a lazy
registry, and ``FileBackend``, ``MemoryBackend``, ``RedisBackend`` and
``S3Backend`` are imported when first named, so that ``redis`` and ``boto3``
are imported only by those who use them; a missing extra is named in the error.
Third-party backends register under the ``persistkit.backends`` entry point
group (``scheme = "module:Class"``) or with :func:`register_backend`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from persistkit.backends._base import (
    ANY_VERSION,
    AnyVersion,
    Backend,
    Expected,
    Lease,
    QuarantineEntry,
    Snapshot,
    Versioned,
    fenced_leases,
    join_key,
    split_key,
)
from persistkit.errors import InvalidNameError

if TYPE_CHECKING:
    from persistkit.backends._file import FileBackend
    from persistkit.backends._memory import MemoryBackend
    from persistkit.backends._redis import RedisBackend
    from persistkit.backends._s3 import S3Backend

__all__ = [
    "ANY_VERSION",
    "AnyVersion",
    "Backend",
    "Expected",
    "FileBackend",
    "Lease",
    "MemoryBackend",
    "QuarantineEntry",
    "RedisBackend",
    "S3Backend",
    "Snapshot",
    "Versioned",
    "fenced_leases",
    "join_key",
    "open_backend",
    "register_backend",
    "split_key",
]

# The shipped backends: name -> ("module:Class", the extra that installs its dependencies).
_SHIPPED: dict[str, tuple[str, str | None]] = {
    "FileBackend": ("persistkit.backends._file:FileBackend", None),
    "MemoryBackend": ("persistkit.backends._memory:MemoryBackend", None),
    "RedisBackend": ("persistkit.backends._redis:RedisBackend", "redis"),
    "S3Backend": ("persistkit.backends._s3:S3Backend", "s3"),
}

# scheme -> ("module:Class", extra)
_REGISTRY: dict[str, tuple[str, str | None]] = {
    "backtest-kit": ("persistkit.backends._backtest_kit:BacktestKitBackend", None),
    "file": _SHIPPED["FileBackend"],
    "memory": _SHIPPED["MemoryBackend"],
    "redis": _SHIPPED["RedisBackend"],
    "rediss": _SHIPPED["RedisBackend"],
    "redis+cluster": _SHIPPED["RedisBackend"],
    "s3": _SHIPPED["S3Backend"],
}


def register_backend(scheme: str, target: str, *, clobber: bool = False) -> None:
    """Map a URL scheme to ``"module:Class"``, a :class:`Backend` that overrides ``from_url``."""
    scheme = scheme.lower()
    if scheme in _REGISTRY and not clobber:
        raise ValueError(f"scheme {scheme!r} is already registered to {_REGISTRY[scheme][0]}")
    _REGISTRY[scheme] = (target, None)


def _lookup(scheme: str) -> tuple[str, str | None]:
    if scheme in _REGISTRY:
        return _REGISTRY[scheme]
    for entry in entry_points(group="persistkit.backends"):
        if entry.name.lower() == scheme:
            return entry.value, None
    known = ", ".join(sorted(_REGISTRY))
    raise InvalidNameError(f"no backend for URL scheme {scheme!r}; known: {known}")


def _load_class(target: str, extra: str | None, what: str) -> type[Backend]:
    """Import ``"module:Class"``; a missing dependency names the extra that installs it."""
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name == module_name:
            raise ImportError(f"{what} ({module_name}) is not installed") from exc
        hint = f"; install it with: pip install 'persistkit[{extra}]'" if extra else ""
        raise ImportError(f"{what} needs {exc.name}{hint}") from exc
    cls: type[Backend] = getattr(module, class_name)
    return cls


def open_backend(url: str) -> Backend:
    """A backend from its URL: ``file:///path``, ``memory://``, ``redis://...``, ``s3://...``.

    ``backtest-kit:///ABSOLUTE/PATH?exchange=NAME`` opens a backtest-kit 19.x
    folder read-only, to migrate from (the README: "Coming from backtest-kit").
    """
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        raise InvalidNameError(f"{url!r} is not a backend URL (no scheme)")
    target, extra = _lookup(scheme)
    return _load_class(target, extra, f"the {scheme}:// backend").from_url(url)


def __getattr__(name: str) -> type[Backend]:
    """The shipped backend classes, imported when first named (PEP 562)."""
    if name not in _SHIPPED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    target, extra = _SHIPPED[name]
    cls = _load_class(target, extra, f"persistkit.backends.{name}")
    globals()[name] = cls  # later lookups skip this function
    return cls

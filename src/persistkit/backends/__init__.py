"""Backends: where the bytes go, chosen by object or by URL.

``open_backend("redis://127.0.0.1:6379/0")`` finds the class through a lazy
registry, so that ``redis`` and ``boto3`` are imported only by those who use
them; a missing extra is named in the error. Third-party backends register
under the ``persistkit.backends`` entry point group (``scheme = "module:Class"``)
or with :func:`register_backend`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from urllib.parse import urlsplit

from persistkit.backends.base import (
    ANY_VERSION,
    AnyVersion,
    Backend,
    Expected,
    QuarantineEntry,
    Versioned,
    join_key,
    split_key,
)
from persistkit.errors import InvalidNameError

__all__ = [
    "ANY_VERSION",
    "AnyVersion",
    "Backend",
    "Expected",
    "QuarantineEntry",
    "Versioned",
    "join_key",
    "open_backend",
    "register_backend",
    "split_key",
]

# scheme -> ("module:Class", extra that installs its dependencies)
_REGISTRY: dict[str, tuple[str, str | None]] = {
    "backtest-kit": ("persistkit.backends.backtest_kit:BacktestKitBackend", None),
    "file": ("persistkit.backends.file:FileBackend", None),
    "memory": ("persistkit.backends.memory:MemoryBackend", None),
    "redis": ("persistkit.backends.redis:RedisBackend", "redis"),
    "rediss": ("persistkit.backends.redis:RedisBackend", "redis"),
    "redis+cluster": ("persistkit.backends.redis:RedisBackend", "redis"),
    "s3": ("persistkit.backends.s3:S3Backend", "s3"),
}


def register_backend(scheme: str, target: str, *, clobber: bool = False) -> None:
    """Map a URL scheme to ``"module:Class"`` (a :class:`Backend` with ``from_url``)."""
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


def open_backend(url: str) -> Backend:
    """A backend from its URL: ``file:///path``, ``memory://``, ``redis://...``, ``s3://...``.

    ``backtest-kit:///ABSOLUTE/PATH?exchange=NAME`` opens a backtest-kit 19.x
    folder read-only, to migrate from (:mod:`persistkit.backends.backtest_kit`).
    """
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        raise InvalidNameError(f"{url!r} is not a backend URL (no scheme)")
    target, extra = _lookup(scheme)
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name == module_name:
            raise ImportError(f"the {scheme}:// backend ({module_name}) is not installed") from exc
        hint = f"; install it with: pip install 'persistkit[{extra}]'" if extra else ""
        raise ImportError(f"the {scheme}:// backend needs {exc.name}{hint}") from exc
    cls = getattr(module, class_name)
    backend: Backend = cls.from_url(url)
    return backend

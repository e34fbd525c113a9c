"""From a ``ROOT`` or ``URL`` argument to an open backend; what every command shares.

A directory opens the file backend on it; anything of the form ``scheme://...``
goes through :func:`persistkit.open_backend`, so a backend registered later
(Redis, S3, a third-party plug-in) works here without a change.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from typing import Any

from persistkit._config import environment_target
from persistkit._domains.events import FOLDED_NAMESPACE
from persistkit._domains.intent import PersistIntentUtils
from persistkit._domains.journal_events import FoldedHead
from persistkit._domains.partial import PersistPartialUtils
from persistkit._domains.risk import PersistRiskUtils
from persistkit._domains.signal import PersistScheduleUtils, PersistSignalUtils
from persistkit._retry import RetryPolicy
from persistkit._store import PersistBase, SegmentName
from persistkit.backends import Backend, open_backend
from persistkit.backends._file import FileBackend
from persistkit.backends._memory import MemoryBackend
from persistkit.errors import PersistError

__all__ = [
    "CLI_RETRY",
    "DOMAIN_SCHEMAS",
    "EXIT_COULD_NOT_RUN",
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "PAIRED_DOMAINS",
    "CommandError",
    "default_target",
    "format_time",
    "is_paired",
    "iso_time",
    "open_target",
    "plural",
    "printable",
    "schema_for",
    "store_for",
]

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_COULD_NOT_RUN = 2


default_target = environment_target
"""``ROOT | URL`` when none is given: the state a bot started in this environment uses."""


# An operator waiting at a terminal wants "unreachable" in seconds, not after
# the library's 30-second patience for a bot riding out a server restart.
CLI_RETRY = RetryPolicy(attempts=3, initial_delay=0.1, max_delay=0.5, deadline=3.0)

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")

DOMAIN_SCHEMAS: dict[str, Any] = {
    adapter.domain: adapter.schema
    for adapter in (
        PersistSignalUtils,
        PersistScheduleUtils,
        PersistRiskUtils,
        PersistPartialUtils,
        PersistIntentUtils,
    )
}
"""Domain -> the model its adapter validates against (the one source is the adapter)."""


class CommandError(Exception):
    """A failure reported as one line on stderr, with the exit code it maps to."""

    def __init__(self, message: str, exit_code: int = EXIT_COULD_NOT_RUN) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def open_target(spec: str, *, must_exist: bool = True, read_only: bool = False) -> Backend:
    """The backend that ``spec`` (a directory or a backend URL) names.

    ``must_exist=False`` lets a file destination be created by the first write.
    ``read_only=True`` opens a directory without replaying the commit journals
    of stopped processes (they are reported instead) and refuses every write.
    """
    # memory: and memory://name alike (both open a memory store in Python).
    if spec.lower().startswith(f"{MemoryBackend.scheme}:"):
        raise CommandError(
            f"{spec}: a memory:// store lives inside one process; the command line cannot reach it"
        )
    if _URL.match(spec):
        try:
            backend = open_backend(spec)
        except (PersistError, ImportError, ValueError) as exc:
            raise CommandError(f"{spec}: {exc}") from exc
        backend.read_only = read_only
    else:
        backend = FileBackend(spec, read_only=read_only)
    if isinstance(backend, FileBackend):
        root = backend.root
        if os.path.isdir(root):
            pass
        elif os.path.lexists(root):
            raise CommandError(f"{root} is not a directory")
        elif must_exist:
            raise CommandError(f"no such directory: {root}")
    return backend


PAIRED_DOMAINS = frozenset(
    adapter.domain
    for adapter in (
        PersistSignalUtils,
        PersistScheduleUtils,
        PersistPartialUtils,
        PersistIntentUtils,
    )
)
"""Domains whose entity is a ``{symbol}_{strategy}`` pair (:func:`persistkit._names.join_pair`)."""


def is_paired(key: str) -> bool:
    """Whether ``key`` is ``{domain}/{symbol}_{strategy}/{id}`` of a domain keyed by pairs."""
    parts = key.split("/")
    return len(parts) == 3 and parts[0] in PAIRED_DOMAINS


def schema_for(namespace: str) -> Any:
    """What a start validates the values of ``namespace`` against.

    ``{domain}/{entity}`` of the domains (backtest-kit's four, and order intents) gets its adapter's
    model; the folded statistics heads of a file root theirs (no start reads them, but the
    next checkpoint quarantines a damaged one, and its events are lost); any other
    namespace is parsed as JSON only (``None``).
    """
    if namespace == FOLDED_NAMESPACE:
        return FoldedHead
    domain, _, entity = namespace.partition("/")
    if entity and "/" not in entity:
        return DOMAIN_SCHEMAS.get(domain)
    return None


def store_for(backend: Backend, namespace: str) -> PersistBase[Any]:
    """The store a start would open on ``namespace``, validating as it would."""
    return PersistBase(
        SegmentName(namespace), backend=backend, model=schema_for(namespace), retry=CLI_RETRY
    )


def plural(count: int, noun: str) -> str:
    """``1 value``, ``2 values``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def printable(text: str) -> str:
    """``text`` with its control and format characters shown as escapes (``\\x1b``).

    For strings an exchange or a bot supplied (an exchange order id): printed
    raw, an escape sequence in one would retitle, clear or rewrite the operator's
    terminal.
    """
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def iso_time(seconds: float | None) -> str | None:
    """``seconds`` since the epoch as ISO 8601 UTC (for ``--json``)."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def format_time(seconds: float | None) -> str:
    """``seconds`` since the epoch for a table: UTC, to the second; ``-`` when unknown."""
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")

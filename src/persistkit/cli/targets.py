"""From a ``ROOT`` or ``URL`` argument to an open backend; what every command shares.

A directory opens the file backend on it; anything of the form ``scheme://...``
goes through :func:`persistkit.open_backend`, so a backend registered later
(Redis, S3, a third-party plug-in) works here without a change.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from persistkit.backends import Backend, open_backend
from persistkit.backends.base import Lease
from persistkit.backends.file import FileBackend
from persistkit.backends.memory import MemoryBackend
from persistkit.config import DEFAULT_BASE_DIR
from persistkit.domains.partial import PersistPartialUtils
from persistkit.domains.risk import PersistRiskUtils
from persistkit.domains.signal import PersistScheduleUtils, PersistSignalUtils
from persistkit.errors import PersistError
from persistkit.live.lock import running_sessions
from persistkit.live.session import LOCK_DIR
from persistkit.retry import RetryPolicy
from persistkit.store import PersistBase, SegmentName

__all__ = [
    "CLI_RETRY",
    "DEFAULT_TARGET",
    "DOMAIN_SCHEMAS",
    "EXIT_COULD_NOT_RUN",
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "PAIRED_DOMAINS",
    "CommandError",
    "Holder",
    "format_time",
    "is_paired",
    "iso_time",
    "open_target",
    "plural",
    "refuse_beside_running_sessions",
    "root_holders",
    "schema_for",
    "store_for",
]

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_COULD_NOT_RUN = 2

DEFAULT_TARGET = DEFAULT_BASE_DIR

# An operator waiting at a terminal wants "unreachable" in seconds, not after
# the library's 30-second patience for a bot riding out a server restart.
CLI_RETRY = RetryPolicy(attempts=3, initial_delay=0.1, max_delay=0.5, deadline=3.0)

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")

DOMAIN_SCHEMAS: dict[str, Any] = {
    adapter.domain: adapter.schema
    for adapter in (PersistSignalUtils, PersistScheduleUtils, PersistRiskUtils, PersistPartialUtils)
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
    if _URL.match(spec):
        if spec.lower().startswith(f"{MemoryBackend.scheme}:"):
            raise CommandError(
                f"{spec}: a memory:// store lives inside one process; "
                "the command line cannot reach it"
            )
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


@dataclass(frozen=True, slots=True)
class Holder:
    """A live session that holds a root's instance locks."""

    pid: int | None
    host: str | None
    since: str | None
    """When it took the locks (ISO 8601 UTC)."""
    alive: bool | None
    """``True``: it holds them now; ``None``: whether it still runs cannot be told from here."""
    locks: tuple[str, ...] = ()
    """The lock names it holds (``pair-{symbol}_{strategy}``, ``risk-{name}``), when known."""
    lease_until: str | None = None
    """For a lease kept in the backend: when it lapses unless renewed (ISO 8601 UTC)."""

    def describe(self) -> str:
        """``pid 4242 on host bot-1 since 2026-11-30T09:00:00Z``."""
        described = (
            " ".join(
                f"{label} {value}"
                for label, value in (
                    ("pid", self.pid),
                    ("on host", self.host),
                    ("since", self.since),
                )
                if value is not None
            )
            or "a process that does not say who it is"
        )
        if self.lease_until is not None:
            described += f", its lease renewed until {self.lease_until}"
        elif self.alive is None:
            described += " (whether it still runs cannot be told from this host)"
        return described


async def root_holders(backend: Backend) -> list[Holder]:
    """Who holds the instance locks of ``backend``'s root now: the one place the CLI asks.

    File backend: the live sessions of ``ROOT/.locks``, looked up without
    taking a lock (:func:`persistkit.live.lock.running_sessions`: ``/proc/locks``,
    the sessions' holder files, and each session's liveness lock asked with
    ``F_OFD_GETLK``), so asking never makes a starting bot fail. A backend that
    keeps leases (:attr:`Backend.leases`): every lease not yet lapsed
    (:meth:`Backend.read_leases`), one holder per session. Any other backend
    (Redis and S3 until they keep leases): a live session's locks are files in
    its ``base_dir`` on its own machine, out of sight of a URL, so the answer
    is empty.
    """
    if isinstance(backend, FileBackend):
        found = running_sessions(os.path.join(backend.root, LOCK_DIR))
        return [_holder_from_file(holder) for holder in found]
    if backend.leases:
        return _holders_from_leases(await backend.read_leases())
    return []


def _holder_from_file(holder: dict[str, object]) -> Holder:
    pid, host, since, locks = (holder.get(k) for k in ("pid", "host", "since", "locks"))
    alive = holder.get("alive")
    return Holder(
        pid=pid if isinstance(pid, int) else None,
        host=None if host is None else str(host),
        since=None if since is None else str(since),
        alive=alive if isinstance(alive, bool) else None,
        locks=tuple(map(str, locks)) if isinstance(locks, list) else (),
    )


def _holders_from_leases(leases: list[Lease]) -> list[Holder]:
    """One holder per session (host, pid, since), with every lock name it leases."""
    sessions: dict[tuple[object, object, object], list[Lease]] = {}
    for lease in sorted(leases, key=lambda lease: lease.name):
        who = (lease.holder.get("host"), lease.holder.get("pid"), lease.holder.get("since"))
        sessions.setdefault(who, []).append(lease)
    holders = []
    for (host, pid, since), held in sessions.items():
        holders.append(
            Holder(
                pid=pid if isinstance(pid, int) else None,
                host=None if host is None else str(host),
                since=iso_time(since) if isinstance(since, int | float) else None,
                alive=None,  # a lease outlives a killed holder until it lapses
                locks=tuple(lease.name for lease in held),
                lease_until=iso_time(min(lease.expires_at for lease in held)),
            )
        )
    return holders


async def refuse_beside_running_sessions(
    backend: Backend, *, force: bool = False, how_to_force: str | None = None
) -> list[Holder]:
    """Refuse (exit 1) a change to a root a live session holds, unless ``force``.

    The bot owns its state. ``how_to_force`` says what ``--force`` does for
    this command; without it the command has no ``--force``. Returns the
    holders a forced change is written beside.
    """
    holders = await root_holders(backend)
    if not holders or force:
        return holders
    where = backend.root if isinstance(backend, FileBackend) else backend.url
    running = "; ".join(holder.describe() for holder in holders)
    advice = "Stop it first, then run this again"
    if how_to_force:
        advice += f", or pass --force: {how_to_force}"
    raise CommandError(
        f"a live session holds {where} ({running}); nothing was written. {advice}.",
        EXIT_PROBLEMS,
    )


PAIRED_DOMAINS = frozenset(
    adapter.domain for adapter in (PersistSignalUtils, PersistScheduleUtils, PersistPartialUtils)
)
"""Domains whose entity is a ``{symbol}_{strategy}`` pair (:func:`persistkit.names.join_pair`)."""


def is_paired(key: str) -> bool:
    """Whether ``key`` is ``{domain}/{symbol}_{strategy}/{id}`` of a domain keyed by pairs."""
    parts = key.split("/")
    return len(parts) == 3 and parts[0] in PAIRED_DOMAINS


def schema_for(namespace: str) -> Any:
    """What a start validates the values of ``namespace`` against.

    ``{domain}/{entity}`` of the four domains (DESIGN.md §2) gets its adapter's
    model; any other namespace is parsed as JSON only (``None``).
    """
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

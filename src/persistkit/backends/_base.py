"""The backend contract: moving versioned bytes, nothing more.

A backend knows keys and bytes. A key is a ``/``-separated path of segments
already made safe by :mod:`persistkit._names` (for example
``signal/BTCUSDT_my_strategy/BTCUSDT``); the last segment is the entity id and
what comes before it is the entity's namespace. Values are opaque bytes; each
stored value has an opaque ``version`` string that changes whenever the value is
replaced, which is what compare-and-set compares.

Validation, encoding, ordering of writes to one key, retries of transient
errors and self-healing are done once, above, by
:class:`persistkit.PersistBase`; a backend implements the abstract methods
below and runs :mod:`persistkit.testing` unchanged to prove it.
"""

from __future__ import annotations

import enum
import functools
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, ClassVar, Self, TypeAlias

from persistkit._history import RecordedHistory, unavailable
from persistkit.errors import InvalidNameError, SnapshotError

__all__ = [
    "ANY_VERSION",
    "SNAPSHOT_ATTEMPTS",
    "AnyVersion",
    "Backend",
    "Expected",
    "Fence",
    "Lease",
    "QuarantineEntry",
    "Snapshot",
    "Versioned",
    "check_key",
    "check_namespace",
    "fencing",
    "lay_commits_over",
]


_GOOD_KEYS: set[str] = set()
"""Keys :func:`check_key` accepted: a bot's ticks commit the same few keys again and
again, and a set lookup costs a fraction of the tests. Emptied when it grows past
:data:`_GOOD_KEYS_LIMIT`."""
_GOOD_KEYS_LIMIT = 1 << 16


def check_key(key: str) -> str:
    """``key`` itself, or :class:`InvalidNameError` when it could climb or is malformed.

    Every backend's key-taking methods run it first (see
    :meth:`Backend.__init_subclass__`), so a key never reaches storage that could
    leave the backend's root, hide as one of persistkit's own objects, or
    mean different things to different backends. :mod:`persistkit._names` never
    makes such a key; this is the last line for callers that build keys by hand.
    """
    if type(key) is str and key in _GOOD_KEYS:
        return key
    if type(key) is not str:
        # A subclass of str may redefine the very tests below (``in``, indexing,
        # ``==``) and how it formats into a path: only a plain str is judged.
        raise InvalidNameError(
            f"a key must be a plain str, got {type(key).__name__}: {str.__repr__(key)}"
            if isinstance(key, str)
            else f"a key must be a string, got {type(key).__name__}: {key!r}"
        )
    # Refused: an empty key or segment (absolute paths, ``a//b``, a trailing ``/``),
    # a segment starting with ``.`` (``.``, ``..`` and persistkit's own names: temp
    # files, quarantine, journal), or a NUL anywhere. Plain string tests, not a
    # regular expression: every key of every commit and batched read comes here,
    # and a regex scan of the key cost more than the rest of its handling.
    if not key or key[0] in "./" or key[-1] == "/" or "/." in key or "//" in key or "\x00" in key:
        raise InvalidNameError(
            f"key {key!r} is refused before any I/O: a key is '/'-separated segments, "
            "none empty, none starting with '.', no NUL"
        )
    if len(_GOOD_KEYS) >= _GOOD_KEYS_LIMIT:
        _GOOD_KEYS.clear()
    _GOOD_KEYS.add(key)
    return key


def check_namespace(namespace: str) -> str:
    """Like :func:`check_key`, but ``""`` (the root) is allowed."""
    return namespace if namespace == "" else check_key(namespace)


def _checking_keys(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def checked(self: Backend, key: str, *args: Any, **kwargs: Any) -> Any:
        check_key(key)
        return method(self, key, *args, **kwargs)

    return checked


def _checking_key_list(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def checked(self: Backend, keys: Iterable[str], *args: Any, **kwargs: Any) -> Any:
        keys = list(keys)
        good = _GOOD_KEYS
        for key in keys:
            if type(key) is not str or key not in good:  # check_key's first test, inlined
                check_key(key)
        return method(self, keys, *args, **kwargs)

    return checked


def _checking_writes(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def checked(self: Backend, writes: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        good = _GOOD_KEYS
        for key in writes:
            if type(key) is not str or key not in good:  # check_key's first test, inlined
                check_key(key)
        return method(self, writes, *args, **kwargs)

    return checked


def _checking_namespace(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def checked(self: Backend, namespace: str = "", *args: Any, **kwargs: Any) -> Any:
        check_namespace(namespace)
        return method(self, namespace, *args, **kwargs)

    return checked


_KEY_CHECKS: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
    "get": _checking_keys,
    "put": _checking_keys,
    "delete": _checking_keys,
    "quarantine": _checking_keys,
    "changed_at": _checking_keys,
    "get_many": _checking_key_list,
    "get_many_data": _checking_key_list,
    "commit": _checking_writes,
    "scan": _checking_namespace,
    "list_quarantine": _checking_namespace,
    "clean_orphans": _checking_namespace,
}
"""The contract's methods that take keys, and the check each runs first.

Plain functions returning the method's coroutine (or async iterator): no extra
coroutine frame on the hot path, and a bad key raises at the call."""


class AnyVersion(enum.Enum):
    """Sentinel type: write whatever the current version is."""

    ANY = "any"


ANY_VERSION = AnyVersion.ANY
"""``expect=ANY_VERSION``: an unconditional write, whatever the current version is."""

Expected: TypeAlias = "str | AnyVersion | None"
"""What a conditional write expects: a version string (must still be current),
``None`` (the key must not exist) or ``ANY_VERSION`` (unconditional)."""


class Versioned:
    """Stored bytes and the version they were stored under.

    ``version`` is a string, or a function of the bytes for backends whose
    version is a digest of the content: it then runs only if someone asks,
    since most reads never compare versions.
    """

    __slots__ = ("_version", "_version_of", "data")

    def __init__(self, data: bytes, version: str | Callable[[bytes], str]) -> None:
        self.data = data
        if isinstance(version, str):
            self._version: str | None = version
        else:
            self._version = None
            self._version_of = version

    @property
    def version(self) -> str:
        if self._version is None:
            self._version = self._version_of(self.data)
        return self._version

    def __repr__(self) -> str:
        return f"Versioned({len(self.data)} bytes, version={self.version!r})"


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """A value moved aside because it did not parse or validate."""

    id: str
    """Opaque handle for :meth:`Backend.restore` and :meth:`Backend.purge`."""
    key: str
    """Where the value was stored."""
    reason: str
    quarantined_at: float
    """Seconds since the epoch."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A time-limited claim, kept in a shared backend, on one lock name of a live session.

    A live session on a backend with :attr:`Backend.leases` takes one per lock
    name it locks locally (each pair, the risk profile), so that one instance
    runs per cluster, not per machine.
    """

    name: str
    """The lock name (``pair-BTCUSDT_trend``, ``risk-main``)."""
    token: int
    """The fencing token: larger for every new holder of ``name``, never reused."""
    holder: Mapping[str, object]
    """Who holds it: ``host``, ``pid``, ``since`` (seconds since the epoch), ..."""
    expires_at: float
    """When it lapses unless renewed: seconds since the epoch, by the backend's clock."""


class Fence(tuple[Lease, ...]):
    """The leases a live session's writes carry, and its check that they still cover a write.

    A session stops writing at a deadline before its leases could lapse (its
    own monotonic clock), because a backend's fence does not refuse every stale
    write (a Redis Cluster namespace the new holder has not written yet, a
    plain S3 write). ``check()`` raises :class:`~persistkit.errors.LeaseLostError`
    past that deadline; :func:`fenced_leases` calls it before each fenced request.
    """

    check: Callable[[], None]

    def __new__(cls, leases: Iterable[Lease], check: Callable[[], None]) -> Self:
        fence = super().__new__(cls, leases)
        fence.check = check
        return fence


fencing: ContextVar[tuple[Lease, ...]] = ContextVar("persistkit_fencing", default=())
"""The leases whose tokens the writes of this context carry.

A live session sets it (a :class:`Fence`) around its ticks, its ``run()`` and
its ``async with`` block. A backend with :attr:`Backend.leases` refuses, with
:class:`~persistkit.errors.LeaseLostError`, a write or commit carrying a token
older than the newest lease of its name. Writes outside a session carry none.
"""


def fenced_leases() -> tuple[Lease, ...]:
    """The leases this context's next write carries, once their holder's deadline allows it.

    What a backend with :attr:`Backend.leases` calls before each request that
    writes: past the session's deadline it raises
    :class:`~persistkit.errors.LeaseLostError` and nothing is sent, whether the
    write comes from a tick, the session's ``async with`` block or a task
    started inside either.
    """
    leases = fencing.get()
    if isinstance(leases, Fence):
        leases.check()
    return leases


SNAPSHOT_ATTEMPTS = 5
"""Reads :meth:`Backend.snapshot` makes before it gives up on a backend that keeps changing."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every value of a backend as of one commit point (see :meth:`Backend.snapshot`)."""

    values: dict[str, bytes]
    """Key -> committed bytes."""
    pending: frozenset[str] = frozenset()
    """Keys whose committed value is not yet where the backend keeps its values:
    read from a commit recorded and not applied yet (a start applies it)."""
    committed_at: dict[str, float] = field(default_factory=dict)
    """When the commit that gave each ``pending`` key its value was made (epoch seconds)."""
    behind: tuple[str, ...] = ()
    """Commits the backend holds and could not read: ``values`` is older than
    the committed state by these."""
    foreign_links: tuple[str, ...] = ()
    """Symbolic links inside a file root: never followed, nothing behind them is
    in ``values`` (they are problems to fix)."""
    point: str = ""
    """How the commit point was found, in words."""


def lay_commits_over(
    stored: Mapping[str, bytes],
    committed: Mapping[str, bytes | None],
    committed_at: Mapping[str, float],
    *,
    behind: tuple[str, ...] = (),
    foreign_links: tuple[str, ...] = (),
    point: str = "",
) -> Snapshot:
    """What is committed: ``stored`` values with commits not applied yet laid over them.

    ``committed`` holds the newest value of each key in those commits
    (``None``: deleted); a key whose stored value differs from it is pending.
    """
    values = {key: data for key, data in stored.items() if key not in committed}
    values.update((key, data) for key, data in committed.items() if data is not None)
    pending = frozenset(key for key, data in committed.items() if stored.get(key) != data)
    return Snapshot(
        dict(sorted(values.items())),
        pending=pending,
        committed_at={key: committed_at[key] for key in pending if key in committed_at},
        behind=behind,
        foreign_links=foreign_links,
        point=point,
    )


class Backend(ABC):
    """Where the bytes go. Subclass it, implement the abstract methods, run the suite."""

    scheme: ClassVar[str] = ""
    """URL scheme this backend answers to in :func:`persistkit.open_backend`."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every implementation of a key-taking method refuses a key that climbs.

        :func:`check_key` runs before the subclass's own code, whoever calls it
        (the store, the command line, or user code calling the backend
        directly), so no backend can be reached with ``../evil``, ``/abs``,
        ``a//b``, ``.journal/x`` or a NUL.
        """
        super().__init_subclass__(**kwargs)
        for name, wrap in _KEY_CHECKS.items():
            method = cls.__dict__.get(name)
            if method is Backend.__dict__.get(name):
                continue  # the contract's own default, reassigned: keep its identity
            if callable(method) and not getattr(method, "_checks_keys", False):
                checked = wrap(method)
                checked._checks_keys = True  # type: ignore[attr-defined]
                setattr(cls, name, checked)

    read_only: bool = False
    """Set by those who only look (the command line's preflight and inspect):
    the backend then writes nothing, not even to finish a crashed writer's
    commits; it reports them through :meth:`unapplied_commits` instead."""

    applies_in_call_order: bool = False
    """True when ``put`` and ``delete`` never suspend, so that writes to a key
    apply in call order without the store having to queue them."""

    @property
    @abstractmethod
    def url(self) -> str:
        """A URL that names this backend's root, without credentials."""

    @classmethod
    def from_url(cls, url: str) -> Self:
        """The backend ``url`` names: what :func:`~persistkit.backends.open_backend` calls.

        A backend registered under a scheme (:func:`~persistkit.backends.register_backend`
        or the ``persistkit.backends`` entry point) overrides it, and refuses a URL
        it cannot honour with :class:`~persistkit.errors.InvalidNameError`. The
        default refuses every URL: a backend made only from objects (a client, a
        connection) is passed as ``backend=`` instead.
        """
        raise InvalidNameError(
            f"{cls.__name__} is not opened from a URL ({url!r}): build it and pass the "
            "backend object itself"
        )

    # -- single values ---------------------------------------------------------

    @abstractmethod
    async def get(self, key: str) -> Versioned | None:
        """The stored bytes and their version, or ``None`` when the key is absent."""

    @abstractmethod
    async def put(self, key: str, data: bytes, *, expect: Expected = ANY_VERSION) -> str:
        """Store ``data`` durably under ``key`` and return its new version.

        With ``expect`` set, the write happens only if the current version is
        ``expect`` (``None``: only if the key is absent); otherwise
        :class:`~persistkit.errors.ConflictError` is raised and nothing changes.
        """

    @abstractmethod
    async def delete(self, key: str, *, expect: Expected = ANY_VERSION) -> bool:
        """Remove ``key`` durably; ``False`` when it was already absent."""

    async def get_many(self, keys: Iterable[str]) -> list[Versioned | None]:
        """Several :meth:`get` at once; backends with a batch read override this."""
        return [await self.get(key) for key in keys]

    async def get_many_data(self, keys: Iterable[str]) -> list[bytes | None]:
        """The bytes of :meth:`get_many`, without versions (``None``: absent).

        What a reader that never compares versions needs: the commit hook of
        the statistics reads a few keys in every tick. A backend whose batch
        read can skip making version objects overrides this.
        """
        return [None if found is None else found.data for found in await self.get_many(keys)]

    # -- listing ---------------------------------------------------------------

    @abstractmethod
    def scan(self, namespace: str, *, recursive: bool = False) -> AsyncIterator[str]:
        """Stream the keys stored in ``namespace`` (``""`` is the root).

        Not recursive: only keys whose namespace is exactly ``namespace``.
        Recursive: every key below it. Never lists persistkit's own objects
        (temp files, quarantine, journal), never loads the whole listing at once.
        """

    # -- self-healing ------------------------------------------------------------

    async def clean_orphans(self, namespace: str, *, dry_run: bool = False) -> list[str]:
        """Remove leftovers of interrupted writes in ``namespace``; return what was found."""
        return []

    @abstractmethod
    async def quarantine(self, key: str, reason: str) -> QuarantineEntry:
        """Move the value at ``key`` aside with ``reason``; it is never deleted."""

    @abstractmethod
    def list_quarantine(self, namespace: str = "") -> AsyncIterator[QuarantineEntry]:
        """Quarantined values whose key lies below ``namespace``."""

    @abstractmethod
    async def read_quarantined(self, entry_id: str) -> bytes:
        """The bytes of a quarantined value, to inspect it."""

    @abstractmethod
    async def restore(self, entry_id: str, *, overwrite: bool = False) -> str:
        """Put a quarantined value back where it was; return its key.

        Refuses with :class:`~persistkit.errors.ConflictError` when a value has
        been stored there since, unless ``overwrite``.
        """

    @abstractmethod
    async def purge(self, entry_id: str) -> None:
        """Delete a quarantined value for good (an operator's explicit decision)."""

    # -- atomic commit of several keys -----------------------------------------

    commit_checks_versions: bool = False
    """True when :meth:`commit` takes ``expect=`` and checks it atomically with
    the commit; transactions then check their compare-and-sets at commit time,
    otherwise only when they are staged."""

    async def commit(self, writes: Mapping[str, bytes | None]) -> None:
        """Apply all ``writes`` (``None`` deletes) atomically: after a crash, all or none.

        A backend with ``commit_checks_versions`` also takes ``expect``, a map
        of keys to the version each must still have (``None``: absent), and
        raises :class:`~persistkit.errors.ConflictError` with nothing written
        when one has moved. Backends without multi-key atomicity leave this
        unimplemented.
        """
        raise NotImplementedError(f"{type(self).__name__} has no atomic multi-key commit")

    # -- operations ----------------------------------------------------------------

    async def recover(self) -> int:
        """Finish what stopped processes left, before anything is read; returns the commits found.

        A live session's start calls it. Backends whose commits are whole when
        acknowledged have nothing to do (the default).
        """
        return 0

    async def checkpoint(self) -> None:  # noqa: B027 - optional hook, most backends need none
        """Make every acknowledged commit whole in its final place (a session's close calls it).

        Backends whose commits are whole when acknowledged have nothing to do
        (the default).
        """

    # -- leases: one live instance per cluster ---------------------------------------

    leases: ClassVar[bool] = False
    """True for backends shared across hosts (Redis, S3) that keep leases and
    fence writes with their tokens; a live session then takes a :class:`Lease`
    per lock name. Local backends rely on the session's local locks alone."""

    async def acquire_lease(self, name: str, holder: Mapping[str, object], ttl: float) -> Lease:
        """Take the lease ``name`` for ``ttl`` seconds with a new, larger token.

        Raises :class:`~persistkit.errors.InstanceLockedError` naming the holder
        (host, pid, since, expiry) while another holder's lease has not lapsed.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no leases")

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease:
        """Extend ``lease`` by ``ttl`` seconds from now, same token.

        Raises :class:`~persistkit.errors.LeaseLostError` when it lapsed or
        another holder took it meanwhile.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no leases")

    async def release_lease(self, lease: Lease) -> None:
        """Give ``lease`` up (nothing happens if it is no longer this holder's)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no leases")

    async def read_leases(self) -> list[Lease]:
        """Every lease not yet lapsed, for the command line (read-only)."""
        return []

    # -- history: point-in-time reads and replays -----------------------------------

    keeps_history: bool = False
    """True when :meth:`history_records` answers: every commit and plain write is
    kept with its commit time (the file backend, unless opened with
    ``history=None``). The conformance suite runs its history tests on such
    backends only."""

    async def history_records(self, until_ns: int | None = None) -> RecordedHistory:
        """Every change this backend's history still holds, in commit order.

        ``until_ns`` (nanoseconds since the epoch) lets a backend skip what
        came later. A backend without :attr:`keeps_history` raises
        :class:`~persistkit.errors.HistoryUnavailableError`.
        """
        raise unavailable(self)

    async def changed_at(self, key: str) -> float | None:
        """When the value at ``key`` was last replaced (seconds since the epoch).

        ``None`` when the key is absent or the backend keeps no such time; the
        command line shows it, and ``migrate`` compares it to refuse overwriting
        newer data. Read-only.
        """
        return None

    async def unapplied_commits(self) -> list[str]:
        """Commits recorded but not yet applied to their keys; a start applies them.

        Read-only: it reports, it does not apply. Backends whose commits are
        applied in one step (or that have none) return ``[]``.
        """
        return []

    async def snapshot(self) -> Snapshot:
        """Every value at one commit point, read-only (``export``, ``inspect``, ``migrate``).

        A tick committed while the values are read is in the result whole or
        not at all. Commits the backend has recorded and not applied yet are
        read as committed (their keys in :attr:`Snapshot.pending`) where the
        backend can read them, and listed in :attr:`Snapshot.behind` where it
        cannot.

        The default reads everything twice and keeps the first read when the
        second agrees with it, key for key and byte for byte: every value then
        held from the end of the first read to the start of the second, which
        is the commit point. (A value changed and changed back to the very
        same bytes in between goes unseen.) After ``SNAPSHOT_ATTEMPTS`` (5)
        disagreeing pairs it raises :class:`~persistkit.errors.SnapshotError`:
        on a backend written without pause it is not a snapshot.
        """
        for _ in range(SNAPSHOT_ATTEMPTS):
            first = await self._read_committed()
            if first == await self._read_committed():
                return replace(first, point="two reads that agree key for key")
        raise SnapshotError(
            f"{self.url} changed during each of {SNAPSHOT_ATTEMPTS} pairs of reads: no read "
            "at one commit point could be made, so nothing was read. Run it again when the "
            "writers pause, or stop them"
        )

    async def _read_committed(self) -> Snapshot:
        """One read of every value (not at one point); :meth:`snapshot` compares two.

        Commits recorded and not applied cannot be read here: they are ``behind``.
        A backend that can read them overrides this and lays them over
        :meth:`_read_stored` (:func:`lay_commits_over`).
        """
        values = await self._read_stored()
        return Snapshot(values, behind=tuple(await self.unapplied_commits()))

    async def _read_stored(self) -> dict[str, bytes]:
        """Every stored value, key by key (not at one point)."""
        keys = sorted([key async for key in self.scan("", recursive=True)])
        return {
            key: stored.data
            for key, stored in zip(keys, await self.get_many(keys), strict=True)
            if stored is not None
        }

    async def durability_warnings(self) -> list[str]:
        """Settings of the storage that make an acknowledged write less than durable."""
        return []

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections and files; further use raises ``StoreClosedError``."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# The contract's own defaults check their keys too (the abstract ones are
# checked in each implementation, see Backend.__init_subclass__).
for _name in ("get_many", "commit", "clean_orphans", "changed_at"):
    _checked = _KEY_CHECKS[_name](Backend.__dict__[_name])
    _checked._checks_keys = True  # type: ignore[attr-defined]
    setattr(Backend, _name, _checked)
del _name, _checked


def split_key(key: str) -> tuple[str, str]:
    """``"a/b/c"`` -> ``("a/b", "c")``: namespace and entity id segment."""
    namespace, _, name = key.rpartition("/")
    return namespace, name


def join_key(namespace: str, name: str) -> str:
    """The key of ``name`` in ``namespace`` (``""`` is the root): what :func:`split_key` splits."""
    return f"{namespace}/{name}" if namespace else name


def new_quarantine_id(key: str) -> str:
    """A fresh, unique id for quarantining ``key``: ``{key}@{nanoseconds}-{random}``.

    Entity segments never contain ``@`` (:mod:`persistkit._names` percent-encodes
    it) and the stamp never does, so the id leads back to its key.
    """
    return f"{key}@{time.time_ns()}-{secrets.token_hex(3)}"


def quarantined_key(entry_id: str) -> str:
    """The key that quarantine entry ``entry_id`` was moved from.

    Refuses, with :class:`~persistkit.errors.InvalidNameError`, anything that
    :func:`new_quarantine_id` cannot have made: an id must never reach outside
    the quarantine.
    """
    parts = entry_id.split("/")
    if (
        not entry_id
        or "\x00" in entry_id
        or any(part in ("", ".", "..") for part in parts)
        or "@" not in parts[-1]
    ):
        raise InvalidNameError(f"{entry_id!r} is not a quarantine entry id")
    return entry_id.rpartition("@")[0]

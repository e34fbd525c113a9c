"""``PersistBase``: the async entity store every adapter is built on.

A store is one entity namespace (``{base_dir}/{entity_name}/``) holding values
by id. It owns everything a backend should not have to: names, validation,
encoding, ordering of writes to one key, retries of transient errors and the
self-healing scan at startup. The bytes go to a :class:`~persistkit.backends.Backend`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import orjson
from pydantic import TypeAdapter, ValidationError

from persistkit import _codec as codec
from persistkit import _config, _metrics
from persistkit._config import DEFAULT_BASE_DIR, Settings, active_settings, resolve_directory
from persistkit._history import PointInTime, format_ns, to_ns
from persistkit._keyed_lock import LoopLocalKeyedLocks
from persistkit._names import decode_segment, encode_segment, entity_id_text
from persistkit._retry import DEFAULT_RETRY, RetryPolicy
from persistkit._transaction import (
    Transaction,
    active_transaction,
    reading_transaction,
    transaction,
    transaction_for,
)
from persistkit.backends._base import (
    ANY_VERSION,
    Backend,
    Expected,
    QuarantineEntry,
    Versioned,
    join_key,
)
from persistkit.backends._memory import MemoryBackend
from persistkit.errors import (
    ConflictError,
    CorruptValueError,
    CrossBackendError,
    EntityNotFoundError,
    InvalidNameError,
    SchemaValidationError,
    StoreClosedError,
    TransientBackendError,
)

__all__ = [
    "Entry",
    "Finding",
    "InitReport",
    "PersistBase",
    "SegmentName",
    "Transaction",
    "transaction",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class SegmentName(str):
    """A name already encoded by :mod:`persistkit._names`; stores use it as is."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Entry(Generic[T]):
    """A value and the version it was read at (for compare-and-set)."""

    value: T
    version: str


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem the startup scan found."""

    key: str
    reason: str
    quarantine_id: str | None = None
    """Where it was moved; ``None`` in a read-only check."""


@dataclass(slots=True)
class InitReport:
    """What a startup scan of one store found and did."""

    namespace: str
    backend: str
    repaired: bool
    """False for a read-only check: nothing was moved or removed."""
    checked: int = 0
    orphans: list[str] = field(default_factory=list)
    """Temp files of interrupted writes (removed unless read-only)."""
    corrupt: list[Finding] = field(default_factory=list)
    """Values that did not parse or validate (quarantined unless read-only)."""
    warnings: list[str] = field(default_factory=list)
    """Backend settings that make an acknowledged write less than durable."""
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.orphans and not self.corrupt

    def summary(self) -> str:
        orphans, corrupt = (
            ("removed", "quarantined") if self.repaired else ("found", "to quarantine")
        )
        warnings = f", {len(self.warnings)} durability warnings" if self.warnings else ""
        return (
            f"{self.backend} {self.namespace or '/'}: {self.checked} values checked, "
            f"{len(self.orphans)} orphan temp files {orphans}, "
            f"{len(self.corrupt)} corrupt values {corrupt}{warnings}"
        )


_KEY_CACHE_SIZE = 4096
_SCAN_BATCH = 256
_FOREIGN_INIT_POLL = 0.005
"""Seconds between looks at a store's start that another thread's event loop runs."""

# Writes to one key are ordered per backend instance, whichever store issues them.
_ordering: weakref.WeakKeyDictionary[Backend, LoopLocalKeyedLocks] = weakref.WeakKeyDictionary()


def _ordering_for(backend: Backend) -> LoopLocalKeyedLocks:
    locks = _ordering.get(backend)
    if locks is None:
        locks = _ordering[backend] = LoopLocalKeyedLocks()
    return locks


def _synchronous_calls(
    backend: Backend,
) -> tuple[Callable[..., str] | None, Callable[[str], Versioned | None] | None]:
    """``put_now`` and ``get_now`` of a backend that never suspends, else ``None``s.

    The memory backend serves a backtest's every tick; calling it without a
    coroutine per call halves a write's cost. A subclass that overrides ``put``
    or ``get`` (to inject faults, say) keeps the awaited path it asked for.
    """
    kind = type(backend)
    if (
        isinstance(backend, MemoryBackend)
        and kind.put is MemoryBackend.put
        and kind.get is MemoryBackend.get
    ):
        return backend.put_now, backend.get_now
    return None, None


class _Route:
    """Where a store's operations go under one settings: backend, namespace and their helpers.

    A store without an explicit ``backend=`` has one route per settings it has
    been called under (the configured ones, a live session's); an operation
    takes its route once, at its start, so a ``configure()`` or another
    session's call in the middle never moves it.
    """

    __slots__ = ("backend", "get_now", "init", "keys", "locks", "namespace", "put_now", "scope")

    def __init__(self, scope: Settings | None, backend: Backend, namespace: str) -> None:
        self.scope = scope
        """The settings this route serves; ``None`` for an explicit ``backend=``."""
        self.backend = backend
        self.namespace = namespace
        self.locks = _ordering_for(backend)
        self.put_now, self.get_now = _synchronous_calls(backend)
        self.keys: dict[str | int, str] = {}
        self.init: asyncio.Future[InitReport] | None = None

    def key(self, entity_id: str | int) -> str:
        key = self.keys.get(entity_id)
        if key is None:
            key = f"{self.namespace}/{encode_segment(entity_id_text(entity_id))}"
            if len(self.keys) >= _KEY_CACHE_SIZE:
                self.keys.clear()
            self.keys[entity_id] = key
        return key


_ROUTES_KEPT = 8
_session_settings = _config.session_settings


class _MergesAtCommit:
    """The :meth:`PersistBase._merge_value` calls a transaction made on one key, applied
    again at its commit when another writer committed the key since the first of them
    read it.

    A commit hook (:meth:`Transaction.before_commit`) that does nothing on the commit's
    first attempt: the block's staged value goes with the version it was derived
    from, a compare-and-set. When that fails on this key (a ``ConflictError``), the
    commit runs its hooks again, and this one reads what is committed now and applies
    the block's changes of the key to it, in the order they were made. Only changes
    that lead, step by step, to the value the block leaves: one that a plain write
    followed (or a failed savepoint dropped) is not applied, and the conflict stands.
    """

    __slots__ = ("attempts", "key", "steps", "store")

    def __init__(self, store: PersistBase[Any], key: str) -> None:
        self.store = store
        self.key = key
        self.attempts = 0
        self.steps: dict[str, tuple[Expected, Callable[[Any], Any]]] = {}
        """Staged version made by a merge -> (the version it read, its change)."""

    @classmethod
    def remember(
        cls,
        store: PersistBase[Any],
        entity_id: str | int,
        read: Expected,
        staged: str,
        change: Callable[[Any], Any],
    ) -> None:
        route = store._route()
        txn = transaction_for(route.backend)
        if txn is None:
            return
        key = route.key(entity_id)
        committing = txn.outermost()  # a savepoint's hooks would not outlive a second one
        name = (cls, key)
        hook = committing.registered_hook(name)
        if not isinstance(hook, cls):
            hook = cls(store, key)
            committing.before_commit(name, (key,), hook)
        hook.steps[staged] = (read, change)

    async def __call__(self, txn: Transaction) -> None:
        self.attempts += 1
        if self.attempts == 1:
            return  # the compare-and-set the block staged
        store, key = self.store, self.key
        read = txn.expected.get(key, ANY_VERSION)
        if read is ANY_VERSION:
            return  # nothing compared: this key was not the conflict
        stored = await store._get(txn.backend, key)
        now = None if stored is None else stored.version
        if now == read:
            return  # unchanged: another hook's key was the conflict
        changes: list[Callable[[Any], Any]] = []
        version: Expected = txn.staged_version(key)
        while isinstance(version, str) and version in self.steps:
            version, change = self.steps[version]
            changes.append(change)
        if not changes or version != read:
            # Not raised with the key: the commit would run its hooks again, in vain.
            raise ConflictError(
                f"{key} was committed by another writer since this block read it, and "
                "the block's last write of it was not a merge of it (or was not "
                "derived from that read): nothing was committed"
            )
        value = None if stored is None else store._parse(key, stored.data)
        for change in reversed(changes):
            value = change(value)
        txn.include(key, store._encode(value))
        txn.expected[key] = now


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}
"""One validator per model, shared by the stores that use it: building one costs about a
millisecond and tens of kilobytes, and a bot opens a store per pair and domain (with the
statistics on, three per pair at its first write after a start)."""


def _adapter(model: Any) -> TypeAdapter[Any]:
    try:
        found = _ADAPTERS.get(model)
    except TypeError:  # an unhashable annotation: its own validator
        return TypeAdapter(model)
    if found is None:
        found = _ADAPTERS[model] = TypeAdapter(model)
    return found


class PersistBase(Generic[T]):
    """An async store of JSON values by id, durable when each write returns.

    ``PersistBase(entity_name, base_dir)`` keeps values at
    ``{base_dir}/{entity_name}/{id}.json``. ``base_dir`` is made absolute here,
    so a later ``chdir`` does not move the data; without it, the root in force
    when the store is made (``configure(base_dir=...)``, else
    ``PERSISTKIT_BASE_DIR``, else ``./dump/data``). When ``base_dir`` lies under
    the root given to :func:`persistkit.configure`, the configured backend
    (memory in backtest mode, Redis, S3) serves it. That is looked up at each
    call, not once: after ``configure(mode="backtest")`` the store lives in
    memory (whatever its ``base_dir``), and inside a
    :class:`~persistkit.LiveSession`'s ticks it writes to the session's backend.
    ``backend=`` picks one explicitly, for good. ``model=`` (a pydantic model or
    any type pydantic validates) validates every value written and read, and
    the startup scan.

    Subclass it and override methods to store elsewhere, as with backtest-kit's
    custom adapters; the domain adapters take such a class.
    """

    def __init__(
        self,
        entity_name: str,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        backend: Backend | None = None,
        model: Any = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        if backend is not None and not isinstance(backend, Backend):
            hint = f"; open one from a URL with open_backend({backend!r})"
            raise TypeError(
                f"backend= takes a Backend, not {type(backend).__name__}"
                + (hint if isinstance(backend, str) else "")
            )
        self.entity_name = str(entity_name)
        if base_dir is None:
            # The root in force now: configure()'s, else PERSISTKIT_BASE_DIR, else
            # ./dump/data, so a bot that never names a directory runs where its
            # deploy says, like the domain adapters and LiveSession. An explicit
            # backend is never routed by directory: settings (and a file backend,
            # which needs fcntl) are not built for it.
            base_dir = DEFAULT_BASE_DIR if backend is not None else active_settings().base_dir
        self.base_dir = os.path.abspath(os.fspath(base_dir))
        # A plain str either way: backends refuse subclasses of str as keys.
        segment = (
            str(entity_name)
            if isinstance(entity_name, SegmentName)
            else encode_segment(entity_name)
        )
        self._segment = segment
        self._routes: dict[int, _Route] = {}
        self._last: _Route
        if backend is None:
            self._reroute(active_settings())
        else:
            self._last = _Route(None, backend, segment)
        self._retry = retry
        self._schema: TypeAdapter[Any] | None = None
        if model is not None:
            self.set_model(model)
        self._closed = False

    def __repr__(self) -> str:
        route = self._route()
        return f"{type(self).__name__}({route.namespace!r} on {route.backend.url})"

    @property
    def backend(self) -> Backend:
        """The backend this store writes to from here, now (see the class docstring)."""
        return self._route().backend

    @property
    def namespace(self) -> str:
        """This store's key prefix on :attr:`backend`."""
        return self._route().namespace

    def _route(self) -> _Route:
        """The route of an operation starting now: a ContextVar.get and an identity check."""
        route = self._last
        if route.scope is None:
            return route  # an explicit backend= stays put
        scope = _session_settings.get() or _config._current
        if scope is route.scope:
            return route
        return self._reroute(active_settings())

    def _reroute(self, scope: Settings) -> _Route:
        route = self._routes.get(id(scope))
        if route is None or route.scope is not scope:
            backend, parent = resolve_directory(self.base_dir, scope)
            route = _Route(scope, backend, join_key(parent, self._segment))
            if len(self._routes) >= _ROUTES_KEPT:
                self._routes.clear()
            self._routes[id(scope)] = route
        self._last = route
        return route

    def _keep_prefix(self, prefix: str) -> None:
        """Keep keys under ``prefix`` on an explicit backend too (a domain adapter's)."""
        route = self._last
        if route.scope is None and not route.namespace.startswith(f"{prefix}/"):
            self._last = _Route(None, route.backend, join_key(prefix, route.namespace))

    def set_model(self, model: Any) -> None:
        """Validate values against ``model`` from now on (adapters call it after construction)."""
        self._schema = _adapter(model)

    # -- helpers -------------------------------------------------------------------

    def _key(self, entity_id: str | int) -> str:
        return self._route().key(entity_id)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self!r} is closed")

    async def _call(self, operation: Callable[[], Awaitable[R]]) -> R:
        """Run a backend operation; transient failures go to the retry policy."""
        try:
            return await operation()
        except TransientBackendError as exc:
            return await self._retry.call(operation, exc)

    # The three hot paths spell out _call's try/except: no closure is built
    # unless the first attempt fails.

    async def _get(self, backend: Backend, key: str) -> Versioned | None:
        try:
            return await backend.get(key)
        except TransientBackendError as exc:
            return await self._retry.call(lambda: backend.get(key), exc)

    async def _put(self, route: _Route, key: str, data: bytes, expect: Expected) -> str:
        backend = route.backend
        if backend.applies_in_call_order:
            try:
                return await backend.put(key, data, expect=expect)
            except TransientBackendError as exc:
                return await self._retry.call(lambda: backend.put(key, data, expect=expect), exc)
        locks = route.locks.current()
        await locks.acquire(key)
        try:
            try:
                return await backend.put(key, data, expect=expect)
            except TransientBackendError as exc:
                return await self._retry.call(lambda: backend.put(key, data, expect=expect), exc)
        finally:
            locks.release(key)

    async def _delete(self, route: _Route, key: str, expect: Expected) -> bool:
        backend = route.backend
        locks = None if backend.applies_in_call_order else route.locks.current()
        if locks is not None:
            await locks.acquire(key)
        try:
            return await self._call(lambda: backend.delete(key, expect=expect))
        finally:
            if locks is not None:
                locks.release(key)

    def _encode(self, value: Any) -> bytes:
        if self._schema is not None:
            try:
                value = self._schema.validate_python(value)
            except ValidationError as exc:
                raise SchemaValidationError(
                    f"{self.namespace}: value does not match its model: {exc}",
                    cast(list[dict[str, object]], exc.errors()),
                ) from exc
        return codec.encode(value)

    def _parse(self, key: str, data: bytes) -> Any:
        """Bytes to value, or :class:`CorruptValueError` saying why they are corrupt."""
        if self._schema is None:
            try:
                return orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                reason = f"unparseable JSON: {exc}"
                raise CorruptValueError(f"{key}: {reason}", key=key, reason=reason) from exc
        try:
            # One pass in pydantic-core: parse and validate together.
            return self._schema.validate_json(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            if first["type"] == "json_invalid":
                reason = f"unparseable JSON: {first['msg']}"
            else:
                where = ".".join(str(part) for part in first["loc"]) or "value"
                reason = f"schema: {exc.error_count()} errors, first at {where}: {first['msg']}"
            raise CorruptValueError(f"{key}: {reason}", key=key, reason=reason) from exc

    # -- startup ---------------------------------------------------------------------

    async def wait_for_init(self) -> InitReport:
        """Prepare the store once; concurrent and later callers share the result.

        Removes temp files of interrupted writes, reads and validates every
        value, and quarantines each that does not parse or validate (nothing is
        ever deleted); on a read-only backend it only reports. The report is
        returned and logged.
        """
        self._check_open()
        route = self._route()  # each backend the store is served by is scanned once
        done = route.init
        if done is not None and done.done() and not done.cancelled() and not done.exception():
            return done.result()  # every adapter call asks: no future to make, no suspension
        here = asyncio.get_running_loop()
        init = route.init
        while (
            init is not None
            and not init.done()
            and init.get_loop() is not here
            and not init.get_loop().is_closed()
        ):
            # Started by a thread running an event loop of its own: its future
            # cannot be awaited here, nor told to wake this loop safely (that
            # loop may close first), so this loop looks until it is done.
            await asyncio.sleep(_FOREIGN_INIT_POLL)
            init = route.init
        if (
            init is not None
            and init.done()
            and not init.cancelled()
            and init.get_loop() is not here
        ):
            try:
                return init.result()  # that loop's report, or its error
            except BaseException:
                if route.init is init:
                    route.init = None  # a failed start (server down) may be retried
                raise
        if init is None or init.cancelled() or (not init.done() and init.get_loop() is not here):
            # None yet, or cut short with the loop that ran it (cancelled as that loop
            # ended, or that loop closed first): this loop starts it again.
            # A read-only backend (an operator's look) is checked, never repaired.
            repair = not route.backend.read_only
            route.init = init = asyncio.ensure_future(self._check(route, repair=repair))
        try:
            return await asyncio.shield(init)
        except asyncio.CancelledError:
            raise
        except BaseException:
            if route.init is init:
                route.init = None  # a failed start (server down) may be retried
            raise

    async def check(
        self, *, repair: bool = False, on_progress: Callable[[int], None] | None = None
    ) -> InitReport:
        """Scan the store: orphan temps and values that do not parse or validate.

        ``repair=False`` (a preflight) changes nothing; ``repair=True`` removes
        orphans and quarantines bad values, as :meth:`wait_for_init` does.
        ``on_progress`` is called with the count of values checked so far.
        """
        return await self._check(self._route(), repair=repair, on_progress=on_progress)

    async def _check(
        self,
        route: _Route,
        *,
        repair: bool = False,
        on_progress: Callable[[int], None] | None = None,
    ) -> InitReport:
        started = time.perf_counter()
        backend, namespace = route.backend, route.namespace
        report = InitReport(namespace, backend.url, repair)
        report.warnings = await self._call(backend.durability_warnings)
        report.orphans = await self._call(
            lambda: backend.clean_orphans(namespace, dry_run=not repair)
        )

        async def listing() -> list[str]:
            return [key async for key in backend.scan(namespace)]

        # The listing is read whole, so that a reply lost mid-scan repeats the
        # scan under the retry policy, as any read is repeated.
        keys = await self._call(listing)
        for start in range(0, len(keys), _SCAN_BATCH):
            await self._check_batch(backend, keys[start : start + _SCAN_BATCH], report, repair)
            if on_progress is not None:
                on_progress(report.checked)
        report.seconds = time.perf_counter() - started
        if on_progress is not None:
            on_progress(report.checked)
        level = logging.INFO if report.clean else logging.WARNING
        logger.log(level, "persistkit startup: %s", report.summary())
        for finding in report.corrupt:
            logger.log(level, "  %s: %s -> %s", finding.key, finding.reason, finding.quarantine_id)
        return report

    async def _check_batch(
        self, backend: Backend, keys: list[str], report: InitReport, repair: bool
    ) -> None:
        if not keys:
            return
        stored = await self._call(lambda: backend.get_many(keys))
        for key, item in zip(keys, stored, strict=True):
            report.checked += 1
            if item is None:
                continue  # removed while we scanned
            try:
                self._parse(key, item.data)
            except CorruptValueError as exc:
                reason = exc.reason or str(exc)
                entry_id = None
                if repair:
                    entry = await self._call(
                        lambda key=key, reason=reason: backend.quarantine(key, reason)  # type: ignore[misc]
                    )
                    entry_id = entry.id
                    recorder = _metrics.recorder
                    if recorder is not None:
                        recorder.quarantines.add(1, recorder.backend(backend.scheme))
                report.corrupt.append(Finding(key, reason, entry_id))

    # -- values ------------------------------------------------------------------------

    async def read_entry(self, entity_id: str | int) -> Entry[T]:
        """The value of ``entity_id`` with its version; ``EntityNotFoundError`` if absent."""
        self._check_open()
        route = self._route()
        key = route.key(entity_id)
        active = reading_transaction(route.backend) if active_transaction.get() else None
        if active is not None:
            found, data = active.lookup(key)
            if found:
                if data is None:
                    raise EntityNotFoundError(f"no value for {entity_id!r} in {route.namespace}")
                return Entry(self._parse(key, data), cast(str, active.staged_version(key)))
        stored = await self._get(route.backend, key)
        if stored is None:
            raise EntityNotFoundError(f"no value for {entity_id!r} in {route.namespace}")
        return Entry(self._parse(key, stored.data), stored.version)

    async def read_value(self, entity_id: str | int, *, as_of: PointInTime | None = None) -> T:
        """The value of ``entity_id``; ``EntityNotFoundError`` (a ``KeyError``) if absent.

        ``as_of`` (epoch milliseconds or an aware ``datetime``): the value
        committed at that instant, from the backend's history (the last commit
        at or before it; commit times follow commit order). A backend without
        :attr:`~persistkit.backends.Backend.keeps_history`, or a time before
        its history begins, raises :class:`~persistkit.errors.HistoryUnavailableError`.
        """
        recorder = _metrics.recorder
        started = time.perf_counter() if recorder is not None else 0.0
        try:
            if as_of is not None:
                return await self._read_as_of(entity_id, to_ns(as_of))
            route = self._route()
            get_now = route.get_now
            if get_now is None or active_transaction.get() is not None:
                return (await self.read_entry(entity_id)).value
            self._check_open()
            key = route.key(entity_id)
            stored = get_now(key)
            if stored is None:
                raise EntityNotFoundError(f"no value for {entity_id!r} in {route.namespace}")
            return cast(T, self._parse(key, stored.data))
        finally:
            if recorder is not None:
                recorder.read_duration.record(
                    time.perf_counter() - started, recorder.backend(self._last.backend.scheme)
                )

    async def _read_as_of(self, entity_id: str | int, time_ns: int) -> T:
        self._check_open()
        route = self._route()
        key = route.key(entity_id)
        history = await route.backend.history_records(until_ns=time_ns)
        data = history.value_at(key, time_ns)
        if data is None:
            raise EntityNotFoundError(
                f"no value for {entity_id!r} in {route.namespace} at {format_ns(time_ns)}"
            )
        return cast(T, self._parse(key, data))

    async def has_value(self, entity_id: str | int) -> bool:
        self._check_open()
        route = self._route()
        key = route.key(entity_id)
        active = reading_transaction(route.backend) if active_transaction.get() else None
        if active is not None:
            found, data = active.lookup(key)
            if found:
                return data is not None
        return await self._get(route.backend, key) is not None

    async def write_value(
        self, entity_id: str | int, value: T, *, if_version: Expected = ANY_VERSION
    ) -> str:
        """Store ``value``; durable when this returns. Returns the new version.

        ``if_version`` makes it a compare-and-set: a version from
        :meth:`read_entry` (write only if unchanged since) or ``None`` (only if
        absent); otherwise :class:`~persistkit.errors.ConflictError`.
        Writes to one id are applied in the order they were called. Inside
        :func:`~persistkit._transaction.transaction` the write is staged and committed with
        the block; a store on another backend than the transaction's is refused with
        :class:`~persistkit.errors.CrossBackendError` (it could not be atomic).
        """
        recorder = _metrics.recorder
        started = time.perf_counter() if recorder is not None else 0.0
        try:
            self._check_open()
            route = self._last  # self._route(), inlined: this is the backtest hot path
            scope = route.scope
            if scope is not None and scope is not (_session_settings.get() or _config._current):
                route = self._route()
            key = route.key(entity_id)
            data = self._encode(value)  # before any I/O: a bad value changes nothing
            if active_transaction.get() is not None:
                active = self._transaction_of(route, key)
                if if_version is ANY_VERSION:
                    if active._committing is not None:  # no await on the hot path else
                        await active.after_commit_in_progress()
                    return cast(str, active.stage_now(key, data))
                return cast(str, await active.stage(key, data, if_version))
            if route.put_now is not None:
                return route.put_now(key, data, expect=if_version)
            return await self._put(route, key, data, if_version)
        except ConflictError:
            if recorder is not None:
                recorder.conflicts.add(1, recorder.backend(self._last.backend.scheme))
            raise
        finally:
            if recorder is not None:
                recorder.write_duration.record(
                    time.perf_counter() - started, recorder.backend(self._last.backend.scheme)
                )

    @staticmethod
    def _transaction_of(route: _Route, key: str) -> Transaction:
        """The active transaction that stages ``key``, or :class:`CrossBackendError`."""
        active = transaction_for(route.backend)
        if active is None:
            current = active_transaction.get()
            raise CrossBackendError(
                f"{key} is on {route.backend.url}, but the transaction in progress commits to "
                f"{current.backend.url if current is not None else 'another backend'}: one "
                "commit cannot span two backends, so the write was refused (nothing written). "
                "Use a store on the transaction's backend, or write it outside the block."
            )
        return active

    async def update_value(
        self,
        entity_id: str | int,
        change: Callable[[T | None], T],
        *,
        attempts: int = 1000,
    ) -> T:
        """Read, apply ``change`` (it gets ``None`` when absent), write back if unchanged.

        Retries on :class:`~persistkit.errors.ConflictError`, so concurrent
        updates from threads or processes are never lost. Inside a transaction
        the result is staged with the version it was derived from, and the
        commit fails with ``ConflictError`` when another writer committed the
        value first: the block may have used the result (an id it took, say).
        """
        return (await self._update(entity_id, change, attempts))[0]

    async def _update(
        self, entity_id: str | int, change: Callable[[T | None], T], attempts: int
    ) -> tuple[T, Expected, str]:
        """:meth:`update_value`, with the version the value was derived from and the one
        written (staged, inside a transaction)."""
        for _ in range(attempts):
            try:
                entry = await self.read_entry(entity_id)
                current, version = entry.value, cast(Expected, entry.version)
            except EntityNotFoundError:
                current, version = None, None
            new_value = change(current)
            try:
                staged = await self.write_value(entity_id, new_value, if_version=version)
            except ConflictError:
                await asyncio.sleep(0)
                continue
            return new_value, version, staged
        raise ConflictError(f"{entity_id!r}: gave up after {attempts} conflicting updates")

    async def _merge_value(self, entity_id: str | int, change: Callable[[T | None], T]) -> T:
        """:meth:`update_value` whose change is applied again at commit, inside a transaction,
        when another writer committed the value first (:class:`_MergesAtCommit`).

        For a value that merges entries by their own ids (a pair's order intents),
        where what the block does with the result never depends on the rest of
        the value. A store whose class overrides :meth:`write_value` (its own
        checks) keeps the compare-and-set: the commit could not run those checks.
        """
        new_value, read, staged = await self._update(entity_id, change, 1000)
        if type(self).write_value is PersistBase.write_value:
            _MergesAtCommit.remember(self, entity_id, read, staged, change)  # in a transaction
        return new_value

    async def remove_value(
        self, entity_id: str | int, *, if_version: Expected = ANY_VERSION
    ) -> bool:
        """Remove ``entity_id`` durably; ``False`` when it was already absent."""
        self._check_open()
        route = self._route()
        key = route.key(entity_id)
        if active_transaction.get() is not None:
            active = self._transaction_of(route, key)
            existed = await active.version_of(key) is not None
            await active.stage(key, None, if_version)
            return existed
        return await self._delete(route, key, if_version)

    async def remove_all(self) -> int:
        """Remove every value of this store; returns how many were removed."""
        removed = 0
        batch: list[str] = []
        async for entity_id in self.keys():
            batch.append(entity_id)
            if len(batch) >= 1000:
                removed += await self._remove_batch(batch)
                batch = []
        return removed + await self._remove_batch(batch)

    async def _remove_batch(self, ids: list[str]) -> int:
        return sum([await self.remove_value(entity_id) for entity_id in ids])

    # -- iteration ---------------------------------------------------------------------

    async def keys(self) -> AsyncIterator[str]:
        """Stream the ids in this store (as text; an int id comes back as its digits)."""
        self._check_open()
        route = self._route()
        prefix_length = len(route.namespace) + 1
        async for key in self._scan_keys(route):
            try:
                yield decode_segment(key[prefix_length:])
            except InvalidNameError:
                logger.warning("persistkit: ignoring %s, not a name persistkit wrote", key)

    async def _scan_keys(self, route: _Route) -> AsyncIterator[str]:
        """The backend's listing, with the writes staged in a transaction applied."""
        active = reading_transaction(route.backend) if active_transaction.get() else None
        staged = active.staged_in(route.namespace) if active is not None else {}
        async for key in route.backend.scan(route.namespace):
            if key in staged and staged.pop(key) is None:
                continue
            yield key
        for key, data in staged.items():
            if data is not None:
                yield key

    async def values(self) -> AsyncIterator[T]:
        """Stream the values in this store."""
        self._check_open()
        route = self._route()
        active = reading_transaction(route.backend) if active_transaction.get() else None
        async for key in self._scan_keys(route):
            if active is not None:
                found, data = active.lookup(key)
                if found:
                    if data is not None:
                        yield self._parse(key, data)
                    continue
            stored = await self._get(route.backend, key)
            if stored is not None:
                yield self._parse(key, stored.data)

    async def filter(self, predicate: Callable[[T], bool]) -> AsyncIterator[T]:
        """Stream the values for which ``predicate`` is true."""
        async for value in self.values():
            if predicate(value):
                yield value

    async def take(
        self, total: int, predicate: Callable[[T], bool] | None = None
    ) -> AsyncIterator[T]:
        """Stream at most ``total`` values (matching ``predicate`` when given)."""
        if total <= 0:
            return
        taken = 0
        async for value in self.values():
            if predicate is None or predicate(value):
                yield value
                taken += 1
                if taken >= total:
                    return

    # -- quarantine --------------------------------------------------------------------

    async def list_quarantined(self) -> list[QuarantineEntry]:
        """Values of this store moved aside at startup, with their reasons."""
        route = self._route()
        return [entry async for entry in route.backend.list_quarantine(route.namespace)]

    async def restore_quarantined(self, entry_id: str, *, overwrite: bool = False) -> str:
        """Put a quarantined value back (after fixing it by hand, say); returns its key."""
        return await self.backend.restore(entry_id, overwrite=overwrite)

    async def aclose(self) -> None:
        """Refuse further use. The backend is shared and stays open."""
        self._closed = True

    async def __aenter__(self) -> PersistBase[T]:
        await self.wait_for_init()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

"""The blocking API: the same names as :mod:`persistkit`, with blocking methods.

For bots that are not async (freqtrade's callbacks, backtrader, plain scripts)::

    from persistkit import sync as persistkit

    session = persistkit.LiveSession([("BTCUSDT", "trend")], risk_name="main")
    state = session.start()
    with session.tick():                      # one atomic commit, as `async with`
        persistkit.PersistSignalAdapter.write_signal_data(row, "BTCUSDT", "trend")
        persistkit.PersistRiskAdapter.write_position_data(positions, "main")
    session.close()

Nothing here is written twice: each class is derived from its async original,
method by method (:func:`blocking_twin_name` says which name each method takes:
the same, except ``aclose`` -> ``close``, ``async with`` -> ``with``, ``async
for`` -> ``for``). A call runs the async method on one private event-loop
thread per process and waits for it, so that clients keep their connections
(``asyncio.run`` around each call would close the loop a Redis client belongs
to). What the async method raises, the blocking one raises: the same typed
error, its traceback running through the loop thread. Values that are async
objects come back blocking (a store's ``backend``, ``keys()`` as an iterator).

- Several threads may call at once. Each thread has its own scope: a
  ``with session.tick():`` block in one thread collects the writes that thread
  makes, not another's.
- Called from inside a running event loop, every method raises
  :class:`~persistkit.errors.BlockingCallError`: it would stop that loop. Use
  the async API there; also for callbacks the async core calls on its loop
  (``update_value``'s function, ``filter``'s predicate), which must not call
  this API in turn.
- ``LiveSession.run`` takes a plain function ``tick(n)``, called in a
  thread of its own (one for the whole run) inside the tick's scope; it
  installs its SIGTERM/SIGINT handlers on the main thread, which forward the
  signals to the session (call ``run`` from the main thread, or pass
  ``stop_signals=()``). A tick that hangs is left behind in its daemon thread
  once the stop grace runs out, as the async ``run`` cancels one.
- ``LiveSession.reconcile`` takes a plain function ``lookup(intent)`` (a
  blocking exchange client's query), called in a thread of its own.
- A process forked after a blocking call starts its own loop thread on its
  first call; the fork waits for the write in progress. A Redis or S3
  backend opened from a URL before the fork opens its own connections in the
  child; one given a ready client raises ``ForkedClientError`` there (open a
  new one). A live session's ticks raise ``LeaseLostError`` in the child
  when it holds leases (Redis, S3).
- The calls work in ``atexit`` handlers and in threads that outlive the main one.

Objects of the async API passed in (a ``RedisBackend``, a ``PersistBase``
subclass for ``use_persist_signal_adapter``) are accepted as they are;
:func:`blocking` gives the blocking twin of one (``blocking(S3Backend(...))``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import queue
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from types import FrameType, TracebackType
from typing import Any, ClassVar, TypeVar

import persistkit
from persistkit import _portal, _stats
from persistkit._domains import intent as _intent
from persistkit._domains import partial as _partial
from persistkit._domains import risk as _risk
from persistkit._domains import signal as _signal
from persistkit._live import session as _session
from persistkit._store import PersistBase as _AsyncPersistBase
from persistkit._transaction import Transaction as _AsyncTransaction
from persistkit.backends import _base as _backend_base

__all__ = [
    "Backend",
    "BlockingIterator",
    "LiveSession",
    "Partial",
    "PartialUtils",
    "PersistBase",
    "PersistIntentAdapter",
    "PersistIntentUtils",
    "PersistPartialAdapter",
    "PersistPartialUtils",
    "PersistRiskAdapter",
    "PersistRiskUtils",
    "PersistScheduleAdapter",
    "PersistScheduleUtils",
    "PersistSignalAdapter",
    "PersistSignalUtils",
    "Schedule",
    "ScheduleUtils",
    "Transaction",
    "blocking",
    "blocking_twin_name",
    "open_backend",
    "transaction",
]

T = TypeVar("T")

_TWIN_NAMES = {
    "aclose": "close",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
}
_PROTOCOLS = frozenset(
    name for pair in _TWIN_NAMES.items() for name in pair if name.startswith("__")
)
"""The dunder methods that count as public: ``async with``/``async for`` and their twins."""


def blocking_twin_name(name: str) -> str:
    """The name the blocking twin of the async method ``name`` takes."""
    return _TWIN_NAMES.get(name, name)


def public_methods(cls: type) -> dict[str, Any]:
    """The methods (and properties) of ``cls`` that get a blocking twin, by name.

    Public names, and the ``async with``/``async for`` protocols (and the blocking ones).
    """
    found = {}
    for name in dir(cls):
        if name.startswith("_") and name not in _PROTOCOLS:
            continue
        member = inspect.getattr_static(cls, name)
        if isinstance(member, (property, staticmethod, classmethod)) or inspect.isfunction(member):
            found[name] = member
    return found


class _Blocking:
    """What every blocking twin is: the async object it drives, and the loop calls."""

    __slots__ = ("_async",)
    _async_class: ClassVar[type]
    _async: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Made on the loop thread, in this thread's scope, like every call.
        self._async = _portal.call(self._async_class, *_unwrap_all(args), **_unwrap_map(kwargs))

    @classmethod
    def _driving(cls, async_object: Any) -> Any:
        twin = object.__new__(cls)
        twin._async = async_object
        return twin

    def __repr__(self) -> str:
        return f"<blocking {self._async!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Blocking) and other._async is self._async

    def __hash__(self) -> int:
        return hash(self._async)

    def __getattr__(self, name: str) -> Any:
        # Plain data of the async object (session.restored, session.pairs ...):
        # every method and property has a twin of its own above.
        if name.startswith("_"):
            raise AttributeError(name)
        found = getattr(self._async, name)
        if inspect.ismethod(found) or inspect.isfunction(found):
            twin = blocking_twin_name(name)
            raise AttributeError(
                f"{type(self).__name__}.{name} is not part of the blocking API"
                + (f": its blocking twin is {twin}()" if twin != name else "")
            )
        return _wrap(found)


_twins: dict[type, type[_Blocking]] = {}


def blocking(value: Any) -> Any:
    """The blocking twin of an object of the async API, as the blocking API hands it out.

    ``blocking(RedisBackend(client))`` is a backend with blocking methods; an
    async iterator becomes a :class:`BlockingIterator`; other values are returned as they are.
    """
    return _wrap(value)


def _wrap(value: Any) -> Any:
    """``value`` as the blocking API hands it out: async objects get their twin."""
    if isinstance(value, _Blocking):
        return value
    for cls in type(value).__mro__:
        twin = _twins.get(cls)
        if twin is not None:
            return twin._driving(value)
    if isinstance(value, AsyncIterator):
        return BlockingIterator(value)
    return value


def _unwrap(value: Any) -> Any:
    return value._async if isinstance(value, _Blocking) else value


def _unwrap_all(values: Sequence[Any]) -> list[Any]:
    return [_unwrap(value) for value in values]


def _unwrap_map(values: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _unwrap(value) for name, value in values.items()}


def _blocking_call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return _wrap(_portal.call(function, *_unwrap_all(args), **_unwrap_map(kwargs)))


class BlockingIterator(Iterator[T]):
    """An async iterator of the core (``keys()``, ``scan()``), driven one item per call."""

    def __init__(self, async_iterator: AsyncIterator[T]) -> None:
        self._async = async_iterator

    def __iter__(self) -> BlockingIterator[T]:
        return self

    def __next__(self) -> T:
        try:
            return _blocking_call(self._async.__anext__)  # type: ignore[no-any-return]
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        """Finish the async iterator now (an abandoned one is finished when collected)."""
        aclose = getattr(self._async, "aclose", None)
        if aclose is not None:
            _portal.call(aclose)


def _blocking_method(name: str, member: Any) -> Any:
    """The blocking twin of the method or property ``name`` (``member``, as found)."""
    if isinstance(member, property):
        return property(lambda self: _blocking_call(getattr, self._async, name), doc=member.__doc__)
    if isinstance(member, (staticmethod, classmethod)):
        original = member.__func__

        def static(self_or_cls: Any, *args: Any, **kwargs: Any) -> Any:
            return _blocking_call(getattr(_async_class_of(self_or_cls), name), *args, **kwargs)

        functools.update_wrapper(static, original)
        static.__name__ = static.__qualname__ = blocking_twin_name(name)
        return classmethod(static)
    if name == "__aenter__":

        def enter(self: _Blocking) -> Any:
            entered = _portal.call(self._async.__aenter__)
            return self if entered is self._async else _wrap(entered)

        twin: Callable[..., Any] = enter
    elif name == "__aexit__":

        def exit_(
            self: _Blocking,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> Any:
            return _portal.call(self._async.__aexit__, exc_type, exc, tb)

        twin = exit_
    elif name == "__aiter__":

        def iterate(self: _Blocking) -> Any:
            return BlockingIterator(_portal.call(self._async.__aiter__))

        twin = iterate
    else:

        def method(self: _Blocking, *args: Any, **kwargs: Any) -> Any:
            return _blocking_call(getattr(self._async, name), *args, **kwargs)

        twin = method
    functools.update_wrapper(twin, member)  # the docstring and signature, and __wrapped__
    twin.__name__ = twin.__qualname__ = blocking_twin_name(name)
    return twin


def _async_class_of(self_or_cls: Any) -> Any:
    return self_or_cls._async_class


def _derive(
    async_class: type,
    *,
    name: str | None = None,
    specialized: Mapping[str, Callable[..., Any]] | None = None,
) -> type[_Blocking]:
    """The blocking twin class of ``async_class``: one twin per public method, no more.

    ``specialized`` replaces the derived twin of a method whose arguments need
    more than unwrapping (``LiveSession.run``'s tick function); it still calls
    the async method to do the work.
    """
    namespace: dict[str, Any] = {
        "__slots__": (),
        "__module__": __name__,
        "__doc__": f"Blocking twin of :class:`{async_class.__module__}.{async_class.__qualname__}`."
        + (f"\n\n{inspect.getdoc(async_class)}" if async_class.__doc__ else ""),
        "_async_class": async_class,
    }
    for member_name, member in public_methods(async_class).items():
        namespace[blocking_twin_name(member_name)] = _blocking_method(member_name, member)
    for member_name, twin in (specialized or {}).items():
        assert blocking_twin_name(member_name) in namespace, member_name
        namespace[blocking_twin_name(member_name)] = twin
    derived = type(name or async_class.__name__, (_Blocking,), namespace)
    _twins[async_class] = derived
    return derived


def _blocking_function(function: Callable[..., Any]) -> Callable[..., Any]:
    """A module-level function of the async API, called on the loop, its result wrapped."""

    @functools.wraps(function)
    def blocking(*args: Any, **kwargs: Any) -> Any:
        return _blocking_call(function, *args, **kwargs)

    return blocking


# -- LiveSession.run: a blocking tick function, and the main thread's signals ------------


class _TickThread:
    """The one thread a blocking ``run()`` calls the tick function in, tick after tick
    (and ``reconcile()`` its lookup, intent after intent).

    Not the loop thread (a blocking tick would stop the session's lease renewal
    and the calls it makes would wait on themselves), nor the caller's (a tick
    that never returns would keep ``run()`` from returning after a forced stop):
    a daemon thread, which a hung tick keeps, and nothing else.
    """

    def __init__(self) -> None:
        self._work: queue.SimpleQueue[
            tuple[concurrent.futures.Future[Any], contextvars.Context, Callable[[Any], Any], Any]
            | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="persistkit-tick", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            done, context, function, argument = work
            if not done.set_running_or_notify_cancel():
                continue
            try:
                with _portal.bound_context(context):
                    done.set_result(function(argument))
            except BaseException as exc:  # handed to the tick's task, which raises it
                done.set_exception(exc)

    async def call(self, function: Callable[[Any], Any], argument: Any) -> Any:
        """``function(argument)`` in this thread, in the scope of the calling task (the tick)."""
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._work.put((done, contextvars.copy_context(), function, argument))
        return await asyncio.wrap_future(done)

    def close(self) -> None:
        self._work.put(None)


class _MainThreadSignals:
    """The stop signals, caught on the main thread and relayed to ``run()`` on the loop.

    The handlers are installed before ``run()`` listens on the loop and removed
    after it stopped listening: a signal caught before is handed to it when it
    listens, one caught after is raised again once the previous handlers are
    back (so a SIGTERM as ``run()`` returns still ends the process).
    """

    def __init__(self, signals: Sequence[signal.Signals]) -> None:
        self._signals = tuple(signals)
        self._previous: dict[signal.Signals, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handler: Callable[[signal.Signals], None] | None = None
        self._unheard: list[signal.Signals] = []
        # Between the main thread's handler and the loop: a signal is either
        # relayed to the listening run() or kept, never dropped in between.
        self._lock = threading.Lock()

    def __enter__(self) -> _MainThreadSignals:
        if self._signals and threading.current_thread() is not threading.main_thread():
            raise ValueError(
                "LiveSession.run() installs its stop-signal handlers "
                f"({', '.join(s.name for s in self._signals)}), which Python allows only on the "
                "main thread: call it from the main thread, or pass stop_signals=() and stop "
                "it with ticks="
            )
        for signum in self._signals:
            self._previous[signum] = signal.signal(signum, self._caught)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        with self._lock:
            unheard, self._unheard = self._unheard, []
        for signum in unheard:
            signal.raise_signal(signum)  # to the handler it would have met without run()

    def _caught(self, signum: int, frame: FrameType | None) -> None:
        with self._lock:
            loop = self._loop if self._handler is not None else None
            if loop is None:
                self._unheard.append(signal.Signals(signum))
                return
        loop.call_soon_threadsafe(self._relay, signal.Signals(signum))

    def _relay(self, signum: signal.Signals) -> None:
        with self._lock:
            handler = self._handler
            if handler is None:  # run() stopped listening since it was caught
                self._unheard.append(signum)
                return
        handler(signum)

    def deliver_to(self, handler: Callable[[signal.Signals], None] | None) -> None:
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._handler = handler
            early: list[signal.Signals] = []
            if handler is not None:
                early, self._unheard = self._unheard, []
        for signum in early:
            if handler is not None:
                handler(signum)


def _run(
    self: _Blocking,
    tick: Callable[[int], object],
    *,
    interval: float = 1.0,
    ticks: int | None = None,
    after_commit: Callable[[int], object] | None = None,
    stop_signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    stop_grace: float | None = _session.DEFAULT_STOP_GRACE,
) -> int:
    """Call ``tick(n)`` inside a tick every ``interval`` seconds; returns ticks run.

    As :meth:`persistkit.LiveSession.run`, with plain functions: ``tick(n)``
    and ``after_commit(n)`` run in one thread of their own, tick ``n``'s
    blocking calls inside its commit. The SIGTERM/SIGINT handlers are
    installed on the main thread (where ``run`` must then be called) and
    forwarded to the session; the previous handlers are back when it returns.
    """
    worker = _TickThread()
    signals = _MainThreadSignals(stop_signals)

    async def tick_in_worker(count: int) -> None:
        await worker.call(tick, count)

    async def after_commit_in_worker(count: int) -> None:
        assert after_commit is not None
        await worker.call(after_commit, count)

    async def run_relayed() -> int:
        relay = _session.stop_signal_relay.set(signals)
        try:
            ran: int = await self._async.run(
                tick_in_worker,
                interval=interval,
                ticks=ticks,
                after_commit=None if after_commit is None else after_commit_in_worker,
                stop_signals=stop_signals,
                stop_grace=stop_grace,
            )
            return ran
        finally:
            _session.stop_signal_relay.reset(relay)

    try:
        with signals:
            ran: int = _portal.call(run_relayed)
            return ran
    finally:
        worker.close()


_run.__wrapped__ = _session.LiveSession.run  # type: ignore[attr-defined]


def _reconcile(
    self: _Blocking,
    lookup: Callable[[Any], Any],
    *,
    reason: str = _session.NOT_FOUND_REASON,
) -> list[Any]:
    """Ask the exchange about every intent in doubt and record the answers in one tick.

    As :meth:`persistkit.LiveSession.reconcile`, with a plain function:
    ``lookup(intent)`` (a blocking exchange client's query) runs in a thread of
    its own, not on the loop, which keeps renewing the session's leases.
    """
    worker = _TickThread()

    async def lookup_in_worker(intent: Any) -> Any:
        return await worker.call(lookup, intent)

    try:
        answers: list[Any] = _portal.call(self._async.reconcile, lookup_in_worker, reason=reason)
        return answers
    finally:
        worker.close()


_reconcile.__wrapped__ = _session.LiveSession.reconcile  # type: ignore[attr-defined]


# -- the blocking API ----------------------------------------------------------------------

Backend = _derive(_backend_base.Backend)
PersistBase = _derive(_AsyncPersistBase)
Transaction = _derive(_AsyncTransaction)
LiveSession = _derive(_session.LiveSession, specialized={"run": _run, "reconcile": _reconcile})
PersistSignalUtils = _derive(_signal.PersistSignalUtils)
PersistScheduleUtils = _derive(_signal.PersistScheduleUtils)
PersistRiskUtils = _derive(_risk.PersistRiskUtils)
PersistPartialUtils = _derive(_partial.PersistPartialUtils)
PersistIntentUtils = _derive(_intent.PersistIntentUtils)
ScheduleUtils = _derive(_stats.ScheduleUtils)
PartialUtils = _derive(_stats.PartialUtils)

PersistSignalAdapter: Any = _wrap(persistkit.PersistSignalAdapter)
PersistScheduleAdapter: Any = _wrap(persistkit.PersistScheduleAdapter)
PersistRiskAdapter: Any = _wrap(persistkit.PersistRiskAdapter)
PersistPartialAdapter: Any = _wrap(persistkit.PersistPartialAdapter)
PersistIntentAdapter: Any = _wrap(persistkit.PersistIntentAdapter)
"""The same adapters as ``persistkit``'s (one memoized store per entity), blocking."""
Schedule: Any = _wrap(persistkit.Schedule)
Partial: Any = _wrap(persistkit.Partial)
"""The statistics of scheduled entries and partial milestones, blocking: ``get_data``,
``get_report`` and ``dump`` wait for their result."""

transaction = _blocking_function(persistkit.transaction)
open_backend = _blocking_function(persistkit.open_backend)

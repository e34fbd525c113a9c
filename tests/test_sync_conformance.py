"""The shipped conformance suite, unchanged, run through the blocking API on every backend.

The suite is written with ``await``; here every object it touches is a view of
a blocking object (``persistkit.sync``) whose calls run on one caller thread
per test, a plain thread with no event loop, as a synchronous bot's: ``await
view.put(...)`` is ``blocking_backend.put(...)`` on that thread, ``async for``
is ``for``, ``async with transaction()`` is ``with transaction()``. One
thread per test keeps the suite's call order (``gather`` of writes submits
them in order) and the scope a ``with`` block opens for the calls after it,
as in a synchronous bot; several threads at once are tested in test_sync.py.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
import warnings
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import persistkit.testing
from persistkit import OrderIntent, UnreconciledIntentsError, sync
from persistkit.backends._s3 import S3Backend
from persistkit.testing import BackendConformance, sample_intent
from support.servers import RedisServer, SeaweedS3

BUCKET = "blocking-conformance"
_END = object()


class CallerThread:
    """The one thread a test's blocking calls run on, in the order they were made."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="blocking-caller")

    def now(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``function(...)`` on the caller thread, waited for here (a constructor, an attribute)."""
        return self._executor.submit(function, *args, **kwargs).result()

    async def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(function, *args, **kwargs)
        )

    def close(self) -> None:
        self._executor.shutdown()


def view(value: Any, caller: CallerThread) -> Any:
    """What the suite sees of a value the blocking API returned."""
    if isinstance(value, sync._Blocking):
        return AwaitableView(value, caller)
    return value


def blocking_of(value: Any) -> Any:
    return value.blocking if isinstance(value, AwaitableView) else value


class PendingCall:
    """A blocking method's call as the suite uses it: awaited, or iterated with ``async for``."""

    def __init__(
        self, caller: CallerThread, method: Callable[..., Any], args: Any, kwargs: Any
    ) -> None:
        self._caller = caller
        self._call = functools.partial(
            method,
            *[blocking_of(arg) for arg in args],
            **{name: blocking_of(arg) for name, arg in kwargs.items()},
        )
        self._iterator: Iterator[Any] | None = None

    def __await__(self) -> Generator[Any, None, Any]:
        return self._result().__await__()

    async def _result(self) -> Any:
        return view(await self._caller.call(self._call), self._caller)

    def __aiter__(self) -> PendingCall:
        return self

    async def __anext__(self) -> Any:
        if self._iterator is None:
            # for item in blocking.scan(...): the iterator is a BlockingIterator
            self._iterator = await self._caller.call(lambda: iter(self._call()))
        item = await self._caller.call(next, self._iterator, _END)
        if item is _END:
            raise StopAsyncIteration
        return view(item, self._caller)


class AwaitableView:
    """A blocking object, seen by the suite as the async object it stands for."""

    def __init__(self, blocking: Any, caller: CallerThread) -> None:
        self.blocking = blocking
        self._caller = caller

    def __getattr__(self, name: str) -> Any:
        found = self._caller.now(getattr, self.blocking, sync.blocking_twin_name(name))
        if callable(found) and not isinstance(found, type):
            return lambda *args, **kwargs: PendingCall(self._caller, found, args, kwargs)
        return view(found, self._caller)

    async def __aenter__(self) -> Any:
        return view(await self._caller.call(self.blocking.__enter__), self._caller)

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self._caller.call(self.blocking.__exit__, *exc_info)


class BlockingConformance(BackendConformance):
    """The suite, its ``backend`` a view of a blocking backend, its stores and
    transactions made by ``persistkit.sync``."""

    @pytest.fixture
    def caller(self) -> Iterator[CallerThread]:
        caller = CallerThread()
        yield caller
        caller.close()

    @pytest.fixture
    def blocking_backend(self) -> Any:
        raise NotImplementedError

    @pytest.fixture
    def backend(  # type: ignore[override]
        self, blocking_backend: Any, caller: CallerThread, monkeypatch: pytest.MonkeyPatch
    ) -> AwaitableView:
        def make(factory: Callable[..., Any]) -> Callable[..., AwaitableView]:
            def made(*args: Any, **kwargs: Any) -> AwaitableView:
                args = tuple(blocking_of(arg) for arg in args)
                kwargs = {name: blocking_of(arg) for name, arg in kwargs.items()}
                return AwaitableView(caller.now(factory, *args, **kwargs), caller)

            return made

        monkeypatch.setattr(persistkit.testing, "PersistBase", make(sync.PersistBase))
        monkeypatch.setattr(persistkit.testing, "transaction", make(sync.transaction))
        return AwaitableView(blocking_backend, caller)

    # The suite's live-session case drives an async LiveSession with an async lookup;
    # here the same case, step for step, through the blocking API (a plain lookup).
    async def test_order_intents_in_doubt_after_a_restart_are_reconciled_in_one_commit(  # type: ignore[override]
        self, blocking_backend: Any, caller: CallerThread, tmp_path: Path
    ) -> None:
        await caller.call(self._intents_through_the_blocking_api, blocking_backend, tmp_path)

    @staticmethod
    def _intents_through_the_blocking_api(backend: Any, tmp_path: Path) -> None:
        pair = ("BTCUSDT", "trend")

        def session() -> Any:
            return sync.LiveSession([pair], "main", base_dir=tmp_path / "root", backend=backend)

        def intent(status: str, **changes: Any) -> OrderIntent:
            return sample_intent(status, *pair, **changes)

        in_flight, acked = intent("pending"), intent("acked", exchange_order_id="X-1")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a memory backend in live mode
            first = session()
            first.start()
            with first.tick():
                sync.PersistIntentAdapter.write_intent(in_flight)
                sync.PersistIntentAdapter.write_intent(acked)
            first.close()  # the process stops before the order's answer is written
            second = session()
            state = second.start()
        try:
            assert [i.client_order_id for i in state.open_intents] == [in_flight.client_order_id]
            with pytest.raises(UnreconciledIntentsError), second.tick():
                sync.PersistIntentAdapter.write_intent(intent("pending"))
            answers = second.reconcile(lambda asked: None)
            assert [(a.client_order_id, a.status) for a in answers] == [
                (in_flight.client_order_id, "cancelled")
            ]
            with second.tick():  # allowed again
                sync.PersistIntentAdapter.write_intent(intent("pending"))
            stored = sync.PersistIntentAdapter.read_intents(*pair)
            assert sorted(i.status for i in stored) == ["acked", "cancelled", "pending"]
        finally:
            second.close()


class TestBlockingFile(BlockingConformance):
    @pytest.fixture
    def blocking_backend(self, tmp_path: Path) -> Iterator[Any]:
        backend = sync.open_backend((tmp_path / "conformance").as_uri())
        yield backend
        backend.close()


class TestBlockingMemory(BlockingConformance):
    @pytest.fixture
    def blocking_backend(self) -> Iterator[Any]:
        backend = sync.open_backend("memory://")
        yield backend
        backend.close()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


class TestBlockingRedis(BlockingConformance):
    @pytest.fixture
    def blocking_backend(self, redis_server: RedisServer) -> Iterator[Any]:
        backend = sync.open_backend(f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:12]}")
        yield backend
        backend.close()


@pytest.fixture(scope="module")
def s3_client() -> Iterator[Any]:
    with SeaweedS3() as server:
        client = server.client(retries={"total_max_attempts": 1}, max_pool_connections=16)
        client.create_bucket(Bucket=BUCKET)
        yield client


class TestBlockingS3(BlockingConformance):
    @pytest.fixture
    def blocking_backend(self, s3_client: Any) -> Iterator[Any]:
        backend = sync.blocking(S3Backend(s3_client, BUCKET, f"t-{uuid.uuid4().hex[:12]}"))
        yield backend
        backend.close()

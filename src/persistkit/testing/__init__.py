"""The backend conformance suite, shipped so that any backend can prove itself.

Use it from your own tests (the ``testing`` extra installs pytest and
pytest-asyncio)::

    import pytest_asyncio
    from persistkit.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        @pytest_asyncio.fixture
        async def backend(self):
            backend = MyBackend(...)   # fresh and empty for every test
            yield backend
            await backend.aclose()

Every test below then runs against it, unchanged: the same suite the file,
memory, Redis and S3 backends pass. It needs no pytest configuration: the
suite marks its tests itself, and ``pytest_asyncio.fixture`` makes the fixture
async under pytest-asyncio's default (strict) mode as under
``asyncio_mode = "auto"``. Set ``supports_commit = False`` on the subclass if
the backend has no atomic multi-key commit. The history tests run on a backend
whose ``keeps_history`` is true and check the clear error elsewhere.
The order-intent test runs a live session on the backend (its locks in a
temporary folder) across a restart.
"""

from __future__ import annotations

import asyncio
import os
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from persistkit._clock import new_client_order_id
from persistkit._domains import PersistIntentAdapter
from persistkit._live import LiveSession
from persistkit._store import PersistBase
from persistkit._transaction import transaction
from persistkit.backends._base import ANY_VERSION, Backend
from persistkit.errors import (
    ConflictError,
    CorruptValueError,
    EntityNotFoundError,
    HistoryUnavailableError,
    InvalidNameError,
    SchemaValidationError,
    StoreClosedError,
    UnreconciledIntentsError,
    UnserializableValueError,
)
from persistkit.models import OrderIntent, SignalRow

__all__ = ["BackendConformance", "sample_intent", "sample_signal"]


def sample_signal(index: int = 0, **changes: Any) -> dict[str, Any]:
    """A ~300-byte signal row, as a bot would store it."""
    row: dict[str, Any] = {
        "id": f"sig-{index:06d}",
        "symbol": "BTCUSDT",
        "strategyName": "mean_reversion",
        "exchangeName": "binance",
        "position": "long",
        "priceOpen": 64123.5 + index,
        "priceTakeProfit": 66000.0,
        "priceStopLoss": 63000.25,
        "scheduledAt": 1_763_700_000_000 + index,
        "pendingAt": 1_763_700_060_000 + index,
        "minuteEstimatedTime": 240,
        "note": "breakout above the 4h range high, volume confirmed",
    }
    row.update(changes)
    return row


def sample_intent(
    status: str = "pending", symbol: str = "BTCUSDT", strategy: str = "trend", **changes: Any
) -> OrderIntent:
    """A market buy of 0.01 under a fresh client order id, as a bot would write it."""
    fields: dict[str, Any] = {
        "client_order_id": new_client_order_id("t"),
        "symbol": symbol,
        "strategy_name": strategy,
        "side": "buy",
        "quantity": 0.01,
        "price": None,
        "created_at": 1_763_700_000_000,
        "status": status,
    }
    return OrderIntent(**{**fields, **changes})


class BackendConformance:
    """What every backend must do. Subclass and provide a ``backend`` fixture."""

    # Inherited by the subclass: its tests run under pytest-asyncio's strict mode too.
    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.asyncio]

    supports_commit: ClassVar[bool] = True

    # -- get / put / delete ------------------------------------------------------

    async def test_get_of_absent_key_is_none(self, backend: Backend) -> None:
        assert await backend.get("ns/absent") is None

    async def test_put_then_get_returns_the_same_bytes_and_version(self, backend: Backend) -> None:
        version = await backend.put("ns/a", b'{"x":1}')
        stored = await backend.get("ns/a")
        assert stored is not None
        assert stored.data == b'{"x":1}'
        assert stored.version == version

    async def test_arbitrary_bytes_round_trip_exactly(self, backend: Backend) -> None:
        data = bytes(range(256)) * 8 + "ünïcödé €".encode()
        await backend.put("ns/binary", data)
        stored = await backend.get("ns/binary")
        assert stored is not None and stored.data == data

    async def test_a_large_value_round_trips(self, backend: Backend) -> None:
        data = os.urandom(1 << 20)
        await backend.put("ns/large", data)
        stored = await backend.get("ns/large")
        assert stored is not None and stored.data == data

    async def test_overwrite_replaces_value_and_changes_version(self, backend: Backend) -> None:
        first = await backend.put("ns/a", b"1")
        second = await backend.put("ns/a", b"2")
        stored = await backend.get("ns/a")
        assert stored is not None and stored.data == b"2"
        assert second != first and stored.version == second

    async def test_create_only_write(self, backend: Backend) -> None:
        await backend.put("ns/a", b"first", expect=None)
        with pytest.raises(ConflictError):
            await backend.put("ns/a", b"second", expect=None)
        stored = await backend.get("ns/a")
        assert stored is not None and stored.data == b"first"

    async def test_compare_and_set_with_current_version_succeeds(self, backend: Backend) -> None:
        version = await backend.put("ns/a", b"1")
        new_version = await backend.put("ns/a", b"2", expect=version)
        stored = await backend.get("ns/a")
        assert stored is not None and (stored.data, stored.version) == (b"2", new_version)

    async def test_compare_and_set_with_stale_version_changes_nothing(
        self, backend: Backend
    ) -> None:
        stale = await backend.put("ns/a", b"1")
        await backend.put("ns/a", b"2")
        with pytest.raises(ConflictError):
            await backend.put("ns/a", b"3", expect=stale)
        stored = await backend.get("ns/a")
        assert stored is not None and stored.data == b"2"

    async def test_compare_and_set_on_absent_key_conflicts(self, backend: Backend) -> None:
        version = await backend.put("ns/a", b"1")
        await backend.delete("ns/a")
        with pytest.raises(ConflictError):
            await backend.put("ns/a", b"2", expect=version)
        assert await backend.get("ns/a") is None

    async def test_delete(self, backend: Backend) -> None:
        await backend.put("ns/a", b"1")
        assert await backend.delete("ns/a") is True
        assert await backend.get("ns/a") is None
        assert await backend.delete("ns/a") is False

    async def test_conditional_delete_with_stale_version_keeps_value(
        self, backend: Backend
    ) -> None:
        stale = await backend.put("ns/a", b"1")
        current = await backend.put("ns/a", b"2")
        with pytest.raises(ConflictError):
            await backend.delete("ns/a", expect=stale)
        assert await backend.delete("ns/a", expect=current) is True
        assert await backend.get("ns/a") is None

    async def test_get_many_keeps_order_and_reports_absent(self, backend: Backend) -> None:
        await backend.put("ns/a", b"A")
        await backend.put("ns/c", b"C")
        got = await backend.get_many(["ns/c", "ns/b", "ns/a"])
        assert [item.data if item else None for item in got] == [b"C", None, b"A"]
        assert await backend.get_many_data(["ns/c", "ns/b", "ns/a"]) == [b"C", None, b"A"]

    # -- listing -------------------------------------------------------------------

    async def test_scan_lists_one_namespace_only(self, backend: Backend) -> None:
        for key in ("x/a", "x/b", "x/sub/c", "y/d", "xy/e"):
            await backend.put(key, b"{}")
        assert sorted([key async for key in backend.scan("x")]) == ["x/a", "x/b"]
        assert sorted([key async for key in backend.scan("x", recursive=True)]) == [
            "x/a",
            "x/b",
            "x/sub/c",
        ]
        assert [key async for key in backend.scan("absent")] == []

    async def test_scan_streams_thousands_of_keys(self, backend: Backend) -> None:
        count = 1500
        for start in range(0, count, 100):
            await asyncio.gather(
                *(backend.put(f"many/k{i:05d}", b"1") for i in range(start, start + 100))
            )
        keys = [key async for key in backend.scan("many")]
        assert len(keys) == count
        assert set(keys) == {f"many/k{i:05d}" for i in range(count)}

    async def test_scan_does_not_list_deleted_or_quarantined(self, backend: Backend) -> None:
        await backend.put("ns/keep", b"1")
        await backend.put("ns/gone", b"1")
        await backend.put("ns/bad", b"{")
        await backend.delete("ns/gone")
        await backend.quarantine("ns/bad", "test")
        assert [key async for key in backend.scan("ns")] == ["ns/keep"]
        assert [key async for key in backend.scan("", recursive=True)] == ["ns/keep"]

    # -- quarantine ------------------------------------------------------------------

    async def test_quarantine_moves_aside_and_never_deletes(self, backend: Backend) -> None:
        await backend.put("ns/bad", b"{torn")
        entry = await backend.quarantine("ns/bad", "unparseable JSON")
        assert await backend.get("ns/bad") is None
        listed = [item async for item in backend.list_quarantine("ns")]
        assert [(item.id, item.key, item.reason) for item in listed] == [
            (entry.id, "ns/bad", "unparseable JSON")
        ]
        assert await backend.read_quarantined(entry.id) == b"{torn"

    async def test_restore_puts_the_value_back(self, backend: Backend) -> None:
        await backend.put("ns/bad", b"{torn")
        entry = await backend.quarantine("ns/bad", "unparseable")
        assert await backend.restore(entry.id) == "ns/bad"
        stored = await backend.get("ns/bad")
        assert stored is not None and stored.data == b"{torn"
        assert [item async for item in backend.list_quarantine()] == []

    async def test_restore_refuses_to_overwrite_a_newer_value(self, backend: Backend) -> None:
        await backend.put("ns/a", b"old")
        entry = await backend.quarantine("ns/a", "bad")
        await backend.put("ns/a", b"new")
        with pytest.raises(ConflictError):
            await backend.restore(entry.id)
        stored = await backend.get("ns/a")
        assert stored is not None and stored.data == b"new"
        await backend.restore(entry.id, overwrite=True)
        stored = await backend.get("ns/a")
        assert stored is not None and stored.data == b"old"

    async def test_purge_deletes_a_quarantined_value(self, backend: Backend) -> None:
        await backend.put("ns/a", b"x")
        entry = await backend.quarantine("ns/a", "bad")
        await backend.purge(entry.id)
        assert [item async for item in backend.list_quarantine()] == []
        with pytest.raises(EntityNotFoundError):
            await backend.read_quarantined(entry.id)

    # -- atomic commit ---------------------------------------------------------------

    async def test_commit_applies_writes_and_deletes_together(self, backend: Backend) -> None:
        if not self.supports_commit:
            pytest.skip(f"{type(backend).__name__} declares no atomic commit")
        await backend.put("tick/old", b"1")
        await backend.commit({"tick/a": b"A", "other/b": b"B", "tick/old": None})
        assert [await backend.get(k) is not None for k in ("tick/a", "other/b", "tick/old")] == [
            True,
            True,
            False,
        ]

    def _need_commit(self, backend: Backend) -> None:
        if not self.supports_commit:
            pytest.skip(f"{type(backend).__name__} declares no atomic commit")

    async def test_commit_is_read_back_and_listed(self, backend: Backend) -> None:
        self._need_commit(backend)
        await backend.put("tick/gone", b"x")
        for round_ in range(5):
            await backend.commit({"tick/a": b"%d" % round_, "tick/gone": None})
            stored = await backend.get("tick/a")
            assert stored is not None and stored.data == b"%d" % round_
        assert [key async for key in backend.scan("tick")] == ["tick/a"]
        assert [key async for key in backend.scan("", recursive=True)] == ["tick/a"]

    async def test_commit_of_deletes_only(self, backend: Backend) -> None:
        self._need_commit(backend)
        await backend.put("tick/a", b"1")
        await backend.put("tick/b", b"2")
        await backend.commit({"tick/a": None, "tick/absent": None})
        assert await backend.get("tick/a") is None
        assert await backend.get("tick/absent") is None
        assert [key async for key in backend.scan("tick")] == ["tick/b"]

    async def test_put_after_commit_wins(self, backend: Backend) -> None:
        self._need_commit(backend)
        await backend.commit({"tick/a": b"committed"})
        version = await backend.put("tick/a", b"put")
        stored = await backend.get("tick/a")
        assert stored is not None and (stored.data, stored.version) == (b"put", version)
        assert await backend.delete("tick/a", expect=version) is True
        assert await backend.get("tick/a") is None

    async def test_readers_never_see_half_a_commit(self, backend: Backend) -> None:
        self._need_commit(backend)
        rounds = 60
        await backend.commit({"pair/signal": b"0", "pair/position": b"0"})
        finished = asyncio.Event()
        torn: list[tuple[int, int]] = []

        async def reader() -> None:
            while not finished.is_set():
                signal = await backend.get("pair/signal")
                position = await backend.get("pair/position")
                assert signal is not None and position is not None
                # Committed together: a later position never comes with an
                # earlier signal read just before it (and both only move up).
                if int(position.data) < int(signal.data):
                    torn.append((int(signal.data), int(position.data)))
                await asyncio.sleep(0)

        async def writer() -> None:
            for round_ in range(1, rounds + 1):
                value = b"%d" % round_
                await backend.commit({"pair/signal": value, "pair/position": value})
            finished.set()

        await asyncio.gather(reader(), reader(), writer())
        assert torn == []
        final = await backend.get_many(["pair/signal", "pair/position"])
        assert [item.data if item else None for item in final] == [b"%d" % rounds] * 2

    async def test_concurrent_commits_all_land(self, backend: Backend) -> None:
        self._need_commit(backend)
        tasks = 40

        async def tick(task: int) -> None:
            await backend.commit(
                {
                    f"t{task}/signal": b"%d" % task,
                    f"t{task}/risk": b"%d" % task,
                    "shared/last": b"x",
                }
            )

        await asyncio.gather(*(tick(task) for task in range(tasks)))
        for task in range(tasks):
            got = await backend.get_many([f"t{task}/signal", f"t{task}/risk"])
            assert [item.data if item else None for item in got] == [b"%d" % task] * 2
        assert [key async for key in backend.scan("shared")] == ["shared/last"]

    async def test_transaction_commits_every_store_together(self, backend: Backend) -> None:
        self._need_commit(backend)
        signals: PersistBase[Any] = PersistBase("signal", backend=backend)
        risk: PersistBase[Any] = PersistBase("risk", backend=backend)
        await signals.write_value("old", 1)
        async with transaction(backend):
            await signals.write_value("BTCUSDT", {"id": "s1"})
            await risk.write_value("positions", [["s1", 1.5]])
            await signals.remove_value("old")
            # Inside the block the staged writes are what reads see...
            assert await signals.read_value("BTCUSDT") == {"id": "s1"}
            assert not await signals.has_value("old")
            assert sorted([key async for key in signals.keys()]) == ["BTCUSDT"]
            # ...while the backend itself has not been touched yet.
            assert await backend.get("risk/positions") is None
        assert await signals.read_value("BTCUSDT") == {"id": "s1"}
        assert await risk.read_value("positions") == [["s1", 1.5]]
        assert [key async for key in signals.keys()] == ["BTCUSDT"]

    async def test_transaction_that_raises_writes_nothing(self, backend: Backend) -> None:
        self._need_commit(backend)
        store: PersistBase[Any] = PersistBase("entity", backend=backend)
        await store.write_value("kept", 1)

        async def crashing_tick() -> None:
            async with transaction(backend):
                await store.write_value("new", 2)
                await store.remove_value("kept")
                raise RuntimeError("strategy crashed")

        with pytest.raises(RuntimeError, match="strategy crashed"):
            await crashing_tick()
        assert await store.read_value("kept") == 1
        assert not await store.has_value("new")

    async def test_transaction_refuses_bad_values_at_the_call(self, backend: Backend) -> None:
        self._need_commit(backend)
        store: PersistBase[Any] = PersistBase("signals", backend=backend, model=SignalRow)
        plain: PersistBase[Any] = PersistBase("entity", backend=backend)
        async with transaction(backend):
            with pytest.raises(SchemaValidationError):
                await store.write_value("x", {"id": "x", "position": "sideways"})
            with pytest.raises(UnserializableValueError):
                await plain.write_value("y", float("nan"))
            await store.write_value("ok", SignalRow.model_validate_json(SignalRowBytes.good))
        assert (await store.read_value("ok")).symbol == "BTCUSDT"
        assert not await store.has_value("x")

    async def test_transaction_update_value_and_compare_and_set(self, backend: Backend) -> None:
        self._need_commit(backend)
        store: PersistBase[Any] = PersistBase("entity", backend=backend)
        await store.write_value("counter", 1)
        async with transaction(backend):
            await store.update_value("counter", lambda n: (n or 0) + 1)
            seen = await store.read_entry("counter")
            await store.update_value("counter", lambda n: (n or 0) + 1)
            with pytest.raises(ConflictError):
                await store.write_value("counter", 100, if_version=seen.version)
        assert await store.read_value("counter") == 3

    # -- the store above the backend ----------------------------------------------------

    async def test_order_intents_in_doubt_after_a_restart_are_reconciled_in_one_commit(
        self, backend: Backend, tmp_path: Path
    ) -> None:
        self._need_commit(backend)
        pair = ("BTCUSDT", "trend")

        def session() -> LiveSession:
            return LiveSession([pair], "main", base_dir=tmp_path / "root", backend=backend)

        def intent(status: str, **changes: Any) -> OrderIntent:
            return sample_intent(status, *pair, **changes)

        in_flight, acked = intent("pending"), intent("acked", exchange_order_id="X-1")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a memory backend in live mode
            first = session()
            await first.start()
            async with first.tick():
                await PersistIntentAdapter.write_intent(in_flight)
                await PersistIntentAdapter.write_intent(acked)
            await first.aclose()  # the process stops before the order's answer is written
            second = session()
            state = await second.start()
        try:
            assert [i.client_order_id for i in state.open_intents] == [in_flight.client_order_id]
            with pytest.raises(UnreconciledIntentsError):
                async with second.tick():
                    await PersistIntentAdapter.write_intent(intent("pending"))

            async def exchange_has_no_such_order(asked: OrderIntent) -> OrderIntent | None:
                return None

            answers = await second.reconcile(exchange_has_no_such_order)
            assert [(a.client_order_id, a.status) for a in answers] == [
                (in_flight.client_order_id, "cancelled")
            ]
            async with second.tick():  # allowed again
                await PersistIntentAdapter.write_intent(intent("pending"))
            async with second.tick():
                stored = await PersistIntentAdapter.read_intents(*pair)
            assert sorted(i.status for i in stored) == ["acked", "cancelled", "pending"]
        finally:
            await second.aclose()

    async def test_store_round_trip_of_json_values(self, backend: Backend) -> None:
        store: PersistBase[Any] = PersistBase("entity", backend=backend)
        value = {"n": 1, "f": 2.5, "s": "ü", "l": [1, None, True], "d": {"k": "v"}}
        await store.write_value("a", value)
        await store.write_value(7, [1, 2])
        assert await store.read_value("a") == value
        assert await store.read_value(7) == [1, 2]
        assert await store.has_value("a") and not await store.has_value("missing")
        with pytest.raises(EntityNotFoundError):
            await store.read_value("missing")
        assert sorted([key async for key in store.keys()]) == ["7", "a"]

    async def test_store_refuses_values_that_cannot_round_trip(self, backend: Backend) -> None:
        store: PersistBase[Any] = PersistBase("entity", backend=backend)
        await store.write_value("a", {"price": 1.0})
        for bad in ({"price": float("nan")}, {"price": float("inf")}, {"at": object()}, {1: 2}):
            with pytest.raises(UnserializableValueError):
                await store.write_value("a", bad)
        assert await store.read_value("a") == {"price": 1.0}

    async def test_store_hostile_ids_round_trip_and_stay_distinct(self, backend: Backend) -> None:
        store: PersistBase[Any] = PersistBase("entity", backend=backend)
        ids = ["BTC/USDT", "a_b", "a%5Fb", ".hidden", "sp ace", "ünï", "..a", "a/b/c", "~x"]
        for index, entity_id in enumerate(ids):
            await store.write_value(entity_id, index)
        assert sorted([key async for key in store.keys()]) == sorted(ids)
        for index, entity_id in enumerate(ids):
            assert await store.read_value(entity_id) == index
        for bad in ("", "..", ".", "/etc/passwd", "a/../b", "nul\x00"):
            with pytest.raises(InvalidNameError):
                await store.write_value(bad, 1)

    async def test_store_applies_concurrent_writes_in_call_order(self, backend: Backend) -> None:
        store: PersistBase[Any] = PersistBase("entity", backend=backend)
        await asyncio.gather(*(store.write_value("k", i) for i in range(40)))
        assert await store.read_value("k") == 39

    async def test_store_concurrent_updates_lose_nothing(self, backend: Backend) -> None:
        store: PersistBase[Any] = PersistBase("entity", backend=backend)

        async def worker() -> None:
            for _ in range(10):
                await store.update_value("counter", lambda n: (n or 0) + 1)

        await asyncio.gather(*(worker() for _ in range(8)))
        assert await store.read_value("counter") == 80

    async def test_store_versions_guard_concurrent_writers(self, backend: Backend) -> None:
        store: PersistBase[Any] = PersistBase("entity", backend=backend)
        await store.write_value("k", 1)
        seen = await store.read_entry("k")
        await store.write_value("k", 2)
        with pytest.raises(ConflictError):
            await store.write_value("k", 3, if_version=seen.version)
        assert await store.read_value("k") == 2

    async def test_store_startup_quarantines_corrupt_values(self, backend: Backend) -> None:
        await backend.put("signals/good", SignalRowBytes.good)
        await backend.put("signals/torn", SignalRowBytes.good[:40])
        await backend.put("signals/empty", b"")
        await backend.put("signals/zeros", b"\x00" * 64)
        await backend.put("signals/schema", b'{"id": "x", "position": "sideways"}')
        store: PersistBase[Any] = PersistBase("signals", backend=backend, model=SignalRow)
        report = await store.wait_for_init()
        assert report.checked == 5
        assert sorted(finding.key for finding in report.corrupt) == [
            "signals/empty",
            "signals/schema",
            "signals/torn",
            "signals/zeros",
        ]
        assert [key async for key in store.keys()] == ["good"]
        quarantined = await store.list_quarantined()
        assert len(quarantined) == 4
        for entry in quarantined:  # moved aside, never deleted
            assert await backend.read_quarantined(entry.id) is not None
        assert await store.wait_for_init() is report  # once per store

    async def test_store_read_of_corrupt_value_after_startup_raises(self, backend: Backend) -> None:
        store: PersistBase[Any] = PersistBase("signals", backend=backend, model=SignalRow)
        await store.wait_for_init()
        await backend.put("signals/late", b"[1, 2")
        with pytest.raises(CorruptValueError):
            await store.read_value("late")

    async def test_store_validates_against_its_model(self, backend: Backend) -> None:
        store: PersistBase[Any] = PersistBase("signals", backend=backend, model=SignalRow)
        with pytest.raises(SchemaValidationError):
            await store.write_value("x", {"id": "x", "position": "sideways"})
        await store.write_value("ok", SignalRow.model_validate_json(SignalRowBytes.good))
        assert (await store.read_value("ok")).symbol == "BTCUSDT"

    async def test_store_take_and_filter_stream(self, backend: Backend) -> None:
        store: PersistBase[Any] = PersistBase("entity", backend=backend)
        for i in range(30):
            await store.write_value(i, {"i": i})
        evens = [v["i"] async for v in store.filter(lambda v: v["i"] % 2 == 0)]
        assert sorted(evens) == list(range(0, 30, 2))
        assert len([v async for v in store.take(5)]) == 5
        assert len([v async for v in store.take(3, lambda v: v["i"] > 25)]) == 3
        assert sorted([v["i"] async for v in store.values()]) == list(range(30))

    async def test_store_remove_all(self, backend: Backend) -> None:
        store: PersistBase[Any] = PersistBase("entity", backend=backend)
        other: PersistBase[Any] = PersistBase("other", backend=backend)
        for i in range(12):
            await store.write_value(i, i)
        await other.write_value("keep", 1)
        assert await store.remove_all() == 12
        assert [key async for key in store.keys()] == []
        assert await other.read_value("keep") == 1

    async def test_closed_store_refuses_use(self, backend: Backend) -> None:
        store: PersistBase[Any] = PersistBase("entity", backend=backend)
        await store.aclose()
        with pytest.raises(StoreClosedError):
            await store.write_value("a", 1)

    async def test_unconditional_write_is_the_default(self, backend: Backend) -> None:
        store: PersistBase[Any] = PersistBase("entity", backend=backend)
        await store.write_value("a", 1, if_version=ANY_VERSION)
        await store.write_value("a", 2)
        assert await store.read_value("a") == 2

    # -- keys that climb ------------------------------------------------------------

    CLIMBING_KEYS: ClassVar[tuple[str, ...]] = (
        "../evil",
        "ns/../../evil",
        "/etc/evil",
        "",
        "ns//a",
        "ns/",
        "./a",
        "ns/.",
        "ns/..",
        "ns/a\x00b",
        ".journal/evil",
        "ns/.tmp-evil",
    )
    """Keys no backend may store: empty, absolute, climbing, empty or dot segments, NUL."""

    async def test_keys_that_climb_or_are_malformed_are_refused_before_any_io(
        self, backend: Backend
    ) -> None:
        for key in self.CLIMBING_KEYS:
            calls: list[Callable[[str], Awaitable[object]]] = [
                lambda bad: backend.put(bad, b"1"),
                lambda bad: backend.put(bad, b"1", expect=None),
                backend.get,
                backend.delete,
                lambda bad: backend.get_many(["ns/fine", bad]),
                lambda bad: backend.get_many_data(["ns/fine", bad]),
                lambda bad: backend.quarantine(bad, "test"),
                backend.changed_at,
            ]
            for call in calls:
                with pytest.raises(InvalidNameError):
                    await call(key)
            if self.supports_commit:
                with pytest.raises(InvalidNameError):
                    await backend.commit({"ns/fine": b"1", key: b"2"})
            if key:
                with pytest.raises(InvalidNameError):
                    [found async for found in backend.scan(key)]
        assert await backend.get("ns/fine") is None  # nothing of a refused batch was written
        assert [key async for key in backend.scan("", recursive=True)] == []

    # -- history (selected by the keeps_history capability, never by backend name) ---------

    async def test_history_answers_as_of_each_commit(self, backend: Backend) -> None:
        if not backend.keeps_history:
            pytest.skip(f"{type(backend).__name__} declares no history (keeps_history)")
        store: PersistBase[int] = PersistBase("history", backend=backend)
        times = []
        for value in range(3):
            async with transaction(backend):
                await store.write_value("n", value)
            times.append(time.time_ns())
            await asyncio.sleep(0.002)  # the next commit lands in a later millisecond
        await backend.checkpoint()  # the past survives a checkpoint
        history = await backend.history_records()
        assert [change.data for change in history.changes_of("history/n")] == [b"0", b"1", b"2"]
        for value, after in enumerate(times):
            assert await store.read_value("n", as_of=-(-after // 1_000_000)) == value
        with pytest.raises(HistoryUnavailableError):
            await store.read_value("n", as_of=history.start_ns // 1_000_000 - 1)

    async def test_without_history_a_point_in_time_read_says_so(self, backend: Backend) -> None:
        if backend.keeps_history:
            pytest.skip(f"{type(backend).__name__} keeps history")
        store: PersistBase[int] = PersistBase("history", backend=backend)
        await store.write_value("n", 1)
        with pytest.raises(HistoryUnavailableError, match="keeps no history"):
            await store.read_value("n", as_of=time.time_ns() // 1_000_000)
        with pytest.raises(HistoryUnavailableError):
            await backend.history_records()


class SignalRowBytes:
    good = (
        b'{"id":"s1","symbol":"BTCUSDT","strategyName":"trend","position":"long",'
        b'"priceOpen":100.5,"priceTakeProfit":110.0,"priceStopLoss":95.0,'
        b'"scheduledAt":1763700000000,"pendingAt":1763700060000}'
    )

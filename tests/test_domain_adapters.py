"""The four domain adapters, in live and backtest mode."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import persistkit
from persistkit import (
    InvalidNameError,
    PersistBase,
    PersistPartialAdapter,
    PersistRiskAdapter,
    PersistScheduleAdapter,
    PersistSignalAdapter,
    RowMismatchError,
    SchemaValidationError,
)
from persistkit.models import PartialData, RiskActivePosition, ScheduledSignalRow, SignalRow


def signal(symbol: str = "BTCUSDT", strategy: str = "trend", **changes: Any) -> SignalRow:
    fields: dict[str, Any] = {
        "id": "sig-1",
        "symbol": symbol,
        "strategy_name": strategy,
        "position": "long",
        "price_open": 100.0,
        "price_take_profit": 110.0,
        "price_stop_loss": 95.0,
        "scheduled_at": 1_763_700_000_000,
        "pending_at": 1_763_700_060_000,
    }
    fields.update(changes)
    return SignalRow(**fields)


def position(symbol: str = "BTCUSDT", signal_id: str = "sig-1") -> RiskActivePosition:
    return RiskActivePosition(
        symbol=symbol,
        strategy_name="trend",
        signal_id=signal_id,
        position="long",
        price_open=100.0,
        quantity=0.5,
        added_at=1_763_700_060_000,
    )


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def values_under(root: Path) -> list[str]:
    """The value files: persistkit's own dot folders (the commit journal) left out."""
    return [path for path in files_under(root) if not path.startswith(".")]


@pytest.fixture(params=["live", "backtest"])
def mode(request: pytest.FixtureRequest, data_root: Path) -> str:
    persistkit.configure(mode=request.param, base_dir=data_root)
    return str(request.param)


async def test_every_domain_round_trips(mode: str) -> None:
    row = signal(trailing={"armed": True, "distance": 0.5})  # an extra field a bot added
    await PersistSignalAdapter.write_signal_data(row, "BTCUSDT", "trend")
    assert await PersistSignalAdapter.read_signal_data("BTCUSDT", "trend") == row

    scheduled = ScheduledSignalRow(**signal(price_open=98.0).model_dump())
    await PersistScheduleAdapter.write_schedule_data(scheduled, "BTCUSDT", "trend")
    assert await PersistScheduleAdapter.read_schedule_data("BTCUSDT", "trend") == scheduled

    entries = [("BTCUSDT:sig-1", position()), ("ETHUSDT:sig-2", position("ETHUSDT", "sig-2"))]
    await PersistRiskAdapter.write_position_data(entries, "main")
    assert await PersistRiskAdapter.read_position_data("main") == entries

    levels = {"sig-1": PartialData(profit_levels=[20, 10], loss_levels=[])}
    await PersistPartialAdapter.write_partial_data(levels, "BTCUSDT", "trend")
    read_back = await PersistPartialAdapter.read_partial_data("BTCUSDT", "trend")
    assert read_back == levels
    assert read_back["sig-1"].profit_levels == [10, 20]


async def test_absent_state_reads_as_empty(mode: str) -> None:
    assert await PersistSignalAdapter.read_signal_data("BTCUSDT", "none") is None
    assert await PersistScheduleAdapter.read_schedule_data("BTCUSDT", "none") is None
    assert await PersistRiskAdapter.read_position_data("none") == []
    assert await PersistPartialAdapter.read_partial_data("BTCUSDT", "none") == {}


async def test_writing_none_clears(mode: str) -> None:
    await PersistSignalAdapter.write_signal_data(signal(), "BTCUSDT", "trend")
    await PersistSignalAdapter.write_signal_data(None, "BTCUSDT", "trend")
    assert await PersistSignalAdapter.read_signal_data("BTCUSDT", "trend") is None
    await PersistRiskAdapter.write_position_data([("k", position())], "main")
    await PersistRiskAdapter.write_position_data(None, "main")
    assert await PersistRiskAdapter.read_position_data("main") == []


async def test_live_mode_uses_backtest_kits_layout(data_root: Path) -> None:
    row = signal(strategy="my_strategy")
    await PersistSignalAdapter.write_signal_data(row, "BTCUSDT", "my_strategy")
    await PersistScheduleAdapter.write_schedule_data(
        ScheduledSignalRow(**row.model_dump()), "BTCUSDT", "my_strategy"
    )
    await PersistRiskAdapter.write_position_data([("k", position())], "main")
    await PersistPartialAdapter.write_partial_data(
        {"sig-1": PartialData(profit_levels=[10])}, "BTCUSDT", "my_strategy"
    )
    # Every write commits through the journal; the applier writes the files soon after,
    # a checkpoint now, and folds the pair's statistics events (Schedule, Partial) into
    # their head.
    await persistkit.current_settings().backend.checkpoint()
    # Beside persistkit's own dot folders (the commit journal), backtest-kit's files and
    # the statistics under _persistkit/, nothing else.
    assert values_under(data_root) == [
        "_persistkit/events/pairs/BTCUSDT_my_strategy.json",
        "partial/BTCUSDT_my_strategy/levels.json",
        "risk/main/positions.json",
        "schedule/BTCUSDT_my_strategy/BTCUSDT.json",
        "signal/BTCUSDT_my_strategy/BTCUSDT.json",
    ]
    on_disk = json.loads((data_root / "risk/main/positions.json").read_text())
    assert on_disk[0][0] == "k"
    assert on_disk[0][1]["signalId"] == "sig-1"


async def test_backtest_mode_creates_no_file_and_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    persistkit.configure(mode="backtest")  # the default root, ./dump/data, under tmp_path
    for i in range(50):
        await PersistSignalAdapter.write_signal_data(signal(id=f"s{i}"), "BTCUSDT", "trend")
        await PersistRiskAdapter.write_position_data([(f"k{i}", position())], "main")
    custom: PersistBase[Any] = PersistBase("custom", "./dump/data/custom")
    await custom.write_value("x", 1)
    assert await custom.read_value("x") == 1
    assert (await PersistSignalAdapter.read_signal_data("BTCUSDT", "trend")) == signal(id="s49")
    assert os.listdir(tmp_path) == []


async def test_files_written_by_backtest_kit_are_read(data_root: Path) -> None:
    directory = data_root / "signal" / "BTCUSDT_trend"
    directory.mkdir(parents=True)
    seed_row = {
        "id": "abc",
        "symbol": "BTCUSDT",
        "strategyName": "trend",
        "exchangeName": "binance",
        "position": "short",
        "priceOpen": 100,
        "priceTakeProfit": 90,
        "priceStopLoss": 105,
        "scheduledAt": 1,
        "pendingAt": 2,
        "minuteEstimatedTime": 60,
    }
    (directory / "BTCUSDT.json").write_text(json.dumps(seed_row))
    row = await PersistSignalAdapter.read_signal_data("BTCUSDT", "trend")
    assert row is not None
    assert (row.position, row.price_open, row.exchange_name) == ("short", 100.0, "binance")
    (data_root / "schedule" / "BTCUSDT_trend").mkdir(parents=True)
    (data_root / "schedule" / "BTCUSDT_trend" / "BTCUSDT.json").write_text("null")
    assert await PersistScheduleAdapter.read_schedule_data("BTCUSDT", "trend") is None


async def test_invalid_rows_are_refused_before_any_write(mode: str) -> None:
    await PersistSignalAdapter.write_signal_data(signal(), "BTCUSDT", "trend")
    row = signal()
    bad = row.model_copy(update={"position": "sideways"})  # model_copy skips validation
    with pytest.raises(SchemaValidationError, match="position"):
        await PersistSignalAdapter.write_signal_data(bad, "BTCUSDT", "trend")
    with pytest.raises(ValueError, match="greater than 0"):
        signal(price_open=-1.0)
    with pytest.raises(ValueError, match="finite"):
        signal(price_open=float("nan"))
    with pytest.raises(ValueError, match="repeat"):
        PartialData(profit_levels=[10, 10])
    with pytest.raises(ValueError, match="Input should be 10, 20"):
        PartialData(profit_levels=[15])
    assert await PersistSignalAdapter.read_signal_data("BTCUSDT", "trend") == row


async def test_hostile_symbols_and_strategies_stay_apart(mode: str, data_root: Path) -> None:
    pairs = [("a_b", "c"), ("a", "b_c"), ("BTC/USDT", "x"), ("..", "x"), ("ü", "strat egy")]
    stored = []
    for symbol, strategy in pairs:
        try:
            await PersistSignalAdapter.write_signal_data(
                signal(symbol, strategy, id=f"{symbol}|{strategy}"), symbol, strategy
            )
            stored.append((symbol, strategy))
        except InvalidNameError:
            assert symbol == ".."
    assert len(stored) == 4
    for symbol, strategy in stored:
        row = await PersistSignalAdapter.read_signal_data(symbol, strategy)
        assert row is not None and row.id == f"{symbol}|{strategy}"
    if mode == "live":
        for path in data_root.rglob("*"):
            assert path.resolve().is_relative_to(data_root.resolve())


class UppercasingStore(PersistBase[Any]):
    """A user's custom storage: here it records what it was asked to store."""

    written: list[tuple[str, str]] = []  # noqa: RUF012 - shared by every instance on purpose

    async def write_value(self, entity_id: str | int, value: Any, **kwargs: Any) -> str:
        type(self).written.append((self.entity_name, str(entity_id)))
        return await super().write_value(entity_id, value, **kwargs)


async def test_custom_adapter_class_takes_effect_for_keys_already_used(data_root: Path) -> None:
    await PersistSignalAdapter.write_signal_data(signal(), "BTCUSDT", "trend")
    PersistSignalAdapter.use_persist_signal_adapter(UppercasingStore)
    try:
        await PersistSignalAdapter.write_signal_data(signal(id="2"), "BTCUSDT", "trend")
        assert UppercasingStore.written == [("BTCUSDT_trend", "BTCUSDT")]
        row = await PersistSignalAdapter.read_signal_data("BTCUSDT", "trend")
        assert row is not None and row.id == "2"
    finally:
        PersistSignalAdapter.use_persist_signal_adapter(PersistBase)
    with pytest.raises(TypeError):
        PersistSignalAdapter.use_persist_signal_adapter(dict)  # type: ignore[arg-type]


async def test_adapters_quarantine_corrupt_state_on_first_use(data_root: Path) -> None:
    directory = data_root / "signal" / "BTCUSDT_trend"
    directory.mkdir(parents=True)
    (directory / "BTCUSDT.json").write_text('{"id": "x", "position": "long"')
    assert await PersistSignalAdapter.read_signal_data("BTCUSDT", "trend") is None
    quarantined = list((data_root / ".quarantine" / "signal" / "BTCUSDT_trend").iterdir())
    assert len(quarantined) == 2  # the bytes and the reason, never deleted


async def test_an_overlong_pair_is_refused_alike_in_both_modes_before_any_io(
    mode: str, data_root: Path
) -> None:
    symbol, strategy = "S" * 150, "t" * 150  # each half fits, the joined name does not
    row = signal(symbol, strategy)
    with pytest.raises(InvalidNameError, match="limit is 200"):
        await PersistSignalAdapter.write_signal_data(row, symbol, strategy)
    with pytest.raises(InvalidNameError, match="limit is 200"):
        await PersistPartialAdapter.read_partial_data(symbol, strategy)
    with pytest.raises(InvalidNameError, match="limit is 200"):
        persistkit.LiveSession([(symbol, strategy)], "main", base_dir=data_root)
    assert not data_root.exists() or files_under(data_root) == []
    # The longest pair that fits works the same in both modes.
    symbol = "S" * 198
    await PersistSignalAdapter.write_signal_data(signal(symbol, "t"), symbol, "t")
    assert await PersistSignalAdapter.read_signal_data(symbol, "t") == signal(symbol, "t")


async def test_after_configure_backtest_every_store_lives_in_memory(
    tmp_path: Path, data_root: Path
) -> None:
    made_live: PersistBase[Any] = PersistBase("fills", data_root)
    outside_live: PersistBase[Any] = PersistBase("fills", tmp_path / "elsewhere")
    chosen = persistkit.MemoryBackend("chosen")
    explicit: PersistBase[Any] = PersistBase("fills", data_root, backend=chosen)
    await made_live.write_value("before", 1)
    assert values_under(data_root) == ["fills/before.json"]

    persistkit.configure(mode="backtest", base_dir=data_root)
    made_after: PersistBase[Any] = PersistBase("fills", base_dir=data_root)
    for store in (made_live, outside_live, made_after):
        await store.write_value("after", 2)
        assert await store.read_value("after") == 2
    await explicit.write_value("after", 3)  # its caller chose: it stays on that backend
    assert await chosen.get("fills/after") is not None
    await PersistSignalAdapter.write_signal_data(signal(), "BTCUSDT", "trend")
    assert values_under(data_root) == ["fills/before.json"]  # no file, no directory since
    assert not (tmp_path / "elsewhere").exists()
    assert not await made_live.has_value("before")  # memory, not the live files

    persistkit.configure(mode="live", base_dir=data_root)  # and back
    assert await made_live.read_value("before") == 1
    assert not await made_live.has_value("after")


class SharedBackendStore(PersistBase[Any]):
    """A swapped adapter that keeps every domain on one backend of its own choosing."""

    backend_used = persistkit.MemoryBackend("shared")

    def __init__(self, entity_name: str, base_dir: str) -> None:
        super().__init__(entity_name, base_dir, backend=self.backend_used)


async def test_swapped_adapters_on_one_backend_keep_their_domains_apart() -> None:
    PersistSignalAdapter.use_persist_signal_adapter(SharedBackendStore)
    PersistScheduleAdapter.use_persist_schedule_adapter(SharedBackendStore)
    try:
        opened = signal(id="the-signal")
        waiting = ScheduledSignalRow(**signal(id="the-limit-entry").model_dump())
        await PersistSignalAdapter.write_signal_data(opened, "BTCUSDT", "trend")
        await PersistScheduleAdapter.write_schedule_data(waiting, "BTCUSDT", "trend")
        assert await PersistSignalAdapter.read_signal_data("BTCUSDT", "trend") == opened
        assert await PersistScheduleAdapter.read_schedule_data("BTCUSDT", "trend") == waiting
        keys = [key async for key in SharedBackendStore.backend_used.scan("", recursive=True)]
        assert sorted(keys) == ["schedule/BTCUSDT_trend/BTCUSDT", "signal/BTCUSDT_trend/BTCUSDT"]
    finally:
        PersistSignalAdapter.use_persist_signal_adapter(PersistBase)
        PersistScheduleAdapter.use_persist_schedule_adapter(PersistBase)


async def test_a_row_written_under_other_names_is_refused_before_any_io(
    mode: str, data_root: Path
) -> None:
    row = signal("BTCUSDT", "trend")
    with pytest.raises(RowMismatchError, match="arguments swapped"):
        await PersistSignalAdapter.write_signal_data(row, "trend", "BTCUSDT")
    with pytest.raises(RowMismatchError):
        await PersistScheduleAdapter.write_schedule_data(
            ScheduledSignalRow(**row.model_dump()), "BTCUSDT", "other"
        )
    assert not data_root.exists() or files_under(data_root) == []
    assert await PersistSignalAdapter.read_signal_data("trend", "BTCUSDT") is None
    await PersistSignalAdapter.write_signal_data(row, "BTCUSDT", "trend")  # the right order
    assert await PersistSignalAdapter.read_signal_data("BTCUSDT", "trend") == row

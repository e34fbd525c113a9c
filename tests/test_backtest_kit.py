"""Porting a bot from the real backtest-kit 19.5.0: its files read, migrated, never flat in silence.

Every backtest-kit file here is written by the npm package itself (see
``support/backtest_kit.py``); persistkit then reads it through the
``backtest-kit://`` backend, migrates it with the command line and restores it
with a :class:`~persistkit.LiveSession`.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from persistkit import LiveSession, open_backend
from persistkit.backends._backtest_kit import BacktestKitBackend, find_backtest_kit_state
from persistkit.backends._file import MIN_FOREIGN_TEMP_AGE, FileBackend
from persistkit.errors import InvalidNameError, WriteFailedError
from persistkit.models import RiskActivePosition, SignalRow
from support.backtest_kit import (
    EXCHANGE,
    finish_writer,
    install_backtest_kit,
    risk_position,
    signal_row,
    start_writer,
    write_with_backtest_kit,
)
from test_cli import run_cli, run_json

# Pair B's names: unicode, a space and a '_' inside the strategy, as backtest-kit
# writes them raw into its folder names.
BTC = ("BTCUSDT", "trend")
ETH = ("ETHUSDT", "mean_rev ⚡")
SOL = ("SOLUSDT", "breakout")
OPENED_BTC = 1_763_700_060_000
OPENED_ETH = 1_763_700_120_000


@pytest.fixture(scope="module")
def backtest_kit() -> Path:
    return install_backtest_kit()


def bot_state() -> list[dict[str, Any]]:
    """A live backtest-kit bot's four domains: two open signals (one note-less), a
    scheduled entry, two risk positions, partial levels for both signals."""
    btc = signal_row(*BTC, "sig-btc")
    eth = signal_row(
        *ETH, "sig-eth", position="short", priceOpen=3100.25, priceTakeProfit=2900,
        priceStopLoss=3200, cost=250.5, minuteEstimatedTime=720, note="fade the pump",
        pendingAt=OPENED_ETH,
    )  # fmt: skip
    sol = signal_row(*SOL, "sch-sol", priceOpen=140.5, priceTakeProfit=150, priceStopLoss=135)
    return [
        {"op": "signal", "symbol": BTC[0], "strategy": BTC[1], "exchange": EXCHANGE, "row": btc},
        {"op": "signal", "symbol": ETH[0], "strategy": ETH[1], "exchange": EXCHANGE, "row": eth},
        {"op": "schedule", "symbol": SOL[0], "strategy": SOL[1], "exchange": EXCHANGE, "row": sol},
        {
            "op": "risk",
            "risk": "main",
            "exchange": EXCHANGE,
            "positions": [
                risk_position(btc, opened=OPENED_BTC),
                risk_position(eth, opened=OPENED_ETH),
            ],
        },
        {
            "op": "partial", "symbol": BTC[0], "strategy": BTC[1], "signalId": "sig-btc",
            "exchange": EXCHANGE,
            "data": {"sig-btc": {"profitLevels": [20, 10], "lossLevels": []}},
        },
        {
            "op": "partial", "symbol": ETH[0], "strategy": ETH[1], "signalId": "sig-eth",
            "exchange": EXCHANGE,
            "data": {"sig-eth": {"profitLevels": [], "lossLevels": [10]}},
        },
    ]  # fmt: skip


@pytest.fixture
def bot_root(backtest_kit: Path, tmp_path: Path) -> Path:
    """``dump/data`` of a backtest-kit 19.5.0 bot, written by backtest-kit."""
    report = write_with_backtest_kit(backtest_kit, tmp_path / "bot", bot_state())
    assert report["failures"] == []
    return tmp_path / "bot" / "dump" / "data"


def source_url(root: Path, exchange: str = EXCHANGE) -> str:
    return f"backtest-kit://{root}?exchange={exchange}"


async def restore(root: Path) -> Any:
    session = LiveSession([BTC, ETH, SOL], "main", base_dir=root)
    try:
        return await session.start()
    finally:
        await session.aclose()


def assert_everything_restored(state: Any) -> None:
    btc, eth, sol = (state.pair(*pair) for pair in (BTC, ETH, SOL))
    assert btc.signal is not None and eth.signal is not None
    assert (btc.signal.id, btc.signal.note, btc.signal.price_open) == ("sig-btc", "", 64000.5)
    assert btc.signal.minute_estimated_time is None  # backtest-kit's "no limit"
    assert btc.signal.exchange_name == EXCHANGE
    assert btc.signal.model_extra is not None and btc.signal.model_extra["cost"] == 100
    assert (eth.signal.id, eth.signal.position, eth.signal.note) == (
        "sig-eth",
        "short",
        "fade the pump",
    )
    assert (eth.signal.price_open, eth.signal.minute_estimated_time) == (3100.25, 720)
    assert sol.signal is None and btc.scheduled is None
    assert sol.scheduled is not None
    assert (sol.scheduled.id, sol.scheduled.price_open) == ("sch-sol", 140.5)
    positions = {position.signal_id: position for _, position in state.risk_positions}
    assert sorted(positions) == ["sig-btc", "sig-eth"]
    assert positions["sig-btc"].quantity == 100 / 64000.5
    assert positions["sig-btc"].added_at == OPENED_BTC
    assert positions["sig-eth"].quantity == 250.5 / 3100.25
    assert positions["sig-eth"].added_at == OPENED_ETH
    assert (positions["sig-eth"].symbol, positions["sig-eth"].strategy_name) == ETH
    assert {key for key, _ in state.risk_positions} == {
        "trend_binance_BTCUSDT",
        "mean_rev ⚡_binance_ETHUSDT",
    }
    assert btc.partial["sig-btc"].profit_levels == [10, 20]
    assert eth.partial["sig-eth"].loss_levels == [10]
    assert state.inconsistencies() == []
    assert state.healed, state.foreign_state


async def test_a_backtest_kit_bot_migrates_into_a_fresh_root_and_restores_whole(
    bot_root: Path, tmp_path: Path
) -> None:
    fresh = tmp_path / "persistkit" / "dump" / "data"
    (bot_root / "candle" / EXCHANGE).mkdir(parents=True)  # backtest-kit's cache: not state
    dry = run_cli("migrate", source_url(bot_root), fresh, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    # The dry run shows the mapping, file by file, and writes nothing.
    assert "signal/BTCUSDT_trend_binance/BTCUSDT.json -> signal/BTCUSDT_trend/BTCUSDT" in dry.stdout
    assert "risk/main_binance/positions.json -> risk/main/positions" in dry.stdout
    assert "quantity = cost / priceOpen, addedAt = openTimestamp" in dry.stdout
    partial = "partial/BTCUSDT_trend_binance/sig-btc.json -> partial/BTCUSDT_trend/levels"
    assert partial in dry.stdout
    assert "0 not migrated" in dry.stdout
    assert "candle: backtest-kit's own, no persistkit counterpart (left as they are)" in dry.stdout
    assert not fresh.exists()

    done = run_cli("migrate", source_url(bot_root), fresh)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Copied 6 values, each read back and identical to the source; 0 failed." in done.stdout

    assert_everything_restored(await restore(fresh))
    # The source is left as it was: backtest-kit could still run on it.
    assert find_backtest_kit_state(str(bot_root)).folders == (
        "partial/BTCUSDT_trend_binance",
        "partial/ETHUSDT_mean_rev ⚡_binance",
        "risk/main_binance",
        "schedule/SOLUSDT_breakout_binance",
        "signal/BTCUSDT_trend_binance",
        "signal/ETHUSDT_mean_rev ⚡_binance",
    )


async def test_an_in_place_migration_moves_the_backtest_kit_folders_aside(
    bot_root: Path,
) -> None:
    done = run_cli("migrate", source_url(bot_root), bot_root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 backtest-kit folders moved aside into .backtest-kit-archive/" in done.stdout

    assert not find_backtest_kit_state(str(bot_root))
    archived = list((bot_root / ".backtest-kit-archive").glob("*/signal/BTCUSDT_trend_binance"))
    assert len(archived) == 1 and (archived[0] / "BTCUSDT.json").exists()  # nothing deleted
    assert_everything_restored(await restore(bot_root))
    code, report = run_json("preflight", bot_root)
    assert (code, report["problems"]) == (0, [])


async def test_a_start_on_backtest_kit_state_is_not_flat_in_silence(
    bot_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="persistkit"):
        state = await restore(bot_root)

    # It is flat for the backtest-kit state (it reads none of it) and says so.
    assert state.risk_positions == [] and state.pair(*BTC).signal is None
    assert not state.healed
    command = f"persistkit migrate '{source_url(bot_root)}' NEW_ROOT"
    assert len(state.foreign_state) == 1 and command in state.foreign_state[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(command in message for message in warnings), warnings

    code, report = run_json("preflight", bot_root)
    assert code == 1
    assert [(p["kind"], p["where"]) for p in report["problems"]] == [
        ("backtest-kit", str(bot_root))
    ]  # its folders are named as backtest-kit's, not as corrupt values to quarantine
    assert command in report["problems"][0]["detail"]
    plain = run_cli("inspect", bot_root)
    assert plain.returncode == 1 and "not shown:" in plain.stdout


def test_inspect_and_preflight_read_a_backtest_kit_folder_in_persistkit_terms(
    bot_root: Path,
) -> None:
    code, inventory = run_json("inspect", source_url(bot_root))
    assert code == 0, inventory
    assert [(row["symbol"], row["strategy"]) for row in inventory["signals"]] == [BTC, ETH]
    assert [(row["symbol"], row["strategy"]) for row in inventory["scheduled"]] == [SOL]
    assert sorted(view["signal_id"] for view in inventory["partial"]) == ["sig-btc", "sig-eth"]
    code, report = run_json("preflight", source_url(bot_root))
    assert (code, report["problems"]) == (0, [])


async def test_what_cannot_be_attributed_or_derived_is_reported_and_skipped(
    backtest_kit: Path, tmp_path: Path
) -> None:
    btc = signal_row(*BTC, "sig-btc")
    orphan = signal_row("XRPUSDT", "grid", "sig-xrp")  # a position without its open signal
    nan_price = signal_row("ADAUSDT", "dip", "sig-ada", priceOpen="NaN")  # the number NaN
    other = signal_row("BTCUSDT", "trend", "sig-bybit", exchange="bybit")
    write_with_backtest_kit(backtest_kit, tmp_path / "bot", [
        {"op": "signal", "symbol": "BTCUSDT", "strategy": "trend", "exchange": EXCHANGE,
         "row": btc},
        # JSON.stringify writes NaN as null: still refused, never turned into a price.
        {"op": "signal", "symbol": "ADAUSDT", "strategy": "dip", "exchange": EXCHANGE,
         "row": nan_price},
        {"op": "signal", "symbol": "BTCUSDT", "strategy": "trend", "exchange": "bybit",
         "row": other},
        {"op": "risk", "risk": "main", "exchange": EXCHANGE,
         "positions": [risk_position(btc, opened=OPENED_BTC),
                       risk_position(orphan, opened=OPENED_BTC)]},
        # BTC_USDT_grid: ("BTC", "USDT_grid") or ("BTC_USDT", "grid")? Nothing says.
        {"op": "partial", "symbol": "BTC_USDT", "strategy": "grid", "signalId": "sig-g",
         "exchange": EXCHANGE, "data": {"sig-g": {"profitLevels": [10], "lossLevels": []}}},
        # A cleared signal: no state, nothing to migrate.
        {"op": "signal", "symbol": "DOTUSDT", "strategy": "dip", "exchange": EXCHANGE,
         "row": None},
    ])  # fmt: skip
    root = tmp_path / "bot" / "dump" / "data"
    mapping = BacktestKitBackend(root, exchange=EXCHANGE).mapping()
    skipped = {item.path: item.reason for item in mapping.skipped}
    assert skipped.keys() == {
        "signal/ADAUSDT_dip_binance/ADAUSDT.json",
        "signal/BTCUSDT_trend_bybit",
        "risk/main_binance/positions.json",
        "partial/BTC_USDT_grid_binance",
    }
    assert "priceOpen" in skipped["signal/ADAUSDT_dip_binance/ADAUSDT.json"]
    assert "not of exchange 'binance'" in skipped["signal/BTCUSDT_trend_bybit"]
    assert "has no open signal" in skipped["risk/main_binance/positions.json"]
    assert skipped["partial/BTC_USDT_grid_binance"].startswith("ambiguous:")
    assert mapping.empty == ["signal/DOTUSDT_dip_binance/DOTUSDT.json"]
    risk = orjson.loads(mapping.values["risk/main/positions"].data)
    assert [key for key, _ in risk] == ["trend_binance_BTCUSDT"]  # the derivable one only

    fresh = tmp_path / "fresh"
    done = run_cli("migrate", source_url(root), fresh)
    assert done.returncode == 1, done.stdout + done.stderr  # something was left behind
    assert "Copied 2 values" in done.stdout and "Not migrated: 4 items" in done.stderr
    for path in skipped:
        assert path in done.stdout
    state = await restore(fresh)
    assert state.pair(*BTC).signal is not None
    assert [position.signal_id for _, position in state.risk_positions] == ["sig-btc"]


async def test_the_backend_refuses_every_write_and_a_bad_url(bot_root: Path) -> None:
    backend = open_backend(source_url(bot_root))
    assert isinstance(backend, BacktestKitBackend)
    key = "signal/BTCUSDT_trend/BTCUSDT"
    before = await backend.get(key)
    assert before is not None
    files = {path: path.read_bytes() for path in bot_root.rglob("*") if path.is_file()}
    with pytest.raises(WriteFailedError, match="read-only"):
        await backend.put(key, b"{}")
    with pytest.raises(WriteFailedError, match="read-only"):
        await backend.delete(key)
    with pytest.raises(WriteFailedError, match="read-only"):
        await backend.commit({key: None})
    with pytest.raises(WriteFailedError, match="read-only"):
        await backend.quarantine(key, "no")
    after = await backend.get(key)
    assert after is not None and after.data == before.data
    assert {path: path.read_bytes() for path in bot_root.rglob("*") if path.is_file()} == files
    into = run_cli("migrate", bot_root, source_url(bot_root))
    assert into.returncode == 2 and "is read-only" in into.stderr
    for url, fragment in [
        (f"backtest-kit://{bot_root}", "needs one exchange"),
        (f"backtest-kit://{bot_root}?exchange=", "needs one exchange"),
        (f"backtest-kit://{bot_root}?exchange=a&exchange=b", "needs one exchange"),
        (f"backtest-kit://{bot_root}?exchange=a&frame=x", "unknown parameter"),
        ("backtest-kit://host/dump/data?exchange=a", "names a host"),
    ]:
        with pytest.raises(InvalidNameError, match=fragment):
            open_backend(url)


def write_temp(folder: Path, name: str, age: float = 0.0) -> Path:
    path = folder / name
    path.write_bytes(b'{"id": "half')
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


async def test_a_start_leaves_another_programs_fresh_temp_files_alone(
    bot_root: Path,
) -> None:
    folder = bot_root / "signal" / "BTCUSDT_trend_binance"
    own = write_temp(folder, f".tmp-{secrets.token_hex(8)}")
    in_flight = write_temp(folder, f".tmp-{secrets.token_hex(6)}-BTCUSDT.json")
    crashed = write_temp(folder, f".tmp-{secrets.token_hex(6)}-BTCUSDT.json", age=121)

    found = await FileBackend(bot_root).clean_orphans("signal/BTCUSDT_trend_binance")

    assert sorted(found) == sorted(f"signal/BTCUSDT_trend_binance/{p.name}" for p in (own, crashed))
    assert in_flight.exists() and not own.exists() and not crashed.exists()
    # The bound is configurable, never below backtest-kit's own 120 s.
    older = write_temp(folder, f".tmp-{secrets.token_hex(6)}-BTCUSDT.json", age=200)
    patient = FileBackend(bot_root, foreign_temp_age=300)
    assert await patient.clean_orphans("signal/BTCUSDT_trend_binance") == []
    assert older.exists()
    with pytest.raises(ValueError, match="at least 120"):
        FileBackend(bot_root, foreign_temp_age=MIN_FOREIGN_TEMP_AGE - 1)


async def test_backtest_kit_writing_while_persistkit_starts_loses_no_write(
    backtest_kit: Path, tmp_path: Path
) -> None:
    """A cutover: backtest-kit still writes its signal while persistkit starts, again and
    again, on the very folder (the pair ("BTCUSDT", "trend_binance") is stored there)."""
    row = signal_row(*BTC, "sig-btc")
    write_with_backtest_kit(backtest_kit, tmp_path / "bot", [
        {"op": "signal", "symbol": "BTCUSDT", "strategy": "trend", "exchange": EXCHANGE,
         "row": row},
    ])  # fmt: skip
    root = tmp_path / "bot" / "dump" / "data"
    writer = start_writer(backtest_kit, tmp_path / "bot", [
        {"op": "repeat-signal", "symbol": "BTCUSDT", "strategy": "trend", "exchange": EXCHANGE,
         "row": row, "count": 400},
    ])  # fmt: skip
    starts = 0
    while writer.poll() is None:
        session = LiveSession([("BTCUSDT", "trend_binance")], "main", base_dir=root)
        await session.start()
        await session.aclose()
        starts += 1
    report = finish_writer(writer)
    assert starts > 0
    assert report["writes"] == 400
    assert report["failures"] == []  # none of its renames lost its temp file
    stored = orjson.loads((root / "signal" / "BTCUSDT_trend_binance" / "BTCUSDT.json").read_bytes())
    assert stored == row


def test_models_accept_what_backtest_kit_writes_where_it_is_not_wrong() -> None:
    row = signal_row(*BTC, "sig-btc")
    parsed = SignalRow.model_validate(row)
    assert parsed.note == "" and parsed.minute_estimated_time is None
    assert parsed.model_extra is not None and parsed.model_extra["frameName"] == ""
    assert orjson.loads(orjson.dumps(parsed.model_dump(mode="json")))["exchangeName"] == EXCHANGE
    position = RiskActivePosition.model_validate(
        {**risk_position(row, opened=OPENED_BTC)[1], "signalId": "sig-btc", "quantity": 0.5,
         "addedAt": OPENED_BTC}
    )  # fmt: skip
    assert position.model_extra is not None and position.model_extra["minuteEstimatedTime"] is None
    # NaN, written by JSON.stringify as null, is no price.
    with pytest.raises(ValueError, match="priceOpen"):
        SignalRow.model_validate({**row, "priceOpen": None})

"""Attacks on the backtest-kit migration: state written by backtest-kit 19.5.0 itself, migrated
with the real ``persistkit`` command, in real folders.

Each test is a way a user porting a live bot could lose, invent or misattribute a position, or
start flat in silence.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.reliability.common import LONG
from tests.support.backtest_kit import (
    EXCHANGE,
    install_backtest_kit,
    risk_position,
    signal_row,
    start_writer,
    write_with_backtest_kit,
)

from persistkit import LiveSession, PersistSignalAdapter
from persistkit.backends._backtest_kit import ARCHIVE_DIR
from persistkit.models import SignalRow


@pytest.fixture(scope="module")
def install_dir() -> Path:
    return install_backtest_kit()


def _persistkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "persistkit", *args], capture_output=True, text=True, check=False
    )


def _source(root: Path) -> str:
    return f"backtest-kit://{root}?exchange={EXCHANGE}"


def _write(install_dir: Path, workdir: Path, operations: list[dict[str, Any]]) -> Path:
    """State written by backtest-kit itself; the ``dump/data`` folder it is in."""
    write_with_backtest_kit(install_dir, workdir, operations)
    return workdir / "dump" / "data"


def _stored(root: Path, relative: str) -> Any:
    return orjson.loads((root / relative).read_bytes())


def json_of(path: Path) -> Any:
    """The JSON in ``path``, read as backtest-kit replaces it (atomically, by rename)."""
    return orjson.loads(path.read_bytes())


def test_partial_levels_of_a_signal_whose_id_is_levels_are_migrated_not_passed_over(
    install_dir: Path, tmp_path: Path
) -> None:
    """backtest-kit names a partial file after its signal id; an id ``levels`` makes the file
    ``levels.json``, the name persistkit's own partial file has. It must not be taken for
    persistkit's (passed over in silence, a clean preflight): its levels would be lost."""
    levels = {"profitLevels": [10, 20], "lossLevels": []}
    source = _write(
        install_dir,
        tmp_path / "bot",
        [
            {
                "op": "partial",
                "data": {"levels": levels},
                "symbol": "BTC",
                "strategy": "trend",
                "signalId": "levels",
                "exchange": EXCHANGE,
            }
        ],
    )
    preflight = _persistkit("preflight", str(source))
    assert preflight.returncode == 1, preflight.stdout
    assert "backtest-kit" in preflight.stdout + preflight.stderr

    destination = tmp_path / "migrated"
    migrated = _persistkit("migrate", _source(source), str(destination))
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert _stored(destination, "partial/BTC_trend/levels.json") == {"levels": levels}


def test_a_symbolic_link_for_a_whole_domain_folder_is_not_followed(
    install_dir: Path, tmp_path: Path
) -> None:
    """``signal`` a link to another bot's folder: its signals are not this bot's to migrate.
    The backend never follows a link for a folder or a file; nor for a domain's folder."""
    other_bot = _write(
        install_dir,
        tmp_path / "other-bot",
        [
            {
                "op": "signal",
                "row": signal_row("BTC", "trend", "theirs"),
                "symbol": "BTC",
                "strategy": "trend",
                "exchange": EXCHANGE,
            }
        ],
    )
    source = tmp_path / "bot" / "dump" / "data"
    source.mkdir(parents=True)
    os.symlink(other_bot / "signal", source / "signal")

    destination = tmp_path / "migrated"
    migrated = _persistkit("migrate", _source(source), str(destination))
    assert migrated.returncode == 1, migrated.stdout + migrated.stderr
    assert "signal: a symbolic link; never followed" in migrated.stdout
    assert not (destination / "signal").exists()


def test_a_stale_risk_position_is_not_attributed_to_a_newer_open_signal(
    install_dir: Path, tmp_path: Path
) -> None:
    newer = signal_row("ETH", "trend", "newer", priceOpen=3200.0)
    older = signal_row("ETH", "trend", "older", priceOpen=2500.0)
    source = _write(
        install_dir,
        tmp_path / "bot",
        [
            {
                "op": "signal",
                "row": newer,
                "symbol": "ETH",
                "strategy": "trend",
                "exchange": EXCHANGE,
            },
            {
                "op": "risk",
                "positions": [risk_position(older, opened=1_600_000_000_000)],
                "risk": "main",
                "exchange": EXCHANGE,
            },
        ],
    )
    # One open signal per pair: a position opened before the open signal was
    # created is an earlier signal's (priceOpen cannot tell: averaging moves it).
    dry_run = _persistkit("migrate", "--dry-run", _source(source), str(tmp_path / "migrated"))
    assert "1 not migrated" in dry_run.stdout, dry_run.stdout
    assert (
        "risk/main_binance/positions.json: position 'trend_binance_ETH': opened at "
        "1600000000000, before the open signal 'newer' of 'ETH' / 'trend' was created"
    ) in dry_run.stdout
    migrated = _persistkit("migrate", _source(source), str(tmp_path / "migrated"))
    assert migrated.returncode == 1, migrated.stdout + migrated.stderr
    assert "Not migrated: 1 item of the source" in migrated.stderr
    assert not (tmp_path / "migrated" / "risk").exists()


def _open_signal_with_its_position(symbol: str, signal_id: str) -> list[dict[str, Any]]:
    row = signal_row(symbol, "trend", signal_id)
    return [
        {"op": "signal", "row": row, "symbol": symbol, "strategy": "trend", "exchange": EXCHANGE},
        {
            "op": "risk",
            "positions": [risk_position(row, opened=1_763_700_060_000)],
            "risk": "main",
            "exchange": EXCHANGE,
        },
    ]


async def _restore(root: Path, *pairs: tuple[str, str]) -> Any:
    session = LiveSession(list(pairs), risk_name="main", base_dir=str(root))
    try:
        return await session.start()
    finally:
        await session.aclose()


async def test_after_an_in_place_migration_the_bots_own_signals_are_not_reported_as_foreign(
    install_dir: Path, tmp_path: Path
) -> None:
    """Migrated in place, then the persistkit bot trades: its own signal rows (no
    ``exchangeName``) are persistkit's, not "of another exchange". Running migrate again must
    not report them as not migrated (exit 1) nor list them as backtest-kit's."""
    root = _write(install_dir, tmp_path / "bot", _open_signal_with_its_position("BTC", "s1"))
    first = _persistkit("migrate", _source(root), str(root))
    assert first.returncode == 0, first.stdout + first.stderr

    session = LiveSession([("ETH", "grid")], risk_name="grid-risk", base_dir=str(root))
    await session.start()
    async with session.tick():
        await PersistSignalAdapter.write_signal_data(
            SignalRow(
                id="native-1",
                symbol="ETH",
                strategy_name="grid",
                position="short",
                price_open=3000.0,
                price_take_profit=2900.0,
                price_stop_loss=3100.0,
                scheduled_at=1_763_700_000_000,
                pending_at=1_763_700_060_000,
            ),
            "ETH",
            "grid",
        )
    await session.aclose()

    again = _persistkit("migrate", _source(root), str(root))
    assert "signal/ETH_grid" not in again.stdout, again.stdout
    assert again.returncode == 0, again.stdout + again.stderr
    restored = await _restore(root, ("BTC", "trend"))
    assert restored.pair("BTC", "trend").signal.id == "s1"
    assert restored.healed and not restored.inconsistencies()


async def test_a_torn_backtest_kit_signal_file_does_not_make_a_silent_flat_start(
    install_dir: Path, tmp_path: Path
) -> None:
    root = _write(install_dir, tmp_path / "bot", _open_signal_with_its_position("BTC", "s1"))
    shutil.rmtree(root / "risk")
    torn = root / "signal" / "BTC_trend_binance" / "BTC.json"
    torn.write_bytes(torn.read_bytes()[:40])
    restored = await _restore(root, ("BTC", "trend"))
    assert restored.pair("BTC", "trend").signal is None
    assert not restored.healed, "a start beside an open backtest-kit signal must not be clean"
    (warning,) = restored.foreign_state
    assert "signal/BTC_trend_binance/BTC.json: not JSON" in warning


async def test_a_torn_backtest_kit_risk_file_does_not_make_a_silent_flat_start(
    install_dir: Path, tmp_path: Path
) -> None:
    """The risk positions are the only trace of the open trade left (its signal folder
    gone): torn, they must be flagged as the torn signal is, not skipped as not risk."""
    root = _write(install_dir, tmp_path / "bot", _open_signal_with_its_position("BTC", "s1"))
    shutil.rmtree(root / "signal")
    [torn] = (root / "risk").glob("main_*/positions.json")
    torn.write_bytes(torn.read_bytes()[:30])
    restored = await _restore(root, ("BTC", "trend"))
    assert not restored.healed, "a start beside backtest-kit's open positions must not be clean"
    (warning,) = restored.foreign_state
    assert f"risk/{torn.parent.name}/positions.json: not JSON" in warning


async def test_a_fifo_where_a_backtest_kit_signal_belongs_is_flagged_not_waited_on(
    install_dir: Path, tmp_path: Path
) -> None:
    """Opening a FIFO for reading waits for a writer: a start that opened it plainly
    hung for good. It must start, and flag the file like any other it cannot read."""
    root = _write(install_dir, tmp_path / "bot", _open_signal_with_its_position("BTC", "s1"))
    shutil.rmtree(root / "risk")
    planted = root / "signal" / "BTC_trend_binance" / "BTC.json"
    planted.unlink()
    os.mkfifo(planted)
    starting = asyncio.to_thread(asyncio.run, _restore(root, ("BTC", "trend")))
    try:
        restored = await asyncio.wait_for(starting, timeout=60)
    except TimeoutError:
        os.close(os.open(planted, os.O_WRONLY | os.O_NONBLOCK))  # lets the stuck start go
        pytest.fail("the start waited for something to write to the FIFO")
    assert not restored.healed
    (warning,) = restored.foreign_state
    assert "signal/BTC_trend_binance/BTC.json: not a regular file" in warning
    assert stat.S_ISFIFO(planted.stat().st_mode)  # flagged, left where it is


_KILL_TRIALS = 12 if LONG else 2
_PAIRS = [f"C{index:02d}" for index in range(30)]


@pytest.fixture(scope="module")
def many_open_signals(install_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 pairs, each with an open signal and its risk position, written by backtest-kit."""
    rows = [signal_row(symbol, "trend", f"sig-{symbol}") for symbol in _PAIRS]
    operations: list[dict[str, Any]] = [
        {
            "op": "signal",
            "row": row,
            "symbol": row["symbol"],
            "strategy": "trend",
            "exchange": EXCHANGE,
        }
        for row in rows
    ]
    operations.append(
        {
            "op": "risk",
            "positions": [risk_position(row, opened=1_763_700_060_000) for row in rows],
            "risk": "main",
            "exchange": EXCHANGE,
        }
    )
    return _write(install_dir, tmp_path_factory.mktemp("many"), operations)


def _files(root: Path) -> dict[str, bytes]:
    """Every backtest-kit file, by its path relative to its domain (archived or not)."""
    found = {}
    for path in root.rglob("*.json"):
        parts = path.relative_to(root).parts
        if parts[0] == ARCHIVE_DIR:
            parts = parts[2:]  # .backtest-kit-archive/{stamp}/...
        if len(parts) == 3 and parts[1].endswith(f"_{EXCHANGE}"):
            found["/".join(parts)] = path.read_bytes()
    return found


@pytest.mark.parametrize("trial", range(_KILL_TRIALS))
def test_kill_9_during_an_in_place_migration_then_a_rerun_loses_nothing(
    many_open_signals: Path, tmp_path: Path, trial: int
) -> None:
    """SIGKILL at a different moment each trial (reading, copying, archiving), then the same
    command again: every signal and position restored, every backtest-kit file kept
    (archived or in place), none archived before its value is in the root."""
    root = tmp_path / "data"
    shutil.copytree(many_open_signals, root)
    before = _files(root)
    migrating = subprocess.Popen(
        [sys.executable, "-m", "persistkit", "migrate", _source(root), str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # The n-th trial kills after n/TRIALS of the command's run (0.15 s steps up to ~1.5 s).
    try:
        migrating.wait(timeout=0.15 + 1.35 * trial / max(_KILL_TRIALS - 1, 1))
    except subprocess.TimeoutExpired:
        migrating.kill()
        migrating.wait()
    assert _files(root) == before, "a backtest-kit file was lost or changed by the kill"
    archived = [
        path.relative_to(root).parts[2:] for path in (root / ARCHIVE_DIR).glob("*/signal/*")
    ]
    for _, folder in archived:
        symbol = folder.split("_")[0]
        assert (root / "signal" / f"{symbol}_trend" / f"{symbol}.json").exists(), (
            f"{folder} archived before its value was migrated"
        )

    rerun = _persistkit("migrate", _source(root), str(root))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _files(root) == before
    restored = asyncio.run(_restore(root, *((symbol, "trend") for symbol in _PAIRS)))
    assert [restored.pair(symbol, "trend").signal.id for symbol in _PAIRS] == [
        f"sig-{symbol}" for symbol in _PAIRS
    ]
    assert len(restored.risk_positions) == len(_PAIRS)
    assert restored.healed and not restored.inconsistencies()


async def test_a_pair_folder_left_empty_by_a_closed_signal_is_not_reported_as_foreign(
    install_dir: Path, tmp_path: Path
) -> None:
    """Migrated in place; the bot closes the signal (its file removed, its folder left). The
    empty folder holds no state: a rerun of migrate (after a full disk, say) is clean."""
    root = _write(install_dir, tmp_path / "bot", _open_signal_with_its_position("BTC", "s1"))
    first = _persistkit("migrate", _source(root), str(root))
    assert first.returncode == 0, first.stdout + first.stderr
    session = LiveSession([("BTC", "trend")], risk_name="main", base_dir=str(root))
    await session.start()
    async with session.tick():
        await PersistSignalAdapter.write_signal_data(None, "BTC", "trend")
    await session.aclose()
    assert not any((root / "signal" / "BTC_trend").iterdir())

    again = _persistkit("migrate", _source(root), str(root))
    assert "signal/BTC_trend" not in again.stdout, again.stdout
    assert again.returncode == 0, again.stdout + again.stderr


async def test_hostile_names_migrate_each_to_its_own_pair_or_are_reported(
    install_dir: Path, tmp_path: Path
) -> None:
    """NFC and NFD spellings, ``_`` at the edges, a name that looks percent-encoded, a dot name:
    backtest-kit keeps each apart, so must the migration. Names persistkit cannot hold (``..``,
    too long) are reported, never squeezed into another pair."""
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    kept = [(nfc, "trend"), (nfd, "trend"), ("_BTC", "trend"), ("BTC_", "trend"), ("ETH", "_x_")]
    kept += [("A%5FB", "trend"), ("A_B", "trend"), (".hidden", "t")]
    refused = [("x", ".."), ("L" * 120, "s" * 100)]
    operations: list[dict[str, Any]] = []
    for index, (symbol, strategy) in enumerate(kept + refused):
        names = {"symbol": symbol, "strategy": strategy, "exchange": EXCHANGE}
        operations.append(
            {"op": "signal", "row": signal_row(symbol, strategy, f"id-{index}")} | names
        )
        levels = {f"id-{index}": {"profitLevels": [10], "lossLevels": []}}
        operations.append({"op": "partial", "data": levels, "signalId": f"id-{index}"} | names)
    source = _write(install_dir, tmp_path / "bot", operations)

    destination = tmp_path / "migrated"
    migrated = _persistkit("migrate", _source(source), str(destination))
    assert migrated.returncode == 1, migrated.stdout + migrated.stderr
    assert "signal/x_.._binance/x.json: name '..'" in migrated.stdout
    assert f"signal/{'L' * 120}_{'s' * 100}_binance/" in migrated.stdout
    restored = await _restore(destination, *kept)
    for index, (symbol, strategy) in enumerate(kept):
        pair = restored.pair(symbol, strategy)
        assert pair.signal is not None and pair.signal.id == f"id-{index}", (symbol, strategy)
        assert list(pair.partial) == [f"id-{index}"], (symbol, strategy)


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "fresh-root"])
def test_a_migration_beside_a_backtest_kit_bot_still_writing_is_not_called_done(
    install_dir: Path, tmp_path: Path, in_place: bool
) -> None:
    """The backtest-kit bot was not stopped: it keeps replacing its signal while migrate runs.
    What was copied is already stale when migrate returns: it must not exit 0 as if the port
    were done, nor archive a folder whose last value is not the one copied."""
    workdir = tmp_path / "bot"
    first = signal_row("BTC", "trend", "id-0")
    # Other pairs make the reads take a while, so that the bot's writes land in them
    # however loaded the machine is (with one value, migrate could finish between two).
    others = [
        {
            "op": "signal",
            "row": signal_row(f"S{n}", "trend", f"s-{n}"),
            "symbol": f"S{n}",
            "strategy": "trend",
            "exchange": EXCHANGE,
        }
        for n in range(150)
    ]
    root = _write(
        install_dir,
        workdir,
        [
            {
                "op": "signal",
                "row": first,
                "symbol": "BTC",
                "strategy": "trend",
                "exchange": EXCHANGE,
            },
            *others,
        ],
    )
    names = {"symbol": "BTC", "strategy": "trend", "exchange": EXCHANGE}
    # Writes until killed, however long migrate takes on a loaded machine.
    forever = {"op": "count-signal", "row": first, "count": 10**9} | names
    writing = start_writer(install_dir, workdir, [forever])
    try:
        while json_of(root / "signal" / "BTC_trend_binance" / "BTC.json")["id"] == "id-0":
            assert writing.poll() is None, writing.stderr.read() if writing.stderr else ""
            time.sleep(0.01)  # not spinning: both CPUs are the bot's and migrate's
        destination = root if in_place else tmp_path / "migrated"
        migrated = _persistkit("migrate", _source(root), str(destination))
        assert writing.poll() is None, "the bot stopped writing before migrate returned"
    finally:
        writing.kill()
        writing.wait()
    # Either the copy is made and the folder that changed is named (exit 1), or no two
    # reads agreed and nothing was copied (exit 2): never "done" (exit 0).
    assert migrated.returncode in (1, 2), migrated.stdout + migrated.stderr
    if migrated.returncode == 1:
        assert "signal/BTC_trend_binance" in migrated.stderr
    else:
        assert "changed during each of" in migrated.stderr
    assert not (root / ARCHIVE_DIR).exists()


def test_a_second_exchange_does_not_replace_the_first_ones_migrated_pair(
    install_dir: Path, tmp_path: Path
) -> None:
    """One backtest-kit folder, two exchanges trading the same pair on the same risk profile.
    persistkit's keys have no exchange: migrating the second into the root the first went to
    must refuse the collision, not replace the first's signal and positions because its files
    happen to be newer (that is another exchange's state, not a newer version of it)."""
    operations: list[dict[str, Any]] = []
    for exchange in ("binance", "bybit"):  # bybit written second: its files are newer
        row = signal_row("BTC", "trend", f"sig-{exchange}", exchange=exchange)
        operations.append(
            {"op": "signal", "row": row, "symbol": "BTC", "strategy": "trend", "exchange": exchange}
        )
        position = risk_position(row, opened=1_763_700_060_000)
        operations.append(
            {"op": "risk", "positions": [position], "risk": "main", "exchange": exchange}
        )
    source = _write(install_dir, tmp_path / "bot", operations)
    destination = tmp_path / "migrated"
    first = _persistkit("migrate", _source(source), str(destination))
    # bybit's folders are reported as another exchange's (exit 1); binance's are copied.
    assert "Copied 2 values" in first.stdout, first.stdout + first.stderr

    second = _persistkit("migrate", f"backtest-kit://{source}?exchange=bybit", str(destination))
    assert second.returncode == 1, second.stdout + second.stderr
    assert _stored(destination, "signal/BTC_trend/BTC.json")["id"] == "sig-binance"
    assert _stored(destination, "risk/main/positions.json")[0][1]["signalId"] == "sig-binance"

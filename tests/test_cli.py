"""The ``persistkit`` console script, run as a real subprocess against real folders.

Every tree is written through the public API (the domain adapters in live
mode), broken by hand where a test needs it, and then handed to the installed
console script exactly as an operator would.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import persistkit
from persistkit import (
    FileBackend,
    LiveSession,
    PersistBase,
    PersistPartialAdapter,
    PersistRiskAdapter,
    PersistScheduleAdapter,
    PersistSignalAdapter,
)
from persistkit.models import PartialData, RiskActivePosition, ScheduledSignalRow, SignalRow
from support.servers import RedisServer, free_port

CONSOLE_SCRIPT = Path(sys.executable).with_name("persistkit")

# Paths of backtest-kit's layout (the README's "On-disk layout"), as the adapters write them.
BTC_SIGNAL = "signal/BTCUSDT_trend_follow/BTCUSDT.json"
ETH_SIGNAL = "signal/ETH%2FUSDT_mean_rev/ETH%2FUSDT.json"
SOL_SCHEDULE = "schedule/SOLUSDT_breakout/SOLUSDT.json"
RISK = "risk/main_portfolio/positions.json"
PARTIAL = "partial/BTCUSDT_trend_follow/levels.json"


def child_environment() -> dict[str, str]:
    # Passed explicitly: readline, loaded inside pytest, exports COLUMNS=80 at the
    # C level behind os.environ's back, and an inherited environment would fold
    # the tables to it as if the operator had a narrow terminal.
    return dict(os.environ)


def run_cli(
    *args: str | Path, stdin: str | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, str(CONSOLE_SCRIPT), *map(str, args)],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=child_environment(),
    )


def run_json(*args: str | Path) -> tuple[int, Any]:
    result = run_cli(*args, "--json")
    return result.returncode, json.loads(result.stdout)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("persistkit: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def signal(symbol: str, strategy: str, index: int, **changes: Any) -> SignalRow:
    row: dict[str, Any] = {
        "id": f"sig-{index}",
        "symbol": symbol,
        "strategy_name": strategy,
        "position": "long",
        "price_open": 64123.5,
        "price_take_profit": 66000.0,
        "price_stop_loss": 63000.25,
        "scheduled_at": 1_763_700_000_000,
        "pending_at": 1_763_700_060_000 + index * 60_000,
        "exchange_name": "binance",
    }
    row.update(changes)
    return SignalRow(**row)


def position(
    symbol: str, strategy: str, index: int, side: str, price: float, quantity: float
) -> RiskActivePosition:
    return RiskActivePosition.model_validate(
        {
            "symbol": symbol,
            "strategy_name": strategy,
            "signal_id": f"sig-{index}",
            "position": side,
            "price_open": price,
            "quantity": quantity,
            "added_at": 1_763_700_000_000 + index * 60_000,
        }
    )


async def write_state(root: Path) -> None:
    """A bot's state as the adapters write it: two signals, a limit entry, risk, partials."""
    # Statistics off: these tests count, fingerprint and damage exact files, which
    # statistics events would add to (tests/test_stats.py covers them and `report`).
    persistkit.configure(mode="live", base_dir=root, event_limit=0)
    await PersistSignalAdapter.write_signal_data(
        signal("BTCUSDT", "trend_follow", 1), "BTCUSDT", "trend_follow"
    )
    await PersistSignalAdapter.write_signal_data(
        signal(
            "ETH/USDT",
            "mean_rev",
            2,
            position="short",
            price_open=3120.4,
            price_take_profit=2950.0,
            price_stop_loss=3200.0,
        ),
        "ETH/USDT",
        "mean_rev",
    )
    await PersistScheduleAdapter.write_schedule_data(
        ScheduledSignalRow(
            **signal("SOLUSDT", "breakout", 3, price_open=142.5, price_take_profit=155.0,
                     price_stop_loss=138.0).model_dump()
        ),
        "SOLUSDT",
        "breakout",
    )  # fmt: skip
    await PersistRiskAdapter.write_position_data(
        [
            ("BTCUSDT:trend_follow", position("BTCUSDT", "trend_follow", 1, "long", 64123.5, 0.05)),
            ("ETH/USDT:mean_rev", position("ETH/USDT", "mean_rev", 2, "short", 3120.4, 1.2)),
        ],
        "main_portfolio",
    )
    await PersistPartialAdapter.write_partial_data(
        {"sig-1": PartialData(profit_levels=[10, 20])}, "BTCUSDT", "trend_follow"
    )
    # As a stopped bot leaves it: every write is a journal commit on a root that keeps
    # history; the checkpoint of a stop puts each value in its file alone, which these
    # tests then damage.
    backend = FileBackend(root)
    await backend.checkpoint()
    await backend.aclose()


@pytest.fixture
async def state(data_root: Path) -> Path:
    await write_state(data_root)
    return data_root


def tree_fingerprint(root: Path) -> str:
    """Names, types, modes, inodes, mtimes and contents of everything under ``root``.

    mtimes of directories are included, so even a file created and removed
    again (a test write, a lock file) changes the fingerprint.
    """
    digest = hashlib.sha256()
    for directory, subdirectories, filenames in os.walk(root):
        subdirectories.sort()
        for name in sorted([".", *subdirectories, *filenames]):
            path = os.path.join(directory, name)
            info = os.lstat(path)
            digest.update(
                f"{os.path.relpath(path, root)}|{info.st_mode:o}|{info.st_ino}|"
                f"{info.st_mtime_ns}|{info.st_size}\n".encode()
            )
            if stat.S_ISREG(info.st_mode) and os.access(path, os.R_OK):
                digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def orphan_temps(root: Path) -> list[Path]:
    return list(root.rglob(".tmp-*"))


def file_time(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M:%S")


# -- inspect ---------------------------------------------------------------------------


def test_inspect_shows_entities_change_times_and_domain_tables(state: Path) -> None:
    result = run_cli("inspect", state)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"file://{state}: 5 entities in 4 domains (partial, risk, schedule, signal)" in out
    # Names decoded back from their path segments, not shown percent-encoded.
    assert "ETH/USDT / mean_rev" in out
    assert "%2F" not in out
    assert file_time(state / ETH_SIGNAL) in out
    open_signals = out.split("Open signals")[1].split("Scheduled entries")[0]
    assert "ETH/USDT" in open_signals and "short" in open_signals and "3,120.4" in open_signals
    assert "BTCUSDT" in open_signals and "trend_follow" in open_signals
    scheduled = out.split("Scheduled entries")[1].split("Risk positions")[0]
    assert "SOLUSDT" in scheduled and "142.5" in scheduled and "BTCUSDT" not in scheduled
    risk = out.split("Risk positions")[1]
    assert risk.count("main_portfolio") == 2 and "0.05" in risk and "1.2" in risk


def test_inspect_json_decodes_through_the_domain_models(state: Path) -> None:
    code, report = run_json("inspect", f"file://{state}")
    assert code == 0
    entities = {entity["key"]: entity for entity in report["entities"]}
    assert set(entities) == {
        "signal/BTCUSDT_trend_follow/BTCUSDT",
        "signal/ETH%2FUSDT_mean_rev/ETH%2FUSDT",
        "schedule/SOLUSDT_breakout/SOLUSDT",
        "risk/main_portfolio/positions",
        "partial/BTCUSDT_trend_follow/levels",
    }
    eth = entities["signal/ETH%2FUSDT_mean_rev/ETH%2FUSDT"]
    assert eth["id"] == "ETH/USDT"
    assert eth["bytes"] == (state / ETH_SIGNAL).stat().st_size
    mtime = datetime.fromtimestamp((state / ETH_SIGNAL).stat().st_mtime, UTC)
    assert eth["changed_at"] == mtime.isoformat(timespec="seconds")
    signals = {(row["symbol"], row["strategy"]): row["row"] for row in report["signals"]}
    assert signals[("ETH/USDT", "mean_rev")]["priceOpen"] == 3120.4
    assert signals[("BTCUSDT", "trend_follow")]["position"] == "long"
    assert [row["symbol"] for row in report["scheduled"]] == ["SOLUSDT"]
    assert [p["position"]["quantity"] for p in report["risk"]] == [0.05, 1.2]
    assert report["partial"][0]["levels"]["profitLevels"] == [10, 20]
    assert report["unreadable"] == []


def test_inspect_lists_unreadable_values_and_still_shows_the_rest(state: Path) -> None:
    (state / ETH_SIGNAL).write_bytes(b'{"id": "sig-2", "symb')
    code, report = run_json("inspect", state)
    assert code == 0
    assert [item["key"] for item in report["unreadable"]] == [
        "signal/ETH%2FUSDT_mean_rev/ETH%2FUSDT"
    ]
    assert "unparseable JSON" in report["unreadable"][0]["reason"]
    assert [row["symbol"] for row in report["signals"]] == ["BTCUSDT"]


# -- preflight -------------------------------------------------------------------------


def test_preflight_of_a_clean_tree_exits_0(state: Path) -> None:
    result = run_cli("preflight", state)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Result: clean" in result.stdout
    assert "5 checked (5 against their domain model, 0 as JSON only)" in result.stdout
    code, report = run_json("preflight", state)
    assert (code, report["status"], report["problems"]) == (0, "clean", [])


def break_tree(root: Path) -> dict[str, str]:
    """Every kind of damage a start repairs; returns what each became (path -> kind)."""
    (root / ETH_SIGNAL).write_bytes(b'{"id": "sig-2", "symbol": "ETH')  # torn
    (root / SOL_SCHEDULE).write_bytes(b'{"id": "sch-1"}')  # parses, fails its model
    (root / PARTIAL).write_bytes(b"\x00" * 64)  # zeroed
    (root / "signal/BTCUSDT_trend_follow/.tmp-0123456789abcdef").write_bytes(b'{"id": "half')
    new_entity = root / "signal/XRPUSDT_grid"  # a first write that died before its rename
    new_entity.mkdir()
    (new_entity / ".tmp-77aa77aa77aa77aa").write_bytes(b"")
    os.chmod(root / RISK, 0o600)  # a mode a start must keep, and preflight must not touch
    return {
        "signal/ETH%2FUSDT_mean_rev/ETH%2FUSDT": "corrupt",
        "schedule/SOLUSDT_breakout/SOLUSDT": "corrupt",
        "partial/BTCUSDT_trend_follow/levels": "corrupt",
        "signal/BTCUSDT_trend_follow/.tmp-0123456789abcdef": "orphan",
        "signal/XRPUSDT_grid/.tmp-77aa77aa77aa77aa": "orphan",
    }


def test_preflight_changes_nothing_and_names_every_problem(state: Path) -> None:
    expected = break_tree(state)
    before = tree_fingerprint(state)

    plain = run_cli("preflight", state)
    code, report = run_json("preflight", state)

    assert tree_fingerprint(state) == before
    assert plain.returncode == 1 and code == 1
    assert {problem["where"]: problem["kind"] for problem in report["problems"]} == expected
    for where in expected:
        assert where in plain.stdout
    reasons = {problem["where"]: problem["detail"] for problem in report["problems"]}
    assert reasons["schedule/SOLUSDT_breakout/SOLUSDT"].startswith("schema:")
    assert reasons["signal/ETH%2FUSDT_mean_rev/ETH%2FUSDT"].startswith("unparseable JSON")
    assert "Result: problems found (exit 1)" in plain.stdout


async def test_preflight_predicts_what_a_real_start_does(state: Path) -> None:
    break_tree(state)
    _, report = run_json("preflight", state)
    predicted = {p["where"]: p["detail"] for p in report["problems"] if p["kind"] == "corrupt"}

    # A real start: each adapter initialises the stores it opens.
    persistkit.configure(mode="live", base_dir=state)
    assert await PersistSignalAdapter.read_signal_data("ETH/USDT", "mean_rev") is None
    assert await PersistSignalAdapter.read_signal_data("XRPUSDT", "grid") is None
    assert await PersistSignalAdapter.read_signal_data("BTCUSDT", "trend_follow") is not None
    assert await PersistScheduleAdapter.read_schedule_data("SOLUSDT", "breakout") is None
    assert await PersistPartialAdapter.read_partial_data("BTCUSDT", "trend_follow") == {}

    _, quarantined = run_json("quarantine", "list", state)
    assert {entry["key"]: entry["reason"] for entry in quarantined} == predicted
    assert not orphan_temps(state)
    code, after = run_json("preflight", state)
    assert (code, after["problems"], after["quarantined"]) == (0, [], 3)


def test_preflight_reports_a_name_it_did_not_write_without_failing(state: Path) -> None:
    # A valid signal under a name no adapter would ask for (copied there by hand).
    shutil.copy(state / BTC_SIGNAL, state / "signal/BTCUSDT_trend_follow/backup copy.json")
    code, report = run_json("preflight", state)
    assert code == 0
    assert report["notes"] == [
        {
            "kind": "foreign-name",
            "where": "signal/BTCUSDT_trend_follow/backup copy",
            "detail": "not a name persistkit writes; no adapter asks for it by name",
        }
    ]


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A root an unprivileged user can reach (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="persistkit-cli-"))
    directory.chmod(0o755)
    yield directory / "data"
    for path in [directory, *directory.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # so that the owner can remove them
    shutil.rmtree(directory)


async def test_preflight_finds_paths_the_bot_cannot_use(shared_root: Path) -> None:
    await write_state(shared_root)
    locked = shared_root / "signal/BTCUSDT_trend_follow"
    unreadable = shared_root / RISK
    for directory in (locked, shared_root):
        directory.chmod(0o555)
    unreadable.chmod(0o000)
    before = tree_fingerprint(shared_root)
    # Root passes every os.access check, so then the check runs as "nobody", for real.
    prefix = (
        ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups") if os.geteuid() == 0 else ()
    )
    result = run_cli("preflight", shared_root, "--json", prefix=prefix)
    assert tree_fingerprint(shared_root) == before
    assert result.returncode == 1, result.stderr
    problems = {(p["kind"], p["where"]): p["detail"] for p in json.loads(result.stdout)["problems"]}
    cannot_create = "the process cannot create files here"
    assert problems[("permission", str(locked))] == cannot_create
    assert problems[("permission", str(shared_root))] == cannot_create
    assert problems[("permission", str(unreadable))] == "the process cannot read it"
    # And the start would fail reading it, which the check of its store shows too.
    assert "Permission denied" in problems[("unreadable", "risk/main_portfolio")]


def test_preflight_missing_root_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_cli("preflight", tmp_path / "nowhere")
    assert_one_line_error(result, "no such directory", str(tmp_path / "nowhere"))
    as_json = run_cli("preflight", tmp_path / "nowhere", "--json")
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["status"] == "could-not-run"


def test_default_root_is_dump_data_of_the_working_directory(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "inspect"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env=child_environment(),
    )
    assert_one_line_error(result, f"no such directory: {tmp_path}/dump/data")


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("nosuch://host/path", "no backend for URL scheme 'nosuch'"),
        ("memory://", "lives inside one process"),
        ("file://otherhost/data", "names a host"),
    ],
)
def test_bad_urls_exit_2_with_one_line(target: str, fragment: str) -> None:
    assert_one_line_error(run_cli("inspect", target), target, fragment)


def test_a_file_where_the_root_should_be_exits_2(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    assert_one_line_error(run_cli("preflight", tmp_path / "data"), "is not a directory")


def test_progress_goes_to_stderr_only_when_asked_or_on_a_terminal(state: Path) -> None:
    quiet = run_cli("preflight", state)
    assert quiet.stderr == ""
    shown = run_cli("preflight", state, "--progress")
    assert "checking" in shown.stderr and "5/5" in shown.stderr
    assert shown.stdout == quiet.stdout


# -- quarantine --------------------------------------------------------------------------


async def quarantine_eth(root: Path) -> bytes:
    torn = b'{"id": "sig-2", "symbol": "ETH'
    (root / ETH_SIGNAL).write_bytes(torn)
    persistkit.configure(mode="live", base_dir=root)
    await PersistSignalAdapter.read_signal_data("ETH/USDT", "mean_rev")  # a start quarantines it
    return torn


async def test_quarantine_list_restore_and_purge(state: Path) -> None:
    torn = await quarantine_eth(state)
    code, entries = run_json("quarantine", "list", state)
    assert code == 0 and len(entries) == 1
    entry_id = entries[0]["id"]
    assert entries[0]["key"] == "signal/ETH%2FUSDT_mean_rev/ETH%2FUSDT"
    listed = run_cli("quarantine", "list", state)
    assert entry_id in listed.stdout.splitlines()  # on a line of its own, to copy

    restored = run_cli("quarantine", "restore", entry_id, state)
    assert restored.returncode == 0, restored.stderr
    assert (state / ETH_SIGNAL).read_bytes() == torn
    assert "still does not parse or validate" in restored.stderr
    assert run_json("quarantine", "list", state) == (0, [])

    # Quarantined again by the next start, then a good value written since.
    persistkit.configure(mode="live", base_dir=state)
    await PersistSignalAdapter.read_signal_data("ETH/USDT", "mean_rev")
    entry_id = run_json("quarantine", "list", state)[1][0]["id"]
    await PersistSignalAdapter.write_signal_data(
        signal("ETH/USDT", "mean_rev", 9), "ETH/USDT", "mean_rev"
    )
    good = (state / ETH_SIGNAL).read_bytes()
    refused = run_cli("quarantine", "restore", entry_id, state)
    assert refused.returncode == 1 and "--overwrite" in refused.stderr
    assert (state / ETH_SIGNAL).read_bytes() == good

    declined = run_cli("quarantine", "purge", entry_id, state, stdin="n\n")
    assert declined.returncode == 1
    assert len(run_json("quarantine", "list", state)[1]) == 1
    purged = run_cli("quarantine", "purge", entry_id, state, "--yes")
    assert purged.returncode == 0, purged.stderr
    assert run_json("quarantine", "list", state) == (0, [])
    assert not [p for p in (state / ".quarantine").rglob("*") if p.is_file()]
    assert (state / ETH_SIGNAL).read_bytes() == good

    assert_one_line_error(
        run_cli("quarantine", "purge", entry_id, state, "--yes"), "no quarantine entry"
    )
    assert_one_line_error(
        run_cli("quarantine", "restore", "../../etc/passwd@1", state), "no quarantine entry"
    )


async def test_quarantine_restore_overwrite_replaces_the_value(state: Path) -> None:
    torn = await quarantine_eth(state)
    entry_id = run_json("quarantine", "list", state)[1][0]["id"]
    await PersistSignalAdapter.write_signal_data(
        signal("ETH/USDT", "mean_rev", 9), "ETH/USDT", "mean_rev"
    )
    result = run_cli("quarantine", "restore", entry_id, state, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (state / ETH_SIGNAL).read_bytes() == torn


# -- migrate ------------------------------------------------------------------------------


def relative_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but the commit journal's, the locks' and the history's own."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file()
        and path.relative_to(root).parts[0] not in (".journal", ".locks", ".history")
    }


def test_migrate_copies_every_value_verified(state: Path, tmp_path: Path) -> None:
    destination = tmp_path / "copy"
    result = run_cli("migrate", state, f"file://{destination}")
    assert result.returncode == 0, result.stderr
    assert relative_files(destination) == relative_files(state)
    assert "5 to be created" in result.stdout
    assert "Copied 5 values, each read back and identical to the source; 0 failed." in (
        result.stdout
    )
    again = run_cli("migrate", state, destination)
    assert again.returncode == 0
    assert "5 already identical" in again.stdout and "Copied 0 values" in again.stdout
    code, report = run_json("preflight", destination)
    assert code == 0 and report["checked"] == 5


def test_migrate_dry_run_writes_nothing(state: Path, tmp_path: Path) -> None:
    destination = tmp_path / "copy"
    result = run_cli("migrate", state, destination, "--dry-run")
    assert result.returncode == 0
    assert "5 would be created" in result.stdout and "Dry run" in result.stdout
    assert not destination.exists()


async def test_migrate_refuses_to_overwrite_newer_data(state: Path, tmp_path: Path) -> None:
    destination = tmp_path / "copy"
    assert run_cli("migrate", state, destination).returncode == 0
    # The destination's risk moved on after the copy: different and newer.
    newer = b'[["BTCUSDT:trend_follow",{"symbol":"BTCUSDT"}]]'
    (destination / RISK).write_bytes(newer)
    later = (state / RISK).stat().st_mtime + 3600
    os.utime(destination / RISK, (later, later))
    # And the source gained an entity, which must not be copied either.
    await PersistSignalAdapter.write_signal_data(signal("XRPUSDT", "grid", 5), "XRPUSDT", "grid")
    before = tree_fingerprint(destination)

    refused = run_cli("migrate", state, destination)
    assert refused.returncode == 1
    assert "risk/main_portfolio/positions: destination differs and is newer" in refused.stdout
    assert "nothing was written" in refused.stderr
    assert tree_fingerprint(destination) == before

    forced = run_cli("migrate", state, destination, "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert relative_files(destination) == relative_files(state)


def test_migrate_replaces_an_older_differing_value(state: Path, tmp_path: Path) -> None:
    destination = tmp_path / "copy"
    assert run_cli("migrate", state, destination).returncode == 0
    (destination / RISK).write_bytes(b"[]")
    earlier = (state / RISK).stat().st_mtime - 3600
    os.utime(destination / RISK, (earlier, earlier))
    result = run_cli("migrate", state, destination)
    assert result.returncode == 0, result.stderr
    assert "destination is older" in result.stdout
    assert (destination / RISK).read_bytes() == (state / RISK).read_bytes()


def test_migrate_onto_itself_or_from_nowhere_exits_2(state: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_cli("migrate", state, f"file://{state}"), "the same")
    assert_one_line_error(run_cli("migrate", state, state / "copy"), "one inside the other")
    assert not (state / "copy").exists()
    assert_one_line_error(run_cli("migrate", tmp_path / "none", state), "no such directory")


# -- export / import ----------------------------------------------------------------------


async def test_export_then_import_round_trips(state: Path, tmp_path: Path) -> None:
    await quarantine_eth(state)
    export_file = tmp_path / "state.jsonl"
    exported = run_cli("export", state, export_file)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in export_file.read_text().splitlines()]
    assert [line["key"] for line in lines] == [
        "partial/BTCUSDT_trend_follow/levels",
        "risk/main_portfolio/positions",
        "schedule/SOLUSDT_breakout/SOLUSDT",
        "signal/BTCUSDT_trend_follow/BTCUSDT",
    ]
    btc = next(line for line in lines if line["key"] == "signal/BTCUSDT_trend_follow/BTCUSDT")
    assert btc["value"] == json.loads((state / BTC_SIGNAL).read_bytes())

    destination = tmp_path / "imported"
    imported = run_cli("import", export_file, destination)
    assert imported.returncode == 0, imported.stderr
    live = {name: data for name, data in relative_files(state).items() if ".quarantine" not in name}
    assert relative_files(destination) == live
    assert (
        run_json("inspect", destination)[1]["signals"] == run_json("inspect", state)[1]["signals"]
    )

    refused = run_cli("export", state, export_file)
    assert_one_line_error(refused, "exists; pass --overwrite")


async def test_export_include_quarantine_and_import_it_back(state: Path, tmp_path: Path) -> None:
    torn = await quarantine_eth(state)
    export_file = tmp_path / "all.jsonl"
    assert run_cli("export", state, export_file, "--include-quarantine").returncode == 0
    lines = [json.loads(line) for line in export_file.read_text().splitlines()]
    quarantined = [line for line in lines if "quarantine" in line]
    assert len(quarantined) == 1
    assert quarantined[0]["key"] == "signal/ETH%2FUSDT_mean_rev/ETH%2FUSDT"
    assert base64.b64decode(quarantined[0]["raw_base64"]) == torn

    skipped = run_cli("import", export_file, tmp_path / "a")
    assert skipped.returncode == 0 and "1 quarantined value in the file skipped" in (skipped.stdout)
    assert run_json("quarantine", "list", tmp_path / "a") == (0, [])
    destination = tmp_path / "b"
    result = run_cli("import", export_file, destination, "--include-quarantine")
    assert result.returncode == 0, result.stderr
    _, entries = run_json("quarantine", "list", destination)
    assert [entry["key"] for entry in entries] == ["signal/ETH%2FUSDT_mean_rev/ETH%2FUSDT"]
    assert not (destination / ETH_SIGNAL).exists()


def test_export_to_stdout(state: Path) -> None:
    result = run_cli("export", state, "-")
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 5
    assert "exported 5 values to stdout" in result.stderr


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"key": "../../etc/cron.d/x", "value": {}}', "could leave the root"),
        ('{"key": "signal/a_b/.tmp-1", "value": {}}', "could leave the root"),
        ('{"value": {}}', 'expected an object with a "key"'),
        ('{"key": "signal/a_b/c", "value": {', "not JSON"),
        ('{"key": "signal/a_b/c"}', 'neither "value" nor "raw_base64"'),
    ],
)
def test_import_refuses_a_bad_line_and_writes_nothing(
    tmp_path: Path, line: str, fragment: str
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"key": "signal/ok_s/ok", "value": {"a": 1}}\n' + line + "\n")
    destination = tmp_path / "dst"
    result = run_cli("import", source, destination)
    assert_one_line_error(result, f"{source}:2", fragment)
    assert not destination.exists()


@pytest.mark.parametrize(
    ("lines", "bad_line", "fragment"),
    [
        # A value under a 240-byte entity id: imported, it broke every later start
        # ("File name too long" quarantining it) while preflight saw nothing wrong.
        ([("signal/BTC_t/" + "x" * 240, {"id": "a"})], 1, "entity id is 240 bytes"),
        # A 300-byte key on line 3: lines 1 and 2 were written, then a bare [Errno 36].
        (
            [("fills/a", 1), ("fills/b", 2), ("fills/" + "y" * 300, 3)],
            3,
            "entity id is 300 bytes",
        ),
        ([("fills/a", 1), ("fills/not canonical", 2)], 2, "not a persistkit-encoded name"),
        ([("signal/BTC_t/BTC", None), ("signal/" + "S" * 199 + "_t/S", None)], 2, "limit is 200"),
        ([("fills/a", 1), ("toplevel", 2)], 2, "{entity name}/{entity id}"),
    ],
    ids=["240-byte-id", "300-byte-key-on-line-3", "not-encoded", "long-pair", "one-segment"],
)
def test_import_holds_every_key_to_the_library_name_rules_before_writing(
    tmp_path: Path, lines: list[tuple[str, Any]], bad_line: int, fragment: str
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"key": k, "value": v}) + "\n" for k, v in lines))
    destination = tmp_path / "dst"
    result = run_cli("import", source, destination)
    bad_key = lines[bad_line - 1][0]
    assert_one_line_error(result, f"{source}:{bad_line}", fragment, bad_key[:40])
    assert not destination.exists()


def test_migrate_refuses_a_source_key_no_store_could_have_written(
    state: Path, tmp_path: Path
) -> None:
    long_name = "x" * 240  # made by hand: persistkit never names a file so
    (state / "fills").mkdir()
    (state / "fills" / f"{long_name}.json").write_text("1")
    destination = tmp_path / "copy"
    result = run_cli("migrate", state, destination)
    assert_one_line_error(result, f"fills/{long_name[:40]}", "entity id is 240 bytes")
    assert "nothing was written" in result.stderr
    assert not destination.exists()


def test_import_refuses_a_differing_destination_unless_overwrite(
    state: Path, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"key": "risk/main_portfolio/positions", "value": []}\n'
        '{"key": "risk/other/positions", "value": []}\n'
    )
    before = tree_fingerprint(state)
    refused = run_cli("import", source, state)
    assert refused.returncode == 1
    assert "its age cannot be compared" in refused.stdout
    assert tree_fingerprint(state) == before
    forced = run_cli("import", source, state, "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert (state / RISK).read_bytes() == b"[]"
    assert (state / "risk/other/positions.json").read_bytes() == b"[]"


# -- entry points -------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["persistkit", "persistkit._cli"])
def test_python_dash_m_runs_the_same_command_line(state: Path, module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "preflight", str(state)],
        capture_output=True,
        text=True,
        check=False,
        env=child_environment(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == run_cli("preflight", state).stdout


@pytest.mark.parametrize("command", ["inspect", "preflight", "quarantine list"])
def test_an_unreachable_redis_server_is_one_line_and_exit_2(command: str) -> None:
    port = free_port()  # nothing listens there
    url = f"redis://127.0.0.1:{port}/0"
    assert_one_line_error(run_cli(*command.split(), url), f"127.0.0.1:{port}", "connect")


def test_a_live_redis_server_is_inspected_through_its_url(tmp_path: Path) -> None:
    with RedisServer() as server:
        persistkit.configure(mode="live", base_dir=tmp_path, backend=server.url)
        asyncio.run(
            persistkit.PersistSignalAdapter.write_signal_data(
                signal("BTCUSDT", "trend", 1), "BTCUSDT", "trend"
            )
        )
        code, report = run_json("preflight", server.url)
        assert code == 0, report
        code, listing = run_json("inspect", server.url)
        assert code == 0
        assert "BTCUSDT" in json.dumps(listing)


_COMMIT_THEN_HANG = """
import asyncio, sys
import persistkit
from persistkit import PersistBase

async def main():
    persistkit.configure(mode="live", base_dir=sys.argv[1])
    store = PersistBase("orders", sys.argv[1])
    async with persistkit.transaction():
        await store.write_value("o-1", {"qty": 1})
        await store.write_value("o-2", {"qty": 2})
    print("committed", flush=True)
    await asyncio.sleep(60)  # killed here: the journal is never checkpointed

asyncio.run(main())
"""


def test_preflight_reports_commits_not_yet_in_the_files_without_applying_them(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    bot = subprocess.Popen(
        [sys.executable, "-c", _COMMIT_THEN_HANG, str(root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert bot.stdout is not None and bot.stdout.readline().strip() == "committed"
    finally:
        bot.kill()
        bot.wait()
    before = tree_fingerprint(root)
    result = run_cli("preflight", root)
    assert tree_fingerprint(root) == before
    # Every reader includes them, so they are no problem for a start: a note.
    assert result.returncode == 0, result
    assert "2 keys committed and not yet applied to their files" in result.stdout

    async def start() -> list[Any]:
        store: PersistBase[Any] = PersistBase("orders", backend=FileBackend(root))
        await store.wait_for_init()
        return [await store.read_value("o-1"), await store.read_value("o-2")]

    assert asyncio.run(start()) == [{"qty": 1}, {"qty": 2}]
    assert run_cli("preflight", root).returncode == 0


async def test_journal_salvage_refuses_beside_a_running_session_and_says_whose(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=root)
    await session.start()
    try:
        refused = run_cli("journal", "salvage", root)
        assert refused.returncode == 1, refused
        assert f"pid {os.getpid()}" in refused.stderr and "Stop it first" in refused.stderr
    finally:
        await session.aclose()
    done = run_cli("journal", "salvage", root)
    assert done.returncode == 0, done
    assert "nothing to salvage" in done.stdout

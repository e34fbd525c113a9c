"""PERSISTKIT_MODE, PERSISTKIT_BASE_DIR and PERSISTKIT_BACKEND configure a deploy.

Each case runs a real Python process (or the real command line) with the
variables in its environment, as a deploy would, and checks where the state
went: files on disk, keys in a real redis-server, or nothing at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from persistkit.backends._redis import RedisBackend
from support.servers import RedisServer

SRC = Path(__file__).resolve().parents[1] / "src"
VARIABLES = ("PERSISTKIT_MODE", "PERSISTKIT_BASE_DIR", "PERSISTKIT_BACKEND")

# Writes one signal through the domain adapter; prints the settings it ran under.
BOT = """
import asyncio, json, sys
import persistkit
from persistkit import PersistSignalAdapter
from persistkit.models import SignalRow

calls = json.loads(sys.argv[1])

async def main():
    for arguments in calls:  # each a configure() call; none: the settings before any
        persistkit.configure(**arguments)
    row = SignalRow(id="s1", symbol="BTCUSDT", strategy_name="env", position="long",
                    price_open=1.0, price_take_profit=2.0, price_stop_loss=0.5,
                    scheduledAt=1, pendingAt=1)
    await PersistSignalAdapter.write_signal_data(row, "BTCUSDT", "env")
    settings = persistkit.current_settings()
    print(json.dumps({"mode": settings.mode, "base_dir": settings.base_dir,
                      "backend": settings.backend.url}))
    await settings.backend.aclose()

asyncio.run(main())
"""

SIGNAL_FILE = "signal/BTCUSDT_env/BTCUSDT.json"


def child_environment(**variables: str | Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in VARIABLES}
    env["PYTHONPATH"] = str(SRC)
    env.update({key: str(value) for key, value in variables.items()})
    return env


def run_bot(
    cwd: Path, *configure_calls: dict[str, str], **variables: str | Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(BOT), json.dumps(configure_calls)],
        cwd=cwd,
        env=child_environment(**variables),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def settings_of(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    settings: dict[str, str] = json.loads(result.stdout)
    return settings


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def test_without_variables_the_state_is_in_dump_data(tmp_path: Path) -> None:
    settings = settings_of(run_bot(tmp_path))
    assert settings["mode"] == "live"
    assert settings["base_dir"] == str(tmp_path / "dump" / "data")
    assert (tmp_path / "dump" / "data" / SIGNAL_FILE).is_file()


def test_settings_before_any_configure_come_from_the_environment(tmp_path: Path) -> None:
    root = tmp_path / "srv" / "state"
    settings = settings_of(run_bot(tmp_path, PERSISTKIT_MODE="live", PERSISTKIT_BASE_DIR=root))
    assert settings["base_dir"] == str(root)
    assert (root / SIGNAL_FILE).is_file()
    assert not (tmp_path / "dump").exists()


def test_configure_without_arguments_reads_the_environment(tmp_path: Path) -> None:
    root = tmp_path / "state"
    settings = settings_of(run_bot(tmp_path, {}, PERSISTKIT_BASE_DIR="state"))
    assert settings["base_dir"] == str(root), "a relative directory is taken from the cwd"
    assert (root / SIGNAL_FILE).is_file()


def test_backtest_mode_from_the_environment_writes_no_file(tmp_path: Path) -> None:
    settings = settings_of(
        run_bot(tmp_path, {}, PERSISTKIT_MODE="Backtest", PERSISTKIT_BASE_DIR=tmp_path / "x")
    )
    assert settings["mode"] == "backtest"
    assert files_under(tmp_path) == []


def test_backend_url_from_the_environment_puts_the_state_in_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = f"{redis_server.url}?prefix=envtest"
    settings = settings_of(run_bot(tmp_path, {}, PERSISTKIT_BACKEND=url))
    assert settings["backend"].startswith("redis://")
    assert files_under(tmp_path) == []

    async def read_back() -> bytes | None:
        backend = RedisBackend.from_url(url)
        try:
            stored = await backend.get("signal/BTCUSDT_env/BTCUSDT")
            return None if stored is None else stored.data
        finally:
            await backend.aclose()

    stored = asyncio.run(read_back())
    assert stored is not None and json.loads(stored)["id"] == "s1"


def test_explicit_arguments_win_over_the_environment(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    settings = settings_of(
        run_bot(
            tmp_path,
            {"mode": "live", "base_dir": str(mine), "backend": f"file://{mine}"},
            PERSISTKIT_MODE="backtest",
            PERSISTKIT_BASE_DIR=tmp_path / "theirs",
            PERSISTKIT_BACKEND="memory://theirs",
        )
    )
    assert settings == {"mode": "live", "base_dir": str(mine), "backend": f"file://{mine}"}
    assert (mine / SIGNAL_FILE).is_file()
    assert sorted(os.listdir(tmp_path)) == ["mine"]


def test_an_explicit_backtest_ignores_the_environment_backend(tmp_path: Path) -> None:
    settings = settings_of(
        run_bot(tmp_path, {"mode": "backtest"}, PERSISTKIT_BACKEND="redis://127.0.0.1:1/0")
    )
    assert settings["mode"] == "backtest"
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    ("variables", "configured", "named"),
    [
        ({"PERSISTKIT_MODE": "production"}, False, "PERSISTKIT_MODE='production'"),
        ({"PERSISTKIT_MODE": "production"}, True, "PERSISTKIT_MODE='production'"),
        ({"PERSISTKIT_BACKEND": "nosuch://x"}, True, "PERSISTKIT_BACKEND='nosuch://x'"),
        ({"PERSISTKIT_BACKEND": "/var/lib/bot"}, False, "PERSISTKIT_BACKEND='/var/lib/bot'"),
        ({"PERSISTKIT_BASE_DIR": "a-file"}, True, "PERSISTKIT_BASE_DIR='a-file'"),
    ],
    ids=["mode-before-configure", "mode", "backend-scheme", "backend-path", "base-dir-file"],
)
def test_a_bad_value_is_a_configuration_error_naming_the_variable(
    tmp_path: Path, variables: dict[str, str], configured: bool, named: str
) -> None:
    """``configured``: ``configure()`` is called; else the settings before any call are used."""
    (tmp_path / "a-file").write_text("not a directory")
    result = run_bot(tmp_path, *([{}] if configured else []), **variables)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("persistkit.errors.ConfigurationError: "), result.stderr
    assert named in last
    assert files_under(tmp_path) == ["a-file"], "nothing was written"


def test_an_environment_backtest_with_an_explicit_backend_is_refused(tmp_path: Path) -> None:
    result = run_bot(tmp_path, {"backend": f"file://{tmp_path}"}, PERSISTKIT_MODE="backtest")
    assert "ConfigurationError: PERSISTKIT_MODE=backtest keeps state in memory" in result.stderr


def test_a_live_session_without_base_dir_locks_and_writes_under_the_environment_root(
    tmp_path: Path,
) -> None:
    script = """
import asyncio
from persistkit import LiveSession

async def main():
    async with LiveSession([("BTCUSDT", "env")], "main") as session:
        print(session.base_dir)

asyncio.run(main())
"""
    root = tmp_path / "state"
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=child_environment(PERSISTKIT_BASE_DIR=root),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(root)
    assert (root / ".locks" / "sessions.lock").is_file()
    assert not (tmp_path / "dump").exists()


# -- the command line's ROOT | URL default ------------------------------------------------


def run_cli(cwd: Path, *args: str, **variables: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "persistkit._cli", *args],
        cwd=cwd,
        env=child_environment(**variables),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def bot_root(tmp_path: Path) -> Path:
    """A root holding one signal, written by a bot configured from the environment."""
    root = tmp_path / "state"
    settings_of(run_bot(tmp_path, PERSISTKIT_BASE_DIR=root))
    return root


def inspected_keys(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    return sorted(entity["key"] for entity in json.loads(result.stdout)["entities"])


def test_cli_default_target_is_the_environment_root(bot_root: Path, tmp_path: Path) -> None:
    shown = inspected_keys(run_cli(tmp_path, "inspect", "--json", PERSISTKIT_BASE_DIR=bot_root))
    assert shown == ["signal/BTCUSDT_env/BTCUSDT"]
    shown = inspected_keys(
        run_cli(tmp_path, "inspect", "--json", PERSISTKIT_BACKEND=f"file://{bot_root}")
    )
    assert shown == ["signal/BTCUSDT_env/BTCUSDT"]


def test_cli_argument_wins_over_the_environment(bot_root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_cli(tmp_path, "inspect", "--json", str(elsewhere), PERSISTKIT_BASE_DIR=bot_root)
    assert inspected_keys(result) == []


def test_cli_bad_variable_is_one_line_naming_it(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "inspect", PERSISTKIT_MODE="prod")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "persistkit: error: PERSISTKIT_MODE='prod': must be 'live' or 'backtest'"
    ]

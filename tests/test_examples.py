"""Every example and the README demo run, so they cannot rot."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
sys.path.insert(0, str(EXAMPLES))

import intent_bot  # noqa: E402 - the examples, imported from their folder
import simulated_exchange  # noqa: E402


def run(*command: str | Path, env: dict[str, str] | None = None) -> str:
    finished = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=None if env is None else {**os.environ, **env},
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return finished.stdout


@pytest.mark.parametrize(
    ("example", "says"),
    [
        ("signal_example.py", "after close: None"),
        ("schedule_example.py", "open signal: limit-1 filled"),
        ("risk_example.py", "active positions: ['s1', 's2']"),
        ("partial_example.py", "price at 41%:           [30, 40]"),
    ],
)
def test_domain_example_runs(example: str, says: str, tmp_path: Path) -> None:
    output = run(sys.executable, EXAMPLES / example, tmp_path / "data")
    assert says in output
    assert list((tmp_path / "data").iterdir())  # it used the folder it was given


def test_every_example_is_tested() -> None:
    tested = {"signal_example.py", "schedule_example.py", "risk_example.py", "partial_example.py"}
    bots = {"live_bot.py", "sync_bot.py", "intent_bot.py", "simulated_exchange.py"}
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested | bots


def test_live_bot_runs_resumes_and_verifies(tmp_path: Path) -> None:
    base_dir = tmp_path / "data"
    first = run(sys.executable, EXAMPLES / "live_bot.py", "--base-dir", base_dir, "--ticks", "7")
    assert "restored at tick 0" in first and "stopped cleanly after tick 7" in first
    second = run(sys.executable, EXAMPLES / "live_bot.py", "--base-dir", base_dir, "--ticks", "3")
    assert "restored at tick 7" in second and "consistency: OK" in second
    assert "stopped cleanly after tick 10" in second
    check = run(sys.executable, EXAMPLES / "live_bot.py", "--base-dir", base_dir, "--verify", "10")
    assert "state recovered: OK (tick 10" in check


def test_sync_bot_runs_and_resumes(tmp_path: Path) -> None:
    """The blocking API's bot; tests/test_sync.py stops it with SIGTERM and SIGINT."""
    base_dir = tmp_path / "data"
    first = run(sys.executable, EXAMPLES / "sync_bot.py", "--base-dir", base_dir, "--ticks", "3")
    assert "restored at tick 0: 0 positions, signal None" in first
    assert "stopped cleanly after tick 3" in first
    second = run(sys.executable, EXAMPLES / "sync_bot.py", "--base-dir", base_dir, "--ticks", "2")
    assert "restored at tick 3: 1 positions, signal sig-2" in second
    assert "stopped cleanly after tick 5" in second


def test_live_bot_verify_notices_a_lost_tick(tmp_path: Path) -> None:
    base_dir = tmp_path / "data"
    run(sys.executable, EXAMPLES / "live_bot.py", "--base-dir", base_dir, "--ticks", "4")
    finished = subprocess.run(
        [sys.executable, EXAMPLES / "live_bot.py", "--base-dir", base_dir, "--verify", "6"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 1
    assert "state recovered: FAILED" in finished.stdout
    assert "restored tick 4, expected 6 or 7" in finished.stdout


def test_demo_script_kills_restarts_and_recovers(tmp_path: Path) -> None:
    output = run(
        "bash",
        REPO / "scripts" / "demo.sh",
        env={"PERSISTKIT_DEMO_PYTHON": sys.executable, "PERSISTKIT_DEMO_DIR": str(tmp_path)},
    )
    assert "killed with SIGKILL" in output
    assert "state recovered: OK" in output
    assert "stopped cleanly after tick" in output


def test_intent_bot_places_each_decision_once_through_lost_replies_and_a_restart(
    tmp_path: Path,
) -> None:
    exchange, port = simulated_exchange.spawn(tmp_path / "book.sqlite", lose_replies=0.3, seed=1)
    bot: list[str | Path] = [
        sys.executable, EXAMPLES / "intent_bot.py", "--base-dir", tmp_path / "bot",
        "--exchange", f"127.0.0.1:{port}", "--interval", "0",
    ]  # fmt: skip
    try:
        first = run(*bot, "--ticks", "6")
        assert "restored at tick 0: 0 orders in doubt" in first
        assert "stopped cleanly after tick 6" in first
        second = run(*bot, "--ticks", "4")
        assert "restored at tick 6: 0 orders in doubt" in second
        assert "stopped cleanly after tick 10" in second
        assert "orders: OK (ticks 1-10" in run(*bot, "--check")
        book = asyncio.run(simulated_exchange.ExchangeClient("127.0.0.1", port).book())
    finally:
        exchange.kill()
        exchange.wait()
    decisions = intent_bot.decisions_until(10)
    assert decisions  # the seeded decisions place orders in ten ticks
    assert Counter(order["note"] for order in book["orders"]) == {d.id: 1 for d in decisions}
    assert book["lost_replies"] > 0  # the replies it lost were resent or looked up, not doubled


def test_intent_demo_script_kills_reconciles_and_checks(tmp_path: Path) -> None:
    output = run(
        "bash",
        REPO / "scripts" / "intent_demo.sh",
        env={"PERSISTKIT_DEMO_PYTHON": sys.executable, "PERSISTKIT_DEMO_DIR": str(tmp_path)},
    )
    assert "killed with SIGKILL" in output
    restarts = [line for line in output.splitlines() if "restored at tick" in line]
    assert len(restarts) >= 2 and ": 0 orders in doubt" not in restarts[-1]
    assert "in doubt after the reconcile: 0" in restarts[-1]
    assert "orders: OK" in output

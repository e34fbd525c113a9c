"""backtest-kit 19.5.0 from npm, installed as the bench installs it, writing real state.

The npm project of the bench's peer (``bench/peers/backtest_kit/``) is
installed once into the cache folder the bench uses (``npm install``, network
to the registry needed the first time), and ``backtest_kit_writer.cjs`` drives
the package's own ``Persist*Adapter`` singletons: the files the tests read are
made by backtest-kit itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).resolve().with_name("backtest_kit_writer.cjs")
EXCHANGE = "binance"

if str(REPO) not in sys.path:  # the bench package lives at the repository's root
    sys.path.insert(0, str(REPO))

from bench.peers.backtest_kit_peer import BacktestKitPeer  # noqa: E402


def install_backtest_kit() -> Path:
    """The folder backtest-kit is installed in (installed on first use, as the bench does)."""
    return BacktestKitPeer.install().install_dir


def start_writer(install_dir: Path, workdir: Path, operations: list[dict[str, Any]]) -> Any:
    """backtest-kit writing ``operations`` under ``workdir/dump/data``, running (a Popen)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(operations, handle)
    return subprocess.Popen(
        ["node", str(WRITER), str(install_dir), handle.name],
        cwd=workdir,  # backtest-kit's paths are ./dump/data/...
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_writer(process: Any) -> dict[str, Any]:
    """What the writer reports: ``{"version", "writes", "failures"}``."""
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    answer: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    assert answer["version"] == "19.5.0", answer
    return answer


def write_with_backtest_kit(
    install_dir: Path, workdir: Path, operations: list[dict[str, Any]]
) -> dict[str, Any]:
    """Write ``operations`` with backtest-kit itself; returns the writer's report."""
    return finish_writer(start_writer(install_dir, workdir, operations))


def signal_row(
    symbol: str, strategy: str, signal_id: str, *, exchange: str = EXCHANGE, **fields: Any
) -> dict[str, Any]:
    """A live signal row shaped as backtest-kit 19.5.0's ClientStrategy persists it.

    ``note`` is ``""`` (a signal created without one), ``frameName`` ``""``
    (live mode), ``minuteEstimatedTime`` ``null`` (no limit: JSON has no
    ``Infinity``).
    """
    row: dict[str, Any] = {
        "id": signal_id,
        "symbol": symbol,
        "strategyName": strategy,
        "exchangeName": exchange,
        "frameName": "",
        "position": "long",
        "note": "",
        "priceOpen": 64000.5,
        "priceTakeProfit": 66000,
        "priceStopLoss": 63000,
        "minuteEstimatedTime": None,
        "cost": 100,
        "multiplier": 1,
        "isolated": False,
        "scheduledAt": 1_763_700_000_000,
        "pendingAt": 1_763_700_060_000,
        "_isScheduled": False,
        "timestamp": 1_763_700_060_000,
    }
    row.update(fields)
    return row


def risk_position(row: dict[str, Any], *, opened: int) -> list[Any]:
    """``[key, position]`` as backtest-kit 19.5.0's ClientRisk.addSignal makes it for ``row``."""
    key = f"{row['strategyName']}_{row['exchangeName']}_{row['symbol']}"
    position = {
        "strategyName": row["strategyName"],
        "exchangeName": row["exchangeName"],
        "frameName": "",
        "symbol": row["symbol"],
        "position": row["position"],
        "priceOpen": row["priceOpen"],
        "priceStopLoss": row["priceStopLoss"],
        "priceTakeProfit": row["priceTakeProfit"],
        "minuteEstimatedTime": row["minuteEstimatedTime"],
        "openTimestamp": opened,
    }
    return [key, position]

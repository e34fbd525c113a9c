"""Regenerate the output shown in the README's "Coming from backtest-kit" section.

A live backtest-kit 19.5.0 bot's state is written by the npm package itself (as
the tests write it, ``tests/support/backtest_kit.py``; installed from npm as
the bench installs it), then ``persistkit preflight`` and ``migrate`` run on it
and their real output, exit codes included, is pasted between
``<!-- backtest-kit:begin -->`` and ``<!-- backtest-kit:end -->``.
Run: ``PYTHONPATH=src .venv/bin/python scripts/capture_backtest_kit_docs.py``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from capture_cli_docs import run

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.backtest_kit import (  # noqa: E402
    EXCHANGE,
    install_backtest_kit,
    risk_position,
    signal_row,
    write_with_backtest_kit,
)

README = REPO / "README.md"
DEMO = Path("/tmp/persistkit-backtest-kit-demo")
BEGIN, END = "<!-- backtest-kit:begin -->\n", "<!-- backtest-kit:end -->\n"

BOT = """\
A backtest-kit 19.5.0 bot ran live on `binance` and stopped with an open
`BTCUSDT` signal (created without a note), an open `ETHUSDT` short, a
scheduled `SOLUSDT` entry, both open signals in its risk profile `main`, and
profit/loss milestones for both. Started on that folder, persistkit would
begin flat; preflight says so, and names the command that migrates it:
"""

DRY_RUN = """\
A dry run shows the mapping, file by file: the exchange suffix dropped, each
risk position's `signalId`, `quantity` and `addedAt` derived from its pair's
open signal, the per-signal partial files merged. Nothing is written:
"""

MIGRATE = """\
The migration itself, into a fresh root (each value read back and compared),
and a start's view of it:
"""


def bot_state() -> list[dict[str, object]]:
    btc = signal_row("BTCUSDT", "trend", "sig-btc")
    eth = signal_row(
        "ETHUSDT", "mean_rev", "sig-eth", position="short", priceOpen=3100.25,
        priceTakeProfit=2900, priceStopLoss=3200, cost=250.5, note="fade the pump",
    )  # fmt: skip
    sol = signal_row("SOLUSDT", "breakout", "sch-sol", priceOpen=140.5, priceTakeProfit=150,
                     priceStopLoss=135)  # fmt: skip
    pair = {"exchange": EXCHANGE}
    return [
        {"op": "signal", "symbol": "BTCUSDT", "strategy": "trend", "row": btc, **pair},
        {"op": "signal", "symbol": "ETHUSDT", "strategy": "mean_rev", "row": eth, **pair},
        {"op": "schedule", "symbol": "SOLUSDT", "strategy": "breakout", "row": sol, **pair},
        {"op": "risk", "risk": "main", "exchange": EXCHANGE, "positions": [
            risk_position(btc, opened=1_763_700_060_000),
            risk_position(eth, opened=1_763_700_120_000),
        ]},
        {"op": "partial", "symbol": "BTCUSDT", "strategy": "trend", "signalId": "sig-btc",
         "data": {"sig-btc": {"profitLevels": [10, 20], "lossLevels": []}}, **pair},
        {"op": "partial", "symbol": "ETHUSDT", "strategy": "mean_rev", "signalId": "sig-eth",
         "data": {"sig-eth": {"profitLevels": [], "lossLevels": [10]}}, **pair},
    ]  # fmt: skip


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    report = write_with_backtest_kit(install_backtest_kit(), DEMO, bot_state())
    assert report["failures"] == [], report
    source = f"'backtest-kit://{DEMO}/dump/data?exchange={EXCHANGE}'"
    parts = [
        BOT,
        run("find dump -type f | sort", cwd=DEMO),
        run("persistkit preflight ./dump/data", cwd=DEMO),
        DRY_RUN,
        run(f"persistkit migrate {source} ./persistkit-data --dry-run", cwd=DEMO),
        MIGRATE,
        run(f"persistkit migrate {source} ./persistkit-data", cwd=DEMO),
        run("persistkit inspect ./persistkit-data", cwd=DEMO),
    ]
    text = README.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    section = "\n".join(parts)
    README.write_text(f"{head}{BEGIN}{section.rstrip()}\n{END}{tail}")


if __name__ == "__main__":
    main()

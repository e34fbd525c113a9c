"""Regenerate the README's statistics outputs: run the demo bot, then ``persistkit report``,
and paste what they print between the ``<!-- stats:begin -->`` and ``<!-- stats:end -->``
markers.

Nothing there is typed by hand: the bot (examples/live_bot.py) trades 30 ticks on the
file backend, its commits record the statistics, and each command's real output and
exit code are captured. Run: ``.venv/bin/python scripts/capture_stats_docs.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

DEMO = Path("/tmp/persistkit-stats-demo")
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
BEGIN, END = "<!-- stats:begin -->\n", "<!-- stats:end -->\n"


def run(command: str, *, keep: int | None = None, tail: int | None = None) -> str:
    """``$ command``, then its output as an operator sees it, then the exit code."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "COLUMNS": "100"}
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=DEMO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        check=False,
    )
    lines = result.stdout.rstrip("\n").splitlines()
    if tail is not None and len(lines) > tail:
        lines = ["...", *lines[-tail:]]
    if keep is not None and len(lines) > keep:
        lines = [*lines[:keep], "..."]
    body = "\n".join(line.rstrip() for line in lines)
    return f"```console\n$ {command}\n{body}\n[exit {result.returncode}]\n```\n"


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    shutil.copy(REPO / "examples" / "live_bot.py", DEMO / "live_bot.py")
    parts = [
        BEGIN,
        "The demo bot (`examples/live_bot.py`) trades 30 ticks; a clean stop prints its\n"
        "statistics and writes each pair's reports beside the state:\n\n",
        run("python live_bot.py --base-dir ./dump/data --ticks 30 --interval 0", tail=7),
        "\nThe person on call reads them without Python, changing nothing:\n\n",
        run("persistkit report schedule BTCUSDT trend_follow ./dump/data"),
        "\n",
        run("persistkit report partial 'ETH/USDT' 'mean reversion' --json", keep=18),
        "\n",
        run("persistkit report --help"),
        END,
    ]
    text = README.read_text()
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    README.write_text(text[:start] + "".join(parts) + text[stop:])
    print(f"README.md: statistics outputs regenerated from {DEMO}")


if __name__ == "__main__":
    main()

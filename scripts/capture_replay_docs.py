"""Regenerate the output shown in the README's history and replay section.

Runs the section's Python block (between ``<!-- replay:begin -->`` and
``<!-- replay:end -->``) in a fresh folder, then ``persistkit history``,
``inspect --as-of`` and ``replay list|show`` on what it recorded, and pastes
their real output after the block. Run: ``.venv/bin/python scripts/capture_replay_docs.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DEMO = Path("/tmp/persistkit-replay-demo")
BEGIN, END = "<!-- replay:begin -->\n", "<!-- replay:end -->\n"
_BLOCK = re.compile(r"```python\n(.*?)```\n", re.DOTALL)


def run(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("COLUMNS", None)
    result = subprocess.run(
        [sys.executable, *args],
        cwd=DEMO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        check=True,
    )
    return "\n".join(line.rstrip() for line in result.stdout.rstrip("\n").splitlines()) + "\n"


def main() -> None:
    text = README.read_text()
    head, _, rest = text.partition(BEGIN)
    section, _, tail = rest.partition(END)
    match = _BLOCK.search(section)
    assert match is not None, "no python block in the replay section"
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir(parents=True)
    printed = run("-c", match.group(1))
    changes = json.loads(run("-m", "persistkit", "history", "book/BTCUSDT", "--json"))
    second = changes["changes"][1]["time"]
    console = [
        "$ persistkit history book/BTCUSDT\n" + run("-m", "persistkit", "history", "book/BTCUSDT"),
        f"$ persistkit inspect --as-of {second}\n"
        + run("-m", "persistkit", "inspect", "--as-of", second, "--no-progress"),
        "$ persistkit replay list ./dump/replays\n"
        + run("-m", "persistkit", "replay", "list", "./dump/replays"),
        "$ persistkit replay show size-0.02 ./dump/replays\n"
        + run("-m", "persistkit", "replay", "show", "size-0.02", "./dump/replays"),
    ]
    shown = (
        section[: match.end()]
        + "\nprints (real output):\n\n```text\n"
        + printed
        + "```\n\nThe same root from the command line: every change of a key with its commit "
        "time and\nthe session whose tick made it, the state as of the second tick, and the "
        "recorded\nreplay run.\n\n```console\n" + "".join(console) + "```\n"
    )
    README.write_text(head + BEGIN + shown + END + tail)
    print(f"README.md: replay section regenerated from {DEMO}")


if __name__ == "__main__":
    main()

"""Start examples/live_bot.py many times, fast: import once, then fork a bot per request.

The kill loop restarts the bot hundreds of times; paying the interpreter and
pydantic start-up each time would take minutes, so this parent imports
everything once and forks a fresh bot process for each ``run BASE_DIR`` line on
stdin. Each bot is a real process (its own pid, its own flock, killed for real
with SIGKILL); the parent prints ``{"child": pid}`` after forking and
``{"exit": code}`` after reaping it. The bots print their JSON lines to the same
stdout.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))

import live_bot

live_bot.simulate(20)  # builds the pydantic validators before forking


def main() -> None:
    for line in sys.stdin:
        command, _, base_dir = line.strip().partition(" ")
        if command != "run":
            continue
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = asyncio.run(
                    live_bot.main(["--base-dir", base_dir, "--interval", "0", "--json"])
                )
            finally:
                sys.stdout.flush()
                os._exit(code)
        print(json.dumps({"child": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()

"""A live bot for the lease tests: one session on a shared backend, one logged write per tick.

    python lease_bot.py '{"url": ..., "root": ..., "name": "a", "symbol": "BTC", ...}'

Each tick appends ``[name, n]`` to the list at ``fence/log-{symbol}`` with a
compare-and-set (``update_value``) in the session's tick, so the list is the
history of who committed what, in order: two instances writing at once would
interleave there. Lines on stdout, each flushed:

- ``STARTING``: the process runs and calls ``start()`` (which may wait);
- ``START {json}``: started; the log as restored;
- ``ACK n``: tick ``n`` committed (printed after the commit returned);
- ``LOCKED {json}``: ``start()`` raised ``InstanceLockedError`` (exit 3);
- ``STOPPED``: ``run()`` returned (a stop signal, or ``ticks`` reached);
- ``LOG message``: what persistkit logged (``waiting up to ...`` when ``start()``
  found another instance and waits for it).

``mode`` ``"plain"`` writes outside any tick, inside ``async with session:``:
only the backend's fence can refuse those. ``LeaseLostError`` is not caught:
the process exits 1 with it in stderr, as an unattended bot would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

from persistkit import InstanceLockedError, LiveSession, PersistBase


def appended(entry: list[Any]) -> Any:
    return lambda log: [*(log or []), entry]


async def main(config: dict[str, Any]) -> int:
    said = logging.StreamHandler(sys.stdout)
    said.setFormatter(logging.Formatter("LOG %(message)s"))
    logging.getLogger("persistkit").addHandler(said)
    logging.getLogger("persistkit").setLevel(logging.INFO)
    name, symbol = config["name"], config["symbol"]
    session = LiveSession(
        [(symbol, "trend")],
        config.get("risk", symbol),
        base_dir=config["root"],
        backend=config["url"],
        lease_ttl=config["ttl"],
        lease_wait=config.get("wait", 0.0),
    )
    log = PersistBase("fence", base_dir=config["root"])
    key = f"log-{symbol}"
    interval, ticks = config.get("interval", 0.05), config.get("ticks")
    print("STARTING", flush=True)
    try:
        if config.get("mode", "ticks") == "plain":
            async with session:
                await report_start(log, key)
                n = 0
                while ticks is None or n < ticks:
                    await log.update_value(key, appended([name, n]))
                    print(f"ACK {n}", flush=True)
                    n += 1
                    await asyncio.sleep(interval)
        else:
            await session.start()
            await report_start(log, key)

            async def tick(n: int) -> None:
                await log.update_value(key, appended([name, n]))

            await session.run(
                tick,
                interval=interval,
                ticks=ticks,
                after_commit=lambda n: print(f"ACK {n}", flush=True),
            )
            await session.aclose()
    except InstanceLockedError as locked:
        refusal = {"message": str(locked), "holder": locked.holder}
        print("LOCKED " + json.dumps(refusal, default=str), flush=True)
        return 3
    print("STOPPED", flush=True)
    return 0


async def report_start(log: PersistBase[Any], key: str) -> None:
    restored = await log.read_value(key) if await log.has_value(key) else []
    print("START " + json.dumps(restored), flush=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(json.loads(sys.argv[1]))))

"""Why SQLiteBackend runs its calls inline: sequential durable writes, three ways.

- raw: one ``INSERT OR REPLACE`` per autocommit on a plain WAL / synchronous=FULL
  connection (the ceiling for one durable write at a time);
- inline: ``await SQLiteBackend.put`` as shipped;
- thread: the same transaction run through ``asyncio.to_thread``.

Rounds are interleaved and each ratio is taken within one round, because the
machines are shared and absolute rates drift. Usage::

    .venv/bin/python adapters/persistkit-sqlite/bench/inline_vs_thread.py [writes] [rounds]
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import persistkit_sqlite as plugin
from persistkit_sqlite import SQLiteBackend

PAYLOAD = b"x" * 300  # about one trading signal


def raw(path: str, writes: int) -> float:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB)")
    started = time.perf_counter()
    for i in range(writes):
        connection.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (f"k{i % 50}", PAYLOAD))
    elapsed = time.perf_counter() - started
    connection.close()
    return writes / elapsed


def same_transaction_as_put(name: str) -> Callable[[sqlite3.Connection], str]:
    def store(connection: sqlite3.Connection) -> str:
        version = plugin._next_version(connection)
        connection.execute(plugin._UPSERT, ("ns", name, PAYLOAD, version))
        return str(version)

    return store


async def through_backend(path: str, writes: int, *, hop: bool) -> float:
    backend = SQLiteBackend(path)
    await backend.put("warm/up", PAYLOAD)  # opening the database is not measured
    started = time.perf_counter()
    for i in range(writes):
        if hop:
            await asyncio.to_thread(backend._write, "write", same_transaction_as_put(f"k{i % 50}"))
        else:
            await backend.put(f"ns/k{i % 50}", PAYLOAD)
    elapsed = time.perf_counter() - started
    await backend.aclose()
    return writes / elapsed


def main() -> None:
    writes = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 9
    rates: dict[str, list[float]] = {"raw": [], "inline": [], "thread": []}
    with tempfile.TemporaryDirectory() as directory:
        for round_no in range(rounds):
            rates["raw"].append(raw(f"{directory}/raw{round_no}.db", writes))
            rates["inline"].append(
                asyncio.run(through_backend(f"{directory}/in{round_no}.db", writes, hop=False))
            )
            rates["thread"].append(
                asyncio.run(through_backend(f"{directory}/th{round_no}.db", writes, hop=True))
            )
            print(f"round {round_no + 1}/{rounds} done", file=sys.stderr, flush=True)
    for name, values in rates.items():
        print(f"{name:>6}: median {statistics.median(values):7.0f} writes/s")
    inline_vs_raw = [a / b for a, b in zip(rates["inline"], rates["raw"], strict=True)]
    thread_vs_inline = [a / b for a, b in zip(rates["thread"], rates["inline"], strict=True)]
    print(f"inline / raw    median {statistics.median(inline_vs_raw):.2f}")
    print(
        f"thread / inline median {statistics.median(thread_vs_inline):.2f} "
        f"(rounds: {min(thread_vs_inline):.2f}..{max(thread_vs_inline):.2f})"
    )


if __name__ == "__main__":
    main()

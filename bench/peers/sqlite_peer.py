"""Peer: sqlite in WAL mode with ``synchronous=FULL``, one upsert per commit.

What a careful user would pick instead of files: each write is its own
transaction, durable when ``execute`` returns (FULL fsyncs the WAL on commit).
"""

from __future__ import annotations

import os
import sqlite3
import time

import orjson

from bench.harness import Sample, timed
from bench.payload import SIGNALS_BYTES

__all__ = ["SqlitePeer"]


class SqlitePeer:
    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "state.sqlite")
        # Autocommit (isolation_level=None): every statement is one durable transaction.
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)")

    @property
    def version(self) -> str:
        return sqlite3.sqlite_version

    def put(self, key: str, data: bytes) -> None:
        self.db.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, data),
        )

    def write(self, writes: list[tuple[str, int]]) -> Sample:
        """One durable upsert per (key, index into SIGNALS_BYTES)."""
        started = time.perf_counter()
        for key, variant in writes:
            self.put(key, SIGNALS_BYTES[variant])
        return timed(len(writes), started)

    def read(self, key: str, count: int) -> Sample:
        query = "SELECT value FROM kv WHERE key = ?"
        started = time.perf_counter()
        for _ in range(count):
            row = self.db.execute(query, (key,)).fetchone()
            orjson.loads(row[0])
        return timed(count, started)

    def fill(self, keys: list[str], data: bytes) -> None:
        """Set-up in one transaction (not measured)."""
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", [(key, data) for key in keys]
        )
        self.db.execute("COMMIT")

    def scan(self) -> Sample:
        """Open the database afresh and load every value: sqlite's startup scan."""
        started = time.perf_counter()
        db = sqlite3.connect(self.path)
        try:
            count = 0
            for (value,) in db.execute("SELECT value FROM kv"):
                orjson.loads(value)
                count += 1
        finally:
            db.close()
        return timed(count, started)

    def close(self) -> None:
        self.db.close()

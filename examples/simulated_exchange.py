"""A simulated exchange for ``examples/intent_bot.py``: its own process, its own durable book.

It does what a real exchange does to a bot that crashes mid-order, and no more:

- **Durable book.** Every order is committed to a SQLite file (``synchronous=FULL``)
  before the reply leaves: kill the exchange with ``kill -9`` and restart it on the
  same book, it still has every order it ever answered.
- **Deduplication by client order id.** A second ``create_order`` with a client
  order id the book already has creates nothing: it returns the existing order and
  counts a *duplicate attempt* (``book`` reports them), so a checker sees each
  resend the exchange absorbed.
- **Lost replies.** ``--lose-replies 0.3`` (or the ``lose_replies`` request) makes
  it apply three in ten order requests and then close the connection without
  answering, as a timeout or a dropped connection does: the order exists, the bot
  does not know it.

The protocol is one JSON object per line over TCP on loopback, one reply line per
request; :class:`ExchangeClient` speaks it::

    {"op": "create_order", "client_order_id": ..., "symbol": ..., "side": "buy",
     "quantity": 0.01, "price": null, "note": "any text the checker wants back"}
        -> {"order": ORDER, "duplicate": false}
    {"op": "get_order", "client_order_id": ...}     -> {"order": ORDER or null}
    {"op": "book"}                                   -> {"orders": [ORDER, ...],
                                                         "duplicate_attempts": n, "lost_replies": n}
    {"op": "lose_replies", "share": 0.3}             -> {"share": 0.3}

An ``ORDER`` is ``{"exchange_order_id", "client_order_id", "symbol", "side",
"quantity", "price", "note", "status", "attempts"}``. Every order fills at once
(``"status": "filled"``): a market order (``price`` null) at the market, a limit
order at its price. A request the exchange cannot read gets ``{"error": "..."}``
(never lost). Run it::

    python examples/simulated_exchange.py --book ./dump/exchange.sqlite --port 0 --lose-replies 0.3

It prints ``listening HOST PORT`` once it accepts connections. Only the standard
library is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import subprocess
import sys
from typing import Any

__all__ = ["ExchangeClient", "ExchangeError", "ReplyLost", "SimulatedExchange", "main", "spawn"]

ORDER_OPS = ("create_order", "get_order")
"""The requests whose reply may be lost (the book and the loss knob are always answered)."""

SIDES = ("buy", "sell")
REPLY_LIMIT = 1 << 28
"""Bytes of one reply line a client reads: the whole book is one line."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    client_order_id TEXT NOT NULL UNIQUE,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    quantity REAL NOT NULL,
    price REAL,
    note TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class ExchangeError(Exception):
    """The exchange refused a request (its ``error`` reply)."""


class ReplyLost(ConnectionError):
    """The connection closed before the reply: the request may or may not have been applied."""


class SimulatedExchange:
    """The book and the request handler; :meth:`serve` puts it on a loopback port."""

    def __init__(self, book_path: str, *, lose_replies: float = 0.0, seed: int | None = None):
        self.lose_share = _share(lose_replies)
        self.rng = random.Random(seed)
        # isolation_level=None: each statement group below is its own explicit transaction.
        self.db = sqlite3.connect(book_path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # an answered order survives a power cut
        self.db.executescript(_SCHEMA)

    def handle(self, request: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The reply to ``request``, and whether to lose it (the request is applied either way)."""
        op = request.get("op")
        if op == "create_order":
            reply = self._create(request)
        elif op == "get_order":
            reply = {"order": self._order(_text(request, "client_order_id"))}
        elif op == "book":
            return self._book(), False
        elif op == "lose_replies":
            self.lose_share = _share(request.get("share"))
            return {"share": self.lose_share}, False
        else:
            raise ExchangeError(f"unknown op {op!r}")
        lose = self.rng.random() < self.lose_share
        if lose:
            self._bump("lost_replies")
        return reply, lose

    def _create(self, request: dict[str, Any]) -> dict[str, Any]:
        client_order_id = _text(request, "client_order_id")
        symbol = _text(request, "symbol")
        side = _text(request, "side")
        if side not in SIDES:
            raise ExchangeError(f"side must be one of {SIDES}, not {side!r}")
        quantity = request.get("quantity")
        if not isinstance(quantity, int | float) or isinstance(quantity, bool) or quantity <= 0:
            raise ExchangeError(f"quantity must be a positive number, not {quantity!r}")
        price = request.get("price")
        if price is not None and (not isinstance(price, int | float) or price <= 0):
            raise ExchangeError(f"price must be a positive number or null, not {price!r}")
        note = request.get("note", "")
        if not isinstance(note, str):
            raise ExchangeError(f"note must be text, not {note!r}")
        with self.db:  # one transaction: the order, or the attempt counted on the existing one
            self.db.execute("BEGIN IMMEDIATE")
            existing = self._order(client_order_id)
            if existing is not None:
                self.db.execute(
                    "UPDATE orders SET attempts = attempts + 1 WHERE client_order_id = ?",
                    (client_order_id,),
                )
                existing["attempts"] += 1
                return {"order": existing, "duplicate": True}
            self.db.execute(
                "INSERT INTO orders (client_order_id, symbol, side, quantity, price, note, status,"
                " attempts) VALUES (?, ?, ?, ?, ?, ?, ?, 1)",
                (client_order_id, symbol, side, quantity, price, note, "filled"),
            )  # fmt: skip
        order = self._order(client_order_id)
        assert order is not None
        return {"order": order, "duplicate": False}

    def _order(self, client_order_id: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT seq, client_order_id, symbol, side, quantity, price, note, status, attempts "
            "FROM orders WHERE client_order_id = ?",
            (client_order_id,),
        ).fetchone()
        return None if row is None else _as_order(row)

    def _book(self) -> dict[str, Any]:
        rows = self.db.execute(
            "SELECT seq, client_order_id, symbol, side, quantity, price, note, status, attempts "
            "FROM orders ORDER BY seq"
        ).fetchall()
        orders = [_as_order(row) for row in rows]
        lost = self.db.execute("SELECT value FROM counters WHERE name = 'lost_replies'").fetchone()
        return {
            "orders": orders,
            "duplicate_attempts": sum(order["attempts"] - 1 for order in orders),
            "lost_replies": 0 if lost is None else lost[0],
        }

    def _bump(self, counter: str) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO counters (name, value) VALUES (?, 1) "
                "ON CONFLICT (name) DO UPDATE SET value = value + 1",
                (counter,),
            )

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ExchangeError("a request is a JSON object")
                    reply, lose = self.handle(request)
                except (ExchangeError, ValueError) as exc:
                    reply, lose = {"error": str(exc)}, False
                if lose:
                    return  # applied, never answered: the client sees the connection close
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass  # the client went away (killed, say): nothing to answer
        finally:
            writer.close()

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Accept connections until cancelled; prints ``listening HOST PORT`` once ready."""
        server = await asyncio.start_server(self._serve_connection, host, port)
        bound = server.sockets[0].getsockname()
        print(f"listening {bound[0]} {bound[1]}", flush=True)
        async with server:
            await server.serve_forever()


class ExchangeClient:
    """One request per connection: a lost reply never leaves a half-read stream behind."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    async def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Send ``payload``, return the reply; :class:`ReplyLost` when none came."""
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=REPLY_LIMIT)
        try:
            writer.write(json.dumps(payload).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
        if not line.endswith(b"\n"):
            raise ReplyLost(f"no reply to {payload.get('op')} from {self.host}:{self.port}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise ExchangeError(reply["error"])
        return reply

    async def create_order(
        self,
        *,
        client_order_id: str,
        symbol: str,
        side: str,
        quantity: float,
        price: float | None = None,
        note: str = "",
    ) -> dict[str, Any]:
        """Place an order (or get the one this client order id already placed)."""
        reply = await self.request(
            {"op": "create_order", "client_order_id": client_order_id, "symbol": symbol,
             "side": side, "quantity": quantity, "price": price, "note": note}
        )  # fmt: skip
        order: dict[str, Any] = reply["order"]
        return order

    async def get_order(self, client_order_id: str) -> dict[str, Any] | None:
        """The order placed under ``client_order_id``, or ``None`` when there is none."""
        reply = await self.request({"op": "get_order", "client_order_id": client_order_id})
        order: dict[str, Any] | None = reply["order"]
        return order

    async def book(self) -> dict[str, Any]:
        """Every order, the duplicate attempts absorbed and the replies lost (for checkers)."""
        return await self.request({"op": "book"})

    async def lose_replies(self, share: float) -> None:
        await self.request({"op": "lose_replies", "share": share})


def _as_order(row: tuple[Any, ...]) -> dict[str, Any]:
    seq, client_order_id, symbol, side, quantity, price, note, status, attempts = row
    return {
        "exchange_order_id": f"X{seq:08d}",
        "client_order_id": client_order_id,
        "symbol": symbol,
        "side": side,
        "quantity": quantity,
        "price": price,
        "note": note,
        "status": status,
        "attempts": attempts,
    }


def _text(request: dict[str, Any], field: str) -> str:
    value = request.get(field)
    if not isinstance(value, str) or not value:
        raise ExchangeError(f"{field} must be non-empty text, not {value!r}")
    return value


def _share(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ExchangeError(f"the share of lost replies is a number from 0 to 1, not {value!r}")
    return float(value)


def spawn(
    book: str | os.PathLike[str],
    *,
    port: int = 0,
    lose_replies: float = 0.0,
    seed: int | None = None,
) -> tuple[subprocess.Popen[str], int]:
    """Start the exchange in a process of its own; returns it and the port it listens on."""
    command = [sys.executable, os.path.abspath(__file__), "--book", os.fspath(book),
               "--port", str(port), "--lose-replies", str(lose_replies)]  # fmt: skip
    if seed is not None:
        command += ["--seed", str(seed)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    ready = process.stdout.readline().split()
    if ready[:1] != ["listening"]:
        process.kill()
        process.wait()
        raise RuntimeError(f"the simulated exchange did not start (it said {ready})")
    return process, int(ready[2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--book", required=True, help="the SQLite file of the order book")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument(
        "--lose-replies", type=float, default=0.0, help="share of order replies to lose (0-1)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the reply losses")
    args = parser.parse_args(argv)
    try:
        exchange = SimulatedExchange(args.book, lose_replies=args.lose_replies, seed=args.seed)
    except ExchangeError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(exchange.serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

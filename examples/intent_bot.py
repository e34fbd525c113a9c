"""A bot that sends orders to an exchange and, killed at any moment, never loses or doubles one.

The costly crash of a trading bot falls between "send the order" and "record
that it was sent". This bot closes that gap with persistkit's order intents:

1. Each tick it *decides* (deterministically, from the tick number alone) which
   orders to place: a decision has a stable id, ``t{tick}:{symbol}``.
2. It writes each decision's :class:`~persistkit.OrderIntent` (``pending``, with a
   fresh client order id) and makes it durable *before* the order leaves
   (``await session.commit_now()``, inside the tick :meth:`LiveSession.run` drives).
3. It sends the order with that client order id; a lost reply is sent again
   under the same id, which the exchange deduplicates.
4. It records the answer (``filled``, with the exchange's order id).

After a ``kill -9`` the restart returns the intents in doubt
(``RestoredState.open_intents``) and :meth:`LiveSession.reconcile` asks the
exchange about each by its client order id: found, the intent takes the
exchange's status; not found, it is ``cancelled``, and the bot sends that
decision again under a *new* client order id. So every decision ends as exactly
one order at the exchange; :func:`decisions_until` lists the decisions of the
first ticks, for a checker to compare with the exchange's book.

Run it against ``examples/simulated_exchange.py``::

    python examples/simulated_exchange.py --book ./dump/exchange.sqlite --port 8765 &
    python examples/intent_bot.py --base-dir ./dump/intents --exchange 127.0.0.1:8765

SIGTERM or Ctrl-C stops it after the tick in progress (exit code 0). ``--json``
prints one JSON object per line instead of text: the restart (intents in doubt,
what the reconcile found, what is sent again), then ``{"ack": n, ...}`` once
tick ``n`` is committed. ``--check``, once the bot has stopped, compares the
exchange's book with the bot's decisions and says OK (exit 0) or not (exit 1);
``scripts/intent_demo.sh`` kills the bot with ``kill -9`` until a restart finds
orders in doubt, then checks.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import random
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from simulated_exchange import ExchangeClient

import persistkit
from persistkit import (
    LiveSession,
    OrderIntent,
    PersistBase,
    PersistIntentAdapter,
    new_client_order_id,
)
from persistkit.replay import now_ms

T = TypeVar("T")

PAIRS = [("BTCUSDT", "trend"), ("ETHUSDT", "revert")]
RISK_NAME = "intent-bot"
EXCHANGE_STATUS = {"new": "acked", "filled": "filled"}
"""The exchange's order status -> the intent's (the simulated exchange fills every order)."""
NOT_FOUND = "not at the exchange when reconciled: the decision is sent again under a new id"
"""The reason the reconcile gives an intent the exchange never received."""
RETRY_DELAY = 0.05
RETRY_FOR = 30.0
"""Seconds a request is retried through lost replies and a restarting exchange."""


@dataclass(frozen=True)
class Decision:
    """One order the bot decided on; its id names it across restarts and new client ids."""

    id: str
    symbol: str
    strategy: str
    side: str
    quantity: float
    price: float | None


def decisions_at(tick: int) -> list[Decision]:
    """What the bot decides at ``tick``: a seeded coin per pair, so any process can recompute it."""
    decisions = []
    for symbol, strategy in PAIRS:
        rng = random.Random(f"{symbol}:{tick}")
        if rng.random() < 0.6:
            base = 64_000.0 if symbol.startswith("BTC") else 3_200.0
            decisions.append(
                Decision(
                    id=f"t{tick}:{symbol}",
                    symbol=symbol,
                    strategy=strategy,
                    side=rng.choice(("buy", "sell")),
                    quantity=round(rng.uniform(0.001, 0.1), 3),
                    price=None if rng.random() < 0.5 else round(base * rng.uniform(0.95, 1.05), 2),
                )
            )
    return decisions


def never_placed(intent: OrderIntent) -> bool:
    """The exchange never received ``intent``'s order (so its decision is sent again)."""
    return intent.status == "cancelled" and intent.reason == NOT_FOUND


def decisions_until(tick: int) -> list[Decision]:
    """Every decision of ticks 1 to ``tick``."""
    return [decision for n in range(1, tick + 1) for decision in decisions_at(n)]


def decision_by_id(decision_id: str) -> Decision:
    """The decision named ``decision_id`` (``t{tick}:{symbol}``), recomputed."""
    tick = int(decision_id[1:].split(":", 1)[0])
    return next(decision for decision in decisions_at(tick) if decision.id == decision_id)


async def with_retries(request: Callable[[], Awaitable[T]]) -> T:
    """``request()`` again through lost replies and a restarting exchange.

    Safe for an order because each is sent under its client order id, which the
    exchange deduplicates: a second attempt returns the order of the first.
    """
    deadline = asyncio.get_running_loop().time() + RETRY_FOR
    while True:
        try:
            return await request()
        except ConnectionError:  # a lost reply (ReplyLost), a refused or reset connection
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(RETRY_DELAY)


class IntentBot:
    """The bot's state: the ticks it decided, and the decisions not yet known at the exchange."""

    def __init__(self, base_dir: str, exchange: ExchangeClient) -> None:
        self.session = LiveSession(PAIRS, RISK_NAME, base_dir=base_dir)
        self.exchange = exchange
        # The bot's own store, committed in the same ticks as its intents:
        # "tick" (the last tick decided) and "open" (decision id -> its client order id,
        # until the exchange has confirmed that order).
        self.store: PersistBase[Any] = PersistBase("intent_bot", base_dir)
        self.base_dir = base_dir
        self.tick_number = 0
        self.open: dict[str, str] = {}
        self.to_resend: list[Decision] = []
        self.sent: list[dict[str, Any]] = []
        """The orders of the tick in progress, for its acknowledgement."""

    async def start(self) -> dict[str, Any]:
        """Restore, reconcile the intents in doubt; returns what happened (printed by ``main``)."""
        persistkit.configure(mode="live", base_dir=self.base_dir)
        restored = await self.session.start()
        # One tick: every answer of the exchange, or (a lookup failing) none of them.
        answers = await self.session.reconcile(self.lookup, reason=NOT_FOUND)
        async with self.session.tick():  # reads through the session's backend; writes nothing
            self.tick_number = await self.read("tick", 0)
            self.open = await self.read("open", {})
            intents = await self.all_intents()
        # A decision whose order the exchange never received goes out again under
        # a new client order id; one the exchange has is confirmed by the next tick.
        self.to_resend = [
            decision_by_id(decision_id)
            for decision_id, client_order_id in sorted(self.open.items())
            if never_placed(intents[client_order_id])
        ]
        return {
            "tick": self.tick_number,
            "in_doubt": sorted(intent.client_order_id for intent in restored.open_intents),
            "found": sorted(a.client_order_id for a in answers if not never_placed(a)),
            "not_found": sorted(a.client_order_id for a in answers if never_placed(a)),
            "unresolved_after_reconcile": sorted(
                cid for cid, intent in intents.items() if intent.unresolved
            ),
            "resend": [decision.id for decision in self.to_resend],
        }

    async def read(self, key: str, default: T) -> T:
        try:
            value: T = await self.store.read_value(key)
        except KeyError:
            return default
        return value

    async def all_intents(self) -> dict[str, OrderIntent]:
        return {
            intent.client_order_id: intent
            for symbol, strategy in PAIRS
            for intent in await PersistIntentAdapter.read_intents(symbol, strategy)
        }

    async def lookup(self, intent: OrderIntent) -> OrderIntent | None:
        """The exchange's answer about ``intent``: found (its status and id) or ``None``."""
        order = await with_retries(lambda: self.exchange.get_order(intent.client_order_id))
        if order is None:
            return None
        return intent.model_copy(
            update={
                "status": EXCHANGE_STATUS[order["status"]],
                "exchange_order_id": order["exchange_order_id"],
            }
        )

    async def tick(self, _: int) -> None:
        """One tick under ``session.run()``: decide, make the intents durable, send, record."""
        tick = self.tick_number + 1
        intents = await self.all_intents()
        # Decisions a restart left open: the exchange has the order (confirmed now),
        # or never got it (sent again below, under a new client order id).
        for decision_id, client_order_id in list(self.open.items()):
            if not never_placed(intents[client_order_id]):
                del self.open[decision_id]
        outgoing: list[tuple[Decision, OrderIntent]] = []
        for decision in [*self.to_resend, *decisions_at(tick)]:
            intent = OrderIntent(
                client_order_id=new_client_order_id(decision.strategy),
                symbol=decision.symbol,
                strategy_name=decision.strategy,
                side=decision.side,
                quantity=decision.quantity,
                price=decision.price,
                created_at=now_ms(),  # the tick's time
                status="pending",
                decision=decision.id,  # the bot's own field: it round-trips
            )
            await PersistIntentAdapter.write_intent(intent)
            self.open[decision.id] = intent.client_order_id
            outgoing.append((decision, intent))
        await self.store.write_value("tick", tick)
        await self.store.write_value("open", dict(self.open))
        # Durable before any order leaves: the intents, the open decisions, the tick.
        await self.session.commit_now()
        self.sent = []
        for decision, intent in outgoing:
            send = functools.partial(
                self.exchange.create_order,
                client_order_id=intent.client_order_id,
                symbol=decision.symbol,
                side=decision.side,
                quantity=decision.quantity,
                price=decision.price,
                note=decision.id,  # what the checker groups the exchange's orders by
            )
            order = await with_retries(send)
            await PersistIntentAdapter.write_intent(
                intent.model_copy(
                    update={
                        "status": EXCHANGE_STATUS[order["status"]],
                        "exchange_order_id": order["exchange_order_id"],
                    }
                )
            )
            del self.open[decision.id]
            self.sent.append({"decision": decision.id, **order})
        await self.store.write_value("open", dict(self.open))
        self.to_resend = []
        self.tick_number = tick


async def check(bot: IntentBot) -> int:
    """Once the bot has stopped: every decision exactly one order at the exchange, none in doubt."""
    restored = await bot.session.start()
    try:
        async with bot.session.tick():  # reads through the session's backend
            tick = await bot.read("tick", 0)
    finally:
        await bot.session.aclose()
    book = await with_retries(bot.exchange.book)
    orders = Counter(order["note"] for order in book["orders"])
    decided = {decision.id for decision in decisions_until(tick)}
    problems = [f"intent {i.client_order_id} still {i.status}" for i in restored.open_intents]
    problems += [f"{d}: {orders[d]} orders" for d in sorted(decided) if orders[d] != 1]
    problems += [f"{d}: an order for no decision" for d in sorted(set(orders) - decided)]
    print(
        f"exchange book: {len(book['orders'])} orders, {book['duplicate_attempts']} resends "
        f"absorbed by its deduplication, {book['lost_replies']} replies lost"
    )
    if problems:
        print("orders: FAILED")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print(
        f"orders: OK (ticks 1-{tick}: {len(decided)} decisions, each exactly one order at "
        "the exchange; no intent in doubt)"
    )
    return 0


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-dir", default="./dump/intents")
    parser.add_argument("--exchange", required=True, metavar="HOST:PORT")
    parser.add_argument("--ticks", type=int, default=None, help="stop after this many ticks")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between ticks")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--check", action="store_true", help="compare the exchange's book with the decisions, exit"
    )
    args = parser.parse_args(argv)
    host, _, port = args.exchange.rpartition(":")

    def say(text: str, **fields: Any) -> None:
        sys.stdout.write((json.dumps(fields) if args.json else text) + "\n")
        sys.stdout.flush()

    bot = IntentBot(args.base_dir, ExchangeClient(host or "127.0.0.1", int(port)))
    if args.check:
        return await check(bot)
    restart = await bot.start()
    doubts = len(restart["in_doubt"])
    say(
        f"restored at tick {restart['tick']}: {doubts} order{'s' * (doubts != 1)} in doubt; "
        f"the exchange has {len(restart['found'])}, not {len(restart['not_found'])} "
        f"(sent again under a new client order id: {', '.join(restart['resend']) or 'none'}); "
        f"in doubt after the reconcile: {len(restart['unresolved_after_reconcile'])}",
        restart=restart,
    )

    def acknowledge(_: int) -> None:
        orders = ", ".join(
            f"{order['decision']} {order['side']} {order['quantity']} as "
            f"{order['client_order_id']} -> {order['exchange_order_id']} {order['status']}"
            for order in bot.sent
        )
        say(
            f"tick {bot.tick_number:>4}: {orders or 'no order'}",
            ack=bot.tick_number,
            orders=bot.sent,
        )

    try:
        await bot.session.run(
            bot.tick, interval=args.interval, ticks=args.ticks, after_commit=acknowledge
        )
    finally:
        await bot.session.aclose()
    say(f"stopped cleanly after tick {bot.tick_number}", stopped=bot.tick_number)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""A live bot that places one order per tick under ``run()``, for the order-intent kill tests.

    python stepped_order_bot.py ROOT

Each tick writes an order intent ``pending``, commits it with
``session.commit_now()``, then asks its driver (the test, on stdin) to send
the order: the driver plays the exchange. Lines on stdout, each flushed:

- ``{"restored": [intent...]}``: started; the intents in doubt it restored;
- ``{"committed": intent}``: the intent is durable, the order not sent yet;
- ``{"sent": client_order_id}``: the driver answered ``send EXCHANGE_ID``; the
  bot waits for ``ack`` before it records the answer (a reply in flight);
- ``{"acked": intent}``: the answer is committed with the rest of the tick
  (said once the tick's commit returned).

Between the lines, the driver may ``kill -9`` it: between the intent's commit
and the send, or between the send and the recorded answer.
"""

from __future__ import annotations

import asyncio
import json
import sys

from persistkit import LiveSession, OrderIntent, PersistIntentAdapter, new_client_order_id
from persistkit._clock import now_ms


def say(**message: object) -> None:
    print(json.dumps(message), flush=True)


async def main(root: str) -> None:
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=root)
    state = await session.start()
    say(restored=[intent.model_dump(mode="json") for intent in state.open_intents])

    recorded: list[OrderIntent] = []

    async def on_tick(n: int) -> None:
        intent = OrderIntent(
            client_order_id=new_client_order_id("bot"),
            symbol="BTCUSDT",
            strategy_name="trend",
            side="buy",
            quantity=0.01,
            price=None,
            created_at=now_ms(),
            status="pending",
        )
        await PersistIntentAdapter.write_intent(intent)
        await session.commit_now()
        say(committed=intent.model_dump(mode="json"))
        command = (await asyncio.to_thread(sys.stdin.readline)).split()
        if command[:1] != ["send"]:
            raise SystemExit(f"expected `send EXCHANGE_ID`, got {command}")
        say(sent=intent.client_order_id)
        await asyncio.to_thread(sys.stdin.readline)  # the exchange's reply, in flight
        acked = intent.model_copy(update={"status": "acked", "exchange_order_id": command[1]})
        recorded.append(await PersistIntentAdapter.write_intent(acked))

    def after_commit(n: int) -> None:
        say(acked=recorded[-1].model_dump(mode="json"))

    await session.run(on_tick, interval=0, after_commit=after_commit)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

"""``examples/intent_bot.py`` with one safeguard taken out: the controls of the intent trials.

    python intent_bot_control.py CONTROL [intent_bot.py's arguments]

Each control is a bot a user could write; the kill loop must catch it doubling
orders, or the loop proves nothing:

- ``resend-without-asking``: after a restart it takes every intent in doubt for
  lost (the reconcile's lookup answers "not found" without asking the exchange)
  and sends the decision again under a new client order id.
- ``no-commit-point``: the intent is only committed with the rest of the tick,
  after the order left; a kill in between loses the intent, and the restarted
  bot decides and sends that tick's orders again.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import intent_bot

from persistkit import OrderIntent


async def never_found(self: intent_bot.IntentBot, intent: OrderIntent) -> OrderIntent | None:
    return None  # "not found", without asking the exchange


async def no_commit_now() -> None:
    return None


class NoCommitPointBot(intent_bot.IntentBot):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        assert callable(self.session.commit_now)  # what is taken out must exist
        self.session.commit_now = no_commit_now  # type: ignore[method-assign]


CONTROLS = ("resend-without-asking", "no-commit-point")

if __name__ == "__main__":
    control = sys.argv.pop(1)
    if control == "resend-without-asking":
        assert callable(intent_bot.IntentBot.lookup)  # what is taken out must exist
        intent_bot.IntentBot.lookup = never_found  # type: ignore[method-assign]
    elif control == "no-commit-point":
        intent_bot.IntentBot = NoCommitPointBot  # type: ignore[misc]
    else:
        sys.exit(f"unknown control {control!r}; one of {CONTROLS}")
    sys.exit(asyncio.run(intent_bot.main()))

"""Order intents: every order a bot decided to place, by client order id, per (symbol, strategy).

``intent/{symbol}_{strategy}/intents.json`` maps client order id to its
:class:`~persistkit.models.OrderIntent`. The bot writes an intent ``pending``
in a commit of its own *before* the order leaves, and its outcome after; a
crash between the two leaves an intent whose outcome only the exchange knows,
which the restarted session returns and reconciles
(:meth:`LiveSession.reconcile <persistkit.LiveSession.reconcile>`).

Two rules keep an order from being sent twice or forgotten:

- A client order id names one order: written again with another symbol,
  strategy, side, quantity, limit price or creation time, it is refused
  (:class:`~persistkit.errors.IntentConflictError`), and so is a change of a
  final intent's status (``filled``, ``cancelled``, ``rejected``), but once:
  a ``cancelled`` intent the exchange never gave an order id (a reconcile
  that found no order, an order whose send was given up) takes a later
  ``acked``, ``partially_filled`` or ``filled`` report that carries the
  exchange's order id: the order did reach the exchange (visible to its query
  only after a delay), and the bot must know its position. Logged at WARNING.
- Inside a live session's tick, a *new* intent for a pair whose intents from
  before the restart are still in doubt (or were lost: their file quarantined
  at start) is refused (:class:`~persistkit.errors.UnreconciledIntentsError`)
  until they are reconciled, unless the tick was opened with
  ``allow_unreconciled=True``.
- Inside a live session's tick, a *new* intent for a pair the session does not
  run is refused (:class:`~persistkit.errors.PairNotInSessionError`): after a
  crash no session would restore or reconcile it.

Final intents are kept for a bounded count and time
(``configure(final_intent_limit=..., final_intent_ttl=...)``): each write of a
pair's intents drops, in the same commit, the final ones beyond the bound.
Intents not final are never dropped.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from pydantic import ValidationError

from persistkit._clock import now_ms
from persistkit._config import Settings, active_settings
from persistkit._domains._base import DomainAdapter
from persistkit._names import join_pair
from persistkit._store import PersistBase
from persistkit.errors import (
    EntityNotFoundError,
    IntentConflictError,
    PairNotInSessionError,
    SchemaValidationError,
    UnreconciledIntentsError,
)
from persistkit.models import OrderIntent

__all__ = [
    "IDENTITY_FIELDS",
    "InDoubt",
    "PairInDoubt",
    "PersistIntentUtils",
    "TickIntents",
    "check_same_order",
    "tick_intents",
]

logger = logging.getLogger(__name__)

_INTENTS = "intents"

_REPORTS_OF_AN_ORDER_AT_THE_EXCHANGE = frozenset({"acked", "partially_filled", "filled"})

IDENTITY_FIELDS = ("symbol", "strategy_name", "side", "quantity", "price", "created_at")
"""What a client order id names: the same in every write of one intent."""


@dataclass(frozen=True, slots=True)
class PairInDoubt:
    """What a new intent of one pair waits for, until the session's reconcile."""

    client_order_ids: frozenset[str] = frozenset()
    """Restored unresolved at start and not reconciled since."""
    lost: str | None = None
    """Where the pair's intents went when start quarantined them (their file was corrupt):
    its orders are unknown, so every new intent of the pair waits."""


InDoubt = Mapping[tuple[str, str], PairInDoubt]
"""(symbol, strategy) -> what its new intents wait for (pairs absent: nothing)."""


@dataclass(frozen=True, slots=True)
class TickIntents:
    """What a live session's tick checks a new intent against."""

    pairs: frozenset[tuple[str, str]]
    """The session's pairs: a new intent for another is refused."""
    in_doubt: InDoubt
    """The pairs whose new intents wait for a reconcile (empty: none, or allowed)."""


tick_intents: contextvars.ContextVar[TickIntents | None] = contextvars.ContextVar(
    "persistkit_tick_intents", default=None
)
"""Set by a live session's tick (``None`` outside one: no rule but one id, one order)."""


def _as_intent(value: Any) -> OrderIntent:
    return value if isinstance(value, OrderIntent) else OrderIntent.model_validate(value)


class PersistIntentUtils(DomainAdapter):
    """``intent/{symbol}_{strategy}/intents.json`` maps client order id to its intent."""

    domain = "intent"
    schema = dict[str, OrderIntent] | None

    async def read_intents(self, symbol: str, strategy_name: str) -> list[OrderIntent]:
        """The pair's intents, in the order they were first written."""
        return list((await self._read_map(symbol, strategy_name)).values())

    async def read_intent(
        self, symbol: str, strategy_name: str, client_order_id: str
    ) -> OrderIntent | None:
        """One intent by its client order id, or ``None`` (never written, or dropped as final)."""
        return (await self._read_map(symbol, strategy_name)).get(client_order_id)

    async def read_unresolved_intents(self, symbol: str, strategy_name: str) -> list[OrderIntent]:
        """The intents whose outcome only the exchange knows: ``pending``, ``sent``, ``unknown``."""
        return [i for i in await self.read_intents(symbol, strategy_name) if i.unresolved]

    async def lost_at_start(self, symbol: str, strategy_name: str) -> str | None:
        """Where the startup scan put the pair's intents because they were corrupt (the
        quarantine entry, or the key on a read-only backend), or ``None``: none were lost."""
        report = await (await self._store(join_pair(symbol, strategy_name))).wait_for_init()
        for finding in report.corrupt:
            return finding.quarantine_id or finding.key
        return None

    async def _read_map(self, symbol: str, strategy_name: str) -> dict[str, OrderIntent]:
        store = await self._store(join_pair(symbol, strategy_name))
        try:
            value = await store.read_value(_INTENTS)
        except EntityNotFoundError:
            return {}
        if not value:
            return {}
        return {str(key): _as_intent(intent) for key, intent in value.items()}

    async def write_intent(self, intent: OrderIntent) -> OrderIntent:
        """Store ``intent`` durably under its client order id; returns it as stored.

        ``updated_at`` is stamped with the tick's time (:func:`persistkit._clock.now_ms`),
        or 1 ms after the pair's newest stamp when the clock is behind it (stepped
        back), so that the newest write always has the newest stamp.
        In the same commit, final intents beyond the configured bound are
        dropped. Refused before anything is written:
        :class:`~persistkit.errors.IntentConflictError` for a reused client
        order id or a final intent's status changed,
        :class:`~persistkit.errors.UnreconciledIntentsError` for a new intent
        while the pair's intents from before a restart are in doubt,
        :class:`~persistkit.errors.PairNotInSessionError` for a new intent, in
        a live session's tick, of a pair the session does not run, and
        :class:`~persistkit.errors.SchemaValidationError` for an invalid one.

        Inside a tick, another process recording the pair's intents before the
        tick commits does not fail it: the commit applies this write again to
        what that process committed (the stamp returned may then be a later one).
        Outside a tick the write is its own commit: durable when this returns.
        Inside a tick it commits with the tick, so write it in a tick of its
        own before the order is sent, or, in a tick driven by
        :meth:`LiveSession.run <persistkit.LiveSession.run>`, follow it with
        ``await session.commit_now()``.
        """
        try:
            checked = OrderIntent.model_validate(intent)
        except ValidationError as exc:
            raise SchemaValidationError(
                f"intent: not a valid order intent: {exc}",
                cast(list[dict[str, object]], exc.errors()),
            ) from exc
        symbol, strategy = checked.symbol, checked.strategy_name
        store = await self._store(join_pair(symbol, strategy))
        settings = active_settings()
        rules = tick_intents.get()
        waiting_for = None if rules is None else rules.in_doubt.get((symbol, strategy))
        now = now_ms()
        stored = checked.model_copy(update={"updated_at": now})

        def change(current: Any) -> dict[str, OrderIntent]:
            nonlocal stored
            intents = {str(k): _as_intent(v) for k, v in (current or {}).items()}
            before = intents.get(stored.client_order_id)
            if before is None:
                if rules is not None and (symbol, strategy) not in rules.pairs:
                    raise PairNotInSessionError(
                        f"new order {stored.client_order_id!r} for {symbol}/{strategy} refused: "
                        "the live session does not run that pair, so after a crash no session "
                        "would restore or reconcile it (an order left in doubt for good); add "
                        "the pair to the session's pairs; nothing was written",
                        pair=(symbol, strategy),
                    )
                if waiting_for is not None:
                    _refuse_while_in_doubt(stored, intents, waiting_for)
            else:
                check_same_order(before, stored)
                if before.final and stored.status != before.status:
                    logger.warning(
                        "persistkit: order %s of %s/%s was recorded cancelled (%s) but the "
                        "exchange reports it %s as %s: recorded, the order did reach the exchange",
                        stored.client_order_id,
                        symbol,
                        strategy,
                        before.reason or "no reason given",
                        stored.status,
                        stored.exchange_order_id,
                    )
            # The newest write gets the newest stamp, whatever the clock did (stepped
            # back across a restart, another host's): the bound keeps the newest.
            stamp = max([now, *((i.updated_at or 0) + 1 for i in intents.values())])
            stored = stored.model_copy(update={"updated_at": stamp})
            intents[stored.client_order_id] = stored
            return _without_expired(intents, settings, now)

        # Merged at commit: another process recording a report of the pair's other
        # orders (or of this one) does not fail the tick that records this one.
        await store._merge_value(_INTENTS, change)
        return stored

    async def remove_intents(self, symbol: str, strategy_name: str) -> None:
        """Remove every intent of the pair (an operator's reset; the bot never needs it)."""
        store = await self._store(join_pair(symbol, strategy_name))
        await store.remove_value(_INTENTS)

    def use_persist_intent_adapter(self, store_class: type[PersistBase[Any]]) -> None:
        """Keep order intents in a custom :class:`PersistBase` subclass."""
        self._use(store_class)


def check_same_order(before: OrderIntent, after: OrderIntent) -> None:
    """Raise :class:`~persistkit.errors.IntentConflictError` unless ``after`` is ``before``'s order
    (same :data:`IDENTITY_FIELDS`) and leaves a final status as it was (or is the late
    exchange report of an order cancelled without an exchange order id: see the module)."""
    changed = [f for f in IDENTITY_FIELDS if getattr(before, f) != getattr(after, f)]
    if changed:
        changes = ", ".join(
            f"{name}: {getattr(before, name)!r} -> {getattr(after, name)!r}" for name in changed
        )
        raise IntentConflictError(
            f"client order id {after.client_order_id!r} already names another order "
            f"({changes}); an exchange would take it for the same order: use a new client order id "
            "(persistkit.new_client_order_id); nothing was written",
            client_order_id=after.client_order_id,
        )
    if before.final and after.status != before.status and not _found_late(before, after):
        raise IntentConflictError(
            f"order {after.client_order_id!r} is {before.status}, which is final: it cannot "
            f"become {after.status} (a late or repeated exchange report?); nothing was written",
            client_order_id=after.client_order_id,
        )


def _found_late(before: OrderIntent, after: OrderIntent) -> bool:
    """``after`` is the first report of an order recorded cancelled without ever hearing
    from the exchange (no exchange order id): the order reached it after all."""
    return (
        before.status == "cancelled"
        and before.exchange_order_id is None
        and after.status in _REPORTS_OF_AN_ORDER_AT_THE_EXCHANGE
        and after.exchange_order_id is not None
    )


def _refuse_while_in_doubt(
    new: OrderIntent, intents: Mapping[str, OrderIntent], waiting_for: PairInDoubt
) -> None:
    if waiting_for.lost is not None:
        raise UnreconciledIntentsError(
            f"new order {new.client_order_id!r} for {new.symbol}/{new.strategy_name} refused: "
            f"the pair's intents were corrupt at start and quarantined ({waiting_for.lost}), so "
            "its orders from before the restart are unknown and may stand at the exchange; "
            "check them there (or restore the quarantined value), then call "
            "`await session.reconcile(lookup)`, or open the tick with "
            "session.tick(allow_unreconciled=True) to go ahead; nothing was written",
            pair=(new.symbol, new.strategy_name),
            client_order_ids=(),
        )
    doubtful = tuple(
        sorted(
            cid
            for cid in waiting_for.client_order_ids
            if cid in intents and intents[cid].unresolved
        )
    )
    if doubtful:
        raise UnreconciledIntentsError(
            f"new order {new.client_order_id!r} for {new.symbol}/{new.strategy_name} refused: "
            f"{len(doubtful)} order(s) from before the restart are still in doubt "
            f"({', '.join(doubtful)}) and may stand at the exchange; call "
            "`await session.reconcile(lookup)` first, or open the tick with "
            "session.tick(allow_unreconciled=True) to go ahead; nothing was written",
            pair=(new.symbol, new.strategy_name),
            client_order_ids=doubtful,
        )


def _without_expired(
    intents: dict[str, OrderIntent], settings: Settings, now: int
) -> dict[str, OrderIntent]:
    """``intents`` less the final ones beyond the newest ``final_intent_limit`` or the TTL."""
    final = sorted(
        (i for i in intents.values() if i.final),
        key=lambda i: (i.updated_at or i.created_at, i.client_order_id),
        reverse=True,
    )
    ttl = settings.final_intent_ttl
    oldest_kept = None if ttl is None else now - int(ttl * 1000)
    dropped = {
        intent.client_order_id
        for index, intent in enumerate(final)
        if index >= settings.final_intent_limit
        or (oldest_kept is not None and (intent.updated_at or intent.created_at) < oldest_kept)
    }
    if not dropped:
        return intents
    return {cid: intent for cid, intent in intents.items() if cid not in dropped}

"""The tick's clock and id source: the same in a live tick and in its replay.

Inside a live session's tick, :func:`now_ms` is the tick's time (taken once, when
the tick begins, and recorded with its inputs) and :func:`new_id` makes ULIDs
from that time, the session and how many ids the tick asked for before. A
replay (:mod:`persistkit.replay`) runs the tick again under the recorded time,
so the strategy sees the same clock and makes the same ids: client order ids
(:func:`new_client_order_id`) and statistics events come out byte-identical.
Outside a tick they are the wall clock and a random ULID.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import re
import time
from dataclasses import dataclass

from persistkit.errors import InvalidNameError

__all__ = [
    "CLIENT_ORDER_ID_PREFIX_MAX",
    "TickClock",
    "new_client_order_id",
    "new_id",
    "now_ms",
    "replay_run_id",
    "ulid",
]

CLIENT_ORDER_ID_PREFIX_MAX = 8
"""Characters of a client order id's prefix: with ``-`` and the 26 of a ULID, 35,
under the 36 that Binance, Bybit, OKX and their peers accept."""
_PREFIX = re.compile(rf"[A-Za-z0-9_-]{{0,{CLIENT_ORDER_ID_PREFIX_MAX}}}\Z")

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid(time_ms: int, randomness: bytes) -> str:
    """A ULID (26 characters, Crockford base 32): 48 bits of time, 80 of ``randomness``."""
    value = (time_ms & ((1 << 48) - 1)) << 80 | int.from_bytes(randomness[:10], "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


@dataclass(slots=True)
class TickClock:
    """The time of the tick in progress and the ids it issued so far."""

    time_ns: int
    session: str
    run_id: str | None = None
    """The replay run this tick belongs to; ``None`` live."""
    issued: int = 0

    def next_id(self) -> str:
        self.issued += 1
        seed = f"{self.session}/{self.time_ns}/{self.issued}".encode()
        return ulid(self.time_ns // 1_000_000, hashlib.blake2b(seed, digest_size=10).digest())


current_tick: contextvars.ContextVar[TickClock | None] = contextvars.ContextVar(
    "persistkit_tick_clock", default=None
)


def now_ms() -> int:
    """Epoch milliseconds: the tick's time inside a tick (live or replayed), else the clock."""
    tick = current_tick.get()
    return (tick.time_ns if tick is not None else time.time_ns()) // 1_000_000


def new_id() -> str:
    """A ULID: made from the tick (the same in its replay) inside a tick, else random."""
    tick = current_tick.get()
    if tick is None:
        return ulid(time.time_ns() // 1_000_000, os.urandom(10))
    return tick.next_id()


def replay_run_id() -> str | None:
    """The id of the replay the calling code runs in (``None``: live)."""
    tick = current_tick.get()
    return None if tick is None else tick.run_id


def new_client_order_id(prefix: str = "") -> str:
    """A client order id: ``{prefix}-{ULID}`` (the bare ULID for an empty prefix).

    At most 35 characters of ``[A-Za-z0-9_-]``, which the major exchanges
    accept; ids of one prefix sort by the time they were made (to the
    millisecond). Unique across processes and restarts: outside a tick the
    ULID's 80 bits are random; inside a live session's tick they come from the
    session, the tick's clock and a counter (:func:`new_id`), so that a replay
    of the tick makes the same ids again. ``prefix`` is at most
    ``CLIENT_ORDER_ID_PREFIX_MAX`` (8) characters of ``[A-Za-z0-9_-]`` (a
    strategy's short name, say); anything else raises
    :class:`~persistkit.errors.InvalidNameError`.
    """
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise InvalidNameError(
            f"client order id prefix {prefix!r} refused: at most "
            f"{CLIENT_ORDER_ID_PREFIX_MAX} characters of [A-Za-z0-9_-], so that the id "
            "stays within the 36 characters exchanges accept"
        )
    ulid_text = new_id()
    return f"{prefix}-{ulid_text}" if prefix else ulid_text

"""The tick's clock and id source: the same in a live tick and in its replay.

Inside a live session's tick, :func:`now_ms` is the tick's time (taken once, when
the tick begins, and recorded with its inputs) and :func:`new_id` makes ULIDs
from that time, the session and how many ids the tick asked for before. A
replay (:mod:`persistkit.replay`) runs the tick again under the recorded time,
so the strategy sees the same clock and makes the same ids: client order ids
and statistics events come out byte-identical. Outside a tick they are the wall
clock and a random ULID.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import time
from dataclasses import dataclass

__all__ = ["TickClock", "new_id", "now_ms", "replay_run_id", "ulid"]

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

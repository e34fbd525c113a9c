"""The live lifecycle: restore on restart, one atomic commit per tick, one instance only."""

from persistkit._live.lock import InstanceLock, RangeLocks, read_holder
from persistkit._live.session import LOCK_DIR, LOCK_FILE, LiveSession, PairState, RestoredState

__all__ = [
    "LOCK_DIR",
    "LOCK_FILE",
    "InstanceLock",
    "LiveSession",
    "PairState",
    "RangeLocks",
    "RestoredState",
    "read_holder",
]

"""The live lifecycle: restore on restart, one atomic commit per tick, one instance only."""

from persistkit.live.lock import InstanceLock, read_holder
from persistkit.live.session import LOCK_DIR, LiveSession, PairState, RestoredState

__all__ = ["LOCK_DIR", "InstanceLock", "LiveSession", "PairState", "RestoredState", "read_holder"]

"""persistkit: the state layer a live-trading bot trusts with its money.

A crash, a ``kill -9``, a power cut or a redeploy never loses or corrupts what
the bot knows; a restarted strategy resumes where it stopped.

Each module logs to its own logger under ``persistkit.`` (``persistkit._store``,
``persistkit.backends._journal`` ...); the package logger has a ``NullHandler``,
so nothing is printed until the application configures logging
(docs/logging.md lists every message and its level).
"""

import logging
from importlib.metadata import PackageNotFoundError, version

from persistkit._clock import new_client_order_id
from persistkit._config import (
    DEFAULT_BASE_DIR,
    DEFAULT_EVENT_LIMIT,
    Settings,
    configure,
    current_settings,
)
from persistkit._domains import (
    PersistIntentAdapter,
    PersistPartialAdapter,
    PersistRiskAdapter,
    PersistScheduleAdapter,
    PersistSignalAdapter,
)
from persistkit._live import LiveSession, PairState, RestoredState
from persistkit._metrics import disable_metrics, enable_metrics
from persistkit._retry import RetryPolicy
from persistkit._stats import (
    Partial,
    PartialEvent,
    PartialStatistics,
    Schedule,
    ScheduleEvent,
    ScheduleStatistics,
)
from persistkit._store import Entry, Finding, InitReport, PersistBase
from persistkit._transaction import Transaction, transaction
from persistkit.backends import Backend, QuarantineEntry, Versioned, open_backend, register_backend
from persistkit.backends._base import ANY_VERSION
from persistkit.backends._file import FileBackend, HistoryPolicy
from persistkit.backends._memory import MemoryBackend
from persistkit.errors import (
    BackendError,
    BackendUnavailableError,
    BlockingCallError,
    ConfigurationError,
    ConflictError,
    CorruptValueError,
    CrossBackendError,
    DurabilityUnknownError,
    EntityNotFoundError,
    ForeignSymlinkError,
    ForkedClientError,
    HistoryUnavailableError,
    InstanceLockedError,
    IntentConflictError,
    InvalidNameError,
    JournalDamagedError,
    LeaseLostError,
    LockTimeoutError,
    PairNotInSessionError,
    PersistError,
    ReplayConfigError,
    ReplaySourceError,
    ResourceLimitError,
    RowMismatchError,
    SchemaValidationError,
    SnapshotError,
    StoreClosedError,
    TickCancelledError,
    TransientBackendError,
    UnreconciledIntentsError,
    UnserializableValueError,
    UnsupportedFormatError,
    UnsupportedPlatformError,
    WriteFailedError,
)
from persistkit.models import OrderIntent

try:
    # Written once, in pyproject.toml; the installed distribution carries it.
    __version__ = version("persistkit")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

# The logging HOWTO's rule for libraries: records go where the application says, and
# without a configuration they are dropped, not printed by logging's last resort.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ANY_VERSION",
    "DEFAULT_BASE_DIR",
    "DEFAULT_EVENT_LIMIT",
    "Backend",
    "BackendError",
    "BackendUnavailableError",
    "BlockingCallError",
    "ConfigurationError",
    "ConflictError",
    "CorruptValueError",
    "CrossBackendError",
    "DurabilityUnknownError",
    "EntityNotFoundError",
    "Entry",
    "FileBackend",
    "Finding",
    "ForeignSymlinkError",
    "ForkedClientError",
    "HistoryPolicy",
    "HistoryUnavailableError",
    "InitReport",
    "InstanceLockedError",
    "IntentConflictError",
    "InvalidNameError",
    "JournalDamagedError",
    "LeaseLostError",
    "LiveSession",
    "LockTimeoutError",
    "MemoryBackend",
    "OrderIntent",
    "PairNotInSessionError",
    "PairState",
    "Partial",
    "PartialEvent",
    "PartialStatistics",
    "PersistBase",
    "PersistError",
    "PersistIntentAdapter",
    "PersistPartialAdapter",
    "PersistRiskAdapter",
    "PersistScheduleAdapter",
    "PersistSignalAdapter",
    "QuarantineEntry",
    "ReplayConfigError",
    "ReplaySourceError",
    "ResourceLimitError",
    "RestoredState",
    "RetryPolicy",
    "RowMismatchError",
    "Schedule",
    "ScheduleEvent",
    "ScheduleStatistics",
    "SchemaValidationError",
    "Settings",
    "SnapshotError",
    "StoreClosedError",
    "TickCancelledError",
    "Transaction",
    "TransientBackendError",
    "UnreconciledIntentsError",
    "UnserializableValueError",
    "UnsupportedFormatError",
    "UnsupportedPlatformError",
    "Versioned",
    "WriteFailedError",
    "configure",
    "current_settings",
    "disable_metrics",
    "enable_metrics",
    "new_client_order_id",
    "open_backend",
    "register_backend",
    "transaction",
]

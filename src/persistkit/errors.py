"""Every error persistkit raises.

One root, so ``except PersistError`` catches everything the library means to
raise; each error also subclasses the builtin it resembles, so code written
against ``KeyError`` or ``ValueError`` keeps working::

    PersistError
    ├── InvalidNameError            (ValueError)  a name that cannot be stored safely
    ├── ConfigurationError          (ValueError)  a bad configure() argument or PERSISTKIT_*
    ├── UnserializableValueError    (ValueError)  NaN, infinity, unknown type: refused
    ├── SchemaValidationError       (ValueError)  a value that does not fit its model
    ├── RowMismatchError            (ValueError)  a row written under another row's names
    ├── IntentConflictError         (ValueError)  a client order id reused, or a final order changed
    ├── EntityNotFoundError         (KeyError)    read_value of an absent entity
    ├── CorruptValueError                         stored bytes that do not parse/validate
    ├── ConflictError                             compare-and-set lost: the version moved
    ├── StoreClosedError            (RuntimeError) use after aclose()
    ├── InstanceLockedError         (RuntimeError) a second instance of a live session
    ├── LeaseLostError              (RuntimeError) this instance's lease expired or was taken
    ├── ForeignSymlinkError                       a symbolic link inside the data root: not followed
    ├── CrossBackendError           (RuntimeError) a transaction asked to write to two backends
    ├── TickCancelledError          (RuntimeError) a forced stop cancelled a tick before its commit
    ├── BlockingCallError           (RuntimeError) persistkit.sync called inside an event loop
    ├── ForkedClientError           (RuntimeError) a forked child used a client it cannot rebuild
    ├── UnreconciledIntentsError    (RuntimeError) a new order before the restart's were reconciled
    ├── PairNotInSessionError       (ValueError)  a new order in a tick, of a pair not the session's
    ├── ResourceLimitError          (OSError)     out of file descriptors (names the limit)
    ├── UnsupportedPlatformError    (NotImplementedError) the file backend or a lock on non-POSIX
    ├── HistoryUnavailableError     (LookupError) no history at that time (or none kept at all)
    ├── ReplayConfigError           (ValueError)  a replay refused before it ran (see .code)
    ├── ReplaySourceError           (OSError)     a replay's recorded source cannot be read
    └── BackendError                (OSError)     the storage below failed
        ├── WriteFailedError                      nothing changed: the old value is kept
        ├── DurabilityUnknownError                the new value is visible, durability unknown
        ├── LockTimeoutError        (TimeoutError) another process held a lock too long
        ├── JournalDamagedError                   the commit journal failed its checks: salvage it
        ├── UnsupportedFormatError                a root written by a newer persistkit
        ├── SnapshotError                         no read at one commit point: it kept changing
        └── TransientBackendError                 worth retrying (retried before it reaches you)
            └── BackendUnavailableError           still failing after the retries

Errors of the layers below (``OSError``, redis-py, botocore) are re-raised as
one of these, chained with ``from`` so the original stays in the traceback.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "BlockingCallError",
    "ConfigurationError",
    "ConflictError",
    "CorruptValueError",
    "CrossBackendError",
    "DurabilityUnknownError",
    "EntityNotFoundError",
    "ForeignSymlinkError",
    "ForkedClientError",
    "HistoryUnavailableError",
    "InstanceLockedError",
    "IntentConflictError",
    "InvalidNameError",
    "JournalDamagedError",
    "LeaseLostError",
    "LockTimeoutError",
    "PairNotInSessionError",
    "PersistError",
    "ReplayConfigError",
    "ReplaySourceError",
    "ResourceLimitError",
    "RowMismatchError",
    "SchemaValidationError",
    "SnapshotError",
    "StoreClosedError",
    "TickCancelledError",
    "TransientBackendError",
    "UnreconciledIntentsError",
    "UnserializableValueError",
    "UnsupportedFormatError",
    "UnsupportedPlatformError",
    "WriteFailedError",
]


class PersistError(Exception):
    """Root of every error persistkit raises."""


class InvalidNameError(PersistError, ValueError):
    """A symbol, strategy, entity name or id that cannot be stored safely.

    Raised before any I/O: nothing was read or written.
    """


class ConfigurationError(PersistError, ValueError):
    """A setting that cannot be used: a ``configure()`` argument or an environment variable.

    A bad ``PERSISTKIT_MODE``, ``PERSISTKIT_BASE_DIR`` or ``PERSISTKIT_BACKEND``
    is named in the message, with its value.
    """


class UnserializableValueError(PersistError, ValueError):
    """A value that JSON cannot carry exactly (NaN, infinity, an unknown type).

    Raised before any I/O; the stored value is untouched.
    """


class SchemaValidationError(PersistError, ValueError):
    """A value that does not match the store's model. ``errors`` holds pydantic's details."""

    def __init__(self, message: str, errors: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class RowMismatchError(PersistError, ValueError):
    """A row whose own symbol or strategy differs from the names it is written under.

    ``write_signal_data(row, "trend", "BTCUSDT")`` (arguments swapped) would
    store the row where no correct read finds it; refused before any I/O.
    """


class IntentConflictError(PersistError, ValueError):
    """An order intent that would rewrite another order's history; refused before any I/O.

    A client order id is the one name an exchange deduplicates by: written
    again with another symbol, strategy, side, quantity, price or creation
    time, it is another order under a reused id, and a final intent
    (``filled``, ``cancelled``, ``rejected``) never changes its status again.
    ``client_order_id`` names the intent.
    """

    def __init__(self, message: str, *, client_order_id: str | None = None) -> None:
        super().__init__(message)
        self.client_order_id = client_order_id


class EntityNotFoundError(PersistError, KeyError):
    """``read_value`` of an entity that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else "entity not found"


class CorruptValueError(PersistError):
    """Stored bytes that do not parse or do not validate.

    Startup quarantines such values; a read after startup raises this rather
    than return garbage.
    """

    def __init__(self, message: str, *, key: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.reason = reason


class ConflictError(PersistError):
    """A compare-and-set write found a different version than the one expected."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class StoreClosedError(PersistError, RuntimeError):
    """The store or backend was closed with ``aclose()``."""


class UnsupportedPlatformError(PersistError, NotImplementedError):
    """Something that needs POSIX (``fcntl.flock``) asked for where there is none (Windows).

    The file backend and a live session's locks raise it when they are created
    or acquired; the memory, Redis and S3 backends work everywhere.
    """


class InstanceLockedError(PersistError, RuntimeError):
    """Another process already runs this live session; ``holder`` says which."""

    def __init__(self, message: str, *, holder: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


class LeaseLostError(PersistError, RuntimeError):
    """A live session's lease in a shared backend expired or was taken: it commits no more.

    Raised by a tick (and every later one) of the instance whose lease could
    not be renewed before its deadline, or whose write the backend refused
    because a newer lease fences it off. ``lease`` names the lock, ``holder``
    says who holds it now when that is known.
    """

    def __init__(
        self, message: str, *, lease: str | None = None, holder: dict[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.lease = lease
        self.holder = holder or {}


class ForeignSymlinkError(PersistError):
    """A symbolic link inside the data root, met on the way to a value or a directory.

    persistkit never follows a link below its root (the root itself may be
    one): nothing was read, written, moved or deleted through it, and its
    target was not touched. ``path`` is the link. Deliberately not an
    ``OSError``: it is a refusal, not a failure of the storage, and retrying
    does not help; replace the link with a real directory or file, or move it
    out of the root. ``persistkit preflight`` lists every such link.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class CrossBackendError(PersistError, RuntimeError):
    """A write the active transaction cannot make atomic: its store is on another backend.

    Raised before the write (nothing is stored, nothing is staged), and when a
    transaction on one backend is opened inside a transaction on another: one
    commit cannot span two backends, so the tick would not be atomic.
    """


class TickCancelledError(PersistError, RuntimeError):
    """``LiveSession.run`` was made to stop while a tick had not finished.

    A second stop signal, or ``stop_grace`` seconds after the first, found tick
    ``tick`` still running, before its commit: it was cancelled, so nothing of
    it was committed, and the session was closed (its locks released). Raised
    from ``run()`` so that the process exits non-zero saying so; the ticks
    before it are committed. ``reason`` says what forced the stop.
    """

    def __init__(self, message: str, *, tick: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.tick = tick
        self.reason = reason


class BlockingCallError(PersistError, RuntimeError):
    """A blocking call (``persistkit.sync``) made from inside a running event loop.

    It would stop that loop until it returned; async code awaits the async API instead.
    """


class ForkedClientError(PersistError, RuntimeError):
    """A forked child called a Redis or S3 backend whose client came from its parent.

    A client does not cross a fork: its connections are the parent's sockets.
    A backend built from a URL (``from_url``, ``open_backend``) builds a client
    of its own in the child, from the same settings, on its first call there;
    one given a ready client object (``RedisBackend(client)``,
    ``S3Backend(client, ...)``) cannot, and raises this before sending
    anything. The parent's connections are left untouched either way. Open the
    backend again in the child with a new client (or from a URL).
    """


class UnreconciledIntentsError(PersistError, RuntimeError):
    """A new order intent for a pair whose intents from before the restart are in doubt.

    Orders that were ``pending``, ``sent`` or ``unknown`` when the bot stopped
    may stand at the exchange: a new order beside them could double the
    position. ``await session.reconcile(lookup)`` asks the exchange and lifts
    this; ``session.tick(allow_unreconciled=True)`` goes ahead anyway. Raised at
    the write, before anything is staged; ``pair`` is ``(symbol, strategy)``
    and ``client_order_ids`` the intents still in doubt (none when the pair's
    intents were lost: corrupt at start and quarantined, so its orders are unknown).
    """

    def __init__(
        self,
        message: str,
        *,
        pair: tuple[str, str] | None = None,
        client_order_ids: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.pair = pair
        self.client_order_ids = client_order_ids


class PairNotInSessionError(PersistError, ValueError):
    """A new order intent, in a live session's tick, for a pair the session does not run.

    A restarted session restores and reconciles the intents of its own pairs
    only (another session of the root may run the others, and send their
    orders): an order of another pair, left in doubt by a crash, would stay in
    doubt through every reconcile. Refused at the write, before anything is
    staged; add the pair to the session. ``pair`` is ``(symbol, strategy)``.
    """

    def __init__(self, message: str, *, pair: tuple[str, str] | None = None) -> None:
        super().__init__(message)
        self.pair = pair


class ResourceLimitError(PersistError, OSError):
    """A process limit ran out (file descriptors: ``ulimit -n``); the message names it."""


class HistoryUnavailableError(PersistError, LookupError):
    """A point-in-time read the backend cannot answer.

    The backend keeps no history (see :attr:`Backend.keeps_history
    <persistkit.backends.Backend.keeps_history>`), or the time asked for lies
    before the oldest change its history still holds (retention pruned it, or
    history began later). Nothing is guessed.
    """


class ReplayConfigError(PersistError, ValueError):
    """A replay (or a sweep) refused before it ran anything; ``code`` says why.

    ``INVALID_WINDOW`` (start not before end), ``TOO_MANY_VARIANTS`` (a sweep of
    more than 200), ``RUN_ID_EXISTS`` (a run id already in the registry),
    ``TOO_MANY_RUNS`` (the target's in-flight limit reached), ``BAD_RUN_ID``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class ReplaySourceError(PersistError, OSError):
    """The recorded source of a replay cannot be read (missing, unreadable, no history).

    The run is recorded as ``aborted``; nothing was replayed into its target.
    """


class BackendError(PersistError, OSError):
    """The storage below persistkit failed."""


class WriteFailedError(BackendError):
    """A write failed before it became visible: the previous value is intact."""


class DurabilityUnknownError(BackendError):
    """The new value is visible but may not survive a power cut.

    The directory fsync after the rename failed. Retrying the fsync would not
    prove anything (the kernel may have dropped the dirty pages and cleared the
    error), so persistkit reports it instead of retrying.
    """


class LockTimeoutError(BackendError, TimeoutError):
    """Another process held a lock longer than the configured timeout; nothing was written."""


class JournalDamagedError(BackendError):
    """A commit journal record failed its check and valid records follow it.

    Nothing was applied or deleted. ``persistkit journal salvage ROOT`` applies
    the records before the damage, keeps the journal in the quarantine and
    reports the records it left out.
    """


class UnsupportedFormatError(BackendError):
    """The root was written in an on-disk format newer than this release reads."""


class SnapshotError(BackendError):
    """No read of every value at one commit point could be made (:meth:`Backend.snapshot`).

    The backend changed under every attempt (commits landed between two reads
    that had to agree); nothing was exported or copied. Run it again at a
    quieter moment, or stop the writers.
    """


class TransientBackendError(BackendError):
    """A failure that may pass: connection refused or reset, timeout, throttling."""


class BackendUnavailableError(TransientBackendError):
    """A transient failure that outlasted the retry policy."""

"""persistkit-sqlite: a persistkit backend that keeps every entity in one SQLite file.

::

    from persistkit_sqlite import SQLiteBackend

    backend = SQLiteBackend("/var/lib/bot/state.db")
    # or, through the ``persistkit.backends`` entry point this package registers:
    backend = persistkit.open_backend("sqlite:///var/lib/bot/state.db")

Storage: table ``entities(namespace, name, data, version)`` keyed by
``(namespace, name)``, where a persistkit key ``a/b/c`` is namespace ``a/b`` and
name ``c``; table ``quarantine`` for values moved aside; table
``persistkit_meta`` for the schema marker and the version counter.

Durability: WAL journal with ``synchronous=FULL``, so a write is fsynced to the
WAL before the call returns (one ``fdatasync`` per write or commit, seen with
strace). SQLite fsyncs the directory when it creates a journal or the WAL,
which also covers the database file created before them; this backend fsyncs
the directory of a new database, and the parent of each directory it creates,
itself as well, so that it does not depend on SQLite being built without
``SQLITE_DISABLE_DIRSYNC``.

Concurrency: every write is one ``BEGIN IMMEDIATE`` transaction. IMMEDIATE takes
SQLite's write lock before the first read, so compare-and-set reads the version
it then replaces with no writer (thread or process) in between, and
:meth:`SQLiteBackend.commit` applies several keys all or nothing. Versions come
from one counter in the database, so a key that is deleted and written again
never reuses a version an old reader may still hold.

Errors: ``database is locked`` once the busy timeout has passed is a
:class:`~persistkit.errors.TransientBackendError` (the store retries it, waiting
asynchronously); a failure before ``COMMIT`` rolls back and is a
:class:`~persistkit.errors.WriteFailedError`; a failure of ``COMMIT`` itself is a
:class:`~persistkit.errors.BackendError` whose outcome is unknown (SQLite may
have written the commit to the WAL before the fsync failed, and recovery would
replay it). Every error is chained to the ``sqlite3`` error with ``from``.

This package uses only persistkit's public API, as any third-party backend must.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Self, TypeVar
from urllib.parse import unquote, urlsplit

from persistkit.backends import ANY_VERSION, Backend, Expected, QuarantineEntry, Versioned
from persistkit.errors import (
    BackendError,
    ConflictError,
    EntityNotFoundError,
    InvalidNameError,
    StoreClosedError,
    TransientBackendError,
    WriteFailedError,
)

__all__ = ["SQLiteBackend"]

__version__ = "0.1.0"

T = TypeVar("T")

PAGE_SIZE = 512
"""Rows fetched per query by the streamed listings (keyset pagination)."""

SCHEMA_VERSION = 1

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entities (
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        data BLOB NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (namespace, name)
    )""",
    # AUTOINCREMENT: the id of a purged entry is never handed out again, so an
    # operator holding an old id cannot restore or purge a different value.
    """CREATE TABLE IF NOT EXISTS quarantine (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        data BLOB NOT NULL,
        reason TEXT NOT NULL,
        quarantined_at REAL NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS persistkit_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    f"INSERT OR IGNORE INTO persistkit_meta VALUES ('schema', {SCHEMA_VERSION}), ('version', 0)",
)

_GET = "SELECT data, version FROM entities WHERE namespace = ? AND name = ?"
_GET_VERSION = "SELECT version FROM entities WHERE namespace = ? AND name = ?"
_UPSERT = (
    "INSERT INTO entities (namespace, name, data, version) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (namespace, name) DO UPDATE SET data = excluded.data, version = excluded.version"
)
_DELETE = "DELETE FROM entities WHERE namespace = ? AND name = ?"
# fetchall() below, not fetchone(): a RETURNING statement left unfinished would
# make the COMMIT fail with "SQL statements in progress".
_NEXT_VERSION = "UPDATE persistkit_meta SET value = value + 1 WHERE key = 'version' RETURNING value"

# Keyset pagination: each page starts after the last row of the previous one,
# along the primary key's index, so a listing never loads or sorts everything.
_NAMES_IN = "SELECT name FROM entities WHERE namespace = ? ORDER BY name LIMIT ?"
_NAMES_IN_AFTER = "SELECT name FROM entities WHERE namespace = ? AND name > ? ORDER BY name LIMIT ?"
_KEYS_BELOW = (
    "SELECT namespace, name FROM entities WHERE namespace >= ? AND namespace < ? "
    "ORDER BY namespace, name LIMIT ?"
)
_KEYS_BELOW_AFTER = (
    "SELECT namespace, name FROM entities WHERE (namespace, name) > (?, ?) AND namespace < ? "
    "ORDER BY namespace, name LIMIT ?"
)
_ALL_KEYS = "SELECT namespace, name FROM entities ORDER BY namespace, name LIMIT ?"
_ALL_KEYS_AFTER = (
    "SELECT namespace, name FROM entities WHERE (namespace, name) > (?, ?) "
    "ORDER BY namespace, name LIMIT ?"
)

_QUARANTINE = (
    "INSERT INTO quarantine (namespace, name, data, reason, quarantined_at) "
    "SELECT namespace, name, data, ?, ? FROM entities WHERE namespace = ? AND name = ?"
)
_QUARANTINED = "SELECT id, namespace, name, reason, quarantined_at FROM quarantine WHERE id > ?"
_QUARANTINED_BELOW = " AND (namespace = ? OR (namespace >= ? AND namespace < ?))"
_QUARANTINED_PAGE = " ORDER BY id LIMIT ?"

_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def _split_key(key: str) -> tuple[str, str]:
    """``"a/b/c"`` -> ``("a/b", "c")``, the rule of the backend contract.

    Written here because persistkit's own helper lives in a private module.
    """
    namespace, _, name = key.rpartition("/")
    return namespace, name


def _join_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def _below(namespace: str) -> tuple[str, str]:
    """Bounds of the namespaces strictly below ``namespace``: ``[ns/, ns0)``.

    ``0`` is the character after ``/``, and SQLite's default collation compares
    UTF-8 bytes, so this range is exactly the strings that start with ``ns/``.
    """
    return f"{namespace}/", f"{namespace}0"


def _is_busy(exc: sqlite3.Error) -> bool:
    # The low byte is the primary code; extended ones (SQLITE_BUSY_SNAPSHOT...) keep it.
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _BUSY_CODES


def _not_text(what: str, exc: UnicodeEncodeError) -> InvalidNameError:
    # SQLite stores keys as UTF-8 text; a lone surrogate has no UTF-8 form.
    return InvalidNameError(
        f"cannot {what!a}: a key or reason is not valid unicode text ({exc}); nothing was changed"
    )


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _entry_rowid(entry_id: str) -> int:
    """The row of a quarantine entry id; a string this backend never issued is refused."""
    if not (entry_id.isascii() and entry_id.isdigit()) or str(int(entry_id)) != entry_id:
        raise InvalidNameError(f"{entry_id!r} is not a quarantine entry id of this backend")
    return int(entry_id)


def _check_expected(
    connection: sqlite3.Connection, key: str, namespace: str, name: str, expect: Expected
) -> None:
    row = connection.execute(_GET_VERSION, (namespace, name)).fetchone()
    if expect is None:
        if row is not None:
            raise ConflictError(f"{key} exists already (create-only write)", key=key)
    elif row is None:
        raise ConflictError(f"{key} was removed since version {expect}", key=key)
    elif str(row[0]) != expect:
        raise ConflictError(f"{key} changed since version {expect}", key=key)


def _next_version(connection: sqlite3.Connection) -> int:
    version: int = connection.execute(_NEXT_VERSION).fetchall()[0][0]
    return version


class SQLiteBackend(Backend):
    """Entities in one SQLite database file at ``path`` (made absolute at construction).

    ``busy_timeout`` (seconds) is how long one call waits for another
    connection's write lock before it raises
    :class:`~persistkit.errors.TransientBackendError`. Keep it short: the wait
    blocks the calling thread, while the store's retries of a transient error
    wait without blocking the event loop.

    The database is opened on first use, not by the constructor.
    """

    scheme = "sqlite"

    # Every call runs inline on the caller's thread rather than in
    # asyncio.to_thread. Inline, no call suspends while it holds the
    # connection, so writes apply in call order without the store queueing
    # them, and a cancelled task can never leave a transaction half-way (with a
    # thread, the worker would go on committing after its caller was
    # cancelled). The price is that the event loop waits for the WAL's fsync,
    # and for up to ``busy_timeout`` when another process holds the write lock.
    # Speed did not decide it: the README has the measurement.
    applies_in_call_order = True

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 0.5) -> None:
        if not busy_timeout >= 0:
            raise ValueError(f"busy_timeout must be >= 0 seconds, not {busy_timeout!r}")
        # Absolute now, so that a later chdir does not move the data.
        self.path = os.path.abspath(os.fspath(path))
        self.busy_timeout = busy_timeout
        # One connection, used by one thread at a time: the sqlite3 module does
        # not serialise calls from several threads on one connection.
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> Self:
        """``sqlite:///abs/path.db`` (or ``sqlite:relative/path.db``), like ``file://`` URLs."""
        parts = urlsplit(url)
        if parts.scheme.lower() != cls.scheme:
            raise InvalidNameError(f"{url!r} is not a sqlite:// URL")
        if parts.netloc not in ("", "localhost"):
            raise InvalidNameError(
                f"sqlite URL {url!r} names a host; only local files are supported"
            )
        if parts.query or parts.fragment:
            raise InvalidNameError(f"sqlite URL {url!r} has options; none are supported")
        path = unquote(parts.path)
        if not path or path.endswith("/"):
            raise InvalidNameError(f"sqlite URL {url!r} names no database file")
        return cls(path)

    @property
    def url(self) -> str:
        return f"sqlite://{self.path}"

    def __repr__(self) -> str:
        return f"SQLiteBackend({self.path!r})"

    # -- the connection ------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """The open connection; call with ``self._lock`` held."""
        if self._closed:
            raise StoreClosedError(f"{self!r} is closed")
        if self._connection is None:
            self._connection = self._open_database()
        return self._connection

    def _open_database(self) -> sqlite3.Connection:
        directory = os.path.dirname(self.path)
        try:
            self._make_directories(directory)
            is_new = not os.path.exists(self.path)
        except OSError as exc:
            raise BackendError(f"cannot create the directory of {self.path}: {exc}") from exc
        try:
            connection = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # transactions are begun and committed explicitly
                check_same_thread=False,  # calls may come from any thread, under self._lock
            )
        except sqlite3.Error as exc:
            raise self._mapped(exc, f"cannot open {self.path}", BackendError) from exc
        try:
            self._prepare(connection)
            if is_new:
                _fsync_dir(directory)
        except BaseException as exc:
            connection.close()
            if isinstance(exc, sqlite3.Error):
                raise self._mapped(exc, f"cannot open {self.path}", BackendError) from exc
            if isinstance(exc, OSError) and not isinstance(exc, BackendError):
                raise BackendError(
                    f"created {self.path} but cannot fsync its directory: {exc}"
                ) from exc
            raise
        return connection

    @staticmethod
    def _make_directories(directory: str) -> None:
        """Create ``directory`` and missing parents, each parent fsynced after the mkdir."""
        missing = []
        while not os.path.isdir(directory):
            missing.append(directory)
            parent = os.path.dirname(directory)
            if parent == directory:
                break
            directory = parent
        for path in reversed(missing):
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
            _fsync_dir(os.path.dirname(path))

    def _prepare(self, connection: sqlite3.Connection) -> None:
        # Checked before journal_mode=WAL, which would change someone else's file.
        self._refuse_foreign(connection)
        # WAL is stored in the file; synchronous is per connection. Together
        # they make COMMIT return only once the WAL is on disk.
        connection.execute("PRAGMA journal_mode=WAL").fetchall()
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("BEGIN IMMEDIATE")
        try:
            self._refuse_foreign(connection)  # again, now that no one else can write
            for statement in _SCHEMA:
                connection.execute(statement)
            (schema,) = connection.execute(
                "SELECT value FROM persistkit_meta WHERE key = 'schema'"
            ).fetchone()
            if schema != SCHEMA_VERSION:
                raise BackendError(
                    f"{self.path} has persistkit-sqlite schema {schema}; "
                    f"this version reads schema {SCHEMA_VERSION}"
                )
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def _refuse_foreign(self, connection: sqlite3.Connection) -> None:
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if tables and "persistkit_meta" not in tables:
            raise BackendError(
                f"{self.path} is an SQLite database of something else "
                f"(tables: {', '.join(sorted(tables))}); refusing to add persistkit's tables"
            )

    def _mapped(
        self, exc: sqlite3.Error, message: str, failure: type[BackendError]
    ) -> BackendError:
        if _is_busy(exc):
            return TransientBackendError(
                f"{message}: {exc} (another connection held the lock for longer "
                f"than busy_timeout={self.busy_timeout}s); nothing was changed"
            )
        return failure(f"{message}: {exc}")

    def _query(self, what: str, sql: str, parameters: tuple[object, ...]) -> list[Any]:
        """Rows of one read statement; it sees only committed data."""
        with self._lock:
            connection = self._connect()
            try:
                return connection.execute(sql, parameters).fetchall()
            except sqlite3.Error as exc:
                raise self._mapped(exc, f"cannot {what}", BackendError) from exc
            except UnicodeEncodeError as exc:
                raise _not_text(what, exc) from exc

    def _write(self, what: str, change: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``change`` in one IMMEDIATE transaction: all of it is committed, or nothing."""
        with self._lock:
            connection = self._connect()
            try:
                connection.execute("BEGIN IMMEDIATE")
                result = change(connection)
            except BaseException as exc:
                self._roll_back(connection)
                if isinstance(exc, sqlite3.Error):
                    raise self._mapped(
                        exc, f"cannot {what}; the previous value is kept", WriteFailedError
                    ) from exc
                if isinstance(exc, UnicodeEncodeError):
                    raise _not_text(what, exc) from exc
                raise
            try:
                connection.execute("COMMIT")
            except sqlite3.Error as exc:
                # SQLite leaves the transaction open after a busy COMMIT and
                # rolls it back itself after an I/O error.
                self._roll_back(connection)
                if _is_busy(exc):
                    raise self._mapped(exc, f"cannot {what}", WriteFailedError) from exc
                raise BackendError(
                    f"committing ({what}) failed: {exc}; the previous value is visible, "
                    "but whether the new one reappears after a restart is unknown"
                ) from exc
            return result

    def _roll_back(self, connection: sqlite3.Connection) -> None:
        if not connection.in_transaction:
            return
        try:
            connection.execute("ROLLBACK")
        except sqlite3.Error:
            # Closing a connection rolls its transaction back; the next call reopens.
            self._connection = None
            connection.close()

    # -- single values ---------------------------------------------------------------

    async def get(self, key: str) -> Versioned | None:
        rows = self._query(f"read {key}", _GET, _split_key(key))
        return Versioned(rows[0][0], str(rows[0][1])) if rows else None

    async def get_many(self, keys: Iterable[str]) -> list[Versioned | None]:
        keys = list(keys)
        found: dict[tuple[str, str], Versioned] = {}
        by_namespace: dict[str, list[str]] = {}
        for key in keys:
            namespace, name = _split_key(key)
            by_namespace.setdefault(namespace, []).append(name)
        for namespace, names in by_namespace.items():
            for start in range(0, len(names), PAGE_SIZE):
                chunk = names[start : start + PAGE_SIZE]
                marks = ", ".join("?" * len(chunk))
                rows = self._query(
                    f"read {len(keys)} keys",
                    f"SELECT name, data, version FROM entities "
                    f"WHERE namespace = ? AND name IN ({marks})",
                    (namespace, *chunk),
                )
                for name, data, version in rows:
                    found[namespace, name] = Versioned(data, str(version))
        return [found.get(_split_key(key)) for key in keys]

    async def put(self, key: str, data: bytes, *, expect: Expected = ANY_VERSION) -> str:
        namespace, name = _split_key(key)

        def store(connection: sqlite3.Connection) -> str:
            if expect is not ANY_VERSION:
                _check_expected(connection, key, namespace, name, expect)
            version = _next_version(connection)
            connection.execute(_UPSERT, (namespace, name, data, version))
            return str(version)

        return self._write(f"write {key}", store)

    async def delete(self, key: str, *, expect: Expected = ANY_VERSION) -> bool:
        namespace, name = _split_key(key)

        def remove(connection: sqlite3.Connection) -> bool:
            if expect is not ANY_VERSION:
                _check_expected(connection, key, namespace, name, expect)
            return connection.execute(_DELETE, (namespace, name)).rowcount > 0

        return self._write(f"remove {key}", remove)

    # -- listing -----------------------------------------------------------------------

    async def scan(self, namespace: str, *, recursive: bool = False) -> AsyncIterator[str]:
        what = f"list {namespace or 'the root'}"
        if recursive and not namespace:
            rows = self._query(what, _ALL_KEYS, (PAGE_SIZE,))
            while rows:
                for space, name in rows:
                    yield _join_key(space, name)
                if len(rows) < PAGE_SIZE:
                    return
                await asyncio.sleep(0)  # a long listing must not starve the loop
                rows = self._query(what, _ALL_KEYS_AFTER, (*rows[-1], PAGE_SIZE))
            return
        rows = self._query(what, _NAMES_IN, (namespace, PAGE_SIZE))
        while rows:
            for (name,) in rows:
                yield _join_key(namespace, name)
            if len(rows) < PAGE_SIZE:
                break
            await asyncio.sleep(0)
            rows = self._query(what, _NAMES_IN_AFTER, (namespace, rows[-1][0], PAGE_SIZE))
        if not recursive:
            return
        low, high = _below(namespace)
        rows = self._query(what, _KEYS_BELOW, (low, high, PAGE_SIZE))
        while rows:
            for space, name in rows:
                yield _join_key(space, name)
            if len(rows) < PAGE_SIZE:
                return
            await asyncio.sleep(0)
            rows = self._query(what, _KEYS_BELOW_AFTER, (*rows[-1], high, PAGE_SIZE))

    # -- atomic commit of several keys ---------------------------------------------------

    async def commit(self, writes: Mapping[str, bytes | None]) -> None:
        upserts: list[tuple[str, str, bytes]] = []
        deletes: list[tuple[str, str]] = []
        for key, data in writes.items():
            if data is None:
                deletes.append(_split_key(key))
            else:
                upserts.append((*_split_key(key), data))
        if not writes:
            return

        def apply(connection: sqlite3.Connection) -> None:
            # One version for the whole commit: each key's version still changes,
            # and the counter stays one row update per transaction.
            version = _next_version(connection)
            connection.executemany(_UPSERT, [(*row, version) for row in upserts])
            connection.executemany(_DELETE, deletes)

        self._write(f"commit {len(writes)} writes", apply)

    # -- quarantine ------------------------------------------------------------------------

    async def quarantine(self, key: str, reason: str) -> QuarantineEntry:
        namespace, name = _split_key(key)
        now = time.time()

        def move_aside(connection: sqlite3.Connection) -> QuarantineEntry:
            cursor = connection.execute(_QUARANTINE, (reason, now, namespace, name))
            if cursor.rowcount == 0:
                raise EntityNotFoundError(f"no value at {key} to quarantine")
            connection.execute(_DELETE, (namespace, name))
            return QuarantineEntry(str(cursor.lastrowid), key, reason, now)

        return self._write(f"quarantine {key}", move_aside)

    async def list_quarantine(self, namespace: str = "") -> AsyncIterator[QuarantineEntry]:
        sql = _QUARANTINED + (_QUARANTINED_BELOW if namespace else "") + _QUARANTINED_PAGE
        within = (namespace, *_below(namespace)) if namespace else ()
        after = 0
        while True:
            rows = self._query("list the quarantine", sql, (after, *within, PAGE_SIZE))
            for row_id, space, name, reason, quarantined_at in rows:
                yield QuarantineEntry(str(row_id), _join_key(space, name), reason, quarantined_at)
            if len(rows) < PAGE_SIZE:
                return
            after = rows[-1][0]
            await asyncio.sleep(0)

    async def read_quarantined(self, entry_id: str) -> bytes:
        rows = self._query(
            f"read quarantine entry {entry_id}",
            "SELECT data FROM quarantine WHERE id = ?",
            (_entry_rowid(entry_id),),
        )
        if not rows:
            raise EntityNotFoundError(f"no quarantine entry {entry_id!r}")
        data: bytes = rows[0][0]
        return data

    async def restore(self, entry_id: str, *, overwrite: bool = False) -> str:
        row_id = _entry_rowid(entry_id)

        def put_back(connection: sqlite3.Connection) -> str:
            row = connection.execute(
                "SELECT namespace, name, data FROM quarantine WHERE id = ?", (row_id,)
            ).fetchone()
            if row is None:
                raise EntityNotFoundError(f"no quarantine entry {entry_id!r}")
            namespace, name, data = row
            key = _join_key(namespace, name)
            if not overwrite and connection.execute(_GET_VERSION, (namespace, name)).fetchone():
                raise ConflictError(
                    f"{key} has a value again; restore with overwrite to replace it", key=key
                )
            connection.execute(_UPSERT, (namespace, name, data, _next_version(connection)))
            connection.execute("DELETE FROM quarantine WHERE id = ?", (row_id,))
            return key

        return self._write(f"restore quarantine entry {entry_id}", put_back)

    async def purge(self, entry_id: str) -> None:
        row_id = _entry_rowid(entry_id)

        def forget(connection: sqlite3.Connection) -> None:
            if connection.execute("DELETE FROM quarantine WHERE id = ?", (row_id,)).rowcount == 0:
                raise EntityNotFoundError(f"no quarantine entry {entry_id!r}")

        self._write(f"purge quarantine entry {entry_id}", forget)

    # -- operations ----------------------------------------------------------------------

    async def durability_warnings(self) -> list[str]:
        with self._lock:
            connection = self._connect()
            try:
                (journal_mode,) = connection.execute("PRAGMA journal_mode").fetchone()
                (synchronous,) = connection.execute("PRAGMA synchronous").fetchone()
            except sqlite3.Error as exc:
                raise self._mapped(
                    exc, f"cannot read the settings of {self.path}", BackendError
                ) from exc
        warnings = []
        if str(journal_mode).lower() in ("off", "memory"):
            warnings.append(
                f"{self.path}: journal_mode={journal_mode}, a crash mid-commit can corrupt it"
            )
        if synchronous < 2:  # 2 is FULL, 3 EXTRA
            warnings.append(
                f"{self.path}: synchronous={synchronous} (below FULL), "
                "an acknowledged write may be lost in a power cut"
            )
        return warnings

    async def aclose(self) -> None:
        with self._lock:
            self._closed = True
            connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except sqlite3.Error as exc:
                raise self._mapped(exc, f"cannot close {self.path}", BackendError) from exc

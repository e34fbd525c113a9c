"""The Redis backend: one Redis string per entity, on one server or a Redis Cluster.

Key layout (``prefix`` defaults to ``persistkit``)::

    {prefix}:{{namespace}}:{name}                  one entity's bytes (a string)
        persistkit:{signal/BTCUSDT_trend}:BTCUSDT
        persistkit:{/}:name                        a key in the root namespace
    {prefix}:quarantine:{{namespace}}:{name}@{stamp}
        a hash (data, key, reason, at): a value moved aside, kept until purge()
    {prefix}:commit:{{commit id}}
        a hash: a cross-slot commit on a cluster, while it is being applied

The namespace is the key's hash tag, so an entity and its quarantined copies
live in one cluster slot (quarantine and restore are single Lua scripts), and
listing a namespace is one ``SCAN MATCH {prefix}:{{namespace}}:*`` per master;
a recursive listing matches ``{prefix}:{{namespace}[}/]*``. ``KEYS`` is never
used. Values are exactly the bytes the file backend writes to its ``.json``
files, so state can be copied between backends byte for byte.

Versions are the SHA-1 of the value (``redis.sha1hex`` inside the scripts,
``hashlib`` on the client), like the file backend's content digest: an ABA
with different content can never pass a compare-and-set, and one with the same
content is harmless because the value the caller read is the value stored.
An unconditional write is a plain ``SET``, a create-only write ``SET NX``, a
compare-and-set or conditional delete one Lua script.

``commit(writes)`` is one Lua script when every key hashes to one slot, which
is always the case on a single server: all or nothing, one MULTI/EXEC block in
the AOF. On a cluster a commit whose keys span slots is first written whole as
one hash ``{prefix}:commit:{{id}}`` (one command, durable with ``appendfsync
always``), then applied slot by slot (one script per slot), then the record is
deleted. The record, not the entity keys, is what makes it atomic, so a reader
can see part of such a commit while it is applied. If the server goes away
after the record was written, the same backend finishes the commit before its
next operation (a record whose own write failed is deleted at the next
commit instead: the caller was told that commit failed); if the process dies,
the next startup replays the record (:meth:`RedisBackend.recover_commits`, run
by the first ``clean_orphans``) once it is older than ``commit_grace`` seconds,
so a commit still in flight in a live process is never replayed under it. Such
a replay restores the whole tick over whatever another process wrote to those
keys since the crash.

:meth:`RedisBackend.snapshot` reads every value at one point: one read-only
script on one server; on a cluster, two reads that agree, with the records of
cross-slot commits not yet applied laid over them.

Errors: connection refused or reset, timeouts, ``LOADING``, ``READONLY``
and cluster ``MOVED``/``ASK``/``TRYAGAIN``/``CLUSTERDOWN`` raise
:class:`~persistkit.errors.TransientBackendError`, which the store retries with
its :class:`~persistkit.RetryPolicy`; everything else is a
:class:`~persistkit.errors.BackendError` (a :class:`WriteFailedError` when a
write was refused), never retried. Clients built by :meth:`RedisBackend.from_url`
have redis-py's own retries turned off, so the store's policy is the only one;
a client you pass in keeps whatever retries you gave it. (redis-py still
follows ``MOVED``/``ASK`` redirections itself: that is routing, not retrying.)

A compare-and-set whose reply is lost to a dropped connection may have been
applied: its retry then reports :class:`~persistkit.errors.ConflictError`, and
``update_value`` re-reads and applies its change again.

:meth:`RedisBackend.durability_warnings` reads ``appendonly`` and
``appendfsync`` on every master (``CONFIG GET``) and warns, once in the log and
in every store's ``InitReport.warnings``, when an acknowledged write could be
lost, or when ``CONFIG`` is disabled and durability cannot be checked.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    NoPermissionError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from persistkit.backends.base import (
    ANY_VERSION,
    Backend,
    Expected,
    QuarantineEntry,
    Snapshot,
    Versioned,
    join_key,
    lay_commits_over,
)
from persistkit.errors import (
    BackendError,
    ConflictError,
    EntityNotFoundError,
    InvalidNameError,
    StoreClosedError,
    TransientBackendError,
    WriteFailedError,
)

__all__ = ["DEFAULT_PREFIX", "RedisBackend", "redis_version"]

logger = logging.getLogger("persistkit")

DEFAULT_PREFIX = "persistkit"
_ROOT_TAG = "/"  # the hash tag of the root namespace: an empty tag would hash the whole key
_SCAN_COUNT = 1000
_GLOB_SPECIAL = str.maketrans({c: f"\\{c}" for c in "*?[]\\"})
_PREFIX_FORBIDDEN = frozenset("{}*?[]\\ \t\r\n")

RedisClient = aioredis.Redis | RedisCluster


def redis_version(data: bytes) -> str:
    """The version of stored bytes: what ``redis.sha1hex`` gives inside the scripts."""
    return hashlib.sha1(data).hexdigest()


# Scripts start with a shebang so that Redis 7 treats them as writing scripts
# from the start: refused whole under OOM instead of failing half-way.
_CAS_PUT = """#!lua
local current = redis.call('GET', KEYS[1])
if (not current) or redis.sha1hex(current) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""

_CONDITIONAL_DELETE = """#!lua
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if current then return -1 end
  return 0
end
if (not current) or redis.sha1hex(current) ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
return 1
"""

# ARGV[1] has one letter per key: 's' sets it to ARGV[i + 1], 'd' deletes it.
_COMMIT = """#!lua
local ops = ARGV[1]
for i, key in ipairs(KEYS) do
  if string.sub(ops, i, i) == 's' then
    redis.call('SET', key, ARGV[i + 1])
  else
    redis.call('DEL', key)
  end
end
return #KEYS
"""

_QUARANTINE = """#!lua
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
redis.call('HSET', KEYS[2], 'data', current, 'key', ARGV[1], 'reason', ARGV[2], 'at', ARGV[3])
redis.call('DEL', KEYS[1])
return 1
"""

_RESTORE = """#!lua
local data = redis.call('HGET', KEYS[1], 'data')
if not data then return -1 end
if ARGV[1] ~= '1' and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[2], data)
redis.call('DEL', KEYS[1])
return 1
"""


# Every value under one head, read in one script: one point in the server's history.
_SNAPSHOT = """#!lua flags=no-writes
local found, out, cursor = {}, {}, "0"
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = page[1]
  for _, key in ipairs(page[2]) do
    if not found[key] then
      found[key] = true
      local value = redis.call('GET', key)
      if value then
        out[#out + 1] = key
        out[#out + 1] = value
      end
    end
  end
until cursor == "0"
return out
"""


def _record_writes(record: Mapping[bytes, bytes]) -> list[tuple[str, bytes | None]]:
    """The writes of a cross-slot commit record: (Redis key, bytes or ``None`` to delete)."""
    writes: list[tuple[str, bytes | None]] = []
    for field, data in record.items():
        op, redis_key = field[:1], field[1:].decode("utf-8", "surrogateescape")
        if op in (b"s", b"d"):
            writes.append((redis_key, data if op == b"s" else None))
    return writes


class _Script:
    """A Lua script run with EVALSHA, sent once with EVAL where the server lacks it."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # EVAL also caches the script on that server (a restarted one has lost it).
            return await client.eval(self.source, len(keys), *keys, *args)


_CAS_PUT_SCRIPT = _Script(_CAS_PUT)
_SNAPSHOT_SCRIPT = _Script(_SNAPSHOT)
_CONDITIONAL_DELETE_SCRIPT = _Script(_CONDITIONAL_DELETE)
_COMMIT_SCRIPT = _Script(_COMMIT)
_QUARANTINE_SCRIPT = _Script(_QUARANTINE)
_RESTORE_SCRIPT = _Script(_RESTORE)

# Errors that say "try again": the server is down, restarting, loading its AOF,
# failing over, or the cluster is moving slots.
_TRANSIENT: tuple[type[BaseException], ...] = (
    RedisConnectionError,  # refused, reset, LOADING (BusyLoadingError)
    RedisTimeoutError,
    OSError,
    ClusterDownError,  # CLUSTERDOWN, MASTERDOWN
    TryAgainError,
    AskError,  # MOVED and ASK that outlived redis-py's redirections
    ReadOnlyError,  # a former master that became a replica
    SlotNotCoveredError,
)
_NOT_TRANSIENT: tuple[type[BaseException], ...] = (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
)
_REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)


def _translate(exc: BaseException, what: str, *, write: bool = False) -> BackendError:
    """redis-py's error as persistkit's (raise it ``from exc``)."""
    message = f"redis: {what}: {type(exc).__name__}: {exc}"
    if isinstance(exc, _TRANSIENT) and not isinstance(exc, _NOT_TRANSIENT):
        return TransientBackendError(message)
    if type(exc) is RedisClusterException and "cannot be connected" in str(exc):
        # Every startup node refused: redis-py says so with its base exception only.
        return TransientBackendError(message)
    return WriteFailedError(message) if write else BackendError(message)


def _glob(text: str) -> str:
    return text.translate(_GLOB_SPECIAL)


class RedisBackend(Backend):
    """Entities as Redis strings; one server (``redis.asyncio.Redis``) or a Redis Cluster.

    ``RedisBackend(client, prefix="persistkit")`` uses a ready client (it must
    return bytes: ``decode_responses=False``); :meth:`from_url` builds one.
    """

    scheme = "redis"

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = DEFAULT_PREFIX,
        commit_grace: float = 30.0,
        _owns_client: bool = False,
        _url: str | None = None,
    ) -> None:
        if not prefix or not _PREFIX_FORBIDDEN.isdisjoint(prefix):
            raise InvalidNameError(
                f"redis key prefix {prefix!r} must be non-empty, without braces, "
                "glob characters or whitespace"
            )
        if client.get_encoder().decode_responses:
            raise ValueError(
                "the redis client decodes responses to str; persistkit stores bytes: "
                "create it with decode_responses=False"
            )
        self._client = client
        # redis-py types its commands for the sync and async clients at once
        # (``Awaitable[T] | T``, some calls untyped); the calls go through an
        # ``Any`` view of the same client instead of a cast at every await.
        self._redis: Any = client
        self.prefix = prefix
        self.commit_grace = commit_grace
        self._owns_client = _owns_client
        self._url = _url or self._describe_client(client, prefix)
        self._value_head = f"{prefix}:{{"
        self._quarantine_head = f"{prefix}:quarantine:{{"
        self._commit_head = f"{prefix}:commit:{{"
        self._durability: list[str] | None = None
        self._recovered = False
        # False until a cluster client is initialised, and again once closed:
        # the one flag every operation checks before its first command.
        self._ready = not isinstance(client, RedisCluster)
        # Cross-slot commits recorded but not applied when commit() failed, with
        # what is left to apply (see _get_ready); and records whose own write
        # failed, to delete if the server stored them after all.
        self._unapplied: dict[str, list[list[tuple[str, bytes | None]]]] = {}
        self._withdraw: set[str] = set()
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> Self:
        """``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS), or
        ``redis+cluster://host:port`` (any node of a cluster). ``?prefix=name``
        sets the key prefix; other query options go to redis-py (for example
        ``socket_timeout``). redis-py's own retries are turned off: the store's
        :class:`~persistkit.RetryPolicy` decides.
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss", "redis+cluster"):
            raise InvalidNameError(f"{url!r} is not a redis://, rediss:// or redis+cluster:// URL")
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefix = next((value for name, value in query if name == "prefix"), DEFAULT_PREFIX)
        rest = urlencode([(name, value) for name, value in query if name != "prefix"])
        options: dict[str, Any] = {
            "retry": Retry(NoBackoff(), 0),
            "socket_timeout": 10.0,
            "socket_connect_timeout": 5.0,
        }
        client: RedisClient
        if scheme == "redis+cluster":
            plain = urlunsplit(("redis", parts.netloc, parts.path, rest, ""))
            client = RedisCluster.from_url(plain, **options)
        else:
            plain = urlunsplit((scheme, parts.netloc, parts.path, rest, ""))
            client = aioredis.Redis.from_url(plain, **options)
        safe_netloc = parts.hostname or ""
        if parts.port is not None:
            safe_netloc = f"{safe_netloc}:{parts.port}"
        if parts.username:
            safe_netloc = f"{parts.username}@{safe_netloc}"
        safe_query = urlencode([("prefix", prefix)]) if prefix != DEFAULT_PREFIX else ""
        safe = urlunsplit((scheme, safe_netloc, parts.path, safe_query, ""))
        return cls(client, prefix=prefix, _owns_client=True, _url=safe)

    @staticmethod
    def _describe_client(client: RedisClient, prefix: str) -> str:
        query = f"?prefix={prefix}" if prefix != DEFAULT_PREFIX else ""
        if isinstance(client, RedisCluster):
            nodes = client.get_nodes() or list(client.nodes_manager.startup_nodes.values())
            where = nodes[0].name if nodes else "?"
            return f"redis+cluster://{where}{query}"
        options = client.connection_pool.connection_kwargs
        scheme = "rediss" if "ssl_context" in options or "ssl_keyfile" in options else "redis"
        if "path" in options:
            return f"unix://{options['path']}?db={options.get('db', 0)}"
        host, port = options.get("host", "localhost"), options.get("port", 6379)
        return f"{scheme}://{host}:{port}/{options.get('db', 0)}{query}"

    @property
    def url(self) -> str:
        return self._url

    @property
    def client(self) -> RedisClient:
        """The redis-py client underneath (for operators; persistkit owns the key layout)."""
        return self._client

    def __repr__(self) -> str:
        return f"RedisBackend({self._url!r})"

    # -- keys ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self!r} is closed")

    async def _get_ready(self) -> None:
        self._check_open()
        # redis-py 8.1's async cluster client, used cold by many tasks at once,
        # mixes up connections ("Connection closed by server", "'NoneType' object
        # has no attribute 'writelines'"); one initialize() before the first
        # command avoids it.
        try:
            await self._redis.initialize()
            # A commit recorded here but not applied (the server went away half
            # way) is committed: finish it before anything else touches its keys.
            for record, groups in list(self._unapplied.items()):
                await self._apply_record(record, groups)
                self._unapplied.pop(record, None)
        except _REDIS_ERRORS as exc:
            raise _translate(exc, "cluster discovery or an unfinished commit") from exc
        self._ready = True

    def _tag(self, namespace: str) -> str:
        if "{" in namespace or "}" in namespace:
            raise InvalidNameError(f"namespace {namespace!r} contains a brace (the hash tag)")
        return namespace or _ROOT_TAG

    def _value_key(self, key: str) -> str:
        namespace, _, name = key.rpartition("/")
        if "{" in namespace or "}" in namespace:
            raise InvalidNameError(f"key {key!r} has a brace in its namespace (the hash tag)")
        return f"{self._value_head}{namespace or _ROOT_TAG}}}:{name}"

    def _key_of(self, raw: bytes | str, head: str) -> tuple[str, str] | None:
        """``(namespace, rest)`` of a Redis key under ``head``; ``None`` if not ours."""
        text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
        if not text.startswith(head):
            return None
        close = text.find("}:", len(head))
        if close < 0:
            return None
        tag = text[len(head) : close]
        return ("" if tag == _ROOT_TAG else tag), text[close + 2 :]

    def _namespace_pattern(self, head: str, namespace: str, recursive: bool) -> str:
        if not recursive:
            return f"{head}{_glob(self._tag(namespace))}}}:*"
        if not namespace:
            return f"{head}*"
        return f"{head}{_glob(self._tag(namespace))}[}}/]*"

    # -- single values ---------------------------------------------------------------

    async def get(self, key: str) -> Versioned | None:
        if not self._ready:
            await self._get_ready()
        redis_key = self._value_key(key)
        try:
            data = await self._redis.execute_command("GET", redis_key)
        except _REDIS_ERRORS as exc:
            raise _translate(exc, f"GET {key}") from exc
        if data is None:
            return None
        return Versioned(data, redis_version)

    async def get_many(self, keys: Iterable[str]) -> list[Versioned | None]:
        if not self._ready:
            await self._get_ready()
        keys = list(keys)
        if not keys:
            return []
        redis_keys = [self._value_key(key) for key in keys]
        try:
            if isinstance(self._client, RedisCluster):
                values = await self._redis.mget_nonatomic(redis_keys)
            else:
                values = await self._redis.execute_command("MGET", *redis_keys)
        except _REDIS_ERRORS as exc:
            raise _translate(exc, f"MGET of {len(keys)} keys") from exc
        return [None if data is None else Versioned(data, redis_version) for data in values]

    async def put(self, key: str, data: bytes, *, expect: Expected = ANY_VERSION) -> str:
        if not self._ready:
            await self._get_ready()
        redis_key = self._value_key(key)
        try:
            if expect is ANY_VERSION:
                await self._redis.execute_command("SET", redis_key, data)
                applied = True
            elif expect is None:
                applied = bool(await self._redis.execute_command("SET", redis_key, data, "NX"))
            else:
                applied = bool(await _CAS_PUT_SCRIPT(self._redis, [redis_key], [expect, data]))
        except _REDIS_ERRORS as exc:
            raise _translate(exc, f"SET {key}", write=True) from exc
        if not applied:
            if expect is None:
                raise ConflictError(f"{key} exists already (create-only write)", key=key)
            raise ConflictError(f"{key} changed since version {expect}", key=key)
        return redis_version(data)

    async def delete(self, key: str, *, expect: Expected = ANY_VERSION) -> bool:
        if not self._ready:
            await self._get_ready()
        redis_key = self._value_key(key)
        try:
            if expect is ANY_VERSION:
                return bool(await self._redis.execute_command("DEL", redis_key))
            outcome = await _CONDITIONAL_DELETE_SCRIPT(
                self._redis, [redis_key], ["" if expect is None else expect]
            )
        except _REDIS_ERRORS as exc:
            raise _translate(exc, f"DEL {key}", write=True) from exc
        if outcome == -1:
            if expect is None:
                raise ConflictError(f"{key} exists (expected it absent)", key=key)
            raise ConflictError(f"{key} changed since version {expect}", key=key)
        return bool(outcome)

    # -- listing ---------------------------------------------------------------------

    async def _scan_keys(self, pattern: str) -> AsyncIterator[bytes]:
        """Every Redis key matching ``pattern``, once, from every master."""
        # SCAN may return a key twice while the server resizes its table; the
        # set holds key names only, never values.
        seen: set[bytes] = set()
        try:
            async for raw in self._redis.scan_iter(match=pattern, count=_SCAN_COUNT):
                if raw not in seen:
                    seen.add(raw)
                    yield raw
        except _REDIS_ERRORS as exc:
            raise _translate(exc, f"SCAN {pattern}") from exc

    async def scan(self, namespace: str, *, recursive: bool = False) -> AsyncIterator[str]:
        if not self._ready:
            await self._get_ready()
        head = self._value_head
        async for raw in self._scan_keys(self._namespace_pattern(head, namespace, recursive)):
            parsed = self._key_of(raw, head)
            if parsed is not None:
                yield join_key(*parsed)

    # -- quarantine --------------------------------------------------------------------

    def _quarantine_key(self, entry_id: str) -> tuple[str, str]:
        """The Redis key of a quarantine entry and the entity key it came from."""
        namespace, _, stem = entry_id.rpartition("/")
        name, at, stamp = stem.rpartition("@")
        if not at or not name or not stamp or "{" in namespace or "}" in namespace:
            raise EntityNotFoundError(f"{entry_id!r} is not a quarantine entry id")
        tag = namespace or _ROOT_TAG
        return f"{self._quarantine_head}{tag}}}:{stem}", join_key(namespace, name)

    async def quarantine(self, key: str, reason: str) -> QuarantineEntry:
        if not self._ready:
            await self._get_ready()
        namespace, _, name = key.rpartition("/")
        now = time.time()
        entry_id = join_key(namespace, f"{name}@{time.time_ns()}-{secrets.token_hex(3)}")
        quarantine_key, _ = self._quarantine_key(entry_id)
        try:
            moved = await _QUARANTINE_SCRIPT(
                self._redis,
                [self._value_key(key), quarantine_key],
                [key, reason, repr(now)],
            )
        except _REDIS_ERRORS as exc:
            raise _translate(exc, f"quarantine {key}", write=True) from exc
        if not moved:
            raise EntityNotFoundError(f"no value at {key} to quarantine")
        return QuarantineEntry(entry_id, key, reason, now)

    async def list_quarantine(self, namespace: str = "") -> AsyncIterator[QuarantineEntry]:
        if not self._ready:
            await self._get_ready()
        head = self._quarantine_head
        pattern = self._namespace_pattern(head, namespace, recursive=True)
        async for raw in self._scan_keys(pattern):
            parsed = self._key_of(raw, head)
            if parsed is None:
                continue
            try:
                key, reason, at = await self._redis.hmget(raw, ["key", "reason", "at"])
            except _REDIS_ERRORS as exc:
                raise _translate(exc, f"HMGET {raw!r}") from exc
            if key is None:
                continue  # restored or purged while we listed
            yield QuarantineEntry(
                join_key(*parsed), key.decode(), (reason or b"").decode(), float(at or 0)
            )

    async def read_quarantined(self, entry_id: str) -> bytes:
        if not self._ready:
            await self._get_ready()
        quarantine_key, _ = self._quarantine_key(entry_id)
        try:
            data = await self._redis.hget(quarantine_key, "data")
        except _REDIS_ERRORS as exc:
            raise _translate(exc, f"HGET {quarantine_key}") from exc
        if data is None:
            raise EntityNotFoundError(f"no quarantine entry {entry_id!r}")
        return bytes(data)

    async def restore(self, entry_id: str, *, overwrite: bool = False) -> str:
        if not self._ready:
            await self._get_ready()
        quarantine_key, key = self._quarantine_key(entry_id)
        try:
            outcome = await _RESTORE_SCRIPT(
                self._redis,
                [quarantine_key, self._value_key(key)],
                ["1" if overwrite else "0"],
            )
        except _REDIS_ERRORS as exc:
            raise _translate(exc, f"restore {entry_id}", write=True) from exc
        if outcome == -1:
            raise EntityNotFoundError(f"no quarantine entry {entry_id!r}")
        if outcome == 0:
            raise ConflictError(f"{key} holds a newer value; restore with overwrite=True", key=key)
        return key

    async def purge(self, entry_id: str) -> None:
        if not self._ready:
            await self._get_ready()
        quarantine_key, _ = self._quarantine_key(entry_id)
        try:
            removed = await self._redis.execute_command("DEL", quarantine_key)
        except _REDIS_ERRORS as exc:
            raise _translate(exc, f"DEL {quarantine_key}", write=True) from exc
        if not removed:
            raise EntityNotFoundError(f"no quarantine entry {entry_id!r}")

    # -- atomic commit -------------------------------------------------------------------

    async def _apply(self, writes: Sequence[tuple[str, bytes | None]]) -> None:
        """One script: atomic when every key lies in one slot (always, on one server)."""
        ops = "".join("d" if data is None else "s" for _, data in writes)
        await _COMMIT_SCRIPT(
            self._redis,
            [redis_key for redis_key, _ in writes],
            [ops, *(b"" if data is None else data for _, data in writes)],
        )

    async def commit(self, writes: Mapping[str, bytes | None]) -> None:
        """Apply ``writes`` (``None`` deletes) all or nothing; see the module docstring."""
        if not self._ready:
            await self._get_ready()
        if not writes:
            return
        batch = [(self._value_key(key), data) for key, data in writes.items()]
        if self._withdraw:
            await self._withdraw_records()
        try:
            if not isinstance(self._client, RedisCluster):
                await self._apply(batch)
                return
            by_slot: dict[int, list[tuple[str, bytes | None]]] = {}
            for item in batch:
                by_slot.setdefault(self._client.keyslot(item[0]), []).append(item)
            if len(by_slot) == 1:
                await self._apply(batch)
                return
            record = f"{self._commit_head}{time.time_ns()}-{secrets.token_hex(6)}}}"
            fields: list[bytes | str] = ["at", repr(time.time())]
            for redis_key, data in batch:
                fields += [f"d{redis_key}", b""] if data is None else [f"s{redis_key}", data]
            try:
                await self._redis.execute_command("HSET", record, *fields)
            except _REDIS_ERRORS:
                # The server may have stored the record and lost only the reply.
                # The caller is told the commit failed, so the record is withdrawn.
                self._withdraw.add(record)
                raise
            groups = list(by_slot.values())
            try:
                await self._apply_record(record, groups)
            except _REDIS_ERRORS:
                self._unapplied[record] = groups
                self._ready = False  # _get_ready finishes it before the next operation
                raise
        except _REDIS_ERRORS as exc:
            raise _translate(exc, f"commit of {len(batch)} keys", write=True) from exc

    async def _withdraw_records(self) -> None:
        for record in list(self._withdraw):
            try:
                await self._redis.execute_command("DEL", record)
            except _REDIS_ERRORS:
                continue  # its master is still away: try again at the next commit
            self._withdraw.discard(record)

    async def _apply_record(
        self, record: str, groups: list[list[tuple[str, bytes | None]]]
    ) -> None:
        await asyncio.gather(*(self._apply(group) for group in groups))
        await self._redis.execute_command("DEL", record)

    # -- snapshot -----------------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        """Every value at one point: one read-only script on one server.

        A script runs alone, so no commit lands between its first read and its
        last (it blocks the server for as long as it reads, which for a bot's
        state is milliseconds). On a cluster no script spans the masters: two
        reads must agree (see :meth:`Backend.snapshot`), and cross-slot commits
        recorded and not fully applied are laid over the values, pending.
        """
        if isinstance(self._client, RedisCluster):
            return await super().snapshot()
        if not self._ready:
            await self._get_ready()
        head = self._value_head
        try:
            found = await _SNAPSHOT_SCRIPT(self._redis, [], [f"{_glob(head)}*"])
        except _REDIS_ERRORS as exc:
            raise _translate(exc, "snapshot script") from exc
        values: dict[str, bytes] = {}
        for raw, data in zip(found[::2], found[1::2], strict=True):
            parsed = self._key_of(raw, head)
            if parsed is not None:
                values[join_key(*parsed)] = data
        return Snapshot(dict(sorted(values.items())), point="one script on one server")

    async def _read_committed(self) -> Snapshot:
        stored = await self._read_stored()
        records = await self._commit_records()
        committed: dict[str, bytes | None] = {}
        committed_at: dict[str, float] = {}
        for at, _, writes in records:  # oldest first, as a start replays them
            for redis_key, data in writes:
                parsed = self._key_of(redis_key, self._value_head)
                if parsed is not None:
                    committed[join_key(*parsed)] = data
                    committed_at[join_key(*parsed)] = at
        return lay_commits_over(stored, committed, committed_at)

    async def _commit_records(self) -> list[tuple[float, str, list[tuple[str, bytes | None]]]]:
        """Cross-slot commit records present now: (time, name, writes), oldest first."""
        records = []
        async for raw in self._scan_keys(f"{_glob(self._commit_head)}*"):
            try:
                record = await self._redis.hgetall(raw)
            except _REDIS_ERRORS as exc:
                raise _translate(exc, f"read of {raw!r}") from exc
            if record:
                name = raw.decode("utf-8", "surrogateescape")
                records.append((float(record.get(b"at", b"0")), name, _record_writes(record)))
        return sorted(records, key=lambda item: (item[0], item[1]))

    async def recover_commits(self, *, older_than: float | None = None) -> list[str]:
        """Finish cross-slot commits a crash interrupted; returns the records replayed.

        Only records older than ``older_than`` seconds (default ``commit_grace``)
        are replayed, so that a commit another process is applying right now is
        left to it.
        """
        self._check_open()
        if not isinstance(self._client, RedisCluster):
            return []  # one server: every commit is one script, nothing to finish
        if not self._ready:
            await self._get_ready()
        cutoff = time.time() - (self.commit_grace if older_than is None else older_than)
        replayed: list[str] = []
        async for raw in self._scan_keys(f"{_glob(self._commit_head)}*"):
            try:
                record = await self._redis.hgetall(raw)
                if not record or float(record.get(b"at", b"0")) > cutoff:
                    continue
                by_slot: dict[int, list[tuple[str, bytes | None]]] = {}
                for redis_key, data in _record_writes(record):
                    by_slot.setdefault(self._client.keyslot(redis_key), []).append(
                        (redis_key, data)
                    )
                await asyncio.gather(*(self._apply(group) for group in by_slot.values()))
                await self._redis.execute_command("DEL", raw)
            except _REDIS_ERRORS as exc:
                raise _translate(exc, f"replay of {raw!r}", write=True) from exc
            name = raw.decode("utf-8", "surrogateescape")
            logger.warning("persistkit: replayed the interrupted commit %s", name)
            replayed.append(name)
        return replayed

    async def clean_orphans(self, namespace: str, *, dry_run: bool = False) -> list[str]:
        """Replay interrupted cross-slot commits, once per backend (no temp files in Redis)."""
        if dry_run or self._recovered:
            return []
        replayed = await self.recover_commits()
        self._recovered = True
        return replayed

    # -- operations --------------------------------------------------------------------

    async def _node_settings(self) -> list[tuple[str, dict[str, str] | str]]:
        """``(node, settings)`` per master; ``settings`` is why it could not be read."""
        self._check_open()
        out: list[tuple[str, dict[str, str] | str]] = []
        if isinstance(self._client, RedisCluster):
            await self._client.initialize()
            targets: list[tuple[str, Any]] = [
                (node.name, node) for node in self._client.get_primaries()
            ]
        else:
            targets = [(self._url, self._client)]
        for name, target in targets:
            try:
                reply = await target.execute_command("CONFIG GET", "append*")
            except _NOT_TRANSIENT as exc:
                out.append((name, f"{type(exc).__name__}: {exc}"))
                continue
            except ResponseError as exc:  # CONFIG renamed or disabled
                out.append((name, f"{exc}"))
                continue
            except _REDIS_ERRORS as exc:
                raise _translate(exc, "CONFIG GET append*") from exc
            if isinstance(reply, list):  # RESP2 flat list on a raw node connection
                reply = dict(zip(reply[::2], reply[1::2], strict=True))
            out.append(
                (
                    name,
                    {
                        (k.decode() if isinstance(k, bytes) else str(k)): (
                            v.decode() if isinstance(v, bytes) else str(v)
                        )
                        for k, v in reply.items()
                    },
                )
            )
        return out

    async def durability_warnings(self) -> list[str]:
        """Why an acknowledged write might not survive a crash; logged once, at first use."""
        if self._durability is not None:
            return list(self._durability)
        warnings: list[str] = []
        for node, settings in await self._node_settings():
            if isinstance(settings, str):
                warnings.append(
                    f"{node}: durability cannot be checked (CONFIG GET failed: {settings}); "
                    "make sure appendonly is yes and appendfsync is always"
                )
                continue
            if settings.get("appendonly") != "yes":
                warnings.append(
                    f"{node}: appendonly is {settings.get('appendonly')!r}: acknowledged "
                    "writes live in memory until the next snapshot, and a crash loses them"
                )
                continue
            fsync = settings.get("appendfsync")
            if fsync != "always":
                warnings.append(
                    f"{node}: appendfsync is {fsync!r}, not 'always': a crash of the "
                    "machine can lose the last acknowledged writes (about a second with "
                    "'everysec', whatever the OS has not flushed with 'no')"
                )
        if self._durability is None:
            self._durability = warnings
            for warning in warnings:
                logger.warning("persistkit: %s", warning)
        return list(warnings)

    async def aclose(self) -> None:
        """Refuse further use; close the client if :meth:`from_url` made it."""
        if self._closed:
            return
        self._closed = True
        self._ready = False
        if self._owns_client:
            await self._client.aclose()

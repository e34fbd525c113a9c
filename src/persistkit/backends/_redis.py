"""The Redis backend: one Redis string per entity, on one server or a Redis Cluster.

Key layout (``prefix`` defaults to ``persistkit``; ``{...}`` is the hash tag)::

    {prefix}:{{namespace}}:{name}                 one entity's bytes (a string)
        persistkit:{signal/BTCUSDT_trend}:BTCUSDT
        persistkit:{/}:name                       a key in the root namespace
    {prefix}:quarantine:{{namespace}}:{name}@{stamp}
        a hash (data, key, reason, at): a value moved aside, kept until purge()
    {prefix}:receipt:{{namespace}}:{token}        the receipt of a conditional write
    {prefix}:lock:{{namespace}}:{name}            a key locked by a cross-slot commit
    {prefix}:commit:{{commit id}}                 a cross-slot commit's record
    {prefix}:fence:{{namespace}}                  a cluster's fencing watermarks
    {prefix}:lease:{{lock name}}                  a lease (a hash with a TTL)
    {prefix}:lease:{{lock name}}:token            its token counter (never expires)

The namespace is the key's hash tag, so an entity, its quarantined copies, its
lock, its receipts and its fence live in one cluster slot and every operation
on one key is one Lua script. Listing a namespace is one ``SCAN MATCH
{prefix}:{{namespace}}:*`` per master (recursive: ``{prefix}:{{namespace}[}/]*``);
none of persistkit's own keys match. ``KEYS`` is never used. Values are exactly
the bytes the file backend writes to its ``.json`` files, so state can be
copied between backends byte for byte (``persistkit migrate``).

Versions are the SHA-1 of the value (``redis.sha1hex`` inside the scripts,
``hashlib`` on the client), like the file backend's content digest: an ABA
with different content can never pass a compare-and-set, and one with the same
content is harmless because the value the caller read is the value stored.

**Exactly-once conditional writes.** A compare-and-set, create-only write,
conditional delete or commit carries a *write token*
(:class:`~persistkit.backends._write_tokens.WriteTokens`): the script that
applies it also stores a receipt under the token, in the same slot, with a
time-to-live of ``receipt_ttl`` (600 s). A retry of a request whose reply was
lost carries the same token (it is recognised by its content), finds the
receipt, and reports what the first attempt did instead of applying it again
or reporting a conflict with its own value. The TTL bounds the receipts kept
(one small key per conditional write for ten minutes) and outlives by far the
store's retries (its :class:`~persistkit.RetryPolicy` gives up after 30 s); a
retry later than ``0.9 * receipt_ttl`` after its first attempt is refused with
:class:`~persistkit.errors.WriteFailedError` ("outcome unknown") rather than
risk applying twice. A real conflict still raises
:class:`~persistkit.errors.ConflictError`. Unconditional writes carry no token
(on one server they are a plain ``SET`` or ``DEL``).

**Commits.** ``commit(writes, expect=...)`` checks ``expect`` atomically with
the commit (``commit_checks_versions``). When every key hashes to one slot
(always on one server) it is one script: all or nothing, one MULTI/EXEC block
in the AOF. On a cluster, a commit across slots runs in two phases:

1. its record ``{prefix}:commit:{{id}}`` is created ``pending`` with every
   entry (the id is the commit's write token);
2. slot by slot, in ascending slot order, one script checks each key's
   version and fence and locks the keys with the commit id (a key locked by
   another commit is waited for; the global order means two commits never
   wait on each other);
3. the record is decided ``committed`` in one script: that is the commit
   point; an abort (a conflict, a fence) decides it ``aborted`` instead;
4. each slot's keys still locked by this commit are written and unlocked
   (one script per slot), then the record shrinks to its receipt.

Every write, delete, commit, quarantine and restore that meets a lock settles
that commit first: a ``committed`` record is rolled forward, an ``aborted`` one
lets go, and one still ``pending`` is waited for, then aborted once it has been
undecided for ``commit_timeout`` (10 s) by the server's clock (its writer, if
alive, then fails to decide it and reports a conflict). The first
``clean_orphans`` (a store's init) and ``recover()`` (a session's start) settle
every record the same way. Whether a record may still write a key is decided by
the key's lock, not by the record's age: a record writes only the keys it
still locks, and a key it no longer locks may have been written since, so no
record is ever replayed over a newer acknowledged write. A reader (``get``)
does not wait for locks: between the commit point and phase 4 it can see one
slot of a cross-slot tick before another.

**Leases and fencing** (``leases = True``). :meth:`RedisBackend.acquire_lease`
takes a new token from the lock name's counter (``INCR``: it never expires and
only grows) and stores the lease with an expiry computed from the server's
``TIME``, enforced by the server (``PEXPIREAT``): a client's clock never
extends a lease. Writes made while :func:`~persistkit.backends.fenced_leases`
returns leases carry their tokens, and the write's own script refuses, with
:class:`~persistkit.errors.LeaseLostError`, a token older than the newest:

* one server: the script reads each lease's counter, so a holder's write is
  refused as soon as a newer lease of that name exists, even before its new
  holder writes anything;
* a cluster: a script cannot read another slot, so each namespace keeps a
  watermark (the newest token of each lease name that wrote there), checked and
  raised by every fenced write, commit and prepare. A stale holder's write to a
  namespace is refused once the new holder has written there (the new holder's
  writes are never undone by it); a namespace the new holder has not written
  since taking over does not know it yet, and accepts the stale write. What
  keeps that window shut on a cluster is the holder's own monotonic deadline:
  a session stops committing before its lease can lapse.

:meth:`RedisBackend.snapshot` reads every value at one point: one read-only
script on one server; on a cluster, two reads that agree, with the writes of
cross-slot commits decided ``committed`` and not yet finished laid over them
(each key only while the record still locks it).

Errors: one context (``_Mapped``) translates redis-py's errors. Connection
refused or reset, timeouts, ``LOADING``, ``READONLY`` and cluster
``MOVED``/``ASK``/``TRYAGAIN``/``CLUSTERDOWN`` raise
:class:`~persistkit.errors.TransientBackendError`, which the store retries with
its :class:`~persistkit.RetryPolicy`; everything else is a
:class:`~persistkit.errors.BackendError` (a :class:`WriteFailedError` when a
write was refused), never retried. Clients built by :meth:`RedisBackend.from_url`
have redis-py's own retries turned off, so the store's policy is the only one;
a client you pass in keeps whatever retries you gave it. (redis-py still
follows ``MOVED``/``ASK`` redirections itself: that is routing, not
retrying; and one idempotent step of a cross-slot commit whose connection
dropped is sent again at once, a few times, so that a lossy network does not
restart the whole commit at every loss.)

**Fork.** A forked child never uses the client it inherited: its connections
are the parent's sockets, registered with the parent's event loop. The child
keeps that client untouched (never closed: see :mod:`persistkit.backends._fork`)
and, for a backend made by :meth:`RedisBackend.from_url`, builds a new client
from the same URL and options on its first call there (a cluster's is
discovered again). A backend given a ready client cannot rebuild it: its first
call in the child raises :class:`~persistkit.errors.ForkedClientError` before
sending anything. The child also starts with no write token of the parent's.

:meth:`RedisBackend.durability_warnings` reads ``appendonly``,
``appendfsync``, ``maxmemory`` and ``maxmemory-policy`` on every master
(``CONFIG GET``) and warns, once in the log and in every store's
``InitReport.warnings``, when an acknowledged write could be lost (to a crash,
or evicted), or when ``CONFIG`` is disabled and durability cannot be checked.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar
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

from persistkit.backends._base import (
    ANY_VERSION,
    Backend,
    Expected,
    Lease,
    QuarantineEntry,
    Snapshot,
    Versioned,
    fenced_leases,
    fencing,
    join_key,
    lay_commits_over,
    new_quarantine_id,
    quarantined_key,
)
from persistkit.backends._fork import (
    forget_clients_after_fork,
    given_client_refused,
    keep_inherited,
)
from persistkit.backends._write_tokens import WriteTokens
from persistkit.errors import (
    BackendError,
    ConflictError,
    EntityNotFoundError,
    InstanceLockedError,
    InvalidNameError,
    LeaseLostError,
    PersistError,
    StoreClosedError,
    TransientBackendError,
    WriteFailedError,
)

__all__ = ["DEFAULT_PREFIX", "RedisBackend", "redis_version"]

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "persistkit"
_ROOT_TAG = "/"  # the hash tag of the root namespace: an empty tag would hash the whole key
_SCAN_COUNT = 1000
_STEP_ATTEMPTS = 4
"""How often one idempotent step of a cross-slot commit is sent when its connection drops."""
T = TypeVar("T")
_DONE = "/done"
"""The end of a commit record's state once every key is finished (see _STATE)."""
_GLOB_SPECIAL = str.maketrans({c: f"\\{c}" for c in "*?[]\\"})
_PREFIX_FORBIDDEN = frozenset("{}*?[]\\ \t\r\n")

RedisClient = aioredis.Redis | RedisCluster


def redis_version(data: bytes) -> str:
    """The version of stored bytes: what ``redis.sha1hex`` gives inside the scripts."""
    return hashlib.sha1(data).hexdigest()


# Every writing script starts with the same two checks, in this order:
#
# 1. The receipt: a write token already recorded in this slot means this very
#    request was applied by an earlier attempt whose reply was lost; its
#    recorded result is the answer, and nothing is applied again.
# 2. The fence: ARGV[1] is the fencing mode ('c': KEYS hold each lease's
#    token counter, one server; 'w': KEYS hold the namespace's watermark hash,
#    a cluster), ARGV[2] the number of (key index, lease name, token) triples
#    that follow. A token older than the newest one known refuses the write.
#
# Replies are tables: {1, result} applied (result is the operation's own),
# {0, index, exists} a version conflict on the index-th entry, {-1, commit id}
# a key locked by a cross-slot commit not yet finished, {-2, lease, newest}
# fenced off. Scripts start with a shebang so that Redis 7 treats them as
# writing scripts from the start: refused whole under OOM, never half-way.
_PRELUDE = """#!lua
local fence_mode, fences = ARGV[1], tonumber(ARGV[2])
local at = 3 + 3 * fences
local function fence_refusal()
  for j = 0, fences - 1 do
    local key = KEYS[tonumber(ARGV[3 + 3 * j])]
    local name, token = ARGV[4 + 3 * j], tonumber(ARGV[5 + 3 * j])
    local newest
    if fence_mode == 'c' then
      newest = tonumber(redis.call('GET', key) or '0')
    else
      newest = tonumber(redis.call('HGET', key, name) or '0')
    end
    if newest > token then return {-2, name, tostring(newest)} end
  end
  return nil
end
local function fence_raise()
  if fence_mode ~= 'w' then return end
  for j = 0, fences - 1 do
    local key = KEYS[tonumber(ARGV[3 + 3 * j])]
    local name, token = ARGV[4 + 3 * j], tonumber(ARGV[5 + 3 * j])
    if token > tonumber(redis.call('HGET', key, name) or '0') then
      redis.call('HSET', key, name, token)
    end
  end
end
-- 'a': any version, 'n': must be absent, 'v': must hold version `version`
local function holds(current, mode, version)
  if mode == 'a' then return true end
  if mode == 'n' then return not current end
  return current and redis.sha1hex(current) == version
end
"""

# One key (put or delete). KEYS: value, lock, receipt, fence keys...
# ARGV after the fence: op ('s' set, 'd' delete), data, expect mode, version,
# token ('' for none), receipt time-to-live in ms. Result: 1 when a value was
# there before, 0 when not (what delete() reports).
_WRITE_ONE = (
    _PRELUDE
    + """
local op, data, mode, version = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
local token, ttl = ARGV[at + 4], ARGV[at + 5]
if token ~= '' then
  local done = redis.call('GET', KEYS[3])
  if done then return {1, tonumber(done)} end
end
local refused = fence_refusal()
if refused then return refused end
local holder = redis.call('GET', KEYS[2])
if holder then return {-1, holder, KEYS[2]} end
local current = redis.call('GET', KEYS[1])
if not holds(current, mode, version) then return {0, 1, current and 1 or 0} end
if op == 's' then redis.call('SET', KEYS[1], data) else redis.call('DEL', KEYS[1]) end
local result = current and 1 or 0
if token ~= '' then redis.call('SET', KEYS[3], result, 'PX', ttl) end
fence_raise()
return {1, result}
"""
)

# Several keys of one slot, all or nothing. KEYS: receipt, then value and lock
# of each entry, then fence keys. ARGV after the fence: token, receipt ttl in
# ms, entries, then per entry op ('s', 'd', or '-': only checked), data,
# expect mode, version.
_COMMIT_ONE_SLOT = (
    _PRELUDE
    + """
local token, ttl, entries = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2])
local done = redis.call('GET', KEYS[1])
if done then return {1, 0} end
local refused = fence_refusal()
if refused then return refused end
for i = 0, entries - 1 do
  local holder = redis.call('GET', KEYS[3 + 2 * i])
  if holder then return {-1, holder, KEYS[3 + 2 * i]} end
  local current = redis.call('GET', KEYS[2 + 2 * i])
  local base = at + 3 + 4 * i
  if not holds(current, ARGV[base + 2], ARGV[base + 3]) then
    return {0, i + 1, current and 1 or 0}
  end
end
for i = 0, entries - 1 do
  local base = at + 3 + 4 * i
  local op = ARGV[base]
  if op == 's' then
    redis.call('SET', KEYS[2 + 2 * i], ARGV[base + 1])
  elseif op == 'd' then
    redis.call('DEL', KEYS[2 + 2 * i])
  end
end
redis.call('SET', KEYS[1], 1, 'PX', ttl)
fence_raise()
return {1, 0}
"""
)

# A cross-slot commit, phase one in one slot: lock every entry (written or only
# checked) with the commit id once its version holds. Idempotent for the same
# commit id. KEYS: value and lock of each entry, then fence keys. ARGV after
# the fence: commit id, entries, then per entry expect mode, version.
_PREPARE = (
    _PRELUDE
    + """
local commit, entries = ARGV[at], tonumber(ARGV[at + 1])
local refused = fence_refusal()
if refused then return refused end
for i = 0, entries - 1 do
  local holder = redis.call('GET', KEYS[2 + 2 * i])
  if holder and holder ~= commit then return {-1, holder, KEYS[2 + 2 * i]} end
  local current = redis.call('GET', KEYS[1 + 2 * i])
  local base = at + 2 + 2 * i
  if not holder and not holds(current, ARGV[base], ARGV[base + 1]) then
    return {0, i + 1, current and 1 or 0}
  end
end
for i = 0, entries - 1 do redis.call('SET', KEYS[2 + 2 * i], commit) end
fence_raise()
return {1, 0}
"""
)

# A cross-slot commit, phase two in one slot: each entry still locked by this
# commit is written ('s'), deleted ('d') or only unlocked ('-', also how an
# aborted commit lets go); an entry no longer locked by it was finished
# before. KEYS: value and lock of each entry. ARGV: commit id, then per entry
# op, data. Returns how many entries it finished.
_FINISH = """#!lua
local commit, finished = ARGV[1], 0
for i = 0, #KEYS / 2 - 1 do
  if redis.call('GET', KEYS[2 + 2 * i]) == commit then
    local op = ARGV[2 + 2 * i]
    if op == 's' then
      redis.call('SET', KEYS[1 + 2 * i], ARGV[3 + 2 * i])
    elseif op == 'd' then
      redis.call('DEL', KEYS[1 + 2 * i])
    end
    redis.call('DEL', KEYS[2 + 2 * i])
    finished = finished + 1
  end
end
return finished
"""

# A record's state is 'pending', 'committed' or 'aborted'; once every key is
# finished it keeps only its state, as the receipt of the commit for the
# retries of its writer, and states read back then end in '/done'.
_STATE = """
local function state_of(record)
  local state = redis.call('HGET', record, 'state')
  if state and redis.call('HEXISTS', record, 'done') == 1 then return state .. '/done' end
  return state
end
"""

# The commit record: created 'pending' with every entry (by the first attempt
# only: a retry with the same id finds it and reads its state). KEYS: record.
# ARGV: field, value, ... Returns the state.
_OPEN_RECORD = (
    "#!lua"
    + _STATE
    + """
local state = state_of(KEYS[1])
if state then return state end
local now = redis.call('TIME')
redis.call('HSET', KEYS[1], 'state', 'pending', 'at', now[1] * 1000 + math.floor(now[2] / 1000))
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 'pending'
"""
)

# The decision, made once: 'pending' becomes ARGV[1] ('committed' or
# 'aborted'); with ARGV[2] set, an abort happens only once the record has
# been pending that many ms by the server's clock. Returns the state after.
_DECIDE = (
    "#!lua"
    + _STATE
    + """
local state = state_of(KEYS[1])
if state ~= 'pending' then return state or '' end
if ARGV[2] ~= '' then
  local now = redis.call('TIME')
  local born = tonumber(redis.call('HGET', KEYS[1], 'at'))
  if now[1] * 1000 + math.floor(now[2] / 1000) - born < tonumber(ARGV[2]) then
    return 'pending'
  end
end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
return ARGV[1]
"""
)

# Every key finished: the record shrinks to its receipt (state, done), kept
# ARGV[1] ms for its writer's retries. KEYS: record.
_CLOSE_RECORD = """#!lua
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', state, 'done', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: value, quarantine entry, lock. ARGV: key, reason, at. {1} moved,
# {0} nothing there, {-1, commit id, lock} locked by an unfinished commit.
_QUARANTINE = """#!lua
local holder = redis.call('GET', KEYS[3])
if holder then return {-1, holder, KEYS[3]} end
local current = redis.call('GET', KEYS[1])
if not current then return {0} end
redis.call('HSET', KEYS[2], 'data', current, 'key', ARGV[1], 'reason', ARGV[2], 'at', ARGV[3])
redis.call('DEL', KEYS[1])
return {1}
"""

# KEYS: quarantine entry, value, lock. ARGV: '1' to overwrite. {1} restored,
# {0} a value is there, {-3} no such entry, {-1, commit id, lock} locked.
_RESTORE = """#!lua
local data = redis.call('HGET', KEYS[1], 'data')
if not data then return {-3} end
local holder = redis.call('GET', KEYS[3])
if holder then return {-1, holder, KEYS[3]} end
if ARGV[1] ~= '1' and redis.call('EXISTS', KEYS[2]) == 1 then return {0} end
redis.call('SET', KEYS[2], data)
redis.call('DEL', KEYS[1])
return {1}
"""

# Leases. KEYS: the lease (a hash: token, holder fields, expiry in ms by the
# server's clock) and its token counter, which never expires and only grows.
_ACQUIRE_LEASE = """#!lua
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
if redis.call('EXISTS', KEYS[1]) == 1 then
  local held = redis.call('HMGET', KEYS[1], 'token', 'holder', 'expires_ms')
  if held[2] == ARGV[2] then
    -- The retry of this very acquisition (same holder, same "since"): its reply was lost.
    return {tonumber(held[1]), tonumber(held[3])}
  end
  return {0, held[1], held[2], held[3]}
end
local token = redis.call('INCR', KEYS[2])
local expires = now_ms + tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'token', token, 'expires_ms', expires, 'holder', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], expires)
return {token, expires}
"""

_RENEW_LEASE = """#!lua
-- The holder too: a server that lost the lease and its counter (a failover to a
-- lagging replica, an old snapshot) hands the same token to the next holder.
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1]
    or redis.call('HGET', KEYS[1], 'holder') ~= ARGV[3] then
  return {0, redis.call('HGET', KEYS[1], 'token'), redis.call('HGET', KEYS[1], 'holder'),
          redis.call('HGET', KEYS[1], 'expires_ms')}
end
local now = redis.call('TIME')
local expires = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'expires_ms', expires)
redis.call('PEXPIREAT', KEYS[1], expires)
return {1, expires}
"""

_RELEASE_LEASE = """#!lua
if redis.call('HGET', KEYS[1], 'token') == ARGV[1]
    and redis.call('HGET', KEYS[1], 'holder') == ARGV[2] then
  redis.call('DEL', KEYS[1])
end
return 0
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


_WRITE_ONE_SCRIPT = _Script(_WRITE_ONE)
_COMMIT_ONE_SLOT_SCRIPT = _Script(_COMMIT_ONE_SLOT)
_PREPARE_SCRIPT = _Script(_PREPARE)
_FINISH_SCRIPT = _Script(_FINISH)
_OPEN_RECORD_SCRIPT = _Script(_OPEN_RECORD)
_DECIDE_SCRIPT = _Script(_DECIDE)
_CLOSE_RECORD_SCRIPT = _Script(_CLOSE_RECORD)
_SNAPSHOT_SCRIPT = _Script(_SNAPSHOT)
_QUARANTINE_SCRIPT = _Script(_QUARANTINE)
_RESTORE_SCRIPT = _Script(_RESTORE)


def _holder_text(lease: Lease) -> str:
    """The holder of ``lease`` exactly as its acquisition stored it (JSON, same key order)."""
    return json.dumps(dict(lease.holder), default=str)


_ACQUIRE_LEASE_SCRIPT = _Script(_ACQUIRE_LEASE)
_RENEW_LEASE_SCRIPT = _Script(_RENEW_LEASE)
_RELEASE_LEASE_SCRIPT = _Script(_RELEASE_LEASE)

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


class _Mapped:
    """``with _Mapped(what):`` raises redis-py's errors as persistkit's, chained with ``from``.

    The one place that translates them: every command runs inside one.
    """

    __slots__ = ("what", "write")

    def __init__(self, what: str, *, write: bool = False) -> None:
        self.what = what
        self.write = write

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and isinstance(exc, _REDIS_ERRORS):
            raise _translate(exc, self.what, write=self.write) from exc


def _conflict(key: str, expect: Expected, *, exists: bool) -> ConflictError:
    """The one wording of a refused conditional write, whichever operation it was."""
    if expect is None:
        return ConflictError(f"{key} exists already (expected it absent)", key=key)
    if not exists:
        return ConflictError(f"{key} was removed since version {expect}", key=key)
    return ConflictError(f"{key} changed since version {expect}", key=key)


def _expectation(expect: Expected) -> tuple[str, str]:
    """``expect`` as the scripts take it: a mode letter and a version."""
    if expect is ANY_VERSION:
        return "a", ""
    if expect is None:
        return "n", ""
    return "v", expect


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw


def _describe_holder(lease: Lease) -> str:
    """``host pid 123 since ... until ... (token n)``, from what the holder recorded."""
    holder = lease.holder

    def moment(seconds: object) -> str:
        if isinstance(seconds, int | float):
            return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))
        return "?"

    return (
        f"{holder.get('host', '?')} pid {holder.get('pid', '?')} since "
        f"{moment(holder.get('since'))} until {moment(lease.expires_at)} (token {lease.token})"
    )


def _glob(text: str) -> str:
    return text.translate(_GLOB_SPECIAL)


class RedisBackend(Backend):
    """Entities as Redis strings; one server (``redis.asyncio.Redis``) or a Redis Cluster.

    ``RedisBackend(client, prefix="persistkit")`` uses a ready client (it must
    return bytes: ``decode_responses=False``); :meth:`from_url` builds one, and
    builds another in a forked child (a ready client cannot be rebuilt: the
    child's first call raises :class:`~persistkit.errors.ForkedClientError`).
    ``commit_timeout`` is how long (by the server's clock) a cross-slot commit
    may stay undecided before another process may abort it; ``receipt_ttl``
    how long the receipt of a conditional write is kept for its retries.
    """

    scheme = "redis"
    leases = True
    commit_checks_versions = True

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = DEFAULT_PREFIX,
        commit_timeout: float = 10.0,
        receipt_ttl: float = 600.0,
        _owns_client: bool = False,
        _url: str | None = None,
        _new_client: Callable[[], RedisClient] | None = None,
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
        if commit_timeout <= 0 or receipt_ttl <= 0:
            raise ValueError("commit_timeout and receipt_ttl must be positive (seconds)")
        self._client = client
        # redis-py types its commands for the sync and async clients at once
        # (``Awaitable[T] | T``, some calls untyped); the calls go through an
        # ``Any`` view of the same client instead of a cast at every await.
        self._redis: Any = client
        self._cluster = isinstance(client, RedisCluster)
        self.prefix = prefix
        self.commit_timeout = commit_timeout
        self.receipt_ttl = receipt_ttl
        self._receipt_ms = int(receipt_ttl * 1000)
        self._owns_client = _owns_client
        # How a forked child gets a client of its own (from_url's settings);
        # None: the caller's client, which a child cannot rebuild.
        self._new_client = _new_client
        self._inherited = False
        """In a forked child, until its first call: the client is the parent's."""
        self._url = _url or self._describe_client(client, prefix)
        self._value_head = f"{prefix}:{{"
        self._lock_head = f"{prefix}:lock:{{"
        self._receipt_head = f"{prefix}:receipt:{{"
        self._fence_head = f"{prefix}:fence:{{"
        self._lease_head = f"{prefix}:lease:{{"
        self._quarantine_head = f"{prefix}:quarantine:{{"
        self._commit_head = f"{prefix}:commit:{{"
        self._durability: list[str] | None = None
        self._recovered = False
        # False until the client is initialised (a cluster's discovered, a single
        # server's checked not to be a cluster node), and again once closed:
        # the one flag every operation checks before its first command.
        self._ready = False
        # Cross-slot commits decided but not finished when commit() failed: the
        # next operation finishes them first (see _get_ready).
        self._unfinished: set[str] = set()
        self._tokens = WriteTokens()
        self._token_born: dict[str, float] = {}
        self._closed = False
        forget_clients_after_fork(self)

    @classmethod
    def from_url(
        cls, url: str, *, commit_timeout: float = 10.0, receipt_ttl: float = 600.0
    ) -> Self:
        """``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS), or
        ``redis+cluster://host:port`` (any node of a cluster). ``?prefix=name``
        sets the key prefix; other query options go to redis-py (for example
        ``socket_timeout``). redis-py's own retries are turned off: the store's
        :class:`~persistkit.RetryPolicy` decides. ``commit_timeout`` and
        ``receipt_ttl`` are the constructor's.
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss", "redis+cluster"):
            raise InvalidNameError(f"{url!r} is not a redis://, rediss:// or redis+cluster:// URL")
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefix = next((value for name, value in query if name == "prefix"), DEFAULT_PREFIX)
        rest = urlencode([(name, value) for name, value in query if name != "prefix"])
        cluster = scheme == "redis+cluster"
        plain = urlunsplit(("redis" if cluster else scheme, parts.netloc, parts.path, rest, ""))

        def new_client() -> RedisClient:
            options: dict[str, Any] = {
                "retry": Retry(NoBackoff(), 0),
                "socket_timeout": 10.0,
                "socket_connect_timeout": 5.0,
            }
            if cluster:
                return RedisCluster.from_url(plain, **options)
            return aioredis.Redis.from_url(plain, **options)

        safe_netloc = parts.hostname or ""
        if parts.port is not None:
            safe_netloc = f"{safe_netloc}:{parts.port}"
        if parts.username:
            safe_netloc = f"{parts.username}@{safe_netloc}"
        safe_query = urlencode([("prefix", prefix)]) if prefix != DEFAULT_PREFIX else ""
        safe = urlunsplit((scheme, safe_netloc, parts.path, safe_query, ""))
        return cls(
            new_client(),
            prefix=prefix,
            commit_timeout=commit_timeout,
            receipt_ttl=receipt_ttl,
            _owns_client=True,
            _url=safe,
            _new_client=new_client,
        )

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
        """The redis-py client underneath (for operators; persistkit owns the key layout).

        In a forked child: the child's own, as for any call (see the module doc).
        """
        if self._inherited:
            self._use_a_client_of_our_own()
        return self._client

    def __repr__(self) -> str:
        return f"RedisBackend({self._url!r})"

    # -- keys ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self!r} is closed")
        if self._inherited:
            self._use_a_client_of_our_own()

    def _forget_after_fork(self) -> None:
        """In a forked child: the client's connections are the parent's sockets, bound
        to the parent's event loop; they are left to the parent, untouched."""
        keep_inherited(self._client)
        self._inherited = True
        self._ready = False
        # The parent's requests in doubt are the parent's to retry, not this process's.
        self._tokens = WriteTokens()
        self._token_born = {}

    def _use_a_client_of_our_own(self) -> None:
        """A forked child's first call: a new client from the same settings, or a refusal."""
        if self._new_client is None:
            raise given_client_refused(self, "redis client", "RedisBackend.from_url")
        self._client = self._redis = self._new_client()
        self._inherited = False

    async def _get_ready(self) -> None:
        self._check_open()
        # redis-py 8.1's async cluster client, used cold by many tasks at once,
        # mixes up connections ("Connection closed by server", "'NoneType' object
        # has no attribute 'writelines'"); one initialize() before the first
        # command avoids it.
        with _Mapped("cluster discovery"):
            await self._redis.initialize()
        if not self._cluster:
            await self._refuse_a_cluster_node()
        # A commit decided here but not finished (the server went away half way)
        # is committed: finish it before anything else touches its keys.
        for record in list(self._unfinished):
            if await self._settle_record(record, abort_after=self.commit_timeout) != "pending":
                self._unfinished.discard(record)
        self._ready = True

    async def _refuse_a_cluster_node(self) -> None:
        """A ``redis://`` URL naming a Redis Cluster node is a clear error, not an outage.

        Through a plain client only that node's slots answer; every other key
        says ``MOVED``, which would be retried as a transient failure.
        """
        with _Mapped("INFO cluster"):
            try:
                info = await self._redis.info("cluster")
            except ResponseError:  # INFO renamed or disabled: nothing to tell
                return
        if str(info.get("cluster_enabled", "0")) == "1":
            raise BackendError(
                f"{self._url} is a Redis Cluster node: name it with redis+cluster:// "
                "(a plain redis:// client reaches only that node's slots)"
            )

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

    # -- keys of persistkit's own ----------------------------------------------------

    def _split(self, key: str) -> tuple[str, str]:
        """``(hash tag, name)`` of an entity key."""
        namespace, _, name = key.rpartition("/")
        if "{" in namespace or "}" in namespace:
            raise InvalidNameError(f"key {key!r} has a brace in its namespace (the hash tag)")
        return namespace or _ROOT_TAG, name

    def _lock_of(self, value_key: str) -> str:
        """The lock of a value key: held by a cross-slot commit between its phases."""
        return self._lock_head + value_key[len(self._value_head) :]

    def _value_of(self, lock_key: str) -> str:
        return self._value_head + lock_key[len(self._lock_head) :]

    def _receipt_key(self, tag: str, token: str) -> str:
        return f"{self._receipt_head}{tag}}}:{token}"

    def _lease_keys(self, name: str) -> tuple[str, str]:
        """The lease ``name`` (a hash with a TTL) and its token counter (never expires)."""
        if not name or not _PREFIX_FORBIDDEN.isdisjoint(name):
            raise InvalidNameError(
                f"lease name {name!r} must be non-empty, without braces, glob characters "
                "or whitespace"
            )
        lease = f"{self._lease_head}{name}}}"
        return lease, f"{lease}:token"

    def _fence(self, tags: Sequence[str], first_key: int) -> tuple[list[str], list[Any]]:
        """The fence keys and arguments of a write to ``tags``, from :data:`fencing`.

        One server: each lease's token counter, read in the same script, so a
        write is refused as soon as a newer lease exists. A cluster: a script
        sees only its own slot, so each namespace keeps a watermark (the newest
        token of each lease that wrote there), checked and raised by every
        fenced write; see the module docstring for what that guarantees.
        ``first_key`` is the Lua index the first fence key will have.
        """
        leases = fenced_leases()
        if not leases:
            return [], ["c", 0]
        keys: list[str] = []
        triples: list[Any] = []
        if self._cluster:
            for tag in dict.fromkeys(tags):
                keys.append(f"{self._fence_head}{tag}}}")
                for lease in leases:
                    triples += [first_key + len(keys) - 1, lease.name, lease.token]
            return keys, ["w", len(triples) // 3, *triples]
        for lease in leases:
            keys.append(self._lease_keys(lease.name)[1])
            triples += [first_key + len(keys) - 1, lease.name, lease.token]
        return keys, ["c", len(leases), *triples]

    # -- write tokens ------------------------------------------------------------------

    def _token_for(self, request: bytes) -> str:
        """The token of ``request``; refuses a retry whose receipt may have expired."""
        token = self._tokens.token_for(request)
        now = time.monotonic()
        born = self._token_born.setdefault(token, now)
        if now - born > self.receipt_ttl * 0.9:
            self._settle(request, token)
            raise WriteFailedError(
                f"redis: the first attempt of this write, {now - born:.0f} s ago, got no "
                f"reply, and its receipt lives only {self.receipt_ttl:.0f} s (receipt_ttl): "
                "whether it was applied can no longer be told; read the value and decide"
            )
        if len(self._token_born) > 2 * len(self._tokens) + 64:
            # Requests forgotten by WriteTokens (never retried): drop their birth too.
            for stale in list(self._token_born)[: len(self._token_born) // 2]:
                if stale != token:
                    del self._token_born[stale]
        return token

    def _settle(self, request: bytes, token: str) -> None:
        self._tokens.settle(request)
        self._token_born.pop(token, None)

    # -- scripts that may meet a lock ---------------------------------------------------

    async def _eval(
        self, script: _Script, keys: list[str], args: list[Any], what: str, *, step: bool = False
    ) -> Any:
        """Run a writing script; a key locked by an unfinished commit is freed first.

        ``step``: the script is one idempotent step of a cross-slot commit (see :meth:`_step`).
        """
        waited = 0.0
        while True:
            if step:
                reply = await self._step(what, lambda: script(self._redis, keys, args))
            else:
                with _Mapped(what, write=True):
                    reply = await script(self._redis, keys, args)
            if reply[0] != -1:
                return reply
            waited = await self._free_lock(_text(reply[1]), _text(reply[2]), waited)

    async def _step(self, what: str, run: Callable[[], Awaitable[T]]) -> T:
        """One request of a cross-slot commit, repeated at once when its connection drops.

        A cross-slot commit is several requests, each idempotent (the commit id
        makes a repeat a no-op). Repeating only the step whose reply was lost,
        instead of the whole commit from the store's retry policy, keeps a
        commit through a lossy network from starting over at every loss. Only
        a dropped connection is repeated, a bounded number of times; a timeout
        (a hung server) goes straight to the caller.
        """
        for attempt in range(1, _STEP_ATTEMPTS + 1):
            try:
                with _Mapped(what, write=True):
                    return await run()
            except TransientBackendError as exc:
                cause = exc.__cause__
                dropped = isinstance(cause, RedisConnectionError) or (
                    type(cause) is RedisClusterException and "cannot be connected" in str(cause)
                )
                if not dropped or attempt == _STEP_ATTEMPTS:
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _free_lock(self, commit_id: str, lock_key: str, waited: float) -> float:
        """Finish the commit holding ``lock_key`` (or abort it once it is stale); else wait."""
        state = await self._settle_record(
            f"{self._commit_head}{commit_id}}}", abort_after=self.commit_timeout
        )
        if state == "" or state.endswith(_DONE):
            # Settled before (or its record is gone): its own keys were finished
            # then, so this lock is the late copy of a step of a writer that was
            # stopped meanwhile, and guards nothing.
            await self._finish(commit_id, [(self._value_of(lock_key), "-", b"")])
        if state != "pending":
            return waited  # settled: the lock is gone
        if waited > 2 * self.commit_timeout + 5:
            raise TransientBackendError(
                f"redis: {lock_key} is still locked by commit {commit_id} after {waited:.1f} s"
            )
        delay = min(0.05, 0.002 + waited / 10)
        await asyncio.sleep(delay)
        return waited + delay

    # -- single values ---------------------------------------------------------------

    async def get(self, key: str) -> Versioned | None:
        if not self._ready:
            await self._get_ready()
        tag, name = self._split(key)
        with _Mapped(f"GET {key}"):
            data = await self._redis.execute_command("GET", f"{self._value_head}{tag}}}:{name}")
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
        with _Mapped(f"MGET of {len(keys)} keys"):
            if self._cluster:
                values = await self._redis.mget_nonatomic(redis_keys)
            else:
                values = await self._redis.execute_command("MGET", *redis_keys)
        return [None if data is None else Versioned(data, redis_version) for data in values]

    async def put(self, key: str, data: bytes, *, expect: Expected = ANY_VERSION) -> str:
        if not self._ready:
            await self._get_ready()
        if expect is ANY_VERSION and not self._cluster and not fencing.get():
            # Nothing to check: no locks on one server, no token for a blind write.
            with _Mapped(f"SET {key}", write=True):
                await self._redis.execute_command("SET", self._value_key(key), data)
        else:
            await self._write_one(key, "s", data, expect)
        return redis_version(data)

    async def delete(self, key: str, *, expect: Expected = ANY_VERSION) -> bool:
        if not self._ready:
            await self._get_ready()
        if expect is ANY_VERSION and not self._cluster and not fencing.get():
            with _Mapped(f"DEL {key}", write=True):
                return bool(await self._redis.execute_command("DEL", self._value_key(key)))
        return bool(await self._write_one(key, "d", b"", expect))

    async def _write_one(self, key: str, op: str, data: bytes, expect: Expected) -> int:
        """One script: receipt, fence, lock, version, write. Returns whether a value was there."""
        tag, name = self._split(key)
        mode, version = _expectation(expect)
        request = b""
        token = ""
        if mode != "a":
            request = WriteTokens.fingerprint(op, key, data, mode, version)
            token = self._token_for(request)
        value_key = f"{self._value_head}{tag}}}:{name}"
        fence_keys, fence_args = self._fence((tag,), 4)
        keys = [
            value_key,
            self._lock_of(value_key),
            self._receipt_key(tag, token or "-"),
            *fence_keys,
        ]
        args = [*fence_args, op, data, mode, version, token, self._receipt_ms]
        what = f"{'SET' if op == 's' else 'DEL'} {key}"
        try:
            reply = await self._eval(_WRITE_ONE_SCRIPT, keys, args, what)
        except TransientBackendError:
            raise  # the outcome is unknown: the retry carries the same token
        except BaseException:
            if token:
                self._settle(request, token)
            raise
        if token:
            self._settle(request, token)
        if reply[0] == 1:
            return int(reply[1])
        if reply[0] == 0:
            raise _conflict(key, expect, exists=bool(reply[2]))
        raise await self._fenced(reply, what)

    async def _fenced(self, reply: Sequence[Any], what: str) -> LeaseLostError:
        """The error of a write refused by the fence (``{-2, lease, newest token}``)."""
        name, newest = _text(reply[1]), int(reply[2])
        mine = next((lease.token for lease in fencing.get() if lease.name == name), None)
        holder: dict[str, object] = {}
        try:
            with _Mapped(f"HGET lease {name}"):
                raw = await self._redis.hget(self._lease_keys(name)[0], "holder")
            holder = json.loads(raw) if raw else {}
        except BackendError:
            pass  # the refusal matters, not who holds it now
        return LeaseLostError(
            f"redis: {what} refused: lease {name!r} has a newer holder (token {newest}, "
            f"this writer holds {mine}); nothing was written",
            lease=name,
            holder=holder,
        )

    # -- listing ---------------------------------------------------------------------

    async def _scan_keys(self, pattern: str) -> AsyncIterator[bytes]:
        """Every Redis key matching ``pattern``, once, from every master."""
        # SCAN may return a key twice while the server resizes its table; the
        # set holds key names only, never values.
        seen: set[bytes] = set()
        with _Mapped(f"SCAN {pattern}"):
            async for raw in self._redis.scan_iter(match=pattern, count=_SCAN_COUNT):
                if raw not in seen:
                    seen.add(raw)
                    yield raw

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
        key = quarantined_key(entry_id)
        namespace, _, stem = entry_id.rpartition("/")
        if "{" in namespace or "}" in namespace:
            raise EntityNotFoundError(f"{entry_id!r} is not a quarantine entry id")
        return f"{self._quarantine_head}{namespace or _ROOT_TAG}}}:{stem}", key

    async def quarantine(self, key: str, reason: str) -> QuarantineEntry:
        if not self._ready:
            await self._get_ready()
        now = time.time()
        entry_id = new_quarantine_id(key)
        quarantine_key, _ = self._quarantine_key(entry_id)
        value_key = self._value_key(key)
        reply = await self._eval(
            _QUARANTINE_SCRIPT,
            [value_key, quarantine_key, self._lock_of(value_key)],
            [key, reason, repr(now)],
            f"quarantine {key}",
        )
        if not reply[0]:
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
            with _Mapped(f"HMGET {raw!r}"):
                key, reason, at = await self._redis.hmget(raw, ["key", "reason", "at"])
            if key is None:
                continue  # restored or purged while we listed
            yield QuarantineEntry(
                join_key(*parsed), key.decode(), (reason or b"").decode(), float(at or 0)
            )

    async def read_quarantined(self, entry_id: str) -> bytes:
        if not self._ready:
            await self._get_ready()
        quarantine_key, _ = self._quarantine_key(entry_id)
        with _Mapped(f"HGET {quarantine_key}"):
            data = await self._redis.hget(quarantine_key, "data")
        if data is None:
            raise EntityNotFoundError(f"no quarantine entry {entry_id!r}")
        return bytes(data)

    async def restore(self, entry_id: str, *, overwrite: bool = False) -> str:
        if not self._ready:
            await self._get_ready()
        quarantine_key, key = self._quarantine_key(entry_id)
        value_key = self._value_key(key)
        reply = await self._eval(
            _RESTORE_SCRIPT,
            [quarantine_key, value_key, self._lock_of(value_key)],
            ["1" if overwrite else "0"],
            f"restore {entry_id}",
        )
        if reply[0] == -3:
            raise EntityNotFoundError(f"no quarantine entry {entry_id!r}")
        if reply[0] == 0:
            raise ConflictError(f"{key} holds a newer value; restore with overwrite=True", key=key)
        return key

    async def purge(self, entry_id: str) -> None:
        if not self._ready:
            await self._get_ready()
        quarantine_key, _ = self._quarantine_key(entry_id)
        with _Mapped(f"DEL {quarantine_key}", write=True):
            removed = await self._redis.execute_command("DEL", quarantine_key)
        if not removed:
            raise EntityNotFoundError(f"no quarantine entry {entry_id!r}")

    # -- atomic commit -------------------------------------------------------------------

    async def commit(
        self,
        writes: Mapping[str, bytes | None],
        *,
        expect: Mapping[str, Expected] | None = None,
    ) -> None:
        """Apply ``writes`` (``None`` deletes) all or nothing, if every ``expect`` holds.

        One script when every key lies in one slot (always, on one server);
        otherwise the two phases of the module docstring. A retry of a commit
        whose reply was lost is recognised by its write token and applied once.
        """
        if not self._ready:
            await self._get_ready()
        expect = expect or {}
        if not writes and not expect:
            return
        # (key, value key, op, data, expect): written keys first, then keys only checked.
        entries: list[tuple[str, str, str, bytes, Expected]] = []
        for key, data in writes.items():
            op = "d" if data is None else "s"
            entries.append(
                (key, self._value_key(key), op, data or b"", expect.get(key, ANY_VERSION))
            )
        for key, expected in expect.items():
            if key not in writes:
                entries.append((key, self._value_key(key), "-", b"", expected))
        fingerprint: list[bytes | str | None] = ["commit"]
        for key, _, op, data, expected in sorted(entries):
            fingerprint += [key, op, data, *_expectation(expected)]
        request = WriteTokens.fingerprint(*fingerprint)
        token = self._token_for(request)
        what = f"commit of {len(entries)} keys"
        try:
            slots = self._slots_of(entries)
            if len(slots) == 1:
                await self._commit_one_slot(entries, token, what)
            else:
                await self._commit_across_slots(slots, token, what)
        except TransientBackendError:
            raise  # unknown outcome: the retry carries the same token
        except BaseException:
            self._settle(request, token)
            raise
        self._settle(request, token)

    def _slots_of(
        self, entries: list[tuple[str, str, str, bytes, Expected]]
    ) -> dict[int, list[tuple[str, str, str, bytes, Expected]]]:
        if not self._cluster:
            return {0: entries}
        by_slot: dict[int, list[tuple[str, str, str, bytes, Expected]]] = {}
        for entry in entries:
            by_slot.setdefault(self._redis.keyslot(entry[1]), []).append(entry)
        return by_slot

    async def _commit_one_slot(
        self, entries: list[tuple[str, str, str, bytes, Expected]], token: str, what: str
    ) -> None:
        tags = [self._split(key)[0] for key, *_ in entries]
        keys = [self._receipt_key(tags[0], token)]
        args: list[Any] = []
        for _, value_key, op, data, expected in entries:
            keys += [value_key, self._lock_of(value_key)]
            args += [op, data, *_expectation(expected)]
        fence_keys, fence_args = self._fence(tags, len(keys) + 1)
        reply = await self._eval(
            _COMMIT_ONE_SLOT_SCRIPT,
            [*keys, *fence_keys],
            [*fence_args, token, self._receipt_ms, len(entries), *args],
            what,
        )
        if reply[0] == 0:
            key, _, _, _, expected = entries[int(reply[1]) - 1]
            raise _conflict(key, expected, exists=bool(reply[2]))
        if reply[0] == -2:
            raise await self._fenced(reply, what)

    # -- snapshot -----------------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        """Every value at one point: one read-only script on one server.

        A script runs alone, so no commit lands between its first read and its
        last (it blocks the server for as long as it reads, which for a bot's
        state is milliseconds). On a cluster no script spans the masters: two
        reads must agree (see :meth:`Backend.snapshot`), and cross-slot commits
        decided and not yet finished are laid over the values, pending.
        """
        if self._cluster:
            return await super().snapshot()
        if not self._ready:
            await self._get_ready()
        head = self._value_head
        with _Mapped("snapshot script"):
            found = await _SNAPSHOT_SCRIPT(self._redis, [], [f"{_glob(head)}*"])
        values: dict[str, bytes] = {}
        for raw, data in zip(found[::2], found[1::2], strict=True):
            parsed = self._key_of(raw, head)
            if parsed is not None:
                values[join_key(*parsed)] = data
        return Snapshot(dict(sorted(values.items())), point="one script on one server")

    async def _read_committed(self) -> Snapshot:
        """The values with the committed, unfinished cross-slot commits laid over them.

        A record decided ``committed`` is the tick's commit point; each of its
        keys it still locks has not been written yet, so its committed value is
        the record's. A key it no longer locks is written (and may have been
        written again since): the stored value stands.
        """
        stored = await self._read_stored()
        committed: dict[str, bytes | None] = {}
        committed_at: dict[str, float] = {}
        async for raw in self._scan_keys(f"{_glob(self._commit_head)}*"):
            with _Mapped(f"HGETALL {raw!r}"):
                record = await self._redis.hgetall(raw)
            if record.get(b"state") != b"committed" or b"done" in record:
                continue  # undecided or rolled back: nothing of it is committed
            commit_id = _text(raw)[len(self._commit_head) : -1]
            at = float(record.get(b"at", b"0")) / 1000
            for redis_key, data in _record_writes(record):
                with _Mapped(f"GET {self._lock_of(redis_key)!r}"):
                    holder = await self._redis.get(self._lock_of(redis_key))
                parsed = self._key_of(redis_key, self._value_head)
                if parsed is not None and holder is not None and _text(holder) == commit_id:
                    committed[join_key(*parsed)] = data
                    committed_at[join_key(*parsed)] = at
        return lay_commits_over(stored, committed, committed_at)

    async def _commit_across_slots(
        self,
        slots: dict[int, list[tuple[str, str, str, bytes, Expected]]],
        commit_id: str,
        what: str,
    ) -> None:
        """Record, lock slot by slot (checking versions and fences), decide, finish."""
        record = f"{self._commit_head}{commit_id}}}"
        fields: list[Any] = []
        for entries in slots.values():
            for _, value_key, op, data, _ in entries:
                fields += [f"{'c' if op == '-' else op}{value_key}", data]
        state = _text(
            await self._step(what, lambda: _OPEN_RECORD_SCRIPT(self._redis, [record], fields))
        )
        known = [
            (value_key, op, data)
            for entries in slots.values()
            for _, value_key, op, data, _ in entries
        ]
        if state == "pending":
            # Slots in one global order: two commits that share keys lock them in
            # the same order, so neither waits on the other for ever.
            for slot in sorted(slots):
                refusal = await self._prepare(commit_id, slots[slot], what)
                if refusal is not None:
                    await self._settle_record(record, decide="aborted", entries=known)
                    raise refusal
            try:
                state = await self._settle_record(record, decide="committed", entries=known)
            except TransientBackendError:
                # Perhaps decided: the next operation settles it first (_get_ready),
                # unless the retry of this commit does it before.
                self._unfinished.add(record)
                self._ready = False
                raise
        elif state in ("committed", "aborted"):
            # A retry of a commit decided before: finish what is left of it.
            state = await self._settle_record(record, entries=known)
        if state.removesuffix(_DONE) != "committed":
            # Rolled back by another process while this writer was stopped: any
            # key it locked since then is let go (nothing of it is applied).
            await self._finish(commit_id, [(value_key, "-", b"") for value_key, _, _ in known])
            raise ConflictError(
                f"redis: {what} was aborted: another process found it undecided for more "
                f"than commit_timeout ({self.commit_timeout} s) and rolled it back; nothing "
                "of it was applied"
            )

    async def _prepare(
        self, commit_id: str, entries: list[tuple[str, str, str, bytes, Expected]], what: str
    ) -> PersistError | None:
        """Lock one slot's entries for ``commit_id``; the reason it cannot, if any."""
        keys: list[str] = []
        args: list[Any] = []
        for _, value_key, _, _, expected in entries:
            keys += [value_key, self._lock_of(value_key)]
            args += _expectation(expected)
        tags = [self._split(key)[0] for key, *_ in entries]
        fence_keys, fence_args = self._fence(tags, len(keys) + 1)
        reply = await self._eval(
            _PREPARE_SCRIPT,
            [*keys, *fence_keys],
            [*fence_args, commit_id, len(entries), *args],
            what,
            step=True,
        )
        if reply[0] == 0:
            key, _, _, _, expected = entries[int(reply[1]) - 1]
            return _conflict(key, expected, exists=bool(reply[2]))
        if reply[0] == -2:
            return await self._fenced(reply, what)
        return None

    async def _settle_record(
        self,
        record: str,
        *,
        decide: str = "aborted",
        abort_after: float | None = None,
        entries: list[tuple[str, str, bytes]] | None = None,
    ) -> str:
        """Decide ``record`` if still pending, then finish it; returns its state.

        ``decide`` is the decision to take when it is pending; with
        ``abort_after``, only an abort, and only once it has been pending that
        many seconds by the server's clock (else ``"pending"`` comes back and
        nothing changes). A committed record is rolled forward onto the keys
        it still locks, an aborted one lets them go; then it shrinks to its
        receipt (a state ending in ``/done``, which nothing settles again).
        ``""``: no such record (its receipt expired, or it was never written).
        ``entries`` (value key, op, data) are the record's own, when the caller
        knows them (the committer): they need not be read back.
        """
        after = "" if abort_after is None else str(int(abort_after * 1000))
        what = f"settle {record}"
        state = _text(
            await self._step(what, lambda: _DECIDE_SCRIPT(self._redis, [record], [decide, after]))
        )
        if state in ("", "pending") or state.endswith(_DONE):
            return state
        if entries is None:
            fields = await self._step(what, lambda: self._redis.hgetall(record))
            entries = []
            for field, data in fields.items():
                op, value_key = _text(field[:1]), _text(field[1:])
                if op in ("s", "d", "c") and value_key.startswith(self._value_head):
                    entries.append((value_key, op, data))
        if state != "committed":
            entries = [(value_key, "-", b"") for value_key, _, _ in entries]
        else:
            entries = [
                (value_key, "-" if op == "c" else op, data) for value_key, op, data in entries
            ]
        await self._finish(record[len(self._commit_head) : -1], entries)
        await self._step(
            what, lambda: _CLOSE_RECORD_SCRIPT(self._redis, [record], [self._receipt_ms])
        )
        return state

    async def _finish(self, commit_id: str, entries: list[tuple[str, str, bytes]]) -> None:
        """Phase two: each slot's entries still locked by ``commit_id``, one script per slot."""
        by_slot: dict[int, list[tuple[str, str, bytes]]] = {}
        for entry in entries:
            slot = self._redis.keyslot(entry[0]) if self._cluster else 0
            by_slot.setdefault(slot, []).append(entry)
        what = f"finish commit {commit_id}"

        async def finish(group: list[tuple[str, str, bytes]]) -> None:
            keys = [k for value_key, _, _ in group for k in (value_key, self._lock_of(value_key))]
            args = [commit_id, *(x for _, op, data in group for x in (op, data))]
            await self._step(what, lambda: _FINISH_SCRIPT(self._redis, keys, args))

        await asyncio.gather(*(finish(group) for group in by_slot.values()))

    async def recover_commits(self) -> list[str]:
        """Settle cross-slot commits that stopped writers left; returns the records settled.

        A committed record is rolled forward onto the keys it still locks (a
        key it no longer locks was finished, and may have been written since:
        it is never touched again); an aborted one releases its locks; one
        still pending is aborted once it has been undecided for
        ``commit_timeout`` by the server's clock, else left to its writer. No
        record is ever replayed after a grace period: what a record may
        still write is decided by the locks in the keys, not by its age.
        """
        self._check_open()
        if not self._cluster:
            return []  # one server: every commit is one script, nothing to settle
        if not self._ready:
            await self._get_ready()
        settled: list[str] = []
        async for raw in self._scan_keys(f"{_glob(self._commit_head)}*"):
            name = _text(raw)
            state = await self._settle_record(name, abort_after=self.commit_timeout)
            if state.endswith(_DONE):
                continue  # a receipt, kept for its writer's retries
            if state == "committed":
                logger.warning("persistkit: finished the interrupted commit %s", name)
            elif state == "aborted":
                logger.warning("persistkit: rolled back the undecided commit %s", name)
            else:
                continue
            settled.append(name)
        return settled

    async def recover(self) -> int:
        if self.read_only:
            return len(await self.unapplied_commits())
        return len(await self.recover_commits())

    async def unapplied_commits(self) -> list[str]:
        """Cross-slot commit records not yet settled, with their state (read-only)."""
        self._check_open()
        if not self._cluster:
            return []
        if not self._ready:
            await self._get_ready()
        found: list[str] = []
        async for raw in self._scan_keys(f"{_glob(self._commit_head)}*"):
            with _Mapped(f"HMGET {raw!r}"):
                state, done = await self._redis.hmget(raw, ["state", "done"])
            if state is not None and done is None:
                found.append(f"{_text(raw)} ({_text(state)})")
        return found

    async def clean_orphans(self, namespace: str, *, dry_run: bool = False) -> list[str]:
        """Settle interrupted cross-slot commits, once per backend (no temp files in Redis)."""
        if dry_run or self._recovered or self.read_only:
            return []
        settled = await self.recover_commits()
        self._recovered = True
        return settled

    # -- leases --------------------------------------------------------------------------

    def _lease_of(self, name: str, token: int, holder: bytes | None, expires_ms: Any) -> Lease:
        described = json.loads(holder) if holder else {}
        return Lease(name, int(token), described, int(expires_ms) / 1000)

    async def acquire_lease(self, name: str, holder: Mapping[str, object], ttl: float) -> Lease:
        """Take the lease ``name`` for ``ttl`` seconds, by the server's clock.

        The token comes from a counter that never expires and only grows
        (``INCR``), so a later holder always has a larger one. A lease held by
        exactly ``holder`` (the session's host, pid and ``since``) is the
        retry of an acquisition whose reply was lost: it is returned as taken.
        """
        if not self._ready:
            await self._get_ready()
        lease_key, counter = self._lease_keys(name)
        described = json.dumps(dict(holder), default=str)  # as _holder_text gives it back
        with _Mapped(f"acquire lease {name}", write=True):
            reply = await _ACQUIRE_LEASE_SCRIPT(
                self._redis, [lease_key, counter], [max(1, int(ttl * 1000)), described]
            )
        if reply[0] != 0:
            return self._lease_of(name, reply[0], described.encode(), reply[1])
        current = self._lease_of(name, reply[1] or 0, reply[2], reply[3] or 0)
        raise InstanceLockedError(
            f"lease {name!r} on {self._url} is held by {_describe_holder(current)}",
            holder={**current.holder, "token": current.token, "expires_at": current.expires_at},
        )

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease:
        if not self._ready:
            await self._get_ready()
        lease_key, _ = self._lease_keys(lease.name)
        with _Mapped(f"renew lease {lease.name}", write=True):
            reply = await _RENEW_LEASE_SCRIPT(
                self._redis,
                [lease_key],
                [lease.token, max(1, int(ttl * 1000)), _holder_text(lease)],
            )
        if reply[0] == 1:
            return Lease(lease.name, lease.token, lease.holder, int(reply[1]) / 1000)
        if reply[1] is None:
            raise LeaseLostError(
                f"lease {lease.name!r} (token {lease.token}) lapsed before it was renewed",
                lease=lease.name,
            )
        current = self._lease_of(lease.name, reply[1], reply[2], reply[3] or 0)
        raise LeaseLostError(
            f"lease {lease.name!r} (token {lease.token}) was taken over by "
            f"{_describe_holder(current)}",
            lease=lease.name,
            holder={**current.holder, "token": current.token, "expires_at": current.expires_at},
        )

    async def release_lease(self, lease: Lease) -> None:
        if not self._ready:
            await self._get_ready()
        lease_key, _ = self._lease_keys(lease.name)
        with _Mapped(f"release lease {lease.name}", write=True):
            await _RELEASE_LEASE_SCRIPT(
                self._redis, [lease_key], [lease.token, _holder_text(lease)]
            )

    async def read_leases(self) -> list[Lease]:
        if not self._ready:
            await self._get_ready()
        found: list[Lease] = []
        async for raw in self._scan_keys(f"{_glob(self._lease_head)}*}}"):
            name = _text(raw)[len(self._lease_head) : -1]
            with _Mapped(f"HMGET {raw!r}"):
                token, holder, expires = await self._redis.hmget(
                    raw, ["token", "holder", "expires_ms"]
                )
            if token is not None:
                found.append(self._lease_of(name, token, holder, expires or 0))
        return sorted(found, key=lambda lease: lease.name)

    async def _node_settings(self) -> list[tuple[str, dict[str, str] | str]]:
        """``(node, settings)`` per master; ``settings`` is why it could not be read."""
        self._check_open()
        out: list[tuple[str, dict[str, str] | str]] = []
        if self._cluster:
            await self._redis.initialize()
            targets: list[tuple[str, Any]] = [
                (node.name, node) for node in self._redis.get_primaries()
            ]
        else:
            targets = [(self._url, self._client)]
        for name, target in targets:
            settings: dict[str, str] = {}
            # One pattern per call: CONFIG GET takes several only since Redis 7.
            for pattern in ("append*", "maxmemory*"):
                with _Mapped(f"CONFIG GET {pattern}"):
                    try:
                        reply = await target.execute_command("CONFIG GET", pattern)
                    except _NOT_TRANSIENT as exc:
                        out.append((name, f"{type(exc).__name__}: {exc}"))
                        break
                    except ResponseError as exc:  # CONFIG renamed or disabled
                        out.append((name, f"{exc}"))
                        break
                if isinstance(reply, list):  # RESP2 flat list on a raw node connection
                    reply = dict(zip(reply[::2], reply[1::2], strict=True))
                settings.update(
                    {
                        (k.decode() if isinstance(k, bytes) else str(k)): (
                            v.decode() if isinstance(v, bytes) else str(v)
                        )
                        for k, v in reply.items()
                    }
                )
            else:
                out.append((name, settings))
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
            policy = settings.get("maxmemory-policy", "noeviction")
            if settings.get("maxmemory", "0") != "0" and policy != "noeviction":
                # Evicted keys are acknowledged values, write receipts and the
                # never-expiring lease token counters (tokens would start over).
                warnings.append(
                    f"{node}: maxmemory-policy is {policy!r} with maxmemory "
                    f"{settings.get('maxmemory')}: under memory pressure the server "
                    "evicts keys, acknowledged values and lease tokens among them; "
                    "set maxmemory-policy to noeviction"
                )
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
        if self._owns_client and not self._inherited:  # an inherited client is the parent's
            await self._client.aclose()

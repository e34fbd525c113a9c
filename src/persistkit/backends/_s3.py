"""The S3 backend: one object per entity, on AWS S3 or any S3-compatible server.

Layout under ``s3://bucket/prefix``, mirroring the file backend's folders:

- ``{prefix}/{namespace}/{id}.json``: the value, the exact bytes the file
  backend would write (``prefix/signal/BTCUSDT_trend/BTCUSDT.json``); persistkit's
  bookkeeping (write tokens, commit sequence) lives in the object's metadata,
  never in its bytes;
- ``{prefix}/.quarantine/{namespace}/{id}@{stamp}.json``: values moved aside,
  their reason in the object's metadata; deleted only by :meth:`S3Backend.purge`;
- ``{prefix}/.commits/head.json``: the latest tick commit record (below);
- ``{prefix}/.leases/{name}.json``: one lease object per lock name (below).

Nothing under a segment that starts with ``.`` is ever listed as an entity.

**Versions** are ETags: the MD5 of the content for a single-part upload, which
is all this backend writes. Two writes of identical bytes therefore carry the
same version (an "ABA" that compare-and-set cannot tell apart), which is
harmless: the value it guards is byte for byte the one the caller read.

**Compare-and-set** is S3's conditional write: ``If-Match: <etag>`` to replace
the version read, ``If-None-Match: *`` to create only. A failed precondition
(412; 409 when a concurrent conditional write is still in flight; 404 from AWS
for ``If-Match`` on a missing key) raises :class:`~persistkit.errors.ConflictError`.

**Exactly once through lost replies.** Every conditional write (compare-and-set,
create-only, compare-and-set delete, the commit record, a lease) stores a write
token in the object's metadata, atomically with the bytes; a retry of the same
request carries the same token (:class:`~persistkit.backends._write_tokens.WriteTokens`
recognises it by its content). The tokens are kept per *writer* (one backend
instance), in ``persistkit-writers``: the latest writer first, each with the
token of its latest write in the object's chain and of its own earlier writes
still awaiting a retry; a write carries on every other writer's entry as it read
it. When a retry's precondition fails, a HEAD shows whether the object is that
write or replaced it: then the write was applied and the call reports success
(returning the version it wrote). However many writes follow, a token stays
until more distinct writers than fit in S3's 2 KB of metadata (about 45) wrote
the object; those dropped are counted in ``persistkit-writers-evicted``, and a
retry that finds its writer dropped since raises
:class:`~persistkit.errors.WriteFailedError` ("outcome unknown") rather than a
conflict its caller would answer by applying the write again. A compare-and-set
delete leaves a *tombstone* (an empty object marked ``persistkit-deleted``, read
as absent, never listed) so that its token survives. A real conflict still
raises ``ConflictError``. What remains: a retry reports ``ConflictError``
although its write was applied when, between the lost reply and the retry, the
object was replaced by an unconditional write or deleted outright (an
unconditional ``delete``), which keep no tokens (a create-only retry then finds
no object and creates it again, undoing the delete); and a process that dies before
retrying never learns the outcome. Two writes of the same bytes have the same
ETag, so a compare-and-set cannot tell them apart: a write over such an object
carries the tokens this process read with it, and when those are an older
object's (a version kept from its own earlier write, the object back at those
bytes since), the tokens of the writers in between are dropped and their
retries report ``ConflictError`` too. A retry of a write that got no answer
looks at the object before writing, so that one whose object came back to the
version it expects is not applied a second time.
Unconditional writes need no token: repeating one stores the same bytes.

**Tick commits** (:meth:`S3Backend.commit`): S3 has no multi-object
transaction and a conditional write checks only its own object, so every tick
commit of every process goes through one object, the *head record*
``.commits/head.json``: the batch (base64), a sequence number, whether it is
applied, the fencing tokens of the leases, the write tokens of the latest 256
commits and each writer's latest (with its unsettled ones, as an entity object
keeps them: a retry whose reply was lost finds its commit however many commits
followed, or, past about 45 writers since or after a commit by a process of a
release before these tokens, says "outcome unknown"), and a SHA-256 checksum.
A commit (1) applies the current head if it is not marked applied yet, (2)
checks ``expect`` (the compare-and-sets of a transaction) against the objects,
(3) writes itself as the next head with ``If-Match`` on the head it read
(losing that race it starts over at 1), (4) applies its writes and (5) marks
the head applied: six requests for a 4-key tick in three round trips (plus, in
one more round trip, a HEAD per compare-and-set key, cached or not, and per
other key this backend's last commit did not write). Once step 3 succeeded the
tick is decided, the same way for every process: whoever touches the head next
(a later commit of any process, a process starting up) applies it first. Each
entity write of a commit is conditional on the object it saw and carries the
commit's sequence number in its metadata (``persistkit-seq``); an applier that
finds a number as high or higher skips the key, and a deletion leaves a
tombstone with its number. Hence, across processes and hosts:

- commits are serialised: concurrent ticks on the same keys leave one whole
  tick or the other, as if run one after the other in sequence order;
- ``expect`` is checked at commit, atomically with respect to every other
  commit (:attr:`commit_checks_versions`), so concurrent ``update_value`` ticks
  lose no acknowledged increment;
- a recorded commit is never replayed over a later one: a late applier (a
  writer stopped between recording and applying, then resumed) finds newer
  sequence numbers, or finds the head applied or moved on, and stops. No
  wall-clock grace is involved.

What it does not give: isolation from readers in other processes while a tick
is being applied (a reader there may see it half-applied for those
milliseconds; a process starting then applies the rest itself), and ordering
against *plain* writes: a put or delete outside a commit that lands on a key
while another process's commit is being applied may be overwritten by it (the
commit is then ordered after it). A crash after step 3 leaves the tick for the
next process to apply. A damaged head record stops every operation with
:class:`~persistkit.errors.JournalDamagedError`; it is never replaced
automatically (entity objects carry its sequence numbers, and it carries the
fences). Commit objects ``.commits/{seq:020d}.json`` that an earlier release
recorded and never applied stop a start with a :class:`~persistkit.errors.BackendError`
naming them: this release would not apply them.

**Leases and fencing** (:attr:`leases` is true). :meth:`S3Backend.acquire_lease`
reads ``.leases/{name}.json`` and, when it is absent, released or lapsed, writes
it with the next token conditionally (``If-Match`` on the object read,
``If-None-Match: *`` for the first); the object is never deleted (release marks
it released), so tokens only grow. Expiry is judged by the server's clock: the
object's ``Last-Modified`` plus the TTL plus one second (S3 times are whole
seconds), against the ``Date`` of the server's reply, never the client's clock.
A live lease held by another raises :class:`~persistkit.errors.InstanceLockedError`
naming its holder (host, pid, since, expiry); :meth:`renew_lease` of a lease
taken over or lapsed raises :class:`~persistkit.errors.LeaseLostError`. Before
``acquire_lease`` returns, the new token is written into the head record as the
fence of ``name`` (a commit with no writes). Commits made while
:func:`~persistkit.backends.fenced_leases` returns leases carry their tokens, and
step 3 refuses, with ``LeaseLostError`` and nothing recorded, a commit whose
token is older than the fence. Since that check and the recording are one
conditional write of the head, **S3 guarantees**: once a new holder's
``acquire_lease`` has returned, no commit of an older holder is recorded; one
recorded before is applied before anything the new holder commits, and never
after. Plain ``put``/``delete`` calls made under a lease go through a commit
(so they are fenced the same way). What S3 cannot do is refuse a write made
*without* a token (a script, the command line) on a key under a live lease, and
it cannot stop a stale holder from *reading*; a holder that cannot renew must
stop itself at a monotonic deadline before its TTL (the live session does).

:meth:`~persistkit.backends._base.Backend.snapshot` (the command line's
``export``) lays the head record's writes over the objects while it is not
marked applied, and accepts a read only when a second one agrees with it.

**Errors**: connection failures, timeouts, 5xx and throttling become
:class:`~persistkit.errors.TransientBackendError`, chained with ``from``;
:class:`~persistkit.PersistBase` retries those with its
:class:`~persistkit.RetryPolicy`. Clients made by :meth:`S3Backend.from_url`
disable botocore's own retries (``total_max_attempts=1``) so that the policy is
the only one and its deadline means what it says. Everything else becomes a
:class:`~persistkit.errors.BackendError` (:class:`~persistkit.errors.WriteFailedError`
for a write that did not happen). Every request goes through one mapping
(``S3Backend._call``).

**Threads**: boto3 blocks, so every call runs in a bounded thread pool owned by
the backend (16 workers by default, never more than the client's connection
pool); :meth:`S3Backend.aclose` shuts it down.

**Fork.** The pool's threads do not exist in a forked child, its locks may be
held by them, and the client's pooled connections are the parent's sockets.
The child gets a new pool, new locks and no write token of the parent's, and
keeps the inherited client untouched (never closed: see
:mod:`persistkit.backends._fork`); a backend made by :meth:`S3Backend.from_url`
builds a new session and client from the same URL on its first call there. A
backend given a ready client cannot rebuild it: its first call in the child
raises :class:`~persistkit.errors.ForkedClientError` before sending anything.

**Credentials** come from boto3's standard chain (environment, profile, SSO,
instance role); they are never put in :attr:`S3Backend.url`, a repr, an error
or a log line, and an ``s3://`` URL that carries any is refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import boto3
import orjson
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from persistkit._keyed_lock import LoopLocalKeyedLocks
from persistkit.backends._base import (
    ANY_VERSION,
    Backend,
    Expected,
    Lease,
    QuarantineEntry,
    Snapshot,
    Versioned,
    check_key,
    fenced_leases,
    fencing,
    lay_commits_over,
    new_quarantine_id,
    quarantined_key,
)
from persistkit.backends._file import QUARANTINE_DIR, SUFFIX
from persistkit.backends._fork import (
    forget_clients_after_fork,
    given_client_refused,
    keep_inherited,
)
from persistkit.backends._threads import DaemonThreadPool, run_to_completion
from persistkit.backends._write_tokens import WriteTokens
from persistkit.errors import (
    BackendError,
    ConflictError,
    CorruptValueError,
    EntityNotFoundError,
    InstanceLockedError,
    InvalidNameError,
    JournalDamagedError,
    LeaseLostError,
    PersistError,
    StoreClosedError,
    TransientBackendError,
    WriteFailedError,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ListObjectsV2OutputTypeDef

__all__ = ["COMMITS_DIR", "DEFAULT_WORKERS", "LEASES_DIR", "S3Backend"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

COMMITS_DIR = ".commits"
LEASES_DIR = ".leases"
DEFAULT_WORKERS = 16

_COMMIT_FORMAT = "persistkit-commit/2"
_HEAD_NAME = "head"
_COMMIT_LOCK = "commit"
_RECENT_COMMITS = 256
"""Write tokens of the latest commits kept in the head record: a commit whose
reply was lost finds its own token there when it is retried."""
_LEASE_FORMAT = "persistkit-lease/1"
_CLOCK_GRANULARITY = 1.0
"""S3's Date and Last-Modified are whole seconds: a lease counts as lapsed one
second late, so that truncation never lets a second holder in early."""
# S3 allows 2 KB of user metadata per object; the reason gets most of it.
_MAX_REASON_BYTES = 1536
_META_REASON = "persistkit-reason"
_META_AT = "persistkit-quarantined-at"
_META_WRITERS = "persistkit-writers"
"""The write tokens of the object's writers and of those it replaced (see :class:`_Writers`)."""
_META_EVICTED = "persistkit-writers-evicted"
"""How many writers' entries the object's chain of conditional writes dropped for room."""
_WRITERS_BUDGET = 1400
"""Characters of ``persistkit-writers``, about 45 writers: S3 allows 2 KB of metadata in all."""
_OPEN_TOKENS_KEPT = 8
"""A writer's own unsettled tokens kept in its entry (more only if it abandons retries)."""
_WRITER_ID_BYTES = 6
"""A backend's writer id: 48 random bits, so that no two writers of one key collide."""
_TOKEN_BYTES = 8
"""A write token: 64 random bits, unique among one writer's writes and in the head record."""
_WRITER_ENTRY = re.compile(r"[0-9a-f]+:[0-9a-f]+(?:,[0-9a-f]+)*\Z")
"""One writer's entry in ``persistkit-writers``: its id, then its tokens, all hex."""
_HISTORIES_REMEMBERED = 4096
_META_SEQ = "persistkit-seq"
"""The tick commit that stored the object: a lower one never overwrites it."""
_META_DELETED = "persistkit-deleted"
"""Marks a tombstone: an empty object that reads as absent (see the module doc)."""
_TRANSIENT_CODES = frozenset(
    {
        "BandwidthLimitExceeded",
        "InternalError",
        "OperationAborted",
        "RequestLimitExceeded",
        "RequestTimeout",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
    }
)
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]\Z")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_ADDRESSING: dict[str, Literal["path", "virtual", "auto"]] = {
    "path": "path",
    "virtual": "virtual",
    "auto": "auto",
}
_URL_OPTIONS = ("endpoint_url", "region", "profile", "create_bucket", "max_workers", "addressing")


# -- botocore errors, sorted --------------------------------------------------------


class _Refused(Exception):
    """A conditional request's precondition did not hold (private: callers decide what it means)."""


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        message = exc.response.get("Error", {}).get("Message", "")
        return f"{_code(exc) or 'error'} (HTTP {_status(exc)}){': ' + message if message else ''}"
    return f"{type(exc).__name__}: {exc}"


def _is_transient(exc: Exception) -> bool:
    if isinstance(exc, ClientError):
        status = _status(exc)
        return status >= 500 or status == 429 or _code(exc) in _TRANSIENT_CODES
    if isinstance(exc, SSLError):
        return False  # a certificate that does not verify will not start to
    # EndpointConnectionError, ConnectTimeoutError (ConnectionError);
    # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError (HTTPClientError)
    return isinstance(exc, BotoConnectionError | HTTPClientError)


def _is_absent(exc: ClientError) -> bool:
    return _status(exc) == 404 and _code(exc) != "NoSuchBucket"


def _is_precondition_failure(exc: ClientError) -> bool:
    """A conditional request refused: 412, 409 (a concurrent conditional write),
    or AWS's 404 for ``If-Match`` on a missing key (SeaweedFS answers 412)."""
    status = _status(exc)
    return status in (409, 412) or _is_absent(exc)


def _conflict(what: str, expect: Expected, *, key: str | None = None) -> ConflictError:
    """The one wording of a lost compare-and-set, for every operation."""
    if expect is None:
        return ConflictError(f"{what} exists already (create-only write)", key=key)
    return ConflictError(f"{what} changed since version {expect}", key=key)


def _server_time(response: Mapping[str, Any]) -> float:
    """The server's clock at ``response`` (its Date header), seconds since the epoch."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        return parsedate_to_datetime(date).timestamp()
    return time.time()  # a server that sends no Date: ours is all there is


def _md5_etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


# -- tick commit records ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Record:
    """The head commit record: the latest tick commit, and what every commit must carry on."""

    seq: int
    writes: tuple[tuple[str, bytes | None], ...]
    applied: bool
    """Every write is in its object: nobody applies it again."""
    fences: Mapping[str, int]
    """The newest lease token of each lease name: a commit carrying an older one is refused."""
    tokens: Mapping[str, int]
    """The lease tokens this commit was made under."""
    recent: tuple[tuple[str, int], ...]
    """(write token, seq) of the latest commits, this one included."""
    writers: _Writers
    """Each writer's latest commit token and its earlier ones still unsettled: how a
    retry recognises a commit of its own older than :data:`_RECENT_COMMITS` commits."""
    writers_since: int | None
    """The seq of the first record of the unbroken chain of records that carried
    ``writers`` on; ``None``: a record of a release before them, which kept none (and
    reset ``evicted``), so an entry missing since says nothing."""


def _encode_record(record: _Record) -> bytes:
    """A JSON payload, a newline, the payload's SHA-256 in hex.

    Values are base64 because the contract moves arbitrary bytes.
    """
    payload = orjson.dumps(
        {
            "format": _COMMIT_FORMAT,
            "seq": record.seq,
            "applied": record.applied,
            "writes": [
                [key, None if data is None else base64.b64encode(data).decode("ascii")]
                for key, data in record.writes
            ],
            "fences": dict(record.fences),
            "tokens": dict(record.tokens),
            "recent": [list(item) for item in record.recent],
            "writers": [[writer, list(tokens)] for writer, tokens in record.writers.entries],
            "evicted": record.writers.evicted,
            "writers_since": record.writers_since,
        }
    )
    return payload + b"\n" + hashlib.sha256(payload).hexdigest().encode("ascii")


def _decode_record(data: bytes) -> _Record:
    """The record in ``data``; :class:`CorruptValueError` if it is not whole."""
    payload, newline, checksum = data.rpartition(b"\n")
    if not newline or hashlib.sha256(payload).hexdigest().encode("ascii") != checksum:
        raise CorruptValueError("tick commit record: checksum mismatch", reason="bad checksum")
    try:
        parsed = orjson.loads(payload)
        if parsed["format"] != _COMMIT_FORMAT:
            raise ValueError(f"format {parsed['format']!r}")
        return _Record(
            seq=int(parsed["seq"]),
            writes=tuple(
                (str(key), None if value is None else base64.b64decode(value, validate=True))
                for key, value in parsed["writes"]
            ),
            applied=bool(parsed["applied"]),
            fences={str(name): int(token) for name, token in parsed["fences"].items()},
            tokens={str(name): int(token) for name, token in parsed["tokens"].items()},
            recent=tuple((str(token), int(seq)) for token, seq in parsed["recent"]),
            writers=_Writers(
                tuple(
                    (str(writer), tuple(str(token) for token in tokens))
                    for writer, tokens in parsed.get("writers", ())
                ),
                int(parsed.get("evicted", 0)),
            ),
            writers_since=_writers_since(parsed),
        )
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        reason = f"not a tick commit record: {exc}"
        raise CorruptValueError(reason, reason=reason) from exc


def _writers_since(parsed: Mapping[str, Any]) -> int | None:
    """Where a decoded record's chain of ``writers`` starts; ``None`` for the previous release."""
    if "writers" not in parsed:
        return None
    since = parsed.get("writers_since", 0)
    return None if since is None else int(since)


def _committed_version(data: bytes | None) -> Versioned | None:
    """A value of the commit being applied, versioned as S3 will: the body's MD5 ETag."""
    if data is None:
        return None
    return Versioned(data, _md5_etag)


def _check_commit_key(key: str) -> None:
    segments = key.split("/")
    if any(not segment or segment.startswith(".") for segment in segments):
        raise InvalidNameError(
            f"{key!r} cannot be committed: keys are '/'-separated segments, "
            "none empty or starting with '.'"
        )


def _encode_reason(reason: str) -> str:
    """``reason`` as an ASCII header value that fits S3's metadata limit."""
    encoded = quote(reason, safe="")
    while len(encoded) > _MAX_REASON_BYTES:
        reason = reason[: max(0, len(reason) - max(1, len(reason) // 8))]
        encoded = quote(reason + " [truncated]", safe="")
    return encoded


@dataclass(frozen=True, slots=True)
class _Writers:
    """The write tokens an object carries: how a retry recognises its own applied write.

    One entry per writer (a backend instance), the latest writer first: the
    token of its latest write in the object's chain of conditional writes, and
    the tokens of its earlier writes in the chain that were still unsettled
    (reply lost, retry pending) when it wrote. Every other writer carries the
    entry on as it is, so an applied write stays recognisable however many
    writes follow, until more distinct writers than fit in
    :data:`_WRITERS_BUDGET` wrote since: the least recent entries are dropped
    then, and counted in ``evicted``. (A bounded list of the latest *writes*
    lost a write's token after 31 more: with four processes, a retry held back
    by a few lost replies in a row came back as a conflict and was applied twice.)
    """

    entries: tuple[tuple[str, tuple[str, ...]], ...] = ()
    evicted: int = 0

    @classmethod
    def of(cls, metadata: Mapping[str, str]) -> _Writers:
        """What ``metadata`` carries; anything malformed (another tool's) counts as nothing."""
        entries = []
        for item in metadata.get(_META_WRITERS, "").split():
            # Only what persistkit writes (hex names and tokens): carried on, anything
            # else (non-ASCII above all) would make every later write here invalid.
            if _WRITER_ENTRY.match(item):
                writer, _, tokens = item.partition(":")
                entries.append((writer, tuple(tokens.split(","))))
        try:
            evicted = int(metadata.get(_META_EVICTED, "0"))
        except ValueError:
            evicted = 0
        return cls(tuple(entries), evicted)

    def metadata(self) -> dict[str, str]:
        """The object metadata that stores these tokens."""
        stored: dict[str, str] = {}
        if self.entries:
            stored[_META_WRITERS] = _entries_text(self.entries)
        if self.evicted:
            stored[_META_EVICTED] = str(self.evicted)
        return stored

    def written_by(self, writer: str, token: str, is_open: Callable[[str], bool]) -> _Writers:
        """What a write by ``writer`` with ``token`` over an object carrying these stores."""
        earlier = next((tokens for name, tokens in self.entries if name == writer), ())
        # Its settled tokens go: no retry will look for them.
        own = (token, *(kept for kept in earlier if kept != token and is_open(kept)))
        entries = [(writer, own[:_OPEN_TOKENS_KEPT])]
        entries += [(name, tokens) for name, tokens in self.entries if name != writer]
        evicted = self.evicted
        while len(entries) > 1 and len(_entries_text(entries)) > _WRITERS_BUDGET:
            entries.pop()
            evicted += 1
        return _Writers(tuple(entries), evicted)

    def holds(self, writer: str, token: str, evicted_before: int) -> bool | None:
        """Whether the write ``token`` of ``writer`` is in the chain; ``None``: cannot tell.

        ``evicted_before``: the fewest ``evicted`` among the objects that the
        attempts of that write which got no answer would have replaced. Its
        writer's entry absent, and no entry dropped since: never applied.
        """
        for name, tokens in self.entries:
            if name == writer:
                return token in tokens
        return False if self.evicted == evicted_before else None


_NO_WRITERS = _Writers()
_NO_RECORD = _Record(0, (), True, {}, {}, (), _NO_WRITERS, 0)


def _entries_text(entries: Iterable[tuple[str, tuple[str, ...]]]) -> str:
    return " ".join(f"{writer}:{','.join(tokens)}" for writer, tokens in entries)


@dataclass(frozen=True, slots=True)
class _State:
    """What a HEAD of an entity object says: enough to write over it conditionally."""

    object_etag: str | None
    """The object's ETag (a tombstone's too); ``None`` when there is no object."""
    seq: int
    """The tick commit that wrote it; 0 for a write outside any commit."""
    deleted: bool
    writers: _Writers = _NO_WRITERS
    """The write tokens the object carries."""

    @property
    def version(self) -> str | None:
        """The entity's version as readers see it: ``None`` when absent or a tombstone."""
        return None if self.deleted else self.object_etag


_ABSENT = _State(None, 0, False)


def _state_of(head: Mapping[str, Any] | None) -> _State:
    if head is None:
        return _ABSENT
    metadata = head.get("Metadata", {})
    try:
        seq = int(metadata.get(_META_SEQ, "0"))
    except ValueError:
        seq = 0
    return _State(head["ETag"], seq, _META_DELETED in metadata, _Writers.of(metadata))


@dataclass(frozen=True, slots=True)
class _LeaseObject:
    """A lease object as read, with the server's clock at the read."""

    lease: Lease
    etag: str
    released: bool
    ttl: float
    server_now: float

    @property
    def live(self) -> bool:
        return not self.released and self.server_now < self.lease.expires_at


# -- the backend ----------------------------------------------------------------------------


class S3Backend(Backend):
    """Entities as objects under ``prefix`` in ``bucket``, through a ready boto3 client.

    ``S3Backend(boto3.client("s3"), "my-bucket", "bots/alpha")`` or
    ``S3Backend.from_url("s3://my-bucket/bots/alpha?endpoint_url=http://127.0.0.1:8333")``.
    ``create_bucket=True`` creates a missing bucket on first use; otherwise a
    missing bucket is an error that names it. The backend closes the client in
    :meth:`aclose` only if it made it (``from_url``) or ``owns_client=True``.
    In a forked child, one made by ``from_url`` builds a new client on its first
    call; a ready client cannot be rebuilt, and the child's first call raises
    :class:`~persistkit.errors.ForkedClientError`.
    """

    scheme = "s3"
    commit_checks_versions = True
    leases = True

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        *,
        create_bucket: bool = False,
        max_workers: int | None = None,
        owns_client: bool = False,
        _new_client: Callable[[], S3Client] | None = None,
    ) -> None:
        if not _BUCKET_NAME.match(bucket):
            raise InvalidNameError(
                f"{bucket!r} is not an S3 bucket name (3-63 characters: a-z, 0-9, '.', '-')"
            )
        prefix = prefix.strip("/")
        if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
            raise InvalidNameError(f"S3 prefix {prefix!r} has an empty, '.' or '..' segment")
        self._client = client
        self.bucket = bucket
        self.prefix = prefix
        self._root = f"{prefix}/" if prefix else ""
        self._create_bucket = create_bucket
        self._owns_client = owns_client
        # How a forked child gets a client of its own (from_url's settings);
        # None: the caller's client, which a child cannot rebuild.
        self._new_client = _new_client
        self._inherited = False
        """In a forked child, until its first call: the client is the parent's."""
        self._adopting = threading.Lock()
        pool_size = int(getattr(client.meta.config, "max_pool_connections", DEFAULT_WORKERS))
        # Workers beyond the client's connection pool would only queue for a connection.
        workers = max_workers if max_workers is not None else min(DEFAULT_WORKERS, pool_size)
        if workers < 1:
            raise ValueError(f"max_workers must be at least 1, not {workers}")
        self.max_workers = workers
        # Daemon threads of its own: a synchronous script's last write may come
        # from an atexit handler, after every ThreadPoolExecutor has stopped.
        self._executor = DaemonThreadPool(workers, thread_name_prefix="persistkit-s3")
        self._closed = False
        # False until pending tick commits have been replayed (see _prepare_sync).
        self._ready = False
        # The writes of the commit being applied: recorded (so durable) but not
        # yet in every object. Reads here see all of them, never half a tick.
        self._applying: dict[str, bytes | None] = {}
        self._prepare_lock = threading.Lock()
        self._commit_locks = LoopLocalKeyedLocks()
        self._tokens = WriteTokens(token_bytes=_TOKEN_BYTES)
        # This backend's name in the write tokens objects carry (see _Writers).
        self._writer = secrets.token_hex(_WRITER_ID_BYTES)
        # (object key, ETag) -> the write tokens that object carries, from reads:
        # a compare-and-set over it carries them on (see _conditional_put_sync).
        self._histories: OrderedDict[tuple[str, str], _Writers] = OrderedDict()
        # write token -> the fewest evictions (see _Writers) among the objects its
        # attempts that got no answer would have replaced: what its retry compares.
        self._unanswered: OrderedDict[str, int] = OrderedDict()
        # Tick commit attempts without an answer -> the oldest chain of the commit
        # record's writers they were made in (see _Record.writers_since).
        self._unanswered_chains: OrderedDict[str, int] = OrderedDict()
        self._histories_lock = threading.Lock()
        # key -> the object as this backend's last commit left it (see _record_and_apply).
        self._known: OrderedDict[str, _State] = OrderedDict()
        # The head record as this backend last wrote or read it, with its ETag:
        # the next commit tries it first and reads the head only when it moved.
        self._head: tuple[_Record, str | None] = (_NO_RECORD, None)
        forget_clients_after_fork(self)

    @classmethod
    def from_url(cls, url: str) -> Self:
        """``s3://bucket/prefix?endpoint_url=...&region=...&create_bucket=1``.

        Options: ``endpoint_url`` (an S3-compatible server; path-style
        addressing then), ``region``, ``profile`` (an AWS config profile),
        ``create_bucket``, ``max_workers`` (threads and connections, default 16),
        ``addressing`` (``path``, ``virtual`` or ``auto``). Credentials come from
        the standard AWS chain, never from the URL.
        """
        parts = urlsplit(url)
        if parts.scheme.lower() != "s3":
            raise InvalidNameError("not an s3:// URL")
        if "@" in parts.netloc:
            # Not echoing the URL: it holds a secret.
            raise InvalidNameError(
                "an s3:// URL must not carry credentials; persistkit takes them from the "
                "standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, "
                "an instance role)"
            )
        if not parts.netloc:
            raise InvalidNameError(f"s3 URL {url!r} names no bucket")
        options: dict[str, str] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name not in _URL_OPTIONS:
                raise InvalidNameError(
                    f"unknown s3:// URL option {name!r}; known: {', '.join(_URL_OPTIONS)}"
                )
            options[name] = value
        create = options.get("create_bucket", "0").lower()
        if create not in _TRUE | _FALSE:
            raise InvalidNameError(f"create_bucket must be 1 or 0, not {create!r}")
        try:
            workers = int(options.get("max_workers", DEFAULT_WORKERS))
        except ValueError:
            raise InvalidNameError("max_workers must be a whole number") from None
        endpoint_url = options.get("endpoint_url") or None
        if endpoint_url and "@" in urlsplit(endpoint_url).netloc:
            raise InvalidNameError(
                "endpoint_url must not carry credentials; persistkit takes them from the "
                "standard AWS chain"
            )
        addressing = _ADDRESSING.get(
            options.get("addressing") or ("path" if endpoint_url else "auto")
        )
        if addressing is None:
            raise InvalidNameError("addressing must be path, virtual or auto")

        def new_client() -> S3Client:
            session = boto3.Session(profile_name=options.get("profile") or None)
            return session.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=options.get("region") or None,
                config=Config(
                    # PersistBase's RetryPolicy is the one retry policy (see the module doc).
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    max_pool_connections=max(1, workers),
                    connect_timeout=5,
                    read_timeout=30,
                    s3={"addressing_style": addressing},
                ),
            )

        return cls(
            new_client(),
            parts.netloc,
            unquote(parts.path),
            create_bucket=create in _TRUE,
            max_workers=workers,
            owns_client=True,
            _new_client=new_client,
        )

    @property
    def endpoint_url(self) -> str:
        """The server this backend talks to (no credentials in it)."""
        return str(self._client.meta.endpoint_url)

    @property
    def url(self) -> str:
        path = f"/{self.prefix}" if self.prefix else ""
        endpoint = urlsplit(self.endpoint_url)
        if endpoint.hostname is None or endpoint.hostname.endswith(".amazonaws.com"):
            return f"s3://{self.bucket}{path}"
        # A user:password in the endpoint URL is dropped, as everywhere else.
        netloc = endpoint.hostname + (f":{endpoint.port}" if endpoint.port else "")
        query = urlencode({"endpoint_url": f"{endpoint.scheme}://{netloc}"}, safe=":/")
        return f"s3://{self.bucket}{path}?{query}"

    def __repr__(self) -> str:
        return f"S3Backend({self.url!r})"

    # -- plumbing ----------------------------------------------------------------------

    def object_key(self, key: str) -> str:
        """The S3 object key that holds ``key``."""
        return f"{self._root}{key}{SUFFIX}"

    def _quarantine_object(self, entry_id: str) -> str:
        return f"{self._root}{QUARANTINE_DIR}/{entry_id}{SUFFIX}"

    def _head_object_key(self) -> str:
        return f"{self._root}{COMMITS_DIR}/{_HEAD_NAME}{SUFFIX}"

    def _lease_object(self, name: str) -> str:
        return f"{self._root}{LEASES_DIR}/{name}{SUFFIX}"

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self!r} is closed")
        if self._inherited:
            self._use_a_client_of_our_own()

    def _forget_after_fork(self) -> None:
        """In a forked child: the parent's worker threads do not exist here, its locks
        may be held by them, and the client's pooled connections are the parent's
        sockets; all of it is left to the parent, untouched."""
        keep_inherited(self._client, self._executor)
        self._inherited = True
        self._adopting = threading.Lock()
        self._executor = DaemonThreadPool(self.max_workers, thread_name_prefix="persistkit-s3")
        self._prepare_lock = threading.Lock()
        self._histories_lock = threading.Lock()
        self._commit_locks = LoopLocalKeyedLocks()
        # The parent's requests in doubt are the parent's to retry, not this process's;
        # and the child is a writer of its own: under the parent's name, its writes
        # would replace the parent's entry in the objects' tokens (see _Writers), and
        # the parent's retry would no longer find its applied write.
        self._tokens = WriteTokens(token_bytes=_TOKEN_BYTES)
        self._writer = secrets.token_hex(_WRITER_ID_BYTES)
        self._unanswered = OrderedDict()
        self._unanswered_chains = OrderedDict()
        # A commit the parent was applying: recorded, so whoever commits next applies
        # it; no thread here would ever finish it and let these reads go.
        self._applying = {}

    def _use_a_client_of_our_own(self) -> None:
        """A forked child's first call: a new client from the same settings, or a refusal."""
        with self._adopting:
            if not self._inherited:
                return
            if self._new_client is None:
                raise given_client_refused(self, "boto3 client", "S3Backend.from_url")
            self._client = self._new_client()
            self._inherited = False

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the backend's thread pool (see :func:`run_to_completion`)."""
        self._check_open()
        return await run_to_completion(self._executor, fn, *args)

    async def _ensure_ready(self) -> None:
        if not self._ready:
            await self._run(self._prepare_sync)

    def _call(
        self, operation: str, doing: str, *, writing: bool = False, **params: Any
    ) -> dict[str, Any] | None:
        """One S3 request on this bucket, every botocore failure mapped in one place.

        Returns the response, or ``None`` when the object is absent (404).
        A refused precondition (``IfMatch``/``IfNoneMatch`` in ``params``)
        raises :class:`_Refused` for the caller to decide what it means;
        everything else becomes persistkit's error, chained with ``from``.
        """
        try:
            response: dict[str, Any] = getattr(self._client, operation)(
                Bucket=self.bucket, **params
            )
            return response
        except ClientError as exc:
            conditional = "IfMatch" in params or "IfNoneMatch" in params
            if conditional and _is_precondition_failure(exc):
                raise _Refused from exc
            if _is_absent(exc):
                return None
            raise self._failure(exc, doing, writing=writing) from exc
        except BotoCoreError as exc:
            raise self._failure(exc, doing, writing=writing) from exc

    def _get_object_sync(self, object_key: str, doing: str) -> tuple[bytes, dict[str, Any]] | None:
        """GET ``object_key``: its bytes and the response, ``None`` when absent.

        The body streams after the call returns, so reading it can fail too;
        mapped here, the one other place besides :meth:`_call`.
        """
        response = self._call("get_object", doing, Key=object_key)
        if response is None:
            return None
        try:
            data = bytes(response["Body"].read())
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, doing) from exc
        # A compare-and-set over this object carries its write tokens on.
        self._remember_writers(
            object_key, response["ETag"], _Writers.of(response.get("Metadata", {}))
        )
        return data, response

    def _must(self, response: dict[str, Any] | None, doing: str) -> dict[str, Any]:
        """``response``, or the error for a 404 that cannot be an absent object."""
        if response is None:
            raise BackendError(f"S3 {doing} failed: not found (HTTP 404)")
        return response

    def _failure(self, exc: Exception, doing: str, *, writing: bool = False) -> BackendError:
        """The persistkit error for a botocore failure while ``doing``; raise it ``from exc``."""
        detail = _describe(exc)
        if _is_transient(exc):
            return TransientBackendError(f"S3 {doing} failed, worth retrying: {detail}")
        if isinstance(exc, ClientError) and _code(exc) == "NoSuchBucket":
            return BackendError(self._missing_bucket_message())
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return BackendError(
                f"S3 {doing} failed: no usable AWS credentials ({detail}); set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, or an instance role"
            )
        if writing:
            return WriteFailedError(f"S3 {doing} failed: {detail}; the previous value is kept")
        return BackendError(f"S3 {doing} failed: {detail}")

    def _missing_bucket_message(self) -> str:
        return (
            f"S3 bucket {self.bucket!r} does not exist at {self.endpoint_url}; create it, "
            "or pass create_bucket=True (create_bucket=1 in an s3:// URL)"
        )

    def _known_state(self, key: str) -> _State | None:
        with self._histories_lock:
            return self._known.get(key)

    def _remember_state(self, key: str, state: _State) -> None:
        with self._histories_lock:
            self._known[key] = state
            self._known.move_to_end(key)
            while len(self._known) > _HISTORIES_REMEMBERED:
                self._known.popitem(last=False)

    def _forget_state(self, key: str) -> None:
        with self._histories_lock:
            self._known.pop(key, None)

    def _remember_writers(self, object_key: str, etag: str, writers: _Writers) -> None:
        with self._histories_lock:
            self._histories[(object_key, etag)] = writers
            while len(self._histories) > _HISTORIES_REMEMBERED:
                self._histories.popitem(last=False)

    def _writers_at(self, object_key: str, etag: str) -> _Writers | None:
        with self._histories_lock:
            return self._histories.get((object_key, etag))

    def _note_unanswered(self, token: str, evicted: int) -> None:
        """An attempt of the write ``token`` over an object with ``evicted`` got no answer."""
        with self._histories_lock:
            known = self._unanswered.get(token)
            self._unanswered[token] = evicted if known is None else min(known, evicted)
            while len(self._unanswered) > _HISTORIES_REMEMBERED:
                self._unanswered.popitem(last=False)

    def _unanswered_evictions(self, token: str) -> int | None:
        """The fewest ``evicted`` under an unanswered attempt of ``token``; ``None``: none."""
        with self._histories_lock:
            return self._unanswered.get(token)

    def _forget_unanswered(self, token: str) -> None:
        with self._histories_lock:
            self._unanswered.pop(token, None)
            self._unanswered_chains.pop(token, None)

    def _note_unanswered_commit(self, token: str, head: _Record) -> None:
        """An attempt of the tick commit ``token`` over ``head`` got no answer."""
        self._note_unanswered(token, head.writers.evicted)
        # Over a record of the previous release, the chain this attempt would start.
        chain = head.seq + 1 if head.writers_since is None else head.writers_since
        with self._histories_lock:
            known = self._unanswered_chains.get(token, chain)
            # Attempts in two chains: the older one decides (it is never the current one).
            self._unanswered_chains[token] = min(known, chain)
            while len(self._unanswered_chains) > _HISTORIES_REMEMBERED:
                self._unanswered_chains.popitem(last=False)

    def _commit_recorded(self, token: str, head: _Record) -> bool | None:
        """Whether ``head``'s writers hold the tick commit ``token``, an attempt of which got
        no answer (``None``: cannot tell); ``False`` when every attempt was answered."""
        evicted_before = self._unanswered_evictions(token)
        if evicted_before is None:
            return False
        with self._histories_lock:
            chain = self._unanswered_chains.get(token)
        recorded = head.writers.holds(self._writer, token, evicted_before)
        oldest_recent = head.recent[0][1] if head.recent else head.seq + 1
        broken = chain is None or (head.writers_since != chain and oldest_recent > chain)
        if recorded is False and broken:
            # A record of the previous release came between: it dropped every entry and
            # reset the count of dropped ones, so a missing entry says nothing; unless
            # the recent commits reach back to the attempt (its seq is at least ``chain``).
            return None
        return recorded

    def _conditional_put_sync(
        self,
        object_key: str,
        what: str,
        data: bytes,
        expect: str | None,
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Put ``data`` if the object is at ETag ``expect`` (``None``: absent), exactly once.

        The write carries a write token in its metadata, the same for a retry
        of the same request (see :class:`WriteTokens`), added to the tokens
        the object it replaces carried, as last read (see :class:`_Writers`).
        When the precondition fails, a HEAD shows whether the object is this
        very write, or replaced it: an attempt whose reply was lost was
        applied, so the write succeeds. When that can no longer be told
        (more writers than fit wrote since), :class:`WriteFailedError` says
        so: reporting a conflict would have the caller apply it again. A
        tombstone counts as absent for ``expect=None``. Returns (the ETag
        written, the response).
        """
        extra = [part for item in sorted((metadata or {}).items()) for part in item]
        request = WriteTokens.fingerprint("put", object_key, data, expect, *extra)
        token = self._tokens.token_for(request)
        doing = f"write of {what}"
        condition: dict[str, str] = {"IfNoneMatch": "*"} if expect is None else {"IfMatch": expect}
        base = _NO_WRITERS if expect is None else self._writers_at(object_key, expect)
        # A retry of an attempt that got no answer looks before it writes: the object
        # may be back at the version it expects (another writer stored the same bytes
        # over our write, so the same ETag), where If-Match would apply it a second time.
        # Not when it writes the bytes it expects (a lease renewal): writing them again
        # changes no value, and stores the time of the write (the lease's expiry) anew.
        look_first = (
            self._unanswered_evictions(token)
            if expect is not None and _md5_etag(data) != expect
            else None
        )
        try:
            while True:
                head: dict[str, Any] | None = None
                if look_first is not None:
                    # The version expected is written over unless it holds this write (or
                    # can no longer tell); any other object is judged below as after a
                    # refused PUT.
                    evicted_then, look_first = look_first, None
                    head = self._call("head_object", f"lookup of {what}", Key=object_key)
                    if head is not None and head["ETag"] == condition.get("IfMatch"):
                        base = _state_of(head).writers
                        if base.holds(self._writer, token, evicted_then) is False:
                            head = None
                if base is None:  # a version not read here: its tokens are one HEAD away
                    head = self._call("head_object", f"lookup of {what}", Key=object_key)
                    if head is None:
                        base = _NO_WRITERS  # no object: the write below is refused
                    elif head["ETag"] == condition.get("IfMatch"):
                        base = _Writers.of(head.get("Metadata", {}))
                        head = None
                if head is None and base is not None:
                    writers = base.written_by(self._writer, token, self._tokens.is_open)
                    written = {**(metadata or {}), **writers.metadata()}
                    try:
                        response = self._must(
                            self._call(
                                "put_object",
                                doing,
                                writing=True,
                                Key=object_key,
                                Body=data,
                                Metadata=written,
                                **condition,
                            ),
                            doing,
                        )
                    except _Refused:
                        head = self._call("head_object", f"lookup of {what}", Key=object_key)
                    except TransientBackendError:
                        self._note_unanswered(token, base.evicted)
                        raise
                    else:
                        self._tokens.settle(request)
                        self._forget_unanswered(token)
                        self._remember_writers(object_key, response["ETag"], writers)
                        return response["ETag"], response
                state = _state_of(head)
                evicted_before = self._unanswered_evictions(token)
                applied = (
                    False  # every attempt was answered: refused
                    if evicted_before is None
                    else state.writers.holds(self._writer, token, evicted_before)
                )
                if applied and head is not None:
                    self._tokens.settle(request)
                    self._forget_unanswered(token)
                    return _md5_etag(data), head  # ours: the reply of the write was lost
                if applied is None:
                    self._tokens.settle(request)
                    raise WriteFailedError(
                        f"S3 {doing}: an attempt got no reply, and the object dropped the "
                        "write tokens of its least recent writers since (more writers wrote it "
                        "than its metadata holds): whether that attempt was applied can no "
                        "longer be told (outcome unknown); read the value and decide"
                    )
                if expect is None and state.deleted and state.object_etag is not None:
                    condition = {"IfMatch": state.object_etag}  # over a tombstone
                    base = state.writers
                    continue
                if expect is None and head is None and "IfMatch" in condition:
                    condition = {"IfNoneMatch": "*"}  # the tombstone went meanwhile
                    base = _NO_WRITERS
                    continue
                self._tokens.settle(request)
                raise _conflict(what, expect, key=what)
        except TransientBackendError:
            raise  # ambiguous: the retry reuses the token
        except BaseException:
            self._tokens.settle(request)
            self._forget_unanswered(token)
            raise

    # -- first use: the bucket, and a tick commit left half-done --------------------------

    def _prepare_sync(self) -> None:
        with self._prepare_lock:
            if self._ready:
                return
            self._check_bucket_sync()
            self._refuse_numbered_commits_sync()
            if self.read_only:  # an operator looking: report a pending commit, replay none
                self._ready = True
                return
            record, etag = self._read_head_sync()
            if not record.applied:
                logger.warning(
                    "persistkit: replaying tick commit %d (%d writes) in %s: its writer "
                    "stopped before it was fully applied",
                    record.seq,
                    len(record.writes),
                    self.url,
                )
                for key, data in record.writes:
                    self._apply_write_sync(record.seq, key, data, None)
                self._mark_applied_sync(record, etag)
            else:
                self._head = (record, etag)
            self._ready = True

    def _refuse_numbered_commits_sync(self) -> None:
        """Refuse to start over tick commits an earlier persistkit left pending.

        Before the head record, each commit was its own object
        ``.commits/{seq:020d}.json``, deleted once applied; one still there was
        never applied, and this release would not apply it.
        """
        prefix = f"{self._root}{COMMITS_DIR}/"
        page = self._list_page_sync(prefix, None, None)
        pending = [
            item["Key"][len(prefix) :]
            for item in page.get("Contents", ())
            if item["Key"][len(prefix) : -len(SUFFIX)].isdigit()
        ]
        if pending:
            raise BackendError(
                f"{self.url} holds {len(pending)} tick commit(s) an earlier persistkit "
                f"recorded and never applied ({', '.join(pending[:3])}); start that version "
                "once to apply them, then this one. Nothing was read or written."
            )

    def _check_bucket_sync(self) -> None:
        if self._call("head_bucket", f"access to bucket {self.bucket!r}") is not None:
            return
        if not self._create_bucket or self.read_only:
            raise BackendError(self._missing_bucket_message())
        region = self._client.meta.region_name
        try:
            if region and region != "us-east-1":
                self._client.create_bucket(
                    Bucket=self.bucket,
                    CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item] # any region name is accepted
                )
            else:
                self._client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) != "BucketAlreadyOwnedByYou":
                raise self._failure(exc, f"creating bucket {self.bucket!r}") from exc
        except BotoCoreError as exc:
            raise self._failure(exc, f"creating bucket {self.bucket!r}") from exc
        logger.info("persistkit: created S3 bucket %r at %s", self.bucket, self.endpoint_url)

    # -- single values -------------------------------------------------------------------

    def _get_sync(self, key: str) -> Versioned | None:
        object_key = self.object_key(key)
        found = self._get_object_sync(object_key, f"read of {key}")
        if found is None:
            return None
        data, response = found
        if _META_DELETED in response.get("Metadata", {}):
            return None
        return Versioned(data, response["ETag"])

    async def get(self, key: str) -> Versioned | None:
        if not self._ready:
            await self._ensure_ready()
        if key in self._applying:
            return _committed_version(self._applying[key])
        return await self._run(self._get_sync, key)

    async def get_many(self, keys: Iterable[str]) -> list[Versioned | None]:
        return list(await asyncio.gather(*(self.get(key) for key in keys)))

    def _put_sync(self, key: str, data: bytes, expect: Expected) -> str:
        object_key = self.object_key(key)
        self._forget_state(key)
        if expect is ANY_VERSION:
            # Unconditional: repeating it after a lost reply stores the same bytes.
            doing = f"write of {key}"
            response = self._call("put_object", doing, writing=True, Key=object_key, Body=data)
            return str(self._must(response, doing)["ETag"])
        # The ETag is the content's MD5: if another writer stored the very same
        # bytes since, If-Match succeeds, which is harmless (same value).
        return self._conditional_put_sync(object_key, key, data, expect)[0]

    async def put(self, key: str, data: bytes, *, expect: Expected = ANY_VERSION) -> str:
        if not self._ready:
            await self._ensure_ready()
        if fencing.get():
            # Under a lease: through a commit, which carries the lease's token.
            await self.commit({key: data}, expect={} if expect is ANY_VERSION else {key: expect})
            return _md5_etag(data)
        return await self._run(self._put_sync, key, data, expect)

    def _head_sync(self, object_key: str, what: str) -> dict[str, Any] | None:
        """HEAD ``object_key``: its ETag and metadata, or ``None`` when absent."""
        return self._call("head_object", f"lookup of {what}", Key=object_key)

    def _state_sync(self, key: str) -> _State:
        return _state_of(self._head_sync(self.object_key(key), key))

    def _delete_object_sync(self, object_key: str, what: str, if_match: str | None = None) -> None:
        condition = {} if if_match is None else {"IfMatch": if_match}
        try:
            self._call(
                "delete_object", f"removal of {what}", writing=True, Key=object_key, **condition
            )
        except _Refused:
            raise _conflict(what, if_match, key=what) from None

    def _delete_sync(self, key: str, expect: Expected) -> bool:
        object_key = self.object_key(key)
        self._forget_state(key)
        if expect is ANY_VERSION or expect is None:
            # S3 answers a delete the same whether the object existed or not.
            state = self._state_sync(key)
            if state.version is None:
                return False
            if expect is None:
                raise ConflictError(f"{key} exists (expected it to be absent)", key=key)
            self._delete_object_sync(object_key, key)
            return True
        # A compare-and-set delete leaves a tombstone carrying its write token,
        # so that a retry after a lost reply recognises it (see the module doc).
        self._conditional_put_sync(object_key, key, b"", expect, {_META_DELETED: "1"})
        return True

    async def delete(self, key: str, *, expect: Expected = ANY_VERSION) -> bool:
        if not self._ready:
            await self._ensure_ready()
        if fencing.get():
            if expect is ANY_VERSION:
                stored = await self.get(key)
                if stored is None:
                    return False
                expect = stored.version
            elif expect is None:
                if await self.get(key) is not None:
                    raise ConflictError(f"{key} exists (expected it to be absent)", key=key)
                return False
            await self.commit({key: None}, expect={key: expect})
            return True
        return await self._run(self._delete_sync, key, expect)

    # -- listing -----------------------------------------------------------------------------

    def _list_page_sync(
        self, prefix: str, delimiter: str | None, token: str | None
    ) -> ListObjectsV2OutputTypeDef:
        arguments: dict[str, Any] = {"Prefix": prefix}
        if delimiter is not None:
            arguments["Delimiter"] = delimiter
        if token is not None:
            arguments["ContinuationToken"] = token
        doing = f"listing of {prefix or '/'}"
        return self._must(self._call("list_objects_v2", doing, **arguments), doing)  # type: ignore[return-value] # the listing's own shape

    async def _pages(
        self, prefix: str, delimiter: str | None
    ) -> AsyncIterator[ListObjectsV2OutputTypeDef]:
        """ListObjectsV2, one page (up to 1000 keys) at a time."""
        token: str | None = None
        while True:
            page = await self._run(self._list_page_sync, prefix, delimiter, token)
            yield page
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    async def _is_entity(self, item: Mapping[str, Any]) -> bool:
        """False for a tombstone: empty, and marked so in its metadata (rare: only empty
        objects need the HEAD)."""
        if item.get("Size", 0) != 0:
            return True
        state = _state_of(await self._run(self._head_sync, item["Key"], item["Key"]))
        return state.version is not None

    async def scan(self, namespace: str, *, recursive: bool = False) -> AsyncIterator[str]:
        if not self._ready:
            await self._ensure_ready()
        base = f"{self._root}{namespace}/" if namespace else self._root
        root_length = len(self._root)
        below: list[str] = []
        # One level with a delimiter: the namespace's own keys, and the folders
        # below it, where those that start with "." (.commits, .quarantine) are skipped.
        async for page in self._pages(base, "/"):
            for item in page.get("Contents", ()):
                name = item["Key"][len(base) :]
                if (
                    name.endswith(SUFFIX)
                    and not name.startswith(".")
                    and await self._is_entity(item)
                ):
                    yield item["Key"][root_length : -len(SUFFIX)]
            if recursive:
                for common in page.get("CommonPrefixes", ()):
                    if not common["Prefix"][len(base) :].startswith("."):
                        below.append(common["Prefix"])
        for folder in below:
            async for page in self._pages(folder, None):
                for item in page.get("Contents", ()):
                    key = item["Key"][root_length:]
                    if (
                        key.endswith(SUFFIX)
                        and not any(
                            not segment or segment.startswith(".") for segment in key.split("/")
                        )
                        and await self._is_entity(item)
                    ):
                        yield key[: -len(SUFFIX)]

    # -- quarantine --------------------------------------------------------------------------

    def _quarantine_sync(self, key: str, reason: str) -> QuarantineEntry:
        """Copy the value aside with its reason, then delete it if it is still that value."""
        stored = self._get_sync(key)
        if stored is None:
            raise EntityNotFoundError(f"no value at {key} to quarantine")
        entry_id = new_quarantine_id(key)
        now = time.time()
        self._quarantine_copy_sync(entry_id, stored.data, reason, now)
        try:
            self._delete_object_sync(self.object_key(key), key, if_match=stored.version)
        except ConflictError:
            # Rewritten since it was read: the newer value stays, the copy set
            # aside is the one that was found bad.
            logger.info("persistkit: %s was rewritten while being quarantined; kept", key)
        return QuarantineEntry(entry_id, key, reason, now)

    def _quarantine_copy_sync(self, entry_id: str, data: bytes, reason: str, at: float) -> None:
        try:
            self._call(
                "put_object",
                f"quarantine of {quarantined_key(entry_id)}",
                writing=True,
                Key=self._quarantine_object(entry_id),
                Body=data,
                Metadata={_META_REASON: _encode_reason(reason), _META_AT: repr(at)},
                IfNoneMatch="*",
            )
        except _Refused:
            raise ConflictError(f"quarantine entry {entry_id} exists already") from None

    async def quarantine(self, key: str, reason: str) -> QuarantineEntry:
        if not self._ready:
            await self._ensure_ready()
        return await self._run(self._quarantine_sync, key, reason)

    def _quarantine_entry_sync(self, object_key: str, entry_id: str) -> QuarantineEntry | None:
        head = self._head_sync(object_key, f"quarantine entry {entry_id}")
        if head is None:
            return None  # restored or purged since it was listed
        metadata = head.get("Metadata", {})
        try:
            quarantined_at = float(metadata.get(_META_AT, ""))
        except ValueError:
            quarantined_at = head["LastModified"].timestamp()
        return QuarantineEntry(
            id=entry_id,
            key=quarantined_key(entry_id),
            reason=unquote(metadata.get(_META_REASON, "")) or "(no reason recorded)",
            quarantined_at=quarantined_at,
        )

    async def list_quarantine(self, namespace: str = "") -> AsyncIterator[QuarantineEntry]:
        self._check_open()
        base = f"{self._root}{QUARANTINE_DIR}/"
        prefix = f"{base}{namespace}/" if namespace else base
        async for page in self._pages(prefix, None):
            lookups = []
            for item in page.get("Contents", ()):
                entry_id = item["Key"][len(base) : -len(SUFFIX)]
                if item["Key"].endswith(SUFFIX) and "@" in entry_id.rpartition("/")[2]:
                    lookups.append(self._run(self._quarantine_entry_sync, item["Key"], entry_id))
            for entry in await asyncio.gather(*lookups):
                if entry is not None:
                    yield entry

    def _read_quarantined_sync(self, entry_id: str) -> bytes:
        quarantined_key(entry_id)  # refuses anything that is not an entry id
        doing = f"read of quarantine entry {entry_id}"
        found = self._get_object_sync(self._quarantine_object(entry_id), doing)
        if found is None:
            raise EntityNotFoundError(f"no quarantine entry {entry_id!r}")
        return found[0]

    async def read_quarantined(self, entry_id: str) -> bytes:
        return await self._run(self._read_quarantined_sync, entry_id)

    def _restore_sync(self, entry_id: str, overwrite: bool) -> str:
        key = quarantined_key(entry_id)
        data = self._read_quarantined_sync(entry_id)
        try:
            self._put_sync(key, data, ANY_VERSION if overwrite else None)
        except ConflictError:
            raise ConflictError(
                f"{key} has a value again; restore with overwrite to replace it", key=key
            ) from None
        self._delete_object_sync(self._quarantine_object(entry_id), f"quarantine entry {entry_id}")
        return key

    async def restore(self, entry_id: str, *, overwrite: bool = False) -> str:
        if not self._ready:
            await self._ensure_ready()
        return await self._run(self._restore_sync, entry_id, overwrite)

    def _purge_sync(self, entry_id: str) -> None:
        quarantined_key(entry_id)
        object_key = self._quarantine_object(entry_id)
        if self._head_sync(object_key, f"quarantine entry {entry_id}") is None:
            raise EntityNotFoundError(f"no quarantine entry {entry_id!r}")
        self._delete_object_sync(object_key, f"quarantine entry {entry_id}")

    async def purge(self, entry_id: str) -> None:
        await self._run(self._purge_sync, entry_id)

    # -- tick commits --------------------------------------------------------------------------

    def _read_head_sync(self) -> tuple[_Record, str | None]:
        """The head commit record and its ETag; ``(_NO_RECORD, None)`` before the first commit."""
        object_key = self._head_object_key()
        doing = "read of the tick commit record"
        found = self._get_object_sync(object_key, doing)
        if found is None:
            return _NO_RECORD, None
        data, response = found
        try:
            return _decode_record(data), str(response["ETag"])
        except CorruptValueError as exc:
            # Not replaced by itself: entity objects carry its sequence numbers and
            # it carries the lease fences, so a fresh one could undo both.
            raise JournalDamagedError(
                f"the tick commit record s3://{self.bucket}/{object_key} is damaged "
                f"({exc.reason}); nothing was applied or written. Copy it aside and put "
                "back the last good version (bucket versioning), or write a record whose "
                f"seq exceeds every entity object's {_META_SEQ} metadata"
            ) from exc

    def _mark_applied_sync(self, record: _Record, etag: str | None) -> None:
        """Record that ``record`` is in every object; a lost race means someone else did."""
        applied = replace(record, applied=True)
        try:
            new_etag, _ = self._conditional_put_sync(
                self._head_object_key(), "the tick commit record", _encode_record(applied), etag
            )
        except ConflictError:
            self._head = self._read_head_sync()
            return
        self._head = (applied, new_etag)

    def _settled_sync(self, seq: int) -> bool:
        """Whether commit ``seq`` is in every object, by whoever applied it."""
        record, _ = self._read_head_sync()
        return record.seq > seq or (record.seq == seq and record.applied)

    def _apply_write_sync(
        self, seq: int, key: str, data: bytes | None, seen: _State | None
    ) -> None:
        """Write ``key`` as commit ``seq`` has it, unless a commit as new or newer did.

        Conditional on the object as it was seen, and tagged with ``seq``: any
        number of appliers (the committer, a process starting, the next
        committer) can race, late ones included, and a key never goes back to
        an older commit's value. A deletion leaves a tombstone so that it
        keeps its tag.
        """
        state = seen if seen is not None else self._state_sync(key)
        while state.seq < seq:
            metadata = {_META_SEQ: str(seq)}
            if data is None:
                metadata[_META_DELETED] = "1"
            # An applier writes no token of its own: the head record holds the commit's.
            metadata.update(state.writers.metadata())
            condition = (
                {"IfNoneMatch": "*"}
                if state.object_etag is None
                else {"IfMatch": state.object_etag}
            )
            try:
                response = self._call(
                    "put_object",
                    f"write of {key}",
                    writing=True,
                    Key=self.object_key(key),
                    Body=b"" if data is None else data,
                    Metadata=metadata,
                    **condition,
                )
                if response is not None:
                    self._remember_state(key, _state_of({**response, "Metadata": metadata}))
                return
            except _Refused:
                if self._settled_sync(seq):
                    return  # applied by another process, and perhaps overwritten since
                state = self._state_sync(key)

    async def _apply_record(
        self, record: _Record, etag: str | None, seen: Mapping[str, _State] | None = None
    ) -> None:
        """Apply ``record`` to every object, then mark it applied."""
        self._applying = dict(record.writes)
        try:
            results = await asyncio.gather(
                *(
                    self._run(
                        self._apply_write_sync,
                        record.seq,
                        key,
                        data,
                        None if seen is None else seen.get(key),
                    )
                    for key, data in record.writes
                ),
                return_exceptions=True,
            )
        finally:
            self._applying = {}
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, PersistError):
                raise result  # cancelled, or a bug: as is
        failures = [result for result in results if isinstance(result, PersistError)]
        if failures:
            first = failures[0]
            error = (
                TransientBackendError if isinstance(first, TransientBackendError) else BackendError
            )
            raise error(
                f"tick commit {record.seq} is recorded, but applying it failed ({first}); "
                "it is applied before this backend's next operation"
            ) from first
        if record.writes:
            await self._run(self._mark_applied_sync, record, etag)

    async def commit(
        self, writes: Mapping[str, bytes | None], *, expect: Mapping[str, Expected] | None = None
    ) -> None:
        """Apply ``writes`` (``None`` deletes) all or none, even across a crash.

        ``expect`` maps keys to the version each must still have (``None``:
        absent); checked when the commit is recorded, so a commit that any
        process replays has the same outcome. Commits from every process are
        recorded in one order and applied in it. Under a lease (the
        leases of :func:`~persistkit.backends.fenced_leases`) a commit carrying an
        older token than the lease's newest raises
        :class:`~persistkit.errors.LeaseLostError` with nothing recorded.
        """
        self._check_open()
        batch = dict(writes)
        expected = dict(expect or {})
        for key in (*batch, *expected):
            _check_commit_key(key)
        if not batch:
            return
        await self._commit(batch, expected, fenced_leases(), None)

    async def _commit(
        self,
        batch: dict[str, bytes | None],
        expected: dict[str, Expected],
        leases: tuple[Lease, ...],
        new_fence: tuple[str, int] | None,
    ) -> None:
        tokens = {lease.name: lease.token for lease in leases}
        parts: list[bytes | str | None] = ["commit"]
        for key, data in sorted(batch.items()):
            parts += [key, data]
        for key, version in sorted(expected.items()):
            parts += ["expect", key, version if isinstance(version, str) else None]
        for name, token in sorted(tokens.items()):
            parts += ["lease", name, str(token)]
        if new_fence is not None:
            parts += ["fence", new_fence[0], str(new_fence[1])]
        request = WriteTokens.fingerprint(*parts)
        write_token = self._tokens.token_for(request)
        locks = self._commit_locks.current()
        await locks.acquire(_COMMIT_LOCK)
        try:
            # Under the lock: a commit that failed while this one waited is
            # replayed first, or it would land on top of this newer one.
            if not self._ready:
                await self._ensure_ready()
            await self._record_and_apply(batch, expected, tokens, new_fence, write_token)
            self._tokens.settle(request)
            self._forget_unanswered(write_token)
        except TransientBackendError:
            # Ambiguous: recorded or not. The head is read again before the next
            # operation, and a retry of this commit finds its token there.
            self._ready = False
            self._head = (_NO_RECORD, None)
            raise
        except (ConflictError, LeaseLostError):
            self._tokens.settle(request)  # decided: nothing was recorded
            self._forget_unanswered(write_token)
            raise
        except BaseException:
            self._tokens.settle(request)
            self._forget_unanswered(write_token)
            self._ready = False
            self._head = (_NO_RECORD, None)
            raise
        finally:
            locks.release(_COMMIT_LOCK)

    async def _record_and_apply(
        self,
        batch: dict[str, bytes | None],
        expected: dict[str, Expected],
        tokens: dict[str, int],
        new_fence: tuple[str, int] | None,
        write_token: str,
    ) -> None:
        """Record the commit as the next head (If-Match on the current one), then apply it.

        Whoever records the next head first applies the current one: the
        records form one sequence, each applied before the next is decided.
        """
        if self._head[1] is None:
            self._head = await self._run(self._read_head_sync)
        while True:
            head, etag = self._head
            for token, seq in head.recent:
                if token == write_token:  # recorded by an attempt whose reply was lost
                    if seq == head.seq and not head.applied:
                        await self._apply_record(head, etag)
                    return
            # An attempt got no answer: recorded more than _RECENT_COMMITS commits ago?
            recorded = self._commit_recorded(write_token, head)
            if recorded:
                return  # applied since
            if recorded is None:
                raise WriteFailedError(
                    f"S3 tick commit to {self.url}: an attempt got no reply, and more "
                    "writers committed since than the commit record keeps the tokens "
                    "of (or a process of an older release committed): whether that "
                    "attempt was recorded can no longer be told (outcome unknown); read "
                    "the values and decide"
                )
            if not head.applied:
                logger.info("persistkit: applying tick commit %d of another writer", head.seq)
                await self._apply_record(head, etag)
                continue
            for name, token_held in tokens.items():
                newest = head.fences.get(name, 0)
                if token_held < newest:
                    raise LeaseLostError(
                        f"lease {name!r} has token {newest} now, this instance holds {token_held}: "
                        f"another instance took it over; nothing was committed to {self.url}",
                        lease=name,
                    )
            # A key this backend's last commit wrote is written over as it left it,
            # without a HEAD; if it changed since, the conditional write is refused
            # and looks again. A compare-and-set key is always looked at afresh: the
            # head record shows other processes' commits but not their plain writes,
            # so no cached state can vouch for the stored version.
            states = {
                key: state
                for key in batch
                if key not in expected and (state := self._known_state(key))
            }
            keys = [key for key in dict.fromkeys((*batch, *expected)) if key not in states]
            looked = await asyncio.gather(*(self._run(self._state_sync, key) for key in keys))
            states.update(zip(keys, looked, strict=True))
            for key, version in expected.items():
                if states[key].version != version:
                    raise _conflict(key, version, key=key)
            fences = dict(head.fences)
            if new_fence is not None:
                fences[new_fence[0]] = max(fences.get(new_fence[0], 0), new_fence[1])
            seq = head.seq + 1
            record = _Record(
                seq,
                tuple(batch.items()),
                not batch,
                fences,
                tokens,
                (*head.recent, (write_token, seq))[-_RECENT_COMMITS:],
                head.writers.written_by(self._writer, write_token, self._tokens.is_open),
                seq if head.writers_since is None else head.writers_since,
            )
            try:
                new_etag, _ = await self._run(
                    self._conditional_put_sync,
                    self._head_object_key(),
                    "the tick commit record",
                    _encode_record(record),
                    etag,
                )
            except TransientBackendError:
                self._note_unanswered_commit(write_token, head)
                raise
            except ConflictError:
                logger.debug("persistkit: tick commit %d is taken by another writer", seq)
                self._head = await self._run(self._read_head_sync)
                continue
            self._head = (record, new_etag)
            try:
                await self._apply_record(record, new_etag, states)
            except TransientBackendError:
                # Recorded, then a later step's reply was lost: a retry past the recent
                # commits must look for its token among the writers' as well.
                self._note_unanswered_commit(write_token, head)
                raise
            return

    # -- leases: one live instance per cluster ---------------------------------------------

    def _read_lease_sync(self, name: str) -> _LeaseObject | None:
        object_key = self._lease_object(name)
        found = self._get_object_sync(object_key, f"read of lease {name}")
        if found is None:
            return None
        data, response = found
        try:
            parsed = orjson.loads(data)
            if parsed["format"] != _LEASE_FORMAT or parsed["name"] != name:
                raise ValueError(f"format {parsed['format']!r}, name {parsed['name']!r}")
            ttl = float(parsed["ttl"])
            lease = Lease(
                name=name,
                token=int(parsed["token"]),
                holder=dict(parsed["holder"]),
                # Judged by the server's clock: when it stored the object, plus the TTL.
                expires_at=response["LastModified"].timestamp() + ttl + _CLOCK_GRANULARITY,
            )
            return _LeaseObject(
                lease, str(response["ETag"]), bool(parsed["released"]), ttl, _server_time(response)
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(
                f"s3://{self.bucket}/{object_key} is not a persistkit lease ({exc}); "
                "remove it only if no instance is running"
            ) from exc

    def _write_lease_sync(
        self, lease: Lease, ttl: float, released: bool, expect: str | None
    ) -> float:
        """Store ``lease`` conditionally; returns the server's time of the write."""
        body = orjson.dumps(
            {
                "format": _LEASE_FORMAT,
                "name": lease.name,
                "token": lease.token,
                "holder": dict(lease.holder),
                "ttl": ttl,
                "released": released,
            }
        )
        _, response = self._conditional_put_sync(
            self._lease_object(lease.name), f"lease {lease.name}", body, expect
        )
        return _server_time(response)

    @staticmethod
    def _holder_text(current: _LeaseObject) -> str:
        holder = current.lease.holder
        return (
            f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since "
            f"{holder.get('since', '?')}, lease expiring at {current.lease.expires_at:.0f} "
            "(server clock, seconds since the epoch)"
        )

    async def acquire_lease(self, name: str, holder: Mapping[str, object], ttl: float) -> Lease:
        """Take the lease ``name`` for ``ttl`` seconds with a larger token than any before.

        The lease object ``.leases/{name}.json`` is written with ``If-Match`` on
        the one read (``If-None-Match: *`` for the first), never deleted, so
        tokens only grow; the new token also exceeds the fence the head record
        keeps for ``name``, even if the lease object was removed. Before
        returning, the new token is recorded as the fence of ``name`` in the
        tick commit record: no commit made under an older token is recorded
        after that. A live lease held by exactly
        ``holder`` (the session's host, pid and ``since``) is the retry of an
        acquisition whose reply was lost: it is returned as taken.
        """
        check_key(name)
        if not ttl > 0:
            raise ValueError(f"a lease needs a positive time-to-live, not {ttl!r}")
        if not self._ready:
            await self._ensure_ready()
        holder = {"since": time.time(), **holder}
        for _ in range(3):
            current = await self._run(self._read_lease_sync, name)
            if current is not None and current.live and current.lease.holder == holder:
                # The retry of this very acquisition (same holder, same "since"):
                # its reply, or its fence commit's, was lost. The fence commit is
                # repeated (recording the same token again changes nothing).
                await self._commit({}, {}, (), (name, current.lease.token))
                return current.lease
            if current is not None and current.live:
                raise InstanceLockedError(
                    f"lease {name!r} in {self.url} is held by {self._holder_text(current)}",
                    holder={**current.lease.holder, "expires_at": current.lease.expires_at},
                )
            # The head record's fence, too: a lease object removed by hand (or by
            # a lifecycle rule) would otherwise restart tokens below it, and every
            # commit of the new holder would be refused as stale.
            head, _ = await self._run(self._read_head_sync)
            newest = max(
                current.lease.token if current is not None else 0, head.fences.get(name, 0)
            )
            token = newest + 1
            lease = Lease(name, token, holder, 0.0)
            try:
                written_at = await self._run(
                    self._write_lease_sync,
                    lease,
                    ttl,
                    False,
                    None if current is None else current.etag,
                )
            except ConflictError:
                continue  # another instance wrote it meanwhile: look again
            await self._commit({}, {}, (), (name, token))
            return Lease(name, token, holder, written_at + ttl)
        current = await self._run(self._read_lease_sync, name)
        raise InstanceLockedError(
            f"lease {name!r} in {self.url} is contended"
            + (f"; held by {self._holder_text(current)}" if current is not None else ""),
            holder={}
            if current is None
            else {**current.lease.holder, "expires_at": current.lease.expires_at},
        )

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease:
        if not ttl > 0:
            raise ValueError(f"a lease needs a positive time-to-live, not {ttl!r}")
        current = await self._run(self._read_lease_sync, lease.name)
        if current is not None and current.lease.token == lease.token and current.live:
            try:
                written_at = await self._run(
                    self._write_lease_sync, lease, ttl, False, current.etag
                )
                return Lease(lease.name, lease.token, lease.holder, written_at + ttl)
            except ConflictError:
                current = await self._run(self._read_lease_sync, lease.name)
        if current is not None and current.lease.token != lease.token:
            raise LeaseLostError(
                f"lease {lease.name!r} (token {lease.token}) was taken over: token "
                f"{current.lease.token} is held by {self._holder_text(current)}",
                lease=lease.name,
                holder={**current.lease.holder, "expires_at": current.lease.expires_at},
            )
        raise LeaseLostError(
            f"lease {lease.name!r} (token {lease.token}) lapsed before it was renewed",
            lease=lease.name,
        )

    async def release_lease(self, lease: Lease) -> None:
        current = await self._run(self._read_lease_sync, lease.name)
        if current is None or current.lease.token != lease.token or current.released:
            return
        try:
            await self._run(self._write_lease_sync, lease, current.ttl, True, current.etag)
        except ConflictError:
            pass  # taken over meanwhile: no longer ours to release

    async def read_leases(self) -> list[Lease]:
        base = f"{self._root}{LEASES_DIR}/"
        names = []
        async for page in self._pages(base, None):
            for item in page.get("Contents", ()):
                if item["Key"].endswith(SUFFIX):
                    names.append(item["Key"][len(base) : -len(SUFFIX)])
        found = await asyncio.gather(*(self._run(self._read_lease_sync, name) for name in names))
        return [current.lease for current in found if current is not None and current.live]

    # -- operations ------------------------------------------------------------------------------

    async def changed_at(self, key: str) -> float | None:
        """When the object holding ``key`` was last written (S3's LastModified)."""
        head = await self._run(self._head_sync, self.object_key(key), key)
        if head is None or _state_of(head).deleted:
            return None
        return float(head["LastModified"].timestamp())

    async def unapplied_commits(self) -> list[str]:
        """The tick commit recorded but not (fully) applied, if any; read-only.

        It is applied before this backend's first operation, so what a running
        backend reports here is another writer's, or one in flight.
        """
        record, _ = await self._run(self._read_head_sync)
        return [] if record.applied else [f"{COMMITS_DIR}/{record.seq:020d}"]

    async def _read_committed(self) -> Snapshot:
        """One read of the objects with the tick commit still being applied laid over them.

        The head record decides its tick: while it is not marked applied, its
        values are the committed ones (pending until applied). Two such reads
        must agree (:meth:`Backend.snapshot`): S3 has no read at one point.
        """
        if not self._ready:
            await self._ensure_ready()
        record, _ = await self._run(self._read_head_sync)
        stored = await self._read_stored()
        committed = {} if record.applied else dict(record.writes)
        return lay_commits_over(stored, committed, {})

    # -- lifecycle -------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Wait for calls in flight, stop the threads, close the client if it is ours."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, True)
        if self._owns_client and not self._inherited:  # an inherited client is the parent's
            self._client.close()

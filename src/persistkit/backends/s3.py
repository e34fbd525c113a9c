"""The S3 backend: one object per entity, on AWS S3 or any S3-compatible server.

Layout under ``s3://bucket/prefix``, mirroring the file backend's folders:

- ``{prefix}/{namespace}/{id}.json``: the value, the exact bytes the file
  backend would write (``prefix/signal/BTCUSDT_trend/BTCUSDT.json``);
- ``{prefix}/.quarantine/{namespace}/{id}@{stamp}.json``: values moved aside,
  their reason in the object's metadata; deleted only by :meth:`S3Backend.purge`;
- ``{prefix}/.commits/{seq:020d}.json``: tick commits recorded but not yet
  applied (see below).

Nothing under a segment that starts with ``.`` is ever listed as an entity.

**Versions** are ETags: the MD5 of the content for a single-part upload, which
is all this backend writes. Two writes of identical bytes therefore carry the
same version (an "ABA" that compare-and-set cannot tell apart), which is
harmless: the value it guards is byte for byte the one the caller read.

**Compare-and-set** is S3's conditional write: ``If-Match: <etag>`` to replace
the version read, ``If-None-Match: *`` to create only. A failed precondition
(412; 409 when a concurrent conditional write is still in flight; 404 from AWS
for ``If-Match`` on a missing key) raises :class:`~persistkit.errors.ConflictError`.

**Tick commits** (:meth:`S3Backend.commit`): S3 has no multi-object
transaction, so a commit first creates one *commit object* holding the whole
batch and a SHA-256 checksum, exclusively (``If-None-Match: *``) under the
next sequence number; a writer that loses the race for a number (412) takes a
later one (the next, or up to 15 beyond at random, so that two busy writers do
not collide in lockstep). Once the commit object exists the tick is decided. It
is then applied to the entity objects and deleted. Before its first operation
(and after any failed commit), a backend replays, in sequence order, every
commit object still present, so a crash between recording and applying never
leaves half a tick visible to a reader that starts afterwards. The replay is
idempotent: it writes the recorded bytes again. What it cannot give is
isolation between live processes: a reader in another process may see a tick
half-applied while its writer is still applying it, and a process that starts
in those milliseconds replays that tick too, possibly over what its writer
wrote right after it. One live writer per prefix is the safe setup.
:meth:`~persistkit.backends.base.Backend.snapshot` (the command line's
``export``) lays the commit objects still present over the objects, and
accepts a read only when a second one agrees with it.

**Errors**: connection failures, timeouts, 5xx and throttling become
:class:`~persistkit.errors.TransientBackendError`, chained with ``from``;
:class:`~persistkit.PersistBase` retries those with its
:class:`~persistkit.RetryPolicy`. Clients made by :meth:`S3Backend.from_url`
disable botocore's own retries (``total_max_attempts=1``) so that the policy is
the only one and its deadline means what it says. Everything else becomes a
:class:`~persistkit.errors.BackendError` (:class:`~persistkit.errors.WriteFailedError`
for a write that did not happen). A compare-and-set whose request reached the
server before the connection died is ambiguous: retried, it may find its own
write and report a conflict.

**Threads**: boto3 blocks, so every call runs in a bounded thread pool owned by
the backend (16 workers by default, never more than the client's connection
pool); :meth:`S3Backend.aclose` shuts it down.

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
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
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
from persistkit.backends._threads import run_to_completion
from persistkit.backends.base import (
    ANY_VERSION,
    Backend,
    Expected,
    QuarantineEntry,
    Snapshot,
    Versioned,
    lay_commits_over,
    new_quarantine_id,
    quarantined_key,
)
from persistkit.backends.file import QUARANTINE_DIR, SUFFIX
from persistkit.errors import (
    BackendError,
    ConflictError,
    CorruptValueError,
    EntityNotFoundError,
    InvalidNameError,
    PersistError,
    StoreClosedError,
    TransientBackendError,
    WriteFailedError,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ListObjectsV2OutputTypeDef

__all__ = ["COMMITS_DIR", "DEFAULT_WORKERS", "S3Backend"]

logger = logging.getLogger("persistkit")

T = TypeVar("T")

COMMITS_DIR = ".commits"
DEFAULT_WORKERS = 16

_COMMIT_FORMAT = "persistkit-commit/1"
_COMMIT_LOCK = "commit"
_MAX_SEQUENCE_ATTEMPTS = 1000
# S3 allows 2 KB of user metadata per object; the reason gets most of it.
_MAX_REASON_BYTES = 1536
_META_REASON = "persistkit-reason"
_META_AT = "persistkit-quarantined-at"
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


# -- tick commit objects ------------------------------------------------------------------


def _encode_commit(seq: int, writes: Mapping[str, bytes | None]) -> bytes:
    """The commit object: a JSON payload, a newline, the payload's SHA-256 in hex.

    Values are base64 because the contract moves arbitrary bytes.
    """
    payload = orjson.dumps(
        {
            "format": _COMMIT_FORMAT,
            "seq": seq,
            "writes": [
                [key, None if data is None else base64.b64encode(data).decode("ascii")]
                for key, data in writes.items()
            ],
        }
    )
    return payload + b"\n" + hashlib.sha256(payload).hexdigest().encode("ascii")


def _decode_commit(seq: int, record: bytes) -> list[tuple[str, bytes | None]]:
    """The writes of a commit object; :class:`CorruptValueError` if it is not whole."""
    payload, newline, checksum = record.rpartition(b"\n")
    if not newline or hashlib.sha256(payload).hexdigest().encode("ascii") != checksum:
        raise CorruptValueError(f"tick commit {seq}: checksum mismatch", reason="bad checksum")
    try:
        parsed = orjson.loads(payload)
        if parsed["format"] != _COMMIT_FORMAT or parsed["seq"] != seq:
            raise ValueError(f"format {parsed['format']!r}, seq {parsed['seq']!r}")
        return [
            (str(key), None if value is None else base64.b64decode(value, validate=True))
            for key, value in parsed["writes"]
        ]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        reason = f"not a tick commit: {exc}"
        raise CorruptValueError(f"tick commit {seq}: {reason}", reason=reason) from exc


def _committed_version(data: bytes | None) -> Versioned | None:
    """A value of the commit being applied, versioned as S3 will: the body's MD5 ETag."""
    if data is None:
        return None
    return Versioned(data, lambda body: f'"{hashlib.md5(body).hexdigest()}"')


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


# -- the backend ----------------------------------------------------------------------------


class S3Backend(Backend):
    """Entities as objects under ``prefix`` in ``bucket``, through a ready boto3 client.

    ``S3Backend(boto3.client("s3"), "my-bucket", "bots/alpha")`` or
    ``S3Backend.from_url("s3://my-bucket/bots/alpha?endpoint_url=http://127.0.0.1:8333")``.
    ``create_bucket=True`` creates a missing bucket on first use; otherwise a
    missing bucket is an error that names it. The backend closes the client in
    :meth:`aclose` only if it made it (``from_url``) or ``owns_client=True``.
    """

    scheme = "s3"

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        *,
        create_bucket: bool = False,
        max_workers: int | None = None,
        owns_client: bool = False,
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
        pool_size = int(getattr(client.meta.config, "max_pool_connections", DEFAULT_WORKERS))
        # Workers beyond the client's connection pool would only queue for a connection.
        workers = max_workers if max_workers is not None else min(DEFAULT_WORKERS, pool_size)
        if workers < 1:
            raise ValueError(f"max_workers must be at least 1, not {workers}")
        self.max_workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="persistkit-s3")
        self._closed = False
        # False until pending tick commits have been replayed (see _prepare_sync).
        self._ready = False
        # The writes of the commit being applied: recorded (so durable) but not
        # yet in every object. Reads here see all of them, never half a tick.
        self._applying: dict[str, bytes | None] = {}
        self._prepare_lock = threading.Lock()
        self._sequence_lock = threading.Lock()
        self._next_seq = 1
        self._commit_locks = LoopLocalKeyedLocks()

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
        session = boto3.Session(profile_name=options.get("profile") or None)
        client = session.client(
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
            client,
            parts.netloc,
            unquote(parts.path),
            create_bucket=create in _TRUE,
            max_workers=workers,
            owns_client=True,
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

    def _commit_object(self, seq: int) -> str:
        return f"{self._root}{COMMITS_DIR}/{seq:020d}{SUFFIX}"

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self!r} is closed")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the backend's thread pool (see :func:`run_to_completion`)."""
        self._check_open()
        return await run_to_completion(self._executor, fn, *args)

    async def _ensure_ready(self) -> None:
        if not self._ready:
            await self._run(self._prepare_sync)

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

    # -- first use: the bucket, and tick commits left half-done --------------------------

    def _prepare_sync(self) -> None:
        with self._prepare_lock:
            if self._ready:
                return
            self._check_bucket_sync()
            if self.read_only:  # an operator looking: report pending commits, replay none
                self._ready = True
                return
            pending = sorted(self._list_commit_records_sync())
            for seq in pending:
                self._replay_sync(seq)
            if pending:
                with self._sequence_lock:
                    self._next_seq = max(self._next_seq, pending[-1] + 1)
            self._ready = True

    def _check_bucket_sync(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _status(exc) != 404:
                raise self._failure(exc, f"access to bucket {self.bucket!r}") from exc
            if not self._create_bucket or self.read_only:
                raise BackendError(self._missing_bucket_message()) from exc
        except BotoCoreError as exc:
            raise self._failure(exc, f"access to bucket {self.bucket!r}") from exc
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

    def _list_commit_records_sync(self) -> list[int]:
        prefix = f"{self._root}{COMMITS_DIR}/"
        found = []
        token: str | None = None
        while True:
            page = self._list_page_sync(prefix, None, token)
            for item in page.get("Contents", ()):
                name = item["Key"][len(prefix) :]
                if name.endswith(SUFFIX) and name[: -len(SUFFIX)].isdigit():
                    found.append(int(name[: -len(SUFFIX)]))
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if token is None:
                return found

    def _fetch_commit_sync(self, seq: int) -> tuple[bytes, str] | None:
        """Commit object ``seq`` and its ETag; ``None`` once applied and deleted."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._commit_object(seq))
            return response["Body"].read(), response["ETag"]
        except ClientError as exc:
            if _is_absent(exc):
                return None
            raise self._failure(exc, f"reading tick commit {seq}") from exc
        except BotoCoreError as exc:
            raise self._failure(exc, f"reading tick commit {seq}") from exc

    def _replay_sync(self, seq: int) -> None:
        """Apply commit ``seq`` (again) and delete it; quarantine it if it is not whole."""
        fetched = self._fetch_commit_sync(seq)
        if fetched is None:
            return  # applied and deleted since it was listed
        record, etag = fetched
        try:
            writes = _decode_commit(seq, record)
        except CorruptValueError as exc:
            reason = exc.reason or str(exc)
            entry = self._quarantine_sync(f"{COMMITS_DIR}/{seq:020d}", reason)
            logger.error(
                "persistkit: tick commit %d in %s is not whole (%s); not applied, "
                "quarantined as %s",
                seq,
                self.url,
                reason,
                entry.id,
            )
            return
        logger.warning(
            "persistkit: replaying tick commit %d (%d writes) in %s: its writer stopped "
            "before it was fully applied",
            seq,
            len(writes),
            self.url,
        )
        for key, data in writes:
            self._apply_write_sync(key, data)
        self._retire_commit_sync(seq, etag)

    # -- single values -------------------------------------------------------------------

    def _get_sync(self, key: str) -> Versioned | None:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self.object_key(key))
            data = response["Body"].read()
        except ClientError as exc:
            if _is_absent(exc):
                return None
            raise self._failure(exc, f"read of {key}") from exc
        except BotoCoreError as exc:
            raise self._failure(exc, f"read of {key}") from exc
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
        client = self._client
        object_key = self.object_key(key)
        try:
            if expect is ANY_VERSION:
                response = client.put_object(Bucket=self.bucket, Key=object_key, Body=data)
            elif expect is None:
                response = client.put_object(
                    Bucket=self.bucket, Key=object_key, Body=data, IfNoneMatch="*"
                )
            else:
                # The ETag is the content's MD5: if another writer stored the very
                # same bytes since, this succeeds, which is harmless (same value).
                response = client.put_object(
                    Bucket=self.bucket, Key=object_key, Body=data, IfMatch=expect
                )
        except ClientError as exc:
            if expect is not ANY_VERSION and _is_precondition_failure(exc):
                if expect is None:
                    raise ConflictError(
                        f"{key} exists already (create-only write)", key=key
                    ) from exc
                raise ConflictError(f"{key} changed since version {expect}", key=key) from exc
            raise self._failure(exc, f"write of {key}", writing=True) from exc
        except BotoCoreError as exc:
            raise self._failure(exc, f"write of {key}", writing=True) from exc
        return response["ETag"]

    async def put(self, key: str, data: bytes, *, expect: Expected = ANY_VERSION) -> str:
        if not self._ready:
            await self._ensure_ready()
        return await self._run(self._put_sync, key, data, expect)

    def _head_sync(self, object_key: str, what: str) -> dict[str, Any] | None:
        """HEAD ``object_key``: its ETag and metadata, or ``None`` when absent."""
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=object_key)
        except ClientError as exc:
            if _is_absent(exc):
                return None
            raise self._failure(exc, f"lookup of {what}") from exc
        except BotoCoreError as exc:
            raise self._failure(exc, f"lookup of {what}") from exc
        return dict(response)

    def _delete_object_sync(self, object_key: str, what: str, if_match: str | None = None) -> None:
        try:
            if if_match is None:
                self._client.delete_object(Bucket=self.bucket, Key=object_key)
            else:
                self._client.delete_object(Bucket=self.bucket, Key=object_key, IfMatch=if_match)
        except ClientError as exc:
            if if_match is not None and _is_precondition_failure(exc):
                raise ConflictError(f"{what} changed since version {if_match}", key=what) from exc
            raise self._failure(exc, f"removal of {what}", writing=True) from exc
        except BotoCoreError as exc:
            raise self._failure(exc, f"removal of {what}", writing=True) from exc

    def _delete_sync(self, key: str, expect: Expected) -> bool:
        object_key = self.object_key(key)
        if expect is ANY_VERSION or expect is None:
            # S3 answers a delete the same whether the object existed or not.
            if self._head_sync(object_key, key) is None:
                return False
            if expect is None:
                raise ConflictError(f"{key} exists (expected it to be absent)", key=key)
            self._delete_object_sync(object_key, key)
            return True
        self._delete_object_sync(object_key, key, if_match=expect)
        return True

    async def delete(self, key: str, *, expect: Expected = ANY_VERSION) -> bool:
        if not self._ready:
            await self._ensure_ready()
        return await self._run(self._delete_sync, key, expect)

    # -- listing -----------------------------------------------------------------------------

    def _list_page_sync(
        self, prefix: str, delimiter: str | None, token: str | None
    ) -> ListObjectsV2OutputTypeDef:
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter is not None:
            arguments["Delimiter"] = delimiter
        if token is not None:
            arguments["ContinuationToken"] = token
        try:
            return self._client.list_objects_v2(**arguments)
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, f"listing of {prefix or '/'}") from exc

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
                if name.endswith(SUFFIX) and not name.startswith("."):
                    yield item["Key"][root_length : -len(SUFFIX)]
            if recursive:
                for common in page.get("CommonPrefixes", ()):
                    if not common["Prefix"][len(base) :].startswith("."):
                        below.append(common["Prefix"])
        for folder in below:
            async for page in self._pages(folder, None):
                for item in page.get("Contents", ()):
                    key = item["Key"][root_length:]
                    if key.endswith(SUFFIX) and not any(
                        not segment or segment.startswith(".") for segment in key.split("/")
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
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._quarantine_object(entry_id),
                Body=stored.data,
                Metadata={_META_REASON: _encode_reason(reason), _META_AT: repr(now)},
                IfNoneMatch="*",
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, f"quarantine of {key}", writing=True) from exc
        try:
            self._delete_object_sync(self.object_key(key), key, if_match=stored.version)
        except ConflictError:
            # Rewritten since it was read: the newer value stays, the copy set
            # aside is the one that was found bad.
            logger.info("persistkit: %s was rewritten while being quarantined; kept", key)
        return QuarantineEntry(entry_id, key, reason, now)

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
        try:
            response = self._client.get_object(
                Bucket=self.bucket, Key=self._quarantine_object(entry_id)
            )
            return response["Body"].read()
        except ClientError as exc:
            if _is_absent(exc):
                raise EntityNotFoundError(f"no quarantine entry {entry_id!r}") from exc
            raise self._failure(exc, f"read of quarantine entry {entry_id}") from exc
        except BotoCoreError as exc:
            raise self._failure(exc, f"read of quarantine entry {entry_id}") from exc

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
        if key.startswith(f"{COMMITS_DIR}/"):
            self._ready = False  # a restored tick commit is replayed before the next operation
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

    def _record_commit_sync(self, writes: Mapping[str, bytes | None]) -> tuple[int, str]:
        """Create the commit object under the next free sequence number: (seq, ETag)."""
        for _ in range(_MAX_SEQUENCE_ATTEMPTS):
            with self._sequence_lock:
                seq = self._next_seq
                self._next_seq += 1
            try:
                response = self._client.put_object(
                    Bucket=self.bucket,
                    Key=self._commit_object(seq),
                    Body=_encode_commit(seq, writes),
                    IfNoneMatch="*",
                )
            except ClientError as exc:
                if _is_precondition_failure(exc):
                    # Taken by another writer. Skip a random stretch as well: two
                    # writers stepping one number at a time collide on every commit,
                    # and a contended conditional write is slow (SeaweedFS: ~1 s).
                    with self._sequence_lock:
                        self._next_seq = max(self._next_seq, seq + 1 + secrets.randbelow(16))
                    logger.debug("persistkit: tick commit %d is taken by another writer", seq)
                    continue
                raise self._failure(exc, f"recording tick commit {seq}", writing=True) from exc
            except BotoCoreError as exc:
                raise self._failure(exc, f"recording tick commit {seq}", writing=True) from exc
            return seq, response["ETag"]
        raise ConflictError(
            f"no free tick commit number after {_MAX_SEQUENCE_ATTEMPTS} attempts in {self.url}"
        )

    def _apply_write_sync(self, key: str, data: bytes | None) -> None:
        """One write of a recorded commit: unconditional, so that a replay can repeat it."""
        object_key = self.object_key(key)
        if data is None:
            self._delete_object_sync(object_key, key)
            return
        try:
            self._client.put_object(Bucket=self.bucket, Key=object_key, Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, f"write of {key}", writing=True) from exc

    def _retire_commit_sync(self, seq: int, etag: str) -> None:
        try:
            self._delete_object_sync(self._commit_object(seq), f"tick commit {seq}", etag)
        except ConflictError:
            pass  # replayed and deleted by another process's start-up: done either way

    async def _apply_commit(self, seq: int, writes: Mapping[str, bytes | None]) -> None:
        results = await asyncio.gather(
            *(self._run(self._apply_write_sync, key, data) for key, data in writes.items()),
            return_exceptions=True,
        )
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
                f"tick commit {seq} is recorded, but applying it failed ({first}); "
                "it is applied before this backend's next operation"
            ) from first

    async def commit(self, writes: Mapping[str, bytes | None]) -> None:
        """Apply ``writes`` (``None`` deletes) all or none, even across a crash.

        Commits from one process are recorded and applied in call order.
        """
        self._check_open()
        batch = dict(writes)
        for key in batch:
            _check_commit_key(key)
        if not batch:
            return
        locks = self._commit_locks.current()
        await locks.acquire(_COMMIT_LOCK)
        try:
            # Under the lock: a commit that failed while this one waited is
            # replayed first, or it would land on top of this newer one.
            if not self._ready:
                await self._ensure_ready()
            seq, etag = await self._run(self._record_commit_sync, batch)
            self._applying = batch
            try:
                await self._apply_commit(seq, batch)
            finally:
                self._applying = {}
            await self._run(self._retire_commit_sync, seq, etag)
        except BaseException:
            # Whatever was recorded is replayed before the next operation, so
            # nothing reads (or writes over) a tick left half-applied.
            self._ready = False
            raise
        finally:
            locks.release(_COMMIT_LOCK)

    # -- operations ------------------------------------------------------------------------------

    async def changed_at(self, key: str) -> float | None:
        """When the object holding ``key`` was last written (S3's LastModified)."""
        head = await self._run(self._head_sync, self.object_key(key), key)
        return None if head is None else float(head["LastModified"].timestamp())

    async def unapplied_commits(self) -> list[str]:
        """Tick commits recorded but not (fully) applied, oldest first; read-only.

        They are applied before this backend's first operation, so what a
        running backend reports here is another writer's, or one in flight.
        """
        found = await self._run(self._list_commit_records_sync)
        return [f"{COMMITS_DIR}/{seq:020d}" for seq in sorted(found)]

    async def _read_committed(self) -> Snapshot:
        """One read of the objects with the tick commits still recorded laid over them.

        A commit object decides its tick: its values are the committed ones
        (pending until applied), in sequence order as a start replays them.
        Two such reads must agree (:meth:`Backend.snapshot`): S3 has no read
        at one point.
        """
        if not self._ready:
            await self._ensure_ready()
        seqs = sorted(await self._run(self._list_commit_records_sync))
        stored = await self._read_stored()
        committed: dict[str, bytes | None] = {}
        behind: list[str] = []
        for seq in seqs:
            fetched = await self._run(self._fetch_commit_sync, seq)
            if fetched is None:
                # Applied and deleted since it was listed: the objects read may
                # hold part of it, and the second read cannot agree.
                behind.append(f"{COMMITS_DIR}/{seq:020d}: applied while being read")
                continue
            try:
                committed.update(_decode_commit(seq, fetched[0]))
            except CorruptValueError as exc:
                behind.append(f"{COMMITS_DIR}/{seq:020d}: not whole ({exc.reason}); not read")
        return lay_commits_over(stored, committed, {}, behind=tuple(behind))

    # -- lifecycle -------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Wait for calls in flight, stop the threads, close the client if it is ours."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, True)
        if self._owns_client:
            self._client.close()

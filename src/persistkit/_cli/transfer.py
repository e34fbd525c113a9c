"""``migrate``, ``export`` and ``import``: verified copies between backends and JSON Lines.

A backend source is read once, at one commit point (:meth:`Backend.snapshot`):
a tick committed during the copy is in it whole or not at all, and values
committed but not yet applied are copied with their committed values. A copy
is planned before anything is written: for every key the destination is read
and compared. Absent there: create it. Same bytes: nothing to do.
Different bytes: the destination is replaced only when it is provably older
(both backends report a change time, see :meth:`Backend.changed_at`, and the
destination's is earlier) or with ``overwrite``; otherwise the key is refused,
and a plan with refusals writes nothing at all. A backend that keeps no change
time (Redis) or a JSON Lines file cannot prove the destination older, so a
differing destination value is always refused there unless ``overwrite``.

Each write is conditional on the destination version seen while planning (a
change in between is a conflict, not an overwrite) and is read back and
compared byte for byte.

JSON Lines: one ``{"key": ..., "value": <json>}`` per entity. A stored value
that is not JSON (a corrupt file) travels as ``"raw_base64"`` instead, so an
export loses nothing; quarantined values carry a ``"quarantine"`` object with
their id, reason and time.
"""

from __future__ import annotations

import base64
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import IO, Any, Literal, Protocol, cast

import orjson

from persistkit import _codec as codec
from persistkit._domains.portable_events import (
    PortableState,
    portable_snapshot,
    portable_values,
)
from persistkit._names import check_store_key
from persistkit.backends import Backend
from persistkit.backends._base import Expected, Snapshot
from persistkit.errors import ConflictError, InvalidNameError

from .targets import EXIT_PROBLEMS, CommandError, format_time, is_paired

__all__ = [
    "BackendSource",
    "CopyPlan",
    "CopyResult",
    "ExportFile",
    "ExportResult",
    "JsonLinesSource",
    "QuarantinedLine",
    "Source",
    "Step",
    "check_key",
    "copy_planned",
    "export_jsonl",
    "import_quarantined",
    "plan_copy",
    "read_jsonl",
]


class Source(Protocol):
    """Where a copy reads from: a backend or a JSON Lines file."""

    label: str

    def keys(self) -> list[str]: ...

    async def read(self, key: str) -> bytes | None: ...

    async def changed_at(self, key: str) -> float | None: ...


class BackendSource:
    """A backend's committed values at one commit point (never its quarantine).

    Read once with :meth:`Backend.snapshot`: a tick committed during the copy
    is in it whole or not at all. The statistics are in the portable form
    (:func:`~persistkit._domains.portable_events.portable_snapshot`): on a file
    root, each pair's logs gather the events derived from its journal at that point.
    """

    def __init__(self, backend: Backend, snapshot: Snapshot, statistics: PortableState) -> None:
        self.backend = backend
        self.snapshot = snapshot
        self.statistics = statistics
        self.label = backend.url

    @classmethod
    async def at_one_point(cls, backend: Backend) -> BackendSource:
        """``backend``'s committed values; a key no store could have written refuses the copy."""
        snapshot, statistics = await portable_snapshot(backend)
        for key in snapshot.values:
            try:
                check_key(key)
            except InvalidNameError as exc:
                raise CommandError(f"{backend.url}: {exc}; nothing was written") from exc
        return cls(backend, snapshot, statistics)

    def keys(self) -> list[str]:
        return list(self.snapshot.values)

    async def read(self, key: str) -> bytes | None:
        return self.snapshot.values.get(key)

    async def changed_at(self, key: str) -> float | None:
        # A pending key's file is older than its value: the commit's time is its age;
        # a pair's logs gathered anew are as old as their newest ingredient.
        committed = self.snapshot.committed_at.get(key, self.statistics.changed_at.get(key))
        return committed if committed is not None else await self.backend.changed_at(key)


@dataclass(frozen=True, slots=True)
class QuarantinedLine:
    key: str
    data: bytes
    reason: str
    line: int


class JsonLinesSource:
    """Values read from an export; a file has no change times."""

    def __init__(self, label: str, values: dict[str, bytes], quarantined: list[QuarantinedLine]):
        self.label = label
        self.values = values
        self.quarantined = quarantined

    def keys(self) -> list[str]:
        return list(self.values)

    async def read(self, key: str) -> bytes | None:
        return self.values.get(key)

    async def changed_at(self, key: str) -> float | None:
        return None

    async def gather_statistics(self) -> list[str]:
        """Read folded statistics heads of a file root (``_persistkit/events/``, in an
        export made before the statistics travelled as logs) as their pairs' logs
        (:func:`~persistkit._domains.portable_events.portable_values`), never as keys;
        returns the statistics that could not be read, in words."""
        state = await portable_values(self.values)
        self.values = state.values
        return state.problems


def check_key(key: object) -> str:
    """A key from outside (an import file, a migrated backend) that a store could have written.

    First that it cannot leave the backend's root, then the library's own name
    rules (:func:`persistkit._names.check_store_key`, lengths included), so that
    nothing is written that a start could not handle.
    """
    if not isinstance(key, str):
        raise InvalidNameError(f"key must be a string, got {type(key).__name__}")
    for segment in key.split("/"):
        if not segment or segment.startswith(".") or "\x00" in segment:
            raise InvalidNameError(
                f"key {key!r} has an empty, hidden or NUL segment; it could leave the root"
            )
    return check_store_key(key, paired=is_paired(key))


def _line_bytes(record: dict[str, Any], where: str) -> bytes:
    if "value" in record:
        return codec.encode(record["value"])
    if "raw_base64" in record:
        try:
            return base64.b64decode(record["raw_base64"], validate=True)
        except (ValueError, TypeError) as exc:
            raise CommandError(f"{where}: raw_base64 is not base64: {exc}") from exc
    raise CommandError(f'{where}: neither "value" nor "raw_base64"')


def read_jsonl(path: str) -> JsonLinesSource:
    """Read a whole export; its first bad line refuses it (``CommandError``, nothing written)."""
    if path == "-":
        return _parse_jsonl("-", sys.stdin.buffer)
    try:
        with open(path, "rb") as handle:
            return _parse_jsonl(path, handle)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _parse_jsonl(path: str, handle: IO[bytes]) -> JsonLinesSource:
    values: dict[str, bytes] = {}
    quarantined: list[QuarantinedLine] = []
    for number, line in enumerate(handle, start=1):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise CommandError(f"{where}: not JSON ({exc})") from exc
        if not isinstance(record, dict) or "key" not in record:
            raise CommandError(f'{where}: expected an object with a "key"')
        try:
            key = check_key(record["key"])
            data = _line_bytes(record, where)
        except (InvalidNameError, ValueError) as exc:
            raise CommandError(f"{where}: {exc}") from exc
        meta = record.get("quarantine")
        if meta is not None:
            reason = meta.get("reason") if isinstance(meta, dict) else None
            quarantined.append(QuarantinedLine(key, data, str(reason or "imported"), number))
        elif key in values:
            raise CommandError(f"{where}: key {key!r} appears twice")
        else:
            values[key] = data
    return JsonLinesSource(path, values, quarantined)


# -- planning and copying ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    key: str
    action: Literal["create", "replace", "refuse"]
    expect: Expected
    why: str


@dataclass(slots=True)
class CopyPlan:
    source: str
    destination: str
    steps: list[Step] = field(default_factory=list)
    identical: int = 0
    only_in_destination: int = 0

    def of(self, action: str) -> list[Step]:
        return [step for step in self.steps if step.action == action]

    @property
    def writes(self) -> list[Step]:
        return [step for step in self.steps if step.action != "refuse"]


async def _decide(
    source: Source, destination: Backend, key: str, data: bytes, overwrite: bool
) -> Step | None:
    current = await destination.get(key)
    if current is None:
        return Step(key, "create", None, "absent in the destination")
    if current.data == data:
        return None
    if overwrite:
        return Step(key, "replace", current.version, "differs; --overwrite")
    source_time = await source.changed_at(key)
    destination_time = await destination.changed_at(key)
    if source_time is not None and destination_time is not None:
        if destination_time < source_time:
            return Step(
                key,
                "replace",
                current.version,
                f"destination is older ({format_time(destination_time)} < "
                f"{format_time(source_time)})",
            )
        why = (
            f"destination differs and is newer or as new ({format_time(destination_time)} >= "
            f"{format_time(source_time)})"
        )
    else:
        why = "destination differs and its age cannot be compared"
    return Step(key, "refuse", current.version, why)


async def plan_copy(
    source: Source,
    destination: Backend,
    *,
    overwrite: bool,
    on_key: Callable[[int], None] | None = None,
) -> CopyPlan:
    """Compare every source key with the destination. Reads only."""
    plan = CopyPlan(source.label, destination.url)
    keys = source.keys()
    for key in keys:
        data = await source.read(key)
        if on_key is not None:
            on_key(1)
        if data is None:
            continue  # removed from the source since it was listed
        step = await _decide(source, destination, key, data, overwrite)
        if step is None:
            plan.identical += 1
        else:
            plan.steps.append(step)
    wanted = set(keys)
    plan.only_in_destination = sum(
        [1 async for key in destination.scan("", recursive=True) if key not in wanted]
    )
    return plan


@dataclass(slots=True)
class CopyResult:
    copied: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


async def copy_planned(
    source: Source,
    destination: Backend,
    plan: CopyPlan,
    *,
    on_key: Callable[[int], None] | None = None,
) -> CopyResult:
    """Write the plan's creates and replaces, each read back and compared byte for byte.

    A destination whose commit checks versions (the file backend) takes the
    whole plan as ONE commit, through the same protocol as a live session's
    tick: all of it or nothing, each key at the version it was planned on, and
    in the commit order every process and every replay of the journal follow,
    so no replay undoes it. Elsewhere each value is one conditional ``put``.
    """
    if plan.of("refuse"):
        raise CommandError(
            f"{len(plan.of('refuse'))} destination values would be overwritten; nothing written",
            EXIT_PROBLEMS,
        )
    result = CopyResult()
    wanted: dict[str, bytes] = {}
    for step in plan.writes:
        data = await source.read(step.key)
        if on_key is not None:
            on_key(1)
        if data is None:
            result.failures.append((step.key, "vanished from the source during the copy"))
        else:
            wanted[step.key] = data
    if destination.commit_checks_versions:
        written = await _commit_all(destination, plan, wanted, result)
    else:
        written = await _put_each(destination, plan, wanted, result)
    for key in written:
        stored = await destination.get(key)
        if stored is None or stored.data != wanted[key]:
            result.failures.append((key, "read back differs from the source"))
        else:
            result.copied += 1
    return result


async def _commit_all(
    destination: Backend, plan: CopyPlan, wanted: dict[str, bytes], result: CopyResult
) -> list[str]:
    if not wanted:
        return []
    expect = {step.key: step.expect for step in plan.writes if step.key in wanted}
    try:
        await cast(Any, destination).commit(wanted, expect=expect)
    except ConflictError as exc:
        changed = exc.key or "a key"
        result.failures.append(
            (changed, "changed in the destination during the copy; nothing written")
        )
        return []
    # Read back from where a start reads: the files, made whole and durable.
    await destination.checkpoint()
    return list(wanted)


async def _put_each(
    destination: Backend, plan: CopyPlan, wanted: dict[str, bytes], result: CopyResult
) -> list[str]:
    written = []
    for step in plan.writes:
        data = wanted.get(step.key)
        if data is None:
            continue
        try:
            await destination.put(step.key, data, expect=step.expect)
        except ConflictError:
            result.failures.append((step.key, "the destination changed during the copy; kept"))
            continue
        written.append(step.key)
    return written


async def import_quarantined(
    destination: Backend, lines: list[QuarantinedLine]
) -> tuple[int, list[tuple[str, str]]]:
    """Put exported quarantine entries back into the destination's quarantine.

    Only where the key is free: the value is stored and moved aside at once,
    so a live value is never replaced by a quarantined one.
    """
    restored = 0
    refused: list[tuple[str, str]] = []
    for line in lines:
        try:
            await destination.put(line.key, line.data, expect=None)
        except ConflictError:
            refused.append((line.key, f"line {line.line}: the key holds a live value"))
            continue
        await destination.quarantine(line.key, line.reason)
        restored += 1
    return restored, refused


# -- export ---------------------------------------------------------------------------


@dataclass(slots=True)
class ExportResult:
    snapshot: Snapshot
    """What was read, and at which point."""
    statistics: PortableState
    """The pairs whose statistics were gathered into their logs, and what could not be."""
    values: int = 0
    raw: list[str] = field(default_factory=list)
    """Keys whose bytes are not JSON, exported as ``raw_base64``."""
    quarantined: int = 0


def _record(key: str, data: bytes) -> dict[str, Any]:
    try:
        return {"key": key, "value": orjson.loads(data)}
    except orjson.JSONDecodeError:
        return {"key": key, "raw_base64": base64.b64encode(data).decode("ascii")}


async def _export_lines(
    backend: Backend,
    snapshot: Snapshot,
    include_quarantine: bool,
    result: ExportResult,
    on_key: Callable[[int], None] | None,
) -> AsyncIterator[bytes]:
    for key, data in snapshot.values.items():
        if on_key is not None:
            on_key(1)
        record = _record(key, data)
        if "raw_base64" in record:
            result.raw.append(key)
        result.values += 1
        yield orjson.dumps(record) + b"\n"
    if include_quarantine:
        async for entry in backend.list_quarantine(""):
            record = _record(entry.key, await backend.read_quarantined(entry.id))
            record["quarantine"] = {
                "id": entry.id,
                "reason": entry.reason,
                "quarantined_at": entry.quarantined_at,
            }
            result.quarantined += 1
            yield orjson.dumps(record) + b"\n"


async def export_jsonl(
    backend: Backend,
    write: Callable[[bytes], object],
    *,
    include_quarantine: bool,
    on_total: Callable[[int], None] | None = None,
    on_key: Callable[[int], None] | None = None,
) -> ExportResult:
    """Pass every committed value of ``backend``, read at one commit point, to ``write``.

    One JSON line each, keys in order. The result says which values were read
    from commits not yet applied, and what could not be read (see
    :class:`~persistkit.backends._base.Snapshot`).
    """
    snapshot, statistics = await portable_snapshot(backend)
    if on_total is not None:
        on_total(len(snapshot.values))
    result = ExportResult(snapshot=snapshot, statistics=statistics)
    async for line in _export_lines(backend, snapshot, include_quarantine, result, on_key):
        write(line)
    return result


class ExportFile:
    """The export's file, written beside its final name and renamed into place when complete.

    A crash or an error never leaves half an export under the final name, and
    an existing file is replaced only with ``overwrite``.
    """

    def __init__(self, path: str, *, overwrite: bool) -> None:
        self.target = os.path.abspath(path)
        if os.path.lexists(self.target) and not overwrite:
            raise CommandError(f"{self.target} exists; pass --overwrite to replace it")
        self.directory = os.path.dirname(self.target)
        name = os.path.basename(self.target)
        self.temp = os.path.join(self.directory, f".{name}.tmp-{secrets.token_hex(6)}")
        try:
            self.handle: IO[bytes] = open(self.temp, "xb")  # noqa: SIM115 - closed in finish/abandon
        except OSError as exc:
            raise CommandError(f"cannot write {self.target}: {exc.strerror or exc}") from exc

    def write(self, data: bytes) -> None:
        try:
            self.handle.write(data)
        except OSError as exc:  # a full disk, say: named, and its space given back
            self.abandon()
            raise CommandError(f"cannot write {self.target}: {exc}") from exc

    def finish(self) -> None:
        """Make the export durable under its final name."""
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            os.replace(self.temp, self.target)
            directory_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory_fd)
            finally:
                os.close(directory_fd)
        except OSError as exc:
            self.abandon()
            raise CommandError(f"cannot write {self.target}: {exc}") from exc

    def abandon(self) -> None:
        try:
            # Closing flushes what is buffered, which fails again on a full disk.
            self.handle.close()
        except OSError:
            pass
        finally:
            try:
                os.unlink(self.temp)
            except FileNotFoundError:
                pass

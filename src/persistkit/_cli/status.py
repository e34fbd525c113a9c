"""``persistkit status``: is the bot running, is its state committed, does anything need a person?

The backtest poller's ``status`` for persistkit, read-only like ``preflight``
(nothing is created, locked, written or replayed, so it is safe beside a
running bot, every few seconds with ``--watch``):

- which live sessions hold which locks: pid, host, since, and whether the
  holder is still alive where this machine can know it (see :func:`session_locks`,
  the one place a backend's own leases plug in);
- when each domain last committed, from the commit journal's records and the
  entity files' change times;
- the order intents not final yet, those in doubt (``pending``, ``sent``,
  ``unknown``: orders a crash may have left in flight) listed by name;
- the commit journal: its size, the commits since its last checkpoint, and
  whether they wait for a start (no session runs) or are the running session's;
- quarantined values, durability warnings, and every problem ``preflight``
  finds (a damaged journal, a symbolic link inside the root, a value a start
  would quarantine ...): :func:`~persistkit._cli.preflight.run_preflight` is run
  as it is, so the two commands never disagree.

Anything that needs a person makes the exit code 1; see :attr:`StatusReport.attention`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from persistkit._history import drop_record_only
from persistkit._live.lock import held_locks, read_holder, session_holders
from persistkit._live.session import LOCK_DIR, LOCK_FILE
from persistkit._names import decode_segment, split_pair
from persistkit.backends import Backend
from persistkit.backends._base import Lease, QuarantineEntry, split_key
from persistkit.backends._file import FileBackend
from persistkit.backends._journal import JOURNAL_DIR, JOURNAL_FILE, read_journal_file
from persistkit.errors import (
    BackendError,
    CorruptValueError,
    ForeignSymlinkError,
    InvalidNameError,
    JournalDamagedError,
    PersistError,
)
from persistkit.models import OrderIntent

from .inventory import decode_value
from .preflight import PreflightReport, Problem, run_preflight
from .targets import (
    EXIT_COULD_NOT_RUN,
    EXIT_OK,
    EXIT_PROBLEMS,
    CommandError,
    format_time,
    iso_time,
    plural,
    printable,
    store_for,
)

__all__ = [
    "DOMAINS",
    "DomainActivity",
    "JournalState",
    "SessionHolder",
    "Sessions",
    "StatusReport",
    "collect_status",
    "describe_holder",
    "refuse_beside_running_sessions",
    "session_locks",
    "status_json",
    "status_lines",
    "watch_status",
]

DOMAINS = ("signal", "risk", "schedule", "partial", "intent")
"""Always listed, in this order; other namespaces of the root follow them."""

_CHANGED_AT_BATCH = 32
"""``changed_at`` calls in flight together (one HEAD each on S3)."""


@dataclass(frozen=True, slots=True)
class SessionHolder:
    """One live session, as its holder file (or its backend's lease) describes it."""

    pid: int | None
    host: str
    since: str | None
    alive: bool | None
    """``None``: cannot be known from here (another host)."""
    locks: list[str]
    """What it locks, in words: ``BTCUSDT / trend``, ``risk main``."""
    where: str | None = None
    """Its holder file (or lease key)."""


@dataclass(slots=True)
class Sessions:
    known: bool
    """Whether this backend can tell who runs on it at all."""
    why_unknown: str | None = None
    holders: list[SessionHolder] = field(default_factory=list)
    unnamed: list[str] = field(default_factory=list)
    """Locks some process holds that no holder file names (described as found)."""

    @property
    def running(self) -> list[SessionHolder]:
        return [holder for holder in self.holders if holder.alive is not False]

    @property
    def gone(self) -> list[SessionHolder]:
        """Sessions that stopped without closing (killed): their holder file is stale."""
        return [holder for holder in self.holders if holder.alive is False]


@dataclass(frozen=True, slots=True)
class DomainActivity:
    domain: str
    entities: int
    last_change: float | None
    """The newest change, in seconds: a commit time for a key the journal holds,
    else the entity's change time (file: mtime; S3: LastModified; Redis: none)."""


@dataclass(frozen=True, slots=True)
class JournalState:
    """The file backend's shared commit journal, as read by :func:`read_journal_file`."""

    path: str
    size: int
    commits: int
    """Records since its last checkpoint: what a start replays."""
    keys: int
    """Keys those commits wrote."""
    keys_behind: int
    """Keys whose entity file does not hold the committed value yet."""
    last_commit: float | None


@dataclass(slots=True)
class StatusReport:
    url: str
    checked_at: float
    sessions: Sessions
    domains: list[DomainActivity] | None
    """``None`` when the values cannot be listed (a damaged or linked journal)."""
    journal: JournalState | None
    commits_waiting: int | None
    """Commits recorded and not yet applied in place (file: the journal's records);
    ``None`` when they cannot be read (a damaged or linked journal)."""
    quarantine: list[QuarantineEntry]
    open_intents: list[OrderIntent] | None
    """Order intents not final, by pair, in the order first written; ``None`` when the
    values cannot be listed."""
    durability_warnings: list[str]
    problems: list[Problem]
    """What ``preflight`` counts as a problem (durability warnings apart)."""
    notes: list[Problem]
    attention: list[str] = field(default_factory=list)
    """Why the exit code is 1, one sentence each; empty when healthy."""

    @property
    def exit_code(self) -> int:
        return EXIT_PROBLEMS if self.attention else EXIT_OK

    @property
    def intents_in_doubt(self) -> list[OrderIntent]:
        """The open intents whose outcome only the exchange knows (pending, sent, unknown)."""
        return [intent for intent in self.open_intents or [] if intent.unresolved]


# -- who runs -----------------------------------------------------------------------------


def _describe_lock(name: str) -> str:
    """``pair-BTCUSDT_trend`` -> ``BTCUSDT / trend``; ``risk-main`` -> ``risk main``."""
    kind, _, encoded = name.partition("-")
    try:
        if kind == "pair":
            symbol, strategy = split_pair(encoded)
            return f"{symbol} / {strategy}"
        if kind == "risk":
            return f"risk {decode_segment(encoded)}"
    except InvalidNameError:
        pass
    return name


def _who(holder: SessionHolder) -> str:
    """``pid 42 on host, since 2026-11-30 09:00:48 UTC``."""
    since = (holder.since or "?").replace("T", " ").removesuffix("Z")
    return f"pid {holder.pid} on {holder.host}, since {since} UTC"


def _holder(found: dict[str, object], where: str | None) -> SessionHolder:
    pid, alive, locks = found.get("pid"), found.get("alive"), found.get("locks")
    return SessionHolder(
        pid=pid if isinstance(pid, int) else None,
        host=str(found.get("host", "?")),
        since=str(found["since"]) if "since" in found else None,
        alive=alive if isinstance(alive, bool) else None,
        locks=[_describe_lock(str(name)) for name in locks] if isinstance(locks, list) else [],
        where=where,
    )


def _file_sessions(root: str) -> Sessions:
    """The sessions of ``root`` and of every root below it (a session's ``base_dir``
    may be a folder inside another root: its writes land in this root's files)."""
    sessions = _sessions_of_root(root)
    for nested in _roots_below(root):
        inner = _sessions_of_root(nested)
        sessions.known = sessions.known and inner.known
        sessions.why_unknown = sessions.why_unknown or inner.why_unknown
        sessions.holders.extend(inner.holders)
        sessions.unnamed.extend(inner.unnamed)
    return sessions


def _roots_below(root: str) -> list[str]:
    """Folders below ``root`` holding a ``.locks`` of their own (links never followed)."""
    found = []
    for folder, subfolders, _ in os.walk(root, followlinks=False):
        if folder != root and LOCK_DIR in subfolders:
            found.append(folder)
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
    return found


def _sessions_of_root(root: str) -> Sessions:
    lock_dir = os.path.join(root, LOCK_DIR)
    lock_file = os.path.join(lock_dir, LOCK_FILE)
    try:
        holders = [_holder(found, str(found.get("file"))) for found in session_holders(lock_file)]
    except ForeignSymlinkError as exc:
        return Sessions(known=False, why_unknown=str(exc))
    sessions = Sessions(known=True, holders=holders)
    for path in held_locks(lock_dir):
        if path == lock_file:
            if not any(holder.alive for holder in holders):
                sessions.unnamed.append(f"{path}: locked by a process no holder file names")
            continue
        described = ", ".join(f"{key} {value}" for key, value in read_holder(path).items())
        sessions.unnamed.append(f"{path}: locked ({described or 'no holder named'})")
    return sessions


def _lease_holders(leases: list[Lease]) -> list[SessionHolder]:
    """One holder per session (host, pid, since), with every lock name it leases."""
    by_holder: dict[tuple[str, object, object], list[Lease]] = {}
    for lease in sorted(leases, key=lambda lease: lease.name):
        holder = lease.holder
        who = (str(holder.get("host", "?")), holder.get("pid"), holder.get("since"))
        by_holder.setdefault(who, []).append(lease)
    found = []
    for (host, pid, since), held in by_holder.items():
        expires = min(lease.expires_at for lease in held)
        found.append(
            SessionHolder(
                pid=pid if isinstance(pid, int) else None,
                host=host,
                # As a holder file writes it, so that both read alike.
                since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
                if isinstance(since, int | float)
                else None,
                alive=True,  # a lease not yet lapsed: its holder renewed it in time
                locks=[_describe_lock(lease.name) for lease in held],
                where=f"leases in the backend, renewed until {iso_time(expires)}",
            )
        )
    return found


async def session_locks(backend: Backend) -> Sessions:
    """Who holds ``backend``'s live-session locks: where each backend's knowledge plugs in.

    A file root: the range locks and holder files under ``ROOT/.locks``, read
    without taking anything (:func:`persistkit._live.lock.session_holders`).
    A backend that keeps leases (:attr:`Backend.leases`: S3, Redis once it
    does): its :meth:`Backend.read_leases`, each lease not yet lapsed being a
    live holder. Any other backend cannot tell (``known=False``): a live
    session then locks on its own machine only, under its ``base_dir``.
    """
    if isinstance(backend, FileBackend):
        return _file_sessions(backend.root)
    if backend.leases:
        return Sessions(known=True, holders=_lease_holders(await backend.read_leases()))
    return Sessions(
        known=False,
        why_unknown=(
            f"{backend.url} keeps no live-session leases: a live session locks on its own "
            "machine, under its base_dir/.locks (run `persistkit status BASE_DIR` there)"
        ),
    )


def describe_holder(holder: SessionHolder) -> str:
    """``pid 4242 on host bot-1 since 2026-11-30T09:00:00Z``, as an error message names it."""
    described = " ".join(
        f"{label} {value}"
        for label, value in (("pid", holder.pid), ("on host", holder.host), ("since", holder.since))
        if value is not None
    )
    if holder.alive is None:
        described += " (whether it still runs cannot be told from this host)"
    return described


async def refuse_beside_running_sessions(
    backend: Backend, *, force: bool = False, how_to_force: str | None = None
) -> list[SessionHolder]:
    """Refuse (exit 1) a change to a root a live session holds, unless ``force``.

    The bot owns its state. Who holds the root is :func:`session_locks`' answer,
    the same ``status`` shows. ``how_to_force`` says what ``--force`` does for
    the command; without it the command has no ``--force``. A file root whose
    sessions cannot be told (a linked ``.locks``) is refused too, exit 2: a
    change is never made blind. A backend that cannot tell at all (Redis and S3
    until they keep leases) is not refused. Returns the sessions a forced
    change is written beside.
    """
    sessions = await session_locks(backend)
    if not sessions.known:
        if isinstance(backend, FileBackend):
            raise CommandError(
                f"cannot tell whether a live session holds {backend.root} "
                f"({sessions.why_unknown}); nothing was written"
            )
        return []
    running = [describe_holder(holder) for holder in sessions.running] + sessions.unnamed
    if not running or force:
        return sessions.running
    where = backend.root if isinstance(backend, FileBackend) else backend.url
    advice = "Stop it first, then run this again"
    if how_to_force:
        advice += f", or pass --force: {how_to_force}"
    raise CommandError(
        f"a live session holds {where} ({'; '.join(running)}); nothing was written. {advice}.",
        EXIT_PROBLEMS,
    )


# -- what is committed ----------------------------------------------------------------------


def _domain_of(key: str) -> str:
    namespace, _ = split_key(key)
    return namespace.partition("/")[0] or "-"


def _journal_state(backend: FileBackend, committed_at: dict[str, float]) -> JournalState | None:
    """The shared journal read as bytes (never opened for writing, never locked).

    ``committed_at`` gets the commit time of every key the journal holds: its
    file's change time is when the applier wrote it, later.
    """
    # The backend's own confined reader (a private method on purpose: one way to
    # read a file below the root without following a link).
    read = backend._read_at
    path = f"{backend.root}/{JOURNAL_DIR}/{JOURNAL_FILE}"
    data = read(None, path)
    if data is None:
        return None
    _, records = read_journal_file(data)
    newest: dict[str, bytes | None] = {}
    for record in records:
        newest.update(record.writes)
        committed_at.update(dict.fromkeys(record.writes, record.time_ns / 1e9))
    # What a record carries for the statistics is no key: it never gets a file.
    drop_record_only(newest)
    drop_record_only(committed_at)
    behind = sum(1 for key, value in newest.items() if read(None, backend.path_of(key)) != value)
    return JournalState(
        path=path,
        size=len(data),
        commits=len(records),
        keys=len(newest),
        keys_behind=behind,
        last_commit=records[-1].time_ns / 1e9 if records else None,
    )


async def _domain_activity(
    backend: Backend, committed_at: dict[str, float]
) -> list[DomainActivity]:
    """Entities per domain, and the newest change among them and the journal's commits
    (a removal committed in the journal counts too)."""
    keys = [key async for key in backend.scan("", recursive=True)]
    asked = [key for key in keys if key not in committed_at]
    changed: dict[str, float | None] = {}
    for start in range(0, len(asked), _CHANGED_AT_BATCH):
        batch = asked[start : start + _CHANGED_AT_BATCH]
        found = await asyncio.gather(*(backend.changed_at(key) for key in batch))
        changed.update(zip(batch, found, strict=True))
    counts: dict[str, int] = dict.fromkeys(DOMAINS, 0)
    for key in keys:
        domain = _domain_of(key)
        counts[domain] = counts.get(domain, 0) + 1
    newest: dict[str, float] = {}
    for key, when in [*changed.items(), *committed_at.items()]:
        if when is not None:
            domain = _domain_of(key)
            counts.setdefault(domain, 0)
            newest[domain] = max(newest.get(domain, 0.0), when)
    order = [*DOMAINS, *sorted(set(counts) - set(DOMAINS))]
    return [DomainActivity(domain, counts[domain], newest.get(domain)) for domain in order]


async def _open_intents(backend: Backend) -> list[OrderIntent]:
    """Every order intent not final, by pair, in the order first written; a value that
    does not decode is left to preflight, which reports it."""
    keys = sorted([key async for key in backend.scan("intent", recursive=True)])
    found: list[OrderIntent] = []
    for key, stored in zip(keys, await backend.get_many(keys), strict=True):
        namespace, _ = split_key(key)
        if stored is None or namespace.count("/") != 1:
            continue
        try:
            value = decode_value(store_for(backend, namespace), key, stored.data)
        except CorruptValueError:
            continue
        found.extend(intent for intent in (value or {}).values() if not intent.final)
    return found


# -- the report -----------------------------------------------------------------------------


def _judge(report: StatusReport) -> None:
    """Fill ``report.attention``: everything a person should look at, in plain words."""
    attention = report.attention
    sessions = report.sessions
    for holder in sessions.gone:
        attention.append(
            f"a live session stopped without closing ({_who(holder)}): killed or crashed; "
            "the next start removes its holder file"
        )
    waiting = plural(report.commits_waiting or 0, "commit")
    if report.commits_waiting and not sessions.known:
        attention.append(
            f"{waiting} waiting to be applied: a writer in the middle of one, or one that "
            "stopped before applying it (whether a session runs cannot be told here); "
            "the next start applies them"
        )
    elif report.commits_waiting and not sessions.running:
        attention.append(
            f"{waiting} waiting to be applied and no live session runs: a bot stopped "
            "without closing; every reader already includes them, and the next start "
            "applies them"
        )
    in_doubt = report.intents_in_doubt
    if in_doubt and sessions.known and not sessions.running:
        attention.append(
            f"{plural(len(in_doubt), 'order intent')} in doubt (pending, sent or unknown) and "
            "no live session runs: orders a stopped bot may have sent; its next start returns "
            "them in open_intents, and `await session.reconcile(lookup)` asks the exchange"
        )
    if report.quarantine:
        attention.append(
            f"{plural(len(report.quarantine), 'value')} in quarantine: see "
            "`persistkit quarantine list`, then restore or purge each"
        )
    attention.extend(f"durability: {warning}" for warning in report.durability_warnings)
    attention.extend(
        f"[{problem.kind}] {problem.where}: {problem.detail}" for problem in report.problems
    )


def _split_preflight(
    preflight: PreflightReport, sessions: Sessions
) -> tuple[list[str], list[Problem], list[Problem]]:
    """Preflight's findings as status sees them: warnings, problems, notes."""
    warnings = [problem.detail for problem in preflight.of_kind("durability")]
    problems: list[Problem] = []
    notes = [note for note in preflight.notes if note.kind != "unapplied-commit"]
    for problem in preflight.problems:
        if problem.kind == "durability":
            continue
        if problem.kind == "orphan" and sessions.running:
            # Beside a running bot, a temp file may be a write in flight.
            notes.append(problem)
            continue
        problems.append(problem)
    return warnings, problems, notes


async def collect_status(backend: Backend) -> StatusReport:
    """Everything ``persistkit status`` shows, read without changing anything.

    ``CommandError`` (from preflight) when the backend cannot be listed at all.
    """
    checked_at = time.time()
    sessions = await session_locks(backend)
    preflight = await run_preflight(backend)
    warnings, problems, notes = _split_preflight(preflight, sessions)
    committed_at: dict[str, float] = {}
    journal: JournalState | None = None
    if isinstance(backend, FileBackend) and preflight.unchecked is None:
        try:
            journal = _journal_state(backend, committed_at)
        except (ForeignSymlinkError, JournalDamagedError):
            journal = None  # preflight reported it
    domains: list[DomainActivity] | None = None
    commits_waiting: int | None = None
    quarantine: list[QuarantineEntry] = []
    open_intents: list[OrderIntent] | None = None
    try:
        # Kept apart from the values: readable even when the journal is not.
        quarantine = [entry async for entry in backend.list_quarantine("")]
        if preflight.unchecked is None:
            domains = await _domain_activity(backend, committed_at)
            open_intents = await _open_intents(backend)
            if journal is not None:
                commits_waiting = journal.commits
            else:
                commits_waiting = len(await backend.unapplied_commits())
    except (ForeignSymlinkError, JournalDamagedError):
        pass  # preflight reported it
    except BackendError as exc:
        problems.append(Problem("unreadable", backend.url, str(exc), "fail to start"))
    report = StatusReport(
        url=backend.url,
        checked_at=checked_at,
        sessions=sessions,
        domains=domains,
        journal=journal,
        commits_waiting=commits_waiting,
        quarantine=quarantine,
        open_intents=open_intents,
        durability_warnings=warnings,
        problems=problems,
        notes=notes,
    )
    _judge(report)
    return report


async def watch_status(
    backend: Backend, interval: float, show: Callable[[list[str], int], None]
) -> None:
    """Every ``interval`` seconds, ``show(lines, exit_code)`` of a new report, until cancelled.

    A refresh that cannot run (a server away for a moment) is shown as such,
    with exit code 2, and the watch goes on: an incident is when it matters.
    """
    while True:
        try:
            report = await collect_status(backend)
        except (CommandError, PersistError, OSError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            show(
                [f"Status of {backend.url} at {format_time(time.time())} UTC: could not run: "
                 f"{reason}"],
                EXIT_COULD_NOT_RUN,
            )  # fmt: skip
        else:
            show(status_lines(report), report.exit_code)
        await asyncio.sleep(interval)


# -- words and JSON -------------------------------------------------------------------------


def _holder_json(holder: SessionHolder) -> dict[str, Any]:
    return {
        "pid": holder.pid,
        "host": holder.host,
        "since": holder.since,
        "alive": holder.alive,
        "locks": holder.locks,
        "where": holder.where,
    }


def status_json(report: StatusReport) -> dict[str, Any]:
    """The ``--json`` document (its keys are documented in the README)."""
    journal = report.journal
    return {
        "backend": report.url,
        "status": "healthy" if not report.attention else "needs-attention",
        "exit_code": report.exit_code,
        "checked_at": iso_time(report.checked_at),
        "sessions": {
            "known": report.sessions.known,
            "why_unknown": report.sessions.why_unknown,
            "running": [_holder_json(holder) for holder in report.sessions.running],
            "gone": [_holder_json(holder) for holder in report.sessions.gone],
            "unnamed_locks": report.sessions.unnamed,
        },
        "domains": None
        if report.domains is None
        else [
            {
                "domain": activity.domain,
                "entities": activity.entities,
                "last_change": iso_time(activity.last_change),
            }
            for activity in report.domains
        ],
        "journal": None
        if journal is None
        else {
            "path": journal.path,
            "bytes": journal.size,
            "commits": journal.commits,
            "keys": journal.keys,
            "keys_behind": journal.keys_behind,
            "last_commit": iso_time(journal.last_commit),
        },
        "commits_waiting": report.commits_waiting,
        "quarantine": [
            {
                "id": entry.id,
                "key": entry.key,
                "reason": entry.reason,
                "quarantined_at": iso_time(entry.quarantined_at),
            }
            for entry in report.quarantine
        ],
        "open_intents": None
        if report.open_intents is None
        else [
            {**intent.model_dump(mode="json"), "in_doubt": intent.unresolved}
            for intent in report.open_intents
        ],
        "durability_warnings": report.durability_warnings,
        "problems": [
            {"kind": problem.kind, "where": problem.where, "detail": problem.detail}
            for problem in report.problems
        ],
        "notes": [
            {"kind": note.kind, "where": note.where, "detail": note.detail} for note in report.notes
        ],
        "attention": report.attention,
    }


_SHOWN_QUARANTINE = 5


def _alive_words(holder: SessionHolder) -> str:
    if holder.alive is None:
        return "alive or not: cannot be known from this host"
    return "alive" if holder.alive else "gone (stopped without closing)"


def _session_lines(sessions: Sessions) -> list[str]:
    if not sessions.known:
        return [f"  sessions     unknown: {sessions.why_unknown}"]
    running, gone = sessions.running, sessions.gone
    lines = [
        "  sessions     "
        + (f"{plural(len(running), 'live session')} running" if running else "none running")
        + (f"; {len(gone)} gone without closing" if gone else "")
    ]
    for holder in [*running, *gone]:
        lines.append(f"    {_who(holder)}: {_alive_words(holder)}")
        if holder.locks:
            lines.append(f"      locks {', '.join(holder.locks)}")
    lines += [f"    {described}" for described in sessions.unnamed]
    return lines


def _journal_line(report: StatusReport) -> str:
    journal = report.journal
    if journal is None:
        if report.commits_waiting is None:
            return "  commits      not read: see the problems below"
        waiting = plural(report.commits_waiting, "commit") if report.commits_waiting else "none"
        return f"  commits      {waiting} waiting to be applied"
    if not journal.commits:
        return f"  journal      {journal.size} bytes, no commit since its last checkpoint"
    whose = (
        "the running session's (applied in the background, checkpointed when it closes)"
        if report.sessions.running
        else "waiting for the next start, which applies them"
    )
    return (
        f"  journal      {journal.size} bytes, {plural(journal.commits, 'commit')} since "
        f"its last checkpoint (last at {format_time(journal.last_commit)} UTC), {whose}; "
        + (
            f"{journal.keys_behind} of its {plural(journal.keys, 'key')} not yet in their files"
            if journal.keys_behind
            else f"its {plural(journal.keys, 'key')} all in their files"
        )
    )


_SHOWN_INTENTS = 10


def _intent_lines(report: StatusReport) -> list[str]:
    if report.open_intents is None:
        return ["  intents      not listed: see the problems below"]
    if not report.open_intents:
        return ["  intents      no open order intent"]
    in_doubt = report.intents_in_doubt
    lines = [
        f"  intents      {plural(len(report.open_intents), 'open order intent')}, "
        f"{len(in_doubt)} in doubt (pending, sent, unknown)"
    ]
    for intent in report.open_intents[:_SHOWN_INTENTS]:
        price = "market" if intent.price is None else f"{intent.price:g}"
        lines.append(
            f"    {printable(intent.symbol)} / {printable(intent.strategy_name)}  "
            f"{intent.client_order_id}  {intent.side} {intent.quantity:g} @ {price}  "
            f"{intent.status}"
            + (f" ({printable(intent.exchange_order_id)})" if intent.exchange_order_id else "")
        )
    if len(report.open_intents) > _SHOWN_INTENTS:
        lines.append(f"    ... and {len(report.open_intents) - _SHOWN_INTENTS} more")
    return lines


def status_lines(report: StatusReport) -> list[str]:
    """The report in plain words, one string per line."""
    lines = [f"Status of {report.url} at {format_time(report.checked_at)} UTC (read-only)"]
    lines += _session_lines(report.sessions)
    if report.domains is None:
        lines.append("  domains      not listed: see the problems below")
    else:
        lines.append("  domains      entities  last committed (UTC)")
        for activity in report.domains:
            lines.append(
                f"    {activity.domain:<12}{activity.entities:>8}  "
                f"{format_time(activity.last_change)}"
            )
    lines.append(_journal_line(report))
    lines += _intent_lines(report)
    if report.quarantine:
        lines.append(f"  quarantine   {plural(len(report.quarantine), 'value')}:")
        for entry in report.quarantine[:_SHOWN_QUARANTINE]:
            lines.append(f"    {entry.key}: {entry.reason}")
        if len(report.quarantine) > _SHOWN_QUARANTINE:
            lines.append(f"    ... and {len(report.quarantine) - _SHOWN_QUARANTINE} more")
    else:
        lines.append("  quarantine   empty")
    warnings = report.durability_warnings
    lines.append(
        "  durability   "
        + (f"{plural(len(warnings), 'warning')} (below)" if warnings else "no warnings")
    )
    lines.append(
        "  problems     "
        + (f"{len(report.problems)} (below)" if report.problems else "none found by preflight")
    )
    for note in report.notes:
        lines.append(f"  note: [{note.kind}] {note.where}: {note.detail}")
    if report.attention:
        lines.append(f"Needs attention (exit {report.exit_code}):")
        lines += [f"  - {reason}" for reason in report.attention]
    else:
        lines.append(f"Result: healthy (exit {report.exit_code})")
    return lines

"""``persistkit preflight``: what a start would find and do, found without writing anything.

It runs the startup path read-only: the backend is listed (reachable?), the
file backend's directories are checked with ``os.access`` (never by writing),
every symbolic link below the root is reported (a start never follows one,
and writes through one are refused), every namespace goes through
:meth:`PersistBase.check` with ``repair=False``
and the model its domain adapter uses, and the backend is asked for unapplied
commits and for settings that weaken durability. Nothing is swept, moved or
quarantined: each problem says what a real start would do about it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from persistkit._history import RECORD_ONLY_KEYS
from persistkit._names import decode_segment
from persistkit.backends import Backend
from persistkit.backends._backtest_kit import (
    BacktestKitBackend,
    Skipped,
    find_backtest_kit_state,
)
from persistkit.backends._base import split_key
from persistkit.backends._file import SUFFIX, FileBackend
from persistkit.errors import (
    BackendError,
    ForeignSymlinkError,
    InvalidNameError,
    JournalDamagedError,
)

from .targets import CommandError, schema_for, store_for

__all__ = ["PreflightReport", "Problem", "run_preflight"]


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str
    """``permission``, ``unreadable``, ``corrupt``, ``orphan``, ``damaged-journal``,
    ``durability``, ``foreign-symlink``, ``backtest-kit`` (state a start would not
    read, or a ``backtest-kit://`` folder's state a migration would skip),
    ``earlier-build`` (an earlier build's checkpoint applied this build's commits); as
    a note: ``foreign-name``, ``unapplied-commit``."""
    where: str
    detail: str
    a_start_would: str


@dataclass(slots=True)
class PreflightReport:
    url: str
    namespaces: int = 0
    checked: int = 0
    validated: int = 0
    """Values checked against a domain model (the rest: JSON parse only)."""
    backtest_kit: int = 0
    """Values in backtest-kit 19.x folders: a start reads none of them, so they are
    reported as such (a ``backtest-kit`` problem), not checked."""
    directories: int | None = None
    """Directories checked for permissions; ``None`` when the backend has none."""
    quarantined: int = 0
    problems: list[Problem] = field(default_factory=list)
    """What a start would repair or trip over: each makes the exit code 1."""
    notes: list[Problem] = field(default_factory=list)
    """Worth knowing, harmless to a start: they leave the exit code alone."""
    unchecked: str | None = None
    """Why no value could be checked (a damaged or linked commit journal), if so."""

    @property
    def clean(self) -> bool:
        return not self.problems

    def of_kind(self, *kinds: str) -> list[Problem]:
        return [problem for problem in self.problems if problem.kind in kinds]


def _access(path: str, mode: int) -> bool:
    # The bot's writes are checked against the effective ids, so check those.
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


_SYMLINK_ACTION = "refuse to follow it: reads and writes through it fail, a scan skips it"


def _foreign_symlink(path: str) -> Problem:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return Problem(
        "foreign-symlink",
        path,
        f"a symbolic link (to {target}) inside the data root; persistkit never follows one. "
        "Replace it with a real directory or file, or move it out of the root",
        _SYMLINK_ACTION,
    )


def _report_symlink(report: PreflightReport, error: ForeignSymlinkError, fallback: str) -> None:
    path = error.path or fallback
    if not any(p.kind == "foreign-symlink" and p.where == path for p in report.problems):
        report.problems.append(_foreign_symlink(path))


def _file_tree(root: str, report: PreflightReport) -> set[str]:
    """Namespaces (directories) under ``root``, recording permission problems on the way.

    Directories holding no value still count: a temp file a crash left in a
    brand-new entity's directory is swept by a start too.
    """
    namespaces: set[str] = set()
    directories = 0

    def unreadable(error: OSError) -> None:
        report.problems.append(
            Problem(
                "permission",
                str(error.filename),
                f"cannot list it: {error.strerror}",
                "fail to start",
            )
        )

    for directory, subdirectories, filenames in os.walk(root, onerror=unreadable):
        relative = os.path.relpath(directory, root)
        own = relative == "." or not any(part.startswith(".") for part in relative.split(os.sep))
        subdirectories.sort()
        directories += 1
        if not _access(directory, os.W_OK | os.X_OK):
            action = "fail to write here" if own else "fail to quarantine into it"
            report.problems.append(
                Problem("permission", directory, "the process cannot create files here", action)
            )
        for name in (*subdirectories, *filenames):
            path = os.path.join(directory, name)
            if os.path.islink(path):  # os.walk lists links, never descends into them
                report.problems.append(_foreign_symlink(path))
        if not own:
            continue  # the quarantine: checked for writing, holds no live values
        namespaces.add("" if relative == "." else relative.replace(os.sep, "/"))
        for filename in filenames:
            path = os.path.join(directory, filename)
            if os.path.islink(path):
                continue  # reported above; its target is none of our business
            is_value = filename.endswith(SUFFIX) and not filename.startswith(".")
            if is_value and not _access(path, os.R_OK):
                report.problems.append(
                    Problem("permission", path, "the process cannot read it", "fail to start")
                )
    report.directories = directories
    return namespaces


async def run_preflight(
    backend: Backend,
    *,
    on_total: Callable[[int], None] | None = None,
    on_checked: Callable[[int], None] | None = None,
) -> PreflightReport:
    """Check ``backend`` as a start would, changing nothing.

    ``CommandError`` when it cannot run at all (the backend cannot be listed).
    ``on_total`` gets the number of values once listed; ``on_checked`` the
    number checked since its last call.
    """
    report = PreflightReport(backend.url)
    try:
        await backend.unapplied_commits()
    except ForeignSymlinkError as exc:
        # Every read consults the journal: no value can be checked, but the
        # tree can, for permissions and the other foreign links.
        _report_symlink(report, exc, "commit journal")
        report.unchecked = "the commit journal is behind a symbolic link (below)"
        if isinstance(backend, FileBackend):
            _file_tree(backend.root, report)
        return report
    except JournalDamagedError as exc:
        # Every read would fail the same way: this is the one thing to report.
        report.problems.append(Problem("damaged-journal", backend.url, str(exc), "refuse to start"))
        report.unchecked = "the commit journal is damaged (below)"
        if isinstance(backend, FileBackend):
            _file_tree(backend.root, report)
        return report
    per_namespace: Counter[str] = Counter()
    try:
        async for key in backend.scan("", recursive=True):
            namespace, name = split_key(key)
            per_namespace[namespace] += 1
            try:
                decode_segment(name)
            except InvalidNameError:
                report.notes.append(
                    Problem(
                        "foreign-name",
                        key,
                        "not a name persistkit writes; no adapter asks for it by name",
                        "leave it alone",
                    )
                )
    except BackendError as exc:
        raise CommandError(f"cannot list {backend.url}: {exc}") from exc
    if on_total is not None:
        on_total(sum(per_namespace.values()))

    namespaces = set(per_namespace)
    not_read: list[Skipped] = []
    backtest_kit: tuple[str, ...] = ()
    if isinstance(backend, FileBackend):
        namespaces |= _file_tree(backend.root, report)
        foreign = find_backtest_kit_state(backend.root)
        backtest_kit = foreign.folders
        if foreign:
            not_read.append(Skipped(backend.root, foreign.warning()))
    elif isinstance(backend, BacktestKitBackend):
        not_read = backend.mapping().skipped
    report.namespaces = len(namespaces)

    for namespace in sorted(namespaces):
        if namespace in backtest_kit:
            # backtest-kit's, reported as such below: a start reads none of it.
            report.backtest_kit += per_namespace[namespace]
            continue
        store = store_for(backend, namespace)
        progress = [0]

        def advance(checked: int, progress: list[int] = progress) -> None:
            if on_checked is not None:
                on_checked(checked - progress[0])
            progress[0] = checked

        try:
            found = await store.check(repair=False, on_progress=advance)
        except ForeignSymlinkError as exc:
            _report_symlink(report, exc, namespace or "/")
            continue
        except BackendError as exc:
            report.problems.append(
                Problem("unreadable", namespace or "/", str(exc), "fail to start")
            )
            continue
        report.checked += found.checked
        if schema_for(namespace) is not None:
            report.validated += found.checked
        report.problems.extend(
            Problem("orphan", orphan, "temp file of an interrupted write", "remove it")
            for orphan in found.orphans
        )
        report.problems.extend(
            Problem("corrupt", finding.key, finding.reason, "quarantine it (never delete it)")
            for finding in found.corrupt
        )

    commits: list[str] = []
    warnings: list[str] = []
    try:
        warnings = await backend.durability_warnings()
        try:
            commits = await backend.unapplied_commits()
        except ForeignSymlinkError as exc:
            _report_symlink(report, exc, "commit journal")
        try:
            report.quarantined = sum([1 async for _ in backend.list_quarantine("")])
        except ForeignSymlinkError as exc:
            _report_symlink(report, exc, "quarantine")
    except BackendError as exc:
        raise CommandError(f"cannot query {backend.url}: {exc}") from exc
    # Normal while a bot runs, and read by every process: worth knowing only.
    report.notes.extend(
        Problem("unapplied-commit", commit, "committed, not yet in its files", "apply it")
        for commit in commits
    )
    report.problems.extend(
        Problem("durability", backend.url, warning, "run, but acknowledged writes may be lost")
        for warning in warnings
    )
    # Never flat in silence: what a start (or a migration) would pass over.
    action = (
        "not apply: a migration skips it"
        if isinstance(backend, BacktestKitBackend)
        else "start flat for it: it reads none of it (migrate it first)"
    )
    report.problems.extend(
        Problem("backtest-kit", item.path, item.reason, action) for item in not_read
    )
    if isinstance(backend, FileBackend):
        # A key that rides in this build's records only, found as a file: a checkpoint
        # of an earlier build (journal format 2) applied this build's commits.
        report.problems.extend(
            Problem(
                "earlier-build",
                key,
                "a file an earlier build's checkpoint made of this build's commits: an "
                "earlier build is (or was) running on this root, and the statistics events "
                "of the commits it checkpointed are lost (the state is not)",
                "ignore it; stop every process of the earlier build",
            )
            for key in sorted(RECORD_ONLY_KEYS)
            if backend._read_at(None, backend.path_of(key)) is not None
        )
    return report

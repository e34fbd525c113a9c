"""The click commands: parse arguments, call the logic modules, print, pick the exit code."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson
from rich.live import Live
from rich.text import Text

from persistkit._domains.portable_events import PortableState
from persistkit.backends import Backend
from persistkit.backends._backtest_kit import (
    BacktestKitBackend,
    BacktestKitMapping,
    archive_migrated,
)
from persistkit.backends._base import QuarantineEntry, Snapshot, split_key
from persistkit.backends._file import FileBackend
from persistkit.backends._journal import SalvageReport
from persistkit.errors import (
    ConflictError,
    CorruptValueError,
    EntityNotFoundError,
    PersistError,
)

from .history import history, parse_moment, snapshot_at
from .inventory import Inventory, collect_inventory, decode_value
from .preflight import PreflightReport, run_preflight
from .render import (
    Bars,
    inventory_json,
    preflight_json,
    print_inventory,
    print_preflight,
    print_quarantine,
    quarantine_json,
    read_problems,
)
from .render import (
    _stdout as stdout_console,  # the console every command prints its words with
)
from .replay import replay
from .report import report as report_command
from .status import (
    SessionHolder,
    collect_status,
    describe_holder,
    refuse_beside_running_sessions,
    status_json,
    status_lines,
    watch_status,
)
from .targets import (
    EXIT_COULD_NOT_RUN,
    EXIT_OK,
    EXIT_PROBLEMS,
    CommandError,
    default_target,
    format_time,
    open_target,
    plural,
    store_for,
)
from .transfer import (
    BackendSource,
    CopyPlan,
    ExportFile,
    ExportResult,
    Source,
    Step,
    copy_planned,
    export_jsonl,
    import_quarantined,
    plan_copy,
    read_jsonl,
)

__all__ = ["cli"]

T = TypeVar("T")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


class _Commands(click.Group):
    """Turns every expected failure into one line on stderr and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CommandError as exc:
            click.echo(f"persistkit: error: {_one_line(exc)}", err=True)
            ctx.exit(exc.exit_code)
        except BrokenPipeError:
            raise  # stdout piped into `head`: click exits quietly
        except (PersistError, OSError) as exc:  # BackendError is an OSError too
            click.echo(f"persistkit: error: {_one_line(exc)}", err=True)
            ctx.exit(EXIT_COULD_NOT_RUN)


def _run(backends: list[Backend], work: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await work()
        finally:
            for backend in backends:
                await backend.aclose()

    return asyncio.run(main())


def _print_json(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.buffer.flush()


target_argument = click.argument("target", default=default_target, metavar="[ROOT | URL]")
json_option = click.option(
    "--json", "as_json", is_flag=True, help="One JSON document, for scripts."
)


def entry_arguments(command: Callable[..., None]) -> Callable[..., None]:
    """``ID [ROOT | URL]``: a quarantine entry and where it is kept."""
    return click.argument("entry_id", metavar="ID")(target_argument(command))


PURGE_BESIDE_A_BOT = (
    "a quarantined value is no part of the bot's state, so the bot reads nothing it removes"
)
COMMITTED_LIKE_A_TICK = (
    "the change is one commit of the root's journal, like one of the bot's ticks, "
    "so no replay undoes it; the bot's own next write of a key still replaces it"
)


def force_option(what: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option(
        "--force",
        is_flag=True,
        help=f"Write even while a live session holds the root: {what}.",
    )


def _note_forced(holders: list[SessionHolder]) -> None:
    if holders:
        click.echo(
            "note: written beside a live session ("
            + "; ".join(describe_holder(holder) for holder in holders)
            + f"): {COMMITTED_LIKE_A_TICK}"
        )


progress_option = click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bars on stderr (default: only when stderr is a terminal).",
)


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 done and clean, 1 problems found or a change refused, "
    "2 could not run. Each command's --help says what its codes mean.",
)
@click.version_option(package_name="persistkit")
def cli() -> None:
    """Inspect, check and move the state persistkit keeps for a trading bot.

    ROOT is a directory; URL is any backend URL (file:///path,
    redis://host:6379/0, s3://bucket/prefix, and so on). Without one, a command
    opens $PERSISTKIT_BACKEND, else $PERSISTKIT_BASE_DIR, else ./dump/data.
    Commands that only read are safe while a bot runs; commands that write
    refuse while a live session holds the root, unless --force.
    """
    # The store logs what it finds; the commands report it themselves.
    logging.getLogger("persistkit").propagate = False


# -- inspect ---------------------------------------------------------------------------


@cli.command(
    short_help="Show domains, entities and open positions.",
    epilog="Exit codes: 0 shown whole; 1 shown, but a symbolic link inside the root was not "
    "followed or commits could not be read (what is shown is then older than the committed "
    "state); 2 could not run (no such root, a bad URL, an unreachable server).",
)
@target_argument
@json_option
@progress_option
@click.option(
    "--as-of",
    "as_of",
    metavar="T",
    help="The state at time T (epoch ms or ISO 8601 with zone), from the history.",
)
@click.pass_context
def inspect(
    ctx: click.Context, target: str, as_json: bool, progress: bool | None, as_of: str | None
) -> None:
    """Domains and entities, when each changed, and the decoded state: open signals,
    scheduled entries, risk positions and partial milestones.

    Shows the committed state, read at one commit point and changing nothing,
    also beside a running bot (it locks nothing): a value committed and not
    yet applied to its file (after a crash, say) is shown with its committed
    value and marked pending. A value that does not decode is listed with the
    reason a start would give. With --as-of, the state the root held at that
    time, rebuilt from its history (see ``persistkit history``).
    """
    backend = open_target(target, read_only=True)
    bars = Bars(progress)

    async def work() -> Inventory:
        source = backend if as_of is None else await snapshot_at(backend, parse_moment(as_of))
        with bars.bar("reading") as (advance, _):
            inventory = await collect_inventory(source, on_key=advance)
        if as_of is not None:
            inventory.url = f"{backend.url} as of {as_of}"
            inventory.point = "the last commit at or before that time, from the history"
        return inventory

    inventory = _run([backend], work)
    if as_json:
        _print_json(inventory_json(inventory))
    else:
        print_inventory(inventory)
    ctx.exit(EXIT_PROBLEMS if inventory.problems else EXIT_OK)


cli.add_command(history)
cli.add_command(replay)

# -- preflight ---------------------------------------------------------------------------


@cli.command(
    short_help="Check, read-only, that a start would succeed.",
    epilog="Exit codes: 0 a start would find nothing to repair, 1 problems found "
    "(each with what a start would do), 2 could not run.",
)
@target_argument
@json_option
@progress_option
@click.pass_context
def preflight(ctx: click.Context, target: str, as_json: bool, progress: bool | None) -> None:
    """Check that a start would succeed, changing nothing.

    Lists the backend, checks permissions (file backend: os.access, no test
    writes), parses and validates every value with its domain model, and
    reports orphan temp files, unapplied commits and durability warnings,
    each with what a real start would do about it. Reads only, locks
    nothing: safe while a bot runs.
    """
    bars = Bars(progress)
    try:
        backend = open_target(target, read_only=True)

        async def work() -> PreflightReport:
            with bars.bar("checking") as (advance, set_total):
                return await run_preflight(backend, on_total=set_total, on_checked=advance)

        report = _run([backend], work)
    except (CommandError, PersistError, OSError) as exc:
        if as_json:
            _print_json({"status": "could-not-run", "exit_code": 2, "error": _one_line(exc)})
        raise
    exit_code = EXIT_OK if report.clean else EXIT_PROBLEMS
    if as_json:
        _print_json(preflight_json(report, exit_code))
    else:
        print_preflight(report, exit_code)
    ctx.exit(exit_code)


# -- status ------------------------------------------------------------------------------


@cli.command(
    short_help="Who runs, what is committed, what needs a person (read-only).",
    epilog="Exit codes: 0 healthy; 1 needs attention (a session gone without closing, "
    "commits waiting with no session running, quarantined values, a durability warning, "
    "a problem preflight finds); 2 could not run (missing root, bad URL, unreachable "
    "server).",
)
@target_argument
@json_option
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C (plain words only).")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between refreshes with --watch.",
)
@click.pass_context
def status(ctx: click.Context, target: str, as_json: bool, watch: bool, interval: float) -> None:
    """Which live sessions run and what they lock, when each domain last committed,
    commits waiting to be applied, the journal's size, quarantined values, durability
    warnings and every problem preflight finds. Read-only: nothing is created, locked,
    written or replayed, so it is safe beside a running bot.

    Live sessions (file roots): pid, host, since, and whether each is still alive,
    read from ROOT/.locks without taking a lock. A backend that keeps session
    leases names their holders from them; one that keeps none (Redis and S3
    today) reports the sessions as unknown. A memory:// store lives inside one
    process and cannot be looked at from here (exit 2).

    --watch refreshes the report every --interval seconds until Ctrl-C, and exits
    with the code of the last report.
    """
    if watch and as_json:
        raise click.UsageError("--watch shows a screen; for scripts, run --json repeatedly")
    try:
        backend = open_target(target, read_only=True)
        if watch:
            ctx.exit(_watch_status(backend, interval))
        report = _run([backend], lambda: collect_status(backend))
    except (CommandError, PersistError, OSError) as exc:
        if as_json:
            _print_json({"status": "could-not-run", "exit_code": 2, "error": _one_line(exc)})
        raise
    if as_json:
        _print_json(status_json(report))
    else:
        say = functools.partial(stdout_console().print, soft_wrap=True)
        for line in status_lines(report):
            say(line)
    ctx.exit(report.exit_code)


def _watch_status(backend: Backend, interval: float) -> int:
    """Refresh in place on a terminal (rich Live), one report after another elsewhere."""
    console = stdout_console()
    last = [EXIT_COULD_NOT_RUN]
    footer = f"(refreshed every {interval:g} s; Ctrl-C to stop)"

    async def work() -> None:
        if not console.is_terminal:

            def print_next(lines: list[str], code: int) -> None:
                last[0] = code
                console.print(Text("\n".join([*lines, footer, ""])), soft_wrap=True)
                console.file.flush()

            await watch_status(backend, interval, print_next)
            return
        with Live(console=console, auto_refresh=False) as live:

            def redraw(lines: list[str], code: int) -> None:
                last[0] = code
                live.update(Text("\n".join([*lines, footer])), refresh=True)

            await watch_status(backend, interval, redraw)

    try:
        _run([backend], work)
    except KeyboardInterrupt:
        pass
    return last[0]


# -- journal ------------------------------------------------------------------------------


@cli.group(
    short_help="Salvage a damaged commit journal.",
    epilog="Exit codes: see the --help of each command.",
)
def journal() -> None:
    """Work on the file backend's commit journal (ROOT/.journal)."""


@journal.command(
    "salvage",
    short_help="Apply a damaged journal up to its damage; keep it aside.",
    epilog="Exit codes: 0 salvaged, or nothing was damaged; 1 refused, nothing "
    "changed: a live session holds the root; 2 could not run (not a file root, "
    "no such directory).",
)
@target_argument
def journal_salvage(target: str) -> None:
    """Apply a damaged journal's commits up to the damage; keep it in the quarantine.

    A start refuses a root whose journal has a record that fails its check
    with valid records after it. This applies the commits before the damage to
    the files, moves the journal under ROOT/.quarantine/.journal (never
    deleted) and lists the commits after the damage that were left out: what
    lay between them is lost, so they may not apply to what is there now.
    It refuses while a live session holds the root (stop the bot first; there
    is no --force).
    """
    backend = open_target(target)
    if not isinstance(backend, FileBackend):
        raise CommandError(f"{backend.url}: only the file backend has a commit journal")

    async def work() -> list[SalvageReport]:
        await refuse_beside_running_sessions(backend)
        return await backend.salvage_journal()

    reports = _run([backend], work)
    if not reports:
        click.echo(f"{backend.root}: no damaged journal; nothing to salvage")
        return
    for report in reports:
        click.echo(
            f"{report.journal}: damaged at byte {report.damaged_at}; "
            f"{plural(report.applied, 'commit')} before it applied; kept as {report.kept_as}"
        )
        if report.left_out:
            click.echo(
                f"  left out: {plural(len(report.left_out), 'valid commit')} after the damage"
            )
            for record in report.left_out[:_SHOWN_STEPS]:
                keys = ", ".join(sorted(record.writes))
                click.echo(
                    f"    commit {record.seq} at {format_time(record.time_ns / 1e9)}: {keys}"
                )
            if len(report.left_out) > _SHOWN_STEPS:
                click.echo(f"    ... and {len(report.left_out) - _SHOWN_STEPS} more")


# -- quarantine ----------------------------------------------------------------------------


@cli.group(
    short_help="List, restore or purge quarantined values.",
    epilog="Exit codes: see the --help of each command.",
)
def quarantine() -> None:
    """Work on the values a start moved aside because they did not parse or validate."""


def _find_entry(backend: Backend, entry_id: str) -> Callable[[], Awaitable[QuarantineEntry]]:
    async def find() -> QuarantineEntry:
        async for entry in backend.list_quarantine(""):
            if entry.id == entry_id:
                return entry
        raise CommandError(f"no quarantine entry {entry_id!r} in {backend.url}")

    return find


@quarantine.command("list", epilog="Exit codes: 0 listed (none or some), 2 could not run.")
@target_argument
@json_option
def quarantine_list(target: str, as_json: bool) -> None:
    """List every quarantined value: id, key, reason and when.

    Reads only: safe while a bot runs.
    """
    backend = open_target(target, read_only=True)

    async def work() -> list[QuarantineEntry]:
        return [entry async for entry in backend.list_quarantine("")]

    entries = _run([backend], work)
    if as_json:
        _print_json(quarantine_json(entries))
    else:
        print_quarantine(backend.url, entries)


@quarantine.command(
    "restore",
    epilog="Exit codes: 0 restored (with a warning when it still does not validate); "
    "1 refused, nothing changed: a value was stored there since (--overwrite) or a "
    "live session holds the root (--force); 2 could not run (no such entry).",
)
@entry_arguments
@click.option("--overwrite", is_flag=True, help="Replace a value stored there since.")
@force_option("the value goes back as one commit of the journal, like a tick")
def quarantine_restore(entry_id: str, target: str, overwrite: bool, force: bool) -> None:
    """Put a quarantined value back where it was (after fixing it, say).

    The value goes back as one commit of the root's journal, like a tick.
    While a live session holds the root it refuses, unless --force.
    """
    backend = open_target(target)
    holders: list[SessionHolder] = []

    async def work() -> tuple[str, str | None]:
        holders.extend(
            await refuse_beside_running_sessions(
                backend, force=force, how_to_force=COMMITTED_LIKE_A_TICK
            )
        )
        entry = await _find_entry(backend, entry_id)()
        try:
            key = await backend.restore(entry.id, overwrite=overwrite)
        except ConflictError as exc:
            raise CommandError(
                f"{exc}; nothing changed (pass --overwrite to replace it)", EXIT_PROBLEMS
            ) from exc
        stored = await backend.get(key)
        namespace, _ = split_key(key)
        try:
            if stored is not None:
                decode_value(store_for(backend, namespace), key, stored.data)
        except CorruptValueError as exc:
            return key, exc.reason or str(exc)
        return key, None

    key, still_bad = _run([backend], work)
    click.echo(f"restored {entry_id} to {key}")
    _note_forced(holders)
    if still_bad:
        click.echo(
            f"warning: {key} still does not parse or validate ({still_bad}); "
            "the next start will quarantine it again",
            err=True,
        )


@quarantine.command(
    "purge",
    epilog="Exit codes: 0 purged; 1 refused, nothing deleted: the question was "
    "answered no, or a live session holds the root (--force); 2 could not run "
    "(no such entry).",
)
@entry_arguments
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@force_option(PURGE_BESIDE_A_BOT)
def quarantine_purge(entry_id: str, target: str, yes: bool, force: bool) -> None:
    """Delete a quarantined value for good (asks first unless --yes).

    While a live session holds the root it refuses, unless --force.
    """
    backend = open_target(target)

    async def find() -> QuarantineEntry:
        await refuse_beside_running_sessions(backend, force=force, how_to_force=PURGE_BESIDE_A_BOT)
        return await _find_entry(backend, entry_id)()

    entry = _run([], find)
    if not yes:
        click.confirm(
            f"Delete the quarantined value of {entry.key} ({entry.reason}) for good?",
            abort=True,
            err=True,
        )

    async def work() -> None:
        try:
            await backend.purge(entry.id)
        except EntityNotFoundError as exc:
            raise CommandError(str(exc)) from exc

    _run([backend], work)
    click.echo(f"purged {entry_id}")


# -- migrate, export, import --------------------------------------------------------------


_SHOWN_STEPS = 20


def _print_steps(steps: list[Step]) -> None:
    for step in steps[:_SHOWN_STEPS]:
        click.echo(f"      {step.key}: {step.why}")
    if len(steps) > _SHOWN_STEPS:
        click.echo(f"      ... and {len(steps) - _SHOWN_STEPS} more")


def _print_plan(plan: CopyPlan, *, dry_run: bool) -> None:
    verb = "would be" if dry_run else "to be"
    creates, replaces, refusals = plan.of("create"), plan.of("replace"), plan.of("refuse")
    click.echo(f"{plan.source} -> {plan.destination}")
    click.echo(f"  {len(creates)} {verb} created (absent in the destination)")
    click.echo(f"  {len(replaces)} {verb} replaced")
    _print_steps(replaces)
    click.echo(f"  {plan.identical} already identical (skipped)")
    click.echo(f"  {plan.only_in_destination} only in the destination (left as they are)")
    click.echo(f"  {len(refusals)} refused")
    _print_steps(refusals)


CopyOutcome = tuple[CopyPlan, int, list[tuple[str, str]]]


async def _copy(
    source: Source, destination: Backend, *, overwrite: bool, dry_run: bool, bars: Bars
) -> CopyOutcome:
    """Plan, then (unless a dry run or a refusal) copy: the plan, copied count, failures."""
    with bars.bar("comparing", len(source.keys())) as (advance, _):
        plan = await plan_copy(source, destination, overwrite=overwrite, on_key=advance)
    if dry_run or plan.of("refuse"):
        return plan, 0, []
    with bars.bar("copying", len(plan.writes)) as (advance, _):
        result = await copy_planned(source, destination, plan, on_key=advance)
    return plan, result.copied, result.failures


def _finish_copy(
    ctx: click.Context,
    plan: CopyPlan,
    copied: int,
    failures: list[tuple[str, str]],
    *,
    dry_run: bool,
    notes: list[str],
    holders: list[SessionHolder],
    left_behind: int = 0,
) -> None:
    """Print the plan and the outcome, and exit; ``left_behind``: source values not copied."""
    _print_plan(plan, dry_run=dry_run)
    for note in notes:
        click.echo(f"note: {note}")
    if copied:
        _note_forced(holders)
    refusals = plan.of("refuse")
    if refusals:
        click.echo(
            f"Refused: {plural(len(refusals), 'destination value')} differ and are not "
            "provably older; "
            "nothing was written. Pass --overwrite to replace them.",
            err=True,
        )
        ctx.exit(EXIT_PROBLEMS)
    if dry_run:
        click.echo("Dry run: nothing was written.")
        ctx.exit(EXIT_OK)
    for key, why in failures:
        click.echo(f"failed: {key}: {why}", err=True)
    click.echo(
        f"Copied {plural(copied, 'value')}, each read back and identical to the source; "
        f"{len(failures)} failed."
    )
    if left_behind:
        click.echo(f"Not migrated: {plural(left_behind, 'item')} of the source (above).", err=True)
    ctx.exit(EXIT_PROBLEMS if failures or left_behind else EXIT_OK)


def _print_mapping(mapping: BacktestKitMapping, *, dry_run: bool) -> None:
    """How a backtest-kit 19.x folder maps to persistkit's keys, and what it leaves behind."""
    click.echo(f"backtest-kit 19.x folder {mapping.root}, exchange {mapping.exchange}:")
    shown = list(mapping.values.values())
    limit = len(shown) if dry_run else _SHOWN_STEPS
    for mapped in shown[:limit]:
        click.echo(f"  {', '.join(mapped.sources)} -> {mapped.key}")
        click.echo(f"      {mapped.how}")
    if len(shown) > limit:
        click.echo(f"  ... and {len(shown) - limit} more (--dry-run shows them all)")
    if mapping.empty:
        click.echo(f"  {plural(len(mapping.empty), 'file')} with no state (nothing to migrate)")
    if mapping.other:
        click.echo(
            f"  {', '.join(mapping.other)}: backtest-kit's own, no persistkit counterpart "
            "(left as they are)"
        )
    click.echo(f"  {len(mapping.skipped)} not migrated")
    for item in mapping.skipped:  # all of them: never left behind in silence
        click.echo(f"      {item.path}: {item.reason}")


async def _changed_while_copied(
    source: BacktestKitBackend, destination: Backend, mapping: BacktestKitMapping
) -> tuple[BacktestKitMapping, set[str]]:
    """The folder as it is now, and its folders that changed since ``mapping`` was copied.

    A value that differs from the destination's, appeared, or went (a signal
    backtest-kit closed meanwhile): its bot is still running, and what was
    copied is already stale.
    """
    now = source.mapping()
    changed: set[str] = set()
    for mapped in now.values.values():
        stored = await destination.get(mapped.key)
        if stored is None or stored.data != mapped.data:
            changed |= mapped.folders()
    for key, mapped in mapping.values.items():
        if key not in now.values:
            changed |= mapped.folders()
    return now, changed


def _archive_in_place(
    source: BacktestKitBackend, now: BacktestKitMapping, mapping: BacktestKitMapping
) -> str | None:
    """After an in-place migration, move the migrated backtest-kit folders aside.

    Only folders whose every value is now in the destination, byte for byte
    as just read again from the source (``now``, with the changed folders
    already left out), and that hold nothing left behind: a folder
    backtest-kit wrote to meanwhile stays (and keeps being flagged).
    """
    whole = set(now.migrated_folders()) & set(mapping.migrated_folders())
    if not whole:
        return None
    archive, moved = archive_migrated(source.root, whole)
    return (
        f"{plural(len(moved), 'backtest-kit folder')} moved aside into {archive} "
        "(nothing deleted; later starts no longer flag them)"
    )


def _refuse_overlap(source: Backend, destination: Backend) -> None:
    if isinstance(destination, BacktestKitBackend):
        raise CommandError(f"{destination.url} is read-only: migrate from it, not into it")
    if source.url == destination.url:
        raise CommandError(f"source and destination are the same: {destination.url}")
    if not (isinstance(source, FileBackend) and isinstance(destination, FileBackend)):
        return
    # One root inside the other: the copy would list its own output.
    if os.path.commonpath([source.root, destination.root]) in (source.root, destination.root):
        raise CommandError(f"{source.root} and {destination.root} lie one inside the other")


def _statistics_notes(statistics: PortableState) -> list[str]:
    """What a copy says of the statistics it gathered from a file root's journal."""
    notes = [f"statistics not copied: {problem}" for problem in statistics.problems]
    if statistics.pairs:
        notes.append(
            f"the statistics of {plural(len(statistics.pairs), 'pair')} are copied as their "
            "logs (stats/): the events of the commit journal and of the folded heads "
            "(_persistkit/events/, not copied) at the same commit point"
        )
    return notes


def _refuse_partial_source(snapshot: Snapshot) -> None:
    """A source that could not be read whole is not copied (exit 1, nothing written)."""
    problems = read_problems(snapshot.behind, snapshot.foreign_links)
    if problems:
        for line in problems:
            click.echo(f"source: {line}", err=True)
        raise CommandError(
            f"the source could not be read whole ({plural(len(problems), 'problem')} above); "
            "nothing was written",
            EXIT_PROBLEMS,
        )


@cli.command(
    short_help="Copy every value between two backends, verified.",
    epilog="Exit codes: 0 copied, each value read back and identical (or a dry run); "
    "1 refused, nothing written (a destination value differs and is not provably "
    "older, a live session holds DST, or SRC cannot be read whole), or a value failed "
    "to copy, or something in a backtest-kit SRC could not be migrated or changed while it was "
    "copied (each named); "
    "2 could not run (no such root, a bad URL, a key no store could have "
    "written: nothing written).",
)
@click.argument("source_spec", metavar="SRC")
@click.argument("destination_spec", metavar="DST")
@click.option("--overwrite", is_flag=True, help="Replace destination values that differ.")
@click.option("--dry-run", is_flag=True, help="Show what would be copied; write nothing.")
@force_option("the copy is one commit of the journal, like a tick")
@progress_option
@click.pass_context
def migrate(
    ctx: click.Context,
    source_spec: str,
    destination_spec: str,
    overwrite: bool,
    dry_run: bool,
    force: bool,
    progress: bool | None,
) -> None:
    """Copy every value from SRC to DST (ROOTs or URLs), each verified by reading it back.

    Refuses, writing nothing, when a destination value differs and is not
    provably older: older needs a change time from both backends (file: mtime),
    so where one side keeps none (Redis) any difference is refused. --overwrite
    replaces them. Quarantined values stay in SRC. SRC is read like inspect
    reads it, at one commit point and changing nothing; a SRC that cannot be
    read whole (a symbolic link inside it, commits it cannot read) is refused.
    Every key is checked first against the rules a store names keys by. Into a
    file root the copy is one commit of its journal, like a tick; while a live
    session holds DST it refuses, unless --force.

    From a backtest-kit 19.x folder (SRC
    ``backtest-kit:///ABSOLUTE/PATH/dump/data?exchange=NAME``, read-only) the
    mapping to persistkit's keys is shown first, with everything it cannot
    attribute or derive (not migrated: exit 1), and then every folder that
    changed while it was copied (a backtest-kit bot still running: exit 1, stop
    it and run again). Into a fresh root is the way;
    into the same folder, the migrated backtest-kit folders are then moved
    aside into .backtest-kit-archive/, so that later starts are clean.
    """
    # Read-only: the source's committed state is read as it is, nothing replayed.
    source_backend = open_target(source_spec, read_only=True)
    destination = open_target(destination_spec, must_exist=False)
    _refuse_overlap(source_backend, destination)
    holders: list[SessionHolder] = []

    async def work() -> tuple[CopyOutcome, int]:
        if not dry_run:
            holders.extend(
                await refuse_beside_running_sessions(
                    destination, force=force, how_to_force=COMMITTED_LIKE_A_TICK
                )
            )
        source = await BackendSource.at_one_point(source_backend)
        _refuse_partial_source(source.snapshot)
        notes.extend(_statistics_notes(source.statistics))
        held = sum([1 async for _ in source_backend.list_quarantine("")])
        if mapping is not None:
            _print_mapping(mapping, dry_run=dry_run)
        outcome = await _copy(
            source, destination, overwrite=overwrite, dry_run=dry_run, bars=Bars(progress)
        )
        plan, _, failures = outcome
        copied_whole = not (dry_run or failures or plan.of("refuse"))
        if mapping is not None and copied_whole:
            assert isinstance(source_backend, BacktestKitBackend)
            now, changed = await _changed_while_copied(source_backend, destination, mapping)
            for folder in sorted(changed):
                now.folders[folder] = False  # never archived: its last value is not in DST
                click.echo(
                    f"changed while migrating: {folder}: backtest-kit wrote to it after it was "
                    "read (is its bot still running?); DST holds the value read before. Stop "
                    "the backtest-kit bot, then run this again",
                    err=True,
                )
            still_changing.extend(sorted(changed))
            if in_place:
                archived = _archive_in_place(source_backend, now, mapping)
                if archived:
                    notes.append(archived)
            else:
                notes.append(
                    "the backtest-kit folders in SRC are left as they are; start the bot on DST"
                )
        return outcome, held

    notes: list[str] = []
    still_changing: list[str] = []
    mapping = source_backend.mapping() if isinstance(source_backend, BacktestKitBackend) else None
    in_place = (
        mapping is not None
        and isinstance(destination, FileBackend)
        and destination.root == mapping.root
    )
    (plan, copied, failures), quarantined = _run([source_backend, destination], work)
    if quarantined:
        notes.insert(
            0, f"{plural(quarantined, 'quarantined value')} stay in the source (not migrated)"
        )
    _finish_copy(
        ctx,
        plan,
        copied,
        failures,
        dry_run=dry_run,
        notes=notes,
        holders=holders,
        left_behind=0 if mapping is None else len(mapping.skipped) + len(still_changing),
    )


@cli.command(
    "export",
    short_help="Write every value to a JSON Lines file.",
    epilog="Exit codes: 0 exported whole (a warning names values that are not JSON); "
    "1 exported, but a symbolic link inside the root was not followed or commits could "
    "not be read (the export is then older than the committed state); 2 could not run "
    "(no such root, FILE exists without --overwrite: nothing written).",
)
@click.argument("source_spec", metavar="SRC")
@click.argument("path", metavar="FILE.jsonl")
@click.option("--include-quarantine", is_flag=True, help="Also export quarantined values.")
@click.option("--overwrite", is_flag=True, help="Replace FILE if it exists.")
@progress_option
@click.pass_context
def export(
    ctx: click.Context,
    source_spec: str,
    path: str,
    include_quarantine: bool,
    overwrite: bool,
    progress: bool | None,
) -> None:
    """Write every value of SRC to FILE.jsonl ('-': stdout), one {"key", "value"} per line.

    The values are SRC's committed state at one commit point, read without
    changing anything and locking nothing, also beside a running bot: a tick
    committed during the export is in it whole or not at all, and values
    committed and not yet applied to their files are exported with their
    committed values. The file appears complete or not at all.
    """
    backend = open_target(source_spec, read_only=True)
    bars = Bars(progress)
    output = None if path == "-" else ExportFile(path, overwrite=overwrite)
    write = sys.stdout.buffer.write if output is None else output.write

    async def work() -> ExportResult:
        with bars.bar("exporting") as (advance, set_total):
            return await export_jsonl(
                backend,
                write,
                include_quarantine=include_quarantine,
                on_total=set_total,
                on_key=advance,
            )

    try:
        result = _run([backend], work)
    except BaseException:
        if output is not None:
            output.abandon()
        raise
    if output is None:
        sys.stdout.buffer.flush()
    else:
        output.finish()
    where = "stdout" if path == "-" else path
    snapshot = result.snapshot
    click.echo(
        f"exported {plural(result.values, 'value')}"
        + (f" and {plural(result.quarantined, 'quarantined value')}" if include_quarantine else "")
        + f" to {where}, read at one point ({snapshot.point})",
        err=path == "-",
    )
    if snapshot.pending:
        click.echo(
            f"note: {plural(len(snapshot.pending), 'value')} committed and not yet applied "
            "where the backend keeps them, exported with their committed values: "
            + ", ".join(sorted(snapshot.pending)[:5])
            + (", ..." if len(snapshot.pending) > 5 else ""),
            err=True,
        )
    for note in _statistics_notes(result.statistics):
        click.echo(f"note: {note}", err=True)
    if result.raw:
        click.echo(
            f"warning: {plural(len(result.raw), 'value')} not JSON, exported as raw_base64 "
            f"(run persistkit preflight): {', '.join(result.raw[:5])}",
            err=True,
        )
    problems = read_problems(snapshot.behind, snapshot.foreign_links)
    for line in problems:
        click.echo(f"problem: {line}", err=True)
    ctx.exit(EXIT_PROBLEMS if problems else EXIT_OK)


@cli.command(
    "import",
    short_help="Write every value of a JSON Lines file to a backend.",
    epilog="Exit codes: 0 written, each value read back and identical (or a dry run); "
    "1 refused, nothing written (a destination value differs, or a live session "
    "holds DST), or a value failed to copy; 2 could not run (a bad line or a key no "
    "store could have written, named with its line number: nothing written).",
)
@click.argument("path", metavar="FILE.jsonl")
@click.argument("destination_spec", metavar="DST")
@click.option("--overwrite", is_flag=True, help="Replace destination values that differ.")
@click.option("--dry-run", is_flag=True, help="Show what would be written; write nothing.")
@click.option(
    "--include-quarantine",
    is_flag=True,
    help="Put exported quarantined values back into DST's quarantine (where the key is free).",
)
@force_option("the values are one commit of the journal, like a tick")
@progress_option
@click.pass_context
def import_(
    ctx: click.Context,
    path: str,
    destination_spec: str,
    overwrite: bool,
    dry_run: bool,
    include_quarantine: bool,
    force: bool,
    progress: bool | None,
) -> None:
    """Write every value of FILE.jsonl ('-': stdin) to DST, each verified by reading it back.

    The whole file is checked first, every key against the rules a store
    names keys by (a bad line: exit 2, nothing written). A file has no change
    times, so a destination value that differs is refused, writing nothing,
    unless --overwrite. Into a file root the values are one commit of its
    journal, like a tick; while a live session holds DST it refuses, unless
    --force.
    """
    source = read_jsonl(path)
    destination = open_target(destination_spec, must_exist=False)
    holders: list[SessionHolder] = []
    quarantined = source.quarantined

    async def work() -> tuple[CopyOutcome, list[str]]:
        if not dry_run:
            holders.extend(
                await refuse_beside_running_sessions(
                    destination, force=force, how_to_force=COMMITTED_LIKE_A_TICK
                )
            )
        notes = [
            f"statistics not copied: {problem}" for problem in await source.gather_statistics()
        ]
        outcome = await _copy(
            source, destination, overwrite=overwrite, dry_run=dry_run, bars=Bars(progress)
        )
        plan, _, failures = outcome
        if include_quarantine and not dry_run and not failures and not plan.of("refuse"):
            restored, refused = await import_quarantined(destination, quarantined)
            notes.append(f"{plural(restored, 'quarantined value')} put back into the quarantine")
            notes += [f"quarantined value not imported: {key}: {why}" for key, why in refused]
        return outcome, notes

    (plan, copied, failures), notes = _run([destination], work)
    if quarantined and not include_quarantine:
        notes.append(
            f"{plural(len(quarantined), 'quarantined value')} in the file skipped "
            "(--include-quarantine imports them)"
        )
    _finish_copy(ctx, plan, copied, failures, dry_run=dry_run, notes=notes, holders=holders)


cli.add_command(report_command)

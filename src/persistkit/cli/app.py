"""The click commands: parse arguments, call the logic modules, print, pick the exit code."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson

from persistkit.backends import Backend
from persistkit.backends.base import QuarantineEntry, split_key
from persistkit.backends.file import FileBackend
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
)
from .replay import replay
from .targets import (
    DEFAULT_TARGET,
    EXIT_COULD_NOT_RUN,
    EXIT_OK,
    EXIT_PROBLEMS,
    CommandError,
    format_time,
    open_target,
    plural,
    refuse_beside_running_sessions,
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


target_argument = click.argument("target", default=DEFAULT_TARGET, metavar="[ROOT | URL]")
json_option = click.option(
    "--json", "as_json", is_flag=True, help="One JSON document, for scripts."
)


def entry_arguments(command: Callable[..., None]) -> Callable[..., None]:
    """``ID [ROOT | URL]``: a quarantine entry and where it is kept."""
    return click.argument("entry_id", metavar="ID")(target_argument(command))


progress_option = click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bars on stderr (default: only when stderr is a terminal).",
)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="persistkit")
def cli() -> None:
    """Inspect, check and move the state persistkit keeps for a trading bot.

    ROOT is a directory (default ./dump/data); URL is any backend URL
    (file:///path, redis://host:6379/0, s3://bucket/prefix, ...). Exit codes:
    0 done and clean, 1 problems found or a change refused, 2 could not run.
    """
    # The store logs what it finds; the commands report it themselves.
    logging.getLogger("persistkit").addHandler(logging.NullHandler())
    logging.getLogger("persistkit").propagate = False


# -- inspect ---------------------------------------------------------------------------


@cli.command(short_help="Show domains, entities and open positions.")
@target_argument
@json_option
@progress_option
@click.option(
    "--as-of",
    "as_of",
    metavar="T",
    help="The state at time T (epoch ms or ISO 8601 with zone), from the history.",
)
def inspect(target: str, as_json: bool, progress: bool | None, as_of: str | None) -> None:
    """Domains, entities and when each changed; open signals, scheduled entries, risk."""
    backend = open_target(target, read_only=True)
    bars = Bars(progress)

    async def work() -> Inventory:
        source = backend if as_of is None else await snapshot_at(backend, parse_moment(as_of))
        with bars.bar("reading") as (advance, _):
            inventory = await collect_inventory(source, on_key=advance)
        inventory.url = backend.url if as_of is None else f"{backend.url} as of {as_of}"
        return inventory

    inventory = _run([backend], work)
    if as_json:
        _print_json(inventory_json(inventory))
    else:
        print_inventory(inventory)


cli.add_command(history)
cli.add_command(replay)

# -- preflight ---------------------------------------------------------------------------


@cli.command(short_help="Check, read-only, that a start would succeed.")
@target_argument
@json_option
@progress_option
@click.pass_context
def preflight(ctx: click.Context, target: str, as_json: bool, progress: bool | None) -> None:
    """Check that a start would succeed, changing nothing (exit 0 clean, 1 problems, 2 failed).

    Lists the backend, checks permissions (file backend: os.access, no test
    writes), parses and validates every value with its domain model, and
    reports orphan temp files, unapplied commits and durability warnings,
    each with what a real start would do about it.
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


# -- journal ------------------------------------------------------------------------------


@cli.group(short_help="Salvage a damaged commit journal.")
def journal() -> None:
    """The file backend's commit journal (ROOT/.journal)."""


@journal.command("salvage")
@target_argument
def journal_salvage(target: str) -> None:
    """Apply a damaged journal's commits up to the damage; keep it in the quarantine.

    A start refuses a root whose journal has a record that fails its check
    with valid records after it. This applies the commits before the damage to
    the files, moves the journal under ROOT/.quarantine/.journal (never
    deleted) and lists the commits after the damage that were left out: what
    lay between them is lost, so they may not apply to what is there now.
    Exit 0 when salvaged or nothing was damaged.
    """
    backend = open_target(target)
    if not isinstance(backend, FileBackend):
        raise CommandError(f"{backend.url}: only the file backend has a commit journal")
    refuse_beside_running_sessions(backend)
    reports = _run([backend], backend.salvage_journal)
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


@cli.group(short_help="List, restore or purge quarantined values.")
def quarantine() -> None:
    """Values a start moved aside because they did not parse or validate."""


def _find_entry(backend: Backend, entry_id: str) -> Callable[[], Awaitable[QuarantineEntry]]:
    async def find() -> QuarantineEntry:
        async for entry in backend.list_quarantine(""):
            if entry.id == entry_id:
                return entry
        raise CommandError(f"no quarantine entry {entry_id!r} in {backend.url}")

    return find


@quarantine.command("list")
@target_argument
@json_option
def quarantine_list(target: str, as_json: bool) -> None:
    """Every quarantined value: id, key, reason and when."""
    backend = open_target(target, read_only=True)

    async def work() -> list[QuarantineEntry]:
        return [entry async for entry in backend.list_quarantine("")]

    entries = _run([backend], work)
    if as_json:
        _print_json(quarantine_json(entries))
    else:
        print_quarantine(backend.url, entries)


@quarantine.command("restore")
@entry_arguments
@click.option("--overwrite", is_flag=True, help="Replace a value stored there since.")
def quarantine_restore(entry_id: str, target: str, overwrite: bool) -> None:
    """Put a quarantined value back where it was (after fixing it, say)."""
    backend = open_target(target)
    refuse_beside_running_sessions(backend)

    async def work() -> tuple[str, str | None]:
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
    if still_bad:
        click.echo(
            f"warning: {key} still does not parse or validate ({still_bad}); "
            "the next start will quarantine it again",
            err=True,
        )


@quarantine.command("purge")
@entry_arguments
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def quarantine_purge(entry_id: str, target: str, yes: bool) -> None:
    """Delete a quarantined value for good (asks first unless --yes)."""
    backend = open_target(target)
    refuse_beside_running_sessions(backend)
    entry = _run([], _find_entry(backend, entry_id))
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
) -> None:
    _print_plan(plan, dry_run=dry_run)
    for note in notes:
        click.echo(f"note: {note}")
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
    ctx.exit(EXIT_PROBLEMS if failures else EXIT_OK)


def _refuse_overlap(source: Backend, destination: Backend) -> None:
    if source.url == destination.url:
        raise CommandError(f"source and destination are the same: {destination.url}")
    if not (isinstance(source, FileBackend) and isinstance(destination, FileBackend)):
        return
    # One root inside the other: the copy would list its own output.
    if os.path.commonpath([source.root, destination.root]) in (source.root, destination.root):
        raise CommandError(f"{source.root} and {destination.root} lie one inside the other")


@cli.command(short_help="Copy every value between two backends, verified.")
@click.argument("source_spec", metavar="SRC")
@click.argument("destination_spec", metavar="DST")
@click.option("--overwrite", is_flag=True, help="Replace destination values that differ.")
@click.option("--dry-run", is_flag=True, help="Show what would be copied; write nothing.")
@progress_option
@click.pass_context
def migrate(
    ctx: click.Context,
    source_spec: str,
    destination_spec: str,
    overwrite: bool,
    dry_run: bool,
    progress: bool | None,
) -> None:
    """Copy every value from SRC to DST (ROOTs or URLs), each verified by reading it back.

    Refuses, writing nothing, when a destination value differs and is not
    provably older: older needs a change time from both backends (file: mtime),
    so where one side keeps none (Redis) any difference is refused. --overwrite
    replaces them. Quarantined values stay in SRC.
    """
    source_backend = open_target(source_spec)
    destination = open_target(destination_spec, must_exist=False)
    _refuse_overlap(source_backend, destination)
    if not dry_run:
        # The bot owns its state: a copy into its root would be undone by its next tick.
        refuse_beside_running_sessions(destination)

    async def work() -> tuple[CopyOutcome, int]:
        source = await BackendSource.listing(source_backend)
        held = sum([1 async for _ in source_backend.list_quarantine("")])
        outcome = await _copy(
            source, destination, overwrite=overwrite, dry_run=dry_run, bars=Bars(progress)
        )
        return outcome, held

    (plan, copied, failures), quarantined = _run([source_backend, destination], work)
    notes = [f"{plural(quarantined, 'quarantined value')} stay in the source (not migrated)"]
    _finish_copy(ctx, plan, copied, failures, dry_run=dry_run, notes=notes if quarantined else [])


@cli.command("export", short_help="Write every value to a JSON Lines file.")
@click.argument("source_spec", metavar="SRC")
@click.argument("path", metavar="FILE.jsonl")
@click.option("--include-quarantine", is_flag=True, help="Also export quarantined values.")
@click.option("--overwrite", is_flag=True, help="Replace FILE if it exists.")
@progress_option
def export(
    source_spec: str,
    path: str,
    include_quarantine: bool,
    overwrite: bool,
    progress: bool | None,
) -> None:
    """Write every value of SRC to FILE.jsonl ('-': stdout), one {"key", "value"} per line."""
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
    click.echo(
        f"exported {plural(result.values, 'value')}"
        + (f" and {plural(result.quarantined, 'quarantined value')}" if include_quarantine else "")
        + f" to {where}",
        err=path == "-",
    )
    if result.raw:
        click.echo(
            f"warning: {plural(len(result.raw), 'value')} not JSON, exported as raw_base64 "
            f"(run persistkit preflight): {', '.join(result.raw[:5])}",
            err=True,
        )


@cli.command("import", short_help="Write every value of a JSON Lines file to a backend.")
@click.argument("path", metavar="FILE.jsonl")
@click.argument("destination_spec", metavar="DST")
@click.option("--overwrite", is_flag=True, help="Replace destination values that differ.")
@click.option("--dry-run", is_flag=True, help="Show what would be written; write nothing.")
@click.option(
    "--include-quarantine",
    is_flag=True,
    help="Put exported quarantined values back into DST's quarantine (where the key is free).",
)
@progress_option
@click.pass_context
def import_(
    ctx: click.Context,
    path: str,
    destination_spec: str,
    overwrite: bool,
    dry_run: bool,
    include_quarantine: bool,
    progress: bool | None,
) -> None:
    """Write every value of FILE.jsonl ('-': stdin) to DST, each verified by reading it back.

    The whole file is checked first (a bad line: exit 2, nothing written). A
    file has no change times, so a destination value that differs is refused,
    writing nothing, unless --overwrite.
    """
    source = read_jsonl(path)
    destination = open_target(destination_spec, must_exist=False)
    if not dry_run:
        refuse_beside_running_sessions(destination)
    quarantined = source.quarantined

    async def work() -> tuple[CopyOutcome, list[str]]:
        outcome = await _copy(
            source, destination, overwrite=overwrite, dry_run=dry_run, bars=Bars(progress)
        )
        plan, _, failures = outcome
        notes: list[str] = []
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
    _finish_copy(ctx, plan, copied, failures, dry_run=dry_run, notes=notes)

"""``persistkit replay list|show``: the replay runs recorded in a target's run registry."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import click
import orjson

from persistkit.errors import EntityNotFoundError
from persistkit.replay import REGISTRY_DIR, REPLAY_DIR, RunRegistry

from .targets import EXIT_PROBLEMS, CommandError, default_target, format_time

__all__ = ["replay"]

_target = click.argument("target", default=default_target, metavar="[TARGET]")
_json = click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")


def _registry(target: str) -> RunRegistry:
    if not os.path.isdir(os.path.join(target, REPLAY_DIR, REGISTRY_DIR)):
        raise CommandError(f"no replay runs recorded in {os.path.abspath(target)}")
    return RunRegistry(target)


def _read(target: str, run_id: str | None) -> list[dict[str, Any]]:
    registry = _registry(target)

    async def work() -> list[dict[str, Any]]:
        try:
            return [await registry.get(run_id)] if run_id else await registry.list()
        finally:
            await registry.aclose()

    try:
        return asyncio.run(work())
    except EntityNotFoundError as exc:
        raise CommandError(str(exc).strip("\"'"), exit_code=EXIT_PROBLEMS) from exc


def _dump(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")


@click.group(
    short_help="List and show recorded replay runs.",
    epilog="Exit codes: see the --help of each command.",
)
def replay() -> None:
    """Replay runs (persistkit.replay) recorded in TARGET/replay/ (TARGET: as for every command)."""


@replay.command(
    "list",
    short_help="Every run with its status.",
    epilog="Exit codes: 0 listed, 2 could not run (no replay run recorded in TARGET).",
)
@_target
@_json
def replay_list(target: str, as_json: bool) -> None:
    """Every run, oldest first: id, status, ticks replayed and skipped, first divergence."""
    runs = _read(target, None)
    if as_json:
        _dump(runs)
        return
    click.echo(f"{len(runs)} replay run{'s' * (len(runs) != 1)} in {os.path.abspath(target)}")
    for run in runs:
        divergence = run.get("first_divergence")
        click.echo(
            f"  {run['replay_run_id']:<34} {run['status']:<12} "
            f"started {format_time(run['started_at'])}  "
            f"ticks {run['ticks_replayed']} replayed, {run['ticks_skipped']} skipped  "
            f"divergence {'none' if divergence is None else '#' + str(divergence['seq'])}"
        )


@replay.command(
    "show",
    short_help="One run: parameters, window, summary.",
    epilog="Exit codes: 0 shown, 1 no run RUN_ID in TARGET, 2 could not run (no replay run "
    "recorded in TARGET).",
)
@click.argument("run_id")
@_target
@_json
def replay_show(run_id: str, target: str, as_json: bool) -> None:
    """One run's record: parameters, window, status, summary and first divergence."""
    (run,) = _read(target, run_id)
    if as_json:
        _dump(run)
        return
    for field in (
        "replay_run_id",
        "mode",
        "status",
        "source",
        "start",
        "end",
        "params",
        "ticks_replayed",
        "ticks_skipped",
        "state_digest",
        "error",
    ):
        value = run.get(field)
        shown = orjson.dumps(value).decode() if isinstance(value, dict) else value
        click.echo(f"{field + ':':<16}{shown}")
    click.echo(f"{'started:':<16}{format_time(run.get('started_at'))}")
    click.echo(f"{'finished:':<16}{format_time(run.get('finished_at'))}")
    for warning in run.get("warnings", []):
        click.echo(f"{'warning:':<16}{warning}")
    divergence = run.get("first_divergence")
    if divergence is None:
        click.echo(f"{'divergence:':<16}none")
        return
    click.echo(
        f"{'divergence:':<16}#{divergence['seq']} at {divergence['time']} "
        f"(session {divergence['session']})"
    )
    for key, values in divergence["differences"].items():
        click.echo(f"  {key}")
        for side in ("live", "replay"):
            shown = orjson.dumps(values[side], option=orjson.OPT_SORT_KEYS).decode()
            click.echo(f"    {side + ':':<8}{shown}")

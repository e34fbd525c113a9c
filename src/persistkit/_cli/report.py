"""``persistkit report schedule|partial SYMBOL STRATEGY``: a pair's statistics, read-only."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click
import orjson

from persistkit._domains.journal_events import PairFold, folded_key
from persistkit._names import join_pair
from persistkit._stats import EventReports, Partial, Schedule
from persistkit.backends import Backend
from persistkit.backends._file import FileBackend
from persistkit.errors import CorruptValueError

from .targets import default_target, open_target

__all__ = ["report"]

_KINDS: dict[str, EventReports[Any]] = {"schedule": Schedule, "partial": Partial}


@click.command(
    short_help="Print a pair's schedule or partial statistics.",
    epilog="Exit codes: 0 printed (also for a pair with no events), 2 could not run "
    "(missing root, bad URL, unreachable server, a name that cannot be stored, an event "
    "log that does not validate).",
)
@click.argument("kind", type=click.Choice(sorted(_KINDS)), metavar="schedule|partial")
@click.argument("symbol")
@click.argument("strategy")
@click.argument("target", default=default_target, metavar="[ROOT | URL]")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
def report(kind: str, symbol: str, strategy: str, target: str, as_json: bool) -> None:
    """Print the statistics of SYMBOL under STRATEGY, changing nothing.

    schedule: the scheduled (limit) entries placed, opened and cancelled, the
    activation and cancellation rates and the mean wait before opening.

    partial: the profit and loss milestones reached.

    The markdown is what Schedule.dump and Partial.dump write; a rate with
    nothing to divide by is N/A (null in --json); a pair with no events
    prints zero counts. ROOT defaults as for every command
    ($PERSISTKIT_BACKEND, else $PERSISTKIT_BASE_DIR, else ./dump/data).
    """
    backend = open_target(target, read_only=True)
    facade = _KINDS[kind]

    async def work() -> tuple[str, bytes]:
        try:
            await _check_folded_head(backend, symbol, strategy)
            stats = await facade.get_data(symbol, strategy, backend=backend)
        finally:
            await backend.aclose()
        document = orjson.dumps(stats.as_json(), option=orjson.OPT_INDENT_2)
        return facade.markdown(stats), document

    markdown, document = asyncio.run(work())
    if as_json:
        sys.stdout.buffer.write(document + b"\n")
        sys.stdout.buffer.flush()
    else:
        click.echo(markdown, nl=False)


async def _check_folded_head(backend: Backend, symbol: str, strategy: str) -> None:
    """On a file root a pair's events live in its folded head: a damaged one is an event
    log that does not validate (exit 2), not "no events". A bot reads on without it
    (the journal's events count) and its next checkpoint quarantines it."""
    if not isinstance(backend, FileBackend):
        return
    key = folded_key(join_pair(symbol, strategy))
    found = await backend.get(key)
    try:
        PairFold.decode(None if found is None else found.data)
    except ValueError as exc:
        raise CorruptValueError(
            f"{key} does not validate ({str(exc).splitlines()[0]}): the events folded "
            "into it cannot be read; the next checkpoint of a process of the root "
            "quarantines it",
            key=key,
            reason=str(exc),
        ) from exc

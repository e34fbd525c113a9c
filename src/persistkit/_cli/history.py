"""``persistkit history KEY`` and ``inspect --as-of``: the past a root's history keeps."""

from __future__ import annotations

import asyncio
import datetime as _dt
import sys
from typing import Any

import click
import orjson

from persistkit._history import Change, format_ns, to_ns
from persistkit.backends import Backend
from persistkit.backends._memory import MemoryBackend
from persistkit.errors import PersistError

from .targets import CommandError, default_target, open_target

__all__ = ["history", "parse_moment", "snapshot_at"]


def parse_moment(text: str) -> int:
    """``--as-of`` as nanoseconds: epoch milliseconds, or ISO 8601 with a zone (``...Z``)."""
    if text.isdigit():
        return to_ns(int(text))
    try:
        moment = _dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise CommandError(
            f"--as-of {text!r}: give epoch milliseconds or an ISO 8601 time with its zone "
            "(2026-11-30T14:03:00Z)"
        ) from None
    try:
        return to_ns(moment)
    except ValueError as exc:
        raise CommandError(f"--as-of {text!r}: {exc}") from None


async def snapshot_at(backend: Backend, time_ns: int) -> MemoryBackend:
    """What ``backend`` held at ``time_ns``, copied into memory (read only from the history)."""
    history = await backend.history_records(until_ns=time_ns)
    snapshot = MemoryBackend(f"as-of-{time_ns}")
    for key, data in history.state_at(time_ns).items():
        await snapshot.put(key, data)
    return snapshot


def _value(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return data.decode(errors="replace")


def _change_json(change: Change) -> dict[str, Any]:
    return {
        "seq": change.seq,
        "time": format_ns(change.time_ns),
        "time_ns": change.time_ns,
        "tick": change.tick,
        "removed": change.data is None,
        "value": _value(change.data),
    }


@click.command(
    short_help="Every change of one key, with its time and tick.",
    epilog="Exit codes: 0 shown (also when the history holds no change of KEY), 2 could not "
    "run (no such root, a bad URL, a backend that keeps no history).",
)
@click.argument("key")
@click.argument("target", default=default_target, metavar="[ROOT | URL]")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
def history(key: str, target: str, as_json: bool) -> None:
    """Every change of KEY (signal/BTCUSDT_trend/BTCUSDT, say) the history still holds.

    Oldest first: commit number, commit time (UTC), the session whose tick made
    it (``-`` for a write outside a tick with inputs) and the value. The first
    line may be the history's base: the value when the history begins.
    """
    backend = open_target(target, read_only=True)

    async def work() -> list[Change]:
        try:
            return (await backend.history_records()).changes_of(key)
        finally:
            await backend.aclose()

    try:
        changes = asyncio.run(work())
    except PersistError as exc:
        raise CommandError(str(exc)) from exc
    if as_json:
        document = {"key": key, "changes": [_change_json(change) for change in changes]}
        sys.stdout.buffer.write(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
        return
    if not changes:
        click.echo(f"{key}: no change in the history of {backend.url}")
        return
    click.echo(f"{key} in {backend.url}: {len(changes)} change{'s' * (len(changes) != 1)}")
    for change in changes:
        value = (
            "(removed)"
            if change.data is None
            else orjson.dumps(_value(change.data), option=orjson.OPT_SORT_KEYS).decode()
        )
        click.echo(
            f"  #{change.seq:<6} {format_ns(change.time_ns)}  {change.tick or '-':<12} {value}"
        )

"""What the commands print: rich tables and plain words on stdout, progress on stderr."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from persistkit.backends._base import QuarantineEntry
from persistkit.backends._confine import describe_link

from .inventory import Inventory, RowView
from .preflight import PreflightReport
from .targets import format_time, iso_time, plural, printable

__all__ = [
    "Bars",
    "inventory_json",
    "preflight_json",
    "print_inventory",
    "print_preflight",
    "print_quarantine",
    "quarantine_json",
    "read_problems",
]


_PIPED_WIDTH = 160


class Bars:
    """Progress bars on stderr, shown when stderr is a terminal or when asked (``--progress``)."""

    def __init__(self, enabled: bool | None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    @contextmanager
    def bar(
        self, description: str, total: int | None = None
    ) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
        """``(advance, set_total)`` for one task; both do nothing when bars are off."""
        if not self.enabled:
            yield (lambda _count: None), (lambda _total: None)
            return
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        task = progress.add_task(description, total=total)
        with progress:
            yield (
                lambda count: progress.advance(task, count),
                lambda new_total: progress.update(task, total=new_total),
            )


def _stdout() -> Console:
    # Names come from users and exchanges: never read them as markup or emoji codes.
    console = Console(highlight=False, markup=False, emoji=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped to a file or a pager: no terminal to fit, so do not fold the tables
        # into rich's default 80 columns.
        console.width = _PIPED_WIDTH
    return console


def _price(value: float) -> str:
    return f"{value:,.8g}"


def _millis(stamp: int) -> str:
    return format_time(stamp / 1000)


# -- inspect -----------------------------------------------------------------------


def _row_json(view: RowView) -> dict[str, Any]:
    return {
        "key": view.key,
        "symbol": view.symbol,
        "strategy": view.strategy,
        "row": view.row.model_dump(mode="json"),
    }


def inventory_json(inventory: Inventory) -> dict[str, Any]:
    return {
        "backend": inventory.url,
        "domains": inventory.domains,
        "entities": [
            {
                "key": entity.key,
                "domain": entity.domain,
                "entity": entity.entity,
                "id": entity.entity_id,
                "bytes": entity.size,
                "changed_at": iso_time(entity.changed_at),
                "pending": entity.pending,
            }
            for entity in inventory.entities
        ],
        "signals": [_row_json(view) for view in inventory.signals],
        "scheduled": [_row_json(view) for view in inventory.scheduled],
        "risk": [
            {"key": view.key, "risk_name": view.risk_name, "position_key": view.position_key,
             "position": view.position.model_dump(mode="json")}
            for view in inventory.risk
        ],
        "partial": [
            {"key": view.key, "symbol": view.symbol, "strategy": view.strategy,
             "signal_id": view.signal_id, "levels": view.levels.model_dump(mode="json")}
            for view in inventory.partial
        ],
        "open_intents": [
            {"key": view.key, "symbol": view.symbol, "strategy": view.strategy,
             "in_doubt": view.intent.unresolved, "intent": view.intent.model_dump(mode="json")}
            for view in inventory.open_intents
        ],
        "unreadable": [{"key": item.key, "reason": item.reason} for item in inventory.unreadable],
        "quarantined": inventory.quarantined,
        "read_at": inventory.point,
        "pending": inventory.pending,
        "behind": list(inventory.behind),
        "foreign_links": list(inventory.foreign_links),
        "not_read": inventory.not_read,
    }  # fmt: skip


def read_problems(behind: tuple[str, ...], foreign_links: tuple[str, ...]) -> list[str]:
    """What a read could not show, one line each (``inspect``, ``export``, ``migrate``)."""
    lines = [
        f"older than the committed state: {commits} (shown without them)" for commits in behind
    ]
    lines += [
        f"symbolic link inside the root, not followed: {describe_link(link)} (replace it with "
        "a real directory or file, or move it out of the root)"
        for link in foreign_links
    ]
    return lines


def print_inventory(inventory: Inventory) -> None:
    console = _stdout()
    count = len(inventory.entities)
    console.print(
        f"{inventory.url}: {count} entit{'y' if count == 1 else 'ies'} in "
        f"{len(inventory.domains)} domains ({', '.join(inventory.domains) or 'none'}), "
        f"committed state read at one point ({inventory.point})",
        soft_wrap=True,
    )
    pending = inventory.pending
    if inventory.entities:
        table = Table(title="Entities", title_justify="left")
        columns = ["domain", "entity", "id", "bytes", "changed (UTC)"]
        for column in columns + (["state"] if pending else []):
            table.add_column(column, justify="right" if column == "bytes" else "left")
        for entity in inventory.entities:
            cells = [
                entity.domain,
                entity.entity,
                entity.entity_id,
                str(entity.size),
                format_time(entity.changed_at),
            ]
            table.add_row(*cells, *(["pending" if entity.pending else ""] if pending else []))
        console.print(table)
    if pending:
        them = "it" if len(pending) == 1 else "them"
        console.print(
            f"Pending: {plural(len(pending), 'value')} committed and not yet applied where "
            f"the backend keeps values: shown as committed (a start applies {them}; "
            "nothing was changed)",
            soft_wrap=True,
        )
    for title, rows, when in (
        ("Open signals", inventory.signals, "pending since"),
        ("Scheduled entries", inventory.scheduled, "scheduled at"),
    ):
        if not rows:
            console.print(f"{title}: none", soft_wrap=True)
            continue
        table = Table(title=title, title_justify="left")
        for column in ("symbol", "strategy", "side", "open", "take profit", "stop loss", when):
            table.add_column(column, justify="right" if column in ("open", "take profit",
                             "stop loss") else "left")  # fmt: skip
        for view in rows:
            row = view.row
            stamp = row.pending_at if when == "pending since" else row.scheduled_at
            table.add_row(
                view.symbol,
                view.strategy,
                row.position,
                _price(row.price_open),
                _price(row.price_take_profit),
                _price(row.price_stop_loss),
                _millis(stamp),
            )
        console.print(table)
    if inventory.risk:
        table = Table(title="Risk positions", title_justify="left")
        for column in ("risk profile", "symbol", "strategy", "side", "open", "quantity", "added"):
            table.add_column(column, justify="right" if column in ("open", "quantity") else "left")
        for risk in inventory.risk:
            position = risk.position
            table.add_row(
                risk.risk_name,
                position.symbol,
                position.strategy_name,
                position.position,
                _price(position.price_open),
                _price(position.quantity),
                _millis(position.added_at),
            )
        console.print(table)
    else:
        console.print("Risk positions: none", soft_wrap=True)
    if inventory.partial:
        table = Table(title="Partial milestones reached", title_justify="left")
        for column in ("symbol", "strategy", "signal", "profit %", "loss %"):
            table.add_column(column)
        for partial in inventory.partial:
            table.add_row(
                partial.symbol,
                partial.strategy,
                partial.signal_id,
                ",".join(map(str, partial.levels.profit_levels)) or "-",
                ",".join(map(str, partial.levels.loss_levels)) or "-",
            )
        console.print(table)
    _print_open_intents(console, inventory)
    if inventory.unreadable:
        table = Table(title="Unreadable (a start would quarantine them)", title_justify="left")
        table.add_column("key")
        table.add_column("reason")
        for item in inventory.unreadable:
            table.add_row(item.key, item.reason)
        console.print(table)
    if inventory.quarantined:
        console.print(
            f"Quarantine holds {plural(inventory.quarantined, 'value')}: "
            "persistkit quarantine list",
            soft_wrap=True,
        )
    problems = read_problems(inventory.behind, inventory.foreign_links)
    problems += [f"not shown: {line}" for line in inventory.not_read]
    if problems:
        console.print(f"{plural(len(problems), 'problem')}:", soft_wrap=True)
        for line in problems:
            console.print(f"  {line}", soft_wrap=True)


def _print_open_intents(console: Console, inventory: Inventory) -> None:
    if not inventory.open_intents:
        console.print("Open order intents: none", soft_wrap=True)
        return
    in_doubt = sum(1 for view in inventory.open_intents if view.intent.unresolved)
    table = Table(
        title=f"Open order intents ({in_doubt} in doubt: a restart reconciles them)",
        title_justify="left",
    )
    numbers = ("quantity", "filled", "price")
    for column in ("symbol", "strategy", "client order id", "side", *numbers, "status",
                   "exchange id", "created"):  # fmt: skip
        table.add_column(column, justify="right" if column in numbers else "left")
    for view in inventory.open_intents:
        intent = view.intent
        table.add_row(
            printable(view.symbol),
            printable(view.strategy),
            intent.client_order_id,
            intent.side,
            _price(intent.quantity),
            _price(intent.filled_quantity),
            "market" if intent.price is None else _price(intent.price),
            f"{intent.status} (in doubt)" if intent.unresolved else intent.status,
            printable(intent.exchange_order_id or "-"),
            _millis(intent.created_at),
        )
    console.print(table)


# -- preflight -----------------------------------------------------------------------


def preflight_json(report: PreflightReport, exit_code: int) -> dict[str, Any]:
    return {
        "backend": report.url,
        "status": "clean" if report.clean else "problems",
        "exit_code": exit_code,
        "namespaces": report.namespaces,
        "checked": report.checked,
        "validated": report.validated,
        "backtest_kit": report.backtest_kit,
        "directories": report.directories,
        "quarantined": report.quarantined,
        "unchecked": report.unchecked,
        "problems": [
            {
                "kind": problem.kind,
                "where": problem.where,
                "detail": problem.detail,
                "a_start_would": problem.a_start_would,
            }
            for problem in report.problems
        ],
        "notes": [
            {"kind": note.kind, "where": note.where, "detail": note.detail} for note in report.notes
        ],
    }


def print_preflight(report: PreflightReport, exit_code: int) -> None:
    say = functools.partial(_stdout().print, soft_wrap=True)
    say(f"Preflight of {report.url} (read-only: nothing was changed)")
    if report.unchecked is not None:
        say(f"  values       none checked: {report.unchecked}")
    else:
        listed = plural(report.checked + report.backtest_kit, "value")
        say(f"  reachable    yes, listed {listed}")
    denied = report.of_kind("permission")
    if report.directories is None:
        say("  permissions  not applicable to this backend")
    elif denied:
        say(f"  permissions  {plural(len(denied), 'path')} the process cannot use (below)")
    else:
        say(f"  permissions  the process can create files in all {report.directories} directories")
    if report.unchecked is not None:
        _print_problems(say, report, exit_code)
        return
    corrupt = report.of_kind("corrupt", "unreadable")
    json_only = report.checked - report.validated
    say(
        f"  values       {report.checked} checked ({report.validated} against their domain "
        f"model, {json_only} as JSON only): "
        + (f"{len(corrupt)} bad" if corrupt else "all parse and validate")
        + (
            f"; {report.backtest_kit} in backtest-kit 19.x folders, not read by a start (below)"
            if report.backtest_kit
            else ""
        )
    )
    orphans = report.of_kind("orphan")
    say(f"  temp files   {len(orphans) or 'none'} left by interrupted writes")
    commits = [note for note in report.notes if note.kind == "unapplied-commit"]
    if not commits:
        say("  commits      none waiting to be applied to the files")
    for note in commits:
        say(f"  commits      {note.where}")
    warnings = report.of_kind("durability")
    said = plural(len(warnings), "warning") if warnings else "no warnings"
    say(f"  durability   {said} from the backend")
    say(f"  quarantine   {plural(report.quarantined, 'value')} held from earlier starts")
    links = report.of_kind("foreign-symlink")
    if links:
        say(f"  symlinks     {plural(len(links), 'link')} inside the root, never followed (below)")
    for note in report.notes:
        if note.kind != "unapplied-commit":
            say(f"  note: [{note.kind}] {note.where}: {note.detail}")
    _print_problems(say, report, exit_code)


def _print_problems(say: Callable[[str], None], report: PreflightReport, exit_code: int) -> None:
    if report.problems:
        say(f"{plural(len(report.problems), 'problem')}:")
        for problem in report.problems:
            say(f"  [{problem.kind}] {problem.where}")
            say(f"      {problem.detail}")
            say(f"      a start would: {problem.a_start_would}")
        say(f"Result: problems found (exit {exit_code})")
    else:
        say(f"Result: clean, a start has nothing to repair (exit {exit_code})")


# -- quarantine -------------------------------------------------------------------------


def quarantine_json(entries: list[QuarantineEntry]) -> list[dict[str, Any]]:
    return [
        {
            "id": entry.id,
            "key": entry.key,
            "reason": entry.reason,
            "quarantined_at": iso_time(entry.quarantined_at),
        }
        for entry in entries
    ]


def print_quarantine(url: str, entries: list[QuarantineEntry]) -> None:
    """One block per entry, the id on a line of its own so that it copies whole."""
    console = _stdout()
    if not entries:
        console.print(f"{url}: the quarantine is empty", soft_wrap=True)
        return
    console.print(f"{url}: {plural(len(entries), 'quarantined value')}", soft_wrap=True)
    for entry in entries:
        console.print(entry.id, soft_wrap=True)
        console.print(f"    key     {entry.key}", soft_wrap=True)
        console.print(f"    reason  {entry.reason}", soft_wrap=True)
        console.print(f"    since   {format_time(entry.quarantined_at)} UTC", soft_wrap=True)

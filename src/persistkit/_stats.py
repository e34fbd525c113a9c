"""``Schedule`` and ``Partial``: statistics of scheduled entries and profit/loss milestones.

The events are recorded by the commits that change a pair's scheduled row or
partial levels (see :mod:`persistkit._domains.events` for the rules), so a live
bot's statistics survive restarts and match its acknowledged ticks; a
backtest's live in memory with the rest of its state. Nothing else to call::

    stats = await Schedule.get_data("BTCUSDT", "my-strategy")
    stats.activation_rate          # None until a scheduled entry opened or was cancelled
    await Schedule.dump("BTCUSDT", "my-strategy")   # ./dump/schedule/BTCUSDT_my-strategy.md

Totals, rates and averages are computed over the events kept (the newest 250
per pair by default, ``configure(event_limit=...)``). A rate or an average with
nothing to divide by is ``None`` ("N/A" in a report), never NaN or infinity.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from persistkit._config import DEFAULT_EVENT_LIMIT, active_settings
from persistkit._domains.events import (
    PAIR_LOGS,
    PARTIAL,
    SCHEDULE,
    EventKind,
    PartialEvent,
    ScheduleEvent,
    stored_rows,
)
from persistkit._domains.journal_events import journal_rows
from persistkit._names import join_pair
from persistkit._store import PersistBase, SegmentName
from persistkit.backends._base import Backend
from persistkit.backends._file import FileBackend

__all__ = [
    "EventReports",
    "Partial",
    "PartialEvent",
    "PartialStatistics",
    "PartialUtils",
    "Schedule",
    "ScheduleEvent",
    "ScheduleStatistics",
    "ScheduleUtils",
    "report_file_name",
]

StatsT = TypeVar("StatsT")


def _percent(part: int, whole: int) -> float | None:
    return None if whole == 0 else 100.0 * part / whole


@dataclass(frozen=True, slots=True)
class ScheduleStatistics:
    """What became of a pair's scheduled entries, over the events kept."""

    symbol: str
    strategy: str
    event_list: list[ScheduleEvent]
    """Oldest first."""
    total_events: int
    total_scheduled: int
    total_opened: int
    total_cancelled: int
    activation_rate: float | None
    """Percent of the resolved entries (opened or cancelled) that opened; ``None``: none."""
    cancellation_rate: float | None
    """Percent of the resolved entries that were cancelled; ``None``: none."""
    avg_activation_time: float | None
    """Mean minutes from ``scheduled_at`` to ``pending_at`` of the opened ones; ``None``: none."""

    @classmethod
    def of(cls, symbol: str, strategy: str, events: Sequence[ScheduleEvent]) -> ScheduleStatistics:
        opened = [event for event in events if event.action == "opened"]
        cancelled = sum(1 for event in events if event.action == "cancelled")
        resolved = len(opened) + cancelled
        waits = [event.duration_min for event in opened if event.duration_min is not None]
        return cls(
            symbol=symbol,
            strategy=strategy,
            event_list=list(events),
            total_events=len(events),
            total_scheduled=sum(1 for event in events if event.action == "scheduled"),
            total_opened=len(opened),
            total_cancelled=cancelled,
            activation_rate=_percent(len(opened), resolved),
            cancellation_rate=_percent(cancelled, resolved),
            avg_activation_time=sum(waits) / len(waits) if waits else None,
        )

    def as_json(self) -> dict[str, Any]:
        """Plain JSON types (what ``persistkit report schedule --json`` prints)."""
        return _as_json(self)


@dataclass(frozen=True, slots=True)
class PartialStatistics:
    """The profit and loss milestones a pair's signals reached, over the events kept."""

    symbol: str
    strategy: str
    event_list: list[PartialEvent]
    """Oldest first."""
    total_events: int
    total_profit: int
    total_loss: int

    @classmethod
    def of(cls, symbol: str, strategy: str, events: Sequence[PartialEvent]) -> PartialStatistics:
        profit = sum(1 for event in events if event.action == "profit")
        return cls(
            symbol=symbol,
            strategy=strategy,
            event_list=list(events),
            total_events=len(events),
            total_profit=profit,
            total_loss=len(events) - profit,
        )

    def as_json(self) -> dict[str, Any]:
        """Plain JSON types (what ``persistkit report partial --json`` prints)."""
        return _as_json(self)


def _as_json(stats: ScheduleStatistics | PartialStatistics) -> dict[str, Any]:
    fields: dict[str, Any] = {
        name: getattr(stats, name) for name in type(stats).__dataclass_fields__
    }
    fields["event_list"] = [
        event.model_dump(mode="json", by_alias=False) for event in stats.event_list
    ]
    return fields


# -- markdown ---------------------------------------------------------------------------------


def _cell(text: object) -> str:
    """A table cell: a ``|`` or a line break in a name must not end the cell or the row."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _price(price: float | None) -> str:
    if price is None:
        return "N/A"
    # Two decimals hide a small coin's price: keep its significant digits.
    return f"{price:.2f}" if abs(price) >= 1 else f"{price:.8f}".rstrip("0")


def _number(value: float | None, unit: str = "") -> str:
    return "N/A" if value is None else f"{value:.2f}{unit}"


def _table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    lines = [f"| {' | '.join(header)} |", f"| {' | '.join('---' for _ in header)} |"]
    lines += [f"| {' | '.join(_cell(cell) for cell in row)} |" for row in rows]
    if not rows:
        lines += ["", "No events recorded."]
    return lines


def schedule_markdown(stats: ScheduleStatistics) -> str:
    """The report of :meth:`ScheduleUtils.get_report`."""
    rows = [
        [
            _time(event.timestamp),
            event.action.upper(),
            event.symbol,
            event.signal_id,
            event.position.upper(),
            _price(event.price_open),
            _number(event.duration_min),
        ]
        for event in stats.event_list
    ]
    header = ["Timestamp", "Action", "Symbol", "Signal ID", "Position", "Entry Price"]
    lines = [
        f"# Scheduled Signals Report: {_cell(stats.strategy)} ({_cell(stats.symbol)})",
        "",
        *_table([*header, "Wait Time (min)"], rows),
        "",
        f"- **Total events:** {stats.total_events}",
        f"- **Scheduled signals:** {stats.total_scheduled}",
        f"- **Opened signals:** {stats.total_opened}",
        f"- **Cancelled signals:** {stats.total_cancelled}",
        f"- **Activation rate:** {_number(stats.activation_rate, '%')}",
        f"- **Cancellation rate:** {_number(stats.cancellation_rate, '%')}",
        f"- **Average activation time:** {_number(stats.avg_activation_time, ' min')}",
    ]
    return "\n".join(lines) + "\n"


def partial_markdown(stats: PartialStatistics) -> str:
    """The report of :meth:`PartialUtils.get_report`."""
    rows = [
        [
            _time(event.timestamp),
            event.action.upper(),
            event.symbol,
            event.signal_id,
            event.position.upper() if event.position else "N/A",
            f"{'+' if event.action == 'profit' else '-'}{event.level}%",
            _price(event.price),
        ]
        for event in stats.event_list
    ]
    header = ["Timestamp", "Action", "Symbol", "Signal ID", "Position", "Level", "Level Price"]
    lines = [
        f"# Partial Profit/Loss Report: {_cell(stats.strategy)} ({_cell(stats.symbol)})",
        "",
        *_table(header, rows),
        "",
        f"- **Total events:** {stats.total_events}",
        f"- **Profit milestones:** {stats.total_profit}",
        f"- **Loss milestones:** {stats.total_loss}",
    ]
    return "\n".join(lines) + "\n"


# -- the two facades ----------------------------------------------------------------------


def report_file_name(symbol: str, strategy: str) -> str:
    """``{symbol}_{strategy}.md``, in the collision-free encoding of the state's own paths."""
    return f"{join_pair(symbol, strategy)}.md"


class EventReports(Generic[StatsT]):
    """``get_data``, ``get_report`` and ``dump`` of one kind of event."""

    def __init__(
        self,
        kind: EventKind,
        statistics: Callable[[str, str, Sequence[Any]], StatsT],
        markdown: Callable[[StatsT], str],
        default_dir: str,
    ) -> None:
        self._kind = kind
        self._statistics: Callable[[str, str, Sequence[Any]], StatsT] = statistics
        self._markdown: Callable[[StatsT], str] = markdown
        self.default_dir = default_dir
        """Where :meth:`dump` writes when given no path (relative to the working directory)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._kind.name} events>"

    async def _events(self, symbol: str, strategy: str, backend: Backend | None) -> list[Any]:
        pair = join_pair(symbol, strategy)
        kind = self._kind
        log: PersistBase[Any]
        legacy: PersistBase[Any]
        if backend is None:
            log = await PAIR_LOGS._store(pair)
            legacy = await kind.legacy._store(pair)
        else:
            log = PersistBase(
                SegmentName(f"{PAIR_LOGS.domain}/{pair}"), backend=backend, model=PAIR_LOGS.schema
            )
            legacy = PersistBase(
                SegmentName(f"{kind.legacy.domain}/{pair}"),
                backend=backend,
                model=kind.legacy.schema,
            )
        rows = await stored_rows(kind, log, legacy)
        if isinstance(log.backend, FileBackend):
            # Events after the in-commit logs (the layout of earlier versions): those
            # derived from the commit journal.
            rows = rows + await journal_rows(log.backend, pair, kind.name)
        # The log drops whole segments, so it may hold up to a segment more than the bound.
        limit = active_settings().event_limit or DEFAULT_EVENT_LIMIT
        return kind.events(rows[-limit:], symbol, strategy)

    async def get_data(
        self, symbol: str, strategy: str, *, backend: Backend | None = None
    ) -> StatsT:
        """The statistics of ``(symbol, strategy)``; zero counts and ``None`` rates when empty.

        ``backend`` reads another backend than the configured one (the command
        line's ``persistkit report`` does).
        """
        return self._statistics(symbol, strategy, await self._events(symbol, strategy, backend))

    async def get_report(
        self, symbol: str, strategy: str, *, backend: Backend | None = None
    ) -> str:
        """The statistics as a markdown table of events and a summary."""
        return self.markdown(await self.get_data(symbol, strategy, backend=backend))

    def markdown(self, stats: StatsT) -> str:
        """The report of statistics already read (what :meth:`get_report` returns)."""
        return self._markdown(stats)

    async def dump(
        self, symbol: str, strategy: str, path: str | os.PathLike[str] | None = None
    ) -> str:
        """Write the report to ``{path}/{symbol}_{strategy}.md`` durably; returns the file's path.

        ``path`` defaults to :attr:`default_dir`. The name uses the encoding of
        the state's own paths, so two pairs never share a report. The file is
        written as every value is (temp file, fsync, rename, directory fsync):
        a crash leaves the old report or the new one, never a torn one.
        """
        report = await self.get_report(symbol, strategy)
        directory = self.default_dir if path is None else path
        return _write_report(directory, report_file_name(symbol, strategy), report)


def _write_report(directory: str | os.PathLike[str], name: str, report: str) -> str:
    return FileBackend(os.path.abspath(os.fspath(directory))).write_file(name, report.encode())


class ScheduleUtils(EventReports[ScheduleStatistics]):
    """Statistics of scheduled (limit) entries: how many opened, were cancelled, how fast."""

    def __init__(self) -> None:
        super().__init__(SCHEDULE, ScheduleStatistics.of, schedule_markdown, "./dump/schedule")


class PartialUtils(EventReports[PartialStatistics]):
    """Statistics of profit and loss milestones reached by open signals."""

    def __init__(self) -> None:
        super().__init__(PARTIAL, PartialStatistics.of, partial_markdown, "./dump/partial")


Schedule = ScheduleUtils()
Partial = PartialUtils()

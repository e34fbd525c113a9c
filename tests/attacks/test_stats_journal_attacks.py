"""Attacks on the statistics of a file root derived from the commit journal (branch stats-journal).

Each test runs the same script on a file root and, where the rules say what the
events are, on a memory root (which keeps the in-commit hook): a file root must
give the same events, event for event, with the timestamps a clock gives.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from tests.test_stats import (
    MIN,
    STRATEGY,
    SYMBOL,
    T0,
    MarketClock,
    filled,
    put_levels,
    put_schedule,
    put_signal,
    scheduled,
)

import persistkit
from persistkit import Partial, Schedule
from persistkit._config import active_settings
from persistkit._domains.events import FOLDED_NAMESPACE
from persistkit._names import join_pair
from persistkit.backends import MemoryBackend
from persistkit.backends._file import FileBackend
from persistkit.models import PartialData

Script = Callable[[MarketClock, Callable[[], Awaitable[None]]], Awaitable[None]]


async def events() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    schedule = await Schedule.get_data(SYMBOL, STRATEGY)
    partial = await Partial.get_data(SYMBOL, STRATEGY)
    return (
        [(e.timestamp, e.action, e.signal_id, e.duration_min) for e in schedule.event_list],
        [(e.timestamp, e.action, e.signal_id, e.level, e.price) for e in partial.event_list],
    )


async def run_on(root: Path | None, script: Script) -> tuple[list[Any], list[Any]]:
    """``script`` on a file root (``root``) or on a memory root (``None``), with a market
    clock; ``restart()`` drops every store and cache as a new process would have none."""
    clock = MarketClock()
    backend: Any = FileBackend(root) if root is not None else MemoryBackend()

    def configure() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # live mode on memory
            persistkit.configure(mode="live", backend=backend, clock=clock)

    async def restart() -> None:
        configure()

    configure()
    await script(clock, restart)
    return await events()


async def test_a_fill_replaced_in_the_first_tick_after_a_restart_opens_the_entry(
    tmp_path: Path,
) -> None:
    """A new process's first tick fills A and replaces it by B (A closed at once), and
    clears A's entry: ``opened``, as on a memory root, not ``cancelled``."""

    async def script(clock: MarketClock, restart: Callable[[], Awaitable[None]]) -> None:
        a = scheduled("A", T0)
        await put_schedule(a)
        await restart()
        clock.now = T0 + 4 * MIN
        async with persistkit.transaction():
            await put_signal(filled(a, T0 + 3 * MIN))
            await put_signal(filled(scheduled("B", T0), T0 + 4 * MIN))
            await put_schedule(None)

    on_file = await run_on(tmp_path / "root", script)
    on_memory = await run_on(None, script)
    assert on_file == on_memory
    assert on_file[0][-1] == (T0 + 4 * MIN, "opened", "A", 3.0)


def _folded_head_path(root: Path) -> Path:
    return root / FOLDED_NAMESPACE / f"{join_pair(SYMBOL, STRATEGY)}.json"


async def _three_entries(clock: MarketClock, between: Callable[[], Awaitable[None]]) -> None:
    await put_schedule(scheduled("A", T0))
    clock.now = T0 + MIN
    await put_schedule(scheduled("B", T0 + MIN))
    await between()
    clock.now = T0 + 2 * MIN
    await put_schedule(scheduled("C", T0 + 2 * MIN))
    clock.now = T0 + 3 * MIN
    await put_levels({"C": PartialData(profit_levels=[10])})


async def _on_memory() -> tuple[list[Any], list[Any]]:
    async def script(clock: MarketClock, restart: Callable[[], Awaitable[None]]) -> None:
        await _three_entries(clock, restart)

    return await run_on(None, script)


async def test_a_folded_head_past_the_journal_keeps_its_events_and_counts_later_ones(
    tmp_path: Path,
) -> None:
    """A folded head whose sequence number is past every record the journal wrote
    (damaged) would make every later record look folded already: no event ever again.
    It is taken as older than the journal instead."""
    root = tmp_path / "root"
    clock = MarketClock()
    persistkit.configure(mode="live", base_dir=root, clock=clock)
    backend = active_settings().backend
    assert isinstance(backend, FileBackend)

    async def damage_the_head() -> None:
        await backend.checkpoint()
        head = orjson.loads(_folded_head_path(root).read_bytes())
        head["seq"] = 10**15
        _folded_head_path(root).write_bytes(orjson.dumps(head))

    await _three_entries(clock, damage_the_head)
    expected = await events()
    await backend.checkpoint()
    assert await events() == expected == await _on_memory()


async def test_statistics_go_on_after_the_journal_folder_is_deleted_on_a_clean_stop(
    tmp_path: Path,
) -> None:
    """An operator removes ``.journal`` after a clean stop (a checkpoint emptied it), or
    restores the data files from a backup without it: the new journal numbers its
    records from 1 again, below the folded heads' numbers."""
    root = tmp_path / "root"
    clock = MarketClock()

    async def remove_the_journal() -> None:
        backend = active_settings().backend
        assert isinstance(backend, FileBackend)
        await backend.aclose()
        shutil.rmtree(root / ".journal")
        persistkit.configure(mode="live", backend=FileBackend(root), clock=clock)

    persistkit.configure(mode="live", backend=FileBackend(root), clock=clock)
    await _three_entries(clock, remove_the_journal)
    on_file = await events()
    backend = active_settings().backend
    assert isinstance(backend, FileBackend)
    await backend.checkpoint()
    folded = await events()
    on_memory = await _on_memory()
    assert on_file == on_memory
    assert folded == on_memory


async def test_a_folded_head_with_facts_of_the_wrong_shape_is_quarantined(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    clock = MarketClock()
    persistkit.configure(mode="live", base_dir=root, clock=clock)
    backend = active_settings().backend
    assert isinstance(backend, FileBackend)
    a = scheduled("A", T0)
    await put_schedule(a)
    await backend.checkpoint()
    head = orjson.loads(_folded_head_path(root).read_bytes())
    head["facts"]["schedule"] = ["A", "long"]
    _folded_head_path(root).write_bytes(orjson.dumps(head))
    clock.now = T0 + MIN
    async with persistkit.transaction():
        await put_signal(filled(a, T0 + MIN))
        await put_schedule(None)
    await backend.checkpoint()  # quarantines the head, forgets the records
    assert backend.journal.records() == []
    await Schedule.get_data(SYMBOL, STRATEGY)  # no IndexError


async def test_a_folded_head_with_a_row_of_the_wrong_length_is_not_read(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    persistkit.configure(mode="live", base_dir=root, clock=MarketClock())
    backend = active_settings().backend
    assert isinstance(backend, FileBackend)
    await put_schedule(scheduled("A", T0))
    await backend.checkpoint()
    head = orjson.loads(_folded_head_path(root).read_bytes())
    head["schedule"] = [["x"]]
    _folded_head_path(root).write_bytes(orjson.dumps(head))
    await Schedule.get_data(SYMBOL, STRATEGY)

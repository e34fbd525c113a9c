"""A small live bot on the file backend: kill it with SIGKILL at any moment, restart it, it resumes.

Every tick it may schedule a limit entry, fill or cancel it, report partial
profit/loss levels, and close the signal, keeping its risk profile's positions
in step; each tick is one atomic commit (``session.tick()``). The market is a
seeded random walk, so a tick's decisions depend only on the tick number and
the state before it: :func:`simulate` replays the same run in memory, which is
how ``scripts/demo.sh`` and the tests check what came back after a crash.

The bot also keeps its own account of what happened (entries scheduled, opened,
cancelled; milestones reached) and, after a restart, compares it with the
statistics persistkit recorded from its commits (``persistkit.Schedule`` and
``persistkit.Partial``); they must agree exactly. The statistics take the
market's time (``configure(clock=market_clock)``), so they can be recomputed. A clean
stop writes each pair's reports beside the state: ``{base_dir}/../schedule/``
and ``{base_dir}/../partial/`` (``./dump/schedule/`` for the default base dir).

Each tick records what the bot saw (its market inputs, ``session.record_inputs``)
in the same commit, and the tick itself is :func:`strategy_for`'s function: what
``persistkit.replay`` runs again over the recorded inputs, with the same results
(``scripts/capture_replay_docs.py`` shows one, and one with changed parameters).

Run it::

    python examples/live_bot.py --base-dir ./dump/data --ticks 50 --interval 0.1

SIGTERM or Ctrl-C stops it after committing the tick in progress (exit code 0).
``--json`` prints one JSON object per line instead of text: the restored state,
then ``{"ack": n}`` once tick ``n`` is committed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Any

import persistkit
from persistkit import (
    LiveSession,
    Partial,
    PersistBase,
    PersistPartialAdapter,
    PersistRiskAdapter,
    PersistScheduleAdapter,
    PersistSignalAdapter,
    RestoredState,
    Schedule,
)
from persistkit.models import PartialData, RiskActivePosition, ScheduledSignalRow, SignalRow

PAIRS = [("BTCUSDT", "trend_follow"), ("ETH/USDT", "mean reversion")]
RISK_NAME = "main-portfolio"
START_MS = 1_763_700_000_000
TICK_MS = 60_000
EVENTS_KEPT = persistkit.DEFAULT_EVENT_LIMIT

_market_ms: contextvars.ContextVar[int] = contextvars.ContextVar("market_ms", default=START_MS)


def market_clock() -> int:
    """The market time of the tick in progress (set by the strategy from its inputs).

    The statistics events' clock (``configure(clock=market_clock)``), in the live
    run and in its replays alike, so that both record the same events.
    """
    return _market_ms.get()


@dataclass
class PairBook:
    signal: SignalRow | None = None
    scheduled: ScheduledSignalRow | None = None
    partial: dict[str, PartialData] = field(default_factory=dict)
    schedule_events: list[list[Any]] = field(default_factory=list)
    """What the bot did with its limit entries: ``[time, action, signal id, minutes waited]``."""
    partial_events: list[list[Any]] = field(default_factory=list)
    """The milestones it reached: ``[time, "profit" | "loss", signal id, level]``."""

    def record(self, events: list[list[Any]], *event: Any) -> None:
        events.append(list(event))
        del events[:-EVENTS_KEPT]


@dataclass
class BotState:
    """Everything the bot knows; what one committed tick leaves behind."""

    tick: int = 0
    pairs: dict[tuple[str, str], PairBook] = field(default_factory=dict)
    positions: list[tuple[str, RiskActivePosition]] = field(default_factory=list)

    def book(self, symbol: str, strategy: str) -> PairBook:
        return self.pairs.setdefault((symbol, strategy), PairBook())

    def as_json(self) -> dict[str, Any]:
        """A plain, comparable form (what ``--json`` prints and the checks compare)."""

        def dump(model: Any) -> Any:
            return None if model is None else model.model_dump(mode="json", by_alias=True)

        return {
            "tick": self.tick,
            "pairs": {
                f"{symbol}|{strategy}": {
                    "signal": dump(book.signal),
                    "scheduled": dump(book.scheduled),
                    "partial": {key: dump(value) for key, value in sorted(book.partial.items())},
                    "schedule_events": book.schedule_events,
                    "partial_events": book.partial_events,
                }
                for (symbol, strategy), book in (
                    (pair, self.pairs.get(pair, PairBook())) for pair in PAIRS
                )
            },
            "positions": [[key, dump(position)] for key, position in self.positions],
        }


def price_at(symbol: str, tick: int) -> float:
    """A deterministic random walk per symbol."""
    base = 64_000.0 if symbol.startswith("BTC") else 3_200.0
    return round(base * (1 + 0.02 * random.Random(f"{symbol}:{tick}").uniform(-1, 1)), 2)


DEFAULT_PARAMS: dict[str, float] = {"take_profit_pct": 3.0, "stop_loss_pct": 2.0}
"""The strategy's parameters: what a replay (``persistkit.replay``) may change."""


def market_inputs(tick: int) -> dict[str, Any]:
    """What the bot sees at ``tick``: recorded with the tick, fed back by a replay."""
    return {"tick": tick, "prices": {symbol: price_at(symbol, tick) for symbol, _ in PAIRS}}


def step(
    state: BotState,
    tick: int,
    prices: dict[str, float] | None = None,
    params: dict[str, float] | None = None,
) -> BotState:
    """The bot's decisions at ``tick``: a new state (the old one is not changed)."""
    chosen = {**DEFAULT_PARAMS, **(params or {})}
    take_profit, stop_loss = chosen["take_profit_pct"] / 100, chosen["stop_loss_pct"] / 100
    rng = random.Random(tick)
    now = START_MS + tick * TICK_MS
    new = BotState(tick=tick, positions=list(state.positions))
    for symbol, strategy in PAIRS:
        old = state.pairs.get((symbol, strategy), PairBook())
        book = new.book(symbol, strategy)
        book.signal, book.scheduled, book.partial = old.signal, old.scheduled, dict(old.partial)
        book.schedule_events = list(old.schedule_events)
        book.partial_events = list(old.partial_events)
        price = prices[symbol] if prices is not None else price_at(symbol, tick)
        roll = rng.random()
        if book.signal is not None:
            signal_id = book.signal.id
            if roll < 0.25:  # take profit or stop loss: close it everywhere
                new.positions = [(k, p) for k, p in new.positions if p.signal_id != signal_id]
                book.partial.pop(signal_id, None)
                book.signal = None
            else:
                reached = book.partial.get(signal_id, PartialData())
                kind = "profit_levels" if roll < 0.7 else "loss_levels"
                levels = list(getattr(reached, kind))
                if len(levels) < 10:
                    levels.append(10 * (len(levels) + 1))
                    book.partial[signal_id] = reached.model_copy(update={kind: levels})
                    action = "profit" if kind == "profit_levels" else "loss"
                    book.record(book.partial_events, now, action, signal_id, levels[-1])
        elif book.scheduled is not None:
            if roll < 0.4:  # the limit price was reached: the entry fills
                filled = book.scheduled
                book.signal = SignalRow.model_validate({**filled.model_dump(), "pendingAt": now})
                new.positions.append(
                    (
                        filled.id,
                        RiskActivePosition(
                            symbol=symbol,
                            strategy_name=strategy,
                            signal_id=filled.id,
                            position=filled.position,
                            price_open=filled.price_open,
                            quantity=round(0.5 + rng.random(), 3),
                            added_at=now,
                        ),
                    )
                )
                book.scheduled = None
                waited = (now - filled.scheduled_at) / TICK_MS
                book.record(book.schedule_events, now, "opened", filled.id, waited)
            elif roll < 0.6:
                cancelled = book.scheduled
                book.scheduled = None
                waited = (now - cancelled.scheduled_at) / TICK_MS
                book.record(book.schedule_events, now, "cancelled", cancelled.id, waited)
        elif roll < 0.6:
            side = "long" if rng.random() < 0.5 else "short"
            sign = 1 if side == "long" else -1
            book.scheduled = ScheduledSignalRow(
                id=f"{symbol}-{tick}",
                symbol=symbol,
                strategy_name=strategy,
                position=side,
                price_open=price,
                price_take_profit=round(price * (1 + sign * take_profit), 2),
                price_stop_loss=round(price * (1 - sign * stop_loss), 2),
                scheduled_at=now,
                pending_at=now,
                minute_estimated_time=240,
            )
            book.record(book.schedule_events, now, "scheduled", book.scheduled.id, None)
    return new


def simulate(ticks: int) -> BotState:
    """The state after ``ticks`` committed ticks, computed in memory."""
    state = BotState()
    for tick in range(1, ticks + 1):
        state = step(state, tick)
    return state


async def read_statistics(book: PairBook, symbol: str, strategy: str) -> None:
    """The pair's events as persistkit recorded them from its commits, into ``book``."""
    scheduled = await Schedule.get_data(symbol, strategy)
    book.schedule_events = [
        [event.timestamp, event.action, event.signal_id, event.duration_min]
        for event in scheduled.event_list
    ]
    milestones = await Partial.get_data(symbol, strategy)
    book.partial_events = [
        [event.timestamp, event.action, event.signal_id, event.level]
        for event in milestones.event_list
    ]


async def from_restored(restored: RestoredState, tick: int) -> BotState:
    """The bot's state from what persistkit restored, and its statistics."""
    state = BotState(tick=tick, positions=list(restored.risk_positions))
    for pair in restored.pairs:
        book = state.book(pair.symbol, pair.strategy)
        book.signal, book.scheduled, book.partial = pair.signal, pair.scheduled, pair.partial
        await read_statistics(book, pair.symbol, pair.strategy)
    return state


async def read_state(base_dir: str) -> BotState:
    """The bot's state as the stores hold it (inside a tick: with the tick's writes)."""
    try:
        tick = await PersistBase[int]("bot", base_dir).read_value("tick")
    except KeyError:
        tick = 0
    state = BotState(tick=tick)
    state.positions = await PersistRiskAdapter.read_position_data(RISK_NAME)
    for symbol, strategy in PAIRS:
        book = state.book(symbol, strategy)
        book.signal = await PersistSignalAdapter.read_signal_data(symbol, strategy)
        book.scheduled = await PersistScheduleAdapter.read_schedule_data(symbol, strategy)
        book.partial = await PersistPartialAdapter.read_partial_data(symbol, strategy)
        await read_statistics(book, symbol, strategy)
    return state


async def write_state(new: BotState, base_dir: str) -> None:
    """Every write of one tick: called inside a tick, so they commit together.

    The statistics are not written here: persistkit derives them from these
    writes as the tick commits.
    """
    for symbol, strategy in PAIRS:
        book = new.book(symbol, strategy)
        await PersistSignalAdapter.write_signal_data(book.signal, symbol, strategy)
        await PersistScheduleAdapter.write_schedule_data(book.scheduled, symbol, strategy)
        await PersistPartialAdapter.write_partial_data(book.partial or None, symbol, strategy)
    await PersistRiskAdapter.write_position_data(new.positions or None, RISK_NAME)
    await PersistBase[int]("bot", base_dir).write_value("tick", new.tick)


def strategy_for(base_dir: str) -> Any:
    """The tick as :func:`persistkit.replay.replay` calls it: ``await tick(inputs, params)``.

    The live bot runs the same function, so a replay goes through the live code
    path. Replay it under ``configure(clock=market_clock)``, as the bot runs, for
    the statistics events to carry the same (market) time.
    """

    async def strategy_tick(inputs: dict[str, Any], params: dict[str, float]) -> BotState:
        # Set in the tick's own context: the commit that follows records its
        # statistics events at this time.
        _market_ms.set(START_MS + inputs["tick"] * TICK_MS)
        state = await read_state(base_dir)
        new = step(state, inputs["tick"], inputs["prices"], params)
        await write_state(new, base_dir)
        return new

    return strategy_tick


class Bot:
    def __init__(self, base_dir: str, params: dict[str, float] | None = None) -> None:
        self.session = LiveSession(PAIRS, RISK_NAME, base_dir=base_dir)
        # A store of the bot's own, committed in the same tick as the four domains.
        self.progress: PersistBase[int] = PersistBase("bot", base_dir)
        self.state = BotState()
        self.base_dir = base_dir
        self.reports_dir = os.path.dirname(os.path.abspath(base_dir))
        self.params = dict(params or {})
        self.strategy = strategy_for(self.session.base_dir)

    async def start(self) -> RestoredState:
        # Statistics events take the market's time, as the rows' own timestamps do.
        persistkit.configure(mode="live", base_dir=self.base_dir, clock=market_clock)
        restored = await self.session.start()
        try:
            tick = await self.progress.read_value("tick")
        except KeyError:
            tick = 0
        self.state = await from_restored(restored, tick)
        return restored

    async def tick(self, _: int) -> None:
        """Called inside ``session.tick()``: the inputs and every write commit together."""
        inputs = market_inputs(self.state.tick + 1)
        self.session.record_inputs(inputs)  # what a replay feeds the strategy again
        self.pending = await self.strategy(inputs, self.params)

    def committed(self) -> None:
        self.state = self.pending

    async def dump_reports(self) -> list[str]:
        """Each pair's schedule and partial report, beside the state (see the module doc)."""
        reports = self.reports_dir
        written = []
        for symbol, strategy in PAIRS:
            written.append(await Schedule.dump(symbol, strategy, os.path.join(reports, "schedule")))
            written.append(await Partial.dump(symbol, strategy, os.path.join(reports, "partial")))
        return written


async def describe_statistics(symbol: str, strategy: str) -> str:
    scheduled = await Schedule.get_data(symbol, strategy)
    milestones = await Partial.get_data(symbol, strategy)
    rate = scheduled.activation_rate
    return (
        f"{symbol}/{strategy}: {scheduled.total_scheduled} scheduled, "
        f"{scheduled.total_opened} opened, {scheduled.total_cancelled} cancelled "
        f"(activation {'N/A' if rate is None else f'{rate:.1f}%'}), "
        f"{milestones.total_profit} profit and {milestones.total_loss} loss milestones"
    )


def describe(state: BotState) -> str:
    parts = [f"tick {state.tick:>4}"]
    for (symbol, strategy), book in sorted(state.pairs.items()):
        if book.signal is not None:
            levels = book.partial.get(book.signal.id, PartialData())
            what = (
                f"open {book.signal.position} @ {book.signal.price_open} "
                f"(+{levels.profit_levels[-1:] or [0]}% -{levels.loss_levels[-1:] or [0]}%)"
            )
        elif book.scheduled is not None:
            what = f"limit {book.scheduled.position} @ {book.scheduled.price_open}"
        else:
            what = "flat"
        parts.append(f"{symbol}/{strategy}: {what}")
    parts.append(f"risk positions: {len(state.positions)}")
    return " | ".join(parts)


def verify(state: BotState, restored: RestoredState, last_ack: int) -> int:
    """Check what came back, without assuming: print it, compare it, say OK or not."""
    print(f"last tick acknowledged before the kill: {last_ack}")
    print(f"journal commits replayed at startup:    {restored.replayed_commits}")
    for report in restored.reports:
        if not report.clean:
            print(f"self-healing: {report.summary()}")
    print(f"restored: {describe(state)}")
    for symbol, strategy in PAIRS:
        pair = restored.pair(symbol, strategy)
        print(
            f"  {symbol}/{strategy}: signal {pair.signal.id if pair.signal else None}, "
            f"scheduled {pair.scheduled.id if pair.scheduled else None}, "
            f"partial {sorted(pair.partial)}"
        )
        book = state.book(symbol, strategy)
        print(
            f"    statistics: {len(book.schedule_events)} schedule events, "
            f"{len(book.partial_events)} milestones"
        )
    print(f"  risk {RISK_NAME}: {[key for key, _ in restored.risk_positions]}")
    failures = [f"inconsistent: {problem}" for problem in restored.inconsistencies()]
    if state.tick not in (last_ack, last_ack + 1):
        failures.append(f"restored tick {state.tick}, expected {last_ack} or {last_ack + 1}")
    else:
        found, expected = state.as_json(), simulate(state.tick).as_json()
        if without_statistics(found) != without_statistics(expected):
            failures.append(f"the state differs from the one tick {state.tick} committed")
        elif found != expected:
            failures.append(f"the statistics differ from the events of ticks 1-{state.tick}")
    if failures:
        print("state recovered: FAILED")
        for failure in failures:
            print(f"  {failure}")
        return 1
    print(
        f"state recovered: OK (tick {state.tick}: the four domains agree with each other "
        "and with the last committed tick; the statistics with its events)"
    )
    return 0


def relative(paths: list[str]) -> list[str]:
    return [os.path.relpath(path) for path in paths]


STATISTICS = ("schedule_events", "partial_events")
"""The fields of a pair in :meth:`BotState.as_json` that come from the statistics."""


def without_statistics(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` (:meth:`BotState.as_json`) without :data:`STATISTICS`: the four domains."""
    pairs = {
        label: {key: value for key, value in pair.items() if key not in STATISTICS}
        for label, pair in state["pairs"].items()
    }
    return {**state, "pairs": pairs}


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-dir", default="./dump/data")
    parser.add_argument("--ticks", type=int, default=None, help="stop after this many ticks")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between ticks")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--take-profit-pct",
        type=float,
        default=DEFAULT_PARAMS["take_profit_pct"],
        help="take profit of new entries, in percent",
    )
    parser.add_argument(
        "--verify",
        type=int,
        metavar="LAST_ACK",
        help="restore, check the state against tick LAST_ACK (or the one after), exit",
    )
    args = parser.parse_args(argv)

    def say(text: str, **fields: Any) -> None:
        line = json.dumps(fields) if args.json else text
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    bot = Bot(args.base_dir, {"take_profit_pct": args.take_profit_pct})
    restored = await bot.start()
    problems = restored.inconsistencies()
    if args.verify is not None:
        try:
            return verify(bot.state, restored, args.verify)
        finally:
            await bot.session.aclose()
    say(
        f"restored at tick {bot.state.tick}: {describe(bot.state)}; "
        f"{restored.replayed_commits} journal commits replayed; "
        f"consistency: {problems or 'OK'}",
        restored=bot.state.as_json(),
        problems=problems,
        replayed=restored.replayed_commits,
    )

    def acknowledge(_: int) -> None:
        bot.committed()
        say(describe(bot.state), ack=bot.state.tick)

    try:
        await bot.session.run(
            bot.tick, interval=args.interval, ticks=args.ticks, after_commit=acknowledge
        )
    finally:
        await bot.session.aclose()
    reports = await bot.dump_reports()
    statistics = [await describe_statistics(symbol, strategy) for symbol, strategy in PAIRS]
    say(
        f"stopped cleanly after tick {bot.state.tick}\n"
        + "".join(f"statistics {line}\n" for line in statistics)
        + "\n".join(f"report written: {path}" for path in relative(reports)),
        stopped=bot.state.tick,
        statistics=statistics,
        reports=reports,
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

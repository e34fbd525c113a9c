"""A synchronous bot on the blocking API: no async, no event loop in sight.

python examples/sync_bot.py [--base-dir DIR] [--ticks N] [--interval SECONDS]

Each tick opens a signal on even ticks and closes it on odd ones, keeping the
risk positions in step, all in one atomic commit. Stop it with Ctrl-C or
SIGTERM: the tick in progress commits, the session closes, the exit code is 0.
Run it again and it resumes at the tick it stopped after.
"""

from __future__ import annotations

import argparse

import persistkit
from persistkit import sync
from persistkit.models import RiskActivePosition, SignalRow

SYMBOL, STRATEGY, RISK = "BTCUSDT", "trend", "main"


def trade(tick: int, counter: sync.PersistBase) -> None:
    """One tick, called by session.run in a thread of its own, inside the tick's commit."""
    price = 64_000.0 + 10 * tick
    if tick % 2 == 0:
        row = SignalRow(
            id=f"sig-{tick}",
            symbol=SYMBOL,
            strategy_name=STRATEGY,
            position="long",
            price_open=price,
            price_take_profit=price * 1.02,
            price_stop_loss=price * 0.99,
            scheduled_at=1_763_700_000_000 + tick,
            pending_at=1_763_700_000_000 + tick,
        )
        position = RiskActivePosition(
            symbol=SYMBOL,
            strategy_name=STRATEGY,
            signal_id=row.id,
            position="long",
            price_open=price,
            quantity=0.01,
            added_at=1_763_700_000_000 + tick,
        )
        sync.PersistSignalAdapter.write_signal_data(row, SYMBOL, STRATEGY)
        sync.PersistRiskAdapter.write_position_data([(row.id, position)], RISK)
    else:
        sync.PersistSignalAdapter.write_signal_data(None, SYMBOL, STRATEGY)
        sync.PersistRiskAdapter.write_position_data([], RISK)
    counter.update_value("ticks", lambda done: (done or 0) + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-dir", default="./dump/data")
    parser.add_argument("--ticks", type=int, default=None, help="stop after N ticks")
    parser.add_argument("--interval", type=float, default=0.0)
    args = parser.parse_args()

    session = sync.LiveSession([(SYMBOL, STRATEGY)], risk_name=RISK, base_dir=args.base_dir)
    state = session.start()  # lock, recover, restore, self-heal
    counter = sync.PersistBase("bot", args.base_dir)  # the ticks done, in each tick's commit
    try:
        done = counter.read_value("ticks")
    except persistkit.EntityNotFoundError:
        done = 0
    signal_row = state.pair(SYMBOL, STRATEGY).signal
    opened = None if signal_row is None else signal_row.id
    print(f"restored at tick {done}: {len(state.risk_positions)} positions, signal {opened}")
    # The signal and the positions were committed together: they always agree.
    assert (signal_row is None) == (state.risk_positions == [])

    # Calls of a tick outside run() go through `with session.tick():` the same way.
    ran = session.run(
        lambda tick: trade(done + tick, counter),
        interval=args.interval,
        ticks=args.ticks,
        after_commit=lambda tick: print(f"tick {done + tick + 1} committed", flush=True),
    )
    session.close()  # already closed when a signal stopped it; closing again is harmless
    print(f"stopped cleanly after tick {done + ran}")


if __name__ == "__main__":
    main()

"""Order intents: no order lost and none sent twice across a crash (issue 16).

What a bot sees: an intent written before its order leaves is durable, under
``run()`` too; after a ``kill -9`` the restart returns the intents in doubt,
refuses new orders for their pair until they are reconciled, and records the
exchange's answers in one commit; client order ids are short, unique and
sortable; a replay makes the same ids; the command line shows open intents.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import persistkit
from persistkit import (
    FileBackend,
    IntentConflictError,
    InvalidNameError,
    LiveSession,
    OrderIntent,
    PersistIntentAdapter,
    PersistScheduleAdapter,
    Schedule,
    SchemaValidationError,
    TickCancelledError,
    UnreconciledIntentsError,
    new_client_order_id,
)
from persistkit._clock import now_ms
from persistkit._live.session import NOT_FOUND_REASON
from persistkit.models import ScheduledSignalRow
from persistkit.replay import replay
from persistkit.testing import sample_intent
from test_cli import run_cli

PAIR = ("BTCUSDT", "trend")
OTHER_PAIR = ("ETHUSDT", "trend")
BOT = Path(__file__).resolve().parent / "helpers" / "stepped_order_bot.py"
CLIENT_ORDER_ID = re.compile(r"[A-Za-z0-9_-]{1,36}")


def intent(status: str = "pending", pair: tuple[str, str] = PAIR, **changes: Any) -> OrderIntent:
    return sample_intent(status, *pair, **changes)


def session_on(root: Path, *pairs: tuple[str, str]) -> LiveSession:
    return LiveSession(list(pairs) or [PAIR], "main", base_dir=root)


@pytest.fixture
async def session(data_root: Path) -> AsyncIterator[LiveSession]:
    live = session_on(data_root, PAIR, OTHER_PAIR)
    await live.start()
    yield live
    await live.aclose()


class Exchange:
    """An exchange's order book by client order id, as the tests play it."""

    def __init__(self) -> None:
        self.orders: dict[str, str] = {}

    def place(self, client_order_id: str) -> str:
        # Deduplicated by client order id, as the exchanges do.
        return self.orders.setdefault(client_order_id, f"ex-{len(self.orders) + 1}")

    async def lookup(self, asked: OrderIntent) -> OrderIntent | None:
        found = self.orders.get(asked.client_order_id)
        if found is None:
            return None
        return asked.model_copy(update={"status": "acked", "exchange_order_id": found})


# -- the intent domain ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["live", "backtest"])
async def test_intents_round_trip_by_client_order_id_in_their_pair_file(
    mode: str, data_root: Path
) -> None:
    persistkit.configure(mode=mode, base_dir=data_root)  # type: ignore[arg-type]
    first = intent(price=64_000.5, order_type="limit")  # a field of the bot's own round-trips
    second = intent("acked", side="sell", exchange_order_id="ex-9")
    stored = await PersistIntentAdapter.write_intent(first)
    await PersistIntentAdapter.write_intent(second)
    await PersistIntentAdapter.write_intent(intent(pair=OTHER_PAIR))

    found = await PersistIntentAdapter.read_intents(*PAIR)
    assert [i.client_order_id for i in found] == [first.client_order_id, second.client_order_id]
    assert found[0] == stored and stored.updated_at is not None
    assert found[0].model_extra == {"order_type": "limit"}
    assert await PersistIntentAdapter.read_intent(*PAIR, second.client_order_id) == found[1]
    assert await PersistIntentAdapter.read_intent(*PAIR, "no-such-order") is None
    assert [
        i.client_order_id for i in await PersistIntentAdapter.read_unresolved_intents(*PAIR)
    ] == [first.client_order_id]
    if mode == "live":
        on_disk = json.loads((data_root / "intent" / "BTCUSDT_trend" / "intents.json").read_bytes())
        assert on_disk[first.client_order_id]["clientOrderId"] == first.client_order_id
        assert on_disk[first.client_order_id]["status"] == "pending"
    else:
        assert not data_root.exists()  # backtest mode touches no disk


async def test_an_invalid_intent_is_refused_before_any_write(data_root: Path) -> None:
    for bad in (
        {"side": "long"},  # a position's side, not an order's
        {"status": "open"},
        {"quantity": 0.0},
        {"price": float("nan")},
        {"client_order_id": "has space"},
        {"client_order_id": "x" * 65},
    ):
        with pytest.raises(SchemaValidationError):
            await PersistIntentAdapter.write_intent(intent().model_dump() | bad)  # type: ignore[arg-type]
    assert await PersistIntentAdapter.read_intents(*PAIR) == []
    assert not (data_root / "intent").exists()


async def test_a_client_order_id_names_one_order_and_a_final_status_never_changes() -> None:
    placed = intent()
    await PersistIntentAdapter.write_intent(placed)
    for other_order in ({"quantity": 0.02}, {"side": "sell"}, {"price": 1.0}):
        with pytest.raises(IntentConflictError) as refused:
            await PersistIntentAdapter.write_intent(placed.model_copy(update=other_order))
        assert refused.value.client_order_id == placed.client_order_id
    filled = placed.model_copy(update={"status": "filled", "filled_quantity": 0.01})
    await PersistIntentAdapter.write_intent(filled)
    with pytest.raises(IntentConflictError, match="final"):  # a late "acked" report
        await PersistIntentAdapter.write_intent(placed.model_copy(update={"status": "acked"}))
    await PersistIntentAdapter.write_intent(filled)  # the same answer again is harmless
    [kept] = await PersistIntentAdapter.read_intents(*PAIR)
    assert (kept.status, kept.filled_quantity) == ("filled", 0.01)


async def test_final_intents_beyond_the_configured_count_or_age_are_dropped_in_a_commit(
    data_root: Path,
) -> None:
    persistkit.configure(base_dir=data_root, final_intent_limit=2, final_intent_ttl=None)
    waiting = await PersistIntentAdapter.write_intent(intent("unknown"))
    finals = []
    for status in ("filled", "cancelled", "rejected", "filled"):
        finals.append(await PersistIntentAdapter.write_intent(intent(status)))
        time.sleep(0.002)  # each a later millisecond: "newest" is then unambiguous
    kept = {i.client_order_id for i in await PersistIntentAdapter.read_intents(*PAIR)}
    # The two newest final ones, and the one still in doubt, whatever its age.
    assert kept == {waiting.client_order_id, finals[2].client_order_id, finals[3].client_order_id}

    persistkit.configure(base_dir=data_root, final_intent_ttl=0.001)
    time.sleep(0.005)
    latest = await PersistIntentAdapter.write_intent(intent("acked"))
    kept = {i.client_order_id for i in await PersistIntentAdapter.read_intents(*PAIR)}
    assert kept == {waiting.client_order_id, latest.client_order_id}

    with pytest.raises(ValueError, match="final_intent_limit"):
        persistkit.configure(base_dir=data_root, final_intent_limit=-1)
    with pytest.raises(ValueError, match="final_intent_ttl"):
        persistkit.configure(base_dir=data_root, final_intent_ttl=float("inf"))


async def test_a_corrupt_intents_file_is_quarantined_and_reported_at_start(
    data_root: Path,
) -> None:
    folder = data_root / "intent" / "BTCUSDT_trend"
    folder.mkdir(parents=True)
    (folder / "intents.json").write_bytes(b'{"x": {"clientOrderId": "x", "side": "long"')
    live = session_on(data_root)
    state = await live.start()
    try:
        assert not state.healed
        [report] = [r for r in state.reports if r.corrupt]
        assert report.corrupt[0].key == "intent/BTCUSDT_trend/intents"
        assert state.open_intents == []
        [entry] = [entry async for entry in live.backend.list_quarantine("")]
        assert entry.key == "intent/BTCUSDT_trend/intents"
        assert await live.backend.read_quarantined(entry.id) is not None  # never deleted
    finally:
        await live.aclose()


# -- client order ids ----------------------------------------------------------------------


def test_client_order_ids_are_short_exchange_safe_and_sort_by_time() -> None:
    made = []
    for _ in range(5):
        made.append(new_client_order_id("trend_01"))
        time.sleep(0.002)  # a later millisecond each
    assert all(CLIENT_ORDER_ID.fullmatch(cid) and cid.startswith("trend_01-") for cid in made)
    assert max(len(cid) for cid in made) <= 36
    assert sorted(made) == made
    assert CLIENT_ORDER_ID.fullmatch(new_client_order_id())  # no prefix: the bare ULID
    for bad in ("toolong_9", "a b", "a.b", "é", "a/b", 7):
        with pytest.raises(InvalidNameError, match="prefix"):
            new_client_order_id(bad)  # type: ignore[arg-type]


def test_client_order_ids_are_unique_across_processes() -> None:
    program = (
        "from persistkit import new_client_order_id\n"
        "print('\\n'.join(new_client_order_id('p') for _ in range(2000)))"
    )
    runs = [
        subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    ids = [line for run in runs for line in run.communicate(timeout=60)[0].split()]
    assert len(ids) == 6000 and len(set(ids)) == 6000


async def test_ids_made_in_ticks_are_unique_across_ticks_and_restarts(data_root: Path) -> None:
    seen: set[str] = set()
    for _ in range(2):
        live = session_on(data_root)
        await live.start()
        for _ in range(20):
            async with live.tick():
                seen.update(new_client_order_id("x") for _ in range(5))
        await live.aclose()
    assert len(seen) == 200


# -- durable before the order leaves --------------------------------------------------------


def committed_intents(root: Path) -> dict[str, str]:
    """Client order id -> status, as another process would read the root now."""

    async def read() -> dict[str, str]:
        backend = FileBackend(root, read_only=True)
        try:
            stored = (await backend.snapshot()).values.get("intent/BTCUSDT_trend/intents")
        finally:
            await backend.aclose()
        return {k: v["status"] for k, v in json.loads(stored or b"{}").items()}

    return asyncio.run_coroutine_threadsafe(read(), _reader_loop()).result(timeout=30)


_loop: asyncio.AbstractEventLoop | None = None


def _reader_loop() -> asyncio.AbstractEventLoop:
    """A loop in a thread of its own: the reader must not run on the bot's loop."""
    global _loop
    if _loop is None:
        import threading

        _loop = asyncio.new_event_loop()
        threading.Thread(target=_loop.run_forever, daemon=True).start()
    return _loop


async def test_under_run_commit_now_makes_the_intent_durable_before_the_order_leaves(
    data_root: Path,
) -> None:
    live = session_on(data_root)
    await live.start()
    exchange = Exchange()
    seen_at_send: list[dict[str, str]] = []

    async def on_tick(n: int) -> None:
        placed = intent(created_at=now_ms())
        await PersistIntentAdapter.write_intent(placed)
        if n == 0:
            await live.commit_now()
        else:
            async with live.tick():  # inside run() a nested tick only joins this one
                pass
        seen_at_send.append(committed_intents(data_root))  # what a restart would find now
        order_id = exchange.place(placed.client_order_id)
        await PersistIntentAdapter.write_intent(
            placed.model_copy(update={"status": "acked", "exchange_order_id": order_id})
        )

    try:
        assert await live.run(on_tick, ticks=2, interval=0) == 2
        final = committed_intents(data_root)
    finally:
        await live.aclose()
    with_commit_now, without = seen_at_send
    assert list(with_commit_now.values()) == ["pending"]
    assert len(without) == 1, "without commit_now the second intent was not durable at send"
    assert sorted(final.values()) == ["acked", "acked"]


async def test_commit_now_outside_a_tick_or_in_a_nested_transaction_says_so(
    session: LiveSession,
) -> None:
    with pytest.raises(RuntimeError, match=r"inside `async with session\.tick"):
        await session.commit_now()
    async with session.tick(), persistkit.transaction():
        await PersistIntentAdapter.write_intent(intent())
        with pytest.raises(RuntimeError, match="nested"):
            await session.commit_now()


async def test_a_tick_split_by_commit_now_records_its_statistics_event_once(
    session: LiveSession,
) -> None:
    row = ScheduledSignalRow(
        id="sig-1", symbol=PAIR[0], strategy_name=PAIR[1], position="long",
        price_open=100.0, price_take_profit=110.0, price_stop_loss=95.0,
        scheduled_at=1_763_700_000_000, pending_at=1_763_700_000_000,
    )  # fmt: skip
    async with session.tick():
        await PersistScheduleAdapter.write_schedule_data(row, *PAIR)
        await PersistIntentAdapter.write_intent(intent())
        await session.commit_now()
        await PersistIntentAdapter.write_intent(intent())
    assert (await Schedule.get_data(*PAIR)).total_scheduled == 1


async def test_a_stop_that_cancels_the_tick_after_commit_now_keeps_what_it_committed(
    data_root: Path,
) -> None:
    live = session_on(data_root)
    await live.start()
    committed, cancelled = intent(), intent()

    async def on_tick(n: int) -> None:
        await PersistIntentAdapter.write_intent(committed)
        await live.commit_now()
        os.kill(os.getpid(), signal.SIGTERM)  # handled by run(): stop after this tick
        await PersistIntentAdapter.write_intent(cancelled)
        await asyncio.Event().wait()  # waits for an exchange that never answers

    with pytest.raises(TickCancelledError, match=r"parts up to commit_now\(\) #1 are committed"):
        await live.run(on_tick, stop_grace=0.1)
    live = session_on(data_root)
    state = await live.start()
    await live.aclose()
    assert [i.client_order_id for i in state.open_intents] == [committed.client_order_id]


# -- a real kill -9 ---------------------------------------------------------------------------


class IntentBot:
    """``tests/helpers/stepped_order_bot.py`` as a process; the test plays its exchange."""

    def __init__(self, root: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(BOT), str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the bot stopped: {self.stderr()}"
        message: dict[str, Any] = json.loads(line)
        return message

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def kill_9(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        assert self.process.wait(timeout=30) == -signal.SIGKILL

    def stderr(self) -> str:
        self.process.kill()
        return self.process.communicate(timeout=30)[1]


@pytest.fixture
def start_bot(data_root: Path) -> Iterator[Callable[[], IntentBot]]:
    started: list[IntentBot] = []

    def start() -> IntentBot:
        started.append(IntentBot(data_root))
        return started[-1]

    yield start
    for bot in started:
        if bot.process.poll() is None:
            bot.process.kill()
        bot.process.communicate(timeout=30)


async def test_kill_9_between_intent_commit_and_send_then_reconcile_sends_nothing_twice(
    data_root: Path, start_bot: Callable[[], IntentBot]
) -> None:
    exchange = Exchange()
    bot = start_bot()
    assert bot.read() == {"restored": []}
    # Tick 0 runs to its end: the order is sent and its answer recorded.
    first = bot.read()["committed"]
    bot.send(f"send {exchange.place(first['clientOrderId'])}")
    assert bot.read() == {"sent": first["clientOrderId"]}
    bot.send("ack")
    assert bot.read()["acked"]["exchangeOrderId"] == "ex-1"
    # Tick 1: killed once its intent is durable, before the order leaves.
    unsent = bot.read()["committed"]
    bot.kill_9()

    live = session_on(data_root)
    state = await live.start()
    try:
        assert [i.client_order_id for i in state.open_intents] == [unsent["clientOrderId"]]
        assert state.open_intents[0].status == "pending"
        with pytest.raises(UnreconciledIntentsError) as refused:
            async with live.tick():
                await PersistIntentAdapter.write_intent(intent())
        assert refused.value.client_order_ids == (unsent["clientOrderId"],)
        [answer] = await live.reconcile(exchange.lookup)
        assert (answer.status, answer.reason) == ("cancelled", NOT_FOUND_REASON)
        resent = intent()  # the bot decides again, under a new id
        async with live.tick():
            await PersistIntentAdapter.write_intent(resent)
        exchange.place(resent.client_order_id)
        statuses = {i.client_order_id: i.status for i in await read_in(live)}
    finally:
        await live.aclose()
    assert statuses == {
        first["clientOrderId"]: "acked",
        unsent["clientOrderId"]: "cancelled",
        resent.client_order_id: "pending",
    }
    assert len(exchange.orders) == 2  # two decisions, two orders: none lost, none twice


async def test_kill_9_after_the_send_reconciles_the_order_the_exchange_has(
    data_root: Path, start_bot: Callable[[], IntentBot]
) -> None:
    exchange = Exchange()
    bot = start_bot()
    bot.read()
    placed = bot.read()["committed"]
    bot.send(f"send {exchange.place(placed['clientOrderId'])}")
    assert bot.read() == {"sent": placed["clientOrderId"]}
    bot.kill_9()  # the exchange's answer is lost with the process

    restarted = start_bot()  # the bot itself, restarted
    restored = restarted.read()["restored"]
    assert [(i["clientOrderId"], i["status"]) for i in restored] == [
        (placed["clientOrderId"], "pending")
    ]
    # It did not reconcile: its first new order is refused, and it stops with the error.
    assert restarted.process.wait(timeout=60) != 0
    assert "UnreconciledIntentsError" in restarted.process.communicate(timeout=30)[1]

    live = session_on(data_root)
    await live.start()
    try:
        [answer] = await live.reconcile(exchange.lookup)
        assert (answer.status, answer.exchange_order_id) == ("acked", "ex-1")
        assert [i.status for i in await read_in(live)] == ["acked"]
    finally:
        await live.aclose()
    assert len(exchange.orders) == 1


async def read_in(live: LiveSession) -> list[OrderIntent]:
    async with live.tick():
        return await PersistIntentAdapter.read_intents(*PAIR)


# -- restart and reconcile ------------------------------------------------------------------


async def test_reconcile_records_every_answer_in_one_commit_or_none(data_root: Path) -> None:
    live = session_on(data_root, PAIR, OTHER_PAIR)
    await live.start()
    placed = [intent("pending"), intent("sent"), intent("unknown", pair=OTHER_PAIR)]
    resting = intent("partially_filled", filled_quantity=0.004)
    async with live.tick():
        for each in [*placed, resting]:
            await PersistIntentAdapter.write_intent(each)
    await live.aclose()

    live = session_on(data_root, PAIR, OTHER_PAIR)
    state = await live.start()
    try:
        assert {i.client_order_id for i in state.open_intents} == {
            i.client_order_id for i in placed
        }
        assert [i.client_order_id for i in state.pair(*OTHER_PAIR).open_intents] == [
            placed[2].client_order_id
        ]
        exchange = Exchange()
        exchange.place(placed[1].client_order_id)
        asked: list[str] = []

        async def unreachable_after_two(order: OrderIntent) -> OrderIntent | None:
            asked.append(order.client_order_id)
            if len(asked) == 3:
                raise ConnectionError("exchange unreachable")
            return await exchange.lookup(order)

        with pytest.raises(ConnectionError):
            await live.reconcile(unreachable_after_two)
        assert [i.status for i in await read_in(live)] == [
            "pending", "sent", "partially_filled"
        ], "a failed reconcile records nothing"  # fmt: skip

        answers = await live.reconcile(exchange.lookup)
        by_id = {a.client_order_id: a for a in answers}
        assert by_id[placed[0].client_order_id].status == "cancelled"
        assert by_id[placed[1].client_order_id].exchange_order_id == "ex-1"
        assert by_id[placed[2].client_order_id].reason == NOT_FOUND_REASON
        history = await live.backend.history_records()
        reconciled = [c for c in history.commits if "intent/BTCUSDT_trend/intents" in c.writes][-1]
        assert "intent/ETHUSDT_trend/intents" in reconciled.writes  # both pairs, one commit
        assert await live.reconcile(exchange.lookup) == []  # nothing in doubt any more
    finally:
        await live.aclose()
    live = session_on(data_root, PAIR, OTHER_PAIR)
    assert (await live.start()).open_intents == []
    await live.aclose()


async def test_until_reconciled_only_new_intents_of_that_pair_wait(data_root: Path) -> None:
    in_doubt = intent("sent")
    live = session_on(data_root, PAIR, OTHER_PAIR)
    await live.start()
    async with live.tick():
        await PersistIntentAdapter.write_intent(in_doubt)
    await live.aclose()

    live = session_on(data_root, PAIR, OTHER_PAIR)
    await live.start()
    try:
        with pytest.raises(UnreconciledIntentsError) as refused:
            async with live.tick():
                await PersistIntentAdapter.write_intent(intent())
        assert refused.value.pair == PAIR
        async with live.tick():  # another pair is not in doubt
            await PersistIntentAdapter.write_intent(intent(pair=OTHER_PAIR))
        async with live.tick(allow_unreconciled=True):  # told otherwise
            await PersistIntentAdapter.write_intent(intent())
        # The bot may settle the intent itself (it asked the exchange on its own):
        async with live.tick():
            await PersistIntentAdapter.write_intent(
                in_doubt.model_copy(update={"status": "filled", "filled_quantity": 0.01})
            )
            await PersistIntentAdapter.write_intent(intent())
        assert len(await read_in(live)) == 3
    finally:
        await live.aclose()


async def test_a_lookup_answer_that_is_no_answer_is_refused(data_root: Path) -> None:
    in_doubt = intent("pending")
    live = session_on(data_root)
    await live.start()
    async with live.tick():
        await PersistIntentAdapter.write_intent(in_doubt)
    await live.aclose()
    live = session_on(data_root)
    await live.start()
    try:

        async def still_unknown(order: OrderIntent) -> OrderIntent | None:
            return order.model_copy(update={"status": "unknown"})

        async def another_order(order: OrderIntent) -> OrderIntent | None:
            return intent("acked")

        async def another_quantity(order: OrderIntent) -> OrderIntent | None:
            return order.model_copy(update={"status": "acked", "quantity": 1.0})

        with pytest.raises(UnreconciledIntentsError):
            await live.reconcile(still_unknown)
        for wrong in (another_order, another_quantity):
            with pytest.raises(IntentConflictError):
                await live.reconcile(wrong)
        assert [i.status for i in await read_in(live)] == ["pending"]
    finally:
        await live.aclose()


# -- replay and the command line ------------------------------------------------------------


async def test_a_replay_makes_the_same_ids_and_folds_the_parts_of_a_tick(
    data_root: Path,
) -> None:
    async def place(inputs: Any, params: Any, commit_now: Any = None) -> None:
        placed = OrderIntent(
            client_order_id=new_client_order_id("rp"),
            symbol=PAIR[0], strategy_name=PAIR[1], side="buy", quantity=inputs["qty"],
            price=None, created_at=now_ms(), status="pending",
        )  # fmt: skip
        await PersistIntentAdapter.write_intent(placed)
        if commit_now is not None:
            await commit_now()  # live only: in a replay nothing leaves
        await PersistIntentAdapter.write_intent(
            placed.model_copy(update={"status": "acked", "exchange_order_id": "ex"})
        )

    live = session_on(data_root)
    await live.start()
    for qty in (0.01, 0.02, 0.03):
        async with live.tick(inputs={"qty": qty}):
            await place({"qty": qty}, {}, live.commit_now)
    live_ids = sorted(i.client_order_id for i in await read_in(live))
    await live.aclose()

    summary = await replay(source=data_root, strategy=place)
    assert summary.ticks_replayed == 3
    assert summary.first_divergence is None, summary.first_divergence
    assert all(cid.startswith("rp-") for cid in live_ids) and len(live_ids) == 3


async def test_inspect_and_status_show_the_open_intents(data_root: Path) -> None:
    live = session_on(data_root)
    await live.start()
    in_doubt, resting, done = intent("sent"), intent("acked", exchange_order_id="ex-7"), intent()
    async with live.tick():
        for each in (in_doubt, resting, done):
            await PersistIntentAdapter.write_intent(each)
    async with live.tick():
        await PersistIntentAdapter.write_intent(done.model_copy(update={"status": "filled"}))
    await live.aclose()

    shown = run_cli("inspect", data_root, "--json")
    assert shown.returncode == 0, shown.stderr
    listed = json.loads(shown.stdout)["open_intents"]
    assert [(v["intent"]["clientOrderId"], v["in_doubt"]) for v in listed] == [
        (in_doubt.client_order_id, True),
        (resting.client_order_id, False),
    ]
    table = run_cli("inspect", data_root).stdout
    assert "Open order intents (1 in doubt" in table and in_doubt.client_order_id in table

    status = run_cli("status", data_root, "--json")
    report = json.loads(status.stdout)
    assert [i["clientOrderId"] for i in report["open_intents"]] == [
        in_doubt.client_order_id,
        resting.client_order_id,
    ]
    assert status.returncode == 1  # no session runs, and an order is in doubt
    assert any("order intent in doubt" in line for line in report["attention"])
    words = run_cli("status", data_root).stdout
    assert "2 open order intents, 1 in doubt" in words
    assert f"{resting.client_order_id}  buy 0.01 @ market  acked (ex-7)" in words

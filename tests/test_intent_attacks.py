"""Attacks on order intents: what an exchange, a clock or an operator can do to the promise.

The promise (README, "Orders across a crash"): no lost and no duplicated order
across a crash, no intent left in doubt after a reconcile, and no new intent
for a pair in doubt until it is reconciled. Each test here is one way to break
it, found by trying; those whose fix is a design decision are marked
``xfail(strict=True)`` with the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.reliability.common import LONG
from tests.support.replyloss import ReplyLossProxy
from tests.support.servers import RedisServer

from persistkit import (
    LiveSession,
    OrderIntent,
    PersistIntentAdapter,
    configure,
    new_client_order_id,
)
from persistkit.errors import (
    IntentConflictError,
    PairNotInSessionError,
    UnreconciledIntentsError,
)

PAIR = ("BTCUSDT", "trend")
OTHER_PAIR = ("ETHUSDT", "trend")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def pending_intent(symbol: str = PAIR[0], quantity: float = 0.5) -> OrderIntent:
    return OrderIntent(
        client_order_id=new_client_order_id("atk"),
        symbol=symbol,
        strategy_name=PAIR[1],
        side="buy",
        quantity=quantity,
        price=None,
        created_at=1_700_000_000_000,
        status="pending",
    )


async def crash_with_an_order_in_doubt(root: Path, pairs: list[tuple[str, str]]) -> OrderIntent:
    """A session that wrote an intent and died before it heard from the exchange."""
    session = LiveSession(pairs, "risk", base_dir=root)
    await session.start()
    intent = pending_intent()
    async with session.tick():
        await PersistIntentAdapter.write_intent(intent)
    await session.aclose()  # what a kill -9 leaves, as far as the intents go
    return intent


async def test_a_reconcile_answer_naming_another_pair_is_refused_and_the_intent_stays_in_doubt(
    tmp_path: Path,
) -> None:
    # An exchange adapter that maps symbols wrongly (ETH for BTC) answers with
    # the right client order id: persistkit must not file that answer under
    # the other pair and then call the pair reconciled.
    intent = await crash_with_an_order_in_doubt(tmp_path, [PAIR, OTHER_PAIR])
    session = LiveSession([PAIR, OTHER_PAIR], "risk", base_dir=tmp_path)
    await session.start()

    async def lookup(asked: OrderIntent) -> OrderIntent:
        return asked.model_copy(update={"symbol": OTHER_PAIR[0], "status": "filled"})

    try:
        with pytest.raises(IntentConflictError):
            await session.reconcile(lookup)
        assert await PersistIntentAdapter.read_intents(*OTHER_PAIR) == []
        assert [
            i.client_order_id for i in await PersistIntentAdapter.read_unresolved_intents(*PAIR)
        ] == [intent.client_order_id]
        with pytest.raises(UnreconciledIntentsError):
            async with session.tick():
                await PersistIntentAdapter.write_intent(pending_intent())
    finally:
        await session.aclose()


# A bot process: finishes `count` orders (pending, then filled), then prints
# each id and whether it can still be read back. Run under faketime for a
# clock stepped back.
FINISH_ORDERS = textwrap.dedent(
    """
    import asyncio, json, sys
    from persistkit import LiveSession, OrderIntent, PersistIntentAdapter, configure
    from persistkit import new_client_order_id

    async def main(root, count):
        configure(final_intent_limit=2)
        session = LiveSession([("BTCUSDT", "trend")], "risk", base_dir=root)
        await session.start()
        ids = []
        for _ in range(count):
            async with session.tick():
                intent = OrderIntent(
                    client_order_id=new_client_order_id("atk"), symbol="BTCUSDT",
                    strategy_name="trend", side="buy", quantity=1.0, price=None,
                    created_at=1_700_000_000_000, status="pending")
                await PersistIntentAdapter.write_intent(intent)
            async with session.tick():
                await PersistIntentAdapter.write_intent(
                    intent.model_copy(update={"status": "filled", "filled_quantity": 1.0}))
            ids.append(intent.client_order_id)
        stored = await PersistIntentAdapter.read_intents("BTCUSDT", "trend")
        kept = {i.client_order_id for i in stored}
        await session.aclose()
        print(json.dumps({"ids": ids, "kept": sorted(kept)}))

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def finish_orders(root: Path, count: int, clock_offset: str | None = None) -> dict[str, list[str]]:
    command = [sys.executable, "-c", FINISH_ORDERS, str(root), str(count)]
    if clock_offset is not None:
        faketime = shutil.which("faketime")
        assert faketime is not None, "faketime (libfaketime) is needed to step the clock back"
        command = [faketime, "-f", clock_offset, *command]
    done = subprocess.run(
        command,
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, list[str]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_clock_stepped_back_across_a_restart_does_not_drop_the_newest_fills(
    tmp_path: Path,
) -> None:
    # NTP steps the clock back an hour while the bot restarts. The order it
    # finishes next is its newest: kept, as the bound drops the oldest final
    # ones; and so is the one after it, which drops the one before.
    before = finish_orders(tmp_path, 2)
    after = finish_orders(tmp_path, 2, clock_offset="-1h")
    assert after["kept"] == sorted(after["ids"]), (before, after)


async def test_a_fill_reported_after_a_reconcile_found_no_order_can_still_be_recorded(
    tmp_path: Path,
) -> None:
    await crash_with_an_order_in_doubt(tmp_path, [PAIR])
    session = LiveSession([PAIR], "risk", base_dir=tmp_path)
    await session.start()

    async def not_visible_yet(asked: OrderIntent) -> None:
        return None

    try:
        [cancelled] = await session.reconcile(not_visible_yet)
        filled = cancelled.model_copy(
            update={"status": "filled", "exchange_order_id": "X1", "filled_quantity": 0.5}
        )
        async with session.tick():
            await PersistIntentAdapter.write_intent(filled)
        [stored] = await PersistIntentAdapter.read_intents(*PAIR)
        assert (stored.status, stored.filled_quantity) == ("filled", 0.5)
        with pytest.raises(IntentConflictError, match="final"):  # once: filled is final
            async with session.tick():
                await PersistIntentAdapter.write_intent(cancelled)
    finally:
        await session.aclose()


async def test_a_pair_whose_intents_were_quarantined_at_start_refuses_new_intents(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await crash_with_an_order_in_doubt(tmp_path, [PAIR])
    (intents_file,) = (tmp_path / "intent").glob("*/intents.json")
    intents_file.write_text("{torn")
    session = LiveSession([PAIR], "risk", base_dir=tmp_path)
    state = await session.start()
    try:
        assert not state.healed
        assert list(state.lost_intents) == [PAIR]
        assert [
            record.levelname for record in caplog.records if "quarantined (" in record.message
        ] == ["ERROR"]
        with pytest.raises(UnreconciledIntentsError, match="quarantined"):
            async with session.tick():
                await PersistIntentAdapter.write_intent(pending_intent())

        async def nothing_to_ask(asked: OrderIntent) -> None:
            raise AssertionError(f"asked about {asked}: the lost intents cannot be read")

        assert await session.reconcile(nothing_to_ask) == []
        async with session.tick():  # the bot took the loss on: new orders again
            await PersistIntentAdapter.write_intent(pending_intent())
    finally:
        await session.aclose()


async def test_a_reconcile_during_an_order_in_flight_does_not_cancel_it(tmp_path: Path) -> None:
    session = LiveSession([PAIR], "risk", base_dir=tmp_path)
    await session.start()
    exchange: dict[str, str] = {}
    sending = asyncio.Event()
    reconciled = asyncio.Event()

    async def lookup(asked: OrderIntent) -> OrderIntent | None:
        oid = exchange.get(asked.client_order_id)
        return None if oid is None else asked.model_copy(update={"status": "acked"})

    async def place_order() -> None:
        async with session.tick():
            intent = pending_intent()
            await PersistIntentAdapter.write_intent(intent)
            await session.commit_now()  # durable before the order leaves
            sending.set()
            await reconciled.wait()  # the request is on the wire
            exchange[intent.client_order_id] = "X1"
            await PersistIntentAdapter.write_intent(
                intent.model_copy(update={"status": "acked", "exchange_order_id": "X1"})
            )

    async def reconcile_meanwhile() -> None:
        await sending.wait()
        try:
            await session.reconcile(lookup)
        finally:
            reconciled.set()

    try:
        results = await asyncio.gather(place_order(), reconcile_meanwhile(), return_exceptions=True)
        [stored] = await PersistIntentAdapter.read_intents(*PAIR)
        assert (stored.status, results) == ("acked", [None, None])
    finally:
        await session.aclose()


# A blocking bot (persistkit.sync) that commits its intent and is killed with
# kill -9 before it hears from the exchange.
SYNC_BOT_KILLED_AFTER_COMMIT_NOW = textwrap.dedent(
    """
    import os, signal, sys
    from persistkit import OrderIntent, new_client_order_id
    from persistkit import sync as persistkit

    session = persistkit.LiveSession([("BTCUSDT", "trend")], risk_name="risk", base_dir=sys.argv[1])
    session.start()
    with session.tick():
        intent = OrderIntent(
            client_order_id=new_client_order_id("atk"), symbol="BTCUSDT", strategy_name="trend",
            side="buy", quantity=1.0, price=None, created_at=1_700_000_000_000, status="pending")
        persistkit.PersistIntentAdapter.write_intent(intent)
        session.commit_now()
        print(intent.client_order_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # the order is on the wire
    """
)


def test_a_blocking_bot_restores_and_reconciles_its_orders_with_a_plain_lookup(
    tmp_path: Path,
) -> None:
    from persistkit import sync

    killed = subprocess.run(
        [sys.executable, "-c", SYNC_BOT_KILLED_AFTER_COMMIT_NOW, str(tmp_path)],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert killed.returncode == -9, killed.stderr
    client_order_id = killed.stdout.strip()
    session = sync.LiveSession([PAIR], risk_name="risk", base_dir=tmp_path)
    state = session.start()
    try:
        assert [i.client_order_id for i in state.open_intents] == [client_order_id]
        asked = []

        def lookup(intent: OrderIntent) -> OrderIntent:  # a blocking exchange client's query
            asked.append(intent.client_order_id)
            return intent.model_copy(update={"status": "filled", "exchange_order_id": "X1"})

        [answer] = session.reconcile(lookup)
        assert (asked, answer.status) == ([client_order_id], "filled")
        assert sync.PersistIntentAdapter.read_unresolved_intents(*PAIR) == []
    finally:
        session.close()


async def test_a_lost_reply_to_a_read_after_commit_now_does_not_fail_the_tick_on_redis(
    tmp_path: Path,
) -> None:
    # Between commit_now() and the tick's end, the order has left: the tick
    # records its ack. One reply lost on the way back from Redis (a read, the
    # safest request to repeat) must be retried, not fail the tick and leave
    # a sent order pending.
    armed: list[bool] = []
    reads_seen: list[bytes] = []

    def the_version_check_read(request: bytes) -> bool:
        # The update reads the intents twice: the store's read, then the
        # transaction's version check before it stages; the second loses its reply.
        if armed and b"GET" in request and b"intents" in request:
            reads_seen.append(request)
            return len(reads_seen) == 2
        return False

    with (
        RedisServer(directory=tmp_path / "redis") as server,
        ReplyLossProxy("127.0.0.1", server.port, loss=1.0, lose_if=the_version_check_read) as proxy,
    ):
        session = LiveSession(
            [PAIR], "risk", base_dir=tmp_path / "bot", backend=f"redis://127.0.0.1:{proxy.port}/0"
        )
        await session.start()
        try:
            async with session.tick():
                intent = pending_intent()
                await PersistIntentAdapter.write_intent(intent)
                await session.commit_now()
                armed.append(True)  # the order is sent; now the ack
                await PersistIntentAdapter.write_intent(
                    intent.model_copy(update={"status": "acked", "exchange_order_id": "X1"})
                )
            [stored] = await PersistIntentAdapter.read_intents(*PAIR)
        finally:
            await session.aclose()
    assert proxy.lost == 1, "the attack lost no reply"
    assert stored.status == "acked"


async def test_an_intent_for_a_pair_outside_the_session_cannot_be_left_in_doubt(
    tmp_path: Path,
) -> None:
    # A hedge leg on another symbol, or a pair a redeploy dropped: no restart of
    # this session restores or reconciles that pair, so an order of it left in
    # doubt by a crash would stay so. The tick refuses it before the order leaves.
    session = LiveSession([PAIR], "risk", base_dir=tmp_path)
    await session.start()
    try:
        with pytest.raises(PairNotInSessionError) as refused:
            async with session.tick():
                await PersistIntentAdapter.write_intent(pending_intent(symbol=OTHER_PAIR[0]))
        assert refused.value.pair == OTHER_PAIR
        assert await PersistIntentAdapter.read_intents(*OTHER_PAIR) == []
    finally:
        await session.aclose()


# A restarted bot whose reconcile of many intents is cut short by kill -9 at a
# random moment. The exchange's answers are fixed by the id: filled for the
# even ones, no such order for the odd ones.
RECONCILE_THEN_DIE = textwrap.dedent(
    """
    import asyncio, os, random, signal, sys
    from persistkit import LiveSession, configure

    async def main(root, seed):
        configure(final_intent_limit=int(sys.argv[3]))
        session = LiveSession([("BTCUSDT", "trend")], "risk", base_dir=root)
        await session.start()

        async def lookup(intent):
            await asyncio.sleep(0)
            if int(intent.client_order_id.rsplit("-", 1)[1]) % 2:
                return None
            return intent.model_copy(update={"status": "filled", "exchange_order_id": "X"})

        loop = asyncio.get_running_loop()  # the kill: at a random moment of the reconcile
        loop.call_later(random.Random(seed).uniform(0, 0.1), os.kill, os.getpid(), signal.SIGKILL)
        await session.reconcile(lookup)
        print("reconciled", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def exchange_answer(intent: OrderIntent) -> OrderIntent | None:
    """The exchange of the kill test: the even ids filled, the odd ones never received."""
    if int(intent.client_order_id.rsplit("-", 1)[1]) % 2:
        return None
    return intent.model_copy(update={"status": "filled", "exchange_order_id": "X"})


async def orders_in_doubt(root: Path, count: int) -> list[str]:
    session = LiveSession([PAIR], "risk", base_dir=root)
    await session.start()
    ids = [f"atk-{n}" for n in range(count)]
    async with session.tick():
        for client_order_id in ids:
            await PersistIntentAdapter.write_intent(
                pending_intent().model_copy(update={"client_order_id": client_order_id})
            )
    await session.aclose()
    return ids


async def restart_and_reconcile(
    root: Path, answer: Callable[[OrderIntent], OrderIntent | None] = exchange_answer
) -> tuple[int, list[OrderIntent], list[OrderIntent]]:
    """Intents restored in doubt, the reconcile's answers, the intents stored after it."""
    session = LiveSession([PAIR], "risk", base_dir=root)
    state = await session.start()

    async def lookup(intent: OrderIntent) -> OrderIntent | None:
        return answer(intent)

    try:
        answers = await session.reconcile(lookup)
        return len(state.open_intents), answers, await PersistIntentAdapter.read_intents(*PAIR)
    finally:
        await session.aclose()


def test_kill_9_during_a_reconcile_leaves_all_or_nothing_and_the_next_one_finishes(
    tmp_path: Path,
) -> None:
    in_doubt = 40
    final_limit = 10  # the reconcile's own commit drops the final intents beyond it
    configure(final_intent_limit=final_limit)
    for trial in range(30 if LONG else 3):
        root = tmp_path / f"trial-{trial}"
        ids = asyncio.run(orders_in_doubt(root, in_doubt))
        killed = subprocess.run(
            [sys.executable, "-c", RECONCILE_THEN_DIE, str(root), str(trial), str(final_limit)],
            env={**os.environ, "PYTHONPATH": SRC},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert killed.returncode == -9, killed.stderr
        restored, answers, stored = asyncio.run(restart_and_reconcile(root))
        # The reconcile is one commit: the kill left every intent in doubt, or none.
        assert restored in (0, in_doubt), (trial, restored, killed.stdout)
        assert len(answers) == restored
        assert [i for i in stored if i.unresolved] == []
        assert len(stored) == final_limit
        for intent in stored:
            assert intent.client_order_id in ids
            answer = exchange_answer(intent)
            assert intent.status == ("cancelled" if answer is None else "filled")


# Another process of the root records an order report for the same pair (a
# fill recorder, an operator's script), a plain write, once told to.
RECORD_A_REPORT_WHEN_TOLD = textwrap.dedent(
    """
    import asyncio, os, sys, time
    from persistkit import OrderIntent, PersistIntentAdapter, configure, new_client_order_id

    async def main(root, go, done):
        configure(mode="live", base_dir=root)
        give_up = time.monotonic() + 30
        while not os.path.exists(go) and time.monotonic() < give_up:
            await asyncio.sleep(0.005)
        await PersistIntentAdapter.write_intent(OrderIntent(
            client_order_id=new_client_order_id("rec"), symbol="BTCUSDT",
            strategy_name="trend", side="sell", quantity=1.0, price=None,
            created_at=1_700_000_000_000, status="rejected"))
        open(done, "w").close()

    asyncio.run(main(*sys.argv[1:]))
    """
)


async def test_run_survives_another_process_recording_a_report_for_the_same_pair(
    tmp_path: Path,
) -> None:
    go, done = tmp_path / "go", tmp_path / "done"
    recorder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RECORD_A_REPORT_WHEN_TOLD,
        str(tmp_path),
        str(go),
        str(done),
        env={**os.environ, "PYTHONPATH": SRC},
    )
    session = LiveSession([PAIR], "risk", base_dir=tmp_path)
    await session.start()
    sent: list[str] = []

    async def place_an_order(n: int) -> None:
        intent = pending_intent()
        await PersistIntentAdapter.write_intent(intent)
        await session.commit_now()  # durable before the order leaves
        sent.append(intent.client_order_id)
        await PersistIntentAdapter.write_intent(
            intent.model_copy(update={"status": "acked", "exchange_order_id": f"X{n}"})
        )
        if n == 1:  # the tick goes on (its stop-loss order, say); the recorder writes
            go.touch()
            for _ in range(3000):
                if done.exists():
                    break
                await asyncio.sleep(0.01)

    try:
        ticks = await session.run(place_an_order, interval=0, ticks=3, stop_signals=())
        stored = await PersistIntentAdapter.read_intents(*PAIR)
        acked = {i.client_order_id for i in stored if i.status == "acked"}
        reported = [i.client_order_id for i in stored if i.status == "rejected"]
    finally:
        go.touch()
        await recorder.wait()
        await session.aclose()
    assert done.exists(), "the recorder wrote nothing"
    assert ticks == 3
    assert acked == set(sent)
    # The tick's ack was applied to the intents the recorder committed: its report stays.
    assert len(reported) == 1 and reported[0].startswith("rec-")


# A bot under run() that says when its intent is committed, then sends the
# order (a slow round trip) and records the ack.
BOT_SIGNALLED_MID_ORDER = textwrap.dedent(
    """
    import asyncio, sys
    from persistkit import LiveSession, OrderIntent, PersistIntentAdapter, new_client_order_id

    async def main(root, round_trip):
        session = LiveSession([("BTCUSDT", "trend")], "risk", base_dir=root)
        await session.start()

        async def place_an_order(n):
            intent = OrderIntent(
                client_order_id=new_client_order_id("atk"), symbol="BTCUSDT",
                strategy_name="trend", side="buy", quantity=1.0, price=None,
                created_at=1_700_000_000_000, status="pending")
            await PersistIntentAdapter.write_intent(intent)
            await session.commit_now()
            print(intent.client_order_id, flush=True)  # the parent signals now
            await asyncio.sleep(float(round_trip))  # the order on the wire
            await PersistIntentAdapter.write_intent(
                intent.model_copy(update={"status": "acked", "exchange_order_id": "X"}))

        await session.run(place_an_order, interval=0.01, stop_grace=1.0)

    asyncio.run(main(*sys.argv[1:]))
    """
)


@pytest.mark.parametrize(
    ("round_trip", "exit_code", "status_after"),
    [("0.3", 0, "acked"), ("5", 1, "cancelled")],
    ids=["within-the-grace", "past-the-grace"],
)
def test_sigterm_between_commit_now_and_the_send(
    tmp_path: Path, round_trip: str, exit_code: int, status_after: str
) -> None:
    # Within the stop grace the tick finishes: the order's ack is recorded and
    # the bot exits 0. Past it the tick is cancelled (exit 1): its intent stays
    # pending, so the next start has it in doubt and its reconcile resolves it.
    bot = subprocess.Popen(
        [sys.executable, "-c", BOT_SIGNALLED_MID_ORDER, str(tmp_path), round_trip],
        env={**os.environ, "PYTHONPATH": SRC},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert bot.stdout is not None
    client_order_id = bot.stdout.readline().strip()
    bot.send_signal(signal.SIGTERM)
    _, stderr = bot.communicate(timeout=60)
    assert bot.returncode == exit_code, stderr
    # The order never reached the exchange: the bot stopped before its send.
    restored, answers, stored = asyncio.run(restart_and_reconcile(tmp_path, lambda _: None))
    assert [(i.client_order_id, i.status) for i in stored] == [(client_order_id, status_after)]
    assert restored == len(answers) == (status_after == "cancelled")


@pytest.mark.parametrize("command", ["status", "inspect"])
async def test_cli_shows_an_exchange_order_id_with_terminal_escapes_without_running_them(
    tmp_path: Path, command: str
) -> None:
    # The exchange order id is whatever the exchange (or a man in the middle)
    # answered. Printed raw, its escapes retitle the operator's terminal and
    # clear it; shown, they must be visible and inert.
    hostile = "X1\x1b]0;owned\x07\x1b[2J"
    session = LiveSession([PAIR], "risk", base_dir=tmp_path)
    await session.start()
    async with session.tick():
        await PersistIntentAdapter.write_intent(
            pending_intent().model_copy(update={"status": "sent", "exchange_order_id": hostile})
        )
    await session.aclose()
    shown = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "persistkit",
        command,
        str(tmp_path),
        env={**os.environ, "PYTHONPATH": SRC, "COLUMNS": "300"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await shown.communicate()
    assert shown.returncode in (0, 1), stderr  # 1: an order in doubt needs a person
    assert b"\x1b" not in stdout and b"\x07" not in stdout
    assert b"X1" in stdout


async def test_a_lost_reply_to_the_startup_scan_of_the_intents_does_not_fail_the_start(
    tmp_path: Path,
) -> None:
    lost: list[bytes] = []

    def first_intents_scan(request: bytes) -> bool:
        if not lost and b"SCAN" in request and b"intent" in request:
            lost.append(request)
            return True
        return False

    with (
        RedisServer(directory=tmp_path / "redis") as server,
        ReplyLossProxy("127.0.0.1", server.port, loss=1.0, lose_if=first_intents_scan) as proxy,
    ):
        await crash_with_an_order_in_doubt_on(server.url, tmp_path / "first")
        session = LiveSession(
            [PAIR], "risk", base_dir=tmp_path / "bot", backend=f"redis://127.0.0.1:{proxy.port}/0"
        )
        try:
            state = await session.start()
        finally:
            await session.aclose()
    assert proxy.lost == 1, "the attack lost no reply"
    assert len(state.open_intents) == 1


async def crash_with_an_order_in_doubt_on(backend: str, base_dir: Path) -> None:
    session = LiveSession([PAIR], "risk", base_dir=base_dir, backend=backend)
    await session.start()
    async with session.tick():
        await PersistIntentAdapter.write_intent(pending_intent())
    await session.aclose()

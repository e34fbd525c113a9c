"""The writer subprocess the reliability tests kill, cut and fault-inject.

``python writer_proc.py loop ROOT``: start the stores, print ``ready``, then
write forever, printing ``ack KEY SEQ TIME`` after each write returns (so a line
on the pipe is a write the library acknowledged as durable; ``TIME`` is when, on
the monotonic clock the power-cut tests share). ``--backend`` picks the write
path (``file``: a root with history, each plain write a one-key journal commit;
``no-history``: the durable replace) or a control; ``--journal-limit`` how often
the journal checkpoints.

``python writer_proc.py once ROOT ENTITY``: one write of ``ENTITY/k`` (seq + 1) with all
syscalls on the main thread (strace counts per thread), between two marker
writes to stdout, then ``ok`` or the type of the error raised. The root is opened
with ``history=None``: the write is DESIGN §3's durable replace (with history, a plain
write is a one-key journal commit, the path ``tick-once`` traces).

``python writer_proc.py ticks ROOT --first SEQ``: tick commits forever, each
one transaction writing (or removing) ``signal/X`` and ``risk/X`` of one
instrument, both with the tick's sequence number (from ``SEQ`` up). Prints
``begin SEQ X write|remove`` before a commit and ``tick SEQ`` once it returned.

``python writer_proc.py tick-once ROOT``: one tick (``signal/k`` and ``risk/k``
at seq + 1 in one transaction) and the backend's close (checkpoint), every
syscall of both on the main thread, between the two markers; then ``ok``.

``python writer_proc.py increment ROOT WORKER COUNT``: ``COUNT`` compare-and-set
increments of one counter through ``PersistBase.update_value``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import sys
import time
from typing import Any

from common import InlineExecutor, make_value, value_problem
from writers import (
    DurableReplaceBackend,
    InPlaceBackend,
    NoDirFsyncBackend,
    NoFileFsyncBackend,
    NoJournalFsyncBackend,
    TickBackend,
)

from persistkit._store import PersistBase
from persistkit._transaction import transaction
from persistkit.backends._file import FileBackend
from persistkit.backends._journal import DEFAULT_JOURNAL_LIMIT
from persistkit.errors import EntityNotFoundError, PersistError

BACKENDS: dict[str, type[FileBackend]] = {
    "file": FileBackend,
    "no-history": DurableReplaceBackend,
    "no-journal-fsync": NoJournalFsyncBackend,
    "no-file-fsync": NoFileFsyncBackend,
    "no-dir-fsync": NoDirFsyncBackend,
    "in-place": InPlaceBackend,
}

TICK_BACKENDS: dict[str, type[FileBackend]] = {
    "file": FileBackend,
    "no-journal-fsync": NoJournalFsyncBackend,
}
TICK_INSTRUMENTS = 5
TICK_JOURNAL_LIMIT = 64 << 10
"""Small enough that a run of a second or two checkpoints several times."""

BEGIN = b"BEGIN-WRITE\n"
END = b"END-WRITE\n"


def say(line: str) -> None:
    # One write(2) per line: a line on the pipe is whole, even if we die next.
    os.write(1, (line + "\n").encode())


async def loop(
    root: str, backend_name: str, keys: int, new_keys: bool, seed: int, journal_limit: int
) -> None:
    rng = random.Random(seed)
    backend = BACKENDS[backend_name](root, journal_limit=journal_limit)
    store: PersistBase[Any] = PersistBase("signal", backend=backend)
    await store.wait_for_init()
    seqs: dict[str, int] = {}
    async for entity_id in store.keys():
        value = await store.read_value(entity_id)
        if value_problem(value) is not None:
            raise SystemExit(f"startup found a bad value: {value_problem(value)}")
        seqs[entity_id] = value["seq"]
    say("ready")
    counter = max((int(key[1:]) for key in seqs if key.startswith("n")), default=0)
    while True:
        counter += 1
        key = f"n{counter:07d}" if new_keys else f"k{rng.randrange(keys)}"
        seq = seqs.get(key, 0) + 1
        await store.write_value(key, make_value(key, seq, rng.randrange(20, 3000)))
        seqs[key] = seq
        say(f"ack {key} {seq} {time.monotonic()}")


async def once(root: str, entity: str) -> None:
    backend = FileBackend(root, executor=InlineExecutor(), history=None)
    store: PersistBase[Any] = PersistBase(entity, backend=backend)
    try:
        seq = (await store.read_value("k"))["seq"]
    except EntityNotFoundError:
        seq = 0
    os.write(1, BEGIN)
    try:
        await store.write_value("k", make_value("k", seq + 1, 500))
        outcome = "ok"
    except PersistError as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    os.write(1, END)
    say(outcome)


async def ticks(root: str, backend_name: str, first: int, seed: int) -> None:
    rng = random.Random(seed)
    backend = TICK_BACKENDS[backend_name](root, journal_limit=TICK_JOURNAL_LIMIT)
    stores: dict[str, PersistBase[Any]] = {
        entity: PersistBase(entity, backend=backend) for entity in ("signal", "risk")
    }
    for store in stores.values():
        await store.wait_for_init()
    say("ready")
    for seq in itertools.count(first):
        instrument = f"i{rng.randrange(TICK_INSTRUMENTS)}"
        remove = rng.random() < 0.15
        say(f"begin {seq} {instrument} {'remove' if remove else 'write'}")
        if isinstance(backend, TickBackend) and seq % 2 == 0:
            backend.apply_now()  # the control has no applier thread: its pass, inline
        async with transaction(backend):
            for store in stores.values():
                if remove:
                    await store.remove_value(instrument)
                else:
                    await store.write_value(
                        instrument, make_value(instrument, seq, rng.randrange(20, 3000))
                    )
        # When it was acknowledged, on the clock every process shares: the
        # checker trusts only acknowledgements made before the cut began.
        say(f"tick {seq} {time.monotonic()}")


async def tick_once(root: str) -> None:
    backend = FileBackend(root, executor=InlineExecutor())
    stores = [PersistBase[Any](entity, backend=backend) for entity in ("signal", "risk")]
    try:
        seq = (await stores[0].read_value("k"))["seq"]  # the first read replays a dead journal
    except EntityNotFoundError:
        seq = 0
    os.write(1, BEGIN)
    try:
        async with transaction(backend):
            for store in stores:
                await store.write_value("k", make_value("k", seq + 1, 500))
        await backend.aclose()
        outcome = "ok"
    except PersistError as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    os.write(1, END)
    say(outcome)


async def increment(root: str, worker: int, count: int) -> None:
    store: PersistBase[Any] = PersistBase("counter", backend=FileBackend(root))

    def bump(value: Any) -> Any:
        seq = 0 if value is None else value["seq"]
        return make_value("c", seq + 1, 50 + (seq * 37) % 2000)

    for _ in range(count):
        new = await store.update_value("c", bump)
        say(f"got {new['seq']}")
    try:
        await store.read_value("c")
    except EntityNotFoundError:  # pragma: no cover - reported by the test
        say("missing")


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p_loop = sub.add_parser("loop")
    p_loop.add_argument("root")
    p_loop.add_argument("--backend", default="file", choices=sorted(BACKENDS))
    p_loop.add_argument("--keys", type=int, default=5)
    p_loop.add_argument("--new-keys", action="store_true")
    p_loop.add_argument("--seed", type=int, default=0)
    p_loop.add_argument("--journal-limit", type=int, default=DEFAULT_JOURNAL_LIMIT)
    p_once = sub.add_parser("once")
    p_once.add_argument("root")
    p_once.add_argument("entity")
    p_ticks = sub.add_parser("ticks")
    p_ticks.add_argument("root")
    p_ticks.add_argument("--backend", default="file", choices=sorted(TICK_BACKENDS))
    p_ticks.add_argument("--first", type=int, default=1)
    p_ticks.add_argument("--seed", type=int, default=0)
    p_tick_once = sub.add_parser("tick-once")
    p_tick_once.add_argument("root")
    p_inc = sub.add_parser("increment")
    p_inc.add_argument("root")
    p_inc.add_argument("worker", type=int)
    p_inc.add_argument("count", type=int)
    args = parser.parse_args()
    if args.command == "loop":
        asyncio.run(
            loop(args.root, args.backend, args.keys, args.new_keys, args.seed, args.journal_limit)
        )
    elif args.command == "ticks":
        asyncio.run(ticks(args.root, args.backend, args.first, args.seed))
    elif args.command == "tick-once":
        asyncio.run(tick_once(args.root))
    elif args.command == "once":
        asyncio.run(once(args.root, args.entity))
    else:
        asyncio.run(increment(args.root, args.worker, args.count))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Threads and processes incrementing one counter by compare-and-set, readers watching."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
from common import Result, count, make_value, record, value_problem
from procs import spawn_writer

from persistkit import EntityNotFoundError, FileBackend, PersistBase

THREADS = 4
PROCESSES = 3
INCREMENTS = count(40, 250, "compare-and-set increments per thread and per process")
"""Per thread and per process."""


def _bump(value: Any) -> Any:
    seq = 0 if value is None else value["seq"]
    # The size changes with every increment, so a torn read cannot look whole.
    return make_value("c", seq + 1, 50 + (seq * 37) % 2000)


def test_compare_and_set_increments_lose_nothing_and_readers_see_whole_values(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    got: list[int] = []
    got_lock = threading.Lock()
    problems: list[str] = []
    done = threading.Event()
    reads = [0]

    def incrementer() -> None:
        async def run() -> None:
            store: PersistBase[Any] = PersistBase("counter", backend=FileBackend(root))
            for _ in range(INCREMENTS):
                new = await store.update_value("c", _bump)
                with got_lock:
                    got.append(new["seq"])

        asyncio.run(run())

    def reader() -> None:
        async def run() -> None:
            store: PersistBase[Any] = PersistBase("counter", backend=FileBackend(root))
            last = 0
            path = root / "counter" / "c.json"
            while not done.is_set():
                try:
                    value = await store.read_value("c")
                    raw = orjson.loads(path.read_bytes())  # below the library, too
                except (EntityNotFoundError, FileNotFoundError):
                    continue
                reads[0] += 1
                for seen in (value, raw):
                    problem = value_problem(seen)
                    if problem is not None:
                        problems.append(f"reader saw a partial value: {problem}")
                if value["seq"] < last:
                    problems.append(f"reader went back from {last} to {value['seq']}")
                last = value["seq"]

        asyncio.run(run())

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in readers:
        thread.start()
    processes = [
        spawn_writer("increment", str(root), str(worker), str(INCREMENTS))
        for worker in range(PROCESSES)
    ]
    threads = [threading.Thread(target=incrementer) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for process in processes:
        out, err = process.communicate(timeout=600)
        if process.returncode != 0:
            problems.append(f"process failed: {err.decode(errors='replace')[-500:]}")
        got.extend(
            int(line.split()[1]) for line in out.decode().splitlines() if line.startswith("got ")
        )
    done.set()
    for thread in readers:
        thread.join()

    total = (THREADS + PROCESSES) * INCREMENTS
    final = asyncio.run(PersistBase("counter", backend=FileBackend(root)).read_value("c"))
    if final["seq"] != total:
        problems.append(f"lost updates: counter is {final['seq']}, {total} increments returned")
    if sorted(got) != list(range(1, total + 1)):
        problems.append("two increments returned the same number: one update was lost")
    print(f"  {total} increments, {reads[0]} concurrent reads", file=sys.stderr)
    record(
        Result(
            fault="concurrent writers, threads and processes",
            injection=f"{THREADS} threads and {PROCESSES} processes each doing {INCREMENTS} "
            "compare-and-set increments of one counter via PersistBase.update_value (values "
            "change size each time), 2 reader threads reading through the store and the raw "
            "file meanwhile",
            expected="final count = number of increments, each increment got a distinct "
            "number; readers never see a partial value or go back",
            trials=total,
            violations=len(problems),
            counts={"increments": total, "concurrent reads": reads[0]},
        )
    )
    assert reads[0] > 0
    assert problems == [], "\n".join(problems[:20])

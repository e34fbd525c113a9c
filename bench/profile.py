"""Profile one hot path of persistkit, to find where a missed target's time goes.

    python -m bench.profile write              # pyinstrument, main thread + summary
    py-spy record --threads --format raw -o write.txt -- \\
        .venv/bin/python -m bench.profile write --bare

``--bare`` runs the workload without a profiler (for py-spy, which sees the
worker threads the file backend writes from; pyinstrument sees only the
event loop's thread). ``python -m bench.profile summarize FILE`` reduces a
py-spy raw (collapsed stacks) file to the functions with the largest shares.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Coroutine
from typing import Any

from bench.payload import SIGNALS, SIGNALS_BYTES, VARIANTS
from persistkit import PersistBase, configure

__all__ = ["main"]


async def _write(root: str, count: int) -> None:
    configure(mode="live", base_dir=root)
    store: PersistBase[Any] = PersistBase("signal", base_dir=root)
    for number in range(count):
        await store.write_value("same", SIGNALS[number % VARIANTS])


async def _read(root: str, count: int) -> None:
    configure(mode="live", base_dir=root)
    store: PersistBase[Any] = PersistBase("signal", base_dir=root)
    await store.write_value("same", SIGNALS[0])
    for _ in range(count):
        await store.read_value("same")


async def _init(root: str, count: int) -> None:
    configure(mode="live", base_dir=root)
    store: PersistBase[Any] = PersistBase("signal", base_dir=root)
    for start in range(0, count, 256):
        await asyncio.gather(
            *(
                store.write_value(f"e{n:05d}", SIGNALS[0])
                for n in range(start, min(count, start + 256))
            )
        )
    for _ in range(5):
        fresh: PersistBase[Any] = PersistBase("signal", base_dir=root)
        await fresh.wait_for_init()


async def _backtest_write(root: str, count: int) -> None:
    configure(mode="backtest")
    store: PersistBase[Any] = PersistBase("signal")
    for number in range(count):
        await store.write_value("BTCUSDT", SIGNALS[number % VARIANTS])


async def _backtest_read(root: str, count: int) -> None:
    configure(mode="backtest")
    store: PersistBase[Any] = PersistBase("signal")
    await store.write_value("BTCUSDT", SIGNALS[0])
    for _ in range(count):
        await store.read_value("BTCUSDT")


async def _write_steps(root: str, count: int) -> None:
    """The gap between the raw loop and write_value, one added cost at a time (interleaved)."""
    from bench import raw
    from bench.harness import Case, Group, Sample, run_group, timed

    configure(mode="live", base_dir=root)
    store: PersistBase[Any] = PersistBase("signal", base_dir=root)
    await store.write_value("same", SIGNALS[0])
    directory = os.path.join(root, "signal")
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    loop = asyncio.get_running_loop()

    def with_persistkit_syscalls(variant: int) -> None:
        # What _put_sync adds around the protocol: open + flock the directory, stat the target.
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.stat("same.json", dir_fd=fd)
            raw.durable_replace(fd, "same.json", SIGNALS_BYTES[variant], ".tmp-step")
        finally:
            os.close(fd)

    async def inline() -> Sample:
        started = time.perf_counter()
        for n in range(count):
            raw.durable_replace(dir_fd, "same.json", SIGNALS_BYTES[n % VARIANTS], ".tmp-step")
        return timed(count, started)

    async def inline_extra_syscalls() -> Sample:
        started = time.perf_counter()
        for n in range(count):
            with_persistkit_syscalls(n % VARIANTS)
        return timed(count, started)

    async def thread_hop() -> Sample:
        started = time.perf_counter()
        for n in range(count):
            await loop.run_in_executor(None, with_persistkit_syscalls, n % VARIANTS)
        return timed(count, started)

    async def persistkit() -> Sample:
        started = time.perf_counter()
        for n in range(count):
            await store.write_value("same", SIGNALS[n % VARIANTS])
        return timed(count, started)

    result = await run_group(
        Group(
            "write-steps",
            "write_value's gap to the raw loop, step by step",
            "writes",
            "raw loop, inline",
            [
                Case("raw loop, inline", "reference", inline),
                Case(
                    "+ open/flock/stat/close of the directory, inline",
                    "reference",
                    inline_extra_syscalls,
                ),
                Case("+ one run_in_executor hop per write", "reference", thread_hop),
                Case("persistkit write_value", "persistkit", persistkit),
            ],
            rounds=9,
        )
    )
    os.close(dir_fd)
    for case in result.cases:
        print(f"{case.median:8,.0f} writes/s  {case.ratio:5.2f}x  {case.name}")


WORKLOADS: dict[str, tuple[Callable[[str, int], Coroutine[Any, Any, None]], int]] = {
    "write": (_write, 3000),
    "write-steps": (_write_steps, 300),
    "read": (_read, 200_000),
    "init": (_init, 10_000),
    "backtest-write": (_backtest_write, 500_000),
    "backtest-read": (_backtest_read, 500_000),
}


def summarize(path: str, top: int = 25) -> None:
    """Inclusive and self shares per function from a py-spy raw (collapsed) file."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as handle:
        for line in handle:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            frames = stack.split(";")
            total += count
            for frame in set(frames):
                inclusive[frame] += count
            own[frames[-1]] += count
    print(f"{total} samples")
    print("inclusive:")
    for frame, count in inclusive.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {frame}")
    print("self:")
    for frame, count in own.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {frame}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("workload", choices=[*WORKLOADS, "summarize"])
    parser.add_argument("file", nargs="?", help="for summarize: a py-spy raw output file")
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--bare", action="store_true", help="no profiler (run under py-spy)")
    args = parser.parse_args(argv)
    if args.workload == "summarize":
        if not args.file:
            parser.error("summarize needs the py-spy raw output file")
        summarize(args.file)
        return
    workload, default_count = WORKLOADS[args.workload]
    count = args.count or default_count
    root = tempfile.mkdtemp(prefix="persistkit-profile-", dir="/var/tmp")
    try:
        started = time.perf_counter()
        if args.bare:
            asyncio.run(workload(root, count))
        else:
            from pyinstrument import Profiler

            with Profiler(async_mode="enabled") as profiler:
                asyncio.run(workload(root, count))
            print(profiler.output_text(unicode=True, color=False))
        elapsed = time.perf_counter() - started
        print(f"{args.workload}: {count} in {elapsed:.2f} s ({count / elapsed:,.0f}/s)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    os.sync()


if __name__ == "__main__":
    main()

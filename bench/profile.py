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

import orjson

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
    _print_ladder(result)


def _print_ladder(result: Any) -> None:
    for case in result.cases:
        print(f"{case.median:12,.0f} /s  {case.ratio:5.2f}x  {case.name}")


async def _backtest_steps(root: str, count: int) -> None:
    """write_value in backtest mode against dict + orjson, one added layer at a time."""
    from bench.harness import Case, Group, Sample, run_group, timed
    from persistkit import _codec as codec

    configure(mode="backtest")
    store: PersistBase[Any] = PersistBase("signal")
    await store.write_value("BTCUSDT", SIGNALS[0])
    table: dict[str, bytes] = {}

    async def plain() -> Sample:
        started = time.perf_counter()
        for n in range(count):
            table["BTCUSDT"] = orjson.dumps(SIGNALS[n % VARIANTS])
        return timed(count, started)

    async def with_codec() -> Sample:
        started = time.perf_counter()
        for n in range(count):
            table["BTCUSDT"] = codec.encode(SIGNALS[n % VARIANTS])
        return timed(count, started)

    async def with_key() -> Sample:
        started = time.perf_counter()
        for n in range(count):
            table[store._key("BTCUSDT")] = codec.encode(SIGNALS[n % VARIANTS])
        return timed(count, started)

    async def with_null_scan() -> Sample:
        started = time.perf_counter()
        for n in range(count):
            data = orjson.dumps(SIGNALS[n % VARIANTS])
            if b"null" in data:  # codec.encode's NaN/infinity guard
                raise AssertionError("the signals hold no null")
            table["BTCUSDT"] = data
        return timed(count, started)

    put_now = store._route().put_now
    assert put_now is not None, "the memory backend is called synchronously"

    async def with_put_now() -> Sample:
        started = time.perf_counter()
        for n in range(count):
            put_now(store._key("BTCUSDT"), codec.encode(SIGNALS[n % VARIANTS]))
        return timed(count, started)

    async def persistkit() -> Sample:
        started = time.perf_counter()
        for n in range(count):
            await store.write_value("BTCUSDT", SIGNALS[n % VARIANTS])
        return timed(count, started)

    _print_ladder(
        await run_group(
            Group(
                "backtest-steps",
                "backtest-mode write_value, layer by layer",
                "writes",
                "dict[key] = orjson.dumps(value)",
                [
                    Case("dict[key] = orjson.dumps(value)", "reference", plain),
                    Case("+ the null scan (b'null' in data)", "reference", with_null_scan),
                    Case("dict[key] = codec.encode(value)", "reference", with_codec),
                    Case("+ store._key(id)", "reference", with_key),
                    Case("+ MemoryBackend.put_now (instead of dict)", "reference", with_put_now),
                    Case(
                        "persistkit write_value (adds its coroutine and checks)",
                        "persistkit",
                        persistkit,
                    ),
                ],
                rounds=9,
            )
        )
    )


async def _init_steps(root: str, count: int) -> None:
    """wait_for_init against the raw scan, one added cost at a time (warm page cache)."""
    from concurrent.futures import ThreadPoolExecutor

    from bench import raw
    from bench.harness import Case, Group, Sample, run_group, timed
    from persistkit.backends._file import content_version

    configure(mode="live", base_dir=root)
    store: PersistBase[Any] = PersistBase("signal", base_dir=root)
    for start in range(0, count, 256):
        await asyncio.gather(
            *(
                store.write_value(f"e{n:05d}", SIGNALS[0])
                for n in range(start, min(count, start + 256))
            )
        )
    directory = os.path.join(root, "signal")
    pool = ThreadPoolExecutor(4)

    def read_like_persistkit(path: str) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.read(fd, os.fstat(fd).st_size + 1)
        finally:
            os.close(fd)

    async def get(path: str) -> tuple[bytes, str]:
        data = read_like_persistkit(path)
        return data, content_version(data)

    def paths() -> list[str]:
        with os.scandir(directory) as entries:
            return [entry.path for entry in entries if entry.name.endswith(".json")]

    async def raw_scan() -> Sample:
        started = time.perf_counter()
        return timed(raw.scan_json(directory), started)

    async def fstat_read() -> Sample:
        started = time.perf_counter()
        found = paths()
        for path in found:
            orjson.loads(read_like_persistkit(path))
        return timed(len(found), started)

    async def with_version() -> Sample:
        started = time.perf_counter()
        found = paths()
        for path in found:
            data = read_like_persistkit(path)
            content_version(data)
            orjson.loads(data)
        return timed(len(found), started)

    async def with_await() -> Sample:
        started = time.perf_counter()
        found = paths()
        for path in found:
            data, _ = await get(path)
            orjson.loads(data)
        return timed(len(found), started)

    async def threads() -> Sample:
        started = time.perf_counter()
        found = paths()
        list(pool.map(raw.read_json, found, chunksize=64))
        return timed(len(found), started)

    async def persistkit() -> Sample:
        started = time.perf_counter()
        fresh: PersistBase[Any] = PersistBase("signal", base_dir=root)
        report = await fresh.wait_for_init()
        return timed(report.checked, started)

    _print_ladder(
        await run_group(
            Group(
                "init-steps",
                "wait_for_init, cost by cost",
                "files",
                "raw scan",
                [
                    Case("raw scan", "reference", raw_scan),
                    Case("raw scan, open + fstat + read(size+1) + close", "reference", fstat_read),
                    Case("+ blake2b content version per file", "reference", with_version),
                    Case("+ one awaited coroutine per file", "reference", with_await),
                    Case("raw scan, 4 threads", "reference", threads),
                    Case("persistkit wait_for_init", "persistkit", persistkit),
                ],
                rounds=7,
            )
        )
    )
    pool.shutdown()


async def _inflight_steps(root: str, count: int) -> None:
    """16 durable writes in flight to distinct files of one directory: what serialises them."""
    from concurrent.futures import ThreadPoolExecutor

    from bench import raw
    from bench.harness import Case, Group, Sample, run_group, timed

    directory = os.path.join(root, "signal")
    ids = [f"id{n:03d}" for n in range(64)]
    raw.fill_directory(directory, ids, SIGNALS_BYTES[0])

    def one(number: int, lock: bool) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if lock:
                fcntl.flock(fd, fcntl.LOCK_EX)  # what FileBackend._put_sync holds per write
            raw.durable_replace(
                fd, f"{ids[number % 64]}.json", SIGNALS_BYTES[number % VARIANTS], f".tmp-{number}"
            )
        finally:
            os.close(fd)

    pools: list[ThreadPoolExecutor] = []

    def threads(workers: int, lock: bool) -> Callable[[], Coroutine[Any, Any, Sample]]:
        pool = ThreadPoolExecutor(workers)
        pools.append(pool)

        async def sample() -> Sample:
            started = time.perf_counter()
            list(pool.map(lambda number: one(number, lock), range(count)))
            return timed(count, started)

        return sample

    _print_ladder(
        await run_group(
            Group(
                "inflight-steps",
                "16 writes in flight, distinct ids, one directory",
                "writes",
                "16 threads",
                [
                    Case("16 threads", "reference", threads(16, False)),
                    Case("16 threads, directory flock per write", "reference", threads(16, True)),
                    Case(
                        "6 threads (asyncio's default executor on 2 cores)",
                        "reference",
                        threads(6, False),
                    ),
                    Case("1 thread", "reference", threads(1, False)),
                ],
                rounds=5,
            )
        )
    )
    for pool in pools:
        pool.shutdown()


WORKLOADS: dict[str, tuple[Callable[[str, int], Coroutine[Any, Any, None]], int]] = {
    "write": (_write, 3000),
    "write-steps": (_write_steps, 300),
    "init-steps": (_init_steps, 10_000),
    "inflight-steps": (_inflight_steps, 160),
    "backtest-steps": (_backtest_steps, 100_000),
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

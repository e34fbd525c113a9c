"""Durable entity updates per second through one-commit-per-tick, against the raw loops.

    .venv/bin/python bench/tick_commit.py [--seconds 1.0] [--samples 5] [--dir PATH]

A tick updates N entities (1, 10, 100, 1000) spread over the four domain
namespaces, through ``persistkit.transaction()`` on the file backend: values
validated and encoded by ``PersistBase``, one journal record, one fsync. Measured
in the same run, on the same file system:

- raw ``pwrite`` + ``fsync`` of a ~300-byte record to one open file (the floor
  of any durable commit);
- the raw durable replace: temp file, write, fsync, ``os.replace``, fsync dir
  (what a plain ``write_value`` costs per entity).

Samples of every case are interleaved, so machine noise hits them alike; the
medians are reported with the ratios the targets are about.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import orjson

from persistkit import FileBackend, PersistBase, transaction
from persistkit.testing import sample_signal

PAYLOAD = orjson.dumps(sample_signal(0))

Sample = tuple[int, float, float]
"""Operations done, wall-clock seconds, CPU seconds of the measuring thread."""
DOMAINS = ("signal", "risk", "schedule", "partial")
TICK_SIZES = (1, 10, 100, 1000)


def raw_pwrite_fsync(directory: str, seconds: float) -> Sample:
    """Records appended durably to one open file: count and elapsed seconds."""
    fd = os.open(f"{directory}/raw.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        count, offset, started, cpu = 0, 0, time.perf_counter(), time.thread_time()
        while time.perf_counter() - started < seconds:
            os.pwrite(fd, PAYLOAD, offset)
            os.fsync(fd)
            offset += len(PAYLOAD)
            count += 1
        return count, time.perf_counter() - started, time.thread_time() - cpu
    finally:
        os.close(fd)


def raw_durable_replace(directory: str, seconds: float) -> Sample:
    """Temp, write, fsync, rename, fsync dir: count and elapsed seconds."""
    target = f"{directory}/replace"
    os.makedirs(target, exist_ok=True)
    dir_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        count, started, cpu = 0, time.perf_counter(), time.thread_time()
        while time.perf_counter() - started < seconds:
            temp = f".tmp-{count}"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
            try:
                os.write(fd, PAYLOAD)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, f"k{count % 100}.json", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
            count += 1
        return count, time.perf_counter() - started, time.thread_time() - cpu
    finally:
        os.close(dir_fd)


async def tick_commits(stores: list[PersistBase[Any]], per_tick: int, seconds: float) -> Sample:
    """Ticks of ``per_tick`` entity updates committed: count and elapsed seconds."""
    value = sample_signal(0)
    ticks, started, cpu = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - started < seconds:
        async with transaction(stores[0].backend):
            for index in range(per_tick):
                await stores[index % len(stores)].write_value(index, value)
        ticks += 1
    return ticks, time.perf_counter() - started, time.thread_time() - cpu


async def raw_commits(backend: FileBackend, per_tick: int, seconds: float) -> Sample:
    """``backend.commit`` of pre-encoded bytes: the journal without the store above it."""
    writes = {f"{DOMAINS[index % 4]}/{index}": PAYLOAD for index in range(per_tick)}
    ticks, started, cpu = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - started < seconds:
        await backend.commit(writes)
        ticks += 1
    return ticks, time.perf_counter() - started, time.thread_time() - cpu


def median_rate(samples: list[Sample], scale: int = 1) -> float:
    return statistics.median(count * scale / elapsed for count, elapsed, _ in samples)


def median_latency_us(samples: list[Sample]) -> float:
    return statistics.median(elapsed / count * 1e6 for count, elapsed, _ in samples)


def median_cpu_us(samples: list[Sample]) -> float:
    """CPU time of the event loop's thread per operation (the applier thread excluded)."""
    return statistics.median(cpu / count * 1e6 for count, _, cpu in samples)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one sample")
    parser.add_argument("--samples", type=int, default=5, help="samples per case")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args(argv)

    root = tempfile.mkdtemp(prefix="persistkit-bench-", dir=args.dir)
    try:
        backend = FileBackend(f"{root}/data")
        stores: list[PersistBase[Any]] = [PersistBase(name, backend=backend) for name in DOMAINS]
        for store in stores:
            await store.wait_for_init()
        await tick_commits(stores, 1000, 0.2)  # creates the files and the journal: warm start

        raw_cases: dict[str, Callable[[str, float], Sample]] = {
            "raw pwrite+fsync": raw_pwrite_fsync,
            "raw durable replace": raw_durable_replace,
        }
        results: dict[str, list[Sample]] = {name: [] for name in raw_cases}
        results.update({f"tick of {size}": [] for size in TICK_SIZES})
        results["backend.commit of 1000"] = []
        for sample in range(args.samples):
            print(f"sample {sample + 1}/{args.samples}", file=sys.stderr, flush=True)
            for name, run in raw_cases.items():
                results[name].append(run(root, args.seconds))
            for size in TICK_SIZES:
                results[f"tick of {size}"].append(await tick_commits(stores, size, args.seconds))
            results["backend.commit of 1000"].append(await raw_commits(backend, 1000, args.seconds))
        flushes, commits = backend.journal.flushes, backend.journal.commits
        await backend.aclose()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    raw_fsync_us = median_latency_us(results["raw pwrite+fsync"])
    print(f"\nmedians of {args.samples} samples of {args.seconds}s, file system under {root}")
    print(f"{'case':<22} {'ops/s':>10} {'latency us':>11} {'cpu us':>8} {'entity updates/s':>17}")
    rows = [(name, 1) for name in raw_cases]
    rows += [(f"tick of {size}", size) for size in TICK_SIZES]
    for name, size in [*rows, ("backend.commit of 1000", 1000)]:
        samples = results[name]
        print(
            f"{name:<22} {median_rate(samples):>10,.0f} {median_latency_us(samples):>11,.0f} "
            f"{median_cpu_us(samples):>8,.0f} {median_rate(samples, size):>17,.0f}"
        )
    one = median_latency_us(results["tick of 1"])
    thousand = median_rate(results["tick of 1000"], 1000)
    replace = median_rate(results["raw durable replace"])
    ratio = one / raw_fsync_us
    print(f"\n1-update tick commit / raw pwrite+fsync latency: {ratio:.2f}x (target <= 2)")
    print(
        f"entity updates/s at 1,000 per tick: {thousand:,.0f} (target >= 100,000), "
        f"{thousand / replace:,.0f}x the raw durable replace loop"
    )
    print(f"journal: {commits} commits, {flushes} fsyncs")
    print("cpu us: CPU time of the event loop's thread per operation (applier thread excluded)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

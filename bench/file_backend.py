"""The file backend through the public API (``PersistBase``), against the references and peers.

Groups: one durable write (same id, distinct ids, 16 in flight), one read, and
the startup scan (``wait_for_init``) over many entities with a warm and a cold
page cache.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench import raw
from bench.harness import Case, Group, Sample, SampleFn, timed
from bench.payload import SIGNAL, SIGNAL_BYTES, SIGNALS, SIGNALS_BYTES, Rotation
from bench.peers.backtest_kit_peer import BacktestKitPeer
from bench.peers.diskcache_peer import DiskcachePeer
from bench.peers.sqlite_peer import SqlitePeer
from bench.sizes import Sizes
from bench.store_loops import read_loop
from persistkit import FileBackend, PersistBase, configure

__all__ = ["IN_FLIGHT", "init_group", "read_group", "write_group"]

IN_FLIGHT = 16
SCAN_THREADS = 4


def _ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{number:05d}" for number in range(count)]


def _sync_case(fn: Callable[[], Sample]) -> Callable[[], Awaitable[Sample]]:
    """A synchronous case as the harness's coroutine (run inline: nothing else is running)."""

    async def run() -> Sample:
        return fn()

    return run


def _live_store(root: str, entity: str) -> PersistBase[Any]:
    """A store on the configured file backend of ``root``.

    Stores follow ``configure()`` when called, not when made: a group whose
    store is made up front calls :func:`_go_live` again in its setup, since the
    groups made after it configure their own modes.
    """
    _go_live(root)
    return PersistBase(entity, base_dir=root)


def _go_live(root: str) -> None:
    configure(mode="live", base_dir=root)


# -- one durable write ---------------------------------------------------------------


def write_group(workdir: str, sizes: Sizes, node: BacktestKitPeer | None) -> Group:
    root = os.path.join(workdir, "write")
    raw_dir = os.path.join(root, "raw")
    count = sizes.durable_writes
    ids = _ids("id", sizes.distinct_ids)
    store = _live_store(os.path.join(root, "persistkit"), "signal")
    state: dict[str, Any] = {}
    offload_root = os.path.join(root, "persistkit-offload")

    async def setup() -> None:
        _go_live(os.path.join(root, "persistkit"))
        os.makedirs(raw_dir, exist_ok=True)
        raw.fill_directory(raw_dir, ids, SIGNAL_BYTES)
        state["dir_fd"] = os.open(raw_dir, os.O_RDONLY | os.O_DIRECTORY)
        state["journal"] = os.open(os.path.join(root, "journal"), os.O_WRONLY | os.O_CREAT, 0o644)
        state["pool"] = ThreadPoolExecutor(IN_FLIGHT)
        state["sqlite"] = SqlitePeer(os.path.join(root, "sqlite"))
        state["diskcache"] = DiskcachePeer(os.path.join(root, "diskcache"), durable=False)
        state["diskcache_full"] = DiskcachePeer(os.path.join(root, "diskcache-full"), durable=True)
        # Writes in worker threads overlap their fsyncs (the default runs them inline).
        offloaded = state["offload"] = PersistBase(
            "signal", backend=FileBackend(offload_root, offload=True)
        )
        for entity_id in ids:
            await store.write_value(entity_id, SIGNAL)
            await offloaded.write_value(entity_id, SIGNAL)

    async def teardown() -> None:
        await state.pop("offload").backend.aclose()
        os.close(state.pop("dir_fd"))
        os.close(state.pop("journal"))
        state.pop("pool").shutdown()
        for peer in ("sqlite", "diskcache", "diskcache_full"):
            state.pop(peer).close()
        shutil.rmtree(root, ignore_errors=True)

    same = Rotation(["same"])
    rotations: dict[str, Rotation] = {}

    def plan(case: str, count: int, ids: list[str] = ids) -> list[tuple[str, int]]:
        """The writes of one sample of ``case``, planned before the clock starts."""
        rotation = rotations.get(case)
        if rotation is None:
            rotation = rotations[case] = Rotation(ids)
        return rotation.take(count)

    def raw_same() -> Sample:
        dir_fd, writes = state["dir_fd"], same.take(count)
        started = time.perf_counter()
        for _, variant in writes:
            raw.durable_replace(dir_fd, "same.json", SIGNALS_BYTES[variant], ".tmp-raw")
        return timed(count, started)

    def raw_distinct() -> Sample:
        dir_fd, writes = state["dir_fd"], plan("raw distinct", count)
        started = time.perf_counter()
        for entity_id, variant in writes:
            raw.durable_replace(dir_fd, f"{entity_id}.json", SIGNALS_BYTES[variant], ".tmp-raw")
        return timed(count, started)

    def raw_in_flight() -> Sample:
        dir_fd, pool = state["dir_fd"], state["pool"]
        writes = plan("raw in flight", count)

        def one(write: tuple[str, int]) -> None:
            entity_id, variant = write
            raw.durable_replace(
                dir_fd, f"{entity_id}.json", SIGNALS_BYTES[variant], f".tmp-{entity_id}"
            )

        started = time.perf_counter()
        for batch in range(0, count, IN_FLIGHT):
            list(pool.map(one, writes[batch : batch + IN_FLIGHT]))
        return timed(count, started)

    def raw_pwrite() -> Sample:
        fd, writes = state["journal"], same.take(count)
        started = time.perf_counter()
        for _, variant in writes:
            raw.journal_append(fd, 0, SIGNALS_BYTES[variant])
        return timed(count, started)

    async def persistkit_same() -> Sample:
        writes = plan("persistkit same", count, ["same"])
        started = time.perf_counter()
        for entity_id, variant in writes:
            await store.write_value(entity_id, SIGNALS[variant])
        return timed(count, started)

    async def persistkit_distinct() -> Sample:
        writes = plan("persistkit distinct", count)
        started = time.perf_counter()
        for entity_id, variant in writes:
            await store.write_value(entity_id, SIGNALS[variant])
        return timed(count, started)

    def in_flight(case: str, store_of: Callable[[], PersistBase[Any]]) -> SampleFn:
        async def run() -> Sample:
            target, writes = store_of(), plan(case, count)
            started = time.perf_counter()
            for batch in range(0, count, IN_FLIGHT):
                await asyncio.gather(
                    *(
                        target.write_value(entity_id, SIGNALS[variant])
                        for entity_id, variant in writes[batch : batch + IN_FLIGHT]
                    )
                )
            return timed(count, started)

        return run

    def peer_write(peer: str) -> Callable[[], Awaitable[Sample]]:
        async def run() -> Sample:
            writes = plan(peer, count, ["same"])
            writer: SqlitePeer | DiskcachePeer = state[peer]
            return writer.write(writes)

        return run

    cases = [
        Case("raw durable replace, same file", "reference", _sync_case(raw_same)),
        Case("raw pwrite + fsync, one open file", "reference", _sync_case(raw_pwrite)),
        Case("persistkit write_value, same id", "persistkit", persistkit_same),
        Case(
            "raw durable replace, distinct files",
            "reference",
            _sync_case(raw_distinct),
        ),
        Case(
            "persistkit write_value, distinct ids",
            "persistkit",
            persistkit_distinct,
            reference="raw durable replace, distinct files",
        ),
        Case(
            f"raw durable replace, {IN_FLIGHT} threads",
            "reference",
            _sync_case(raw_in_flight),
        ),
        Case(
            f"persistkit write_value, {IN_FLIGHT} in flight (gather)",
            "persistkit",
            in_flight("persistkit in flight", lambda: store),
            reference=f"raw durable replace, {IN_FLIGHT} threads",
        ),
        Case(
            f"persistkit write_value, {IN_FLIGHT} in flight (gather), FileBackend offload=True",
            "persistkit",
            in_flight("persistkit offload in flight", lambda: state["offload"]),
            reference=f"raw durable replace, {IN_FLIGHT} threads",
        ),
        Case(
            "sqlite WAL synchronous=FULL, one upsert per commit",
            "peer",
            peer_write("sqlite"),
        ),
        Case(
            "diskcache set, default (not fsynced per set)",
            "peer",
            peer_write("diskcache"),
        ),
        Case(
            "diskcache set, sqlite synchronous=FULL",
            "peer",
            peer_write("diskcache_full"),
        ),
    ]
    notes = [
        f"{count} writes per sample of a {len(SIGNAL_BYTES)}-byte JSON signal whose "
        "content changes on every write; distinct ids rotate over "
        f"{len(ids)} existing entities; sqlite and diskcache write one key.",
        "The raw loops keep the directory open across writes; persistkit opens it per "
        "write (it also takes the entity's flock and keeps the file mode).",
    ]
    if node is not None:
        cases += [
            Case(
                "backtest-kit writeValue, sequential",
                "peer",
                node.case("write", count, os.path.join(root, "backtest-kit")),
            ),
            Case(
                f"backtest-kit writeValue, {IN_FLIGHT} in flight",
                "peer",
                node.case("write-parallel", count, os.path.join(root, "backtest-kit")),
                reference=f"raw durable replace, {IN_FLIGHT} threads",
            ),
        ]
    return Group(
        "write",
        "One durable write",
        "writes",
        "raw durable replace, same file",
        cases,
        sizes.rounds,
        setup=setup,
        teardown=teardown,
        notes=notes,
    )


# -- one read ----------------------------------------------------------------------


def read_group(workdir: str, sizes: Sizes, node: BacktestKitPeer | None) -> Group:
    root = os.path.join(workdir, "read")
    count = sizes.reads
    store = _live_store(os.path.join(root, "persistkit"), "signal")
    raw_file = os.path.join(root, "raw", "same.json")
    state: dict[str, Any] = {}

    async def setup() -> None:
        _go_live(os.path.join(root, "persistkit"))
        raw.fill_directory(os.path.dirname(raw_file), ["same"], SIGNAL_BYTES)
        await store.write_value("same", SIGNAL)
        state["sqlite"] = sqlite = SqlitePeer(os.path.join(root, "sqlite"))
        sqlite.put("same", SIGNAL_BYTES)
        state["diskcache"] = cache = DiskcachePeer(os.path.join(root, "diskcache"), durable=False)
        cache.write([("same", 0)])

    async def teardown() -> None:
        state.pop("sqlite").close()
        state.pop("diskcache").close()
        # Closed first: its applier, woken by the journaled write above, would
        # otherwise make the journal again in the folder just removed.
        await store.backend.aclose()
        shutil.rmtree(root, ignore_errors=True)

    def raw_read() -> Sample:
        started = time.perf_counter()
        for _ in range(count):
            raw.read_json(raw_file)
        return timed(count, started)

    cases = [
        Case("raw open + read + orjson.loads", "reference", _sync_case(raw_read)),
        Case("persistkit read_value", "persistkit", read_loop(lambda: store, "same", count)),
        Case(
            "sqlite SELECT + orjson.loads",
            "peer",
            _sync_case(lambda: state["sqlite"].read("same", count)),
        ),
        Case("diskcache get", "peer", _sync_case(lambda: state["diskcache"].read("same", count))),
    ]
    if node is not None:
        cases.append(
            Case(
                "backtest-kit readValue",
                "peer",
                node.case("read", count, os.path.join(root, "backtest-kit")),
            )
        )
    return Group(
        "read",
        "One read (warm page cache)",
        "reads",
        "raw open + read + orjson.loads",
        cases,
        sizes.rounds,
        setup=setup,
        teardown=teardown,
        notes=[f"{count} reads of one entity per sample."],
    )


# -- the startup scan ------------------------------------------------------------


def init_group(workdir: str, sizes: Sizes, node: BacktestKitPeer | None, *, cold: bool) -> Group:
    cache = "cold" if cold else "warm"
    root = os.path.join(workdir, f"init-{cache}")
    entities = sizes.init_entities
    ids = _ids("entity", entities)
    persist_root = os.path.join(root, "persistkit")
    raw_dir = os.path.join(root, "raw")
    sqlite = SqlitePeer(os.path.join(root, "sqlite"))

    async def setup() -> None:
        raw.fill_directory(raw_dir, ids, SIGNAL_BYTES)
        store = _live_store(persist_root, "signal")
        # Written through the store, so the layout is exactly what persistkit reads back.
        for start in range(0, entities, 256):
            await asyncio.gather(
                *(store.write_value(entity_id, SIGNAL) for entity_id in ids[start : start + 256])
            )
        sqlite.fill(ids, SIGNAL_BYTES)
        if node is not None:
            node.fill(os.path.join(root, "backtest-kit"), entities)
        os.sync()

    async def teardown() -> None:
        sqlite.close()
        for executor in pool:
            executor.shutdown()
        shutil.rmtree(root, ignore_errors=True)

    def prepare() -> None:
        if cold:
            raw.drop_page_cache()

    def raw_scan() -> Sample:
        prepare()
        started = time.perf_counter()
        return timed(raw.scan_json(raw_dir), started)

    async def persistkit_init() -> Sample:
        prepare()
        started = time.perf_counter()
        store = _live_store(persist_root, "signal")  # a fresh store, as after a restart
        report = await store.wait_for_init()
        sample = timed(report.checked, started)
        if report.checked != entities or not report.clean:
            raise RuntimeError(f"wait_for_init saw {report.summary()}, expected {entities} clean")
        return sample

    pool: list[ThreadPoolExecutor] = []

    def raw_scan_threads() -> Sample:
        prepare()
        if not pool:
            pool.append(ThreadPoolExecutor(SCAN_THREADS))
        started = time.perf_counter()
        with os.scandir(raw_dir) as entries:
            paths = [entry.path for entry in entries if entry.name.endswith(".json")]
        list(pool[0].map(raw.read_json, paths, chunksize=64))
        return timed(len(paths), started)

    def sqlite_scan() -> Sample:
        prepare()
        return sqlite.scan()

    cases = [
        Case("raw scan: os.scandir + os.read + orjson.loads", "reference", _sync_case(raw_scan)),
        Case(
            f"raw scan, {SCAN_THREADS} threads",
            "reference",
            _sync_case(raw_scan_threads),
            note="what parallel reads give on this disk",
        ),
        Case("persistkit wait_for_init", "persistkit", persistkit_init),
        Case("sqlite: connect + SELECT all + orjson.loads", "peer", _sync_case(sqlite_scan)),
    ]
    if node is not None:
        cases.append(
            Case(
                "backtest-kit waitForInit",
                "peer",
                node.case("init", entities, os.path.join(root, "backtest-kit"), drop_cache=cold),
            )
        )
    notes = [
        f"{entities} entities of {len(SIGNAL_BYTES)} bytes in one directory; "
        "the figure is files (entities) per second, one thread.",
    ]
    if cold:
        notes.append(
            "Before every cold sample: `sync; echo 3 > /proc/sys/vm/drop_caches` (not timed)."
        )
    return Group(
        f"init-{cache}",
        f"Startup scan of {entities:,} entities, {cache} page cache",
        "files",
        "raw scan: os.scandir + os.read + orjson.loads",
        cases,
        sizes.slow_rounds,
        setup=setup,
        teardown=teardown,
        warmup=not cold,
        notes=notes,
    )

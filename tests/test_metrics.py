"""OpenTelemetry metrics, read back with the real SDK's ``InMemoryMetricReader``.

Each count below is what a user would check on a dashboard after doing exactly
these operations; the faults are real (a corrupt file, a killed redis-server,
a stale compare-and-set).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

import persistkit
from persistkit import (
    ConflictError,
    FileBackend,
    PersistBase,
    RetryPolicy,
    disable_metrics,
    enable_metrics,
    transaction,
)
from persistkit.backends._redis import RedisBackend
from support.servers import RedisServer

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    enable_metrics(provider)
    yield reader
    disable_metrics()
    provider.shutdown()


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    """Every data point of instrument ``name`` (cumulative since it was made)."""
    data = reader.get_metrics_data()
    found = []
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def total(reader: InMemoryMetricReader, name: str, **attributes: str) -> int:
    """The sum of a counter's points, or the count of a histogram's, with ``attributes``."""
    result = 0
    for point in points(reader, name):
        if all(point.attributes.get(key) == value for key, value in attributes.items()):
            result += point.count if isinstance(point, HistogramDataPoint) else point.value
    return result


async def test_reads_writes_commits_fsyncs_and_journal_size_on_the_file_backend(
    reader: InMemoryMetricReader, tmp_path: Path
) -> None:
    backend = FileBackend(tmp_path / "data")
    signals, risk = PersistBase("signal", backend=backend), PersistBase("risk", backend=backend)
    await signals.write_value("BTC", {"n": 1})
    await signals.write_value("ETH", {"n": 1})
    for _ in range(3):
        await signals.read_value("BTC")
    async with transaction(backend):
        await signals.write_value("BTC", {"n": 2})
        await risk.write_value("main", {"n": 2})

    assert total(reader, "persistkit.write.duration", **{"persistkit.backend": "file"}) == 4
    assert total(reader, "persistkit.read.duration", **{"persistkit.backend": "file"}) == 3
    assert total(reader, "persistkit.commit.duration", **{"persistkit.backend": "file"}) == 1
    for point in points(reader, "persistkit.write.duration"):
        assert point.sum > 0 and point.min >= 0
    # Two durable replaces (file + directory each), then the commit journal's.
    assert total(reader, "persistkit.fsyncs", **{"persistkit.call": "fsync"}) >= 5
    sizes = {
        point.attributes["persistkit.root"]: point.value
        for point in points(reader, "persistkit.journal.size")
    }
    journal_file = tmp_path / "data" / ".journal" / "commits.pkj"
    assert sizes[backend.root] == journal_file.stat().st_size > 0
    await backend.aclose()


async def test_a_lost_compare_and_set_counts_one_conflict(
    reader: InMemoryMetricReader, tmp_path: Path
) -> None:
    backend = FileBackend(tmp_path / "data")
    store = PersistBase("signal", backend=backend)
    first = await store.write_value("BTC", {"n": 1})
    await store.write_value("BTC", {"n": 2})
    with pytest.raises(ConflictError):
        await store.write_value("BTC", {"n": 3}, if_version=first)
    assert total(reader, "persistkit.conflicts", **{"persistkit.backend": "file"}) == 1
    assert total(reader, "persistkit.write.duration") == 3, "a failed write is timed too"
    await backend.aclose()


async def test_a_corrupt_file_counts_one_quarantine(
    reader: InMemoryMetricReader, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    (root / "signal").mkdir(parents=True)
    (root / "signal" / "bad.json").write_text("{torn")
    (root / "signal" / "good.json").write_text('{"n": 1}')
    backend = FileBackend(root)
    report = await PersistBase("signal", backend=backend).wait_for_init()
    assert len(report.corrupt) == 1
    assert total(reader, "persistkit.quarantines", **{"persistkit.backend": "file"}) == 1
    await backend.aclose()


async def test_a_killed_redis_server_counts_the_retries_that_rode_it_out(
    reader: InMemoryMetricReader, tmp_path: Path
) -> None:
    with RedisServer() as server:
        backend = RedisBackend.from_url(server.url)
        store = PersistBase(
            "signal", backend=backend, retry=RetryPolicy(attempts=30, max_delay=0.2)
        )
        await store.write_value("BTC", {"n": 1})
        server.kill()

        read_ended = threading.Event()

        def restart_after_the_first_retry() -> None:
            # Ordered by the metric itself: the read has failed and is retrying.
            while total(reader, "persistkit.retries") == 0:
                if read_ended.wait(0.01):
                    return  # the read ended without a retry: the asserts below say so
            server.restart()

        restarter = threading.Thread(target=restart_after_the_first_retry)
        restarter.start()
        try:
            assert await store.read_value("BTC") == {"n": 1}
        finally:
            read_ended.set()
            restarter.join()
        assert total(reader, "persistkit.retries") >= 1
        await backend.aclose()


async def test_disabled_metrics_record_nothing(
    reader: InMemoryMetricReader, tmp_path: Path
) -> None:
    backend = FileBackend(tmp_path / "data")
    store = PersistBase("signal", backend=backend)
    await store.write_value("BTC", {"n": 1})
    disable_metrics()
    await store.write_value("BTC", {"n": 2})
    await store.read_value("BTC")
    assert total(reader, "persistkit.write.duration") == 1
    assert total(reader, "persistkit.read.duration") == 0
    await backend.aclose()


def run_python(script: str, tmp_path: Path, *, hide_otel: bool = False) -> Any:
    hook = (
        "import importlib.abc, sys\n"
        "class NoOtel(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'opentelemetry':\n"
        "            raise ModuleNotFoundError(name, name=name)\n"
        "sys.meta_path.insert(0, NoOtel())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", (hook if hide_otel else "") + script, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(SRC)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_no_opentelemetry_import_until_metrics_are_enabled(tmp_path: Path) -> None:
    """Installed (it is, here) but not enabled: persistkit never imports it."""
    script = """
import asyncio, json, sys
import persistkit
from persistkit import FileBackend, PersistBase, transaction
async def main():
    backend = FileBackend(sys.argv[1])
    store = PersistBase("signal", backend=backend)
    await store.wait_for_init()
    async with transaction(backend):
        await store.write_value("BTC", {"n": 1})
    await store.read_value("BTC")
    await backend.aclose()
asyncio.run(main())
print(json.dumps(sorted(name for name in sys.modules if name.startswith("opentelemetry"))))
"""
    assert run_python(script, tmp_path) == []


def test_enabling_metrics_without_opentelemetry_names_the_extra(tmp_path: Path) -> None:
    script = """
import json
import persistkit
try:
    persistkit.enable_metrics()
except ImportError as exc:
    print(json.dumps(str(exc)))
"""
    message = run_python(script, tmp_path, hide_otel=True)
    assert "pip install 'persistkit[otel]'" in message


def test_metrics_default_to_the_global_meter_provider(tmp_path: Path) -> None:
    script = """
import asyncio, json, sys
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
import persistkit
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
persistkit.enable_metrics()
async def main():
    backend = persistkit.FileBackend(sys.argv[1])
    await persistkit.PersistBase("signal", backend=backend).write_value("BTC", {"n": 1})
    await backend.aclose()
asyncio.run(main())
names = sorted({m.name for r in reader.get_metrics_data().resource_metrics
                for s in r.scope_metrics for m in s.metrics})
print(json.dumps(names))
"""
    names = run_python(script, tmp_path)
    assert "persistkit.write.duration" in names
    assert "persistkit.fsyncs" in names
    assert persistkit.enable_metrics is enable_metrics

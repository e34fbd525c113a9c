"""The Redis and S3 server-kill tests of the main suite, run and counted for the report.

They live with their backends (``tests/test_redis_backend.py``,
``tests/test_s3_backend.py``) and run in the main suite as they are;
``report.py`` loads this module as a pytest plugin (``-p server_kills``) and
adds them to its run, so that ``docs/reliability.md`` counts them with the rest:
each run of a test is a trial, a failed run a violation. The long mode runs
each of them :data:`RUNS` times.

Redis runs with ``appendfsync always`` (the fixtures' real ``redis-server``),
S3 is a real SeaweedFS; both are killed with SIGKILL and restarted by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from common import Result, count, record

__all__ = ["NODE_IDS", "RUNS", "ServerKillTest"]

RUNS = count(1, 3, "runs of each Redis / S3 server-kill test")


@dataclass(frozen=True)
class ServerKillTest:
    nodeid: str
    fault: str
    injection: str
    expected: str


TESTS = [
    ServerKillTest(
        "tests/test_redis_backend.py::test_kill_9_mid_run_recovers_and_keeps_every_acknowledged_write",
        "Redis server killed and restarted mid-run",
        "real redis-server (appendfsync always) SIGKILLed a third into 800 writes, restarted "
        "0.3 s later on the same port and data directory",
        "the write in flight waits through the outage (retries) and succeeds; all 800 "
        "acknowledged writes read back from a fresh client",
    ),
    ServerKillTest(
        "tests/test_redis_backend.py::test_transient_errors_are_typed_and_chained",
        "Redis server killed: the error a caller sees",
        "real redis-server SIGKILLed, then a read without retries",
        "BackendUnavailableError caused by TransientBackendError caused by the client's "
        "ConnectionError",
    ),
    ServerKillTest(
        "tests/test_redis_backend.py::test_cluster_commit_cut_by_a_dead_master_is_applied_once_by_its_retry",
        "Redis Cluster master killed during a cross-slot tick commit",
        "real 3-master cluster; the master owning keys of 40 cross-slot commits SIGKILLed "
        "while they lock their keys, then restarted",
        "the commits fail undecided; a retried one is applied exactly once, the ones nobody "
        "retries are rolled back by the next writer of their keys, never applied",
    ),
    ServerKillTest(
        "tests/test_s3_backend.py::test_server_killed_mid_run_and_restarted_loses_nothing_acknowledged",
        "S3 (SeaweedFS) server killed and restarted mid-run",
        "real SeaweedFS process group SIGKILLed after 100 acknowledged writes of 8 concurrent "
        "writers, restarted 0.5 s later",
        "transient failures seen and retried; every acknowledged object present and whole, "
        "nothing unacknowledged stored",
    ),
    ServerKillTest(
        "tests/test_s3_backend.py::test_an_unreachable_server_is_a_transient_error_then_unavailable",
        "S3 server unreachable: the error a caller sees",
        "an endpoint with no server listening",
        "TransientBackendError (EndpointConnectionError), then BackendUnavailableError after "
        "the retries; no secret in the message",
    ),
]
NODE_IDS = [test.nodeid for test in TESTS]
_results: dict[str, Result] = {}


@pytest.fixture
def _server_kill_run(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each listed test :data:`RUNS` times (as pytest-repeat does it)."""
    if RUNS > 1 and metafunc.definition.nodeid in NODE_IDS:
        metafunc.fixturenames.append("_server_kill_run")
        metafunc.parametrize("_server_kill_run", range(RUNS), indirect=True)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    nodeid = report.nodeid.partition("[")[0]
    if nodeid not in NODE_IDS or (report.when != "call" and report.passed):
        return
    result = _results.get(nodeid)
    if result is None:
        test = TESTS[NODE_IDS.index(nodeid)]
        result = _results[nodeid] = record(
            Result(test.fault, test.injection, test.expected, 0, 0, notes=[f"test: {nodeid}"])
        )
    result.trials += 1
    result.violations += int(report.failed)
    result.counts["runs"] = result.trials

"""Reliability suite: quiet startup logs, and the results file the report is built from.

``PERSISTKIT_RELIABILITY_OUT=path`` makes the session write every recorded
result there as JSON; ``tests/reliability/report.py`` runs the suite that way
and renders ``docs/reliability.md`` from it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from common import CALL_OUTCOME, LONG, Result, counts_by_mode, record, recorded


@pytest.fixture(autouse=True)
def _quiet_startup_logs() -> None:
    # Thousands of startups on corrupt states would bury a failure's output.
    logging.getLogger("persistkit").setLevel(logging.ERROR)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Keep each test's call outcome on the item, for fixtures that record it."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.stash[CALL_OUTCOME] = report.passed


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = os.environ.get("PERSISTKIT_RELIABILITY_OUT")
    if out:
        Path(out).write_text(
            json.dumps(
                {
                    "long": LONG,
                    "exitstatus": int(exitstatus),
                    "counts": counts_by_mode(),
                    "results": recorded(),
                }
            )
        )


_results: dict[str, Result] = {}


@pytest.fixture
def count_in_the_report(request: pytest.FixtureRequest) -> Iterator[None]:
    """One row of ``docs/reliability.md`` per test: each parametrization is a trial.

    The test module names the fault family (``REPORT_AS``) and how it injects
    it (``REPORT_INJECTION``); the test's docstring and name say the rest.
    """
    yield
    item = request.node
    passed = item.stash.get(CALL_OUTCOME, None)
    if passed is None:
        return  # not run to its end (a setup error): nothing to count
    function = item.function
    result = _results.get(function.__name__)
    if result is None:
        first_line = (function.__doc__ or "").strip().splitlines()[:1] or [function.__name__]
        result = _results[function.__name__] = record(
            Result(
                fault=f"{request.module.REPORT_AS}: {first_line[0]}",
                injection=request.module.REPORT_INJECTION,
                expected=function.__name__.removeprefix("test_").replace("_", " "),
                trials=0,
                violations=0,
            )
        )
    result.trials += 1
    result.violations += 0 if passed else 1

"""Reliability suite: quiet startup logs, and the results file the report is built from.

``PERSISTKIT_RELIABILITY_OUT=path`` makes the session write every recorded
result there as JSON; ``tests/reliability/report.py`` runs the suite that way
and renders ``docs/reliability.md`` from it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from common import CALL_OUTCOME, LONG, counts_by_mode, recorded


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

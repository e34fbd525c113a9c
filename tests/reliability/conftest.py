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
from common import LONG, counts_by_mode, recorded


@pytest.fixture(autouse=True)
def _quiet_startup_logs() -> None:
    # Thousands of startups on corrupt states would bury a failure's output.
    logging.getLogger("persistkit").setLevel(logging.ERROR)


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

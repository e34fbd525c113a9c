"""The benchmark entry point runs end to end with ``--quick`` and writes a usable report.

Speed is not asserted here (benchmarks are their own suite); this checks that
the command in the README works: every group ran its rounds, the report has
its tables and targets, and the bench leaves no files behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent


def test_quick_bench_run_writes_report_and_results(tmp_path: Path) -> None:
    report = tmp_path / "performance.md"
    workdir = tmp_path / "work"
    command = [
        sys.executable,
        "-m",
        "bench",
        "--quick",
        "--no-plots",
        "--report",
        str(report),
        "--workdir",
        str(workdir),
    ]
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]

    run = orjson.loads((tmp_path / "performance.json").read_bytes())
    groups = {group["key"]: group for group in run["groups"]}
    for key in (
        "write",
        "read",
        "init-warm",
        "ticks-1",
        "statistics",
        "backtest-calls",
        "backtest-loop",
    ):
        assert key in groups, f"group {key} did not run: {sorted(groups)}"
    for group in run["groups"]:
        for case in group["cases"]:
            assert len(case["samples"]) == group["rounds"], (group["key"], case["name"])
            assert all(s["operations"] > 0 and s["seconds"] > 0 for s in case["samples"])
            if case["name"] == group["reference"]:
                assert case["ratios"] == [1.0] * group["rounds"]
    for key in ("ticks-10", "redis", "redis-tick", "s3", "s3-tick"):
        assert key in groups, f"group {key} did not run: {sorted(groups)}, {run['notes']}"
    tick_cases = {case["name"] for case in groups["ticks-10"]["cases"]}
    assert "persistkit transaction(): one commit per tick" in tick_cases
    assert "persistkit LiveSession.tick(): one commit per tick" in tick_cases
    write_cases = {case["name"] for case in groups["write"]["cases"]}
    assert "persistkit write_value, same id" in write_cases
    assert "sqlite WAL synchronous=FULL, one upsert per commit" in write_cases
    assert "backtest-kit writeValue, sequential" in write_cases, run["notes"]

    text = report.read_text()
    assert "## Targets" in text and "## Machine" in text
    assert "durable single write vs raw durable-replace loop" in text
    assert "| **persistkit write_value, same id** |" in text
    assert "python -m bench --quick" in text

    leftovers = [
        os.path.join(directory, name) for directory, _, names in os.walk(workdir) for name in names
    ]
    assert leftovers == []

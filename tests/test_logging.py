"""Logging: one logger per module under ``persistkit.``, silent by default, documented.

docs/logging.md lists every message with its logger and level; the test reads
the log calls out of the source (with ``ast``, so a call split over lines or a
message built from implicitly joined strings counts as one) and compares the
two lists both ways.
"""

from __future__ import annotations

import ast
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from persistkit import FileBackend, PersistBase

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "persistkit"
DOC = Path(__file__).resolve().parents[1] / "docs" / "logging.md"
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}

Logged = tuple[str, frozenset[str], str]
"""(logger name, levels, message format)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _levels_assigned(function: ast.AST, name: str) -> frozenset[str]:
    """The ``logging.LEVEL`` constants assigned to ``name`` in ``function``."""
    found: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            found |= {
                sub.attr
                for sub in ast.walk(node.value)
                if isinstance(sub, ast.Attribute)
                and isinstance(sub.value, ast.Name)
                and sub.value.id == "logging"
            }
    return frozenset(found)


def logged_in_source() -> set[Logged]:
    logged: set[Logged] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef | ast.Module):
                continue
            for node in ast.walk(function):
                if not (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "logger"
                ):
                    continue
                where = f"{path.relative_to(SRC)}:{node.lineno}"
                method = node.func.attr
                arguments = list(node.args)
                if method == "log":
                    level = arguments.pop(0)
                    assert isinstance(level, ast.Name), f"{where}: level must be a variable"
                    levels = _levels_assigned(function, level.id)
                    assert levels, f"{where}: no logging.LEVEL assigned to {level.id}"
                else:
                    assert method in LEVELS, f"{where}: logger.{method}"
                    levels = frozenset({"ERROR" if method == "exception" else method.upper()})
                message = arguments[0]
                assert isinstance(message, ast.Constant) and isinstance(message.value, str), (
                    f"{where}: the message must be a literal format string (not an f-string), "
                    "so that it can be documented and grouped"
                )
                logged.add((module_name(path), levels, message.value))
    return logged


_ROW = re.compile(r"^\| `(persistkit[\w.]*)` \| ([A-Z, ]+?)(?: \([^)]*\))? \| `(.*)` \| .+ \|$")


def documented() -> set[Logged]:
    rows: set[Logged] = set()
    for line in DOC.read_text().splitlines():
        match = _ROW.match(line)
        if match:
            levels = frozenset(level.strip() for level in match.group(2).split(","))
            rows.add((match.group(1), levels, match.group(3)))
    return rows


def test_every_log_call_is_documented_with_its_logger_and_level() -> None:
    source, doc = logged_in_source(), documented()
    # Function-level walks see a nested call twice; the sets make that harmless.
    assert len(source) >= 30, "the source scan found too few log calls: is it broken?"
    assert source - doc == set(), "logged but not in docs/logging.md"
    assert doc - source == set(), "in docs/logging.md but not logged (or another level)"


def test_every_module_logs_to_its_own_logger() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if re.search(r"^\s*logger\.\w+\(", text, re.MULTILINE):
            assert "\nlogger = logging.getLogger(__name__)\n" in text, path


def test_the_package_logger_has_a_null_handler_and_prints_nothing_by_default(
    tmp_path: Path,
) -> None:
    assert any(
        isinstance(handler, logging.NullHandler)
        for handler in logging.getLogger("persistkit").handlers
    )
    # A fresh process that configures no logging quarantines a corrupt file (a
    # WARNING): without the NullHandler, logging's last resort prints it on stderr.
    script = """
import asyncio, sys
from persistkit import FileBackend, PersistBase
async def main():
    store = PersistBase("signal", backend=FileBackend(sys.argv[1]))
    report = await store.wait_for_init()
    assert len(report.corrupt) == 1, report
    await store.backend.aclose()
asyncio.run(main())
"""
    root = tmp_path / "data"
    (root / "signal").mkdir(parents=True)
    (root / "signal" / "bad.json").write_text("{torn")
    result = subprocess.run(
        [sys.executable, "-c", script, str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(SRC)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


async def test_a_quarantine_is_logged_by_the_store_module_at_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data"
    (root / "signal").mkdir(parents=True)
    (root / "signal" / "bad.json").write_text("{torn")
    store = PersistBase("signal", backend=FileBackend(root))
    with caplog.at_level(logging.INFO, logger="persistkit"):
        report = await store.wait_for_init()
    assert len(report.corrupt) == 1
    records = [r for r in caplog.records if r.name == "persistkit._store"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.WARNING]
    assert "1 corrupt values quarantined" in records[0].getMessage()
    assert records[1].getMessage().startswith("  signal/bad: unparseable JSON: ")
    assert records[1].getMessage().endswith(f" -> {report.corrupt[0].quarantine_id}")
    await store.backend.aclose()

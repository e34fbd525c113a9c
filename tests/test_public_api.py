"""The exported names are the documented ones, and each is importable."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import persistkit
import persistkit.errors

DOCUMENTED = {
    # backtest-kit's API
    "PersistBase",
    "PersistSignalAdapter",
    "PersistRiskAdapter",
    "PersistScheduleAdapter",
    "PersistPartialAdapter",
    "configure",
    "current_settings",
    "Settings",
    "DEFAULT_BASE_DIR",
    # the live lifecycle
    "LiveSession",
    "PairState",
    "RestoredState",
    "Transaction",
    "transaction",
    # statistics (issue 14)
    "Schedule",
    "Partial",
    "ScheduleStatistics",
    "PartialStatistics",
    "ScheduleEvent",
    "PartialEvent",
    # the store's results
    "Entry",
    "Finding",
    "InitReport",
    # backends
    "Backend",
    "FileBackend",
    "MemoryBackend",
    "QuarantineEntry",
    "Versioned",
    "ANY_VERSION",
    "open_backend",
    "register_backend",
    "RetryPolicy",
    "HistoryPolicy",
    # errors
    *persistkit.errors.__all__,
}


def test_exports_are_exactly_the_documented_names() -> None:
    assert set(persistkit.__all__) == DOCUMENTED


def test_every_export_resolves() -> None:
    for name in persistkit.__all__:
        assert getattr(persistkit, name) is not None


def test_every_error_derives_from_the_root_and_a_builtin() -> None:
    for name in persistkit.errors.__all__:
        error = getattr(persistkit.errors, name)
        assert issubclass(error, persistkit.PersistError)
    assert issubclass(persistkit.EntityNotFoundError, KeyError)
    assert issubclass(persistkit.InvalidNameError, ValueError)
    assert issubclass(persistkit.WriteFailedError, OSError)


def test_the_version_is_written_once_and_the_changelog_names_it() -> None:
    root = Path(__file__).resolve().parent.parent
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    assert persistkit.__version__ == declared == importlib.metadata.version("persistkit")
    # The newest entry is this version, or the unreleased entry that will become it.
    newest = (root / "CHANGELOG.md").read_text().split("\n## [")[1]
    assert newest.startswith(f"{declared}]") or (
        newest.startswith("Unreleased]") and f"becomes {declared}" in newest
    )

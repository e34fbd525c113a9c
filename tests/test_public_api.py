"""The exported names are the documented ones, and each is importable."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

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
    "DEFAULT_EVENT_LIMIT",
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
    # order intents (issue 16)
    "OrderIntent",
    "PersistIntentAdapter",
    "new_client_order_id",
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
    # observability (docs/logging.md, persistkit/_metrics.py)
    "enable_metrics",
    "disable_metrics",
    # errors
    *persistkit.errors.__all__,
}


def test_exports_are_exactly_the_documented_names() -> None:
    assert set(persistkit.__all__) == DOCUMENTED


# The other public modules and what each exports (persistkit.errors: every error class).
PUBLIC_MODULES = {
    "persistkit.models": {
        "FINAL_INTENT_STATUSES",
        "IntentStatus",
        "OrderIntent",
        "OrderSide",
        "UNRESOLVED_INTENT_STATUSES",
        "PARTIAL_LEVELS",
        "PartialData",
        "PartialLevel",
        "Position",
        "RiskActivePosition",
        "ScheduledSignalRow",
        "SignalRow",
    },
    "persistkit.backends": {
        # the contract a backend implements, and what its methods take and return
        "Backend",
        "Versioned",
        "QuarantineEntry",
        "Lease",
        "Snapshot",
        "ANY_VERSION",
        "AnyVersion",
        "Expected",
        "fenced_leases",
        "join_key",
        "split_key",
        # finding one
        "open_backend",
        "register_backend",
        # the shipped ones
        "FileBackend",
        "MemoryBackend",
        "RedisBackend",
        "S3Backend",
    },
    "persistkit.testing": {"BackendConformance", "sample_intent", "sample_signal"},
    "persistkit.replay": {
        "replay",
        "replay_sweep",
        "ReplaySummary",
        "Divergence",
        "ReplayWarning",
        "RunRegistry",
        "DEFAULT_MAX_IN_FLIGHT",
        "now_ms",
        "new_id",
        "replay_run_id",
    },
}


@pytest.mark.parametrize(
    "module_name", ["persistkit", "persistkit.errors", "persistkit.sync", *PUBLIC_MODULES]
)
def test_every_export_resolves(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in module.__all__:
        assert getattr(module, name) is not None


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_modules_export_exactly_their_curated_names(module_name: str) -> None:
    assert set(importlib.import_module(module_name).__all__) == PUBLIC_MODULES[module_name]


def test_the_shipped_backends_are_one_class_wherever_they_are_imported_from() -> None:
    import persistkit.backends

    assert persistkit.backends.FileBackend is persistkit.FileBackend
    assert persistkit.backends.MemoryBackend is persistkit.MemoryBackend
    assert issubclass(persistkit.backends.RedisBackend, persistkit.Backend)


def test_importing_persistkit_imports_no_optional_dependency() -> None:
    optional = "{'redis', 'boto3', 'botocore', 'click', 'rich', 'pytest'}"
    probe = (
        "import sys, persistkit, persistkit.backends, persistkit.models, persistkit.replay\n"
        f"loaded = sorted({optional} & set(sys.modules))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


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


def test_every_other_module_is_private() -> None:
    """Only the public modules are importable without a leading underscore in their path."""
    import pkgutil

    public = set(PUBLIC_MODULES) | {
        "persistkit",
        "persistkit.__main__",
        "persistkit.errors",
        "persistkit.sync",
    }
    named_in_public = [
        info.name
        for info in pkgutil.walk_packages(persistkit.__path__, "persistkit.")
        if info.name not in public
        and not any(part.startswith("_") for part in info.name.split(".")[1:])
    ]
    assert named_in_public == []

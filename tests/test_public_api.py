"""The exported names are the documented ones, and each is importable."""

from __future__ import annotations

import persistkit
import persistkit.errors

DOCUMENTED = {
    # the seed's API
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

"""persistkit's shipped conformance suite, run unchanged against the SQLite backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from persistkit.testing import BackendConformance
from persistkit_sqlite import SQLiteBackend


class TestSQLiteBackend(BackendConformance):
    @pytest_asyncio.fixture
    async def backend(self, tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
        backend = SQLiteBackend(tmp_path / "conformance.db")
        yield backend
        await backend.aclose()

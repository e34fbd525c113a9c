"""The shipped conformance suite, run on the two backends that need no server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from persistkit import FileBackend, MemoryBackend
from persistkit.testing import BackendConformance


class TestFileBackend(BackendConformance):
    @pytest.fixture
    async def backend(self, tmp_path: Path) -> AsyncIterator[FileBackend]:
        backend = FileBackend(tmp_path / "conformance")
        yield backend
        await backend.aclose()


class TestMemoryBackend(BackendConformance):
    @pytest.fixture
    async def backend(self) -> AsyncIterator[MemoryBackend]:
        backend = MemoryBackend()
        yield backend
        await backend.aclose()


class TestFileBackendOffloaded(BackendConformance):
    """The same backend with its syscalls in worker threads."""

    @pytest.fixture
    async def backend(self, tmp_path: Path) -> AsyncIterator[FileBackend]:
        backend = FileBackend(tmp_path / "conformance", offload=True)
        yield backend
        await backend.aclose()

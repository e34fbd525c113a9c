from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import persistkit


@pytest.fixture(autouse=True)
def _isolated_configuration(tmp_path: Path) -> Iterator[None]:
    """Every test starts live on its own temporary root, never on ./dump/data."""
    persistkit.configure(mode="live", base_dir=tmp_path / "data")
    yield
    persistkit.configure(mode="live", base_dir=tmp_path / "data")


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return tmp_path / "data"

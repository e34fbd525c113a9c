from __future__ import annotations

from collections.abc import Iterator

import pytest

import persistkit


@pytest.fixture
def restore_configuration() -> Iterator[None]:
    """Put persistkit's process-wide configuration back after a test that changes it."""
    before = persistkit.current_settings()
    yield
    persistkit.configure(
        before.mode,
        base_dir=before.base_dir,
        backend=before.backend if before.mode == "live" else None,
    )

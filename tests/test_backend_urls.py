"""A backend is opened from its URL through the scheme it registered, or refused clearly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import persistkit.backends
from persistkit import InvalidNameError, MemoryBackend, open_backend, register_backend
from persistkit.backends import Backend


class UrlLessBackend(MemoryBackend):
    """A backend built only from objects: it keeps the contract's own ``from_url``."""

    from_url = Backend.__dict__["from_url"]


@pytest.fixture
def scheme() -> Iterator[str]:
    yield "urlless"
    persistkit.backends._REGISTRY.pop("urlless", None)


def test_a_registered_backend_without_from_url_is_refused_naming_it(scheme: str) -> None:
    register_backend(scheme, f"{__name__}:UrlLessBackend")
    with pytest.raises(InvalidNameError, match="UrlLessBackend is not opened from a URL"):
        open_backend(f"{scheme}://anything")


def test_a_scheme_nobody_registered_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(InvalidNameError, match=r"no backend for URL scheme 'nope'; known: .*redis"):
        open_backend("nope://x")


def test_a_shipped_url_opens_its_backend() -> None:
    assert isinstance(open_backend("memory://"), MemoryBackend)

"""What the four domain adapters share: one memoized store per entity."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from persistkit.config import current_settings, on_configure
from persistkit.store import PersistBase, SegmentName


class DomainAdapter:
    """Holds the store class (swappable, as in the seed) and one store per entity."""

    domain: ClassVar[str]
    schema: ClassVar[Any]
    """What the store validates values against, at startup and on every read."""

    def __init__(self) -> None:
        self._store_class: type[PersistBase[Any]] = PersistBase
        self._stores: dict[str, PersistBase[Any]] = {}
        on_configure(self._stores.clear)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.domain} via {self._store_class.__name__}>"

    def _use(self, store_class: type[PersistBase[Any]]) -> None:
        if not (isinstance(store_class, type) and issubclass(store_class, PersistBase)):
            raise TypeError(f"expected a PersistBase subclass, got {store_class!r}")
        self._store_class = store_class
        self._stores.clear()  # takes effect for entities already used, too

    async def _store(self, entity: str) -> PersistBase[Any]:
        """The store of ``entity`` (an encoded segment), initialised on first use."""
        store = self._stores.get(entity)
        if store is None:
            directory = os.path.join(current_settings().base_dir, self.domain)
            store = self._store_class(SegmentName(entity), directory)
            store.set_model(self.schema)
            self._stores[entity] = store
        await store.wait_for_init()
        return store

    def memoized_stores(self) -> list[PersistBase[Any]]:
        """The stores this adapter has opened (the live session restores through them)."""
        return list(self._stores.values())

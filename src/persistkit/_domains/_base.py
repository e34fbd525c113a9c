"""What the domain adapters share: one memoized store per entity."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from persistkit._config import Settings, active_settings, on_configure
from persistkit._store import PersistBase, SegmentName


class DomainAdapter:
    """Holds the store class (swappable, as in backtest-kit) and one store per entity.

    Stores are memoized per settings: a live session's ticks get stores under
    the session's root, other code under the configured one.
    """

    domain: ClassVar[str]
    schema: ClassVar[Any]
    """What the store validates values against, at startup and on every read."""

    def __init__(self) -> None:
        self._store_class: type[PersistBase[Any]] = PersistBase
        self._scope: Settings | None = None
        self._stores: dict[str, PersistBase[Any]] = {}
        """The stores of ``_scope``, the settings last used."""
        self._by_scope: dict[int, tuple[Settings, dict[str, PersistBase[Any]]]] = {}
        on_configure(self._forget)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.domain} via {self._store_class.__name__}>"

    def _forget(self) -> None:
        self._scope = None
        self._stores = {}
        self._by_scope.clear()

    def _use(self, store_class: type[PersistBase[Any]]) -> None:
        if not (isinstance(store_class, type) and issubclass(store_class, PersistBase)):
            raise TypeError(f"expected a PersistBase subclass, got {store_class!r}")
        self._store_class = store_class
        self._forget()  # takes effect for entities already used, too

    def _scoped(self) -> tuple[Settings, dict[str, PersistBase[Any]]]:
        scope = active_settings()
        if scope is not self._scope:
            found = self._by_scope.get(id(scope))
            if found is None or found[0] is not scope:
                found = self._by_scope[id(scope)] = (scope, {})
            self._scope, self._stores = found
        return scope, self._stores

    async def _store(self, entity: str) -> PersistBase[Any]:
        """The store of ``entity`` (an encoded segment), initialised on first use."""
        scope, stores = self._scoped()
        store = stores.get(entity)
        if store is None:
            directory = os.path.join(scope.base_dir, self.domain)
            store = self._store_class(SegmentName(entity), directory)
            # A custom store on its own backend still keeps the domain's keys
            # apart: signal and schedule never share one.
            store._keep_prefix(self.domain)
            store.set_model(self.schema)
            stores[entity] = store
        await store.wait_for_init()
        return store

    def memoized_stores(self) -> list[PersistBase[Any]]:
        """The stores opened under the active settings (the live session restores them)."""
        return list(self._scoped()[1].values())

"""Partial: profit/loss milestones already reached, per signal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from persistkit.domains._base import DomainAdapter
from persistkit.errors import EntityNotFoundError
from persistkit.models import PartialData
from persistkit.names import join_pair
from persistkit.store import PersistBase

__all__ = ["PersistPartialUtils"]

_LEVELS = "levels"


class PersistPartialUtils(DomainAdapter):
    """``partial/{symbol}_{strategy}/levels.json`` maps signal id to its reached levels."""

    domain = "partial"
    schema = dict[str, PartialData] | None

    async def read_partial_data(self, symbol: str, strategy_name: str) -> dict[str, PartialData]:
        """Signal id -> reached levels; empty when none."""
        store = await self._store(join_pair(symbol, strategy_name))
        try:
            value = await store.read_value(_LEVELS)
        except EntityNotFoundError:
            return {}
        if not value:
            return {}
        return {
            str(key): v if isinstance(v, PartialData) else PartialData.model_validate(v)
            for key, v in value.items()
        }

    async def write_partial_data(
        self, data: Mapping[str, PartialData] | None, symbol: str, strategy_name: str
    ) -> None:
        """Store the reached levels durably; ``None`` removes the file."""
        store = await self._store(join_pair(symbol, strategy_name))
        if data is None:
            await store.remove_value(_LEVELS)
        else:
            await store.write_value(_LEVELS, dict(data))

    def use_persist_partial_adapter(self, store_class: type[PersistBase[Any]]) -> None:
        """Keep partial levels in a custom :class:`PersistBase` subclass."""
        self._use(store_class)

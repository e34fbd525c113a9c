"""Partial: profit/loss milestones already reached, per signal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from persistkit._domains._base import DomainAdapter
from persistkit._domains.events import PARTIAL, write_with_events
from persistkit._names import join_pair
from persistkit._store import PersistBase
from persistkit.errors import EntityNotFoundError
from persistkit.models import PartialData

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
        """Store the reached levels durably; ``None`` removes the file.

        Each level new to a signal is recorded for ``persistkit.Partial`` in the
        same commit (see :class:`~persistkit.PartialStatistics`).
        """
        pair = join_pair(symbol, strategy_name)
        store = await self._store(pair)
        value = None if data is None else dict(data)
        given = value if value and all(isinstance(v, PartialData) for v in value.values()) else None
        await write_with_events(store, _LEVELS, value, PARTIAL, symbol, pair, given)

    def use_persist_partial_adapter(self, store_class: type[PersistBase[Any]]) -> None:
        """Keep partial levels in a custom :class:`PersistBase` subclass."""
        self._use(store_class)

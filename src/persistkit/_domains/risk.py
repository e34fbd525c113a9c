"""Risk: the active positions of a risk profile, portfolio-wide."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from persistkit._domains._base import DomainAdapter
from persistkit._names import encode_segment
from persistkit._store import PersistBase
from persistkit.errors import EntityNotFoundError
from persistkit.models import RiskActivePosition

__all__ = ["PersistRiskUtils"]

_POSITIONS = "positions"


class PersistRiskUtils(DomainAdapter):
    """``risk/{risk_name}/positions.json`` holds a list of ``[key, position]`` pairs."""

    domain = "risk"
    schema = list[tuple[str, RiskActivePosition]] | None

    async def read_position_data(self, risk_name: str) -> list[tuple[str, RiskActivePosition]]:
        """The active positions, in the order written; empty when none."""
        store = await self._store(encode_segment(risk_name))
        try:
            value = await store.read_value(_POSITIONS)
        except EntityNotFoundError:
            return []
        if not value:
            return []
        return [
            (
                str(key),
                p if isinstance(p, RiskActivePosition) else RiskActivePosition.model_validate(p),
            )
            for key, p in value
        ]

    async def write_position_data(
        self, entries: Iterable[tuple[str, RiskActivePosition]] | None, risk_name: str
    ) -> None:
        """Store the active positions durably; ``None`` removes the file."""
        store = await self._store(encode_segment(risk_name))
        if entries is None:
            await store.remove_value(_POSITIONS)
        else:
            await store.write_value(_POSITIONS, list(entries))

    def use_persist_risk_adapter(self, store_class: type[PersistBase[Any]]) -> None:
        """Keep risk positions in a custom :class:`PersistBase` subclass."""
        self._use(store_class)

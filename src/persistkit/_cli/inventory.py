"""``persistkit inspect``: what a backend holds, decoded through the domain models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from persistkit._names import decode_segment, split_pair
from persistkit._store import PersistBase
from persistkit.backends import Backend
from persistkit.backends._backtest_kit import state_not_read
from persistkit.backends._base import split_key
from persistkit.errors import CorruptValueError, ForeignSymlinkError, InvalidNameError
from persistkit.models import (
    OrderIntent,
    PartialData,
    RiskActivePosition,
    ScheduledSignalRow,
    SignalRow,
)

from .targets import PAIRED_DOMAINS, store_for

__all__ = [
    "EntityInfo",
    "IntentView",
    "Inventory",
    "PartialView",
    "RiskView",
    "RowView",
    "Unreadable",
    "collect_inventory",
    "decode_value",
]


@dataclass(frozen=True, slots=True)
class EntityInfo:
    key: str
    domain: str
    """First segment of the key (``signal``, ``risk``...; ``-`` for a key at the root)."""
    entity: str
    """``BTCUSDT / trend`` for a pair, the decoded risk name, or the raw namespace."""
    entity_id: str
    size: int
    changed_at: float | None
    pending: bool = False
    """Committed, not yet applied to where the backend keeps it (a start applies it)."""


@dataclass(frozen=True, slots=True)
class RowView:
    key: str
    symbol: str
    strategy: str
    row: SignalRow


@dataclass(frozen=True, slots=True)
class RiskView:
    key: str
    risk_name: str
    position_key: str
    position: RiskActivePosition


@dataclass(frozen=True, slots=True)
class PartialView:
    key: str
    symbol: str
    strategy: str
    signal_id: str
    levels: PartialData


@dataclass(frozen=True, slots=True)
class IntentView:
    """An order intent not final yet: in doubt (pending, sent, unknown) or live at the exchange."""

    key: str
    symbol: str
    strategy: str
    intent: OrderIntent


@dataclass(frozen=True, slots=True)
class Unreadable:
    key: str
    reason: str


@dataclass(slots=True)
class Inventory:
    url: str
    entities: list[EntityInfo] = field(default_factory=list)
    signals: list[RowView] = field(default_factory=list)
    scheduled: list[RowView] = field(default_factory=list)
    risk: list[RiskView] = field(default_factory=list)
    partial: list[PartialView] = field(default_factory=list)
    open_intents: list[IntentView] = field(default_factory=list)
    """Order intents not final (filled, cancelled, rejected), by pair, in the order written."""
    unreadable: list[Unreadable] = field(default_factory=list)
    quarantined: int = 0
    point: str = ""
    """The commit point everything shown was read at (:attr:`Snapshot.point`)."""
    behind: tuple[str, ...] = ()
    """Commits the backend holds and could not read: what is shown is older."""
    foreign_links: tuple[str, ...] = ()
    """Symbolic links inside the root, never followed."""
    not_read: list[str] = field(default_factory=list)
    """State the backend holds that is not shown: backtest-kit 19.x state in a
    file root, or what a ``backtest-kit://`` folder does not present (and why)."""

    @property
    def pending(self) -> list[str]:
        return [entity.key for entity in self.entities if entity.pending]

    @property
    def problems(self) -> bool:
        """What makes ``inspect`` exit 1: links it did not follow, commits it could not
        read, state it does not show."""
        return bool(self.behind or self.foreign_links or self.not_read)

    @property
    def domains(self) -> list[str]:
        return sorted({entity.domain for entity in self.entities})


def decode_value(store: PersistBase[Any], key: str, data: bytes) -> Any:
    """The value as a start would read it, or ``CorruptValueError`` saying why not.

    The store's own parser, so the reason is word for word what a start logs.
    """
    # A private method on purpose: one parser for the command line and a start.
    return store._parse(key, data)


def _pair(segment: str) -> tuple[str, str]:
    try:
        return split_pair(segment)
    except InvalidNameError:
        return segment, "?"


def _entity_name(namespace: str) -> str:
    domain, _, entity = namespace.partition("/")
    if not entity:
        return namespace or "-"
    if domain in PAIRED_DOMAINS and "/" not in entity:
        symbol, strategy = _pair(entity)
        return f"{symbol} / {strategy}"
    try:
        return "/".join(decode_segment(part) for part in entity.split("/"))
    except InvalidNameError:
        return entity


def _add_views(inventory: Inventory, key: str, namespace: str, value: Any) -> None:
    domain, _, entity = namespace.partition("/")
    if value is None or not entity or "/" in entity:
        return
    if domain in ("signal", "schedule"):
        symbol, strategy = _pair(entity)
        rows = inventory.signals if domain == "signal" else inventory.scheduled
        assert isinstance(value, SignalRow | ScheduledSignalRow)  # validated by schema_for
        rows.append(RowView(key, symbol, strategy, value))
    elif domain == "risk":
        for position_key, position in value:
            inventory.risk.append(RiskView(key, _entity_name(namespace), position_key, position))
    elif domain == "partial":
        symbol, strategy = _pair(entity)
        for signal_id, levels in value.items():
            inventory.partial.append(PartialView(key, symbol, strategy, signal_id, levels))
    elif domain == "intent":
        symbol, strategy = _pair(entity)
        for intent in value.values():  # in the order first written
            if not intent.final:
                inventory.open_intents.append(IntentView(key, symbol, strategy, intent))


async def collect_inventory(
    backend: Backend, *, on_key: Callable[[int], None] | None = None
) -> Inventory:
    """Every committed entity of ``backend`` at one commit point, and the domain tables.

    Reads only (:meth:`Backend.snapshot`). A value committed and not applied
    yet is shown with its committed value and marked pending. A value that
    does not decode is listed in ``unreadable`` with the reason a start would
    give when quarantining it.
    """
    snapshot = await backend.snapshot()
    inventory = Inventory(
        backend.url,
        point=snapshot.point,
        behind=snapshot.behind,
        foreign_links=snapshot.foreign_links,
    )
    stores: dict[str, PersistBase[Any]] = {}
    for key, data in snapshot.values.items():
        if on_key is not None:
            on_key(1)
        namespace, name = split_key(key)
        try:
            entity_id = decode_segment(name)
        except InvalidNameError:
            entity_id = name
        pending = key in snapshot.pending
        inventory.entities.append(
            EntityInfo(
                key=key,
                domain=namespace.partition("/")[0] or "-",
                entity=_entity_name(namespace),
                entity_id=entity_id,
                size=len(data),
                # A pending key's file is older than its value: the commit's time is its age.
                changed_at=snapshot.committed_at.get(key)
                if pending
                else await backend.changed_at(key),
                pending=pending,
            )
        )
        store = stores.get(namespace)
        if store is None:
            store = stores[namespace] = store_for(backend, namespace)
        try:
            value = decode_value(store, key, data)
        except CorruptValueError as exc:
            inventory.unreadable.append(Unreadable(key, exc.reason or str(exc)))
            continue
        _add_views(inventory, key, namespace, value)
    for views in (inventory.signals, inventory.scheduled):
        views.sort(key=lambda view: (view.symbol, view.strategy))
    inventory.open_intents.sort(key=lambda view: (view.symbol, view.strategy))
    inventory.not_read = [f"{item.path}: {item.reason}" for item in state_not_read(backend)]
    try:
        inventory.quarantined = sum([1 async for _ in backend.list_quarantine("")])
    except ForeignSymlinkError as exc:  # a linked .quarantine: reported, not looked into
        if exc.path and exc.path not in inventory.foreign_links:
            inventory.foreign_links += (exc.path,)
    return inventory

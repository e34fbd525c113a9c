"""The memory backend: backtest mode, no disk and no network.

Same contract and semantics as the file backend (values are stored as encoded
bytes, so a value that could not be persisted live is refused here too, and a
caller mutating its object after the write does not change what was stored).
No method ever suspends, which is what makes it cheap enough to call on every
simulated tick.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Self

from persistkit.backends._base import (
    ANY_VERSION,
    Backend,
    Expected,
    QuarantineEntry,
    Versioned,
    join_key,
    split_key,
)
from persistkit.errors import ConflictError, EntityNotFoundError, InvalidNameError

__all__ = ["MemoryBackend"]


class MemoryBackend(Backend):
    """Entities in process memory, grouped by namespace."""

    scheme = "memory"
    applies_in_call_order = True  # no method ever suspends

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._spaces: dict[str, dict[str, Versioned]] = {}
        self._quarantine: dict[str, tuple[QuarantineEntry, bytes]] = {}
        self._versions = itertools.count(1)

    @classmethod
    def from_url(cls, url: str) -> Self:
        """``memory://`` or ``memory://name`` (each call makes a new, empty store)."""
        if not url.startswith("memory:"):
            raise InvalidNameError(f"{url!r} is not a memory:// URL")
        return cls(url.removeprefix("memory:").lstrip("/"))

    @property
    def url(self) -> str:
        return f"memory://{self.name}"

    def __repr__(self) -> str:
        return f"MemoryBackend({self.name!r})"

    async def get(self, key: str) -> Versioned | None:
        return self.get_now(key)

    def get_now(self, key: str) -> Versioned | None:
        """:meth:`~persistkit.backends.Backend.get` without the coroutine (nothing here waits)."""
        namespace, _, name = key.rpartition("/")
        space = self._spaces.get(namespace)
        return None if space is None else space.get(name)

    async def get_many(self, keys: Iterable[str]) -> list[Versioned | None]:
        return [await self.get(key) for key in keys]

    def _current(self, key: str) -> Versioned | None:
        namespace, name = split_key(key)
        space = self._spaces.get(namespace)
        return None if space is None else space.get(name)

    def _check_expected(self, key: str, expect: Expected) -> None:
        current = self._current(key)
        if expect is None:
            if current is not None:
                raise ConflictError(f"{key} exists already (create-only write)", key=key)
        elif current is None or current.version != expect:
            raise ConflictError(f"{key} changed since version {expect}", key=key)

    async def put(self, key: str, data: bytes, *, expect: Expected = ANY_VERSION) -> str:
        return self.put_now(key, data, expect=expect)

    def put_now(self, key: str, data: bytes, *, expect: Expected = ANY_VERSION) -> str:
        """:meth:`~persistkit.backends.Backend.put` without the coroutine (nothing here waits)."""
        if expect is not ANY_VERSION:
            self._check_expected(key, expect)
        namespace, _, name = key.rpartition("/")
        space = self._spaces.get(namespace)
        if space is None:
            space = self._spaces[namespace] = {}
        version = str(next(self._versions))
        space[name] = Versioned(data, version)
        return version

    async def delete(self, key: str, *, expect: Expected = ANY_VERSION) -> bool:
        if expect is not ANY_VERSION:
            self._check_expected(key, expect)
        namespace, name = split_key(key)
        space = self._spaces.get(namespace)
        if space is None or space.pop(name, None) is None:
            return False
        if not space:
            del self._spaces[namespace]
        return True

    async def scan(self, namespace: str, *, recursive: bool = False) -> AsyncIterator[str]:
        if recursive:
            below = f"{namespace}/" if namespace else ""
            spaces = [ns for ns in self._spaces if ns == namespace or ns.startswith(below)]
        else:
            spaces = [namespace] if namespace in self._spaces else []
        for space_name in sorted(spaces):
            # A snapshot: the caller may write or delete while it iterates.
            for name in list(self._spaces.get(space_name, ())):
                yield join_key(space_name, name)

    commit_checks_versions = True

    async def commit(
        self,
        writes: Mapping[str, bytes | None],
        *,
        expect: Mapping[str, Expected] | None = None,
    ) -> None:
        # Nothing below can fail half-way, and nothing suspends: atomic as is.
        for key, expected in (expect or {}).items():
            self._check_expected(key, expected)
        for key, data in writes.items():
            if data is None:
                await self.delete(key)
            else:
                await self.put(key, data)

    async def quarantine(self, key: str, reason: str) -> QuarantineEntry:
        current = self._current(key)
        if current is None:
            raise EntityNotFoundError(f"no value at {key} to quarantine")
        now = time.time()
        entry = QuarantineEntry(f"{key}@{time.time_ns()}", key, reason, now)
        self._quarantine[entry.id] = (entry, current.data)
        await self.delete(key)
        return entry

    async def list_quarantine(self, namespace: str = "") -> AsyncIterator[QuarantineEntry]:
        below = f"{namespace}/" if namespace else ""
        for entry, _ in list(self._quarantine.values()):
            if entry.key.startswith(below):
                yield entry

    def _entry(self, entry_id: str) -> tuple[QuarantineEntry, bytes]:
        try:
            return self._quarantine[entry_id]
        except KeyError:
            raise EntityNotFoundError(f"no quarantine entry {entry_id!r}") from None

    async def read_quarantined(self, entry_id: str) -> bytes:
        return self._entry(entry_id)[1]

    async def restore(self, entry_id: str, *, overwrite: bool = False) -> str:
        entry, data = self._entry(entry_id)
        await self.put(entry.key, data, expect=ANY_VERSION if overwrite else None)
        del self._quarantine[entry_id]
        return entry.key

    async def purge(self, entry_id: str) -> None:
        self._entry(entry_id)
        del self._quarantine[entry_id]

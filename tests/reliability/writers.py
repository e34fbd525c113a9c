"""Writers under test: the real file backend and the broken controls the suite must catch.

Each control is the real :class:`FileBackend` with only its write step
replaced, so whatever the harness catches is the missing step and nothing else.
The live lifecycle's tick commit joins :data:`WRITERS` as one more entry whose
``run_step`` commits a whole step at once.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from persistkit.backends.file import TEMP_PREFIX, FileBackend
from persistkit.store import PersistBase

__all__ = [
    "CONTROLS",
    "WRITERS",
    "InPlaceBackend",
    "NoDirFsyncBackend",
    "NoFileFsyncBackend",
    "Step",
    "WriterUnderTest",
    "apply_step",
]

_O_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_O_IN_PLACE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW

Key = tuple[str, str]
"""(entity name, entity id)."""
Step = Mapping[Key, Any]
"""One acknowledged unit of work: new values by key, ``None`` removes."""
Stores = Mapping[str, PersistBase[Any]]


def _write_temp_and_replace(
    backend: FileBackend, dir_fd: int, name: str, data: bytes, *, file_fsync: bool, dir_fsync: bool
) -> None:
    osl = backend._os
    temp = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    fd = osl.open(temp, _O_TEMP, 0o666, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[osl.write(fd, view) :]
        if file_fsync:
            osl.fsync(fd)
    finally:
        osl.close(fd)
    osl.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    if dir_fsync:
        osl.fsync(dir_fd)


class NoFileFsyncBackend(FileBackend):
    """Control: renames a temp file whose bytes were never fsynced."""

    def _write_new_file(self, dir_fd: int, name: str, data: bytes) -> None:
        _write_temp_and_replace(self, dir_fd, name, data, file_fsync=False, dir_fsync=True)


class NoDirFsyncBackend(FileBackend):
    """Control: acknowledges before the rename itself is durable."""

    def _write_new_file(self, dir_fd: int, name: str, data: bytes) -> None:
        _write_temp_and_replace(self, dir_fd, name, data, file_fsync=True, dir_fsync=False)


class InPlaceBackend(FileBackend):
    """Control: truncates and rewrites the target itself, fsyncs included."""

    def _write_new_file(self, dir_fd: int, name: str, data: bytes) -> None:
        osl = self._os
        fd = osl.open(name, _O_IN_PLACE, 0o666, dir_fd=dir_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[osl.write(fd, view) :]
            osl.fsync(fd)
        finally:
            osl.close(fd)
        osl.fsync(dir_fd)


async def apply_step(stores: Stores, step: Step) -> None:
    """The per-entity API: each key written (or removed) durably, one after the other."""
    for (entity, entity_id), value in step.items():
        if value is None:
            await stores[entity].remove_value(entity_id)
        else:
            await stores[entity].write_value(entity_id, value)


@dataclass(frozen=True)
class WriterUnderTest:
    name: str
    backend_class: type[FileBackend]
    broken: bool
    """A control: the harness fails unless it finds violations."""
    run_step: Callable[[Stores, Step], Awaitable[None]] = apply_step
    atomic_steps: bool = False
    """Whether a step of several keys must land all or nothing (tick commits)."""


WRITERS = [WriterUnderTest("FileBackend (persistkit)", FileBackend, broken=False)]
CONTROLS = [
    WriterUnderTest("no file fsync", NoFileFsyncBackend, broken=True),
    WriterUnderTest("no directory fsync", NoDirFsyncBackend, broken=True),
    WriterUnderTest("write in place", InPlaceBackend, broken=True),
]

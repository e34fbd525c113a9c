"""The references: the same work done with bare system calls, no library.

These are what persistkit's file backend is measured against. The durable
replace (temp file, fsync, rename, directory fsync) written as tightly as Python
allows (the directory stays open across writes); ``pwrite`` + ``fsync`` on one
open file is the ceiling of any durable commit on this disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import orjson

__all__ = [
    "drop_page_cache",
    "durable_replace",
    "journal_append",
    "page_cache_droppable",
    "read_json",
    "scan_json",
]

_O_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_O_READ = os.O_RDONLY | os.O_CLOEXEC
_DROP_CACHES = "/proc/sys/vm/drop_caches"


def durable_replace(dir_fd: int, name: str, data: bytes, temp: str) -> None:
    """Temp file, write, fsync, ``os.replace``, fsync the directory."""
    fd = os.open(temp, _O_TEMP, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    os.fsync(dir_fd)


def journal_append(fd: int, offset: int, data: bytes) -> int:
    """One ``pwrite`` and one ``fsync``: a commit journal's record. Returns the next offset."""
    os.pwrite(fd, data, offset)
    os.fsync(fd)
    return offset + len(data)


def read_json(path: str) -> object:
    """open + read + ``orjson.loads`` of one small file."""
    fd = os.open(path, _O_READ)
    try:
        return orjson.loads(os.read(fd, 1 << 16))  # the files are small
    finally:
        os.close(fd)


def scan_json(directory: str) -> int:
    """``os.scandir`` + ``os.read`` + ``orjson.loads`` of every ``*.json``; how many."""
    count = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(".json"):
                read_json(entry.path)
                count += 1
    return count


def page_cache_droppable() -> bool:
    return os.access(_DROP_CACHES, os.W_OK)


def drop_page_cache() -> None:
    """Write back dirty pages, then drop the clean ones (root only)."""
    os.sync()
    with open(_DROP_CACHES, "w") as control:
        control.write("3\n")


def fill_directory(directory: str, names: Iterable[str], data: bytes) -> None:
    """Create ``{name}.json`` files quickly (no fsync: set-up, not measured)."""
    os.makedirs(directory, exist_ok=True)
    for name in names:
        with open(os.path.join(directory, f"{name}.json"), "wb") as handle:
            handle.write(data)

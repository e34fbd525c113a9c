"""The simulated file system's own model of durability, checked call by call."""

from __future__ import annotations

import os

import pytest
from simfs import SimFS, SimulatedCrash

_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL
_DIR = os.O_RDONLY | os.O_DIRECTORY


def _write(sim: SimFS, path: str, data: bytes, *, fsync: bool) -> None:
    fd = sim.open(path, _NEW)
    sim.write(fd, data)
    if fsync:
        sim.fsync(fd)
    sim.close(fd)


def _fsync_dir(sim: SimFS, path: str) -> None:
    fd = sim.open(path, _DIR)
    sim.fsync(fd)
    sim.close(fd)


def test_data_without_fsync_is_lost_and_an_entry_without_dir_fsync_too() -> None:
    sim = SimFS()
    sim.mkdir("/d")
    _fsync_dir(sim, "/")
    _write(sim, "/d/unsynced", b"data", fsync=False)
    _write(sim, "/d/synced", b"data", fsync=True)
    assert sim.durable_state().files() == {"d/": b""}  # neither entry reached the disk
    _fsync_dir(sim, "/d")
    assert sim.durable_state().files() == {"d/": b"", "d/synced": b"data", "d/unsynced": b""}
    assert sim.live_state().files()["d/unsynced"] == b"data"


def test_possible_states_are_in_order_prefixes_with_a_torn_write() -> None:
    sim = SimFS()
    _write(sim, "/f", b"old!", fsync=True)
    _fsync_dir(sim, "/")
    fd = sim.open("/f", os.O_WRONLY | os.O_TRUNC)
    sim.write(fd, b"new value")
    contents = sorted(state.files()["f"] for state in sim.possible_states())
    assert contents == [b"", b"new ", b"new value", b"old!"]


def test_rename_needs_both_directories_fsynced() -> None:
    sim = SimFS()
    sim.mkdir("/a")
    sim.mkdir("/b")
    _write(sim, "/a/x", b"1", fsync=True)
    _fsync_dir(sim, "/a")
    _fsync_dir(sim, "/")
    sim.replace("/a/x", "/b/x")
    _fsync_dir(sim, "/b")
    assert "a/x" in sim.durable_state().files()
    _fsync_dir(sim, "/a")
    files = sim.durable_state().files()
    assert "b/x" in files and "a/x" not in files


def test_the_crash_stops_every_later_call() -> None:
    sim = SimFS(crash_at=2)
    sim.mkdir("/d")
    sim.mkdir("/e")
    with pytest.raises(SimulatedCrash):
        sim.mkdir("/f")
    with pytest.raises(SimulatedCrash):
        sim.stat("/d")
    assert sim.calls == 2


def test_ftruncate_is_durable_only_after_fsync_and_appends_follow_the_new_end() -> None:
    sim = SimFS()
    fd = sim.open("/log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    sim.write(fd, b"record-1")
    sim.fsync(fd)
    _fsync_dir(sim, "/")
    sim.ftruncate(fd, 0)
    assert sim.durable_state().files()["log"] == b"record-1"
    sim.write(fd, b"r2")  # O_APPEND: at the new end, not at the old offset
    assert sim.live_state().files()["log"] == b"r2"
    sim.fsync(fd)
    assert sim.durable_state().files()["log"] == b"r2"


def test_syncfs_makes_data_and_entries_of_every_directory_durable() -> None:
    sim = SimFS()
    sim.mkdir("/d")
    _write(sim, "/d/x", b"data", fsync=False)
    fd = sim.open("/d/x", os.O_WRONLY)
    sim.ftruncate(fd, 2)
    sim.close(fd)
    assert sim.durable_state().files() == {}
    root = sim.open("/", _DIR)
    sim.syncfs(root)
    sim.close(root)
    assert sim.durable_state().files() == {"d/": b"", "d/x": b"da"}
    assert len(sim.possible_states()) == 1  # nothing left that a power cut could undo

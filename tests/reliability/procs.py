"""Running the writer subprocess and checking what it left on a real disk."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import value_problem

from persistkit._store import PersistBase
from persistkit.backends._file import TEMP_PREFIX, FileBackend
from persistkit.backends._journal import JOURNAL_DIR, LEGACY_SUFFIX

__all__ = ["WRITER", "Acks", "TickLog", "spawn_writer", "verify_directory", "verify_ticks"]

WRITER = Path(__file__).with_name("writer_proc.py")


def spawn_writer(*args: str, prefix: list[str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``writer_proc.py`` with ``args``; stdout is a pipe of its acknowledgements."""
    return subprocess.Popen(
        [*(prefix or []), sys.executable, str(WRITER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Unbuffered: readline() must not pull acknowledgements into a buffer
        # that communicate() (which reads the raw pipe) would never see.
        bufsize=0,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(WRITER.parent), os.environ.get("PYTHONPATH")])
            ),
        },
    )


@dataclass
class Acks:
    """The last acknowledged sequence number of each key.

    With ``cut_at`` (a power cut's start, on the monotonic clock the writer
    stamps its acknowledgements with), an acknowledgement stamped at or after
    it is not a promise, as :class:`TickLog` explains: its write may or may not
    be on disk. ``late`` keeps those; ``late_lost`` counts the ones the disk
    did not keep, for the report.
    """

    last: dict[str, int] = field(default_factory=dict)
    late: dict[str, int] = field(default_factory=dict)
    late_lost: int = 0

    def feed(self, output: bytes, *, cut_at: float | None = None) -> int:
        """Read ``ack KEY SEQ [TIME]`` lines; returns the promises (a torn last line is none)."""
        count = 0
        self.late = {}
        for line in output.decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) not in (3, 4) or parts[0] != "ack":
                continue
            key, seq = parts[1], int(parts[2])
            if cut_at is not None and len(parts) == 4 and float(parts[3]) >= cut_at:
                self.late[key] = max(self.late.get(key, 0), seq)
                continue
            self.last[key] = max(self.last.get(key, 0), seq)
            count += 1
        return count


def verify_directory(root: Path, acks: Acks, entity: str = "signal") -> list[str]:
    """What a restarted bot would find wrong: torn values, lost acks, leftovers.

    Runs startup (which repairs), then checks each key against ``acks``: its
    sequence must be the acknowledged one or the next (the write in flight), or
    up to the one after a late acknowledgement (see :class:`Acks`).
    Updates ``acks`` with what is on disk, so the next round continues from it.
    """
    return asyncio.run(_verify(root, acks, entity))


async def _verify(root: Path, acks: Acks, entity: str) -> list[str]:
    problems: list[str] = []
    backend = FileBackend(root)
    store: PersistBase[Any] = PersistBase(entity, backend=backend)
    report = await store.wait_for_init()
    for finding in report.corrupt:
        problems.append(f"torn value {finding.key}: {finding.reason}")
    on_disk: dict[str, int] = {}
    async for entity_id in store.keys():
        value = await store.read_value(entity_id)
        problem = value_problem(value)
        if problem is not None:
            problems.append(f"{entity_id}: {problem}")
            continue
        on_disk[entity_id] = value["seq"]
    for key, seq in acks.last.items():
        have = on_disk.get(key)
        if have is None:
            problems.append(f"lost acknowledged write: {key} seq {seq} is missing")
        elif have < seq:
            problems.append(f"lost acknowledged write: {key} has seq {have}, acknowledged {seq}")
        elif have > max(seq, acks.late.get(key, 0)) + 1:
            problems.append(f"{key} has seq {have}, beyond the write in flight ({seq + 1})")
    acks.late_lost = sum(on_disk.get(key, 0) < seq for key, seq in acks.late.items())
    for key, seq in on_disk.items():
        if key not in acks.last and seq > max(1, acks.late.get(key, 0) + 1):
            problems.append(f"{key} has seq {seq} but was never acknowledged")
    acks.last = on_disk  # from now on the disk is the truth: each loss is reported once
    await backend.aclose()  # its journal descriptors, or the disk stays busy
    directory = root / entity
    if directory.is_dir():
        leftovers = [p.name for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX)]
        if leftovers:
            problems.append(f"temp files left after startup: {leftovers}")
    return problems


@dataclass
class TickLog:
    """What a ``ticks`` writer acknowledged: each instrument's last tick, and the one in flight.

    ``expected`` maps an instrument to the sequence number of the last
    acknowledged tick that wrote it, ``None`` when that tick removed it.

    An fsync still running when ``EXT4_IOC_SHUTDOWN`` is issued can return
    success and yet not survive the remount (seen here: the last append
    acknowledged after the ioctl began was missing in one cut of ten; never one
    acknowledged before it). A real power cut gives no such late answer, so
    acknowledgements stamped at or after ``cut_at`` are not promises: the ticks
    they name, like the one in flight, may or may not be on disk.
    """

    expected: dict[str, int | None] = field(default_factory=dict)
    in_flight: tuple[str, int | None] | None = None
    uncertain: dict[str, set[int | None]] = field(default_factory=dict)
    acknowledged: int = 0

    def feed(self, output: bytes, *, cut_at: float | None = None) -> int:
        """Read ``begin``/``tick`` lines; returns the ticks acknowledged (a torn line is not)."""
        begun: dict[int, tuple[str, int | None]] = {}
        count = 0
        self.in_flight = None
        self.uncertain = {}
        for line in output.decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == "begin" and parts[3] in ("write", "remove"):
                seq = int(parts[1])
                begun[seq] = (parts[2], seq if parts[3] == "write" else None)
                self.in_flight = begun[seq]
            elif len(parts) in (2, 3) and parts[0] == "tick" and int(parts[1]) in begun:
                instrument, value = begun[int(parts[1])]
                self.in_flight = None
                if cut_at is not None and len(parts) == 3 and float(parts[2]) >= cut_at:
                    self.uncertain.setdefault(instrument, set()).add(value)
                    continue
                self.expected[instrument] = value
                count += 1
        self.acknowledged += count
        return count


def verify_ticks(root: Path, log: TickLog) -> list[str]:
    """Start up on ``root`` (replaying dead journals) and check every tick is whole and kept.

    Each instrument's ``signal`` and ``risk`` must carry the same tick (or both
    be absent), and that tick must be its last acknowledged one or the tick in
    flight. ``log`` then takes what is on disk as the truth for the next round.
    """
    return asyncio.run(_verify_ticks(root, log))


async def _verify_ticks(root: Path, log: TickLog) -> list[str]:
    problems: list[str] = []
    backend = FileBackend(root)
    found: dict[str, dict[str, int]] = {}
    for entity in ("signal", "risk"):
        store: PersistBase[Any] = PersistBase(entity, backend=backend)
        report = await store.wait_for_init()
        problems += [f"torn value {finding.key}: {finding.reason}" for finding in report.corrupt]
        async for entity_id in store.keys():
            value = await store.read_value(entity_id)
            problem = value_problem(value)
            if problem is not None:
                problems.append(f"{entity}/{entity_id}: {problem}")
                continue
            found.setdefault(entity_id, {})[entity] = value["seq"]
    await backend.aclose()
    on_disk: dict[str, int | None] = {}
    for instrument in sorted(set(found) | set(log.expected)):
        sides = found.get(instrument, {})
        if len(sides) == 1 or len(set(sides.values())) > 1:
            problems.append(f"torn tick on {instrument}: {sides} (signal and risk differ)")
            continue
        have = next(iter(sides.values()), None)
        on_disk[instrument] = have
        allowed = {log.expected.get(instrument), *log.uncertain.get(instrument, ())}
        if log.in_flight is not None and log.in_flight[0] == instrument:
            allowed.add(log.in_flight[1])
        if have not in allowed:
            problems.append(
                f"lost acknowledged tick on {instrument}: found tick {have}, "
                f"acknowledged {log.expected.get(instrument)}"
            )
    journal_dir = root / JOURNAL_DIR
    if journal_dir.is_dir():
        left = [p.name for p in journal_dir.iterdir() if p.name.endswith(LEGACY_SUFFIX)]
        if left:
            problems.append(f"dead journals left after startup: {left}")
    for entity in ("signal", "risk"):
        directory = root / entity
        if directory.is_dir():
            leftovers = [p.name for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX)]
            if leftovers:
                problems.append(f"temp files left after startup: {leftovers}")
    log.expected = {key: seq for key, seq in on_disk.items() if seq is not None}
    log.in_flight = None
    log.uncertain = {}
    return problems

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

from persistkit.backends.file import TEMP_PREFIX, FileBackend
from persistkit.store import PersistBase

__all__ = ["WRITER", "Acks", "spawn_writer", "verify_directory"]

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
    """The last acknowledged sequence number of each key."""

    last: dict[str, int] = field(default_factory=dict)

    def feed(self, output: bytes) -> int:
        """Read ``ack KEY SEQ`` lines; returns how many (a torn last line is not an ack)."""
        count = 0
        for line in output.decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "ack":
                self.last[parts[1]] = max(self.last.get(parts[1], 0), int(parts[2]))
                count += 1
        return count


def verify_directory(root: Path, acks: Acks, entity: str = "signal") -> list[str]:
    """What a restarted bot would find wrong: torn values, lost acks, leftovers.

    Runs startup (which repairs), then checks each key against ``acks``: its
    sequence must be the acknowledged one or the next (the write in flight).
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
        elif have > seq + 1:
            problems.append(f"{key} has seq {have}, beyond the write in flight ({seq + 1})")
    for key, seq in on_disk.items():
        if key not in acks.last and seq != 1:
            problems.append(f"{key} has seq {seq} but was never acknowledged")
    acks.last = on_disk  # from now on the disk is the truth: each loss is reported once
    directory = root / entity
    if directory.is_dir():
        leftovers = [p.name for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX)]
        if leftovers:
            problems.append(f"temp files left after startup: {leftovers}")
    return problems

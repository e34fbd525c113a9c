"""Faults that need root: a real full disk, and power cuts of a real ext4 file system.

Power cut: the store lives on an ext4 image mounted through a loop device.
``EXT4_IOC_SHUTDOWN`` with ``EXT4_GOING_FLAGS_NOLOGFLUSH`` stops the file
system on the spot, dropping the journal's running transaction and every dirty
page, as a power cut would; after unmount and mount (journal replay) the
restarted bot must find every write it was told was durable.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from common import Control, Result, count, make_value, record
from procs import Acks, TickLog, spawn_writer, verify_directory, verify_ticks
from writers import TICK_JOURNAL_LIMIT

from persistkit import (
    DurabilityUnknownError,
    FileBackend,
    HistoryPolicy,
    PersistBase,
    WriteFailedError,
)
from persistkit.backends._file import TEMP_PREFIX
from persistkit.backends._journal import DEFAULT_JOURNAL_LIMIT

EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2

POWER_CUTS = count(16, 100, "ext4 power cuts")
CONTROL_CUTS = count(4, 10, "ext4 power cuts of the no-dir-fsync control")
TICK_CUTS = count(10, 60, "ext4 power cuts of tick commits")
TICK_CONTROL_CUTS = count(3, 10, "ext4 power cuts of the no-journal-fsync control")
ENOSPC_TRIALS = count(30, 200, "writes on the full tmpfs")

pytestmark = pytest.mark.root

needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: mount (tmpfs, loop-mounted ext4) and the EXT4_IOC_SHUTDOWN ioctl; "
    "CI and the developer machines run it as root",
)


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}")


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points to unmount at the end, whatever happened."""
    mounted: list[Path] = []
    yield mounted
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


def _files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file())


SMALL_HISTORY = {"history": HistoryPolicy(max_bytes=8 << 10), "journal_limit": 8 << 10}
"""A root with history on a small disk: checkpoints and retention often enough to fit."""


@needs_root
@pytest.mark.parametrize(
    ("options", "size"),
    # With history a value lives in the journal, its file, the history's segment and
    # base until a checkpoint folds them: the same values need a few times the room.
    [({"history": None}, "64k"), (SMALL_HISTORY, "256k")],
    ids=["durable-replace", "journaled-with-history"],
)
def test_real_enospc_on_a_small_tmpfs_keeps_the_old_value(
    tmp_path: Path, mounts: list[Path], options: dict[str, Any], size: str
) -> None:
    point = tmp_path / "small"
    point.mkdir()
    _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point))
    mounts.append(point)
    rng = random.Random(7)
    violations: list[str] = []
    failures = successes = 0

    async def scenario() -> None:
        nonlocal failures, successes
        store: PersistBase[Any] = PersistBase(
            "signal", backend=FileBackend(point / "data", **options)
        )
        await store.wait_for_init()
        current = {"k": make_value("k", 1, 100)}
        await store.write_value("k", current["k"])
        for trial in range(ENOSPC_TRIALS):
            key = rng.choice(["k", "k", f"fill{trial}"])
            seq = current[key]["seq"] + 1 if key in current else 1
            value = make_value(key, seq, rng.randrange(100, 40_000))
            try:
                await store.write_value(key, value)
            except WriteFailedError as exc:
                failures += 1
                if "No space left" not in str(exc):
                    violations.append(f"trial {trial}: unexpected error {exc}")
            except DurabilityUnknownError as exc:
                # Committed, then the checkpoint it started ran out of space: the new
                # value is visible (the journal is kept and applied at the next start).
                failures += 1
                current[key] = value
                if "No space left" not in str(exc):
                    violations.append(f"trial {trial}: unexpected error {exc}")
            else:
                successes += 1
                current[key] = value
            temps = [name for name in _files(point) if name.startswith(TEMP_PREFIX)]
            if temps:
                violations.append(f"trial {trial}: temp files left: {temps}")
            for name, expected in current.items():
                if await store.read_value(name) != expected:
                    violations.append(f"trial {trial}: {name} is not its last written value")
            if rng.random() < 0.15 and len(current) > 1:  # free some room now and then
                victim = rng.choice([name for name in current if name != "k"])
                try:
                    await store.remove_value(victim)
                except WriteFailedError:
                    continue  # a removal is a journal commit too: refused, the value kept
                except DurabilityUnknownError:
                    pass  # removed, then its checkpoint ran out of space (as above)
                del current[victim]

    asyncio.run(scenario())
    record(
        Result(
            fault="real ENOSPC"
            + (" (root with history: journaled writes)" if options.get("history") else ""),
            injection=f"store on `mount -t tmpfs -o size={size}`; writes of 100 B - 40 kB values, "
            "overwrites of one key and new keys, some removed now and then",
            expected="WriteFailedError (No space left on device), old value kept, no temp left",
            trials=ENOSPC_TRIALS,
            violations=len(violations),
            counts={"writes refused for lack of space": failures, "writes that fit": successes},
        )
    )
    assert failures >= 5 and successes >= 5, (failures, successes)
    assert violations == [], "\n".join(violations[:20])


class _Ext4Image:
    def __init__(self, directory: Path, mounts: list[Path]) -> None:
        self.image = directory / "ext4.img"
        self.point = directory / "mnt"
        self.point.mkdir()
        self._mounts = mounts
        with open(self.image, "wb") as handle:
            handle.truncate(96 * 1024 * 1024)
        _run("mkfs.ext4", "-q", "-F", str(self.image))

    def mount(self) -> None:
        _run("mount", "-o", "loop", str(self.image), str(self.point))
        self._mounts.append(self.point)

    def unmount(self) -> None:
        for _ in range(50):
            done = subprocess.run(["umount", str(self.point)], capture_output=True, check=False)
            if done.returncode == 0:
                self._mounts.remove(self.point)
                return
            time.sleep(0.1)  # the killed writer may still hold it for a moment
        raise AssertionError(f"cannot unmount {self.point}: {done.stderr!r}")

    def cut_power(self) -> None:
        fd = os.open(self.point, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)


def _cut_cycle(
    disk: _Ext4Image,
    acks: Acks,
    rng: random.Random,
    *,
    backend: str,
    new_keys: bool,
    right_after_acks: int | None,
    journal_limit: int = DEFAULT_JOURNAL_LIMIT,
) -> tuple[int, list[str]]:
    """Mount, write until the cut, remount and check; returns (acks, problems)."""
    disk.mount()
    root = disk.point / "data"
    options = ["--new-keys"] if new_keys else ["--seed", str(rng.randrange(1 << 30))]
    writer = spawn_writer(
        "loop", str(root), "--backend", backend, "--journal-limit", str(journal_limit), *options
    )
    assert writer.stdout is not None
    output = writer.stdout.readline()
    if right_after_acks is None:
        time.sleep(rng.uniform(0.0, 0.4))
    else:
        # Cut the instant the writer says "durable": what it has not made
        # durable by then is lost, which the control must show.
        for _ in range(right_after_acks):
            output += writer.stdout.readline()
    cut_at = time.monotonic()
    disk.cut_power()
    writer.send_signal(signal.SIGKILL)
    rest, _ = writer.communicate()
    output += rest
    acknowledged = acks.feed(output, cut_at=cut_at)
    disk.unmount()
    disk.mount()
    problems = verify_directory(root, acks)
    disk.unmount()
    return acknowledged, problems


WRITE_PATHS = {
    # A root that keeps history (the default): each plain write is a one-key
    # commit of the journal, applied to its file later; the small journal limit
    # puts checkpoints (history archive, journal replaced) inside the cuts.
    "journaled (history on)": ("file", TICK_JOURNAL_LIMIT),
    "durable replace (history=None)": ("no-history", DEFAULT_JOURNAL_LIMIT),
}
WRITE_PATH_CONTROLS = {
    # (writer backend, each write a new key, journal limit)
    "durable replace without the directory fsync": ("no-dir-fsync", True, TICK_JOURNAL_LIMIT),
    # The default limit: no checkpoint (whose syncfs makes every commit before
    # it durable as a side effect) falls inside the run, so any commit
    # acknowledged since start-up is exposed. With a small limit a checkpoint
    # followed nearly every write and, on a loaded machine, the control lost
    # nothing in 4 cuts (CI, stop 23).
    "journal commit acknowledged before its fsync": (
        "no-journal-fsync",
        True,
        DEFAULT_JOURNAL_LIMIT,
    ),
}


@needs_root
def test_power_cuts_on_ext4_keep_every_acknowledged_write(
    tmp_path: Path, mounts: list[Path]
) -> None:
    """Both paths of a plain write, each on its own ext4 image, cut in turn."""
    if shutil.which("mkfs.ext4") is None:
        pytest.fail("mkfs.ext4 is missing (Debian package e2fsprogs)")
    seed = int(os.environ.get("PERSISTKIT_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    print(f"power cuts: {POWER_CUTS} + {CONTROL_CUTS} per control, seed {seed}", file=sys.stderr)
    disks = {}
    for number, path in enumerate(WRITE_PATHS):
        directory = tmp_path / f"path{number}"
        directory.mkdir()
        disks[path] = (_Ext4Image(directory, mounts), Acks())
    violations: list[str] = []
    acknowledged = dict.fromkeys(WRITE_PATHS, 0)
    late = dict.fromkeys(WRITE_PATHS, 0)
    late_lost = dict.fromkeys(WRITE_PATHS, 0)
    for cut in range(POWER_CUTS):
        path = list(WRITE_PATHS)[cut % len(WRITE_PATHS)]
        backend, journal_limit = WRITE_PATHS[path]
        disk, acks = disks[path]
        right_after = rng.randrange(1, 30) if cut // len(WRITE_PATHS) % 2 else None
        count_acks, problems = _cut_cycle(
            disk, acks, rng, backend=backend, new_keys=False, right_after_acks=right_after,
            journal_limit=journal_limit,
        )  # fmt: skip
        acknowledged[path] += count_acks
        late[path] += len(acks.late)
        late_lost[path] += acks.late_lost
        violations += [f"cut {cut} ({path}): {problem}" for problem in problems]
        if cut % 10 == 0:
            print(f"  cut {cut}/{POWER_CUTS}: {len(violations)} violations", file=sys.stderr)

    print(
        f"  acknowledged before the cut: {acknowledged}; keys acknowledged after it began: "
        f"{late}, of which lost: {late_lost}",
        file=sys.stderr,
    )
    controls: list[Control] = []
    control_notes: list[str] = []
    for number, (name, (backend, new_keys, limit)) in enumerate(WRITE_PATH_CONTROLS.items()):
        control_dir = tmp_path / f"control{number}"
        control_dir.mkdir()
        control_image = _Ext4Image(control_dir, mounts)
        control_acks = Acks()
        found: list[str] = []
        for _ in range(CONTROL_CUTS):
            _, problems = _cut_cycle(
                control_image, control_acks, rng, backend=backend, new_keys=new_keys,
                right_after_acks=rng.randrange(20, 60), journal_limit=limit,
            )  # fmt: skip
            found += problems
        print(f"  control {name}: {len(found)} violations", file=sys.stderr)
        controls.append(Control(name, CONTROL_CUTS, len(found)))
        control_notes += [f"control {name}: {problem}" for problem in found[:2]]
    record(
        Result(
            fault="power cut",
            injection="writer subprocess on a loop-mounted ext4 image (96 MiB, default "
            "data=ordered), one image per write path; EXT4_IOC_SHUTDOWN with "
            "EXT4_GOING_FLAGS_NOLOGFLUSH at a random moment (half the cuts: 0-400 ms after "
            "start-up; half: the instant the Nth acknowledgement arrives), SIGKILL, unmount, "
            "mount (journal replay), startup, check",
            expected="every write acknowledged before the cut began present, nothing torn, no "
            "temp after startup; each control caught losing acknowledged writes",
            trials=POWER_CUTS,
            violations=len(violations),
            counts={
                "power cuts": POWER_CUTS,
                **{f"acknowledged writes checked, {path}": n for path, n in acknowledged.items()},
                **{f"keys acknowledged after the cut began, {path}": n for path, n in late.items()},
                **{
                    f"of those, lost (not a promise: see Acks), {path}": n
                    for path, n in late_lost.items()
                },
                "control cuts": CONTROL_CUTS * len(WRITE_PATH_CONTROLS),
            },
            controls=controls,
            notes=control_notes[:4],
        )
    )
    assert all(n > POWER_CUTS // len(WRITE_PATHS) for n in acknowledged.values()), acknowledged
    assert violations == [], "\n".join(violations[:20])
    for control in controls:
        assert control.violations, f"{control.name} lost nothing: not caught"


def _tick_cut_cycle(
    disk: _Ext4Image,
    log: TickLog,
    rng: random.Random,
    *,
    backend: str,
    first: int,
    acks: int | None,
) -> tuple[int, list[str]]:
    """Mount, commit ticks until the cut, remount and check; returns (ticks acked, problems)."""
    disk.mount()
    root = disk.point / "data"
    writer = spawn_writer(
        "ticks", str(root), "--backend", backend, "--first", str(first),
        "--seed", str(rng.randrange(1 << 30)),
    )  # fmt: skip
    assert writer.stdout is not None
    output = writer.stdout.readline()
    if acks is None:
        time.sleep(rng.uniform(0.0, 1.5))  # past the first applier passes and checkpoints
    else:
        seen = 0
        while seen < acks:  # cut the instant the Nth tick is acknowledged
            line = writer.stdout.readline()
            output += line
            seen += line.startswith(b"tick ")
    cut_at = time.monotonic()
    disk.cut_power()
    writer.send_signal(signal.SIGKILL)
    rest, _ = writer.communicate()
    acknowledged = log.feed(output + rest, cut_at=cut_at)
    disk.unmount()
    disk.mount()
    problems = verify_ticks(root, log)
    disk.unmount()
    return acknowledged, problems


@needs_root
def test_power_cuts_on_ext4_keep_every_acknowledged_tick_whole(
    tmp_path: Path, mounts: list[Path]
) -> None:
    seed = int(os.environ.get("PERSISTKIT_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    print(
        f"tick power cuts: {TICK_CUTS} + {TICK_CONTROL_CUTS} control, seed {seed}", file=sys.stderr
    )
    disk = _Ext4Image(tmp_path, mounts)
    log = TickLog()
    violations: list[str] = []
    for cut in range(TICK_CUTS):
        _, problems = _tick_cut_cycle(
            disk, log, rng, backend="file", first=cut * 1_000_000 + 1,
            acks=rng.randrange(1, 400) if cut % 2 else None,
        )  # fmt: skip
        violations += [f"cut {cut}: {problem}" for problem in problems]
        print(f"  tick cut {cut}/{TICK_CUTS}: {len(violations)} violations", file=sys.stderr)

    control_dir = tmp_path / "control"
    control_dir.mkdir()
    control_disk = _Ext4Image(control_dir, mounts)
    control_log = TickLog()
    control_violations: list[str] = []
    for cut in range(TICK_CONTROL_CUTS):
        _, problems = _tick_cut_cycle(
            control_disk, control_log, rng, backend="no-journal-fsync",
            first=cut * 1_000_000 + 1, acks=rng.randrange(20, 200),
        )  # fmt: skip
        control_violations += problems
    print(f"  control: {len(control_violations)} violations", file=sys.stderr)
    record(
        Result(
            fault="power cut during tick commits",
            injection="tick-writer subprocess (transaction of signal + risk per tick, real "
            "applier thread, checkpoint every 64 KiB of journal) on a loop-mounted ext4 image; "
            "EXT4_IOC_SHUTDOWN with EXT4_GOING_FLAGS_NOLOGFLUSH at a random moment (half: "
            "0-1.5 s after start-up; half: the instant the Nth tick is acknowledged), SIGKILL, "
            "unmount, mount, startup (journal replay), check",
            expected="each instrument's signal and risk from the same tick, every acknowledged "
            "tick present, nothing torn, no temp or dead journal left; the writer that "
            "acknowledges before the journal fsync caught losing acknowledged ticks",
            trials=TICK_CUTS,
            violations=len(violations),
            counts={
                "power cuts": TICK_CUTS,
                "acknowledged ticks checked": log.acknowledged,
                "control cuts": TICK_CONTROL_CUTS,
            },
            controls=[
                Control(
                    "commit acknowledged before the journal fsync",
                    TICK_CONTROL_CUTS,
                    len(control_violations),
                )
            ],
            notes=[f"control: {problem}" for problem in control_violations[:3]],
        )
    )
    assert log.acknowledged > TICK_CUTS
    assert violations == [], "\n".join(violations[:20])
    assert control_violations, "the writer acknowledging before the journal fsync lost nothing"

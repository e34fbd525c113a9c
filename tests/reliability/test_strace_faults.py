"""Faults injected by strace into the syscalls of one real write.

A first run under strace lists every syscall of the write (between two marker
writes on stdout) with its ordinal in the process; then, for each one, the
same write runs again with ``-e inject=SYSCALL:signal=SIGKILL:when=N``, and
for fsync, rename, write and the temp file's openat with ``error=EIO`` and
``error=ENOSPC``. The plain write traced is DESIGN §3's durable replace (a root
opened with ``history=None``); on a root that keeps history a plain write is a
one-key journal commit, the path of the tick commit traced below.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from common import Result, make_value, record
from procs import Acks, TickLog, spawn_writer, verify_directory, verify_ticks

from persistkit import FileBackend, PersistBase
from persistkit.backends._file import TEMP_PREFIX

STRACE = shutil.which("strace")
_LINE = re.compile(rb"^(\d+)\s+(\w+)\(")
_PLUMBING = {"getpid", "sendto", "recvfrom", "epoll_wait"}  # the event loop, not the write


VARIANTS = {"overwrite": "signal", "create": "fresh"}
"""Overwrite ``signal/k`` (seq 1 -> 2), or create ``fresh/k`` in a directory not made yet."""
_LABELS = {"signal": "overwrite", "fresh": "create in a new directory"}


def _seed(root: Path) -> None:
    """``signal/k`` at seq 1, written durably (in its file: no history, so no journal);
    no ``fresh`` directory."""
    shutil.rmtree(root, ignore_errors=True)
    store: PersistBase[Any] = PersistBase("signal", backend=FileBackend(root, history=None))
    asyncio.run(store.write_value("k", make_value("k", 1, 500)))


def _strace(root: Path, entity: str, trace: Path, *options: str) -> tuple[int, str]:
    return _strace_writer(["once", str(root), entity], trace, *options)


def _strace_writer(args: list[str], trace: Path, *options: str) -> tuple[int, str]:
    assert STRACE is not None
    writer = spawn_writer(*args, prefix=[STRACE, "-f", "-o", str(trace), *options])
    out, _ = writer.communicate(timeout=120)
    return writer.returncode, out.decode(errors="replace")


def _window(trace: Path) -> list[tuple[str, int, bytes]]:
    """Syscalls between the markers: name, ordinal of that syscall in the process, line."""
    seen: Counter[str] = Counter()
    window: list[tuple[str, int, bytes]] = []
    inside = False
    main_pid = None
    for line in trace.read_bytes().splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        pid, name = match.group(1), match.group(2).decode()
        main_pid = main_pid or pid
        if pid != main_pid:
            continue
        seen[name] += 1
        if b"BEGIN-WRITE" in line:
            inside = True
        elif b"END-WRITE" in line:
            break
        elif inside:
            window.append((name, seen[name], line))
    return window


def _killed_at(trace: Path) -> str | None:
    """The syscall the tracee died in, when it died of SIGKILL after the start marker."""
    last = None
    begun = False
    for line in trace.read_bytes().splitlines():
        begun = begun or b"BEGIN-WRITE" in line
        if b"+++ killed by SIGKILL" in line:
            return last if begun else None
        match = _LINE.match(line)
        if match is not None:
            last = match.group(2).decode()
    return None


def _temps(root: Path, entity: str) -> list[str]:
    directory = root / entity
    if not directory.is_dir():
        return []
    return [p.name for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX)]


def _seq(root: Path, entity: str) -> int | None:
    try:
        value = orjson.loads((root / entity / "k.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return int(value["seq"]) if isinstance(value, dict) else None


Syscall = tuple[str, int, bytes]
"""Name, ordinal of that syscall in the process, the traced line."""


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def traced_write(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[Syscall]]:
    """The entity a variant writes, and the syscalls of its write from a first traced run."""
    if STRACE is None:
        pytest.fail("strace is missing: scripts/install-system-deps.sh installs it")
    entity = VARIANTS[request.param]
    root = tmp_path_factory.mktemp("strace-probe")
    _seed(root / "data")
    code, out = _strace(root / "data", entity, root / "trace")
    assert code == 0 and out.strip().endswith("ok"), out
    window = [call for call in _window(root / "trace") if call[0] not in _PLUMBING]
    names = [name for name, _, _ in window]
    assert {"openat", "write", "fsync", "renameat"} <= set(names), names
    if entity == "fresh":
        # mkdirat: directories below the root are made relative to their verified parent.
        assert {"mkdir", "mkdirat"} & set(names), names
    return entity, window


def _old_and_new(entity: str) -> tuple[int | None, int]:
    return (1, 2) if entity == "signal" else (None, 1)


def test_kill_at_each_syscall_of_a_write(
    traced_write: tuple[str, list[Syscall]], tmp_path: Path
) -> None:
    entity, write_syscalls = traced_write
    old, new = _old_and_new(entity)
    rename_at = next(i for i, call in enumerate(write_syscalls) if call[0].startswith("rename"))
    violations: list[str] = []
    for index, (name, ordinal, line) in enumerate(write_syscalls):
        root = tmp_path / "data"
        _seed(root)
        trace = tmp_path / "trace"
        code, out = _strace(
            root,
            entity,
            trace,
            "-e",
            f"trace={name},write",
            "-e",
            f"inject={name}:signal=SIGKILL:when={ordinal}",
        )
        where = f"kill at {name} #{ordinal} ({line.decode(errors='replace')[:60]})"
        injected = _killed_at(trace) == name
        if code != -9 or "END-WRITE" in out or not injected:
            violations.append(f"{where}: not killed there (exit {code}, injected {injected})")
            continue
        seq = _seq(root, entity)
        allowed = {old} if index < rename_at else {new} if index > rename_at else {old, new}
        if seq not in allowed:
            violations.append(f"{where}: value seq {seq}, expected {sorted(allowed)}")
        acks = Acks({"k": old} if old else {})
        problems = verify_directory(root, acks, entity)
        violations += [f"{where}: {problem}" for problem in problems]
        print(f"  {where}: value seq {seq}", file=sys.stderr)
    record(
        Result(
            fault=f"kill at each syscall of a write ({_LABELS[entity]})",
            injection="strace -f -e inject=SYSCALL:signal=SIGKILL:when=N on the writer "
            "subprocess, once for each syscall of one write (found by a first traced run): "
            + ", ".join(f"{name}#{ordinal}" for name, ordinal, _ in write_syscalls),
            expected="old value before the rename, new after; never torn; no temp after startup",
            trials=len(write_syscalls),
            violations=len(violations),
            counts={"syscalls killed": len(write_syscalls)},
        )
    )
    assert violations == [], "\n".join(violations)


def test_eio_and_enospc_on_fsync_rename_and_write(
    traced_write: tuple[str, list[Syscall]], tmp_path: Path
) -> None:
    entity, write_syscalls = traced_write
    old, new = _old_and_new(entity)
    rename_at = next(i for i, call in enumerate(write_syscalls) if call[0].startswith("rename"))
    cases: list[tuple[str, int, str, int | None]] = []  # syscall, ordinal, error, value after
    for index, (name, ordinal, line) in enumerate(write_syscalls):
        if name == "fsync" and index > rename_at:  # the directory, after the rename
            cases.append((name, ordinal, "DurabilityUnknownError", new))
        elif name in ("fsync", "write", "renameat", "mkdir", "mkdirat"):
            cases.append((name, ordinal, "WriteFailedError", old))
        elif name == "openat" and TEMP_PREFIX.encode() in line:
            cases.append((name, ordinal, "WriteFailedError", old))  # creating the temp file
    violations: list[str] = []
    trials = 0
    for errno_name in ("EIO", "ENOSPC"):
        for name, ordinal, error, seq_after in cases:
            trials += 1
            root = tmp_path / "data"
            _seed(root)
            code, out = _strace(
                root,
                entity,
                tmp_path / "trace",
                "-e",
                f"trace={name}",
                "-e",
                f"inject={name}:error={errno_name}:when={ordinal}",
            )
            where = f"{errno_name} on {name} #{ordinal}"
            outcome = out.strip().splitlines()[-1] if out.strip() else f"exit {code}"
            if not outcome.startswith(error):
                violations.append(f"{where}: got {outcome!r}, expected {error}")
            if _temps(root, entity):
                violations.append(f"{where}: temp files left: {_temps(root, entity)}")
            if _seq(root, entity) != seq_after:
                violations.append(f"{where}: value seq {_seq(root, entity)}, expected {seq_after}")
            print(f"  {where}: {outcome[:100]}", file=sys.stderr)
    record(
        Result(
            fault=f"EIO / ENOSPC on fsync, rename, write, temp openat ({_LABELS[entity]})",
            injection="strace -f -e inject=SYSCALL:error=EIO|ENOSPC:when=N on the writer "
            "subprocess, for each of: "
            + ", ".join(f"{name}#{ordinal} -> {error}" for name, ordinal, error, _ in cases),
            expected="WriteFailedError with the old value kept (DurabilityUnknownError with "
            "the new value visible when the directory fsync fails); no temp file left",
            trials=trials,
            violations=len(violations),
            counts={"injections": trials},
        )
    )
    assert trials >= 10
    assert violations == [], "\n".join(violations)


_FILE_SYSCALLS = {
    "openat", "newfstatat", "fstat", "read", "write", "fsync", "fdatasync", "close", "flock",
    "fchmod", "renameat", "renameat2", "rename", "unlink", "unlinkat", "mkdir", "mkdirat",
    "ftruncate", "syncfs",
}  # fmt: skip
"""What a commit does to the file system; the applier thread's start (mmap, clone3,
futex) is not in it."""


def _seed_tick(root: Path) -> None:
    """``signal/k`` and ``risk/k`` at seq 1 from one committed, checkpointed tick."""
    shutil.rmtree(root, ignore_errors=True)
    writer = spawn_writer("tick-once", str(root))
    out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0 and out.strip().endswith(b"ok"), (out, err)


def test_kill_at_each_syscall_of_a_tick_commit_and_checkpoint(tmp_path: Path) -> None:
    if STRACE is None:
        pytest.fail("strace is missing: scripts/install-system-deps.sh installs it")
    root = tmp_path / "data"
    _seed_tick(root)
    # Each trial starts from a copy of this seeded root: the same bytes as seeding it
    # again, without a writer process per syscall.
    seeded = tmp_path / "seeded"
    shutil.copytree(root, seeded, symlinks=True)
    code, out = _strace_writer(["tick-once", str(root)], tmp_path / "trace")
    assert code == 0 and out.strip().endswith("ok"), out
    calls = [call for call in _window(tmp_path / "trace") if call[0] in _FILE_SYSCALLS]
    names = [name for name, _, _ in calls]
    assert {"write", "fsync", "syncfs", "renameat"} <= set(names), names
    # Killed, not powered off: a record write() that completed is in the page
    # cache and is replayed. Before it the tick is absent; after it, present.
    record_at = next(i for i, call in enumerate(calls) if call[0] == "write" and b"PKJ1" in call[2])
    violations: list[str] = []
    for index, (name, ordinal, line) in enumerate(calls):
        shutil.rmtree(root)
        shutil.copytree(seeded, root, symlinks=True)
        trace = tmp_path / "trace"
        code, out = _strace_writer(
            ["tick-once", str(root)],
            trace,
            "-e", f"trace={name},write",
            "-e", f"inject={name}:signal=SIGKILL:when={ordinal}",
        )  # fmt: skip
        where = f"kill at {name} #{ordinal} ({line.decode(errors='replace')[:60]})"
        if code != -9 or "END-WRITE" in out or _killed_at(trace) != name:
            violations.append(f"{where}: not killed there (exit {code})")
            continue
        log = TickLog(expected={"k": 1}, in_flight=("k", 2))
        problems = verify_ticks(root, log)  # startup replays the dead journal
        violations += [f"{where}: {problem}" for problem in problems]
        seq = log.expected.get("k")
        allowed = {1} if index < record_at else {2} if index > record_at else {1, 2}
        if not problems and seq not in allowed:
            violations.append(f"{where}: tick {seq} after startup, expected {sorted(allowed)}")
        print(f"  {where}: tick {seq}", file=sys.stderr)
    record(
        Result(
            fault="kill at each syscall of a tick commit and its checkpoint",
            injection="strace -f -e inject=SYSCALL:signal=SIGKILL:when=N on a writer subprocess "
            "committing one tick (signal + risk in one transaction) then closing (apply, "
            "syncfs, an empty journal renamed in), once for each file-system syscall of it: "
            + ", ".join(f"{name}#{ordinal}" for name, ordinal, _ in calls),
            expected="after startup (the journal read and checkpointed) both entities at the "
            "old tick before the journal record's write, both at the new one after it; never one "
            "without the other, never torn, no temp or journal left",
            trials=len(calls),
            violations=len(violations),
            counts={"syscalls killed": len(calls)},
        )
    )
    assert violations == [], "\n".join(violations)

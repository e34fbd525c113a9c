"""Faults injected by strace into the syscalls of one real write.

A first run under strace lists every syscall of the write (between two marker
writes on stdout) with its ordinal in the process; then, for each one, the
same write runs again with ``-e inject=SYSCALL:signal=SIGKILL:when=N``, and
for fsync, rename, write and the temp file's openat with ``error=EIO`` and
``error=ENOSPC``.
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
from procs import Acks, spawn_writer, verify_directory

from persistkit import FileBackend, PersistBase
from persistkit.backends.file import TEMP_PREFIX

STRACE = shutil.which("strace")
_LINE = re.compile(rb"^(\d+)\s+(\w+)\(")
_PLUMBING = {"getpid", "sendto", "recvfrom", "epoll_wait"}  # the event loop, not the write


def _seed(root: Path) -> None:
    """``signal/k`` at seq 1, written durably."""
    shutil.rmtree(root, ignore_errors=True)
    store: PersistBase[Any] = PersistBase("signal", backend=FileBackend(root))
    asyncio.run(store.write_value("k", make_value("k", 1, 500)))


def _strace(root: Path, trace: Path, *options: str) -> tuple[int, str]:
    assert STRACE is not None
    writer = spawn_writer("once", str(root), prefix=[STRACE, "-f", "-o", str(trace), *options])
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


def _temps(root: Path) -> list[str]:
    return [p.name for p in (root / "signal").iterdir() if p.name.startswith(TEMP_PREFIX)]


def _seq(root: Path) -> int | None:
    try:
        value = orjson.loads((root / "signal" / "k.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return int(value["seq"]) if isinstance(value, dict) else None


@pytest.fixture(scope="module")
def write_syscalls(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, int, bytes]]:
    if STRACE is None:
        pytest.fail("strace is missing: scripts/install-system-deps.sh installs it")
    root = tmp_path_factory.mktemp("strace-probe")
    _seed(root / "data")
    code, out = _strace(root / "data", root / "trace")
    assert code == 0 and out.strip().endswith("ok"), out
    window = [call for call in _window(root / "trace") if call[0] not in _PLUMBING]
    names = [name for name, _, _ in window]
    assert {"openat", "write", "fsync", "renameat"} <= set(names), names
    return window


def test_kill_at_each_syscall_of_a_write(
    write_syscalls: list[tuple[str, int, bytes]], tmp_path: Path
) -> None:
    rename_at = next(i for i, call in enumerate(write_syscalls) if call[0].startswith("rename"))
    violations: list[str] = []
    for index, (name, ordinal, line) in enumerate(write_syscalls):
        root = tmp_path / "data"
        _seed(root)
        trace = tmp_path / "trace"
        code, out = _strace(
            root,
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
        seq = _seq(root)
        allowed = {1} if index < rename_at else {2} if index > rename_at else {1, 2}
        if seq not in allowed:
            violations.append(f"{where}: value seq {seq}, expected {sorted(allowed)}")
        acks = Acks({"k": 1})
        violations += [f"{where}: {problem}" for problem in verify_directory(root, acks)]
        print(f"  {where}: value seq {seq}", file=sys.stderr)
    record(
        Result(
            fault="kill at each syscall of a write",
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
    write_syscalls: list[tuple[str, int, bytes]], tmp_path: Path
) -> None:
    cases: list[tuple[str, int, str, int]] = []  # syscall, ordinal, expected error, expected seq
    fsyncs = [call for call in write_syscalls if call[0] == "fsync"]
    cases.append(("fsync", fsyncs[0][1], "WriteFailedError", 1))  # the temp file
    cases.append(("fsync", fsyncs[-1][1], "DurabilityUnknownError", 2))  # the directory
    for name, ordinal, line in write_syscalls:
        if name.startswith("rename"):
            cases.append((name, ordinal, "WriteFailedError", 1))
        elif name == "write" and TEMP_PREFIX.encode() not in line:
            cases.append((name, ordinal, "WriteFailedError", 1))  # the value's bytes
        elif name == "openat" and TEMP_PREFIX.encode() in line:
            cases.append((name, ordinal, "WriteFailedError", 1))  # creating the temp file
    violations: list[str] = []
    trials = 0
    for errno_name in ("EIO", "ENOSPC"):
        for name, ordinal, error, seq_after in cases:
            trials += 1
            root = tmp_path / "data"
            _seed(root)
            code, out = _strace(
                root,
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
            if _temps(root):
                violations.append(f"{where}: temp files left by the writer: {_temps(root)}")
            if _seq(root) != seq_after:
                violations.append(f"{where}: value seq {_seq(root)}, expected {seq_after}")
            print(f"  {where}: {outcome[:100]}", file=sys.stderr)
    record(
        Result(
            fault="EIO / ENOSPC on fsync, rename, write (and the temp file's openat)",
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

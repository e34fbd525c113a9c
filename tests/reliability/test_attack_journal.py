"""Attacks on the shared commit journal, with real second processes and real files.

Each test is a break found by hand: it does what an operator or a second
process really does to a running bot's root, then checks what a user would
check (acknowledged writes there, counters exact, errors typed and loud).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("count_in_the_report")
REPORT_AS = "operator and attacker (issue 11 review)"
REPORT_INJECTION = (
    "real processes on one root while an operator removes or shrinks the journal or its "
    "lock, strace injects EIO into the fsyncs that create the journal, or a tmpfs fills up"
)


WORKER = textwrap.dedent(
    """
    import asyncio, os, sys, time
    import persistkit
    from persistkit import ConflictError, FileBackend, PersistBase

    root, n, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

    async def main():
        backend = FileBackend(root)
        store = PersistBase("c", backend=backend)
        await store.wait_for_init()
        for i in range(n):
            while True:
                try:
                    async with persistkit.transaction(backend):
                        await store.update_value("ctr", lambda v: (v or 0) + 1)
                    break
                except ConflictError:
                    continue
            print("ack", flush=True)
            time.sleep(pause)
        await backend.aclose()

    asyncio.run(main())
    """
)

BOT_THEN_OPERATOR = textwrap.dedent(
    """
    import asyncio, json, os, shutil, sys
    import persistkit
    from persistkit import FileBackend, PersistBase

    root, action = sys.argv[1], sys.argv[2]
    journal = os.path.join(root, ".journal", "commits.pkj")

    def operator():
        if action == "rm-journal-dir":
            shutil.rmtree(os.path.join(root, ".journal"))
        elif action == "rm-journal-file":
            os.unlink(journal)
        elif action == "truncate":
            os.truncate(journal, os.path.getsize(journal) - 5)

    async def main():
        backend = FileBackend(root)
        store = PersistBase("c", backend=backend)
        await store.wait_for_init()
        for i in range(3):
            async with persistkit.transaction(backend):
                await store.write_value(f"k{i}", {"v": i})
        print(json.dumps({"acked": [f"k{i}" for i in range(3)]}), flush=True)
        operator()  # while the bot runs, within the applier's delay
        result = {}
        for i in range(3):
            try:
                result[f"k{i}"] = await store.read_value(f"k{i}")
            except BaseException as exc:
                result[f"k{i}"] = {
                    "error": type(exc).__name__,
                    "persist": isinstance(exc, persistkit.PersistError),
                }
        print(json.dumps(result), flush=True)
        os._exit(0)  # a kill -9 right after: no checkpoint on the way out

    asyncio.run(main())
    """
)

READER = textwrap.dedent(
    """
    import asyncio, json, sys
    import persistkit
    from persistkit import FileBackend, PersistBase

    async def main():
        backend = FileBackend(sys.argv[1])
        store = PersistBase("c", backend=backend)
        out = {}
        try:
            await store.wait_for_init()
            for key in sys.argv[2:]:
                try:
                    out[key] = await store.read_value(key)
                except KeyError:
                    out[key] = None
        except persistkit.PersistError as exc:
            out = {"error": type(exc).__name__}
        await backend.aclose()
        print(json.dumps(out), flush=True)

    asyncio.run(main())
    """
)


def _script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _run(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=os.environ
    )


def _read(tmp_path: Path, root: Path, *keys: str) -> dict[str, object]:
    import json

    done = _run(_script(tmp_path, "reader.py", READER), str(root), *keys)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_lock_file_deleted_while_bot_runs_loses_no_increment(tmp_path: Path) -> None:
    """An operator (or a tmp cleaner) removes ``.journal/lock`` while a bot ticks.

    The bot keeps its descriptor of the old lock file; a second process opens
    (and creates) a new one: two processes then hold "the" journal lock at once
    and append with the same sequence numbers. Before the fix: 6000 acknowledged
    increments ended at 5952-5969.
    """
    root = tmp_path / "root"
    root.mkdir()
    worker = _script(tmp_path, "worker.py", WORKER)
    n = 1500
    first = subprocess.Popen(
        [sys.executable, worker, str(root), str(n), "0.0005"], stdout=subprocess.PIPE, text=True
    )
    assert first.stdout is not None
    assert first.stdout.readline().strip() == "ack"  # the bot runs, its lock file open
    (root / ".journal" / "lock").unlink()
    second = subprocess.Popen(
        [sys.executable, worker, str(root), str(n), "0.0005"], stdout=subprocess.PIPE, text=True
    )
    out_first, _ = first.communicate(timeout=60)
    out_second, _ = second.communicate(timeout=60)
    acks = 1 + out_first.count("ack") + out_second.count("ack")
    assert first.returncode == second.returncode == 0
    assert acks == 2 * n
    assert _read(tmp_path, root, "ctr") == {"ctr": 2 * n}


@pytest.mark.parametrize("action", ["rm-journal-dir", "rm-journal-file"])
def test_journal_removed_while_bot_runs_is_not_silent(tmp_path: Path, action: str) -> None:
    """``rm -rf ROOT/.journal`` (or its ``commits.pkj``) while a bot runs.

    The bot's open journal loses its name; the bot takes that for a checkpoint
    by another process ("everything it held is in the files now"), forgets the
    three ticks it just acknowledged and reads them as absent; a restart has
    none of them either. Nothing is raised anywhere: acknowledged ticks dropped
    in silence. Either the bot keeps serving (and re-persists) what it
    acknowledged, or it fails loudly.
    """
    import json

    root = tmp_path / "root"
    root.mkdir()
    done = _run(_script(tmp_path, "bot.py", BOT_THEN_OPERATOR), str(root), action)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    seen = json.loads(lines[-1])
    # EntityNotFoundError is a PersistError, but "absent" is the silent loss itself.
    loud = all(
        isinstance(v, dict) and v.get("persist") and v.get("error") != "EntityNotFoundError"
        for v in seen.values()
    )
    kept = seen == {f"k{i}": {"v": i} for i in range(3)}
    assert kept or loud, f"the bot read its acknowledged ticks as {seen}"


def test_journal_shrunk_under_a_running_bot_raises_a_typed_error(tmp_path: Path) -> None:
    """An operator truncates ``commits.pkj`` (or restores a shorter copy) while a bot runs.

    Every read and tick of the bot then fails with a bare
    ``OSError: [Errno 22] Invalid argument`` (a negative ``pread`` length), not
    a :class:`persistkit.PersistError` such as ``JournalDamagedError`` naming
    the way out; and a restart silently drops the acknowledged last tick as a
    "torn tail".
    """
    import json

    root = tmp_path / "root"
    root.mkdir()
    done = _run(_script(tmp_path, "bot.py", BOT_THEN_OPERATOR), str(root), "truncate")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    for key, value in seen.items():
        if isinstance(value, dict) and "error" in value:
            assert value["persist"], f"{key}: bare {value['error']} instead of a PersistError"
            assert value["error"] == "JournalDamagedError", value


FIRST_WRITE = textwrap.dedent(
    """
    import asyncio, sys
    import persistkit
    from persistkit import FileBackend, PersistBase

    async def main():
        backend = FileBackend(sys.argv[1])
        store = PersistBase("c", backend=backend)
        await store.wait_for_init()
        try:
            await store.write_value("x", 1)
            print("ok", flush=True)
        except BaseException as exc:
            print(type(exc).__name__, isinstance(exc, persistkit.PersistError), flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize("when", [5, 6])
def test_eio_on_fsync_creating_the_journal_is_a_persist_error(tmp_path: Path, when: int) -> None:
    """EIO on an fsync while a process's first write creates the shared journal.

    ``put`` (through ``ensure_open`` and ``_start_generation``) lets a bare
    ``OSError: [Errno 5]`` escape, where every other fsync failure of a write
    is ``WriteFailedError`` or ``DurabilityUnknownError`` (README's table).
    """
    root = tmp_path / "root"
    root.mkdir()
    done = subprocess.run(
        [
            *("strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync"),
            *("-e", f"inject=fsync:error=EIO:when={when}"),
            *(sys.executable, _script(tmp_path, "first.py", FIRST_WRITE), str(root)),
        ],
        capture_output=True,
        text=True,
        timeout=20,
        env=os.environ,
    )
    outcome = done.stdout.strip().splitlines()[-1]
    assert outcome == "ok" or outcome.endswith(" True"), outcome


FILL = textwrap.dedent(
    """
    import asyncio, json, sys
    import persistkit
    from persistkit import FileBackend, PersistBase

    async def main():
        backend = FileBackend(sys.argv[1])
        store = PersistBase("c", backend=backend)
        await store.wait_for_init()
        acked = {}
        for i in range(400):
            key = f"k{i % 40}"
            try:
                async with persistkit.transaction(backend):
                    await store.write_value(key, {"i": i, "pad": "p" * 3000})
            except persistkit.PersistError:
                continue
            acked[key] = i
        print(json.dumps(acked), flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")
def test_full_disk_restart_can_still_read_acknowledged_state(tmp_path: Path) -> None:
    """A bot's ticks fill the disk (journal below its limit), the bot stops, a new one starts.

    The start's recovery insists on a checkpoint, which needs the space the
    journal holds (it only shrinks after the checkpoint): ``wait_for_init`` and
    then every ``read_value`` raise ``DurabilityUnknownError``. The bot cannot
    restore its state at all, though every acknowledged value is in the
    journal, which reads consult anyway.
    """
    import json

    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        root = mount / "root"
        root.mkdir()
        done = _run(_script(tmp_path, "fill.py", FILL), str(root))
        assert done.returncode == 0, done.stderr
        acked = json.loads(done.stdout.strip().splitlines()[-1])
        assert acked
        seen = _read(tmp_path, root, *acked)
        assert seen == {key: {"i": i, "pad": "p" * 3000} for key, i in acked.items()}, str(seen)[
            :300
        ]
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)

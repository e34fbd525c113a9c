"""Attacks on plain writes of a root that keeps history, now one-key commits of the journal.

Each test is a break found by hand with real processes on a real root: a second
process holding the journal lock while a bot updates one counter from two
tasks, a disk that fills up under a group commit while another process reads,
an entity directory swapped for a symbolic link while a bot writes. Each checks
what a user would check: every call returns, a value whose write failed is
never served, a refused write changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from persistkit import FileBackend, ForeignSymlinkError, PersistBase, PersistError

_PYTHONPATH = os.pathsep.join(
    filter(None, [str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH")])
)
_ENV = {**os.environ, "PYTHONPATH": _PYTHONPATH}


def _spawn(
    tmp_path: Path, name: str, text: str, *args: str, prefix: list[str] | None = None
) -> subprocess.Popen[str]:
    script = tmp_path / name
    script.write_text(textwrap.dedent(text))
    return subprocess.Popen(
        [*(prefix or []), sys.executable, str(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_ENV,
    )


TWO_UPDATES = """
    import asyncio, sys
    from persistkit import FileBackend, PersistBase

    async def main():
        backend = FileBackend(sys.argv[1])
        store = PersistBase("c", backend=backend)
        await store.wait_for_init()
        await store.write_value("n", 0)
        print("ready", flush=True)
        sys.stdin.readline()  # another process holds the journal lock from now on
        other = asyncio.create_task(store.write_value("other", 1))
        await asyncio.sleep(0.05)
        first = asyncio.create_task(store.update_value("n", lambda n: n + 1))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(store.update_value("n", lambda n: n + 1))
        await asyncio.sleep(0.05)
        print("started", flush=True)
        await asyncio.gather(other, first, second)
        print(await store.read_value("n"), flush=True)
        await backend.aclose()

    asyncio.run(main())
"""


def test_two_updates_of_one_counter_both_return_while_another_process_commits(
    tmp_path: Path,
) -> None:
    """Two tasks of a bot increment one counter while another process holds the journal lock.

    Both read the same version and build the same record (same bytes, same
    expected version); the second one's flush, finding a leader, drops every
    queued request *equal* to its own (``_Request`` compares by value), the
    first one's too. The first ``update_value`` then never returns: its thread
    leads empty batches forever at full CPU. A plain ``update_value`` of a root
    with history goes through the journal since this change; ``history=None``
    and the durable replace before it return both.
    """
    root = tmp_path / "data"
    bot = _spawn(tmp_path, "bot.py", TWO_UPDATES, str(root))
    assert bot.stdin is not None and bot.stdout is not None
    try:
        assert bot.stdout.readline().strip() == "ready", bot.stderr.read() if bot.stderr else ""
        lock = os.open(root / ".journal" / "lock", os.O_RDWR)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # what another bot's commit or checkpoint holds
            bot.stdin.write("go\n")
            bot.stdin.flush()
            assert bot.stdout.readline().strip() == "started"
        finally:
            os.close(lock)  # released
        try:
            out, err = bot.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            bot.kill()
            bot.communicate()
            pytest.fail(
                "one of two concurrent update_value calls never returned (30 s after the "
                "other process let go of the journal lock)"
            )
        assert bot.returncode == 0, err
        assert out.strip().splitlines()[-1] == "2"
    finally:
        if bot.poll() is None:
            bot.kill()
            bot.communicate()


FILL_THEN_GROUP_COMMIT = """
    import asyncio, os, sys
    from persistkit import FileBackend, PersistBase

    root = sys.argv[1]

    async def main():
        backend = FileBackend(root)
        store = PersistBase("c", backend=backend)
        await store.wait_for_init()
        await store.write_value("a", {"v": 0})
        await store.write_value("b", {"v": 0})
        filler = os.open(os.path.join(root, "filler"), os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(filler, b"x" * 4096)
        except OSError:
            pass  # the disk is full
        os.close(filler)
        # The journal grows inside its last page only: the first record fits, the second not.
        slack = -os.path.getsize(os.path.join(root, ".journal", "commits.pkj")) % 4096
        print("filled", flush=True)
        results = await asyncio.gather(
            store.write_value("a", {"v": "A" * (slack - 120)}),
            store.write_value("b", {"v": "B" * 3000}),
            return_exceptions=True,
        )
        print(" ".join(type(r).__name__ for r in results), flush=True)
        os._exit(0)

    asyncio.run(main())
"""


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")
def test_a_write_that_failed_on_a_full_disk_is_never_served_to_another_process(
    tmp_path: Path,
) -> None:
    """A bot's two writes share one append on a disk that fills up; another process reads.

    The append is short (the first record whole, the second cut by ENOSPC);
    the writer then cuts the file back and reports ``WriteFailedError``
    ("nothing was committed") for both. A reader that looked between the short
    write and the cut has served the first value, which was never committed,
    and from then on every read it makes raises ``JournalDamagedError`` (the
    journal is shorter than it read). strace delays the writer's ``ftruncate``
    by a second to widen that window; the disk, the short write and the
    ENOSPC are real.
    """
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is missing: scripts/install-system-deps.sh installs it")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        root = mount / "root"
        root.mkdir()
        writer = _spawn(
            tmp_path,
            "writer.py",
            FILL_THEN_GROUP_COMMIT,
            str(root),
            prefix=[
                strace,
                "-f",
                "-qq",
                "-o",
                os.devnull,
                "-e",
                "trace=ftruncate",
                "-e",
                "inject=ftruncate:delay_enter=1000000",
            ],
        )
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "filled"
        seen, errors = asyncio.run(_read_until_exit(root, writer))
        out, err = writer.communicate(timeout=60)
        assert out.split() == ["WriteFailedError", "WriteFailedError"], err
        assert seen == [{"v": 0}], f"values of 'a' served: {[str(v)[:20] for v in seen]}"
        assert errors == [], errors[:3]
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def _read_until_exit(
    root: Path, writer: subprocess.Popen[str]
) -> tuple[list[object], list[str]]:
    """Read ``a`` as another process of the root does, until ``writer`` exits."""
    backend = FileBackend(root)
    store: PersistBase[object] = PersistBase("c", backend=backend)
    seen: list[object] = []
    errors: list[str] = []
    while writer.poll() is None:
        try:
            value = await store.read_value("a")
        except PersistError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        if value not in seen:
            seen.append(value)
    try:
        await backend.aclose()
    except PersistError:
        pass
    return seen, errors


SWAPPER = """
    import ctypes, os, sys, time

    # renameat2(RENAME_EXCHANGE): the directory and the link trade names atomically,
    # so that the entity directory is never missing (a write would make a new one).
    libc = ctypes.CDLL(None, use_errno=True)
    AT_FDCWD, RENAME_EXCHANGE = -100, 2

    def exchange(a, b):
        if libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE):
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))

    root = sys.argv[1]
    directory, aside = os.path.join(root, "c"), os.path.join(root, "c-real")
    os.symlink("c-real", aside)
    print("swapping", flush=True)
    for _ in range(int(sys.argv[2])):
        exchange(directory, aside)  # c is a link to the real directory now
        time.sleep(0.0005)
        exchange(directory, aside)  # c is the directory again
        time.sleep(0.002)
    os.unlink(aside)
"""


async def test_a_write_refused_for_a_symbolic_link_is_not_committed(tmp_path: Path) -> None:
    """An entity directory is swapped for a link to itself and back while a bot writes.

    README: a write that would go through a link "raises ForeignSymlinkError
    and touches nothing". A plain write checks the directory before its
    journal append and writes its file after: swapped in between, the call
    raises ForeignSymlinkError while its record is committed, served to every
    reader and applied once the link is gone.
    """
    root = tmp_path / "data"
    backend = FileBackend(root)
    store: PersistBase[dict[str, int]] = PersistBase("c", backend=backend)
    await store.wait_for_init()
    await store.write_value("k", {"n": 0})
    swapper = _spawn(tmp_path, "swapper.py", SWAPPER, str(root), "3000")
    assert swapper.stdout is not None
    assert swapper.stdout.readline().strip() == "swapping"
    refused_yet_committed: list[int] = []
    acknowledged = 0
    n = 0
    try:
        while swapper.poll() is None and not refused_yet_committed:
            n += 1
            try:
                await store.write_value("k", {"n": n})
                acknowledged = n
            except ForeignSymlinkError:
                try:
                    if (await store.read_value("k"))["n"] == n:
                        refused_yet_committed.append(n)
                except ForeignSymlinkError:
                    pass  # not served from the journal: read through the link, refused
    finally:
        swapper.wait(timeout=60)
    assert swapper.returncode == 0, swapper.stderr.read() if swapper.stderr else ""
    await backend.aclose()
    assert refused_yet_committed == [], (
        f"write {refused_yet_committed[0]} raised ForeignSymlinkError and is committed all the same"
    )
    reopened = FileBackend(root)
    assert await PersistBase("c", backend=reopened).read_value("k") == {"n": acknowledged}
    await reopened.aclose()


WRITE_THEN_DIE = """
    import asyncio, os, sys
    from persistkit import FileBackend, PersistBase

    async def main():
        backend = FileBackend(sys.argv[1], journal_limit=2048)
        await PersistBase("c", backend=backend).write_value("k", {"n": 1})
        os._exit(0)  # killed right after its write: no checkpoint on the way out

    asyncio.run(main())
"""


async def test_a_link_on_one_entity_directory_does_not_refuse_writes_of_another(
    tmp_path: Path,
) -> None:
    """A bot dies after writing ``c/k``; an operator moves ``c`` aside and links it back.

    Another bot then writes only entity ``d``, which no link is on the way to.
    Once the journal passes its limit, each of its plain writes checkpoints,
    the checkpoint applies ``c/k`` through the link and raises
    ``ForeignSymlinkError``: every write of ``d`` raises it, and every one of
    them is committed all the same (and the journal, never checkpointed, grows
    without bound). Before this change a plain write of ``d`` never
    checkpointed.
    """
    root = tmp_path / "data"
    writer = _spawn(tmp_path, "writer.py", WRITE_THEN_DIE, str(root))
    _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    os.rename(root / "c", root / "c-moved")
    os.symlink("c-moved", root / "c")
    backend = FileBackend(root, journal_limit=2048)
    store: PersistBase[dict[str, object]] = PersistBase("d", backend=backend)
    await store.wait_for_init()
    refused_yet_committed = []
    for i in range(10):
        try:
            await store.write_value("x", {"i": i, "pad": "p" * 400})
        except ForeignSymlinkError:
            if (await store.read_value("x"))["i"] == i:
                refused_yet_committed.append(i)
    with contextlib.suppress(ForeignSymlinkError):
        await backend.aclose()  # its checkpoint meets the link on c: refused, as it should be
    assert refused_yet_committed == [], (
        f"writes {refused_yet_committed} of d raised ForeignSymlinkError (for the link on c) "
        "and are committed all the same"
    )


PLAIN_WRITER = """
    import asyncio, sys
    from persistkit import FileBackend, PersistBase

    async def main():
        backend = FileBackend(sys.argv[1], journal_limit=200)  # a checkpoint every commit or two
        store = PersistBase("b", backend=backend)
        for i in range(int(sys.argv[2])):
            await store.write_value("x", {"i": i})
        await backend.aclose()

    asyncio.run(main())
"""


def test_threads_reading_while_another_process_checkpoints_get_values_not_oserrors(
    tmp_path: Path,
) -> None:
    """Four threads of a bot read one key of its backend while another bot plain-writes it.

    The other bot's plain writes are journal commits now, so its checkpoints
    replace the journal file again and again. Each reading thread that sees
    the replacement closes the old journal's descriptor under the view lock,
    while another thread's ``refresh`` fast path ``fstat``s that descriptor
    without it: ``read_value`` raises a bare ``OSError: [Errno 9] Bad file
    descriptor`` (not a ``PersistError``), and a descriptor number reused
    meanwhile is ``fstat``ed as the journal. README: "Commits from several
    threads and tasks share fsyncs"; "Reads take no lock".
    """
    root = tmp_path / "data"
    backend = FileBackend(root)

    async def first() -> None:
        await PersistBase[dict[str, int]]("b", backend=backend).write_value("x", {"i": -1})

    asyncio.run(first())
    writer = _spawn(tmp_path, "writer.py", PLAIN_WRITER, str(root), "400")
    untyped: list[str] = []
    reads = 0

    def read_until_the_writer_stops() -> None:
        nonlocal reads

        async def loop() -> None:
            nonlocal reads
            store: PersistBase[dict[str, int]] = PersistBase("b", backend=backend)
            while writer.poll() is None and len(untyped) < 10:
                try:
                    await store.read_value("x")
                    reads += 1
                except PersistError:
                    pass
                except OSError as exc:
                    untyped.append(repr(exc))

        asyncio.run(loop())

    threads = [threading.Thread(target=read_until_the_writer_stops) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    asyncio.run(backend.aclose())
    assert untyped == [], f"{len(untyped)} reads raised {untyped[0]} ({reads} reads returned)"


async def test_a_read_through_a_swapped_link_never_says_the_value_is_absent(
    tmp_path: Path,
) -> None:
    """A bot reads an acknowledged value while its entity directory is swapped for a link.

    Each read must return the value or raise ``ForeignSymlinkError`` (README:
    a read through a link raises it and touches nothing). Some reads raise
    ``EntityNotFoundError`` instead: the bot was told its value does not exist.
    The confined open looked at what refused it (a link) after the swap back,
    saw a directory and passed on "not a directory": it now opens the name again.
    """
    root = tmp_path / "data"
    backend = FileBackend(root)
    store: PersistBase[dict[str, int]] = PersistBase("c", backend=backend)
    await store.wait_for_init()
    await store.write_value("k", {"n": 1})
    await backend.checkpoint()  # read from its file, not from the journal
    swapper = _spawn(tmp_path, "swapper.py", SWAPPER, str(root), "2000")
    assert swapper.stdout is not None
    assert swapper.stdout.readline().strip() == "swapping"
    outcomes: dict[str, int] = {}
    try:
        while swapper.poll() is None and "EntityNotFoundError" not in outcomes:
            try:
                outcome = "value" if await store.read_value("k") == {"n": 1} else "other value"
            except PersistError as exc:
                outcome = type(exc).__name__
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    finally:
        swapper.wait(timeout=60)
    await backend.aclose()
    assert set(outcomes) <= {"value", "ForeignSymlinkError"}, outcomes


FORKING_BOT = """
    import asyncio, os, sys, threading, time
    from persistkit import FileBackend, PersistBase, PersistError

    backend = FileBackend(sys.argv[1], history=None, lock_timeout=2)
    store = PersistBase("f", backend=backend)
    stop = threading.Event()

    def fork_workers():
        children = []
        while not stop.is_set():
            time.sleep(0.01)
            pid = os.fork()
            if pid == 0:
                time.sleep(3)  # a worker that lives on without exec
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.waitpid(pid, 0)

    async def main():
        await store.wait_for_init()
        forker = threading.Thread(target=fork_workers)
        forker.start()
        errors = []
        for n in range(int(sys.argv[2])):
            try:
                await store.write_value("k", {"n": n})
            except PersistError as exc:
                errors.append(type(exc).__name__)
                break
        stop.set()
        await asyncio.to_thread(forker.join)
        print(" ".join(errors) or "none", flush=True)

    asyncio.run(main())
"""


def test_a_fork_during_a_durable_write_leaves_the_parent_its_directory_lock(
    tmp_path: Path,
) -> None:
    """A bot on a ``history=None`` root forks workers from a thread while it writes.

    README: a child gets "its own lock descriptors" and nothing it does can
    cost the parent. A fork while the durable replace holds the entity
    directory's ``flock`` gives the child a copy of that descriptor, so the
    lock outlives the parent's write for as long as the child lives: the
    parent's next write of that directory raised ``LockTimeoutError``. The
    journal's fork handlers covered its own locks only. A child now closes its
    copies of the locked directory descriptors at once (``_file.py``, **Fork**).
    """
    bot = _spawn(tmp_path, "bot.py", FORKING_BOT, str(tmp_path / "data"), "2000")
    out, err = bot.communicate(timeout=60)
    assert bot.returncode == 0, err
    assert out.strip() == "none", f"the parent's write raised {out.strip()}"


START_WITHOUT_HISTORY = """
    import asyncio, sys
    from persistkit import FileBackend, PersistBase

    async def main():
        backend = FileBackend(sys.argv[1], history=None)
        await PersistBase("other", backend=backend).wait_for_init()  # its start checkpoints
        await backend.aclose()

    asyncio.run(main())
"""


async def test_a_process_without_history_does_not_erase_acknowledged_writes_from_it(
    tmp_path: Path,
) -> None:
    """A bot keeping history plain-writes ``k`` twice; a tool opens the root with ``history=None``.

    The tool's start checkpoints the shared journal, and a backend without
    history replaces the journal without archiving it: both acknowledged
    writes vanish from the history. ``read_value(as_of=...)`` just after each
    acknowledgement then says the value did not exist, and ``persistkit
    history`` lists only later changes. Plain writes reach the history only
    through the journal since this change, so every plain write is exposed.
    """
    root = tmp_path / "data"
    backend = FileBackend(root)
    store: PersistBase[dict[str, int]] = PersistBase("h", backend=backend)
    await store.wait_for_init()
    acknowledged_at: dict[int, int] = {}
    for i in (1, 2):
        await store.write_value("k", {"i": i})
        acknowledged_at[i] = -(-time.time_ns() // 1_000_000)  # the next millisecond
        await asyncio.sleep(0.005)
    tool = _spawn(tmp_path, "tool.py", START_WITHOUT_HISTORY, str(root))
    _, err = tool.communicate(timeout=60)
    assert tool.returncode == 0, err
    seen: dict[int, object] = {}
    for i, at_ms in acknowledged_at.items():
        try:
            seen[i] = await store.read_value("k", as_of=at_ms)
        except PersistError as exc:
            seen[i] = type(exc).__name__
    await backend.aclose()
    assert seen == {1: {"i": 1}, 2: {"i": 2}}


INCREMENTING_BOT = """
    import asyncio, sys
    from persistkit import FileBackend, PersistBase

    async def main():
        backend = FileBackend(sys.argv[1])
        store = PersistBase("c", backend=backend)
        await store.wait_for_init()

        async def increment(times):
            for _ in range(times):
                await store.update_value("n", lambda n: (n or 0) + 1)

        await asyncio.gather(*[increment(int(sys.argv[2])) for _ in range(4)])
        print("done", flush=True)
        await backend.aclose()

    asyncio.run(main())
"""


def test_two_bots_of_four_tasks_incrementing_one_counter_all_finish(tmp_path: Path) -> None:
    """README: "Two processes x 100 increments end at 200", here with four tasks in each.

    No test process holds any lock: the two bots' commits contend for the
    journal lock by themselves, and a task whose commit moved to a worker
    thread is dropped by an equal request of another task (see
    ``test_two_updates_of_one_counter_both_return_while_another_process_commits``).
    Its bot then spins in empty batches, holding the journal lock most of the
    time, and the other bot starves for it: neither finishes.
    """
    root = tmp_path / "data"
    bots = [_spawn(tmp_path, f"bot{i}.py", INCREMENTING_BOT, str(root), "200") for i in (0, 1)]
    outcomes = []
    for bot in bots:
        try:
            out, err = bot.communicate(timeout=60)
            outcomes.append(out.strip() if bot.returncode == 0 else err[-300:])
        except subprocess.TimeoutExpired:
            bot.kill()
            bot.communicate()
            outcomes.append("never finished (60 s)")
    assert outcomes == ["done", "done"]

    async def counter() -> object:
        backend = FileBackend(root)
        try:
            return await PersistBase[int]("c", backend=backend).read_value("n")
        finally:
            await backend.aclose()

    assert asyncio.run(counter()) == 2 * 4 * 200

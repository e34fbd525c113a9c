"""Many processes, one truth (issue 11): real second processes on one root.

Each test drives real processes (``mp_agent.py``, the same interpreter) through
the public API, kills them with ``SIGKILL`` where the case says so, and checks
what a user would check: the value every process reads, the value a restarted
bot reads, exit codes and files. ``PERSISTKIT_LONG=1`` repeats the fault loops
more often.

Cases of issue 11 covered here: 1, 2, 3, 4, 5, 6, 9, 10, 12.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from common import count

import persistkit
from persistkit import ConflictError, PersistBase, PersistError

AGENT = Path(__file__).with_name("mp_agent.py")
SRC = Path(persistkit.__file__).resolve().parent.parent
APPLY_WAIT = 1.6
"""Longer than the file backend's background apply of a commit (about 0.5 s)."""
BOT = {"symbol": "BTCUSDT", "strategy": "trend", "risk": "main"}
CHECKER = {"symbol": "CHECK", "strategy": "restart", "risk": "checker"}

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("count_in_the_report")]
REPORT_AS = "second process (issue 11)"
REPORT_INJECTION = (
    "real processes (mp_agent.py, the same interpreter) on one root, driven through the "
    "public API; SIGKILL, fork, faketime and strace fsync EIO where the test says"
)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


class Proc:
    """One ``mp_agent.py`` process; ``call`` sends a command and waits for its reply."""

    def __init__(
        self,
        root: Path,
        name: str,
        *,
        prefix: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.stderr_path = root.parent / f"{name}-{time.monotonic_ns()}.stderr"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in wait()
        self.popen = subprocess.Popen(
            [*(prefix or []), sys.executable, str(AGENT), str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=_env(env),
        )
        self.pid = self.popen.pid
        self._lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line)
        self._lines.put(b"")

    def send(self, op: str, **args: Any) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        self.popen.stdin.flush()

    def recv(self, timeout: float = 60.0) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.name}: no reply in {timeout} s{self.stderr()}") from None
        if not line:
            raise AssertionError(f"{self.name}: exited without a reply{self.stderr()}")
        return json.loads(line)

    def call(self, op: str, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
        self.send(op, **args)
        return self.recv(timeout)

    def ok(self, op: str, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
        """``call`` that must succeed: the acknowledgement."""
        reply = self.call(op, timeout, **args)
        assert reply["ok"], f"{self.name} {op} {args}: {reply}{self.stderr()}"
        return reply

    def stderr(self) -> str:
        self._stderr.flush()
        text = self.stderr_path.read_text(errors="replace").strip()
        return f"\n--- {self.name} stderr ---\n{text[-3000:]}" if text else ""

    def kill9(self) -> None:
        """``kill -9``, and reap it."""
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = 60.0) -> int:
        code = self.popen.wait(timeout)
        self._stderr.close()
        return code


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Every process a test started; the survivors are killed afterwards."""
    started: list[Proc] = []
    yield started
    for proc in started:
        if proc.popen.poll() is None:
            proc.popen.kill()
        proc.popen.wait()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


def start(
    procs: list[Proc],
    root: Path,
    name: str,
    *,
    session: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    env: dict[str, str] | None = None,
    open_root: bool = True,
) -> Proc:
    """A process that opened ``root`` (as a live session when ``session``).

    ``open_root=False``: a process that only takes locks, like a tool that
    never opens a store.
    """
    proc = Proc(root, name, prefix=prefix, env=env)
    procs.append(proc)
    if open_root:
        proc.ok("open", session=session)
    return proc


def restart_and_read(
    procs: list[Proc], root: Path, keys: list[str], *, session: dict[str, str] = CHECKER
) -> dict[str, Any]:
    """What a restarted bot reads: a new process starts a live session, reads, closes."""
    proc = start(procs, root, "restart", session=session)
    values = proc.ok("read", keys=keys)["values"]
    proc.ok("close")
    proc.wait()
    return values


def session_for(tag: str) -> dict[str, str]:
    """A live session of its own (two processes may not run the same pair)."""
    return {"symbol": f"SYM{tag}", "strategy": "s", "risk": f"risk{tag}"}


def cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "persistkit", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
    )


# -- case 1: compare-and-set across processes, plain and in transactions ---------------------

INCREMENTS = 100


@pytest.mark.parametrize(
    ("mode_a", "mode_b"),
    [
        ("plain", "plain"),
        ("tx", "plain"),
        ("tx", "tx"),
        ("tick", "plain"),
        ("tick", "tick"),
    ],
)
def test_two_processes_increment_one_counter_exactly(
    procs: list[Proc], root: Path, mode_a: str, mode_b: str
) -> None:
    """Case 1: 2 processes x 100 ``update_value(+1)``: exactly 200, in every mix.

    ``tx`` is ``async with persistkit.transaction():``, ``tick`` a ``LiveSession.tick()``,
    one increment per block; a block that raises ``ConflictError`` is run again.
    """
    agents = []
    for name, mode in (("A", mode_a), ("B", mode_b)):
        session = session_for(name) if mode == "tick" else None
        agents.append((start(procs, root, name, session=session), mode))
    for proc, mode in agents:
        proc.send("incr", key="counter", n=INCREMENTS, tx=mode != "plain")
    acknowledged = 0
    for proc, _ in agents:
        reply = proc.recv(timeout=120)
        assert reply["ok"], f"{proc.name}: {reply}{proc.stderr()}"
        acknowledged += reply["done"]
    seen = {
        f"{proc.name} reads": proc.ok("read", keys=["counter"])["values"].get("counter")
        for proc, _ in agents
    }
    for proc, _ in agents:
        proc.ok("close")
        proc.wait()
    seen["after restart"] = restart_and_read(procs, root, ["counter"]).get("counter")
    assert acknowledged == 2 * INCREMENTS
    assert seen == {
        "A reads": 2 * INCREMENTS,
        "B reads": 2 * INCREMENTS,
        "after restart": 2 * INCREMENTS,
    }, f"{2 * INCREMENTS} increments acknowledged; seen: {seen}"


# -- case 2: a commit is never undone by an older one ------------------------------------------


@pytest.mark.parametrize(
    "end",
    [
        "clean close",
        "kill -9 at once",
        "kill -9 after the apply",
        "kill -9 of A at once, B still running",
    ],
)
def test_plain_write_after_another_process_commit_is_kept(
    procs: list[Proc], root: Path, end: str
) -> None:
    """Case 2: A commits k in a transaction, B then writes k plainly: B's value wins, always.

    Whoever reads (A, B, a restarted bot, even while B still runs) and however
    A and B end.
    """
    a = start(procs, root, "A")
    b = start(procs, root, "B")
    a.ok("write", key="k", value="A-commit", tx=True)
    b.ok("write", key="k", value="B-plain", tx=False)
    seen: dict[str, Any] = {}
    if end == "kill -9 at once":
        a.kill9()
        b.kill9()
    elif end == "kill -9 of A at once, B still running":
        a.kill9()
        seen["restart beside B"] = restart_and_read(procs, root, ["k"]).get("k")
        seen["B reads"] = b.ok("read", keys=["k"])["values"].get("k")
        b.ok("close")
        b.wait()
    else:
        time.sleep(APPLY_WAIT)  # A's background apply has run by now
        seen["A reads"] = a.ok("read", keys=["k"])["values"].get("k")
        seen["B reads"] = b.ok("read", keys=["k"])["values"].get("k")
        if end == "clean close":
            for proc in (a, b):
                proc.ok("close")
                proc.wait()
        else:
            a.kill9()
            b.kill9()
    seen["after restart"] = restart_and_read(procs, root, ["k"]).get("k")
    expected = {name: "B-plain" for name in seen}
    assert seen == expected, f"B's plain write was acknowledged last; seen: {seen}"


def test_alternating_commits_of_two_processes_survive_kill9(procs: list[Proc], root: Path) -> None:
    """Case 2: A and B commit k in turn; each commit is what the other reads next.

    Both are then killed with ``kill -9``; the restart restores the newest
    acknowledged value (the last commit is A's, whose journal began first).
    """
    problems = []
    for round_ in range(count(2, 10, "multiprocess: alternating commits, both kill -9")):
        base = root / f"round{round_}"
        base.mkdir()
        a = start(procs, base, "A")
        b = start(procs, base, "B")
        writer, reader = a, b
        value = None
        for step in range(5):  # A, B, A, B, A
            value = f"{writer.name}-{step}"
            writer.ok("write", key="k", value=value, tx=True)
            read = reader.ok("read", keys=["k"])["values"].get("k")
            if read != value:
                problems.append(
                    f"round {round_}: {reader.name} read {read!r} after {value!r} was acknowledged"
                )
            writer, reader = reader, writer
        a.kill9()
        b.kill9()
        restored = restart_and_read(procs, base, ["k"]).get("k")
        if restored != value:
            problems.append(f"round {round_}: restart restored {restored!r}, not {value!r}")
    assert problems == [], "\n".join(problems)


# -- case 3: readers never change recovery ------------------------------------------------------


def _bot_ticks(bot: Proc, first: int, count_: int, pad: int = 0) -> int:
    """``count_`` acknowledged ticks writing ``tick`` = n (and ``n{n}``); the last n.

    ``pad``: that many more bytes per tick, so that a reader spends longer on
    the journal.
    """
    last = first
    for n in range(first, first + count_):
        bot.ok("tick", values={"tick": n, f"n{n}": n, "pad": "x" * pad})
        last = n
    return last


def _journal_files(root: Path) -> list[Path]:
    directory = root / ".journal"
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.rglob("*") if path.is_file())


def test_reader_holding_journal_locks_never_makes_restart_stale(
    procs: list[Proc], root: Path
) -> None:
    """Case 3: while a reader holds shared locks on the journal files (as preflight does
    while it reads them), a bot killed with ``kill -9`` restarts.

    The restart reads the latest acknowledged tick, or fails clearly (a
    ``PersistError``); it never proceeds on stale state, and later restarts never
    replay the dead journal over ticks acknowledged since.
    """
    bot = start(procs, root, "bot", session=BOT)
    last = _bot_ticks(bot, 1, 30)
    bot.kill9()
    # Every file a reader could lock while it reads the journal. persistkit's
    # readers lock none of them; ``.journal/lock`` is the committers' own, and a
    # foreign process holding it makes commits wait and then fail clearly
    # (tests/test_tick_commits_on_disk.py), which is not what this case is about.
    journals = [path for path in _journal_files(root) if path.name != "lock"]
    assert journals, "the killed bot left no journal under ROOT/.journal"
    reader = start(procs, root, "reader", open_root=False)
    reader.ok("flock", paths=[str(path) for path in journals], exclusive=False)

    problems = []
    restarted = Proc(root, "bot-restart")
    procs.append(restarted)
    reply = restarted.call("open", session=BOT, timeout=120)
    if reply["ok"]:
        seen = restarted.ok("read", keys=["tick"])["values"].get("tick")
        if seen != last:
            problems.append(f"restart beside a reader read tick {seen}, acknowledged {last}")
        last = _bot_ticks(restarted, last + 1, 5)
        restarted.ok("close")
        restarted.wait()
    elif not reply["persist"]:
        problems.append(f"restart beside a reader failed without a PersistError: {reply}")
    reader.ok("unlock")
    reader.ok("close")
    seen = restart_and_read(procs, root, ["tick"], session=BOT).get("tick")
    if seen != last:
        problems.append(f"restart after the reader left read tick {seen}, acknowledged {last}")
    assert problems == [], "\n".join(problems)


def test_cli_readers_during_restart_never_make_it_stale(procs: list[Proc], root: Path) -> None:
    """Case 3: ``persistkit preflight`` and ``inspect`` run in a loop while a killed bot
    restarts: every restart reads the latest acknowledged tick."""
    stop = threading.Event()
    cli_runs = 0

    def readers() -> None:
        nonlocal cli_runs
        while not stop.is_set():
            for command in ("preflight", "inspect"):
                cli(command, str(root))
                cli_runs += 1

    threads = [threading.Thread(target=readers, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    problems = []
    try:
        last = 0
        bot = start(procs, root, "bot", session=BOT)
        for round_ in range(count(3, 30, "multiprocess: restarts beside CLI readers")):
            last = _bot_ticks(bot, last + 1, 40, pad=100_000)
            bot.kill9()
            bot = Proc(root, f"bot{round_}")
            procs.append(bot)
            reply = bot.call("open", session=BOT, timeout=120)
            if not reply["ok"]:
                problems.append(f"round {round_}: restart failed: {reply}")
                bot.kill9()
                bot = start(procs, root, "bot", session=BOT)
            seen = bot.ok("read", keys=["tick"])["values"].get("tick")
            if seen != last:
                problems.append(f"round {round_}: restart read tick {seen}, acknowledged {last}")
        bot.ok("close")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert cli_runs > 0
    assert problems == [], "\n".join(problems)


# -- case 4: fork ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "child_does",
    ["commits", "closes its backend", "commits and closes its backend"],
)
def test_fork_child_never_costs_the_parent_its_acknowledged_writes(
    procs: list[Proc], root: Path, child_does: str
) -> None:
    """Case 4: parent commits, forks; the child uses the inherited store; the parent
    commits 4 more ticks and is killed with ``kill -9``: the restart has the
    parent's latest tick. A child that reports success has its write kept; a child
    may instead get a clear ``PersistError``."""
    parent = start(procs, root, "parent")
    parent.ok("tick", values={"parent": 1})
    actions: list[dict[str, Any]] = []
    if "commits" in child_does:
        actions.append({"op": "tick", "values": {"child": "from the child"}})
    if "closes" in child_does:
        actions.append({"op": "close"})
    forked = parent.ok("fork", actions=actions)
    for reply in forked["child"]:
        assert reply["ok"] or reply["persist"], f"child failed without a clear error: {reply}"
    child_committed = "commits" in child_does and forked["child"][0]["ok"]
    for n in range(2, 6):
        parent.ok("tick", values={"parent": n})
    parent.kill9()
    values = restart_and_read(procs, root, ["parent", "child"])
    expected: dict[str, Any] = {"parent": 5}
    if child_committed:
        expected["child"] = "from the child"
    assert values == expected, f"restart read {values}; child replies: {forked['child']}"


# -- case 5: a damaged journal is never silent, never deleted -------------------------------------

MAGIC = b"PKJ1"


def _record_offsets(data: bytes) -> list[int]:
    offsets, at = [], data.find(MAGIC)
    while at != -1:
        offsets.append(at)
        at = data.find(MAGIC, at + 1)
    return offsets


def _damage_record_3(procs: list[Proc], root: Path) -> tuple[Path, bytes]:
    """10 acknowledged ticks, ``kill -9`` before the apply, one bit flipped in record 3.

    Tick n writes ``r{n}`` = n and ``last`` = n. Returns the journal and its bytes.
    """
    for _attempt in range(3):
        shutil.rmtree(root)
        root.mkdir()
        bot = start(procs, root, "bot", session=BOT)
        for n in range(1, 11):
            bot.ok("tick", values={f"r{n}": n, "last": n})
        bot.kill9()
        # The README's layout: {entity}/{id}.json. Not applied yet: the journal holds them.
        if not any((root / "mp" / f"r{n}.json").exists() for n in range(4, 11)):
            break
    else:
        pytest.fail("the ticks were applied before kill -9 in 3 attempts: case not reached")
    candidates = [(path, path.read_bytes()) for path in _journal_files(root)]
    candidates = [(path, data) for path, data in candidates if len(_record_offsets(data)) >= 10]
    assert len(candidates) == 1, (
        f"expected one journal with 10 records (found by {MAGIC!r}) under ROOT/.journal: "
        f"{[str(path) for path, _ in candidates]}; the journal format changed, update this test"
    )
    path, data = candidates[0]
    offsets = _record_offsets(data)
    # The last byte of record 3 is inside its payload (the value of r3 or last).
    flip_at = offsets[3] - 1
    damaged = bytearray(data)
    damaged[flip_at] ^= 0x04
    path.write_bytes(bytes(damaged))
    return path, bytes(damaged)


def test_bit_flip_in_journal_record_is_never_silent(procs: list[Proc], root: Path) -> None:
    """Case 5: a damaged record followed by valid ones is damage, not a torn tail.

    The start refuses with an error naming ``persistkit journal salvage``; the
    journal is not deleted; ``persistkit preflight`` exits 1 naming it. No start
    may come up with records 4 to 10 silently gone.
    """
    journal, damaged = _damage_record_3(procs, root)
    restarted = Proc(root, "bot-restart")
    procs.append(restarted)
    reply = restarted.call("open", session=BOT)
    if reply["ok"]:
        values = restarted.ok("read", keys=[f"r{n}" for n in range(1, 11)] + ["last"])["values"]
        pytest.fail(f"the start accepted the damaged journal; it then read {values}")
    restarted.kill9()
    assert reply["persist"], reply
    assert "persistkit journal salvage" in reply["message"], reply["message"]
    assert journal.exists(), "the damaged journal was deleted"
    assert journal.read_bytes() == damaged
    result = cli("preflight", str(root))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert journal.name in output, output


def test_salvage_applies_records_before_the_damage_and_keeps_the_journal(
    procs: list[Proc], root: Path
) -> None:
    """Case 5: ``persistkit journal salvage ROOT`` applies records 1-2, keeps the damaged
    journal (in the quarantine) and reports what was left out; then a start works."""
    # API pending: the `persistkit journal salvage ROOT` command.
    journal, damaged = _damage_record_3(procs, root)
    result = cli("journal", "salvage", str(root))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    kept = [path for path in root.rglob("*") if path.is_file() and path.read_bytes() == damaged]
    assert kept, "the damaged journal's bytes are kept nowhere under the root"
    assert journal.name in output, output
    values = restart_and_read(procs, root, [f"r{n}" for n in range(1, 11)] + ["last"], session=BOT)
    assert values == {"r1": 1, "r2": 2, "last": 2}


# -- case 6: a failed commit fsync means one thing, however the process ends ----------------------


def _attach_strace(pid: int, when: int) -> subprocess.Popen[bytes]:
    """strace on every thread of ``pid``: the ``when``-th ``fsync`` from now fails with EIO."""
    tracer = subprocess.Popen(
        [
            "strace",
            "-f",
            "-p",
            str(pid),
            "-o",
            os.devnull,
            "-e",
            "trace=fsync,fdatasync",
            "-e",
            f"inject=fsync,fdatasync:error=EIO:when={when}",
        ],
        stderr=subprocess.PIPE,
    )
    assert tracer.stderr is not None
    line = tracer.stderr.readline()  # "strace: Process N attached"
    if b"attached" not in line:
        tracer.kill()
        pytest.skip(f"strace cannot attach here: {line.decode(errors='replace').strip()}")
    threading.Thread(target=tracer.stderr.read, daemon=True).start()
    time.sleep(0.3)  # the other threads' "attached" lines
    return tracer


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize("end", ["clean close", "kill -9"])
def test_failed_commit_fsync_leaves_the_tick_visible_however_the_process_ends(
    procs: list[Proc], root: Path, end: str
) -> None:
    """Case 6: the fsync of a tick's commit fails with EIO (strace injection).

    The tick raises ``DurabilityUnknownError``; its value is visible (as after a
    plain write's failed directory fsync) in the process, and after a restart,
    whether the process closed cleanly or was killed with ``kill -9``.
    """
    bot = start(procs, root, "bot", session=BOT)
    bot.ok("tick", values={"before": 1})  # the journal exists; the next fsync is tick 2's
    tracer = _attach_strace(bot.pid, when=1)
    try:
        reply = bot.call("tick", values={"k": 2})
    finally:
        tracer.terminate()  # detaches: nothing else fails (strace counts per thread)
        tracer.wait()
    assert not reply["ok"], "the injected EIO did not reach the tick's commit"
    seen = {
        "durability unknown": reply["durability_unknown"],
        "read in the process": bot.ok("read", keys=["k"])["values"].get("k"),
    }
    if end == "clean close":
        bot.call("close")  # its outcome is not the point; what it leaves is
        bot.wait()
    else:
        bot.kill9()
    seen["after restart"] = restart_and_read(procs, root, ["k"], session=BOT).get("k")
    assert seen == {"durability unknown": True, "read in the process": 2, "after restart": 2}, (
        f"seen: {seen}; the tick raised {reply}"
    )


# -- case 9: a lock wait never blocks the event loop ----------------------------------------


async def _heartbeat(beats: list[float]) -> None:
    while True:
        await asyncio.sleep(0.01)
        beats.append(time.monotonic())


async def test_lock_wait_keeps_the_event_loop_running(procs: list[Proc], root: Path) -> None:
    """Case 9: another process holds the lock a plain write takes (the commit journal's:
    on a root that keeps history, the default, a plain write is a journal commit); the
    write waits for it, and a heartbeat task keeps beating during the wait."""
    persistkit.configure(mode="live", base_dir=root)
    store: PersistBase[Any] = PersistBase("ent", base_dir=root)
    await store.wait_for_init()
    await store.write_value("k", 1)
    holder = start(procs, root, "holder", open_root=False)
    holder.ok("flock", paths=[str(root / ".journal" / "lock")], exclusive=True)
    hold = 1.5
    threading.Timer(hold, lambda: holder.send("unlock")).start()
    beats: list[float] = []
    heart = asyncio.create_task(_heartbeat(beats))
    await asyncio.sleep(0.05)
    began, before = time.monotonic(), len(beats)
    await store.write_value("k", 2)
    during, waited = len(beats) - before, time.monotonic() - began
    heart.cancel()
    holder.recv()
    assert waited > hold / 2, (
        f"the write did not wait for the other process's lock ({waited:.2f} s): "
        "the lock moved, make the holder hold the new one"
    )
    assert during > 0, f"the event loop stood still for the whole {waited:.2f} s wait"
    assert await store.read_value("k") == 2


async def test_lock_wait_times_out_with_a_typed_error(procs: list[Proc], root: Path) -> None:
    """Case 9: a wait for a lock another process holds gives up after a configurable
    timeout with a clear ``PersistError``; the event loop keeps running meanwhile."""
    # API pending: FileBackend(root, lock_timeout=seconds) and its error class.
    backend = persistkit.FileBackend(root, lock_timeout=0.5)  # type: ignore[call-arg]
    store: PersistBase[Any] = PersistBase("ent", backend=backend)
    await store.write_value("k", 1)
    holder = start(procs, root, "holder", open_root=False)
    holder.ok("flock", paths=[str(root / ".journal" / "lock")], exclusive=True)  # as case 9
    beats: list[float] = []
    heart = asyncio.create_task(_heartbeat(beats))
    began = time.monotonic()
    with pytest.raises(PersistError, match=r"(?i)lock") as raised:
        await asyncio.wait_for(store.write_value("k", 2), timeout=20)
    waited = time.monotonic() - began
    heart.cancel()
    holder.ok("unlock")
    assert 0.4 < waited < 10, (waited, raised.value)
    assert beats, "the event loop stood still during the wait"
    assert await store.read_value("k") == 1
    await backend.aclose()


# -- case 10: concurrent ticks in one process ------------------------------------------------


@pytest.mark.parametrize("backend", ["file", "memory"])
@pytest.mark.parametrize("on_conflict", ["give up", "run again"])
async def test_gathered_ticks_never_lose_an_update(
    root: Path, backend: str, on_conflict: str
) -> None:
    """Case 10: ``asyncio.gather`` of 10 ticks, each ``update_value(+1)`` on one key.

    The value equals the number of ticks that did not raise ``ConflictError``
    (all 10 when a lost tick is run again, as ``LiveSession.run`` may do).
    """
    if backend == "memory":
        persistkit.configure(mode="backtest", base_dir=root)
    else:
        persistkit.configure(mode="live", base_dir=root)
    store: PersistBase[Any] = PersistBase("ticks", base_dir=root)
    await store.wait_for_init()

    async def tick() -> None:
        while True:
            try:
                async with persistkit.transaction():
                    await store.update_value("n", lambda v: (v or 0) + 1)
                    await asyncio.sleep(0.01)  # the rest of the tick: an exchange call, say
            except ConflictError:
                if on_conflict == "run again":
                    continue
                raise
            return

    outcomes = await asyncio.gather(*(tick() for _ in range(10)), return_exceptions=True)
    unexpected = [o for o in outcomes if o is not None and not isinstance(o, ConflictError)]
    assert unexpected == []
    acknowledged = sum(outcome is None for outcome in outcomes)
    if on_conflict == "run again":
        assert acknowledged == 10
    assert await store.read_value("n") == acknowledged


# -- case 12: a wall clock stepped back never reorders replay -----------------------------------

HOUR_NS = 3600 * 10**9


def _clock_behind() -> tuple[list[str] | None, dict[str, str] | None]:
    """Run a process with its wall clock one hour behind: faketime, else the agent's own."""
    faketime = shutil.which("faketime")
    if faketime is not None:
        return [faketime, "-f", "-1h"], {"FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    return None, {"MP_CLOCK_OFFSET_NS": str(-HOUR_NS)}


def test_clock_stepped_back_never_reorders_replay(procs: list[Proc], root: Path) -> None:
    """Case 12: A commits K; 1 s later B, its clock 1 hour behind, commits K. Both are
    killed with ``kill -9``: the restart restores B's value (the later commit)."""
    problems = []
    for round_ in range(count(1, 5, "multiprocess: clock stepped back, both kill -9")):
        base = root / f"round{round_}"
        base.mkdir()
        a = Proc(base, "A")
        procs.append(a)
        prefix, env = _clock_behind()
        b = Proc(base, "B", prefix=prefix, env=env)
        procs.append(b)
        clock_a = a.ok("open")["time_ns"]
        clock_b = b.ok("open")["time_ns"]
        assert clock_b < clock_a - HOUR_NS // 2, "B's clock is not behind"
        a.ok("write", key="K", value="A", tx=True)
        time.sleep(1.0)
        b.ok("write", key="K", value="B", tx=True)
        a.kill9()
        b.kill9()
        restored = restart_and_read(procs, base, ["K"]).get("K")
        if restored != "B":
            problems.append(f"round {round_}: the restart restored {restored!r}, not 'B'")
    assert problems == [], "\n".join(problems)

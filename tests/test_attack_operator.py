"""What an on-call operator broke with the command line beside real bot processes (issue 12).

Each test is one attack that got through on main: the CLI runs as a
subprocess against a real folder, next to a real bot process killed for real.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def persistkit(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "persistkit", *map(str, args)],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=120,
    )


# A bot that, once its session holds the root, forks a worker (what
# multiprocessing's default "fork" start method, or a ProcessPoolExecutor, does
# on Linux). The worker does nothing with persistkit: it waits for its stdin
# to close and exits.
FORKING_BOT = """
import asyncio, json, os, sys
import persistkit
from persistkit import LiveSession

async def main():
    root = sys.argv[1]
    persistkit.configure(mode="live", base_dir=root)
    session = LiveSession([("BTCUSDT", "trend_follow")], "main-portfolio", base_dir=root)
    await session.start()
    worker = os.fork()
    if worker == 0:
        sys.stdin.read()
        os._exit(0)
    print(json.dumps({"bot": os.getpid(), "worker": worker}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

RESTART = """
import asyncio, sys
import persistkit
from persistkit import LiveSession

async def main():
    root = sys.argv[1]
    persistkit.configure(mode="live", base_dir=root)
    session = LiveSession([("BTCUSDT", "trend_follow")], "main-portfolio", base_dir=root)
    await session.start()
    await session.aclose()
    print("restarted", flush=True)

asyncio.run(main())
"""


@pytest.fixture
def bot_killed_beside_its_worker(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A bot killed with ``kill -9`` while a worker it forked lives on: (root, dead bot's pid)."""
    root = tmp_path / "data"
    script = tmp_path / "forking_bot.py"
    script.write_text(FORKING_BOT)
    bot = subprocess.Popen(
        [sys.executable, str(script), str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    assert bot.stdin is not None and bot.stdout is not None
    worker = 0
    try:
        pids: dict[str, int] = json.loads(bot.stdout.readline())
        worker = pids["worker"]
        bot.send_signal(signal.SIGKILL)
        bot.wait()
        yield root, pids["bot"]
    finally:
        bot.kill()
        bot.wait()
        bot.stdin.close()  # the worker's stdin too: it exits
        if worker:
            try:
                os.waitpid(worker, 0)
            except ChildProcessError:  # not our child: the bot's, reaped by init
                pass


def status_json(root: Path) -> tuple[int, Any]:
    done = persistkit("status", root, "--json")
    return done.returncode, json.loads(done.stdout)


def test_a_bot_killed_with_a_forked_worker_alive_is_shown_gone_and_can_restart(
    tmp_path: Path, bot_killed_beside_its_worker: tuple[Path, int]
) -> None:
    """A forked worker must not keep a killed bot's live-session locks.

    A bot that uses a process pool (multiprocessing forks by default on Linux)
    is killed with ``kill -9``; its workers live on. They inherited the
    session's lock descriptors, so on main the locks stay held: ``persistkit
    status`` shows the dead pid as "alive" and "healthy" (exit 0), every write
    command refuses naming a process that no longer exists, and the restarted
    bot fails with ``InstanceLockedError`` until the operator finds and kills
    the orphaned workers. The operator loses the restart, and the truth.
    """
    root, dead_pid = bot_killed_beside_its_worker
    code, report = status_json(root)
    alive = [s["pid"] for s in report["sessions"]["running"] if s["alive"]]
    assert dead_pid not in alive, f"status says the killed bot (pid {dead_pid}) is alive"
    assert [s["pid"] for s in report["sessions"]["gone"]] == [dead_pid]
    assert code == 1

    script = tmp_path / "restart.py"
    script.write_text(RESTART)
    restart = subprocess.run(
        [sys.executable, str(script), str(root)],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=60,
    )
    assert restart.returncode == 0, restart.stderr[-600:]


def test_an_import_key_too_long_for_a_path_is_refused_naming_its_line(tmp_path: Path) -> None:
    """Every key is checked before anything is written, and a bad one is named by its line.

    Each folder of a key is held to 200 bytes, but not their number: a key of
    25 folders of 200 bytes passes the check, then the import dies on the
    file system with a bare ``[Errno 36] File name too long``, naming no line
    of the file. The README promises "a bad line: exit 2, nothing written,
    the line and key named"; the operator gets an OS error to decode instead.
    """
    deep_key = "bot/" + "/".join(["d" * 200] * 25)
    source = tmp_path / "fix.jsonl"
    source.write_text(
        json.dumps({"key": "bot/ok", "value": 1})
        + "\n"
        + json.dumps({"key": deep_key, "value": 2})
        + "\n"
    )
    destination = tmp_path / "data"
    destination.mkdir()
    done = persistkit("import", source, destination)
    assert done.returncode == 2
    assert "Errno" not in done.stderr
    assert f"{source.name}:2" in done.stderr, done.stderr[:300]
    assert not [path for path in destination.rglob("*.json")]


def limit_file_size_to_64_kib() -> None:
    """In the CLI's process: writes past 64 KiB fail (``EFBIG``), as a full disk fails them."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))


def test_an_export_that_runs_out_of_space_leaves_no_temp_file_and_names_its_file(
    tmp_path: Path,
) -> None:
    """An export that cannot be written gives its space back and says which file failed.

    On a full disk (here: a 64 KiB file-size limit, the same failed ``write``)
    the export on main exits 2 with a bare ``[Errno 27] File too large`` (on a
    tmpfs: ``[Errno 28] No space left on device``), naming no file, and
    leaves its hidden ``.NAME.tmp-*`` behind, as large as the space it
    could take: the disk stays full after the failed export, so the bot's
    next commit on that disk fails too. Closing the temp file re-raises the
    write error, and the clean-up that should remove it never runs.
    """
    source = tmp_path / "source.jsonl"
    source.write_text(
        "".join(
            json.dumps({"key": f"bot/e{index}/v", "value": {"pad": "x" * 500}}) + "\n"
            for index in range(400)
        )
    )
    root = tmp_path / "data"
    assert persistkit("import", source, root).returncode == 0
    exports = tmp_path / "exports"
    exports.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "persistkit", "export", str(root), str(exports / "state.jsonl")],
        capture_output=True,
        text=True,
        env=environment(),
        preexec_fn=limit_file_size_to_64_kib,
        timeout=120,
    )
    assert done.returncode == 2
    assert sorted(path.name for path in exports.iterdir()) == []
    assert "state.jsonl" in done.stderr, done.stderr[-300:]


# A bot whose live session keeps its state in a folder below the configured
# root (``configure(base_dir=ROOT)``, ``LiveSession(base_dir=ROOT/bot-1)``):
# its journal and locks are ``ROOT/bot-1/.journal`` and ``ROOT/bot-1/.locks``.
SUBFOLDER_BOT = """
import asyncio, json, os, sys
import persistkit
from persistkit import LiveSession, PersistBase

async def main():
    root = sys.argv[1]
    persistkit.configure(mode="live", base_dir=root)
    folder = os.path.join(root, "bot-1")
    session = LiveSession([("BTCUSDT", "trend_follow")], "main-portfolio", base_dir=folder)
    await session.start()
    progress = PersistBase("progress", folder)

    async def tick(n):
        await progress.write_value("tick", n)

    def acknowledge(n):
        print(json.dumps({"ack": n}), flush=True)

    await session.run(tick, interval=0.01, after_commit=acknowledge)

asyncio.run(main())
"""


@pytest.fixture
def subfolder_bot(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """The bot above, running, after it acknowledged tick 5: (ROOT, process)."""
    root = tmp_path / "data"
    root.mkdir()
    script = tmp_path / "subfolder_bot.py"
    script.write_text(SUBFOLDER_BOT)
    bot = subprocess.Popen(
        [sys.executable, str(script), str(root)],
        stdout=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    assert bot.stdout is not None
    try:
        while json.loads(bot.stdout.readline())["ack"] < 5:
            pass
        yield root, bot
    finally:
        bot.kill()
        bot.wait()


def test_a_session_in_a_folder_below_the_root_is_seen_by_import_and_status(
    subfolder_bot: tuple[Path, subprocess.Popen[str]],
) -> None:
    """A write into ROOT is refused while a session below it runs, and status shows it.

    The README's ROOT is the configured ``base_dir``; a bot's session may keep
    its state in a folder below it. On main, ``persistkit status ROOT`` says
    "none running" (exit 0) beside the ticking bot, and ``import ROOT
    --overwrite`` writes straight into the bot's files, exit 0, no lock
    looked at: exactly the fix that the bot's journal replay undoes after its
    next ``kill -9``, which issue 12 set out to prevent.
    """
    root, bot = subfolder_bot
    _, report = status_json(root)
    assert [s["pid"] for s in report["sessions"]["running"]] == [bot.pid]
    fix = root.parent / "fix.jsonl"
    fix.write_text(json.dumps({"key": "bot-1/progress/tick", "value": -1}) + "\n")
    done = persistkit("import", fix, root, "--overwrite")
    assert done.returncode == 1, done.stdout[-400:]
    assert str(bot.pid) in done.stderr


def test_an_export_after_kill_9_includes_a_subfolder_sessions_commits(
    tmp_path: Path, subfolder_bot: tuple[Path, subprocess.Popen[str]]
) -> None:
    """What ``export ROOT`` writes is the committed state, also of a session below ROOT.

    After a ``kill -9`` the session's last commits wait in
    ``ROOT/bot-1/.journal``. On main ``export ROOT`` ignores that journal and
    exports the files only ("no journal commit yet: the files"), exit 0: here
    no value at all, though the bot acknowledged at least 5 ticks. An export
    taken to move hosts silently drops acknowledged ticks, issue 12's first
    complaint.
    """
    root, bot = subfolder_bot
    bot.send_signal(signal.SIGKILL)
    bot.wait()
    assert bot.stdout is not None
    acknowledged = [json.loads(line)["ack"] for line in bot.stdout.read().splitlines()]
    last_ack = max(acknowledged, default=5)
    exported = tmp_path / "state.jsonl"
    done = persistkit("export", root, exported)
    values = {
        row["key"]: row.get("value")
        for row in map(json.loads, exported.read_text().splitlines() if exported.exists() else [])
    }
    assert done.returncode != 0 or values.get("bot-1/progress/tick", -1) >= last_ack, (
        f"exit {done.returncode}, exported {values}, the bot acknowledged tick {last_ack}"
    )

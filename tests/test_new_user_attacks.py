"""A new user and an operator follow the README literally, in real processes.

Each case runs a fresh Python process (or the real command line) the way a bot
or a deploy would: variables in its environment, files on disk, a real fork and
real threads, and checks what a user would look at afterwards: where the files
went, what the process printed, how it exited.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
VARIABLES = ("PERSISTKIT_MODE", "PERSISTKIT_BASE_DIR", "PERSISTKIT_BACKEND")


def child_environment(**variables: str | Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in VARIABLES}
    env["PYTHONPATH"] = str(SRC)
    env.update({key: str(value) for key, value in variables.items()})
    return env


def run_python(code: str, cwd: Path, **variables: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", textwrap.dedent(code)]
    return subprocess.run(
        command, cwd=cwd, env=child_environment(**variables), capture_output=True, text=True
    )


def run_cli(
    *arguments: str, cwd: Path, **variables: str | Path
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "persistkit", *arguments]
    return subprocess.run(
        command, cwd=cwd, env=child_environment(**variables), capture_output=True, text=True
    )


def stored_files(root: Path) -> list[str]:
    """The value files under ``root``, as a user listing it sees them (no dot-directories)."""
    found = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        found += [
            os.path.relpath(os.path.join(directory, name), root)
            for name in files
            if name.endswith(".json")
        ]
    return sorted(found)


# "the variables below give configure() every argument it is not passed, and they are
# the settings in force before any configure() call, so a bot that never calls it
# runs where its environment says."
STORE_WITHOUT_BASE_DIR = """
    import asyncio
    from persistkit import PersistBase, sync

    async def main():
        await PersistBase("fills").write_value("order-1", {"qty": 0.5})
    asyncio.run(main())
    sync.PersistBase("notes").write_value("last", {"ticks": 4})
"""


def test_a_store_without_base_dir_writes_where_persistkit_base_dir_says(tmp_path: Path) -> None:
    result = run_python(STORE_WITHOUT_BASE_DIR, tmp_path, PERSISTKIT_BASE_DIR="state")
    assert result.returncode == 0, result.stderr
    assert stored_files(tmp_path / "state") == ["fills/order-1.json", "notes/last.json"]
    assert not (tmp_path / "dump").exists()


def test_a_store_without_base_dir_writes_where_configure_says(tmp_path: Path) -> None:
    result = run_python(
        "import persistkit\npersistkit.configure(mode='live', base_dir='elsewhere')\n"
        + textwrap.dedent(STORE_WITHOUT_BASE_DIR),
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert stored_files(tmp_path / "elsewhere") == ["fills/order-1.json", "notes/last.json"]
    assert not (tmp_path / "dump").exists()


def test_a_store_without_base_dir_in_backtest_mode_writes_no_file(tmp_path: Path) -> None:
    result = run_python(STORE_WITHOUT_BASE_DIR, tmp_path, PERSISTKIT_MODE="BACKTEST")
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_names_the_variable_when_persistkit_base_dir_is_a_file(tmp_path: Path) -> None:
    # "a bad value raises ConfigurationError naming the variable and its value ...;
    # the command line prints it as one line and exits 2"
    (tmp_path / "afile").write_text("")
    result = run_cli("inspect", cwd=tmp_path, PERSISTKIT_BASE_DIR="afile")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "PERSISTKIT_BASE_DIR='afile'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_symlinked_persistkit_base_dir_keeps_the_state_at_the_link_target(
    tmp_path: Path,
) -> None:
    (tmp_path / "disk").mkdir()
    (tmp_path / "data").symlink_to(tmp_path / "disk")
    result = run_python(
        """
        import asyncio
        from persistkit import LiveSession, PersistBase, current_settings

        async def main():
            await PersistBase("fills", current_settings().base_dir).write_value("a", 1)
        asyncio.run(main())
        """,
        tmp_path,
        PERSISTKIT_BASE_DIR="data",
    )
    assert result.returncode == 0, result.stderr
    assert stored_files(tmp_path / "disk") == ["fills/a.json"]


def test_the_blocking_api_across_threads_a_fork_and_a_notebook_loop(tmp_path: Path) -> None:
    # The README's promises for persistkit.sync: several threads at once, a forked
    # child starting its own loop thread, BlockingCallError inside a running loop
    # (a Jupyter cell), and nothing printed while logging is unconfigured.
    result = run_python(
        """
        import asyncio, os, threading
        from persistkit import BlockingCallError, sync

        store = sync.PersistBase("counts", "./dump/data")
        store.write_value("n", 0)

        def bump():
            for _ in range(20):
                store.update_value("n", lambda n: n + 1)

        threads = [threading.Thread(target=bump) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print("threads", store.read_value("n"))

        pid = os.fork()
        if pid == 0:
            sync.PersistBase("counts", "./dump/data").update_value("n", lambda n: n + 1000)
            os._exit(0)
        print("child exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        print("after fork", store.read_value("n"))

        async def notebook_cell():
            try:
                store.read_value("n")
            except BlockingCallError as error:
                print("in a running loop:", type(error).__name__)
        asyncio.run(notebook_cell())

        with open("dump/data/counts/bad.json", "w") as broken:
            broken.write("{not json")
        print(sync.PersistBase("counts", "./dump/data").wait_for_init().summary())
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        "threads 80",
        "child exit 0",
        "after fork 1080",
        "in a running loop: BlockingCallError",
    ]
    assert "1 corrupt values quarantined" in lines[4]
    assert result.stderr == ""  # the package logger's NullHandler: nothing printed


def test_a_tilde_in_persistkit_base_dir_means_the_home_directory(tmp_path: Path) -> None:
    # A systemd unit's Environment= or a docker env file passes "~/bot/data" as it is
    # (no shell expands it): the state belongs in the home directory, not in a
    # directory named "~" under whatever the working directory happens to be.
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "work").mkdir()
    result = run_python(
        STORE_WITHOUT_BASE_DIR, tmp_path / "work", PERSISTKIT_BASE_DIR="~/bot/data", HOME=home
    )
    assert result.returncode == 0, result.stderr
    assert stored_files(home / "bot" / "data") == ["fills/order-1.json", "notes/last.json"]
    assert list((tmp_path / "work").iterdir()) == []


FORK_WHILE_THREADS_WRITE = """
    import os, threading
    from persistkit import sync

    store = sync.PersistBase("counts", "./dump/data")
    store.write_value("n", 0)
    stop = threading.Event()

    def bump():
        while not stop.is_set():
            store.update_value("n", lambda n: n + 1)

    threads = [threading.Thread(target=bump) for _ in range(3)]
    for thread in threads:
        thread.start()
    exits = []
    for _ in range(10):
        pid = os.fork()
        if pid == 0:
            sync.PersistBase("counts", "./dump/data").update_value("n", lambda n: n + 1000)
            os._exit(0)
        exits.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    stop.set()
    for thread in threads:
        thread.join()
    print(exits, store.read_value("n") >= 10_000)
"""


def test_forking_while_threads_write_through_the_blocking_api_finishes(tmp_path: Path) -> None:
    # "a fork waits for the write or commit in progress, so the child inherits no lock
    # held half-way through one". The bound only tells a deadlock from a run: a run
    # takes about a second. It hung here in nearly every run: two threads' equal
    # compare-and-set commits (both from the same value) compared equal, and the one
    # taken out of the journal's queue took the other with it, whose worker then spun
    # forever, and the fork waited for that worker.
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(FORK_WHILE_THREADS_WRITE)],
        cwd=tmp_path,
        env=child_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the children it forked too
        process.communicate()
        raise AssertionError("deadlocked: no result after the bound") from None
    assert process.returncode == 0, stderr
    assert stdout.strip() == "[0, 0, 0, 0, 0, 0, 0, 0, 0, 0] True"


def test_a_url_given_as_the_backend_of_a_store_is_refused_with_the_way_to_open_it() -> None:
    # configure(backend=...) takes a URL; a store's backend= takes a Backend. A URL
    # there failed deep inside with "cannot create weak reference to 'str' object".
    from persistkit import PersistBase, sync

    for store_class in (PersistBase, sync.PersistBase):
        with pytest.raises(TypeError, match=r"open_backend\('redis://localhost:6379/0'\)"):
            store_class("notes", backend="redis://localhost:6379/0")  # type: ignore[arg-type]

"""What a synchronous bot broke in the blocking API (``persistkit.sync``).

Each test is one attack that got through: a real bot script run as a
subprocess against a real folder (or in this process, with real threads),
checked the way its author would check it afterwards.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import persistkit
from persistkit import sync
from support.servers import RedisCluster, RedisServer, SeaweedS3

SRC = Path(__file__).resolve().parent.parent / "src"


def run_script(
    tmp_path: Path, source: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a bot script; a hang is a failure, not a stuck suite."""
    script = tmp_path / "bot.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            **(env or {}),
            "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        },
        timeout=60,
    )


# -- the interpreter's exit: atexit handlers and threads that outlive main ----------------

CLOSE_AT_EXIT = """
    import atexit, sys
    from persistkit import sync

    session = sync.LiveSession([("BTCUSDT", "trend")], risk_name="main", base_dir=sys.argv[1])
    session.start()
    with session.tick():
        sync.PersistRiskAdapter.write_position_data([], "main")

    def close_session():
        session.close()
        print("closed", flush=True)

    atexit.register(close_session)  # how a script makes sure it lets go of its state
"""


def test_a_session_closes_in_an_atexit_handler(tmp_path: Path) -> None:
    # The interpreter shuts every ThreadPoolExecutor down before atexit
    # handlers run, and close() checkpoints the journal in a worker thread:
    # it raised RuntimeError('cannot schedule new futures after shutdown').
    done = run_script(tmp_path, CLOSE_AT_EXIT, str(tmp_path / "data"))
    assert done.returncode == 0, done.stderr
    assert "closed" in done.stdout, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


WRITE_AT_EXIT_WHILE_LOCKED = """
    import atexit, fcntl, os, subprocess, sys
    from persistkit import sync

    root = sys.argv[1]
    store = sync.PersistBase("notes", root)
    store.write_value("last", {"tick": 1})

    def save_last_tick():
        # Another process (the command line, a second bot) holds the entity's
        # directory lock for a moment, so the write waits for it in a worker thread.
        holder = subprocess.Popen(
            [sys.executable, "-c", (
                "import fcntl, os, sys, time\\n"
                "fd = os.open(sys.argv[1], os.O_RDONLY)\\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\\n"
                "print('held', flush=True)\\n"
                "time.sleep(0.5)\\n"
            ), os.path.join(root, "notes")],
            stdout=subprocess.PIPE, text=True,
        )
        holder.stdout.readline()
        store.write_value("last", {"tick": 2})
        print("saved", flush=True)
        holder.wait()

    atexit.register(save_last_tick)
"""


def test_a_write_in_an_atexit_handler_waits_for_another_process_lock(tmp_path: Path) -> None:
    # The wait runs in the loop's default executor, created on first use: at
    # exit it could not even be created ("can't register atexit after shutdown").
    root = tmp_path / "data"
    done = run_script(tmp_path, WRITE_AT_EXIT_WHILE_LOCKED, str(root))
    assert done.returncode == 0, done.stderr
    assert "saved" in done.stdout, done.stderr
    assert sync.PersistBase("notes", root).read_value("last") == {"tick": 2}


WRITE_TO_S3_AT_EXIT = """
    import atexit, sys
    from persistkit import sync

    store = sync.PersistBase("notes", backend=sync.open_backend(sys.argv[1]))
    store.write_value("last", {"tick": 1})

    def save_last_tick():
        store.write_value("last", {"tick": 2})
        print("saved", flush=True)

    atexit.register(save_last_tick)
"""


@pytest.fixture(scope="module")
def s3_server() -> Iterator[SeaweedS3]:
    with SeaweedS3() as server:
        yield server


def s3_credentials(server: SeaweedS3) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_DEFAULT_REGION": server.region,
    }


def test_a_write_to_s3_in_an_atexit_handler_is_stored(tmp_path: Path, s3_server: SeaweedS3) -> None:
    # The S3 backend's requests run in its ThreadPoolExecutor, which the
    # interpreter shuts down before atexit handlers run.
    url = f"s3://atexit-notes/bot?endpoint_url={s3_server.endpoint_url}&create_bucket=1"
    done = run_script(tmp_path, WRITE_TO_S3_AT_EXIT, url, env=s3_credentials(s3_server))
    assert "saved" in done.stdout, done.stderr
    stored = s3_server.client().get_object(Bucket="atexit-notes", Key="bot/notes/last.json")
    assert stored["Body"].read() == b'{"tick":2}'


# -- callbacks the core calls on its loop thread ------------------------------------------

EXIT_IN_UPDATE = """
    import sys
    from persistkit import sync

    store = sync.PersistBase("notes", sys.argv[1])
    store.write_value("balance", {"usd": 100})

    def spend(balance):
        if balance["usd"] < 1_000:
            sys.exit(3)  # a script's way out: "not enough funds, stop here"
        return {"usd": balance["usd"] - 1_000}

    try:
        store.update_value("balance", spend)
    finally:
        print("after update", flush=True)
"""


def test_sys_exit_in_an_update_callback_exits_the_script(tmp_path: Path) -> None:
    # SystemExit raised in a task stops the event loop it runs on: the loop
    # thread died, the caller waited forever for its answer, the script hung.
    root = tmp_path / "data"
    done = run_script(tmp_path, EXIT_IN_UPDATE, str(root))
    assert done.returncode == 3, done.stderr
    assert "after update" in done.stdout
    assert sync.PersistBase("notes", root).read_value("balance") == {"usd": 100}


# -- fork -----------------------------------------------------------------------------------

FORK_DURING_A_WRITE = """
    import os, sys, threading
    from persistkit import sync
    from persistkit.backends._file import TEMP_PREFIX, FileBackend

    root = sys.argv[1]
    store = sync.PersistBase("notes", root, backend=FileBackend(root, lock_timeout=2.0))
    store.write_value("worker", "none yet")

    # One thread saves a large snapshot; the main thread forks a worker (what
    # multiprocessing's default start method does) while that write holds the
    # directory's lock: its temporary file is there. (Tried again if the
    # write was over before the file was seen.)
    directory = os.path.join(root, "notes")
    snapshot = {"blob": "x" * 8_000_000}
    while True:
        saving = threading.Thread(target=store.write_value, args=("snapshot", snapshot))
        saving.start()
        while saving.is_alive():
            if any(name.startswith(TEMP_PREFIX) for name in os.listdir(directory)):
                break
        else:
            continue
        break
    pid = os.fork()
    if pid == 0:
        try:
            store.write_value("worker", "child wrote")
        except BaseException as exc:
            print(f"child: {type(exc).__name__}: {exc}", flush=True)
            os._exit(1)
        os._exit(0)
    saving.join()
    print("child exit code", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def test_a_child_forked_during_a_write_can_write(tmp_path: Path) -> None:
    # The child inherited the descriptor the loop thread held the directory's
    # flock through: the lock then outlived the parent's write, and the child
    # waited on its own copy until LockTimeoutError.
    root = tmp_path / "data"
    done = run_script(tmp_path, FORK_DURING_A_WRITE, str(root))
    assert "child exit code 0" in done.stdout, done.stdout + done.stderr
    assert sync.PersistBase("notes", root).read_value("worker") == "child wrote"


FORK_STORM = """
    import os, sys, threading
    from persistkit import sync
    from persistkit.backends._file import FileBackend

    root, forks = sys.argv[1], int(sys.argv[2])
    store = sync.PersistBase("notes", root, backend=FileBackend(root, lock_timeout=2.0))
    store.write_value("count", 0)
    stop = threading.Event()
    counted = [0, 0]

    def count(slot):  # compare-and-set increments, beside the forks
        while not stop.is_set():
            store.update_value("count", lambda n: n + 1)
            counted[slot] += 1

    counters = [threading.Thread(target=count, args=(slot,)) for slot in (0, 1)]
    for counter in counters:
        counter.start()
    children = []
    for _ in range(forks):
        pid = os.fork()
        if pid == 0:  # each worker counts once; the parent's writes contend with it
            try:
                store.update_value("count", lambda n: n + 1)
            except BaseException as exc:
                print(f"child: {type(exc).__name__}: {exc}", flush=True)
                os._exit(1)
            os._exit(0)
        children.append(pid)
    failed = sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in children)
    stop.set()
    for counter in counters:
        counter.join()
    print("children failed", failed, flush=True)
    print("lost", sum(counted) + forks - failed - store.read_value("count"), flush=True)
"""


def test_forks_beside_contended_writes_keep_every_increment(tmp_path: Path) -> None:
    # Contended by the children, the parent's writes wait for the lock in worker
    # threads, which then hold it: a fork there left the child the same stale lock.
    forks = 200 if os.environ.get("PERSISTKIT_LONG", "") not in ("", "0") else 30
    done = run_script(tmp_path, FORK_STORM, str(tmp_path / "data"), str(forks))
    assert "children failed 0" in done.stdout, done.stdout + done.stderr[-2000:]
    assert "lost 0" in done.stdout, done.stdout + done.stderr[-2000:]


FORKS_BESIDE_TICKS = """
    import os, sys, threading
    from persistkit import sync
    from persistkit.backends._file import FileBackend

    root, forks = sys.argv[1], int(sys.argv[2])
    backend = FileBackend(root, lock_timeout=2.0)
    store = sync.PersistBase("notes", root, backend=backend)
    stop = threading.Event()

    def ticks():  # committed to the journal; a thread of the journal applies them to the files
        tick = 0
        while not stop.is_set():
            with sync.transaction(backend):
                for key in range(5):
                    store.write_value(f"k{key}", [tick, "x" * 1_000_000])
            tick += 1

    ticking = threading.Thread(target=ticks)
    ticking.start()
    failed = 0
    for n in range(forks):
        pid = os.fork()
        if pid == 0:
            try:
                store.write_value(f"k{n % 5}", [-1, "from a worker"])
            except BaseException as exc:
                print(f"child: {type(exc).__name__}: {exc}", flush=True)
                os._exit(1)
            os._exit(0)
        failed += os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0
    stop.set()
    ticking.join()
    print("children failed", failed, flush=True)
"""


def test_forks_beside_ticks_being_applied_can_write(tmp_path: Path) -> None:
    # The journal's own thread applies committed ticks to the files under each
    # directory's flock: a fork then left the child that lock, as above.
    forks = 200 if os.environ.get("PERSISTKIT_LONG", "") not in ("", "0") else 20
    done = run_script(tmp_path, FORKS_BESIDE_TICKS, str(tmp_path / "data"), str(forks))
    assert "children failed 0" in done.stdout, done.stdout + done.stderr[-2000:]


FORK_WITH_A_REMOTE_BACKEND = """
    import gc, os, signal, sys
    from urllib.parse import parse_qs, urlsplit
    import persistkit
    from persistkit import sync

    url, given = sys.argv[1], sys.argv[2] == "given"
    if not given:
        backend = sync.open_backend(url)
    elif url.startswith("redis"):  # the bot's own client, handed to the backend
        import redis.asyncio
        from persistkit.backends import RedisBackend

        backend = RedisBackend(redis.asyncio.Redis.from_url(url))
    else:
        import boto3
        from persistkit.backends import S3Backend

        parts = urlsplit(url)
        endpoint = parse_qs(parts.query)["endpoint_url"][0]
        client = boto3.client("s3", endpoint_url=endpoint)
        backend = S3Backend(client, parts.netloc, parts.path, create_bucket=True)
    # Not retried: a read of the parent's that stalls on a connection the child
    # disturbed fails (at the client's socket timeout) instead of passing on a retry.
    store = sync.PersistBase("notes", backend=backend, retry=persistkit.RetryPolicy(attempts=1))
    for n in range(5):
        store.write_value(f"price-{n}", n)
    store.write_value("counter", 0, if_version=None)  # compare-and-set: a write token
    pid = os.fork()
    if pid == 0:  # a worker process, which reports through the same store
        signal.alarm(5)  # a hang ends here, as a failure
        try:
            store.write_value("worker", "reported")
            store.update_value("counter", lambda n: n + 1)
            # A worker lives on and collects its garbage: a parent's client dropped
            # here and collected closed its transports, which took the parent's
            # sockets out of the epoll set both processes share (seen: the parent's
            # next read then timed out).
            gc.collect()
            store.read_value("worker")
        except BaseException as exc:
            print(f"child: {type(exc).__module__}.{type(exc).__name__}", flush=True)
            os._exit(1)
        os._exit(0)
    print("child exit code", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
    # The parent goes on, on the connections it had before the fork.
    worker = store.read_value("worker") if store.has_value("worker") else None
    print("parent reads", worker, [store.read_value(f"price-{n}") for n in range(5)], flush=True)
    store.write_value("parent", "still writes")
"""


def fork_with_a_remote_backend(tmp_path: Path, url: str, *, given: bool = False) -> str:
    """What the forking bot printed; then checks what it left on the server, from here."""
    done = run_script(tmp_path, FORK_WITH_A_REMOTE_BACKEND, url, "given" if given else "from-url")
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    backend = sync.open_backend(url)
    try:
        stored = sync.PersistBase("notes", backend=backend)
        assert stored.read_value("parent") == "still writes"
        assert stored.has_value("worker") == (not given)
    finally:
        backend.close()
    return done.stdout


def s3_url(server: SeaweedS3, bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The URL of prefix ``bot`` in ``bucket``, made if absent, with the server's
    credentials in this process's environment (the forking script inherits them)."""
    for name, value in s3_credentials(server).items():
        monkeypatch.setenv(name, value)
    return f"s3://{bucket}/bot?endpoint_url={server.endpoint_url}&create_bucket=1"


def test_a_forked_child_writes_through_an_inherited_redis_backend(tmp_path: Path) -> None:
    # The child drove the client the parent opened: redis-py's asyncio
    # connections (the parent's sockets, bound to the parent's loop) sent the
    # SET on the parent's socket, then failed reading the reply with an untyped
    # RuntimeError ('attached to a different loop'): written, yet reported
    # failed; the parent's next reads on that socket then stalled 10 s.
    with RedisServer() as server:
        printed = fork_with_a_remote_backend(tmp_path, server.url)
    assert "child exit code 0" in printed, printed
    assert "parent reads reported [0, 1, 2, 3, 4]" in printed, printed


def test_a_forked_child_writes_through_an_inherited_redis_cluster_backend(tmp_path: Path) -> None:
    with RedisCluster() as cluster:
        url = cluster.url.replace("redis://", "redis+cluster://")
        printed = fork_with_a_remote_backend(tmp_path, url)
    assert "child exit code 0" in printed, printed
    assert "parent reads reported [0, 1, 2, 3, 4]" in printed, printed


def test_a_forked_child_writes_through_an_inherited_s3_backend(
    tmp_path: Path, s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The S3 backend's worker threads did not exist in the child, and its pool,
    # which believed it had idle ones, queued the request forever: the child hung.
    printed = fork_with_a_remote_backend(tmp_path, s3_url(s3_server, "fork-notes", monkeypatch))
    assert "child exit code 0" in printed, printed
    assert "parent reads reported [0, 1, 2, 3, 4]" in printed, printed
    # The child is a writer of its own in the tokens that tell a retry its applied
    # write: under the parent's name, its increment would have replaced the
    # parent's entry, and a retry of the parent's in doubt would not find it.
    counter = s3_server.client().head_object(Bucket="fork-notes", Key="bot/notes/counter.json")
    writers = counter["Metadata"]["persistkit-writers"].split()
    assert len({entry.partition(":")[0] for entry in writers}) == 2, writers


def test_a_forked_child_refuses_a_redis_client_it_was_given(tmp_path: Path) -> None:
    # A client the bot made is not the backend's to rebuild: the child is told
    # so before it sends anything on the parent's connections.
    with RedisServer() as server:
        printed = fork_with_a_remote_backend(tmp_path, server.url, given=True)
    assert "child: persistkit.errors.ForkedClientError" in printed, printed
    assert "parent reads None [0, 1, 2, 3, 4]" in printed, printed


def test_a_forked_child_refuses_an_s3_client_it_was_given(
    tmp_path: Path, s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = s3_url(s3_server, "fork-given", monkeypatch)
    printed = fork_with_a_remote_backend(tmp_path, url, given=True)
    assert "child: persistkit.errors.ForkedClientError" in printed, printed
    assert "parent reads None [0, 1, 2, 3, 4]" in printed, printed


# -- the scope of a thread's calls -----------------------------------------------------------


def test_a_thread_pool_worker_does_not_carry_a_tick_into_another_task(data_root: Path) -> None:
    # An async bot that calls its synchronous strategy code with
    # asyncio.to_thread: the worker thread kept the context of the first task
    # it served (inside a tick) for every later call, so another task's plain
    # write joined that tick and was rolled back with it after it returned.
    store = sync.PersistBase("notes", data_root)

    def save(key: str, value: str) -> None:
        store.write_value(key, value)

    async def bot() -> None:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
        reported = asyncio.Event()

        async def failing_tick() -> None:
            async with persistkit.transaction():
                await asyncio.to_thread(save, "tick", "staged")
                await reported.wait()
                raise RuntimeError("the exchange refused the order: tick rolled back")

        async def report() -> None:
            await asyncio.to_thread(save, "report", "written")  # acknowledged when it returns
            reported.set()

        failed, _ = await asyncio.gather(failing_tick(), report(), return_exceptions=True)
        assert isinstance(failed, RuntimeError), failed

    asyncio.run(bot())
    assert store.read_value("report") == "written"
    assert not store.has_value("tick")


# -- the stop signals of the blocking run() -------------------------------------------------

SIGTERM_AS_RUN_STARTS = """
    import os, signal, sys, threading
    from persistkit import sync

    root = sys.argv[1]
    session = sync.LiveSession([("BTCUSDT", "trend")], risk_name="main", base_dir=root)
    session.start()
    store = sync.PersistBase("notes", root)
    store.write_value("x", 0)

    # The loop is busy for a moment when run() is called (here another
    # thread's update function, which the loop runs), so run() installs its
    # handlers some time before it listens: the supervisor's SIGTERM comes then.
    busy = threading.Event()
    threading.Thread(target=store.update_value, args=("x", lambda n: busy.wait() and n)).start()

    def supervisor():
        while signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            pass
        os.kill(os.getpid(), signal.SIGTERM)
        busy.set()

    threading.Thread(target=supervisor).start()
    ran = session.run(lambda n: store.write_value("tick", n), interval=0.05, ticks=20)
    print("ran", ran, flush=True)
"""


def test_a_sigterm_before_run_listens_still_stops_it(tmp_path: Path) -> None:
    # The main thread's handler relayed a signal only once run() listened on
    # the loop: one caught before was dropped, and the bot ran on (here all
    # its 20 ticks; with ticks=None, forever), deaf to its supervisor.
    done = run_script(tmp_path, SIGTERM_AS_RUN_STARTS, str(tmp_path / "data"))
    assert "ran 0" in done.stdout, done.stdout + done.stderr[-2000:]

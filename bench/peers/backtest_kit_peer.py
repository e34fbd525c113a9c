"""Peer: backtest-kit's own ``PersistBase`` (npm package ``backtest-kit``), driven through Node.

The npm project in ``bench/peers/backtest_kit/`` (``package.json`` with
overrides to the dependency versions the registry has, and a local stand-in for
the one it lacks) is installed once into a cache folder, outside the source
tree. ``sample.mjs`` there times one operation per call, so its samples
interleave with the Python cases round by round; ``bench.mjs`` runs the peer's
own all-in-one benchmark, whose figures the report shows as a cross-check.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import raw
from bench.harness import Sample
from bench.payload import SIGNAL_BYTES

__all__ = ["BacktestKitPeer", "PeerUnavailableError"]

PROJECT = Path(__file__).resolve().parent / "backtest_kit"
_PROJECT_FILES = (".npmrc", "package.json", "bench.mjs", "sample.mjs", "stubs")
_NODE_TIMEOUT = 600


class PeerUnavailableError(RuntimeError):
    """The peer cannot run here; the message says why (the report quotes it)."""


def default_cache_dir() -> Path:
    base = os.environ.get("PERSISTKIT_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "persistkit-bench"
    )
    return Path(base) / "backtest-kit"


def _project_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(PROJECT.rglob("*")):
        if path.is_file() and "node_modules" not in path.parts:
            digest.update(str(path.relative_to(PROJECT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class BacktestKitPeer:
    def __init__(self, install_dir: Path) -> None:
        self.install_dir = install_dir
        self.version = "unknown"

    @classmethod
    def install(cls, cache_dir: Path | None = None) -> BacktestKitPeer:
        """Copy the npm project to the cache and ``npm install`` it once per project version."""
        if shutil.which("node") is None or shutil.which("npm") is None:
            raise PeerUnavailableError("node and npm are not installed")
        target = (cache_dir or default_cache_dir()) / _project_digest()
        marker = target / ".installed"
        if not marker.exists():
            print(f"[backtest-kit] npm install into {target} (first run)", file=sys.stderr)
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            for name in _PROJECT_FILES:
                source = PROJECT / name
                if source.is_dir():
                    shutil.copytree(source, target / name)
                else:
                    shutil.copy2(source, target / name)
            result = subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=target,
                capture_output=True,
                text=True,
                timeout=_NODE_TIMEOUT,
            )
            if result.returncode != 0:
                raise PeerUnavailableError(
                    f"npm install failed ({result.returncode}): {result.stderr.strip()[-800:]}"
                )
            marker.write_text("ok\n")
        peer = cls(target)
        peer.version = peer._node("write", str(target / "probe"), 1)["version"]
        shutil.rmtree(target / "probe", ignore_errors=True)
        return peer

    def _node(self, op: str, base_dir: str, count: int) -> dict[str, Any]:
        result = subprocess.run(
            ["node", "sample.mjs", op, base_dir, str(count), SIGNAL_BYTES.decode()],
            cwd=self.install_dir,
            capture_output=True,
            text=True,
            timeout=_NODE_TIMEOUT,
        )
        if result.returncode != 0:
            raise PeerUnavailableError(
                f"backtest-kit {op} failed ({result.returncode}): {result.stderr.strip()[-800:]}"
            )
        answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return answer

    def sample(self, op: str, count: int, base_dir: str, *, drop_cache: bool = False) -> Sample:
        if drop_cache:
            raw.drop_page_cache()
        answer = self._node(op, base_dir, count)
        return Sample(int(answer["operations"]), float(answer["seconds"]))

    def case(
        self, op: str, count: int, base_dir: str, *, drop_cache: bool = False
    ) -> Callable[[], Awaitable[Sample]]:
        async def run() -> Sample:
            return self.sample(op, count, base_dir, drop_cache=drop_cache)

        return run

    def fill(self, base_dir: str, entities: int) -> None:
        self._node("fill", base_dir, entities)

    def own_benchmark(
        self, workdir: str, *, rounds: int, writes: int, reads: int, files: int
    ) -> dict[str, Any]:
        """The peer's own all-in-one benchmark (``bench.mjs``), as a cross-check."""
        result = subprocess.run(
            [
                "node",
                "bench.mjs",
                workdir,
                "--rounds",
                str(rounds),
                "--writes",
                str(writes),
                "--reads",
                str(reads),
                "--init-files",
                str(files),
            ],
            cwd=self.install_dir,
            capture_output=True,
            text=True,
            timeout=_NODE_TIMEOUT,
        )
        if result.returncode != 0:
            raise PeerUnavailableError(f"bench.mjs failed: {result.stderr.strip()[-800:]}")
        answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return answer

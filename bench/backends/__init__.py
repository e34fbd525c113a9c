"""Plug-in point for the remote backends (Redis, S3), one module each.

Each module listed in :data:`REMOTE_BACKENDS` defines

- ``BACKEND_MODULE``: the persistkit module it benchmarks (``persistkit.backends._redis``);
- ``groups(workdir, sizes) -> list[Group]``: its groups, each against the raw client
  (redis-py, boto3) on a real server the module starts and stops itself.

A backend whose persistkit module does not import (it has not landed on this
branch, or its extra is not installed) is skipped with a printed note; so is
one whose server binary is missing.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from bench.harness import Group
from bench.sizes import Sizes

__all__ = ["REMOTE_BACKENDS", "RemoteBackend", "load_remote_backends", "real_servers"]

REMOTE_BACKENDS = ["bench.backends.redis", "bench.backends.s3"]
"""Add a module here to benchmark another backend."""


@dataclass(frozen=True, slots=True)
class RemoteBackend:
    name: str
    groups: Callable[[str, Sizes], list[Group]]


def load_remote_backends() -> tuple[list[RemoteBackend], list[str]]:
    """The benchmark modules whose backend imports, and a note for each skipped one."""
    loaded: list[RemoteBackend] = []
    skipped: list[str] = []
    for module_name in REMOTE_BACKENDS:
        bench_module = importlib.import_module(module_name)
        target: str = bench_module.BACKEND_MODULE
        try:
            importlib.import_module(target)
        except ImportError as exc:
            skipped.append(f"{module_name}: skipped, {target} does not import ({exc})")
            continue
        missing = _missing_server(bench_module)
        if missing:
            skipped.append(f"{module_name}: skipped, {missing}")
            continue
        loaded.append(RemoteBackend(module_name.rsplit(".", 1)[1], bench_module.groups))
    return loaded, skipped


def _missing_server(module: ModuleType) -> str | None:
    check = getattr(module, "missing_server", None)
    return check() if check is not None else None


def real_servers() -> ModuleType:
    """``tests/support/servers.py``: the same real-server fixtures the tests use."""
    tests = str(Path(__file__).resolve().parents[2] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module("support.servers")

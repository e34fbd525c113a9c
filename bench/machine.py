"""What the figures were measured on: cores, CPU, kernel, and the file system under the bench."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
from dataclasses import dataclass

import orjson

__all__ = ["Machine", "describe_machine"]


@dataclass(frozen=True, slots=True)
class Machine:
    cores: int
    cpu: str
    kernel: str
    filesystem: str
    """Type, device and mount options of the file system the bench writes to."""
    python: str
    versions: dict[str, str]
    load: str = ""
    """1-minute load average at the start and the end of the run (a shared machine is noisy)."""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mount_of(path: str) -> str:
    """The /proc/mounts line of the mount that holds ``path``: type, device, options."""
    path = os.path.realpath(path)
    best = ("", "unknown")
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                device, mount_point, fs_type, options = line.split()[:4]
                mount_point = mount_point.replace("\\040", " ")
                inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best[0]):
                    best = (mount_point, f"{fs_type} on {device} at {mount_point} ({options})")
    except OSError:
        pass
    return best[1]


def _node_version() -> str | None:
    try:
        result = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


def load_average() -> float:
    return os.getloadavg()[0]


def describe_machine(
    bench_dir: str, extra_versions: dict[str, str], *, load_at_start: float
) -> Machine:
    import persistkit

    versions = {
        "persistkit": persistkit.__version__,
        "orjson": orjson.__version__,
        "sqlite": sqlite3.sqlite_version,
    }
    node = _node_version()
    if node:
        versions["node"] = node
    versions.update(extra_versions)
    return Machine(
        cores=os.cpu_count() or 0,
        cpu=_cpu_model(),
        kernel=f"{platform.system()} {platform.release()}",
        filesystem=_mount_of(bench_dir),
        python=platform.python_version(),
        versions=versions,
        load=f"{load_at_start:.1f} at the start, {load_average():.1f} at the end",
    )

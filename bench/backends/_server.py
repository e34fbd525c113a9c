"""What the remote-backend benchmarks share: free loopback ports and stopping a server."""

from __future__ import annotations

import shutil
import socket
import subprocess

__all__ = ["free_port", "stop_server"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stop_server(process: subprocess.Popen[bytes], directory: str) -> None:
    """Terminate (kill if it lingers) and remove its data folder."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    shutil.rmtree(directory, ignore_errors=True)

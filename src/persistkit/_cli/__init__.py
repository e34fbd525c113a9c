"""The ``persistkit`` command line: status, inspect, preflight, quarantine, migrate, export, import.

For the person on call: see a bot's state, check before a deploy that a
restart will succeed, and move state between backends, without writing Python.
It needs the ``cli`` extra (click and rich); without it, ``main`` says so in one
line instead of failing with a traceback.

Exit codes, for deploy scripts: 0 done and clean, 1 problems found or a change
refused, 2 could not run (missing root, bad URL, unreachable server, bad input).
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    """Entry point of the ``persistkit`` console script."""
    try:
        from persistkit._cli.app import cli
    except ImportError as exc:
        print(
            f"persistkit: error: the command line needs {exc.name}; "
            "install it with: pip install 'persistkit[cli]'",
            file=sys.stderr,
        )
        sys.exit(2)
    cli(prog_name="persistkit")

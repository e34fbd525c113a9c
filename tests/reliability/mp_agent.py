"""A persistkit process driven over stdin/stdout, one JSON line per command and per reply.

The multi-process tests (``test_multiprocess.py``) start several of these on one
root and drive them step by step: open (optionally as a ``LiveSession``),
write plainly or in a transaction, commit ticks, run increments, read, fork,
close, or take an ``flock`` the way another tool would. The test kills them
with ``SIGKILL`` between steps; a reply is sent only once the step returned,
so every ``"ok": true`` is an acknowledgement a user would rely on.

Only the public API is used. Values live in ``PersistBase("mp", base_dir=ROOT)``.

``MP_CLOCK_OFFSET_NS``: shift this process's wall clock (``time.time_ns`` and
``time.time``) by that many nanoseconds, for when ``faketime`` is missing: the
process's own clock stepped back, as an NTP correction would.
"""

from __future__ import annotations

import os
import sys
import time

_offset = int(os.environ.get("MP_CLOCK_OFFSET_NS", "0") or "0")
if _offset:
    _real_time_ns, _real_time = time.time_ns, time.time
    time.time_ns = lambda: _real_time_ns() + _offset  # type: ignore[assignment]
    time.time = lambda: _real_time() + _offset / 1e9  # type: ignore[assignment]

import asyncio  # noqa: E402
import fcntl  # noqa: E402
import json  # noqa: E402
from typing import Any  # noqa: E402

import persistkit  # noqa: E402
from persistkit import (  # noqa: E402
    ConflictError,
    DurabilityUnknownError,
    LiveSession,
    PersistBase,
    PersistError,
)

ENTITY = "mp"


def _error(exc: BaseException) -> dict[str, Any]:
    return {
        "ok": False,
        "error": type(exc).__name__,
        "message": str(exc),
        "persist": isinstance(exc, PersistError),
        "conflict": isinstance(exc, ConflictError),
        "durability_unknown": isinstance(exc, DurabilityUnknownError),
    }


def _increment(value: Any) -> int:
    return (value or 0) + 1


class Agent:
    def __init__(self, root: str) -> None:
        self.root = root
        self.session: LiveSession | None = None
        self.store: PersistBase[Any] | None = None
        self.held: list[int] = []

    def _store(self) -> PersistBase[Any]:
        if self.store is None:
            raise RuntimeError("open first")
        return self.store

    def _tx(self) -> Any:
        return self.session.tick() if self.session is not None else persistkit.transaction()

    async def op_open(self, session: dict[str, str] | None = None) -> dict[str, Any]:
        replayed = None
        if session is not None:
            self.session = LiveSession(
                [(session["symbol"], session["strategy"])], session["risk"], base_dir=self.root
            )
            replayed = (await self.session.start()).replayed_commits
        else:
            persistkit.configure(mode="live", base_dir=self.root)
        self.store = PersistBase(ENTITY, base_dir=self.root)
        await self.store.wait_for_init()
        return {"pid": os.getpid(), "time_ns": time.time_ns(), "replayed": replayed}

    async def op_write(self, key: str, value: Any, tx: bool = False) -> dict[str, Any]:
        store = self._store()
        if tx:
            async with self._tx():
                await store.write_value(key, value)
        else:
            await store.write_value(key, value)
        return {}

    async def op_tick(self, values: dict[str, Any]) -> dict[str, Any]:
        """One transaction (the session's tick when open as a session) writing ``values``."""
        store = self._store()
        async with self._tx():
            for key, value in values.items():
                await store.write_value(key, value)
        return {}

    async def op_read(self, keys: list[str]) -> dict[str, Any]:
        """``values``: key -> value; absent keys are left out."""
        store = self._store()
        found = {}
        for key in keys:
            if await store.has_value(key):
                found[key] = await store.read_value(key)
        return {"values": found}

    async def op_incr(self, key: str, n: int, tx: bool) -> dict[str, Any]:
        """``n`` acknowledged increments; a transaction that lost the race is run again."""
        store = self._store()
        conflicts = 0
        for _ in range(n):
            if not tx:
                await store.update_value(key, _increment)
                continue
            while True:
                try:
                    async with self._tx():
                        await store.update_value(key, _increment)
                except ConflictError:
                    conflicts += 1
                    continue
                break
        return {"done": n, "conflicts": conflicts}

    async def op_close(self) -> dict[str, Any]:
        if self.store is None:
            return {}
        if self.session is not None:
            await self.session.aclose()
        else:
            await persistkit.current_settings().backend.aclose()
        return {}

    async def op_flock(self, paths: list[str], exclusive: bool = True) -> dict[str, Any]:
        """Hold an ``flock`` on each path (file or directory) until ``unlock``."""
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            self.held.append(fd)
        return {"held": len(self.held)}

    async def op_unlock(self) -> dict[str, Any]:
        for fd in self.held:
            os.close(fd)
        self.held.clear()
        return {}

    async def run(self, command: dict[str, Any]) -> dict[str, Any]:
        args = {name: value for name, value in command.items() if name != "op"}
        try:
            result = await getattr(self, f"op_{command['op']}")(**args)
        except Exception as exc:  # reported to the test, which decides
            return _error(exc)
        return {"ok": True, **result}

    def fork(self, actions: list[dict[str, Any]]) -> dict[str, Any]:
        """Fork; the child runs ``actions`` on what it inherited, then ``os._exit(0)``.

        The reply comes once the child has exited, with the child's replies.
        """
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_end)
            replies: list[dict[str, Any]] = []
            try:
                loop = asyncio.new_event_loop()
                asyncio.set_event_loop(loop)
                for action in actions:
                    replies.append(loop.run_until_complete(self.run(action)))
            except BaseException as exc:
                replies.append(_error(exc))
            finally:
                os.write(write_end, json.dumps(replies).encode())
                os._exit(0)
        os.close(write_end)
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
        return {
            "ok": True,
            "child": json.loads(b"".join(chunks) or b"[]"),
            "child_exit": os.waitstatus_to_exitcode(status),
        }


def main() -> None:
    agent = Agent(sys.argv[1])
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    while line := sys.stdin.readline():
        command = json.loads(line)
        if command["op"] == "fork":
            reply = agent.fork(command["actions"])
        else:
            reply = loop.run_until_complete(agent.run(command))
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        if command["op"] == "close":
            break


if __name__ == "__main__":
    main()

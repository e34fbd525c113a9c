"""Blocking calls in worker threads, finished even when the caller is cancelled."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["DaemonThreadPool", "run_to_completion"]

T = TypeVar("T")


class DaemonThreadPool(ThreadPoolExecutor):
    """Worker threads that keep working while the interpreter exits.

    A ``ThreadPoolExecutor``'s threads stop before the interpreter runs the
    ``atexit`` handlers (and none can be created from then on), and that is
    where a synchronous script saves its last state and closes its session.
    These are daemon threads of its own, started as work needs them, up to
    ``max_workers`` (no bound by default); idle ones wait for the next job and
    never keep the process from exiting. A subclass only because
    ``loop.set_default_executor`` accepts nothing else: none of the base's
    machinery runs. :meth:`pause` holds them between two jobs (for a fork).
    """

    def __init__(self, max_workers: int | None = None, thread_name_prefix: str = "") -> None:
        super().__init__(max_workers=1)  # the base's attributes; it starts no thread itself
        self._limit = max_workers
        self._name = thread_name_prefix or "DaemonThreadPool"
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._idle = threading.Semaphore(0)
        self._jobs = threading.Condition()
        self._workers: list[threading.Thread] = []
        self._running = 0
        self._paused = False
        self._stopped = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._jobs:
            if self._stopped:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._work.put((future, lambda: fn(*args, **kwargs)))
            if not self._idle.acquire(blocking=False) and (
                self._limit is None or len(self._workers) < self._limit
            ):
                worker = threading.Thread(
                    target=self._serve, name=f"{self._name}_{len(self._workers)}", daemon=True
                )
                worker.start()
                self._workers.append(worker)
        return future

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            future, job = work
            with self._jobs:
                self._jobs.wait_for(lambda: not self._paused)
                self._running += 1
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        result = job()
                    except BaseException as exc:  # the caller's to handle, as in any executor
                        future.set_exception(exc)
                    else:
                        future.set_result(result)
            finally:
                with self._jobs:
                    self._running -= 1
                    self._jobs.notify_all()
            del work, future, job  # not kept alive while idle
            self._idle.release()

    def pause(self) -> None:
        """Wait for the running jobs to finish, and start no other until :meth:`resume`."""
        with self._jobs:
            self._paused = True
            self._jobs.wait_for(lambda: self._running == 0)

    def resume(self) -> None:
        with self._jobs:
            self._paused = False
            self._jobs.notify_all()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; the threads finish what was submitted, then stop."""
        with self._jobs:
            if self._stopped:
                return
            self._stopped = True
            workers = list(self._workers)
        if cancel_futures:
            while True:
                try:
                    work = self._work.get_nowait()
                except queue.Empty:
                    break
                if work is not None:
                    work[0].cancel()
        for _ in workers:
            self._work.put(None)
        if wait:
            for worker in workers:
                if worker is not threading.current_thread():
                    worker.join()


async def run_to_completion(executor: Executor | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread of ``executor`` (the loop's default if ``None``).

    A cancelled caller still waits for the worker to finish: a thread cannot be
    stopped half-way, and the store releases a key's ordering lock when this
    returns, so returning earlier would let a later write to the key overtake
    one still in flight.
    """
    future = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            try:
                await asyncio.wait([future])
            except asyncio.CancelledError:
                continue
        if not future.cancelled():
            future.exception()  # retrieved, so it is not reported as lost
        raise

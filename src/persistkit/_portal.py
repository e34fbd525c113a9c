"""One private event-loop thread that runs the async core for the blocking API.

Every blocking call (``persistkit.sync``) hands its coroutine to this loop and
waits for the result, so that clients which bind to an event loop (redis-py's
asyncio connections, say) keep their connections from one call to the next;
``asyncio.run`` around each call would close the loop they belong to.

Context variables carry the async core's scope from one call to the next (the
transaction a ``with session.tick():`` block opened, the session's backend,
the fencing tokens): each calling thread has one :class:`contextvars.Context`
of its own, which every coroutine it hands over runs in. Two threads never see
each other's transaction; one thread sees its own across calls, as one task
would in async code. That context is kept in the thread's own context (a
context variable), not beside it: a job that runs in a copy of its caller's
context (``asyncio.to_thread``, ``contextvars.Context.run``) gets one of its
own, made from that copy, and leaves nothing behind for the thread's next job;
one that the copy brought along from another thread is not used.

The loop thread is a daemon, started on first use; a forked child, which
inherits the memory but not the thread, starts its own on its first call. A
fork waits for the loop to finish the callback it is running, so that the
child inherits no lock held half-way through a write.

The blocking API is also called while the interpreter exits (an ``atexit``
handler that closes the session, a thread that outlives the main one). By
then the interpreter has shut every ``ThreadPoolExecutor`` down, so the loop's
default executor (where the core waits for another process's lock, or
checkpoints the journal) is a :class:`DaemonThreadPool`, and a
``SystemExit`` raised in a callback the core calls (``sys.exit()`` in
``update_value``'s function) is handed to the caller rather than stopping the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from persistkit.backends._threads import DaemonThreadPool
from persistkit.errors import BlockingCallError

__all__ = ["bound_context", "call", "caller_context"]


class _LoopThread:
    """The loop and the daemon thread running it forever."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.workers = DaemonThreadPool(thread_name_prefix="persistkit-worker")
        self.loop.set_default_executor(self.workers)
        started = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(started,), name="persistkit-loop", daemon=True
        )
        self.thread.start()
        started.wait()

        self._forking = threading.local()  # the forking thread's resume event

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(started.set)
        self.loop.run_forever()

    def pause_for_fork(self) -> None:
        """Hold the loop between two callbacks, and its worker threads between
        two jobs, until :meth:`resume_after_fork`.

        A callback (or a job) runs the file backend's syscalls, holding a
        directory's ``flock`` through a descriptor: forked in the middle of
        one, the child would keep a copy of that descriptor, and so the lock,
        that no thread of the child ever closes (its own writes would then wait
        for themselves). Between callbacks and jobs no such descriptor is open.
        """
        if threading.current_thread() is self.thread or not self.thread.is_alive():
            return  # forked from a callback on the loop itself: it is between syscalls
        self.workers.pause()
        paused, resume = threading.Event(), threading.Event()
        self._forking.resume = resume

        def pause() -> None:
            paused.set()
            resume.wait()

        self.loop.call_soon_threadsafe(pause)
        while not paused.wait(0.1):
            if not self.thread.is_alive():
                return

    def resume_after_fork(self) -> None:
        resume: threading.Event | None = getattr(self._forking, "resume", None)
        if resume is not None:
            self._forking.resume = None
            resume.set()
            self.workers.resume()


_lock = threading.Lock()
_loop_thread: _LoopThread | None = None
_caller_context: contextvars.ContextVar[tuple[contextvars.Context, object] | None] = (
    contextvars.ContextVar("persistkit_sync_caller_context", default=None)
)
"""The calls' context, and the token of the thread it was made in."""
_threads = threading.local()


def _thread_token() -> object:
    """An object unique to the calling thread while it lives (an ident is reused)."""
    token: object | None = getattr(_threads, "token", None)
    if token is None:
        token = _threads.token = object()
    return token


def _pause_before_fork() -> None:
    found = _loop_thread
    if found is not None:
        found.pause_for_fork()


def _resume_in_parent() -> None:
    found = _loop_thread
    if found is not None:
        found.resume_after_fork()


def _forget_after_fork() -> None:
    """In a forked child: the parent's loop thread does not exist here; start a new one."""
    global _lock, _loop_thread
    _lock = threading.Lock()  # it may have been held by another thread of the parent
    _loop_thread = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_pause_before_fork,
        after_in_parent=_resume_in_parent,
        after_in_child=_forget_after_fork,
    )


def _running_loop_thread() -> _LoopThread:
    global _loop_thread
    found = _loop_thread
    if found is None:
        with _lock:
            found = _loop_thread
            if found is None:
                found = _loop_thread = _LoopThread()
    return found


def caller_context() -> contextvars.Context:
    """The context this thread's blocking calls run in (made on its first call)."""
    token = _thread_token()
    found = _caller_context.get()
    if found is not None and found[1] is token:
        return found[0]
    context = contextvars.copy_context()
    _caller_context.set((context, token))
    return context


@contextlib.contextmanager
def bound_context(context: contextvars.Context) -> Iterator[None]:
    """Run this thread's blocking calls in ``context`` for the block.

    The blocking ``LiveSession.run`` calls the tick function in a thread of
    its own bound to the tick's context, so that the calls inside it belong
    to the tick's commit.
    """
    bound = _caller_context.set((context, _thread_token()))
    try:
        yield
    finally:
        _caller_context.reset(bound)


def _refuse_inside_a_loop(function: Callable[..., Any]) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    name = getattr(function, "__qualname__", repr(function))
    raise BlockingCallError(
        f"persistkit.sync: {name}() blocks until it is done, and it was called from inside a "
        "running event loop, which it would stop; in async code use the async API "
        "(`await` the same method of the persistkit object), or run this blocking call in a "
        "thread (asyncio.to_thread)"
    )


def call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` on the loop thread, awaited there if it returns an
    awaitable; its result, or what it raised (the same exception, its traceback
    running through the loop thread's frames)."""
    _refuse_inside_a_loop(function)
    loop = _running_loop_thread().loop
    context = caller_context()
    done: concurrent.futures.Future[Any] = concurrent.futures.Future()
    tasks: list[asyncio.Task[Any]] = []

    async def in_the_loop() -> Any:
        try:
            result = function(*args, **kwargs)
            if isinstance(result, Awaitable):
                return await result
            return result
        except (SystemExit, KeyboardInterrupt) as exc:
            # A task that raises these stops its loop (and so every later
            # call): the caller's thread raises it instead.
            return _Raised(exc)

    def start() -> None:
        if not done.set_running_or_notify_cancel():
            return  # the caller gave up before the loop got to it
        task = loop.create_task(in_the_loop(), context=context)
        tasks.append(task)
        task.add_done_callback(lambda finished: _settle(done, finished))

    loop.call_soon_threadsafe(start)
    try:
        return done.result()
    except BaseException:
        # Interrupted while waiting (KeyboardInterrupt): the call is cancelled
        # as an awaited coroutine would be; its task unwinds on the loop.
        if not done.done() and not done.cancel():
            loop.call_soon_threadsafe(lambda: [task.cancel() for task in tasks])
        raise


class _Raised:
    """What a call raised that must not escape a task on the loop (``SystemExit``)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _settle(done: concurrent.futures.Future[Any], task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        done.set_exception(concurrent.futures.CancelledError())
        return
    error = task.exception()
    if error is None:
        result = task.result()
        if isinstance(result, _Raised):
            error = result.error
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(task.result())

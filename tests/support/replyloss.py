"""A TCP proxy that loses replies: the server executes a request, the client never hears back.

Used to test exactly-once conditional writes: the only honest way to lose a
reply is to let the request reach the real server and cut the connection when
its answer starts coming back. No timeouts are involved, so a test through it
runs at full speed: the client sees its connection closed at once and retries.

    with ReplyLossProxy("127.0.0.1", server_port, loss=0.3, seed=7) as proxy:
        client = connect(port=proxy.port)   # every request goes through it
        ...
        proxy.lost                          # how many replies it swallowed

``loss`` is the share of replies to lose; ``lose_if(request)`` narrows it to
replies of some requests (say, only conditional PUTs): it sees the bytes the
client sent since the previous reply. The decision is made once per reply, on
its first bytes, from a seeded generator, so a run can be repeated. An HTTP
``100 Continue`` is passed on undecided: it comes before the request's body,
so losing it would lose a request the server never executed.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from typing import Self

__all__ = ["ReplyLossProxy", "conditional_put"]

INTERIM_REPLY = b"HTTP/1.1 100 "


def conditional_put(request: bytes) -> bool:
    """Whether ``request`` is an S3 conditional PUT: the writes whose retry is ambiguous
    when their answer is lost (a ``lose_if`` for :class:`ReplyLossProxy`)."""
    head = request.split(b"\r\n\r\n", 1)[0].lower()
    return head.startswith(b"put ") and (b"\r\nif-match:" in head or b"\r\nif-none-match:" in head)


class ReplyLossProxy:
    """Forward ``127.0.0.1:port`` to ``upstream``; lose a share of the replies."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        loss: float = 0.0,
        seed: int = 0,
        lose_if: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.loss = loss
        self.lose_if = lose_if
        self.lost = 0
        """Replies swallowed so far (the server executed their requests)."""
        self.forwarded = 0
        """Replies passed on to the client."""
        self._random = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._counts = threading.Lock()
        self.port = 0

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Self:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self.port = future.result(timeout=10)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None

        async def close() -> None:
            server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def _should_lose(self, request: bytes) -> bool:
        with self._counts:
            if self.lose_if is not None and not self.lose_if(request):
                lose = False
            else:
                lose = self._random.random() < self.loss
            if lose:
                self.lost += 1
            else:
                self.forwarded += 1
            return lose

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        try:
            server_in, server_out = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_out.close()
            return
        request = bytearray()  # what the client sent since the last reply began
        replying = False  # inside a reply already passed on

        async def requests() -> None:
            nonlocal replying
            while chunk := await client_in.read(65536):
                if replying:
                    request.clear()
                    replying = False
                request.extend(chunk)
                server_out.write(chunk)
                await server_out.drain()

        async def replies() -> None:
            nonlocal replying
            while chunk := await server_in.read(65536):
                if chunk.startswith(INTERIM_REPLY) and not replying:
                    # "100 Continue" (boto3 sends Expect: 100-continue with a PUT): the
                    # body has not even been sent, the server has executed nothing yet.
                    # The real reply comes after it and is the one to decide on.
                    client_out.write(chunk)
                    await client_out.drain()
                    continue
                if request and not replying:
                    if self._should_lose(bytes(request)):
                        return  # the server has executed it; the client never hears
                    replying = True
                client_out.write(chunk)
                await client_out.drain()

        pumps = [asyncio.ensure_future(requests()), asyncio.ensure_future(replies())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass
        finally:
            for pump in pumps:
                pump.cancel()
            for writer in (client_out, server_out):
                writer.transport.abort()

"""What a network backend does in a forked child with the client its parent opened.

A fork copies the parent's client objects, sockets included, but not its
threads or its running event loop. A child that went on using them would share
the parent's connections: its request and the parent's interleave on one
socket, each may read the other's reply, and an asyncio transport closed in the
child removes the socket from the parent's ``epoll`` set (the two processes
share it), which stalls the parent's next read until its timeout.

So after a fork, each live :class:`RemoteClientOwner` (the Redis and S3
backends) forgets its client in the child, never closing it: the inherited
objects are kept here, referenced, so that no destructor runs on them either
(a closed copy of a descriptor is harmless, but a library's clean-up may shut
a connection down or unregister it from the shared ``epoll`` set). The
backend then builds a client of its own, from the same settings, on its first
call, or refuses with :class:`~persistkit.errors.ForkedClientError` when it
was given a client it cannot rebuild.

The price: the child holds its copies of the parent's connection descriptors
until it exits, so a connection the parent closes meanwhile stays open on the
server (a close takes effect once every copy is closed) until then.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

from persistkit.errors import ForkedClientError

__all__ = [
    "RemoteClientOwner",
    "forget_clients_after_fork",
    "given_client_refused",
    "keep_inherited",
]


class RemoteClientOwner(Protocol):
    def _forget_after_fork(self) -> None:
        """In a forked child: drop the parent's client, threads and locks (touch none)."""


_owners: weakref.WeakSet[RemoteClientOwner] = weakref.WeakSet()
_inherited: list[object] = []
"""The parent's clients, as a child inherited them: kept, never used, closed or collected."""


def forget_clients_after_fork(owner: RemoteClientOwner) -> None:
    """Have ``owner._forget_after_fork()`` called in every child forked from now on."""
    _owners.add(owner)


def keep_inherited(*objects: object) -> None:
    """Keep ``objects`` (the parent's) for the child's lifetime, untouched."""
    _inherited.extend(objects)


def given_client_refused(owner: object, client: str, opener: str) -> ForkedClientError:
    """The refusal of a forked child's first call on ``owner``, which was given its
    ``client`` (so it cannot build one of its own); ``opener`` rebuilds it after a fork."""
    return ForkedClientError(
        f"{owner!r} was given its {client}, and this process was forked from the one "
        f"that made it: the client's connections are the parent's sockets, which this "
        f"process must not use. Open the backend again here with a client of its own "
        f"(or with {opener} / open_backend, which rebuild it after a fork)"
    )


def _forget_in_child() -> None:
    for owner in list(_owners):
        owner._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)

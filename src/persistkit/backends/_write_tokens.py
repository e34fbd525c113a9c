"""Write tokens: what makes a retried conditional write exactly-once on a network backend.

A compare-and-set, create-only write, conditional delete or commit whose reply
is lost (the connection dropped after the server executed it) is ambiguous:
it may have been applied. Retried as a fresh request it would either apply a
second time (an increment counted twice) or report a conflict with its own
value. So a network backend stores a *write token* atomically with every
conditional write, and a retry carries the token of the attempt it repeats:
the server then recognises its own write and answers "applied".

The token of a request lives here from its first attempt until its outcome is
known (success or a definite refusal). A retry is recognised by its content:
the same operation on the same key, with the same bytes and the same
expectation, gets the same token back. That is exactly the right notion of
"the same write": whoever repeats a request that was already applied finds
the state it asked for, so reporting success is true. Retries therefore need
no new argument through :class:`~persistkit.PersistBase` or a user's own
retry loop.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections import OrderedDict

__all__ = ["WriteTokens"]

_REMEMBERED = 4096
"""Ambiguous requests remembered per backend; the oldest are forgotten first."""


class WriteTokens:
    """The token of each request whose outcome is not known yet (thread-safe)."""

    def __init__(self, limit: int = _REMEMBERED, *, token_bytes: int = 16) -> None:
        self._limit = limit
        self._token_bytes = token_bytes
        self._open: OrderedDict[bytes, str] = OrderedDict()
        self._open_tokens: set[str] = set()
        self._lock = threading.Lock()

    @staticmethod
    def fingerprint(*parts: bytes | str | None) -> bytes:
        """One digest of a request's content (operation, key, bytes, expected version, ...)."""
        digest = hashlib.blake2b(digest_size=20)
        for part in parts:
            if part is None:
                digest.update(b"\x00")
                continue
            raw = part.encode() if isinstance(part, str) else part
            digest.update(b"\x01" + len(raw).to_bytes(8, "big") + raw)
        return digest.digest()

    def token_for(self, request: bytes) -> str:
        """The token of ``request``: the one of an unsettled earlier attempt, else a new one."""
        with self._lock:
            token = self._open.get(request)
            if token is None:
                token = secrets.token_hex(self._token_bytes)
                self._open[request] = token
                self._open_tokens.add(token)
                while len(self._open) > self._limit:
                    self._open_tokens.discard(self._open.popitem(last=False)[1])
            else:
                self._open.move_to_end(request)
            return token

    def settle(self, request: bytes) -> None:
        """``request`` got a definite answer: a later identical request is a new write."""
        with self._lock:
            token = self._open.pop(request, None)
            if token is not None:
                self._open_tokens.discard(token)

    def is_open(self, token: str) -> bool:
        """Whether ``token`` belongs to a request whose outcome is not known yet."""
        with self._lock:
            return token in self._open_tokens

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

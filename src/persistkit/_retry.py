"""Retries of transient backend errors, and only those."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from persistkit import _metrics
from persistkit.errors import BackendUnavailableError, TransientBackendError

__all__ = ["DEFAULT_RETRY", "NO_RETRY", "RetryPolicy"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to keep trying when the storage reports a transient failure.

    Only :class:`~persistkit.errors.TransientBackendError` is retried (connection
    refused or reset, timeouts, a Redis server still loading, S3 throttling);
    everything else is raised at once. When the policy runs out,
    :class:`~persistkit.errors.BackendUnavailableError` is raised from the last error.
    """

    attempts: int = 8
    initial_delay: float = 0.05
    max_delay: float = 2.0
    deadline: float = 30.0

    async def call(
        self, operation: Callable[[], Awaitable[T]], first_error: TransientBackendError
    ) -> T:
        """Retry ``operation``, which has already failed once with ``first_error``."""
        if self.attempts <= 1:
            raise BackendUnavailableError(f"{first_error} (not retried)") from first_error
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientBackendError),
            stop=stop_after_attempt(self.attempts - 1) | stop_after_delay(self.deadline),
            # Exponential backoff with jitter, so that clients that lost one
            # server together do not come back in lockstep.
            wait=wait_exponential(multiplier=self.initial_delay, max=self.max_delay)
            + wait_random(0, self.initial_delay),
            reraise=False,
        )
        try:
            async for attempt in retrying:
                recorder = _metrics.recorder
                if recorder is not None:
                    recorder.retries.add(1)  # every attempt here repeats a failed one
                with attempt:
                    return await operation()
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise BackendUnavailableError(
                f"gave up after {self.attempts} attempts: {last}"
            ) from last
        raise AssertionError("unreachable: tenacity either returns or raises")


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)

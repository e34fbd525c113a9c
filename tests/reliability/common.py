"""What the reliability tests share: trial counts, recorded results, checked values."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import asdict, dataclass, field
from typing import Any, ParamSpec, TypeVar

import pytest

__all__ = [
    "LONG",
    "Control",
    "InlineExecutor",
    "Result",
    "count",
    "counts_by_mode",
    "make_value",
    "record",
    "recorded",
    "value_problem",
]

P = ParamSpec("P")
T = TypeVar("T")

LONG = os.environ.get("PERSISTKIT_LONG", "") not in ("", "0")
"""``PERSISTKIT_LONG=1``: the full trial counts of the published report."""


_counts: dict[str, tuple[int, int]] = {}


def count(bounded: int, long: int, what: str) -> int:
    """The number of trials for this run's mode; ``what`` names it in the report."""
    _counts[what] = (bounded, long)
    return long if LONG else bounded


@dataclass
class Control:
    """A deliberately broken writer the harness must catch."""

    name: str
    trials: int
    violations: int

    @property
    def caught(self) -> bool:
        return self.violations > 0


@dataclass
class Result:
    """One row of ``docs/reliability.md``."""

    fault: str
    injection: str
    expected: str
    trials: int
    violations: int
    counts: dict[str, int] = field(default_factory=dict)
    controls: list[Control] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


_results: list[Result] = []

CALL_OUTCOME = pytest.StashKey[bool]()
"""Whether a test's call passed (set by conftest.py's report hook, read by fixtures that record)."""


def record(result: Result) -> Result:
    """Keep ``result`` for the report written at the end of the session."""
    _results.append(result)
    return result


def counts_by_mode() -> dict[str, tuple[int, int]]:
    """Every trial count of the suite: (bounded, long), by what it counts."""
    return dict(_counts)


def recorded() -> list[dict[str, Any]]:
    return [
        {**asdict(result), "controls": [{**asdict(c), "caught": c.caught} for c in result.controls]}
        for result in _results
    ]


def make_value(key: str, seq: int, size: int = 200) -> dict[str, Any]:
    """A value that proves itself whole: a digest over its other fields."""
    pad = "".join(chr(ord("a") + (seq + index) % 26) for index in range(size))
    body = f"{key}|{seq}|{pad}"
    return {
        "key": key,
        "seq": seq,
        "pad": pad,
        "sum": hashlib.blake2b(body.encode(), digest_size=8).hexdigest(),
    }


def value_problem(value: Any) -> str | None:
    """Why ``value`` is not a whole :func:`make_value` value; ``None`` when it is."""
    if not isinstance(value, dict) or set(value) != {"key", "seq", "pad", "sum"}:
        return f"not a value this suite wrote: {str(value)[:80]!r}"
    body = f"{value['key']}|{value['seq']}|{value['pad']}"
    if hashlib.blake2b(body.encode(), digest_size=8).hexdigest() != value["sum"]:
        return f"digest mismatch in {value['key']} seq {value['seq']}"
    return None


class InlineExecutor(Executor):
    """Runs each job at once in the calling thread.

    The simulated file system counts calls to cut the power after each one;
    strace counts syscalls per thread. Both need every syscall of a write on
    one thread, in a deterministic order.
    """

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # a simulated crash included: the caller sees it
            future.set_exception(exc)
        return future

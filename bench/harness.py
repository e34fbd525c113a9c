"""Interleaved rounds, medians and same-run ratios.

A :class:`Group` holds cases that answer one question (say, "one durable
write"), one of them the group's reference. Every round runs each case once,
in the same order (A, B, C, A, B, C, ...), so that a slow minute on a shared
machine hits every case alike. A case's ratio is the median over rounds of
``case / reference`` taken within the same round, which cancels most of the
drift a ratio of two medians would keep.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Case", "CaseResult", "Group", "GroupResult", "Sample", "run_group"]

Kind = Literal["reference", "persistkit", "peer"]


@dataclass(frozen=True, slots=True)
class Sample:
    """``operations`` done in ``seconds`` (setup not included)."""

    operations: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.operations / self.seconds if self.seconds > 0 else float("inf")


SampleFn = Callable[[], Awaitable[Sample]]


@dataclass(slots=True)
class Case:
    name: str
    kind: Kind
    run: SampleFn
    """One sample: does its work, times only the work, returns what it timed."""
    reference: str | None = None
    """The case it is compared with; ``None``: the group's reference."""
    note: str = ""


@dataclass(slots=True)
class Group:
    key: str
    title: str
    unit: str
    """What one operation is: ``writes``, ``reads``, ``files``, ``ticks``..."""
    reference: str
    cases: list[Case]
    rounds: int
    setup: Callable[[], Awaitable[None]] | None = None
    teardown: Callable[[], Awaitable[None]] | None = None
    warmup: bool = True
    """Run every case once, unrecorded, before the rounds (caches, imports, JIT)."""
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class CaseResult:
    name: str
    kind: Kind
    reference: str
    samples: list[Sample]
    ratios: list[float]
    note: str = ""

    @property
    def rates(self) -> list[float]:
        return [sample.rate for sample in self.samples]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def low(self) -> float:
        return min(self.rates)

    @property
    def high(self) -> float:
        return max(self.rates)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)


@dataclass(slots=True)
class GroupResult:
    key: str
    title: str
    unit: str
    reference: str
    rounds: int
    cases: list[CaseResult]
    notes: list[str]

    def case(self, name: str) -> CaseResult:
        for case in self.cases:
            if case.name == name:
                return case
        raise KeyError(f"no case {name!r} in group {self.key!r}")

    def has(self, name: str) -> bool:
        return any(case.name == name for case in self.cases)

    def pair_ratio(self, name: str, other: str) -> float:
        """Median over rounds of ``name / other``, both measured in the same round."""
        mine, theirs = self.case(name).samples, self.case(other).samples
        return statistics.median(a.rate / b.rate for a, b in zip(mine, theirs, strict=True))


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def run_group(group: Group) -> GroupResult:
    """Run ``group`` in interleaved rounds and pair every sample with its reference's."""
    names = [case.name for case in group.cases]
    if group.reference not in names:
        raise ValueError(
            f"group {group.key}: reference {group.reference!r} is not one of its cases"
        )
    if group.setup is not None:
        _progress(f"[{group.key}] setting up")
        await group.setup()
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    started = time.perf_counter()
    try:
        if group.warmup:
            for case in group.cases:
                await case.run()
        for round_number in range(1, group.rounds + 1):
            for case in group.cases:
                samples[case.name].append(await case.run())
            elapsed = time.perf_counter() - started
            _progress(f"[{group.key}] round {round_number}/{group.rounds} done ({elapsed:.1f} s)")
    finally:
        if group.teardown is not None:
            await group.teardown()
    results = []
    for case in group.cases:
        reference = case.reference or group.reference
        ratios = [
            mine.rate / theirs.rate
            for mine, theirs in zip(samples[case.name], samples[reference], strict=True)
        ]
        results.append(
            CaseResult(case.name, case.kind, reference, samples[case.name], ratios, case.note)
        )
    return GroupResult(
        group.key, group.title, group.unit, group.reference, group.rounds, results, group.notes
    )


def timed(operations: int, started: float) -> Sample:
    """The sample for ``operations`` done since ``started`` (a ``perf_counter`` value)."""
    return Sample(operations, time.perf_counter() - started)

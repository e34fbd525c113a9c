"""Power loss at every step, on the simulated file system.

For a writer under test and a workload (a list of steps), :func:`explore`
cuts the power after each call the writer makes (its own startup included),
builds every disk state that cut could leave (:meth:`SimFS.possible_states`),
and on each one runs startup (:meth:`PersistBase.wait_for_init`) - itself cut
after each of its calls, every resulting state started again - and checks what
a user would: each value is the old or the new one, never torn, every
acknowledged step is present, no temp file is left, corrupt files end up in
quarantine and nowhere is one deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from common import InlineExecutor, value_problem
from simfs import DiskState, SimFS, SimulatedCrash
from writers import Key, Step, WriterUnderTest

from persistkit._store import PersistBase
from persistkit.backends._file import QUARANTINE_DIR, TEMP_PREFIX, FileBackend
from persistkit.errors import EntityNotFoundError

__all__ = [
    "ROOT",
    "Exploration",
    "Scenario",
    "explore",
    "explore_kill_then_power_loss",
    "state_from_files",
]

ROOT = "/data"
_INLINE = InlineExecutor()


def state_from_files(files: Mapping[str, bytes]) -> DiskState:
    """A disk holding ``files`` (paths relative to the root), all durable."""
    sim = SimFS()
    for path, data in files.items():
        parts = f"{ROOT}/{path}".strip("/").split("/")
        for depth in range(1, len(parts)):
            directory = "/" + "/".join(parts[:depth])
            try:
                sim.mkdir(directory)
            except FileExistsError:
                pass
        fd = sim.open("/" + "/".join(parts), 0o1 | 0o100)  # O_WRONLY | O_CREAT
        sim.write(fd, data)
        sim.close(fd)
    return sim.live_state()


def _disk(path: str) -> str:
    """A path under the backend root as :meth:`DiskState.files` names it."""
    return f"{ROOT.strip('/')}/{path}"


@dataclass(frozen=True)
class Scenario:
    name: str
    initial: Mapping[str, bytes]
    """Files on the disk before the run, by path under the root."""
    steps: list[Step]
    entities: tuple[str, ...] = ("signal", "risk")
    corrupt: frozenset[str] = frozenset()
    """Paths (under the root) of files startup must quarantine, byte for byte."""

    def initial_values(self) -> dict[Key, Any]:
        values: dict[Key, Any] = {}
        for path, data in self.initial.items():
            if path in self.corrupt or "/." in f"/{path}":
                continue
            entity, _, filename = path.rpartition("/")
            values[(entity, filename.removesuffix(".json"))] = orjson.loads(data)
        return values


@dataclass
class Exploration:
    writer: str
    scenario: str
    crash_points: int = 0
    """Calls after which the writer's process lost power."""
    post_crash_states: int = 0
    """Distinct disk states those cuts left."""
    recovery_crash_points: int = 0
    """Calls of startup after which it lost power in turn."""
    recovery_cut_states: int = 0
    """Post-crash disk states whose startup was cut after each of its calls."""
    startups_checked: int = 0
    """Startups run to the end and checked (each a trial)."""
    violations: list[str] = field(default_factory=list)


def _apply(values: dict[Key, Any], changes: Iterable[tuple[Key, Any]]) -> dict[Key, Any]:
    result = dict(values)
    for key, value in changes:
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def _allowed(
    initial: dict[Key, Any], steps: list[Step], acked: int, atomic: bool
) -> list[dict[Key, Any]]:
    """Every state a correct writer may leave: acknowledged steps, plus the one in flight."""
    before = initial
    for step in steps[:acked]:
        before = _apply(before, step.items())
    if acked >= len(steps):
        return [before]
    in_flight = list(steps[acked].items())
    cut_sizes = [0, len(in_flight)] if atomic else range(len(in_flight) + 1)
    return [_apply(before, in_flight[:size]) for size in cut_sizes]


async def _startup(state: DiskState, entities: tuple[str, ...], crash_at: int | None) -> Any:
    """Start every store on ``state``; returns the SimFS and the reports (``None`` if cut)."""
    sim = SimFS(state, crash_at=crash_at)
    backend = FileBackend(ROOT, os_layer=sim, executor=_INLINE)
    reports = []
    try:
        for entity in entities:
            reports.append(await PersistBase(entity, backend=backend).wait_for_init())
    except SimulatedCrash:
        return sim, None
    return sim, reports


class _Checker:
    def __init__(
        self, scenario: Scenario, result: Exploration, recovery_crashes: bool, recovery_every: int
    ) -> None:
        self.scenario = scenario
        self.result = result
        self.recovery_crashes = recovery_crashes
        self.recovery_every = recovery_every
        self._seen: set[tuple[str, int]] = set()

    async def check(self, state: DiskState, allowed: list[dict[Key, Any]], tag: int) -> None:
        """Start up on ``state`` (cut at each call, then to the end) and check it."""
        marker = (state.fingerprint(), tag)
        if marker in self._seen:
            return
        self._seen.add(marker)
        if self.recovery_crashes and len(self._seen) % self.recovery_every == 0:
            self.result.recovery_cut_states += 1
            crash_at = 0
            while True:
                sim, reports = await _startup(state, self.scenario.entities, crash_at)
                if reports is not None:
                    break  # startup completed before the cut: no more cut points
                self.result.recovery_crash_points += 1
                for after in sim.possible_states():
                    await self._final(after, allowed, f"startup cut after {crash_at} calls")
                crash_at += 1
        await self._final(state, allowed, "")

    async def _final(self, state: DiskState, allowed: list[dict[Key, Any]], how: str) -> None:
        self.result.startups_checked += 1
        problems = await _verify(state, allowed, self.scenario)
        if problems:  # one violation per startup, however many things it found wrong
            self.result.violations.append("; ".join(problems) + (f" ({how})" if how else ""))


async def _verify(state: DiskState, allowed: list[dict[Key, Any]], scenario: Scenario) -> list[str]:
    problems: list[str] = []
    before = state.files()
    for path in scenario.corrupt:
        if _disk(path) not in before and not _in_quarantine(before, scenario.initial[path]):
            problems.append(f"corrupt file {path} was deleted")
    sim, reports = await _startup(state, scenario.entities, None)
    assert reports is not None
    backend = FileBackend(ROOT, os_layer=sim, executor=_INLINE)
    after = sim.live_state().files()
    for report in reports:
        for finding in report.corrupt:
            if f"{finding.key}.json" not in scenario.corrupt:
                problems.append(f"torn value {finding.key} quarantined: {finding.reason}")
    for path in scenario.corrupt:
        if _disk(path) in after:
            problems.append(f"corrupt file {path} still in place after startup")
        if not _in_quarantine(after, scenario.initial[path]):
            problems.append(f"corrupt file {path} not found in quarantine")
    for path in after:
        if path.rpartition("/")[2].startswith(TEMP_PREFIX):
            problems.append(f"temp file {path} left after startup")
    found: dict[Key, Any] = {}
    for entity in scenario.entities:
        store: PersistBase[Any] = PersistBase(entity, backend=backend)
        for entry in await store.list_quarantined():
            try:
                await backend.read_quarantined(entry.id)
            except EntityNotFoundError:
                problems.append(f"quarantine lists {entry.id} but its data is not there")
        async for entity_id in store.keys():
            value = await store.read_value(entity_id)
            found[(entity, entity_id)] = value
            problem = value_problem(value)
            if problem is not None:
                problems.append(f"{entity}/{entity_id}: {problem}")
    if found not in allowed:
        problems.append(_describe_difference(found, allowed))
    return problems


def _in_quarantine(files: Mapping[str, bytes], data: bytes) -> bool:
    marker = f"/{QUARANTINE_DIR}/"
    return any(marker in f"/{path}" and content == data for path, content in files.items())


def _describe_difference(found: dict[Key, Any], allowed: list[dict[Key, Any]]) -> str:
    acknowledged = allowed[0]
    parts = []
    for key in sorted(set(found) | set(acknowledged)):
        if found.get(key) == acknowledged.get(key):
            continue
        if any(found.get(key) == option.get(key) for option in allowed[1:]):
            continue  # the in-flight write: allowed alone (the mix is reported below)
        have, want = _seq(found.get(key)), _seq(acknowledged.get(key))
        kind = "lost acknowledged write" if have != want else "unexpected value"
        parts.append(f"{kind} {key[0]}/{key[1]}: found seq {have}, acknowledged seq {want}")
    return "; ".join(parts) or "in-flight step applied only in part"


def _seq(value: Any) -> Any:
    return value.get("seq") if isinstance(value, dict) else value


async def explore(
    writer: WriterUnderTest,
    scenario: Scenario,
    *,
    recovery_crashes: bool,
    recovery_every: int = 1,
    short_writes: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Exploration:
    """Cut the power after every call of ``writer`` running ``scenario``; check each outcome.

    A control (``writer.broken``) stops at the first crash point that shows a violation.

    ``recovery_every``: cut the startup of one distinct post-crash state in that
    many after each of its calls (every state is still started and checked).
    """
    result = Exploration(writer.name, scenario.name)
    checker = _Checker(scenario, result, recovery_crashes, recovery_every)
    initial_state = state_from_files(scenario.initial)
    initial_values = scenario.initial_values()
    crash_at = 0
    while True:
        sim = SimFS(initial_state, crash_at=crash_at, short_writes=short_writes)
        backend = writer.backend_class(ROOT, os_layer=sim, executor=_INLINE)
        stores = {entity: PersistBase(entity, backend=backend) for entity in scenario.entities}
        acked = 0
        finished = False
        try:
            for store in stores.values():
                await store.wait_for_init()
            for step in scenario.steps:
                await writer.run_step(stores, step)
                acked += 1
            finished = True
        except SimulatedCrash:
            pass
        if not finished and not sim.crashed:
            raise AssertionError(f"{writer.name} stopped without a crash at {crash_at}")
        allowed = _allowed(initial_values, scenario.steps, acked, writer.atomic_steps)
        states = sim.possible_states() if not finished else [sim.durable_state()]
        result.crash_points += 1
        for state in states:
            result.post_crash_states += 1
            await checker.check(state, allowed, acked)
        if on_progress is not None:
            on_progress(crash_at, len(result.violations))
        if finished or (writer.broken and result.violations):
            break  # a control is caught at its first violation: the rest is its cost only
        crash_at += 1
    return result


async def _run_steps(
    writer: WriterUnderTest, sim: SimFS, scenario: Scenario, steps: list[Step]
) -> tuple[int, list[str]]:
    """Start the stores and run ``steps`` on ``sim``.

    Returns how many steps were acknowledged, and the values startup found torn.
    """
    backend = writer.backend_class(ROOT, os_layer=sim, executor=_INLINE)
    stores = {entity: PersistBase(entity, backend=backend) for entity in scenario.entities}
    acked = 0
    torn: list[str] = []
    try:
        for store in stores.values():
            report = await store.wait_for_init()
            torn += [f"{finding.key}: {finding.reason}" for finding in report.corrupt]
        for step in steps:
            await writer.run_step(stores, step)
            acked += 1
    except SimulatedCrash:
        pass
    return acked, torn


async def explore_kill_then_power_loss(
    writer: WriterUnderTest, scenario: Scenario, *, short_writes: int | None = None
) -> Exploration:
    """``kill -9`` after every call, a restarted bot redoing what was not acknowledged, then
    a power cut once everything is acknowledged.

    What a killed process left un-fsynced is still in the page cache after the
    kill, so the restarted process sees it as done; only an fsync makes it
    durable. Every acknowledged write must survive the later power cut.
    """
    result = Exploration(writer.name, scenario.name)
    checker = _Checker(scenario, result, recovery_crashes=False, recovery_every=1)
    initial_state = state_from_files(scenario.initial)
    final = _allowed(scenario.initial_values(), scenario.steps, len(scenario.steps), True)
    crash_at = 0
    while True:
        sim = SimFS(initial_state, crash_at=crash_at, short_writes=short_writes)
        acked, _ = await _run_steps(writer, sim, scenario, scenario.steps)
        if not sim.crashed:
            break  # the whole workload ran before the kill point: every cut point done
        result.crash_points += 1
        restarted = sim.after_process_crash()
        redone, torn = await _run_steps(writer, restarted, scenario, scenario.steps[acked:])
        if redone != len(scenario.steps) - acked:
            raise AssertionError(f"{writer.name}: the restarted run stopped early")
        result.startups_checked += 1
        result.violations += [f"torn value after kill at call {crash_at}: {t}" for t in torn]
        for state in restarted.possible_states():
            result.post_crash_states += 1
            await checker.check(state, final, crash_at)
        crash_at += 1
    return result

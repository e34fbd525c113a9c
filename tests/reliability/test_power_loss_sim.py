"""Power loss after every call of a write and of startup, on the simulated file system."""

from __future__ import annotations

import sys
from collections.abc import Callable

import orjson
import pytest
from common import LONG, Control, Result, count, make_value, record
from crashsim import Exploration, Scenario, explore, explore_kill_then_power_loss
from writers import CONTROLS, WRITERS, WriterUnderTest

SHORT_WRITES = count(0, 64, "simulation: bytes per write call (0: whole value at once)") or None
"""Long mode: at most 64 bytes per write call, so a value needs several (more cut points)."""

VALUE_SIZE = count(120, 300, "simulation: value size in bytes")


def _value(key: str, seq: int) -> bytes:
    return orjson.dumps(make_value(key, seq, VALUE_SIZE))


def _v(key: str, seq: int) -> dict[str, object]:
    return make_value(key, seq, VALUE_SIZE)


WRITES = Scenario(
    name="overwrite, create, new directory, remove, overwrite",
    initial={"signal/a.json": _value("a", 1), "signal/c.json": _value("c", 1)},
    steps=[
        {("signal", "a"): _v("a", 2)},  # replace an existing value
        {("signal", "b"): _v("b", 1)},  # a new file in an existing directory
        {("risk", "p"): _v("p", 1)},  # a new directory
        {("signal", "a"): None},  # a removal
        {("signal", "b"): _v("b", 2)},  # replace the value created above
        {("risk", "p"): _v("p", 2), ("risk", "q"): _v("q", 1)},  # two keys in one step
    ]
    + (
        [
            {("signal", "c"): None},
            {("signal", "a"): _v("a", 3)},  # a removed key written again
            {("risk", "q"): _v("q", 2), ("signal", "b"): None},
        ]
        if LONG
        else []
    ),
)

STARTUP_REPAIR = Scenario(
    name="startup with a torn value and an orphan temp file",
    initial={
        "signal/a.json": _value("a", 1),
        "signal/bad.json": _value("bad", 1)[:37],
        "signal/.tmp-0123456789abcdef": _value("a", 2)[:50],
        "risk/p.json": _value("p", 1),
    },
    steps=[],
    corrupt=frozenset({"signal/bad.json"}),
)


def _progress(name: str) -> Callable[[int, int], None]:
    def report(crash_at: int, violations: int) -> None:
        if crash_at % 20 == 0:
            print(f"  {name}: cut {crash_at}, {violations} violations", file=sys.stderr)

    return report


async def _run(writer: WriterUnderTest, scenario: Scenario, recovery: bool) -> Exploration:
    return await explore(
        writer,
        scenario,
        recovery_crashes=recovery,
        short_writes=SHORT_WRITES,
        on_progress=_progress(f"{writer.name} / {scenario.name}"),
    )


def _assert_sound(result: Exploration, controls: list[Control]) -> None:
    """No violation by persistkit's writer, and every broken control caught."""
    assert result.crash_points > 10
    assert result.violations == [], "\n".join(sorted(set(result.violations))[:20])
    for control in controls:
        assert control.caught, f"the harness did not catch the control {control.name!r}"


@pytest.mark.parametrize("scenario", [WRITES, STARTUP_REPAIR], ids=["writes", "startup-repair"])
async def test_power_cut_after_every_call_keeps_old_or_new(scenario: Scenario) -> None:
    writer = WRITERS[0]
    result = await _run(writer, scenario, recovery=True)
    controls = []
    if scenario is WRITES:
        for control in CONTROLS:
            found = await _run(control, scenario, recovery=False)
            controls.append(Control(control.name, found.startups_checked, len(found.violations)))
    record(
        Result(
            fault=f"power loss at every step: {scenario.name}",
            injection="simulated file system (tests/reliability/simfs.py): the process stops "
            "after each call of the write and of startup; every disk state the cut can leave "
            "(durable only, plus each in-order prefix of un-fsynced operations, plus a torn "
            "write) is started again, itself cut after each startup call",
            expected="old or new value, never torn, every acknowledged write present, no temp "
            "left" + (", corrupt file quarantined and never deleted" if scenario.corrupt else ""),
            trials=result.startups_checked,
            violations=len(result.violations),
            counts={
                "write crash points": result.crash_points,
                "post-crash disk states": result.post_crash_states,
                "startup crash points": result.recovery_crash_points,
                "startups checked": result.startups_checked,
            },
            controls=controls,
        )
    )
    _assert_sound(result, controls)


async def check_kill_then_power_loss(
    writer: WriterUnderTest,
    controls: list[WriterUnderTest],
    scenario: Scenario,
    *,
    fault: str,
    injection: str,
    expected: str,
) -> None:
    """Run :func:`explore_kill_then_power_loss` on ``writer`` and the controls, record, assert."""
    result = await explore_kill_then_power_loss(writer, scenario, short_writes=SHORT_WRITES)
    caught = []
    for control in controls:
        found = await explore_kill_then_power_loss(control, scenario, short_writes=SHORT_WRITES)
        caught.append(Control(control.name, found.startups_checked, len(found.violations)))
    record(
        Result(
            fault=fault,
            injection=injection,
            expected=expected,
            trials=result.startups_checked,
            violations=len(result.violations),
            counts={
                "kill points": result.crash_points,
                "post-power-cut disk states": result.post_crash_states,
                "startups checked": result.startups_checked,
            },
            controls=caught,
        )
    )
    _assert_sound(result, caught)


async def test_kill_at_every_call_then_restart_then_power_cut_keeps_acknowledged_writes() -> None:
    await check_kill_then_power_loss(
        WRITERS[0],
        CONTROLS,
        WRITES,
        fault=f"kill -9 at every step, restart, then power loss: {WRITES.name}",
        injection="simulated file system: the process is killed after each call (the page "
        "cache survives, un-fsynced operations stay pending), a new process starts and "
        "redoes the unacknowledged steps, then the power is cut; every disk state the cut "
        "can leave is started and checked",
        expected="every acknowledged write present after the power cut, never torn",
    )

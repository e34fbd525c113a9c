"""Two processes interleaving tick commits and plain writes on shared keys, cut by power loss.

On one machine each key has one history across processes, whichever writes it. Two
backends on one root (two processes, each with its own view of the shared
commit journal) take turns: one commits a tick of a signal and its risk
position, the other overwrites the signal with a plain write, and so on, with
the appliers running in between and checkpoints every few ticks. The power is
cut after every call either process makes, and every disk state a cut can
leave is started and checked: every acknowledged step present in the order it
was acknowledged, whoever made it, ticks whole, nothing torn.
"""

from __future__ import annotations

import orjson
from common import Control, Result, count, make_value, record
from crashsim import Exploration, Scenario, explore
from test_power_loss_sim import SHORT_WRITES, VALUE_SIZE, _assert_sound, _progress
from writers import TICK_JOURNAL_LIMIT, TWO_PROCESS_CONTROLS, TWO_PROCESS_WRITERS, WriterUnderTest

STEPS = count(8, 14, "simulation: steps of two processes (ticks and plain writes) per workload")


def _v(key: str, seq: int) -> dict[str, object]:
    return make_value(key, seq, VALUE_SIZE)


def _step(number: int) -> dict[tuple[str, str], object]:
    """Even steps: a tick of signal + risk on instrument a or b; odd: a plain signal write.

    Both processes write the same keys: each one's write overwrites the other's.
    """
    instrument = "ab"[(number // 2) % 2]
    if number % 2:
        return {("signal", instrument): _v(instrument, number)}
    if number % 6 == 4:
        return {("signal", instrument): None, ("risk", instrument): None}
    return {
        ("signal", instrument): _v(instrument, number),
        ("risk", instrument): _v(instrument, number),
    }


SCENARIO = Scenario(
    name=f"{STEPS} steps alternating between two processes, checkpoint every "
    f"{TICK_JOURNAL_LIMIT} journal bytes",
    initial={"signal/a.json": orjson.dumps(_v("a", 0)), "risk/a.json": orjson.dumps(_v("a", 0))},
    steps=[_step(number) for number in range(1, STEPS + 1)],
)


async def _run(writer: WriterUnderTest) -> Exploration:
    return await explore(
        writer,
        SCENARIO,
        recovery_crashes=False,
        short_writes=SHORT_WRITES,
        on_progress=_progress(f"{writer.name}"),
    )


async def test_power_cut_at_every_call_of_two_processes_keeps_one_history_per_key() -> None:
    result = await _run(TWO_PROCESS_WRITERS[0])
    controls = []
    for control in TWO_PROCESS_CONTROLS:
        found = await _run(control)
        controls.append(Control(control.name, found.startups_checked, len(found.violations)))
    record(
        Result(
            fault=f"power loss at every step of two processes sharing keys: {SCENARIO.name}",
            injection="simulated file system, two backends on one root (each its own view of "
            "the shared journal, its own lock descriptors): ticks and plain writes alternate "
            "between them on the same keys, appliers in between; the power is cut after each "
            "call of either and every disk state the cut can leave is started",
            expected="every acknowledged step present in acknowledgement order whichever "
            "process made it, ticks all or nothing, never torn, no temp left",
            trials=result.startups_checked,
            violations=len(result.violations),
            counts={
                "crash points": result.crash_points,
                "post-crash disk states": result.post_crash_states,
                "startups checked": result.startups_checked,
            },
            controls=controls,
        )
    )
    _assert_sound(result, controls)

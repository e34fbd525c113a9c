"""Tick commits cut by power loss after every call of commit, apply, checkpoint and recovery.

A bot's tick writes a signal and its risk position together (``async with
transaction():``). On the simulated file system the power is cut after each
call the journal makes - appending and fsyncing the record, the applier
writing the files, the checkpoint syncing them and emptying the journal, and
the replay at the next start, itself cut after each of its calls - and every
disk state a cut can leave is started and checked: each tick all or nothing
(never a signal without its risk position, or the reverse), every acknowledged
tick present, no torn value, no temp file left.
"""

from __future__ import annotations

import orjson
from common import Control, Result, count, make_value, record
from crashsim import Exploration, Scenario, explore
from test_power_loss_sim import (
    SHORT_WRITES,
    VALUE_SIZE,
    _assert_sound,
    _progress,
    check_kill_then_power_loss,
)
from writers import (
    JOURNALED_PLAIN_WRITERS,
    TICK_CONTROLS,
    TICK_JOURNAL_LIMIT,
    TICK_WRITERS,
    NoJournalFsyncBackend,
    WriterUnderTest,
)

TICKS = count(6, 8, "simulation: ticks (signal + risk commits) per workload")
REPLAY_CUT_EVERY = count(
    160, 20, "simulation: N, where one tick post-crash state in N has its startup cut at every call"
)
"""Cutting a startup after each call multiplies its state's cost by ~400: one in this many."""


def _v(key: str, seq: int) -> dict[str, object]:
    return make_value(key, seq, VALUE_SIZE)


def _tick(number: int) -> dict[tuple[str, str], object]:
    """Tick ``number``: a signal and its risk position, on three instruments in turn.

    Every fourth tick closes the instrument (both removed); the next one opens it again.
    """
    instrument = "abc"[number % 3]
    if number % 4 == 3:
        return {("signal", instrument): None, ("risk", instrument): None}
    return {
        ("signal", instrument): _v(instrument, number),
        ("risk", instrument): _v(instrument, number),
    }


TICK_SCENARIO = Scenario(
    name=f"{TICKS} ticks of signal + risk, checkpoint every {TICK_JOURNAL_LIMIT} journal bytes",
    initial={
        "signal/a.json": orjson.dumps(_v("a", 0)),
        "risk/a.json": orjson.dumps(_v("a", 0)),
    },
    steps=[_tick(number) for number in range(1, TICKS + 1)],
)


async def _run(writer: WriterUnderTest, recovery: bool) -> Exploration:
    return await explore(
        writer,
        TICK_SCENARIO,
        recovery_crashes=recovery,
        recovery_every=REPLAY_CUT_EVERY,
        short_writes=SHORT_WRITES,
        on_progress=_progress(f"{writer.name} / ticks"),
    )


async def test_power_cut_after_every_call_of_a_tick_commit_keeps_ticks_whole() -> None:
    result = await _run(TICK_WRITERS[0], recovery=True)
    controls = []
    for control in TICK_CONTROLS:
        found = await _run(control, recovery=False)
        controls.append(Control(control.name, found.startups_checked, len(found.violations)))
    record(
        Result(
            fault=f"power loss at every step of tick commits: {TICK_SCENARIO.name}",
            injection="simulated file system: the process stops after each call of the "
            "transaction commit (journal append + fsync), of the applier's pass (files "
            "written, not synced), of the checkpoint (syncfs, ftruncate, fsync) and of "
            "startup's journal replay; every disk state the cut can leave is started again, "
            "itself cut after each startup call",
            expected="each tick all or nothing (signal and risk together), every acknowledged "
            "tick present, never torn, no temp left",
            trials=result.startups_checked,
            violations=len(result.violations),
            counts={
                "commit/apply/checkpoint crash points": result.crash_points,
                "post-crash disk states": result.post_crash_states,
                "post-crash states whose startup (replay) was cut at every call": (
                    result.recovery_cut_states
                ),
                "startup (replay) crash points": result.recovery_crash_points,
                "startups checked": result.startups_checked,
            },
            controls=controls,
        )
    )
    _assert_sound(result, controls)


JOURNALED_PLAIN_CONTROLS = [
    WriterUnderTest(
        "plain write acknowledged before the journal fsync", NoJournalFsyncBackend, broken=True
    )
]


async def test_power_cut_after_every_call_of_journaled_plain_writes_keeps_every_write() -> None:
    """A root that keeps history (the default) commits each plain write through the
    journal: the same cuts, each key written on its own (no tick). Startups are not
    cut here: the replay they run is the tick commits' (above), and this keeps the
    case to a fraction of its cost."""
    writer = JOURNALED_PLAIN_WRITERS[0]
    result = await _run(writer, recovery=False)
    controls = []
    for control in JOURNALED_PLAIN_CONTROLS:
        found = await _run(control, recovery=False)
        controls.append(Control(control.name, found.startups_checked, len(found.violations)))
    record(
        Result(
            fault="power loss at every step of plain writes on a root with history: "
            f"{TICK_SCENARIO.name}, each key its own write",
            injection="simulated file system: the process stops after each call of the "
            "plain write (journal append + fsync, then its file written unsynced), of the "
            "applier's pass and of the checkpoint (history archive included); every disk "
            "state the cut can leave is started again",
            expected="old or new value, never torn, every acknowledged write present, no temp left",
            trials=result.startups_checked,
            violations=len(result.violations),
            counts={
                "write/apply/checkpoint crash points": result.crash_points,
                "post-crash disk states": result.post_crash_states,
                "startups checked": result.startups_checked,
            },
            controls=controls,
        )
    )
    _assert_sound(result, controls)


async def test_kill_at_every_call_of_tick_commits_then_power_cut_keeps_acknowledged_ticks() -> None:
    await check_kill_then_power_loss(
        TICK_WRITERS[0],
        TICK_CONTROLS,
        TICK_SCENARIO,
        fault=f"kill -9 at every step of tick commits, restart, then power loss ({TICKS} ticks)",
        injection="simulated file system: the process is killed after each call (page cache "
        "kept); a new process replays the dead journal, redoes the unacknowledged ticks, "
        "then the power is cut and every disk state it can leave is started",
        expected="every acknowledged tick present after the power cut, whole",
    )

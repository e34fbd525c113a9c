"""Leftovers of a startup that was itself cut short, on a real directory.

Found by the power-loss simulation (``test_power_loss_sim.py``): a quarantine
cut while writing its reason file left a temp file in the quarantine folder
that no startup removed; one cut after the reason file but before the move
left a listed entry with no data; a directory created by a killed process
was written into without ever being made durable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import InlineExecutor
from crashsim import ROOT, state_from_files
from simfs import SimFS

from persistkit import FileBackend, PersistBase


async def test_startup_sweeps_temp_files_of_an_interrupted_quarantine(tmp_path: Path) -> None:
    (tmp_path / "signal").mkdir()
    (tmp_path / "signal" / "a.json").write_bytes(b'{"ok": 1}')
    leftover = tmp_path / ".quarantine" / "signal" / ".tmp-0123456789abcdef"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b'{"key": "signal/b", "rea')

    store: PersistBase[object] = PersistBase("signal", backend=FileBackend(tmp_path))
    report = await store.wait_for_init()

    assert not leftover.exists()
    assert report.orphans == [".quarantine/signal/.tmp-0123456789abcdef"]
    assert await store.read_value("a") == {"ok": 1}


async def test_quarantine_does_not_list_a_reason_whose_value_was_never_moved(
    tmp_path: Path,
) -> None:
    (tmp_path / "signal").mkdir()
    (tmp_path / "signal" / "bad.json").write_bytes(b'{"torn": ')
    quarantine = tmp_path / ".quarantine" / "signal"
    quarantine.mkdir(parents=True)
    (quarantine / "bad@1-abcdef.reason").write_bytes(
        b'{"key": "signal/bad", "reason": "unparseable JSON", "quarantined_at": 1.0}'
    )

    store: PersistBase[object] = PersistBase("signal", backend=FileBackend(tmp_path))
    report = await store.wait_for_init()

    listed = await store.list_quarantined()
    assert [finding.key for finding in report.corrupt] == ["signal/bad"]
    assert [entry.id for entry in listed] == [report.corrupt[0].quarantine_id]
    assert await store.backend.read_quarantined(listed[0].id) == b'{"torn": '


def _after_power_cut(process: SimFS) -> FileBackend:
    """A backend started on what a power cut leaves of ``process``'s disk."""
    return FileBackend(ROOT, os_layer=SimFS(process.durable_state()), executor=InlineExecutor())


async def test_a_directory_left_by_a_killed_writer_is_made_durable_before_the_write() -> None:
    """Found by the kill-then-power-cut simulation: a killed process had created the
    directory but not yet fsynced its parent; the next process found it in place,
    wrote into it and acknowledged, and a power cut took the directory and the value.
    The durable replace (``history=None``) is checked on the file itself; a root with
    history (plain writes journaled) by a start after the power cut.
    """
    for history in (False, True):
        sim = SimFS(state_from_files({"signal/a.json": b"{}"}))
        sim.mkdir(f"{ROOT}/risk")  # the killed writer got this far: no fsync of the root yet
        process = sim.after_process_crash()
        options: dict[str, Any] = {} if history else {"history": None}
        backend = FileBackend(ROOT, os_layer=process, executor=InlineExecutor(), **options)
        await PersistBase("risk", backend=backend).write_value("p", {"qty": 1})

        if not history:
            assert process.durable_state().files().get("data/risk/p.json") == b'{"qty":1}'
        restarted = PersistBase("risk", backend=_after_power_cut(process))
        assert await restarted.read_value("p") == {"qty": 1}, history


async def test_removing_a_value_a_killed_writer_already_unlinked_makes_it_durable() -> None:
    """Found by the kill-then-power-cut simulation (long mode): the restarted bot
    redid a removal, found the file gone (unlinked by the killed process, its
    directory not yet fsynced) and reported success; a power cut brought it back.
    """
    for history in (False, True):
        sim = SimFS(state_from_files({"signal/b.json": b'{"seq": 2}'}))
        sim.unlink(f"{ROOT}/signal/b.json")  # the killed writer got this far
        process = sim.after_process_crash()
        options: dict[str, Any] = {} if history else {"history": None}
        backend = FileBackend(ROOT, os_layer=process, executor=InlineExecutor(), **options)
        assert await PersistBase("signal", backend=backend).remove_value("b") is False

        if not history:
            assert "data/signal/b.json" not in process.durable_state().files()
        restarted = PersistBase("signal", backend=_after_power_cut(process))
        assert not await restarted.has_value("b"), history

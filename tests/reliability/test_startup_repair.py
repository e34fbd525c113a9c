"""Leftovers of a startup that was itself cut short, on a real directory.

Both were found by the power-loss simulation (``test_power_loss_sim.py``,
scenario ``startup-repair``): a quarantine cut while writing its reason file
left a temp file in the quarantine folder that no startup removed, and one cut
after the reason file but before the move left a listed entry with no data.
"""

from __future__ import annotations

from pathlib import Path

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

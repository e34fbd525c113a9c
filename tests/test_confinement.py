"""Confined to the root: a symbolic link inside the data root is never followed.

Issue 11, case 7. Every test builds a real tree with real symbolic links that
lead to a folder *outside* the root (``tmp_path / "outside"``), runs the real
backend, store, live session or command line against it, and then checks that
the outside folder is byte-identical: nothing there was read into a result,
written, moved, listed into a result or deleted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from persistkit import (
    FileBackend,
    ForeignSymlinkError,
    InvalidNameError,
    LiveSession,
    PersistBase,
    PersistSignalAdapter,
)
from persistkit._live.session import LOCK_FILE
from persistkit.backends._confine import forget_verified
from persistkit.models import SignalRow

CONSOLE_SCRIPT = Path(sys.executable).with_name("persistkit")
SECRET = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END-----\n"


def snapshot(folder: Path) -> dict[str, tuple[str, bytes]]:
    """Every entry below ``folder``: its kind and bytes (a link: its target)."""
    found: dict[str, tuple[str, bytes]] = {}
    for path in sorted(folder.rglob("*")):
        relative = str(path.relative_to(folder))
        if path.is_symlink():
            found[relative] = ("link", os.readlink(path).encode())
        elif path.is_dir():
            found[relative] = ("dir", b"")
        else:
            found[relative] = ("file", path.read_bytes())
    return found


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the root, with files persistkit must never touch."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "k.json").write_bytes(b'{"not": "yours"')  # corrupt JSON: a start would quarantine it
    (folder / "good.json").write_bytes(b"1")
    (folder / "id_ed25519").write_bytes(SECRET)
    (folder / "app.log").write_bytes(b"2024-01-01 bot started\n")
    return folder


@pytest.fixture
def root(data_root: Path) -> Path:
    data_root.mkdir(parents=True)
    return data_root


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ),
    )


# -- an entity directory that is a link -------------------------------------------------


async def test_a_symlinked_entity_directory_is_never_read_written_moved_or_deleted(
    root: Path, outside: Path
) -> None:
    (root / "e").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    store: PersistBase[Any] = PersistBase("e", root)

    with pytest.raises(ForeignSymlinkError) as raised:
        await store.wait_for_init()  # on main: moved outside/k.json into the quarantine
    assert raised.value.path == str(root / "e")
    with pytest.raises(ForeignSymlinkError):
        await store.write_value("new", {"a": 1})  # on main: created outside/new.json
    with pytest.raises(ForeignSymlinkError):
        await store.remove_all()  # on main: deleted every *.json outside
    with pytest.raises(ForeignSymlinkError):
        await store.read_value("good")  # on main: returned outside/good.json
    with pytest.raises(ForeignSymlinkError):
        [key async for key in store.keys()]  # on main: listed the outside folder
    with pytest.raises(ForeignSymlinkError):
        await store.remove_value("good")

    assert snapshot(outside) == before
    assert (root / "e").is_symlink()  # left alone
    assert not (root / ".quarantine").exists()


async def test_a_start_next_to_a_symlinked_directory_leaves_it_alone(
    root: Path, outside: Path
) -> None:
    (root / "elsewhere").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    mine: PersistBase[Any] = PersistBase("mine", root)
    await mine.write_value("a", 1)
    report = await mine.wait_for_init()
    assert report.clean and report.checked == 1
    backend = FileBackend(root)
    everything = [key async for key in backend.scan("", recursive=True)]
    assert everything == ["mine/a"]  # the link is not listed, let alone descended into
    assert snapshot(outside) == before


async def test_a_nested_directory_behind_a_symlinked_ancestor_is_refused(
    root: Path, outside: Path
) -> None:
    (outside / "BTCUSDT_trend").mkdir()
    (outside / "BTCUSDT_trend" / "BTCUSDT.json").write_bytes(b"{}")
    (root / "signal").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    backend = FileBackend(root)
    with pytest.raises(ForeignSymlinkError):
        await backend.clean_orphans("signal/BTCUSDT_trend")
    with pytest.raises(ForeignSymlinkError):
        [key async for key in backend.scan("signal/BTCUSDT_trend")]
    with pytest.raises(ForeignSymlinkError):
        await backend.get("signal/BTCUSDT_trend/BTCUSDT")
    with pytest.raises(ForeignSymlinkError):
        await backend.put("signal/BTCUSDT_trend/BTCUSDT", b"{}")
    with pytest.raises(ForeignSymlinkError):
        await backend.put("signal/BTCUSDT_trend/new", b"{}")
    with pytest.raises(ForeignSymlinkError):
        await backend.delete("signal/BTCUSDT_trend/BTCUSDT")
    assert [key async for key in backend.scan("", recursive=True)] == []
    # The signal adapter's own path goes the same way.
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=root)
    with pytest.raises(ForeignSymlinkError):
        await session.start()
    assert snapshot(outside) == before


@pytest.mark.parametrize("depth", ["e", "a/b"])
async def test_a_plain_write_into_a_directory_swapped_for_a_link_is_refused_uncommitted(
    root: Path, outside: Path, depth: str
) -> None:
    """On a root that keeps history a plain write is a journal commit: one whose
    directory became a link is refused before it is committed, and the value stays
    the last committed one (served from the journal, nothing outside read or written)."""
    backend = FileBackend(root)
    key = f"{depth}/k"
    await backend.put(key, b"1")
    top = root / depth.split("/")[0]
    top.rename(root / "moved-away")
    if depth == "a/b":
        (outside / "b").mkdir()
    top.symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    with pytest.raises(ForeignSymlinkError):
        await backend.put(key, b"2")
    with pytest.raises(ForeignSymlinkError):
        await backend.delete(key)
    assert (await backend.get(key)).data == b"1"  # type: ignore[union-attr]
    with pytest.raises(ForeignSymlinkError):
        [found async for found in backend.scan(depth)]
    assert snapshot(outside) == before
    assert [change.data for change in (await backend.history_records()).changes_of(key)] == [b"1"]


@pytest.mark.parametrize("depth", ["e", "a/b"])
async def test_a_directory_swapped_for_a_link_after_use_is_refused(
    root: Path, outside: Path, depth: str
) -> None:
    """The per-process cache of verified directories notices the swap (a root without
    history, whose plain writes and reads go to the files)."""
    backend = FileBackend(root, history=None)
    key = f"{depth}/k"
    await backend.put(key, b"1")  # verified and remembered
    assert (await backend.get(key)) is not None
    top = root / depth.split("/")[0]
    top.rename(root / "moved-away")
    if depth == "a/b":
        (outside / "b").mkdir()  # the link leads to a look-alike folder
        (outside / "b" / "k.json").write_bytes(b"outside")
    else:
        (outside / "k.json").write_bytes(b"outside")
    top.symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    with pytest.raises(ForeignSymlinkError):
        await backend.put(key, b"2")
    with pytest.raises(ForeignSymlinkError):
        await backend.get(key)
    with pytest.raises(ForeignSymlinkError):
        await backend.delete(key)
    with pytest.raises(ForeignSymlinkError):
        [found async for found in backend.scan(depth)]
    assert snapshot(outside) == before


# -- a value file that is a link ----------------------------------------------------------


async def test_a_symlinked_value_file_is_left_alone_and_reads_and_writes_are_refused(
    root: Path, outside: Path
) -> None:
    (root / "e").mkdir()
    (root / "e" / "key.json").symlink_to(outside / "id_ed25519")
    (root / "e" / "bad.json").symlink_to(outside / "k.json")
    before = snapshot(outside)
    store: PersistBase[Any] = PersistBase("e", root)
    await store.write_value("real", 1)

    report = await store.wait_for_init()
    assert report.checked == 1 and report.clean  # the links are not values: not read
    assert [key async for key in store.keys()] == ["real"]
    with pytest.raises(ForeignSymlinkError):
        await store.read_value("key")  # would leak the private key
    with pytest.raises(ForeignSymlinkError):
        await store.has_value("key")
    with pytest.raises(ForeignSymlinkError):
        await store.write_value("key", {"overwrite": True})
    with pytest.raises(ForeignSymlinkError):
        await store.remove_value("key")
    assert await store.remove_all() == 1  # only the real value

    assert snapshot(outside) == before
    assert (root / "e" / "key.json").is_symlink() and (root / "e" / "bad.json").is_symlink()
    assert not (root / ".quarantine").exists()


# -- persistkit's own folders ---------------------------------------------------------------


async def test_a_symlinked_journal_folder_is_refused_and_its_files_survive(
    root: Path, outside: Path
) -> None:
    (root / ".journal").symlink_to(outside, target_is_directory=True)
    (outside / "dead.log").write_bytes(b"PKJ1 not a journal at all")
    before = snapshot(outside)
    store: PersistBase[Any] = PersistBase("e", root)
    with pytest.raises(ForeignSymlinkError, match=r"\.journal"):
        await store.wait_for_init()  # on main: deleted app.log and dead.log
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=root)
    with pytest.raises(ForeignSymlinkError):
        await session.start()
    assert snapshot(outside) == before
    assert (root / ".journal").is_symlink()


async def test_a_symlink_inside_the_journal_folder_is_left_alone(root: Path, outside: Path) -> None:
    (root / ".journal").mkdir()
    (root / ".journal" / "1-2-dead.log").symlink_to(outside / "app.log")
    before = snapshot(outside)
    store: PersistBase[Any] = PersistBase("e", root)
    await store.wait_for_init()
    await store.write_value("k", 1)
    await store.backend.aclose()
    assert snapshot(outside) == before
    assert (root / ".journal" / "1-2-dead.log").is_symlink()


async def test_a_symlinked_quarantine_folder_is_refused_and_nothing_moves(
    root: Path, outside: Path
) -> None:
    (root / ".quarantine").symlink_to(outside, target_is_directory=True)
    (root / "e").mkdir()
    (root / "e" / "broken.json").write_bytes(b"{torn")
    before = snapshot(outside)
    store: PersistBase[Any] = PersistBase("e", root)
    with pytest.raises(ForeignSymlinkError, match=r"\.quarantine"):
        await store.wait_for_init()
    with pytest.raises(ForeignSymlinkError):
        [entry async for entry in store.backend.list_quarantine("")]
    assert snapshot(outside) == before
    assert (root / "e" / "broken.json").read_bytes() == b"{torn"  # kept in place


async def test_a_symlinked_locks_folder_is_refused(root: Path, outside: Path) -> None:
    (root / ".locks").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=root)
    with pytest.raises(ForeignSymlinkError, match=r"\.locks"):
        await session.start()  # on main: created pair-*.lock files outside
    assert snapshot(outside) == before


async def test_a_symlinked_lock_file_is_never_written_or_truncated(
    root: Path, outside: Path
) -> None:
    (root / ".locks").mkdir()
    (root / ".locks" / LOCK_FILE).symlink_to(outside / "id_ed25519")
    before = snapshot(outside)
    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=root)
    with pytest.raises(ForeignSymlinkError):
        await session.start()  # on main: wrote the holder into the key, then truncated it
    assert snapshot(outside) == before


# -- the root itself may be a link ------------------------------------------------------------


async def test_a_root_that_is_a_symlink_works(tmp_path: Path) -> None:
    real = tmp_path / "releases" / "v2" / "data"
    real.mkdir(parents=True)
    link = tmp_path / "current"
    link.symlink_to(real, target_is_directory=True)
    backend = FileBackend(link)
    assert backend.root == str(real)

    session = LiveSession([("BTCUSDT", "trend")], "main", base_dir=link)
    await session.start()
    row = SignalRow.model_validate(
        {
            "id": "s1",
            "symbol": "BTCUSDT",
            "strategyName": "trend",
            "position": "long",
            "priceOpen": 100.0,
            "priceTakeProfit": 110.0,
            "priceStopLoss": 95.0,
            "scheduledAt": 1,
            "pendingAt": 2,
        }
    )
    async with session.tick():
        await PersistSignalAdapter.write_signal_data(row, "BTCUSDT", "trend")
    await session.aclose()
    assert (real / "signal" / "BTCUSDT_trend" / "BTCUSDT.json").exists()

    store: PersistBase[Any] = PersistBase("e", link)
    await store.write_value("k", {"v": 1})
    report = await store.wait_for_init()
    assert report.clean
    assert await store.read_value("k") == {"v": 1}
    assert json.loads((real / "e" / "k.json").read_bytes()) == {"v": 1}


# -- keys that climb, on the file backend -----------------------------------------------------


@pytest.mark.parametrize(
    "key", ["../evil", "../../evil", "ns/../../evil", "/tmp/evil", ".journal/x"]
)
async def test_the_file_backend_refuses_a_climbing_key_called_directly(
    tmp_path: Path, root: Path, key: str
) -> None:
    backend = FileBackend(root)
    before = snapshot(tmp_path)
    with pytest.raises(InvalidNameError):
        await backend.put(key, b"owned")  # on main: wrote tmp_path/evil.json
    with pytest.raises(InvalidNameError):
        await backend.commit({key: b"owned"})
    with pytest.raises(InvalidNameError):
        await backend.delete(key)
    with pytest.raises(InvalidNameError):
        await backend.get(key)
    assert snapshot(tmp_path) == before
    assert not Path("/tmp/evil.json").exists()


# -- the command line --------------------------------------------------------------------------


def test_preflight_reports_every_foreign_symlink_and_changes_nothing(
    root: Path, outside: Path
) -> None:
    (root / "e").mkdir()
    (root / "e" / "real.json").write_bytes(b"1")
    (root / "e" / "key.json").symlink_to(outside / "id_ed25519")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / ".journal").symlink_to(outside, target_is_directory=True)
    (root / ".quarantine").symlink_to(outside, target_is_directory=True)
    before, tree = snapshot(outside), snapshot(root)

    result = run_cli("preflight", root, "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    links = {p["where"] for p in report["problems"] if p["kind"] == "foreign-symlink"}
    assert links == {
        str(root / "e" / "key.json"),
        str(root / "linked"),
        str(root / ".journal"),
        str(root / ".quarantine"),
    }
    # Every read consults the commit journal, and it is behind a link: no value
    # is vouched for while it is (a start refuses too).
    assert report["checked"] == 0

    text = run_cli("preflight", root)
    assert text.returncode == 1
    assert "foreign-symlink" in text.stdout and str(root / "linked") in text.stdout
    assert SECRET.decode().splitlines()[1] not in text.stdout + result.stdout
    assert snapshot(outside) == before and snapshot(root) == tree


def test_export_never_leaks_a_symlinked_target(tmp_path: Path, root: Path, outside: Path) -> None:
    (root / "e").mkdir()
    (root / "e" / "real.json").write_bytes(b'{"v":1}')
    (root / "e" / "key.json").symlink_to(outside / "id_ed25519")
    (root / "keys").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    exported = tmp_path / "export.jsonl"
    result = run_cli("export", root, exported)
    # The rest is exported; the links are problems to fix (issue 12): exit 1, each named.
    assert result.returncode == 1, result.stderr
    assert f"not followed: {root / 'e' / 'key.json'} -> " in result.stderr
    assert f"not followed: {root / 'keys'} -> " in result.stderr
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [line["key"] for line in lines] == ["e/real"]
    blob = exported.read_bytes()
    assert b"PRIVATE KEY" not in blob and b"b3BlbnNzaC1" not in blob
    assert snapshot(outside) == before


@pytest.fixture(autouse=True)
def _fresh_verification_cache() -> None:
    forget_verified()  # each test proves the walk, not a previous test's cache

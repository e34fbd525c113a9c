"""What the read commands show is what is committed, read at one point, inside the root.

``inspect``, ``export`` and the source of ``migrate`` run as real subprocesses
against real folders: a real bot process killed with ``kill -9`` leaves commits
in the journal that its files do not show yet, and roots hold symbolic links
to files and folders outside them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal as signals
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from persistkit import FileBackend, MemoryBackend, SnapshotError
from persistkit.backends._base import SNAPSHOT_ATTEMPTS, Versioned
from persistkit.backends._journal import JOURNAL_DIR, encode_record
from persistkit.backends._oslayer import OSLayer
from persistkit.backends._redis import RedisBackend
from persistkit.backends._s3 import S3Backend
from support.servers import RedisCluster, RedisServer, SeaweedS3
from test_cli import run_cli, tree_fingerprint

BOT = r"""
import asyncio, sys
import persistkit.backends._journal
from persistkit import LiveSession, PersistRiskAdapter, PersistSignalAdapter
from persistkit.models import RiskActivePosition, SignalRow

root, ticks, hold = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "hold"
if hold:
    # The applier never writes the files: every commit of this run stays in
    # the journal only, as after a kill -9 right after a burst of ticks.
    persistkit.backends._journal.APPLY_DELAY = 3600


async def main():
    session = LiveSession([("BTC", "t")], "main", base_dir=root)
    state = await session.start()
    signal = state.pairs[0].signal
    start = 0 if signal is None else int(signal.id[1:]) + 1
    print("START", signal.id if signal else None, flush=True)

    async def tick(k):
        i = start + k
        row = SignalRow(
            id=f"s{i}", symbol="BTC", strategy_name="t", position="long", price_open=1.0 + i,
            price_take_profit=2.0 + i, price_stop_loss=0.5, scheduled_at=1, pending_at=2,
        )
        await PersistSignalAdapter.write_signal_data(row, "BTC", "t")
        position = RiskActivePosition(
            symbol="BTC", strategy_name="t", signal_id=f"s{i}", position="long",
            price_open=1.0 + i, quantity=1, added_at=1,
        )
        await PersistRiskAdapter.write_position_data([(f"BTC:s{i}", position)], "main")

    await session.run(
        tick, interval=0.01, ticks=ticks, after_commit=lambda k: print("ACK", start + k, flush=True)
    )
    await session.aclose()


asyncio.run(main())
"""

SIGNAL_KEY = "signal/BTC_t/BTC"
RISK_KEY = "risk/main/positions"


def start_bot(tmp_path: Path, root: Path, ticks: int, *, hold: bool) -> subprocess.Popen[str]:
    script = tmp_path / "bot.py"
    script.write_text(BOT)
    return subprocess.Popen(
        [sys.executable, str(script), str(root), str(ticks), "hold" if hold else "apply"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def run_bot(tmp_path: Path, root: Path, ticks: int) -> str:
    """Run the bot for ``ticks`` ticks and a clean stop; its output."""
    bot = start_bot(tmp_path, root, ticks, hold=False)
    out, err = bot.communicate(timeout=60)
    assert bot.returncode == 0, err
    return out


def started_with(root: Path, tmp_path: Path) -> str:
    """The signal a real start of the bot restores (it applies the journal): the truth."""
    return run_bot(tmp_path, root, 0).split()[1]


@pytest.fixture
def killed_bot_root(tmp_path: Path) -> tuple[Path, int]:
    """A root whose bot ran 3 ticks and stopped cleanly (files: s2), then ran again and
    was killed with SIGKILL after at least 6 more acknowledged ticks that never reached
    the files. Returns the root and the last tick acknowledged before the kill."""
    root = tmp_path / "data"
    run_bot(tmp_path, root, 3)
    bot = start_bot(tmp_path, root, 1_000_000, hold=True)
    assert bot.stdout is not None
    acknowledged = -1
    try:
        for line in bot.stdout:
            if line.startswith("ACK"):
                acknowledged = int(line.split()[1])
                if acknowledged >= 8:
                    break
    finally:
        bot.send_signal(signals.SIGKILL)
        bot.communicate(timeout=30)
    assert acknowledged >= 8, bot.stderr
    return root, acknowledged


@pytest.fixture(scope="module")
def stopped_bot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root whose bot ran 2 ticks and stopped cleanly (signal s1), made once."""
    folder = tmp_path_factory.mktemp("stopped-bot")
    run_bot(folder, folder / "data", 2)
    return folder / "data"


def copy_of(root: Path, tmp_path: Path) -> Path:
    """This test's own copy of ``root``."""
    return Path(shutil.copytree(root, tmp_path / "data", symlinks=True))


def file_signal_id(root: Path) -> str:
    return str(json.loads((root / f"{SIGNAL_KEY}.json").read_bytes())["id"])


def exported(path: Path) -> dict[str, Any]:
    return {
        line["key"]: line["value"]
        for line in map(json.loads, path.read_text().splitlines())
        if "value" in line
    }


# -- what is shown is what is committed ------------------------------------------------


def test_after_kill_9_inspect_shows_the_committed_ticks_marked_pending_and_changes_nothing(
    killed_bot_root: tuple[Path, int], tmp_path: Path
) -> None:
    root, acknowledged = killed_bot_root
    assert file_signal_id(root) == "s2"  # the files lag: the commits wait in the journal
    before = tree_fingerprint(root)

    listing = run_cli("inspect", root, "--json")
    plain = run_cli("inspect", root)

    assert tree_fingerprint(root) == before  # nothing replayed, nothing written, no mtime moved
    assert listing.returncode == 0, listing.stderr
    assert plain.returncode == 0, plain.stderr
    report = json.loads(listing.stdout)
    shown = report["signals"][0]["row"]["id"]
    assert int(shown[1:]) >= acknowledged
    assert [view["position"]["signalId"] for view in report["risk"]] == [shown]
    assert sorted(report["pending"]) == [RISK_KEY, SIGNAL_KEY]
    assert {entity["key"]: entity["pending"] for entity in report["entities"]} == {
        RISK_KEY: True,
        SIGNAL_KEY: True,
    }
    assert report["read_at"].startswith("journal commit ")
    entity_rows = [line for line in plain.stdout.splitlines() if "BTC / t" in line]
    assert len(entity_rows) == 1 and "pending" in entity_rows[0]
    assert "Pending: 2 values committed and not yet applied" in plain.stdout
    committed_open = f"{1.0 + int(shown[1:]):g}"  # the committed tick's price, not s2's
    rows = [[cell.strip() for cell in line.split("│")] for line in plain.stdout.splitlines()]
    assert sum(committed_open in cells for cells in rows) == 2  # its signal and its position
    # The oracle: a real start applies the journal and restores exactly that tick.
    assert started_with(root, tmp_path) == shown


def test_after_kill_9_export_and_migrate_copy_the_committed_ticks_and_change_nothing(
    killed_bot_root: tuple[Path, int], tmp_path: Path
) -> None:
    root, acknowledged = killed_bot_root
    before = tree_fingerprint(root)

    export = run_cli("export", root, tmp_path / "export.jsonl")
    migrate = run_cli("migrate", root, tmp_path / "copy")

    assert tree_fingerprint(root) == before
    assert export.returncode == 0, export.stderr
    assert "2 values committed and not yet applied" in export.stderr
    values = exported(tmp_path / "export.jsonl")
    shown = values[SIGNAL_KEY]["id"]
    assert int(shown[1:]) >= acknowledged
    assert values[RISK_KEY][0][1]["signalId"] == shown
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    copied = tmp_path / "copy"
    assert json.loads((copied / f"{SIGNAL_KEY}.json").read_bytes())["id"] == shown
    assert json.loads((copied / f"{RISK_KEY}.json").read_bytes())[0][1]["signalId"] == shown
    assert started_with(root, tmp_path) == shown


def test_commits_inspect_cannot_read_make_it_say_it_shows_older_state_and_exit_1(
    tmp_path: Path,
) -> None:
    """An older release's per-process journal (format 1) is merged by a start, not read
    by the command line: what it shows is older, and it says so."""
    root = tmp_path / "data"
    (root / "tick").mkdir(parents=True)
    (root / "tick" / "base.json").write_bytes(b'{"v":"base"}')
    (root / JOURNAL_DIR).mkdir()
    legacy = root / JOURNAL_DIR / "12345-1-dead.log"
    legacy.write_bytes(encode_record(1, 1_000, {"tick/base": b'{"v":"committed"}'}))
    before = tree_fingerprint(root)

    listing = run_cli("inspect", root, "--json")
    plain = run_cli("inspect", root)
    export = run_cli("export", root, tmp_path / "export.jsonl")

    assert tree_fingerprint(root) == before
    said = f"older than the committed state: {JOURNAL_DIR}/{legacy.name}"
    assert listing.returncode == 1 and plain.returncode == 1 and export.returncode == 1
    assert json.loads(listing.stdout)["behind"] == [
        f"{JOURNAL_DIR}/{legacy.name}: an older release's commits, not read (a start merges them)"
    ]
    assert said in plain.stdout and said in export.stderr


# -- confined ---------------------------------------------------------------------------


PRIVATE_KEY = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"


def outside_secrets(tmp_path: Path) -> Path:
    """A folder outside the root: a private key, and folders shaped like persistkit's."""
    outside = tmp_path / "outside"
    (outside / "entity").mkdir(parents=True)
    key = outside / "id_ed25519"
    key.write_bytes(PRIVATE_KEY)
    key.chmod(0o600)
    (outside / "entity" / "positions.json").write_text('[["forged", {"from": "outside"}]]')
    (outside / "entity" / "BTC.json").write_text('{"id": "forged-outside"}')
    (outside / "forged@1.json").write_text('{"id": "forged-outside"}')
    return outside


LINKS = {
    # where the link is, relative to the root -> what it points to, under outside/
    "value file": ("signal/BTC_t/ETH.json", "id_ed25519"),
    "entity directory": ("risk/stolen", "entity"),
    "quarantine": (".quarantine", "entity"),
    "locks": (".locks", "entity"),
}


@pytest.mark.parametrize("kind", sorted(LINKS))
def test_inspect_and_export_report_a_symlink_inside_the_root_and_never_follow_it(
    stopped_bot: Path, tmp_path: Path, kind: str
) -> None:
    root = copy_of(stopped_bot, tmp_path)
    outside = outside_secrets(tmp_path)
    where, target = LINKS[kind]
    link = root / where
    if link.exists():
        link.rename(tmp_path / "moved-aside")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside / target)
    outside_before = tree_fingerprint(outside)
    root_before = tree_fingerprint(root)

    listing = run_cli("inspect", root, "--json")
    plain = run_cli("inspect", root)
    export = run_cli("export", root, tmp_path / "export.jsonl", "--include-quarantine")

    assert tree_fingerprint(outside) == outside_before
    assert tree_fingerprint(root) == root_before
    said = listing.stdout + plain.stdout + plain.stderr + export.stdout + export.stderr
    written = (tmp_path / "export.jsonl").read_bytes() if export.returncode != 2 else b""
    for secret in (PRIVATE_KEY, base64.b64encode(PRIVATE_KEY), b"forged"):
        assert secret not in said.encode() + written, f"{kind}: read through the link"
    assert listing.returncode == 1, listing.stderr
    assert json.loads(listing.stdout)["foreign_links"] == [str(link)]
    assert plain.returncode == 1
    assert f"not followed: {link} -> {outside / target}" in plain.stdout
    assert export.returncode != 0
    assert str(link) in export.stderr
    # What lies inside the root is still shown and exported.
    assert json.loads(listing.stdout)["signals"][0]["row"]["id"] == "s1"
    if export.returncode == 1:
        assert exported(tmp_path / "export.jsonl")[SIGNAL_KEY]["id"] == "s1"


def test_migrate_refuses_a_source_with_a_symlinked_value_and_writes_nothing(
    stopped_bot: Path, tmp_path: Path
) -> None:
    root = copy_of(stopped_bot, tmp_path)
    outside = outside_secrets(tmp_path)
    (root / "signal" / "BTC_t" / "ETH.json").symlink_to(outside / "id_ed25519")

    done = run_cli("migrate", root, tmp_path / "copy")

    assert done.returncode == 1, done.stdout + done.stderr
    assert f"not followed: {root / 'signal' / 'BTC_t' / 'ETH.json'}" in done.stderr
    assert "nothing was written" in done.stderr
    assert not (tmp_path / "copy").exists()


def test_a_journal_linked_outside_the_root_is_refused_not_read(
    stopped_bot: Path, tmp_path: Path
) -> None:
    """A forged journal outside the root would change what is shown: it is never read."""
    root = copy_of(stopped_bot, tmp_path)
    forged = tmp_path / "forged-root"
    forger = start_bot(tmp_path, forged, 1_000_000, hold=True)
    assert forger.stdout is not None
    for line in forger.stdout:
        if line.startswith("ACK 4"):
            break
    forger.send_signal(signals.SIGKILL)
    forger.communicate(timeout=30)
    (root / ".journal").rename(tmp_path / "journal-moved")
    (root / ".journal").symlink_to(forged / ".journal")
    before = tree_fingerprint(forged)

    for command in (["inspect", root], ["export", root, tmp_path / "out.jsonl"]):
        done = run_cli(*command)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"{root / '.journal'} -> {forged / '.journal'} is a symbolic link" in done.stderr
        assert "s4" not in done.stdout
    assert not (tmp_path / "out.jsonl").exists()
    assert tree_fingerprint(forged) == before


# -- Redis and S3 ---------------------------------------------------------------------------

TICKER = r"""
import asyncio, sys
import persistkit
from persistkit import PersistBase, open_backend


async def main():
    backend = open_backend(sys.argv[1])
    stores = [PersistBase(name, backend=backend) for name in ("signal", "risk", "fills")]
    i = 0
    while True:
        async with persistkit.transaction(backend):  # one tick: all three or none
            for store in stores:
                await store.write_value("n", {"tick": i})
        print("ACK", i, flush=True)
        i += 1


asyncio.run(main())
"""

TICK_KEYS = ("signal/n", "risk/n", "fills/n")


def ticking(url: str) -> subprocess.Popen[str]:
    """A writer process committing ticks to ``url``; returns once it acknowledged one."""
    writer = subprocess.Popen(
        [sys.executable, "-c", TICKER, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert writer.stdout is not None
    first = writer.stdout.readline()
    assert first.startswith("ACK"), (first, writer.stderr.read() if writer.poll() else "")
    return writer


def ticks_in(path: Path) -> set[int]:
    values = exported(path)
    return {values[key]["tick"] for key in TICK_KEYS}


def test_an_export_of_redis_during_ticks_holds_whole_ticks(tmp_path: Path) -> None:
    """One read-only script on one server: read key by key, exports mixed ticks."""
    with RedisServer() as server:
        writer = ticking(server.url)
        try:
            for attempt in range(4):  # bounded: each export is one subprocess
                path = tmp_path / f"export-{attempt}.jsonl"
                done = run_cli("export", server.url, path)
                assert done.returncode == 0, done.stderr
                assert len(ticks_in(path)) == 1, f"export {attempt} mixes ticks: {ticks_in(path)}"
        finally:
            writer.kill()
            writer.communicate(timeout=30)


async def test_redis_cluster_inspect_shows_an_unapplied_cross_slot_commit_pending(
    tmp_path: Path,
) -> None:
    """A writer killed between deciding a cross-slot commit and applying it leaves its
    record committed and its keys locked: the tick is committed (a start finishes it),
    and inspect shows it, finishing nothing."""
    prefix = f"reads{os.getpid()}"

    class Killed(BaseException):
        """The writer's death at its apply step: nothing after it runs."""

    async def die(*args: object) -> None:
        raise Killed

    with RedisCluster() as cluster:
        url = f"redis+cluster://127.0.0.1:{cluster.ports[0]}?prefix={prefix}"
        backend = RedisBackend.from_url(url)
        try:
            await backend.commit({"signal/n": b'{"tick":1}', "risk/n": b'{"tick":1}'})
            backend._finish = die  # type: ignore[method-assign]
            with pytest.raises(Killed):
                await backend.commit({"signal/n": b'{"tick":2}', "risk/n": b'{"tick":2}'})
            records = [raw async for raw in backend.client.scan_iter(f"{prefix}:commit:*")]
            before = [await backend.get(key) for key in ("signal/n", "risk/n")]

            done = run_cli("inspect", url, "--json")

            after = [await backend.get(key) for key in ("signal/n", "risk/n")]
            still_recorded = sum([await backend.client.exists(raw) for raw in records])
        finally:
            await backend.aclose()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert sorted(report["pending"]) == ["risk/n", "signal/n"]
    assert {entity["bytes"] for entity in report["entities"]} == {len(b'{"tick":2}')}
    assert [item.data for item in after if item] == [item.data for item in before if item]
    assert [item.data for item in after if item] == [b'{"tick":1}', b'{"tick":1}']
    assert records and still_recorded == len(records)  # nothing settled or removed


S3_BUCKET = "persistkit-reads"


@pytest.fixture(scope="module")
def s3_server() -> Any:
    with SeaweedS3() as server:
        server.client().create_bucket(Bucket=S3_BUCKET)
        yield server


def s3_env(server: SeaweedS3) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_DEFAULT_REGION": server.region,
    }


def s3_url(server: SeaweedS3, prefix: str) -> str:
    return f"s3://{S3_BUCKET}/{prefix}?endpoint_url={server.endpoint_url}"


def run_cli_with(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "persistkit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **env},
    )


async def test_s3_inspect_shows_a_recorded_unapplied_tick_pending_and_replays_nothing(
    s3_server: SeaweedS3,
) -> None:
    """A writer killed between recording its tick commit and applying it leaves the
    head record unapplied: the tick is decided, and inspect shows it, replaying nothing."""
    prefix = f"recorded-{os.getpid()}"
    client = s3_server.client()
    backend = S3Backend(client, S3_BUCKET, prefix)

    class Killed(BaseException):
        """The writer's death at its first apply step: nothing after it runs."""

    def die(*args: object) -> None:
        raise Killed

    try:
        await backend.commit({"signal/n": b'{"tick":1}', "risk/n": b'{"tick":1}'})
        # What a writer killed right after recording tick 2 leaves behind.
        backend._apply_write_sync = die  # type: ignore[method-assign]
        with pytest.raises(Killed):
            await backend.commit({"signal/n": b'{"tick":2}', "risk/n": b'{"tick":2}'})
    finally:
        await backend.aclose()

    def objects() -> dict[str, bytes]:
        listed = client.list_objects_v2(Bucket=S3_BUCKET, Prefix=f"{prefix}/")["Contents"]
        return {
            item["Key"]: client.get_object(Bucket=S3_BUCKET, Key=item["Key"])["Body"].read()
            for item in listed
        }

    before = objects()
    env = s3_env(s3_server)
    done = run_cli_with(env, "inspect", s3_url(s3_server, prefix), "--json")
    assert objects() == before  # the commit object is still there, nothing applied
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert sorted(report["pending"]) == ["risk/n", "signal/n"]
    assert {entity["key"]: entity["bytes"] for entity in report["entities"]} == {
        "risk/n": len(b'{"tick":2}'),
        "signal/n": len(b'{"tick":2}'),
    }
    export = run_cli_with(env, "export", s3_url(s3_server, prefix), "-")
    assert export.returncode == 0, export.stderr
    assert [json.loads(line)["value"]["tick"] for line in export.stdout.splitlines()] == [2, 2]
    assert objects() == before


# -- the default snapshot: two reads that agree ------------------------------------------


class TicksWhileRead(MemoryBackend):
    """A backend (S3 reads the same way) into which a tick is committed after each of the
    first ``ticks`` values read: every read that sees one is torn."""

    def __init__(self, ticks: int) -> None:
        super().__init__()
        self.ticks = ticks
        self.tick = 0

    async def commit_tick(self) -> None:
        self.tick += 1
        await self.commit({key: json.dumps({"tick": self.tick}).encode() for key in TICK_KEYS})

    async def get_many(self, keys: Iterable[str]) -> list[Versioned | None]:
        found = []
        for key in keys:
            found.append(await self.get(key))
            if self.ticks:
                self.ticks -= 1
                await self.commit_tick()
        return found


async def test_the_default_snapshot_reads_again_until_two_reads_agree() -> None:
    backend = TicksWhileRead(ticks=0)
    await backend.commit_tick()
    backend.ticks = 7  # the first reads are torn; then the writer pauses

    snapshot = await backend.snapshot()

    ticks = {json.loads(snapshot.values[key])["tick"] for key in TICK_KEYS}
    assert ticks == {backend.tick}


async def test_the_default_snapshot_gives_up_on_a_backend_that_never_stops_changing() -> None:
    backend = TicksWhileRead(ticks=10_000)
    await backend.commit_tick()

    with pytest.raises(SnapshotError, match="changed during each of"):
        await backend.snapshot()


# -- the file snapshot: a checkpoint or an applied commit while the files are read --------


class WritesWhileRead(OSLayer):
    """The reader's OS layer: after its first value file is read, ``meanwhile`` runs
    (another backend, on its own thread, commits and writes the files)."""

    def __init__(self, meanwhile: Callable[[], None]) -> None:
        self.meanwhile: Callable[[], None] | None = meanwhile

    def read(self, fd: int, size: int) -> bytes:
        data = os.read(fd, size)
        if self.meanwhile is not None and data.startswith(b'{"tick"'):
            meanwhile, self.meanwhile = self.meanwhile, None
            worker = threading.Thread(target=meanwhile)
            worker.start()
            worker.join()
        return data


def tick(number: int) -> dict[str, bytes | None]:
    return {key: json.dumps({"tick": number}).encode() for key in TICK_KEYS}


@pytest.mark.parametrize("then", ["checkpoint", "apply"])
async def test_a_file_snapshot_reads_again_when_a_later_commit_reaches_the_files(
    tmp_path: Path, then: str
) -> None:
    """The bot commits tick 2 and its files are written (by a checkpoint, or by the
    applier) after the reader read tick 1's first file: read on, the snapshot would hold
    tick 1 and tick 2 at once."""
    bot = FileBackend(tmp_path)
    await bot.commit(tick(1))
    await bot.checkpoint()  # the files hold tick 1, the journal nothing

    def commit_tick_2() -> None:
        bot.journal.commit(tick(2))
        if then == "checkpoint":
            bot.journal.checkpoint()
        else:
            bot.journal.apply_pending()

    reader = FileBackend(tmp_path, os_layer=WritesWhileRead(commit_tick_2), read_only=True)
    try:
        snapshot = await reader.snapshot()
    finally:
        await reader.aclose()
        await bot.aclose()

    assert {json.loads(snapshot.values[key])["tick"] for key in TICK_KEYS} == {2}


class CommitsAtEveryRead(OSLayer):
    """The reader's OS layer: each time it reads a value file of a tick, the bot
    commits the next tick and checkpoints (a bot ticking without a pause)."""

    def __init__(self, bot: FileBackend) -> None:
        self.bot = bot
        self.ticks = 1
        self.waiting: list[threading.Thread] = []

    def commit_next_tick(self) -> None:
        self.ticks += 1
        self.bot.journal.commit(tick(self.ticks))
        self.bot.journal.checkpoint()

    def read(self, fd: int, size: int) -> bytes:
        data = os.read(fd, size)
        if data.startswith(b'{"tick"') and not any(t.is_alive() for t in self.waiting):
            worker = threading.Thread(target=self.commit_next_tick)
            worker.start()
            # A commit that waits for the reader's hold on the journal finishes after it.
            worker.join(timeout=1.0)
            self.waiting.append(worker)
        return data


async def test_a_file_snapshot_beside_a_bot_that_never_pauses_holds_its_journal_for_one_read(
    tmp_path: Path,
) -> None:
    """Every lock-free read sees a checkpoint land: after five, the reader holds the
    journal still for one read, and gets a whole tick instead of giving up."""
    bot = FileBackend(tmp_path)
    await bot.commit(tick(1))
    await bot.checkpoint()
    layer = CommitsAtEveryRead(bot)
    reader = FileBackend(tmp_path, os_layer=layer, read_only=True)
    try:
        snapshot = await reader.snapshot()
    finally:
        await reader.aclose()
        for worker in layer.waiting:
            worker.join()
        await bot.aclose()

    assert len({json.loads(snapshot.values[key])["tick"] for key in TICK_KEYS}) == 1
    assert layer.ticks > SNAPSHOT_ATTEMPTS  # each lock-free read was overtaken

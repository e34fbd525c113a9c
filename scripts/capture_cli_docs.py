"""Regenerate the README's command-line section: run every ``persistkit`` command on a demo bot
and paste its output between the ``<!-- cli:begin -->`` and ``<!-- cli:end -->`` markers.

Nothing in that section is typed by hand: the state is written through the public
API, damaged the way crashes damage it, and each command's real stdout, stderr
and exit code are captured. Run: ``.venv/bin/python scripts/capture_cli_docs.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import persistkit
from persistkit import (
    PersistPartialAdapter,
    PersistRiskAdapter,
    PersistScheduleAdapter,
    PersistSignalAdapter,
)
from persistkit.models import PartialData, RiskActivePosition, ScheduledSignalRow, SignalRow

DEMO = Path("/tmp/persistkit-cli-demo")
BIN = Path(sys.executable).parent
README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLE_BOT = README.parent / "examples" / "live_bot.py"
BEGIN, END = "<!-- cli:begin -->\n", "<!-- cli:end -->\n"


def row(symbol: str, strategy: str, signal_id: str, **fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": signal_id,
        "symbol": symbol,
        "strategy_name": strategy,
        "position": "long",
        "scheduled_at": 1_763_700_000_000,
        "pending_at": 1_763_700_060_000,
        "exchange_name": "binance",
    }
    base.update(fields)
    return base


async def write_bot_state(root: Path) -> None:
    persistkit.configure(mode="live", base_dir=root)
    await PersistSignalAdapter.write_signal_data(
        SignalRow.model_validate(
            row("BTCUSDT", "trend_follow", "sig-1", price_open=64123.5,
                price_take_profit=66000, price_stop_loss=63000.25)
        ),
        "BTCUSDT",
        "trend_follow",
    )  # fmt: skip
    await PersistSignalAdapter.write_signal_data(
        SignalRow.model_validate(
            row("ETH/USDT", "mean_rev", "sig-2", position="short", price_open=3120.4,
                price_take_profit=2950, price_stop_loss=3200, pending_at=1_763_700_120_000)
        ),
        "ETH/USDT",
        "mean_rev",
    )  # fmt: skip
    await PersistScheduleAdapter.write_schedule_data(
        ScheduledSignalRow.model_validate(
            row("SOLUSDT", "breakout", "sch-1", price_open=142.5, price_take_profit=155,
                price_stop_loss=138, scheduled_at=1_763_700_300_000, pending_at=0)
        ),
        "SOLUSDT",
        "breakout",
    )  # fmt: skip
    await PersistRiskAdapter.write_position_data(
        [
            ("BTCUSDT:trend_follow", RiskActivePosition(
                symbol="BTCUSDT", strategy_name="trend_follow", signal_id="sig-1",
                position="long", price_open=64123.5, quantity=0.05, added_at=1_763_700_060_000)),
            ("ETH/USDT:mean_rev", RiskActivePosition(
                symbol="ETH/USDT", strategy_name="mean_rev", signal_id="sig-2",
                position="short", price_open=3120.4, quantity=1.2, added_at=1_763_700_120_000)),
        ],
        "main_portfolio",
    )  # fmt: skip
    await PersistPartialAdapter.write_partial_data(
        {"sig-1": PartialData(profit_levels=[10, 20])}, "BTCUSDT", "trend_follow"
    )
    # As a bot's clean stop leaves it: the commits (the statistics' events made
    # the schedule and partial writes commits) applied to their files.
    await persistkit.current_settings().backend.checkpoint()


async def bot_restarts(root: Path) -> None:
    """What a restarted bot does: each adapter initialises the stores it reads."""
    persistkit.configure(mode="live", base_dir=root)
    await PersistSignalAdapter.read_signal_data("BTCUSDT", "trend_follow")
    await PersistSignalAdapter.read_signal_data("ETH/USDT", "mean_rev")
    await PersistScheduleAdapter.read_schedule_data("SOLUSDT", "breakout")


async def commit_fills(root: Path) -> None:
    """Three ticks of a bot's own entity, each one commit of the shared journal."""
    persistkit.configure(mode="live", base_dir=root)
    fills: persistkit.PersistBase[dict[str, float]] = persistkit.PersistBase("fills", root)
    for tick in range(1, 4):
        async with persistkit.transaction():
            await fills.write_value(f"order-{tick}", {"qty": 0.01 * tick})


CRASHING_TICK = """
import asyncio, sys
import persistkit, persistkit.backends._journal
from persistkit import PersistSignalAdapter

persistkit.backends._journal.APPLY_DELAY = 3600  # killed before its files are written


async def main():
    persistkit.configure(mode="live", base_dir=sys.argv[1])
    signal = await PersistSignalAdapter.read_signal_data("BTCUSDT", "trend_follow")
    async with persistkit.transaction():
        moved = signal.model_copy(update={"price_stop_loss": 64000.0})
        await PersistSignalAdapter.write_signal_data(moved, "BTCUSDT", "trend_follow")
    print("committed", flush=True)
    await asyncio.sleep(3600)


asyncio.run(main())
"""


BOT = """
import asyncio, sys
from persistkit import LiveSession, PersistBase

async def main():
    session = LiveSession([("BTCUSDT", "trend_follow")], "main_portfolio", base_dir=sys.argv[1])
    await session.start()
    fills = PersistBase("fills", sys.argv[1])
    print("running", flush=True)
    await session.run(lambda n: fills.write_value("last-tick", n), interval=0.1)

asyncio.run(main())
"""


def crash_a_tick(root: Path) -> None:
    """One open signal; a bot process commits a tick moving its stop, then gets SIGKILL."""
    persistkit.configure(mode="live", base_dir=root)
    btc = row("BTCUSDT", "trend_follow", "sig-1", price_open=64123.5,
              price_take_profit=66000, price_stop_loss=63000.25)  # fmt: skip
    asyncio.run(
        PersistSignalAdapter.write_signal_data(
            SignalRow.model_validate(btc), "BTCUSDT", "trend_follow"
        )
    )
    # Closed now (checkpointed, its applier stopped): else this process's applier,
    # woken by the write above, would write the crashed bot's commit (any process may).
    asyncio.run(persistkit.current_settings().backend.aclose())
    bot = subprocess.Popen(
        [sys.executable, "-c", CRASHING_TICK, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert bot.stdout is not None and bot.stdout.readline().strip() == "committed"
    bot.send_signal(signal.SIGKILL)
    bot.wait()


def start_bot(root: Path) -> subprocess.Popen[str]:
    """A live bot ticking on ``root`` in its own process, as in production."""
    bot = subprocess.Popen(
        [sys.executable, "-c", BOT, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert bot.stdout is not None and bot.stdout.readline().strip() == "running"
    return bot


def stop_loss_fix(export: Path) -> str:
    """The operator's fix: BTCUSDT's signal from the export, its stop loss moved up."""
    for line in export.read_text().splitlines():
        record = json.loads(line)
        if record["key"] == "signal/BTCUSDT_trend_follow/BTCUSDT":
            record["value"]["priceStopLoss"] = 63500
            return json.dumps(record) + "\n"
    raise LookupError("the export holds no BTCUSDT signal")


def damage_second_commit(root: Path) -> None:
    """One bit flipped inside the journal's second record, as a bad disk block would."""
    journal = root / ".journal" / "commits.pkj"
    data = bytearray(journal.read_bytes())
    second = data.index(b"PKJ1", data.index(b"PKJ1") + 1)
    data[second + 30] ^= 0x04
    journal.write_bytes(bytes(data))


def start_live_bot(root: Path) -> subprocess.Popen[str]:
    """examples/live_bot.py on ``root``: one tick committed, then idle (a tick an hour)."""
    bot = subprocess.Popen(
        [sys.executable, str(EXAMPLE_BOT), "--json", "--interval=3600", f"--base-dir={root}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert bot.stdout is not None
    for line in bot.stdout:
        if json.loads(line).get("ack") == 1:
            break
    time.sleep(1.5)  # the journal's applier writes the files half a second after a commit
    return bot


def run(command: str, *, stdin: str = "", keep: int | None = None, cwd: Path = DEMO) -> str:
    """``$ command``, then its output as an operator sees it, then the exit code."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("COLUMNS", None)
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        input=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # interleaved as on a terminal
        text=True,
        env=env,
        check=False,
    )
    lines = result.stdout.rstrip("\n").splitlines()
    if keep is not None and len(lines) > keep:
        lines = [*lines[:keep], "..."]
    body = "\n".join(line.rstrip() for line in lines)
    return f"```console\n$ {command}\n{body}\n[exit {result.returncode}]\n```\n"


def first_quarantine_id() -> str:
    listing = subprocess.run(
        [str(BIN / "persistkit"), "quarantine", "list", "--json"],
        cwd=DEMO,
        capture_output=True,
        text=True,
        check=True,
    )
    entries = json.loads(listing.stdout)
    return str(sorted(entry["id"] for entry in entries)[0])


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    data = DEMO / "dump" / "data"
    asyncio.run(write_bot_state(data))
    parts: list[str] = [TEMPLATE_HEAD]

    parts.append(SECTION_INSPECT)
    parts.append(run("persistkit inspect"))
    parts.append(run("persistkit inspect --json", keep=24))
    crash_a_tick(DEMO / "crashed")
    parts.append(SECTION_INSPECT_CRASHED)
    parts.append(run("persistkit inspect ./crashed"))

    parts.append(SECTION_PREFLIGHT)
    parts.append(run("persistkit preflight"))
    # What a kill -9 and a bad deploy leave behind.
    eth = data / "signal" / "ETH%2FUSDT_mean_rev" / "ETH%2FUSDT.json"
    eth.write_bytes(b'{"id": "sig-2", "symbol": "ETH')
    (data / "schedule" / "SOLUSDT_breakout" / "SOLUSDT.json").write_bytes(b'{"id": "sch-1"}')
    (data / "signal" / "BTCUSDT_trend_follow" / ".tmp-5f0c9a1b2e3d4c5b").write_bytes(b'{"id')
    parts.append(SECTION_PREFLIGHT_BROKEN)
    parts.append(run("persistkit preflight"))
    parts.append(run("persistkit preflight --json", keep=30))
    parts.append(run("persistkit preflight ./dump/nowhere"))

    parts.append(SECTION_STATUS)
    bot = start_live_bot(DEMO / "bot")
    parts.append(run("persistkit status ./bot"))
    bot.kill()  # kill -9: no close, no checkpoint
    bot.wait()
    parts.append(SECTION_STATUS_KILLED)
    parts.append(run("persistkit status ./bot"))
    parts.append(run("persistkit status ./bot --json", keep=32))

    asyncio.run(bot_restarts(data))
    parts.append(SECTION_QUARANTINE)
    parts.append(run("persistkit quarantine list"))
    entry = first_quarantine_id()
    parts.append(run(f"persistkit quarantine restore '{entry}'"))
    asyncio.run(bot_restarts(data))  # the torn value goes straight back to quarantine
    entry = first_quarantine_id()
    parts.append(run(f"persistkit quarantine purge '{entry}'", stdin="n\n"))
    parts.append(run(f"persistkit quarantine purge '{entry}' --yes"))

    asyncio.run(commit_fills(data))
    damage_second_commit(data)
    parts.append(SECTION_JOURNAL)
    parts.append(run("persistkit preflight", keep=12))
    parts.append(run("persistkit journal salvage"))
    parts.append(run("persistkit preflight", keep=3))

    parts.append(SECTION_MIGRATE)
    parts.append(
        run("persistkit migrate ./dump/data file:///tmp/persistkit-cli-demo/copy --dry-run")
    )
    parts.append(run("persistkit migrate ./dump/data file:///tmp/persistkit-cli-demo/copy"))
    copy_risk = DEMO / "copy" / "risk" / "main_portfolio" / "positions.json"
    copy_risk.write_bytes(b"[]")  # the new host's bot closed its positions since
    parts.append(SECTION_MIGRATE_REFUSED)
    parts.append(run("persistkit migrate ./dump/data ./copy"))
    parts.append(run("persistkit migrate ./dump/data ./copy --overwrite"))

    parts.append(SECTION_EXPORT)
    parts.append(run("persistkit export ./dump/data state.jsonl --include-quarantine"))
    parts.append(run("cut -c1-120 state.jsonl"))
    parts.append(run("persistkit import state.jsonl ./restored --include-quarantine"))

    (DEMO / "fix.jsonl").write_text(stop_loss_fix(DEMO / "state.jsonl"))
    bot = start_bot(data)
    try:
        parts.append(SECTION_BESIDE_A_BOT)
        parts.append(run("persistkit import fix.jsonl ./dump/data --overwrite"))
        parts.append(run("persistkit import fix.jsonl ./dump/data --overwrite --force"))
    finally:
        bot.kill()  # kill -9: the forced fix is one commit of the journal, and stays
        bot.wait()

    parts.append(SECTION_ERRORS)
    parts.append(run("persistkit inspect /srv/bot/dump/data"))
    parts.append(run("persistkit inspect nosuch://host/x"))
    parts.append(run("persistkit inspect memory://"))
    (DEMO / "bad.jsonl").write_text(
        '{"key": "signal/BTCUSDT_trend_follow/BTCUSDT", "value": {"id": "sig-1"}}\n'
        '{"key": "../../etc/cron.d/evil", "value": "* * * * * root sh"}\n'
    )
    parts.append(run("persistkit import bad.jsonl ./restored"))
    (DEMO / "long.jsonl").write_text(
        '{"key": "fills/order-1", "value": {"qty": 0.01}}\n'
        '{"key": "fills/order-2", "value": {"qty": 0.02}}\n'
        f'{{"key": "fills/{"x" * 240}", "value": {{"qty": 0.03}}}}\n'
    )
    parts.append(run("persistkit import long.jsonl ./restored"))

    parts.append(SECTION_BACKENDS)
    text = README.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    section = "\n".join(parts).replace("\n## ", "\n### ").replace("\n# ", "\n## ")
    README.write_text(f"{head}{BEGIN}{section.rstrip()}\n{END}{tail}")
    shutil.rmtree(DEMO)
    print(f"wrote the command-line section of {README}")


TEMPLATE_HEAD = """\
## Command line

For the person on call: see a bot's state, check before a deploy that a restart
will succeed, and move state between backends, without writing Python.
Install it with the `cli` extra: `pip install -e '.[cli]'`.

Every command takes a directory (`ROOT`) or a backend URL, by default
`$PERSISTKIT_BACKEND`, else `$PERSISTKIT_BASE_DIR`, else `./dump/data`
(`file:///path`, `redis://...`, `s3://...`: any URL `persistkit.open_backend`
accepts). Exit codes, for scripts:

| code | meaning |
|---:|---|
| 0 | done, nothing wrong |
| 1 | problems found (preflight, status, inspect, export), or a write refused |
| 2 | could not run: missing root, bad URL, unreachable server, bad input |

Every command's `--help` says what it does and what its exit codes mean.

**While a bot runs.** The commands that only read (`inspect`, `preflight`,
`status`, `quarantine list`, `export`) take no lock and write nothing: safe at
any time.
The commands that write check first whether a live session holds the root:

- `import` and `migrate` into it: refused (exit 1, nothing written, the holder
  named by pid, host and start time); `--force` writes the values as one commit
  of the root's journal, like one of the bot's ticks.
- `quarantine restore`: refused; `--force` puts the value back as one commit of
  the journal.
- `quarantine purge`: refused; `--force` purges (a quarantined value is no part
  of the bot's state).
- `journal salvage`: refused, with no `--force`: stop the bot first.

A forced change is ordered with the bot's own commits, so no replay of the
journal after a crash undoes it: kill the bot with `kill -9`, restart it, and
the change is there. The bot's own next write of a key still replaces it (a bot
that keeps a value in memory writes what it holds). Who holds a root is looked
up exactly as `persistkit status` shows it (`/proc/locks`, the sessions' holder
files, and whether each session still holds its liveness lock, asked with
`F_OFD_GETLK`), never tested by taking a lock, so a check can never make a
starting bot fail; a killed bot's leftovers refuse nothing. A backend that keeps
live-session leases (`Backend.leases`) is asked for them instead. Redis and S3
keep none yet: a live session's locks are files in its `base_dir` on its own
machine, out of sight of a URL, so these commands cannot see a bot running on a
Redis or S3 root.

Commands that read (`inspect`, `export`, and `migrate` of its source) show the
committed state, at one commit point, and change nothing, also beside a running
bot: a tick committed while they read is in what they show whole or not at
all, and a value committed but not yet applied to its file (after a `kill -9`,
say) is shown with its committed value, marked pending. How each backend finds
its one point:

- file: the shared journal up to its last complete record, laid over the
  files, read again if a checkpoint landed in between, without a lock. A bot
  that commits without a pause can land one in every read: after five, the
  journal lock is held (read-only) for one last read, and the bot's commits
  wait for it (milliseconds).
- Redis, one server: one read-only script reads every value.
- Redis Cluster, S3, others: two reads that agree key for key, with recorded
  commits not yet applied (cross-slot records, the S3 head record) laid over
  the values. On a backend that changes under every read it is no snapshot:
  exit 2, nothing written, until its writers pause.

A symbolic link inside a file root is never followed, by any command: it is
reported (exit 1), and what lies behind it is neither shown nor exported.

Progress bars go to stderr, only when stderr is a terminal (or with `--progress`).
Every output below is real: generated by `scripts/capture_cli_docs.py` on a bot
state written through the public API.
"""

SECTION_INSPECT = """
## `persistkit inspect [ROOT | URL]`

Domains, entities and when each last changed (file backend: the file's mtime;
a backend that keeps no such time shows `-`), and the decoded state: open
signals, scheduled entries, risk positions, partial milestones, and the order
intents not final yet (those in doubt marked: a restart reconciles them;
`--json`: `open_intents`, each with `in_doubt` and the intent). Values that do
not decode are listed with the reason a start would give. `--json` for scripts.
Exit 1 when a symbolic link inside the root was not followed or commits could
not be read (what is shown is then older than the committed state).
"""

SECTION_INSPECT_CRASHED = """
A bot moved its stop loss in a tick and was killed with `kill -9` before the
commit reached its file: the file still holds the old stop, the journal the
committed one. `inspect` shows the committed tick, marked pending, and writes
nothing (a start applies it):
"""

SECTION_PREFLIGHT = """
## `persistkit preflight [ROOT | URL]`

Runs the startup path read-only: lists the backend, checks permissions with
`os.access` (never by writing), parses and validates every value with the model
its domain adapter uses (values outside the four domains: JSON parse only),
finds temp files left by interrupted writes, asks the backend for unapplied
commits and durability warnings. It sweeps nothing and quarantines nothing: it
says what a real start would do. Gate a deploy on it: 0 clean, 1 problems, 2
could not run.
"""

SECTION_STATUS = """
## `persistkit status [ROOT | URL] [--json] [--watch [--interval SECONDS]]`

What the person on call asks first: is the bot running, is its state
committed, does anything need me? Read-only like `preflight` (it runs
preflight's checks as they are, so the two never disagree), and safe beside a
running bot, every few seconds with `--watch`:

- **sessions**: each live session's pid, host, since, what it locks, and
  whether it is still alive (its lock is asked without being taken, so a
  check never makes a starting bot fail); one killed with `kill -9` shows as
  gone. A backend that keeps session leases (`Backend.read_leases`) is
  asked for them; Redis and S3 keep none yet, and there it says so.
- **domains**: entities per domain and when each last committed (the
  journal's commit times, the entity files' change times; S3: LastModified).
- **intents**: the order intents not final yet, and how many are in doubt
  (`pending`, `sent`, `unknown`: orders a stopped bot may have sent), the
  first ten by name.
- **journal** (file roots): its size and the commits since its last
  checkpoint: the running session's own, or, with none running, commits
  waiting for the next start (every reader already includes them).
- **quarantine**, **durability** warnings, and every **problem** preflight
  finds (a damaged journal, a symbolic link inside the root, a value a start
  would quarantine).

`--watch` redraws the report in place every `--interval` seconds (2 by
default) until Ctrl-C. Exit codes: 0 healthy; 1 needs attention (a session
gone without closing, commits waiting with no session running, order intents
in doubt with no session running, quarantined values, a durability warning,
any preflight problem); 2 could not run. A
`memory://` store lives inside one process: exit 2.

`--json` keys: `backend`, `status` (`healthy`, `needs-attention`),
`exit_code`, `checked_at`, `sessions` (`known`, `why_unknown`, `running` and
`gone`: each `pid`, `host`, `since`, `alive`, `locks`, `where`;
`unnamed_locks`), `domains` (each `domain`, `entities`, `last_change`; `null`
when nothing can be read), `journal` (`path`, `bytes`, `commits`, `keys`,
`keys_behind`, `last_commit`; `null` without one), `commits_waiting`
(`null` when the journal cannot be read),
`quarantine` (each `id`, `key`, `reason`, `quarantined_at`),
`open_intents` (each order intent not final, its fields as stored plus
`in_doubt`; `null` when nothing can be read), `durability_warnings`, `problems`
and `notes` (each `kind`, `where`,
`detail`), `attention` (why the exit code is 1, one sentence each).

Beside `examples/live_bot.py`, running on `./bot`:
"""

SECTION_STATUS_KILLED = """
The same bot after `kill -9`: its session is gone, and its last commit waits
for the next start (every reader already sees it):
"""

SECTION_PREFLIGHT_BROKEN = """
After a `kill -9` mid-write and a deploy that wrote a bad schedule row:
"""

SECTION_QUARANTINE = """
## `persistkit quarantine list | restore ID [--overwrite] | purge ID [--yes]`

The bot restarted and quarantined the two bad values (never deleting them).
`restore` puts one back as one commit of the journal (refusing, exit 1, if a
value was stored there since, unless `--overwrite`) and warns when it still
would not validate; `purge` deletes one for good after asking (or with `--yes`).
"""

SECTION_JOURNAL = """
## `persistkit journal salvage [ROOT]`

The file backend's commits go to one journal shared by every process of the
root (`.journal/commits.pkj`), each record checksummed. A record that fails its
check at the very end is the torn tail of a writer that died mid-append, and
is cut off. One that fails its check with valid records after it is damage: a
bad disk block, a hand edit. Then every process refuses the root
(`JournalDamagedError`), nothing is applied or deleted, and `preflight` says so
(exit 1). `journal salvage` applies the commits before the damage, moves the
journal into `.quarantine/.journal/` (never deleted) and lists the valid
commits after the damage that it left out: what lay between them is lost, so
they may not apply to what is there now. It refuses (exit 1) while a live
session runs on the root.

Here one bit of the second of three commits was flipped:
"""

SECTION_MIGRATE = """
## `persistkit migrate SRC DST [--overwrite] [--dry-run]`

A verified copy between any two backends: every value written is read back and
compared byte for byte. The whole copy is planned first; a destination value
that differs is replaced only when it is provably older (both backends report a
change time, and the destination's is earlier). Where one side keeps no change
time (Redis, a JSON Lines file), any differing destination value is refused.
A plan with a refusal writes nothing; `--overwrite` replaces them. Quarantined
values stay in the source. The source is read like `inspect` reads, at one
commit point, changing nothing; a source that cannot be read whole (a symbolic
link inside it, commits it cannot read) is refused, exit 1, nothing written.
Every key is checked first against the rules a store names keys by (a key no
store could have written: exit 2, nothing written). Into a file root the whole
copy is one commit of its journal: all of it or nothing. From a backtest-kit
19.x folder (`backtest-kit:///ABSOLUTE/PATH/dump/data?exchange=NAME`) it shows
the mapping first and lists what it cannot migrate (exit 1): see
[Coming from backtest-kit](#coming-from-backtest-kit).
"""

SECTION_MIGRATE_REFUSED = """
The copy's risk file changed after the migration (it is now newer than the
source's), so a second migration refuses, writing nothing:
"""

SECTION_EXPORT = """
## `persistkit export SRC FILE.jsonl` and `persistkit import FILE.jsonl DST`

JSON Lines, one `{"key": ..., "value": <json>}` per entity. A value that is not
JSON travels as `"raw_base64"` so nothing is lost; quarantined values are left
out unless `--include-quarantine` (they carry a `"quarantine"` object). The
export file appears complete or not at all (written beside, fsynced, renamed).
An export is a snapshot: the committed state at one commit point (see above),
so a tick committed during the export never separates a signal from its risk
position; values committed and not yet applied are exported with their
committed values (named on stderr). A symbolic link inside the root, or
commits that could not be read: the rest is exported, each is named, exit 1.
`import` checks the whole file first, every key against the rules a store
names keys by, lengths included (a bad line: exit 2, nothing written, the line
and key named), and then copies like `migrate`, verified; a file has no change
times, so a differing destination value is refused unless `--overwrite`.
"""

SECTION_BESIDE_A_BOT = """
## Beside a running bot

The on-call operator moves a stop loss up while the bot runs. The import is
refused, naming the bot; with `--force` it is written as one commit of the
root's journal, ordered with the bot's ticks, so that a `kill -9` and a restart
of the bot keep it:
"""

SECTION_ERRORS = """
## Errors

A missing root, a bad URL or an unreachable server: one line on stderr and exit
2, never a traceback. So is an import file with a bad line or a key no store
could have written (here a 240-byte entity id on line 3): the whole file is
checked before anything is written.
"""

SECTION_BACKENDS = """
## What the command line asks of a backend

Only the `Backend` contract, through `persistkit.open_backend(url)`, so a new
backend works here unchanged. Four optional methods of
`persistkit.Backend`, each with a default there, make it say more:

- `changed_at(key)`: when the value last changed (file: mtime). Shown by
  `inspect`; `migrate` compares it to refuse overwriting newer data. Default
  `None`: shown as `-`, and a differing destination value is always refused.
- `unapplied_commits()`: commits recorded but not yet applied to their final
  place; `preflight` shows them as a note (every read includes them, a start
  applies them). Default `[]`.
- `snapshot()`: every value at one commit point, with the keys read from
  commits not yet applied (pending) and the commits it could not read; what
  `inspect`, `export` and `migrate` read. Default: two reads that agree.
- `durability_warnings()`: settings that weaken durability (Redis without
  `appendfsync always`, say); `preflight` reports each. Default `[]`.

The file backend's permission check (`os.access` on every directory) is the one
thing `preflight` does only for file roots. Who runs on a backend is asked in
one place, the same for `status`, `--force` and `import`: file roots answer
from `ROOT/.locks`, a backend with `leases = True` from its `read_leases()`.
"""


if __name__ == "__main__":
    main()

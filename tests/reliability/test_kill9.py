"""``kill -9`` of a real writer process at random moments, hundreds of times."""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path

from common import Result, count, record
from procs import Acks, spawn_writer, verify_directory

KILLS = count(200, 600, "kill -9 rounds")


def test_kill_9_at_random_moments_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    seed = int(os.environ.get("PERSISTKIT_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    print(f"kill -9 loop: {KILLS} kills, seed {seed}", file=sys.stderr)
    acks = Acks()
    violations: list[str] = []
    acknowledged = during_startup = 0
    for round_number in range(KILLS):
        writer = spawn_writer("loop", str(tmp_path), "--seed", str(round_number))
        assert writer.stdout is not None
        output = b""
        if rng.random() < 0.2:
            # Somewhere in interpreter start-up or persistkit's own startup scan.
            time.sleep(rng.uniform(0.0, 0.4))
        else:
            output = writer.stdout.readline()
            time.sleep(rng.uniform(0.0, 0.15))
        started = output.startswith(b"ready")
        writer.send_signal(signal.SIGKILL)
        rest, errors = writer.communicate()
        output += rest
        started = started or b"ready" in output
        during_startup += not started
        if writer.returncode != -signal.SIGKILL:
            violations.append(
                f"round {round_number}: writer exited {writer.returncode} before the kill: "
                f"{errors.decode(errors='replace')[-500:]}"
            )
        acknowledged += acks.feed(output)
        problems = verify_directory(tmp_path, acks)
        violations += [f"round {round_number}: {problem}" for problem in problems]
        if round_number % 25 == 0:
            print(
                f"  kill {round_number}/{KILLS}: {acknowledged} acknowledged writes, "
                f"{len(violations)} violations",
                file=sys.stderr,
            )
    record(
        Result(
            fault="kill -9 at random moments",
            injection="writer subprocess (tests/reliability/writer_proc.py, 5 keys, values of "
            "20-3000 bytes) killed with SIGKILL after a random 0-150 ms of writing, or 0-400 ms "
            "after spawn (during start-up); startup and checks run after each kill",
            expected="every file old or new, never torn; every acknowledged write present; "
            "no temp file after startup",
            trials=KILLS,
            violations=len(violations),
            counts={
                "kills": KILLS,
                "kills before the writer was ready": during_startup,
                "acknowledged writes checked": acknowledged,
            },
        )
    )
    assert acknowledged > KILLS, "the writer barely wrote: the loop proves nothing"
    assert violations == [], "\n".join(violations[:20])

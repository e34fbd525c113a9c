"""The benchmark suite's entry point: ``python -m bench`` (``bash scripts/bench.sh`` wraps it).

Runs every group in interleaved rounds, then writes ``docs/performance.md``,
the PNG plots in ``docs/img/`` and the raw results (JSON) beside the report.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import raw
from bench.backends import load_remote_backends
from bench.backtest_mode import backtest_loop_group, memory_calls_group
from bench.file_backend import init_group, read_group, write_group
from bench.harness import Group, GroupResult, run_group
from bench.history import history_groups
from bench.machine import describe_machine, load_average
from bench.peers.backtest_kit_peer import BacktestKitPeer, PeerUnavailableError
from bench.report import Run, load_run, save_run, write_plots, write_report
from bench.sizes import FULL, QUICK
from bench.stats_events import statistics_group
from bench.ticks import tick_groups

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent
GROUP_KEYS = (
    "write",
    "read",
    "init-warm",
    "init-cold",
    "ticks",
    "history",
    "statistics",
    "backtest",
    "remote",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="persistkit's benchmark suite: interleaved rounds, ratios to references "
        "measured in the same run, a markdown report and plots.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke runs")
    parser.add_argument(
        "--only",
        default=",".join(GROUP_KEYS),
        help=f"comma-separated subset of: {', '.join(GROUP_KEYS)} (default: all)",
    )
    parser.add_argument("--report", default=str(REPO / "docs" / "performance.md"))
    parser.add_argument("--img-dir", default=str(REPO / "docs" / "img"))
    parser.add_argument(
        "--results", default=None, help="raw results JSON (default: next to the report)"
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="where the files are written (default: a fresh folder in /var/tmp, on disk)",
    )
    parser.add_argument("--no-node", action="store_true", help="skip the backtest-kit peer")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="re-render the report and plots from the results JSON without measuring",
    )
    return parser


def _install_node_peer(notes: list[str]) -> BacktestKitPeer | None:
    try:
        peer = BacktestKitPeer.install()
    except (PeerUnavailableError, OSError) as exc:
        notes.append(f"backtest-kit peer could not run: {exc}")
        print(f"[backtest-kit] not measured: {exc}", file=sys.stderr)
        return None
    print(f"[backtest-kit] {peer.version} ready in {peer.install_dir}", file=sys.stderr)
    return peer


async def _measure(args: argparse.Namespace, workdir: str, command: str) -> Run:
    sizes = QUICK if args.quick else FULL
    wanted = {key.strip() for key in args.only.split(",") if key.strip()}
    unknown = wanted - set(GROUP_KEYS)
    if unknown:
        raise SystemExit(f"--only: unknown group(s) {', '.join(sorted(unknown))}")
    notes: list[str] = []
    node = None if args.no_node else _install_node_peer(notes)
    if args.no_node:
        notes.append("backtest-kit peer: skipped (--no-node).")

    groups: list[Group] = []
    if "write" in wanted:
        groups.append(write_group(workdir, sizes, node))
    if "read" in wanted:
        groups.append(read_group(workdir, sizes, node))
    if "init-warm" in wanted:
        groups.append(init_group(workdir, sizes, node, cold=False))
    if "init-cold" in wanted:
        if raw.page_cache_droppable():
            groups.append(init_group(workdir, sizes, node, cold=True))
        else:
            notes.append(
                "startup scan with a cold page cache: skipped, "
                "/proc/sys/vm/drop_caches is not writable (run as root)."
            )
    if "ticks" in wanted:
        groups += tick_groups(workdir, sizes)
    if "history" in wanted:
        groups += history_groups(workdir, sizes)
    if "statistics" in wanted:
        groups.append(statistics_group(workdir, sizes))
    if "backtest" in wanted:
        groups += [memory_calls_group(sizes), backtest_loop_group(sizes)]
    if "remote" in wanted:
        remote, skipped = load_remote_backends()
        notes += skipped
        for backend in remote:
            groups += backend.groups(workdir, sizes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if not sizes.warmup:
        for group in groups:
            group.warmup = False

    results: list[GroupResult] = []
    load_at_start = load_average()
    started_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    started = time.perf_counter()
    for group in groups:
        results.append(await run_group(group))

    peer_own = None
    if node is not None and sizes.cross_check:
        print("[backtest-kit] its own bench.mjs, as a cross-check", file=sys.stderr)
        try:
            peer_own = node.own_benchmark(
                os.path.join(workdir, "bench-mjs"),
                rounds=sizes.slow_rounds,
                writes=sizes.durable_writes,
                reads=sizes.reads,
                files=sizes.init_entities,
            )
        except PeerUnavailableError as exc:
            notes.append(f"backtest-kit bench.mjs cross-check failed: {exc}")

    machine = describe_machine(
        workdir,
        {"backtest-kit": node.version} if node is not None else {},
        load_at_start=load_at_start,
    )
    return Run(
        started=started_at,
        seconds=time.perf_counter() - started,
        commands=["bash scripts/bench.sh", f"# which ran: {command}"],
        quick=args.quick,
        machine=machine,
        groups=results,
        notes=notes,
        peer_own=peer_own,
    )


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    results_path = args.results or os.path.splitext(args.report)[0] + ".json"
    if args.render_only:
        run = load_run(results_path)
    else:
        logging.getLogger("persistkit").setLevel(logging.WARNING)
        command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
        owned = args.workdir is None
        workdir = args.workdir or tempfile.mkdtemp(prefix="persistkit-bench-", dir="/var/tmp")
        os.makedirs(workdir, exist_ok=True)
        try:
            run = asyncio.run(_measure(args, workdir, command))
        finally:
            if owned:
                shutil.rmtree(workdir, ignore_errors=True)
        save_run(run, results_path)
    images = [] if args.no_plots else write_plots(run, args.img_dir)
    write_report(run, args.report, images)
    print(f"report: {args.report}", file=sys.stderr)
    for image in images:
        print(f"plot: {image}", file=sys.stderr)

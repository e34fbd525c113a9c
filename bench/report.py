"""``docs/performance.md`` and the plots, from one run's results."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bench import stats_events
from bench.harness import CaseResult, GroupResult, Sample
from bench.history import HISTORY_OFF, HISTORY_WITH_INPUTS, PLAIN_OFF, PLAIN_ON
from bench.machine import Machine

__all__ = ["TARGETS", "Run", "Target", "load_run", "save_run", "write_plots", "write_report"]

PK_WRITE = "persistkit write_value, same id"
PK_READ = "persistkit read_value"
PK_INIT = "persistkit wait_for_init"
BTK_WRITE = "backtest-kit writeValue, sequential"
BTK_READ = "backtest-kit readValue"
BTK_INIT = "backtest-kit waitForInit"


REMOTE_GROUPS = ("redis", "s3")
"""Group keys (before any ``-``) of the remote backends: plotted against their raw clients."""


@dataclass(frozen=True, slots=True)
class Target:
    label: str
    group: str
    case: str
    other: str
    at_least: float


TARGETS = [
    Target(
        "durable single write vs raw durable-replace loop",
        "write",
        PK_WRITE,
        "raw durable replace, same file",
        0.9,
    ),
    Target("durable single write vs backtest-kit writeValue", "write", PK_WRITE, BTK_WRITE, 1.0),
    Target("wait_for_init vs backtest-kit waitForInit, warm", "init-warm", PK_INIT, BTK_INIT, 15),
    Target("wait_for_init vs backtest-kit waitForInit, cold", "init-cold", PK_INIT, BTK_INIT, 15),
    Target("read_value vs backtest-kit readValue", "read", PK_READ, BTK_READ, 10),
    Target(
        "session tick with history and inputs vs without history (cost <= 15%)",
        "history",
        HISTORY_WITH_INPUTS,
        HISTORY_OFF,
        0.87,
    ),
    Target(
        "plain writes with history (journaled) vs without history (cost <= 15%)",
        "history",
        PLAIN_ON,
        PLAIN_OFF,
        0.87,
    ),
    Target(
        "bot tick recording 6 statistics events vs the same tick without",
        "statistics",
        stats_events.ON_CHANGING,
        stats_events.OFF_CHANGING,
        0.91,
    ),
    Target(
        "bot tick recording 1 statistics event vs the same tick without",
        "statistics",
        stats_events.ON_ONE,
        stats_events.OFF_ONE,
        0.91,
    ),
    Target(
        "bot ticks recording events at the demo bot's rate vs the same ticks without",
        "statistics",
        stats_events.ON_MIXED,
        stats_events.OFF_MIXED,
        0.91,
    ),
    Target(
        "bot tick with statistics on, nothing to record, vs statistics off",
        "statistics",
        stats_events.ON_STEADY,
        stats_events.OFF_STEADY,
        0.91,
    ),
    Target(
        "backtest-mode write_value vs dict + orjson",
        "backtest-calls",
        "persistkit write_value (backtest mode)",
        "dict[key] = orjson.dumps(value)",
        0.5,
    ),
]


@dataclass(slots=True)
class Run:
    started: str
    seconds: float
    commands: list[str]
    quick: bool
    machine: Machine
    groups: list[GroupResult]
    notes: list[str]
    """Skipped parts and why (missing peers, backends, root)."""
    peer_own: dict[str, Any] | None = None
    """backtest-kit's own bench.mjs output, when it ran."""

    def group(self, key: str) -> GroupResult | None:
        for group in self.groups:
            if group.key == key:
                return group
        return None


# -- JSON round trip (so the report can be re-rendered without re-measuring) ----------


def save_run(run: Run, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(orjson.dumps(dataclasses.asdict(run), option=orjson.OPT_INDENT_2))


def load_run(path: str) -> Run:
    with open(path, "rb") as handle:
        data = orjson.loads(handle.read())
    groups = [
        GroupResult(
            **{
                **group,
                "cases": [
                    CaseResult(
                        **{**case, "samples": [Sample(**sample) for sample in case["samples"]]}
                    )
                    for case in group["cases"]
                ],
            }
        )
        for group in data.pop("groups")
    ]
    machine = Machine(**data.pop("machine"))
    return Run(**data, machine=machine, groups=groups)


# -- markdown ----------------------------------------------------------------------------


def _rate(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def _ratio(value: float) -> str:
    if value >= 10:
        return f"{value:,.1f}x"
    if value >= 0.1:
        return f"{value:.2f}x"
    return f"{value:.3f}x"


def _target_rows(run: Run) -> list[str]:
    rows = ["| target | ratio in this run | wanted | met |", "|---|---:|---:|:---:|"]
    for target in TARGETS:
        group = run.group(target.group)
        if group is None or not group.has(target.case) or not group.has(target.other):
            rows.append(f"| {target.label} | not measured | >= {target.at_least:g}x | - |")
            continue
        ratio = group.pair_ratio(target.case, target.other)
        met = "yes" if ratio >= target.at_least else "**no**"
        rows.append(f"| {target.label} | {_ratio(ratio)} | >= {target.at_least:g}x | {met} |")
    return rows


def _group_table(group: GroupResult) -> list[str]:
    unit = f"{group.unit}/s"
    rows = [
        f"| case | median {unit} | min | max | ratio | to |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for case in group.cases:
        name = case.name if case.kind != "persistkit" else f"**{case.name}**"
        to = "(reference)" if case.name == case.reference else case.reference
        ratio = "1.00x" if case.name == case.reference else _ratio(case.ratio)
        rows.append(
            f"| {name} | {_rate(case.median)} | {_rate(case.low)} | {_rate(case.high)} "
            f"| {ratio} | {to} |"
        )
    return rows


def _backtest_overhead(group: GroupResult) -> list[str]:
    plain = group.case("loop without persistence")
    persisted = group.case("loop + write_value every tick (backtest mode)")
    per_tick_us = (1 / persisted.median - 1 / plain.median) * 1e6
    ticks = plain.samples[0].operations
    slower = 1 / persisted.ratio
    return [
        f"Persisting every tick adds **{per_tick_us:.2f} µs per tick**: the {ticks:,}-tick "
        f"loop takes {ticks / persisted.median:.2f} s instead of {ticks / plain.median:.2f} s "
        f"(median), {slower:.1f}x the loop without persistence.",
    ]


def write_report(run: Run, path: str, images: Sequence[str]) -> None:
    lines = [
        "# Performance",
        "",
        "Generated by the benchmark suite (`bench/`) from one run; do not edit by hand. "
        "Every figure is measured in interleaved rounds (each round runs every case of "
        "its group once, in turn) and every ratio is the median over rounds of the case "
        "against its reference *measured in the same round*, so it holds on another "
        "machine far better than the absolute figures do.",
        "",
        f"Run started {run.started} and took {run.seconds / 60:.1f} minutes"
        + (" (`--quick`: smoke-run sizes, not for comparison)." if run.quick else "."),
        "",
        "## Commands",
        "",
        "```sh",
        *run.commands,
        "```",
        "",
        "## Machine",
        "",
        f"- cores (nproc): {run.machine.cores}",
        f"- CPU: {run.machine.cpu}",
        f"- kernel: {run.machine.kernel}",
        f"- file system of the bench directory: {run.machine.filesystem}",
        *([f"- load average (1 min): {run.machine.load}"] if run.machine.load else []),
        f"- Python {run.machine.python}; "
        + ", ".join(f"{name} {version}" for name, version in sorted(run.machine.versions.items())),
        "",
        "## Targets",
        "",
        *_target_rows(run),
        "",
        "Where a target is missed, [profiling.md](profiling.md) says where the time goes "
        "and what would close the gap.",
        "",
    ]
    if run.notes:
        lines += ["## Not measured in this run", ""]
        lines += [f"- {note}" for note in run.notes]
        lines.append("")
    for image in images:
        title = os.path.splitext(os.path.basename(image))[0].replace("-", " ")
        lines += [f"![{title}]({os.path.relpath(image, os.path.dirname(path))})", ""]
    lines += ["## Results", ""]
    for group in run.groups:
        lines += [f"### {group.title}", ""]
        lines += [f"{note}" for note in group.notes]
        lines += [
            f"{group.rounds} rounds; min and max are over rounds.",
            "",
            *_group_table(group),
            "",
        ]
        if group.key == "backtest-loop":
            lines += [*_backtest_overhead(group), ""]
    if run.peer_own is not None:
        lines += [
            "### backtest-kit's own benchmark (bench.mjs), as a cross-check",
            "",
            f"backtest-kit {run.peer_own.get('peer_version')} on Node "
            f"{run.peer_own.get('node')}, {run.peer_own.get('rounds')} rounds, "
            f"{run.peer_own.get('payload_bytes')}-byte payload, its own timing:",
            "",
            "| case | median | min | max | unit |",
            "|---|---:|---:|---:|---|",
        ]
        for name, case in run.peer_own.get("cases", {}).items():
            lines.append(
                f"| {name} | {_rate(case['median'])} | {_rate(case['min'])} "
                f"| {_rate(case['max'])} | {case['unit']} |"
            )
        lines.append("")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        handle.write("\n".join(lines).rstrip() + "\n")


# -- plots -------------------------------------------------------------------------------

# (panel title, group, persistkit case, whether the peers compared run 16 writes in flight)
_PEER_COMPARISONS = [
    ("one durable write", "write", PK_WRITE, False),
    ("16 writes in flight", "write", "persistkit write_value, 16 in flight (gather)", True),
    ("one read", "read", PK_READ, False),
    ("startup scan, warm", "init-warm", PK_INIT, False),
    ("startup scan, cold", "init-cold", PK_INIT, False),
]


def _tick_series(run: Run) -> dict[str, list[tuple[int, float, float, float]]]:
    """Case name -> [(entities per tick, median, min, max)] over the tick groups."""
    series: dict[str, list[tuple[int, float, float, float]]] = {}
    for group in run.groups:
        if not group.key.startswith("ticks-"):
            continue
        per_tick = int(group.key.split("-", 1)[1])
        for case in group.cases:
            series.setdefault(case.name, []).append((per_tick, case.median, case.low, case.high))
    return series


def write_plots(run: Run, directory: str) -> list[str]:
    """PNG plots next to the report; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    written: list[str] = []

    series = _tick_series(run)
    if series:
        figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
        for name, points in series.items():
            points.sort()
            xs = [point[0] for point in points]
            medians = [point[1] for point in points]
            errors = [
                [point[1] - point[2] for point in points],
                [point[3] - point[1] for point in points],
            ]
            style = "--" if name.startswith("raw") else "-"
            axes.errorbar(xs, medians, yerr=errors, fmt=f"o{style}", capsize=3, label=name)
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("entities changed per tick")
        axes.set_ylabel("durable entity writes per second (median, min-max)")
        axes.set_title("File backend: throughput against entities per tick")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8, loc="best")
        figure.tight_layout()
        path = os.path.join(directory, "throughput-per-tick.png")
        figure.savefig(path)
        plt.close(figure)
        written.append(path)

    panels = []
    for title, key, mine, in_flight in _PEER_COMPARISONS:
        group = run.group(key)
        if group is None or not group.has(mine):
            continue
        bars = [
            (case.name, group.pair_ratio(mine, case.name))
            for case in group.cases
            if case.kind == "peer" and ("in flight" in case.name) == in_flight
        ]
        if bars:
            panels.append((title, bars))
    if panels:
        figure, axes_list = plt.subplots(
            len(panels),
            1,
            figsize=(9, 1.1 + sum(0.45 * len(b) + 0.6 for _, b in panels)),
            dpi=120,
            gridspec_kw={"height_ratios": [len(b) for _, b in panels]},
        )
        if len(panels) == 1:
            axes_list = [axes_list]
        for axes, (title, bars) in zip(axes_list, panels, strict=True):
            names = [name for name, _ in bars]
            values = [value for _, value in bars]
            colors = ["tab:green" if value >= 1 else "tab:red" for value in values]
            axes.barh(names, values, color=colors)
            axes.axvline(1.0, color="black", linewidth=1)
            axes.set_xscale("log")
            axes.set_title(
                f"{title}: persistkit / peer (right of 1 = persistkit faster)", fontsize=9
            )
            axes.tick_params(axis="y", labelsize=8)
            for index, value in enumerate(values):
                axes.text(value, index, f" {_ratio(value)}", va="center", fontsize=8)
            low = min(*values, 1.0)
            high = max(*values, 1.0)
            axes.set_xlim(low / 2, high * 4)
        figure.tight_layout()
        path = os.path.join(directory, "persistkit-vs-peers.png")
        figure.savefig(path)
        plt.close(figure)
        written.append(path)

    file_refs = [group for group in run.groups if not _remote(group)]
    remote_refs = [group for group in run.groups if _remote(group)]
    for groups, name, title in (
        (
            file_refs,
            "persistkit-vs-references.png",
            "persistkit against the raw reference of the same work\n(ratio of rates; 1 = as fast)",
        ),
        (
            remote_refs,
            "remote-vs-raw-clients.png",
            "Redis and S3 backends against raw redis-py / boto3 on the same server\n"
            "(ratio of rates; 1 = as fast, right of 1 = persistkit faster)",
        ),
    ):
        plotted = _reference_plot(plt, groups, os.path.join(directory, name), title)
        if plotted is not None:
            written.append(plotted)
    return written


def _remote(group: GroupResult) -> bool:
    return group.key.split("-", 1)[0] in REMOTE_GROUPS


def _reference_plot(plt: Any, groups: Sequence[GroupResult], path: str, title: str) -> str | None:
    """Bars of every persistkit case's ratio to its reference; ``None`` if there is none."""
    references = [
        (f"{case.name} [{group.key}]\nvs {case.reference}", case.ratio)
        for group in groups
        if not group.key.startswith("ticks-")
        for case in group.cases
        if case.kind == "persistkit"
    ]
    if not references:
        return None
    figure, axes = plt.subplots(figsize=(9, 0.55 * len(references) + 1.2), dpi=120)
    names = [name for name, _ in references]
    values = [value for _, value in references]
    axes.barh(names, values, color="tab:blue")
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_xscale("log")
    axes.set_xlim(min(*values, 1.0) / 2, max(*values, 1.0) * 4)
    axes.invert_yaxis()
    axes.tick_params(axis="y", labelsize=7)
    for index, value in enumerate(values):
        axes.text(value, index, f" {_ratio(value)}", va="center", fontsize=8)
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path

"""Optional OpenTelemetry metrics: off, and free, until :func:`enable_metrics`.

Nothing here imports ``opentelemetry`` before :func:`enable_metrics` is called
(``pip install 'persistkit[otel]'``). The call sites check the one module
global :data:`recorder`, ``None`` while metrics are off, so a process that never
enables them pays one attribute lookup per read, write, commit and fsync
(``bench/metrics_overhead.py`` measures it).

The instruments (meter ``persistkit``):

| name | kind | unit | attributes |
|---|---|---|---|
| ``persistkit.read.duration`` | histogram | s | ``persistkit.backend`` (URL scheme) |
| ``persistkit.write.duration`` | histogram | s | ``persistkit.backend`` |
| ``persistkit.commit.duration`` | histogram | s | ``persistkit.backend`` |
| ``persistkit.fsyncs`` | counter | {call} | ``persistkit.call``: ``fsync`` or ``syncfs`` |
| ``persistkit.retries`` | counter | {retry} | |
| ``persistkit.conflicts`` | counter | {conflict} | ``persistkit.backend`` |
| ``persistkit.quarantines`` | counter | {value} | ``persistkit.backend`` |
| ``persistkit.journal.size`` | gauge | By | ``persistkit.root`` |

A read or write is one call of ``read_value`` / ``write_value`` (inside a
transaction a write is staged, and its commit is timed as one commit); a
commit is one transaction's (or tick's) commit. The durations include calls
that raised. A conflict is a ``ConflictError`` raised to a ``write_value`` or a
commit. A quarantine is a value the self-healing scan set aside. The journal
size is, for each file backend alive in this process, the bytes of its root's
commit journal file when the metrics are collected: the commits since the last
checkpoint (of any process), plus a small header.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

__all__ = ["Recorder", "disable_metrics", "enable_metrics", "recorder"]


class Recorder:
    """The instruments, made once per :func:`enable_metrics`."""

    def __init__(self, provider: MeterProvider | None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        from opentelemetry import metrics

        try:
            own_version: str | None = version("persistkit")
        except PackageNotFoundError:  # run from a source tree
            own_version = None
        meter = (provider or metrics.get_meter_provider()).get_meter("persistkit", own_version)
        self.read_duration = meter.create_histogram(
            "persistkit.read.duration", unit="s", description="Time of one read_value call"
        )
        self.write_duration = meter.create_histogram(
            "persistkit.write.duration", unit="s", description="Time of one write_value call"
        )
        self.commit_duration = meter.create_histogram(
            "persistkit.commit.duration",
            unit="s",
            description="Time of one transaction's (or tick's) commit",
        )
        self.fsyncs = meter.create_counter(
            "persistkit.fsyncs", unit="{call}", description="Durable flushes asked of the OS"
        )
        self.retries = meter.create_counter(
            "persistkit.retries",
            unit="{retry}",
            description="Attempts repeated after a transient backend error",
        )
        self.conflicts = meter.create_counter(
            "persistkit.conflicts",
            unit="{conflict}",
            description="Compare-and-set writes and commits that lost to a newer version",
        )
        self.quarantines = meter.create_counter(
            "persistkit.quarantines",
            unit="{value}",
            description="Corrupt values the self-healing scan moved to the quarantine",
        )
        self.journal_size = meter.create_observable_gauge(
            "persistkit.journal.size",
            callbacks=[_journal_sizes],
            unit="By",
            description="Bytes in a file backend's commit journal, not yet checkpointed",
        )

    @staticmethod
    def backend(scheme: str) -> dict[str, str]:
        """The attributes of a measurement about a backend of URL scheme ``scheme``."""
        attributes = _BACKEND_ATTRIBUTES.get(scheme)
        if attributes is None:
            attributes = _BACKEND_ATTRIBUTES[scheme] = {"persistkit.backend": scheme}
        return attributes


_BACKEND_ATTRIBUTES: dict[str, dict[str, str]] = {}
FSYNC = {"persistkit.call": "fsync"}
SYNCFS = {"persistkit.call": "syncfs"}


def _journal_sizes(options: CallbackOptions) -> Iterable[Observation]:
    from opentelemetry.metrics import Observation

    from persistkit.backends._journal import open_journals

    for journal in open_journals():
        try:
            observation = Observation(journal.size, {"persistkit.root": journal.root})
        except Exception:  # one journal that cannot say (its backend half torn down) hides none
            continue
        yield observation


recorder: Recorder | None = None
"""The instruments while metrics are on; ``None`` (the default) while they are off."""


def enable_metrics(meter_provider: MeterProvider | None = None) -> None:
    """Record persistkit's metrics (the module docstring lists them) with OpenTelemetry.

    ``meter_provider`` defaults to the global one
    (``opentelemetry.metrics.get_meter_provider()``). Raises ``ImportError``
    naming the ``otel`` extra when OpenTelemetry is not installed.
    """
    global recorder
    try:
        import opentelemetry.metrics  # noqa: F401 - only to say what is missing
    except ImportError as exc:
        raise ImportError(
            "persistkit's metrics need OpenTelemetry: pip install 'persistkit[otel]'",
            name=exc.name,
        ) from exc
    recorder = Recorder(meter_provider)


def disable_metrics() -> None:
    """Stop recording metrics (the instruments already made stay with their provider)."""
    global recorder
    recorder = None

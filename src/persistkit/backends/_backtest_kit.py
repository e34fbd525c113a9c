"""A backtest-kit 19.x folder, read-only, in persistkit's keys and models: the way to migrate.

``backtest-kit:///ABSOLUTE/PATH/dump/data?exchange=NAME`` opens the folder a
backtest-kit 19.x bot (npm ``backtest-kit``) keeps its live state in, so that
``persistkit migrate``, ``inspect`` and ``preflight`` work on it. backtest-kit
19.x writes another layout than the one its documentation shows (and
persistkit keeps, see the README's "Coming from backtest-kit"):

==========  ===================================================  ==============================
domain      backtest-kit 19.x                                    presented as
==========  ===================================================  ==============================
signal      ``signal/{symbol}_{strategy}_{exchange}/{symbol}``   ``signal/{pair}/{symbol}``
schedule    ``schedule/{symbol}_{strategy}_{exchange}/{symbol}`` ``schedule/{pair}/{symbol}``
risk        ``risk/{risk}_{exchange}/positions``                 ``risk/{risk}/positions``
partial     ``partial/{symbol}_{strategy}_{exchange}/{signal}``  ``partial/{pair}/levels``
==========  ===================================================  ==============================

(``{pair}`` is :func:`persistkit._names.join_pair`; every name is encoded by
:mod:`persistkit._names`, where backtest-kit writes raw names, unicode included.)

- **The exchange** is the required ``?exchange=``: folders without its ``_NAME``
  suffix, or whose rows name another exchange, are reported and skipped.
- **Names are never guessed.** A signal or schedule row names its symbol,
  strategy and exchange, and must match its folder and file. A partial folder
  names no row: its ``{symbol}_{strategy}`` is taken from a signal, schedule or
  risk position of the same folder name, or from the name itself when it has
  one ``_`` only; several readings, or none, are reported and skipped
  (backtest-kit's ``_``-joined names are ambiguous: ``BTC_USDT_trend`` is
  ``("BTC", "USDT_trend")`` or ``("BTC_USDT", "trend")``).
- **Per-signal partial files** (``{signal id}.json``, each a map of signal id to
  levels) are merged into one map; files that disagree about a signal are
  settled by that signal's own file, or reported and skipped.
- **Risk positions** carry neither ``signalId`` nor ``quantity`` nor
  ``addedAt`` in 19.x. They are derived from data that is there: the signal
  id from the pair's open signal, the quantity from that signal's
  ``cost / priceOpen``, ``addedAt`` from ``openTimestamp``. A position whose
  pair has no open signal (or no cost), or that was opened before that signal
  was created (an earlier signal's, left behind), cannot be derived: reported
  and skipped, never invented.
- Every value is validated against persistkit's model before it is presented;
  one that does not fit (a ``null`` price, which is how ``JSON.stringify``
  writes NaN) is reported and skipped, never quarantined.

Every write is refused (:class:`~persistkit.errors.WriteFailedError`): the
folder is migrated from, never written to. :func:`find_backtest_kit_state`
tells whether a persistkit root holds such state (a start and ``preflight``
say so, naming the migrate command), and :func:`archive_migrated` moves the
migrated folders aside after an in-place migration.
"""

from __future__ import annotations

import bisect
import errno
import math
import os
import stat
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import parse_qs, quote, unquote, urlsplit

import orjson
from pydantic import BaseModel, ValidationError

from persistkit import _codec as codec
from persistkit._names import encode_segment, join_pair
from persistkit.backends._base import (
    ANY_VERSION,
    Backend,
    Expected,
    QuarantineEntry,
    Versioned,
    split_key,
)
from persistkit.backends._file import SUFFIX, TEMP_PREFIX, FileBackend, content_version
from persistkit.backends._oslayer import O_NONBLOCK
from persistkit.errors import (
    BackendError,
    EntityNotFoundError,
    InvalidNameError,
    WriteFailedError,
)
from persistkit.models import PartialData, RiskActivePosition, ScheduledSignalRow, SignalRow

__all__ = [
    "ARCHIVE_DIR",
    "BacktestKitBackend",
    "BacktestKitMapping",
    "BacktestKitState",
    "Mapped",
    "Skipped",
    "archive_migrated",
    "find_backtest_kit_state",
    "migrate_command",
    "read_mapping",
    "state_not_read",
]

ARCHIVE_DIR = ".backtest-kit-archive"
"""Where an in-place migration moves the migrated folders (a dot name: never read as state)."""

_ROW_DOMAINS: dict[str, type[SignalRow]] = {"signal": SignalRow, "schedule": ScheduledSignalRow}
_RISK_FILE = f"positions{SUFFIX}"
_LEVELS_FILE = f"levels{SUFFIX}"
_UNMAPPED_DOMAINS = (
    "breakeven",
    "candle",
    "interval",
    "log",
    "measure",
    "notification",
    "recent",
    "storage",
    "strategy",
)
"""backtest-kit 19.x folders of its own, with no persistkit counterpart: named, left as they are."""


@dataclass(frozen=True, slots=True)
class Mapped:
    """One persistkit value and the backtest-kit files it is made of."""

    key: str
    sources: tuple[str, ...]
    """Paths relative to the root."""
    how: str
    """The mapping in words (the names it was attributed to, what was derived)."""
    data: bytes

    def folders(self) -> set[str]:
        """The backtest-kit folders (``{domain}/{folder}``) it is made of."""
        return {"/".join(source.split("/")[:2]) for source in self.sources}


@dataclass(frozen=True, slots=True)
class Skipped:
    """A backtest-kit file, folder or row that is not presented, and why."""

    path: str
    reason: str


@dataclass(slots=True)
class BacktestKitMapping:
    """What a backtest-kit 19.x folder holds for one exchange, in persistkit's keys."""

    root: str
    exchange: str
    values: dict[str, Mapped] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    """Files holding no state (a cleared signal: ``null``; no positions: ``[]``)."""
    other: list[str] = field(default_factory=list)
    """backtest-kit's folders outside the four domains (candle cache, breakeven, logs...):
    no persistkit counterpart, left as they are."""
    folders: dict[str, bool] = field(default_factory=dict)
    """Each folder of this exchange -> whether all of it is presented (or empty)."""

    _sorted: list[str] | None = field(default=None, repr=False)

    def sorted_keys(self) -> list[str]:
        """The keys in order, sorted once (the mapping is complete when it is read)."""
        if self._sorted is None or len(self._sorted) != len(self.values):
            self._sorted = sorted(self.values)
        return self._sorted

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append(Skipped(path, reason))
        folder = "/".join(path.split("/")[:2])
        if folder in self.folders:
            self.folders[folder] = False

    def migrated_folders(self) -> list[str]:
        """Folders every file of which is presented or empty: safe to move aside once copied."""
        return [folder for folder, whole in sorted(self.folders.items()) if whole]


# -- reading the folder -----------------------------------------------------------------


def _entries(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as found:
            return sorted(found, key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise BackendError(f"cannot list {path}: {exc.strerror or exc}") from exc


def _is_dir(entry: os.DirEntry[str]) -> bool:
    return entry.is_dir(follow_symlinks=False)


def _value_files(folder: str) -> Iterator[os.DirEntry[str]]:
    """The ``*.json`` files backtest-kit reads in ``folder`` (its temp files left out)."""
    for entry in _entries(folder):
        if entry.name.endswith(SUFFIX) and not entry.name.startswith(TEMP_PREFIX):
            yield entry


class _Vanished(ValueError):
    """The file was listed, then removed before it could be read (a signal cleared)."""


def _load(path: str) -> Any:
    """The JSON in ``path``, never through a symbolic link; ``ValueError`` saying why not."""
    try:
        # O_NONBLOCK: a FIFO opens at once (and is refused below) instead of blocking the start.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | O_NONBLOCK)
    except FileNotFoundError as exc:
        raise _Vanished("removed while it was read") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise ValueError("a symbolic link; never followed") from exc
        raise ValueError(f"cannot read it: {exc.strerror or exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read()
    finally:
        os.close(fd)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "value"
    return f"{exc.error_count()} errors, first at {where}: {first['msg']}"


def _fits(model: type[BaseModel], value: Any) -> tuple[dict[str, Any] | None, str]:
    """``value`` as the model stores it, or ``None`` and why it does not fit."""
    try:
        return model.model_validate(value).model_dump(mode="json"), ""
    except ValidationError as exc:
        return None, f"does not fit persistkit's {model.__name__}: {_first_error(exc)}"


def _split_suffix(folder: str, exchange: str) -> str | None:
    """``folder`` without its ``_{exchange}`` suffix, or ``None`` when it has none."""
    suffix = f"_{exchange}"
    if folder.endswith(suffix) and len(folder) > len(suffix):
        return folder[: -len(suffix)]
    return None


def _row_names(row: dict[str, Any]) -> tuple[str, str, str] | None:
    names = (row.get("symbol"), row.get("strategyName"), row.get("exchangeName"))
    if all(isinstance(name, str) and name for name in names):
        return names  # type: ignore[return-value]
    return None


def _is_backtest_kit_row(folder: str, row: Any) -> str | None:
    """The exchange of a backtest-kit row in its own ``{symbol}_{strategy}_{exchange}`` folder."""
    if not isinstance(row, dict):
        return None
    names = _row_names(row)
    if names is None or folder != "_".join(names):
        return None
    return names[2]


def _is_backtest_kit_position(position: Any) -> bool:
    return isinstance(position, dict) and "openTimestamp" in position and "signalId" not in position


def _positions(value: Any) -> list[tuple[str, dict[str, Any]]] | None:
    """backtest-kit's ``[[key, position], ...]``, or ``None`` when it is not that."""
    if not isinstance(value, list):
        return None
    pairs = []
    for item in value:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], dict)
        ):
            return None
        pairs.append((item[0], item[1]))
    return pairs


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _pair_key(domain: str, symbol: str, strategy: str, name: str) -> str:
    return f"{domain}/{join_pair(symbol, strategy)}/{encode_segment(name)}"


def read_mapping(root: str, exchange: str) -> BacktestKitMapping:
    """Read the backtest-kit 19.x folder ``root`` for ``exchange`` (see the module docstring)."""
    mapping = BacktestKitMapping(root, exchange)
    if not os.path.isdir(root):
        raise BackendError(f"no such directory: {root}")
    # (symbol, strategy) -> its open signal row, for the risk positions' derivations.
    open_signals: dict[tuple[str, str], dict[str, Any]] = {}
    # {symbol}_{strategy} (backtest-kit's join) -> the pairs named so by some row.
    named_pairs: dict[str, set[tuple[str, str]]] = {}
    for domain, model in _ROW_DOMAINS.items():
        for folder, prefix in _exchange_folders(mapping, domain):
            for entry in _value_files(folder):
                _map_row(mapping, domain, model, prefix, entry, open_signals, named_pairs)
    for folder, prefix in _exchange_folders(mapping, "risk"):
        _map_risk(mapping, folder, prefix, open_signals, named_pairs)
    for folder, prefix in _exchange_folders(mapping, "partial"):
        _map_partial(mapping, folder, prefix, named_pairs)
    mapping.other = [
        entry.name for entry in _entries(root) if entry.name in _UNMAPPED_DOMAINS and _is_dir(entry)
    ]
    return mapping


def _exchange_folders(mapping: BacktestKitMapping, domain: str) -> Iterator[tuple[str, str]]:
    """Each folder of ``domain`` that belongs to the exchange, with its name minus the suffix.

    Folders of persistkit's own (after an in-place migration) and folders of
    other exchanges holding no state are passed over in silence; other
    exchanges' folders with state are reported.
    """
    if os.path.islink(os.path.join(mapping.root, domain)):
        # Another folder's state (another bot's, perhaps) is not this one's to migrate.
        mapping.skip(domain, "a symbolic link; never followed")
        return
    for entry in _entries(os.path.join(mapping.root, domain)):
        relative = f"{domain}/{entry.name}"
        if entry.is_symlink():
            mapping.skip(relative, "a symbolic link; never followed")
            continue
        if not _is_dir(entry) or _is_persistkit_folder(domain, entry.path):
            continue
        prefix = _split_suffix(entry.name, mapping.exchange)
        if prefix is None and not any(_value_files(entry.path)):
            continue  # no state to report (persistkit leaves a closed pair's folder empty)
        if prefix is None:
            mapping.skip(
                relative, f"not of exchange {mapping.exchange!r} (no '_{mapping.exchange}' suffix)"
            )
            continue
        mapping.folders[relative] = True
        yield entry.path, prefix


def _is_persistkit_folder(domain: str, folder: str) -> bool:
    """Whether ``folder`` is one persistkit itself writes (nothing of backtest-kit's in it)."""
    name = os.path.basename(folder)
    files = [entry.name for entry in _value_files(folder)]
    try:
        if domain == "partial":
            return files == [_LEVELS_FILE] and not _is_file_of_signal_levels(folder)
        if domain == "risk":
            positions = _positions(_load(os.path.join(folder, _RISK_FILE)))
            return positions is not None and all("signalId" in p for _, p in positions)
        rows = [_load(os.path.join(folder, file)) for file in files]
    except (ValueError, InvalidNameError):
        return False
    # persistkit never writes a null row (it removes the file): null is backtest-kit's clear.
    # Its own rows name no exchange: the pair alone, encoded as the folder, says it is its own.
    for row in rows:
        if not isinstance(row, dict):
            return False
        symbol, strategy = row.get("symbol"), row.get("strategyName")
        if not (isinstance(symbol, str) and isinstance(strategy, str)):
            return False
        try:
            if join_pair(symbol, strategy) != name:
                return False
        except InvalidNameError:
            return False
    return bool(rows)


def _is_file_of_signal_levels(folder: str) -> bool:
    """Whether ``folder``'s ``levels.json`` is backtest-kit's own file of a signal whose id is
    ``levels`` (it holds that signal), not persistkit's partial file of the pair.

    backtest-kit names a partial file after its signal; persistkit's has that name for every
    pair. Taking backtest-kit's for persistkit's would pass its levels over in silence.
    """
    try:
        value = _load(os.path.join(folder, _LEVELS_FILE))
    except ValueError:
        return False
    return isinstance(value, dict) and "levels" in value


def _map_row(
    mapping: BacktestKitMapping,
    domain: str,
    model: type[SignalRow],
    prefix: str,
    entry: os.DirEntry[str],
    open_signals: dict[tuple[str, str], dict[str, Any]],
    named_pairs: dict[str, set[tuple[str, str]]],
) -> None:
    relative = os.path.relpath(entry.path, mapping.root)
    try:
        row = _load(entry.path)
    except ValueError as exc:
        mapping.skip(relative, str(exc))
        return
    if row is None:  # backtest-kit writes null to clear a signal
        mapping.empty.append(relative)
        return
    names = _row_names(row) if isinstance(row, dict) else None
    if names is None:
        mapping.skip(relative, "not a backtest-kit row (no symbol, strategyName, exchangeName)")
        return
    symbol, strategy, exchange = names
    if exchange != mapping.exchange:
        mapping.skip(relative, f"its row is of exchange {exchange!r}, not {mapping.exchange!r}")
        return
    if f"{symbol}_{strategy}" != prefix or entry.name != f"{symbol}{SUFFIX}":
        mapping.skip(
            relative,
            f"its row names ({symbol!r}, {strategy!r}), which is not its folder and file; "
            "not attributed",
        )
        return
    fitted, why = _fits(model, row)
    if fitted is None:
        mapping.skip(relative, why)
        return
    try:
        key = _pair_key(domain, symbol, strategy, symbol)
    except InvalidNameError as exc:
        mapping.skip(relative, str(exc))
        return
    named_pairs.setdefault(prefix, set()).add((symbol, strategy))
    if domain == "signal":
        open_signals[(symbol, strategy)] = row
    # The row as backtest-kit wrote it: every field of its own kept as is.
    mapping.values[key] = Mapped(
        key, (relative,), f"{domain} of {symbol} / {strategy}", codec.encode(row)
    )


def _derive_position(
    position_key: str, position: dict[str, Any], signal: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, str]:
    """A risk position with ``signalId``, ``quantity`` and ``addedAt``, or why it cannot be."""
    pair = f"{position.get('symbol')!r} / {position.get('strategyName')!r}"
    if signal is None:
        return None, (
            f"position {position_key!r}: its pair {pair} has no open signal to take its signal "
            "id and quantity from; not derived"
        )
    if signal.get("position") != position.get("position"):
        return None, (
            f"position {position_key!r}: the open signal {signal.get('id')!r} of {pair} is "
            f"{signal.get('position')!r}, the position {position.get('position')!r}; not derived"
        )
    cost, price_open = signal.get("cost"), signal.get("priceOpen")
    numbers = all(
        isinstance(number, int | float) and not isinstance(number, bool) and math.isfinite(number)
        for number in (cost, price_open)
    )
    if not numbers or cost <= 0 or price_open <= 0:  # type: ignore[operator]
        return None, (
            f"position {position_key!r}: signal {signal.get('id')!r} has no positive cost and "
            "priceOpen; its quantity cannot be derived"
        )
    opened = position.get("openTimestamp")
    if not isinstance(opened, int) or isinstance(opened, bool) or opened < 0:
        return None, f"position {position_key!r}: no openTimestamp; its addedAt cannot be derived"
    created = signal.get("scheduledAt")
    if isinstance(created, int) and not isinstance(created, bool) and opened < created:
        # One open signal per pair: a position opened before this signal existed is
        # an earlier signal's, left behind (priceOpen cannot tell: averaging moves it).
        return None, (
            f"position {position_key!r}: opened at {opened}, before the open signal "
            f"{signal.get('id')!r} of {pair} was created ({created}): left from an earlier "
            "signal; not derived"
        )
    derived = {
        **position,
        "signalId": signal.get("id"),
        "quantity": cost / price_open,  # type: ignore[operator]
        "addedAt": opened,
    }
    return _fits(RiskActivePosition, derived)


def _map_risk(
    mapping: BacktestKitMapping,
    folder: str,
    risk_name: str,
    open_signals: dict[tuple[str, str], dict[str, Any]],
    named_pairs: dict[str, set[tuple[str, str]]],
) -> None:
    for entry in _value_files(folder):
        relative = os.path.relpath(entry.path, mapping.root)
        if entry.name != _RISK_FILE:
            mapping.skip(relative, "not a backtest-kit risk file (positions.json)")
            continue
        try:
            positions = _positions(_load(entry.path))
        except ValueError as exc:
            mapping.skip(relative, str(exc))
            continue
        if positions is None:
            mapping.skip(relative, "not a list of [key, position] pairs")
            continue
        if not positions:
            mapping.empty.append(relative)
            continue
        derived: list[tuple[str, dict[str, Any]]] = []
        for position_key, position in positions:
            if position.get("exchangeName") != mapping.exchange:
                mapping.skip(
                    relative,
                    f"position {position_key!r} is of exchange {position.get('exchangeName')!r}",
                )
                continue
            symbol, strategy = position.get("symbol"), position.get("strategyName")
            if isinstance(symbol, str) and isinstance(strategy, str):
                named_pairs.setdefault(f"{symbol}_{strategy}", set()).add((symbol, strategy))
            found, why = _derive_position(
                position_key, position, open_signals.get((str(symbol), str(strategy)))
            )
            if found is None:
                mapping.skip(relative, why)
            else:
                derived.append((position_key, found))
        if not derived:
            continue
        try:
            key = f"risk/{encode_segment(risk_name)}/positions"
        except InvalidNameError as exc:
            mapping.skip(relative, str(exc))
            continue
        ids = ", ".join(str(position["signalId"]) for _, position in derived)
        mapping.values[key] = Mapped(
            key,
            (relative,),
            f"risk {risk_name}: {_plural(len(derived), 'position')}; signalId from the open signal "
            f"({ids}), quantity = cost / priceOpen, addedAt = openTimestamp",
            codec.encode([[position_key, position] for position_key, position in derived]),
        )


def _attribute_partial(
    prefix: str, named_pairs: dict[str, set[tuple[str, str]]]
) -> tuple[tuple[str, str] | None, str]:
    """The one (symbol, strategy) that ``{symbol}_{strategy}`` can be, or why it is not one."""
    readings = set(named_pairs.get(prefix, ()))
    if prefix.count("_") == 1:
        symbol, strategy = prefix.split("_")
        readings.add((symbol, strategy))
    if len(readings) == 1:
        return next(iter(readings)), ""
    if readings:
        shown = ", ".join(f"({s!r}, {t!r})" for s, t in sorted(readings))
        return None, f"ambiguous: {prefix!r} is named by several pairs ({shown}); not guessed"
    return None, (
        f"ambiguous: {prefix!r} splits into (symbol, strategy) in {prefix.count('_')} ways and "
        "no signal, schedule or risk position of this exchange names one; not guessed"
    )


def _map_partial(
    mapping: BacktestKitMapping,
    folder: str,
    prefix: str,
    named_pairs: dict[str, set[tuple[str, str]]],
) -> None:
    relative_folder = os.path.relpath(folder, mapping.root)
    files = list(_value_files(folder))
    if not files:
        return
    pair, why = _attribute_partial(prefix, named_pairs)
    if pair is None:
        mapping.skip(relative_folder, why)
        return
    # signal id -> [(the file it is in, its levels)]: one file per signal, each a whole map.
    seen: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    sources = []
    for entry in files:
        relative = os.path.relpath(entry.path, mapping.root)
        try:
            value = _load(entry.path)
        except ValueError as exc:
            mapping.skip(relative, str(exc))
            continue
        if not isinstance(value, dict):
            mapping.skip(relative, "not a map of signal id to levels")
            continue
        if not value:
            mapping.empty.append(relative)
            continue
        sources.append(relative)
        for signal_id, levels in value.items():
            fitted, why = _fits(PartialData, levels)
            if fitted is None:
                mapping.skip(relative, f"signal {signal_id!r}: {why}")
                continue
            seen.setdefault(signal_id, []).append((entry.name[: -len(SUFFIX)], fitted))
    merged: dict[str, dict[str, Any]] = {}
    for signal_id, found in sorted(seen.items()):
        distinct = {orjson.dumps(levels, option=orjson.OPT_SORT_KEYS) for _, levels in found}
        own = [levels for file, levels in found if file == signal_id]
        if len(distinct) == 1:
            merged[signal_id] = found[0][1]
        elif own:
            merged[signal_id] = own[0]  # its own file is the one its ClientPartial wrote last
        else:
            mapping.skip(
                relative_folder,
                f"signal {signal_id!r}: files {sorted(file for file, _ in found)} disagree on its "
                "levels and none is its own; not guessed",
            )
    if not merged:
        return
    symbol, strategy = pair
    try:
        key = _pair_key("partial", symbol, strategy, "levels")
    except InvalidNameError as exc:
        mapping.skip(relative_folder, str(exc))
        return
    mapping.values[key] = Mapped(
        key,
        tuple(sources),
        f"partial of {symbol} / {strategy}: {_plural(len(merged), 'signal')} merged from "
        "per-signal files",
        codec.encode(merged),
    )


# -- the backend ------------------------------------------------------------------------------


def _read_only(url: str) -> WriteFailedError:
    return WriteFailedError(
        f"{url} is read-only: a backtest-kit folder is migrated from, never written; "
        "nothing was written"
    )


class BacktestKitBackend(Backend):
    """A backtest-kit 19.x folder for one exchange, read-only (see the module docstring).

    :meth:`snapshot` (what ``migrate``, ``inspect`` and ``export`` read) maps
    the folder afresh, twice, as for any backend, and keeps it when both reads
    agree: a backtest-kit still writing is caught there. ``get``, ``scan`` and
    ``changed_at`` answer from the folder as last mapped (at first use, or by
    the last snapshot), so that reading a large folder key by key is not
    quadratic. Stop the backtest-kit bot before migrating it.
    """

    scheme = "backtest-kit"

    def __init__(self, root: str | os.PathLike[str], *, exchange: str) -> None:
        self.root = os.path.realpath(os.path.abspath(os.fspath(root)))
        if not isinstance(exchange, str) or not exchange or "/" in exchange:
            raise InvalidNameError(
                f"exchange {exchange!r}: the exchange name backtest-kit suffixes folders with"
            )
        self.exchange = exchange
        self.read_only = True
        self._last: BacktestKitMapping | None = None

    @classmethod
    def from_url(cls, url: str) -> Self:
        """``backtest-kit:///ABSOLUTE/PATH/dump/data?exchange=NAME``."""
        parts = urlsplit(url)
        form = "backtest-kit:///ABSOLUTE/PATH/dump/data?exchange=NAME"
        if parts.netloc:
            raise InvalidNameError(f"{url!r} names a host; expected {form}")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise InvalidNameError(f"{url!r} has no absolute path; expected {form}")
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        unknown = sorted(set(query) - {"exchange"})
        if unknown:
            raise InvalidNameError(f"{url!r}: unknown parameter {unknown[0]!r}; expected {form}")
        exchanges = query.get("exchange", [])
        if len(exchanges) != 1 or not exchanges[0]:
            raise InvalidNameError(
                f"{url!r} needs one exchange (backtest-kit suffixes every folder with it); "
                f"expected {form}"
            )
        if not os.path.isdir(path):
            raise BackendError(f"no such directory: {path}")
        return cls(path, exchange=exchanges[0])

    @property
    def url(self) -> str:
        return f"backtest-kit://{quote(self.root)}?exchange={quote(self.exchange, safe='')}"

    def __repr__(self) -> str:
        return f"BacktestKitBackend({self.root!r}, exchange={self.exchange!r})"

    def mapping(self) -> BacktestKitMapping:
        """The folder as it is now, in persistkit's keys, and what is not presented."""
        self._last = read_mapping(self.root, self.exchange)
        return self._last

    def _read(self) -> BacktestKitMapping:
        """The folder as last read (at first use, or by the last :meth:`snapshot`).

        Reading the whole folder for each key would make reading a large one
        quadratic; a backtest-kit still writing is caught by :meth:`snapshot`,
        which reads it afresh, twice.
        """
        return self._last if self._last is not None else self.mapping()

    async def get(self, key: str) -> Versioned | None:
        found = self._read().values.get(key)
        return None if found is None else Versioned(found.data, content_version)

    async def get_many(self, keys: Iterable[str]) -> list[Versioned | None]:
        values = self._read().values
        found = [values.get(key) for key in keys]
        return [None if one is None else Versioned(one.data, content_version) for one in found]

    async def scan(self, namespace: str, *, recursive: bool = False) -> AsyncIterator[str]:
        keys = self._read().sorted_keys()
        prefix = f"{namespace}/" if namespace else ""
        # The keys below a namespace are one run of the sorted keys.
        for key in keys[bisect.bisect_left(keys, prefix) :]:
            if not key.startswith(prefix):
                break
            if recursive or split_key(key)[0] == namespace:
                yield key

    async def _read_stored(self) -> dict[str, bytes]:
        return {key: mapped.data for key, mapped in sorted(self.mapping().values.items())}

    async def changed_at(self, key: str) -> float | None:
        found = self._read().values.get(key)
        if found is None:
            return None
        times = []
        for source in found.sources:
            try:
                times.append(os.stat(os.path.join(self.root, source)).st_mtime)
            except OSError:
                return None
        return max(times) if times else None

    async def put(self, key: str, data: bytes, *, expect: Expected = ANY_VERSION) -> str:
        raise _read_only(self.url)

    async def delete(self, key: str, *, expect: Expected = ANY_VERSION) -> bool:
        raise _read_only(self.url)

    async def commit(self, writes: Any, **kwargs: Any) -> None:
        raise _read_only(self.url)

    async def quarantine(self, key: str, reason: str) -> QuarantineEntry:
        raise _read_only(self.url)

    async def list_quarantine(self, namespace: str = "") -> AsyncIterator[QuarantineEntry]:
        nothing: tuple[QuarantineEntry, ...] = ()  # backtest-kit keeps no quarantine
        for entry in nothing:
            yield entry

    async def read_quarantined(self, entry_id: str) -> bytes:
        raise EntityNotFoundError(f"{self.url} keeps no quarantine: no entry {entry_id!r}")

    async def restore(self, entry_id: str, *, overwrite: bool = False) -> str:
        raise _read_only(self.url)

    async def purge(self, entry_id: str) -> None:
        raise _read_only(self.url)


# -- a persistkit root holding backtest-kit state -------------------------------------------


@dataclass(frozen=True, slots=True)
class BacktestKitState:
    """backtest-kit 19.x state found in a root persistkit is asked to start on."""

    root: str
    folders: tuple[str, ...]
    """Relative paths of the folders that hold it."""
    exchanges: tuple[str, ...]
    """The exchanges its rows name (none when only partial files were found)."""
    unreadable: tuple[str, ...] = ()
    """Files (relative paths, with why) in folders named like backtest-kit's that are not
    JSON: a backtest-kit row cut short names no exchange, so it cannot be told from a
    corrupt value of a persistkit pair. ``inspect`` and ``preflight`` report such files
    through their own scans; a start, which scans only its own pairs, says
    :meth:`unreadable_warning`."""

    def __bool__(self) -> bool:
        return bool(self.folders)

    def warning(self) -> str:
        """What a start and ``preflight`` say: that a start here is flat, and how to migrate."""
        shown = ", ".join(self.folders[:3]) + (" ..." if len(self.folders) > 3 else "")
        commands = " and ".join(
            migrate_command(self.root, name) for name in self.exchanges or ("NAME",)
        )
        return (
            f"{self.root} holds backtest-kit 19.x state persistkit does not read "
            f"({len(self.folders)} folders: {shown}): a start here begins flat, as if no "
            f"position were open. Migrate it first: {commands}"
        )

    def unreadable_warning(self) -> str:
        """What a start says of :attr:`unreadable` files, when there are some."""
        shown = "; ".join(self.unreadable[:3]) + (" ..." if len(self.unreadable) > 3 else "")
        return (
            f"{self.root} holds {len(self.unreadable)} file(s) that cannot be read, in "
            f"folders named like backtest-kit 19.x's ({shown}): backtest-kit state cut "
            "short, or a corrupt value of a pair this start does not run. A start here reads "
            "neither and begins flat for it: check them (`persistkit preflight`); a "
            "backtest-kit signal cut short is an open position the bot no longer knows of"
        )


def migrate_command(root: str, exchange: str) -> str:
    """The command that migrates ``root``'s backtest-kit state of ``exchange`` to a fresh root."""
    source = f"backtest-kit://{quote(root)}?exchange={quote(exchange, safe='')}"
    return f"persistkit migrate '{source}' NEW_ROOT"


def find_backtest_kit_state(root: str) -> BacktestKitState:
    """backtest-kit 19.x state under ``root``: exchange-suffixed folders whose rows name their
    exchange, per-signal partial files, backtest-kit-shaped risk positions.

    Read-only and cheap enough for every start: a file is read only where a
    folder's name could be backtest-kit's, and a folder holding no state (a
    cleared signal) is not flagged, since starting flat is then right.
    """
    folders: list[str] = []
    exchanges: set[str] = set()
    unreadable: list[str] = []
    for domain in _ROW_DOMAINS:
        for folder in _entries(os.path.join(root, domain)):
            if not _is_dir(folder) or folder.name.count("_") < 2:
                continue  # not {symbol}_{strategy}_{exchange}: no file to read
            for entry in _value_files(folder.path):
                try:
                    exchange = _is_backtest_kit_row(folder.name, _load(entry.path))
                except _Vanished:
                    continue
                except ValueError as exc:
                    unreadable.append(f"{domain}/{folder.name}/{entry.name}: {exc}")
                    continue
                if exchange is not None:
                    folders.append(f"{domain}/{folder.name}")
                    exchanges.add(exchange)
                    break
    for folder in _entries(os.path.join(root, "risk")):
        if not _is_dir(folder):
            continue
        try:
            positions = _positions(_load(os.path.join(folder.path, _RISK_FILE)))
        except _Vanished:
            continue
        except ValueError as exc:
            if "_" in folder.name:
                # {risk}_{exchange}: a torn backtest-kit risk file hides open positions.
                unreadable.append(f"risk/{folder.name}/{_RISK_FILE}: {exc}")
            continue
        shaped = [p for _, p in positions or () if _is_backtest_kit_position(p)]
        if shaped:
            folders.append(f"risk/{folder.name}")
            exchanges.update(str(p["exchangeName"]) for p in shaped if p.get("exchangeName"))
    for folder in _entries(os.path.join(root, "partial")):
        if not _is_dir(folder):
            continue
        names = [entry.name for entry in _value_files(folder.path)]
        # {symbol}_{strategy}_{exchange} holding the file of a signal named "levels".
        levels_of_a_signal = folder.name.count("_") >= 2 and _is_file_of_signal_levels(folder.path)
        if any(name != _LEVELS_FILE for name in names) or levels_of_a_signal:
            folders.append(f"partial/{folder.name}")
    return BacktestKitState(
        root, tuple(sorted(folders)), tuple(sorted(exchanges)), tuple(sorted(unreadable))
    )


def archive_migrated(root: str, folders: Iterable[str]) -> tuple[str, list[str]]:
    """Move ``folders`` (relative to ``root``) into ``{root}/.backtest-kit-archive/{time}/``.

    After an in-place migration, for the folders all of whose state was
    migrated, so that later starts and preflights no longer flag it. Nothing
    is deleted. Returns the archive folder (relative) and the folders moved.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    archive = os.path.join(ARCHIVE_DIR, stamp)
    moved = []
    touched: set[str] = set()
    for folder in sorted(folders):
        source = os.path.join(root, folder)
        target = os.path.join(root, archive, folder)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(source, target)
        touched.update((os.path.dirname(source), os.path.dirname(target)))
        moved.append(folder)
    touched.update((root, os.path.join(root, ARCHIVE_DIR)))
    for directory in sorted(touched):  # the renames survive a power cut
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return archive, moved


def state_not_read(backend: Backend) -> list[Skipped]:
    """State ``backend`` holds that persistkit does not read (``inspect``, ``preflight``).

    A file root: the backtest-kit 19.x state in it (a start there is flat for
    it). A ``backtest-kit://`` folder: what it does not present, and why.
    """
    if isinstance(backend, BacktestKitBackend):
        return list(backend.mapping().skipped)
    if isinstance(backend, FileBackend):
        found = find_backtest_kit_state(backend.root)
        if found:
            return [Skipped(backend.root, found.warning())]
    return []

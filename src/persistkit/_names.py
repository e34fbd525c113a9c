"""From user-given names (symbols, strategies, entity ids) to storage path segments.

Names come from users and exchanges (``BTC/USDT``, ``my strategy``, unicode), so
the mapping must be:

- safe: a segment never contains ``/`` or NUL, is never ``.`` or ``..`` and never
  starts with ``.`` (dot names are persistkit's own: temp files, quarantine);
- reversible and collision-free: percent-encoding of the UTF-8 bytes outside
  ``[A-Za-z0-9._-]``, always upper-case hex, so each name has exactly one
  encoding and each encoding one name;
- readable for ordinary names: ``BTCUSDT`` and ``my_strategy`` are stored as is.

A few names are refused outright, before any I/O, because a user who passes
them almost certainly made a mistake: the empty name, names with NUL, ``.``,
``..``, absolute paths and paths that climb (``a/../b``).

One fixed limit, :data:`MAX_SEGMENT_BYTES`, applies to every segment in every
mode, the joined ``{symbol}_{strategy}`` pair included, so a name a backtest
accepts is a name the live file backend can store.

A key that comes from outside (an import file, another backend) is held to the
same rules by :func:`check_store_key`: it must be a key some store could have
written.
"""

from __future__ import annotations

import functools
import re

from persistkit.errors import InvalidNameError

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_SEGMENT_BYTES",
    "check_store_key",
    "decode_segment",
    "encode_segment",
    "entity_id_text",
    "join_pair",
    "split_pair",
]

# ext4 (and most file systems) allow 255 bytes per name. The longest name
# persistkit derives from a segment is its quarantine reason file,
# "{segment}@{19-digit ns}-{6 hex}.reason" (segment + 34 bytes); the value file
# adds 5 (".json"), a temp file is a fixed 21 (".tmp-" + 16 hex), and the live
# session's locks are byte ranges in one file, named by no segment at all. 200
# keeps each of them under 255 with room for a lock or stamp suffix later.
MAX_SEGMENT_BYTES = 200
MAX_KEY_BYTES = 2048
"""A whole key, its folders included: with the root's path, ``.quarantine/`` and
the quarantine's stamp in front and behind, its paths stay under ``PATH_MAX``
(4096 bytes) for a root path of up to 1,900 bytes."""

_PLAIN = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*\Z")
_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_CANONICAL = re.compile(r"(?:[A-Za-z0-9_.\-]|%[0-9A-F]{2})+\Z")


def entity_id_text(entity_id: object) -> str:
    """The text form of an entity id (``str`` or ``int``); anything else is refused."""
    if isinstance(entity_id, str):
        return entity_id
    if isinstance(entity_id, int) and not isinstance(entity_id, bool):
        return str(entity_id)
    raise InvalidNameError(
        f"entity id must be str or int, got {type(entity_id).__name__}: {entity_id!r}"
    )


def _refuse_reason(name: str) -> str | None:
    if not name:
        return "is empty"
    if "\x00" in name:
        return "contains a NUL character"
    if name in (".", ".."):
        return "is a relative directory reference"
    if name.startswith("/"):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "climbs out of its directory with '..'"
    return None


@functools.lru_cache(maxsize=65536)
def encode_segment(name: str, *, escape_underscore: bool = False) -> str:
    """Encode one user-given name as one safe path segment.

    ``escape_underscore`` also encodes ``_``; :func:`join_pair` uses it for the
    first half of a pair so that the first literal ``_`` always separates the two.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"name must be a string, got {type(name).__name__}: {name!r}")
    reason = _refuse_reason(name)
    if reason is not None:
        raise InvalidNameError(f"name {name!r} {reason}; refused before any I/O")
    if _PLAIN.match(name) and not (escape_underscore and "_" in name):
        encoded = name
    else:
        try:
            raw = name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidNameError(f"name {name!r} is not valid unicode text") from exc
        parts = []
        for index, byte in enumerate(raw):
            keep = byte in _SAFE_BYTES and not (index == 0 and byte == ord("."))
            if escape_underscore and byte == ord("_"):
                keep = False
            parts.append(chr(byte) if keep else f"%{byte:02X}")
        encoded = "".join(parts)
    if len(encoded) > MAX_SEGMENT_BYTES:
        raise InvalidNameError(
            f"name {name[:40]!r}... encodes to {len(encoded)} bytes; the limit is "
            f"{MAX_SEGMENT_BYTES}"
        )
    return encoded


@functools.lru_cache(maxsize=65536)
def decode_segment(segment: str, *, escape_underscore: bool = False) -> str:
    """Invert :func:`encode_segment`; a segment it could not have produced is refused."""
    if not _CANONICAL.match(segment) or segment.startswith("."):
        raise InvalidNameError(f"{segment!r} is not a persistkit-encoded name")
    if "%" not in segment:
        if escape_underscore and "_" in segment:
            raise InvalidNameError(f"{segment!r} has an unescaped '_'")
        return segment
    out = bytearray()
    index = 0
    while index < len(segment):
        char = segment[index]
        if char == "%":
            out.append(int(segment[index + 1 : index + 3], 16))
            index += 3
        else:
            out.append(ord(char))
            index += 1
    try:
        name = out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidNameError(f"{segment!r} does not decode to UTF-8 text") from exc
    # Only the canonical encoding is accepted, so decoding is one-to-one.
    if segment != encode_segment(name, escape_underscore=escape_underscore):
        raise InvalidNameError(f"{segment!r} is not the canonical encoding of {name!r}")
    return name


@functools.lru_cache(maxsize=65536)
def join_pair(first: str, second: str) -> str:
    """``{first}_{second}`` as one segment, e.g. ``BTCUSDT_my_strategy``.

    ``_`` inside ``first`` is escaped, so ``("a_b", "c")`` and ``("a", "b_c")``
    map to different segments and :func:`split_pair` recovers both halves. The
    joined segment is held to :data:`MAX_SEGMENT_BYTES` like any other, in
    every mode: halves that fit alone can still make a pair that does not.
    """
    joined = f"{encode_segment(first, escape_underscore=True)}_{encode_segment(second)}"
    if len(joined) > MAX_SEGMENT_BYTES:
        raise InvalidNameError(
            f"pair ({first[:40]!r}, {second[:40]!r}) encodes to {len(joined)} bytes; "
            f"the limit is {MAX_SEGMENT_BYTES}; refused before any I/O"
        )
    return joined


def split_pair(segment: str) -> tuple[str, str]:
    """Invert :func:`join_pair`."""
    head, sep, tail = segment.partition("_")
    if not sep or not head or not tail:
        raise InvalidNameError(f"{segment!r} is not a '{{symbol}}_{{strategy}}' segment")
    return decode_segment(head, escape_underscore=True), decode_segment(tail)


def check_store_key(key: str, *, paired: bool = False) -> str:
    """``key`` itself when a store could have written it; :class:`InvalidNameError` otherwise.

    A store writes ``{directories/}{entity name}/{entity id}``: the entity id
    and the entity name are segments as :func:`encode_segment` makes them
    (canonical, at most :data:`MAX_SEGMENT_BYTES` bytes); with ``paired`` (the
    signal, schedule and partial domains) the entity name is a pair as
    :func:`join_pair` makes it. The directories in front come from a
    ``base_dir`` below the configured root: plain folder names, held to the
    same length limit. What the command line imports or migrates is checked
    with this, so it writes nothing a store could not have written.
    """
    if not isinstance(key, str):
        raise InvalidNameError(f"key must be a string, got {type(key).__name__}")
    parts = key.split("/")
    if len(parts) < 2:
        raise InvalidNameError(f"key {key!r} is not '{{entity name}}/{{entity id}}'")
    size = len(key.encode("utf-8", "surrogateescape"))
    if size > MAX_KEY_BYTES:
        raise InvalidNameError(
            f"key {key[:60]!r}... is {size} bytes with its folders; the limit is {MAX_KEY_BYTES}"
        )
    *directories, entity, entity_id = parts
    for segment in directories:
        reason = _refuse_reason(segment) or (
            "starts with '.' (persistkit's own names)" if segment.startswith(".") else None
        )
        if reason is not None:
            raise InvalidNameError(f"key {key!r}: folder {segment!r} {reason}")
        _check_length(key, segment, "folder")
    _check_length(key, entity, "entity name")
    _check_length(key, entity_id, "entity id")
    try:
        if paired:
            if join_pair(*split_pair(entity)) != entity:
                raise InvalidNameError(f"{entity!r} is not the canonical encoding of its pair")
        else:
            decode_segment(entity)
    except InvalidNameError as exc:
        raise InvalidNameError(f"key {key!r}: entity name: {exc}") from exc
    try:
        decode_segment(entity_id)
    except InvalidNameError as exc:
        raise InvalidNameError(f"key {key!r}: entity id: {exc}") from exc
    return key


def _check_length(key: str, segment: str, what: str) -> None:
    size = len(segment.encode("utf-8", "surrogateescape"))
    if size > MAX_SEGMENT_BYTES:
        raise InvalidNameError(
            f"key {key[:60]!r}...: its {what} is {size} bytes; the limit is {MAX_SEGMENT_BYTES}"
        )

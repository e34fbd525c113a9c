"""Values to bytes and back, refusing anything that would not come back exactly.

orjson is strict about unknown types but writes NaN and infinity as ``null``,
which would silently turn a price into ``None`` after a restart. So ``null`` in
the output triggers a walk of the value that refuses non-finite floats. The walk
runs only then, keeping the common path at orjson's speed.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from pydantic import BaseModel

from persistkit.errors import UnserializableValueError

__all__ = ["encode"]

# Without these options orjson would write datetimes, dataclasses and subclasses
# of builtins in a form that reads back as a different type.
_DUMPS_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def _model_to_python(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="python")
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


_SCALARS = (str, int, type(None))
"""What most values of a row are: skipped without a call (``bool`` is an ``int``)."""


def _non_finite_path(value: Any) -> list[str | int] | None:
    """The keys leading to the first NaN or infinity in ``value``, innermost first.

    Lean on purpose: a value with a ``null`` in it (an optional field left
    empty) is walked on every write, so scalars cost no call and the path is
    only built on a hit.
    """
    if isinstance(value, float):
        return None if math.isfinite(value) else []
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="python")
    items: Any
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(item, _SCALARS):
            continue
        found = _non_finite_path(item)
        if found is not None:
            found.append(key)
            return found
    return None


def _find_non_finite(value: Any, path: str) -> str | None:
    found = _non_finite_path(value)
    if found is None:
        return None
    return path + "".join(
        f"[{key}]" if isinstance(key, int) else f".{key}" for key in reversed(found)
    )


def encode(value: Any) -> bytes:
    """Encode ``value`` as compact JSON bytes, or raise :class:`UnserializableValueError`."""
    try:
        data = orjson.dumps(value, default=_model_to_python, option=_DUMPS_OPTIONS)
    except TypeError as exc:
        raise UnserializableValueError(f"value cannot be stored as JSON: {exc}") from exc
    if b"null" in data:
        where = _find_non_finite(value, "value")
        if where is not None:
            raise UnserializableValueError(
                f"{where} is NaN or infinite; JSON would store it as null. Refused."
            )
    return data

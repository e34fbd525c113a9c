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


def _find_non_finite(value: Any, path: str) -> str | None:
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="python")
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find_non_finite(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _find_non_finite(item, f"{path}[{index}]")
            if found:
                return found
    return None


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
